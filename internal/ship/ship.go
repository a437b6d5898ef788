// Package ship gets an image built on this machine onto a host: the host's
// engine is asked through its API what it has, an image the host cannot run
// is refused before a byte is sent, only the layers the host lacks travel
// (each raw or compressed, as measured), streamed into the engine's load or
// staged in files on the host so that a cut transfer resumes (stage.go),
// the whole image goes once if the partial one is refused, and the ID the
// host ends up with is checked.
//
// It sits below deploy and above engine, transfer and host: deploy calls it
// for the image of a release, and nothing here calls back up.
package ship

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/carebot/carebot/internal/engine"
	"github.com/carebot/carebot/internal/host"
	"github.com/carebot/carebot/internal/text"
	"github.com/carebot/carebot/internal/transfer"
)

// Source is what shipping needs of the engine the image was built on;
// *engine.Engine has it.
type Source interface {
	Image(ctx context.Context, ref string) (engine.Image, error)
	Save(ctx context.Context, refs ...string) (io.ReadCloser, error)
}

var _ Source = (*engine.Engine)(nil)

// Options say how the image travels.
type Options struct {
	// COMPRESSION: auto (each layer raw or compressed, as the link and this
	// machine's compressor measure while sending; zstd where the host's
	// engine takes it, else gzip), or zstd, gzip or none for the whole
	// archive.
	Compression string
	Out         io.Writer // what is done, and the transfer's progress; nil: nothing

	// StageDir is the host's staging folder (DEPLOY_PATH/.carebot/staging),
	// where a big transfer goes layer by layer and a cut one resumes (see
	// stage.go); "" = never stage. Stage is TRANSFER_STAGE: StageAuto ("" too),
	// StageAlways or StageNever.
	StageDir string
	Stage    string
	Files    host.Host // the host whose StageDir it is: staged files are written, and loaded, with its shell; the link to it is measured with it

	// Links, if set, is where the rate of each host's transfers is kept,
	// and read instead of measuring the link anew.
	Links Links

	probe func(ctx context.Context, h host.Host) (float64, error) // measures the link (tests); nil: linkRate
}

// Stats is what one Image call did, for messages and benchmarks.
type Stats struct {
	transfer.Stats
	Compression string // the archive's: transfer.Auto, or a codec for all of it
	Codec       string // with Auto: what a compressed layer uses
	Fallback    bool   // the partial load failed and the whole image was sent
	Skipped     bool   // the host had the image already
	ServerID    string // the image's ID on the host, checked
	Duration    time.Duration
}

// Server is the host's Docker engine, as shipping needs it: reached
// through its API (engine.ConnectServer on the run's SSH connection, or
// this machine's engine for a local deploy). String names the host.
type Server interface {
	Platform(ctx context.Context) (engine.Platform, error)
	ImageID(ctx context.Context, ref string) (string, error)
	LayerChains(ctx context.Context) ([][]string, error)
	Load(ctx context.Context, archive io.Reader) (string, error)
	String() string
}

var _ Server = (*engine.Engine)(nil)

// zstdAPI is the first Engine API version whose `docker load` takes zstd
// (Docker 25); older engines, such as Debian's 20.10, take gzip only.
const zstdAPI = "1.44"

