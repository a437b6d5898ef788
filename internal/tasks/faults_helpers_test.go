//go:build linux

package tasks

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/carebot/carebot/internal/testenv"
)

// The fault-injection suite's parts: a mage child process that can be
// watched, killed and interrupted; a writer that remembers what the
// service acknowledged; and checkSurvived, what every fault is judged by.

// smallServer is a remote project whose server is an engine of the test's
// own (see testenv.StartEngine), not the shared test server.
type smallServer struct {
	*remoteProject
	engine *testenv.Engine
}

func (s smallServer) service() (string, string) { return s.engine.Host, s.container }

// projectEnv is the folder mage runs in and the settings of a deployment.
func projectEnv(d deployment) (dir string, env map[string]string) {
	switch p := d.(type) {
	case *project:
		return p.dir, p.env
	case *remoteProject:
		return p.dir, p.env
	case smallServer:
		return p.dir, p.env
	}
	panic(fmt.Sprintf("no settings for %T", d))
}

// dockerOn runs the docker CLI against host ("" for this machine's engine).
func dockerOn(host string, args ...string) (string, error) {
	if host != "" {
		args = append([]string{"-H", host}, args...)
	}
	out, err := exec.Command("docker", args...).CombinedOutput()
	return strings.TrimSpace(string(out)), err
}

// syncBuffer collects a child's output while the test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// mageRun is the compiled mage running as a child in its own process
// group, as a user's terminal runs it.
type mageRun struct {
	t       testing.TB
	args    []string
	cmd     *exec.Cmd
	out     syncBuffer
	start   time.Time
	done    chan struct{}
	err     error
	took    time.Duration
	signals []string // what the test sent it
}

// startMage starts mage with the deployment's settings, IMAGE_TAG=tag and
// extra NAME=VALUE settings.
func startMage(t testing.TB, d deployment, tag string, extra []string, args ...string) *mageRun {
	t.Helper()
	dir, env := projectEnv(d)
	m := &mageRun{t: t, args: args, done: make(chan struct{})}
	m.cmd = exec.Command(mageBinary(t), args...)
	m.cmd.Dir = dir
	m.cmd.Env = append(append(append(os.Environ(), envList(env)...), "IMAGE_TAG="+tag), extra...)
	m.cmd.Stdout, m.cmd.Stderr = &m.out, &m.out
	m.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	// A helper the product leaves running (on purpose) must not hold the test up.
	m.cmd.WaitDelay = 3 * time.Second
	m.start = time.Now()
	if err := m.cmd.Start(); err != nil {
		t.Fatalf("start mage: %v", err)
	}
	go func() {
		m.err = m.cmd.Wait()
		m.took = time.Since(m.start)
		close(m.done)
	}()
	t.Cleanup(func() {
		select {
		case <-m.done:
		default:
			syscall.Kill(-m.cmd.Process.Pid, syscall.SIGKILL)
			<-m.done
		}
	})
	return m
}

// runMage runs mage to the end (at most 5 min) and returns its output.
func runMage(t testing.TB, d deployment, tag string, extra []string, args ...string) (*mageRun, string, error) {
	t.Helper()
	m := startMage(t, d, tag, extra, args...)
	err := m.wait(5 * time.Minute)
	return m, m.out.String(), err
}

func (m *mageRun) pid() int { return m.cmd.Process.Pid }

func (m *mageRun) ended() bool {
	select {
	case <-m.done:
		return true
	default:
		return false
	}
}

// wait waits for mage to exit; past timeout it kills it and says so.
func (m *mageRun) wait(timeout time.Duration) error {
	select {
	case <-m.done:
	case <-time.After(timeout):
		m.t.Errorf("mage %s still ran after %s: killed", strings.Join(m.args, " "), timeout)
		syscall.Kill(-m.pid(), syscall.SIGKILL)
		<-m.done
	}
	return m.err
}

