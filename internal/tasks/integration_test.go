package tasks

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/carebot/carebot/internal/config"
	"github.com/carebot/carebot/internal/engine"
	"github.com/carebot/carebot/internal/testenv"
)

// These tests use the real Docker engine and Compose; without an engine,
// see testenv.Skip.

// repoRoot is the project the tests build: this repository.
func repoRoot(t testing.TB) string {
	t.Helper()
	dir, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	return dir
}

// project is one configured runner over the repository, with its own image
// name, ports and deploy folder, so tests never touch a user's deployment.
type project struct {
	t         testing.TB
	dir       string
	env       map[string]string
	out       *bytes.Buffer
	container string // the service's container
}

func newProject(t testing.TB, name string) *project {
	t.Helper()
	// The repository's compose file, with a container name of the test's
	// own, so a test never meets the user's carebot_production.
	compose, err := os.ReadFile(filepath.Join(repoRoot(t), "docker-compose.production.yml"))
	if err != nil {
		t.Fatal(err)
	}
	composeFile := filepath.Join(t.TempDir(), "docker-compose.production.yml")
	container := "carebot_it_" + name
	compose = bytes.ReplaceAll(compose, []byte("carebot_production"), []byte(container))
	if err := os.WriteFile(composeFile, compose, 0o644); err != nil {
		t.Fatal(err)
	}
	p := &project{t: t, dir: repoRoot(t), out: &bytes.Buffer{}, container: container, env: map[string]string{
		"COMPOSE_FILE":   composeFile,
		"IMAGE_NAME":     "carebot-it-" + name,
		"APP_PORT":       fmt.Sprint(testenv.FreePort(t)),
		"TEST_PORT":      fmt.Sprint(testenv.FreePort(t)),
		"DEPLOY_PATH":    filepath.Join(t.TempDir(), "deploy "+name), // the folder names the Compose project
		"TEST_DATA":      filepath.Join(t.TempDir(), "test-data"),
		"HEALTH_TIMEOUT": "30s",
	}}
	t.Cleanup(func() { p.teardown() })
	return p
}

// newComposeProject is newProject deployed with Compose flavour c: the
// shell that runs the deploy's commands on this machine finds c through
// DOCKER_CONFIG. That is set before newProject registers its teardown, so
// the teardown (cleanups run last first) still uses c.
func newComposeProject(t *testing.T, name string, c testenv.Compose) *project {
	t.Helper()
	t.Setenv("DOCKER_CONFIG", c.ConfigDir)
	return newProject(t, name+"-"+c.Name)
}

func (p *project) runner(tag string, extra ...string) *Runner {
	p.t.Helper()
	env := os.Environ()
	for k, v := range p.env {
		env = append(env, k+"="+v)
	}
	env = append(env, "IMAGE_TAG="+tag)
	env = append(env, extra...)
	cfg, err := config.Load(p.dir, env)
	if err != nil {
		p.t.Fatal(err)
	}
	r := &Runner{Cfg: cfg, Out: io.MultiWriter(p.out, testWriter{p.t})}
	p.t.Cleanup(func() { r.Close() })
	return r
}

func (p *project) build(tag string, args map[string]string) string {
	p.t.Helper()
	r := p.runner(tag)
	ctx := context.Background()
	if err := r.Binary(ctx); err != nil {
		p.t.Fatal(err)
	}
	id, err := r.Build(ctx, BuildOptions{Args: args})
	if err != nil {
		p.t.Fatal(err)
	}
	return id
}

func (p *project) url(path string) string {
	return "http://127.0.0.1:" + p.env["APP_PORT"] + path
}

func (p *project) health() (version string, code int) {
	p.t.Helper()
	resp, err := http.Get(p.url("/health"))
	if err != nil {
		return "", 0
	}
	defer resp.Body.Close()
	var s struct{ Version string }
	_ = json.NewDecoder(resp.Body).Decode(&s)
	return s.Version, resp.StatusCode
}

func (p *project) teardown() {
	ctx := context.Background()
	r := &Runner{Cfg: &config.Config{}, Out: io.Discard}
	if d := p.env["DEPLOY_PATH"]; d != "" {
		if b, err := os.ReadDir(d); err == nil && len(b) > 0 {
			cfg, err := config.Load(p.dir, append(os.Environ(), envList(p.env)...))
			if err == nil {
				r.Cfg = cfg
				if dep, err := r.Deployer(ctx); err == nil {
					_, _ = dep.ComposeOutput(ctx, "down --volumes")
				}
			}
		}
	}
	e, err := engine.Connect(ctx)
	if err != nil {
		return
	}
	defer e.Close()
	imgs, _ := e.ImagesOf(ctx, p.env["IMAGE_NAME"])
	for _, im := range imgs {
		_ = e.RemoveImage(ctx, im.ID)
	}
}

