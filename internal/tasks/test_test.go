package tasks

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/carebot/carebot/internal/config"
)

// toolSecretProject is a project whose .env holds the tool's settings and
// secrets, and the build's (a secret BUILD_SECRETS reads), beside the app's.
func toolSecretProject(t *testing.T) *config.Config {
	t.Helper()
	dir := t.TempDir()
	for name, data := range map[string]string{
		"Dockerfile.production":         "FROM scratch\n",
		"docker-compose.production.yml": "services: {}\n",
		".env": "IMAGE_TAG=v1\nSSH_KEY_PASSPHRASE=tool-secret\nSSH_AUTH_SOCK=/run/agent.sock\nAPP_PORT=6000\n" +
			"BUILD_ARG_NODE_ENV=production\nBUILD_SECRETS=npm_token\nnpm_token=build-secret\n# the app\nBOT_TOKEN=123:abc\nLOG_LEVEL=debug\n",
	} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	c, err := config.Load(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestTestEnvIsTheAppsOnly: a tool secret in .env does not reach the test
// container's environment; the app's keys and APP_PORT do.
func TestTestEnvIsTheAppsOnly(t *testing.T) {
	r := &Runner{Cfg: toolSecretProject(t)}
	got := r.testEnv()
	want := []string{"BOT_TOKEN=123:abc", "LOG_LEVEL=debug", "APP_PORT=6000"}
	if !slices.Equal(got, want) {
		t.Errorf("testEnv = %q, want %q", got, want)
	}
}

// TestSeedEnvIsTheAppsOnly: a first deploy to this machine writes the
// app's lines of .env as the deploy folder's .env, never the tool's.
func TestSeedEnvIsTheAppsOnly(t *testing.T) {
	c := toolSecretProject(t)
	d, err := (&Runner{Cfg: c}).Deployer(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer d.Host.Close()
	if d.SeedEnv != c.EnvFile {
		t.Errorf("SeedEnv = %q, want %q", d.SeedEnv, c.EnvFile)
	}
	seed := string(d.SeedEnvData)
	if seed != "BOT_TOKEN=123:abc\nLOG_LEVEL=debug\n" {
		t.Errorf("the seeded .env would be:\n%s", seed)
	}
	for _, s := range []string{"tool-secret", "SSH_", "APP_PORT", "IMAGE_TAG", "build-secret", "npm_token", "BUILD_"} {
		if strings.Contains(seed, s) {
			t.Errorf("the seeded .env holds %q", s)
		}
	}
}
