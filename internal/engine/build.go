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
	"strings"

	"github.com/carebot/carebot/internal/text"
	"github.com/docker/docker/api/types"
	"github.com/docker/docker/api/types/build"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/versions"
	"github.com/docker/docker/pkg/jsonmessage"
	"github.com/docker/go-connections/nat"
	archive "github.com/moby/go-archive"
	"github.com/moby/go-archive/compression"
	"github.com/moby/patternmatcher/ignorefile"
)

// BuildOptions describe one image build.
type BuildOptions struct {
	ContextDir string            // the build context, filtered by its .dockerignore
	Dockerfile string            // absolute, inside ContextDir
	Target     string            // the stage to build in a multi-stage file; "" is the last
	Tags       []string          // name:tag, all given to the image
	Labels     map[string]string // OCI labels
	Args       map[string]string // build arguments
	Secrets    map[string][]byte // id → value, for RUN --mount=type=secret; never shown
	SSH        bool              // serve the ssh-agent for RUN --mount=type=ssh
	SSHAgent   string            // its socket; "" is the default ($SSH_AUTH_SOCK, Windows' pipe)
	NoCache    bool
	// Out receives the build output as docker build shows it: BuildKit's
	// step display on a terminal, plain lines elsewhere or when Plain. When
	// Quiet, output is kept and written to Out only if the build fails.
	Out   io.Writer
	Plain bool
	Quiet bool
}

// Build builds an image and returns its ID: with BuildKit, or with the
// classic builder when the engine cannot start a BuildKit build (found by
// trying, once per engine, and said in one line).
func (e *Engine) Build(ctx context.Context, o BuildOptions) (string, error) {
	rel, err := filepath.Rel(o.ContextDir, o.Dockerfile)
	if err != nil || !filepath.IsLocal(rel) {
		return "", fmt.Errorf("DOCKERFILE %s is outside the build context %s: move it into the project", o.Dockerfile, o.ContextDir)
	}
	excludes, err := Excludes(o.ContextDir, o.Dockerfile)
	if err != nil {
		return "", err
	}
	if !e.classicOnly {
		id, err := e.buildKit(ctx, o, excludes)
		var no *errNoBuildKit
		if !errors.As(err, &no) {
			return id, e.syntaxHint(o.Dockerfile, err)
		}
		e.classicOnly = true
		if o.Out != nil {
			fmt.Fprintf(o.Out, "the engine at %s cannot build with BuildKit (%v): building with the classic builder, which has no RUN --mount\n", e.Host, text.ErrLine(no.err))
		}
	}
	return e.buildClassic(ctx, o, rel, excludes)
}

// syntaxHint explains a failed build of a Dockerfile whose "# syntax=" line
// names a frontend image: BuildKit must pull it, and no registry answers.
func (e *Engine) syntaxHint(dockerfile string, err error) error {
	if err == nil {
		return nil
	}
	ref := syntaxLine(dockerfile)
	if ref == "" || !strings.Contains(err.Error(), ref) && !strings.Contains(err.Error(), "frontend") {
		return err
	}
	return fmt.Errorf("%s starts with \"# syntax=%s\", a frontend image the engine must pull, and it could not (%v): remove that line to build with the engine's built-in Dockerfile frontend", filepath.Base(dockerfile), ref, text.ErrLine(err))
}

// buildClassic builds with the classic builder from a tar of the context.
func (e *Engine) buildClassic(ctx context.Context, o BuildOptions, rel string, excludes []string) (string, error) {
	tarball, err := contextTar(o.ContextDir, excludes)
	if err != nil {
		return "", err
	}
	defer tarball.Close()

	resp, err := e.api.ImageBuild(ctx, tarball, build.ImageBuildOptions{
		Tags: o.Tags, Dockerfile: filepath.ToSlash(rel), Labels: o.Labels, BuildArgs: argPointers(o.Args),
		Target: o.Target, NoCache: o.NoCache, Remove: true, ForceRemove: true, Version: build.BuilderV1,
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

// contextTar is the build context as the classic builder takes it.
func contextTar(dir string, excludes []string) (io.ReadCloser, error) {
	rc, err := archive.TarWithOptions(dir, &archive.TarOptions{ExcludePatterns: excludes, Compression: compression.None})
	if err != nil {
		return nil, fmt.Errorf("build context %s: %w", dir, err)
	}
	return rc, nil
}

// Excludes are the build context's exclude patterns, read as BuildKit
// does: the Dockerfile's own <Dockerfile>.dockerignore beside it when there
// is one, else the context's .dockerignore. The Dockerfile and the ignore
// files themselves are always sent, as the docker CLI does.
func Excludes(dir, dockerfile string) ([]string, error) {
	for _, name := range []string{dockerfile + ".dockerignore", filepath.Join(dir, ".dockerignore")} {
		f, err := os.Open(name)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("%s: %w", filepath.Base(name), err)
		}
		excludes, err := ignorefile.ReadAll(f)
		f.Close()
		if err != nil {
			return nil, fmt.Errorf("%s: %w", filepath.Base(name), err)
		}
		if len(excludes) == 0 {
			return nil, nil
		}
		keep := []string{"!.dockerignore"}
		for _, p := range []string{dockerfile, name} {
			if r, err := filepath.Rel(dir, p); err == nil && filepath.IsLocal(r) {
				keep = append(keep, "!"+filepath.ToSlash(r))
			}
		}
		return append(excludes, keep...), nil
	}
	return nil, nil
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

// BuildCacheSize is the bytes the engine's build cache takes.
func (e *Engine) BuildCacheSize(ctx context.Context) (int64, error) {
	du, err := e.api.DiskUsage(ctx, types.DiskUsageOptions{Types: []types.DiskUsageObject{types.BuildCacheObject}})
	if err != nil {
		return 0, fmt.Errorf("build cache size: %w", err)
	}
	var n int64
	for _, c := range du.BuildCache {
		if !c.Shared {
			n += c.Size
		}
	}
	return n, nil
}

// PruneBuildCache removes build cache until at most keep bytes are left,
// what was used least recently first (BuildKit chooses), never what a
// running build uses; it returns the bytes freed.
func (e *Engine) PruneBuildCache(ctx context.Context, keep int64) (int64, error) {
	o := build.CachePruneOptions{MaxUsedSpace: keep}
	if versions.LessThan(e.api.ClientVersion(), "1.48") {
		o = build.CachePruneOptions{KeepStorage: keep} // what older engines read
	}
	if keep == 0 {
		o = build.CachePruneOptions{All: true}
	}
	rep, err := e.api.BuildCachePrune(ctx, o)
	if err != nil {
		return 0, fmt.Errorf("prune the build cache: %w", err)
	}
	return int64(rep.SpaceReclaimed), nil
}
