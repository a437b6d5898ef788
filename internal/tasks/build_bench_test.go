//go:build linux

package tasks

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/carebot/carebot/internal/config"
	"github.com/carebot/carebot/internal/engine"
	"github.com/carebot/carebot/internal/testenv"
	"github.com/carebot/carebot/internal/text"
)

// BenchmarkBuild times carebot's build (Runner.Build: BuildKit through the
// Engine API, the context served over a session) beside
// `DOCKER_BUILDKIT=1 docker build` with the 20.10 CLI, on the same engine,
// the same Dockerfile and the same context, in the same run:
//
//   - the sample service: this repository's Dockerfile.production and
//     .dockerignore over the binary `Runner.Binary` compiled, copied into a
//     folder of its own (the repository's build/carebot is not touched);
//   - an interpreter project: a "deps" stage whose RUN fills a cache mount
//     with ~100 MB of downloads (dd from /dev/urandom, as pip would fetch
//     wheels) and installs them into /deps (a copy into the layer, as pip
//     unpacks into site-packages), and a final stage that copies /deps and
//     a small app/ folder.
//
// Cold is a build with nothing of it in the build cache; warm is the
// rebuild after one file of the app changed. The interpreter project is
// also rebuilt after requirements.txt changed: its deps RUN runs again and
// finds what it downloaded in the cache mount. It prints a table of
// medians and the slowest steps of each builder's last run. Run it with
//
//	go test -run '^$' -bench '^BenchmarkBuild$' -benchtime 1x -timeout 25m ./internal/tasks/
//
// CAREBOT_BENCH_RUNS (3) and CAREBOT_BENCH_OUT apply (mage bench runs it). Each build has its own salt (a RUN echo
// line) and its own cache-mount id, so the builders never share a cache
// entry; the images and the build cache records the benchmark made are
// removed afterwards, nothing else.
func BenchmarkBuild(b *testing.B) {
	settings := loadBenchSettings(b)
	runs := settings.runs
	testenv.NeedEngine(b)
	if _, err := os.Stat(buildBenchDockerCLI); err != nil {
		b.Fatalf("the baseline is the docker CLI that builds with BuildKit itself (20.10: DOCKER_BUILDKIT=1, no buildx needed): %v", err)
	}
	busybox, err := os.ReadFile("/bin/busybox")
	if err != nil {
		b.Fatalf("the interpreter project needs a static busybox (apt-get install busybox-static): %v", err)
	}
	bb := &buildBench{b: b, busybox: busybox}
	bb.binary = bb.compile()
	ctx := context.Background()
	e, err := engine.Connect(ctx)
	if err != nil {
		b.Fatal(err)
	}
	defer e.Close()
	bb.removeImages(e) // what a killed run left
	b.Cleanup(func() { bb.removeImages(e) })
	cacheBefore, _ := e.BuildCacheSize(ctx)
	idsBefore := buildCacheIDs(b)
	load := loadAverage()

	start := time.Now()
	samples := map[string][]float64{} // case/step/builder: seconds
	for _, cs := range buildBenchCases {
		for run := 0; run < runs; run++ {
			// Runs go round the builders, so a slow minute of this shared
			// machine spreads over both.
			for _, builder := range buildBenchBuilders {
				p := bb.project(cs, builder, run)
				for _, step := range cs.steps {
					k := cs.key + "/" + step + "/" + builder
					samples[k] = append(samples[k], p.build(step).Seconds())
				}
			}
		}
	}
	took := time.Since(start)
	// Measured without the images: while they stand, the engine counts
	// the cache entries they share as theirs.
	bb.removeImages(e)
	cacheAfter, _ := e.BuildCacheSize(ctx)
	report := bb.report(samples, runs, took, load, cacheAfter-cacheBefore)
	fmt.Print("\n" + report)
	writeSection(b, settings.out, "## Build benchmark", report)
	pruneNewBuildCache(b, idsBefore)
}

// buildCacheIDs are the engine's build cache records.
func buildCacheIDs(b *testing.B) map[string]bool {
	out, err := exec.Command(buildBenchDockerCLI, "system", "df", "-v", "--format", "{{range .BuildCache}}{{.ID}} {{end}}").Output()
	if err != nil {
		b.Fatalf("docker system df: %v", err)
	}
	ids := map[string]bool{}
	for _, id := range strings.Fields(string(out)) {
		ids[id] = true
	}
	return ids
}

