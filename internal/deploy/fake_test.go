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

	"github.com/carebot/carebot/internal/shell"

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
	w.running = tag
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

var (
	reSurvey  = regexp.MustCompile(`^docker version --format .*\$\(docker image inspect --format '\{\{\.Id\}\}' carebot:(\S+) 2>/dev/null`)
	reImageID = regexp.MustCompile(`^docker image inspect --format '\{\{\.Id\}\}' carebot:(\S+) 2>/dev/null \|\| true$`)
	reRetag   = regexp.MustCompile(`^docker image inspect (\S+) >/dev/null 2>&1 && docker tag (\S+) carebot:(\S+)$`)
	reTag     = regexp.MustCompile(`IMAGE_TAG=(\S+) `)
)

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
		case args == "ps -q":
			if w.running != "" {
				return containerID + "\n", 0, true
			}
			return "", 0, true
		case args == "up -d":
			if _, ok := w.images[tag]; !ok {
				return "pull access denied for carebot", 1, true
			}
			w.running = tag
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
	if !strings.HasPrefix(cmd, "docker ") {
		return "", 0, false
	}
	if m := reSurvey.FindStringSubmatch(cmd); m != nil {
		id := w.images[m[1]]
		if id == "" {
			id = "none"
		}
		return "1.41 linux x86_64\n" + id + "\n", 0, true
	}
	if cmd == "docker load" {
		w.loaded++
		for tag, id := range w.loads {
			w.images[tag] = id
		}
		return "Loaded image: carebot\n", 0, true
	}
	if m := reImageID.FindStringSubmatch(cmd); m != nil {
		if id, ok := w.images[m[1]]; ok {
			return id + "\n", 0, true
		}
		return "", 0, true
	}
	if m := reRetag.FindStringSubmatch(cmd); m != nil {
		if m[1] != m[2] {
			w.t.Errorf("retag inspects %s but tags %s", m[1], m[2])
		}
		known := w.dangling[m[1]]
		for _, id := range w.images {
			known = known || id == m[1]
		}
		if !known {
			return "", 1, true
		}
		w.images[m[3]] = m[1]
		return "", 0, true
	}
	switch {
	case cmd == fmt.Sprintf("docker ps -q --no-trunc --filter publish=%d", w.port):
		out := ""
		if w.running != "" {
			out += containerID + "\n"
		}
		if w.foreign {
			out += "deadbeef00000000000000000000000000000000000000000000000000000000\n"
		}
		return out, 0, true
	case strings.HasPrefix(cmd, "docker inspect --format '{{.Name}}' deadbeef"):
		return "/other-app\n", 0, true
	case cmd == "docker inspect "+containerID:
		if w.running == "" {
			return "Error: No such object: " + containerID, 1, true
		}
		restarts := 0
		if w.broken[w.running] {
			restarts = 2
		}
		return fmt.Sprintf(`[{"Id":"%s","Name":"/carebot-app-1","RestartCount":%d,"Config":{"Image":"carebot:%s"},"State":{"Status":"running","ExitCode":0,"StartedAt":"2024-05-01T10:00:00Z"}}]`, containerID, restarts, w.running), 0, true
	}
	w.t.Errorf("unexpected docker command: %s", cmd)
	return "unexpected", 127, true
}
