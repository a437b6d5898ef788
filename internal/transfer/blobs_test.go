package transfer

import (
	"bytes"
	"context"
	"path/filepath"
	"sync"
	"testing"
)

// Transfers of one image to several servers at once, sharing Blobs,
// compress each layer once and send the same compressed bytes; a kept
// blob is gone once Blobs is closed, and so is every transfer's own.
func TestBlobsCompressOnce(t *testing.T) {
	img := threeLayers(t)
	for _, l := range layouts {
		t.Run(l.name, func(t *testing.T) {
			tmp := t.TempDir()
			blobs := NewBlobs()
			save := l.save(t, img, "carebot:v1")
			const n = 3
			outs := make([]bytes.Buffer, n)
			stats := make([]Stats, n)
			var wg sync.WaitGroup
			for i := range n {
				wg.Add(1)
				go func() {
					defer wg.Done()
					var err error
					stats[i], err = Write(context.Background(), bytes.NewReader(save), &outs[i], Options{
						Layers: img.diffIDs, Compress: Auto, Codec: Gzip, Blobs: blobs, TempDir: tmp,
						decide: func(int) string { return Gzip },
					})
					if err != nil {
						t.Error(err)
					}
				}()
			}
			wg.Wait()
			if t.Failed() {
				return
			}
			for i := range n {
				checkAutoArchive(t, outs[i].Bytes(), img, 0)
				if !bytes.Equal(outs[i].Bytes(), outs[0].Bytes()) {
					t.Errorf("transfer %d sent another archive than transfer 1", i+1)
				}
			}
			if len(blobs.m) != 3 || blobs.made != 3 {
				t.Errorf("%d layers kept, %d compressed; want 3 and 3 (each once, not once per transfer)", len(blobs.m), blobs.made)
			}
			blobs.Close()
			left, _ := filepath.Glob(filepath.Join(tmp, "*"))
			if len(left) > 0 {
				t.Errorf("files left: %v", left)
			}
		})
	}
}

// A transfer that fails to compress leaves the others to compress for
// themselves, and they still send every layer.
func TestBlobsFirstFails(t *testing.T) {
	img := threeLayers(t)
	l := layouts[0]
	save := l.save(t, img, "carebot:v1")
	blobs := NewBlobs()
	defer blobs.Close()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	// A cancelled transfer claims nothing it does not finish.
	_, _ = Write(ctx, bytes.NewReader(save), &bytes.Buffer{}, Options{Layers: img.diffIDs, Compress: Auto, Codec: Gzip, Blobs: blobs, decide: func(int) string { return Gzip }})
	var out bytes.Buffer
	if _, err := Write(context.Background(), bytes.NewReader(save), &out, Options{Layers: img.diffIDs, Compress: Auto, Codec: Gzip, Blobs: blobs, decide: func(int) string { return Gzip }}); err != nil {
		t.Fatal(err)
	}
	checkAutoArchive(t, out.Bytes(), img, 0)
}
