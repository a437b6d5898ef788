package transfer

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"path"
	"slices"
	"strings"
	"time"

	"github.com/distribution/reference"
)

// Options describe one load archive.
type Options struct {
	Ref string // name:tag the server tags the image with; "" = the tag the save carries
	// ID is the image ID (from engine.Image), checked if set: the config's
	// digest on the classic store; on the containerd store, the digest of
	// the image's manifest or index, which the save then holds as a blob.
	ID     string
	Layers []string // the image's diff IDs, base first (from engine.Image); required
	Skip   int      // how many leading layers the server has (from Present); 0 = send all

	// Compress is Gzip, Zstd or None for the whole archive as one stream
	// ("" = Gzip), or Auto: a plain tar whose layers are each sent raw or
	// compressed with Codec (Gzip or Zstd; "" = Gzip), as the link and this
	// machine's compressor are measured while sending (see Auto).
	Compress string
	Codec    string

	// LinkRate is the link's rate in bytes/s as measured before the
	// transfer (ship probes it without `docker load` in the way), which Auto
	// goes by until its own measurement while sending takes over; 0 =
	// unknown, so a few MiB of filler measure it before the first big layer.
	LinkRate float64

	// decide, if set, fixes Auto's choice for the layer at an index (tests).
	decide func(layer int) string

	// Progress, if set, receives a progress line of the bytes on the wire
	// (redrawn on a terminal, every 5 s elsewhere); Estimate is how many
	// there will be, roughly (0 = unknown: no time left is shown).
	Progress io.Writer
	Estimate int64

	// Stage, if set, takes the layer blobs instead of the archive (see
	// Stager): the archive written to w then holds only the config and the
	// manifests, and every layer is spooled locally before it goes.
	Stage Stager

	// Blobs, if set, is shared by the transfers of one run to several
	// servers: each layer is compressed once for all of them (see Blobs).
	Blobs *Blobs

	// TempDir is a directory on THIS machine for holding one layer at a time:
	// the legacy save layout names a layer only by a v1 ID, so its diff ID is
	// known after its last byte, too late for the tar header that must come
	// first. "" = os.TempDir(). Nothing is ever written on the server.
	TempDir string
}

// Stats say what Write sent.
type Stats struct {
	Layers    int   // layers of the image
	Sent      int   // layer blobs in the archive
	RawBytes  int64 // the archive before compression (with Auto: as if no layer were compressed)
	WireBytes int64 // the archive as written to w
	// With Auto: how each layer sent went, in the order sent, and the bytes
	// of filler sent to measure the link.
	Choices    []Choice
	ProbeBytes int64
	// Took is how long Write ran: until the last byte was taken by w (or,
	// staging, by the stager), not counting what the server does after.
	Took time.Duration
	// The image ID the server will show after the load: Config (the config's
	// digest) on the classic store, Manifest (of the OCI image manifest in
	// the archive) on the containerd store. Config is also the local image
	// ID when the local engine uses the classic store.
	Config, Manifest string
}

// Media types of the OCI image layout Write produces.
const (
	mediaIndex    = "application/vnd.oci.image.index.v1+json"
	mediaManifest = "application/vnd.oci.image.manifest.v1+json"
	mediaConfig   = "application/vnd.oci.image.config.v1+json"
	mediaLayer    = "application/vnd.oci.image.layer.v1.tar"
)

// maxMeta bounds a JSON file (config, manifest) kept in memory.
const maxMeta = 16 << 20

