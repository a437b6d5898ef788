package testenv

import (
	"os/exec"
	"strings"
	"testing"
)

// TestSSHDReachesServerEngine checks the harness itself with OpenSSH's
// client: the session's docker talks to the second engine.
func TestSSHDReachesServerEngine(t *testing.T) {
	s := StartSSHD(t)
	p := StartProxy(t, s.Addr, 0)
	_, port, _ := strings.Cut(p.Addr, ":")
	out, err := exec.Command("ssh", "-i", s.KeyFile, "-p", port,
		"-o", "UserKnownHostsFile="+s.KnownHosts, "-o", "StrictHostKeyChecking=yes",
		"-o", "HostKeyAlias=[127.0.0.1]:"+strings.TrimPrefix(s.Addr, "127.0.0.1:"),
		"-o", "BatchMode=yes", s.User+"@127.0.0.1",
		"docker info --format '{{.DockerRootDir}}'").CombinedOutput()
	if err != nil {
		t.Fatalf("ssh: %v\n%s", err, out)
	}
	if got := strings.TrimSpace(string(out)); got != "/var/lib/carebot-server-docker" {
		t.Fatalf("the session's engine has root %q, want the test server's", got)
	}
	if p.Bytes() == 0 {
		t.Error("the proxy counted no bytes")
	}
}
