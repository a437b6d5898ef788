package ship

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/carebot/carebot/internal/engine"
	"github.com/carebot/carebot/internal/host"
	"github.com/carebot/carebot/internal/shell"
	"github.com/carebot/carebot/internal/text"
	"github.com/carebot/carebot/internal/transfer"
)

// Staging makes a cut transfer cheap to finish: instead of one archive
// streamed into `docker load`, each layer blob the host lacks is appended
// to a file of its own in Options.StageDir, <diff ID hex>.tar[.gz|.zst],
// written as <name>.part and renamed once its sha256 checks out there. The
// next transfer finds what arrived in one round trip, sends no complete
// file again, and resumes a .part after checking, on the host, that its
// bytes are the start of the same blob (the encoders are deterministic,
// and a .part keeps its encoding). Once every layer is there, one shell
// step builds the `docker load` archive from the staged files and the
// small config and manifests, loads it, and removes the files.

// TRANSFER_STAGE values (Options.Stage).
const (
	StageAuto   = "auto"   // stage transfers bigger than stageThreshold
	StageAlways = "always" // stage every transfer
	StageNever  = "never"  // always stream into docker load, as before staging existed
)

// stageThreshold is the size from which auto stages: below it, a transfer
// cut and sent again costs little, and streaming saves the round trips and
// the host's disk.
const stageThreshold = 32 << 20

// sender gets the archive of p.img (the layers above p.skip) loaded on h:
// streamed (load) or staged (Options.stage).
type sender func(ctx context.Context, src Source, h Server, p plan) (transfer.Stats, error)

// transport decides whether the transfer streams or stages, and says which
// and why. A transfer big enough to be worth it has the link measured
// first (p.link): auto stages what would take longer than stageAfter.
func (o Options) transport(ctx context.Context, src Source, p *plan) sender {
	n := len(p.img.Layers) - p.skip
	size := estimate(ctx, src, p.img, p.skip)
	auto := o.Stage != StageNever && o.Stage != StageAlways && o.StageDir != "" && o.Files != nil
	resume := auto && size > stageThreshold && o.arrived(ctx, p.img.Layers[p.skip:])
	how := "" // where p.link comes from
	if size >= probeMin && (p.comp == transfer.Auto || auto) && o.Files != nil && !resume {
		p.link, how = o.linkRate(ctx, p.out)
	}
	if o.StageDir == "" || o.Files == nil {
		return load
	}
	what := fmt.Sprintf("%d layer", n)
	if n != 1 {
		what += "s"
	}
	what += " (" + text.Bytes(size) + ")"
	took := ""
	if how != "" {
		took = fmt.Sprintf(", ~%s at %s %s", (time.Duration(float64(size) / p.link * float64(time.Second))).Round(time.Second), how, text.Rate(p.link))
	}
	switch {
	case o.Stage == StageNever:
		fmt.Fprintf(p.out, "streaming %s into docker load (TRANSFER_STAGE=never)\n", what)
		return load
	case o.Stage == StageAlways:
		fmt.Fprintf(p.out, "staging %s in %s: a cut transfer resumes where it stopped\n", what, o.StageDir)
		return o.stage
	case resume:
		fmt.Fprintf(p.out, "staging %s in %s: resuming the transfer that was cut\n", what, o.StageDir)
		return o.stage
	case size > stageThreshold && (p.link == 0 || float64(size)/p.link > stageAfter.Seconds()):
		fmt.Fprintf(p.out, "staging %s%s in %s: a cut transfer resumes where it stopped\n", what, took, o.StageDir)
		return o.stage
	case size > stageThreshold:
		fmt.Fprintf(p.out, "streaming %s%s into docker load: a cut costs little to send again\n", what, took)
		return load
	}
	fmt.Fprintf(p.out, "streaming %s into docker load\n", what)
	return load
}

