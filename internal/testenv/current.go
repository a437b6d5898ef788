package testenv

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// A current Docker engine with the containerd image store, built from the
// Go module proxy (no registry or download site is reachable here). It can
// build, load, save and inspect images but not run containers with
// Debian's runc, so the tests use it for image transfer only.
const (
	currentModule  = "github.com/moby/moby/v2/cmd/dockerd@v2.0.0-beta.24"
	currentSocket  = "/run/carebot-current-docker.sock"
	CurrentHost    = "unix://" + currentSocket
	currentBuildTO = 20 * time.Minute
)

var currentOnce sync.Once
var currentErr error

// CurrentEngine makes sure the containerd-store engine answers at
// CurrentHost, building it (once per machine, a few minutes) and starting it
// when needed, and returns its DOCKER_HOST.
func CurrentEngine(t testing.TB) string {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end test: skipped with -short")
	}
	currentOnce.Do(func() { currentErr = startCurrentEngine() })
	if currentErr != nil {
		Skip(t, "containerd-store engine: %v", currentErr)
	}
	return CurrentHost
}

func currentBinary() (string, error) {
	if p := os.Getenv("CAREBOT_CURRENT_DOCKERD"); p != "" {
		return p, nil
	}
	cache, err := os.UserCacheDir()
	if err != nil {
		return "", err
	}
	dir := filepath.Join(cache, "carebot", "moby-v2.0.0-beta.24")
	bin := filepath.Join(dir, "dockerd")
	if _, err := os.Stat(bin); err == nil {
		return bin, nil
	}
	fmt.Fprintf(os.Stderr, "building %s into %s (once per machine, a few minutes)\n", currentModule, dir)
	cmd := exec.Command("go", "install", currentModule)
	cmd.Env = append(os.Environ(), "GOBIN="+dir, "GOFLAGS=-mod=mod", "CGO_ENABLED=0")
	done := make(chan error, 1)
	out := &lockedBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		return "", err
	}
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			return "", fmt.Errorf("go install %s: %v\n%s", currentModule, err, out.String())
		}
	case <-time.After(currentBuildTO):
		cmd.Process.Kill()
		return "", fmt.Errorf("go install %s took over %s", currentModule, currentBuildTO)
	}
	return bin, nil
}

func startCurrentEngine() error {
	if dockerOK(CurrentHost) {
		return nil
	}
	if os.Getuid() != 0 {
		return fmt.Errorf("starting it needs root")
	}
	bin, err := currentBinary()
	if err != nil {
		return err
	}
	return startEngine(bin, "carebot-current", currentBridge, "172.31.254.1/24")
}

type lockedBuffer struct {
	mu sync.Mutex
	b  []byte
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.b = append(l.b, p...)
	return len(p), nil
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return string(l.b)
}

// Each engine here gets a bridge of its own. Started with --bridge=none,
// both Docker 20.10 and the current engine delete a bridge called docker0
// at start — the first engine's — and every container it starts after that
// fails ("could not find bridge docker0").
const (
	currentBridge = "cbcur0"
	serverBridge  = "cbsrv0"
)

// ownBridge creates the bridge unless it exists. Test binaries of several
// packages may race here: a step that fails because another made it first
// is fine, so only the end state is checked.
func ownBridge(name, cidr string) error {
	if exec.Command("ip", "link", "show", name).Run() == nil {
		return nil
	}
	var last []byte
	for _, args := range [][]string{
		{"link", "add", "name", name, "type", "bridge"},
		{"addr", "add", cidr, "dev", name},
		{"link", "set", name, "up"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			last = out
		}
	}
	if exec.Command("ip", "link", "show", name).Run() != nil {
		return fmt.Errorf("create bridge %s: %s", name, last)
	}
	return nil
}
