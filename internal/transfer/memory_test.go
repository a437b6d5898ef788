package transfer

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/carebot/carebot/internal/testenv"
)

// bigLayers are the layer file sizes of the synthetic 1 GB image (the
// goal: under 100 MB of memory for a 1 GB image).
var bigLayers = []int64{480 << 20, 320 << 20, 160 << 20, 64 << 20}

// layerStream writes layer i of the big image (a tar holding one file of
// compressible pseudo-random bytes) to w, and returns its size.
func layerStream(w io.Writer, i int) (int64, error) {
	c := &Counter{W: w}
	tw := tar.NewWriter(c)
	n := bigLayers[i]
	if err := tw.WriteHeader(&tar.Header{Name: fmt.Sprintf("data%d.bin", i), Mode: 0o644, Size: n, Typeflag: tar.TypeReg}); err != nil {
		return 0, err
	}
	// Text-like: random words of a small vocabulary, so that compressors
	// find matches as they do in real layers, and use their memory.
	rng := rand.New(rand.NewPCG(uint64(i), 7))
	vocab := make([][]byte, 4096)
	for j := range vocab {
		vocab[j] = make([]byte, 2+rng.IntN(10))
		for k := range vocab[j] {
			vocab[j][k] = byte(' ' + rng.IntN(95))
		}
	}
	buf := make([]byte, 0, 64<<10+16)
	for left := n; left > 0; {
		buf = buf[:0]
		for len(buf) < 64<<10 {
			buf = append(buf, vocab[rng.IntN(len(vocab))]...)
		}
		k := min(left, int64(len(buf)))
		if _, err := tw.Write(buf[:k]); err != nil {
			return 0, err
		}
		left -= k
	}
	err := tw.Close()
	return c.N, err
}

// bigSave streams a legacy `docker save` of the big image to w, and returns
// its diff IDs; nothing of it is held in memory.
func bigSave(w io.Writer) ([]string, error) {
	var diffIDs []string
	var sizes []int64
	for i := range bigLayers {
		h := sha256.New()
		n, err := layerStream(h, i)
		if err != nil {
			return nil, err
		}
		diffIDs = append(diffIDs, "sha256:"+hex.EncodeToString(h.Sum(nil)))
		sizes = append(sizes, n)
	}
	if w == nil {
		return diffIDs, nil
	}
	config, _ := json.Marshal(map[string]any{"architecture": "amd64", "os": "linux",
		"rootfs": map[string]any{"type": "layers", "diff_ids": diffIDs}})
	cfgHex := strings.TrimPrefix(digestOf(config), "sha256:")
	tw := tar.NewWriter(w)
	var paths []string
	for i := range bigLayers {
		p := fmt.Sprintf("%064x/layer.tar", i+1)
		paths = append(paths, p)
		if err := tw.WriteHeader(&tar.Header{Name: p, Mode: 0o644, Size: sizes[i], Typeflag: tar.TypeReg}); err != nil {
			return nil, err
		}
		if _, err := layerStream(tw, i); err != nil {
			return nil, err
		}
	}
	manifest, _ := json.Marshal([]map[string]any{{"Config": cfgHex + ".json", "RepoTags": []string{"big:1"}, "Layers": paths}})
	for _, f := range []struct {
		name string
		data []byte
	}{{cfgHex + ".json", config}, {"manifest.json", manifest}} {
		if err := tw.WriteHeader(&tar.Header{Name: f.name, Mode: 0o644, Size: int64(len(f.data)), Typeflag: tar.TypeReg}); err != nil {
			return nil, err
		}
		tw.Write(f.data)
	}
	return diffIDs, tw.Close()
}

// TestPeakMemory streams a 1 GB image in the legacy layout (the one that
// spools) through Write in a child process, and checks the child's peak RSS.
func TestPeakMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("streams 1 GB: skipped with -short")
	}
	if _, err := os.Stat("/proc/self/status"); err != nil {
		testenv.Skip(t, "no /proc/self/status: cannot measure peak RSS here")
	}
	// Auto: every layer compressed (zstd) to a local file, one queued
	// while the one before is sent.
	for _, c := range []string{Gzip, Zstd, Auto} {
		t.Run(c, func(t *testing.T) {
			t.Parallel()
			cmd := exec.Command(os.Args[0])
			cmd.Env = append(os.Environ(), "CAREBOT_TRANSFER_CHILD="+c, "TMPDIR="+t.TempDir())
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("child: %v\n%s", err, out)
			}
			var rss, raw, wire int64
			var secs float64
			if i := strings.Index(string(out), "peak-rss-kb"); i < 0 {
				t.Fatalf("child printed no figures:\n%s", out)
			} else if _, err := fmt.Sscanf(string(out[i:]), "peak-rss-kb %d raw %d wire %d secs %g", &rss, &raw, &wire, &secs); err != nil {
				t.Fatalf("%v in %q", err, out[i:])
			}
			t.Logf("%s: peak RSS %d MB, %d MB raw -> %d MB on the wire in %.1f s", c, rss>>10, raw>>20, wire>>20, secs)
			if raw < 1<<30 {
				t.Errorf("only %d bytes went through", raw)
			}
			if rss > 100<<10 {
				t.Errorf("peak RSS %d MB, want < 100 MB", rss>>10)
			}
		})
	}
}

// TestMain runs the peak-memory child of TestPeakMemory when asked to:
// it must be a process of its own, and as a test function of its own it
// would be skipped in every ordinary run.
func TestMain(m *testing.M) {
	if c := os.Getenv("CAREBOT_TRANSFER_CHILD"); c != "" {
		if err := peakMemoryChild(c); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// peakMemoryChild streams the big image through Write with compression c
// and prints its peak RSS.
func peakMemoryChild(c string) error {
	diffIDs, err := bigSave(nil)
	if err != nil {
		return err
	}
	pr, pw := io.Pipe()
	go func() { _, err := bigSave(pw); pw.CloseWithError(err) }()
	start := time.Now()
	o := Options{Layers: diffIDs, Compress: c}
	if c == Auto {
		o.Codec, o.decide = Zstd, func(int) string { return Zstd }
	}
	st, err := Write(context.Background(), pr, io.Discard, o)
	if err != nil {
		return err
	}
	if st.Sent != len(bigLayers) {
		return fmt.Errorf("sent %d layers", st.Sent)
	}
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return err
	}
	var kb int64
	for _, line := range strings.Split(string(status), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmHWM:" {
			kb, _ = strconv.ParseInt(f[1], 10, 64)
		}
	}
	fmt.Printf("peak-rss-kb %d raw %d wire %d secs %.2f\n", kb, st.RawBytes, st.WireBytes, time.Since(start).Seconds())
	return nil
}
