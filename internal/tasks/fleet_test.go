//go:build !windows

package tasks

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/carebot/carebot/internal/deploy"
	"github.com/carebot/carebot/internal/engine"
	"github.com/carebot/carebot/internal/testenv"
)

// A deploy to several servers, end to end: each server a network
// namespace with its own engine, sshd and deploy folder (testenv.Fleet),
// reached through a proxy of its own that counts its bytes.
type fleetProject struct {
	*remoteProject
	fleet   *testenv.Fleet
	proxies []*testenv.Proxy
}

func newFleetProject(t *testing.T, name string, n int) *fleetProject {
	t.Helper()
	testenv.NeedEngine(t)
	c := testenv.NewCompose(t, "v2")
	f := testenv.StartFleet(t, n, c.Env())
	dir := t.TempDir()
	container := writeE2EProject(t, dir, name)
	p := &fleetProject{
		remoteProject: &remoteProject{t: t, dir: dir, compose: c, container: container, out: &bytes.Buffer{}, appPort: "5555"},
		fleet:         f,
	}
	known := filepath.Join(t.TempDir(), "known_hosts")
	var hosts []string
	for i, s := range f.Servers {
		px := testenv.StartProxy(t, s.IP+":22", 0)
		p.proxies = append(p.proxies, px)
		hosts = append(hosts, "root@"+px.Addr)
		testenv.WriteKnownHosts(t, known+fmt.Sprint(i), px.Addr, f.HostKeys[i])
		b, _ := os.ReadFile(known + fmt.Sprint(i))
		appendFile(t, known, b)
	}
	p.env = map[string]string{
		"IMAGE_NAME":      "carebot-fleet-" + name,
		"APP_PORT":        p.appPort, // the same port on every server: each has its own network
		"TEST_PORT":       fmt.Sprint(testenv.FreePort(t)),
		"HEALTH_TIMEOUT":  "20s",
		"DEPLOY_HOST":     strings.Join(hosts, ","),
		"DEPLOY_PATH":     testenv.FleetPath + "/carebot",
		"SSH_KEY":         f.KeyFile,
		"SSH_KNOWN_HOSTS": known,
		"SSH_AUTH_SOCK":   "",
	}
	t.Cleanup(func() {
		ctx := context.Background()
		if e, err := engine.Connect(ctx); err == nil {
			imgs, _ := e.ImagesOf(ctx, p.env["IMAGE_NAME"])
			for _, im := range imgs {
				e.RemoveImage(ctx, im.ID)
			}
			e.Close()
		}
	})
	return p
}

func appendFile(t testing.TB, path string, b []byte) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Write(b); err != nil {
		t.Fatal(err)
	}
}

// host is DEPLOY_HOST's entry for server i alone.
func (p *fleetProject) host(i int) string { return "DEPLOY_HOST=root@" + p.proxies[i].Addr }

// serverEnv writes server i's .env.
func (p *fleetProject) serverEnv(i int, content string) {
	p.t.Helper()
	dir := filepath.Join(p.fleet.Servers[i].Root, "carebot")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		p.t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, ".env"), []byte(content), 0o600); err != nil {
		p.t.Fatal(err)
	}
}

// serving asks server i's service, from inside the server, which version
// it serves ("" when it does not answer healthy).
func (p *fleetProject) serving(i int) string { return servedOn(p.fleet.Servers[i], p.appPort) }

// servedOn is the version /health on port reports, asked from inside
// server s ("" when it does not answer healthy).
func servedOn(s *testenv.NetServer, port string) string {
	out, err := s.Exec("python3", "-c",
		"import json,urllib.request as u; print(json.load(u.urlopen('http://127.0.0.1:"+port+"/health', timeout=5))['version'])")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(out)
}

func (p *fleetProject) history(i int) []deploy.Entry {
	b, _ := os.ReadFile(filepath.Join(p.fleet.Servers[i].Root, "carebot", "deploy-history.jsonl"))
	return deploy.ParseHistory(b)
}

func (p *fleetProject) imageOn(i int, ref string) string {
	out, err := p.fleet.Servers[i].Docker("image", "inspect", "--format", "{{.Id}}", ref)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(out)
}

