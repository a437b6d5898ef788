package engine

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/docker/docker/client"
	controlapi "github.com/moby/buildkit/api/services/control"
	"github.com/moby/buildkit/util/progress/progressui"
)

// classicEngine is a hand-written engine that cannot do BuildKit, as a
// Windows engine or one built without it: /session is unknown and a
// version=2 build is refused; the classic builder answers.
type classicEngine struct {
	mu       sync.Mutex
	attempts map[string]int // builder version → builds asked
	context  []byte         // the classic build's context tar
}

func (f *classicEngine) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("API-Version", "1.41")
	switch {
	case strings.HasSuffix(r.URL.Path, "/_ping"):
		_, _ = io.WriteString(w, "OK")
	case strings.HasSuffix(r.URL.Path, "/build"):
		v := r.URL.Query().Get("version")
		f.mu.Lock()
		f.attempts[v]++
		f.mu.Unlock()
		if v == "2" {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusBadRequest)
			_, _ = io.WriteString(w, `{"message":"buildkit not supported by daemon"}`)
			return
		}
		b, _ := io.ReadAll(r.Body)
		f.mu.Lock()
		f.context = b
		f.mu.Unlock()
		_, _ = io.WriteString(w, `{"stream":"Step 1/1 : FROM scratch\n"}`+"\n"+`{"aux":{"ID":"sha256:0123"}}`+"\n")
	default:
		http.NotFound(w, r)
	}
}

