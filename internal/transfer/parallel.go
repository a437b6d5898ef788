package transfer

import (
	"bytes"
	"errors"
	"io"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
)

// chunkSize is how much of a layer one encoder takes at a time: each chunk
// becomes a gzip member or a zstd frame of its own. Both formats allow a
// stream of them back to back, and every decoder `docker load` uses (Go's,
// klauspost's, pigz) reads them as one stream. 1 MiB costs about 1% of
// the ratio against one stream, and keeps memory to a few chunks.
const chunkSize = 1 << 20

// encoders is how many chunks are compressed at once: one per core.
func encoders() int { return max(1, min(runtime.GOMAXPROCS(0), 4)) }

// encodeFunc compresses src, appending to dst. It must be safe for
// concurrent use.
type encodeFunc func(dst, src []byte) []byte

// newEncode returns the chunk encoder of codec (Gzip or Zstd) at the level
// used for layers, and a function to release it.
func newEncode(codec string, workers int) (encodeFunc, func(), error) {
	switch codec {
	case Zstd:
		// SpeedDefault (level 3): EncodeAll is safe for concurrent use,
		// up to the encoder's concurrency.
		enc, err := zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedDefault), zstd.WithEncoderConcurrency(workers),
			zstd.WithWindowSize(chunkSize), zstd.WithZeroFrames(true))
		if err != nil {
			return nil, nil, err
		}
		return func(dst, src []byte) []byte { return enc.EncodeAll(src, dst) }, func() { enc.Close() }, nil
	case Gzip, "":
		pool := sync.Pool{New: func() any {
			zw, _ := gzip.NewWriterLevel(nil, gzip.BestSpeed)
			return zw
		}}
		return func(dst, src []byte) []byte {
			zw := pool.Get().(*gzip.Writer)
			defer pool.Put(zw)
			b := bytes.NewBuffer(dst)
			zw.Reset(b)
			zw.Write(src) // writes to a bytes.Buffer do not fail
			zw.Close()
			return b.Bytes()
		}, func() {}, nil
	}
	return nil, nil, errors.New("layer compression " + codec + ": want gzip or zstd")
}

// parallelWriter compresses what is written to it in chunks, several at
// once, and writes the compressed chunks to w in order.
type parallelWriter struct {
	w      io.Writer
	encode encodeFunc
	buf    []byte
	queue  chan chan []byte // results in order; its capacity bounds the chunks in flight
	done   chan error
	sem    chan struct{}
	free   sync.Pool
	chunks int

	encodeNanos atomic.Int64 // time the encoders took, added up
}

func newParallelWriter(w io.Writer, encode encodeFunc, workers int) *parallelWriter {
	p := &parallelWriter{w: w, encode: encode, queue: make(chan chan []byte, workers+1), done: make(chan error, 1), sem: make(chan struct{}, workers)}
	go p.drain()
	return p
}

// drain writes the compressed chunks in order; after an error it only
// consumes them.
func (p *parallelWriter) drain() {
	var err error
	for res := range p.queue {
		b := <-res
		if err == nil {
			_, err = p.w.Write(b)
		}
		p.free.Put(b[:0])
	}
	p.done <- err
}

func (p *parallelWriter) Write(b []byte) (int, error) {
	n := 0
	for len(b) > 0 {
		if p.buf == nil {
			p.buf = make([]byte, 0, chunkSize)
		}
		k := min(len(b), chunkSize-len(p.buf))
		p.buf = append(p.buf, b[:k]...)
		b, n = b[k:], n+k
		if len(p.buf) == chunkSize {
			p.flush()
		}
	}
	return n, nil
}

func (p *parallelWriter) flush() {
	src := p.buf
	p.chunks++
	p.buf = nil
	res := make(chan []byte, 1)
	p.queue <- res
	p.sem <- struct{}{}
	go func() {
		dst, _ := p.free.Get().([]byte)
		t := time.Now()
		out := p.encode(dst, src)
		p.encodeNanos.Add(int64(time.Since(t)))
		res <- out
		<-p.sem
	}()
}

// Close compresses what is left (an empty stream still gets its header)
// and waits until all of it is written to w.
func (p *parallelWriter) Close() error {
	if len(p.buf) > 0 || p.chunks == 0 {
		p.flush()
	}
	close(p.queue)
	return <-p.done
}
