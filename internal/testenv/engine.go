//go:build !windows

package testenv

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Engine is a Docker engine a test starts for itself, beside the shared
// ones, and may stop, restart or starve of disk without disturbing other
// tests: its own socket, data root, bridge and log. It is stopped and its
// files removed when the test ends.
type Engine struct {
	Name     string // its files are /run/<Name>-docker*, /var/lib/<Name>-docker
	Host     string // DOCKER_HOST
	DataRoot string
	Log      string
	cfg      EngineConfig
	cmd      *exec.Cmd
	exited   chan struct{}
}

// EngineConfig says what StartEngine starts.
type EngineConfig struct {
	Name   string // short: the socket and folders are named after it
	Bridge string // a bridge of its own (at most 15 characters), made if missing
	CIDR   string // the bridge's address, e.g. 172.31.252.1/24
	// DataRootMB > 0 puts the data root on an ext4 file system of that many
	// MB (a loop-mounted image file), so that a test can fill it.
	DataRootMB int
}

// StartEngine starts a private engine and waits until it answers; see
// Engine. It needs root; without it, see Skip.
func StartEngine(t testing.TB, cfg EngineConfig) *Engine {
	t.Helper()
	if testing.Short() {
		t.Skip("starts a Docker engine: skipped with -short")
	}
	if _, err := exec.LookPath("dockerd"); err != nil {
		Skip(t, "dockerd is not installed (apt-get install docker.io)")
	}
	if os.Getuid() != 0 {
		Skip(t, "starting a Docker engine needs root")
	}
	e := &Engine{
		Name:     cfg.Name,
		Host:     "unix:///run/" + cfg.Name + "-docker.sock",
		DataRoot: "/var/lib/" + cfg.Name + "-docker",
		Log:      "/tmp/" + cfg.Name + "-dockerd.log",
		cfg:      cfg,
	}
	e.stopLeftover()
	if err := os.MkdirAll(e.DataRoot, 0o711); err != nil {
		t.Fatal(err)
	}
	if cfg.DataRootMB > 0 {
		LoopMount(t, e.DataRoot, cfg.DataRootMB)
	}
	if err := ownBridge(cfg.Bridge, cfg.CIDR); err != nil {
		Skip(t, "%v", err)
	}
	// Registered after the mount: cleanups run last first, so the engine
	// stops before its data root is unmounted.
	t.Cleanup(func() {
		if err := e.Stop(); err != nil {
			t.Logf("stop engine %s: %v", e.Name, err)
		}
		if cfg.DataRootMB == 0 {
			os.RemoveAll(e.DataRoot)
		}
	})
	if err := e.Start(); err != nil {
		t.Fatal(err)
	}
	return e
}

// stopLeftover stops an engine of this name left running by a test binary
// that was killed.
func (e *Engine) stopLeftover() {
	b, err := os.ReadFile("/run/" + e.Name + "-docker.pid")
	if err != nil {
		return
	}
	var pid int
	if _, err := fmt.Sscan(string(b), &pid); err != nil || pid <= 1 {
		return
	}
	if syscall.Kill(pid, syscall.SIGTERM) != nil {
		return
	}
	for i := 0; i < 100 && syscall.Kill(pid, 0) == nil; i++ {
		time.Sleep(200 * time.Millisecond)
	}
	syscall.Kill(pid, syscall.SIGKILL)
	exec.Command("umount", "-l", e.DataRoot).Run()
}

