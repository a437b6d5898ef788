// Package testenv starts the real parts the end-to-end tests need: a second
// Docker engine that stands in for the production server, OpenSSH's sshd on
// 127.0.0.1 whose sessions talk to that engine, and the two flavours of
// Docker Compose. Only tests import it.
//
// A test that cannot run here (no engine, no sshd, not root, no Compose v2
// binary) calls Skip: locally that skips with the reason, under CI=true it
// fails, because CI must never pass by skipping.
package testenv

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

// ServerSocket is the second engine's API socket.
const ServerSocket = "/run/carebot-server-docker.sock"

// ServerDockerHost is DOCKER_HOST for the second engine.
const ServerDockerHost = "unix://" + ServerSocket

// Skip is how a test says that it cannot run here, and why: it skips, or
// under CI=true fails. Every such test uses it; only -short skips bypass it.
func Skip(t testing.TB, format string, a ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, a...)
	if os.Getenv("CI") == "true" {
		t.Fatalf("CI=true: %s", msg)
	}
	t.Skip("skipping: " + msg)
}

// NeedEngine makes sure the docker CLI is installed and the local engine
// (DOCKER_HOST, or the default socket) answers; see Skip. -short skips it.
func NeedEngine(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("needs the Docker engine: skipped with -short")
	}
	if err := dockerAnswers(""); err != nil {
		Skip(t, "%v", err)
	}
}

// dockerAnswers asks the engine at host ("" for the local one) for its
// version through the docker CLI.
func dockerAnswers(host string) error {
	if _, err := exec.LookPath("docker"); err != nil {
		return fmt.Errorf("no docker CLI (apt-get install docker.io)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	args := []string{"version", "--format", "{{.Server.Version}}"}
	where := "the local Docker engine"
	if host != "" {
		args = append([]string{"-H", host}, args...)
		where = "the Docker engine at " + host
	}
	out, err := exec.CommandContext(ctx, "docker", args...).CombinedOutput()
	if err != nil {
		line, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
		return fmt.Errorf("%s does not answer (%v: %s): start it (dockerd &)", where, err, line)
	}
	return nil
}

func dockerOK(host string) bool { return dockerAnswers(host) == nil }

var engineOnce sync.Once
var engineErr error

// ServerEngine makes sure the second engine answers at ServerSocket,
// starting it when needed; it stays up for the next tests.
func ServerEngine(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("end-to-end test: skipped with -short")
	}
	engineOnce.Do(func() { engineErr = startServerEngine() })
	if engineErr != nil {
		Skip(t, "%v", engineErr)
	}
}

func startServerEngine() error {
	if dockerOK(ServerDockerHost) {
		return nil
	}
	if _, err := exec.LookPath("dockerd"); err != nil {
		return fmt.Errorf("dockerd is not installed (apt-get install docker.io)")
	}
	if os.Getuid() != 0 {
		return fmt.Errorf("starting the test server's engine needs root")
	}
	return startEngine("dockerd", "carebot-server", serverBridge, "172.31.253.1/24")
}

// startEngine starts a dockerd beside the first one, with its own socket,
// data, bridge and log (/tmp/<name>-dockerd.log, DOCKER_HOST
// unix:///run/<name>-docker.sock), and waits until it answers.
func startEngine(bin, name, bridge, cidr string) error {
	host := "unix:///run/" + name + "-docker.sock"
	logPath := "/tmp/" + name + "-dockerd.log"
	logf, err := os.Create(logPath)
	if err != nil {
		return err
	}
	if err := ownBridge(bridge, cidr); err != nil {
		return err
	}
	cmd := exec.Command(bin, "--host", host,
		"--data-root", "/var/lib/"+name+"-docker", "--exec-root", "/run/"+name+"-docker",
		"--pidfile", "/run/"+name+"-docker.pid", "--bridge="+bridge, "--iptables=false")
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = detached()
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", bin, err)
	}
	go cmd.Wait()
	for i := 0; i < 120; i++ {
		if dockerOK(host) {
			return nil
		}
		time.Sleep(500 * time.Millisecond)
	}
	return fmt.Errorf("%s did not answer at %s (see %s)", bin, host, logPath)
}

// SSHD is a running OpenSSH server on 127.0.0.1.
type SSHD struct {
	Addr       string // 127.0.0.1:port
	Port       int
	User       string        // the login user: root, unless NonRootLogin
	UserKey    Key           // the client's key, authorized
	KeyFile    string        // UserKey's private key file
	HostKey    ssh.PublicKey // the server's ed25519 host key
	KnownHosts string        // a known_hosts file that trusts HostKey for Addr
	Dir        string        // the server's files; readable by User
	Home       string        // User's home folder, writable by User
}

// SSHDOption changes what StartSSHD starts.
type SSHDOption func(*sshdSetup)

