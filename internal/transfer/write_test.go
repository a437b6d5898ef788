package transfer

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
)

// image is a synthetic image: its layer tars and config.
type image struct {
	layers  [][]byte
	diffIDs []string
	config  []byte
	id      string
}

func hexOf(d string) string { return strings.TrimPrefix(d, "sha256:") }

// layerTar is a layer holding one file of n random bytes.
func layerTar(t *testing.T, rng *rand.Rand, name string, n int) []byte {
	t.Helper()
	data := make([]byte, n)
	for i := range data {
		data[i] = byte(rng.IntN(16)) // compressible, so compression shows
	}
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(n), Typeflag: tar.TypeReg}); err != nil {
		t.Fatal(err)
	}
	tw.Write(data)
	tw.Close()
	return b.Bytes()
}

func newImage(t *testing.T, seed uint64, layers ...[]byte) image {
	t.Helper()
	img := image{layers: layers}
	for _, l := range layers {
		img.diffIDs = append(img.diffIDs, digestOf(l))
	}
	cfg := map[string]any{
		"architecture": "amd64", "os": "linux", "created": "2026-01-01T00:00:00Z",
		"config": map[string]any{"Cmd": []string{"/app"}, "Labels": map[string]string{"seed": fmt.Sprint(seed)}},
		"rootfs": map[string]any{"type": "layers", "diff_ids": img.diffIDs},
	}
	var err error
	if img.config, err = json.Marshal(cfg); err != nil {
		t.Fatal(err)
	}
	img.id = digestOf(img.config)
	return img
}

func threeLayers(t *testing.T) image {
	rng := rand.New(rand.NewPCG(1, 2))
	return newImage(t, 1,
		layerTar(t, rng, "base.bin", 40<<10),
		layerTar(t, rng, "mid.bin", 20<<10),
		layerTar(t, rng, "top.bin", 5<<10))
}

type entry struct {
	name     string
	data     []byte
	link     string // a symlink when set
	typeflag byte
}

