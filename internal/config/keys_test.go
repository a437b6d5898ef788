package config

import (
	"bytes"
	"maps"
	"path/filepath"
	"strings"
	"testing"
)

func TestClassify(t *testing.T) {
	tests := []struct {
		key    string
		owner  Owner
		secret bool
	}{
		{"IMAGE_NAME", Tool, false},
		{"APP_PORT", Tool, false},
		{"LOCK_WAIT", Tool, false},
		{"SSH_KEY_PASSPHRASE", Tool, true},
		{"SSH_KEY", Tool, true}, // a path, but redacted as it always was
		{"SSH_AUTH_SOCK", Tool, false},
		{"BUILD_ARG_VERSION", Build, false},
		{"BUILD_ARG_NPM_TOKEN", Build, true},
		{"BUILD_SECRETS", Build, true},
		{"BOT_TOKEN", App, true},
		{"DB_PASSWORD", App, true},
		{"LOG_LEVEL", App, false},
		{"image_name", App, false}, // names are case-sensitive, as in the environment
		{"BUILD_ARGS", App, false},
		// Secret by their ending, or being the whole name.
		{"SMTP_PASS", App, true},
		{"PASS", App, true},
		{"db_pass", App, true},
		{"MYSQL_PWD", App, true},
		{"SENTRY_DSN", App, true},
		{"AUTH", App, true},
		{"BASIC_AUTH", App, true},
		{"PROXY_AUTH", App, true},
		{"GPG_PASSPHRASE", App, true},
		{"JWT_PRIVATE_PEM", App, true},
		{"SESSION_COOKIE", App, true},
		{"BYPASS", App, false},
		{"PASS_THROUGH_HEADERS", App, false},
		{"AUTHOR", App, false},
		{"AUTH_MODE", App, false},
		{"PWD", App, false},
		{"SESSION_TTL", App, false},
	}
	for _, tt := range tests {
		if got := Classify(tt.key); got.Owner != tt.owner || got.Secret != tt.secret {
			t.Errorf("Classify(%s) = %s, secret %v; want %s, secret %v", tt.key, got.Owner, got.Secret, tt.owner, tt.secret)
		}
	}
	for _, k := range settingKeys {
		if Classify(k).Owner != Tool {
			t.Errorf("setting %s is not the tool's", k)
		}
	}
}

// TestToolSettingsStayWithTheTool: of one .env, the app gets its own keys
// only (AppEnv, and AppDotenv for a deploy's .env), never the tool's
// settings or secrets; the build's keys are kept apart; Print shows all,
// tool settings first, secrets redacted.
func TestToolSettingsStayWithTheTool(t *testing.T) {
	stubGit(t, testCommit, false, nil)
	const dotenv = `# the tool
IMAGE_NAME=carebot
SSH_KEY_PASSPHRASE=tool-secret
APP_PORT=6000
BUILD_ARG_NODE_ENV=production
BUILD_SECRETS=npm=file:.npmrc,pip_token
pip_token=build-only-secret

# the app
BOT_TOKEN=123:abc
GREETING="two
lines"
export LOG_LEVEL=debug # verbose
`
	dir := newProject(t, dotenv)
	write(t, filepath.Join(dir, ".npmrc"), "//registry.npmjs.org/:_authToken=npm-secret\n")
	c, err := Load(dir, []string{"SSH_AUTH_SOCK=/run/agent.sock", "BOT_TOKEN=from-env"})
	if err != nil {
		t.Fatal(err)
	}
	wantApp := map[string]string{"BOT_TOKEN": "from-env", "GREETING": "two\nlines", "LOG_LEVEL": "debug"}
	if !maps.Equal(c.AppEnv, wantApp) {
		t.Errorf("AppEnv = %q, want %q", c.AppEnv, wantApp)
	}
	wantBuild := map[string]string{"BUILD_ARG_NODE_ENV": "production", "BUILD_SECRETS": "npm=file:.npmrc,pip_token", "pip_token": "build-only-secret"}
	if !maps.Equal(c.BuildEnv, wantBuild) {
		t.Errorf("BuildEnv = %q, want %q", c.BuildEnv, wantBuild)
	}
	if c.SSHKeyPassphrase != "tool-secret" || c.AppPort != 6000 {
		t.Errorf("the tool lost its settings: passphrase %q, APP_PORT %d", c.SSHKeyPassphrase, c.AppPort)
	}

	// The deploy's .env: the app's lines as written, nothing else.
	wantDotenv := "BOT_TOKEN=123:abc\nGREETING=\"two\nlines\"\nexport LOG_LEVEL=debug # verbose\n"
	if string(c.AppDotenv) != wantDotenv {
		t.Errorf("AppDotenv:\n%s\nwant:\n%s", c.AppDotenv, wantDotenv)
	}
	d, err := parseDotenv(".env", c.AppDotenv)
	if err != nil || d.values["GREETING"] != "two\nlines" || len(d.values) != 3 {
		t.Errorf("AppDotenv parses to %q, %v", d.values, err)
	}

	var b bytes.Buffer
	c.Print(&b)
	out := b.String()
	if strings.Contains(out, "tool-secret") || strings.Contains(out, "123:abc") || strings.Contains(out, "from-env") || strings.Contains(out, "npmrc") || strings.Contains(out, "build-only-secret") {
		t.Errorf("Print shows a secret:\n%s", out)
	}
	order := []string{"IMAGE_NAME=carebot", "SSH_KEY_PASSPHRASE=****", "DOCKER_SUDO=", "BUILD_ARG_NODE_ENV=production (source: .env:5)",
		"BUILD_SECRETS=**** (source: .env:6)", "pip_token=**** (source: .env:7)", "BOT_TOKEN=**** (source: environment)", "GREETING=", "LOG_LEVEL=debug (source: .env:13)"}
	last := -1
	for _, w := range order {
		i := strings.Index(out, w)
		if i <= last {
			t.Errorf("Print: %q missing or out of order:\n%s", w, out)
		}
		last = i
	}
	if strings.Contains(out, "SSH_AUTH_SOCK") {
		t.Errorf("Print shows SSH_AUTH_SOCK:\n%s", out)
	}

	// No .env: nothing for the app.
	c, err = Load(newProject(t, noEnv), nil)
	if err != nil || len(c.AppEnv) != 0 || len(c.AppDotenv) != 0 {
		t.Errorf("no .env: AppEnv %q, AppDotenv %q, %v", c.AppEnv, c.AppDotenv, err)
	}
}
