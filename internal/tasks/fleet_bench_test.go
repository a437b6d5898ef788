//go:build linux

package tasks

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/carebot/carebot/internal/config"
	"github.com/carebot/carebot/internal/shell"
	"github.com/carebot/carebot/internal/testenv"
)

// BenchmarkFleet measures a redeploy after a one-layer change (the
// benchmark image of BenchmarkDeploy, its app layer) to 1, 2 and 4
// servers, each a network namespace with its own engine and sshd behind a
// proxy that counts its bytes, until every server's /health reports the
// new version: carebot switching one server at a time (rolling) and all
// at once, beside the way people script several servers without a
// registry, `docker save | gzip -1 | ssh docker load` then compose up,
// one server after another and all at once (&). It prints a table of
// medians and puts it in the results file under "Several servers".
// CAREBOT_BENCH_RUNS (3), CAREBOT_BENCH_QUICK and CAREBOT_BENCH_OUT apply.
func BenchmarkFleet(b *testing.B) {
	s := loadBenchSettings(b)
	testenv.NeedEngine(b)
	c := benchComposeFlavour(b)
	e := &benchEnv{b: b, s: s, dir: b.TempDir(), work: b.TempDir(), imageName: "carebot-fleetbench", appPort: 5555,
		tags: [2]string{"v1", "v2"}, sshd: &testenv.SSHD{}, stages: map[string]benchStages{}}
	b.Cleanup(e.removeLocalImages)
	e.writeProject()
	for _, tag := range e.tags {
		e.build(tag)
	}
	f := testenv.StartFleet(b, 4, c.Env())
	fb := &fleetBench{e: e, f: f, compose: c}
	fb.known = filepath.Join(b.TempDir(), "known_hosts")
	for i, srv := range f.Servers {
		px := testenv.StartProxy(b, srv.IP+":22", 0)
		fb.proxies = append(fb.proxies, px)
		k := filepath.Join(b.TempDir(), "known")
		testenv.WriteKnownHosts(b, k, px.Addr, f.HostKeys[i])
		data, _ := os.ReadFile(k)
		appendFile(b, fb.known, data)
		if err := os.MkdirAll(filepath.Join(srv.Root, "carebot"), 0o755); err != nil {
			b.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(srv.Root, "carebot", ".env"), []byte("BOT_TOKEN=bench\n"), 0o600); err != nil {
			b.Fatal(err)
		}
	}
	loadStart := loadAverage()
	start := time.Now()
	methods := []string{"carebot", "carebot-all", "pipe-gzip-serial", "pipe-gzip-parallel"}
	type cell struct{ wall, wire, transfer []float64 }
	results := map[string]*cell{}
	measure := func(key, tag, method string) {
		for _, px := range fb.proxies {
			px.Reset()
		}
		t0 := time.Now()
		transfer := fb.deploy(tag, method)
		wall := time.Since(t0)
		var wire int64
		for _, px := range fb.proxies {
			wire += px.Bytes()
		}
		if results[key] == nil {
			results[key] = &cell{}
		}
		cl := results[key]
		cl.wall = append(cl.wall, wall.Seconds())
		cl.wire = append(cl.wire, float64(wire))
		if transfer > 0 {
			cl.transfer = append(cl.transfer, transfer.Seconds())
		}
	}
	sizes := []int{1, 2, 4}
	for _, n := range sizes {
		fb.n, fb.serving = n, ""
		// The first deploy to empty servers, once per method: the pipe's,
		// then carebot's (rolling), from which the redeploys go on.
		for _, m := range []string{"pipe-gzip-parallel", "carebot"} {
			fb.wipe()
			measure(fmt.Sprint(n, "/first/", m), e.tags[0], m)
		}
		for run := 0; run < s.runs; run++ {
			for _, m := range methods {
				next := e.tags[0]
				if fb.serving == next {
					next = e.tags[1]
				}
				fb.drop(next) // only its app layer is missing
				measure(fmt.Sprint(n, "/", m), next, m)
			}
		}
	}
	var t strings.Builder
	// rows is a table row per number of servers, a cell per method.
	rows := func(kind string, methods []string) {
		for _, n := range sizes {
			fmt.Fprintf(&t, "| %d |", n)
			for _, m := range methods {
				cl := results[fmt.Sprint(n, kind, m)]
				fmt.Fprintf(&t, " %.1f s (%s)", median(cl.wall), humanBytes(median(cl.wire)))
				if len(cl.transfer) > 0 {
					fmt.Fprintf(&t, ", transfer %.1f s", median(cl.transfer))
				}
				t.WriteString(" |")
			}
			t.WriteString("\n")
		}
	}
	fmt.Fprintf(&t, "## Several servers\n\nRedeploy after a one-layer change (the image above, its app layer) to 1, 2 and 4 servers, each a network namespace of its own (engine, sshd, deploy folder) on this machine's bridge, until every server's /health reports the new version. Median of %d runs, seconds (bytes on the wire, all servers together); %s; load average %s at the start. carebot's cell adds, after \"transfer\", the time until the last server had the image (the rest is the switch).\n\n", s.runs, time.Since(start).Round(time.Second), loadStart)
	fmt.Fprintf(&t, "| servers | carebot, rolling (default) | carebot, all at once | `save \\| gzip -1 \\| ssh load` + compose up, one server after another | the same, all servers at once (&) |\n|---|---|---|---|---|\n")
	rows("/", methods)
	fmt.Fprintf(&t, "\nThe first deploy to empty servers (no image, no deployment; once per cell): the whole image goes to each server; carebot saves it once and compresses each layer once for all of them.\n\n")
	fmt.Fprintf(&t, "| servers | carebot, rolling | `save \\| gzip -1 \\| ssh load` + compose up, all servers at once (&) |\n|---|---|---|\n")
	rows("/first/", []string{"carebot", "pipe-gzip-parallel"})
	table := t.String()
	fmt.Print("\n" + table)
	writeSection(b, s.out, "## Several servers", table)
}