// archive writes entries in lexical order, as docker save does, but with
// manifest.json last, the hardest case for a reader.
func archive(t *testing.T, entries []entry) []byte {
	t.Helper()
	sort.Slice(entries, func(i, j int) bool {
		mi, mj := entries[i].name == "manifest.json", entries[j].name == "manifest.json"
		if mi != mj {
			return mj
		}
		return entries[i].name < entries[j].name
	})
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, e := range entries {
		h := &tar.Header{Name: e.name, Mode: 0o644, Size: int64(len(e.data)), Typeflag: tar.TypeReg}
		switch {
		case e.typeflag == tar.TypeDir:
			h.Typeflag, h.Mode, h.Size = tar.TypeDir, 0o755, 0
		case e.link != "":
			h.Typeflag, h.Linkname, h.Size = tar.TypeSymlink, e.link, 0
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if h.Typeflag == tar.TypeReg {
			tw.Write(e.data)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// saveLegacy is `docker save` on the classic store (Docker 20.10): each
// layer in <v1 ID>/layer.tar, a layer repeated in the image as a symlink to
// the first copy, the config as <image ID>.json.
func saveLegacy(t *testing.T, img image, tags ...string) []byte {
	t.Helper()
	return saveLegacyV1(t, img, true, tags...)
}

// saveLegacyOpaque is saveLegacy with v1 jsons that tell nothing of the
// layers' places (no parent, no config): every layer must be read.
func saveLegacyOpaque(t *testing.T, img image, tags ...string) []byte {
	t.Helper()
	return saveLegacyV1(t, img, false, tags...)
}

func saveLegacyV1(t *testing.T, img image, chain bool, tags ...string) []byte {
	t.Helper()
	var es []entry
	var paths []string
	first := map[string]string{}
	parent := ""
	for i, l := range img.layers {
		v1 := hexOf(digestOf([]byte(fmt.Sprintf("v1 %d %s", i, img.id))))
		p := v1 + "/layer.tar"
		paths = append(paths, p)
		// As Docker writes it: the parent's v1 ID, and the image's config
		// in the top layer's only.
		j := `{"id":"` + v1 + `"`
		if parent != "" && chain {
			j += `,"parent":"` + parent + `"`
		}
		if i == len(img.layers)-1 && chain {
			j += `,"config":{"Cmd":["/app"]}`
		}
		parent = v1
		es = append(es, entry{name: v1 + "/", typeflag: tar.TypeDir},
			entry{name: v1 + "/VERSION", data: []byte("1.0")},
			entry{name: v1 + "/json", data: []byte(j + `,"container_config":{"Hostname":""},"os":"linux"}`)})
		if f, ok := first[img.diffIDs[i]]; ok {
			es = append(es, entry{name: p, link: "../" + f})
			continue
		}
		first[img.diffIDs[i]] = p
		es = append(es, entry{name: p, data: l})
	}
	cfg := hexOf(img.id) + ".json"
	es = append(es, entry{name: cfg, data: img.config},
		entry{name: "repositories", data: []byte(`{}`)},
		entry{name: "manifest.json", data: mustJSON(t, []map[string]any{{"Config": cfg, "RepoTags": tags, "Layers": paths}})})
	return archive(t, es)
}

// saveOCI is `docker save` of Docker >= 25: blobs named by digest, an OCI
// index and manifest, and manifest.json. With gz, layers are stored
// gzip-compressed, as the containerd store keeps pulled layers.
func saveOCI(t *testing.T, img image, gz bool, tags ...string) []byte {
	t.Helper()
	es := []entry{{name: "blobs/", typeflag: tar.TypeDir}, {name: "blobs/sha256/", typeflag: tar.TypeDir}}
	var descs []descriptor
	var paths []string
	seen := map[string]bool{}
	for _, l := range img.layers {
		blob, mt := l, mediaLayer
		if gz {
			var b bytes.Buffer
			zw := gzip.NewWriter(&b)
			zw.Write(l)
			zw.Close()
			blob, mt = b.Bytes(), mediaLayer+"+gzip"
		}
		d := digestOf(blob)
		descs = append(descs, descriptor{MediaType: mt, Digest: d, Size: int64(len(blob))})
		paths = append(paths, "blobs/sha256/"+hexOf(d))
		if !seen[d] {
			seen[d] = true
			es = append(es, entry{name: "blobs/sha256/" + hexOf(d), data: blob})
		}
	}
	es = append(es, entry{name: "blobs/sha256/" + hexOf(img.id), data: img.config})
	m := mustJSON(t, ociManifest{SchemaVersion: 2, MediaType: mediaManifest,
		Config: descriptor{MediaType: mediaConfig, Digest: img.id, Size: int64(len(img.config))}, Layers: descs})
	md := digestOf(m)
	es = append(es, entry{name: "blobs/sha256/" + hexOf(md), data: m},
		entry{name: "index.json", data: mustJSON(t, ociIndex{SchemaVersion: 2, MediaType: mediaIndex,
			Manifests: []descriptor{{MediaType: mediaManifest, Digest: md, Size: int64(len(m))}}})},
		entry{name: "oci-layout", data: []byte(`{"imageLayoutVersion":"1.0.0"}`)},
		entry{name: "manifest.json", data: mustJSON(t, []map[string]any{{"Config": "blobs/sha256/" + hexOf(img.id), "RepoTags": tags, "Layers": paths}})})
	return archive(t, es)
}

var layouts = []struct {
	name string
	save func(*testing.T, image, ...string) []byte
}{
	{"legacy", saveLegacy},
	{"oci", func(t *testing.T, img image, tags ...string) []byte { return saveOCI(t, img, false, tags...) }},
	{"oci-gzip-layers", func(t *testing.T, img image, tags ...string) []byte { return saveOCI(t, img, true, tags...) }},
}

// unpack reads a (compressed) load archive into its files, keeping order.
func unpack(t *testing.T, b []byte) (names []string, files map[string][]byte) {
	t.Helper()
	r := decompressed(t, b)
	tr := tar.NewReader(bytes.NewReader(r))
	files = map[string][]byte{}
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return names, files
		}
		if err != nil {
			t.Fatalf("output is not a tar: %v", err)
		}
		if h.Typeflag == tar.TypeDir {
			continue
		}
		if h.Typeflag != tar.TypeReg {
			t.Errorf("%s: type %c, want a regular file", h.Name, h.Typeflag)
		}
		if _, dup := files[h.Name]; dup {
			t.Errorf("%s is in the archive twice", h.Name)
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, h.Name)
		files[h.Name] = data
	}
}

func decompressed(t *testing.T, b []byte) []byte {
	t.Helper()
	switch {
	case bytes.HasPrefix(b, gzipMagic):
		zr, err := gzip.NewReader(bytes.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		out, err := io.ReadAll(zr)
		if err != nil {
			t.Fatalf("gunzip: %v", err)
		}
		return out
	case bytes.HasPrefix(b, zstdMagic):
		zr, err := zstd.NewReader(bytes.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		defer zr.Close()
		out, err := io.ReadAll(zr)
		if err != nil {
			t.Fatalf("unzstd: %v", err)
		}
		return out
	}
	return b
}

// checkLoadArchive checks everything docker load relies on in out.
func checkLoadArchive(t *testing.T, out []byte, img image, skip int, ref, fullRef, tag string) {
	t.Helper()
	_, files := unpack(t, out)
	var lm []legacyManifest
	if err := json.Unmarshal(files["manifest.json"], &lm); err != nil {
		t.Fatalf("manifest.json: %v (%q)", err, files["manifest.json"])
	}
	if len(lm) != 1 {
		t.Fatalf("manifest.json has %d images, want 1", len(lm))
	}
	if want := "blobs/sha256/" + hexOf(img.id); lm[0].Config != want {
		t.Errorf("manifest.json Config = %s, want %s", lm[0].Config, want)
	}
	if !slices.Equal(lm[0].RepoTags, []string{ref}) {
		t.Errorf("manifest.json RepoTags = %v, want [%s]", lm[0].RepoTags, ref)
	}
	var wantPaths []string
	for _, d := range img.diffIDs {
		wantPaths = append(wantPaths, "blobs/sha256/"+hexOf(d))
	}
	if !slices.Equal(lm[0].Layers, wantPaths) {
		t.Errorf("manifest.json Layers = %v, want all layers in order %v", lm[0].Layers, wantPaths)
	}
	if got := files["blobs/sha256/"+hexOf(img.id)]; !bytes.Equal(got, img.config) {
		t.Errorf("config blob = %q, want the saved config byte for byte", got)
	}

	// Exactly the layers above skip, as uncompressed tars named by diff ID.
	need := map[string][]byte{}
	for i := skip; i < len(img.layers); i++ {
		need[img.diffIDs[i]] = img.layers[i]
	}
	for d, l := range need {
		if got, ok := files[blobPath(d)]; !ok {
			t.Errorf("layer %s is not in the archive", d)
		} else if !bytes.Equal(got, l) {
			t.Errorf("layer %s differs from the saved layer", d)
		}
	}
	for i := 0; i < skip; i++ {
		if _, ok := need[img.diffIDs[i]]; !ok {
			if _, ok := files[blobPath(img.diffIDs[i])]; ok {
				t.Errorf("layer %d (%s) is in the archive, but the server has it", i, img.diffIDs[i])
			}
		}
	}

	// index.json -> manifest blob -> config and layers.
	var idx ociIndex
	if err := json.Unmarshal(files["index.json"], &idx); err != nil {
		t.Fatalf("index.json: %v", err)
	}
	if idx.SchemaVersion != 2 || idx.MediaType != mediaIndex || len(idx.Manifests) != 1 {
		t.Fatalf("index.json = %s", files["index.json"])
	}
	md := idx.Manifests[0]
	if got := md.Annotations["io.containerd.image.name"]; got != fullRef {
		t.Errorf("io.containerd.image.name = %q, want %q", got, fullRef)
	}
	if got := md.Annotations["org.opencontainers.image.ref.name"]; got != tag {
		t.Errorf("org.opencontainers.image.ref.name = %q, want %q", got, tag)
	}
	if md.Platform == nil || md.Platform.OS != "linux" || md.Platform.Architecture != "amd64" {
		t.Errorf("index platform = %+v, want linux/amd64", md.Platform)
	}
	mb, ok := files[blobPath(md.Digest)]
	if !ok {
		t.Fatalf("the manifest blob %s named by index.json is not in the archive", md.Digest)
	}
	if digestOf(mb) != md.Digest || int64(len(mb)) != md.Size || md.MediaType != mediaManifest {
		t.Errorf("index.json says %s %d bytes (%s), the blob is %s %d bytes", md.Digest, md.Size, md.MediaType, digestOf(mb), len(mb))
	}
	var m ociManifest
	if err := json.Unmarshal(mb, &m); err != nil {
		t.Fatal(err)
	}
	if m.SchemaVersion != 2 || m.MediaType != mediaManifest {
		t.Errorf("manifest = %s", mb)
	}
	if m.Config.Digest != img.id || m.Config.Size != int64(len(img.config)) || m.Config.MediaType != mediaConfig {
		t.Errorf("manifest config = %+v, want %s %d bytes", m.Config, img.id, len(img.config))
	}
	if len(m.Layers) != len(img.layers) {
		t.Fatalf("manifest has %d layers, want %d", len(m.Layers), len(img.layers))
	}
	for i, l := range m.Layers {
		if l.Digest != img.diffIDs[i] || l.Size != int64(len(img.layers[i])) || l.MediaType != mediaLayer {
			t.Errorf("manifest layer %d = %+v, want %s %d bytes %s", i, l, img.diffIDs[i], len(img.layers[i]), mediaLayer)
		}
	}
	if got := string(files["oci-layout"]); got != `{"imageLayoutVersion":"1.0.0"}` {
		t.Errorf("oci-layout = %q", got)
	}
	// Nothing else: no v1 directories, no compressed copies.
	for name := range files {
		switch {
		case name == "manifest.json", name == "index.json", name == "oci-layout":
		case name == blobPath(img.id), name == blobPath(md.Digest):
		case strings.HasPrefix(name, "blobs/sha256/") && need["sha256:"+path.Base(name)] != nil:
		default:
			t.Errorf("unexpected file %s in the archive", name)
		}
	}
}

func TestWriteLayouts(t *testing.T) {
	img := threeLayers(t)
	manifests := map[string]bool{}
	for _, lay := range layouts {
		for _, skip := range []int{0, 1, 2, 3} {
			t.Run(fmt.Sprintf("%s/skip%d", lay.name, skip), func(t *testing.T) {
				save := lay.save(t, img, "carebot:v1")
				tmp := t.TempDir()
				var out bytes.Buffer
				st, err := Write(context.Background(), bytes.NewReader(save), &out, Options{
					Ref: "carebot:v2", ID: img.id, Layers: img.diffIDs, Skip: skip, Compress: Gzip, TempDir: tmp,
				})
				if err != nil {
					t.Fatal(err)
				}
				checkLoadArchive(t, out.Bytes(), img, skip, "carebot:v2", "docker.io/library/carebot:v2", "v2")
				if st.Layers != 3 || st.Sent != 3-skip {
					t.Errorf("stats = %+v, want 3 layers, %d sent", st, 3-skip)
				}
				if st.WireBytes != int64(out.Len()) {
					t.Errorf("WireBytes = %d, wrote %d", st.WireBytes, out.Len())
				}
				if raw := int64(len(decompressed(t, out.Bytes()))); st.RawBytes != raw {
					t.Errorf("RawBytes = %d, the tar is %d", st.RawBytes, raw)
				}
				// The manifest names every layer with its size, sent or not: the
				// same for any skip, so the server shows the same image ID.
				manifests[st.Manifest] = true
				if st.Config != img.id || len(manifests) != 1 {
					t.Errorf("stats say config %s, manifest %s; want %s and one manifest digest for all, got %v", st.Config, st.Manifest, img.id, manifests)
				}
				var idx ociIndex
				_, files := unpack(t, out.Bytes())
				if json.Unmarshal(files["index.json"], &idx) != nil || idx.Manifests[0].Digest != st.Manifest {
					t.Errorf("Stats.Manifest %s is not the manifest index.json names", st.Manifest)
				}
				if left, _ := os.ReadDir(tmp); len(left) != 0 {
					t.Errorf("spool files left in TempDir: %v", left)
				}
			})
		}
	}
}

// A layer that appears twice in an image is saved once, plus a symlink; it
// must be sent when its upper copy is needed even though its lower one is not.
func TestWriteRepeatedLayer(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	base := layerTar(t, rng, "a", 1000)
	img := newImage(t, 2, base, layerTar(t, rng, "b", 1000), base)
	for _, lay := range layouts {
		t.Run(lay.name, func(t *testing.T) {
			var out bytes.Buffer
			st, err := Write(context.Background(), bytes.NewReader(lay.save(t, img)), &out,
				Options{Ref: "registry.example.com:5000/team/app:1.2", Layers: img.diffIDs, Skip: 1, Compress: None})
			if err != nil {
				t.Fatal(err)
			}
			checkLoadArchive(t, out.Bytes(), img, 1, "registry.example.com:5000/team/app:1.2", "registry.example.com:5000/team/app:1.2", "1.2")
			if st.Sent != 2 {
				t.Errorf("sent %d layers, want 2 (the repeated one once)", st.Sent)
			}
		})
	}
}

func TestWriteRefFromSave(t *testing.T) {
	img := threeLayers(t)
	var out bytes.Buffer
	if _, err := Write(context.Background(), bytes.NewReader(saveLegacy(t, img, "myorg/app:3")), &out,
		Options{Layers: img.diffIDs, Compress: None}); err != nil {
		t.Fatal(err)
	}
	checkLoadArchive(t, out.Bytes(), img, 0, "myorg/app:3", "docker.io/myorg/app:3", "3")

	// Saved by ID there is no tag to fall back on.
	_, err := Write(context.Background(), bytes.NewReader(saveLegacy(t, img)), io.Discard, Options{Layers: img.diffIDs})
	if err == nil || !strings.Contains(err.Error(), "Options.Ref") {
		t.Errorf("Write without any tag: err = %v, want one asking for Options.Ref", err)
	}
}

// corrupt flips a byte in the middle of the first occurrence of layer in save.
func corrupt(t *testing.T, save, layer []byte) []byte {
	t.Helper()
	i := bytes.Index(save, layer)
	if i < 0 {
		t.Fatal("layer not found in the save archive")
	}
	out := bytes.Clone(save)
	out[i+600] ^= 0xff // past the layer's tar header, in the file data
	return out
}

func TestWriteCorruptLayer(t *testing.T) {
	img := threeLayers(t)
	for _, tc := range []struct {
		name string
		save []byte
		skip int
	}{
		{"legacy needed layer", corrupt(t, saveLegacy(t, img), img.layers[1]), 0},
		// Read to learn which layer it is (its json does not tell): a
		// skipped layer is checked too.
		{"legacy skipped layer", corrupt(t, saveLegacyOpaque(t, img), img.layers[0]), 1},
		{"oci needed layer", corrupt(t, saveOCI(t, img, false), img.layers[2]), 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Write(context.Background(), bytes.NewReader(tc.save), io.Discard,
				Options{Ref: "carebot:x", Layers: img.diffIDs, Skip: tc.skip, Compress: None, TempDir: t.TempDir()})
			if err == nil || !strings.Contains(err.Error(), "hashes to") {
				t.Fatalf("err = %v, want a hash mismatch", err)
			}
		})
	}
	t.Run("oci compressed blob", func(t *testing.T) {
		save := saveOCI(t, img, true)
		var gz bytes.Buffer
		zw := gzip.NewWriter(&gz)
		zw.Write(img.layers[2])
		zw.Close()
		i := bytes.Index(save, gz.Bytes())
		if i < 0 {
			t.Fatal("compressed layer not found")
		}
		save[i+gz.Len()-5] ^= 0xff // in the gzip trailer: the data still inflates, its digest does not match
		_, err := Write(context.Background(), bytes.NewReader(save), io.Discard,
			Options{Ref: "carebot:x", Layers: img.diffIDs, Skip: 2, Compress: None, TempDir: t.TempDir()})
		if err == nil {
			t.Fatal("Write accepted a corrupt blob")
		}
	})
}

func TestWriteChecksImage(t *testing.T) {
	img := threeLayers(t)
	other := threeLayers(t)
	other.diffIDs = slices.Clone(other.diffIDs)
	other.diffIDs[2] = digestOf([]byte("another top layer"))
	for _, tc := range []struct {
		name string
		o    Options
		want string
	}{
		{"no layers", Options{Ref: "a:b"}, "Options.Layers"},
		{"skip too far", Options{Ref: "a:b", Layers: img.diffIDs, Skip: 4}, "skip 4 of 3"},
		{"unknown compression", Options{Ref: "a:b", Layers: img.diffIDs, Compress: "brotli"}, "brotli"},
		{"another image ID", Options{Ref: "a:b", Layers: img.diffIDs, ID: "sha256:" + strings.Repeat("0", 64)}, "rebuilt"},
		{"stale layers", Options{Ref: "a:b", Layers: other.diffIDs}, "rebuilt"},
		{"bad ref", Options{Ref: "Not A Ref", Layers: img.diffIDs}, "Not A Ref"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Write(context.Background(), bytes.NewReader(saveLegacy(t, img)), io.Discard, tc.o)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want one about %q", err, tc.want)
			}
		})
	}
	t.Run("containerd store ID", func(t *testing.T) {
		// There the image ID is the digest of its manifest, a blob of the save.
		save := saveOCI(t, img, false)
		_, files := unpack(t, save)
		var idx ociIndex
		if err := json.Unmarshal(files["index.json"], &idx); err != nil {
			t.Fatal(err)
		}
		if _, err := Write(context.Background(), bytes.NewReader(save), io.Discard,
			Options{Ref: "a:b", Layers: img.diffIDs, ID: idx.Manifests[0].Digest}); err != nil {
			t.Errorf("ID of the saved manifest refused: %v", err)
		}
		if _, err := Write(context.Background(), bytes.NewReader(save), io.Discard,
			Options{Ref: "a:b", Layers: img.diffIDs, ID: digestOf([]byte("another manifest"))}); err == nil {
			t.Error("an ID that is neither the config nor a blob of the save was accepted")
		}
	})
	t.Run("two images", func(t *testing.T) {
		save := rewrite(t, saveLegacy(t, img), "manifest.json", func(b []byte) []byte {
			return bytes.Replace(b, []byte(`[{"Config"`), []byte(`[{},{"Config"`), 1)
		})
		_, err := Write(context.Background(), bytes.NewReader(save), io.Discard, Options{Ref: "a:b", Layers: img.diffIDs})
		if err == nil || !strings.Contains(err.Error(), "one image") {
			t.Fatalf("err = %v", err)
		}
	})
	t.Run("canceled", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		_, err := Write(ctx, bytes.NewReader(saveLegacy(t, img)), io.Discard, Options{Ref: "a:b", Layers: img.diffIDs})
		if err == nil || !strings.Contains(err.Error(), "canceled") {
			t.Fatalf("err = %v", err)
		}
	})
}

