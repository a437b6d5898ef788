package tasks

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/carebot/carebot/internal/text"

	"github.com/carebot/carebot/internal/shell"

	"github.com/carebot/carebot/internal/engine"
	"github.com/carebot/carebot/internal/host"
	"github.com/carebot/carebot/internal/transfer"
)

// serverEngine is what Ship learns of the server's Docker engine.
type serverEngine struct {
	APIVersion string
	OS, Arch   string
}

// zstdAPI is the first Engine API version whose `docker load` takes zstd
// (Docker 25); older engines, such as Debian's 20.10, take gzip only.
const zstdAPI = "1.44"

// survey asks the server, in one round trip, for its engine's version and
// platform, the ID it has for ref, and the layer chains of all its images.
func survey(ctx context.Context, h host.Host, ref string) (srv serverEngine, haveID string, chains [][]string, err error) {
	q := shell.Quote(ref)
	out, err := host.Run(ctx, h, "docker version --format '{{.Server.APIVersion}} {{.Server.Os}} {{.Server.Arch}}' && "+
		"{ docker image inspect --format '{{.Id}}' "+q+" 2>/dev/null || echo none; } && "+
		"docker image ls -aq --no-trunc | sort -u | xargs -r docker image inspect --format '{{json .RootFS.Layers}}'")
	if err != nil {
		return srv, "", nil, fmt.Errorf("the Docker engine on %s does not answer: %w", h, err)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	f := strings.Fields(lines[0])
	if len(f) != 3 || len(lines) < 2 {
		return srv, "", nil, fmt.Errorf("docker version on %s printed %q", h, strings.TrimSpace(out))
	}
	srv = serverEngine{APIVersion: f[0], OS: f[1], Arch: f[2]}
	if id := strings.TrimSpace(lines[1]); id != "none" {
		haveID = id
	}
	for _, line := range lines[2:] {
		var layers []string
		if json.Unmarshal([]byte(line), &layers) == nil && len(layers) > 0 {
			chains = append(chains, layers)
		}
	}
	return srv, haveID, chains, nil
}

// checkPlatform refuses an image the server's CPU cannot run, before a byte
// of it is sent.
func checkPlatform(img engine.Image, srv serverEngine, ref, where string) error {
	if img.OS == srv.OS && normArch(img.Arch) == normArch(srv.Arch) {
		return nil
	}
	return fmt.Errorf("image %s is built for %s/%s but %s runs %s/%s: build it for the server's platform (GOARCH_IMAGE=%s); nothing was sent",
		ref, img.OS, img.Arch, where, srv.OS, srv.Arch, normArch(srv.Arch))
}

// normArch maps the engine's names (x86_64, aarch64) to Go's and OCI's.
func normArch(a string) string {
	switch a {
	case "x86_64", "x86-64":
		return "amd64"
	case "aarch64":
		return "arm64"
	}
	return a
}

// compression picks how the archive travels: the setting, or with "auto"
// zstd where the server's engine takes it and gzip elsewhere.
func compression(setting string, srv serverEngine) string {
	if setting != "auto" {
		return setting
	}
	if apiAtLeast(srv.APIVersion, zstdAPI) {
		return "zstd"
	}
	return "gzip"
}

func apiAtLeast(v, min string) bool {
	vs, ms := strings.SplitN(v, ".", 2), strings.SplitN(min, ".", 2)
	if len(vs) != 2 || len(ms) != 2 {
		return false
	}
	a, _ := strconv.Atoi(vs[0])
	b, _ := strconv.Atoi(vs[1])
	c, _ := strconv.Atoi(ms[0])
	d, _ := strconv.Atoi(ms[1])
	return a > c || a == c && b >= d
}

// ShipStats is what one image transfer did, for messages and benchmarks.
type ShipStats struct {
	transfer.Stats
	Compression string
	Fallback    bool   // the partial load failed and the whole image was sent
	Skipped     bool   // the server had the image already
	ServerID    string // the image's ID on the server
	Duration    time.Duration
}

// Ship sends the local image ref to the server behind h: only the layers it
// lacks, compressed, streamed straight into `docker load` (no file on
// either side but a local spool for layers whose identity the save format
// hides). If the partial archive is refused, it sends the whole image once.
func (r *Runner) Ship(ctx context.Context, h host.Host, ref string) (ShipStats, error) {
	start := time.Now()
	e, err := r.Engine(ctx)
	if err != nil {
		return ShipStats{}, err
	}
	img, err := e.Image(ctx, ref)
	if err != nil {
		return ShipStats{}, err
	}
	srv, haveID, chains, err := survey(ctx, h, ref)
	if err != nil {
		return ShipStats{}, err
	}
	if err := checkPlatform(img, srv, ref, h.String()); err != nil {
		return ShipStats{}, err
	}
	st := ShipStats{Compression: compression(r.Cfg.Compression, srv)}
	if haveID == img.ID {
		st.Skipped, st.Duration, st.ServerID = true, time.Since(start), img.ID
		r.printf("%s already has %s (%s)\n", h, ref, text.ShortID(img.ID))
		return st, nil
	}
	skip := transfer.Present(img.Layers, chains)
	if skip == 0 {
		r.printf("sending %s to %s: all %d layers, %s\n", ref, h, len(img.Layers), st.Compression)
	} else {
		r.printf("sending %s to %s: %d of %d layers (the server has the other %d), %s\n", ref, h, len(img.Layers)-skip, len(img.Layers), skip, st.Compression)
	}
	st.Stats, err = r.load(ctx, e, h, img, ref, skip, st.Compression)
	if err != nil && skip > 0 && ctx.Err() == nil {
		r.printf("the server refused the partial image (%s); sending the whole image once\n", text.ErrLine(err))
		st.Fallback = true
		st.Stats, err = r.load(ctx, e, h, img, ref, 0, st.Compression)
	}
	st.Duration = time.Since(start)
	if err != nil {
		return st, err
	}
	r.printf("sent %s in %.1fs (%s on the wire)\n", ref, st.Duration.Seconds(), text.Bytes(st.WireBytes))
	// The classic store names an image by its config digest (the local ID);
	// the containerd store by the manifest we wrote. Either proves the
	// server holds exactly the image that was built.
	got, err := host.Run(ctx, h, "docker image inspect --format '{{.Id}}' "+shell.Quote(ref))
	if err != nil {
		return st, fmt.Errorf("inspect %s on %s after loading: %w", ref, h, err)
	}
	st.ServerID = strings.TrimSpace(got)
	if st.ServerID != img.ID && st.ServerID != st.Config && st.ServerID != st.Manifest {
		return st, fmt.Errorf("%s on %s is %s after loading, not the %s that was built", ref, h, text.ShortID(st.ServerID), text.ShortID(img.ID))
	}
	return st, nil
}

// load streams one archive into `docker load` on the server.
func (r *Runner) load(ctx context.Context, e *engine.Engine, h host.Host, img engine.Image, ref string, skip int, comp string) (transfer.Stats, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	save, err := e.Save(ctx, img.ID)
	if err != nil {
		return transfer.Stats{}, err
	}
	defer save.Close()
	pr, pw := io.Pipe()
	var stats transfer.Stats
	werr := make(chan error, 1)
	go func() {
		var err error
		var estimate int64
		if skip == 0 {
			estimate = img.Size
		}
		stats, err = transfer.Write(ctx, save, pw, transfer.Options{
			Ref: ref, ID: img.ID, Layers: img.Layers, Skip: skip, Compress: comp,
			Progress: r.Out, Estimate: estimate,
		})
		pw.CloseWithError(err)
		werr <- err
	}()
	out, lerr := runWithStdin(ctx, h, "docker load", pr)
	pr.CloseWithError(errors.New("docker load ended"))
	if err := <-werr; err != nil && lerr == nil {
		return stats, fmt.Errorf("write the image archive: %w", err)
	}
	if lerr != nil {
		return stats, fmt.Errorf("docker load on %s: %w", h, lerr)
	}
	if err := transfer.CheckLoad(out); err != nil {
		return stats, fmt.Errorf("docker load on %s: %w", h, err)
	}
	return stats, nil
}

func runWithStdin(ctx context.Context, h host.Host, cmd string, stdin io.Reader) (string, error) {
	var out strings.Builder
	w := host.Synced(&out)[0]
	if err := h.Exec(ctx, cmd, stdin, w, w); err != nil {
		return out.String(), &host.CommandError{Cmd: cmd, Output: out.String(), Err: err}
	}
	return out.String(), nil
}
