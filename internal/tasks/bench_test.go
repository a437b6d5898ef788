//go:build linux

package tasks

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/carebot/carebot/internal/config"
	"github.com/carebot/carebot/internal/host"
	"github.com/carebot/carebot/internal/shell"
	"github.com/carebot/carebot/internal/testenv"
	"github.com/carebot/carebot/internal/text"
)

// BenchmarkDeploy puts an image that is not the sample app (a large
// compressible layer of real files, a large random one, a dependencies
// layer, a small app layer whose service takes 2 s to stop) into service
// on a server over SSH, with carebot and with the ways people do it
// without a registry, each followed by the same compose up and wait for
// /health: a first deploy, a redeploy after an app-layer change and a
// no-op redeploy, over loopback and a link limited to 50 Mbit/s. It
// prints one table of medians and writes it to bench-results.md. Run it
// with `mage bench`, or
//
//	go test -run '^$' -bench '^BenchmarkDeploy$' -benchtime 1x -timeout 180m ./internal/tasks/
//
// The environment picks a part of the matrix (see benchSettings):
// CAREBOT_BENCH_LINKS=loopback,50mbit CAREBOT_BENCH_CASES=first,redeploy,noop
// CAREBOT_BENCH_METHODS=carebot,seed,pipe,pipe-gzip CAREBOT_BENCH_RUNS=3;
// CAREBOT_BENCH_QUICK=1 builds a ~30 MB image and defaults to one run on
// loopback; CAREBOT_BENCH_OUT names the results file;
// CAREBOT_BENCH_VERBOSE=1 prints each carebot deploy's output with times.
func BenchmarkDeploy(b *testing.B) {
	s := loadBenchSettings(b)
	testenv.NeedEngine(b)
	c := benchComposeFlavour(b)
	e := newBenchEnv(b, s, testenv.StartSSHD(b, testenv.WithCompose(c), testenv.WithOwnHome()), c)
	e.loadStart = loadAverage()
	start := time.Now()
	var cells []benchCell
	for _, link := range s.links {
		e.useLink(link)
		for _, cs := range s.cases {
			samples := map[string][]benchSample{}
			// Runs go round the methods, so a slow minute of this shared
			// machine spreads over all of them instead of one.
			for run := 0; run < s.runs; run++ {
				for _, m := range s.methods {
					samples[m] = append(samples[m], e.measure(m, cs))
				}
			}
			for _, m := range s.methods {
				cells = append(cells, benchCell{link: link, cs: cs, method: m, samples: samples[m]})
			}
		}
	}
	table := e.report(cells, time.Since(start))
	fmt.Print("\n" + table)
	if err := os.WriteFile(s.out, []byte(table), 0o644); err != nil {
		b.Fatal(err)
	}
	fmt.Printf("(written to %s)\n", s.out)
}

type benchLink struct {
	key, name string
	bps       int64 // 0: no limit
}

var (
	benchLinks   = []benchLink{{"loopback", "loopback", 0}, {"50mbit", "50 Mbit/s", 50_000_000}}
	benchCases   = []string{"first", "redeploy", "noop"}
	benchMethods = []string{"carebot", "carebot-full", "seed", "pipe", "pipe-gzip"}
	// What each method is, in the table.
	benchMethodNames = map[string]string{
		"carebot":      "**carebot** (`Runner.Deploy`)",
		"carebot-full": "**carebot in `mage full`** (`Runner.Deploy` after `Runner.Inspect`, one save)",
		"seed":         "seed: `docker save -o`, `scp`, `docker load -i`",
		"pipe":         "`docker save \\| ssh docker load`",
		"pipe-gzip":    "`docker save \\| gzip -1 \\| ssh docker load`",
	}
	benchCaseNames = map[string]string{"first": "first deploy", "redeploy": "redeploy", "noop": "no-op redeploy"}
)