// rewrite changes one file of a tar archive.
func rewrite(t *testing.T, archive []byte, name string, change func([]byte) []byte) []byte {
	t.Helper()
	tr := tar.NewReader(bytes.NewReader(archive))
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		data, _ := io.ReadAll(tr)
		if h.Name == name {
			data = change(data)
			h.Size = int64(len(data))
		}
		tw.WriteHeader(h)
		tw.Write(data)
	}
	tw.Close()
	return b.Bytes()
}

func TestWriteCompressions(t *testing.T) {
	img := threeLayers(t)
	save := saveLegacy(t, img, "carebot:v1")
	outs := map[string][]byte{}
	for _, c := range []string{None, Gzip, Zstd, ""} {
		var out bytes.Buffer
		st, err := Write(context.Background(), bytes.NewReader(save), &out, Options{Layers: img.diffIDs, Skip: 1, Compress: c})
		if err != nil {
			t.Fatalf("%q: %v", c, err)
		}
		outs[c] = out.Bytes()
		t.Logf("%-4s raw %d wire %d", c, st.RawBytes, st.WireBytes)
		if c != None && st.WireBytes >= st.RawBytes/2 {
			t.Errorf("%s: %d bytes on the wire for %d raw: not compressed", c, st.WireBytes, st.RawBytes)
		}
	}
	if !bytes.HasPrefix(outs[Gzip], gzipMagic) || !bytes.HasPrefix(outs[""], gzipMagic) || !bytes.HasPrefix(outs[Zstd], zstdMagic) {
		t.Fatal("outputs do not start with the magic of their compression")
	}
	for _, c := range []string{Gzip, Zstd, ""} {
		if !bytes.Equal(decompressed(t, outs[c]), outs[None]) {
			t.Errorf("%q output does not decompress to the uncompressed archive", c)
		}
	}
	checkLoadArchive(t, outs[Zstd], img, 1, "carebot:v1", "docker.io/library/carebot:v1", "v1")
}

