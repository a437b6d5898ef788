package engine

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"strings"
	"time"

	"github.com/carebot/carebot/internal/text"

	"github.com/docker/docker/client"

	"github.com/carebot/carebot/internal/wsl"
)

// Via says which engine to use: the local one (DOCKER_HOST, or the
// platform's default socket), or the one inside a WSL distro, reached from
// Windows through `wsl -d Distro -e docker system dial-stdio`.
type Via struct {
	WSL    bool
	Distro string // WSL_DISTRO
	Sudo   bool   // DOCKER_SUDO: `sudo -n docker` inside the distro
}

// Choose applies DOCKER_VIA_WSL (setting: "auto", "1" or "0") to this
// process: see UseWSL.
func Choose(setting, distro string, sudo bool) Via {
	_, inside := wsl.Inside()
	return Via{WSL: UseWSL(setting, runtime.GOOS, os.Getenv("DOCKER_HOST"), inside), Distro: distro, Sudo: sudo}
}

// UseWSL decides whether the engine is reached through WSL: always with
// "1" (how the tests take the Windows path on Linux), never with "0", and
// with "auto" on Windows unless DOCKER_HOST names another engine (Docker
// Desktop, a remote one). On Linux, and inside WSL itself, the engine is
// local.
func UseWSL(setting, goos, dockerHost string, insideWSL bool) bool {
	switch setting {
	case "1":
		return true
	case "0":
		return false
	}
	return goos == "windows" && dockerHost == "" && !insideWSL
}

func (v Via) String() string {
	if v.WSL {
		return "WSL distro " + v.Distro
	}
	return "the local engine"
}

// DialCommand is the command whose stdin and stdout carry one API
// connection to the engine in the distro.
func (v Via) DialCommand() []string {
	docker := []string{"docker", "system", "dial-stdio"}
	if v.Sudo {
		docker = append([]string{"sudo", "-n"}, docker...)
	}
	return append([]string{wsl.Program}, wsl.Args(v.Distro, docker...)...)
}

// ConnectError says that no engine answered, why, and what to do.
type ConnectError struct {
	Where  string // unix:///var/run/docker.sock, "WSL distro Ubuntu-22.04"
	Reason string // one line
	Fix    string
}

func (e *ConnectError) Error() string {
	return fmt.Sprintf("no Docker engine answers at %s (%s): %s", e.Where, e.Reason, e.Fix)
}

// ConnectVia reaches the engine via says, negotiates the API version and
// pings it, so a stopped engine is one clear error (a *ConnectError)
// before any work starts.
//
// Through WSL, every connection the API client opens runs its own `wsl -d
// DISTRO -e docker system dial-stdio` and speaks HTTP over its stdin and
// stdout (as the docker CLI's connhelper does for ssh://); the client keeps
// idle ones for the next request, and Close ends them. Everything else,
// the build included, is the same code as on Linux.
//
// The build context streams from Windows through that connection, not read
// by a docker CLI inside WSL from /mnt/<drive>: with BuildKit, the build's
// session rides one more such connection and BuildKit asks for the files it
// needs (only those changed since its last build of this folder); the
// classic builder's tar, measured below, streams whole. Only the streaming half can
// be measured honestly on Linux (BenchmarkContextStream: engine 20.10 on a
// local socket, 2 cores, medians of 3 runs of 5 builds): the project's own
// context (Dockerfile and build/carebot, 10.9 MB in 3 files, cached build)
// takes 0.17 s on the socket and 0.20 s through dial-stdio; 200 MB in 2,000
// files takes 4.2 s and 4.8 s. So the relay costs a process start per
// connection (~40 ms) and ~10-15% on bulk data, here where the engine
// unpacking the context to disk dominates; wsl.exe's own relay over Hyper-V
// sockets adds a cost not measurable here. The other way could not be
// measured here at all: WSL2 reads /mnt/c through the 9P file server, where
// every open and stat is a round trip to Windows, the known slow path for
// trees of small files; streaming reads them with Windows' own file system
// (where `go build` has just written build/carebot). Streaming also keeps
// one code path (.dockerignore applied by our code, as on Linux), works for
// projects inside WSL (\\wsl$\...) too, and needs no docker CLI command line
// quoted for bash. For this project's 11 MB context either would do; the
// single code path decides it.
func ConnectVia(ctx context.Context, via Via, opts ...client.Opt) (*Engine, error) {
	var d *stdioDialer
	if via.WSL {
		argv := via.DialCommand()
		d = &stdioDialer{start: func(report func(string)) (*stdioConn, error) { return startStdioConn(argv, report) }}
		opts = append([]client.Opt{
			client.WithVersionFromEnv(), client.WithAPIVersionNegotiation(),
			// The engine's own socket, seen from the distro; every dial goes
			// through the command instead.
			client.WithHost("unix:///var/run/docker.sock"), client.WithDialContext(d.DialContext),
		}, opts...)
	} else {
		opts = append([]client.Opt{client.FromEnv, client.WithAPIVersionNegotiation()}, opts...)
	}
	api, err := client.NewClientWithOpts(opts...)
	if err != nil {
		return nil, fmt.Errorf("docker engine: %w", err)
	}
	e := &Engine{api: api, Host: api.DaemonHost(), via: via}
	if via.WSL {
		e.Host = via.String()
	}
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := api.Ping(pctx); err != nil {
		api.Close()
		ce := &ConnectError{Where: e.Host, Reason: text.ErrLine(err)}
		if strings.HasPrefix(ce.Reason, "Cannot connect to the Docker daemon") {
			// The client's words for a missing socket, a refused
			// connection or a timeout; it names the socket again.
			ce.Reason = "nothing answers there: no socket, connection refused, or no reply"
		}
		if via.WSL {
			if why := d.lastFailure(); why != "" {
				ce.Reason = why
			}
			ce.Fix = wslFix(via, ce.Reason)
		} else {
			ce.Fix = localFix(runtime.GOOS, err)
		}
		return nil, ce
	}
	return e, nil
}

