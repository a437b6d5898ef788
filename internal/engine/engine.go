// Package engine talks to a Docker Engine through its API
// (github.com/docker/docker/client): build, inspect, save, and the short-lived
// test container. Callers depend on the few methods they use, not on this type.
package engine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/image"
	"github.com/docker/docker/client"
	"github.com/docker/docker/pkg/stdcopy"
)

// Engine is one Docker Engine.
type Engine struct {
	api  *client.Client
	Host string // where it answers, for messages
	via  Via    // how it was reached (see HostPath)

	server bool // a server's, reached over SSH: Host is the server's name

	classicOnly bool // a BuildKit build could not start here: build classic
}

// Connect reaches the engine named by DOCKER_HOST (default: the local
// socket), negotiates the API version, and pings it, so a stopped engine is
// one clear error before any work starts. ConnectVia (connect.go) also
// reaches the engine inside WSL.
func Connect(ctx context.Context, opts ...client.Opt) (*Engine, error) {
	return ConnectVia(ctx, Via{}, opts...)
}

// Close releases the connection.
func (e *Engine) Close() error { return e.api.Close() }

// Version is the engine's version and API version, e.g. "20.10.24 (API 1.41)".
func (e *Engine) Version(ctx context.Context) (string, error) {
	v, err := e.api.ServerVersion(ctx)
	if err != nil {
		return "", fmt.Errorf("docker version: %w", err)
	}
	return fmt.Sprintf("%s (API %s)", v.Version, v.APIVersion), nil
}

// Image is what Inspect shows of an image.
type Image struct {
	ID       string
	Tags     []string
	Size     int64
	Created  time.Time
	Labels   map[string]string
	OS, Arch string
	Layers   []string // diff IDs, oldest first
}

// ErrNotFound is returned when an image or container does not exist.
var ErrNotFound = errors.New("not found")

// Image inspects ref.
func (e *Engine) Image(ctx context.Context, ref string) (Image, error) {
	ii, err := e.api.ImageInspect(ctx, ref)
	if err != nil {
		if client.IsErrNotFound(err) {
			return Image{}, fmt.Errorf("image %s: %w", ref, ErrNotFound)
		}
		return Image{}, fmt.Errorf("inspect image %s: %w", ref, err)
	}
	img := Image{ID: ii.ID, Tags: ii.RepoTags, Size: ii.Size, OS: ii.Os, Arch: ii.Architecture}
	img.Created, _ = time.Parse(time.RFC3339Nano, ii.Created)
	if ii.Config != nil {
		img.Labels = ii.Config.Labels
	}
	img.Layers = ii.RootFS.Layers
	return img, nil
}

// Step is one entry of an image's history: the instruction and the size of
// the layer it made (0 for metadata-only steps).
type Step struct {
	CreatedBy string
	Size      int64
	Created   time.Time
}

// History lists the steps that made ref, oldest first.
func (e *Engine) History(ctx context.Context, ref string) ([]Step, error) {
	h, err := e.api.ImageHistory(ctx, ref)
	if err != nil {
		return nil, fmt.Errorf("history of %s: %w", ref, err)
	}
	steps := make([]Step, len(h))
	for i, it := range h { // the API lists newest first
		steps[len(h)-1-i] = Step{CreatedBy: it.CreatedBy, Size: it.Size, Created: time.Unix(it.Created, 0)}
	}
	return steps, nil
}

// Save streams `docker save` of refs. The caller closes it.
func (e *Engine) Save(ctx context.Context, refs ...string) (io.ReadCloser, error) {
	rc, err := e.api.ImageSave(ctx, refs)
	if err != nil {
		return nil, fmt.Errorf("save %s: %w", strings.Join(refs, " "), err)
	}
	return rc, nil
}

// ImagesOf lists the tags of repository name with their image IDs and
// creation times, newest first.
func (e *Engine) ImagesOf(ctx context.Context, name string) ([]image.Summary, error) {
	return e.api.ImageList(ctx, image.ListOptions{Filters: refFilter(name)})
}