// linkRate is the link's rate to o.Files: the last big transfer's, when
// one is on record, else a probe's; and which of the two ("" = neither:
// the transfer measures as it goes).
func (o Options) linkRate(ctx context.Context, out io.Writer) (float64, string) {
	if r, ok := o.Links.Rate(o.Files.String()); ok {
		return r, "the last transfer's"
	}
	probe := o.probe
	if probe == nil {
		probe = linkRate
	}
	r, err := probe(ctx, o.Files)
	if err != nil {
		if ctx.Err() == nil {
			fmt.Fprintf(out, "  (%s; the transfer measures it as it goes)\n", text.ErrLine(err))
		}
		return 0, ""
	}
	return r, "the measured"
}

// arrived says whether the staging folder holds files of these layers: a
// transfer that was cut, which resumes whatever the link (one round trip,
// and no filler to measure it).
func (o Options) arrived(ctx context.Context, layers []string) bool {
	out, err := host.Run(ctx, o.Files, "ls "+shell.Quote(o.StageDir)+" 2>/dev/null || true")
	if err != nil {
		return false
	}
	for _, f := range strings.Fields(out) {
		hexID, _, _ := strings.Cut(f, ".")
		if slices.Contains(layers, "sha256:"+hexID) {
			return true
		}
	}
	return false
}

// layerSizer is a build engine that knows how big its image's layers are
// (*engine.Engine).
type layerSizer interface {
	LayerSizes(ctx context.Context, id string, n int) ([]int64, error)
}

// estimate is roughly how many bytes the layers above skip are,
// uncompressed: the engine's layer sizes where it gives them, else the
// image's share.
func estimate(ctx context.Context, src Source, img engine.Image, skip int) int64 {
	if len(img.Layers) == 0 {
		return 0
	}
	if s, ok := src.(layerSizer); ok {
		if sizes, err := s.LayerSizes(ctx, img.ID, len(img.Layers)); err == nil && len(sizes) == len(img.Layers) {
			var n int64
			for _, z := range sizes[skip:] {
				n += z
			}
			return n
		}
	}
	return img.Size * int64(len(img.Layers)-skip) / int64(len(img.Layers))
}

// stage is the staged sender (see sender).
func (o Options) stage(ctx context.Context, src Source, _ Server, p plan) (transfer.Stats, error) {
	img, skip := p.img, p.skip
	s := &staging{h: o.Files, dir: o.StageDir, layers: img.Layers}
	compress, codec := stagedEncoding(p.comp, p.codec, s)
	if err := s.survey(ctx, img.Layers[skip:]); err != nil {
		return transfer.Stats{}, &stageError{err}
	}
	save, err := src.Save(ctx, img.ID)
	if err != nil {
		return transfer.Stats{}, err
	}
	defer save.Close()
	s.prog = transfer.NewProgress(nil, p.out, estimate(ctx, src, img, skip))
	var meta bytes.Buffer // the config and manifests: a few kB
	st, err := transfer.Write(ctx, save, &meta, transfer.Options{
		Ref: p.ref, ID: img.ID, Layers: img.Layers, Skip: skip, Compress: compress, Codec: codec, Stage: s, LinkRate: p.link, Blobs: p.blobs,
	})
	for _, n := range s.notes {
		fmt.Fprintf(p.out, "  %s\n", n)
	}
	if err != nil {
		if s.prog.TTY && s.prog.N() > 0 {
			fmt.Fprintln(p.out) // the error on a line of its own
		}
		return st, &stageError{err} // not a refusal of the partial image: no second transfer
	}
	s.prog.Done()
	st.WireBytes += s.sent.Load()
	out, err := s.load(ctx, meta.Bytes(), img.Layers[skip:])
	if err != nil {
		return st, fmt.Errorf("docker load on %s of the files staged in %s: %w", s.h, s.dir, err)
	}
	if err := transfer.CheckLoad(out); err != nil {
		return st, fmt.Errorf("docker load on %s: %w", s.h, err)
	}
	return st, nil
}

// stagedEncoding maps TRANSFER_COMPRESSION onto staged layers: each layer
// is a blob of its own, so the whole-archive settings become one encoding
// fixed for every layer; auto stays Auto's choice per layer.
func stagedEncoding(comp, codec string, s *staging) (compress, layerCodec string) {
	switch comp {
	case transfer.Auto:
		s.codec = codec
	case transfer.None:
		s.codec, s.fixed = transfer.Gzip, transfer.None
	default:
		s.codec, s.fixed = comp, comp
	}
	return transfer.Auto, s.codec
}

