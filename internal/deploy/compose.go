package deploy

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/carebot/carebot/internal/engine"
	"github.com/carebot/carebot/internal/host"
	"github.com/carebot/carebot/internal/shell"
)

// Compose is the Docker Compose a host has.
type Compose struct {
	Command string // "docker compose" (the v2 plugin) or "docker-compose" (v1, which Debian ships)
	Version string // as it reports itself, e.g. "2.24.5" or "1.29.2"; "" when it does not say
}

func (c Compose) String() string { return strings.TrimSpace(c.Command + " " + c.Version) }

// DetectCompose finds the Compose a deploy to h uses: the v2 plugin if it
// works, else v1. The doctor asks the same.
func DetectCompose(ctx context.Context, h host.Host) (Compose, error) {
	// One round trip: what `version` prints, then which one printed it.
	out, err := host.Run(ctx, h, "if docker compose version 2>/dev/null; then echo 'docker compose'; "+
		"elif docker-compose version 2>/dev/null; then echo docker-compose; fi")
	if err != nil {
		return Compose{}, fmt.Errorf("find Docker Compose on %s: %w", h, err)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	c := Compose{Command: strings.TrimSpace(lines[len(lines)-1])}
	if c.Command != "docker compose" && c.Command != "docker-compose" {
		return Compose{}, &host.Problem{What: fmt.Sprintf("neither 'docker compose' nor 'docker-compose' works on %s", h),
			Fix: "install one there: sudo apt-get install docker-compose-plugin (Docker's repository) or docker-compose"}
	}
	if len(lines) > 1 {
		c.Version = composeVersion(lines[0])
	}
	return c, nil
}

// composeVersion reads "Docker Compose version v2.24.5" (v2) or
// "docker-compose version 1.29.2, build unknown" (v1).
func composeVersion(line string) string {
	f := strings.Fields(line)
	for i := 0; i+1 < len(f); i++ {
		if f[i] == "version" {
			return strings.TrimPrefix(strings.TrimSuffix(f[i+1], ","), "v")
		}
	}
	return ""
}

// composeCache is where the host remembers which Compose it has: v1's
// `docker-compose version` alone takes half a second (Python starting).
func (d *Deployer) composeCache() string { return d.stateDir() + "/compose" }

// detectCompose is the Compose of d's host: what look found in the host's
// cache, else DetectCompose, remembered there for the next runs.
func (d *Deployer) detectCompose(ctx context.Context) (string, error) {
	if d.compose != "" {
		return d.compose, nil
	}
	if d.Path != "" {
		if err := d.lookOnce(ctx); err != nil {
			return "", err
		}
		if d.compose != "" {
			return d.compose, nil
		}
	}
	c, err := DetectCompose(ctx, d.Host)
	if err != nil {
		return "", err
	}
	d.compose = c.Command
	// Best effort, and only in a deploy folder that exists (a refused
	// first deploy leaves nothing): without it, the next run detects again.
	_, _ = host.Run(ctx, d.Host, fmt.Sprintf("[ -d %s ] && mkdir -p %s && printf '%%s\\n' %s > %s",
		shell.Quote(d.Path), shell.Quote(d.stateDir()), shell.Quote(c.Command), shell.Quote(d.composeCache())))
	return d.compose, nil
}

// forgetCompose drops the remembered Compose after a compose command was
// not found (uninstalled, or the v2 plugin replaced v1): the next run
// detects it again.
func (d *Deployer) forgetCompose(ctx context.Context, err error) {
	var ce *host.CommandError
	if !errors.As(err, &ce) {
		return
	}
	if ce.ExitStatus() == 127 || strings.Contains(ce.Output, "is not a docker command") {
		_, _ = host.Run(context.WithoutCancel(ctx), d.Host, "rm -f "+shell.Quote(d.composeCache()))
	}
}

// facts is what look learns of the host in one round trip.
type facts struct {
	hasEnv, hasComposeFile bool
	envTime                int64  // when .env last changed, Unix seconds
	realPath               string // Path with links resolved; "" while it does not exist
}

// look asks the host, in one round trip, what every task needs first: the
// Compose it remembered, whether .env and the compose file are there, and
// the deploy folder's resolved path (Compose v1 labels containers with it,
// v2 with the path as given). Each task that starts asks again (another
// run may have deployed meanwhile); what it changes itself it notes.
func (d *Deployer) look(ctx context.Context) error {
	p := shell.Quote(d.Path)
	out, err := host.Run(ctx, d.Host, fmt.Sprintf("cd %s 2>/dev/null || exit 0; echo \"real $(pwd -P)\"; "+
		"[ -e .env ] && echo \"env $(stat -c %%Y .env 2>/dev/null)\"; [ -e %s ] && echo compose-file; "+
		"c=$(cat %s 2>/dev/null) && [ -n \"$c\" ] && command -v \"${c%%%% *}\" >/dev/null && echo \"compose $c\"; true",
		p, shell.Quote(d.composeName()), shell.Quote(d.composeCache())))
	if err != nil {
		return fmt.Errorf("look at %s on %s: %w", d.Path, d.Host, err)
	}
	var f facts
	for _, line := range strings.Split(out, "\n") {
		k, v, _ := strings.Cut(strings.TrimSpace(line), " ")
		switch k {
		case "real":
			f.realPath = v
		case "env":
			f.hasEnv = true
			f.envTime, _ = strconv.ParseInt(v, 10, 64)
		case "compose-file":
			f.hasComposeFile = true
		case "compose":
			if v == "docker compose" || v == "docker-compose" {
				d.compose = v
			}
		}
	}
	d.facts, d.looked = f, true
	return nil
}

// lookOnce is look, unless a task of this run looked already.
func (d *Deployer) lookOnce(ctx context.Context) error {
	if d.looked {
		return nil
	}
	return d.look(ctx)
}

// ComposeCommand is the command line that runs compose args in the deploy
// folder with the settings the compose file reads.
func (d *Deployer) ComposeCommand(version, args string) string {
	env := []string{"IMAGE_NAME=" + shell.Quote(d.ImageName), fmt.Sprintf("APP_PORT=%d", d.AppPort)}
	if version != "" {
		env = append(env, "IMAGE_TAG="+shell.Quote(version))
	}
	return fmt.Sprintf("cd %s && %s %s -f %s %s",
		shell.Quote(d.Path), strings.Join(env, " "), d.compose, shell.Quote(d.composeName()), args)
}

func (d *Deployer) composeRun(ctx context.Context, version, args string) (string, error) {
	if _, err := d.detectCompose(ctx); err != nil {
		return "", err
	}
	if version == "" {
		// Commands that do not create containers still interpolate the
		// file; give them the tag that serves so Compose does not warn.
		version = "latest"
	}
	out, err := host.Run(ctx, d.Host, d.ComposeCommand(version, args))
	if err != nil {
		d.forgetCompose(ctx, err)
		return out, fmt.Errorf("compose %s on %s: %w", strings.Fields(args)[0], d.Host, err)
	}
	return out, nil
}

// ComposeOutput runs compose args and returns what it printed.
func (d *Deployer) ComposeOutput(ctx context.Context, args string) (string, error) {
	return d.composeRun(ctx, "", args)
}

// ComposeStream runs compose args with output streamed, for Logs.
func (d *Deployer) ComposeStream(ctx context.Context, args string, out io.Writer) error {
	if _, err := d.detectCompose(ctx); err != nil {
		return err
	}
	return d.Host.Exec(ctx, d.ComposeCommand("latest", args), nil, out, out)
}

// ContainerState is one of the deployment's containers.
type ContainerState = engine.ProjectContainer

// containers inspects the deployment's containers: those Compose made for
// the project in the deploy folder, found by its label through the
// host's engine (no Compose process, no text to parse).
func (d *Deployer) containers(ctx context.Context) ([]ContainerState, error) {
	if err := d.lookOnce(ctx); err != nil {
		return nil, err
	}
	if !d.facts.hasComposeFile && d.facts.realPath == "" {
		return nil, nil
	}
	srv, err := d.server(ctx)
	if err != nil {
		return nil, err
	}
	if d.Stack != "" {
		if sc, ok := srv.(interface {
			StackContainers(ctx context.Context, stack string) ([]engine.ProjectContainer, error)
		}); ok {
			return sc.StackContainers(ctx, d.Stack)
		}
	}
	return srv.ProjectContainers(ctx, d.Path, d.facts.realPath)
}

// Containers is the deployment's containers, for Status.
func (d *Deployer) Containers(ctx context.Context) ([]ContainerState, error) {
	return d.containers(ctx)
}

// Serving is the version the deployment's container runs, "" when none runs.
func (d *Deployer) Serving(ctx context.Context) (string, error) {
	states, err := d.containers(ctx)
	return d.serving(states), err
}

func (d *Deployer) serving(states []ContainerState) string {
	for _, s := range states {
		if s.Status == "running" || s.Status == "restarting" || s.Status == "paused" {
			if tag, ok := strings.CutPrefix(s.Image, d.ImageName+":"); ok {
				return tag
			}
		}
	}
	return ""
}

func sha256Hex(data []byte) string {
	h := sha256.Sum256(data)
	return hex.EncodeToString(h[:])
}
