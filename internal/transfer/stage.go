package transfer

import (
	"context"
	"io"
	"os"
	"strings"
)

// Staging: instead of one archive streamed into `docker load`, each layer
// blob goes to a file of its own on the server, where a transfer that was
// cut can resume, and the load happens once all of them are there. Write
// does the same work as for an archive (the same layout, media types and
// per-layer choices), but hands each layer blob, spooled locally, to a
// Stager; the archive it writes holds only the config and the manifests,
// which name the staged blobs by their digests.
//
// A layer to resume must come out byte for byte as it did before: it keeps
// the encoding of its partial file (Stager.Method), and both encoders
// compress fixed 1 MiB chunks independently, at fixed levels, so the same
// layer gives the same bytes (TestStagedEncodingIsDeterministic).

// Blob is one layer blob as the server stores it.
type Blob struct {
	DiffID string // the layer's, uncompressed
	Method string // None, Gzip or Zstd
	Digest string // of the bytes as stored (the diff ID when None)
	Size   int64  // of the bytes as stored
}

// Ext is the file name extension of a blob encoded with method.
func Ext(method string) string {
	switch method {
	case Gzip:
		return ".tar.gz"
	case Zstd:
		return ".tar.zst"
	}
	return ".tar"
}

// MethodOf is the encoding a blob file's name says (see Ext), and ok=false
// for a name that is no layer blob.
func MethodOf(name string) (method string, ok bool) {
	for _, m := range []string{Gzip, Zstd, None} {
		if strings.HasSuffix(name, Ext(m)) {
			return m, true
		}
	}
	return "", false
}

// A Stager takes the layer blobs of a staged Write (Options.Stage). Write
// calls it from one goroutine at a time, in the order of the layers sent.
type Stager interface {
	// Staged returns the blob the server holds complete for a layer, if
	// any: that layer is not sent again.
	Staged(diffID string) (Blob, bool)
	// Method is the encoding a layer must have (that of a partial file to
	// resume), and why; "" to let Auto choose.
	Method(diffID string) (method, why string)
	// Put stores blob b, whose b.Size bytes r holds from offset 0. What it
	// writes towards the server goes through link, so that Auto measures
	// the link by it.
	Put(ctx context.Context, b Blob, r io.ReaderAt, link func(io.Writer) io.Writer) error
}

// stageLayer is blob's way for a layer of ours when staging: not read at
// all if the server has it staged already, else spooled like a layer of
// the legacy layout (a resumed layer must be readable again from 0).
func (x *rewriter) stageLayer(r io.Reader, size int64, name, diffID string) error {
	if x.staged(diffID) {
		return nil
	}
	return x.layer(r, size, name, diffID)
}

// staged marks a layer the server holds complete in its staging folder as
// sent, named in the manifests by that file's digest and media type.
func (x *rewriter) staged(diffID string) bool {
	b, ok := x.o.Stage.Staged(diffID)
	if !ok {
		return false
	}
	x.sent[diffID] = true
	x.blobOf[diffID] = descriptor{MediaType: mediaType(b.Method), Digest: b.Digest, Size: b.Size}
	return true
}

// stageMethod is the encoding the stager fixes for the layer at index i,
// and why; "" when Auto chooses.
func (x *rewriter) stageMethod(i int) (method, why string) {
	if x.o.Stage == nil || i < 0 {
		return "", ""
	}
	return x.o.Stage.Method(x.o.Layers[i])
}

// put hands a spooled blob to the stager; the sender calls it.
func (x *rewriter) put(b Blob, f *os.File) error {
	link := func(w io.Writer) io.Writer { return w }
	if x.auto != nil {
		link = func(w io.Writer) io.Writer { return timedWriter{x.auto.link, w} }
	}
	return x.o.Stage.Put(x.ctx, b, f, link) // its errors name the layer and the server
}

// timedWriter writes to w, timed by the link's meter.
type timedWriter struct {
	m *meter
	w io.Writer
}

func (t timedWriter) Write(b []byte) (int, error) { return t.m.timed(t.w, b) }

func mediaType(method string) string {
	if method == None || method == "" {
		return mediaLayer
	}
	return mediaLayer + "+" + method
}
