package doctor

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/carebot/carebot/internal/text"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/carebot/carebot/internal/host"
	"github.com/carebot/carebot/internal/shell"
)

// Reach opens a TCP connection to addr (host:port) and reads the server's
// greeting, which shows that an SSH server answers there.
func Reach(ctx context.Context, addr string, timeout time.Duration) Result {
	fix := "check DEPLOY_HOST (host and port) and that sshd runs on the server (sudo systemctl status ssh)"
	d := net.Dialer{Timeout: timeout}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return Result{Status: Fail, Detail: fmt.Sprintf("cannot reach %s within %s: %s", addr, timeout, netReason(err)), Fix: fix}
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

func netReason(err error) string {
	var dns *net.DNSError
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, context.DeadlineExceeded):
		return "no answer"
	case errors.As(err, &dns) && dns.IsNotFound:
		return "no such host " + dns.Name
	}
	var op *net.OpError
	if errors.As(err, &op) && op.Err != nil {
		return op.Err.Error()
	}
	return err.Error()
}

// Key checks what the SSH login will offer, as host.DialSSH chooses it:
// SSH_KEY alone when set; otherwise the ssh-agent's keys, then
// ~/.ssh/id_ed25519, id_ecdsa, id_rsa.
func Key(keyFile, passphrase, agentSock, home string) Result {
	if keyFile != "" {
		return keyFileResult(keyFile, passphrase, agentSock)
	}
	if agentSock != "" {
		if n, err := agentKeys(agentSock); err == nil && n > 0 {
			return Result{Status: OK, Detail: fmt.Sprintf("ssh-agent at SSH_AUTH_SOCK holds %d key(s)", n)}
		}
	}
	for _, f := range []string{"id_ed25519", "id_ecdsa", "id_rsa"} {
		p := filepath.Join(home, ".ssh", f)
		if _, err := os.Stat(p); err == nil {
			r := keyFileResult(p, passphrase, agentSock)
			r.Detail = strings.Replace(r.Detail, "SSH_KEY ", "", 1)
			return r
		}
	}
	return Result{Status: Fail, Detail: "no SSH key: SSH_KEY is empty, no ssh-agent with keys, no ~/.ssh/id_ed25519, id_ecdsa or id_rsa",
		Fix: "set SSH_KEY to your private key file, or load a key into ssh-agent and set SSH_AUTH_SOCK"}
}

func keyFileResult(path, passphrase, agentSock string) Result {
	pem, err := os.ReadFile(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return Result{Status: Fail, Detail: fmt.Sprintf("SSH_KEY %s does not exist", path),
			Fix: "set SSH_KEY to your private key file (e.g. ~/.ssh/id_ed25519), or leave it empty to use ssh-agent"}
	case errors.Is(err, fs.ErrPermission):
		return Result{Status: Fail, Detail: fmt.Sprintf("SSH_KEY %s cannot be read (permission denied)", path),
			Fix: "run as the key's owner, or fix its permissions (chmod 600)"}
	case err != nil:
		return Result{Status: Fail, Detail: fmt.Sprintf("SSH_KEY %s cannot be read: %v", path, err), Fix: "set SSH_KEY to a readable private key file"}
	}
	signer, err := ssh.ParsePrivateKey(pem)
	var missing *ssh.PassphraseMissingError
	switch {
	case errors.As(err, &missing) && passphrase != "":
		if signer, err = ssh.ParsePrivateKeyWithPassphrase(pem, []byte(passphrase)); err != nil {
			return Result{Status: Fail, Detail: fmt.Sprintf("SSH_KEY_PASSPHRASE does not decrypt SSH_KEY %s", path),
				Fix: "check SSH_KEY_PASSPHRASE, or load the key into ssh-agent"}
		}
	case errors.As(err, &missing):
		if agentSock != "" {
			return Result{Status: Warn, Detail: fmt.Sprintf("SSH_KEY %s is encrypted: the login relies on ssh-agent holding it", path),
				Fix: "ssh-add " + path + " if the login is refused"}
		}
		return Result{Status: Fail, Detail: fmt.Sprintf("SSH_KEY %s is encrypted and there is no passphrase or agent", path),
			Fix: "set SSH_KEY_PASSPHRASE, or load it into ssh-agent (ssh-add) and set SSH_AUTH_SOCK"}
	case err != nil:
		return Result{Status: Fail, Detail: fmt.Sprintf("SSH_KEY %s is not a private key (%v)", path, err),
			Fix: "set SSH_KEY to the private key file, not the .pub"}
	}
	return Result{Status: OK, Detail: fmt.Sprintf("SSH_KEY %s (%s)", path, fingerprint(signer.PublicKey()))}
}

