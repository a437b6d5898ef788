package transfer

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"sync"
	"time"

	"github.com/carebot/carebot/internal/text"
)

// Auto (Options.Compress) decides per layer while sending: the archive
// itself stays a plain tar, and each layer blob in it is either the layer
// as it is or the layer compressed with Options.Codec (a blob of media type
// ...tar+gzip or ...tar+zstd; the config's diff IDs stay those of the
// uncompressed layers). `docker load` decompresses such blobs on both image
// stores. A layer is compressed when the link is slower than what
// compressing it saves, by the rates measured so far in this Write:
//
//   - link: bytes per second the writer takes (time spent inside its Write,
//     past the first burst that fills the SSH channel's window), or before
//     that, Options.LinkRate;
//   - compressor: bytes per second the parallel encoders have compressed on
//     this machine (before the first layer: a 1 MiB sample of the layer,
//     times the number of encoders);
//   - ratio: of that sample, which also tells incompressible data (sent raw).
//
// A compressed layer goes to a local temporary file first (a tar entry
// needs its size before its bytes), so compressing costs its own time and
// sending the result then costs ratio × size / link: it pays when
// link < compressor × (1 − ratio) — on a machine whose cores compress
// and do nothing else. They also encrypt the SSH stream and hash the
// layers, and the server spends as much again decompressing (on a test
// server, the same cores): compression is chosen only below cpuShare of
// that rate. On loopback (~60 MB/s here) layers then go raw, which was
// measured the faster; at 50 Mbit/s (6 MB/s) compressible ones are
// compressed as before. Before the first big layer, if nothing
// has measured the link yet, a few MiB of filler (probe/N, ignored by
// `docker load`) measure it.
const Auto = "auto"

// Choice says how one layer was sent, and why.
type Choice struct {
	Layer, Of int    // position in the image, 1-based, of how many layers
	Size      int64  // the layer, uncompressed
	Wire      int64  // the blob as sent
	Method    string // None (raw), Gzip or Zstd
	Reason    string // e.g. "link 95.0 MB/s > zstd 40.0 MB/s of its 80.0 MB/s saving 65%"
}

// index is the position of diffID in the image.
func (x *rewriter) index(diffID string) int {
	for i, d := range x.o.Layers {
		if d == diffID {
			return i
		}
	}
	return -1
}

// String is e.g. "layer 3/4 (52.4 MB): raw, link 95.0 MB/s > zstd 40.0 MB/s of its 80.0 MB/s saving 65%".
func (c Choice) String() string {
	m := c.Method
	if m == None {
		m = "raw"
	} else if c.Size > 0 {
		m += fmt.Sprintf(" to %s", text.Bytes(c.Wire))
	}
	return fmt.Sprintf("layer %d/%d (%s): %s, %s", c.Layer, c.Of, text.Bytes(c.Size), m, c.Reason)
}

const (
	cpuShare   = 0.5                    // of the compressor's measured rate that is really free for it
	sampleSize = 1 << 20                // of each layer, compressed to judge it
	maxRatio   = 0.9                    // a sample that compresses to more than this is sent raw
	burst      = 2 << 20                // taken at once by the SSH channel's window: not a rate
	measureMin = 8 << 20                // past the burst, enough to trust the link's rate ...
	measureDur = 200 * time.Millisecond // ... or this much time spent writing
	probeFrom  = 16 << 20               // a layer this big is worth measuring the link for
	probeMax   = 12 << 20               // at most this much filler
	stall      = 300 * time.Millisecond // one write (≤ 256 KiB) that takes longer is a stall
)

// meter times the writes to the link.
type meter struct {
	mu   sync.Mutex // Write runs in the sender, rate in the reader
	w    io.Writer
	now  func() time.Time
	n    int64         // all bytes written
	sn   int64         // bytes written past the burst
	busy time.Duration // time spent writing them

	prior float64 // the rate measured before, until enough went to tell
}

func (m *meter) Write(b []byte) (int, error) { return m.timed(m.w, b) }

// timed writes b to w, which is the link (or, when staging, a layer's way
// to it), and records how long that took.
func (m *meter) timed(w io.Writer, b []byte) (int, error) {
	t := m.now()
	n, err := w.Write(b)
	d := m.now().Sub(t)
	m.mu.Lock()
	defer m.mu.Unlock()
	// A write that waits this long is waiting for the server's `docker
	// load` to start reading, not for the link: not a rate either.
	if m.n >= burst && d < stall {
		m.sn += int64(n)
		m.busy += d
	}
	m.n += int64(n)
	return n, err
}

