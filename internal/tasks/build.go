package tasks

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/carebot/carebot/internal/text"

	"github.com/carebot/carebot/internal/engine"
)

// BinaryPath is where the sample service is compiled, inside the build
// context (the Dockerfile copies it from there).
const BinaryPath = "build/carebot"

// Binary compiles the sample service as a static Linux binary: the image is
// FROM scratch, so nothing else can run it.
func (r *Runner) Binary(ctx context.Context) error {
	out := filepath.Join(r.Cfg.Dir, BinaryPath)
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags=-s -w", "-o", out, "./app")
	cmd.Dir = r.Cfg.Dir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+linuxArch())
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("compile ./app: %v\n%s", err, strings.TrimSpace(string(b)))
	}
	return nil
}

// linuxArch is the architecture the image is built for: the engine runs
// Linux on this CPU (natively, or in WSL2 on Windows).
func linuxArch() string {
	if a := os.Getenv("GOARCH_IMAGE"); a != "" {
		return a
	}
	return runtime.GOARCH
}

// BuildOptions change one build.
type BuildOptions struct {
	NoCache bool
	Args    map[string]string // extra build arguments (tests use HEALTH_FAIL)
}

// Build builds IMAGE_NAME:IMAGE_TAG (and :latest) through the Engine API and
// returns the image ID.
func (r *Runner) Build(ctx context.Context, o BuildOptions) (string, error) {
	e, err := r.Engine(ctx)
	if err != nil {
		return "", err
	}
	c := r.Cfg
	args := maps.Clone(c.BuildArgs)
	if args == nil {
		args = map[string]string{}
	}
	maps.Copy(args, o.Args)
	args["VERSION"], args["COMMIT"] = c.ImageTag, c.Commit
	secrets := map[string][]byte{}
	for _, s := range c.BuildSecrets {
		secrets[s.ID] = s.Value
	}
	ssh, err := sshMount(c.Dockerfile, c.SSHAuthSock)
	if err != nil {
		return "", err
	}
	start := time.Now()
	what := c.Image()
	if c.BuildTarget != "" {
		what += " (stage " + c.BuildTarget + ")"
	}
	r.printf("building %s from %s\n", what, rel(c.Dir, c.Dockerfile))
	id, err := e.Build(ctx, engine.BuildOptions{
		ContextDir: c.Dir, Dockerfile: c.Dockerfile, Target: c.BuildTarget,
		Tags:   []string{c.Image(), c.ImageName + ":latest"},
		Labels: ociLabels(c.ImageName, c.ImageTag, c.Commit, time.Now()),
		Args:   args, NoCache: o.NoCache,
		Secrets: secrets, SSH: ssh, SSHAgent: c.SSHAuthSock,
		// BuildKit's step display on a terminal; every line with -v and in
		// CI; elsewhere (a script's pipe) only a failed build's output.
		Out: r.Out, Plain: r.Verbose, Quiet: !r.Verbose && !isTerminal(r.Out) && os.Getenv("CI") == "",
	})
	if err != nil {
		return "", err
	}
	img, err := e.Image(ctx, id)
	if err != nil {
		return "", err
	}
	r.printf("built %s (%s, %s) in %.1fs\n", c.Image(), text.ShortID(id), text.Bytes(img.Size), time.Since(start).Seconds())
	return id, nil
}

// sshMount reports whether the Dockerfile forwards the ssh-agent
// (RUN --mount=type=ssh), which then must be there.
func sshMount(dockerfile, agent string) (bool, error) {
	b, err := os.ReadFile(dockerfile)
	if err != nil {
		return false, fmt.Errorf("DOCKERFILE: %w", err)
	}
	if !bytes.Contains(b, []byte("type=ssh")) {
		return false, nil
	}
	if agent == "" && runtime.GOOS != "windows" { // Windows has the OpenSSH agent's pipe
		return false, fmt.Errorf("%s uses RUN --mount=type=ssh, which forwards your ssh-agent, and SSH_AUTH_SOCK is not set: start one (eval $(ssh-agent); ssh-add) and build again", filepath.Base(dockerfile))
	}
	return true, nil
}

// ociLabels are the OCI annotations that tell where an image came from.
func ociLabels(name, version, commit string, now time.Time) map[string]string {
	l := map[string]string{
		"org.opencontainers.image.title":   name,
		"org.opencontainers.image.version": version,
		engine.CreatedLabel:                now.UTC().Format(time.RFC3339Nano), // to the nanosecond: cleanup orders builds by it
	}
	if commit != "" {
		l["org.opencontainers.image.revision"] = commit
	}
	return l
}

func rel(dir, p string) string {
	if r, err := filepath.Rel(dir, p); err == nil && filepath.IsLocal(r) {
		return r
	}
	return p
}

func isTerminal(w any) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
