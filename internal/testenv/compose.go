package testenv

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// ComposeV2Version is the Compose v2 release the people this tool is for
// run on their servers. It is built from its Go module source (no release
// download is reachable here): scripts/test.sh does that once per machine.
const ComposeV2Version = "v2.40.3"

// Compose is one flavour of Docker Compose for a deploy to find: the v1
// program (docker-compose, Debian's) or the v2 plugin (docker compose).
// The deploy code takes the plugin whenever `docker compose version`
// works, so a flavour is a DOCKER_CONFIG folder: v2's has the plugin in
// cli-plugins, v1's has none, and a plugin in ~/.docker cannot sneak in.
type Compose struct {
	Name      string // v1 or v2
	ConfigDir string // DOCKER_CONFIG for the shell that deploys
	// Version is what `docker(-)compose version --short` says, and so what
	// the com.docker.compose.version label of its containers says.
	Version string
}

// EachCompose runs test once per flavour, as subtests compose=v1 and
// compose=v2.
func EachCompose(t *testing.T, test func(t *testing.T, c Compose)) {
	t.Helper()
	for _, name := range []string{"v1", "v2"} {
		t.Run("compose="+name, func(t *testing.T) { test(t, NewCompose(t, name)) })
	}
}

// NewCompose sets up flavour name (v1 or v2) for the test. Without it on
// this machine, see Skip.
func NewCompose(t testing.TB, name string) Compose {
	t.Helper()
	c := Compose{Name: name, ConfigDir: t.TempDir()}
	switch name {
	case "v1":
	case "v2":
		bin, err := ComposeV2Binary()
		if err != nil {
			if os.Getenv("CAREBOT_COMPOSE_V2") != "" {
				t.Fatal(err) // asked for by name: a mistake, not a missing part
			}
			Skip(t, "%v", err)
		}
		plugins := filepath.Join(c.ConfigDir, "cli-plugins")
		if err := os.Mkdir(plugins, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(bin, filepath.Join(plugins, "docker-compose")); err != nil {
			t.Fatal(err)
		}
	default:
		t.Fatalf("no Compose flavour %q: v1 or v2", name)
	}
	v, err := c.version()
	var missing missingError
	switch {
	case errors.As(err, &missing):
		Skip(t, "Compose %s: %v", name, err)
	case err != nil:
		t.Fatalf("Compose %s: %v", name, err)
	}
	c.Version = v
	return c
}

// ComposeV2Binary is the Compose v2 program: $CAREBOT_COMPOSE_V2, or where
// scripts/test.sh builds it, ${XDG_CACHE_HOME:-$HOME/.cache}/carebot/.
func ComposeV2Binary() (string, error) {
	if p := os.Getenv("CAREBOT_COMPOSE_V2"); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("CAREBOT_COMPOSE_V2: %v", err)
		}
		return p, nil
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		return "", fmt.Errorf("no Compose v2 binary (CAREBOT_COMPOSE_V2 is unset and %v): scripts/test.sh builds it", err)
	}
	p := filepath.Join(cache, "carebot", "docker-compose-"+ComposeV2Version)
	if _, err := os.Stat(p); err != nil {
		return "", fmt.Errorf("no Compose v2 binary at %s (CAREBOT_COMPOSE_V2 is unset): scripts/test.sh builds it there", p)
	}
	return p, nil
}

// Command is flavour c's compose command with args; its Env is the
// process's with DOCKER_CONFIG set.
func (c Compose) Command(args ...string) *exec.Cmd {
	var cmd *exec.Cmd
	if c.Name == "v2" {
		cmd = exec.Command("docker", append([]string{"compose"}, args...)...)
	} else {
		cmd = exec.Command("docker-compose", args...)
	}
	cmd.Env = append(os.Environ(), c.Env())
	return cmd
}

// Env is the environment setting that selects the flavour.
func (c Compose) Env() string { return "DOCKER_CONFIG=" + c.ConfigDir }

// missingError is a flavour this machine lacks, as opposed to a broken one.
type missingError struct{ error }

var composeVersions sync.Map // name -> versionResult; the check costs a Python start for v1

type versionResult struct {
	v   string
	err error
}

// version checks that the flavour is the one a deploy will find, and
// returns its version.
func (c Compose) version() (string, error) {
	if r, ok := composeVersions.Load(c.Name); ok {
		return r.(versionResult).v, r.(versionResult).err
	}
	v, err := c.probe()
	composeVersions.Store(c.Name, versionResult{v, err})
	return v, err
}

func (c Compose) probe() (string, error) {
	run := func(args ...string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, args[0], args[1:]...)
		cmd.Env = append(os.Environ(), c.Env())
		out, err := cmd.CombinedOutput()
		return strings.TrimSpace(string(out)), err
	}
	plugin, pluginErr := run("docker", "compose", "version", "--short")
	if c.Name == "v2" {
		if pluginErr != nil {
			return "", fmt.Errorf("docker compose version: %v: %s", pluginErr, plugin)
		}
		if want := strings.TrimPrefix(ComposeV2Version, "v"); strings.TrimPrefix(plugin, "v") != want {
			return "", fmt.Errorf("the v2 binary is version %s, want %s", plugin, want)
		}
		return strings.TrimPrefix(plugin, "v"), nil
	}
	if pluginErr == nil {
		// DOCKER_CONFIG hides ~/.docker/cli-plugins, not the system's
		// plugin folders (/usr/local/lib/docker/cli-plugins and others).
		return "", missingError{errors.New("a Compose v2 plugin is installed system-wide (`docker compose version` says " + plugin +
			" with no plugin in DOCKER_CONFIG), so a deploy never uses docker-compose: remove the plugin to test v1")}
	}
	if _, err := exec.LookPath("docker-compose"); err != nil {
		return "", missingError{errors.New("docker-compose is not installed (apt-get install docker-compose)")}
	}
	out, err := run("docker-compose", "version", "--short")
	if err != nil {
		return "", fmt.Errorf("docker-compose version: %v: %s", err, out)
	}
	if !strings.HasPrefix(out, "1.") {
		return "", fmt.Errorf("docker-compose is version %s, not v1", out)
	}
	return out, nil
}

// CheckMadeBy fails the test unless the container (on the engine at
// dockerHost, "" for the local one) was created by this flavour, as its
// com.docker.compose.version label says: proof of which one a deploy used.
func (c Compose) CheckMadeBy(t testing.TB, dockerHost, container string) {
	t.Helper()
	args := []string{"inspect", "--format", `{{index .Config.Labels "com.docker.compose.version"}}`, container}
	if dockerHost != "" {
		args = append([]string{"-H", dockerHost}, args...)
	}
	out, err := exec.Command("docker", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("docker inspect %s: %v %s", container, err, out)
	}
	if got := strings.TrimSpace(string(out)); got != c.Version {
		t.Errorf("container %s was created by Compose %q, want %s (%s)", container, got, c.Name, c.Version)
	}
}
