package config

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/carebot/carebot/internal/testenv"
)

// The tests replace the package-level gitInfo seam, so none of them run in
// parallel.

const testCommit = "0123456789abcdef0123456789abcdef01234567"

// stubGit makes gitInfo report the given result for the rest of the test.
func stubGit(t *testing.T, commit string, dirty bool, err error) {
	t.Helper()
	old := gitInfo
	gitInfo = func(string) (string, bool, error) { return commit, dirty, err }
	t.Cleanup(func() { gitInfo = old })
}

// noEnv marks a project without a .env file.
const noEnv = "\x00none"

// newProject creates a project root with the default Dockerfile and compose
// file, and dotenv as its .env (unless dotenv is noEnv).
func newProject(t *testing.T, dotenv string) string {
	t.Helper()
	dir := t.TempDir()
	write(t, filepath.Join(dir, defaultDockerfile), "FROM scratch\n")
	write(t, filepath.Join(dir, defaultComposeFile), "services: {}\n")
	if dotenv != noEnv {
		write(t, filepath.Join(dir, ".env"), dotenv)
	}
	return dir
}

func write(t *testing.T, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// errLines returns the lines of err's message, checking that every joined
// error is a one-line *SettingError.
func errLines(t *testing.T, err error) []string {
	t.Helper()
	if err == nil {
		return nil
	}
	errs := []error{err}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		errs = j.Unwrap()
	}
	var lines []string
	for _, e := range errs {
		var se *SettingError
		if !errors.As(e, &se) {
			t.Errorf("error %q is a %T, want *SettingError", e, e)
		}
		if strings.ContainsAny(e.Error(), "\r\n") {
			t.Errorf("error is not one line: %q", e)
		}
		lines = append(lines, e.Error())
	}
	return lines
}

