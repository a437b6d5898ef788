package transfer

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"io"
	mrand "math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
)

// slowWriter takes bytes at a fixed rate, like a slow link.
type slowWriter struct {
	bytes.Buffer
	rate float64 // bytes/s
}

func (w *slowWriter) Write(b []byte) (int, error) {
	time.Sleep(time.Duration(float64(len(b)) / w.rate * float64(time.Second)))
	return w.Buffer.Write(b)
}

// textLayer is a layer of n bytes of text-like data (random words): it
// compresses to about a third.
func textLayer(t *testing.T, seed uint64, n int) []byte {
	t.Helper()
	rng := mrand.New(mrand.NewPCG(seed, 3))
	vocab := make([][]byte, 2048)
	for i := range vocab {
		vocab[i] = make([]byte, 2+rng.IntN(8))
		for k := range vocab[i] {
			vocab[i][k] = byte('a' + rng.IntN(26))
		}
	}
	data := make([]byte, 0, n+16)
	for len(data) < n {
		data = append(data, vocab[rng.IntN(len(vocab))]...)
		data = append(data, ' ')
	}
	return tarOf(t, "text.txt", data[:n])
}

func randomLayer(t *testing.T, n int) []byte {
	t.Helper()
	data := make([]byte, n)
	rand.Read(data)
	return tarOf(t, "random.bin", data)
}

func tarOf(t *testing.T, name string, data []byte) []byte {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(data)), Typeflag: tar.TypeReg}); err != nil {
		t.Fatal(err)
	}
	tw.Write(data)
	tw.Close()
	return b.Bytes()
}

// checkAutoArchive checks an Auto archive (a plain tar) as both image
// stores read it: every layer above skip is in it, raw under its diff ID or
// compressed under its own digest with the media type saying how, and both
// manifests name each by what is in the archive; it returns the media type
// of each layer sent.
func checkAutoArchive(t *testing.T, out []byte, img image, skip int) []string {
	t.Helper()
	if bytes.HasPrefix(out, gzipMagic) || bytes.HasPrefix(out, zstdMagic) {
		t.Fatal("the archive is compressed as a whole")
	}
	_, files := unpack(t, out)
	var lm []legacyManifest
	if err := json.Unmarshal(files["manifest.json"], &lm); err != nil || len(lm) != 1 {
		t.Fatalf("manifest.json: %v %s", err, files["manifest.json"])
	}
	var idx ociIndex
	if err := json.Unmarshal(files["index.json"], &idx); err != nil || len(idx.Manifests) != 1 {
		t.Fatalf("index.json: %v %s", err, files["index.json"])
	}
	var m ociManifest
	if err := json.Unmarshal(files[blobPath(idx.Manifests[0].Digest)], &m); err != nil {
		t.Fatal(err)
	}
	if m.Config.Digest != img.id || !bytes.Equal(files[blobPath(img.id)], img.config) {
		t.Errorf("config changed: %+v", m.Config)
	}
	if len(m.Layers) != len(img.layers) || len(lm[0].Layers) != len(img.layers) {
		t.Fatalf("manifests name %d and %d layers, want %d", len(m.Layers), len(lm[0].Layers), len(img.layers))
	}
	var media []string
	for i, d := range m.Layers {
		// A layer streamed raw from a legacy save is named by its place
		// in it (its diff ID was not known yet); anything else by digest.
		if lm[0].Layers[i] != blobPath(d.Digest) && !(d.MediaType == mediaLayer && strings.HasPrefix(lm[0].Layers[i], "layers/")) {
			t.Errorf("layer %d: manifest.json names %s, the OCI manifest %s", i, lm[0].Layers[i], d.Digest)
		}
		blob, ok := files[lm[0].Layers[i]]
		if i < skip {
			if ok || d.Digest != img.diffIDs[i] || d.MediaType != mediaLayer {
				t.Errorf("layer %d, which the server has: %+v, in the archive: %v", i, d, ok)
			}
			continue
		}
		if !ok {
			t.Errorf("layer %d (%s) is not in the archive", i, d.Digest)
			continue
		}
		if digestOf(blob) != d.Digest || int64(len(blob)) != d.Size {
			t.Errorf("layer %d: descriptor %+v, blob %s %d bytes", i, d, digestOf(blob), len(blob))
		}
		var raw []byte
		switch d.MediaType {
		case mediaLayer:
			raw = blob
		case mediaLayer + "+gzip":
			if !bytes.HasPrefix(blob, gzipMagic) {
				t.Errorf("layer %d: %s but no gzip magic", i, d.MediaType)
			}
			zr, err := gzip.NewReader(bytes.NewReader(blob))
			if err != nil {
				t.Fatal(err)
			}
			if raw, err = io.ReadAll(zr); err != nil {
				t.Fatalf("layer %d: gunzip: %v", i, err)
			}
		case mediaLayer + "+zstd":
			zr, err := zstd.NewReader(bytes.NewReader(blob))
			if err != nil {
				t.Fatal(err)
			}
			if raw, err = io.ReadAll(zr); err != nil {
				t.Fatalf("layer %d: unzstd: %v", i, err)
			}
			zr.Close()
		default:
			t.Errorf("layer %d: media type %s", i, d.MediaType)
		}
		if !bytes.Equal(raw, img.layers[i]) {
			t.Errorf("layer %d (%s) does not unpack to the layer", i, d.MediaType)
		}
		media = append(media, d.MediaType)
	}
	return media
}