func TestFleetDeploy(t *testing.T) {
	if _, err := os.Stat("/usr/bin/python3"); err != nil {
		testenv.Skip(t, "python3 asks the servers' health from inside them (apt-get install python3)")
	}
	p := newFleetProject(t, "two", 2)
	ctx := context.Background()
	// a is the server a rolling deploy switches first, b the second.
	a, b := 0, 1
	if "root@"+p.proxies[1].Addr < "root@"+p.proxies[0].Addr {
		a, b = 1, 0
	}
	// a overrides the image's forced failure, so a release built to fail
	// fails on b only, after a has switched.
	p.serverEnv(a, "BOT_TOKEN=one\nCAREBOT_HEALTH_FAIL=0\n")
	p.serverEnv(b, "BOT_TOKEN=two\n")

	v1 := p.release("v1", nil)
	// Server 2 has v1 already (deployed to it alone): the servers differ.
	if err := p.runner("v1", p.host(1)).Deploy(ctx); err != nil {
		t.Fatal(err)
	}

	// v1 to both: server 1 gets the whole image, server 2 nothing.
	for _, px := range p.proxies {
		px.Reset()
	}
	p.out.Reset()
	if err := p.runner("v1").Deploy(ctx); err != nil {
		t.Fatal(err)
	}
	full, none := p.proxies[0].Bytes(), p.proxies[1].Bytes()
	t.Logf("v1: %d bytes to server 1 (had nothing), %d to server 2 (had v1)", full, none)
	if full < baseLayerSize || none > 1<<20 {
		t.Errorf("v1 sent %d and %d bytes; want the whole image to server 1 only", full, none)
	}
	for i := range p.proxies {
		if v := p.serving(i); v != "v1" {
			t.Fatalf("server %d serves %q after v1", i+1, v)
		}
		if id := p.imageOn(i, p.env["IMAGE_NAME"]+":v1"); id != v1.ID {
			t.Errorf("server %d has v1 as %s, want %s", i+1, id, v1.ID)
		}
	}
	if !strings.Contains(p.out.String(), "warning: this runs the service on 2 servers") {
		t.Errorf("no warning about running the service twice:\n%s", p.out)
	}
	if !strings.Contains(p.out.String(), "["+p.proxies[0].Addr+"] ") {
		t.Errorf("output lines do not carry the server:\n%s", p.out)
	}

	// v2: both at once, each sent only the changed layer.
	p.release("v2", nil)
	for _, px := range p.proxies {
		px.Reset()
	}
	if err := p.runner("v2").Deploy(ctx); err != nil {
		t.Fatal(err)
	}
	for i, px := range p.proxies {
		t.Logf("v2: %d bytes to server %d", px.Bytes(), i+1)
		if px.Bytes() > full/4 {
			t.Errorf("v2 sent %d bytes to server %d (v1 was %d): more than the changed layer", px.Bytes(), i+1, full)
		}
		if v := p.serving(i); v != "v2" {
			t.Fatalf("server %d serves %q after v2", i+1, v)
		}
	}
	h0, h1 := p.history(0), p.history(1)
	if last0, last1 := h0[len(h0)-1], h1[len(h1)-1]; last0.Run == "" || last0.Run != last1.Run || last0.Result != deploy.ResultOK {
		t.Errorf("the servers' last entries do not name one run: %+v / %+v", last0, last1)
	}

	// v3 fails on b: rolling switches a, then b fails; both end on v2 and
	// the run fails naming b. All at once: the same.
	p.release("v3", map[string]string{"HEALTH_FAIL": "1"})
	for _, strategy := range []string{"rolling", "all"} {
		p.out.Reset()
		err := p.runner("v3", "DEPLOY_STRATEGY="+strategy).Deploy(ctx)
		if err == nil || !strings.Contains(err.Error(), p.proxies[b].Addr) || !strings.Contains(err.Error(), "put back on root@"+p.proxies[a].Addr) {
			t.Fatalf("%s deploy of an unhealthy v3: %v", strategy, err)
		}
		t.Logf("%s: %v", strategy, err)
		for i := range p.proxies {
			if v := p.serving(i); v != "v2" {
				t.Errorf("%s: server %d serves %q after the failed v3, want v2", strategy, i+1, v)
			}
		}
		last := p.history(a)[len(p.history(a))-1]
		if last.Version != "v3" || last.Result != deploy.ResultRolledBack || last.Serving != "v2" {
			t.Errorf("%s: server a's last entry %+v, want v3 rolled back to v2", strategy, last)
		}
	}

	// Ctrl-C once a serves v5 and b is switching: both go back to v2 by
	// themselves, and the next plain deploy works.
	p.release("v5", nil)
	cctx, cancel := context.WithCancel(ctx)
	r := p.runner("v5")
	r.Out = io.MultiWriter(r.Out, onLine(func(line string) {
		if strings.Contains(line, "["+p.proxies[b].Addr+"] waiting up to") {
			cancel()
		}
	}))
	err := r.Deploy(cctx)
	cancel()
	if err == nil || !strings.Contains(err.Error(), "interrupted") {
		t.Fatalf("deploy interrupted while switching b: %v", err)
	}
	t.Logf("interrupted: %v", err)
	for i := range p.proxies {
		deadline := time.Now().Add(90 * time.Second)
		for p.serving(i) != "v2" && time.Now().Before(deadline) {
			time.Sleep(time.Second)
		}
		if v := p.serving(i); v != "v2" {
			t.Errorf("server %d serves %q after the interrupted v5, want v2 back", i+1, v)
		}
	}
	if err := p.runner("v5").Deploy(ctx); err != nil {
		t.Fatalf("the next plain deploy after the interruption: %v", err)
	}
	for i := range p.proxies {
		if v := p.serving(i); v != "v5" {
			t.Errorf("server %d serves %q, want v5", i+1, v)
		}
	}

	// The link to b cut while b switches to v6: b's lock holder puts v5
	// back there by itself, the run puts a back and fails naming b. Then
	// both links cut at that point, as when the run is killed: each
	// server's holder puts v5 back. After each, the next plain deploy works.
	p.release("v6", nil)
	for _, cut := range [][]int{{b}, {a, b}} {
		r := p.runner("v6")
		p.out.Reset()
		r.Out = io.MultiWriter(r.Out, onLine(func(line string) {
			if strings.Contains(line, "["+p.proxies[b].Addr+"] waiting up to") {
				for _, i := range cut {
					p.proxies[i].Cut()
				}
			}
		}))
		err := r.Deploy(ctx)
		if err == nil || !strings.Contains(err.Error(), p.proxies[b].Addr) {
			t.Fatalf("deploy with the link to %v cut while b switches: %v\n%s", cut, err, p.out)
		}
		t.Logf("links to %v cut: %v", cut, err)
		for i := range p.proxies {
			deadline := time.Now().Add(90 * time.Second)
			for p.serving(i) != "v5" && time.Now().Before(deadline) {
				time.Sleep(time.Second)
			}
			if v := p.serving(i); v != "v5" {
				t.Errorf("links to %v cut: server %d serves %q, want v5 back", cut, i+1, v)
			}
		}
		if len(cut) == 1 && !strings.Contains(err.Error(), "put back on root@"+p.proxies[a].Addr) {
			t.Errorf("the run did not put a back: %v", err)
		}
	}
	p.out.Reset()
	if err := p.runner("v6").Deploy(ctx); err != nil {
		t.Fatalf("the next plain deploy after the cuts: %v\n%s", err, p.out)
	}
	for i := range p.proxies {
		if v := p.serving(i); v != "v6" {
			t.Errorf("server %d serves %q, want v6", i+1, v)
		}
	}

	// Status: one table, a row per server, healthy.
	p.out.Reset()
	if err := p.runner("v3").Status(ctx); err != nil {
		t.Errorf("status with both healthy on v6: %v\n%s", err, p.out)
	}
	if s := p.out.String(); !strings.Contains(s, "SERVER") || strings.Count(s, " v6 ") < 2 {
		t.Errorf("status table:\n%s", s)
	}

	// Server 2 unreachable: nothing changes anywhere, and status still
	// shows server 1 and fails.
	p.release("v4", nil)
	before := len(p.history(0))
	if err := p.fleet.Servers[1].Cut(); err != nil { // its link down, as a machine that went away
		t.Fatal(err)
	}
	defer p.fleet.Servers[1].Mend()
	p.out.Reset()
	err = p.runner("v4").Deploy(ctx)
	if err == nil || !strings.Contains(err.Error(), "nothing was changed on any server") {
		t.Fatalf("deploy with server 2 unreachable: %v", err)
	}
	t.Logf("unreachable: %v", err)
	if id := p.imageOn(0, p.env["IMAGE_NAME"]+":v4"); id != "" || len(p.history(0)) != before || p.serving(0) != "v6" {
		t.Errorf("server 1 changed though server 2 was unreachable: v4 image %q, history %d→%d, serving %q", id, before, len(p.history(0)), p.serving(0))
	}
	p.out.Reset()
	err = p.runner("v4").Status(ctx)
	if err == nil || !strings.Contains(p.out.String(), "UNREACHABLE") || !strings.Contains(p.out.String(), " v6 ") {
		t.Errorf("status with server 2 unreachable: %v\n%s", err, p.out)
	}
}

// onLine calls f with each whole line written to it.
func onLine(f func(string)) io.Writer {
	return &lineHook{f: f}
}

type lineHook struct {
	mu  sync.Mutex
	buf []byte
	f   func(string)
}

func (h *lineHook) Write(b []byte) (int, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.buf = append(h.buf, b...)
	for {
		i := bytes.IndexByte(h.buf, '\n')
		if i < 0 {
			return len(b), nil
		}
		h.f(string(h.buf[:i]))
		h.buf = h.buf[i+1:]
	}
}