type sshdSetup struct {
	engine   bool     // sessions talk to the test server's engine
	host     string   // or to this engine (DOCKER_HOST), when set
	env      []string // NAME=VALUE for every session
	keyTypes []string // host keys beside ed25519, made by ssh-keygen
	nonRoot  bool
	ownHome  bool // HOME is the server's Home folder
}

// WithoutEngine starts sshd alone: its sessions get no DOCKER_HOST.
func WithoutEngine() SSHDOption { return func(s *sshdSetup) { s.engine = false } }

// WithEngine makes the sessions talk to the engine at dockerHost (one
// the test started, see StartEngine) instead of the shared test server's.
func WithEngine(dockerHost string) SSHDOption {
	return func(s *sshdSetup) { s.engine, s.host = true, dockerHost }
}

// WithCompose makes the sessions find Compose flavour c, and only it.
func WithCompose(c Compose) SSHDOption {
	return func(s *sshdSetup) { s.env = append(s.env, c.Env()) }
}

// WithOwnHome gives the sessions the server's Home folder as HOME instead
// of the login user's: Debian's bash reads ~/.bashrc for every command
// that comes over SSH, and this machine's (root's, with whatever its
// owner put there) would time its start-up, not a server's.
func WithOwnHome() SSHDOption { return func(s *sshdSetup) { s.ownHome = true } }

// WithHostKeys adds host keys of these types (ecdsa, rsa) beside ed25519.
func WithHostKeys(types ...string) SSHDOption {
	return func(s *sshdSetup) { s.keyTypes = append(s.keyTypes, types...) }
}

// The user NonRootLogin logs in as. It exists only inside sshd's own mount
// namespace (see StartSSHD): the machine's /etc/passwd is never changed.
const (
	nonRootUser = "carebot-test"
	nonRootUID  = 64123
	nonRootGID  = 65534 // nogroup
)

// NonRootLogin logs in as an ordinary user instead of root. OpenSSH
// behaves differently for root logins: it runs them without privilege
// separation and so refuses the client's signals.
func NonRootLogin() SSHDOption { return func(s *sshdSetup) { s.nonRoot = true } }