// pruneNewBuildCache removes the build cache records the benchmark made
// (every record not there before it), and nothing else of the engine's.
func pruneNewBuildCache(b *testing.B, before map[string]bool) {
	// A record another one was made from goes only once that one has
	// gone: pass again while a pass removes something.
	for left := -1; ; {
		var ids []string
		for id := range buildCacheIDs(b) {
			if !before[id] {
				ids = append(ids, id)
			}
		}
		if len(ids) == 0 || len(ids) == left {
			return
		}
		left = len(ids)
		for _, id := range ids {
			// one id per call: the engine takes one value per filter
			if out, err := exec.Command(buildBenchDockerCLI, "builder", "prune", "-f", "--filter", "id="+id).CombinedOutput(); err != nil {
				b.Errorf("prune the benchmark's build cache record %s: %v\n%s", id, err, out)
				return
			}
		}
	}
}

// The docker CLI of the baseline: 20.10 builds with BuildKit itself when
// DOCKER_BUILDKIT=1 (a newer CLI hands BuildKit builds to buildx).
const buildBenchDockerCLI = "/usr/bin/docker"

// The images of each builder; every build tags name:<case>-<run>-<step>
// and name:latest, as a carebot build does.
const buildBenchImage = "carebot-buildbench"

var buildBenchBuilders = []string{"carebot", "docker"}

type buildBenchCase struct {
	key, name string
	steps     []string // cold first; then each a change and a rebuild
}

var buildBenchCases = []buildBenchCase{
	{"sample", "sample service (Dockerfile.production: one COPY of the 11 MB binary)", []string{"cold", "warm"}},
	{"deps", "interpreter project (deps stage: ~100 MB into a cache mount, installed to /deps; app/ copied last)", []string{"cold", "warm", "deps"}},
}

type buildBench struct {
	b       *testing.B
	busybox []byte
	binary  []byte              // the sample service, as Runner.Binary compiled it
	last    map[string][]string // case/step/builder: the slowest steps of the last build
}

// compile is Runner.Binary over this repository (it writes the
// repository's build/carebot, as `mage build` does); the benchmark builds
// a copy of what it wrote.
func (bb *buildBench) compile() []byte {
	root := repoRoot(bb.b)
	cfg, err := config.Load(root, append(os.Environ(), "IMAGE_NAME="+buildBenchImage+"-carebot", "IMAGE_TAG=compile"))
	if err != nil {
		bb.b.Fatal(err)
	}
	r := &Runner{Cfg: cfg, Out: io.Discard}
	defer r.Close()
	if err := r.Binary(context.Background()); err != nil {
		bb.b.Fatal(err)
	}
	data, err := os.ReadFile(filepath.Join(root, BinaryPath))
	if err != nil {
		bb.b.Fatal(err)
	}
	return data
}

func (bb *buildBench) removeImages(e *engine.Engine) {
	ctx := context.Background()
	for _, builder := range buildBenchBuilders {
		imgs, _ := e.ImagesOf(ctx, buildBenchImage+"-"+builder)
		for _, im := range imgs {
			_ = e.RemoveImage(ctx, im.ID)
		}
	}
}

// buildBenchProject is one builder's project for one run: a folder of its
// own, whose Dockerfile no other build has seen.
type buildBenchProject struct {
	bb               *buildBench
	cs               buildBenchCase
	builder, dir     string
	dockerfile, salt string
	run              int
}

// project writes the case's context into a new folder. The sample service
// is the repository's Dockerfile.production, .dockerignore and compose file
// with the binary; it has no RUN to salt, so its cold build is a no-cache
// one (NoCache, --no-cache). The interpreter project's Dockerfile has a
// salt line after its base layer (busybox, standing for a base image that
// is already pulled) and a cache-mount id of its own.
func (bb *buildBench) project(cs buildBenchCase, builder string, run int) *buildBenchProject {
	b := bb.b
	p := &buildBenchProject{bb: bb, cs: cs, builder: builder, run: run, dir: b.TempDir(),
		salt: fmt.Sprintf("buildbench-%s-%s-%d-%d", cs.key, builder, run, time.Now().UnixNano())}
	root := repoRoot(b)
	compose, err := os.ReadFile(filepath.Join(root, "docker-compose.production.yml"))
	if err != nil {
		b.Fatal(err)
	}
	files := map[string]string{"docker-compose.production.yml": string(compose)}
	switch cs.key {
	case "sample":
		p.dockerfile = "Dockerfile.production"
		for _, name := range []string{"Dockerfile.production", ".dockerignore"} {
			data, err := os.ReadFile(filepath.Join(root, name))
			if err != nil {
				b.Fatal(err)
			}
			files[name] = string(data)
		}
		files[BinaryPath] = string(bb.binary)
	case "deps":
		p.dockerfile = "docker/Dockerfile"
		files["docker/Dockerfile"] = strings.ReplaceAll(buildBenchDockerfile, "SALT", p.salt)
		files["docker/busybox"] = string(bb.busybox)
		files["docker/pip-install.sh"] = buildBenchPipInstall
		files["requirements.txt"] = buildBenchRequirements
		for i := 0; i < 12; i++ {
			files[fmt.Sprintf("app/module_%02d.py", i)] = strings.Repeat(fmt.Sprintf("def handler_%d(update):\n    return update\n\n", i), 40)
		}
		files["app/main.py"] = "import sys\nprint('version 1')\n"
	}
	for name, body := range files {
		f := filepath.Join(p.dir, name)
		if err := os.MkdirAll(filepath.Dir(f), 0o755); err != nil {
			b.Fatal(err)
		}
		if err := os.WriteFile(f, []byte(body), 0o755); err != nil {
			b.Fatal(err)
		}
	}
	return p
}

