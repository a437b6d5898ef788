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
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/carebot/carebot/internal/config"
	"github.com/carebot/carebot/internal/engine"
	"github.com/carebot/carebot/internal/imagefs"
	"github.com/carebot/carebot/internal/testenv"
	"github.com/carebot/carebot/internal/wsl/wsltest"
)

// A user's own Dockerfile, as BuildKit users write them: a dependencies
// stage with a cache mount, a secret mount, a stage that leaks the secret
// (to see inspect catch it), and a final stage. FROM scratch with busybox,
// since nothing can be pulled here.
const userDockerfile = `FROM scratch AS base
COPY docker/busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
RUN echo SALT

FROM base AS deps
ARG NOISE=0
RUN --mount=type=cache,id=SALT,target=/cache sh -c 'if [ -f /cache/stamp ]; then echo "CACHE-HIT $(cat /cache/stamp)"; else echo CACHE-MISS; echo "noise-$NOISE" > /cache/stamp; fi; cp /cache/stamp /deps-stamp'
RUN --mount=type=secret,id=pip_token sh -c 'echo "the secret is $(cat /run/secrets/pip_token)"; echo "secret length $(wc -c < /run/secrets/pip_token)"'

FROM base AS leaky
RUN --mount=type=secret,id=pip_token cp /run/secrets/pip_token /leak

FROM deps AS final
COPY . /app/
RUN echo FINAL-STAGE-RAN
`

const failingDockerfile = `FROM scratch
COPY docker/busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
RUN sh -c 'for i in $(seq 1 40); do echo "step-output-$i"; done; exit 3'
`

// The secret's value: long enough to be found, never to be seen.
const pipToken = "pip-s3cr3t-0123456789abcdef"

// userProject is a project of its own (not this repository): the
// Dockerfiles above in docker/, an app file, a .env with the build's
// settings, and files the Dockerfile's own .dockerignore keeps out.
type userProject struct {
	t    *testing.T
	dir  string
	name string
	out  *bytes.Buffer
}

func newUserProject(t *testing.T, name string) *userProject {
	t.Helper()
	testenv.NeedEngine(t)
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Fatalf("these tests need a static busybox (apt-get install busybox-static; scripts/test.sh installs it): %v", err)
	}
	dir := t.TempDir()
	compose, err := os.ReadFile(filepath.Join(repoRoot(t), "docker-compose.production.yml"))
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]string{
		"docker/busybox":                 string(bb),
		"docker/Dockerfile":              strings.ReplaceAll(userDockerfile, "SALT", fmt.Sprintf("salt-%s-%d", name, time.Now().UnixNano())),
		"docker/Dockerfile.fail":         failingDockerfile,
		"docker/Dockerfile.syntax":       "# syntax=docker/dockerfile:1\nFROM scratch\nCOPY app.txt /app/\n",
		"docker/Dockerfile.dockerignore": "*.log\n.env\n",
		".dockerignore":                  "app.txt\n", // the Dockerfile's own ignore file wins: app.txt is sent
		"docker-compose.production.yml":  string(compose),
		"app.txt":                        "version 1\n",
		"notes.log":                      "kept out by docker/Dockerfile.dockerignore\n",
		".env":                           "BUILD_SECRETS=pip_token\npip_token=" + pipToken + "\nBUILD_ARG_NOISE=1\n",
	}
	for name, body := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	p := &userProject{t: t, dir: dir, name: "carebot-bk-" + name, out: &bytes.Buffer{}}
	t.Cleanup(func() {
		ctx := context.Background()
		e, err := engine.Connect(ctx)
		if err != nil {
			return
		}
		defer e.Close()
		imgs, _ := e.ImagesOf(ctx, p.name)
		for _, im := range imgs {
			_ = e.RemoveImage(ctx, im.ID)
		}
	})
	return p
}