// Write reads `docker save` of ONE image from save and writes to w a
// compressed `docker load` archive that holds the image's config and its
// layers above o.Skip, and names all of its layers.
//
// It streams: layers pass through one at a time (in the legacy layout each is
// first copied to o.TempDir to learn its diff ID), so memory stays small
// whatever the image's size. Every layer it reads is checked against
// o.Layers, and the config against them and o.ID. On error the archive
// written so far is unusable: abort the load it feeds.
func Write(ctx context.Context, save io.Reader, w io.Writer, o Options) (Stats, error) {
	start := time.Now()
	if len(o.Layers) == 0 {
		return Stats{}, errors.New("transfer: no layers given (Options.Layers)")
	}
	if o.Skip < 0 || o.Skip > len(o.Layers) {
		return Stats{}, fmt.Errorf("transfer: skip %d of %d layers", o.Skip, len(o.Layers))
	}
	if o.Ref != "" {
		if _, err := parseRef(o.Ref); err != nil {
			return Stats{}, err // before a byte is sent
		}
	}
	var prog *Progress
	if o.Progress != nil {
		prog = NewProgress(w, o.Progress, o.Estimate)
		w = prog
	}
	link := &meter{w: w, now: time.Now, prior: o.LinkRate}
	wire := &Counter{W: link}
	var auto *adaptive
	var zw io.WriteCloser
	if o.Compress == Auto {
		auto = &adaptive{codec: o.Codec, workers: encoders(), link: link, now: time.Now, decide: o.decide}
		if auto.codec == "" {
			auto.codec = Gzip
		}
		var err error
		if auto.encode, auto.release, err = newEncode(auto.codec, auto.workers); err != nil {
			return Stats{}, fmt.Errorf("transfer: %w", err)
		}
		defer auto.close()
		zw = nopCloser{wire}
	} else {
		var err error
		if zw, err = compressor(wire, o.Compress); err != nil {
			return Stats{}, err
		}
	}
	raw := &Counter{W: zw}
	x := &rewriter{
		ctx:      ctx,
		o:        o,
		tw:       tar.NewWriter(raw),
		need:     map[string]bool{},
		ours:     map[string]bool{},
		sent:     map[string]bool{},
		size:     map[string]int64{},
		digest:   map[string]string{},
		links:    map[string]string{},
		meta:     map[string][]byte{},
		blobs:    map[string]bool{},
		auto:     auto,
		blobOf:   map[string]descriptor{},
		pathOf:   map[string]string{},
		dirs:     map[string]bool{},
		v1:       map[string]v1Layer{},
		presumed: map[string]bool{},
	}
	for i, d := range o.Layers {
		x.ours[d] = true
		if i >= o.Skip {
			x.need[d] = true
		}
	}
	x.startSender()
	err := x.read(ctx, save)
	if err == nil {
		err = x.drain()
	}
	if serr := x.stopSender(err); err == nil {
		err = serr
	}
	if err == nil {
		err = x.finish()
	}
	if err == nil {
		err = x.tw.Close()
	}
	if cerr := zw.Close(); err == nil && cerr != nil { // also stops zstd's goroutines after an error
		err = fmt.Errorf("transfer: compress: %w", cerr)
	}
	if prog != nil {
		prog.end(err == nil)
	}
	if err != nil {
		return Stats{}, err
	}
	return Stats{Layers: len(o.Layers), Sent: len(x.sent), RawBytes: raw.N + x.saved - x.probed, WireBytes: wire.N,
		Choices: x.choices, ProbeBytes: x.probed, Config: x.configDigest, Manifest: x.manifestDigest, Took: time.Since(start)}, nil
}

// rewriter is the state of one Write.
type rewriter struct {
	ctx context.Context // for the stager, which the sender calls
	o   Options
	tw  *tar.Writer

	need map[string]bool  // diff IDs to send
	ours map[string]bool  // diff IDs of the image
	sent map[string]bool  // diff IDs already in the archive
	size map[string]int64 // diff ID -> uncompressed size, of every layer seen

	digest   map[string]string // save path -> diff ID of the layer there
	links    map[string]string // save path -> the path a symlink points at
	meta     map[string][]byte // save path -> small JSON file
	manifest []struct {
		Config   string
		RepoTags []string
		Layers   []string
	}
	dirs           map[string]bool // directories written
	configDigest   string
	manifestDigest string             // of the OCI manifest written
	blobs          map[string]bool    // digests named by blobs/sha256/ in the save
	v1             map[string]v1Layer // legacy layout: layer folder -> what its json says
	presumed       map[string]bool    // save path -> a layer taken for one the server has, unread (see present)

	snd     *sender
	auto    *adaptive             // nil unless Options.Compress is Auto
	blobOf  map[string]descriptor // diff ID -> the compressed blob sent for it
	pathOf  map[string]string     // diff ID -> where a layer streamed raw went, if not blobs/sha256/<diff ID>
	choices []Choice
	saved   int64 // bytes compression took off the layers sent
	probed  int64 // bytes of filler sent to measure the link
}