// rate is the link's rate in bytes/s, and whether enough went to tell.
func (m *meter) rate() (float64, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.sn < measureMin && m.busy < measureDur {
		return m.prior, m.prior > 0
	}
	if m.busy <= 0 {
		return math.Inf(1), true
	}
	return float64(m.sn) / m.busy.Seconds(), true
}

// adaptive is the state of Auto in one Write.
type adaptive struct {
	codec   string
	workers int
	encode  encodeFunc
	release func()
	link    *meter
	// compressor's record: raw bytes compressed, and the wall time it took
	compN int64
	compT time.Duration
	now   func() time.Time
	// decide, if set, overrides the decision (tests).
	decide func(layer int) string
}

func (a *adaptive) close() {
	if a.release != nil {
		a.release()
	}
}

// sample compresses b with one encoder: the ratio, and the rate.
func (a *adaptive) sample(b []byte) (ratio, rate float64) {
	if len(b) == 0 {
		return 1, 0
	}
	t := a.now()
	out := a.encode(make([]byte, 0, len(b)+len(b)/16+1024), b)
	d := a.now().Sub(t)
	ratio = float64(len(out)) / float64(len(b))
	if d <= 0 {
		return ratio, math.Inf(1)
	}
	return ratio, float64(len(b)) / d.Seconds()
}

// compressorRate is what the parallel encoders have done, or before enough
// of that, the sample's rate times the encoders.
func (a *adaptive) compressorRate(sampleRate float64) float64 {
	if a.compN >= 8<<20 && a.compT > 0 {
		return float64(a.compN) / a.compT.Seconds()
	}
	return sampleRate * float64(a.workers)
}

// choose decides how the layer at index i (0-based) of size bytes goes,
// given its first bytes; it may send filler to measure the link first.
func (x *rewriter) choose(i int, size int64, head []byte) (Choice, error) {
	a := x.auto
	c := Choice{Layer: i + 1, Of: len(x.o.Layers), Size: size, Method: None}
	if a.decide != nil {
		c.Method, c.Reason = a.decide(i), "forced"
		return c, nil
	}
	if m, why := x.stageMethod(i); m != "" { // stage.go
		c.Method, c.Reason = m, why
		return c, nil
	}
	ratio, sampleRate := a.sample(head)
	if ratio > maxRatio {
		c.Reason = fmt.Sprintf("incompressible (%s takes a sample to %.0f%%)", a.codec, ratio*100)
		return c, nil
	}
	comp := a.compressorRate(sampleRate)
	link, ok := a.link.rate()
	if !ok && size >= probeFrom {
		if err := x.probe(); err != nil {
			return c, err
		}
		link, ok = a.link.rate()
	}
	saving := fmt.Sprintf("%s %s of its %s saving %.0f%%", a.codec, text.Rate(comp*cpuShare), text.Rate(comp), (1-ratio)*100)
	comp *= cpuShare
	switch {
	case !ok:
		c.Method, c.Reason = a.codec, "link not measured yet, small layer"
		if x.o.Stage != nil {
			c.Reason = "link not measured yet" // (no filler when staging: see probe)
		}
	case link < comp*(1-ratio):
		c.Method, c.Reason = a.codec, fmt.Sprintf("link %s < %s", text.Rate(link), saving)
	default:
		c.Reason = fmt.Sprintf("link %s > %s", text.Rate(link), saving)
	}
	return c, nil
}

// probeBlock is the filler that measures the link: random, so that nothing
// on the way can compress it.
var probeBlock = sync.OnceValue(func() []byte {
	b := make([]byte, 1<<20)
	r := rand.NewChaCha8([32]byte{'c', 'a', 'r', 'e'})
	r.Read(b)
	return b
})

// probe sends filler until the link's rate is known. `docker load` ignores
// files its manifests do not name (the containerd store keeps the block as
// an unreferenced blob, for its garbage collector; it is the same block
// every time).
func (x *rewriter) probe() error {
	if x.o.Stage != nil {
		return nil // filler would stay on this machine; the staged layers measure the link
	}
	if err := x.drain(); err != nil { // whatever is queued measures it too
		return err
	}
	for i := 0; x.probed < probeMax; i++ {
		if _, ok := x.auto.link.rate(); ok {
			break
		}
		b := probeBlock()
		// (in 32 KiB writes, as layers go, not one: see stall)
		if err := x.file(fmt.Sprintf("probe/%d", i), int64(len(b)), struct{ io.Reader }{bytes.NewReader(b)}); err != nil {
			return err
		}
		x.probed += int64(len(b))
	}
	return nil
}

