package ship

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"

	"github.com/carebot/carebot/internal/engine"
	"github.com/carebot/carebot/internal/transfer"
)

// Shared is a Source whose saves are made once and read by every host a
// run deploys to: the first Save of an image starts `docker save` into a
// local temporary file, and each reader (the first one too) follows that
// file as it grows, at its own pace. A slow link does not hold back a fast
// one, the build engine exports the image once, and a reader that needs
// the image again (the whole image after a refused partial load) reads it
// from the file.
//
// When the file cannot be written (a full disk), each reader makes a save
// of its own from where the file stopped: the same bytes, as an engine's
// save of one image is the same archive each time.
type Shared struct {
	src   Source
	blobs *transfer.Blobs // each layer compressed once for every host
	ctx   context.Context // the saves': the run's, not one host's
	end   context.CancelFunc

	mu    sync.Mutex
	saves map[string]*spooled
}

var _ layerSizer = (*Shared)(nil)

// Share wraps src for the hosts of one run; Close removes its files.
func Share(ctx context.Context, src Source) *Shared {
	ctx, end := context.WithCancel(context.WithoutCancel(ctx))
	return &Shared{src: src, ctx: ctx, end: end, saves: map[string]*spooled{}, blobs: transfer.NewBlobs()}
}

// Blobs is the run's cache of compressed layers, which every host's
// transfer shares.
func (s *Shared) Blobs() *transfer.Blobs { return s.blobs }

// Image is the source's.
func (s *Shared) Image(ctx context.Context, ref string) (engine.Image, error) {
	return s.src.Image(ctx, ref)
}

// LayerSizes is the source's, when it knows them.
func (s *Shared) LayerSizes(ctx context.Context, id string, n int) ([]int64, error) {
	if ls, ok := s.src.(layerSizer); ok {
		return ls.LayerSizes(ctx, id, n)
	}
	return nil, engine.ErrNotFound
}

// Save returns a reader of the one save of refs, started by the first call.
func (s *Shared) Save(ctx context.Context, refs ...string) (io.ReadCloser, error) {
	key := strings.Join(refs, "\x00")
	s.mu.Lock()
	sp := s.saves[key]
	if sp == nil {
		sp = &spooled{refs: refs}
		sp.cond = sync.NewCond(&sp.mu)
		s.saves[key] = sp
		go sp.run(s.ctx, s.src)
	}
	s.mu.Unlock()
	r := &follower{sp: sp, src: s.src, ctx: ctx}
	r.stop = context.AfterFunc(ctx, sp.wake)
	return r, nil
}

// Saves says how many saves the source was asked for (tests).
func (s *Shared) Saves() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.saves)
}

// Close stops the saves still running and removes their files.
func (s *Shared) Close() error {
	s.end()
	s.blobs.Close()
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, sp := range s.saves {
		sp.mu.Lock()
		for !sp.done {
			sp.cond.Wait()
		}
		if sp.f != nil {
			sp.f.Close()
			os.Remove(sp.f.Name())
		}
		sp.mu.Unlock()
	}
	s.saves = map[string]*spooled{}
	return nil
}

// spooled is one save being written to its file.
type spooled struct {
	refs []string
	mu   sync.Mutex
	cond *sync.Cond
	f    *os.File
	n    int64 // bytes in the file
	done bool
	err  error // the save's own error, once done
	full error // why the file stopped growing before the save ended
}

func (sp *spooled) wake() {
	sp.mu.Lock()
	sp.cond.Broadcast()
	sp.mu.Unlock()
}

// run copies the save into the file, telling readers of each piece.
func (sp *spooled) run(ctx context.Context, src Source) {
	f, ferr := os.CreateTemp("", "carebot-save-*.tar")
	sp.mu.Lock()
	sp.f = f
	if ferr != nil {
		sp.full = ferr
	}
	sp.mu.Unlock()
	var err error
	if ferr == nil {
		err = sp.copy(ctx, src, f)
	}
	sp.mu.Lock()
	sp.done, sp.err = true, err
	sp.cond.Broadcast()
	sp.mu.Unlock()
}

func (sp *spooled) copy(ctx context.Context, src Source, f *os.File) error {
	rc, err := src.Save(ctx, sp.refs...)
	if err != nil {
		return err
	}
	defer rc.Close()
	buf := make([]byte, 256<<10)
	for {
		n, rerr := rc.Read(buf)
		if n > 0 {
			if _, werr := f.Write(buf[:n]); werr != nil {
				sp.mu.Lock()
				sp.full = werr
				sp.cond.Broadcast()
				sp.mu.Unlock()
				return nil // the readers save for themselves from here
			}
			sp.mu.Lock()
			sp.n += int64(n)
			sp.cond.Broadcast()
			sp.mu.Unlock()
		}
		if rerr == io.EOF {
			return nil
		}
		if rerr != nil {
			return rerr
		}
	}
}

// follower reads a spooled save from the start.
type follower struct {
	sp     *spooled
	src    Source
	ctx    context.Context
	stop   func() bool
	off    int64
	own    io.ReadCloser // its own save, once the file stopped growing
	closed bool          // under sp.mu
}

func (r *follower) Read(p []byte) (int, error) {
	if r.own != nil {
		return r.own.Read(p)
	}
	sp := r.sp
	sp.mu.Lock()
	for r.off >= sp.n && !sp.done && sp.full == nil && r.ctx.Err() == nil && !r.closed {
		sp.cond.Wait()
	}
	f, n, done, err, full, closed := sp.f, sp.n, sp.done, sp.err, sp.full, r.closed
	sp.mu.Unlock()
	switch {
	case closed:
		return 0, os.ErrClosed
	case r.off < n:
		k, err := f.ReadAt(p[:min(int64(len(p)), n-r.off)], r.off)
		r.off += int64(k)
		if errors.Is(err, io.EOF) {
			err = nil
		}
		return k, err
	case r.ctx.Err() != nil:
		return 0, r.ctx.Err()
	case full != nil:
		return r.saveOwn(p, full)
	case err != nil:
		return 0, err
	case done:
		return 0, io.EOF
	}
	return 0, nil
}

// saveOwn goes on from a save of its own when the file stopped growing.
func (r *follower) saveOwn(p []byte, why error) (int, error) {
	rc, err := r.src.Save(r.ctx, r.sp.refs...)
	if err != nil {
		return 0, err
	}
	if _, err := io.CopyN(io.Discard, rc, r.off); err != nil {
		rc.Close()
		return 0, fmt.Errorf("save the image again after the local copy failed (%v): %w", why, err)
	}
	r.own = rc
	return rc.Read(p)
}

func (r *follower) Close() error {
	r.sp.mu.Lock()
	was := r.closed
	r.closed = true
	r.sp.cond.Broadcast()
	r.sp.mu.Unlock()
	if was {
		return nil
	}
	r.stop()
	if r.own != nil {
		return r.own.Close()
	}
	return nil
}