// RemoveImage removes an image and all its tags.
func (e *Engine) RemoveImage(ctx context.Context, id string) error {
	_, err := e.api.ImageRemove(ctx, id, image.RemoveOptions{Force: true, PruneChildren: true})
	if err != nil && !client.IsErrNotFound(err) {
		return fmt.Errorf("remove image %s: %w", id, err)
	}
	return nil
}

// Container is the state of one container, for messages.
type Container struct {
	ID, Name, Status, Health string
	ExitCode                 int
	Running                  bool
	Labels                   map[string]string
}

func (c Container) String() string {
	s := c.Status
	if c.Health != "" {
		s += ", " + c.Health
	}
	if !c.Running && c.Status != "created" {
		s += fmt.Sprintf(", exit code %d", c.ExitCode)
	}
	return s
}

// Container inspects a container by name or ID.
func (e *Engine) Container(ctx context.Context, name string) (Container, error) {
	ci, err := e.api.ContainerInspect(ctx, name)
	if err != nil {
		if client.IsErrNotFound(err) {
			return Container{}, fmt.Errorf("container %s: %w", name, ErrNotFound)
		}
		return Container{}, fmt.Errorf("inspect container %s: %w", name, err)
	}
	c := Container{ID: ci.ID, Name: strings.TrimPrefix(ci.Name, "/")}
	if ci.Config != nil {
		c.Labels = ci.Config.Labels
	}
	if st := ci.State; st != nil {
		c.Status, c.ExitCode, c.Running = st.Status, st.ExitCode, st.Running
		if st.Health != nil {
			c.Health = st.Health.Status
		}
	}
	return c, nil
}

// RunOptions describe a container started for a test.
type RunOptions struct {
	Name    string
	Image   string
	Env     []string
	Labels  map[string]string
	Binds   []string // host:container[:ro]
	Publish Publish
}

// Publish maps a container port to an address on the engine's host.
type Publish struct {
	HostIP        string
	HostPort      int
	ContainerPort int
}

// Run creates and starts a container, and returns its ID.
func (e *Engine) Run(ctx context.Context, o RunOptions) (string, error) {
	cfg := &container.Config{Image: o.Image, Env: o.Env, Labels: o.Labels}
	hc := &container.HostConfig{Binds: o.Binds}
	if p := o.Publish; p.ContainerPort != 0 {
		port, bindings := portBinding(p)
		cfg.ExposedPorts = port
		hc.PortBindings = bindings
	}
	created, err := e.api.ContainerCreate(ctx, cfg, hc, nil, nil, o.Name)
	if err != nil {
		return "", fmt.Errorf("create container %s: %w", o.Name, err)
	}
	if err := e.api.ContainerStart(ctx, created.ID, container.StartOptions{}); err != nil {
		_ = e.Remove(context.WithoutCancel(ctx), created.ID)
		return "", fmt.Errorf("start container %s: %w", o.Name, err)
	}
	return created.ID, nil
}

// Remove stops and removes a container with its anonymous volumes.
func (e *Engine) Remove(ctx context.Context, id string) error {
	err := e.api.ContainerRemove(ctx, id, container.RemoveOptions{Force: true, RemoveVolumes: true})
	if err != nil && !client.IsErrNotFound(err) {
		return fmt.Errorf("remove container %s: %w", id, err)
	}
	return nil
}

// Logs returns the last n lines a container printed (both streams).
func (e *Engine) Logs(ctx context.Context, id string, n int) (string, error) {
	rc, err := e.api.ContainerLogs(ctx, id, container.LogsOptions{ShowStdout: true, ShowStderr: true, Tail: fmt.Sprint(n)})
	if err != nil {
		return "", fmt.Errorf("logs of %s: %w", id, err)
	}
	defer rc.Close()
	var b strings.Builder
	if _, err := stdcopy.StdCopy(&b, &b, rc); err != nil {
		return b.String(), fmt.Errorf("logs of %s: %w", id, err)
	}
	return b.String(), nil
}

// isTerminal reports whether f is a terminal, without a dependency.
func isTerminal(f *os.File) bool {
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
