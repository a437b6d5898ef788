package tasks

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/carebot/carebot/internal/config"
	"github.com/carebot/carebot/internal/engine"
	"github.com/carebot/carebot/internal/testenv"
)

// The end-to-end tests deploy over a real OpenSSH sshd on 127.0.0.1 to a
// second Docker engine (the "server"), through a proxy that counts the
// bytes on the wire.

// remoteProject is a project in a temp folder whose image has a large base
// layer (incompressible, so compression cannot hide a resend) under the
// service's binary and one small file that changes between releases.
type remoteProject struct {
	t         testing.TB
	dir       string
	env       map[string]string
	sshd      *testenv.SSHD
	compose   testenv.Compose // the flavour the server offers
	proxy     *testenv.Proxy
	container string // the service's container, on the server
	out       *bytes.Buffer
	appPort   string
}

const baseLayerSize = 24 << 20

// newRemoteProject deploys to a server whose sessions find Compose flavour c.
func newRemoteProject(t testing.TB, name string, c testenv.Compose) *remoteProject {
	t.Helper()
	return newRemoteProjectWith(t, name, c, 0, nil)
}

// newRemoteProjectWith links through a proxy limited to bps (0: no limit)
// and lets customize change the project folder before anything is built.
func newRemoteProjectWith(t testing.TB, name string, c testenv.Compose, bps int64, customize func(dir string)) *remoteProject {
	t.Helper()
	testenv.NeedEngine(t)
	sshd := testenv.StartSSHD(t, testenv.WithCompose(c))
	proxy := testenv.StartProxy(t, sshd.Addr, bps)
	dir := t.TempDir()

	container := writeE2EProject(t, dir, name)
	if customize != nil {
		customize(dir)
	}
	p := &remoteProject{t: t, dir: dir, sshd: sshd, compose: c, proxy: proxy, container: container, out: &bytes.Buffer{}, appPort: fmt.Sprint(testenv.FreePort(t))}
	p.env = map[string]string{
		"IMAGE_NAME":      "carebot-e2e-" + name,
		"APP_PORT":        p.appPort,
		"TEST_PORT":       fmt.Sprint(testenv.FreePort(t)),
		"HEALTH_TIMEOUT":  "30s",
		"DEPLOY_HOST":     "root@" + proxy.Addr,
		"DEPLOY_PATH":     filepath.Join(t.TempDir(), "carebot "+name), // a space: quoting is tested on the way
		"SSH_KEY":         sshd.KeyFile,
		"SSH_KNOWN_HOSTS": filepath.Join(t.TempDir(), "known_hosts"),
		"SSH_AUTH_SOCK":   "",
	}
	testenv.WriteKnownHosts(t, p.env["SSH_KNOWN_HOSTS"], proxy.Addr, sshd.HostKey)
	t.Cleanup(p.teardown)
	return p
}

// writeE2EProject writes the end-to-end project into dir: the app's
// binary under a large incompressible base layer and one small file that
// changes between releases, and the repository's compose file naming the
// container carebot_e2e_<name>, which it returns.
func writeE2EProject(t testing.TB, dir, name string) string {
	t.Helper()
	// The binary comes from this repository's app, compiled once.
	repo := &Runner{Cfg: &config.Config{Dir: repoRoot(t)}, Out: io.Discard}
	if err := repo.Binary(context.Background()); err != nil {
		t.Fatal(err)
	}
	bin, err := os.ReadFile(filepath.Join(repoRoot(t), BinaryPath))
	if err != nil {
		t.Fatal(err)
	}
	compose, err := os.ReadFile(filepath.Join(repoRoot(t), "docker-compose.production.yml"))
	if err != nil {
		t.Fatal(err)
	}
	container := "carebot_e2e_" + name
	compose = bytes.ReplaceAll(compose, []byte("carebot_production"), []byte(container))
	base := make([]byte, baseLayerSize)
	rand.Read(base)
	dockerfile, err := os.ReadFile(filepath.Join(repoRoot(t), "Dockerfile.production"))
	if err != nil {
		t.Fatal(err)
	}
	// base layer first, the binary, then the one file that changes
	dockerfile = bytes.Replace(dockerfile, []byte("COPY build/carebot /app/carebot"),
		[]byte("COPY base.bin /opt/base/base.bin\nCOPY build/carebot /app/carebot\nCOPY release.txt /app/release.txt"), 1)
	files := map[string][]byte{
		"build/carebot":                 bin,
		"base.bin":                      base,
		"release.txt":                   []byte("release 1\n"),
		"Dockerfile.production":         dockerfile,
		"docker-compose.production.yml": compose,
		"migrations/001_init.sql":       []byte("CREATE TABLE IF NOT EXISTS notes (id INTEGER PRIMARY KEY, body TEXT);\n"),
		".dockerignore":                 []byte("*\n!build/carebot\n!base.bin\n!release.txt\n"),
	}
	for n, b := range files {
		os.MkdirAll(filepath.Join(dir, filepath.Dir(n)), 0o755)
		mode := os.FileMode(0o644)
		if n == "build/carebot" {
			mode = 0o755
		}
		if err := os.WriteFile(filepath.Join(dir, n), b, mode); err != nil {
			t.Fatal(err)
		}
	}
	return container
}