func agentKeys(sock string) (int, error) {
	conn, err := net.DialTimeout("unix", sock, 2*time.Second)
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	keys, err := agent.NewClient(conn).List()
	return len(keys), err
}

// KnownHosts fetches the server's host key (an SSH handshake stopped right
// after the key exchange, like ssh-keyscan; nothing is logged in) and looks
// it up in file. known is true only when the file holds that very key.
// acceptNew (SSH_ACCEPT_NEW=1) makes an unknown key a warning: the next
// deploy records it. A changed key always fails.
func KnownHosts(ctx context.Context, addr, file string, acceptNew bool, timeout time.Duration) (r Result, known bool) {
	db, err := knownhosts.New()
	if _, serr := os.Stat(file); serr == nil {
		db, err = knownhosts.New(file)
	}
	if err != nil {
		return Result{Status: Fail, Detail: fmt.Sprintf("cannot use SSH_KNOWN_HOSTS %s: %v", file, err),
			Fix: "fix or move the file, or set SSH_KNOWN_HOSTS to another one"}, false
	}
	key, remote, err := hostKey(ctx, addr, knownAlgos(db, addr), timeout)
	if err != nil {
		return Result{Status: Fail, Detail: fmt.Sprintf("cannot get the host key of %s: %s", addr, netReason(err)),
			Fix: "check that DEPLOY_HOST is an SSH server"}, false
	}
	name := knownhosts.Normalize(addr)
	fp := fingerprint(key)
	var ke *knownhosts.KeyError
	var re *knownhosts.RevokedError
	switch err := db(addr, remote, key); {
	case err == nil:
		return Result{Status: OK, Detail: fmt.Sprintf("%s is known in %s (%s)", name, file, fp)}, true
	case errors.As(err, &re):
		return Result{Status: Fail, Detail: fmt.Sprintf("host key of %s (%s) is marked @revoked in %s:%d", name, fp, re.Revoked.Filename, re.Revoked.Line),
			Fix: "ask the server's admin: this key must not be trusted"}, false
	case errors.As(err, &ke) && len(ke.Want) > 0:
		w := ke.Want[0]
		return Result{Status: Fail, Detail: fmt.Sprintf("host key of %s has CHANGED (now %s; %s:%d has another): possibly a man-in-the-middle", name, fp, w.Filename, w.Line),
			Fix: fmt.Sprintf("if the server was reinstalled, check the new key with its admin, then: ssh-keygen -R %s -f %s", shell.Quote(name), shell.Quote(file))}, false
	case errors.As(err, &ke) && acceptNew:
		return Result{Status: Warn, Detail: fmt.Sprintf("host key of %s is not in %s yet (%s)", name, file, fp),
			Fix: "SSH_ACCEPT_NEW=1: the next deploy records it; check the fingerprint first (on the server: ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub)"}, false
	case errors.As(err, &ke):
		return Result{Status: Fail, Detail: fmt.Sprintf("host key of %s is not known (%s)", name, fp),
			Fix: fmt.Sprintf("check it on the server (ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub), then run once with SSH_ACCEPT_NEW=1 to record it in %s", file)}, false
	default:
		return Result{Status: Fail, Detail: fmt.Sprintf("host key of %s (%s) not accepted: %v", name, fp, err), Fix: "check SSH_KNOWN_HOSTS"}, false
	}
}

var errGotKey = errors.New("got the host key")

