package transfer

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"testing"
)

// A partial layer file is resumed by producing the layer's encoding again
// and skipping what the server has: the encoders must give the same bytes
// for the same layer, whatever the number of encoders at work.
func TestStagedEncodingIsDeterministic(t *testing.T) {
	layer := make([]byte, 0, 5<<20+12345)
	r := rand.New(rand.NewPCG(1, 2))
	for len(layer) < cap(layer)-200 {
		if r.IntN(2) == 0 {
			layer = fmt.Appendf(layer, "line %d: the quick brown fox jumps over the lazy dog\n", r.IntN(1000))
		} else {
			layer = append(layer, byte(r.Uint32()))
		}
	}
	for _, codec := range []string{Gzip, Zstd} {
		var first []byte
		for _, workers := range []int{1, 4, 4, 2} {
			encode, release, err := newEncode(codec, workers)
			if err != nil {
				t.Fatal(err)
			}
			var out bytes.Buffer
			zw := newParallelWriter(&out, encode, workers)
			for b := layer; len(b) > 0; { // in uneven writes, as a spool is read
				n := min(len(b), 1+r.IntN(300<<10))
				zw.Write(b[:n])
				b = b[n:]
			}
			if err := zw.Close(); err != nil {
				t.Fatal(err)
			}
			release()
			if first == nil {
				first = out.Bytes()
				continue
			}
			if !bytes.Equal(first, out.Bytes()) {
				t.Errorf("%s with %d encoders: %d bytes unlike the %d of the first run", codec, workers, out.Len(), len(first))
			}
		}
		t.Logf("%s: %d bytes to %d, the same every time", codec, len(layer), len(first))
	}
}

func TestExtAndMethodOf(t *testing.T) {
	for _, m := range []string{None, Gzip, Zstd} {
		name := "0123abcd" + Ext(m)
		if got, ok := MethodOf(name); !ok || got != m {
			t.Errorf("MethodOf(%q) = %q, %v; want %q", name, got, ok, m)
		}
	}
	if _, ok := MethodOf("load"); ok {
		t.Error("MethodOf(load) = ok")
	}
}

// memStager keeps the blobs put in memory; done are layers it holds
// complete already, force the encodings it fixes.
type memStager struct {
	done  map[string]Blob
	force map[string]string
	put   map[string][]byte // by digest
	blobs []Blob
}

func (m *memStager) Staged(diffID string) (Blob, bool) { b, ok := m.done[diffID]; return b, ok }
func (m *memStager) Method(diffID string) (string, string) {
	if f := m.force[diffID]; f != "" {
		return f, "forced"
	}
	return "", ""
}
func (m *memStager) Put(_ context.Context, b Blob, r io.ReaderAt, link func(io.Writer) io.Writer) error {
	var buf bytes.Buffer
	if _, err := io.Copy(link(&buf), io.NewSectionReader(r, 0, b.Size)); err != nil {
		return err
	}
	if digestOf(buf.Bytes()) != b.Digest {
		return fmt.Errorf("blob %s: its bytes hash to %s", b.Digest, digestOf(buf.Bytes()))
	}
	m.put[b.Digest] = buf.Bytes()
	m.blobs = append(m.blobs, b)
	return nil
}

// A staged Write hands every layer above Skip to the stager (none that it
// holds complete), in the encoding it fixes, and writes only the config and
// manifests, which name the staged blobs: on every save layout.
func TestWriteStaged(t *testing.T) {
	img := threeLayers(t)
	for _, lay := range layouts {
		for _, skip := range []int{0, 1} {
			t.Run(fmt.Sprintf("%s/skip%d", lay.name, skip), func(t *testing.T) {
				done := Blob{DiffID: img.diffIDs[2], Method: None, Digest: img.diffIDs[2], Size: int64(len(img.layers[2]))}
				m := &memStager{done: map[string]Blob{done.DiffID: done}, force: map[string]string{img.diffIDs[1]: Zstd}, put: map[string][]byte{}}
				tmp := t.TempDir()
				var meta bytes.Buffer
				st, err := Write(context.Background(), bytes.NewReader(lay.save(t, img, "carebot:v1")), &meta, Options{
					Ref: "carebot:v2", ID: img.id, Layers: img.diffIDs, Skip: skip, Compress: Auto, Codec: Zstd, Stage: m, TempDir: tmp,
				})
				if err != nil {
					t.Fatal(err)
				}
				if len(m.blobs) != 2-skip {
					t.Errorf("put %v, want the %d layers above %d that are not staged", m.blobs, 2-skip, skip)
				}
				names, files := unpack(t, meta.Bytes())
				for _, n := range names {
					if b := files[n]; len(b) > 4096 {
						t.Errorf("the archive holds %s (%d bytes): want the config and manifests only", n, len(b))
					}
				}
				var idx ociIndex
				var man ociManifest
				if json.Unmarshal(files["index.json"], &idx) != nil || json.Unmarshal(files[blobPath(idx.Manifests[0].Digest)], &man) != nil {
					t.Fatalf("no OCI index and manifest in %v", names)
				}
				for i := skip; i < 3; i++ {
					d := man.Layers[i]
					blob, ok := m.put[d.Digest]
					if i == 2 {
						blob, ok = img.layers[2], d.MediaType == mediaLayer && d.Digest == done.Digest && d.Size == done.Size
					}
					if !ok {
						t.Errorf("layer %d: the manifest names %+v, which was not staged", i+1, d)
						continue
					}
					if i == 1 && d.MediaType != mediaLayer+"+zstd" {
						t.Errorf("layer 2: %s, want the zstd it was forced to", d.MediaType)
					}
					if got := decompressed(t, blob); !bytes.Equal(got, img.layers[i]) {
						t.Errorf("layer %d: the staged blob is not the layer", i+1)
					}
				}
				if st.Config != img.id {
					t.Errorf("config %s, want %s", st.Config, img.id)
				}
				if left, _ := os.ReadDir(tmp); len(left) != 0 {
					t.Errorf("spool files left in TempDir: %v", left)
				}
			})
		}
	}
}
