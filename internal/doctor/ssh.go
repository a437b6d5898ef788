package doctor

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/carebot/carebot/internal/deploy"
	"github.com/carebot/carebot/internal/engine"
	"github.com/carebot/carebot/internal/host"
	"github.com/carebot/carebot/internal/shell"
	"github.com/carebot/carebot/internal/text"
)

// The SSH checks ask the deploy's own code (host.Keys, host.CheckHostKey,
// host.DialSSH, deploy.DetectCompose) and show its answer: what the doctor
// says is what the deploy will do, in the deploy's words.

// Reach opens a TCP connection to addr (host:port) and reads the server's
// greeting, which shows that an SSH server answers there.
func Reach(ctx context.Context, addr string, timeout time.Duration) Result {
	fix := "check DEPLOY_HOST (host and port) and that sshd runs on the server (sudo systemctl status ssh)"
	d := net.Dialer{Timeout: timeout}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return Result{Status: Fail, Detail: fmt.Sprintf("cannot reach %s within %s: %s", addr, timeout, host.NetReason(err)), Fix: fix}
	}
	defer conn.Close()
	_ = conn.SetReadDeadline(time.Now().Add(timeout))
	banner, err := bufio.NewReader(conn).ReadString('\n')
	banner = strings.TrimSpace(banner)
	if err != nil || !strings.HasPrefix(banner, "SSH-") {
		return Result{Status: Fail, Detail: fmt.Sprintf("%s answers, but not as an SSH server (%q)", addr, banner), Fix: fix}
	}
	return Result{Status: OK, Detail: fmt.Sprintf("%s answers (%s)", addr, banner)}
}

// Key says which keys the login with sc will offer (SSH_KEY alone when set;
// otherwise the ssh-agent's, then ~/.ssh/id_ed25519, id_ecdsa, id_rsa), or
// why the deploy would stop before offering any.
func Key(sc host.SSHConfig) Result {
	offered, err := host.Keys(sc)
	if err != nil {
		return failure(err, "set SSH_KEY to your private key file, or load a key into ssh-agent and set SSH_AUTH_SOCK")
	}
	return Result{Status: OK, Detail: "the login offers " + offered}
}

// KnownHosts checks the server's host key against SSH_KNOWN_HOSTS as the
// deploy does, without logging in or recording anything. known is true
// only when the file holds that very key. With SSH_ACCEPT_NEW=1 an unknown
// key is a warning: the next deploy records it. A changed key always fails.
func KnownHosts(ctx context.Context, sc host.SSHConfig) (r Result, known bool) {
	k, err := host.CheckHostKey(ctx, sc)
	switch {
	case err != nil:
		return failure(err, "check DEPLOY_HOST and SSH_KNOWN_HOSTS"), false
	case k.New:
		return Result{Status: Warn, Detail: fmt.Sprintf("host key of %s is not in %s yet (%s)", k.Name, k.File, k.Fingerprint),
			Fix: "SSH_ACCEPT_NEW=1: the next deploy records it; check the fingerprint first (on the server: ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub)"}, false
	}
	return Result{Status: OK, Detail: fmt.Sprintf("%s is known in %s (%s)", k.Name, k.File, k.Fingerprint)}, true
}

// Login logs in as the deploy does, but records no host key and sends no
// keepalives. On success the caller owns (and closes) the connection.
func Login(ctx context.Context, sc host.SSHConfig) (Result, *host.SSH) {
	sc.AcceptNew, sc.Keepalive = false, -1
	s, err := host.DialSSH(ctx, sc)
	if err != nil {
		return failure(err, "check the ssh checks above"), nil
	}
	return Result{Status: OK, Detail: "logged in to " + s.String()}, s
}

// failure is a failed check from the deploy's own error: a *host.Problem
// keeps its words, its fix shown apart; any other error gets fix.
func failure(err error, fix string) Result {
	var p *host.Problem
	if errors.As(err, &p) && p.Fix != "" {
		return Result{Status: Fail, Detail: p.What, Fix: p.Fix}
	}
	return Result{Status: Fail, Detail: text.ErrLine(err), Fix: fix}
}

// ServerEngine reaches the engine on h as a deploy does, through its API
// over `docker system dial-stdio`, and asks for its version.
func ServerEngine(ctx context.Context, h host.Host) Result {
	e, err := engine.ConnectServer(ctx, h.String(), h.Exec)
	if err != nil {
		var ce *engine.ConnectError
		if errors.As(err, &ce) {
			return Result{Status: Fail, Detail: fmt.Sprintf("docker on %s: %s", h, ce.Reason), Fix: ce.Fix}
		}
		return failure(err, "")
	}
	defer e.Close()
	v, err := e.Version(ctx)
	if err != nil {
		return failure(err, "")
	}
	return Result{Status: OK, Detail: fmt.Sprintf("Docker %s on %s, through its API", v, h)}
}

