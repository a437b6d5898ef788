//go:build !windows

package testenv

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

// Servers that behave like separate machines, for the tests of a deploy to
// several servers: each is a network namespace of its own (its own address
// and ports, so every server publishes the same APP_PORT) on one bridge,
// with a mount namespace that gives it its own folder at FleetPath, and a
// dockerd and an sshd running inside both.

// FleetPath is where each fleet server has its own folder (DEPLOY_PATH
// lives under it): the same path on every server, different contents.
const FleetPath = "/srv/carebot-fleet"

const (
	fleetBridge = "cbfleet0"
	fleetNet    = "10.200.0" // the bridge is .1, server i is .(10+i)
	nsFiles     = "/run/carebot-ns"
)

// Fleet is the servers of one test, and what a deploy needs to reach them.
type Fleet struct {
	Servers    []*NetServer
	KeyFile    string // the client's key, authorized on every server
	KnownHosts string // trusts every server's host key
	HostKeys   []ssh.PublicKey
}

// DeployHost is DEPLOY_HOST for the fleet's servers (all, or those of idx).
func (f *Fleet) DeployHost(idx ...int) string {
	if len(idx) == 0 {
		for i := range f.Servers {
			idx = append(idx, i)
		}
	}
	var hs []string
	for _, i := range idx {
		hs = append(hs, "root@"+f.Servers[i].IP)
	}
	return strings.Join(hs, ",")
}

// NetServer is one server of a Fleet.
type NetServer struct {
	Name       string // its network namespace
	IP         string // its address, reached from here over the bridge
	DockerHost string // DOCKER_HOST of its engine, from this machine
	Root       string // the folder it sees at FleetPath
	mountNS    string
	sshd       *exec.Cmd
	dockerd    *exec.Cmd
	exited     chan struct{}
}

