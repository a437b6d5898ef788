package ship

import (
	"context"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"time"

	"github.com/carebot/carebot/internal/host"
)

// The link is measured before a big transfer, with nothing but the link in
// the way: filler written into `cat >/dev/null` on the host, timed until
// the host has read the last byte. Measured inside the transfer instead,
// the rate is the host's `docker load` (on a fast link it reads slower than
// the link carries, and compressing for it only adds work), and a staging
// decision needs the rate before the first byte anyway.
const (
	probeMin   = 16 << 20               // a transfer this big is worth a probe
	probeBytes = 6 << 20                // at most this much filler ...
	probeTime  = 300 * time.Millisecond // ... written for at most this long
	// A transfer expected to take longer than this at the measured rate
	// is staged (TRANSFER_STAGE=auto): resending it after a cut costs more
	// than loading it from files once it has all arrived.
	stageAfter = 10 * time.Second
)

// linkRate is the link to h in bytes/s, measured with at most probeBytes
// of filler. Any error means "not measured": the transfer measures as it
// goes.
func linkRate(ctx context.Context, h host.Host) (float64, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	start := time.Now()
	f := &filler{left: probeBytes, until: start.Add(probeTime)}
	if err := h.Exec(ctx, "cat >/dev/null", f, nil, nil); err != nil {
		return 0, fmt.Errorf("measure the link to %s: %w", h, err)
	}
	d := time.Since(start)
	if d <= 0 {
		return math.Inf(1), nil
	}
	return float64(f.sent) / d.Seconds(), nil
}

// filler reads as random bytes (nothing on the way compresses them) until
// left runs out or the time is up.
type filler struct {
	left, sent int64
	until      time.Time
	rng        *rand.ChaCha8
}

func (f *filler) Read(b []byte) (int, error) {
	if f.left <= 0 || time.Now().After(f.until) {
		return 0, io.EOF
	}
	if f.rng == nil {
		f.rng = rand.NewChaCha8([32]byte{'l', 'i', 'n', 'k'})
	}
	n := int(min(int64(len(b)), f.left, 64<<10))
	f.rng.Read(b[:n])
	f.left -= int64(n)
	f.sent += int64(n)
	return n, nil
}