func TestLoadDefaults(t *testing.T) {
	stubGit(t, testCommit, false, nil)
	dir := newProject(t, noEnv)
	c, err := Load(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := Config{
		Dir:           dir,
		ImageName:     "carebot",
		ImageTag:      "0123456",
		Commit:        testCommit,
		Dockerfile:    filepath.Join(dir, "Dockerfile.production"),
		ComposeFile:   filepath.Join(dir, "docker-compose.production.yml"),
		AppPort:       5555,
		TestPort:      5556,
		HealthPath:    "/health",
		HealthTimeout: 60 * time.Second,
		DeployPath:    filepath.Join(dir, ".deploy", "production"),
		Strategy:      "rolling",
		Mode:          "compose",
		StackName:     "carebot",
		ImageKeep:     5,
		TestData:      filepath.Join(dir, "test-data"),
		Migrations:    filepath.Join(dir, "migrations"),
		BackupKeep:    10,
		SSHKnownHosts: filepath.Join(home(t), ".ssh", "known_hosts"),
		Compression:   "auto",
		Stage:         "auto",
		WSLDistro:     "Ubuntu-22.04",
		DockerViaWSL:  "auto",

		BuildArgs:      map[string]string{},
		BuildCacheKeep: 5_000_000_000,
	}
	got := *c
	got.AppEnv, got.BuildEnv, got.Sources = nil, nil, nil
	if !reflect.DeepEqual(got, want) {
		t.Errorf("Load defaults:\n got %+v\nwant %+v", got, want)
	}
	if c.EnvFile != "" || len(c.AppEnv) != 0 {
		t.Errorf("EnvFile = %q, AppEnv = %v; want none", c.EnvFile, c.AppEnv)
	}
	if c.Image() != "carebot:0123456" {
		t.Errorf("Image() = %q", c.Image())
	}
	if c.Remote() {
		t.Error("Remote() = true without DEPLOY_HOST")
	}
	for _, k := range settingKeys {
		want := SourceDefault
		if k == "IMAGE_TAG" {
			want = SourceGit
		}
		if c.Sources[k] != want {
			t.Errorf("Sources[%s] = %q, want %q", k, c.Sources[k], want)
		}
	}
}

func TestLoadRelativeDir(t *testing.T) {
	stubGit(t, testCommit, false, nil)
	dir := newProject(t, noEnv)
	t.Chdir(filepath.Dir(dir))
	c, err := Load(filepath.Base(dir), nil)
	if err != nil {
		t.Fatal(err)
	}
	if c.Dir != dir {
		t.Errorf("Dir = %q, want %q", c.Dir, dir)
	}
}

func TestLoadMissingDir(t *testing.T) {
	stubGit(t, testCommit, false, nil)
	_, err := Load(filepath.Join(t.TempDir(), "nope"), nil)
	if err == nil || !strings.Contains(err.Error(), "does not exist") {
		t.Errorf("err = %v, want a missing directory error", err)
	}
}

// TestValidation checks each rule. {dir} in want stands for the project root.
func TestValidation(t *testing.T) {
	long := strings.Repeat("a", 128)
	tests := []struct {
		name   string
		dotenv string
		env    []string
		setup  func(t *testing.T, dir string)
		want   []string                  // exact error lines; none means Load succeeds
		check  func(*testing.T, *Config) // for valid cases
	}{
		// IMAGE_NAME
		{name: "image name with registry", dotenv: "IMAGE_NAME=ghcr.io/acme/care-bot\n",
			check: func(t *testing.T, c *Config) { eq(t, c.Image(), "ghcr.io/acme/care-bot:0123456") }},
		{name: "image name with registry port", env: []string{"IMAGE_NAME=localhost:5000/care_bot.x"},
			check: func(t *testing.T, c *Config) { eq(t, c.ImageName, "localhost:5000/care_bot.x") }},
		{name: "image name uppercase", dotenv: "IMAGE_NAME=CareBot\n",
			want: []string{`.env:1: IMAGE_NAME="CareBot" must be lowercase (set IMAGE_NAME to a repository name such as carebot)`}},
		{name: "image name with tag", env: []string{"IMAGE_NAME=carebot:1.0"},
			want: []string{`environment: IMAGE_NAME="carebot:1.0" must not contain a tag; set the tag with IMAGE_TAG and IMAGE_NAME to a repository name such as carebot`}},
		{name: "image name with digest", env: []string{"IMAGE_NAME=carebot@sha256:abc"},
			want: []string{`environment: IMAGE_NAME="carebot@sha256:abc" must not contain a digest (@...); set IMAGE_NAME to a repository name such as carebot`}},
		{name: "image name bad separators", dotenv: "# c\nIMAGE_NAME=-carebot\n",
			want: []string{`.env:2: IMAGE_NAME="-carebot" is not a valid Docker repository name (lowercase letters and digits separated by . _ - or /, optionally after registry.host[:port]/, e.g. ghcr.io/acme/carebot)`}},
		{name: "image name empty path component", dotenv: "IMAGE_NAME=acme//carebot\n",
			want: []string{`.env:1: IMAGE_NAME="acme//carebot" is not a valid Docker repository name (lowercase letters and digits separated by . _ - or /, optionally after registry.host[:port]/, e.g. ghcr.io/acme/carebot)`}},

		{name: "image name too long", env: []string{"IMAGE_NAME=" + strings.Repeat("a/", 128) + "a"},
			want: []string{`environment: IMAGE_NAME="` + strings.Repeat("a/", 128) + `a" is longer than 255 characters`}},

		// IMAGE_TAG
		{name: "tag 128 chars", dotenv: "IMAGE_TAG=" + long + "\n",
			check: func(t *testing.T, c *Config) { eq(t, c.ImageTag, long); eq(t, c.Sources["IMAGE_TAG"], ".env:1") }},
		{name: "tag v1.2.3_rc-1", env: []string{"IMAGE_TAG=v1.2.3_rc-1"},
			check: func(t *testing.T, c *Config) { eq(t, c.Image(), "carebot:v1.2.3_rc-1") }},
		{name: "tag 129 chars", dotenv: "IMAGE_TAG=" + long + "b\n",
			want: []string{`.env:1: IMAGE_TAG="` + long + `b" is not a valid Docker tag (up to 128 of A-Z a-z 0-9 _ . -, not starting with . or -)`}},
		{name: "tag starting with dot", env: []string{"IMAGE_TAG=.v1"},
			want: []string{`environment: IMAGE_TAG=".v1" is not a valid Docker tag (up to 128 of A-Z a-z 0-9 _ . -, not starting with . or -)`}},
		{name: "tag starting with dash", env: []string{"IMAGE_TAG=-v1"},
			want: []string{`environment: IMAGE_TAG="-v1" is not a valid Docker tag (up to 128 of A-Z a-z 0-9 _ . -, not starting with . or -)`}},
		{name: "tag with space", dotenv: `IMAGE_TAG="v 1"` + "\n",
			want: []string{`.env:1: IMAGE_TAG="v 1" is not a valid Docker tag (up to 128 of A-Z a-z 0-9 _ . -, not starting with . or -)`}},
		{name: "tag with slash", env: []string{"IMAGE_TAG=feature/x"},
			want: []string{`environment: IMAGE_TAG="feature/x" is not a valid Docker tag (up to 128 of A-Z a-z 0-9 _ . -, not starting with . or -)`}},

		// The build's settings
		{name: "build args", dotenv: "BUILD_ARG_PIP_INDEX_URL=https://pypi.example.org/simple\n", env: []string{"BUILD_ARG_NODE_ENV=production"},
			check: func(t *testing.T, c *Config) {
				eq(t, c.BuildArgs["PIP_INDEX_URL"], "https://pypi.example.org/simple")
				eq(t, c.BuildArgs["NODE_ENV"], "production")
			}},
		{name: "build arg VERSION is the tool's", env: []string{"BUILD_ARG_VERSION=2"},
			want: []string{`environment: BUILD_ARG_VERSION="2" is set by the tool on every build (the image's version and commit); remove BUILD_ARG_VERSION and use IMAGE_TAG for the version`}},
		{name: "build arg COMMIT is the tool's", dotenv: "BUILD_ARG_COMMIT=abc\n",
			want: []string{`.env:1: BUILD_ARG_COMMIT="abc" is set by the tool on every build (the image's version and commit); remove BUILD_ARG_COMMIT and use IMAGE_TAG for the version`}},
		{name: "build arg that is a secret", env: []string{"BUILD_ARG_NPM_TOKEN=abc"},
			want: []string{`environment: BUILD_ARG_NPM_TOKEN="****" looks like a secret, and a build argument stays in the image's history; rename it NPM_TOKEN and pass it as a secret mount (BUILD_SECRETS=NPM_TOKEN, RUN --mount=type=secret,id=NPM_TOKEN)`}},
		{name: "build target", env: []string{"BUILD_TARGET=runtime"},
			check: func(t *testing.T, c *Config) { eq(t, c.BuildTarget, "runtime") }},
		{name: "build target not a name", env: []string{"BUILD_TARGET=a b"},
			want: []string{`environment: BUILD_TARGET="a b" is not a stage name (FROM ... AS <name>); set BUILD_TARGET to one of the Dockerfile's stages, or leave it unset for the last`}},
		{name: "build cache keep", env: []string{"BUILD_CACHE_KEEP=500MB"},
			check: func(t *testing.T, c *Config) { eq(t, c.BuildCacheKeep, int64(500_000_000)) }},
		{name: "build cache keep not a size", env: []string{"BUILD_CACHE_KEEP=lots"},
			want: []string{`environment: BUILD_CACHE_KEEP="lots" is not a size (e.g. 5GB, 500MB); set BUILD_CACHE_KEEP to how much build cache cleanup keeps`}},
		{name: "build secrets", dotenv: "BUILD_SECRETS=pip_token, npm=env:NPM_AUTH , netrc=file:secrets/netrc\npip_token=abc123\n", env: []string{"NPM_AUTH=npm-value"},
			setup: func(t *testing.T, dir string) {
				write(t, filepath.Join(dir, "secrets", "netrc"), "machine x password y\n")
			},
			check: func(t *testing.T, c *Config) {
				got := ""
				for _, s := range c.BuildSecrets {
					got += s.ID + "=" + string(s.Value) + " from " + s.From + ";"
				}
				eq(t, got, "pip_token=abc123 from pip_token (.env:2);npm=npm-value from NPM_AUTH (environment);netrc=machine x password y\n from file secrets/netrc;")
				if _, ok := c.AppEnv["pip_token"]; ok {
					t.Error("pip_token, read by BUILD_SECRETS, is still the app's")
				}
			}},
		{name: "build secret unset", dotenv: "BUILD_SECRETS=pip_token\n",
			want: []string{`.env:1: BUILD_SECRETS="****" names the secret pip_token, but neither .env nor the environment sets pip_token; set it, or write pip_token=env:VAR or pip_token=file:path`}},
		{name: "build secret file missing", env: []string{"BUILD_SECRETS=npm=file:.npmrc"},
			want: []string{`environment: BUILD_SECRETS="****" reads the secret npm from {dir}/.npmrc, which does not exist; create it or fix the path`}},
		{name: "build secret bad source", env: []string{"BUILD_SECRETS=npm=src:.npmrc"},
			want: []string{`environment: BUILD_SECRETS="****" has npm="src:.npmrc": write npm, npm=env:VAR or npm=file:path`}},
		{name: "build secret twice", env: []string{"BUILD_SECRETS=a=env:X,a=env:X", "X=1"},
			want: []string{`environment: BUILD_SECRETS="****" names the secret a twice; keep one`}},

		// DOCKERFILE and COMPOSE_FILE
		{name: "dockerfile relative", dotenv: "DOCKERFILE=docker/Dockerfile\n",
			setup: func(t *testing.T, dir string) { write(t, filepath.Join(dir, "docker", "Dockerfile"), "FROM scratch\n") },
			check: func(t *testing.T, c *Config) { eq(t, c.Dockerfile, filepath.Join(c.Dir, "docker", "Dockerfile")) }},
		{name: "dockerfile missing", dotenv: "DOCKERFILE=Dockerfile.prod\n",
			want: []string{`.env:1: DOCKERFILE="Dockerfile.prod" does not exist (looked for {dir}/Dockerfile.prod; set DOCKERFILE to your Dockerfile)`}},
		{name: "default dockerfile missing",
			setup: func(t *testing.T, dir string) { rm(t, filepath.Join(dir, defaultDockerfile)) },
			want:  []string{`DOCKERFILE="Dockerfile.production" (default) does not exist (looked for {dir}/Dockerfile.production; set DOCKERFILE to your Dockerfile)`}},
		{name: "dockerfile is a directory", env: []string{"DOCKERFILE=."},
			want: []string{`environment: DOCKERFILE="." is a directory, not a file ({dir}; set DOCKERFILE to your Dockerfile)`}},
		{name: "dockerfile with tilde", env: []string{"DOCKERFILE=~/Dockerfile"},
			want: []string{`environment: DOCKERFILE="~/Dockerfile" starts with ~, which is not expanded; set DOCKERFILE to a path relative to {dir} or an absolute one`}},
		{name: "compose file via ${VAR} expansion", setup: func(t *testing.T, dir string) { write(t, filepath.Join(dir, "deploy", "c.yml"), "") },
			dotenv: "COMPOSE_DIR=deploy\nCOMPOSE_FILE=${COMPOSE_DIR}/c.yml\n",
			check:  func(t *testing.T, c *Config) { eq(t, c.ComposeFile, filepath.Join(c.Dir, "deploy", "c.yml")) }},
		{name: "compose file missing", env: []string{"COMPOSE_FILE=/nonexistent/compose.yml"},
			want: []string{`environment: COMPOSE_FILE="/nonexistent/compose.yml" does not exist (looked for /nonexistent/compose.yml; set COMPOSE_FILE to your production compose file)`}},

		// Ports
		{name: "ports set", dotenv: "APP_PORT=8080\nTEST_PORT=18080\n",
			check: func(t *testing.T, c *Config) { eq(t, c.AppPort, 8080); eq(t, c.TestPort, 18080) }},
		{name: "app port not a number", dotenv: "\n\nAPP_PORT=abc\n",
			want: []string{`.env:3: APP_PORT="abc" is not a port number (1-65535)`}},
		{name: "app port zero", dotenv: "APP_PORT=0\n",
			want: []string{`.env:1: APP_PORT="0" is not a port number (1-65535)`}},
		{name: "app port too big", env: []string{"APP_PORT=65536"},
			want: []string{`environment: APP_PORT="65536" is not a port number (1-65535)`}},
		{name: "test port negative", env: []string{"TEST_PORT=-1"},
			want: []string{`environment: TEST_PORT="-1" is not a port number (1-65535)`}},
		{name: "test port equals default app port", dotenv: "TEST_PORT=5555\n",
			want: []string{`.env:1: TEST_PORT="5555" is the same port as APP_PORT (default); set TEST_PORT to a different port`}},
		{name: "app port equals default test port", env: []string{"APP_PORT=5556"},
			want: []string{`environment: APP_PORT="5556" is the same port as TEST_PORT (default); set APP_PORT or TEST_PORT to a different port`}},
		{name: "both ports equal", dotenv: "APP_PORT=7000\nTEST_PORT=7000\n",
			want: []string{`.env:2: TEST_PORT="7000" is the same port as APP_PORT (.env:1); set TEST_PORT to a different port`}},

		// HEALTH_PATH
		{name: "health path", env: []string{"HEALTH_PATH=/api/ready?full=1"},
			check: func(t *testing.T, c *Config) { eq(t, c.HealthPath, "/api/ready?full=1") }},
		{name: "health path without slash", dotenv: "HEALTH_PATH=health\n",
			want: []string{`.env:1: HEALTH_PATH="health" does not start with "/" (set HEALTH_PATH to a URL path such as /health)`}},
		{name: "health path full URL", env: []string{"HEALTH_PATH=http://localhost/health"},
			want: []string{`environment: HEALTH_PATH="http://localhost/health" does not start with "/" (set HEALTH_PATH to a URL path such as /health)`}},
		{name: "health path with space", dotenv: `HEALTH_PATH="/he alth"` + "\n",
			want: []string{`.env:1: HEALTH_PATH="/he alth" contains spaces, control characters or "#" (set HEALTH_PATH to a URL path such as /health)`}},

		// HEALTH_TIMEOUT
		{name: "timeout 90s", dotenv: "HEALTH_TIMEOUT=90s\n",
			check: func(t *testing.T, c *Config) { eq(t, c.HealthTimeout, 90*time.Second) }},
		{name: "timeout 2m", env: []string{"HEALTH_TIMEOUT=2m"},
			check: func(t *testing.T, c *Config) { eq(t, c.HealthTimeout, 2*time.Minute) }},
		{name: "timeout bare seconds", env: []string{"HEALTH_TIMEOUT=45"},
			check: func(t *testing.T, c *Config) { eq(t, c.HealthTimeout, 45*time.Second) }},
		{name: "timeout zero", env: []string{"HEALTH_TIMEOUT=0"},
			want: []string{`environment: HEALTH_TIMEOUT="0" is not more than zero (use a duration such as "90s" or "2m", or a whole number of seconds)`}},
		{name: "timeout negative", dotenv: "HEALTH_TIMEOUT=-5s\n",
			want: []string{`.env:1: HEALTH_TIMEOUT="-5s" is not more than zero (use a duration such as "90s" or "2m", or a whole number of seconds)`}},
		{name: "timeout garbage", dotenv: "HEALTH_TIMEOUT=soon\n",
			want: []string{`.env:1: HEALTH_TIMEOUT="soon" is not a duration (use a duration such as "90s" or "2m", or a whole number of seconds)`}},
		{name: "timeout fractional seconds without unit", dotenv: "HEALTH_TIMEOUT=1.5\n",
			want: []string{`.env:1: HEALTH_TIMEOUT="1.5" is not a duration (use a duration such as "90s" or "2m", or a whole number of seconds)`}},
		{name: "timeout huge number", env: []string{"HEALTH_TIMEOUT=99999999999999"},
			want: []string{`environment: HEALTH_TIMEOUT="99999999999999" is more than 24h (use a duration such as "90s" or "2m", or a whole number of seconds)`}},

		// LOCK_WAIT
		{name: "lock wait default", check: func(t *testing.T, c *Config) { eq(t, c.LockWait, time.Duration(0)) }},
		{name: "lock wait 30s", dotenv: "LOCK_WAIT=30s\n",
			check: func(t *testing.T, c *Config) { eq(t, c.LockWait, 30*time.Second) }},
		{name: "lock wait 2m", env: []string{"LOCK_WAIT=2m"},
			check: func(t *testing.T, c *Config) { eq(t, c.LockWait, 2*time.Minute) }},
		{name: "lock wait bare seconds", env: []string{"LOCK_WAIT=45"},
			check: func(t *testing.T, c *Config) { eq(t, c.LockWait, 45*time.Second) }},
		{name: "lock wait zero", dotenv: "LOCK_WAIT=0\n",
			check: func(t *testing.T, c *Config) { eq(t, c.LockWait, time.Duration(0)) }},
		{name: "lock wait negative", dotenv: "LOCK_WAIT=-5s\n",
			want: []string{`.env:1: LOCK_WAIT="-5s" is negative (use a duration such as "30s" or "2m", a whole number of seconds, or 0 to refuse at once)`}},
		{name: "lock wait garbage", env: []string{"LOCK_WAIT=forever"},
			want: []string{`environment: LOCK_WAIT="forever" is not a duration (use a duration such as "30s" or "2m", a whole number of seconds, or 0 to refuse at once)`}},
		{name: "lock wait more than a day", env: []string{"LOCK_WAIT=25h"},
			want: []string{`environment: LOCK_WAIT="25h" is more than 24h (use a duration such as "30s" or "2m", a whole number of seconds, or 0 to refuse at once)`}},

		// TRANSFER_STAGE
		{name: "stage default", check: func(t *testing.T, c *Config) { eq(t, c.Stage, "auto") }},
		{name: "stage always", dotenv: "TRANSFER_STAGE=always\n",
			check: func(t *testing.T, c *Config) { eq(t, c.Stage, "always") }},
		{name: "stage never", env: []string{"TRANSFER_STAGE=never"},
			check: func(t *testing.T, c *Config) { eq(t, c.Stage, "never") }},
		{name: "stage garbage", env: []string{"TRANSFER_STAGE=yes"},
			want: []string{`environment: TRANSFER_STAGE="yes" is not one of auto, always, never`}},

		// DEPLOY_HOST and DEPLOY_PATH
		{name: "remote host with defaults", dotenv: "DEPLOY_HOST=ubuntu@203.0.113.10\n",
			check: func(t *testing.T, c *Config) {
				eq(t, c.DeployHost, "ubuntu@203.0.113.10")
				eq(t, c.DeployPath, "/home/ubuntu/carebot-production")
				eq(t, c.Sources["DEPLOY_PATH"], SourceDefault)
				eq(t, c.Remote(), true)
			}},
		{name: "remote host with port and path", dotenv: "DEPLOY_HOST=deploy.example.com:2222\nDEPLOY_PATH=/srv/carebot/\n",
			check: func(t *testing.T, c *Config) {
				eq(t, c.DeployPath, "/srv/carebot")
				eq(t, c.Sources["DEPLOY_PATH"], ".env:2")
			}},
		{name: "remote ipv6 host", env: []string{"DEPLOY_HOST=root@[2001:db8::1]:22"},
			check: func(t *testing.T, c *Config) { eq(t, c.DeployHost, "root@[2001:db8::1]:22") }},
		{name: "ssh config alias", env: []string{"DEPLOY_HOST=prod"},
			check: func(t *testing.T, c *Config) { eq(t, c.DeployHost, "prod") }},
		{name: "deploy host with another scheme", dotenv: "DEPLOY_HOST=http://ubuntu@host\n",
			want: []string{`.env:1: DEPLOY_HOST="http://ubuntu@host" has a scheme other than ssh:// (set DEPLOY_HOST to [user@]host[:port], e.g. ubuntu@203.0.113.10, or leave it empty to deploy to this machine)`}},
		{name: "deploy host with space", dotenv: `DEPLOY_HOST="ubuntu@my host"` + "\n",
			want: []string{`.env:1: DEPLOY_HOST="ubuntu@my host" must not contain spaces (set DEPLOY_HOST to [user@]host[:port], e.g. ubuntu@203.0.113.10, or leave it empty to deploy to this machine)`}},
		{name: "deploy host port zero", env: []string{"DEPLOY_HOST=host:0"},
			want: []string{`environment: DEPLOY_HOST="host:0" has an invalid port (1-65535) (set DEPLOY_HOST to [user@]host[:port], e.g. ubuntu@203.0.113.10, or leave it empty to deploy to this machine)`}},
		{name: "deploy host port too big", env: []string{"DEPLOY_HOST=host:70000"},
			want: []string{`environment: DEPLOY_HOST="host:70000" has an invalid port (1-65535) (set DEPLOY_HOST to [user@]host[:port], e.g. ubuntu@203.0.113.10, or leave it empty to deploy to this machine)`}},
		{name: "deploy host empty port", env: []string{"DEPLOY_HOST=host:"},
			want: []string{`environment: DEPLOY_HOST="host:" has ":" but no port number (set DEPLOY_HOST to [user@]host[:port], e.g. ubuntu@203.0.113.10, or leave it empty to deploy to this machine)`}},
		{name: "deploy host empty user", env: []string{"DEPLOY_HOST=@host"},
			want: []string{`environment: DEPLOY_HOST="@host" has an empty or invalid user name before @ (set DEPLOY_HOST to [user@]host[:port], e.g. ubuntu@203.0.113.10, or leave it empty to deploy to this machine)`}},
		{name: "deploy host no host", env: []string{"DEPLOY_HOST=ubuntu@"},
			want: []string{`environment: DEPLOY_HOST="ubuntu@" has no host name (set DEPLOY_HOST to [user@]host[:port], e.g. ubuntu@203.0.113.10, or leave it empty to deploy to this machine)`}},
		{name: "deploy host two @", env: []string{"DEPLOY_HOST=a@b@c"},
			want: []string{`environment: DEPLOY_HOST="a@b@c" contains more than one "@" (set DEPLOY_HOST to [user@]host[:port], e.g. ubuntu@203.0.113.10, or leave it empty to deploy to this machine)`}},
		{name: "deploy host with path", env: []string{"DEPLOY_HOST=host/srv"},
			want: []string{`environment: DEPLOY_HOST="host/srv" must not contain a path (put that in DEPLOY_PATH) (set DEPLOY_HOST to [user@]host[:port], e.g. ubuntu@203.0.113.10, or leave it empty to deploy to this machine)`}},
		{name: "deploy host bare ipv6", env: []string{"DEPLOY_HOST=2001:db8::1"},
			want: []string{`environment: DEPLOY_HOST="2001:db8::1" is a bare IPv6 address: write it in brackets, e.g. [2001:db8::1]:22 (set DEPLOY_HOST to [user@]host[:port], e.g. ubuntu@203.0.113.10, or leave it empty to deploy to this machine)`}},
		{name: "deploy host twice", env: []string{"DEPLOY_HOST=u@a,u@a:22"},
			want: []string{`environment: DEPLOY_HOST="u@a,u@a:22" names u@a:22 twice: name each server once`}},
		{name: "swarm without a manager", env: []string{"DEPLOY_MODE=swarm"},
			want: []string{`environment: DEPLOY_MODE="swarm" needs DEPLOY_HOST: set it to a Swarm manager ([user@]host[:port])`}},
		{name: "swarm two managers", env: []string{"DEPLOY_MODE=swarm", "DEPLOY_HOST=a,b"},
			want: []string{`environment: DEPLOY_MODE="swarm" takes one DEPLOY_HOST, the Swarm manager: the tool finds the other nodes from it (name them in SWARM_NODES when their addresses differ)`}},
		{name: "stack name bad", env: []string{"STACK_NAME=-x"},
			want: []string{`environment: STACK_NAME="-x" is not a stack name (letters, digits, _ . -, starting with a letter or digit)`}},
		{name: "swarm nodes bad", env: []string{"SWARM_NODES=10.0.0.5"},
			want: []string{`environment: SWARM_NODES="10.0.0.5" has an entry that is not NODE_ADDRESS=[user@]host[:port] (set SWARM_NODES to NODE_ADDRESS=[user@]host[:port],…: how to reach each node whose swarm address is not reachable over SSH as it is)`}},
		{name: "strategy garbage", env: []string{"DEPLOY_STRATEGY=canary"},
			want: []string{`environment: DEPLOY_STRATEGY="canary" is not one of rolling (one server at a time), all (every server at once)`}},
		{name: "deploy host empty entry", env: []string{"DEPLOY_HOST=a,"},
			want: []string{`environment: DEPLOY_HOST="a," names no server (an empty entry) (set DEPLOY_HOST to [user@]host[:port], e.g. ubuntu@203.0.113.10, or leave it empty to deploy to this machine)`}},
		{name: "deploy host bad name", env: []string{"DEPLOY_HOST=my_host!"},
			want: []string{`environment: DEPLOY_HOST="my_host!" has an invalid host name (letters, digits, - and .) (set DEPLOY_HOST to [user@]host[:port], e.g. ubuntu@203.0.113.10, or leave it empty to deploy to this machine)`}},
		{name: "deploy host unclosed bracket", env: []string{"DEPLOY_HOST=[::1"},
			want: []string{`environment: DEPLOY_HOST="[::1" has "[" without "]" (set DEPLOY_HOST to [user@]host[:port], e.g. ubuntu@203.0.113.10, or leave it empty to deploy to this machine)`}},
		{name: "deploy host text after bracket", env: []string{"DEPLOY_HOST=[::1]22"},
			want: []string{`environment: DEPLOY_HOST="[::1]22" has text after "]" (expected [ipv6]:port) (set DEPLOY_HOST to [user@]host[:port], e.g. ubuntu@203.0.113.10, or leave it empty to deploy to this machine)`}},
		{name: "deploy host bracketed non-ipv6", env: []string{"DEPLOY_HOST=[host]"},
			want: []string{`environment: DEPLOY_HOST="[host]" has an invalid IPv6 address in brackets (set DEPLOY_HOST to [user@]host[:port], e.g. ubuntu@203.0.113.10, or leave it empty to deploy to this machine)`}},
		{name: "remote deploy path relative", dotenv: "DEPLOY_HOST=host\nDEPLOY_PATH=carebot\n",
			want: []string{`.env:2: DEPLOY_PATH="carebot" is not an absolute path; set DEPLOY_PATH to an absolute path on DEPLOY_HOST such as /home/ubuntu/carebot-production`}},
		{name: "remote deploy path with tilde", dotenv: "DEPLOY_HOST=host\n", env: []string{"DEPLOY_PATH=~/carebot"},
			want: []string{`environment: DEPLOY_PATH="~/carebot" starts with ~, which is not expanded; set DEPLOY_PATH to an absolute path on DEPLOY_HOST such as /home/ubuntu/carebot-production`}},
		{name: "remote deploy path root", env: []string{"DEPLOY_HOST=host", "DEPLOY_PATH=//"},
			want: []string{`environment: DEPLOY_PATH="//" is the root directory; set DEPLOY_PATH to a directory of its own`}},
		{name: "local deploy path relative", dotenv: "DEPLOY_PATH=out/prod\n",
			check: func(t *testing.T, c *Config) { eq(t, c.DeployPath, filepath.Join(c.Dir, "out", "prod")) }},
		{name: "local deploy path absolute", env: []string{"DEPLOY_PATH=/opt/carebot"},
			check: func(t *testing.T, c *Config) { eq(t, c.DeployPath, "/opt/carebot") }},
		{name: "local deploy path is a file", dotenv: "DEPLOY_PATH=Dockerfile.production\n",
			want: []string{`.env:1: DEPLOY_PATH="Dockerfile.production" is not a directory ({dir}/Dockerfile.production); set DEPLOY_PATH to a directory`}},
		{name: "local deploy path root", env: []string{"DEPLOY_PATH=/"},
			want: []string{`environment: DEPLOY_PATH="/" is the root directory; set DEPLOY_PATH to a directory of its own`}},

		// IMAGE_KEEP
		{name: "image keep 1", env: []string{"IMAGE_KEEP=1"},
			check: func(t *testing.T, c *Config) { eq(t, c.ImageKeep, 1) }},
		{name: "image keep 0", dotenv: "IMAGE_KEEP=0\n",
			want: []string{`.env:1: IMAGE_KEEP="0" is not a whole number of images to keep (1 or more)`}},
		{name: "image keep word", env: []string{"IMAGE_KEEP=all"},
			want: []string{`environment: IMAGE_KEEP="all" is not a whole number of images to keep (1 or more)`}},

		// TEST_DATA and MIGRATIONS
		{name: "test data and migrations exist", dotenv: "TEST_DATA=fixtures\n",
			setup: func(t *testing.T, dir string) {
				write(t, filepath.Join(dir, "fixtures", "a.json"), "{}")
				write(t, filepath.Join(dir, "migrations", "001.sql"), "")
			},
			check: func(t *testing.T, c *Config) {
				eq(t, c.TestData, filepath.Join(c.Dir, "fixtures"))
				eq(t, c.Migrations, filepath.Join(c.Dir, "migrations"))
			}},
		{name: "backup keep zero", env: []string{"BACKUP_KEEP=0"},
			want: []string{`environment: BACKUP_KEEP="0" is not a whole number of 1 or more (how many data backups to keep)`}},
		{name: "test data set but missing is fine: Test creates it", dotenv: "TEST_DATA=./nope\n"},
		{name: "migrations set but missing", dotenv: "MIGRATIONS=./nope\n",
			want: []string{`.env:1: MIGRATIONS="./nope" does not exist (looked for {dir}/nope; create it, fix MIGRATIONS or leave MIGRATIONS unset)`}},
		{name: "test data with tilde", env: []string{"TEST_DATA=~/data"},
			want: []string{`environment: TEST_DATA="~/data" starts with ~, which is not expanded; set TEST_DATA to a path relative to {dir} or an absolute one`}},
		{name: "migrations is a file", env: []string{"MIGRATIONS=docker-compose.production.yml"},
			want: []string{`environment: MIGRATIONS="docker-compose.production.yml" is not a directory ({dir}/docker-compose.production.yml; set MIGRATIONS to a directory)`}},
		{name: "default migrations is a file",
			setup: func(t *testing.T, dir string) { write(t, filepath.Join(dir, "migrations"), "") },
			want:  []string{`MIGRATIONS="./migrations" (default) is not a directory ({dir}/migrations; set MIGRATIONS to a directory)`}},

		// WSL
		{name: "wsl distro", env: []string{"WSL_DISTRO=Debian", "DOCKER_VIA_WSL=true", "DOCKER_SUDO=1"},
			check: func(t *testing.T, c *Config) {
				eq(t, c.WSLDistro, "Debian")
				eq(t, c.DockerViaWSL, "1")
				eq(t, c.DockerSudo, true)
			}},
		{name: "docker via wsl off", dotenv: "DOCKER_VIA_WSL=0\n",
			check: func(t *testing.T, c *Config) { eq(t, c.DockerViaWSL, "0") }},
		{name: "wsl distro with space", dotenv: "WSL_DISTRO=\"Ubuntu 22\"\n",
			want: []string{".env:1: WSL_DISTRO=\"Ubuntu 22\" is not a WSL distro name (letters, digits, . _ -; `wsl -l -q` lists yours)"}},
		{name: "docker via wsl bad", env: []string{"DOCKER_VIA_WSL=maybe"},
			want: []string{`environment: DOCKER_VIA_WSL="maybe" is not auto, 1 or 0 (auto: through WSL on Windows unless DOCKER_HOST is set)`}},
		{name: "docker sudo bad", env: []string{"DOCKER_SUDO=yes please"},
			want: []string{`environment: DOCKER_SUDO="yes please" is not 1/0 or true/false`}},

		// Several problems at once: all reported, one line each.
		{name: "several errors", dotenv: "APP_PORT=x\nIMAGE_KEEP=0\nHEALTH_PATH=h\n", env: []string{"DEPLOY_HOST=ftp://h", "IMAGE_TAG=-"},
			want: []string{
				`environment: IMAGE_TAG="-" is not a valid Docker tag (up to 128 of A-Z a-z 0-9 _ . -, not starting with . or -)`,
				`.env:2: IMAGE_KEEP="0" is not a whole number of images to keep (1 or more)`,
				`.env:1: APP_PORT="x" is not a port number (1-65535)`,
				`.env:3: HEALTH_PATH="h" does not start with "/" (set HEALTH_PATH to a URL path such as /health)`,
				`environment: DEPLOY_HOST="ftp://h" has a scheme other than ssh:// (set DEPLOY_HOST to [user@]host[:port], e.g. ubuntu@203.0.113.10, or leave it empty to deploy to this machine)`,
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			stubGit(t, testCommit, false, nil)
			dir := newProject(t, tt.dotenv)
			if tt.setup != nil {
				tt.setup(t, dir)
			}
			c, err := Load(dir, tt.env)
			got := errLines(t, err)
			var want []string
			for _, w := range tt.want {
				want = append(want, strings.ReplaceAll(w, "{dir}", dir))
			}
			if strings.Join(got, "\n") != strings.Join(want, "\n") {
				t.Fatalf("errors:\n got %q\nwant %q", got, want)
			}
			if err == nil && tt.check != nil {
				tt.check(t, c)
			}
		})
	}
}

func eq[T comparable](t *testing.T, got, want T) {
	t.Helper()
	if got != want {
		t.Errorf("got %v, want %v", got, want)
	}
}

func rm(t *testing.T, path string) {
	t.Helper()
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
}

// TestLoadAll gives the doctor the Config along with the errors, with
// SSH_KEY's path kept so the key check can name it.
func TestLoadAll(t *testing.T) {
	stubGit(t, testCommit, false, nil)
	dir := newProject(t, "APP_PORT=x\n")
	missing := filepath.Join(t.TempDir(), "no-such-key") // not /nonexistent: a shared machine may have one
	env := []string{"DEPLOY_HOST=root@127.0.0.1:2222", "SSH_KEY=" + missing, "WSL_DISTRO=Debian"}
	if _, err := Load(dir, env); err == nil {
		t.Fatal("Load accepted invalid settings")
	}
	c, err := LoadAll(dir, env)
	if c == nil {
		t.Fatalf("LoadAll returned no Config: %v", err)
	}
	lines := errLines(t, err)
	if len(lines) != 2 || !strings.Contains(lines[0], "APP_PORT") || !strings.Contains(lines[1], "SSH_KEY") {
		t.Errorf("errors = %q, want APP_PORT then SSH_KEY", lines)
	}
	eq(t, c.SSHKey, missing)
	eq(t, c.DeployHost, "root@127.0.0.1:2222")
	eq(t, c.WSLDistro, "Debian")
	eq(t, c.AppPort, 0)
	if _, err := LoadAll(filepath.Join(dir, "nope"), nil); err == nil {
		t.Error("LoadAll of a missing directory: no error")
	}
}

func TestSettingErrorIsMatchable(t *testing.T) {
	stubGit(t, testCommit, false, nil)
	dir := newProject(t, "APP_PORT=abc\n")
	_, err := Load(dir, nil)
	var se *SettingError
	if !errors.As(err, &se) {
		t.Fatalf("err = %v, want a *SettingError", err)
	}
	want := SettingError{Key: "APP_PORT", Value: "abc", Source: ".env:1", Msg: "is not a port number (1-65535)"}
	if *se != want {
		t.Errorf("got %+v, want %+v", *se, want)
	}
}

func TestPrecedence(t *testing.T) {
	dotenv := "# tool\nIMAGE_NAME=from-dotenv\nAPP_PORT=6000\nTEST_PORT=6001\n\n# app\nBOT_TOKEN=dotenv-token\nLOG_LEVEL=debug\nGREETING=\"hi ${LOG_LEVEL}\"\n"
	tests := []struct {
		name        string
		env         []string
		wantName    string
		wantNameSrc string
		wantPort    int
		wantPortSrc string
		wantApp     map[string]string
		wantAppSrc  map[string]string
	}{
		{
			name:     "dotenv only",
			wantName: "from-dotenv", wantNameSrc: ".env:2",
			wantPort: 6000, wantPortSrc: ".env:3",
			wantApp:    map[string]string{"BOT_TOKEN": "dotenv-token", "LOG_LEVEL": "debug", "GREETING": "hi debug"}, // the tool's settings are not the app's
			wantAppSrc: map[string]string{"BOT_TOKEN": ".env:7", "LOG_LEVEL": ".env:8", "GREETING": ".env:9"},
		},
		{
			name:     "environment wins",
			env:      []string{"IMAGE_NAME=from-env", "APP_PORT=7000", "BOT_TOKEN=env-token", "UNRELATED=x"},
			wantName: "from-env", wantNameSrc: SourceEnvironment,
			wantPort: 7000, wantPortSrc: SourceEnvironment,
			wantApp:    map[string]string{"BOT_TOKEN": "env-token", "LOG_LEVEL": "debug", "GREETING": "hi debug"},
			wantAppSrc: map[string]string{"BOT_TOKEN": SourceEnvironment, "LOG_LEVEL": ".env:8"},
		},
		{
			name:     "later duplicate in environ wins",
			env:      []string{"IMAGE_NAME=first", "IMAGE_NAME=second"},
			wantName: "second", wantNameSrc: SourceEnvironment,
			wantPort: 6000, wantPortSrc: ".env:3",
		},
		{
			name:     "empty in environment means default",
			env:      []string{"IMAGE_NAME=", "APP_PORT=  "},
			wantName: "carebot", wantNameSrc: SourceDefault,
			wantPort: 5555, wantPortSrc: SourceDefault,
		},
		{
			name:     "surrounding spaces are trimmed",
			env:      []string{"APP_PORT= 7001 "},
			wantName: "from-dotenv", wantNameSrc: ".env:2",
			wantPort: 7001, wantPortSrc: SourceEnvironment,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			stubGit(t, testCommit, false, nil)
			dir := newProject(t, dotenv)
			c, err := Load(dir, tt.env)
			if err != nil {
				t.Fatal(err)
			}
			eq(t, c.EnvFile, filepath.Join(dir, ".env"))
			eq(t, c.ImageName, tt.wantName)
			eq(t, c.Sources["IMAGE_NAME"], tt.wantNameSrc)
			eq(t, c.AppPort, tt.wantPort)
			eq(t, c.Sources["APP_PORT"], tt.wantPortSrc)
			if _, ok := c.AppEnv["UNRELATED"]; ok {
				t.Error("AppEnv holds a variable that is only in the environment")
			}
			for k, v := range tt.wantApp {
				if c.AppEnv[k] != v {
					t.Errorf("AppEnv[%s] = %q, want %q", k, c.AppEnv[k], v)
				}
			}
			if tt.wantApp != nil && len(c.AppEnv) != len(tt.wantApp) {
				t.Errorf("AppEnv = %v, want %v", c.AppEnv, tt.wantApp)
			}
			for k, v := range tt.wantAppSrc {
				eq(t, c.Sources[k], v)
			}
		})
	}
}