// benchSettings is the part of the matrix to run, from the environment.
type benchSettings struct {
	links   []benchLink
	cases   []string
	methods []string
	runs    int
	quick   bool   // a small image, for trying the benchmark itself
	verbose bool   // print each carebot deploy's output, each line with its time
	out     string // the results file
}

func loadBenchSettings(b *testing.B) benchSettings {
	s := benchSettings{runs: 3, quick: os.Getenv("CAREBOT_BENCH_QUICK") != "",
		verbose: os.Getenv("CAREBOT_BENCH_VERBOSE") != "", out: "bench-results.md"}
	links := "loopback,50mbit"
	if s.quick {
		s.runs, links = 1, "loopback"
	}
	var linkKeys []string
	for _, l := range benchLinks {
		linkKeys = append(linkKeys, l.key)
	}
	for _, k := range benchList(b, "CAREBOT_BENCH_LINKS", links, linkKeys) {
		for _, l := range benchLinks {
			if l.key == k {
				s.links = append(s.links, l)
			}
		}
	}
	s.cases = benchList(b, "CAREBOT_BENCH_CASES", strings.Join(benchCases, ","), benchCases)
	s.methods = benchList(b, "CAREBOT_BENCH_METHODS", strings.Join(benchMethods, ","), benchMethods)
	if v := os.Getenv("CAREBOT_BENCH_RUNS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			b.Fatalf("CAREBOT_BENCH_RUNS=%q: want a number of runs, 1 or more", v)
		}
		s.runs = n
	}
	if v := os.Getenv("CAREBOT_BENCH_OUT"); v != "" {
		s.out = v
	}
	return s
}