// waitLine waits until mage printed a line starting with prefix.
func (m *mageRun) waitLine(prefix string, timeout time.Duration) bool {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		for _, l := range strings.Split(m.out.String(), "\n") {
			if strings.HasPrefix(l, prefix) {
				return true
			}
		}
		if m.ended() {
			return false
		}
		time.Sleep(2 * time.Millisecond)
	}
	return false
}

// kill9 kills mage's whole process group at once, as the OOM killer or a
// closed laptop lid does.
func (m *mageRun) kill9() {
	m.signals = append(m.signals, "SIGKILL to the group")
	syscall.Kill(-m.pid(), syscall.SIGKILL)
}

// interrupt sends SIGINT to mage alone, or to its process group as a
// terminal's Ctrl-C does.
func (m *mageRun) interrupt(group bool) {
	if group {
		m.signals = append(m.signals, "SIGINT to the group")
		syscall.Kill(-m.pid(), syscall.SIGINT)
		return
	}
	m.signals = append(m.signals, "SIGINT to mage")
	syscall.Kill(m.pid(), syscall.SIGINT)
}

// killedBySignal says whether the process died of SIGKILL (it printed no
// cause then).
func (m *mageRun) killedBySignal() bool {
	if m.cmd.ProcessState == nil {
		return false
	}
	ws, ok := m.cmd.ProcessState.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled()
}

// lastLines is the last n non-empty lines of mage's output.
func (m *mageRun) lastLines(n int) []string {
	return lastLines(m.out.String(), n)
}

func lastLines(out string, n int) []string {
	var lines []string
	for _, l := range strings.Split(out, "\n") {
		if strings.TrimSpace(l) != "" {
			lines = append(lines, l)
		}
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return lines
}

// causeLine is mage's "Error: ..." line when it is the last line mage
// printed, as a one-line cause is.
func causeLine(out string) (string, bool) {
	l := lastLines(out, 1)
	if len(l) == 1 && strings.HasPrefix(l[0], "Error: ") {
		return l[0], true
	}
	return "", false
}

// faultWriter posts records to one service without pause until stopped,
// and remembers every one acknowledged (HTTP 201) by its id and body.
type faultWriter struct {
	url    string
	label  string
	mu     sync.Mutex
	acked  []ackedWrite
	failed int
	done   chan struct{}
	ended  chan struct{}
	once   sync.Once
}

type ackedWrite struct {
	id   int64
	body string
}

var httpClient = &http.Client{Timeout: 5 * time.Second}

// startFaultWriter writes to baseURL (http://127.0.0.1:port) records whose
// bodies start with label and a sequence number, so a row that came back
// under a reused id is told apart.
func startFaultWriter(baseURL, label string) *faultWriter {
	w := &faultWriter{url: baseURL, label: label, done: make(chan struct{}), ended: make(chan struct{})}
	go func() {
		defer close(w.ended)
		pad := strings.Repeat("x", 1024)
		for seq := 0; ; seq++ {
			select {
			case <-w.done:
				return
			case <-time.After(20 * time.Millisecond):
			}
			body := fmt.Sprintf("%s-%d-%s", label, seq, pad)
			resp, err := httpClient.Post(w.url+"/api/records", "text/plain", strings.NewReader(body))
			if err != nil {
				w.mu.Lock()
				w.failed++
				w.mu.Unlock()
				continue
			}
			var created struct{ ID int64 }
			json.NewDecoder(resp.Body).Decode(&created)
			resp.Body.Close()
			w.mu.Lock()
			if resp.StatusCode == http.StatusCreated && created.ID > 0 {
				w.acked = append(w.acked, ackedWrite{created.ID, body})
			} else {
				w.failed++
			}
			w.mu.Unlock()
		}
	}()
	return w
}

func (w *faultWriter) stop() int {
	if w == nil {
		return 0
	}
	w.once.Do(func() { close(w.done) })
	<-w.ended
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.acked)
}

func (w *faultWriter) count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.acked)
}

