package deploy

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/carebot/carebot/internal/shell"

	"github.com/carebot/carebot/internal/engine"
	"github.com/carebot/carebot/internal/host"
)

// fakeHost is this machine with Docker replaced: compose detection prints
// what compose says, handle (when set) answers the commands it knows, and
// everything else (mkdir, cat, find, ...) really runs under /bin/sh.
type fakeHost struct {
	host.Local
	compose string // what `if docker compose version ...` prints
	handle  func(cmd string) (out string, exit int, ok bool)

	mu   sync.Mutex
	cmds []string
}

var _ host.Host = (*fakeHost)(nil)

func (f *fakeHost) Exec(ctx context.Context, cmd string, stdin io.Reader, stdout, stderr io.Writer) error {
	if i := strings.Index(cmd, stepMarker); i >= 0 {
		// A step: its body is the command; the prologue that guards it on
		// a real host (step lock, stdin watch) has nothing to guard here.
		cmd, stdin = strings.TrimSpace(cmd[i+len(stepMarker):]), nil
	}
	f.mu.Lock()
	f.cmds = append(f.cmds, cmd)
	f.mu.Unlock()
	if strings.HasPrefix(cmd, "if docker compose version") {
		if stdout != nil {
			io.WriteString(stdout, f.compose)
		}
		return nil
	}
	if f.handle != nil {
		if out, exit, ok := f.handle(cmd); ok {
			if stdin != nil {
				io.Copy(io.Discard, stdin) // what a docker load reads
			}
			if exit != 0 {
				// Fail for real, so the error is what a shell gives.
				return f.Local.Exec(ctx, fmt.Sprintf("printf '%%s\\n' %s >&2; exit %d", shell.Quote(out), exit), nil, stdout, stderr)
			}
			if stdout != nil {
				io.WriteString(stdout, out)
			}
			return nil
		}
	}
	return f.Local.Exec(ctx, cmd, stdin, stdout, stderr)
}

func (f *fakeHost) String() string { return "the fake host" }

// ran lists the commands run so far that contain substr.
func (f *fakeHost) ran(substr string) []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []string
	for _, c := range f.cmds {
		if strings.Contains(c, substr) {
			out = append(out, c)
		}
	}
	return out
}

// world is a Docker engine with one compose service, as far as the deploy
// can tell: image tags, the container that runs, and its health endpoint
// on 127.0.0.1:port, which answers with the version that runs.
type world struct {
	t *testing.T

	mu       sync.Mutex
	images   map[string]string // tag -> image ID
	dangling map[string]bool   // image IDs that are on the host without a tag
	running  string            // tag of the running container, "" = none
	broken   map[string]bool   // tags that never become healthy (and restart)
	foreign  bool              // another container publishes the port
	loads    map[string]string // tag -> image ID a docker load leaves on the host
	loaded   int               // docker loads run
	started  time.Time         // when the running container started
	calls    []string          // the API calls, by method name
	port     int
	srv      *http.Server
	ln       net.Listener
}

const containerID = "c0ffee0000000000000000000000000000000000000000000000000000000001"

func newWorld(t *testing.T) *world {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := ln.Addr().(*net.TCPAddr).Port
	ln.Close() // free until a container "publishes" it
	w := &world{t: t, images: map[string]string{}, dangling: map[string]bool{}, broken: map[string]bool{}, port: port}
	t.Cleanup(func() {
		w.mu.Lock()
		defer w.mu.Unlock()
		w.unpublish()
	})
	return w
}

// publish starts the health endpoint; w.mu is held.
func (w *world) publish() {
	if w.srv != nil {
		return
	}
	ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", w.port))
	if err != nil {
		w.t.Errorf("publish port %d: %v", w.port, err)
		return
	}
	w.ln = ln
	w.srv = &http.Server{Handler: http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		w.mu.Lock()
		running, broken := w.running, w.broken[w.running]
		w.mu.Unlock()
		rw.Header().Set("Content-Type", "application/json")
		if r.URL.Path != "/healthz" {
			rw.WriteHeader(http.StatusNotFound)
			return
		}
		if broken {
			rw.WriteHeader(http.StatusServiceUnavailable)
			json.NewEncoder(rw).Encode(map[string]string{"status": "starting", "version": running, "reason": "database is locked"})
			return
		}
		json.NewEncoder(rw).Encode(map[string]string{"status": "ok", "version": running, "commit": "commit-" + running})
	})}
	go w.srv.Serve(ln)
}

// unpublish stops the health endpoint; w.mu is held.
func (w *world) unpublish() {
	if w.srv != nil {
		w.srv.Close()
		w.srv, w.ln = nil, nil
	}
}

func (w *world) serve(tag string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.running, w.started = tag, time.Date(2024, 5, 1, 10, 0, 0, 0, time.UTC)
	w.publish()
}

func (w *world) state() (running string, images map[string]string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	images = map[string]string{}
	for k, v := range w.images {
		images[k] = v
	}
	return w.running, images
}