// StartFleet starts n servers, stopped and removed when the test ends;
// env (NAME=VALUE, e.g. a Compose flavour's Env) is set for every SSH
// session. It needs root, ip, unshare, nsenter, dockerd and sshd; see Skip.
func StartFleet(t testing.TB, n int, env ...string) *Fleet {
	t.Helper()
	if testing.Short() {
		t.Skip("starts servers in network namespaces: skipped with -short")
	}
	if os.Geteuid() != 0 {
		Skip(t, "network namespaces need root")
	}
	for _, bin := range []string{"ip", "unshare", "nsenter", "dockerd", "iptables"} {
		if _, err := exec.LookPath(bin); err != nil {
			Skip(t, "%s is not installed (apt-get install iproute2 util-linux docker.io iptables)", bin)
		}
	}
	sshdBin, err := exec.LookPath("sshd")
	if err != nil {
		sshdBin = "/usr/sbin/sshd"
	}
	if _, err := os.Stat(sshdBin); err != nil {
		Skip(t, "sshd is not installed (apt-get install openssh-server)")
	}
	if err := fleetNetwork(); err != nil {
		Skip(t, "the fleet's bridge: %v", err)
	}
	f := &Fleet{}
	dir := worldReadableDir(t)
	user := NewKey(t)
	f.KeyFile = user.WriteFile(t, filepath.Join(dir, "id_ed25519"), "")
	auth := filepath.Join(dir, "authorized_keys")
	if err := os.WriteFile(auth, ssh.MarshalAuthorizedKey(user.Public), 0o644); err != nil {
		t.Fatal(err)
	}
	var known strings.Builder
	for i := 1; i <= n; i++ {
		s := startNetServer(t, i, dir, auth, sshdBin, env)
		f.Servers = append(f.Servers, s)
	}
	for _, s := range f.Servers {
		key := s.hostKey(t, dir)
		f.HostKeys = append(f.HostKeys, key)
		fmt.Fprintf(&known, "%s %s", s.IP, ssh.MarshalAuthorizedKey(key))
	}
	f.KnownHosts = filepath.Join(dir, "known_hosts")
	if err := os.WriteFile(f.KnownHosts, []byte(known.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

// fleetNetwork makes the bridge the servers hang on, and lets traffic
// between them pass the FORWARD chain (Docker sets it to DROP, and
// br_netfilter sends bridged frames through it).
func fleetNetwork() error {
	if _, err := net.InterfaceByName(fleetBridge); err != nil {
		if err := ownBridge(fleetBridge, fleetNet+".1/24"); err != nil {
			return err
		}
	}
	rule := []string{"FORWARD", "-i", fleetBridge, "-o", fleetBridge, "-j", "ACCEPT"}
	if exec.Command("iptables", append([]string{"-C"}, rule...)...).Run() != nil {
		if out, err := exec.Command("iptables", append([]string{"-I"}, rule...)...).CombinedOutput(); err != nil {
			return fmt.Errorf("iptables -I %s: %v %s", strings.Join(rule, " "), err, out)
		}
	}
	return nil
}

// run runs a command and says what failed.
func run(args ...string) error {
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %v %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

func startNetServer(t testing.TB, i int, dir, auth, sshdBin string, env []string) *NetServer {
	t.Helper()
	s := &NetServer{
		Name:    fmt.Sprintf("cbfleet%d", i),
		IP:      fmt.Sprintf("%s.%d", fleetNet, 10+i),
		Root:    filepath.Join(dir, fmt.Sprintf("server%d", i)),
		mountNS: filepath.Join(nsFiles, fmt.Sprintf("cbfleet%d", i)),
	}
	s.DockerHost = "unix:///run/" + s.Name + "-docker.sock"
	s.removeLeftover()
	t.Cleanup(s.stop)
	veth := fmt.Sprintf("cbf%d", i)
	steps := [][]string{
		{"ip", "netns", "add", s.Name},
		{"ip", "link", "add", veth, "type", "veth", "peer", "name", veth + "-in"},
		{"ip", "link", "set", veth + "-in", "netns", s.Name},
		{"ip", "link", "set", veth, "master", fleetBridge},
		{"ip", "link", "set", veth, "up"},
		{"ip", "netns", "exec", s.Name, "ip", "addr", "add", s.IP + "/24", "dev", veth + "-in"},
		{"ip", "netns", "exec", s.Name, "ip", "link", "set", veth + "-in", "up"},
		{"ip", "netns", "exec", s.Name, "ip", "link", "set", "lo", "up"},
		{"ip", "netns", "exec", s.Name, "ip", "route", "add", "default", "via", fleetNet + ".1"},
		// Docker's bridge, inside the namespace: no clash with the host's.
		{"ip", "netns", "exec", s.Name, "ip", "link", "add", "docker0", "type", "bridge"},
		{"ip", "netns", "exec", s.Name, "ip", "addr", "add", fmt.Sprintf("172.30.%d.1/24", i), "dev", "docker0"},
		{"ip", "netns", "exec", s.Name, "ip", "link", "set", "docker0", "up"},
	}
	for _, st := range steps {
		if err := run(st...); err != nil {
			t.Fatal(err)
		}
	}
	// A mount namespace of its own, kept by a bind mount of its file (the
	// folder holding those must be a private mount for that).
	if err := os.MkdirAll(nsFiles, 0o755); err != nil {
		t.Fatal(err)
	}
	if exec.Command("mountpoint", "-q", nsFiles).Run() != nil {
		if err := run("mount", "--bind", nsFiles, nsFiles); err != nil {
			t.Fatal(err)
		}
	}
	if err := run("mount", "--make-private", nsFiles); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(s.mountNS, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := run("unshare", "--mount="+s.mountNS, "--propagation", "private", "true"); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{s.Root, FleetPath} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := run("nsenter", "--mount="+s.mountNS, "mount", "--bind", s.Root, FleetPath); err != nil {
		t.Fatal(err)
	}

	// dockerd: `ip netns exec` remounts /sys and so hides the cgroup
	// mounts, which dockerd needs; mount them again first.
	logf, err := os.Create("/tmp/" + s.Name + "-dockerd.log")
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	s.dockerd = exec.Command("nsenter", "--mount="+s.mountNS, "ip", "netns", "exec", s.Name, "sh", "-c", cgroupMounts+`exec "$@"`, "sh",
		"dockerd", "--host", s.DockerHost, "--data-root", "/var/lib/"+s.Name+"-docker", "--exec-root", "/run/"+s.Name+"-docker",
		"--pidfile", "/run/"+s.Name+"-docker.pid", "--bridge=docker0", "--iptables=false")
	s.dockerd.Stdout, s.dockerd.Stderr = logf, logf
	s.dockerd.SysProcAttr = detached()
	if err := s.dockerd.Start(); err != nil {
		t.Fatal(err)
	}
	s.exited = make(chan struct{})
	go func(c *exec.Cmd, done chan struct{}) { c.Wait(); close(done) }(s.dockerd, s.exited)

	// sshd on port 22 of its address; its sessions use its engine, the
	// Compose of this machine, and a HOME of their own (see WithOwnHome).
	home := filepath.Join(s.Root, ".home")
	sdir := filepath.Join(dir, s.Name+"-sshd")
	for _, d := range []string{home, sdir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	hk := NewKey(t).WriteFile(t, filepath.Join(sdir, "ssh_host_ed25519_key"), "")
	conf := filepath.Join(sdir, "sshd_config")
	cfg := sshdConfig(s.IP, 22, "HostKey "+hk+"\n", sdir, auth, append([]string{"DOCKER_HOST=" + s.DockerHost, "HOME=" + home}, env...))
	if err := os.WriteFile(conf, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	_ = os.MkdirAll("/run/sshd", 0o755)
	var log lockedBuffer
	s.sshd = exec.Command("nsenter", "--mount="+s.mountNS, "ip", "netns", "exec", s.Name, sshdBin, "-D", "-e", "-f", conf)
	s.sshd.Stdout, s.sshd.Stderr = &log, &log
	if err := s.sshd.Start(); err != nil {
		t.Fatal(err)
	}
	go s.sshd.Wait()
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("%s sshd log:\n%s", s.Name, log.String())
		}
	})
	for j := 0; ; j++ {
		c, err := net.DialTimeout("tcp", s.IP+":22", time.Second)
		if err == nil {
			c.Close()
			break
		}
		if j > 50 {
			t.Fatalf("%s: sshd did not listen on %s:22: %s", s.Name, s.IP, log.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	for j := 0; !dockerOK(s.DockerHost); j++ {
		select {
		case <-s.exited:
			t.Fatalf("%s: dockerd exited at start (see /tmp/%s-dockerd.log)", s.Name, s.Name)
		case <-time.After(500 * time.Millisecond):
		}
		if j > 120 {
			t.Fatalf("%s: dockerd did not answer (see /tmp/%s-dockerd.log)", s.Name, s.Name)
		}
	}
	return s
}

// cgroupMounts mounts the cgroup v1 hierarchies again inside `ip netns
// exec`'s fresh /sys.
const cgroupMounts = `mount -t tmpfs cgroup /sys/fs/cgroup || exit 1
for c in cpu cpuacct cpuset memory devices freezer blkio pids net_cls perf_event net_prio hugetlb; do
	mkdir -p /sys/fs/cgroup/$c && mount -t cgroup -o $c cgroup /sys/fs/cgroup/$c 2>/dev/null || rmdir /sys/fs/cgroup/$c
done
mkdir -p /sys/fs/cgroup/systemd && mount -t cgroup -o none,name=systemd cgroup /sys/fs/cgroup/systemd
`

func (s *NetServer) hostKey(t testing.TB, dir string) ssh.PublicKey {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, s.Name+"-sshd", "ssh_host_ed25519_key.pub"))
	if err == nil {
		if k, _, _, _, err := ssh.ParseAuthorizedKey(b); err == nil {
			return k
		}
	}
	// WriteFile writes the private key only: derive the public one.
	raw, err := os.ReadFile(filepath.Join(dir, s.Name+"-sshd", "ssh_host_ed25519_key"))
	if err != nil {
		t.Fatal(err)
	}
	signer, err := ssh.ParsePrivateKey(raw)
	if err != nil {
		t.Fatal(err)
	}
	return signer.PublicKey()
}

// Docker runs the docker CLI against this server's engine.
func (s *NetServer) Docker(args ...string) (string, error) {
	out, err := exec.Command("docker", append([]string{"-H", s.DockerHost}, args...)...).CombinedOutput()
	return string(out), err
}

// Exec runs a command inside the server (its network and mount
// namespaces), as its own shell would.
func (s *NetServer) Exec(args ...string) (string, error) {
	out, err := exec.Command("nsenter", append([]string{"--mount=" + s.mountNS, "--net=/run/netns/" + s.Name}, args...)...).CombinedOutput()
	return string(out), err
}

// Cut takes the server off the network (its link down), as a crashed or
// unreachable machine is; Mend brings it back.
func (s *NetServer) Cut() error {
	return run("ip", "link", "set", "cbf"+strings.TrimPrefix(s.Name, "cbfleet"), "down")
}

// Mend brings the server's link back up.
func (s *NetServer) Mend() error {
	return run("ip", "link", "set", "cbf"+strings.TrimPrefix(s.Name, "cbfleet"), "up")
}

// stop stops its sshd and dockerd and removes its namespaces and files.
func (s *NetServer) stop() {
	if s.sshd != nil && s.sshd.Process != nil {
		s.sshd.Process.Kill()
	}
	if s.dockerd != nil && s.dockerd.Process != nil {
		_ = s.dockerd.Process.Signal(syscall.SIGTERM)
		select {
		case <-s.exited:
		case <-time.After(30 * time.Second):
			s.dockerd.Process.Kill()
		}
	}
	s.removeLeftover()
}

// removeLeftover removes what a killed test binary left of a server of
// this name.
func (s *NetServer) removeLeftover() {
	if b, err := os.ReadFile("/run/" + s.Name + "-docker.pid"); err == nil {
		var pid int
		if _, err := fmt.Sscan(string(b), &pid); err == nil && pid > 1 && syscall.Kill(pid, syscall.SIGTERM) == nil {
			for i := 0; i < 100 && syscall.Kill(pid, 0) == nil; i++ {
				time.Sleep(200 * time.Millisecond)
			}
			syscall.Kill(pid, syscall.SIGKILL)
		}
	}
	// Whatever else still runs in its network namespace (an sshd).
	if out, err := exec.Command("ip", "netns", "pids", s.Name).Output(); err == nil {
		for _, f := range strings.Fields(string(out)) {
			var pid int
			if _, err := fmt.Sscan(f, &pid); err == nil && pid > 1 {
				syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
	exec.Command("ip", "netns", "del", s.Name).Run()
	exec.Command("ip", "link", "del", "cbf"+strings.TrimPrefix(s.Name, "cbfleet")).Run()
	exec.Command("umount", s.mountNS).Run()
	os.Remove(s.mountNS)
	os.RemoveAll("/var/lib/" + s.Name + "-docker")
}