// peek returns up to sampleSize bytes of what br will read next.
func peek(br *bufio.Reader) ([]byte, error) {
	head, err := br.Peek(sampleSize)
	if err == io.EOF || err == bufio.ErrBufferFull {
		err = nil
	}
	return head, err
}

// sendAuto sends a layer streamed from the save (diff ID, size, its
// bytes) as Auto decides: raw, straight from the save; compressed, through
// a local file.
func (x *rewriter) sendAuto(diffID string, size int64, r io.Reader) error {
	br := bufio.NewReaderSize(r, sampleSize)
	head, err := peek(br)
	if err != nil {
		return fmt.Errorf("read layer %s: %w", diffID, err)
	}
	c, err := x.choose(x.index(diffID), size, head)
	if err != nil {
		return err
	}
	if c.Method == None {
		c.Wire = size
		x.choices = append(x.choices, c)
		if err := x.drain(); err != nil {
			return err
		}
		return x.sendRaw(diffID, size, br)
	}
	sp, err := x.compressOnce(br, diffID, c.Method)
	if err != nil {
		return fmt.Errorf("compress layer %s: %w", diffID, err)
	}
	if sp.n != size || sp.diffID != diffID {
		drop(sp.f)
		return fmt.Errorf("layer %s is corrupt: its %d bytes hash to %s", diffID, sp.n, sp.diffID)
	}
	return x.take(sp, c)
}

// autoFile sends a layer spooled in f as Auto decides.
func (x *rewriter) autoFile(diffID string, size int64, f *os.File) error {
	head := make([]byte, min(size, sampleSize))
	if _, err := f.ReadAt(head, 0); err != nil {
		drop(f)
		return fmt.Errorf("spool layer %s: %w", diffID, err)
	}
	c, err := x.choose(x.index(diffID), size, head)
	if err != nil {
		drop(f)
		return err
	}
	if c.Method == None {
		c.Wire = size
		x.choices = append(x.choices, c)
		return x.queue(blobPath(diffID), size, f, Blob{DiffID: diffID, Method: None, Digest: diffID, Size: size})
	}
	defer drop(f)
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return fmt.Errorf("spool layer %s: %w", diffID, err)
	}
	sp, err := x.compressOnce(bufio.NewReaderSize(f, 256<<10), diffID, c.Method)
	if err != nil {
		return fmt.Errorf("compress layer %s: %w", diffID, err)
	}
	if sp.diffID != diffID {
		drop(sp.f)
		return fmt.Errorf("layer %s changed on local disk: it hashes to %s", diffID, sp.diffID)
	}
	return x.take(sp, c)
}

// spool is a layer compressed to a local file.
type spool struct {
	f      *os.File
	n      int64  // bytes of the layer
	diffID string // their digest
	blob   descriptor
}

// compress reads a layer from r and compresses it with the parallel
// encoders to a local temporary file, hashing both sides.
func (x *rewriter) compress(r io.Reader, codec string) (spool, error) {
	a := x.auto
	f, err := os.CreateTemp(x.o.TempDir, "carebot-blob-*")
	if err != nil {
		return spool{}, err
	}
	rawSum, blobSum := sha256.New(), sha256.New()
	bw := bufio.NewWriterSize(f, 256<<10)
	blob := &Counter{W: io.MultiWriter(bw, blobSum)}
	zw := newParallelWriter(blob, a.encode, a.workers)
	t := a.now()
	n, err := io.Copy(zw, io.TeeReader(r, rawSum))
	if cerr := zw.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = bw.Flush()
	}
	if err != nil {
		drop(f)
		return spool{}, err
	}
	a.compN += n
	a.compT += a.now().Sub(t) // wall time: what the link waits, reading included
	return spool{f: f, n: n, diffID: hexDigest(rawSum),
		blob: descriptor{MediaType: mediaLayer + "+" + codec, Digest: hexDigest(blobSum), Size: blob.N}}, nil
}

// take hands a compressed layer to the sender, and records it.
func (x *rewriter) take(sp spool, c Choice) error {
	if c.Layer <= 0 {
		c.Layer = x.index(sp.diffID) + 1
	}
	c.Size, c.Wire = sp.n, sp.blob.Size
	x.choices = append(x.choices, c)
	x.blobOf[sp.diffID] = sp.blob
	x.saved += sp.n - sp.blob.Size
	return x.queue(blobPath(sp.blob.Digest), sp.blob.Size, sp.f, Blob{DiffID: sp.diffID, Method: c.Method, Digest: sp.blob.Digest, Size: sp.blob.Size})
}
