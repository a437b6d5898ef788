package transfer

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
)

// Blobs lets the transfers of one run to several servers compress each
// layer once: the first transfer that compresses a layer with a codec
// keeps the result in a local file, and the others that choose the same
// codec for that layer take it (waiting while it is being made) instead
// of compressing it again. Each transfer still reads its own copy of the
// save, so it goes at its own link's pace. Close removes the files.
type Blobs struct {
	mu   sync.Mutex
	m    map[string]*cachedBlob
	made int // layers compressed (tests)
}

type cachedBlob struct {
	done chan struct{}
	path string // a hard link of the first transfer's compressed file
	n    int64  // the layer's raw size
	blob descriptor
	err  error
}

// NewBlobs is an empty cache for one run.
func NewBlobs() *Blobs { return &Blobs{m: map[string]*cachedBlob{}} }

// claim returns the entry for a layer and codec, and whether the caller
// is the first, which must make it.
func (b *Blobs) claim(diffID, codec string) (*cachedBlob, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	key := diffID + "\x00" + codec
	if c, ok := b.m[key]; ok {
		return c, false
	}
	c := &cachedBlob{done: make(chan struct{})}
	b.m[key] = c
	return c, true
}

// Close removes the kept files.
func (b *Blobs) Close() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, c := range b.m {
		select {
		case <-c.done:
			if c.path != "" {
				os.Remove(c.path)
			}
		default: // still being made: its maker removes nothing it did not link
		}
	}
	b.m = map[string]*cachedBlob{}
	return nil
}

// compressOnce is compress for a layer whose diff ID is known, through
// the run's Blobs when there is one.
func (x *rewriter) compressOnce(r *bufio.Reader, diffID, codec string) (spool, error) {
	b := x.o.Blobs
	if b == nil {
		return x.compress(r, codec)
	}
	c, first := b.claim(diffID, codec)
	if first {
		sp, err := x.compress(r, codec)
		if err == nil && sp.diffID == diffID {
			b.mu.Lock()
			b.made++
			b.mu.Unlock()
			keep := sp.f.Name() + ".shared"
			if lerr := os.Link(sp.f.Name(), keep); lerr == nil {
				c.path, c.n, c.blob = keep, sp.n, sp.blob
			} else {
				c.err = lerr
			}
		} else {
			c.err = fmt.Errorf("not kept")
		}
		close(c.done)
		return sp, err
	}
	select {
	case <-c.done:
	case <-x.ctx.Done():
		return spool{}, x.ctx.Err()
	}
	if c.err != nil {
		return x.compress(r, codec) // the first one failed: make it here
	}
	// The layer's bytes still pass through (this transfer's save must go
	// on); their size is checked, their hash was by the one that made it.
	n, err := io.Copy(io.Discard, r)
	if err != nil {
		return spool{}, err
	}
	if n != c.n {
		return spool{}, fmt.Errorf("layer %s is %d bytes here and %d in the transfer that compressed it", diffID, n, c.n)
	}
	own := filepath.Join(filepath.Dir(c.path), fmt.Sprintf("carebot-blob-%p", x)+"-"+c.blob.Digest[len(c.blob.Digest)-12:])
	if err := os.Link(c.path, own); err != nil {
		return spool{}, fmt.Errorf("take the compressed layer %s: %w", diffID, err)
	}
	f, err := os.Open(own)
	if err != nil {
		os.Remove(own)
		return spool{}, err
	}
	return spool{f: f, n: c.n, diffID: diffID, blob: c.blob}, nil
}