// read goes once through the save archive, sending needed layers as it meets them.
func (x *rewriter) read(ctx context.Context, save io.Reader) error {
	tr := tar.NewReader(ctxReader{ctx, save})
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read image archive: %w", err)
		}
		name := path.Clean(h.Name)
		switch {
		case h.Typeflag == tar.TypeSymlink:
			// docker save links a layer whose diff ID it has already written.
			x.links[name] = path.Join(path.Dir(name), h.Linkname)
		case h.Typeflag != tar.TypeReg:
		case name == "manifest.json":
			if err := json.NewDecoder(io.LimitReader(tr, maxMeta)).Decode(&x.manifest); err != nil {
				return fmt.Errorf("read image archive: manifest.json: %w", err)
			}
		case strings.HasPrefix(name, "blobs/sha256/"):
			x.blobs["sha256:"+path.Base(name)] = true
			err = x.blob(tr, h, name, "sha256:"+path.Base(name))
		case path.Base(name) == "layer.tar":
			if x.present(path.Dir(name), name, h.Size) {
				break // not read: the server has it
			}
			err = x.layer(tr, h.Size, name, "")
		case path.Base(name) == "json" && strings.Count(name, "/") == 1:
			err = x.v1JSON(tr, path.Dir(name))
		case !strings.Contains(name, "/") && strings.HasSuffix(name, ".json"):
			err = x.keep(tr, h, name) // the legacy layout's <image ID>.json config
		}
		if err != nil {
			return err
		}
	}
}

// blob handles blobs/sha256/<digest> of the OCI layout: an uncompressed layer
// of ours is known by its name, sent straight through or not read at all;
// a compressed layer must be unpacked to learn its diff ID; JSON is kept.
func (x *rewriter) blob(tr *tar.Reader, h *tar.Header, name, digest string) error {
	if x.ours[digest] {
		x.digest[name], x.size[digest] = digest, h.Size
		if !x.need[digest] || x.sent[digest] {
			return nil
		}
		if x.o.Stage != nil {
			return x.stageLayer(tr, h.Size, name, digest) // stage.go
		}
		x.sent[digest] = true
		if x.auto != nil {
			return x.sendAuto(digest, h.Size, tr)
		}
		if err := x.drain(); err != nil {
			return err
		}
		return x.sendRaw(digest, h.Size, tr)
	}
	br := bufio.NewReaderSize(tr, 64<<10)
	if compressed(br) {
		return x.layer(br, h.Size, name, digest)
	}
	if h.Size <= maxMeta {
		return x.keep(br, h, name)
	}
	return nil // a big blob that is no layer of this image: not needed
}