// benchList reads a comma-separated subset of known from env (def when
// unset), in known's order; a name it does not know stops the benchmark.
func benchList(b *testing.B, env, def string, known []string) []string {
	v := os.Getenv(env)
	if strings.TrimSpace(v) == "" {
		v = def
	}
	want := map[string]bool{}
	for _, f := range strings.Split(v, ",") {
		f = strings.TrimSpace(f)
		if !contains(known, f) {
			b.Fatalf("%s=%q: %q is not one of %s", env, v, f, strings.Join(known, ","))
		}
		want[f] = true
	}
	var l []string
	for _, k := range known {
		if want[k] {
			l = append(l, k)
		}
	}
	return l
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// benchComposeFlavour is the Compose the server offers: v2 where this
// machine has its binary (what servers run today), else Debian's v1.
func benchComposeFlavour(b *testing.B) testenv.Compose {
	if _, err := testenv.ComposeV2Binary(); err == nil {
		return testenv.NewCompose(b, "v2")
	}
	return testenv.NewCompose(b, "v1")
}

// benchEnv is the benchmark's project, server and link. The server is the
// second engine on this machine behind OpenSSH's sshd; every method
// reaches it through the same proxy, which counts the bytes on the wire
// and limits the link.
type benchEnv struct {
	b          *testing.B
	s          benchSettings
	dir        string // the build context: Dockerfile, compose file, the layers' files
	work       string // this machine's scratch space (the seed's local tar)
	deployPath string // on the server (this machine)
	imageName  string
	appPort    int
	sshd       *testenv.SSHD
	compose    testenv.Compose
	tags       [2]string // two releases that differ in the app layer only
	serving    string    // the tag the server serves, "" when nothing does

	link   benchLink
	proxy  *testenv.Proxy
	known  string                 // known_hosts for the proxy's address
	stages map[string]benchStages // link/case: the last carebot run's stages

	loadStart string // the load average when the measuring began
}

// seedTar is where the seed's way leaves the image on the server.
const seedTar = "/tmp/carebot-bench-seed.tar"

// benchStopDelay is how long the service takes to stop after SIGTERM.
const benchStopDelay = "2s"

func newBenchEnv(b *testing.B, s benchSettings, sshd *testenv.SSHD, c testenv.Compose) *benchEnv {
	e := &benchEnv{b: b, s: s, dir: b.TempDir(), work: b.TempDir(), deployPath: filepath.Join(b.TempDir(), "carebot-bench"),
		imageName: "carebot-bench", appPort: testenv.FreePort(b), sshd: sshd, compose: c,
		tags: [2]string{"v1", "v2"}, stages: map[string]benchStages{}}
	if _, err := os.Stat("/usr/bin/time"); err != nil {
		b.Fatalf("the baselines' peak RSS is measured with /usr/bin/time: apt-get install time (%v)", err)
	}
	b.Cleanup(e.removeLocalImages)
	b.Cleanup(e.teardown)
	e.teardown() // what a killed run left on the server
	e.writeProject()
	for _, tag := range e.tags {
		e.build(tag)
	}
	return e
}

// writeProject writes the build context: layer 1 real files from /usr
// (libraries and data, which compress as an interpreter's tree does),
// layer 2 random bytes, layer 3 smaller files from /usr as the
// dependencies, layer 4 the service and a file naming the release; and a
// compose file that is the production one with this service in it.
func (e *benchEnv) writeProject() {
	b := e.b
	base, random, deps := int64(120e6), int64(90e6), int64(25e6)
	if e.s.quick {
		base, random, deps = 12e6, 8e6, 3e6
	}
	for _, d := range []string{"base", "deps", "app", "migrations"} {
		if err := os.MkdirAll(filepath.Join(e.dir, d), 0o755); err != nil {
			b.Fatal(err)
		}
	}
	testenv.CollectFiles(b, filepath.Join(e.dir, "base"), base, 1<<20, 1<<40)
	testenv.CollectFiles(b, filepath.Join(e.dir, "deps"), deps, 64<<10, 1<<20)
	blob, err := os.Create(filepath.Join(e.dir, "blob.bin"))
	if err != nil {
		b.Fatal(err)
	}
	if _, err := io.CopyN(blob, rand.Reader, random); err != nil {
		b.Fatal(err)
	}
	if err := blob.Close(); err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command("go", "build", "-trimpath", "-ldflags=-s -w", "-o", filepath.Join(e.dir, "app", "server"), "./testdata/benchapp")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+linuxArch())
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("build the benchmark's service: %v\n%s", err, out)
	}
	compose, err := os.ReadFile(filepath.Join(repoRoot(b), "docker-compose.production.yml"))
	if err != nil {
		b.Fatal(err)
	}
	compose = bytes.ReplaceAll(compose, []byte("carebot_production"), []byte("carebot_bench"))
	compose = bytes.ReplaceAll(compose, []byte("/app/carebot"), []byte("/app/server"))
	files := map[string]string{
		"docker-compose.production.yml": string(compose),
		"migrations/001_init.sql":       "SELECT 1;\n",
		"Dockerfile.production": `FROM scratch
COPY base/ /usr/lib/bench/
COPY blob.bin /opt/blob.bin
COPY deps/ /opt/deps/
COPY app/ /app/
ARG VERSION=dev
ARG COMMIT=unknown
ENV APP_PORT=5555 VERSION=$VERSION COMMIT=$COMMIT STOP_DELAY=` + benchStopDelay + `
EXPOSE 5555
HEALTHCHECK --interval=5s --timeout=3s --start-period=5s --retries=3 CMD ["/app/server", "-healthcheck"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/app/server"]
`,
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(e.dir, name), []byte(data), 0o644); err != nil {
			b.Fatal(err)
		}
	}
}

// build builds tag, whose app layer differs from the other release's by
// app/release.txt alone.
func (e *benchEnv) build(tag string) {
	if err := os.WriteFile(filepath.Join(e.dir, "app", "release.txt"), []byte("release "+tag+"\n"), 0o644); err != nil {
		e.b.Fatal(err)
	}
	r := e.runner(tag)
	defer r.Close()
	if _, err := r.Build(context.Background(), BuildOptions{}); err != nil {
		e.b.Fatal(err)
	}
}