// StartSSHD starts sshd on a free loopback port with fresh host and user
// keys, and stops it when the test ends. By default the login is root and
// the sessions use the test server's engine (DOCKER_HOST).
func StartSSHD(t testing.TB, opts ...SSHDOption) *SSHD {
	t.Helper()
	setup := sshdSetup{engine: true}
	for _, o := range opts {
		o(&setup)
	}
	if testing.Short() {
		t.Skip("starts sshd: skipped with -short")
	}
	if setup.engine {
		if setup.host == "" {
			ServerEngine(t)
			setup.host = ServerDockerHost
		}
		setup.env = append([]string{"DOCKER_HOST=" + setup.host}, setup.env...)
	}
	bin, err := exec.LookPath("sshd")
	if err != nil {
		bin = "/usr/sbin/sshd"
		if _, err := os.Stat(bin); err != nil {
			Skip(t, "sshd is not installed (apt-get install openssh-server)")
		}
	}
	if os.Geteuid() != 0 {
		Skip(t, "starting sshd needs root")
	}
	s := &SSHD{User: "root", Dir: worldReadableDir(t)}
	s.Home = filepath.Join(s.Dir, "home")
	if err := os.Mkdir(s.Home, 0o755); err != nil {
		t.Fatal(err)
	}
	if setup.ownHome {
		setup.env = append(setup.env, "HOME="+s.Home)
	}

	hostKey := NewKey(t)
	s.HostKey = hostKey.Public
	hostKeys := "HostKey " + hostKey.WriteFile(t, filepath.Join(s.Dir, "ssh_host_ed25519_key"), "") + "\n"
	for _, typ := range setup.keyTypes {
		p := filepath.Join(s.Dir, "ssh_host_"+typ+"_key")
		if out, err := exec.Command("ssh-keygen", "-q", "-t", typ, "-N", "", "-f", p).CombinedOutput(); err != nil {
			t.Fatalf("ssh-keygen -t %s: %v %s", typ, err, out)
		}
		hostKeys += "HostKey " + p + "\n"
	}
	s.UserKey = NewKey(t)
	s.KeyFile = s.UserKey.WriteFile(t, filepath.Join(s.Dir, "id_ed25519"), "")
	// sshd reads authorized_keys as the login user.
	auth := filepath.Join(s.Dir, "authorized_keys")
	if err := os.WriteFile(auth, ssh.MarshalAuthorizedKey(s.UserKey.Public), 0o644); err != nil {
		t.Fatal(err)
	}

	s.Port = FreePort(t)
	s.Addr = fmt.Sprintf("127.0.0.1:%d", s.Port)
	conf := filepath.Join(s.Dir, "sshd_config")
	cfg := sshdConfig("127.0.0.1", s.Port, hostKeys, s.Dir, auth, setup.env)
	if err := os.WriteFile(conf, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	_ = os.MkdirAll("/run/sshd", 0o755) // privilege separation's chroot

	argv := []string{bin, "-D", "-e", "-f", conf}
	if setup.nonRoot {
		argv = s.nonRoot(t, argv)
	}
	var log lockedBuffer
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatalf("start sshd: %v", err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("sshd log:\n%s", log.String())
		}
	})
	for i := 0; ; i++ {
		c, err := net.DialTimeout("tcp", s.Addr, time.Second)
		if err == nil {
			c.Close()
			break
		}
		if i > 50 {
			t.Fatalf("sshd did not listen on %s: %s", s.Addr, log.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	s.KnownHosts = filepath.Join(s.Dir, "known_hosts")
	s.WriteKnownHosts(t, s.KnownHosts, s.HostKey)
	return s
}

// sshdConfig is the sshd_config of a test server listening on ip:port:
// hostKeys ("HostKey …" lines), its pid file in dir, the one authorized
// keys file, key logins only, and env (NAME=VALUE) set for every session.
func sshdConfig(ip string, port int, hostKeys, dir, auth string, env []string) string {
	cfg := fmt.Sprintf(`ListenAddress %s
Port %d
%sPidFile %s/sshd.pid
AuthorizedKeysFile %s
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
StrictModes no
AllowTcpForwarding yes
Subsystem sftp internal-sftp
`, ip, port, hostKeys, dir, auth)
	if len(env) > 0 {
		cfg += "SetEnv"
		for _, kv := range env {
			name, value, _ := strings.Cut(kv, "=")
			cfg += fmt.Sprintf(" %s=%q", name, value)
		}
		cfg += "\n"
	}
	return cfg
}

// nonRoot makes the login user an ordinary one, and returns the command
// line that starts sshd in a private mount namespace where /etc/passwd (a
// bind-mounted copy) has that user.
func (s *SSHD) nonRoot(t testing.TB, argv []string) []string {
	t.Helper()
	if _, err := exec.LookPath("unshare"); err != nil {
		Skip(t, "a non-root login needs unshare (apt-get install util-linux)")
	}
	passwd, err := os.ReadFile("/etc/passwd")
	if err != nil {
		t.Fatal(err)
	}
	passwd = append(passwd, fmt.Sprintf("%s:x:%d:%d:carebot test:%s:/bin/sh\n", nonRootUser, nonRootUID, nonRootGID, s.Home)...)
	file := filepath.Join(s.Dir, "passwd")
	if err := os.WriteFile(file, passwd, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(s.Home, nonRootUID, nonRootGID); err != nil {
		t.Fatal(err)
	}
	s.User = nonRootUser
	return append([]string{"unshare", "--mount", "--propagation", "private",
		"/bin/sh", "-c", `mount --bind "$0" /etc/passwd && exec "$@"`, file}, argv...)
}

// worldReadableDir is a temporary folder that users other than root can
// enter (t.TempDir's parent is private to root), removed after the test.
func worldReadableDir(t testing.TB) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "carebot-sshd-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// Target is DEPLOY_HOST for this server.
func (s *SSHD) Target() string { return fmt.Sprintf("%s@%s", s.User, s.Addr) }

// WriteKnownHosts writes a known_hosts file trusting key for the server.
func (s *SSHD) WriteKnownHosts(t testing.TB, path string, key ssh.PublicKey) {
	t.Helper()
	WriteKnownHosts(t, path, s.Addr, key)
}

// WriteKnownHosts writes a known_hosts file trusting key for addr
// (host:port), in OpenSSH's [host]:port form.
func WriteKnownHosts(t testing.TB, path, addr string, key ssh.PublicKey) {
	t.Helper()
	h, port, _ := net.SplitHostPort(addr)
	line := fmt.Sprintf("[%s]:%s %s", h, port, strings.TrimSpace(string(ssh.MarshalAuthorizedKey(key))))
	if err := os.WriteFile(path, []byte(line+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
}

// FreePort asks the kernel for a loopback port nobody uses.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// ServerDocker runs the docker CLI against the test server's engine.
func ServerDocker(t testing.TB, args ...string) (string, error) {
	t.Helper()
	out, err := exec.Command("docker", append([]string{"-H", ServerDockerHost}, args...)...).CombinedOutput()
	return string(out), err
}

// ServerDockerCompose runs Compose flavour c in dir against the test
// server's engine, for cleaning up after a test. It must be the flavour
// that deployed: v1 and v2 name a folder's project differently.
func ServerDockerCompose(c Compose, dir, file, imageName string, args ...string) (string, error) {
	cmd := c.Command(append([]string{"-f", file}, args...)...)
	cmd.Dir = dir
	cmd.Env = append(cmd.Env, "DOCKER_HOST="+ServerDockerHost, "IMAGE_NAME="+imageName, "IMAGE_TAG=latest")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	return out.String(), err
}
