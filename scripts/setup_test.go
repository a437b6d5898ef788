// Package scripts holds the tests of scripts/*.sh: the set-up they do on a
// fresh Debian/Ubuntu machine before running the pipeline.
//
// The fresh machine is simulated with PATH: a folder of links to the system's
// programs minus docker, dockerd, docker-compose and sshd, plus a fake
// apt-get that records its arguments and then "installs" a package by
// linking the real programs into that folder, and a fake dpkg that knows only
// what the fake apt-get installed. Everything else is real: the engine is
// started if it is not running, and `mage full` builds, tests and deploys.
package scripts

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/carebot/carebot/internal/testenv"
)

// needRoot skips when not root (installing needs root or sudo), except under
// CI=true, where a skipped set-up test would hide a broken first run.
func needRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		testenv.Skip(t, "the set-up tests need root: they run the scripts as the root of a fresh machine")
	}
}

// real is where the programs the fake apt-get provides really are.
var real = map[string][]string{
	"docker":         {"/usr/bin/docker", "/usr/local/bin/docker"},
	"dockerd":        {"/usr/sbin/dockerd", "/usr/bin/dockerd"},
	"docker-compose": {"/usr/bin/docker-compose", "/usr/local/bin/docker-compose"},
	"sshd":           {"/usr/sbin/sshd"},
}

// hidden are the programs a fresh machine lacks, and the ones we fake.
var hidden = map[string]bool{"docker": true, "dockerd": true, "docker-compose": true, "sshd": true, "apt-get": true, "dpkg": true}

func realPath(t *testing.T, name string) string {
	t.Helper()
	for _, p := range real[name] {
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	testenv.Skip(t, "%s is not installed (looked in %v): the fake apt-get links the real one", name, real[name])
	return ""
}

// machine is a simulated fresh machine: its PATH and the fake apt-get's record.
type machine struct {
	bin     string // the only folder on PATH
	aptLog  string // one line per apt-get call: DEBIAN_FRONTEND=... args
	dpkgDB  string // packages the fake apt-get installed, one a line
	realBin map[string]string
}

func newMachine(t *testing.T) *machine {
	t.Helper()
	dir := t.TempDir()
	m := &machine{bin: filepath.Join(dir, "bin"), aptLog: filepath.Join(dir, "apt-get.log"),
		dpkgDB: filepath.Join(dir, "dpkg-installed"), realBin: map[string]string{}}
	for name := range real {
		m.realBin[name] = realPath(t, name)
	}
	if err := os.Mkdir(m.bin, 0o755); err != nil {
		t.Fatal(err)
	}
	dirs := []string{"/usr/local/go/bin", "/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"}
	if goBin, err := exec.LookPath("go"); err == nil {
		dirs = append([]string{filepath.Dir(goBin)}, dirs...)
	}
	for _, d := range dirs {
		entries, err := os.ReadDir(d)
		if err != nil {
			continue
		}
		for _, e := range entries {
			link := filepath.Join(m.bin, e.Name())
			if hidden[e.Name()] || e.IsDir() {
				continue
			}
			if _, err := os.Lstat(link); err == nil {
				continue // the first folder on the usual PATH wins
			}
			if err := os.Symlink(filepath.Join(d, e.Name()), link); err != nil {
				t.Fatal(err)
			}
		}
	}
	aptGet := fmt.Sprintf(`#!/bin/sh
# fake apt-get: records its arguments, then provides the real programs
echo "DEBIAN_FRONTEND=$DEBIAN_FRONTEND $*" >> %[1]q
[ "$1" = install ] || exit 0
shift
for p in "$@"; do
  case $p in
    -*) continue ;;
    docker.io) ln -sf %[3]q %[2]q/docker && ln -sf %[4]q %[2]q/dockerd ;;
    docker-compose) ln -sf %[5]q %[2]q/docker-compose ;;
    openssh-server) ln -sf %[6]q %[2]q/sshd ;;
    *) echo "fake apt-get: unknown package $p" >&2; exit 100 ;;
  esac
  echo "$p" >> %[7]q
done
`, m.aptLog, m.bin, m.realBin["docker"], m.realBin["dockerd"], m.realBin["docker-compose"], m.realBin["sshd"], m.dpkgDB)
	dpkg := fmt.Sprintf(`#!/bin/sh
# fake dpkg: "dpkg -s PKG" knows only what the fake apt-get installed
if [ "$1" = -s ] && grep -qx "$2" %[1]q 2>/dev/null; then
  printf 'Package: %%s\nStatus: install ok installed\n' "$2"; exit 0
fi
echo "dpkg-query: package '$2' is not installed and no information is available" >&2
exit 1
`, m.dpkgDB)
	for name, body := range map[string]string{"apt-get": aptGet, "dpkg": dpkg} {
		// O_EXCL: never write through a link to the real program.
		f, err := os.OpenFile(filepath.Join(m.bin, name), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o755)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := f.WriteString(body); err != nil {
			t.Fatal(err)
		}
		if err := f.Close(); err != nil {
			t.Fatal(err)
		}
	}
	return m
}

// provide puts the real docker programs on the machine's PATH, as if installed.
func (m *machine) provide(t *testing.T, names ...string) {
	t.Helper()
	for _, n := range names {
		if err := os.Symlink(m.realBin[n], filepath.Join(m.bin, n)); err != nil {
			t.Fatal(err)
		}
	}
}

func (m *machine) aptCalls(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile(m.aptLog)
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	return strings.Split(strings.TrimSpace(string(b)), "\n")
}

// env is this process's environment without the tool's settings (a developer's
// own IMAGE_NAME or DEPLOY_HOST must not leak in), PATH and CI, plus extra.
func (m *machine) env(extra ...string) []string {
	drop := regexp.MustCompile(`^(PATH|CI|DOCKER_HOST|DOCKER_CONTEXT|IMAGE_[A-Z]+|DOCKERFILE|TEST_[A-Z]+|HEALTH_[A-Z]+|DEPLOY_[A-Z]+|COMPOSE_[A-Z]+|APP_PORT|BACKUP_KEEP|MIGRATIONS|SSH_[A-Z_]+|TRANSFER_COMPRESSION|WSL_DISTRO|DOCKER_VIA_WSL|DOCKER_SUDO|BOT_TOKEN|CAREBOT_[A-Z0-9_]+)=`)
	var env []string
	for _, kv := range os.Environ() {
		if !drop.MatchString(kv) {
			env = append(env, kv)
		}
	}
	return append(append(env, "PATH="+m.bin), extra...)
}

func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	return root
}