func envList(m map[string]string) []string {
	var l []string
	for k, v := range m {
		l = append(l, k+"="+v)
	}
	return l
}

type testWriter struct{ t testing.TB }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

func TestBuildInspectTest(t *testing.T) {
	testenv.NeedEngine(t)
	p := newProject(t, "bit")
	id := p.build("v1", nil)
	r := p.runner("v1")
	ctx := context.Background()

	rep, err := r.Inspect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Image.ID != id || rep.Image.Labels["org.opencontainers.image.version"] != "v1" {
		t.Errorf("inspected %s labels %v, want %s version v1", rep.Image.ID, rep.Image.Labels, id)
	}
	var names []string
	for _, f := range rep.Files {
		names = append(names, f.Path)
	}
	if len(names) != 1 || names[0] != "/app/carebot" {
		t.Errorf("files under /app = %v, want only the binary (no .env, migrations or data baked in)", names)
	}
	if len(rep.Findings) != 0 {
		t.Errorf("findings %v", rep.Findings)
	}
	if err := r.Test(ctx, false); err != nil {
		t.Fatal(err)
	}
	e, _ := r.Engine(ctx)
	if _, err := e.Container(ctx, TestContainerName(p.env["IMAGE_NAME"])); err == nil {
		t.Error("test container still exists after Test")
	}
	if _, err := os.Stat(filepath.Join(p.env["TEST_DATA"], "carebot.db")); err != nil {
		t.Errorf("test-data was not mounted as /app/data: %v", err)
	}
}

func TestTestFailsForUnhealthyImageAndCleansUp(t *testing.T) {
	testenv.NeedEngine(t)
	p := newProject(t, "unhealthy")
	p.env["HEALTH_TIMEOUT"] = "6s"
	p.build("bad", map[string]string{"HEALTH_FAIL": "1"})
	r := p.runner("bad")
	err := r.Test(context.Background(), false)
	if err == nil || !strings.Contains(err.Error(), "HTTP 503") {
		t.Fatalf("Test of an unhealthy image: err = %v, want the 503 reason", err)
	}
	if !strings.Contains(p.out.String(), "last log lines of "+TestContainerName(p.env["IMAGE_NAME"])) {
		t.Error("the container's logs were not shown")
	}
	e, _ := r.Engine(context.Background())
	if _, err := e.Container(context.Background(), TestContainerName(p.env["IMAGE_NAME"])); err == nil {
		t.Error("test container left behind after a failed test")
	}
}

func TestTestRefusesTakenPort(t *testing.T) {
	testenv.NeedEngine(t)
	p := newProject(t, "port")
	l, err := net.Listen("tcp", "127.0.0.1:"+p.env["TEST_PORT"])
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	err = p.runner("nobuild").Test(context.Background(), false)
	if err == nil || !strings.Contains(err.Error(), "TEST_PORT "+p.env["TEST_PORT"]+" is already in use") {
		t.Fatalf("err = %v", err)
	}
}