func (p *remoteProject) runner(tag string, extra ...string) *Runner {
	p.t.Helper()
	env := append(os.Environ(), envList(p.env)...)
	env = append(append(env, "IMAGE_TAG="+tag), extra...)
	cfg, err := config.Load(p.dir, env)
	if err != nil {
		p.t.Fatal(err)
	}
	r := &Runner{Cfg: cfg, Out: io.MultiWriter(p.out, testWriter{p.t})}
	p.t.Cleanup(func() { r.Close() })
	return r
}

// release builds tag with release.txt saying so (one small layer changes).
func (p *remoteProject) release(tag string, args map[string]string) engine.Image {
	p.t.Helper()
	if err := os.WriteFile(filepath.Join(p.dir, "release.txt"), []byte("release "+tag+"\n"), 0o644); err != nil {
		p.t.Fatal(err)
	}
	r := p.runner(tag)
	ctx := context.Background()
	id, err := r.Build(ctx, BuildOptions{Args: args})
	if err != nil {
		p.t.Fatal(err)
	}
	e, _ := r.Engine(ctx)
	img, err := e.Image(ctx, id)
	if err != nil {
		p.t.Fatal(err)
	}
	return img
}

func (p *remoteProject) serverFile(name string) (string, bool) {
	b, err := os.ReadFile(filepath.Join(p.env["DEPLOY_PATH"], name))
	return string(b), err == nil
}

func (p *remoteProject) createServerEnv() {
	p.t.Helper()
	if err := os.MkdirAll(p.env["DEPLOY_PATH"], 0o755); err != nil {
		p.t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(p.env["DEPLOY_PATH"], ".env"), []byte("BOT_TOKEN=server-secret-token\n"), 0o600); err != nil {
		p.t.Fatal(err)
	}
}

// health asks the service on the server (published on this machine's
// loopback by the second engine).
func (p *remoteProject) health() string {
	resp, err := http.Get("http://127.0.0.1:" + p.appPort + "/health")
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	var s struct{ Version string }
	json.NewDecoder(resp.Body).Decode(&s)
	if resp.StatusCode != 200 {
		return fmt.Sprintf("HTTP %d", resp.StatusCode)
	}
	return s.Version
}

func (p *remoteProject) teardown() {
	d := p.env["DEPLOY_PATH"]
	if _, err := os.Stat(filepath.Join(d, "docker-compose.production.yml")); err == nil {
		out, err := testenv.ServerDockerCompose(p.compose, d, "docker-compose.production.yml", p.env["IMAGE_NAME"], "down", "--volumes")
		if err != nil {
			p.t.Logf("compose down on the server: %v\n%s", err, out)
		}
	}
	out, _ := testenv.ServerDocker(p.t, "image", "ls", "-q", "--no-trunc", p.env["IMAGE_NAME"])
	for _, id := range strings.Fields(out) {
		testenv.ServerDocker(p.t, "image", "rm", "-f", id)
	}
	ctx := context.Background()
	if e, err := engine.Connect(ctx); err == nil {
		imgs, _ := e.ImagesOf(ctx, p.env["IMAGE_NAME"])
		for _, im := range imgs {
			e.RemoveImage(ctx, im.ID)
		}
		e.Close()
	}
}

func serverImageID(t testing.TB, ref string) string {
	out, err := testenv.ServerDocker(t, "image", "inspect", "--format", "{{.Id}}", ref)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(out)
}

