package transfer

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"testing"
)

// A partial layer file is resumed by producing the layer's encoding again
// and skipping what the server has: the encoders must give the same bytes
// for the same layer, whatever the number of encoders at work.
func TestStagedEncodingIsDeterministic(t *testing.T) {
	layer := make([]byte, 0, 5<<20+12345)
	r := rand.New(rand.NewPCG(1, 2))
	for len(layer) < cap(layer)-200 {
		if r.IntN(2) == 0 {
			layer = fmt.Appendf(layer, "line %d: the quick brown fox jumps over the lazy dog\n", r.IntN(1000))
		} else {
			layer = append(layer, byte(r.Uint32()))
		}
	}
	for _, codec := range []string{Gzip, Zstd} {
		var first []byte
		for _, workers := range []int{1, 4, 4, 2} {
			encode, release, err := newEncode(codec, workers)
			if err != nil {
				t.Fatal(err)
			}
			var out bytes.Buffer
			zw := newParallelWriter(&out, encode, workers)
			for b := layer; len(b) > 0; { // in uneven writes, as a spool is read
				n := min(len(b), 1+r.IntN(300<<10))
				zw.Write(b[:n])
				b = b[n:]
			}
			if err := zw.Close(); err != nil {
				t.Fatal(err)
			}
			release()
			if first == nil {
				first = out.Bytes()
				continue
			}
			if !bytes.Equal(first, out.Bytes()) {
				t.Errorf("%s with %d encoders: %d bytes unlike the %d of the first run", codec, workers, out.Len(), len(first))
			}
		}
		t.Logf("%s: %d bytes to %d, the same every time", codec, len(layer), len(first))
	}
}

func TestExtAndMethodOf(t *testing.T) {
	for _, m := range []string{None, Gzip, Zstd} {
		name := "0123abcd" + Ext(m)
		if got, ok := MethodOf(name); !ok || got != m {
			t.Errorf("MethodOf(%q) = %q, %v; want %q", name, got, ok, m)
		}
	}
	if _, ok := MethodOf("load"); ok {
		t.Error("MethodOf(load) = ok")
	}
}