// runner is a Runner over the project, its build output shown line by line
// (-v) into p.out, with env added to the environment.
func (p *userProject) runner(verbose bool, env ...string) *Runner {
	p.t.Helper()
	env = append(append(os.Environ(), "IMAGE_NAME="+p.name, "IMAGE_TAG=t1", "DOCKERFILE=docker/Dockerfile"), env...)
	cfg, err := config.Load(p.dir, env)
	if err != nil {
		p.t.Fatal(err)
	}
	p.out.Reset()
	r := &Runner{Cfg: cfg, Out: io.MultiWriter(p.out, testWriter{p.t}), Verbose: verbose}
	p.t.Cleanup(func() { r.Close() })
	return r
}

// files lists every file of image id, from its layers.
func (p *userProject) files(r *Runner, id string) map[string]bool {
	p.t.Helper()
	ctx := context.Background()
	e, err := r.Engine(ctx)
	if err != nil {
		p.t.Fatal(err)
	}
	rc, err := e.Save(ctx, id)
	if err != nil {
		p.t.Fatal(err)
	}
	defer rc.Close()
	c, err := imagefs.Read(rc)
	if err != nil {
		p.t.Fatal(err)
	}
	m := map[string]bool{}
	for _, f := range c.Files {
		m[f.Path] = true
	}
	return m
}

func (p *userProject) saw(s string) bool { return strings.Contains(p.out.String(), s) }

// contextSent is the most a step of the last build reported sending of the
// context ("#3 transferring context: 2.00MB 0.1s done").
func (p *userProject) contextSent() int64 {
	var most int64
	for _, m := range regexp.MustCompile(`transferring context: ([0-9.]+)(B|kB|MB|GB)`).FindAllStringSubmatch(p.out.String(), -1) {
		n, _ := strconv.ParseFloat(m[1], 64)
		n *= map[string]float64{"B": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9}[m[2]]
		most = max(most, int64(n))
	}
	return most
}

// ran reports whether a step printed a line starting with s (plain
// progress: "#7 0.412 CACHE-HIT ..."), not only showed it in its command.
func (p *userProject) ran(s string) bool {
	return regexp.MustCompile(`(?m)^#\d+ \d+\.\d+ ` + regexp.QuoteMeta(s)).MatchString(p.out.String())
}