// runner is a carebot run of tag to the server through the link.
func (e *benchEnv) runner(tag string) *Runner {
	env := map[string]string{
		"IMAGE_NAME":      e.imageName,
		"IMAGE_TAG":       tag,
		"APP_PORT":        strconv.Itoa(e.appPort),
		"HEALTH_TIMEOUT":  "60s",
		"DEPLOY_PATH":     e.deployPath,
		"SSH_KEY":         e.sshd.KeyFile,
		"SSH_AUTH_SOCK":   "",
		"DEPLOY_HOST":     "",
		"SSH_KNOWN_HOSTS": e.known,
	}
	if e.proxy != nil {
		env["DEPLOY_HOST"] = "root@" + e.proxy.Addr
	}
	cfg, err := config.Load(e.dir, append(os.Environ(), envList(env)...))
	if err != nil {
		e.b.Fatal(err)
	}
	// What carebot learns of a link (ship.Links) stays with that link: the
	// 50 Mbit/s runs do not start from loopback's rate. Each link's first
	// big transfer measures it.
	return &Runner{Cfg: cfg, Out: io.Discard, LinksFile: filepath.Join(e.dir, "links-"+e.link.key+".json")}
}

func (e *benchEnv) ref(tag string) string { return e.imageName + ":" + tag }

// useLink puts a fresh proxy limited to link in front of sshd.
func (e *benchEnv) useLink(link benchLink) {
	e.link = link
	e.proxy = testenv.StartProxy(e.b, e.sshd.Addr, link.bps)
	e.known = filepath.Join(e.b.TempDir(), "known_hosts")
	testenv.WriteKnownHosts(e.b, e.known, e.proxy.Addr, e.sshd.HostKey)
}

func (e *benchEnv) sshArgs() []string {
	_, port, _ := strings.Cut(e.proxy.Addr, ":")
	return []string{"-i", e.sshd.KeyFile, "-o", "UserKnownHostsFile=" + e.known, "-o", "StrictHostKeyChecking=yes",
		"-o", "BatchMode=yes", "-p", port, "root@127.0.0.1"}
}

func (e *benchEnv) scpArgs() []string {
	_, port, _ := strings.Cut(e.proxy.Addr, ":")
	return []string{"-i", e.sshd.KeyFile, "-o", "UserKnownHostsFile=" + e.known, "-o", "StrictHostKeyChecking=yes",
		"-o", "BatchMode=yes", "-P", port}
}

// benchSample is one measured deploy.
type benchSample struct {
	wall     time.Duration
	wire     int64         // bytes through the proxy, both ways
	peakKB   int64         // peak RSS: our process, or a baseline's largest process
	tempDisk int64         // peak bytes of the method's files outside Docker's data root on the server
	downtime time.Duration // longest time with no 200 from /health; -1 when not measured
}

// measure brings the server to case cs, then deploys with method and
// checks that the server serves what was deployed.
func (e *benchEnv) measure(method, cs string) benchSample {
	b := e.b
	tag := e.prepare(cs, method)
	e.proxy.Reset()
	disk := e.watchTempDisk()
	var down *downtimeWatch
	if cs != "first" {
		down = e.watchDowntime()
	}
	var smp benchSample
	var r *Runner
	if method == "carebot-full" {
		// As in mage full: inspect (not timed; every way inspects) keeps
		// the save it reads for the deploy.
		r = e.runner(tag)
		r.KeepSave = true
		if _, err := r.Inspect(context.Background()); err != nil {
			b.Fatalf("%s, %s: inspect: %v", method, cs, err)
		}
	}
	start := time.Now()
	if strings.HasPrefix(method, "carebot") {
		smp.peakKB = e.carebot(r, method, tag, cs, start)
	} else {
		smp.peakKB = e.baseline(method, tag)
	}
	smp.wall = time.Since(start)
	smp.wire = e.proxy.Bytes()
	smp.tempDisk = disk.stop()
	smp.downtime = -1
	if down != nil {
		smp.downtime = down.stop()
	}
	if v, _ := benchHealth(e.healthURL()); v != tag {
		b.Fatalf("%s, %s: the service reports %q afterwards, want %s", method, cs, v, tag)
	}
	e.serving = tag
	return smp
}