// The interpreter project. The deps RUN reads requirements.txt; its cache
// mount is pip's download cache. The final stage starts from the same base
// (as a python:slim image would be both stages' base).
const buildBenchDockerfile = `FROM scratch AS base
COPY docker/busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
RUN echo SALT

FROM base AS deps
COPY docker/pip-install.sh requirements.txt /tmp/
RUN --mount=type=cache,id=SALT,target=/root/.cache/pip sh /tmp/pip-install.sh /tmp/requirements.txt

FROM base
COPY --from=deps /deps /deps
COPY app/ /app/
ARG VERSION=dev
ENV APP_VERSION=$VERSION
WORKDIR /app
ENTRYPOINT ["/bin/sh", "-c", "cat /app/main.py"]
`

// buildBenchPipInstall stands for pip install -r: a package not in the
// download cache is "downloaded" (random bytes, which compress as wheels
// do, hardly at all), then every package is installed: copied from the
// cache mount into /deps, which the layer keeps.
const buildBenchPipInstall = `set -e
mkdir -p /root/.cache/pip /deps
fetched=0; cached=0
while read -r pkg mb; do
	case "$pkg" in ''|'#'*) continue ;; esac
	whl=/root/.cache/pip/$pkg.whl
	if [ -f "$whl" ]; then
		cached=$((cached+1))
	else
		dd if=/dev/urandom of="$whl.part" bs=1M count="$mb" 2>/dev/null
		mv "$whl.part" "$whl"
		fetched=$((fetched+1))
	fi
	mkdir -p "/deps/$pkg"
	cp "$whl" "/deps/$pkg/"
done < "$1"
echo "PIP downloaded $fetched, from the cache $cached"
`

// ~100 MB of packages: name==version, then MB.
const buildBenchRequirements = `numpy==1.26.4 18
pandas==2.2.2 13
scipy==1.13.1 30
pyarrow==16.1.0 20
sqlalchemy==2.0.30 3
aiohttp==3.9.5 2
pydantic_core==2.18.4 2
cryptography==42.0.8 4
lxml==5.2.2 5
pillow==10.3.0 4
regex==2024.5.15 1
python_telegram_bot==21.3 1
`