func TestRemoteDeployEndToEnd(t *testing.T) {
	testenv.EachCompose(t, func(t *testing.T, c testenv.Compose) {
		p := newRemoteProject(t, "main-"+c.Name, c)
		ctx := context.Background()
		v1 := p.release("v1", nil)

		// No .env on the server: refused before anything changes there.
		err := p.runner("v1").Deploy(ctx)
		if err == nil || !strings.Contains(err.Error(), "has no .env") {
			t.Fatalf("deploy without a server .env: %v", err)
		}
		if _, err := os.Stat(p.env["DEPLOY_PATH"]); err == nil {
			t.Fatal("a refused deploy created the deploy folder on the server")
		}
		p.createServerEnv()

		// First deploy: the whole image crosses once.
		p.proxy.Reset()
		if err := p.runner("v1").Deploy(ctx); err != nil {
			t.Fatal(err)
		}
		full := p.proxy.Bytes()
		if got := serverImageID(t, p.env["IMAGE_NAME"]+":v1"); got != v1.ID {
			t.Fatalf("server image ID %s, local %s", got, v1.ID)
		}
		if v := p.health(); v != "v1" {
			t.Fatalf("after deploying v1 the server answers %q", v)
		}
		c.CheckMadeBy(t, testenv.ServerDockerHost, p.container)
		if env, _ := p.serverFile(".env"); env != "BOT_TOKEN=server-secret-token\n" {
			t.Errorf("the server's .env was changed: %q", env)
		}
		resp, err := http.Post("http://127.0.0.1:"+p.appPort+"/api/records", "text/plain", strings.NewReader("on the server"))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()

		// v2 changes one small file: only that layer crosses.
		v2 := p.release("v2", nil)
		p.proxy.Reset()
		if err := p.runner("v2").Deploy(ctx); err != nil {
			t.Fatal(err)
		}
		small := p.proxy.Bytes()
		t.Logf("bytes on the wire: first deploy %d, one-file change %d (image %d)", full, small, v2.Size)
		if full < baseLayerSize {
			t.Errorf("the first deploy moved %d bytes, less than the %d-byte base layer: not counted?", full, baseLayerSize)
		}
		if small*50 > v2.Size {
			t.Errorf("a one-file change moved %d bytes, more than 2%% of the %d-byte image", small, v2.Size)
		}
		if got := serverImageID(t, p.env["IMAGE_NAME"]+":v2"); got != v2.ID {
			t.Fatalf("server image ID %s, local %s", got, v2.ID)
		}
		if v := p.health(); v != "v2" {
			t.Fatalf("after deploying v2 the server answers %q", v)
		}

		// A release that never becomes healthy: the server goes back to v2, data kept.
		p.release("v3", map[string]string{"HEALTH_FAIL": "1"})
		err = p.runner("v3").Deploy(ctx)
		if err == nil || !strings.Contains(err.Error(), "rolled back to v2") {
			t.Fatalf("deploying an unhealthy v3: %v", err)
		}
		if v := p.health(); v != "v2" {
			t.Fatalf("after the failed v3 the server answers %q", v)
		}
		resp, err = http.Get("http://127.0.0.1:" + p.appPort + "/api/records")
		if err != nil {
			t.Fatal(err)
		}
		var rec struct{ Count int }
		json.NewDecoder(resp.Body).Decode(&rec)
		resp.Body.Close()
		if rec.Count != 1 {
			t.Fatalf("records after rollback: %d, want 1", rec.Count)
		}

		// Status, Logs and Rollback work against the server too; the token never shows.
		p.out.Reset()
		if err := p.runner("v2").Status(ctx); err != nil {
			t.Fatal(err)
		}
		if err := p.runner("v2").Logs(ctx, 50, false); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(p.out.String(), "version v2") {
			t.Errorf("status does not show v2:\n%s", p.out)
		}
		if strings.Contains(p.out.String(), "server-secret-token") {
			t.Error("the server's token was printed")
		}
		if err := p.runner("v2").Rollback(ctx, ""); err != nil {
			t.Fatal(err)
		}
		if v := p.health(); v != "v1" {
			t.Fatalf("after rollback the server answers %q", v)
		}
		c.CheckMadeBy(t, testenv.ServerDockerHost, p.container)

		// An unknown host and a changed host key: refused, nothing changed.
		history, _ := p.serverFile("deploy-history.jsonl")
		os.WriteFile(p.env["SSH_KNOWN_HOSTS"], nil, 0o600)
		err = p.runner("v2").Deploy(ctx)
		if err == nil || !strings.Contains(err.Error(), "not known") || !strings.Contains(err.Error(), "SSH_ACCEPT_NEW") {
			t.Fatalf("deploy to an unknown host: %v", err)
		}
		testenv.WriteKnownHosts(t, p.env["SSH_KNOWN_HOSTS"], p.proxy.Addr, testenv.NewKey(t).Public)
		err = p.runner("v2", "SSH_ACCEPT_NEW=1").Deploy(ctx)
		if err == nil || !strings.Contains(strings.ToLower(err.Error()), "changed") {
			t.Fatalf("deploy to a host whose key changed: %v", err)
		}
		if after, _ := p.serverFile("deploy-history.jsonl"); after != history {
			t.Error("a refused connection changed the server's deploy history")
		}
		if v := p.health(); v != "v1" {
			t.Fatalf("after refused deploys the server answers %q", v)
		}

		// Accepting a new host records its key, and the next deploy needs no flag.
		os.WriteFile(p.env["SSH_KNOWN_HOSTS"], nil, 0o600)
		if err := p.runner("v2", "SSH_ACCEPT_NEW=1").Deploy(ctx); err != nil {
			t.Fatal(err)
		}
		if err := p.runner("v2").Status(ctx); err != nil {
			t.Fatalf("status after accept-new: %v", err)
		}
	})
}
