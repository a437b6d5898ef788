// Package testenv starts the real parts the end-to-end tests need: a second
// Docker engine that stands in for the production server, and OpenSSH's sshd
// on 127.0.0.1 whose sessions talk to that engine. Only tests import it.
//
// Without the programs (dockerd, sshd) or root, Require skips the test,
// except under CI=true, where it fails: CI must never pass by skipping.
package testenv

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
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

// Skip skips (or under CI=true fails) the test with a reason.
func Skip(t testing.TB, format string, a ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, a...)
	if os.Getenv("CI") == "true" {
		t.Fatalf("CI=true: %s", msg)
	}
	t.Skip("skipping: " + msg)
}

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

func dockerOK(host string) bool {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return exec.CommandContext(ctx, "docker", "-H", host, "info").Run() == nil
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

// SSHD is a running OpenSSH server on 127.0.0.1 whose sessions use the
// second engine.
type SSHD struct {
	Addr        string // 127.0.0.1:port
	Port        int
	User        string
	KeyFile     string        // the client's private key (authorized)
	HostKey     ssh.PublicKey // the server's host key
	KnownHosts  string        // a known_hosts file that trusts HostKey for Addr
	Dir         string
	cmd         *exec.Cmd
	hostKeyFile string
}

// StartSSHD starts sshd on a free loopback port with fresh host and user
// keys, and stops it when the test ends.
func StartSSHD(t testing.TB) *SSHD {
	t.Helper()
	ServerEngine(t)
	bin, err := exec.LookPath("sshd")
	if err != nil {
		if _, err = os.Stat("/usr/sbin/sshd"); err != nil {
			Skip(t, "sshd is not installed (apt-get install openssh-server)")
		}
		bin = "/usr/sbin/sshd"
	}
	dir := t.TempDir()
	s := &SSHD{Dir: dir, User: "root", KeyFile: filepath.Join(dir, "id_ed25519"), hostKeyFile: filepath.Join(dir, "ssh_host_ed25519_key")}
	hostPub := writeKey(t, s.hostKeyFile)
	userPub := writeKey(t, s.KeyFile)
	s.HostKey = hostPub
	auth := filepath.Join(dir, "authorized_keys")
	if err := os.WriteFile(auth, ssh.MarshalAuthorizedKey(userPub), 0o600); err != nil {
		t.Fatal(err)
	}
	s.Port = FreePort(t)
	s.Addr = fmt.Sprintf("127.0.0.1:%d", s.Port)
	conf := filepath.Join(dir, "sshd_config")
	cfg := fmt.Sprintf(`ListenAddress 127.0.0.1
Port %d
HostKey %s
PidFile %s/sshd.pid
AuthorizedKeysFile %s
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
StrictModes no
AllowTcpForwarding yes
Subsystem sftp internal-sftp
SetEnv DOCKER_HOST=%s
`, s.Port, s.hostKeyFile, dir, auth, ServerDockerHost)
	if err := os.WriteFile(conf, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	_ = os.MkdirAll("/run/sshd", 0o755)
	var log bytes.Buffer
	s.cmd = exec.Command(bin, "-D", "-e", "-f", conf)
	s.cmd.Stdout, s.cmd.Stderr = &log, &log
	if err := s.cmd.Start(); err != nil {
		Skip(t, "start sshd: %v", err)
	}
	t.Cleanup(func() {
		s.cmd.Process.Kill()
		s.cmd.Wait()
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
	s.KnownHosts = filepath.Join(dir, "known_hosts")
	s.WriteKnownHosts(t, s.KnownHosts, hostPub)
	return s
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

// OtherKey is a host key the server does not have, for known_hosts files
// that must be refused.
func OtherKey(t testing.TB) ssh.PublicKey {
	t.Helper()
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	k, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func writeKey(t testing.TB, path string) ssh.PublicKey {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatal(err)
	}
	k, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path+".pub", ssh.MarshalAuthorizedKey(k), 0o644); err != nil {
		t.Fatal(err)
	}
	return k
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

// ServerDockerCompose runs docker-compose in dir against the test server's
// engine, for cleaning up after a test.
func ServerDockerCompose(dir, file, imageName string, args ...string) (string, error) {
	cmd := exec.Command("docker-compose", append([]string{"-f", file}, args...)...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "DOCKER_HOST="+ServerDockerHost, "IMAGE_NAME="+imageName, "IMAGE_TAG=latest")
	out, err := cmd.CombinedOutput()
	return string(out), err
}