// waitAcked waits until n writes were acknowledged since the writer began.
func (w *faultWriter) waitAcked(t testing.TB, n int, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for w.count() < n {
		if time.Now().After(deadline) {
			t.Errorf("the service acknowledged %d writes in %s, want %d", w.count(), timeout, n)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// verify checks that every acknowledged write is in the database, under
// its id and with its body.
func (w *faultWriter) verify(t testing.TB, baseURL string) {
	t.Helper()
	w.mu.Lock()
	acked := append([]ackedWrite(nil), w.acked...)
	failed := w.failed
	w.mu.Unlock()
	var lost []string
	for _, a := range acked {
		resp, err := httpClient.Get(fmt.Sprintf("%s/api/records/%d", baseURL, a.id))
		if err != nil {
			t.Errorf("read back record %d: %v", a.id, err)
			return
		}
		var got struct{ Body string }
		json.NewDecoder(resp.Body).Decode(&got)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || got.Body != a.body {
			lost = append(lost, fmt.Sprintf("id %d (HTTP %d)", a.id, resp.StatusCode))
		}
	}
	t.Logf("data: %d acknowledged writes, %d not acknowledged; %d lost", len(acked), failed, len(lost))
	if len(lost) > 0 {
		if len(lost) > 5 {
			lost = append(lost[:5], "...")
		}
		t.Errorf("%d of %d acknowledged writes are not in the database: %s", len(lost), len(acked), strings.Join(lost, ", "))
	}
}

// healthOf is the version a service reports at baseURL, or what went wrong.
func healthOf(baseURL string) string {
	resp, err := httpClient.Get(baseURL + "/health")
	if err != nil {
		return "unreachable"
	}
	defer resp.Body.Close()
	var s struct{ Version, Status string }
	json.NewDecoder(resp.Body).Decode(&s)
	if resp.StatusCode != 200 {
		return fmt.Sprintf("HTTP %d %s %s", resp.StatusCode, s.Status, s.Version)
	}
	return s.Version
}

// waitServing waits up to timeout for the service to report one of want;
// it returns what it reported last and whether that was one of them.
func waitServing(baseURL string, timeout time.Duration, want ...string) (string, bool) {
	deadline := time.Now().Add(timeout)
	for {
		v := healthOf(baseURL)
		for _, w := range want {
			if v == w {
				return v, true
			}
		}
		if time.Now().After(deadline) {
			return v, false
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// pausedContainers lists the paused containers on an engine.
func pausedContainers(host string) string {
	out, _ := dockerOn(host, "ps", "--filter", "status=paused", "--format", "{{.Names}}")
	return out
}

// backupLeftovers lists what an unfinished backup left in DEPLOY_PATH/backups:
// staging folders, .tmp files, archives without their checksum.
func backupLeftovers(deployPath string) []string {
	dir := filepath.Join(deployPath, "backups")
	entries, _ := os.ReadDir(dir)
	have := map[string]bool{}
	for _, e := range entries {
		have[e.Name()] = true
	}
	var bad []string
	for _, e := range entries {
		n := e.Name()
		switch {
		case strings.HasPrefix(n, ".staging"), strings.HasSuffix(n, ".tmp"), strings.Contains(n, ".tmp."):
			bad = append(bad, n)
		case strings.HasSuffix(n, ".tar.gz") && !have[n+".sha256"]:
			bad = append(bad, n+" (no .sha256)")
		}
	}
	return bad
}

// waitFor polls cond every 200 ms up to timeout.
func waitFor(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// randomFile writes size incompressible bytes to path.
func randomFile(t testing.TB, path string, size int64) {
	t.Helper()
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var seed [32]byte
	for i := range seed {
		seed[i] = byte(rand.IntN(256))
	}
	r := rand.NewChaCha8(seed)
	buf := make([]byte, 1<<20)
	for written := int64(0); written < size; written += int64(len(buf)) {
		r.Read(buf)
		n := int64(len(buf))
		if size-written < n {
			n = size - written
		}
		if _, err := f.Write(buf[:n]); err != nil {
			t.Fatal(err)
		}
	}
}