func TestParseDotenv(t *testing.T) {
	tests := []struct {
		name      string
		in        string
		want      map[string]string
		wantLines map[string]int
		wantErr   string
	}{
		{
			name:      "comments, blanks, export, yaml style, inline comment",
			in:        "# header\n\nexport A=1\nB: two\n   C = 3 # note\nD='single $A'\nE=\"double ${A}\"\n",
			want:      map[string]string{"A": "1", "B": "two", "C": "3", "D": "single $A", "E": "double 1"},
			wantLines: map[string]int{"A": 3, "B": 4, "C": 5, "D": 6, "E": 7},
		},
		{
			name:      "multi-line quoted value",
			in:        "A=1\nCERT=\"line one\nline two\nline three\"\nB=2\n",
			want:      map[string]string{"A": "1", "CERT": "line one\nline two\nline three", "B": "2"},
			wantLines: map[string]int{"A": 1, "CERT": 2, "B": 5},
		},
		{
			name:      "CRLF, BOM and no final newline",
			in:        "\ufeffA=1\r\nB=2",
			want:      map[string]string{"A": "1", "B": "2"},
			wantLines: map[string]int{"A": 1, "B": 2},
		},
		{
			name:      "duplicate key: last wins with its line",
			in:        "A=1\nA=2\n",
			want:      map[string]string{"A": "2"},
			wantLines: map[string]int{"A": 2},
		},
		{
			name:      "empty values",
			in:        "A=\nB=\"\"\n",
			want:      map[string]string{"A": "", "B": ""},
			wantLines: map[string]int{"A": 1, "B": 2},
		},
		{name: "empty file", in: "", want: map[string]string{}, wantLines: map[string]int{}},
		{
			name:    "line without =",
			in:      "A=1\nB=2\n# c\n\nC=3\nD=4\nFOO BAR\nE=5\n",
			wantErr: `.env:7: cannot parse "FOO BAR": expected KEY=VALUE`,
		},
		{
			name:    "bare word on the last line without newline",
			in:      "A=1\nFOO",
			wantErr: `.env:2: cannot parse "FOO": expected KEY=VALUE`,
		},
		{
			name:    "name with a space",
			in:      "FOO BAR=1\n",
			wantErr: `.env:1: cannot parse "FOO BAR=1": expected KEY=VALUE with KEY made of letters, digits and _`,
		},
		{
			name:    "missing name",
			in:      "A=1\n=value\n",
			wantErr: `.env:2: cannot parse "=value": expected KEY=VALUE with KEY made of letters, digits and _`,
		},
		{
			name:    "name with a dash",
			in:      "MY-VAR=1\n",
			wantErr: `.env:1: cannot parse "MY-VAR=1": expected KEY=VALUE`,
		},
		{
			name:    "unterminated double quote in the middle",
			in:      "A=1\nB=2\nC=\"abc\nD=4\nE=5\n",
			wantErr: `.env:3: cannot parse "C=\"abc": unterminated quoted value (add the closing quote)`,
		},
		{
			name:    "unterminated quote closed by a later line's quote",
			in:      "A=1\nC=\"abc\nD=\"4\"\n",
			wantErr: `.env:2: cannot parse "C=\"abc": unterminated quoted value (add the closing quote)`,
		},
		{
			name:    "unterminated single quote on the last line",
			in:      "A=1\nB='abc",
			wantErr: `.env:2: cannot parse "B='abc": unterminated quoted value (add the closing quote)`,
		},
		{
			name:    "junk after a quoted value",
			in:      "A=1\nB=\"x\" y\n",
			wantErr: `.env:2: cannot parse "B=\"x\" y": expected KEY=VALUE`,
		},
		{
			name:    "line numbers count CRLF lines and multi-line values",
			in:      "A=\"1\r\n2\"\r\nB=2\r\nBAD LINE\r\n",
			wantErr: `.env:4: cannot parse "BAD LINE": expected KEY=VALUE`,
		},
		{
			name:    "secret line is redacted",
			in:      "A=1\nBOT_TOKEN 123456:ABC-secret\n",
			wantErr: `.env:2: cannot parse "BOT_TOKEN ****": expected KEY=VALUE with KEY made of letters, digits and _`,
		},
		{
			name:    "secret line without separator is redacted",
			in:      "A=1\nMY_SECRET hunter2\n",
			wantErr: `.env:2: cannot parse "MY_SECRET ****": expected KEY=VALUE`,
		},
		{
			name:    "secret with unterminated quote is redacted",
			in:      "export DB_PASSWORD=\"hunter2\nX=1\n",
			wantErr: `.env:1: cannot parse "export DB_PASSWORD=****": unterminated quoted value (add the closing quote)`,
		},
		{
			name:    "secret by its ending is redacted",
			in:      "SMTP_PASS hunter2\n",
			wantErr: `.env:1: cannot parse "SMTP_PASS ****": expected KEY=VALUE`,
		},
		{
			name:    "password in a URL is hidden",
			in:      "DATABASE_URL=\"postgres://bob:hunter2@db/x\nX=1\n",
			wantErr: `.env:1: cannot parse "DATABASE_URL=\"postgres://bob:****@db/x": unterminated quoted value (add the closing quote)`,
		},
		{
			name:    "password in a URL is hidden before the line is shortened",
			in:      "DATABASE_URL=\"postgres://" + strings.Repeat("u", 40) + ":hunter2hunter2hunter2@db/x\n",
			wantErr: `.env:1: cannot parse "DATABASE_URL=\"postgres://` + strings.Repeat("u", 40) + `:****@db/x": unterminated quoted value (add the closing quote)`,
		},
		{
			name:    "long line is shortened",
			in:      "X" + strings.Repeat(" y", 60) + "\n",
			wantErr: `.env:1: cannot parse "X` + strings.Repeat(" y", 38) + `...": expected KEY=VALUE`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d, err := parseDotenv(".env", []byte(tt.in))
			got, lines := d.values, d.lineOf
			if tt.wantErr != "" {
				if err == nil {
					t.Fatalf("got %v, want error %q", got, tt.wantErr)
				}
				if err.Error() != tt.wantErr {
					t.Errorf("error:\n got %s\nwant %s", err, tt.wantErr)
				}
				var pe *ParseError
				if !errors.As(err, &pe) {
					t.Errorf("error is a %T, want *ParseError", err)
				}
				if strings.ContainsAny(err.Error(), "\r\n") {
					t.Errorf("error is not one line: %q", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tt.want) {
				t.Errorf("values = %q, want %q", got, tt.want)
			}
			for k, v := range tt.want {
				if got[k] != v {
					t.Errorf("%s = %q, want %q", k, got[k], v)
				}
			}
			if len(lines) != len(tt.wantLines) {
				t.Errorf("lines = %v, want %v", lines, tt.wantLines)
			}
			for k, n := range tt.wantLines {
				if lines[k] != n {
					t.Errorf("line of %s = %d, want %d", k, lines[k], n)
				}
			}
		})
	}
}

func TestLoadBrokenDotenv(t *testing.T) {
	stubGit(t, testCommit, false, nil)
	dir := newProject(t, "APP_PORT=1\nBOT_TOKEN=\"s3cr3t-value\nTEST_PORT=2\n")
	_, err := Load(dir, nil)
	want := `.env:2: cannot parse "BOT_TOKEN=****": unterminated quoted value (add the closing quote)`
	if err == nil || err.Error() != want {
		t.Fatalf("err = %v, want %s", err, want)
	}
	var pe *ParseError
	if !errors.As(err, &pe) || pe.Line != 2 {
		t.Errorf("err = %#v, want *ParseError at line 2", err)
	}
}

func TestLoadUnreadableDotenv(t *testing.T) {
	stubGit(t, testCommit, false, nil)
	dir := newProject(t, noEnv)
	if err := os.Mkdir(filepath.Join(dir, ".env"), 0o755); err != nil {
		t.Fatal(err)
	}
	_, err := Load(dir, nil)
	if err == nil || !strings.HasPrefix(err.Error(), ".env: ") {
		t.Errorf("err = %v, want a .env read error", err)
	}
}

func TestRedact(t *testing.T) {
	tests := []struct{ key, value, want string }{
		{"BOT_TOKEN", "123:abc", "****"},
		{"bot_token", "123:abc", "****"},
		{"BOT_TOKEN", "", ""},
		{"CLIENT_SECRET", "x", "****"},
		{"DB_PASSWORD", "x", "****"},
		{"DB_PASSWD", "x", "****"},
		{"API_KEY", "x", "****"},
		{"SSH_KEY_FILE", "/k", "****"},
		{"GOOGLE_CREDENTIALS", "{}", "****"},
		{"IMAGE_KEEP", "5", "5"},
		{"LOG_LEVEL", "debug", "debug"},
		{"DATABASE_URL", "postgres://bot:hunter2@db:5432/care?sslmode=disable", "postgres://bot:****@db:5432/care?sslmode=disable"},
		{"DATABASE_URL", "postgres://bot@db/care", "postgres://bot@db/care"},
		{"REDIS_URL", "redis://:pw@cache:6379/0", "redis://:****@cache:6379/0"},
		{"WEBHOOK", "https://example.com/a:b@c", "https://example.com/a:b@c"},
		{"SMTP_PASS", "x", "****"},
		{"BASIC_AUTH", "bob:x", "****"},
		{"AUTHOR", "Bob", "Bob"},
		{"DATABASE_URL", "postgres://bob:hunter2@db/x", "postgres://bob:****@db/x"},
		{"DATABASE_URL", "postgres://bob:p@ss@db/x", "postgres://bob:****@db/x"},
		{"DATABASE_URL", "postgres://bob:@db/x", "postgres://bob:@db/x"},
		{"DATABASE_URL", "postgres://bob@db:5432/x", "postgres://bob@db:5432/x"},
		{"JDBC_URL", "jdbc:postgresql://bob:hunter2@db/x", "jdbc:postgresql://bob:****@db/x"},
		{"WORKER_ARGS", "--db=postgres://bob:hunter2@db/x --cache redis://:pw@cache", "--db=postgres://bob:****@db/x --cache redis://:****@cache"},
		{"BROKER_URL", "amqp://guest:guest@mq", "amqp://guest:****@mq"},
	}
	for _, tt := range tests {
		if got := Redact(tt.key, tt.value); got != tt.want {
			t.Errorf("Redact(%q, %q) = %q, want %q", tt.key, tt.value, got, tt.want)
		}
	}
}

// TestSecretsNeverShown checks that a BOT_TOKEN value appears neither in
// Print output nor in errors, whichever way it gets in.
func TestSecretsNeverShown(t *testing.T) {
	const token = "7777777:AAH-very-secret-token"
	t.Run("print", func(t *testing.T) {
		stubGit(t, testCommit, false, nil)
		dir := newProject(t, "BOT_TOKEN="+token+"\nDATABASE_URL=postgres://u:"+token+"@db/x\n")
		c, err := Load(dir, []string{"MY_API_KEY=" + token})
		if err != nil {
			t.Fatal(err)
		}
		if c.AppEnv["BOT_TOKEN"] != token {
			t.Errorf("AppEnv[BOT_TOKEN] = %q; the container needs the real value", c.AppEnv["BOT_TOKEN"])
		}
		var b bytes.Buffer
		c.Print(&b)
		if strings.Contains(b.String(), token) || strings.Contains(b.String(), "very-secret") {
			t.Errorf("Print shows the token:\n%s", b.String())
		}
		if !strings.Contains(b.String(), "BOT_TOKEN=**** (source: .env:1)\n") {
			t.Errorf("Print does not list BOT_TOKEN redacted:\n%s", b.String())
		}
	})
	errorCases := []struct {
		name   string
		dotenv string
		env    []string
	}{
		{"broken line naming the token", "BOT_TOKEN " + token + "\n", nil},
		{"unterminated token", "A=1\nBOT_TOKEN='" + token + "\nB=2\n", nil},
		{"token plus invalid settings", "BOT_TOKEN=" + token + "\nAPP_PORT=x\n", []string{"BOT_TOKEN=" + token, "IMAGE_TAG=/x", "BOT_TOKEN_2=" + token}},
		{"token pasted into a tool setting", "", []string{"DEPLOY_HOST=" + token, "HEALTH_PATH=" + token}},
	}
	for _, tt := range errorCases {
		t.Run(tt.name, func(t *testing.T) {
			stubGit(t, testCommit, false, nil)
			dir := newProject(t, tt.dotenv)
			_, err := Load(dir, tt.env)
			if err == nil {
				t.Fatal("Load succeeded, want an error")
			}
			// A value pasted into a tool setting is not known to be secret
			// and is shown; the token's own name never leaks its value.
			if strings.Contains(tt.name, "pasted") {
				return
			}
			if strings.Contains(err.Error(), "very-secret") {
				t.Errorf("error shows the token: %v", err)
			}
		})
	}
}

func TestSettingErrorRedactsSecretKeys(t *testing.T) {
	e := &SettingError{Key: "BOT_TOKEN", Value: Redact("BOT_TOKEN", "abc"), Source: SourceEnvironment, Msg: "is wrong"}
	eq(t, e.Error(), `environment: BOT_TOKEN="****" is wrong`)
}

func TestGitSeam(t *testing.T) {
	tests := []struct {
		name       string
		commit     string
		dirty      bool
		gitErr     error
		env        []string
		wantTag    string
		wantSrc    string
		wantCommit string
		wantErr    string
	}{
		{name: "clean", commit: testCommit, wantTag: "0123456", wantSrc: SourceGit, wantCommit: testCommit},
		{name: "dirty", commit: testCommit, dirty: true, wantTag: "0123456-dirty", wantSrc: SourceGit, wantCommit: testCommit},
		{name: "explicit tag in a dirty tree", commit: testCommit, dirty: true, env: []string{"IMAGE_TAG=v2"},
			wantTag: "v2", wantSrc: SourceEnvironment, wantCommit: testCommit},
		{name: "not git, tag set", gitErr: errors.New("git rev-parse: fatal: not a git repository"), env: []string{"IMAGE_TAG=v2"},
			wantTag: "v2", wantSrc: SourceEnvironment},
		{name: "not git, no tag", gitErr: errors.New("git rev-parse: fatal: not a git repository (or any of the parent directories): .git\nmore"),
			wantErr: `IMAGE_TAG is not set and the git commit of {dir} is unknown (git rev-parse: fatal: not a git repository (or any of the parent directories): .git); set IMAGE_TAG`},
		{name: "odd commit", commit: "abc",
			wantErr: `IMAGE_TAG is not set and git gave an unusable commit "abc" for {dir}; set IMAGE_TAG`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			stubGit(t, tt.commit, tt.dirty, tt.gitErr)
			dir := newProject(t, noEnv)
			c, err := Load(dir, tt.env)
			if tt.wantErr != "" {
				got := errLines(t, err)
				want := strings.ReplaceAll(tt.wantErr, "{dir}", dir)
				if len(got) != 1 || got[0] != want {
					t.Fatalf("errors = %q, want %q", got, want)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			eq(t, c.ImageTag, tt.wantTag)
			eq(t, c.Sources["IMAGE_TAG"], tt.wantSrc)
			eq(t, c.Commit, tt.wantCommit)
			eq(t, c.Dirty, tt.dirty && tt.gitErr == nil)
		})
	}
}

// TestRealGit exercises the real gitInfo against a scratch repository.
func TestRealGit(t *testing.T) {
	if _, err := exec.LookPath("git"); err != nil {
		testenv.Skip(t, "git is not installed (apt-get install git)")
	}
	dir := t.TempDir()
	git := func(args ...string) {
		t.Helper()
		cmd := exec.Command("git", append([]string{"-C", dir, "-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "commit.gpgsign=false"}, args...)...)
		cmd.Env = append(os.Environ(), "GIT_CONFIG_NOSYSTEM=1", "HOME="+dir)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("git %v: %v\n%s", args, err, out)
		}
	}

	if _, _, err := gitInfo(dir); err == nil || strings.Contains(err.Error(), "\n") {
		t.Errorf("outside git: err = %v, want a one-line error", err)
	}
	git("init", "-q")
	if _, _, err := gitInfo(dir); err == nil {
		t.Error("repository without commits: want an error")
	}
	write(t, filepath.Join(dir, "f"), "1")
	git("add", "f")
	git("commit", "-q", "-m", "x")
	commit, dirty, err := gitInfo(dir)
	if err != nil || len(commit) < 40 || dirty {
		t.Errorf("clean: got %q, %v, %v", commit, dirty, err)
	}
	write(t, filepath.Join(dir, "untracked"), "")
	if c2, dirty, err := gitInfo(dir); err != nil || c2 != commit || !dirty {
		t.Errorf("dirty: got %q, %v, %v", c2, dirty, err)
	}
}

func TestPrint(t *testing.T) {
	stubGit(t, testCommit, true, nil)
	dir := newProject(t, "# app\nBOT_TOKEN=123:abc\nGREETING=\"hello world\"\nAPP_PORT=6000\n")
	c, err := Load(dir, []string{"DEPLOY_HOST=ubuntu@example.com", "HEALTH_TIMEOUT=90", "BOT_TOKEN=456:def"})
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	c.Print(&b)
	want := strings.ReplaceAll(`IMAGE_NAME=carebot (source: default)
IMAGE_TAG=0123456-dirty (source: git)
DOCKERFILE={dir}/Dockerfile.production (source: default)
IMAGE_KEEP=5 (source: default)
BUILD_TARGET= (source: default)
BUILD_CACHE_KEEP=5GB (source: default)
TEST_PORT=5556 (source: default)
HEALTH_PATH=/health (source: default)
HEALTH_TIMEOUT=1m30s (source: environment)
TEST_DATA={dir}/test-data (source: default)
DEPLOY_HOST=ubuntu@example.com (source: environment)
DEPLOY_PATH=/home/ubuntu/carebot-production (source: default)
DEPLOY_STRATEGY=rolling (source: default)
DEPLOY_MODE=compose (source: default)
STACK_NAME=carebot (source: default)
SWARM_NODES= (source: default)
COMPOSE_FILE={dir}/docker-compose.production.yml (source: default)
APP_PORT=6000 (source: .env:4)
MIGRATIONS={dir}/migrations (source: default)
BACKUP_KEEP=10 (source: default)
LOCK_WAIT=0s (source: default)
SSH_KEY= (source: default)
SSH_KEY_PASSPHRASE= (source: default)
SSH_KNOWN_HOSTS={home}/.ssh/known_hosts (source: default)
SSH_ACCEPT_NEW=false (source: default)
TRANSFER_COMPRESSION=auto (source: default)
TRANSFER_STAGE=auto (source: default)
DEPLOY_DOCKER_SUDO=false (source: default)
WSL_DISTRO=Ubuntu-22.04 (source: default)
DOCKER_VIA_WSL=auto (source: default)
DOCKER_SUDO=false (source: default)
BOT_TOKEN=**** (source: environment)
GREETING="hello world" (source: .env:3)
`, "{dir}", dir)
	want = strings.ReplaceAll(want, "{home}", home(t))
	if b.String() != want {
		t.Errorf("Print:\n%s\nwant:\n%s", b.String(), want)
	}
}

func TestDeployTargets(t *testing.T) {
	tests := []struct {
		env  string
		want Target
	}{
		{"prod", Target{"me", "prod", 22}},
		{"ubuntu@203.0.113.10", Target{"ubuntu", "203.0.113.10", 22}},
		{"deploy.example.com:2222", Target{"me", "deploy.example.com", 2222}},
		{"ssh://deploy@10.0.0.1", Target{"deploy", "10.0.0.1", 22}},
		{"ssh://deploy@10.0.0.1:2200", Target{"deploy", "10.0.0.1", 2200}},
		{"root@[2001:db8::1]:22", Target{"root", "2001:db8::1", 22}},
		{"[::1]", Target{"me", "::1", 22}},
		{" ubuntu@host ", Target{"ubuntu", "host", 22}},
	}
	for _, tt := range tests {
		c, err := Load(newProject(t, ""), []string{"IMAGE_TAG=v1", "USER=me", "DEPLOY_HOST=" + tt.env})
		if err != nil {
			t.Errorf("DEPLOY_HOST=%q: %v", tt.env, err)
			continue
		}
		if len(c.Targets) != 1 || c.Targets[0] != tt.want {
			t.Errorf("DEPLOY_HOST=%q: targets %+v, want %+v", tt.env, c.Targets, tt.want)
		}
	}
	c, err := Load(newProject(t, ""), []string{"IMAGE_TAG=v1", "USER=me", "DEPLOY_HOST=ubuntu@10.0.0.5, ubuntu@10.0.0.6:2222", "DEPLOY_STRATEGY=all"})
	if want := []Target{{"ubuntu", "10.0.0.5", 22}, {"ubuntu", "10.0.0.6", 2222}}; err != nil || !slices.Equal(c.Targets, want) || c.Strategy != "all" {
		t.Errorf("two servers: %+v %q %v, want %+v", c.Targets, c.Strategy, err, want)
	}
	c, err = Load(newProject(t, ""), []string{"IMAGE_TAG=v1", "USER=", "DEPLOY_HOST=h"})
	if err != nil || c.Targets[0].User != "root" || c.Strategy != "rolling" {
		t.Errorf("no USER: %+v %v", c, err)
	}
	if got := (Target{"u", "2001:db8::1", 2222}).String(); got != "u@[2001:db8::1]:2222" {
		t.Errorf("String() = %q", got)
	}
	c, err = Load(newProject(t, ""), []string{"IMAGE_TAG=v1"})
	if err != nil || c.Remote() || len(c.Targets) != 0 {
		t.Errorf("no DEPLOY_HOST: %+v %v", c.Targets, err)
	}
}

// TestEnvExample keeps ../../.env.example parseable and complete: every
// setting is documented, and as a .env it gives the defaults.
func TestEnvExample(t *testing.T) {
	data, err := os.ReadFile(filepath.Join("..", "..", ".env.example"))
	if err != nil {
		t.Fatalf("the repository must have .env.example: %v", err)
	}
	for _, k := range append(settingKeys, "BOT_TOKEN", "CAREBOT_HEALTH_FAIL") {
		if !strings.Contains(string(data), k+"=") {
			t.Errorf(".env.example does not document %s", k)
		}
	}
	stubGit(t, testCommit, false, nil)
	dir := newProject(t, string(data))
	c, err := Load(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, k := range settingKeys {
		if src := c.Sources[k]; src != SourceDefault && src != SourceGit {
			t.Errorf("%s comes from %s, want the default", k, src)
		}
	}
	if v, ok := c.AppEnv["BOT_TOKEN"]; !ok || v != "" {
		t.Errorf("AppEnv[BOT_TOKEN] = %q, %v; want empty and present", v, ok)
	}
}

func home(t *testing.T) string {
	t.Helper()
	h, err := os.UserHomeDir()
	if err != nil {
		t.Fatal(err)
	}
	return h
}
