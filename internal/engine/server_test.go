package engine

import (
	"context"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/carebot/carebot/internal/host"
	"github.com/carebot/carebot/internal/testenv"
)

// The server's engine is reached through dial-stdio on the one SSH
// connection, and it is the server's: every test server shares this
// machine's files, so /var/run/docker.sock there would be the build engine.
func TestConnectServerOverSSH(t *testing.T) {
	testenv.ServerEngine(t)
	sshd := testenv.StartSSHD(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	h, err := host.DialSSH(ctx, host.SSHConfig{User: sshd.User, Host: "127.0.0.1", Port: sshd.Port, KeyFile: sshd.KeyFile, KnownHosts: sshd.KnownHosts})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	e, err := ConnectServer(ctx, h.String(), h.Exec)
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	info, err := e.api.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	local, err := Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer local.Close()
	linfo, err := local.api.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// Both engines share /etc/docker and so an ID: their data roots differ.
	if info.DockerRootDir == linfo.DockerRootDir || !strings.Contains(info.DockerRootDir, "carebot-server") {
		t.Fatalf("dial-stdio reached the engine with data in %s, not the test server's; the build engine's is %s", info.DockerRootDir, linfo.DockerRootDir)
	}
	p, err := e.Platform(ctx)
	if err != nil || p.OS != "linux" || p.APIVersion == "" {
		t.Fatalf("Platform = %+v, %v", p, err)
	}
	if id, err := e.ImageID(ctx, "carebot-no-such-image:x"); err != nil || id != "" {
		t.Fatalf("ImageID of a missing image = %q, %v; want \"\", nil", id, err)
	}
	if _, err := e.LayerChains(ctx); err != nil {
		t.Fatal(err)
	}
	// Many calls, one connection: the client keeps its dial-stdio sessions.
	for i := 0; i < 20; i++ {
		if _, err := e.Platform(ctx); err != nil {
			t.Fatal(err)
		}
	}
}

// A server without docker, or whose engine refuses the user, fails in one
// line that says what to do there.
func TestConnectServerFailures(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	tests := []struct {
		name, prefix, want string
	}{
		{"no docker", "PATH=/nonexistent ", "install Docker there"},
		{"socket refused", "DOCKER_HOST=unix:///nonexistent/docker.sock ", "start it there"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.prefix == "DOCKER_HOST=unix:///nonexistent/docker.sock " {
				testenv.NeedEngine(t) // needs the docker CLI
			}
			run := func(ctx context.Context, cmd string, stdin io.Reader, stdout, stderr io.Writer) error {
				return host.Local{}.Exec(ctx, tt.prefix+cmd, stdin, stdout, stderr)
			}
			_, err := ConnectServer(ctx, "ubuntu@server", run)
			if err == nil {
				t.Fatal("connected")
			}
			msg := err.Error()
			if strings.Contains(msg, "\n") || !strings.Contains(msg, "the Docker engine on ubuntu@server") || !strings.Contains(msg, tt.want) {
				t.Fatalf("error = %q, want one line naming the server and saying %q", msg, tt.want)
			}
		})
	}
}
