package ship

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"strings"
	"sync"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"

	"github.com/carebot/carebot/internal/engine"
	"github.com/carebot/carebot/internal/ship/shiptest"
)

// fakeServer is a host's Docker engine that answers the survey, loads
// and the ID inspection.
type fakeServer struct {
	api, os, arch string
	id            string     // what it has for the ref, "" = nothing
	chains        [][]string // layer chains of its images

	// load decides each load: it gets the call's number (from 1) and the
	// layer blobs in the archive, and returns what the engine says and
	// whether it refuses. nil: accept, and have the image.
	load  func(n int, layers []string) (out string, fail bool)
	after string // the ID the server has once a load is accepted

	mu    sync.Mutex
	loads [][]string // the layer blobs each load carried
	cmds  []string   // the API calls, by method name
}

var _ Server = (*fakeServer)(nil)

func (f *fakeServer) called(m string) {
	f.mu.Lock()
	f.cmds = append(f.cmds, m)
	f.mu.Unlock()
}

func (f *fakeServer) Platform(context.Context) (engine.Platform, error) {
	f.called("Platform")
	return engine.Platform{APIVersion: f.api, OS: f.os, Arch: f.arch}, nil
}

func (f *fakeServer) ImageID(context.Context, string) (string, error) {
	f.called("ImageID")
	return f.id, nil
}

func (f *fakeServer) LayerChains(context.Context) ([][]string, error) {
	f.called("LayerChains")
	return f.chains, nil
}

func (f *fakeServer) Load(ctx context.Context, archive io.Reader) (string, error) {
	f.called("Load")
	layers, err := blobs(archive)
	if err != nil {
		return "", fmt.Errorf("docker load on %s: archive/tar: %v", f, err)
	}
	f.mu.Lock()
	f.loads = append(f.loads, layers)
	n := len(f.loads)
	f.mu.Unlock()
	out, fail := "Loaded image: carebot:v2\n", false
	if f.load != nil {
		out, fail = f.load(n, layers)
	}
	if fail {
		return "", fmt.Errorf("docker load on %s: %s", f, strings.TrimSpace(out))
	}
	if !strings.Contains(out, "Error ") {
		f.id = f.after
	}
	return out, nil
}

// blobs reads a load archive (a plain tar) to its end and lists the layer
// blobs in it, raw or compressed, as the image's diff IDs.
func blobs(r io.Reader) ([]string, error) {
	var layers []string
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return layers, nil
		}
		if err != nil {
			return nil, err
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			return nil, err
		}
		// A blob is named by its digest; a layer streamed raw from a
		// legacy save by its place in it (layers/N.tar).
		name, ok := strings.CutPrefix(h.Name, "blobs/sha256/")
		if ok && "sha256:"+name != shiptest.Digest(b) || !ok && !strings.HasPrefix(h.Name, "layers/") {
			continue
		}
		if isTar(b) {
			layers = append(layers, shiptest.Digest(b))
		} else if raw, err := unpackLayer(b); err == nil && isTar(raw) {
			layers = append(layers, shiptest.Digest(raw)) // a compressed layer: by its diff ID
		}
	}
}

// unpackLayer undoes gzip or zstd, as docker load does for a layer blob.
func unpackLayer(b []byte) ([]byte, error) {
	if bytes.HasPrefix(b, []byte{0x1f, 0x8b}) {
		zr, err := gzip.NewReader(bytes.NewReader(b))
		if err != nil {
			return nil, err
		}
		return io.ReadAll(zr)
	}
	zr, err := zstd.NewReader(bytes.NewReader(b))
	if err != nil {
		return nil, err
	}
	defer zr.Close()
	return io.ReadAll(zr)
}

func isTar(b []byte) bool {
	_, err := tar.NewReader(bytes.NewReader(b)).Next()
	return err == nil
}

func (f *fakeServer) String() string { return "ubuntu@server" }
