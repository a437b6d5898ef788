package deploy

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/carebot/carebot/internal/host"
)

// TestDetectComposeVersion: DetectCompose reads which Compose answered and
// its version from one round trip, as v1 and v2 print them.
func TestDetectComposeVersion(t *testing.T) {
	tests := []struct {
		says string
		want Compose
	}{
		{"Docker Compose version v2.24.5\ndocker compose\n", Compose{"docker compose", "2.24.5"}},
		{"docker-compose version 1.29.2, build unknown\ndocker-py version: 5.0.3\nCPython version: 3.11.2\ndocker-compose\n", Compose{"docker-compose", "1.29.2"}},
		{"docker compose\n", Compose{"docker compose", ""}},
	}
	for _, tc := range tests {
		got, err := DetectCompose(context.Background(), &fakeHost{compose: tc.says})
		if err != nil || got != tc.want {
			t.Errorf("%q: DetectCompose = %+v, %v; want %+v", tc.says, got, err, tc.want)
		}
	}
	if got := (Compose{"docker-compose", "1.29.2"}).String(); got != "docker-compose 1.29.2" {
		t.Errorf("String = %q", got)
	}
	_, err := DetectCompose(context.Background(), &fakeHost{compose: "bash: docker: command not found\n"})
	var p *host.Problem
	if !errors.As(err, &p) || p.Fix == "" {
		t.Errorf("no Compose: %v, want a *host.Problem with its fix", err)
	}
}

// The Compose a host remembered is used without asking again, and
// forgotten once it is not found there any more.
func TestComposeRemembered(t *testing.T) {
	ctx := context.Background()
	gone := false
	h := &fakeHost{compose: "docker-compose version 1.29.2, build unknown\ndocker-compose\n", handle: func(cmd string) (string, int, bool) {
		if strings.Contains(cmd, "docker-compose -f") && gone {
			return "sh: 1: docker-compose: not found", 127, true
		}
		if strings.Contains(cmd, "docker-compose -f") {
			return "", 0, true
		}
		return "", 0, false
	}}
	d, _ := testDeployer(t, h)
	if err := os.MkdirAll(d.Path, 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := d.ComposeOutput(ctx, "config -q"); err != nil {
		t.Fatal(err)
	}
	cache := filepath.Join(d.Path, ".carebot", "compose")
	if b, err := os.ReadFile(cache); err != nil || string(b) != "docker-compose\n" {
		t.Fatalf("remembered %q, %v", b, err)
	}
	// The next run reads it in its first command: no detection.
	d2, _ := testDeployer(t, h)
	d2.Path = d.Path
	before := len(h.ran("if docker compose version"))
	if _, err := d2.ComposeOutput(ctx, "config -q"); err != nil {
		t.Fatal(err)
	}
	if n := len(h.ran("if docker compose version")); n != before {
		t.Errorf("Compose detected again (%d times) though the host remembered it", n-before)
	}
	// Uninstalled: the command fails, and the host forgets it.
	gone = true
	d3, _ := testDeployer(t, h)
	d3.Path = d.Path
	if _, err := d3.ComposeOutput(ctx, "config -q"); err == nil {
		t.Fatal("compose ran though it is gone")
	}
	if _, err := os.Stat(cache); !os.IsNotExist(err) {
		t.Errorf("the remembered Compose is still there: %v", err)
	}
}