// hostKey runs an SSH handshake with addr up to the host key, offering the
// algorithms in algos first.
func hostKey(ctx context.Context, addr string, algos []string, timeout time.Duration) (ssh.PublicKey, net.Addr, error) {
	d := net.Dialer{Timeout: timeout}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, nil, err
	}
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(timeout))
	var key ssh.PublicKey
	_, _, _, err = ssh.NewClientConn(conn, addr, &ssh.ClientConfig{
		User:              "doctor",
		HostKeyAlgorithms: algos,
		HostKeyCallback: func(_ string, _ net.Addr, k ssh.PublicKey) error {
			key = k
			return errGotKey
		},
		Timeout: timeout,
	})
	if key != nil {
		return key, conn.RemoteAddr(), nil
	}
	if err == nil {
		err = errors.New("no host key offered")
	}
	return nil, nil, err
}

// knownAlgos puts the types of the keys file knows for addr first, so a
// server with several host keys shows the one on record (as host.DialSSH
// does), then OpenSSH's order.
func knownAlgos(db ssh.HostKeyCallback, addr string) []string {
	pref := []string{ssh.KeyAlgoED25519, ssh.KeyAlgoECDSA256, ssh.KeyAlgoECDSA384, ssh.KeyAlgoECDSA521, ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256}
	var first []string
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err == nil {
		if probe, err := ssh.NewSignerFromKey(priv); err == nil {
			var ke *knownhosts.KeyError
			if errors.As(db(addr, &net.TCPAddr{IP: net.IPv4zero}, probe.PublicKey()), &ke) {
				for _, k := range ke.Want {
					t := k.Key.Type()
					if t == ssh.KeyAlgoRSA {
						first = append(first, ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256)
					} else {
						first = append(first, t)
					}
				}
			}
		}
	}
	seen := map[string]bool{}
	var out []string
	for _, a := range append(first, pref...) {
		if !seen[a] {
			seen[a] = true
			out = append(out, a)
		}
	}
	return out
}

func fingerprint(k ssh.PublicKey) string {
	t := strings.ToUpper(strings.TrimPrefix(k.Type(), "ssh-"))
	if strings.HasPrefix(k.Type(), "ecdsa-") {
		t = "ECDSA"
	}
	return t + " " + ssh.FingerprintSHA256(k)
}

// ServerEngine asks the engine on h for its version.
func ServerEngine(ctx context.Context, h host.Host) Result {
	out, err := host.Run(ctx, h, "docker version --format '{{.Server.Version}} (API {{.Server.APIVersion}})'")
	if err != nil {
		msg := commandOutput(out, err)
		l := strings.ToLower(msg)
		fix := "start it on the server: sudo systemctl start docker"
		switch {
		case strings.Contains(l, "permission denied"):
			fix = "add the deploy user to the docker group on the server: sudo usermod -aG docker $USER, then log in again"
		case strings.Contains(l, "not found"):
			fix = "install Docker Engine on the server: sudo apt-get install docker.io"
		}
		return Result{Status: Fail, Detail: fmt.Sprintf("docker on %s: %s", h, msg), Fix: fix}
	}
	return Result{Status: OK, Detail: fmt.Sprintf("Docker %s on %s", strings.TrimSpace(out), h)}
}

// Compose finds the Compose flavour on h, in the order the deploy uses:
// the v2 plugin (docker compose), then v1 (docker-compose).
func Compose(ctx context.Context, h host.Host) Result {
	out, err := host.Run(ctx, h, `if v=$(docker compose version --short 2>/dev/null); then echo "docker compose $v"; `+
		`elif v=$(docker-compose version --short 2>/dev/null); then echo "docker-compose $v"; else exit 3; fi`)
	if err != nil {
		return Result{Status: Fail, Detail: fmt.Sprintf("neither docker compose nor docker-compose works on %s", h),
			Fix: "install Compose there: sudo apt-get install docker-compose-plugin (or docker-compose)"}
	}
	return Result{Status: OK, Detail: fmt.Sprintf("%s on %s", strings.TrimSpace(out), h)}
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