// layer copies a layer (unpacking it if compressed) to a local temporary
// file while hashing it, then hands it to the sender if it is needed.
// stored is its size as stored, digest (if known) what those bytes must
// hash to. With Auto,
// when every layer is needed, it decides first, and a layer to compress is
// compressed while it is read.
func (x *rewriter) layer(r io.Reader, stored int64, name, digest string) error {
	storedSum := sha256.New()
	br := bufio.NewReaderSize(io.TeeReader(r, storedSum), 64<<10)
	plain := !compressed(br) // stored is then its size
	zr, err := decompress(br)
	if err != nil {
		return fmt.Errorf("read layer %s: %w", name, err)
	}
	defer zr.Close()
	// checkStored reads the rest of a compressed stream, for its digest.
	checkStored := func() error {
		if _, err := io.Copy(io.Discard, br); err != nil {
			return fmt.Errorf("read layer %s: %w", name, err)
		}
		if digest != "" && hexDigest(storedSum) != digest {
			return fmt.Errorf("layer %s is corrupt: its content hashes to %s", name, hexDigest(storedSum))
		}
		return nil
	}
	var src io.Reader = zr
	var early *Choice
	// (A forced decision needs the layer's index, a staged one its diff ID.)
	if x.auto != nil && x.o.Skip == 0 && x.auto.decide == nil && x.o.Stage == nil {
		lb := bufio.NewReaderSize(zr, sampleSize)
		head, err := peek(lb)
		if err != nil {
			return fmt.Errorf("read layer %s: %w", name, err)
		}
		c, err := x.choose(-1, stored, head) // its size as stored, for a start
		if err != nil {
			return err
		}
		if c.Method != None {
			sp, err := x.compress(lb, c.Method)
			if err != nil {
				return fmt.Errorf("compress layer %s: %w", name, err)
			}
			if err := checkStored(); err != nil {
				drop(sp.f)
				return err
			}
			x.digest[name], x.size[sp.diffID] = sp.diffID, sp.n
			if !x.need[sp.diffID] || x.sent[sp.diffID] {
				drop(sp.f)
				return nil
			}
			x.sent[sp.diffID] = true
			return x.take(sp, c)
		}
		if plain {
			return x.stream(lb, stored, name, c)
		}
		src, early = lb, &c
	}
	f, err := os.CreateTemp(x.o.TempDir, "carebot-layer-*")
	if err != nil {
		return fmt.Errorf("spool layer %s: %w", name, err)
	}
	h := sha256.New()
	n, err := io.Copy(io.MultiWriter(f, h), src)
	if err != nil {
		drop(f)
		return fmt.Errorf("spool layer %s: %w", name, err)
	}
	if err := checkStored(); err != nil {
		drop(f)
		return err
	}
	diffID := hexDigest(h)
	x.digest[name], x.size[diffID] = diffID, n
	if !x.need[diffID] || x.sent[diffID] {
		drop(f)
		return nil // the server has it, or it is already in the archive
	}
	if x.o.Stage != nil && x.staged(diffID) {
		drop(f)
		return nil
	}
	x.sent[diffID] = true
	switch {
	case x.auto == nil:
	case early != nil:
		c := *early
		c.Layer, c.Size, c.Wire = x.index(diffID)+1, n, n
		x.choices = append(x.choices, c)
	default:
		return x.autoFile(diffID, n, f)
	}
	return x.queue(blobPath(diffID), n, f, Blob{DiffID: diffID, Method: None, Digest: diffID, Size: n})
}

// stream sends a needed layer of the legacy layout raw as it is read: its
// diff ID is known only after its last byte, so the blob is named by its
// place in the save instead (both image stores read a layer from whatever
// path the manifests name; the containerd store files every blob under
// its content's digest anyway).
func (x *rewriter) stream(r io.Reader, size int64, name string, c Choice) error {
	if err := x.drain(); err != nil {
		return err
	}
	p := fmt.Sprintf("layers/%d.tar", len(x.pathOf))
	h := sha256.New()
	if err := x.file(p, size, io.TeeReader(r, h)); err != nil {
		return err
	}
	diffID := hexDigest(h)
	x.digest[name], x.size[diffID] = diffID, size
	if !x.need[diffID] || x.sent[diffID] {
		return nil // sent for nothing: finish says why, if it matters
	}
	x.sent[diffID] = true
	x.pathOf[diffID] = p
	c.Layer, c.Size, c.Wire = x.index(diffID)+1, size, size
	x.choices = append(x.choices, c)
	return nil
}

