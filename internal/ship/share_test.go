package ship

import (
	"bytes"
	"context"
	"io"
	"math/rand"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/carebot/carebot/internal/engine"
)

// dripSource saves the same bytes each time, in small pieces with pauses,
// so readers catch up with the file as it grows.
type dripSource struct {
	data  []byte
	saves atomic.Int32
}

func (d *dripSource) Image(context.Context, string) (engine.Image, error) { return engine.Image{}, nil }

func (d *dripSource) Save(ctx context.Context, refs ...string) (io.ReadCloser, error) {
	d.saves.Add(1)
	pr, pw := io.Pipe()
	go func() {
		for off := 0; off < len(d.data); off += 64 << 10 {
			if ctx.Err() != nil {
				pw.CloseWithError(ctx.Err())
				return
			}
			if _, err := pw.Write(d.data[off:min(off+64<<10, len(d.data))]); err != nil {
				return
			}
			time.Sleep(time.Millisecond)
		}
		pw.Close()
	}()
	return pr, nil
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.New(rand.NewSource(1)).Read(b)
	return b
}

func TestSharedSavesOnceForEveryReader(t *testing.T) {
	src := &dripSource{data: randomBytes(3 << 20)}
	s := Share(context.Background(), src)
	var wg sync.WaitGroup
	got := make([][]byte, 3)
	for i := range got {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rc, err := s.Save(context.Background(), "img")
			if err != nil {
				t.Error(err)
				return
			}
			defer rc.Close()
			if i == 1 { // a slow reader does not hold the others back
				time.Sleep(50 * time.Millisecond)
			}
			got[i], err = io.ReadAll(rc)
			if err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	for i, g := range got {
		if !bytes.Equal(g, src.data) {
			t.Fatalf("reader %d got %d bytes, not the save's %d", i, len(g), len(src.data))
		}
	}
	// A reader that comes after the save ended reads the file.
	rc, _ := s.Save(context.Background(), "img")
	again, err := io.ReadAll(rc)
	rc.Close()
	if err != nil || !bytes.Equal(again, src.data) {
		t.Fatalf("a later reader got %d bytes (%v)", len(again), err)
	}
	if n := src.saves.Load(); n != 1 {
		t.Errorf("the engine saved %d times, want once", n)
	}
	var files []string
	for _, sp := range s.saves {
		files = append(files, sp.f.Name())
	}
	s.Close()
	for _, f := range files {
		if _, err := os.Stat(f); !os.IsNotExist(err) {
			t.Errorf("Close left %s", f)
		}
	}
}

// A reader whose context ends stops waiting at once; the others go on.
func TestSharedReaderCancelled(t *testing.T) {
	src := &dripSource{data: randomBytes(8 << 20)}
	s := Share(context.Background(), src)
	defer s.Close()
	ctx, cancel := context.WithCancel(context.Background())
	rc, _ := s.Save(ctx, "img")
	buf := make([]byte, 1000)
	if _, err := rc.Read(buf); err != nil {
		t.Fatal(err)
	}
	cancel()
	done := make(chan error, 1)
	go func() { _, err := io.ReadAll(rc); done <- err }()
	select {
	case err := <-done:
		if err == nil {
			t.Error("a cancelled reader read to the end")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a cancelled reader kept waiting")
	}
	other, _ := s.Save(context.Background(), "img")
	b, err := io.ReadAll(other)
	if err != nil || !bytes.Equal(b, src.data) {
		t.Fatalf("the other reader got %d bytes (%v)", len(b), err)
	}
}

// When the local copy cannot be written (a full disk), each reader goes
// on from a save of its own, and still gets every byte.
func TestSharedFullDisk(t *testing.T) {
	src := &dripSource{data: randomBytes(2 << 20)}
	s := Share(context.Background(), src)
	defer s.Close()
	rc, _ := s.Save(context.Background(), "img")
	// Make the file refuse writes once the first piece is in.
	buf := make([]byte, 1000)
	if _, err := io.ReadFull(rc, buf); err != nil {
		t.Fatal(err)
	}
	for _, sp := range s.saves {
		sp.mu.Lock()
		ro, err := os.Open(sp.f.Name())
		if err != nil {
			t.Fatal(err)
		}
		sp.f.Close()
		sp.f = ro // reads work, writes fail
		sp.mu.Unlock()
	}
	rest, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	if got := append(buf, rest...); !bytes.Equal(got, src.data) {
		t.Fatalf("got %d bytes, want the save's %d, unchanged", len(got), len(src.data))
	}
	if src.saves.Load() < 2 {
		t.Errorf("the reader did not save for itself (%d saves)", src.saves.Load())
	}
}
