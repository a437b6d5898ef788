package testenv

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// ssh runs command on s with OpenSSH's client, through addr (s.Addr or a
// proxy in front of it).
func (s *SSHD) ssh(t *testing.T, addr, command string) (string, error) {
	t.Helper()
	_, port, _ := strings.Cut(addr, ":")
	out, err := exec.Command("ssh", "-i", s.KeyFile, "-p", port,
		"-o", "UserKnownHostsFile="+s.KnownHosts, "-o", "StrictHostKeyChecking=yes",
		"-o", "HostKeyAlias=[127.0.0.1]:"+strings.TrimPrefix(s.Addr, "127.0.0.1:"),
		"-o", "BatchMode=yes", s.User+"@127.0.0.1", command).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// TestSSHDReachesServerEngine checks the harness itself with OpenSSH's
// client: the session's docker talks to the second engine.
func TestSSHDReachesServerEngine(t *testing.T) {
	s := StartSSHD(t)
	p := StartProxy(t, s.Addr, 0)
	out, err := s.ssh(t, p.Addr, "docker info --format '{{.DockerRootDir}}'")
	if err != nil {
		t.Fatalf("ssh: %v\n%s", err, out)
	}
	if out != "/var/lib/carebot-server-docker" {
		t.Fatalf("the session's engine has root %q, want the test server's", out)
	}
	if p.Bytes() == 0 {
		t.Error("the proxy counted no bytes")
	}
}

// TestSSHDCompose checks that a session finds the flavour it was given and
// not the other, the way the deploy code looks for Compose.
func TestSSHDCompose(t *testing.T) {
	EachCompose(t, func(t *testing.T, c Compose) {
		s := StartSSHD(t, WithCompose(c))
		out, err := s.ssh(t, s.Addr, "if docker compose version >/dev/null 2>&1; then docker compose version --short; else docker-compose version --short; fi")
		if err != nil {
			t.Fatalf("ssh: %v\n%s", err, out)
		}
		if strings.TrimPrefix(out, "v") != c.Version {
			t.Errorf("the session found Compose %q, want %s", out, c.Version)
		}
		if (c.Name == "v2") != strings.HasPrefix(c.Version, "2.") {
			t.Errorf("flavour %s has version %s", c.Name, c.Version)
		}
	})
}

// TestSSHDNonRootLogin: the user exists for sshd only; the machine's
// /etc/passwd does not have it.
func TestSSHDNonRootLogin(t *testing.T) {
	s := StartSSHD(t, WithoutEngine(), NonRootLogin())
	out, err := s.ssh(t, s.Addr, "id -u; echo $HOME; touch \"$HOME/x\" && echo writable")
	if err != nil {
		t.Fatalf("ssh: %v\n%s", err, out)
	}
	if want := "64123\n" + s.Home + "\nwritable"; out != want {
		t.Errorf("session says %q, want %q", out, want)
	}
	passwd, _ := os.ReadFile("/etc/passwd")
	if strings.Contains(string(passwd), nonRootUser) {
		t.Errorf("/etc/passwd of the machine has %s", nonRootUser)
	}
}