// TestBuildFallsBackToClassicOnce: an engine that refuses a BuildKit build
// gets a classic one, said in one line, and is not asked again.
func TestBuildFallsBackToClassicOnce(t *testing.T) {
	fake := &classicEngine{attempts: map[string]int{}}
	srv := httptest.NewServer(fake)
	defer srv.Close()
	e, err := Connect(context.Background(), client.WithHost("tcp://"+strings.TrimPrefix(srv.URL, "http://")))
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()

	dir := t.TempDir()
	for name, body := range map[string]string{"Dockerfile": "FROM scratch\n", "app.txt": "x", "notes.log": "y", "Dockerfile.dockerignore": "*.log\n"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var out bytes.Buffer
	o := BuildOptions{ContextDir: dir, Dockerfile: filepath.Join(dir, "Dockerfile"), Tags: []string{"x:1"}, Out: &out, Quiet: true}
	for i := 0; i < 2; i++ {
		id, err := e.Build(context.Background(), o)
		if err != nil || id != "sha256:0123" {
			t.Fatalf("build %d: %q, %v", i, id, err)
		}
	}
	// The BuildKit request may not even be sent when the session failed
	// first; it is never asked twice.
	if fake.attempts["2"] > 1 || fake.attempts["1"] != 2 {
		t.Errorf("builds asked: %v; want one BuildKit try at most, then classic twice", fake.attempts)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	// Why: the refused request, or the session that could not start,
	// whichever the engine answered first.
	if len(lines) != 1 || !strings.Contains(lines[0], "cannot build with BuildKit (") ||
		!strings.Contains(lines[0], "buildkit not supported by daemon") && !strings.Contains(lines[0], "build session:") {
		t.Errorf("output %q: want one line saying why the classic builder is used", out.String())
	}
	// The classic context honours the Dockerfile's own .dockerignore too.
	if !bytes.Contains(fake.context, []byte("app.txt")) || bytes.Contains(fake.context, []byte("notes.log")) {
		t.Errorf("classic context: app.txt sent %v, notes.log sent %v", bytes.Contains(fake.context, []byte("app.txt")), bytes.Contains(fake.context, []byte("notes.log")))
	}
}

// TestExcludes: the Dockerfile's own <name>.dockerignore wins over the
// context's; the Dockerfile and the ignore files are always sent.
func TestExcludes(t *testing.T) {
	dir := t.TempDir()
	df := filepath.Join(dir, "docker", "Dockerfile.production")
	_ = os.MkdirAll(filepath.Dir(df), 0o755)
	write := func(p, s string) {
		if err := os.WriteFile(p, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(df, "FROM scratch\n")
	if ex, err := Excludes(dir, df); err != nil || ex != nil {
		t.Errorf("no ignore file: %q, %v", ex, err)
	}
	write(filepath.Join(dir, ".dockerignore"), "*\n")
	ex, _ := Excludes(dir, df)
	if strings.Join(ex, " ") != "* !.dockerignore !docker/Dockerfile.production !.dockerignore" {
		t.Errorf("context's: %q", ex)
	}
	write(df+".dockerignore", "# mine\n*.log\n")
	ex, _ = Excludes(dir, df)
	if strings.Join(ex, " ") != "*.log !.dockerignore !docker/Dockerfile.production !docker/Dockerfile.production.dockerignore" {
		t.Errorf("the Dockerfile's own: %q", ex)
	}
}

// traceMessage is one line of the engine's build stream carrying a
// BuildKit status, as the engine writes it.
func traceMessage(t *testing.T, resp *controlapi.StatusResponse) string {
	t.Helper()
	dt, err := resp.MarshalVT()
	if err != nil {
		t.Fatal(err)
	}
	aux, err := json.Marshal(dt)
	if err != nil {
		t.Fatal(err)
	}
	return `{"id":"moby.buildkit.trace","aux":` + string(aux) + "}\n"
}

// TestBuildStreamFailure: a failed step is named in the error, its output
// comes out whole (below a terminal display, which shows only the last
// lines), and a secret's value printed by a step is never shown.
func TestBuildStreamFailure(t *testing.T) {
	const secret = "s3cret-value-xyz"
	const step = "sha256:0000000000000000000000000000000000000000000000000000000000000002"
	var logs []*controlapi.VertexLog
	for i := 1; i <= 30; i++ {
		logs = append(logs, &controlapi.VertexLog{Vertex: step, Msg: []byte(fmt.Sprintf("line-%d token=%s\n", i, secret))})
	}
	stream := traceMessage(t, &controlapi.StatusResponse{Vertexes: []*controlapi.Vertex{{Digest: step, Name: "[2/2] RUN make"}}}) +
		traceMessage(t, &controlapi.StatusResponse{Logs: logs}) +
		traceMessage(t, &controlapi.StatusResponse{Vertexes: []*controlapi.Vertex{{Digest: step, Name: "[2/2] RUN make", Error: "process \"/bin/sh -c make\" did not complete successfully: exit code: 2"}}}) +
		`{"errorDetail":{"message":"process \"/bin/sh -c make token=` + secret + `\" did not complete successfully: exit code: 2"},"error":"x"}` + "\n"

	for _, mode := range []string{"plain", "quiet"} {
		t.Run(mode, func(t *testing.T) {
			var out bytes.Buffer
			st := newBuildStream(BuildOptions{Out: &out, Quiet: mode == "quiet", Secrets: map[string][]byte{"tok": []byte(secret)}})
			_, err := st.read(context.Background(), strings.NewReader(stream))
			if err == nil || !strings.HasPrefix(err.Error(), "build failed at [2/2] RUN make: ") || !strings.Contains(err.Error(), "exit code: 2") {
				t.Fatalf("error %v: want the step named", err)
			}
			if strings.Contains(err.Error()+out.String(), secret) {
				t.Errorf("the secret is shown:\n%v\n%s", err, out.String())
			}
			if !strings.Contains(out.String(), "line-1 token=****") || !strings.Contains(out.String(), "line-30 token=****") {
				t.Errorf("output lacks the step's whole output:\n%s", out.String())
			}
		})
	}

	// On a terminal the display shows the last lines; all follow it.
	var out bytes.Buffer
	st := newBuildStream(BuildOptions{Out: &out, Secrets: map[string][]byte{"tok": []byte(secret)}})
	st.mode = progressui.TtyMode
	for _, line := range strings.Split(strings.TrimSpace(stream), "\n")[:3] {
		var m struct{ Aux json.RawMessage }
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatal(err)
		}
		st.status(m.Aux)
	}
	err := st.failure(errors.New("exit code: 2"))
	if !strings.Contains(err.Error(), "[2/2] RUN make") || !strings.Contains(out.String(), "all the output of [2/2] RUN make:\nline-1 token=****\n") || !strings.Contains(out.String(), "line-30 token=****\n------\n") {
		t.Errorf("terminal: %v\n%s", err, out.String())
	}
}

// TestBuildStreamSecretAcrossChunks: a value that a step's output splits
// between two log chunks is still hidden, and nothing of it is lost.
func TestBuildStreamSecretAcrossChunks(t *testing.T) {
	const secret = "s3cret-value-xyz"
	const step = "sha256:0000000000000000000000000000000000000000000000000000000000000003"
	var out bytes.Buffer
	st := newBuildStream(BuildOptions{Out: &out, Plain: true, Secrets: map[string][]byte{"tok": []byte(secret)}})
	var shown []byte
	for _, chunk := range []string{"token=s3cr", "et-val", "ue-xyz done\nlast s3c"} {
		line := traceMessage(t, &controlapi.StatusResponse{Logs: []*controlapi.VertexLog{{Vertex: step, Msg: []byte(chunk)}}})
		var m struct{ Aux json.RawMessage }
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatal(err)
		}
		for _, l := range st.status(m.Aux).Logs {
			shown = append(shown, l.Data...)
		}
	}
	if ss := st.flush(); ss != nil {
		for _, l := range ss.Logs {
			shown = append(shown, l.Data...)
		}
	}
	if string(shown) != "token=**** done\nlast s3c" {
		t.Errorf("shown %q", shown)
	}
}

// TestBuiltAt: the build's own label orders builds, to the nanosecond,
// where BuildKit's creation time is the newest cached step's.
func TestBuiltAt(t *testing.T) {
	cached := time.Date(2026, 12, 1, 0, 32, 56, 0, time.UTC)
	for label, want := range map[string]time.Time{
		"2026-12-01T02:27:48.123456789Z": time.Date(2026, 12, 1, 2, 27, 48, 123456789, time.UTC),
		"2026-12-01T02:27:48Z":           time.Date(2026, 12, 1, 2, 27, 48, 0, time.UTC),
		"":                               cached,
		"yesterday":                      cached,
	} {
		if got := BuiltAt(cached, label); !got.Equal(want) {
			t.Errorf("BuiltAt(%q) = %v, want %v", label, got, want)
		}
	}
}
