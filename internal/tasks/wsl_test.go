package tasks

import (
	"context"
	"os"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/carebot/carebot/internal/testenv"
	"github.com/carebot/carebot/internal/text"
	"github.com/carebot/carebot/internal/wsl/wsltest"
)

// TestBuildAndTestThroughWSL runs the real Build and Test tasks the way
// they run on Windows: DOCKER_VIA_WSL=1 makes the engine the one behind
// `wsl -d Ubuntu-22.04 -e docker system dial-stdio`, and a fake wsl first
// on PATH runs that command here. TEST_DATA has a space and non-ASCII
// letters, as Windows user folders often do.
func TestBuildAndTestThroughWSL(t *testing.T) {
	testenv.NeedEngine(t)
	fake := wsltest.Install(t)
	p := newProject(t, "wsl")
	p.env["TEST_DATA"] = filepath.Join(t.TempDir(), "Ana María", "test data")
	r := p.runner("wsl1", "DOCKER_VIA_WSL=1", "WSL_DISTRO=Ubuntu-22.04")
	ctx := context.Background()

	if err := r.Binary(ctx); err != nil {
		t.Fatal(err)
	}
	id, err := r.Build(ctx, BuildOptions{})
	if err != nil {
		t.Fatal(err)
	}
	e, err := r.Engine(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !e.Via().WSL || e.Host != "WSL distro Ubuntu-22.04" {
		t.Fatalf("engine reached via %v at %s, want WSL", e.Via(), e.Host)
	}
	if err := r.Test(ctx, false); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(p.env["TEST_DATA"], "carebot.db")); err != nil {
		t.Errorf("TEST_DATA was not mounted as /app/data: %v", err)
	}

	dials := fake.Count("docker")
	if dials == 0 {
		t.Fatal("the fake wsl never ran docker: the WSL path was not taken")
	}
	want := []string{"-d", "Ubuntu-22.04", "-e", "docker", "system", "dial-stdio"}
	for _, c := range fake.Calls() {
		if !reflect.DeepEqual(c, want) {
			t.Errorf("wsl called with %q, want %q", c, want)
		}
	}
	t.Logf("built %s and tested it through %d `wsl ... docker system dial-stdio` connection(s)", text.ShortID(id), dials)
}