// copyRepo copies the project's files (tracked and new, not ignored: no .env,
// no .deploy) to a temp folder, so the run cannot touch the real checkout.
func copyRepo(t *testing.T) string {
	t.Helper()
	src := repoRoot(t)
	out, err := exec.Command("git", "-C", src, "ls-files", "-z", "--cached", "--others", "--exclude-standard").Output()
	if err != nil {
		t.Fatalf("git ls-files: %v", err)
	}
	dst := filepath.Join(t.TempDir(), "carebot")
	for _, rel := range strings.Split(strings.TrimRight(string(out), "\x00"), "\x00") {
		st, err := os.Lstat(filepath.Join(src, rel))
		if err != nil || !st.Mode().IsRegular() {
			continue // deleted in the work tree, or not a file
		}
		b, err := os.ReadFile(filepath.Join(src, rel))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.MkdirAll(filepath.Dir(filepath.Join(dst, rel)), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, rel), b, st.Mode().Perm()); err != nil {
			t.Fatal(err)
		}
	}
	return dst
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// run runs a command in dir with env and no terminal (stdin is /dev/null).
func run(t *testing.T, timeout time.Duration, dir string, env []string, name string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir, cmd.Env = dir, env
	out, err := cmd.CombinedOutput()
	return string(out), err
}

const (
	testImage     = "carebot-setup-test"
	testTag       = "setuptest"
	testContainer = "carebot_setup_test"
	testCompose   = "docker-compose.setup-test.yml"
)