// staging is one staged transfer: what the host's staging folder holds,
// and what was put there (a transfer.Stager).
type staging struct {
	h      host.Host
	dir    string
	layers []string // the image's diff IDs
	codec  string   // what a compressed layer uses
	fixed  string   // the one encoding of every layer, "" = Auto's choice

	done  map[string]transfer.Blob // complete files, by diff ID
	parts map[string]part          // .part files, by diff ID

	prog *transfer.Progress
	sent atomic.Int64 // layer bytes that crossed

	// Staged runs in the goroutine that reads the save, Put in the one
	// that sends.
	mu    sync.Mutex
	used  []staged // the files the load takes
	notes []string // what was resumed or restarted, said at the end
}

func (s *staging) use(name, digest string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.used = append(s.used, staged{name, digest})
}

func (s *staging) note(format string, a ...any) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.notes = append(s.notes, fmt.Sprintf(format, a...))
}

type part struct {
	method string
	size   int64
}

type staged struct {
	name   string // in the staging folder
	digest string // of its bytes
}

var _ transfer.Stager = (*staging)(nil)

// survey removes from the staging folder the files of layers this transfer
// does not need (the folder never holds more than one transfer), and lists
// the rest, with the digest of each complete file: one round trip.
func (s *staging) survey(ctx context.Context, need []string) error {
	keep := "-none-"
	for _, d := range need {
		keep += "|" + hexOf(d) + ".*"
	}
	cmd := "mkdir -p " + shell.Quote(s.dir) + " && cd " + shell.Quote(s.dir) + ` && rm -rf load && for f in *; do
[ -f "$f" ] || continue
case "$f" in ` + keep + `) ;; *) rm -f -- "$f"; continue;; esac
n=$(wc -c < "$f")
case "$f" in *.part) echo "part $n $f";; *) h=$(sha256sum < "$f") && echo "done $n ${h%% *} $f";; esac
done`
	out, err := host.Run(ctx, s.h, cmd)
	if err != nil {
		return fmt.Errorf("list the staging folder %s on %s: %w", s.dir, s.h, err)
	}
	s.done, s.parts = map[string]transfer.Blob{}, map[string]part{}
	for _, line := range strings.Split(out, "\n") {
		s.parse(strings.Fields(line), need)
	}
	return nil
}

// parse reads one line of survey: "part <size> <name>" or
// "done <size> <sha256 hex> <name>". Names it does not know are ignored
// (and overwritten or removed later).
func (s *staging) parse(f []string, need []string) {
	if len(f) < 3 {
		return
	}
	name := f[len(f)-1]
	size, err := strconv.ParseInt(f[1], 10, 64)
	hexID, _, _ := strings.Cut(name, ".")
	method, ok := transfer.MethodOf(strings.TrimSuffix(name, ".part"))
	diffID := "sha256:" + hexID
	if err != nil || !ok || !slices.Contains(need, diffID) {
		return
	}
	switch {
	case f[0] == "part" && strings.HasSuffix(name, ".part"):
		if old, ok := s.parts[diffID]; !ok || !s.resumable(old.method) || s.resumable(method) && size > old.size {
			s.parts[diffID] = part{method, size} // of two, the one to resume
		}
	case f[0] == "done" && len(f) == 4 && !strings.HasSuffix(name, ".part"):
		b := transfer.Blob{DiffID: diffID, Method: method, Digest: "sha256:" + f[2], Size: size}
		if method != transfer.None || b.Digest == diffID { // (a raw blob is its diff ID)
			s.done[diffID] = b
		}
	}
}

// Staged is a complete file of the layer, which the load takes as it is.
func (s *staging) Staged(diffID string) (transfer.Blob, bool) {
	b, ok := s.done[diffID]
	if ok {
		s.use(hexOf(diffID)+transfer.Ext(b.Method), b.Digest)
		s.note("layer %d/%d (%s): staged already, not sent again", s.index(diffID), len(s.layers), text.Bytes(b.Size))
	}
	return b, ok
}

