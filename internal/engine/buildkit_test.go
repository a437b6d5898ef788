package engine

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/docker/docker/client"
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
	if fake.attempts["2"] != 1 || fake.attempts["1"] != 2 {
		t.Errorf("builds asked: %v; want one BuildKit try, then classic twice", fake.attempts)
	}
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 1 || !strings.Contains(lines[0], "cannot build with BuildKit (") || !strings.Contains(lines[0], "buildkit not supported by daemon") {
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