// prepare brings the server to case cs for method and returns the tag to
// deploy: first, nothing of the image there; redeploy, one release
// serving and the other absent; no-op, the release to deploy already
// serving.
func (e *benchEnv) prepare(cs, method string) string {
	switch cs {
	case "first":
		e.teardown()
		if err := os.MkdirAll(e.deployPath, 0o755); err != nil {
			e.b.Fatal(err)
		}
		// The server's own .env, as a real deploy folder has; and the
		// compose file for the baselines, which do not send one (a deploy
		// does: its first one uploads it).
		if err := os.WriteFile(filepath.Join(e.deployPath, ".env"), []byte("BOT_TOKEN=bench\n"), 0o600); err != nil {
			e.b.Fatal(err)
		}
		if strings.HasPrefix(method, "carebot") {
			return e.tags[0]
		}
		data, _ := os.ReadFile(filepath.Join(e.dir, "docker-compose.production.yml"))
		if err := os.WriteFile(filepath.Join(e.deployPath, "docker-compose.production.yml"), data, 0o644); err != nil {
			e.b.Fatal(err)
		}
		return e.tags[0]
	case "redeploy":
		if e.serving == "" {
			e.prepare("first", "carebot")
			e.setupDeploy(e.tags[0])
		}
		next := e.tags[0]
		if e.serving == next {
			next = e.tags[1]
		}
		// Only the app layer of next is missing: the other release holds the rest.
		if id := serverImageID(e.b, e.ref(next)); id != "" {
			if out, err := testenv.ServerDocker(e.b, "image", "rm", "-f", id); err != nil {
				e.b.Fatalf("remove %s from the server: %v\n%s", next, err, out)
			}
		}
		return next
	default:
		if e.serving == "" {
			e.prepare("first", "carebot")
			e.setupDeploy(e.tags[0])
		}
		return e.serving
	}
}

// setupDeploy serves tag with carebot, unmeasured.
func (e *benchEnv) setupDeploy(tag string) {
	r := e.runner(tag)
	defer r.Close()
	if err := r.Deploy(context.Background()); err != nil {
		e.b.Fatalf("setup: deploy %s: %v", tag, err)
	}
	e.serving = tag
}

// teardown stops the service and removes every image of it from the
// server, and the deploy folder.
func (e *benchEnv) teardown() {
	if _, err := os.Stat(filepath.Join(e.deployPath, "docker-compose.production.yml")); err == nil {
		if out, err := testenv.ServerDockerCompose(e.compose, e.deployPath, "docker-compose.production.yml", e.imageName, "down", "--volumes"); err != nil {
			e.b.Logf("compose down on the server: %v\n%s", err, out)
		}
	}
	testenv.ServerDocker(e.b, "rm", "-f", "carebot_bench")
	out, _ := testenv.ServerDocker(e.b, "image", "ls", "-q", "--no-trunc", e.imageName)
	for _, id := range strings.Fields(out) {
		testenv.ServerDocker(e.b, "image", "rm", "-f", id)
	}
	os.RemoveAll(e.deployPath)
	os.Remove(seedTar)
	e.serving = ""
}

func (e *benchEnv) removeLocalImages() {
	out, _ := exec.Command("docker", "image", "ls", "-q", "--no-trunc", e.imageName).Output()
	for _, id := range strings.Fields(string(out)) {
		exec.Command("docker", "image", "rm", "-f", id).Run()
	}
}