func TestInspectRefusesSecrets(t *testing.T) {
	testenv.NeedEngine(t)
	dir := t.TempDir()
	files := map[string]string{
		"Dockerfile":                    "FROM scratch\nCOPY . /app/\n",
		"docker-compose.production.yml": "services: {}\n",
		"app.txt":                       "hello\n",
		".env":                          "BOT_TOKEN=not-for-images\n",
		"data/carebot.db":               "sqlite",
	}
	for name, body := range files {
		os.MkdirAll(filepath.Join(dir, filepath.Dir(name)), 0o755)
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	name := "carebot-it-secrets"
	cfg, err := config.Load(dir, append(os.Environ(), "IMAGE_NAME="+name, "IMAGE_TAG=leaky", "DOCKERFILE=Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	out := &bytes.Buffer{}
	r := &Runner{Cfg: cfg, Out: out}
	defer r.Close()
	ctx := context.Background()
	if _, err := r.Build(ctx, BuildOptions{}); err != nil {
		t.Fatal(err)
	}
	e, _ := r.Engine(ctx)
	defer func() {
		imgs, _ := e.ImagesOf(ctx, name)
		for _, im := range imgs {
			e.RemoveImage(ctx, im.ID)
		}
	}()
	_, err = r.Inspect(ctx)
	if err == nil || !strings.Contains(err.Error(), "/app/.env") || !strings.Contains(err.Error(), "/app/data/carebot.db") {
		t.Fatalf("Inspect of an image with .env and data: err = %v", err)
	}
	if strings.Contains(out.String()+err.Error(), "not-for-images") {
		t.Error("the secret's value was printed")
	}
}

func TestDeployRollsBackAndKeepsData(t *testing.T) {
	testenv.NeedEngine(t)
	testenv.EachCompose(t, func(t *testing.T, c testenv.Compose) {
		p := newComposeProject(t, "deploy", c)
		ctx := context.Background()

		p.build("v1", nil)
		if err := p.runner("v1").Deploy(ctx); err != nil {
			t.Fatal(err)
		}
		if v, code := p.health(); v != "v1" || code != 200 {
			t.Fatalf("after deploying v1: version %q, HTTP %d", v, code)
		}
		c.CheckMadeBy(t, "", p.container)
		resp, err := http.Post(p.url("/api/records"), "text/plain", strings.NewReader("kept across releases"))
		if err != nil || resp.StatusCode != http.StatusCreated {
			t.Fatalf("store a record: %v %v", err, resp)
		}
		resp.Body.Close()

		p.build("v2", nil)
		if err := p.runner("v2").Deploy(ctx); err != nil {
			t.Fatal(err)
		}
		if v, _ := p.health(); v != "v2" {
			t.Fatalf("after deploying v2: version %q", v)
		}

		p.build("v3", map[string]string{"HEALTH_FAIL": "1"})
		err = p.runner("v3").Deploy(ctx)
		if err == nil || !strings.Contains(err.Error(), "release v3 failed") || !strings.Contains(err.Error(), "rolled back to v2") {
			t.Fatalf("deploying an unhealthy v3: err = %v", err)
		}
		if strings.Contains(err.Error(), "\n") {
			t.Errorf("error is not one line: %q", err)
		}
		if v, code := p.health(); v != "v2" || code != 200 {
			t.Fatalf("after the failed v3: version %q, HTTP %d; want v2 serving", v, code)
		}
		var rec struct {
			Count int
			Last  string
		}
		resp, err = http.Get(p.url("/api/records"))
		if err != nil {
			t.Fatal(err)
		}
		json.NewDecoder(resp.Body).Decode(&rec)
		resp.Body.Close()
		if rec.Count != 1 || rec.Last != "kept across releases" {
			t.Fatalf("data after rollback: %+v", rec)
		}

		// Status reports v2 and the history of all three.
		p.out.Reset()
		if err := p.runner("v2").Status(ctx); err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{"version v2", "v1", "rolled-back"} {
			if !strings.Contains(p.out.String(), want) {
				t.Errorf("status lacks %q:\n%s", want, p.out)
			}
		}

		// Rollback with no name goes to the release before v2.
		if err := p.runner("v2").Rollback(ctx, ""); err != nil {
			t.Fatal(err)
		}
		if v, _ := p.health(); v != "v1" {
			t.Fatalf("after rollback: version %q, want v1", v)
		}
		// And a named one back to v2.
		if err := p.runner("v2").Rollback(ctx, "v2"); err != nil {
			t.Fatal(err)
		}
		if v, _ := p.health(); v != "v2" {
			t.Fatalf("after rollback -to v2: version %q", v)
		}
		// A version that was never built is refused with the service untouched.
		err = p.runner("v2").Rollback(ctx, "v9")
		if err == nil || !strings.Contains(err.Error(), "v9 is not on") {
			t.Fatalf("rollback to a missing version: %v", err)
		}
		if v, _ := p.health(); v != "v2" {
			t.Fatalf("after refused rollback: version %q", v)
		}

		// Logs shows the service's own lines.
		p.out.Reset()
		if err := p.runner("v2").Logs(ctx, 20, false); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(p.out.String(), "v2") {
			t.Errorf("logs do not mention the version:\n%s", p.out)
		}
	})
}

func TestDeployRefusesTakenPortAndMissingImage(t *testing.T) {
	testenv.NeedEngine(t)
	p := newProject(t, "taken")
	ctx := context.Background()

	err := p.runner("never-built").Deploy(ctx)
	if err == nil || !strings.Contains(err.Error(), "is not built: run mage build") {
		t.Fatalf("deploy of an unbuilt tag: %v", err)
	}

	p.build("v1", nil)
	l, err := net.Listen("tcp", "127.0.0.1:"+p.env["APP_PORT"])
	if err != nil {
		t.Fatal(err)
	}
	err = p.runner("v1").Deploy(ctx)
	l.Close()
	if err == nil || !strings.Contains(err.Error(), "APP_PORT "+p.env["APP_PORT"]) || !strings.Contains(err.Error(), "taken") {
		t.Fatalf("deploy onto a taken port: %v", err)
	}
	// The lock was released: the same deploy works once the port is free.
	if err := p.runner("v1").Deploy(ctx); err != nil {
		t.Fatal(err)
	}
}

// A release whose compose file changed in a way the old image does not
// survive still rolls back: the old release runs with the compose file it
// was deployed with, not the new one.
func TestRollbackUsesTheReleasesOwnComposeFile(t *testing.T) {
	testenv.NeedEngine(t)
	testenv.EachCompose(t, func(t *testing.T, c testenv.Compose) {
		p := newComposeProject(t, "composeback", c)
		p.env["HEALTH_TIMEOUT"] = "15s"
		ctx := context.Background()
		p.build("v1", nil)
		if err := p.runner("v1").Deploy(ctx); err != nil {
			t.Fatal(err)
		}
		compose, err := os.ReadFile(p.env["COMPOSE_FILE"])
		if err != nil {
			t.Fatal(err)
		}
		broken := bytes.Replace(compose, []byte(`      APP_PORT: "${APP_PORT:-5555}"`),
			[]byte(`      APP_PORT: "${APP_PORT:-5555}"`+"\n"+`      CAREBOT_HEALTH_FAIL: "1"`), 1)
		if bytes.Equal(broken, compose) {
			t.Fatal("the compose file has no APP_PORT environment line to extend")
		}
		if err := os.WriteFile(p.env["COMPOSE_FILE"], broken, 0o644); err != nil {
			t.Fatal(err)
		}
		p.build("v2", nil)
		err = p.runner("v2").Deploy(ctx)
		if err == nil || !strings.Contains(err.Error(), "rolled back to v1, which is serving") {
			t.Fatalf("deploying v2 with a compose file that breaks every release: %v", err)
		}
		if v, code := p.health(); v != "v1" || code != 200 {
			t.Fatalf("after the rollback: version %q, HTTP %d", v, code)
		}
		c.CheckMadeBy(t, "", p.container)
		served, _ := os.ReadFile(filepath.Join(p.env["DEPLOY_PATH"], "docker-compose.production.yml"))
		if !bytes.Equal(served, compose) {
			t.Error("the deploy folder does not hold v1's compose file after rolling back to v1")
		}
	})
}

// In mage full, inspect's save is kept for the deploy: the transfer reads
// the same bytes from a local file, the engine is not asked to save again,
// and the file goes with the run.
func TestInspectKeepsSaveForDeploy(t *testing.T) {
	testenv.NeedEngine(t)
	p := newProject(t, "keep")
	id := p.build("v1", nil)
	r := p.runner("v1")
	r.KeepSave = true
	ctx := context.Background()
	if _, err := r.Inspect(ctx); err != nil {
		t.Fatal(err)
	}
	if r.saved == nil || r.saved.id != id {
		t.Fatalf("kept %+v, want the save of %s", r.saved, id)
	}
	path := r.saved.path
	kept, err := buildEngine{r}.Save(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := kept.(*os.File); !ok {
		t.Errorf("the deploy's save is a %T, want the kept file", kept)
	}
	got, _ := io.ReadAll(kept)
	kept.Close()
	e, _ := r.Engine(ctx)
	rc, err := e.Save(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := io.ReadAll(rc)
	rc.Close()
	if !bytes.Equal(got, want) || len(got) == 0 {
		t.Errorf("the kept save has %d bytes, the engine's %d: not the same archive", len(got), len(want))
	}
	other, err := buildEngine{r}.Save(ctx, "carebot-other:v1")
	if _, isFile := other.(*os.File); err == nil && isFile {
		t.Error("a save of another image came from the kept file")
	}
	if other != nil {
		other.Close()
	}
	r.Close()
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("the kept save %s is still there after the run: %v", path, err)
	}

	// Without KeepSave (mage inspect alone): nothing kept, no file left.
	r2 := p.runner("v1")
	defer r2.Close()
	before, _ := filepath.Glob(filepath.Join(os.TempDir(), "carebot-save-*.tar"))
	if _, err := r2.Inspect(ctx); err != nil {
		t.Fatal(err)
	}
	after, _ := filepath.Glob(filepath.Join(os.TempDir(), "carebot-save-*.tar"))
	if r2.saved != nil || len(after) > len(before) {
		t.Errorf("inspect alone kept %+v, temp files %v → %v", r2.saved, before, after)
	}
}