// Method keeps the encoding of a partial file, so that it can be resumed;
// a partial file in an encoding this transfer does not produce is started
// over.
func (s *staging) Method(diffID string) (string, string) {
	if p, ok := s.parts[diffID]; ok && s.resumable(p.method) {
		return p.method, "as its partial file"
	}
	if s.fixed != "" {
		return s.fixed, "TRANSFER_COMPRESSION=" + s.fixed
	}
	return "", ""
}

// resumable says whether this transfer can produce a blob encoded with
// method again: raw, or compressed with the codec it uses.
func (s *staging) resumable(method string) bool {
	return method == transfer.None || method == s.codec
}

// Put appends the blob to its .part file from where that stopped (or from
// 0), then has the host check the whole file's digest and rename it.
func (s *staging) Put(ctx context.Context, b transfer.Blob, r io.ReaderAt, link func(io.Writer) io.Writer) error {
	name := hexOf(b.DiffID) + transfer.Ext(b.Method)
	from, err := s.resumeAt(ctx, name, b, r)
	if err != nil {
		return err
	}
	if err := s.upload(ctx, name, b, r, from, link); err != nil {
		return err
	}
	s.use(name, b.Digest)
	return nil
}

// resumeAt is where the upload of b starts: the size of its .part if the
// host finds that those bytes hash as the blob's first ones do here, else 0.
func (s *staging) resumeAt(ctx context.Context, name string, b transfer.Blob, r io.ReaderAt) (int64, error) {
	p, ok := s.parts[b.DiffID]
	if !ok || p.method != b.Method || p.size == 0 {
		return 0, nil
	}
	i, of := s.index(b.DiffID), len(s.layers)
	if p.size > b.Size {
		s.note("layer %d/%d: its partial file is longer than the layer: sent again from the start", i, of)
		return 0, nil
	}
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(r, 0, p.size)); err != nil {
		return 0, fmt.Errorf("read layer %d/%d: %w", i, of, err)
	}
	sum := hex.EncodeToString(h.Sum(nil))
	f := shell.Quote(name + ".part")
	out, err := host.Run(ctx, s.h, fmt.Sprintf("cd %s && [ \"$(wc -c < %s)\" -eq %d ] && h=$(head -c %d %s | sha256sum) && [ \"${h%%%% *}\" = %s ] && echo same || echo differs",
		shell.Quote(s.dir), f, p.size, p.size, f, sum))
	if err != nil {
		return 0, fmt.Errorf("check the partial layer %s on %s: %w", name, s.h, err)
	}
	if strings.TrimSpace(out) != "same" {
		s.note("layer %d/%d: its partial file (%s) is not the start of this layer: sent again from the start", i, of, text.Bytes(p.size))
		return 0, nil
	}
	s.note("layer %d/%d: resumed at %s of %s", i, of, text.Bytes(p.size), text.Bytes(b.Size))
	return p.size, nil
}