// Compose finds the Compose on h as the deploy does: the v2 plugin
// (docker compose), else v1 (docker-compose).
func Compose(ctx context.Context, h host.Host) Result {
	c, err := deploy.DetectCompose(ctx, h)
	if err != nil {
		return failure(err, "check the login and that docker runs there")
	}
	return Result{Status: OK, Detail: fmt.Sprintf("%s on %s", c, h)}
}

// hostTools are the programs the deploy's shell steps need on the host
// besides Docker: the lock (flock, timeout), backups (tar, sha256sum).
var hostTools = []struct{ name, pkg string }{
	{"flock", "util-linux"}, {"timeout", "coreutils"}, {"sha256sum", "coreutils"}, {"tar", "tar"},
}

// Tools checks that h has the programs the deploy runs there.
func Tools(ctx context.Context, h host.Host) Result {
	var names []string
	for _, t := range hostTools {
		names = append(names, t.name)
	}
	out, err := host.Run(ctx, h, "for p in "+strings.Join(names, " ")+`; do command -v "$p" >/dev/null 2>&1 || echo "$p"; done`)
	if err != nil {
		return Result{Status: Fail, Detail: fmt.Sprintf("cannot look for %s on %s: %s", strings.Join(names, ", "), h, commandOutput(out, err)), Fix: "check the login"}
	}
	missing := strings.Fields(out)
	if len(missing) == 0 {
		return Result{Status: OK, Detail: fmt.Sprintf("%s on %s", strings.Join(names, ", "), h)}
	}
	pkgs := map[string]bool{}
	var install []string
	for _, m := range missing {
		for _, t := range hostTools {
			if t.name == m && !pkgs[t.pkg] {
				pkgs[t.pkg] = true
				install = append(install, t.pkg)
			}
		}
	}
	return Result{Status: Fail, Detail: fmt.Sprintf("%s missing on %s (the deploy lock and backups need them)", strings.Join(missing, ", "), h),
		Fix: "install them there: sudo apt-get install " + strings.Join(install, " ")}
}

// Disk thresholds for the deploy folder's file system: images, backups
// and the database live there.
const (
	diskFail = 512 << 20
	diskWarn = 2 << 30
)

// Disk reports the free space of the file system that holds path on h (the
// nearest existing parent when path does not exist yet).
func Disk(ctx context.Context, h host.Host, path string) Result {
	cmd := fmt.Sprintf(`p=%s; while [ ! -e "$p" ]; do p=$(dirname "$p"); done; df -Pk "$p" | tail -n 1`, shell.Quote(path))
	out, err := host.Run(ctx, h, cmd)
	if err != nil {
		return Result{Status: Fail, Detail: fmt.Sprintf("df on %s: %s", h, commandOutput(out, err)), Fix: "check that df works on the server"}
	}
	f := strings.Fields(out)
	if len(f) < 6 {
		return Result{Status: Warn, Detail: fmt.Sprintf("cannot read df's output on %s: %q", h, strings.TrimSpace(out))}
	}
	kb, err := strconv.ParseInt(f[3], 10, 64)
	if err != nil {
		return Result{Status: Warn, Detail: fmt.Sprintf("cannot read df's output on %s: %q", h, strings.TrimSpace(out))}
	}
	free := kb << 10
	detail := fmt.Sprintf("%s free on %s at %s (%s)", text.Bytes(free), f[5], path, h)
	switch {
	case free < diskFail:
		return Result{Status: Fail, Detail: detail, Fix: "free space there: docker image prune, mage cleanup, or remove old backups"}
	case free < diskWarn:
		return Result{Status: Warn, Detail: detail, Fix: "free space soon: docker image prune, mage cleanup"}
	}
	return Result{Status: OK, Detail: detail}
}

// ServerEnv checks that the deploy folder on the server has its .env
// (the app's secrets). Only whether it is there: it is never read.
func ServerEnv(ctx context.Context, h host.Host, deployPath string) Result {
	p := deployPath + "/.env"
	ok, err := host.Exists(ctx, h, p)
	if err != nil {
		return Result{Status: Fail, Detail: fmt.Sprintf("cannot look for %s on %s: %s", p, h, text.FirstLine(err.Error())), Fix: "check DEPLOY_PATH and the login"}
	}
	if !ok {
		return Result{Status: Fail, Detail: fmt.Sprintf("%s does not exist on %s (a deploy stops without it)", p, h),
			Fix: fmt.Sprintf("create it with the app's secrets: ssh to the server, then mkdir -p %s && nano %s", shell.Quote(deployPath), shell.Quote(p))}
	}
	return Result{Status: OK, Detail: fmt.Sprintf("%s exists on %s (contents not shown)", p, h)}
}

