package engine

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/client"

	"github.com/carebot/carebot/internal/text"
)

// DialStdio is the server command every API connection runs: the docker
// CLI relays its stdin and stdout to the engine its own DOCKER_HOST (or
// context) names, so the server needs no open port and no socket
// forwarding, and the engine reached is the one `docker` there would use.
const DialStdio = "docker system dial-stdio"

// ConnectServer reaches the Docker engine of a server through run (a
// command on the run's one SSH connection): each API connection is a
// `docker system dial-stdio` there. name says where, for messages.
func ConnectServer(ctx context.Context, name string, run ExecFunc) (*Engine, error) {
	d := &stdioDialer{start: func(report func(string)) (*stdioConn, error) { return startExecConn(run, DialStdio, report) }}
	api, err := client.NewClientWithOpts(client.WithAPIVersionNegotiation(),
		// A name for the client's URLs; every dial goes through the command.
		client.WithHost("unix:///var/run/docker.sock"), client.WithDialContext(d.DialContext))
	if err != nil {
		return nil, fmt.Errorf("docker engine on %s: %w", name, err)
	}
	e := &Engine{api: api, Host: name, server: true}
	pctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if _, err := api.Ping(pctx); err != nil {
		api.Close()
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		reason := text.ErrLine(err)
		if why := d.lastFailure(); why != "" {
			reason = why
		}
		return nil, &ConnectError{Where: "the Docker engine on " + name, Reason: reason, Fix: serverFix(reason)}
	}
	return e, nil
}

// serverFix reads what dial-stdio printed on the server and says what to do.
func serverFix(reason string) string {
	r := strings.ToLower(reason)
	switch {
	case strings.Contains(r, "password is required"), strings.Contains(r, "a terminal is required"):
		return "allow the deploy user passwordless sudo for docker, or add it to the docker group there and set DEPLOY_DOCKER_SUDO=false"
	case strings.Contains(r, "sudo: not found"), strings.Contains(r, "sudo: command not found"):
		return "set DEPLOY_DOCKER_SUDO=false (the server has no sudo)"
	case strings.Contains(r, "permission denied"):
		return "add the deploy user to the docker group there (sudo usermod -aG docker <user>, then log in again), or set DEPLOY_DOCKER_SUDO=true"
	case strings.Contains(r, "unknown command") || strings.Contains(r, "is not a docker command"):
		return "the server's docker CLI is older than 18.09: upgrade Docker there"
	case strings.Contains(r, "not found") || strings.Contains(r, "no such file"):
		if strings.Contains(r, ".sock") {
			return "start it there (sudo systemctl start docker)"
		}
		return "install Docker there (sudo apt-get install docker.io)"
	}
	return "start it there (sudo systemctl start docker) and check that `docker version` works for the deploy user"
}

// Platform is what a server's engine is: its API version and the
// platform it runs images for.
type Platform struct {
	APIVersion, OS, Arch string
}

// Platform asks the engine for its API version and platform.
func (e *Engine) Platform(ctx context.Context) (Platform, error) {
	v, err := e.api.ServerVersion(ctx)
	if err != nil {
		return Platform{}, fmt.Errorf("docker version on %s: %w", e.Host, err)
	}
	return Platform{APIVersion: v.APIVersion, OS: v.Os, Arch: v.Arch}, nil
}

// ImageID is the ID the engine has for ref, "" when it has no such image.
func (e *Engine) ImageID(ctx context.Context, ref string) (string, error) {
	ii, err := e.api.ImageInspect(ctx, ref)
	if client.IsErrNotFound(err) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("inspect image %s on %s: %w", ref, e.Host, err)
	}
	return ii.ID, nil
}