// carebot is a whole mage deploy: settings, dial, lock, ship, files,
// compose up, health, history. Its output is kept with the time of each
// line, for the stages of the last run.
func (e *benchEnv) carebot(r *Runner, method, tag, cs string, start time.Time) int64 {
	if r == nil {
		r = e.runner(tag)
	}
	lines := &timedLines{start: start}
	r.Out = lines
	// Give the heap left from building and earlier runs back first, so
	// the peak is this deploy's.
	debug.FreeOSMemory()
	resetPeakRSS()
	if e.s.verbose {
		d, err := r.Deployer(context.Background())
		if err != nil {
			e.b.Fatalf("carebot, %s: %v", cs, err)
		}
		d.Host = timedHost{d.Host, lines}
	}
	err := r.Deploy(context.Background())
	r.Close()
	if err != nil {
		e.b.Fatalf("carebot, %s: %v\n%s", cs, err, lines.text())
	}
	lines.mark("(done)")
	if e.s.verbose {
		fmt.Printf("%s, %s, %s:\n%s\n", method, e.link.name, cs, lines.text())
	}
	e.stages[method+"/"+e.link.key+"/"+cs] = lines.stages()
	return peakRSS()
}

// baseline is one of the registry-less ways, then the same compose up a
// deploy runs, then a wait for /health to report tag. It returns the
// largest RSS of the programs it ran on this machine.
func (e *benchEnv) baseline(method, tag string) int64 {
	ref := e.ref(tag)
	var peak int64
	rss := filepath.Join(e.work, "maxrss")
	run := func(name string, args ...string) {
		// Through time(1): Go starts a child on our memory (vfork), and
		// exec carries that memory's peak over to the child's rusage;
		// time's child starts from time's few pages. For a shell, the
		// figure is its largest child's.
		cmd := exec.Command("/usr/bin/time", append([]string{"-f", "%M", "-o", rss, name}, args...)...)
		if out, err := cmd.CombinedOutput(); err != nil {
			e.b.Fatalf("%s: %s %s: %v\n%s", method, name, strings.Join(args, " "), err, out)
		}
		data, err := os.ReadFile(rss)
		kb, perr := strconv.ParseInt(strings.TrimSpace(string(data)), 10, 64)
		if err != nil || perr != nil {
			e.b.Fatalf("%s: read the peak RSS of %s from time(1): %v %v", method, name, err, perr)
		}
		peak = max(peak, kb)
	}
	ssh := e.sshArgs()
	switch method {
	case "seed":
		local := filepath.Join(e.work, "image.tar")
		run("docker", "save", "-o", local, ref)
		run("scp", append(e.scpArgs(), local, "root@127.0.0.1:"+seedTar)...)
		os.Remove(local)
		run("ssh", append(ssh, "docker load -i "+seedTar+" && rm -f "+seedTar)...)
	case "pipe", "pipe-gzip":
		script := "docker save " + shell.Quote(ref)
		if method == "pipe-gzip" {
			script += " | gzip -1"
		}
		script += " | ssh " + shell.Join(ssh...) + " 'docker load'"
		run("bash", "-o", "pipefail", "-c", script)
	}
	composeCmd := "docker-compose"
	if e.compose.Name == "v2" {
		composeCmd = "docker compose"
	}
	run("ssh", append(ssh, fmt.Sprintf("cd %s && IMAGE_NAME=%s APP_PORT=%d IMAGE_TAG=%s %s -f docker-compose.production.yml up -d",
		shell.Quote(e.deployPath), shell.Quote(e.imageName), e.appPort, shell.Quote(tag), composeCmd))...)
	deadline := time.Now().Add(60 * time.Second)
	for {
		if v, _ := benchHealth(e.healthURL()); v == tag {
			return peak
		}
		if time.Now().After(deadline) {
			e.b.Fatalf("%s: /health did not report %s within 60s", method, tag)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// healthURL is the service's /health as the second engine publishes it
// on this machine: asked directly, not through the link, so polling it
// adds nothing to the bytes on the wire.
func (e *benchEnv) healthURL() string { return fmt.Sprintf("http://127.0.0.1:%d/health", e.appPort) }

// benchClient opens a connection per request: a kept-alive one could
// outlive the container it reached and hide the switch.
var benchClient = &http.Client{Timeout: time.Second, Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil}}

// benchHealth is the version /health reports, and whether it answered 200.
func benchHealth(url string) (string, bool) {
	resp, err := benchClient.Get(url)
	if err != nil {
		return "", false
	}
	defer resp.Body.Close()
	var s struct{ Version string }
	json.NewDecoder(resp.Body).Decode(&s)
	return s.Version, resp.StatusCode == http.StatusOK
}

// downtimeWatch asks /health every 50 ms and keeps the longest time from
// a 200 answer to the next one across failed asks; with no failed ask the
// downtime is 0.
type downtimeWatch struct {
	done chan struct{}
	res  chan time.Duration
}

func (e *benchEnv) watchDowntime() *downtimeWatch {
	w := &downtimeWatch{done: make(chan struct{}), res: make(chan time.Duration, 1)}
	url := e.healthURL()
	go func() {
		lastOK, failed, longest := time.Now(), false, time.Duration(0)
		tick := time.NewTicker(50 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-w.done:
				if failed {
					longest = max(longest, time.Since(lastOK))
				}
				w.res <- longest
				return
			case <-tick.C:
			}
			if _, ok := benchHealth(url); ok {
				if failed {
					longest = max(longest, time.Since(lastOK))
				}
				lastOK, failed = time.Now(), false
			} else {
				failed = true
			}
		}
	}()
	return w
}

func (w *downtimeWatch) stop() time.Duration { close(w.done); return <-w.res }

// diskWatch polls the size of the files a method may write on the
// server outside Docker's data root: the seed's tar, and carebot's
// staging folder (DEPLOY_PATH/.carebot/staging, where a deploy would
// stage layers; absent means 0). It keeps the peak.
type diskWatch struct {
	done chan struct{}
	res  chan int64
}

func (e *benchEnv) watchTempDisk() *diskWatch {
	w := &diskWatch{done: make(chan struct{}), res: make(chan int64, 1)}
	paths := []string{seedTar, filepath.Join(e.deployPath, ".carebot", "staging")}
	go func() {
		var peak int64
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			var n int64
			for _, p := range paths {
				n += treeSize(p)
			}
			peak = max(peak, n)
			select {
			case <-w.done:
				w.res <- peak
				return
			case <-tick.C:
			}
		}
	}()
	return w
}