// A redeploy on the classic store: the layers the server has are passed
// over unread when their v1 jsons tell their places (a flipped byte in
// them goes unnoticed: they are not sent), and the archive still loads.
// When the jsons lie, the manifest check refuses the archive.
func TestWriteSkipsPresentLayersUnread(t *testing.T) {
	img := threeLayers(t)
	for skip := 1; skip <= 2; skip++ {
		save := corrupt(t, saveLegacy(t, img), img.layers[0])
		var out bytes.Buffer
		st, err := Write(context.Background(), bytes.NewReader(save), &out,
			Options{Ref: "carebot:x", Layers: img.diffIDs, Skip: skip, Compress: None, TempDir: t.TempDir()})
		if err != nil {
			t.Fatalf("skip %d: %v", skip, err)
		}
		checkLoadArchive(t, out.Bytes(), img, skip, "carebot:x", "docker.io/library/carebot:x", "x")
		if st.Sent != 3-skip {
			t.Errorf("skip %d: sent %d layers, want %d", skip, st.Sent, 3-skip)
		}
	}
	// The top layer's json lies: its parent is the base and it has no
	// config, so it passes for layer 2, which the server has. The archive
	// is refused, not sent with the wrong layer.
	v1 := func(i int) string { return hexOf(digestOf([]byte(fmt.Sprintf("v1 %d %s", i, img.id)))) }
	lying := bytes.Replace(saveLegacy(t, img), []byte(`"parent":"`+v1(1)+`","config":{"Cmd":["/app"]}`), []byte(`"parent":"`+v1(0)+`","config":null            `), 1)
	if bytes.Equal(lying, saveLegacy(t, img)) {
		t.Fatal("the top layer's json was not rewritten")
	}
	_, err := Write(context.Background(), bytes.NewReader(lying), io.Discard,
		Options{Ref: "carebot:x", Layers: img.diffIDs, Skip: 2, Compress: None, TempDir: t.TempDir()})
	if err == nil {
		t.Error("an archive whose top layer passed for one the server has was written without an error")
	} else {
		t.Log(err)
	}
}