type fleetBench struct {
	e       *benchEnv
	f       *testenv.Fleet
	compose testenv.Compose
	proxies []*testenv.Proxy
	known   string
	n       int    // servers in use: the first n
	serving string // what they serve
}

// deploy puts tag into service on the first n servers with method, and
// returns (for carebot) how long it took until the last server had it.
func (fb *fleetBench) deploy(tag, method string) time.Duration {
	b := fb.b()
	var transfer time.Duration
	switch method {
	case "carebot", "carebot-all":
		var hosts []string
		for _, px := range fb.proxies[:fb.n] {
			hosts = append(hosts, "root@"+px.Addr)
		}
		strategy := "rolling"
		if method == "carebot-all" {
			strategy = "all"
		}
		env := map[string]string{
			"IMAGE_NAME": fb.e.imageName, "IMAGE_TAG": tag, "APP_PORT": "5555", "HEALTH_TIMEOUT": "60s",
			"DEPLOY_PATH": testenv.FleetPath + "/carebot", "DEPLOY_HOST": strings.Join(hosts, ","), "DEPLOY_STRATEGY": strategy,
			"SSH_KEY": fb.f.KeyFile, "SSH_AUTH_SOCK": "", "SSH_KNOWN_HOSTS": fb.known,
		}
		cfg, err := config.Load(fb.e.dir, append(os.Environ(), envList(env)...))
		if err != nil {
			b.Fatal(err)
		}
		lines := &timedLines{start: time.Now()}
		r := &Runner{Cfg: cfg, Out: lines, LinksFile: filepath.Join(fb.e.dir, "links-fleet.json")}
		err = r.Deploy(context.Background())
		r.Close()
		if err != nil {
			b.Fatalf("%s to %d servers: %v\n%s", method, fb.n, err, lines.text())
		}
		if fb.e.s.verbose {
			fmt.Printf("%s, %d servers:\n%s\n", method, fb.n, lines.text())
		}
		// The transfer ends when the last server printed its "sent …".
		lines.mu.Lock()
		for _, l := range lines.lines {
			line := l.text
			if _, rest, ok := strings.Cut(line, "] "); ok && strings.HasPrefix(line, "[") {
				line = rest
			}
			if shipSent.MatchString(line) {
				transfer = max(transfer, l.at)
			}
		}
		lines.mu.Unlock()
	default:
		script := func(i int) string {
			px := fb.proxies[i]
			host, port, _ := strings.Cut(px.Addr, ":")
			ssh := shell.Join("ssh", "-i", fb.f.KeyFile, "-o", "UserKnownHostsFile="+fb.known, "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-p", port, "root@"+host)
			composeCmd := "docker-compose"
			if fb.compose.Name == "v2" {
				composeCmd = "docker compose"
			}
			up := fmt.Sprintf("cd %s/carebot && IMAGE_NAME=%s APP_PORT=5555 IMAGE_TAG=%s %s -f docker-compose.production.yml up -d && %s",
				testenv.FleetPath, fb.e.imageName, tag, composeCmd, waitVersion(tag))
			// The compose file goes along (a first deploy needs it there).
			put := fmt.Sprintf("%s %s < %s", ssh, shell.Quote("mkdir -p "+testenv.FleetPath+"/carebot && cat > "+testenv.FleetPath+"/carebot/docker-compose.production.yml"),
				shell.Quote(filepath.Join(fb.e.dir, "docker-compose.production.yml")))
			return fmt.Sprintf("%s && docker save %s | gzip -1 | %s 'docker load' && %s %s", put, shell.Quote(fb.e.ref(tag)), ssh, ssh, shell.Quote(up))
		}
		var parts []string
		for i := range fb.n {
			parts = append(parts, script(i))
		}
		all := strings.Join(parts, " && ")
		if method == "pipe-gzip-parallel" {
			all = ""
			for _, p := range parts {
				all += "( " + p + " ) & "
			}
			all += "fail=0; for j in $(jobs -p); do wait $j || fail=1; done; exit $fail"
		}
		if out, err := exec.Command("bash", "-o", "pipefail", "-c", all).CombinedOutput(); err != nil {
			b.Fatalf("%s to %d servers: %v\n%s", method, fb.n, err, out)
		}
	}
	for i := range fb.n {
		if v := fb.version(i); v != tag {
			b.Fatalf("%s: server %d reports %q, want %s", method, i+1, v, tag)
		}
	}
	fb.serving = tag
	return transfer
}