// build makes step's change (none for cold) and builds with the project's
// builder; it returns the build's wall time.
func (p *buildBenchProject) build(step string) time.Duration {
	b := p.bb.b
	switch step {
	case "warm":
		// One file of the app layer changes. For the sample service that is
		// the binary (its image is that one file): a byte appended, which
		// changes its content as a new release's would without compiling
		// again (compiling is not part of either build).
		if p.cs.key == "sample" {
			appendFile(b, filepath.Join(p.dir, BinaryPath), []byte{0})
		} else {
			appendFile(b, filepath.Join(p.dir, "app", "main.py"), []byte("print('version 2')\n"))
		}
	case "deps":
		// A new small dependency: the deps RUN runs again, downloads that
		// one (1 MB) and finds the others in the cache mount.
		appendFile(b, filepath.Join(p.dir, "requirements.txt"), []byte("tenacity==8.3.0 1\n"))
	}
	tag := fmt.Sprintf("%s-%d-%s", p.cs.key, p.run, step)
	name := buildBenchImage + "-" + p.builder
	noCache := p.cs.key == "sample" && step == "cold"
	cfg, err := config.Load(p.dir, append(os.Environ(), "IMAGE_NAME="+name, "IMAGE_TAG="+tag, "DOCKERFILE="+p.dockerfile))
	if err != nil {
		b.Fatal(err)
	}
	out := &bytes.Buffer{}
	var took time.Duration
	if p.builder == "carebot" {
		// -v: BuildKit's plain progress, the same lines docker build
		// --progress=plain prints, read below for the slowest steps.
		r := &Runner{Cfg: cfg, Out: out, Verbose: true}
		start := time.Now()
		_, err := r.Build(context.Background(), BuildOptions{NoCache: noCache})
		took = time.Since(start)
		r.Close()
		if err != nil {
			b.Fatalf("carebot, %s %s: %v\n%s", p.cs.key, step, err, out)
		}
		if bytes.Contains(out.Bytes(), []byte("classic builder")) {
			b.Fatalf("carebot, %s %s: the build fell back to the classic builder:\n%s", p.cs.key, step, out)
		}
	} else {
		// What carebot's build sends too: both tags, VERSION and COMMIT,
		// the OCI labels.
		args := []string{"build", "--progress=plain", "-f", p.dockerfile, "-t", cfg.Image(), "-t", name + ":latest",
			"--build-arg", "VERSION=" + cfg.ImageTag, "--build-arg", "COMMIT=" + cfg.Commit}
		labels := ociLabels(cfg.ImageName, cfg.ImageTag, cfg.Commit, time.Now())
		keys := make([]string, 0, len(labels))
		for k := range labels {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			args = append(args, "--label", k+"="+labels[k])
		}
		if noCache {
			args = append(args, "--no-cache")
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		cmd := exec.CommandContext(ctx, buildBenchDockerCLI, append(args, ".")...)
		cmd.Dir, cmd.Stdout, cmd.Stderr = p.dir, out, out
		cmd.Env = append(os.Environ(), "DOCKER_BUILDKIT=1")
		start := time.Now()
		err := cmd.Run()
		took = time.Since(start)
		cancel()
		if err != nil {
			b.Fatalf("docker build, %s %s: %v\n%s", p.cs.key, step, err, out)
		}
	}
	if p.cs.key == "deps" && step != "warm" && !strings.Contains(out.String(), "PIP downloaded") {
		b.Fatalf("%s, %s %s: the deps RUN did not run:\n%s", p.builder, p.cs.key, step, out)
	}
	if p.cs.key == "deps" && step == "warm" && strings.Contains(out.String(), "PIP downloaded") {
		b.Fatalf("%s, %s %s: an app change ran the deps RUN again:\n%s", p.builder, p.cs.key, step, out)
	}
	if p.bb.last == nil {
		p.bb.last = map[string][]string{}
	}
	// The salt makes every step's name long and different: it is left out.
	p.bb.last[p.cs.key+"/"+step+"/"+p.builder] = slowestSteps(strings.ReplaceAll(out.String(), p.salt, "SALT"), 3)
	if v := os.Getenv("CAREBOT_BENCH_VERBOSE"); v != "" {
		fmt.Printf("%s, %s %s, run %d: %.2f s\n%s\n", p.builder, p.cs.key, step, p.run+1, took.Seconds(), out)
	}
	return took
}

var (
	plainStep = regexp.MustCompile(`^#(\d+) (.*)$`)
	plainDone = regexp.MustCompile(`^#(\d+) DONE ([0-9.]+)s$`)
	plainSent = regexp.MustCompile(`^#(\d+) transferring context: (\S+)`)
	plainPip  = regexp.MustCompile(`PIP downloaded \d+, from the cache \d+`)
)

// slowestSteps reads BuildKit's plain progress (the same from both
// builders: "#7 [deps 3/3] RUN …" first, "#7 DONE 4.1s" last, times the
// engine measured) and returns how much of the context was sent, then the
// n steps that took longest, with what the deps RUN said.
func slowestSteps(out string, n int) []string {
	type step struct {
		name string
		secs float64
	}
	names := map[string]string{}
	var done []step
	sent := "?"
	pip := plainPip.FindString(out)
	for _, l := range strings.Split(out, "\n") {
		if m := plainDone.FindStringSubmatch(l); m != nil {
			s, _ := strconv.ParseFloat(m[2], 64)
			done = append(done, step{names[m[1]], s})
			continue
		}
		if m := plainSent.FindStringSubmatch(l); m != nil && names[m[1]] == "[internal] load build context" {
			sent = m[2]
		}
		if m := plainStep.FindStringSubmatch(l); m != nil {
			if _, ok := names[m[1]]; !ok {
				names[m[1]] = m[2]
			}
		}
	}
	sort.SliceStable(done, func(i, j int) bool { return done[i].secs > done[j].secs })
	l := []string{"context sent " + sent}
	for _, s := range done[:min(n, len(done))] {
		name := s.name
		if strings.Contains(name, "pip-install.sh") {
			name = "[deps 2/2] RUN --mount=type=cache … pip-install.sh"
			if pip != "" {
				name += " (" + pip + ")"
			}
		} else if len(name) > 50 {
			name = name[:47] + "…"
		}
		l = append(l, fmt.Sprintf("%s %.1f s", strings.ReplaceAll(name, "|", "\\|"), s.secs))
	}
	return l
}

// report is the results as markdown: what was measured, a table of
// medians (min–max), and where the time went in each builder's last run.
func (bb *buildBench) report(samples map[string][]float64, runs int, took time.Duration, load string, cacheGrew int64) string {
	var w strings.Builder
	cmd := func(name string, args ...string) string {
		out, err := exec.Command(name, args...).CombinedOutput()
		if err != nil {
			return "?"
		}
		return strings.TrimSpace(strings.SplitN(string(out), "\n", 2)[0])
	}
	fmt.Fprintf(&w, "## Build benchmark, %s\n\n", time.Now().UTC().Format("2006-01-02 15:04 UTC"))
	fmt.Fprintf(&w, "- this machine: %d CPUs, Linux %s, %s; engine Docker %s; baseline `DOCKER_BUILDKIT=1 docker build` with the docker CLI %s\n",
		runtime.NumCPU(), cmd("uname", "-r"), runtime.Version(), cmd(buildBenchDockerCLI, "version", "--format", "{{.Server.Version}}"),
		cmd(buildBenchDockerCLI, "version", "--format", "{{.Client.Version}}"))
	fmt.Fprintf(&w, "- %d run(s) per cell, in turns across the builders, each in a folder of its own with its own salt and cache-mount id; "+
		"the benchmark took %s; load average at the start %s, at the end %s; the build cache grew by %s (the benchmark's records are pruned after)\n",
		runs, took.Round(time.Second), load, loadAverage(), text.Bytes(cacheGrew))
	fmt.Fprintf(&w, "- wall time of the build, median (min–max): carebot's Runner.Build (connect, session, build, image ID); the docker CLI process\n\n")
	cell := func(k string) string {
		xs := samples[k]
		if len(xs) == 0 {
			return "–"
		}
		lo, hi := xs[0], xs[0]
		for _, x := range xs {
			lo, hi = min(lo, x), max(hi, x)
		}
		if len(xs) == 1 {
			return fmt.Sprintf("%.2f s", xs[0])
		}
		return fmt.Sprintf("%.2f s (%.2f–%.2f)", median(xs), lo, hi)
	}
	fmt.Fprintf(&w, "| case | carebot cold | docker build cold | carebot warm | docker build warm |\n|---|---:|---:|---:|---:|\n")
	for _, cs := range buildBenchCases {
		fmt.Fprintf(&w, "| %s | %s | %s | %s | %s |\n", cs.name,
			cell(cs.key+"/cold/carebot"), cell(cs.key+"/cold/docker"), cell(cs.key+"/warm/carebot"), cell(cs.key+"/warm/docker"))
		if contains(cs.steps, "deps") {
			fmt.Fprintf(&w, "| … rebuilt after requirements.txt changed (a 1 MB package added: the deps RUN runs again, 1 download, 12 from the cache mount) | – | – | %s | %s |\n",
				cell(cs.key+"/deps/carebot"), cell(cs.key+"/deps/docker"))
		}
	}
	fmt.Fprintf(&w, "\ncold: the sample service with NoCache / --no-cache (no RUN to salt); the interpreter project with a new salt after its busybox base and a new cache-mount id. "+
		"warm: after one app file changed (the sample's binary: a byte appended; app/main.py).\n")
	fmt.Fprintf(&w, "\nwhere the time goes: how much of the context each builder's last build sent, and its three slowest steps, as BuildKit's plain progress reports them (the engine's own times):\n\n")
	fmt.Fprintf(&w, "| case | build | carebot | docker build |\n|---|---|---|---|\n")
	for _, cs := range buildBenchCases {
		for _, step := range cs.steps {
			fmt.Fprintf(&w, "| %s | %s | %s | %s |\n", cs.key, step,
				strings.Join(bb.last[cs.key+"/"+step+"/carebot"], "; "), strings.Join(bb.last[cs.key+"/"+step+"/docker"], "; "))
		}
	}
	w.WriteString("\n")
	return w.String()
}
