package engine

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/docker/docker/api/types/build"

	"github.com/carebot/carebot/internal/testenv"
	"github.com/carebot/carebot/internal/wsl/wsltest"
)

func TestUseWSL(t *testing.T) {
	tests := []struct {
		setting, goos, dockerHost string
		inside                    bool
		want                      bool
	}{
		{"auto", "windows", "", false, true},
		{"auto", "windows", "npipe:////./pipe/docker_engine", false, false}, // Docker Desktop
		{"auto", "windows", "", true, false},
		{"auto", "linux", "", false, false},
		{"auto", "linux", "", true, false}, // inside WSL: local
		{"auto", "darwin", "", false, false},
		{"1", "linux", "", false, true}, // the tests' switch
		{"1", "linux", "unix:///x.sock", true, true},
		{"0", "windows", "", false, false},
	}
	for _, tt := range tests {
		if got := UseWSL(tt.setting, tt.goos, tt.dockerHost, tt.inside); got != tt.want {
			t.Errorf("UseWSL(%q, %q, %q, %v) = %v, want %v", tt.setting, tt.goos, tt.dockerHost, tt.inside, got, tt.want)
		}
	}
}

func TestWSLDialCommand(t *testing.T) {
	v := Via{WSL: true, Distro: "Ubuntu-22.04"}
	if got, want := v.DialCommand(), []string{"wsl", "-d", "Ubuntu-22.04", "-e", "docker", "system", "dial-stdio"}; !reflect.DeepEqual(got, want) {
		t.Errorf("DialCommand = %q, want %q", got, want)
	}
	v.Sudo = true
	if got, want := v.DialCommand(), []string{"wsl", "-d", "Ubuntu-22.04", "-e", "sudo", "-n", "docker", "system", "dial-stdio"}; !reflect.DeepEqual(got, want) {
		t.Errorf("DialCommand with sudo = %q, want %q", got, want)
	}
}

func TestWSLFix(t *testing.T) {
	v := Via{WSL: true, Distro: "Ubuntu-22.04"}
	tests := []struct{ reason, want string }{
		{"There is no distribution with the supplied name.", "wsl --install -d Ubuntu-22.04"},
		{`exec: "wsl": executable file not found in %PATH%`, "install WSL2"},
		{"sudo: a password is required", "DOCKER_SUDO=0"},
		{"sudo: not found", "set DOCKER_SUDO=0 (no sudo"},
		{"/bin/sh: 1: docker: not found", "apt-get install -y docker.io"},
		{`exec: "docker": executable file not found in $PATH`, "apt-get install -y docker.io"},
		{"permission denied while trying to connect to the Docker daemon socket at unix:///var/run/docker.sock", "or set DOCKER_SUDO=1"},
		{"Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?", "wsl -d Ubuntu-22.04 -u root -e service docker start"},
	}
	for _, tt := range tests {
		if got := wslFix(v, tt.reason); !strings.Contains(got, tt.want) {
			t.Errorf("wslFix(%q) = %q, want it to contain %q", tt.reason, got, tt.want)
		}
	}
}

