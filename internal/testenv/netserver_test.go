//go:build !windows

package testenv

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// The fleet's servers are separate machines as a deploy sees them: their
// own address, engine and folder at the same path.
func TestFleetServers(t *testing.T) {
	f := StartFleet(t, 2)
	for i, s := range f.Servers {
		if err := os.WriteFile(filepath.Join(s.Root, "whoami"), []byte(s.Name), 0o644); err != nil {
			t.Fatal(err)
		}
		out, err := s.Exec("cat", FleetPath+"/whoami")
		if err != nil || out != s.Name {
			t.Errorf("server %d sees %q at %s (%v), want its own folder", i, out, FleetPath, err)
		}
		root, err := s.Docker("info", "--format", "{{.DockerRootDir}}")
		if err != nil || !strings.Contains(root, s.Name) {
			t.Errorf("server %d engine: %q %v", i, root, err)
		}
		// Over SSH, host key checked: its folder and its engine.
		got, err := exec.Command("ssh", "-i", f.KeyFile, "-o", "UserKnownHostsFile="+f.KnownHosts, "-o", "StrictHostKeyChecking=yes",
			"-o", "BatchMode=yes", "root@"+s.IP, "cat "+FleetPath+"/whoami; echo; docker info --format {{.DockerRootDir}}").CombinedOutput()
		if err != nil || !strings.HasPrefix(string(got), s.Name+"\n") || !strings.Contains(string(got), s.Name+"-docker") {
			t.Errorf("ssh root@%s: %q %v", s.IP, got, err)
		}
	}
	if f.DeployHost() != "root@10.200.0.11,root@10.200.0.12" {
		t.Errorf("DeployHost = %q", f.DeployHost())
	}
}