// Start starts the engine (again) and waits up to 60 s until it answers.
func (e *Engine) Start() error {
	if e.cmd != nil {
		return fmt.Errorf("engine %s is running", e.Name)
	}
	logf, err := os.OpenFile(e.Log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer logf.Close()
	cmd := exec.Command("dockerd", "--host", e.Host,
		"--data-root", e.DataRoot, "--exec-root", "/run/"+e.Name+"-docker",
		"--pidfile", "/run/"+e.Name+"-docker.pid", "--bridge="+e.cfg.Bridge, "--iptables=false")
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = detached()
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start dockerd: %w", err)
	}
	e.cmd, e.exited = cmd, make(chan struct{})
	go func(done chan struct{}) { cmd.Wait(); close(done) }(e.exited)
	for i := 0; i < 120; i++ {
		if dockerOK(e.Host) {
			return nil
		}
		select {
		case <-e.exited:
			e.cmd = nil
			return fmt.Errorf("dockerd %s exited at start (see %s)", e.Name, e.Log)
		case <-time.After(500 * time.Millisecond):
		}
	}
	return fmt.Errorf("dockerd %s did not answer at %s (see %s)", e.Name, e.Host, e.Log)
}

// Stop stops the engine as a service manager does (SIGTERM, which stops
// its containers), killing it after 30 s.
func (e *Engine) Stop() error {
	if e.cmd == nil {
		return nil
	}
	cmd, exited := e.cmd, e.exited
	e.cmd = nil
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
		return nil
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		<-exited
		return errors.New("did not stop within 30s after SIGTERM: killed")
	}
}

// Restart stops the engine and starts it again, as `systemctl restart
// docker` does.
func (e *Engine) Restart() error {
	if err := e.Stop(); err != nil {
		return err
	}
	return e.Start()
}

// Docker runs the docker CLI against this engine.
func (e *Engine) Docker(args ...string) (string, error) {
	out, err := exec.Command("docker", append([]string{"-H", e.Host}, args...)...).CombinedOutput()
	return string(out), err
}

// LoopMount mounts a fresh ext4 file system of sizeMB at dir (made if
// missing), from an image file beside the machine's temporary files, so a
// test can fill a disk without filling the machine's. It is unmounted and
// the image removed when the test ends.
func LoopMount(t testing.TB, dir string, sizeMB int) {
	t.Helper()
	if os.Getuid() != 0 {
		Skip(t, "a loop mount needs root")
	}
	for _, bin := range []string{"mkfs.ext4", "mount", "umount"} {
		if _, err := exec.LookPath(bin); err != nil {
			Skip(t, "%s is not installed (apt-get install e2fsprogs mount)", bin)
		}
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	img, err := os.CreateTemp("/var/tmp", "carebot-loop-*.img")
	if err != nil {
		t.Fatal(err)
	}
	img.Close()
	t.Cleanup(func() { os.Remove(img.Name()) })
	if err := os.Truncate(img.Name(), int64(sizeMB)<<20); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mkfs.ext4", "-q", "-F", "-m", "0", img.Name()).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v %s", err, out)
	}
	if out, err := exec.Command("mount", "-o", "loop", img.Name(), dir).CombinedOutput(); err != nil {
		Skip(t, "loop mount of %s: %v %s", filepath.Base(img.Name()), err, strings.TrimSpace(string(out)))
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", dir).CombinedOutput(); err != nil {
			t.Logf("umount %s: %v %s; detaching it lazily", dir, err, out)
			exec.Command("umount", "-l", dir).Run()
		}
	})
}

// FreeBytes is the space left for files on the file system holding path.
func FreeBytes(path string) (int64, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(path, &st); err != nil {
		return 0, err
	}
	return int64(st.Bavail) * st.Bsize, nil
}

// Fill leaves about leave bytes free on the file system holding dir, with
// one file (fallocate) in dir; removing that file frees the space again.
func Fill(t testing.TB, dir string, leave int64) string {
	t.Helper()
	free, err := FreeBytes(dir)
	if err != nil {
		t.Fatal(err)
	}
	f := filepath.Join(dir, "carebot-test-filler")
	if free <= leave {
		return f
	}
	if out, err := exec.Command("fallocate", "-l", fmt.Sprint(free-leave), f).CombinedOutput(); err != nil {
		t.Fatalf("fallocate: %v %s", err, out)
	}
	return f
}