func writeAuto(t *testing.T, img image, w io.Writer, o Options) Stats {
	t.Helper()
	o.Compress, o.Layers = Auto, img.diffIDs
	st, err := Write(context.Background(), bytes.NewReader(saveLegacy(t, img, "carebot:v1")), w, o)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range st.Choices {
		t.Log(c)
	}
	return st
}

func TestAutoSlowLinkCompresses(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector slows the compressor down to the link's speed")
	}
	img := newImage(t, 1, textLayer(t, 1, 64<<10), textLayer(t, 2, 20<<20))
	for _, codec := range []string{Gzip, Zstd} {
		t.Run(codec, func(t *testing.T) {
			w := &slowWriter{rate: 16 << 20}
			st := writeAuto(t, img, w, Options{Codec: codec})
			media := checkAutoArchive(t, w.Bytes(), img, 0)
			want := mediaLayer + "+" + codec
			if len(media) != 2 || media[0] != want || media[1] != want {
				t.Errorf("layers sent as %v, want both %s", media, want)
			}
			if len(st.Choices) != 2 || !strings.Contains(st.Choices[1].Reason, "link") || st.ProbeBytes == 0 {
				t.Errorf("choices %v, %d bytes of probe: want the link measured before the big layer", st.Choices, st.ProbeBytes)
			}
			if st.WireBytes-st.ProbeBytes > st.RawBytes/2 {
				t.Errorf("%d bytes on the wire (%d of them probe) for %d raw", st.WireBytes, st.ProbeBytes, st.RawBytes)
			}
		})
	}
}

func TestAutoFastLinkSendsRaw(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector slows the link down to the compressor's speed")
	}
	img := newImage(t, 1, textLayer(t, 1, 20<<20), textLayer(t, 2, 64<<10))
	var out bytes.Buffer
	out.Grow(64 << 20) // no reallocation to slow the link down
	st := writeAuto(t, img, &out, Options{Codec: Zstd})
	media := checkAutoArchive(t, out.Bytes(), img, 0)
	if len(media) != 2 || media[0] != mediaLayer || media[1] != mediaLayer {
		t.Errorf("layers sent as %v, want both raw: the link (memory) outruns any compressor", media)
	}
	// A legacy save, every layer needed: the raw layers went as they were
	// read, named by their place in the save.
	if !bytes.Contains(out.Bytes(), []byte("layers/0.tar")) || !bytes.Contains(out.Bytes(), []byte("layers/1.tar")) {
		t.Error("the raw layers were not streamed")
	}
	if st.ProbeBytes == 0 || st.ProbeBytes > probeMax {
		t.Errorf("%d bytes of probe", st.ProbeBytes)
	}
	if !strings.Contains(st.Choices[0].String(), "layer 1/2 (21.0 MB): raw, link") {
		t.Errorf("choice reads %q", st.Choices[0])
	}
}