// sendRaw writes a layer to the archive as blobs/sha256/<diff ID>, and
// checks that the bytes hash to it.
func (x *rewriter) sendRaw(diffID string, size int64, r io.Reader) error {
	h := sha256.New()
	if err := x.file(blobPath(diffID), size, io.TeeReader(r, h)); err != nil {
		return err
	}
	if got := hexDigest(h); got != diffID {
		return fmt.Errorf("layer %s is corrupt: its content hashes to %s", diffID, got)
	}
	return nil
}

// keep holds a small file (a config, a manifest) in memory until the end.
func (x *rewriter) keep(r io.Reader, h *tar.Header, name string) error {
	if h.Size > maxMeta {
		return nil
	}
	b, err := io.ReadAll(r)
	if err != nil {
		return fmt.Errorf("read %s: %w", name, err)
	}
	x.meta[name] = b
	return nil
}

// finish checks the save against the options and writes the config, the
// OCI image manifest, index.json, oci-layout and manifest.json.
func (x *rewriter) finish() error {
	if len(x.manifest) != 1 {
		return fmt.Errorf("read image archive: want one image in manifest.json, found %d", len(x.manifest))
	}
	m := x.manifest[0]
	cfgPath := x.resolve(path.Clean(m.Config))
	config, ok := x.meta[cfgPath]
	if !ok {
		return fmt.Errorf("read image archive: config %s is missing", m.Config)
	}
	cfgDigest := digestOf(config)
	x.configDigest = cfgDigest
	if strings.HasPrefix(cfgPath, "blobs/sha256/") && "sha256:"+path.Base(cfgPath) != cfgDigest {
		return fmt.Errorf("config %s is corrupt: its content hashes to %s", m.Config, cfgDigest)
	}
	if x.o.ID != "" && x.o.ID != cfgDigest && !x.blobs[x.o.ID] {
		return fmt.Errorf("saved image %s is not image %s: was it rebuilt meanwhile?", cfgDigest, x.o.ID)
	}
	var cfg struct {
		OS           string `json:"os"`
		Architecture string `json:"architecture"`
		Variant      string `json:"variant"`
		RootFS       struct {
			DiffIDs []string `json:"diff_ids"`
		} `json:"rootfs"`
	}
	if err := json.Unmarshal(config, &cfg); err != nil {
		return fmt.Errorf("read image config: %w", err)
	}
	if !slices.Equal(cfg.RootFS.DiffIDs, x.o.Layers) {
		return fmt.Errorf("saved image %s has layers %v, not the %v expected: was it rebuilt meanwhile?", cfgDigest, cfg.RootFS.DiffIDs, x.o.Layers)
	}
	if len(m.Layers) != len(x.o.Layers) {
		return fmt.Errorf("read image archive: manifest.json names %d layers, the config %d", len(m.Layers), len(x.o.Layers))
	}
	for i, p := range m.Layers {
		got, ok := x.digest[x.resolve(path.Clean(p))]
		if x.presumed[x.resolve(path.Clean(p))] {
			if i >= x.o.Skip {
				return fmt.Errorf("layer %d (%s) was taken for one the server has, and it is not", i+1, p)
			}
			got = x.o.Layers[i]
		}
		if !ok {
			return fmt.Errorf("read image archive: layer %s is missing", p)
		}
		if got != x.o.Layers[i] {
			return fmt.Errorf("layer %d (%s) hashes to %s, not %s", i+1, p, got, x.o.Layers[i])
		}
	}
	for d := range x.need {
		if !x.sent[d] {
			return fmt.Errorf("read image archive: layer %s is missing", d)
		}
	}

	ref := x.o.Ref
	if ref == "" && len(m.RepoTags) > 0 {
		ref = m.RepoTags[0]
	}
	if ref == "" {
		return errors.New("transfer: no name:tag to load the image as (Options.Ref)")
	}
	tagged, err := parseRef(ref)
	if err != nil {
		return err
	}

	if err := x.file(blobPath(cfgDigest), int64(len(config)), bytes.NewReader(config)); err != nil {
		return err
	}
	manifest := ociManifest{
		SchemaVersion: 2,
		MediaType:     mediaManifest,
		Config:        descriptor{MediaType: mediaConfig, Digest: cfgDigest, Size: int64(len(config))},
	}
	legacy := []legacyManifest{{Config: blobPath(cfgDigest), RepoTags: []string{reference.FamiliarString(tagged)}}}
	for _, d := range x.o.Layers {
		desc, ok := x.blobOf[d]
		if !ok {
			desc = descriptor{MediaType: mediaLayer, Digest: d, Size: x.size[d]}
		}
		manifest.Layers = append(manifest.Layers, desc)
		p := blobPath(desc.Digest)
		if q, ok := x.pathOf[d]; ok {
			p = q
		}
		legacy[0].Layers = append(legacy[0].Layers, p)
	}
	mb, err := json.Marshal(manifest)
	if err != nil {
		return err
	}
	mDigest := digestOf(mb)
	x.manifestDigest = mDigest
	if err := x.file(blobPath(mDigest), int64(len(mb)), bytes.NewReader(mb)); err != nil {
		return err
	}
	index := ociIndex{SchemaVersion: 2, MediaType: mediaIndex, Manifests: []descriptor{{
		MediaType: mediaManifest, Digest: mDigest, Size: int64(len(mb)),
		Annotations: map[string]string{
			"io.containerd.image.name":          tagged.String(),
			"org.opencontainers.image.ref.name": tagged.Tag(),
		},
		Platform: &platform{Architecture: cfg.Architecture, OS: cfg.OS, Variant: cfg.Variant},
	}}}
	if cfg.OS == "" || cfg.Architecture == "" {
		index.Manifests[0].Platform = nil
	}
	for _, f := range []struct {
		name string
		v    any
	}{{"index.json", index}, {"oci-layout", map[string]string{"imageLayoutVersion": "1.0.0"}}, {"manifest.json", legacy}} {
		b, err := json.Marshal(f.v)
		if err != nil {
			return err
		}
		if err := x.file(f.name, int64(len(b)), bytes.NewReader(b)); err != nil {
			return err
		}
	}
	return nil
}

