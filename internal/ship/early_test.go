package ship

import (
	"context"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/carebot/carebot/internal/engine"
)

// countingSource saves a text, counting the saves started and the streams
// closed.
type countingSource struct {
	saves, closed atomic.Int32
	started       chan struct{} // gets a value per save started
}

func (c *countingSource) Image(context.Context, string) (engine.Image, error) {
	return engine.Image{}, nil
}

func (c *countingSource) Save(ctx context.Context, refs ...string) (io.ReadCloser, error) {
	c.saves.Add(1)
	if c.started != nil {
		c.started <- struct{}{}
	}
	return &closeCounter{Reader: strings.NewReader("archive of " + strings.Join(refs, " ")), n: &c.closed}, nil
}

type closeCounter struct {
	io.Reader
	n    *atomic.Int32
	once sync.Once
}

func (c *closeCounter) Close() error {
	c.once.Do(func() { c.n.Add(1) })
	return nil
}

func TestSaveEarly(t *testing.T) {
	ctx := context.Background()
	t.Run("started before it is asked for, taken once", func(t *testing.T) {
		src := &countingSource{started: make(chan struct{}, 4)}
		e := SaveEarly(ctx, src, "sha256:new", func(context.Context) bool { return true })
		select {
		case <-src.started: // nobody asked yet
		case <-time.After(10 * time.Second):
			t.Fatal("the save did not start before the transfer asked for it")
		}
		rc, err := e.Save(ctx, "sha256:new")
		if err != nil {
			t.Fatal(err)
		}
		if b, _ := io.ReadAll(rc); string(b) != "archive of sha256:new" {
			t.Errorf("the early save reads %q", b)
		}
		rc.Close()
		if _, err := e.Save(ctx, "sha256:new"); err != nil { // the whole image after a refusal
			t.Fatal(err)
		}
		if n := src.saves.Load(); n != 2 {
			t.Errorf("%d saves, want the early one and a second of its own", n)
		}
		e.Close()
	})
	t.Run("the host has it: no save", func(t *testing.T) {
		src := &countingSource{}
		asked := make(chan struct{})
		e := SaveEarly(ctx, src, "sha256:old", func(context.Context) bool { close(asked); return false })
		<-asked
		e.Close()
		time.Sleep(50 * time.Millisecond)
		if n := src.saves.Load(); n != 0 {
			t.Errorf("%d saves of an image the host has, want none", n)
		}
	})
	t.Run("not taken: closed", func(t *testing.T) {
		src := &countingSource{started: make(chan struct{}, 1)}
		e := SaveEarly(ctx, src, "sha256:new", func(context.Context) bool { return true })
		<-src.started
		e.Close()
		deadline := time.Now().Add(10 * time.Second)
		for src.closed.Load() != 1 && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		if n := src.closed.Load(); n != 1 {
			t.Errorf("the save nobody took was closed %d times, want once", n)
		}
	})
	t.Run("another image: the source's own save", func(t *testing.T) {
		src := &countingSource{started: make(chan struct{}, 4)}
		e := SaveEarly(ctx, src, "sha256:new", func(context.Context) bool { return true })
		defer e.Close()
		<-src.started
		rc, err := e.Save(ctx, "sha256:other")
		if err != nil {
			t.Fatal(err)
		}
		if b, _ := io.ReadAll(rc); string(b) != "archive of sha256:other" {
			t.Errorf("a save of another image reads %q", b)
		}
	})
}
