package engine

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"

	"github.com/docker/docker/api/types/build"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/pkg/jsonmessage"
	"github.com/docker/go-connections/nat"
	archive "github.com/moby/go-archive"
	"github.com/moby/patternmatcher/ignorefile"
)

// BuildOptions describe one image build.
type BuildOptions struct {
	ContextDir string            // the build context, filtered by its .dockerignore
	Dockerfile string            // absolute, inside ContextDir
	Tags       []string          // name:tag, all given to the image
	Labels     map[string]string // OCI labels
	Args       map[string]string // build arguments
	NoCache    bool
	// Out receives the build output as the docker CLI shows it. When Quiet,
	// output is kept and written to Out only if the build fails.
	Out   io.Writer
	Quiet bool
}

// Build builds an image with the classic builder and returns its ID.
func (e *Engine) Build(ctx context.Context, o BuildOptions) (string, error) {
	rel, err := filepath.Rel(o.ContextDir, o.Dockerfile)
	if err != nil || !filepath.IsLocal(rel) {
		return "", fmt.Errorf("DOCKERFILE %s is outside the build context %s: move it into the project", o.Dockerfile, o.ContextDir)
	}
	tarball, err := Context(o.ContextDir, rel)
	if err != nil {
		return "", err
	}
	defer tarball.Close()

	args := make(map[string]*string, len(o.Args))
	for k, v := range o.Args {
		args[k] = &v
	}
	resp, err := e.api.ImageBuild(ctx, tarball, build.ImageBuildOptions{
		Tags: o.Tags, Dockerfile: filepath.ToSlash(rel), Labels: o.Labels, BuildArgs: args,
		NoCache: o.NoCache, Remove: true, ForceRemove: true, Version: build.BuilderV1,
	})
	if err != nil {
		return "", fmt.Errorf("build: %w", err)
	}
	defer resp.Body.Close()

	out, kept := o.Out, &bytes.Buffer{}
	if out == nil {
		out = io.Discard
	}
	if o.Quiet {
		out = kept
	}
	var id string
	aux := func(m jsonmessage.JSONMessage) {
		var r struct{ ID string }
		if json.Unmarshal(*m.Aux, &r) == nil && r.ID != "" {
			id = r.ID
		}
	}
	fd, term := terminal(out)
	if err := jsonmessage.DisplayJSONMessagesStream(resp.Body, out, fd, term, aux); err != nil {
		if o.Quiet && o.Out != nil {
			_, _ = io.Copy(o.Out, kept)
		}
		var je *jsonmessage.JSONError
		if errors.As(err, &je) {
			return "", fmt.Errorf("build failed: %s", je.Message)
		}
		return "", fmt.Errorf("build: %w", err)
	}
	if id == "" {
		return "", errors.New("build: the engine reported no image ID")
	}
	return id, nil
}

// Context tars dir as a build context, leaving out what its .dockerignore
// excludes, but always keeping the Dockerfile and .dockerignore themselves,
// as the docker CLI does.
func Context(dir, dockerfile string) (io.ReadCloser, error) {
	var excludes []string
	f, err := os.Open(filepath.Join(dir, ".dockerignore"))
	switch {
	case err == nil:
		excludes, err = ignorefile.ReadAll(f)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf(".dockerignore: %w", err)
		}
	case !errors.Is(err, os.ErrNotExist):
		return nil, fmt.Errorf(".dockerignore: %w", err)
	}
	if len(excludes) > 0 {
		excludes = append(excludes, "!"+filepath.ToSlash(dockerfile), "!.dockerignore")
	}
	rc, err := archive.TarWithOptions(dir, &archive.TarOptions{ExcludePatterns: excludes, Compression: archive.Uncompressed})
	if err != nil {
		return nil, fmt.Errorf("build context %s: %w", dir, err)
	}
	return rc, nil
}

func terminal(w io.Writer) (uintptr, bool) {
	if f, ok := w.(*os.File); ok && isTerminal(f) {
		return f.Fd(), true
	}
	return 0, false
}

func portBinding(p Publish) (nat.PortSet, nat.PortMap) {
	port := nat.Port(strconv.Itoa(p.ContainerPort) + "/tcp")
	return nat.PortSet{port: {}},
		nat.PortMap{port: {{HostIP: p.HostIP, HostPort: strconv.Itoa(p.HostPort)}}}
}

func refFilter(name string) filters.Args { return filters.NewArgs(filters.Arg("reference", name)) }