func (w *diskWatch) stop() int64 { close(w.done); return <-w.res }

// treeSize is the bytes of the regular files at or under p; 0 if absent.
func treeSize(p string) int64 {
	var n int64
	filepath.WalkDir(p, func(_ string, d fs.DirEntry, err error) error {
		if err == nil && d.Type().IsRegular() {
			if info, err := d.Info(); err == nil {
				n += info.Size()
			}
		}
		return nil
	})
	return n
}

// timedHost passes every call on to the deploy's host and notes each
// command there with how long it took, as a "$ " line, for
// CAREBOT_BENCH_VERBOSE.
type timedHost struct {
	host.Host
	log *timedLines
}

func (h timedHost) Exec(ctx context.Context, cmd string, stdin io.Reader, stdout, stderr io.Writer) error {
	start := time.Now()
	err := h.Host.Exec(ctx, cmd, stdin, stdout, stderr)
	h.log.mark(fmt.Sprintf("$ %.2fs %s", time.Since(start).Seconds(), strings.Join(strings.Fields(cmd), " ")))
	return err
}

// WriteFile keeps the host's own (SFTP), which host.WriteFile looks for.
func (h timedHost) WriteFile(ctx context.Context, path string, data []byte, mode uint32) error {
	start := time.Now()
	err := host.WriteFile(ctx, h.Host, path, data, mode)
	h.log.mark(fmt.Sprintf("$ %.2fs (write %s)", time.Since(start).Seconds(), path))
	return err
}