func TestHostPath(t *testing.T) {
	local := &Engine{}
	if p, _ := local.HostPath(`C:\x`); p != `C:\x` {
		t.Errorf("local engine: HostPath changed the path to %q", p)
	}
	e := &Engine{via: Via{WSL: true, Distro: "Ubuntu-22.04"}}
	for in, want := range map[string]string{
		`C:\Users\Ana María\test-data`:            "/mnt/c/Users/Ana María/test-data",
		`\\wsl$\Ubuntu-22.04\home\ana\migrations`: "/home/ana/migrations",
		"/tmp/test-data":                          "/tmp/test-data",
	} {
		if got, err := e.HostPath(in); err != nil || got != want {
			t.Errorf("HostPath(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	if _, err := e.HostPath(`\\nas\share\x`); err == nil {
		t.Error("HostPath accepted a network share")
	}
}

// TestStdioConn talks to cat through the connection, and checks that a
// failing command's stderr becomes the error.
func TestWSLStdioConn(t *testing.T) {
	c, err := startStdioConn([]string{"cat"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	msg := []byte("hello through a pipe\n")
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("read %q, %v", got, err)
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if n, err := c.Read(got); n != 0 || err != io.EOF {
		t.Errorf("after CloseWrite and cat's exit: %d, %v; want EOF", n, err)
	}
	c.Close()

	// Close ends a command that would run forever.
	c, err = startStdioConn([]string{"sleep", "600"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	select {
	case <-c.done:
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not end the command")
	}

	var reported string
	c, err = startStdioConn([]string{"sh", "-c", "echo 'first line' >&2; echo 'Cannot connect: daemon down' >&2; echo 'Error code: X' >&2; exit 3"},
		func(s string) { reported = s })
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, err = c.Read(got)
	var ce *commandError
	if !errors.As(err, &ce) || !strings.Contains(err.Error(), "Cannot connect: daemon down") || !errors.Is(err, io.EOF) {
		t.Errorf("failed command: %v", err)
	}
	if reported != "Cannot connect: daemon down" {
		t.Errorf("reported %q", reported)
	}

	if _, err := startStdioConn([]string{"/nonexistent/wsl"}, nil); err == nil {
		t.Error("a missing program: no error")
	}
}

// TestConnectViaWSL reaches the local engine through the fake wsl, as
// Windows reaches the one in WSL.
func TestConnectViaWSL(t *testing.T) {
	testenv.NeedEngine(t)
	fake := wsltest.Install(t)
	ctx := context.Background()
	e, err := ConnectVia(ctx, Via{WSL: true, Distro: "Ubuntu-22.04"})
	if err != nil {
		t.Fatal(err)
	}
	v, err := e.Version(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if e.Host != "WSL distro Ubuntu-22.04" {
		t.Errorf("Host = %q", e.Host)
	}
	if _, err := e.ImagesOf(ctx, "carebot-no-such-image"); err != nil {
		t.Fatal(err)
	}
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}
	if n := fake.Count("docker"); n < 1 {
		t.Errorf("the fake wsl ran docker %d times: the WSL path was not taken", n)
	}
	t.Logf("engine %s through %d dial-stdio command(s)", v, fake.Count("docker"))
}

// TestConnectViaWSLErrors needs no engine: the distro is missing, or the
// engine inside it is down; each is one line with its fix.
func TestConnectViaWSLErrors(t *testing.T) {
	if _, err := exec.LookPath("docker"); err != nil {
		testenv.Skip(t, "no docker CLI (the fake wsl runs `docker system dial-stdio`)")
	}
	wsltest.Install(t, "Debian")
	ctx := context.Background()
	_, err := ConnectVia(ctx, Via{WSL: true, Distro: "Ubuntu-22.04"})
	var ce *ConnectError
	if !errors.As(err, &ce) || ce.Reason != "There is no distribution with the supplied name." || !strings.Contains(ce.Fix, "wsl --install -d Ubuntu-22.04") {
		t.Errorf("missing distro: %v", err)
	}

	t.Setenv("DOCKER_HOST", "unix://"+filepath.Join(t.TempDir(), "nothing.sock")) // seen by the docker CLI the fake runs
	_, err = ConnectVia(ctx, Via{WSL: true, Distro: "Debian"})
	if !errors.As(err, &ce) || !strings.Contains(ce.Reason, "nothing.sock") || !strings.Contains(ce.Fix, "service docker start") {
		t.Errorf("engine down in WSL: %v", err)
	}
	if strings.Contains(err.Error(), "\n") {
		t.Errorf("not one line: %q", err)
	}
	t.Log(err)
}

func TestConnectLocalDown(t *testing.T) {
	t.Setenv("DOCKER_HOST", "unix://"+filepath.Join(t.TempDir(), "nothing.sock"))
	_, err := Connect(context.Background())
	var ce *ConnectError
	if !errors.As(err, &ce) || !strings.Contains(ce.Fix, "sudo service docker start") || !strings.Contains(err.Error(), "nothing.sock") {
		t.Errorf("Connect to a dead socket: %v", err)
	}
}

// BenchmarkContextStream measures sending a build context to the engine
// directly and through `docker system dial-stdio` behind the fake wsl: the
// relay's cost in the streaming design (see ConnectVia). Two contexts: the
// project's own (Dockerfile.production and build/carebot, ~11 MB in 3
// files; a cached build), and 200 MB in 2,000 files under a Dockerfile that
// does nothing with them (FROM scratch + LABEL), so that the time is the
// transfer and the engine unpacking it.
//
//	go test -run '^$' -bench ContextStream -benchtime 5x ./internal/engine/
func BenchmarkContextStream(b *testing.B) {
	testenv.NeedEngine(b)
	project, err := filepath.Abs("../..")
	if err != nil {
		b.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(project, "build", "carebot")); err != nil {
		testenv.Skip(b, "no build/carebot: run `go run mage.go binary` first")
	}
	big := b.TempDir()
	const files, size = 2000, 100 << 10
	buf := make([]byte, size)
	for i := 0; i < files; i++ {
		for j := range buf { // incompressible enough, cheap to make
			buf[j] = byte(i*7 + j*13 + j>>8)
		}
		sub := filepath.Join(big, fmt.Sprintf("d%02d", i%50))
		if err := os.MkdirAll(sub, 0o755); err != nil {
			b.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(sub, fmt.Sprintf("f%04d", i)), buf, 0o644); err != nil {
			b.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(big, "Dockerfile"), []byte("FROM scratch\nLABEL bench=1\n"), 0o644); err != nil {
		b.Fatal(err)
	}

	run := func(b *testing.B, e *Engine, dir, dockerfile string) {
		ctx := context.Background()
		var n int64
		for i := 0; i < b.N; i++ {
			excludes, err := Excludes(dir, filepath.Join(dir, dockerfile))
			if err != nil {
				b.Fatal(err)
			}
			tarball, err := contextTar(dir, excludes)
			if err != nil {
				b.Fatal(err)
			}
			counted := &countingReader{r: tarball}
			resp, err := e.api.ImageBuild(ctx, counted, build.ImageBuildOptions{
				Dockerfile: dockerfile, Tags: []string{"carebot-bench-context:latest"}, Remove: true, Version: build.BuilderV1,
			})
			if err != nil {
				b.Fatal(err)
			}
			out, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			tarball.Close()
			if bytes.Contains(out, []byte(`"errorDetail"`)) {
				b.Fatalf("build failed: %s", out)
			}
			n = counted.n
		}
		b.SetBytes(n)
	}
	routes := []struct {
		name    string
		connect func(b *testing.B) *Engine
	}{
		{"socket", func(b *testing.B) *Engine {
			e, err := Connect(context.Background())
			if err != nil {
				b.Fatal(err)
			}
			return e
		}},
		{"wsl-dial-stdio", func(b *testing.B) *Engine {
			wsltest.Install(b)
			e, err := ConnectVia(context.Background(), Via{WSL: true, Distro: "Ubuntu-22.04"})
			if err != nil {
				b.Fatal(err)
			}
			return e
		}},
	}
	for _, c := range []struct{ name, dir, dockerfile string }{
		{"project", project, "Dockerfile.production"},
		{"200MB-2000files", big, "Dockerfile"},
	} {
		for _, r := range routes {
			b.Run(c.name+"/"+r.name, func(b *testing.B) {
				e := r.connect(b)
				defer e.Close()
				run(b, e, c.dir, c.dockerfile)
			})
		}
	}
	if e, err := Connect(context.Background()); err == nil {
		_ = e.RemoveImage(context.Background(), "carebot-bench-context:latest")
		e.Close()
	}
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}