// LayerChains lists the layers (diff IDs, base first) of every image the
// engine has, so a sender knows which of its own it can leave out. One
// list call, then the inspections a few at a time: each is a round trip.
func (e *Engine) LayerChains(ctx context.Context) ([][]string, error) {
	list, err := e.api.ImageList(ctx, image.ListOptions{All: true})
	if err != nil {
		return nil, fmt.Errorf("list images on %s: %w", e.Host, err)
	}
	ids := make([]string, 0, len(list))
	seen := map[string]bool{}
	for _, s := range list {
		if !seen[s.ID] {
			seen[s.ID] = true
			ids = append(ids, s.ID)
		}
	}
	sort.Strings(ids)
	chains := make([][]string, len(ids))
	errs := make([]error, len(ids))
	var wg sync.WaitGroup
	sem := make(chan struct{}, 4)
	for i, id := range ids {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			ii, err := e.api.ImageInspect(ctx, id)
			if client.IsErrNotFound(err) {
				return // removed meanwhile
			}
			if err != nil {
				errs[i] = fmt.Errorf("inspect image %s on %s: %w", text.ShortID(id), e.Host, err)
				return
			}
			chains[i] = ii.RootFS.Layers
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	out := chains[:0]
	for _, c := range chains {
		if len(c) > 0 {
			out = append(out, c)
		}
	}
	return out, nil
}

// Load streams an image archive (what `docker save` writes, or a layout
// of the same kind) into the engine, and returns what it said, as `docker
// load` prints it ("Loaded image: ...").
func (e *Engine) Load(ctx context.Context, archive io.Reader) (string, error) {
	resp, err := e.api.ImageLoad(ctx, archive, client.ImageLoadWithQuiet(true))
	if err != nil {
		return "", fmt.Errorf("docker load on %s: %w", e.Host, cause(err))
	}
	defer resp.Body.Close()
	var said strings.Builder
	dec := json.NewDecoder(resp.Body)
	for {
		var m struct {
			Stream      string
			Error       string
			ErrorDetail *struct{ Message string }
		}
		if err := dec.Decode(&m); err == io.EOF {
			break
		} else if err != nil {
			return said.String(), fmt.Errorf("docker load on %s: %w", e.Host, cause(err))
		}
		if m.ErrorDetail != nil && m.ErrorDetail.Message != "" {
			m.Error = m.ErrorDetail.Message
		}
		if m.Error != "" {
			return said.String(), fmt.Errorf("docker load on %s: %s", e.Host, m.Error)
		}
		said.WriteString(m.Stream)
	}
	return said.String(), nil
}

// Tag names the image id (which the engine has) ref.
func (e *Engine) Tag(ctx context.Context, id, ref string) error {
	if err := e.api.ImageTag(ctx, id, ref); err != nil {
		if client.IsErrNotFound(err) {
			return fmt.Errorf("tag %s on %s: image %s: %w", ref, e.Host, text.ShortID(id), ErrNotFound)
		}
		return fmt.Errorf("tag %s on %s: %w", ref, e.Host, err)
	}
	return nil
}

// ComposeLabelDir is the label Compose (v1 and v2) puts on a container:
// the folder of the project that made it.
const ComposeLabelDir = "com.docker.compose.project.working_dir"

// ProjectContainer is one container of a Compose project, as a deploy
// checks it.
type ProjectContainer struct {
	ID, Name, Image, ImageID, Status, Health, Started string
	ExitCode, Restarts                                int
}

func (c ProjectContainer) String() string {
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

// ProjectContainers lists the containers, running or not, that Compose
// made for the project in one of dirs (the deploy folder as written and
// resolved: Compose v1 records the resolved path, v2 the one it was given).
func (e *Engine) ProjectContainers(ctx context.Context, dirs ...string) ([]ProjectContainer, error) {
	return e.labelled(ctx, ComposeLabelDir, func(v string) bool { return slices.Contains(dirs, v) })
}

// StackLabel is the label Swarm puts on a stack's task containers.
const StackLabel = "com.docker.stack.namespace"

// StackContainers lists the containers of stack's tasks on this engine
// (a swarm node), running or not.
func (e *Engine) StackContainers(ctx context.Context, stack string) ([]ProjectContainer, error) {
	return e.labelled(ctx, StackLabel, func(v string) bool { return v == stack })
}

// labelled lists the containers whose label's value keep accepts.
func (e *Engine) labelled(ctx context.Context, label string, keep func(string) bool) ([]ProjectContainer, error) {
	list, err := e.api.ContainerList(ctx, container.ListOptions{All: true, Filters: filters.NewArgs(filters.Arg("label", label))})
	if err != nil {
		return nil, fmt.Errorf("list containers on %s: %w", e.Host, err)
	}
	var out []ProjectContainer
	for _, c := range list {
		if v := c.Labels[label]; v == "" || !keep(v) {
			continue
		}
		ci, err := e.api.ContainerInspect(ctx, c.ID)
		if client.IsErrNotFound(err) {
			continue // removed meanwhile
		}
		if err != nil {
			return nil, fmt.Errorf("inspect container %s on %s: %w", text.ShortID(c.ID), e.Host, err)
		}
		pc := ProjectContainer{ID: ci.ID, Name: strings.TrimPrefix(ci.Name, "/"), ImageID: ci.Image, Restarts: ci.RestartCount}
		if ci.Config != nil {
			pc.Image = ci.Config.Image
		}
		if st := ci.State; st != nil {
			pc.Status, pc.ExitCode, pc.Started = st.Status, st.ExitCode, st.StartedAt
			if st.Health != nil {
				pc.Health = st.Health.Status
			}
		}
		out = append(out, pc)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// cause is err said as what ended the dial-stdio command under it (the
// link lost, the engine gone), without the HTTP request around it; err
// itself when no command failed.
func cause(err error) error {
	var ce *commandError
	if errors.As(err, &ce) {
		return &causeError{msg: ce.why, err: err}
	}
	return err
}

// Lost says whether err is a server connection that ended under the
// request (the link, or the dial-stdio command), not an answer of the
// engine: sending again over it is pointless.
func Lost(err error) bool {
	var ce *commandError
	return errors.As(err, &ce)
}

type causeError struct {
	msg string
	err error
}

func (e *causeError) Error() string { return e.msg }
func (e *causeError) Unwrap() error { return e.err }