// ServerPort checks APP_PORT on the server: free, or published by our own
// service (ours tells by the container's name and image).
func ServerPort(ctx context.Context, h host.Host, port int, ours func(name, image string) bool) Result {
	conn, err := h.DialContext(ctx, "tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
	if err != nil {
		return Result{Status: OK, Detail: fmt.Sprintf("APP_PORT %d is free on %s", port, h)}
	}
	conn.Close()
	out, err := host.Run(ctx, h, fmt.Sprintf("docker ps --filter publish=%d --format '{{.Names}}\t{{.Image}}'", port))
	fix := fmt.Sprintf("stop what listens on port %d on the server, or set APP_PORT to a free port", port)
	if err != nil {
		return Result{Status: Fail, Detail: fmt.Sprintf("APP_PORT %d is in use on %s", port, h), Fix: fix}
	}
	var others []string
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		name, image, _ := strings.Cut(l, "\t")
		if name == "" {
			continue
		}
		if ours(name, image) {
			return Result{Status: OK, Detail: fmt.Sprintf("APP_PORT %d is served by our %s (%s) on %s", port, name, image, h)}
		}
		others = append(others, name+" ("+image+")")
	}
	if len(others) > 0 {
		return Result{Status: Fail, Detail: fmt.Sprintf("APP_PORT %d is in use on %s by container %s", port, h, strings.Join(others, ", ")), Fix: fix}
	}
	return Result{Status: Fail, Detail: fmt.Sprintf("APP_PORT %d is in use on %s by another program", port, h), Fix: fix}
}

// commandOutput is what a failed host command said, one line.
func commandOutput(out string, err error) string {
	var ce *host.CommandError
	if errors.As(err, &ce) {
		return ce.Error()
	}
	return lastLine(out, err)
}

// Swarm checks, for DEPLOY_MODE=swarm, that h's engine is a Swarm manager
// and that every node that can run a task (ready, active) is reached by
// dial as a deploy reaches it (its host key known, never accepted on first
// sight) and runs docker. The nodes are dialled at once.
func Swarm(ctx context.Context, h host.Host, dial func(ctx context.Context, addr string) (host.Host, error)) Result {
	e, err := engine.ConnectServer(ctx, h.String(), h.Exec)
	if err != nil {
		return failure(err, "")
	}
	defer e.Close()
	role, err := e.Swarm(ctx)
	if err != nil {
		return failure(err, "")
	}
	if !role.Manager {
		return Result{Status: Fail, Detail: fmt.Sprintf("%s is not a Swarm manager (swarm state %q)", h, role.State),
			Fix: "run docker swarm init there (or name a manager in DEPLOY_HOST), or set DEPLOY_MODE=compose"}
	}
	nodes, err := e.Nodes(ctx)
	if err != nil {
		return failure(err, "")
	}
	var others []engine.Node
	ready := 0
	for _, n := range nodes {
		if !n.Ready || !n.Active {
			continue
		}
		ready++
		if n.ID != role.NodeID {
			others = append(others, n)
		}
	}
	problems := make([]string, len(others))
	var wg sync.WaitGroup
	for i, n := range others {
		wg.Add(1)
		go func() {
			defer wg.Done()
			nh, err := dial(ctx, n.Addr)
			if err == nil {
				defer nh.Close()
				_, err = host.Run(ctx, nh, "docker version --format '{{.Server.Version}}' >/dev/null")
			}
			if err != nil {
				problems[i] = fmt.Sprintf("%s (%s): %s", n.Hostname, n.Addr, text.ErrLine(err))
			}
		}()
	}
	wg.Wait()
	var bad []string
	for _, p := range problems {
		if p != "" {
			bad = append(bad, p)
		}
	}
	if len(bad) > 0 {
		return Result{Status: Fail, Detail: fmt.Sprintf("%d of %d ready node(s) cannot be reached as a deploy reaches them: %s", len(bad), ready, strings.Join(bad, "; ")),
			Fix: "each node takes DEPLOY_HOST's user and key at its swarm address, port 22, with its host key already in known_hosts (check its fingerprint, then ssh to it once); SWARM_NODES maps a swarm address to another"}
	}
	return Result{Status: OK, Detail: fmt.Sprintf("%s is a manager; %d ready node(s), each reached over SSH with docker running", h, ready)}
}