// upload sends b's bytes from offset from, appending them to name.part (a
// fresh one when from is 0), and renames it to name once its sha256 is b's.
func (s *staging) upload(ctx context.Context, name string, b transfer.Blob, r io.ReaderAt, from int64, link func(io.Writer) io.Writer) error {
	p, f := shell.Quote(name+".part"), shell.Quote(name)
	redirect := ">>"
	if from == 0 {
		redirect = ">"
	}
	want := strings.TrimPrefix(b.Digest, "sha256:")
	// A cut link ends cat's input as if the blob were complete: a file
	// short of its size is kept for the next transfer, and only one of the
	// right size that hashes wrong is removed.
	cmd := fmt.Sprintf(`cd %s && cat %s %s && n=$(wc -c < %s) && if [ "$n" -ne %d ]; then echo "%s has $n of %d bytes: the upload stopped early" >&2; exit 1; fi && `+
		`h=$(sha256sum < %s) && if [ "${h%%%% *}" = %s ]; then mv -f %s %s; else rm -f %s; echo "%s hashes to ${h%%%% *}, not %s: removed it" >&2; exit 1; fi`,
		shell.Quote(s.dir), redirect, p, p, b.Size, name, b.Size, p, want, p, f, p, name, want)
	pr, pw := io.Pipe()
	copied := make(chan struct{})
	go func() {
		defer close(copied)
		s.prog.W = pw
		w := link(s.prog)
		n, err := io.Copy(w, io.NewSectionReader(r, from, b.Size-from))
		s.sent.Add(n)
		pw.CloseWithError(err)
	}()
	var out bytes.Buffer
	w := host.Synced(&out)[0]
	err := s.h.Exec(ctx, cmd, pr, w, w)
	pr.CloseWithError(errors.New("the upload ended"))
	<-copied
	if err == nil {
		return nil
	}
	i, of := s.index(b.DiffID), len(s.layers)
	if strings.Contains(strings.ToLower(out.String()), "no space left") {
		return fmt.Errorf("the disk of %s is full: staging layer %d/%d (%s) in %s stopped; free space there (docker system prune, old backups), then deploy again: what arrived is kept and the next deploy resumes",
			s.h, i, of, text.Bytes(b.Size), s.dir)
	}
	if ctx.Err() != nil {
		return &said{fmt.Sprintf("interrupted while staging layer %d/%d in %s on %s: what arrived is kept, and the next deploy resumes from there; nothing else was changed",
			i, of, s.dir, s.h), ctx.Err()}
	}
	cerr := &host.CommandError{Cmd: "cat", Output: out.String(), Err: err}
	var lost *host.ConnLostError
	if errors.As(err, &lost) {
		return fmt.Errorf("staging layer %d/%d in %s: %w; what arrived is kept, and the next deploy resumes from there", i, of, s.dir, cerr)
	}
	return fmt.Errorf("stage layer %d/%d in %s on %s: %w", i, of, s.dir, s.h, cerr)
}

// load builds the `docker load` archive on the host from meta (a tar of
// the config and manifests) and the staged files, loads it, and removes
// the staged files of need unless the load failed (they may serve again).
func (s *staging) load(ctx context.Context, meta []byte, need []string) (string, error) {
	var b strings.Builder
	b.WriteString("cd " + shell.Quote(s.dir) + " && rm -rf load && mkdir load && tar -xf - -C load && mkdir -p load/blobs/sha256")
	for _, f := range s.used {
		fmt.Fprintf(&b, " && ln -s ../../../%s load/blobs/sha256/%s", shell.Quote(f.name), hexOf(f.digest))
	}
	// tar -h: the archive holds the staged files, not the links.
	b.WriteString(` && { out=$(tar -C load -ch blobs oci-layout index.json manifest.json | docker load 2>&1); s=$?; rm -rf load; printf '%s\n' "$out"
ok=; case "$out" in *"Loaded image"*) ok=1;; esac; case "$out" in *"Error "*) ok=;; esac
if [ $s -eq 0 ] && [ -n "$ok" ]; then rm -f --`)
	for _, d := range need {
		b.WriteString(" " + hexOf(d) + ".*")
	}
	b.WriteString("; fi; exit $s; }")
	return host.RunWithInput(ctx, s.h, b.String(), bytes.NewReader(meta))
}

// said is err told in the words of msg alone (err stays in the chain).
type said struct {
	msg string
	err error
}

func (e *said) Error() string { return e.msg }
func (e *said) Unwrap() error { return e.err }

// stageError is a staged transfer that failed before the load: the host
// did not refuse the image, so sending the whole of it would not help.
type stageError struct{ err error }

func (e *stageError) Error() string { return e.err.Error() }
func (e *stageError) Unwrap() error { return e.err }

// index is the 1-based position of a layer in the image.
func (s *staging) index(diffID string) int {
	for i, d := range s.layers {
		if d == diffID {
			return i + 1
		}
	}
	return 0
}

func hexOf(digest string) string { return strings.TrimPrefix(digest, "sha256:") }