// timedLines keeps what a deploy prints, each line with when it came.
type timedLines struct {
	mu    sync.Mutex
	start time.Time
	part  []byte
	lines []timedLine
}

type timedLine struct {
	at   time.Duration
	text string
}

func (t *timedLines) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.part = append(t.part, p...)
	for {
		i := bytes.IndexByte(t.part, '\n')
		if i < 0 {
			return len(p), nil
		}
		t.lines = append(t.lines, timedLine{time.Since(t.start), string(t.part[:i])})
		t.part = t.part[i+1:]
	}
}

func (t *timedLines) mark(s string) { t.Write([]byte(s + "\n")) }

func (t *timedLines) text() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	var s strings.Builder
	for _, l := range t.lines {
		fmt.Fprintf(&s, "%6.2fs %s\n", l.at.Seconds(), l.text)
	}
	return s.String()
}

// resetPeakRSS starts a new peak-RSS measurement of this process (Linux:
// writing 5 to clear_refs resets VmHWM).
func resetPeakRSS() { os.WriteFile("/proc/self/clear_refs", []byte("5"), 0) }

func peakRSS() int64 {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return n
		}
	}
	return 0
}

// BenchmarkBackupRestore times Backup and Restore of a 100 MB data folder
// on this machine and over SSH, with the service running (so the pause,
// stop and health check are part of it). Run with `mage bench`.
func BenchmarkBackupRestore(b *testing.B) {
	type result struct {
		host             string
		backup, restore  time.Duration
		archive, dataLen int64
	}
	var results []result
	for _, kind := range []string{"this machine", "SSH"} {
		var d deployment
		if kind == "this machine" {
			testenv.NeedEngine(b)
			d = newProject(b, "bkbench")
		} else {
			rp := newRemoteProject(b, "bkbench", testenv.NewCompose(b, "v1"))
			rp.createServerEnv()
			d = rp
		}
		d.buildTag("v1", nil)
		ctx := context.Background()
		if err := d.runner("v1").Deploy(ctx); err != nil {
			b.Fatal(err)
		}
		// 100 MB: half incompressible, half text, in 20 files beside the database.
		data := filepath.Join(d.deployPath(), "data")
		chunk := make([]byte, 5<<20)
		for i := 0; i < 20; i++ {
			if i%2 == 0 {
				rand.Read(chunk)
			} else {
				copy(chunk, bytes.Repeat([]byte("carebot record line\n"), len(chunk)/20))
			}
			if err := os.WriteFile(filepath.Join(data, fmt.Sprintf("file-%02d.bin", i)), chunk, 0o644); err != nil {
				b.Fatal(err)
			}
		}
		r := d.runner("v1")
		start := time.Now()
		bk, err := r.Backup(ctx, false)
		if err != nil {
			b.Fatal(err)
		}
		backupTime := time.Since(start)
		start = time.Now()
		if err := d.runner("v1").Restore(ctx, bk.Name, false); err != nil {
			b.Fatal(err)
		}
		results = append(results, result{kind, backupTime, time.Since(start), bk.Size, 100 << 20})
	}
	fmt.Printf("\nbackup and restore of a 100 MB data folder, service running\n\n")
	fmt.Printf("| host | backup | restore (verify, safety backup, stop, swap, start, health) | archive |\n|---|---:|---:|---:|\n")
	for _, r := range results {
		fmt.Printf("| %s | %.1f s | %.1f s | %s |\n", r.host, r.backup.Seconds(), r.restore.Seconds(), text.Bytes(r.archive))
	}
	fmt.Println()
}