// Image puts the image id, built on src, on h as ref, and returns the ID h
// knows it by: the same ID on the classic image store; on the containerd
// store, the digest of the manifest that was sent. An empty id means the
// image ref names on src. When h has it already (a deploy to this
// machine's own engine, a redeploy), nothing is sent.
func Image(ctx context.Context, src Source, h Server, ref, id string, o Options) (Stats, error) {
	start := time.Now()
	out := o.Out
	if out == nil {
		out = io.Discard
	}
	if id == "" {
		id = ref
	}
	img, err := src.Image(ctx, id)
	if errors.Is(err, engine.ErrNotFound) {
		return Stats{}, fmt.Errorf("image %s (%s) is not on the build engine any more: build it again (mage build)", ref, text.ShortID(id))
	}
	if err != nil {
		return Stats{}, err
	}
	srv, haveID, chains, err := survey(ctx, h, ref, img.ID)
	if err != nil {
		return Stats{}, err
	}
	if err := checkPlatform(img, srv, ref, h.String()); err != nil {
		return Stats{}, err
	}
	st := Stats{}
	st.Compression, st.Codec = compression(o.Compression, srv)
	how := st.Compression
	if how == transfer.Auto {
		how = "each layer raw or " + st.Codec + " as the link allows"
	}
	if haveID == img.ID {
		st.Skipped, st.Duration, st.ServerID = true, time.Since(start), img.ID
		fmt.Fprintf(out, "%s already has %s (%s)\n", h, ref, text.ShortID(img.ID))
		return st, nil
	}
	skip := transfer.Present(img.Layers, chains)
	if skip == 0 {
		fmt.Fprintf(out, "sending %s to %s: all %d layers, %s\n", ref, h, len(img.Layers), how)
	} else {
		fmt.Fprintf(out, "sending %s to %s: %d of %d layers (the server has the other %d), %s\n", ref, h, len(img.Layers)-skip, len(img.Layers), skip, how)
	}
	p := plan{img: img, ref: ref, skip: skip, comp: st.Compression, codec: st.Codec, out: out, blobs: blobsOf(src)}
	send := o.transport(ctx, src, &p) // streamed, or staged (stage.go)
	st.Stats, err = send(ctx, src, h, p)
	if err == nil && st.WireBytes >= probeMin && st.Took > 0 && o.Files != nil {
		o.Links.Record(o.Files.String(), float64(st.WireBytes)/st.Took.Seconds())
	}
	if err != nil && skip > 0 && ctx.Err() == nil && !engine.Lost(err) && !errors.As(err, new(*stageError)) {
		fmt.Fprintf(out, "the server refused the partial image (%s); sending the whole image once\n", text.ErrLine(err))
		st.Fallback = true
		p.skip = 0
		st.Stats, err = send(ctx, src, h, p)
	}
	st.Duration = time.Since(start)
	if err != nil {
		return st, err
	}
	for _, c := range st.Choices {
		fmt.Fprintf(out, "  %s\n", c)
	}
	if st.ProbeBytes > 0 {
		fmt.Fprintf(out, "  (%s of filler measured the link)\n", text.Bytes(st.ProbeBytes))
	}
	fmt.Fprintf(out, "sent %s in %.1fs (%s on the wire)\n", ref, st.Duration.Seconds(), text.Bytes(st.WireBytes))
	// The classic store names an image by its config digest (the local ID);
	// the containerd store by the manifest we wrote. Either proves the
	// server holds exactly the image that was built.
	st.ServerID, err = h.ImageID(ctx, ref)
	if err != nil {
		return st, err
	}
	if st.ServerID != img.ID && st.ServerID != st.Config && st.ServerID != st.Manifest {
		got := text.ShortID(st.ServerID)
		if got == "" {
			got = "missing"
		}
		return st, fmt.Errorf("%s on %s is %s after loading, not the %s that was built", ref, h, got, text.ShortID(img.ID))
	}
	return st, nil
}

// survey asks the host's engine for its version and platform, the ID it
// has for ref, and (unless that is want already) the layer chains of all
// its images.
func survey(ctx context.Context, h Server, ref, want string) (srv engine.Platform, haveID string, chains [][]string, err error) {
	if srv, err = h.Platform(ctx); err != nil {
		return srv, "", nil, err
	}
	if haveID, err = h.ImageID(ctx, ref); err != nil || haveID == want {
		return srv, haveID, nil, err
	}
	chains, err = h.LayerChains(ctx)
	return srv, haveID, chains, err
}

// checkPlatform refuses an image the server's CPU cannot run, before a byte
// of it is sent.
func checkPlatform(img engine.Image, srv engine.Platform, ref, where string) error {
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

// compression picks how the archive travels: the setting for the whole
// archive, or with "auto" each layer as the transfer measures, compressed
// (where it pays) with zstd where the server's engine takes it and gzip
// elsewhere.
func compression(setting string, srv engine.Platform) (compress, codec string) {
	if setting != "auto" {
		return setting, ""
	}
	if apiAtLeast(srv.APIVersion, zstdAPI) {
		return transfer.Auto, transfer.Zstd
	}
	return transfer.Auto, transfer.Gzip
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

// plan is one transfer: the image, the layers above skip, how they are
// encoded, the link's rate if measured (0 = not), and where progress goes.
type plan struct {
	img   engine.Image
	ref   string
	skip  int
	comp  string // the archive's encoding, or transfer.Auto
	codec string // with Auto: what a compressed layer uses
	link  float64
	out   io.Writer
	blobs *transfer.Blobs // shared with the run's other hosts, or nil
}

// load streams one archive (the layers above skip) into `docker load` on
// the host: no file on either side but a local spool for layers whose
// identity the save format hides.
func load(ctx context.Context, src Source, h Server, p plan) (transfer.Stats, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	save, err := src.Save(ctx, p.img.ID)
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
		if p.skip == 0 {
			estimate = p.img.Size
		}
		stats, err = transfer.Write(ctx, save, pw, transfer.Options{
			Ref: p.ref, ID: p.img.ID, Layers: p.img.Layers, Skip: p.skip, Compress: p.comp, Codec: p.codec,
			LinkRate: p.link, Progress: p.out, Estimate: estimate, Blobs: p.blobs,
		})
		pw.CloseWithError(err)
		werr <- err
	}()
	out, lerr := h.Load(ctx, pr)
	pr.CloseWithError(errors.New("docker load ended"))
	if err := <-werr; err != nil && lerr == nil {
		return stats, fmt.Errorf("write the image archive: %w", err)
	}
	if lerr != nil {
		return stats, lerr
	}
	if err := transfer.CheckLoad(out); err != nil {
		return stats, fmt.Errorf("docker load on %s: %w", h, err)
	}
	return stats, nil
}