func TestAutoIncompressibleRaw(t *testing.T) {
	img := newImage(t, 1, randomLayer(t, 4<<20), textLayer(t, 2, 1<<20))
	w := &slowWriter{rate: 32 << 20}
	st := writeAuto(t, img, w, Options{Codec: Gzip, Skip: 0})
	media := checkAutoArchive(t, w.Bytes(), img, 0)
	if len(media) != 2 || media[0] != mediaLayer || media[1] != mediaLayer+"+gzip" {
		t.Errorf("layers sent as %v, want the random one raw, the text gzipped", media)
	}
	for _, c := range st.Choices {
		if c.Layer == 1 && (c.Method != None || !strings.Contains(c.Reason, "incompressible")) {
			t.Errorf("choice %q", c)
		}
	}
}

func TestAutoLayoutsAndSkip(t *testing.T) {
	img := threeLayers(t)
	for _, l := range layouts {
		t.Run(l.name, func(t *testing.T) {
			for skip := range 2 {
				for _, forced := range []string{None, Gzip, Zstd} {
					var out bytes.Buffer
					st, err := Write(context.Background(), bytes.NewReader(l.save(t, img, "carebot:v1")), &out, Options{
						Layers: img.diffIDs, Skip: skip, Compress: Auto, Codec: strings.ReplaceAll(forced, None, Gzip),
						decide: func(int) string { return forced },
					})
					if err != nil {
						t.Fatal(err)
					}
					media := checkAutoArchive(t, out.Bytes(), img, skip)
					want := mediaLayer
					if forced != None {
						want += "+" + forced
					}
					if len(media) != 3-skip || media[len(media)-1] != want || media[0] != want || st.Sent != 3-skip || len(st.Choices) != 3-skip {
						t.Errorf("skip %d, %s: sent %v, stats %+v", skip, forced, media, st)
					}
				}
			}
		})
	}
}

func TestParallelWriterOrder(t *testing.T) {
	data := textLayer(t, 9, 9<<20+123)
	for _, codec := range []string{Gzip, Zstd} {
		enc, release, err := newEncode(codec, 3)
		if err != nil {
			t.Fatal(err)
		}
		var b bytes.Buffer
		zw := newParallelWriter(&b, enc, 3)
		for rest := data; len(rest) > 0; {
			k := min(len(rest), 100_000)
			zw.Write(rest[:k])
			rest = rest[k:]
		}
		if err := zw.Close(); err != nil {
			t.Fatal(err)
		}
		release()
		if got := decompressed(t, b.Bytes()); !bytes.Equal(got, data) {
			t.Errorf("%s: %d bytes back of %d, or different", codec, len(got), len(data))
		}
		t.Logf("%s: %d -> %d", codec, len(data), b.Len())
	}
	// An empty stream is still a valid one.
	enc, release, _ := newEncode(Gzip, 2)
	defer release()
	var b bytes.Buffer
	zw := newParallelWriter(&b, enc, 2)
	zw.Close()
	if !bytes.HasPrefix(b.Bytes(), gzipMagic) || len(decompressed(t, b.Bytes())) != 0 {
		t.Errorf("empty stream: %x", b.Bytes())
	}
}

// A link measured before the transfer (ship's probe) decides the first big
// layer: no filler, and a fast link's rate sends it raw into a slow writer
// (a server's `docker load` that reads slower than the link carries).
func TestAutoGoesByTheMeasuredLink(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector slows the compressor down")
	}
	img := newImage(t, 1, textLayer(t, 1, 20<<20), textLayer(t, 2, 64<<10))
	w := &slowWriter{rate: 16 << 20}
	st := writeAuto(t, img, w, Options{Codec: Gzip, LinkRate: 1e9})
	if st.ProbeBytes != 0 {
		t.Errorf("%d bytes of filler sent with the link already measured", st.ProbeBytes)
	}
	if media := checkAutoArchive(t, w.Bytes(), img, 0); len(media) != 2 || media[0] != mediaLayer {
		t.Errorf("layers sent as %v, want the first raw: the link measured 1 GB/s", media)
	}
	if !strings.Contains(st.Choices[0].Reason, "link 1.0 GB/s >") {
		t.Errorf("choice reads %q, want the measured rate", st.Choices[0])
	}
}