// TestBuildKitUserDockerfile builds a user's Dockerfile with cache and
// secret mounts through BuildKit: the cache mount is found again by the next
// build, a one-file change reuses the dependencies step, the secret reaches
// the build but not its output, layers, history or config (inspect looks),
// a stage that copies it out is caught by inspect, BUILD_TARGET builds only
// the stages it needs, and the Dockerfile's own .dockerignore is honoured.
func TestBuildKitUserDockerfile(t *testing.T) {
	p := newUserProject(t, "user")
	ctx := context.Background()

	r := p.runner(true)
	id1, err := r.Build(ctx, BuildOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if p.saw("classic builder") {
		t.Fatalf("the build fell back to the classic builder:\n%s", p.out)
	}
	for _, want := range []string{"CACHE-MISS", "the secret is ****", "secret length " + strconv.Itoa(len(pipToken)), "FINAL-STAGE-RAN"} {
		if !p.ran(want) {
			t.Errorf("first build: output lacks %q", want)
		}
	}
	if p.saw(pipToken) {
		t.Errorf("the secret's value is in the build output")
	}
	files := p.files(r, id1)
	if !files["/app/app.txt"] || !files["/deps-stamp"] || files["/app/notes.log"] || files["/app/.env"] {
		t.Errorf("files: app.txt %v (the context's .dockerignore must not apply), deps-stamp %v, notes.log %v and .env %v (docker/Dockerfile.dockerignore keeps them out)",
			files["/app/app.txt"], files["/deps-stamp"], files["/app/notes.log"], files["/app/.env"])
	}

	// inspect: no secret anywhere; history too.
	rep, err := r.Inspect(ctx)
	if err != nil {
		t.Fatalf("inspect: %v", err)
	}
	if !p.saw("the value of no build secret (1 looked for)") {
		t.Errorf("inspect did not say it looked for the secret:\n%s", p.out)
	}
	for _, s := range rep.Steps {
		if strings.Contains(s.CreatedBy, pipToken) {
			t.Errorf("history holds the secret: %s", s.CreatedBy)
		}
	}

	// The dependencies step runs again (its ARG changed) and finds what the
	// first build left in the cache mount.
	r = p.runner(true, "BUILD_ARG_NOISE=2")
	if _, err := r.Build(ctx, BuildOptions{}); err != nil {
		t.Fatal(err)
	}
	if !p.ran("CACHE-HIT noise-1") {
		t.Errorf("second build did not find the cache mount's content:\n%s", p.out)
	}

	// Another project builds in between; then one app file changes here:
	// the dependencies step is not run again, and only the changed file
	// crosses (BuildKit kept this folder's files: not the 2 MB busybox).
	other := newUserProject(t, "other")
	if _, err := other.runner(false).Build(ctx, BuildOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(p.dir, "app.txt"), []byte("version 2\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	r = p.runner(true, "BUILD_ARG_NOISE=2")
	if _, err := r.Build(ctx, BuildOptions{}); err != nil {
		t.Fatal(err)
	}
	if p.ran("CACHE-") || !p.ran("FINAL-STAGE-RAN") {
		t.Errorf("after a one-file change the dependencies step ran again (or the final stage did not):\n%s", p.out)
	}
	if sent := p.contextSent(); sent > 100_000 {
		t.Errorf("after a one-file change the build sent %d bytes of context, want only the change", sent)
	}

	// BUILD_TARGET: only the stages deps needs.
	r = p.runner(true, "BUILD_TARGET=deps")
	id, err := r.Build(ctx, BuildOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if p.saw("FINAL-STAGE-RAN") { // not even named: the stage is not in the build
		t.Error("BUILD_TARGET=deps ran the final stage")
	}
	if files := p.files(r, id); !files["/deps-stamp"] || files["/app/app.txt"] {
		t.Errorf("BUILD_TARGET=deps image: deps-stamp %v, app.txt %v", files["/deps-stamp"], files["/app/app.txt"])
	}

	// A stage that copies the secret into a layer: inspect names the file.
	r = p.runner(true, "BUILD_TARGET=leaky")
	if _, err := r.Build(ctx, BuildOptions{}); err != nil {
		t.Fatal(err)
	}
	_, err = r.Inspect(ctx)
	if err == nil || !strings.Contains(err.Error(), "/leak (holds the value of build secret pip_token)") {
		t.Errorf("inspect of an image holding the secret: %v, want /leak named", err)
	}
	if err != nil && strings.Contains(err.Error(), pipToken) {
		t.Error("inspect's error shows the secret")
	}
}

// TestBuildKitFailingStep: a RUN that fails names its step, and its whole
// output is shown, also when the build was quiet (not a terminal, not -v,
// not CI).
func TestBuildKitFailingStep(t *testing.T) {
	p := newUserProject(t, "fail")
	t.Setenv("CI", "")
	r := p.runner(false, "DOCKERFILE=docker/Dockerfile.fail")
	_, err := r.Build(context.Background(), BuildOptions{})
	if err == nil {
		t.Fatal("a failing RUN built")
	}
	msg := err.Error()
	if !strings.Contains(msg, "build failed at [") || !strings.Contains(msg, "RUN sh -c") || !strings.Contains(msg, "exit code: 3") {
		t.Errorf("error %q does not name the step and its exit code", msg)
	}
	for _, want := range []string{"step-output-1\n", "step-output-20\n", "step-output-40\n"} {
		if !p.saw(want) {
			t.Errorf("output lacks %q:\n%s", want, p.out)
		}
	}
}

// TestBuildKitSyntaxLine: a "# syntax=" line needs a registry; the error
// says so in one line, with the fix.
func TestBuildKitSyntaxLine(t *testing.T) {
	p := newUserProject(t, "syntax")
	r := p.runner(true, "DOCKERFILE=docker/Dockerfile.syntax")
	_, err := r.Build(context.Background(), BuildOptions{})
	if err == nil {
		t.Fatal("a Dockerfile with a # syntax= line built without a registry")
	}
	if msg := err.Error(); !strings.Contains(msg, `"# syntax=docker/dockerfile:1"`) || !strings.Contains(msg, "remove that line") || strings.Contains(msg, "\n") {
		t.Errorf("error %q: want one line naming the syntax line and the fix", msg)
	}
}

// TestBuildKitThroughWSL: the same user Dockerfile built with the engine
// reached as on Windows (a fake wsl running docker system dial-stdio): the
// BuildKit session, its files and the secret cross that path too.
func TestBuildKitThroughWSL(t *testing.T) {
	fake := wsltest.Install(t)
	p := newUserProject(t, "wsl")
	r := p.runner(true, "DOCKER_VIA_WSL=1", "WSL_DISTRO=Ubuntu-22.04")
	if _, err := r.Build(context.Background(), BuildOptions{}); err != nil {
		t.Fatal(err)
	}
	if fake.Count("docker") == 0 {
		t.Fatal("the fake wsl never ran docker: the WSL path was not taken")
	}
	if p.saw("classic builder") || !p.ran("the secret is ****") || !p.ran("FINAL-STAGE-RAN") {
		t.Errorf("build through WSL:\n%s", p.out)
	}
}

// TestCleanupPrunesBuildCache: cleanup brings the build cache down to
// BUILD_CACHE_KEEP (a dry run only says how much), and leaves it alone
// when it is within; before any deploy (no deploy folder) it still works.
func TestCleanupPrunesBuildCache(t *testing.T) {
	p := newUserProject(t, "prune")
	ctx := context.Background()
	r := p.runner(true)
	if _, err := r.Build(ctx, BuildOptions{}); err != nil {
		t.Fatal(err)
	}
	e, err := r.Engine(ctx)
	if err != nil {
		t.Fatal(err)
	}
	size, err := e.BuildCacheSize(ctx)
	if err != nil || size == 0 {
		t.Fatalf("build cache size %d, %v: the build left none", size, err)
	}

	r = p.runner(false, "BUILD_CACHE_KEEP=1B")
	if err := r.Cleanup(ctx, true); err != nil {
		t.Fatal(err)
	}
	// Nothing was deployed from this project: its deploy folder is not
	// there, and cleanup still cleans the build engine.
	if !p.saw("nothing deployed at " + filepath.Join(p.dir, ".deploy", "production") + " on this machine yet") {
		t.Errorf("cleanup before any deploy did not say there was nothing to clean on the deploy host:\n%s", p.out)
	}
	if !p.saw("would remove build cache on") {
		t.Errorf("dry run did not say what it would prune:\n%s", p.out)
	}
	if after, _ := e.BuildCacheSize(ctx); after < size {
		t.Errorf("a dry run pruned the build cache: %d -> %d bytes", size, after)
	}

	r = p.runner(false, "BUILD_CACHE_KEEP=1TB")
	if err := r.Cleanup(ctx, false); err != nil {
		t.Fatal(err)
	}
	if !p.saw("within BUILD_CACHE_KEEP=") {
		t.Errorf("cleanup within the limit:\n%s", p.out)
	}

	keep := size / 2
	r = p.runner(false, "BUILD_CACHE_KEEP="+strconv.FormatInt(keep, 10))
	if err := r.Cleanup(ctx, false); err != nil {
		t.Fatal(err)
	}
	after, err := e.BuildCacheSize(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !p.saw("removed build cache on") || after > keep {
		t.Errorf("cleanup with BUILD_CACHE_KEEP=%d left %d bytes of %d:\n%s", keep, after, size, p.out)
	}
}

// TestDeployUserDockerfile is the "done when": DOCKERFILE names a
// Dockerfile with a cache mount and a secret mount (a dependencies stage
// before the sample service's own lines); it builds, inspect finds the
// secret nowhere, the test container and a deploy serve it healthy.
func TestDeployUserDockerfile(t *testing.T) {
	testenv.NeedEngine(t)
	bb, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Fatalf("this test needs a static busybox (apt-get install busybox-static): %v", err)
	}
	root := repoRoot(t)
	prod, err := os.ReadFile(filepath.Join(root, "Dockerfile.production"))
	if err != nil {
		t.Fatal(err)
	}
	salt := fmt.Sprintf("%d", time.Now().UnixNano())
	deps := `FROM scratch AS deps
COPY build/busybox-` + salt + ` /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
RUN --mount=type=cache,id=deps-` + salt + `,target=/root/.cache sh -c 'echo downloaded > /root/.cache/wheel; mkdir -p /deps; cp /root/.cache/wheel /deps/'
RUN --mount=type=secret,id=pip_token sh -c 'test -s /run/secrets/pip_token && echo "index reached with a token of $(wc -c < /run/secrets/pip_token) bytes" > /deps/index.txt'

`
	dockerfile := deps + strings.Replace(string(prod), "\nFROM scratch\n", "\nFROM scratch\nCOPY --from=deps /deps /deps\n", 1)
	files := map[string]string{
		"build/busybox-" + salt:                           string(bb),
		"build/Dockerfile.user-" + salt:                   dockerfile,
		"build/Dockerfile.user-" + salt + ".dockerignore": "*\n!build/carebot\n!build/busybox-" + salt + "\n",
	}
	for name, body := range files {
		p := filepath.Join(root, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o755); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.Remove(p) })
	}

	p := newProject(t, "userdf")
	p.env["DOCKERFILE"] = "build/Dockerfile.user-" + salt
	p.env["BUILD_SECRETS"] = "pip_token"
	p.env["pip_token"] = pipToken
	ctx := context.Background()
	id := p.build("u1", nil)
	r := p.runner("u1")
	rep, err := r.Inspect(ctx)
	if err != nil {
		t.Fatalf("inspect: %v", err)
	}
	if !strings.Contains(p.out.String(), "the value of no build secret (1 looked for)") {
		t.Error("inspect did not look for the secret")
	}
	if strings.Contains(p.out.String(), pipToken) {
		t.Error("the secret's value is in the output")
	}
	if rep.Image.ID != id {
		t.Errorf("inspected %s, built %s", rep.Image.ID, id)
	}
	if files := p.filesOf(r, id); !files["/deps/wheel"] || !files["/deps/index.txt"] || !files["/app/carebot"] {
		t.Errorf("image files: %v", files)
	}
	if err := r.Test(ctx, false); err != nil {
		t.Fatal(err)
	}
	if err := r.Deploy(ctx); err != nil {
		t.Fatal(err)
	}
	if v, code := p.health(); v != "u1" || code != 200 {
		t.Fatalf("after deploying u1: version %q, HTTP %d", v, code)
	}
}

// filesOf lists every file of image id.
func (p *project) filesOf(r *Runner, id string) map[string]bool {
	return (&userProject{t: p.t.(*testing.T)}).files(r, id)
}

// TestBuildKitOnCurrentEngine: the same session-based build on a current
// engine (the containerd image store, API 1.5x), as the people this is for
// run Docker 28. It cannot run containers here (Debian's runc), so the
// Dockerfile has no RUN: two stages, BUILD_TARGET, a build argument.
func TestBuildKitOnCurrentEngine(t *testing.T) {
	p := newUserProject(t, "current")
	host := testenv.CurrentEngine(t)
	t.Setenv("DOCKER_HOST", host)
	df := "FROM scratch AS base\nARG GREETING\nCOPY app.txt /app/\nLABEL greeting=$GREETING\n\nFROM base AS final\nCOPY notes.log /app/\n"
	for name, body := range map[string]string{"Dockerfile.norun": df, "Dockerfile.norun.dockerignore": ".env\n"} {
		if err := os.WriteFile(filepath.Join(p.dir, "docker", name), []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	r := p.runner(true, "DOCKERFILE=docker/Dockerfile.norun", "BUILD_TARGET=base", "BUILD_ARG_GREETING=hello")
	ctx := context.Background()
	id, err := r.Build(ctx, BuildOptions{})
	if err != nil {
		t.Fatal(err)
	}
	e, err := r.Engine(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = e.RemoveImage(ctx, id) }()
	img, err := e.Image(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if p.saw("classic builder") || img.Labels["greeting"] != "hello" || img.Labels["org.opencontainers.image.version"] != "t1" {
		t.Errorf("on %s: labels %v\n%s", host, img.Labels, p.out)
	}
	if files := p.files(r, id); !files["/app/app.txt"] || files["/app/notes.log"] {
		t.Errorf("BUILD_TARGET=base on the current engine: files %v", files)
	}
}

// TestBuildKitSSHMount: RUN --mount=type=ssh gets the local ssh-agent's
// socket (here a real ssh-agent with a key), and without an agent the build
// stops before it starts, saying how to start one.
func TestBuildKitSSHMount(t *testing.T) {
	p := newUserProject(t, "ssh")
	df := "FROM scratch\nCOPY docker/busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\nRUN echo " + p.name + time.Now().Format(time.RFC3339Nano) + "\n" +
		"RUN --mount=type=ssh sh -c 'test -S \"$SSH_AUTH_SOCK\" && echo \"agent forwarded at $SSH_AUTH_SOCK\"'\n"
	if err := os.WriteFile(filepath.Join(p.dir, "docker", "Dockerfile.ssh"), []byte(df), 0o644); err != nil {
		t.Fatal(err)
	}

	r := p.runner(true, "DOCKERFILE=docker/Dockerfile.ssh", "SSH_AUTH_SOCK=")
	_, err := r.Build(context.Background(), BuildOptions{})
	if err == nil || !strings.Contains(err.Error(), "uses RUN --mount=type=ssh") || !strings.Contains(err.Error(), "SSH_AUTH_SOCK is not set") {
		t.Errorf("without an agent: %v", err)
	}

	sock := filepath.Join(t.TempDir(), "agent.sock")
	agent := exec.Command("ssh-agent", "-D", "-a", sock)
	if err := agent.Start(); err != nil {
		t.Skipf("no ssh-agent: %v", err)
	}
	t.Cleanup(func() { _ = agent.Process.Kill(); _ = agent.Wait() })
	for i := 0; i < 50; i++ {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	key := filepath.Join(t.TempDir(), "id_ed25519")
	if out, err := exec.Command("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key).CombinedOutput(); err != nil {
		t.Fatalf("ssh-keygen: %v\n%s", err, out)
	}
	add := exec.Command("ssh-add", key)
	add.Env = append(os.Environ(), "SSH_AUTH_SOCK="+sock)
	if out, err := add.CombinedOutput(); err != nil {
		t.Fatalf("ssh-add: %v\n%s", err, out)
	}
	r = p.runner(true, "DOCKERFILE=docker/Dockerfile.ssh", "SSH_AUTH_SOCK="+sock)
	if _, err := r.Build(context.Background(), BuildOptions{}); err != nil {
		t.Fatal(err)
	}
	if !p.ran("agent forwarded at /run/buildkit/ssh_agent.0") {
		t.Errorf("the step did not see the agent:\n%s", p.out)
	}
}