// localFix is what to do when the local engine does not answer.
func localFix(goos string, err error) string {
	if goos == "windows" {
		return "start Docker Desktop, or set DOCKER_VIA_WSL=auto with DOCKER_HOST unset to use the engine in WSL"
	}
	if errors.Is(err, os.ErrPermission) || strings.Contains(err.Error(), "permission denied") {
		return "add yourself to the docker group (sudo usermod -aG docker $USER, then log in again) or run as root"
	}
	return "start it (sudo service docker start, or dockerd &) or set DOCKER_HOST"
}

// wslFix reads what the dial command printed and says what to do.
func wslFix(v Via, reason string) string {
	r := strings.ToLower(reason)
	root := fmt.Sprintf("wsl -d %s -u root", v.Distro)
	switch {
	case strings.Contains(r, "no distribution with the supplied name"), strings.Contains(r, "distro_not_found"):
		return fmt.Sprintf("install it (wsl --install -d %s) or set WSL_DISTRO to one that `wsl -l -q` lists", v.Distro)
	case strings.Contains(r, "executable file not found") && strings.Contains(r, "wsl"):
		return "install WSL2 (wsl --install, in an administrator PowerShell) or set DOCKER_VIA_WSL=0 and DOCKER_HOST"
	case strings.Contains(r, "password is required"), strings.Contains(r, "a terminal is required"):
		return fmt.Sprintf("let your WSL user use docker without sudo (%s usermod -aG docker <user>) and set DOCKER_SUDO=0, or allow it passwordless sudo for docker", root)
	case strings.Contains(r, "sudo: not found"), strings.Contains(r, "sudo: command not found"):
		return fmt.Sprintf("set DOCKER_SUDO=0 (no sudo in %s)", v.Distro)
	case strings.Contains(r, "docker") && (strings.Contains(r, "not found") || strings.Contains(r, "no such file")):
		return fmt.Sprintf("install Docker in %s: %s -e sh -c 'apt-get update && apt-get install -y docker.io'", v.Distro, root)
	case strings.Contains(r, "permission denied"):
		return fmt.Sprintf("add your WSL user to the docker group (%s usermod -aG docker <user>, then wsl --terminate %s), or set DOCKER_SUDO=1", root, v.Distro)
	}
	return fmt.Sprintf("start it: %s -e service docker start", root)
}

// HostPath is the path on the engine's machine of path p on this one, for
// bind mounts: the same path for a local engine; for the engine in WSL,
// Windows paths become the distro's (C:\x -> /mnt/c/x, \\wsl$\D\x -> /x).
func (e *Engine) HostPath(p string) (string, error) {
	if !e.via.WSL {
		return p, nil
	}
	return wsl.LinuxPath(p, e.via.Distro)
}

// Via is how the engine was reached.
func (e *Engine) Via() Via { return e.via }