var reTag = regexp.MustCompile(`IMAGE_TAG=(\S+) `)

func (w *world) handle(cmd string) (string, int, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	const compose = "docker-compose -f compose.yml "
	if i := strings.Index(cmd, compose); i >= 0 {
		args := cmd[i+len(compose):]
		tag := ""
		if m := reTag.FindStringSubmatch(cmd); m != nil {
			tag = m[1]
		}
		if !strings.Contains(cmd, "IMAGE_NAME=carebot ") || !strings.Contains(cmd, fmt.Sprintf("APP_PORT=%d ", w.port)) {
			w.t.Errorf("compose without the settings: %s", cmd)
		}
		switch {
		case args == "up -d":
			if _, ok := w.images[tag]; !ok {
				return "pull access denied for carebot", 1, true
			}
			w.running, w.started = tag, time.Now()
			w.publish()
			return "", 0, true
		case args == "stop":
			w.running = ""
			w.unpublish()
			return "", 0, true
		case strings.HasPrefix(args, "logs "):
			return "app  | serving " + tag + "\napp  | panic: it broke\n", 0, true
		}
		w.t.Errorf("unexpected compose command: %s", cmd)
		return "unexpected", 127, true
	}
	if strings.HasPrefix(cmd, "docker ") {
		w.t.Errorf("a docker command, not an API call: %s", cmd)
		return "unexpected", 127, true
	}
	return "", 0, false
}

// The world is the host's engine too, through its API (ServerEngine).
var _ ServerEngine = (*world)(nil)

func (w *world) call(m string) {
	w.calls = append(w.calls, m)
}

func (w *world) Platform(context.Context) (engine.Platform, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.call("Platform")
	return engine.Platform{APIVersion: "1.41", OS: "linux", Arch: "x86_64"}, nil
}

func (w *world) ImageID(_ context.Context, ref string) (string, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.call("ImageID")
	tag, ok := strings.CutPrefix(ref, "carebot:")
	if !ok {
		w.t.Errorf("ImageID of %s", ref)
	}
	return w.images[tag], nil
}

func (w *world) LayerChains(context.Context) ([][]string, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.call("LayerChains")
	return nil, nil
}

func (w *world) Load(_ context.Context, archive io.Reader) (string, error) {
	io.Copy(io.Discard, archive)
	w.mu.Lock()
	defer w.mu.Unlock()
	w.call("Load")
	w.loaded++
	for tag, id := range w.loads {
		w.images[tag] = id
	}
	return "Loaded image: carebot\n", nil
}

func (w *world) Tag(_ context.Context, id, ref string) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.call("Tag")
	known := w.dangling[id]
	for _, have := range w.images {
		known = known || have == id
	}
	if !known {
		return fmt.Errorf("tag %s: image %s: %w", ref, id, engine.ErrNotFound)
	}
	w.images[strings.TrimPrefix(ref, "carebot:")] = id
	return nil
}

func (w *world) ProjectContainers(_ context.Context, dirs ...string) ([]engine.ProjectContainer, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.call("ProjectContainers")
	if w.running == "" {
		return nil, nil
	}
	restarts := 0
	if w.broken[w.running] {
		restarts = 2
	}
	return []engine.ProjectContainer{{ID: containerID, Name: "carebot-app-1", Image: "carebot:" + w.running, ImageID: w.images[w.running],
		Status: "running", Started: w.started.Format(time.RFC3339Nano), Restarts: restarts}}, nil
}

func (w *world) PublishedOn(_ context.Context, port int) ([]engine.PortUser, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.call("PublishedOn")
	var users []engine.PortUser
	if port != w.port {
		return nil, nil
	}
	if w.running != "" {
		users = append(users, engine.PortUser{ID: containerID, Name: "carebot-app-1"})
	}
	if w.foreign {
		users = append(users, engine.PortUser{ID: "deadbeef00000000000000000000000000000000000000000000000000000000", Name: "other-app"})
	}
	return users, nil
}

func (w *world) Close() error   { return nil }
func (w *world) String() string { return "the fake host" }

// record appends e to the history, as a deploy concludes (tests set up
// histories with it).
func (d *Deployer) record(ctx context.Context, e Entry) error {
	e.Time = d.now()
	line, err := json.Marshal(e)
	if err != nil {
		return err
	}
	if err := host.AppendFile(context.WithoutCancel(ctx), d.Host, d.historyPath(), append(line, '\n')); err != nil {
		return fmt.Errorf("record deploy history: %w", err)
	}
	return nil
}

// syncNow is syncFiles after asking the host for its files' checksums, as
// a deploy does in historyAndSums.
func (d *Deployer) syncNow(ctx context.Context) (bool, error) {
	out, err := host.Run(ctx, d.Host, d.sumsCmd())
	if err != nil {
		return false, err
	}
	return d.syncFiles(ctx, d.parseSums(out))
}