// parseRef reads name[:tag] (tag latest if none) as `docker load` will.
func parseRef(ref string) (reference.NamedTagged, error) {
	named, err := reference.ParseNormalizedNamed(ref)
	if err != nil {
		return nil, fmt.Errorf("image name %q: %w", ref, err)
	}
	tagged, ok := reference.TagNameOnly(named).(reference.NamedTagged)
	if !ok {
		return nil, fmt.Errorf("image name %q: want name:tag", ref)
	}
	return tagged, nil
}

// resolve follows the symlinks of the save archive.
func (x *rewriter) resolve(p string) string {
	for range 8 {
		t, ok := x.links[p]
		if !ok {
			break
		}
		p = t
	}
	return p
}

// file writes one regular file to the archive, its directories first.
func (x *rewriter) file(name string, size int64, r io.Reader) error {
	for i, c := range name {
		d := name[:i+1]
		if c != '/' || x.dirs[d] {
			continue
		}
		x.dirs[d] = true
		if err := x.tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: d, Mode: 0o755, ModTime: epoch}); err != nil {
			return fmt.Errorf("write archive: %w", err)
		}
	}
	if err := x.tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: name, Size: size, Mode: 0o644, ModTime: epoch}); err != nil {
		return fmt.Errorf("write archive: %w", err)
	}
	if n, err := io.Copy(x.tw, r); err != nil {
		return fmt.Errorf("write archive: %s: %w", name, err)
	} else if n != size {
		return fmt.Errorf("write archive: %s: %d bytes of %d", name, n, size)
	}
	return nil
}

var epoch = time.Unix(0, 0)

func blobPath(digest string) string { return "blobs/sha256/" + strings.TrimPrefix(digest, "sha256:") }

func hexDigest(h hash.Hash) string { return "sha256:" + hex.EncodeToString(h.Sum(nil)) }