// TestFullSetsUpAFreshMachine runs scripts/full.sh where docker, dockerd and
// Compose are missing: it must install them with apt-get (CI=true: without
// asking), start the engine if it is not running, and go on with `mage full`
// up to a healthy deploy.
func TestFullSetsUpAFreshMachine(t *testing.T) {
	needRoot(t)
	m := newMachine(t)
	repo := copyRepo(t)

	// The production compose file fixes the container's name; deploy a copy
	// with another one, so a real carebot_production is never touched.
	compose, err := os.ReadFile(filepath.Join(repo, "docker-compose.production.yml"))
	if err != nil {
		t.Fatal(err)
	}
	renamed := strings.Replace(string(compose), "container_name: carebot_production", "container_name: "+testContainer, 1)
	if renamed == string(compose) {
		t.Fatal("docker-compose.production.yml no longer sets container_name: carebot_production; update this test")
	}
	if err := os.WriteFile(filepath.Join(repo, testCompose), []byte(renamed), 0o644); err != nil {
		t.Fatal(err)
	}

	deployPath := filepath.Join(t.TempDir(), "carebotsetuptest") // also the compose project name
	appPort, testPort := freePort(t), freePort(t)
	settings := []string{"IMAGE_NAME=" + testImage, "IMAGE_TAG=" + testTag, "DEPLOY_PATH=" + deployPath,
		"COMPOSE_FILE=" + testCompose, fmt.Sprintf("APP_PORT=%d", appPort), fmt.Sprintf("TEST_PORT=%d", testPort)}
	t.Cleanup(func() { removeDeploy(t, deployPath, settings) })

	// -y must be taken by the script, not passed on to mage (which would fail on it).
	out, err := run(t, 20*time.Minute, repo, m.env(append([]string{"CI=true"}, settings...)...), filepath.Join(repo, "scripts/full.sh"), "-y")
	t.Logf("scripts/full.sh -y:\n%s", out)
	if err != nil {
		t.Fatalf("scripts/full.sh failed: %v", err)
	}

	calls := m.aptCalls(t)
	if len(calls) != 2 || !strings.HasSuffix(calls[0], " update -qq") ||
		!regexp.MustCompile(`^DEBIAN_FRONTEND=noninteractive install -y .*\bdocker\.io docker-compose$`).MatchString(calls[1]) {
		t.Errorf("apt-get calls = %q, want update, then install -y ... docker.io docker-compose (noninteractive)", calls)
	}
	if !regexp.MustCompile(`(?m)^installing with apt-get: docker\.io \(.+\), docker-compose \(.+\)$`).MatchString(out) {
		t.Error("the script did not say in one line what it installs and why")
	}
	// mage full went on to the end: its step table, with deploy in it.
	for _, re := range []string{`(?m)^step +time$`, `(?m)^deploy +[0-9.]+s$`, `(?m)^total +[0-9.]+s$`} {
		if !regexp.MustCompile(re).MatchString(out) {
			t.Errorf("mage full's output lacks %s", re)
		}
	}
	if strings.Contains(out, "FAILED") {
		t.Error("a step of mage full FAILED")
	}
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/health", appPort))
	if err != nil {
		t.Fatalf("the deployed service does not answer: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), testTag) {
		t.Errorf("/health = %d %s, want 200 with version %s", resp.StatusCode, body, testTag)
	}

	// Now the engine answers: a second machine that has docker but no
	// Compose installs only Compose and leaves the engine alone.
	t.Run("engine answers: only the missing Compose is installed", func(t *testing.T) {
		m := newMachine(t)
		m.provide(t, "docker", "dockerd")
		out, err := run(t, 5*time.Minute, repoRoot(t), m.env("CI=true"),
			"bash", "-c", `. scripts/lib.sh && setup_machine engine compose && echo READY`)
		if err != nil || !strings.HasSuffix(out, "READY\n") {
			t.Fatalf("setup_machine: %v\n%s", err, out)
		}
		calls := m.aptCalls(t)
		if len(calls) != 2 || !strings.HasSuffix(calls[1], " install -y -qq docker-compose") {
			t.Errorf("apt-get calls = %q, want only docker-compose installed", calls)
		}
		if strings.Contains(out, "dockerd") || strings.Contains(out, "starting") {
			t.Errorf("the engine answered, yet the script started one:\n%s", out)
		}
	})
	t.Run("engine and Compose there: nothing installed", func(t *testing.T) {
		m := newMachine(t)
		m.provide(t, "docker", "dockerd", "docker-compose")
		out, err := run(t, 5*time.Minute, repoRoot(t), m.env(), // no CI, no terminal, no -y: it must not need to ask
			"bash", "-c", `. scripts/lib.sh && setup_machine engine compose && echo READY`)
		if err != nil || out != "READY\n" {
			t.Fatalf("setup_machine: %v\n%s", err, out)
		}
		if calls := m.aptCalls(t); len(calls) != 0 {
			t.Errorf("apt-get was called: %q", calls)
		}
	})
}

// removeDeploy takes down what the test deployed, and its images.
func removeDeploy(t *testing.T, deployPath string, settings []string) {
	env := append(os.Environ(), settings...)
	if _, err := os.Stat(filepath.Join(deployPath, testCompose)); err == nil {
		if out, err := run(t, 2*time.Minute, deployPath, env, "docker-compose", "-f", testCompose, "down", "--remove-orphans"); err != nil {
			t.Logf("docker-compose down: %v\n%s", err, out)
		}
	}
	run(t, time.Minute, "/", env, "docker", "rm", "-f", testContainer)
	if out, err := run(t, time.Minute, "/", env, "docker", "images", "-q", testImage); err == nil {
		if ids := strings.Fields(out); len(ids) > 0 {
			run(t, time.Minute, "/", env, "docker", append([]string{"rmi", "-f"}, ids...)...)
		}
	}
}

// TestFullRefusesToInstallWithoutAsking: no terminal to ask on, no -y and
// not CI: one line saying to rerun with -y, and apt-get never runs.
func TestFullRefusesToInstallWithoutAsking(t *testing.T) {
	needRoot(t)
	m := newMachine(t)
	root := repoRoot(t)
	out, err := run(t, time.Minute, root, m.env(), filepath.Join(root, "scripts/full.sh"))
	if err == nil {
		t.Fatalf("scripts/full.sh went on without asking:\n%s", out)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	if len(lines) != 1 || !strings.Contains(out, "rerun with -y") || !strings.Contains(out, "docker.io docker-compose") {
		t.Errorf("output = %q, want one line naming docker.io docker-compose and saying to rerun with -y", out)
	}
	if calls := m.aptCalls(t); len(calls) != 0 {
		t.Errorf("apt-get ran without consent: %q", calls)
	}
}
