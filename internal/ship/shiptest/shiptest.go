// Package shiptest is a fake build engine for tests of code that ships
// images (a ship.Source): images of three small layers, saved the way
// Docker 20.10 saves them, and images known by ID only. Only tests import it.
package shiptest

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"

	"github.com/carebot/carebot/internal/engine"
)

// Engine is the fake. The zero value holds no images.
type Engine struct {
	mu     sync.Mutex
	images map[string]engine.Image // by ID and by tag
	saves  map[string][]byte       // `docker save` of the images Build made, by ID
	Saves  int                     // how many times Save was called
}

// Digest is the sha256 digest of b, as Docker writes it.
func Digest(b []byte) string {
	h := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(h[:])
}

// Build makes an image tagged ref, for linux/amd64, of three layers whose
// files depend on ref (so two refs are two images).
func (e *Engine) Build(t testing.TB, ref string) engine.Image {
	t.Helper()
	var layers [][]byte
	var diffIDs []string
	for i, name := range []string{"base.bin", "app", "release.txt"} {
		data := bytes.Repeat([]byte(ref+name), 512<<i)
		layers = append(layers, tarOf(t, entry{name, data}))
		diffIDs = append(diffIDs, Digest(layers[i]))
	}
	config, _ := json.Marshal(map[string]any{
		"architecture": "amd64", "os": "linux", "created": "2026-01-01T00:00:00Z",
		"config": map[string]any{"Cmd": []string{"/app"}},
		"rootfs": map[string]any{"type": "layers", "diff_ids": diffIDs},
	})
	id := Digest(config)
	var files []entry
	var paths []string
	for i, l := range layers {
		p := fmt.Sprintf("%064d/layer.tar", i)
		paths = append(paths, p)
		files = append(files, entry{p, l})
	}
	cfgName := strings.TrimPrefix(id, "sha256:") + ".json"
	manifest, _ := json.Marshal([]map[string]any{{"Config": cfgName, "RepoTags": []string{ref}, "Layers": paths}})
	files = append(files, entry{cfgName, config}, entry{"manifest.json", manifest})
	save := tarOf(t, files...)
	img := engine.Image{ID: id, Tags: []string{ref}, OS: "linux", Arch: "amd64", Layers: diffIDs, Size: int64(len(save))}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.add(img)
	e.saves[id] = save
	return img
}

// Know adds an image known by its ID alone, whose layers the fake does not
// hold: it can be inspected, not saved. For tests where the host has the
// image already and nothing must be sent.
func (e *Engine) Know(id string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.add(engine.Image{ID: id, OS: "linux", Arch: "amd64", Layers: []string{id}})
}

func (e *Engine) add(img engine.Image) {
	if e.images == nil {
		e.images, e.saves = map[string]engine.Image{}, map[string][]byte{}
	}
	e.images[img.ID] = img
	for _, t := range img.Tags {
		e.images[t] = img
	}
}

// Image inspects ref, a tag or an ID.
func (e *Engine) Image(_ context.Context, ref string) (engine.Image, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	img, ok := e.images[ref]
	if !ok {
		return engine.Image{}, fmt.Errorf("image %s: %w", ref, engine.ErrNotFound)
	}
	return img, nil
}

// Save streams `docker save` of one image Build made.
func (e *Engine) Save(_ context.Context, refs ...string) (io.ReadCloser, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.Saves++
	if len(refs) != 1 {
		return nil, fmt.Errorf("the fake engine saves one image at a time, not %q", refs)
	}
	save, ok := e.saves[e.images[refs[0]].ID]
	if !ok {
		return nil, fmt.Errorf("save %s: the fake engine holds no layers of it", refs[0])
	}
	return io.NopCloser(bytes.NewReader(save)), nil
}

type entry struct {
	name string
	data []byte
}

func tarOf(t testing.TB, files ...entry) []byte {
	t.Helper()
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	for _, f := range files {
		if err := tw.WriteHeader(&tar.Header{Name: f.name, Mode: 0o644, Size: int64(len(f.data)), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		tw.Write(f.data)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}