func digestOf(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

type descriptor struct {
	MediaType   string            `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int64             `json:"size"`
	Annotations map[string]string `json:"annotations,omitempty"`
	Platform    *platform         `json:"platform,omitempty"`
}

type platform struct {
	Architecture string `json:"architecture"`
	OS           string `json:"os"`
	Variant      string `json:"variant,omitempty"`
}

type ociManifest struct {
	SchemaVersion int          `json:"schemaVersion"`
	MediaType     string       `json:"mediaType"`
	Config        descriptor   `json:"config"`
	Layers        []descriptor `json:"layers"`
}

type ociIndex struct {
	SchemaVersion int          `json:"schemaVersion"`
	MediaType     string       `json:"mediaType"`
	Manifests     []descriptor `json:"manifests"`
}

type legacyManifest struct {
	Config   string
	RepoTags []string
	Layers   []string
}

// ctxReader stops a read once ctx is done.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(b []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(b)
}

// The legacy layout names each layer's folder by a v1 ID that hides its
// diff ID until its last byte is hashed. Its json, which comes before its
// layer.tar, tells its parent's folder and whether it is the image's top
// layer (the only one with the image's config): enough, often, to know the
// layer's place in the image before reading it, and so to pass over a
// layer the server has without reading, hashing or spooling it. A wrong
// guess cannot load: finish checks every place against manifest.json.
type v1Layer struct {
	parent string
	top    bool
}

func (x *rewriter) v1JSON(r io.Reader, dir string) error {
	var j struct {
		ID     string          `json:"id"`
		Parent string          `json:"parent"`
		Config json.RawMessage `json:"config"`
	}
	if err := json.NewDecoder(io.LimitReader(r, maxMeta)).Decode(&j); err != nil || j.ID != dir {
		return nil // not a v1 layer's json after all: the layer is read and hashed
	}
	x.v1[dir] = v1Layer{parent: j.Parent, top: len(j.Config) > 0 && string(j.Config) != "null"}
	return nil
}

// v1Trusted says whether the jsons read so far describe one chain: at most
// one base, at most one top. Anything else, and every layer is read.
func (x *rewriter) v1Trusted() bool {
	bases, tops := 0, 0
	for _, l := range x.v1 {
		if l.parent == "" {
			bases++
		}
		if l.top {
			tops++
		}
	}
	return bases <= 1 && tops <= 1
}

// place is the index in the image of the layer in folder dir, or -1 when
// its chain is not known yet; and whether it is the top layer.
func (x *rewriter) place(dir string) (int, bool) {
	l, ok := x.v1[dir]
	if !ok {
		return -1, false
	}
	n := len(x.o.Layers)
	if l.top {
		return n - 1, true
	}
	depth := 0
	for id := dir; depth < n; depth++ {
		l, ok := x.v1[id]
		if !ok {
			return -1, false
		}
		if l.parent == "" {
			return depth, false
		}
		id = l.parent
	}
	return -1, false
}

// present passes over the layer.tar at name (in folder dir, size bytes)
// when its place says the server has it: below Skip, or not the top layer
// when only the top one is sent (a redeploy after a change in the last
// step).
func (x *rewriter) present(dir, name string, size int64) bool {
	if x.o.Skip == 0 || !x.v1Trusted() {
		return false
	}
	i, top := x.place(dir)
	_, known := x.v1[dir]
	// (A layer the image repeats above Skip is read here: its copy up
	// there is a symlink to these bytes.)
	reused := slices.ContainsFunc(x.o.Layers[:x.o.Skip], func(d string) bool { return x.need[d] })
	switch {
	case reused:
		return false
	case i >= 0 && i < x.o.Skip:
		x.digest[name], x.size[x.o.Layers[i]] = x.o.Layers[i], size
	case known && !top && x.o.Skip == len(x.o.Layers)-1:
		x.digest[name], x.presumed[name] = "", true
	default:
		return false
	}
	return true
}
