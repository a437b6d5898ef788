package ship

import (
	"context"
	"io"
	"slices"
	"sync"

	"github.com/carebot/carebot/internal/engine"
	"github.com/carebot/carebot/internal/transfer"
)

// Early is a Source whose save of one image starts before the transfer
// asks for it. An engine on the classic image store writes the whole image
// to a folder of its own before the first byte of `docker save` comes out
// (seconds for a few hundred MB): started as soon as the host turns out to
// lack the image, that work runs while the run connects, takes the lock
// and compares layers, as `docker save | ssh … docker load` overlaps it
// with its connection.
type Early struct {
	Source
	id   string
	done chan struct{} // closed when the save has started, or will not
	rc   io.ReadCloser
	err  error
	stop context.CancelFunc

	mu    sync.Mutex
	taken bool
}

var _ layerSizer = (*Early)(nil)

// SaveEarly starts saving image id on src, in the background, once need
// (asked in the background too) says the transfer will want it: need
// answers false when the host has the image already, or cannot tell. Close
// the Early when the transfer is over; a save nobody took is closed then.
func SaveEarly(ctx context.Context, src Source, id string, need func(context.Context) bool) *Early {
	ctx, stop := context.WithCancel(ctx)
	e := &Early{Source: src, id: id, done: make(chan struct{}), stop: stop}
	go func() {
		defer close(e.done)
		if need(ctx) && ctx.Err() == nil {
			e.rc, e.err = src.Save(ctx, id)
		}
	}()
	return e
}

// Save is the save started early, the first time it is asked for that
// image; any other save, or a second one (the whole image after a refused
// partial one), is the source's own.
func (e *Early) Save(ctx context.Context, refs ...string) (io.ReadCloser, error) {
	if slices.Equal(refs, []string{e.id}) {
		select {
		case <-e.done:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		e.mu.Lock()
		first := !e.taken
		e.taken = true
		e.mu.Unlock()
		if first && (e.rc != nil || e.err != nil) {
			return e.rc, e.err
		}
	}
	return e.Source.Save(ctx, refs...)
}

// Blobs is the source's cache of compressed layers, if it has one.
func (e *Early) Blobs() *transfer.Blobs { return blobsOf(e.Source) }

// LayerSizes is the source's, when it knows them.
func (e *Early) LayerSizes(ctx context.Context, id string, n int) ([]int64, error) {
	if s, ok := e.Source.(layerSizer); ok {
		return s.LayerSizes(ctx, id, n)
	}
	return nil, engine.ErrNotFound
}

// Close ends a save that was started and not taken, and the asking of
// need if it is still going; call it once the transfer is over.
func (e *Early) Close() error {
	e.mu.Lock()
	e.taken = true
	e.mu.Unlock()
	e.stop()
	go func() {
		<-e.done
		if e.rc != nil {
			e.rc.Close() // (a taken one was closed by whoever took it: closing it twice is harmless)
		}
	}()
	return nil
}

// blobsOf is a source's cache of compressed layers (a fleet's Shared), or nil.
func blobsOf(src Source) *transfer.Blobs {
	if b, ok := src.(interface{ Blobs() *transfer.Blobs }); ok {
		return b.Blobs()
	}
	return nil
}
