package ship

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"

	"github.com/carebot/carebot/internal/host"
	"github.com/carebot/carebot/internal/ship/shiptest"
)

// fakeServer is a host whose Docker engine answers the survey, `docker
// load` and the ID inspection; it runs nothing else.
type fakeServer struct {
	api, os, arch string
	id            string     // what it has for the ref, "" = nothing
	chains        [][]string // layer chains of its images

	// load decides each `docker load`: it gets the call's number (from 1)
	// and the layer blobs in the archive, and returns what docker load
	// prints and whether it exits non-zero. nil: accept, and have the image.
	load  func(n int, layers []string) (out string, fail bool)
	after string // the ID the server has once a load is accepted

	mu    sync.Mutex
	loads [][]string // the layer blobs each load carried
	cmds  []string
}

var _ host.Host = (*fakeServer)(nil)

func (f *fakeServer) Exec(ctx context.Context, cmd string, stdin io.Reader, stdout, stderr io.Writer) error {
	f.mu.Lock()
	f.cmds = append(f.cmds, cmd)
	f.mu.Unlock()
	if stdout == nil {
		stdout = io.Discard
	}
	switch {
	case strings.HasPrefix(cmd, "docker version "):
		fmt.Fprintf(stdout, "%s %s %s\n", f.api, f.os, f.arch)
		if f.id == "" {
			fmt.Fprintln(stdout, "none")
		} else {
			fmt.Fprintln(stdout, f.id)
		}
		for _, c := range f.chains {
			b, _ := json.Marshal(c)
			fmt.Fprintln(stdout, string(b))
		}
		return nil
	case cmd == "docker load":
		layers, err := blobs(stdin)
		if err != nil {
			fmt.Fprintf(stderr, "Error: archive/tar: %v\n", err)
			return errors.New("exit status 1")
		}
		f.mu.Lock()
		f.loads = append(f.loads, layers)
		n := len(f.loads)
		f.mu.Unlock()
		out, fail := "Loaded image: carebot:v2\n", false
		if f.load != nil {
			out, fail = f.load(n, layers)
		}
		fmt.Fprint(stdout, out)
		if fail {
			return errors.New("exit status 1")
		}
		if !strings.Contains(out, "Error ") {
			f.id = f.after
		}
		return nil
	case strings.HasPrefix(cmd, "docker image inspect --format '{{.Id}}' "):
		if f.id != "" {
			fmt.Fprintln(stdout, f.id)
		}
		return nil
	}
	return fmt.Errorf("the fake server does not run %q", cmd)
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

func (f *fakeServer) DialContext(context.Context, string, string) (net.Conn, error) {
	return nil, errors.New("the fake server dials nothing")
}
func (f *fakeServer) String() string { return "ubuntu@server" }
func (f *fakeServer) Close() error   { return nil }