func (fb *fleetBench) b() *testing.B { return fb.e.b }

// drop removes tag's image from the servers in use, so a deploy of it
// sends its app layer.
func (fb *fleetBench) drop(tag string) {
	var wg sync.WaitGroup
	for _, srv := range fb.f.Servers[:fb.n] {
		wg.Add(1)
		go func() {
			defer wg.Done()
			srv.Docker("image", "rm", "-f", fb.e.ref(tag))
		}()
	}
	wg.Wait()
}

// wipe makes the servers in use empty: no container, no image, nothing
// deployed but the .env.
func (fb *fleetBench) wipe() {
	var wg sync.WaitGroup
	for _, srv := range fb.f.Servers[:fb.n] {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ids, _ := srv.Docker("ps", "-aq")
			if ids := strings.Fields(ids); len(ids) > 0 {
				srv.Docker(append([]string{"rm", "-f"}, ids...)...)
			}
			if out, err := srv.Docker("image", "prune", "-af"); err != nil {
				fb.b().Errorf("wipe %s: %v\n%s", srv.IP, err, out)
			}
			dir := filepath.Join(srv.Root, "carebot")
			entries, _ := os.ReadDir(dir)
			for _, en := range entries {
				if en.Name() != ".env" {
					os.RemoveAll(filepath.Join(dir, en.Name()))
				}
			}
		}()
	}
	wg.Wait()
	fb.serving = ""
}

// version asks server i's /health from inside it.
func (fb *fleetBench) version(i int) string { return servedOn(fb.f.Servers[i], "5555") }

// waitVersion is a shell loop on the server that waits up to 60 s for
// /health to report tag.
func waitVersion(tag string) string {
	py := fmt.Sprintf("import json,urllib.request as u,sys; sys.exit(json.load(u.urlopen('http://127.0.0.1:5555/health', timeout=2))['version'] != %q)", tag)
	return fmt.Sprintf("for i in $(seq 600); do python3 -c %s 2>/dev/null && exit 0; sleep 0.1; done; exit 1", shell.Quote(py))
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}

func humanBytes(n float64) string {
	switch {
	case n >= 1e6:
		return fmt.Sprintf("%.1f MB", n/1e6)
	case n >= 1e3:
		return fmt.Sprintf("%.0f kB", n/1e3)
	}
	return fmt.Sprintf("%.0f B", n)
}

// writeSection puts section (which starts with heading) into the results
// file, in place of an earlier one of that heading.
func writeSection(b *testing.B, path, heading, section string) {
	old, _ := os.ReadFile(path)
	s := string(old)
	if i := strings.Index(s, heading); i >= 0 {
		rest := s[i+len(heading):]
		end := len(s)
		if j := strings.Index(rest, "\n## "); j >= 0 {
			end = i + len(heading) + j + 1
		}
		s = s[:i] + s[end:]
	}
	s = strings.TrimRight(s, "\n")
	if s != "" {
		s += "\n\n"
	}
	if err := os.WriteFile(path, []byte(s+section), 0o644); err != nil {
		b.Fatal(err)
	}
	fmt.Printf("(written to %s)\n", path)
}
