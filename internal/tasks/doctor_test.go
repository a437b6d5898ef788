package tasks

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"

	"github.com/carebot/carebot/internal/config"
	"github.com/carebot/carebot/internal/deploy"
	"github.com/carebot/carebot/internal/host"
	"github.com/carebot/carebot/internal/testenv"
	"github.com/carebot/carebot/internal/wsl/wsltest"
)

// TestDoctorBrokenSetup runs the doctor where three things are wrong at
// once: the engine is stopped (DOCKER_HOST points at a socket nobody
// listens on), the key is missing (SSH_KEY names no file), and the server
// (a real sshd on 127.0.0.1) is not in known_hosts. Each is named with its
// fix on one line; the checks that need them are skipped; the rest run.
func TestDoctorBrokenSetup(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: skipped with -short")
	}
	sshd := testenv.StartSSHD(t)
	dir := t.TempDir()
	knownHosts := filepath.Join(dir, "known_hosts")
	if err := os.WriteFile(knownHosts, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("DOCKER_HOST", "unix://"+filepath.Join(dir, "docker.sock"))
	t.Setenv("DEPLOY_HOST", sshd.Target())
	t.Setenv("DEPLOY_PATH", "/srv/carebot-doctor")
	missingKey := filepath.Join(dir, "no-such-key")
	t.Setenv("SSH_KEY", missingKey)
	t.Setenv("SSH_KNOWN_HOSTS", knownHosts)
	t.Setenv("SSH_AUTH_SOCK", "")
	t.Setenv("IMAGE_TAG", "doctor")
	t.Setenv("TEST_PORT", fmt.Sprint(testenv.FreePort(t)))
	t.Setenv("APP_PORT", fmt.Sprint(testenv.FreePort(t)))
	t.Setenv("DOCKER_VIA_WSL", "")

	var out bytes.Buffer
	err := Doctor(context.Background(), repoRoot(t), &out)
	t.Logf("mage doctor:\n%s", out.String())
	if err == nil || !strings.Contains(err.Error(), "3 of") {
		t.Errorf("Doctor returned %v, want 3 failed checks", err)
	}
	lines := map[string]string{}
	for _, l := range strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n") {
		f := strings.Fields(l)
		if len(f) < 2 {
			t.Fatalf("line %q", l)
		}
		name := f[1]
		if f[1] == "ssh" || f[1] == "server" || f[1] == "test" || f[1] == "app" {
			name += " " + f[2]
		}
		lines[name] = l
		if strings.HasPrefix(l, "FAIL") && !strings.Contains(l, " — fix: ") {
			t.Errorf("a failure without its fix: %q", l)
		}
	}
	fp := ssh.FingerprintSHA256(sshd.HostKey)
	for name, want := range map[string][]string{
		"settings":      {"ok", "valid apart from SSH_KEY"},
		"go":            {"ok", "go.mod asks for"},
		"engine":        {"FAIL", "no Docker engine answers at unix://" + dir + "/docker.sock (nothing answers there", "fix: start it (sudo service docker start, or dockerd &) or set DOCKER_HOST"},
		"ssh reach":     {"ok", sshd.Addr + " answers (SSH-2.0-OpenSSH"},
		"ssh key":       {"FAIL", "SSH_KEY " + missingKey + " does not exist", "fix: set SSH_KEY to your private key file"},
		"known_hosts":   {"FAIL", "host key of [127.0.0.1]:" + fmt.Sprint(sshd.Port), "is not known (ED25519 " + fp + ")", "run once with SSH_ACCEPT_NEW=1"},
		"ssh login":     {"skip", "needs ssh key"},
		"server engine": {"skip", "needs ssh login"},
		"server .env":   {"skip", "needs ssh login"},
		"tools":         {"skip", "needs ssh login"},
		"test port":     {"ok", "is free"},
		"app port":      {"skip", "needs ssh login"},
	} {
		l, ok := lines[name]
		if !ok {
			t.Errorf("no %s line", name)
			continue
		}
		if !strings.HasPrefix(l, want[0]+" ") {
			t.Errorf("%s: %q, want %s", name, l, want[0])
		}
		for _, w := range want[1:] {
			if !strings.Contains(l, w) {
				t.Errorf("%s: %q lacks %q", name, l, w)
			}
		}
	}
	if b, _ := os.ReadFile(knownHosts); len(b) != 0 {
		t.Errorf("the doctor wrote known_hosts: %q", b)
	}
}

