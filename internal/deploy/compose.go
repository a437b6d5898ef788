package deploy

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"strings"

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

// detectCompose is DetectCompose on d's host, asked once per Deployer.
func (d *Deployer) detectCompose(ctx context.Context) (string, error) {
	if d.compose != "" {
		return d.compose, nil
	}
	c, err := DetectCompose(ctx, d.Host)
	if err != nil {
		return "", err
	}
	d.compose = c.Command
	return d.compose, nil
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
type ContainerState struct {
	ID, Name, Image, Status, Health, Started string
	ExitCode, Restarts                       int
}

func (c ContainerState) String() string {
	s := c.Status
	if c.Health != "" {
		s += " (" + c.Health + ")"
	}
	if c.Status != "running" {
		s += fmt.Sprintf(", exit code %d", c.ExitCode)
	}
	if c.Restarts > 0 {
		s += fmt.Sprintf(", %d restarts", c.Restarts)
	}
	return fmt.Sprintf("%s: %s, image %s, started %s", c.Name, s, c.Image, c.Started)
}

// containers inspects the deployment's containers.
func (d *Deployer) containers(ctx context.Context) ([]ContainerState, error) {
	ids, err := d.containerIDs(ctx)
	if err != nil || strings.TrimSpace(ids) == "" {
		return nil, err
	}
	out, err := host.Run(ctx, d.Host, "docker inspect "+strings.Join(strings.Fields(ids), " "))
	if err != nil {
		return nil, fmt.Errorf("inspect containers on %s: %w", d.Host, err)
	}
	var raw []struct {
		ID           string `json:"Id"`
		Name         string
		RestartCount int
		Config       struct{ Image string }
		State        struct {
			Status    string
			ExitCode  int
			StartedAt string
			Health    *struct{ Status string }
		}
	}
	if err := json.Unmarshal([]byte(out), &raw); err != nil {
		return nil, fmt.Errorf("inspect containers on %s: %w", d.Host, err)
	}
	states := make([]ContainerState, len(raw))
	for i, r := range raw {
		states[i] = ContainerState{
			ID: r.ID, Name: strings.TrimPrefix(r.Name, "/"), Image: r.Config.Image, Status: r.State.Status,
			ExitCode: r.State.ExitCode, Restarts: r.RestartCount, Started: r.State.StartedAt,
		}
		if r.State.Health != nil {
			states[i].Health = r.State.Health.Status
		}
	}
	return states, nil
}

// containerIDs lists the deployment's containers as the host's own compose
// file describes them (none before the first deploy put one there).
func (d *Deployer) containerIDs(ctx context.Context) (string, error) {
	ok, err := host.Exists(ctx, d.Host, d.Path+"/"+d.composeName())
	if err != nil || !ok {
		return "", err
	}
	return d.composeRun(ctx, "", "ps -q")
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