// TestDoctorGoodServer runs the doctor against a real sshd that lets us in:
// the login and Compose lines say what the deploy's own code finds there.
func TestDoctorGoodServer(t *testing.T) {
	if testing.Short() {
		t.Skip("integration test: skipped with -short")
	}
	sshd := testenv.StartSSHD(t)
	t.Setenv("DEPLOY_HOST", sshd.Target())
	t.Setenv("DEPLOY_PATH", "/srv/carebot-doctor")
	t.Setenv("SSH_KEY", sshd.KeyFile)
	t.Setenv("SSH_KNOWN_HOSTS", sshd.KnownHosts)
	t.Setenv("SSH_AUTH_SOCK", "")
	t.Setenv("IMAGE_TAG", "doctor")
	t.Setenv("TEST_PORT", fmt.Sprint(testenv.FreePort(t)))
	t.Setenv("APP_PORT", fmt.Sprint(testenv.FreePort(t)))
	t.Setenv("DOCKER_VIA_WSL", "")

	var out bytes.Buffer
	_ = Doctor(context.Background(), repoRoot(t), &out)
	t.Logf("mage doctor:\n%s", out.String())

	c, err := config.Load(repoRoot(t), os.Environ())
	if err != nil {
		t.Fatal(err)
	}
	s, err := host.DialSSH(context.Background(), sshConfig(c, c.Targets[0], nil))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	compose, err := deploy.DetectCompose(context.Background(), s)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"ok    ssh key       the login offers SSH_KEY " + sshd.KeyFile + " (ED25519 SHA256:",
		"ok    known_hosts   [127.0.0.1]:" + fmt.Sprint(sshd.Port) + " is known in " + sshd.KnownHosts + " (ED25519 " + ssh.FingerprintSHA256(sshd.HostKey) + ")\n",
		"ok    ssh login     logged in to " + s.String() + "\n",
		"ok    compose       " + compose.String() + " on " + s.String() + "\n",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q", want)
		}
	}
}

// TestDoctorWSLChecks runs the doctor's WSL checks through the fake wsl
// (DOCKER_VIA_WSL=1): WSL answers, the distro is missing, so the engine
// check is skipped.
func TestDoctorWSLChecks(t *testing.T) {
	wsltest.Install(t, "Debian", "docker-desktop")
	t.Setenv("DOCKER_VIA_WSL", "1")
	t.Setenv("WSL_DISTRO", "Ubuntu-22.04")
	t.Setenv("DEPLOY_HOST", "")
	t.Setenv("IMAGE_TAG", "doctor")
	t.Setenv("DEPLOY_PATH", t.TempDir())
	t.Setenv("TEST_PORT", fmt.Sprint(testenv.FreePort(t)))
	t.Setenv("APP_PORT", fmt.Sprint(testenv.FreePort(t)))
	var out bytes.Buffer
	err := Doctor(context.Background(), repoRoot(t), &out)
	t.Logf("mage doctor:\n%s", out.String())
	if err == nil {
		t.Error("no error with a missing distro")
	}
	for _, want := range []string{
		"ok    wsl           WSL answers (wsl --status)\n",
		"FAIL  wsl distro    WSL_DISTRO=Ubuntu-22.04 is not installed (installed: Debian, docker-desktop) — fix: wsl --install -d Ubuntu-22.04, or set WSL_DISTRO to one of: Debian, docker-desktop\n",
		"skip  wsl docker    needs wsl distro\n",
		"skip  engine        needs wsl docker\n",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q", want)
		}
	}
}

// TestDoctorThroughWSL is the good case through the fake wsl: the distro is
// there, docker runs in it (as root here), and the engine answers through
// `wsl ... docker system dial-stdio`.
func TestDoctorThroughWSL(t *testing.T) {
	testenv.NeedEngine(t)
	fake := wsltest.Install(t)
	t.Setenv("DOCKER_VIA_WSL", "1")
	t.Setenv("WSL_DISTRO", "ubuntu-22.04") // wsl.exe matches names without regard to case
	t.Setenv("DEPLOY_HOST", "")
	t.Setenv("IMAGE_TAG", "doctor")
	t.Setenv("DEPLOY_PATH", t.TempDir())
	t.Setenv("TEST_PORT", fmt.Sprint(testenv.FreePort(t)))
	t.Setenv("APP_PORT", fmt.Sprint(testenv.FreePort(t)))
	var out bytes.Buffer
	_ = Doctor(context.Background(), repoRoot(t), &out)
	t.Logf("mage doctor:\n%s", out.String())
	for _, want := range []string{
		"ok    wsl           ",
		"ok    wsl distro    WSL_DISTRO=ubuntu-22.04 is installed\n",
		"ok    wsl docker    Docker version ",
		"ok    engine        Docker ",
		" at WSL distro ubuntu-22.04\n",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("output lacks %q", want)
		}
	}
	if fake.Count("bash") != 1 || fake.Count("docker") < 1 {
		t.Errorf("fake wsl ran bash %d and docker %d times, want 1 and at least 1", fake.Count("bash"), fake.Count("docker"))
	}
}
