package ship

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"time"

	"github.com/carebot/carebot/internal/host"
)

// The link is measured before a big transfer, with nothing but the link in
// the way: filler written into `cat >/dev/null` on the host. Measured inside
// the transfer instead, the rate is the host's `docker load` (on a fast link
// it reads slower than the link carries, and compressing for it only adds
// work), and a staging decision needs the rate before the first byte anyway.
//
// A fresh connection starts slow (here, on loopback, ~8 MB/s for its first
// 10 MB or so, whatever the client) and a slow link fills the SSH window at
// once: what counts is the best rate over a stretch, as the host takes the
// bytes (the writes wait for its window), not the average from the start.
const (
	probeMin    = 16 << 20               // a transfer this big is worth a probe
	probeBytes  = 48 << 20               // at most this much filler ...
	probeTime   = 600 * time.Millisecond // ... written for at most this long,
	probeFast   = 100e6                  // or until it goes this fast (B/s): nothing is staged or compressed for such a link
	probeWindow = 200 * time.Millisecond // the stretch a rate is taken over
	probeBurst  = 2 << 20                // an SSH channel's window: taken at once, not a rate
	// A transfer expected to take longer than this at the measured rate
	// is staged (TRANSFER_STAGE=auto): resending it after a cut costs more
	// than loading it from files once it has all arrived.
	stageAfter = 10 * time.Second
)

// linkRate is the link to h in bytes/s. Any error means "not measured":
// the transfer measures as it goes.
func linkRate(ctx context.Context, h host.Host) (float64, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	f := &filler{left: probeBytes}
	if err := h.Exec(ctx, "cat >/dev/null", f, nil, nil); err != nil {
		return 0, fmt.Errorf("measure the link to %s: %w", h, err)
	}
	if r := f.rate(); r > 0 {
		return r, nil
	}
	// Too few bytes past the window for a stretch: the whole, until the
	// host had read the last byte.
	d := time.Since(f.start)
	if f.start.IsZero() || d <= 0 {
		return math.Inf(1), nil
	}
	return float64(f.sent) / d.Seconds(), nil
}

// filler reads as random bytes (nothing on the way compresses them), and
// notes when each read came, until left runs out, probeTime has passed
// since the first read, or the last stretch went faster than probeFast.
type filler struct {
	left, sent int64
	start      time.Time
	rng        *rand.ChaCha8
	marks      []mark // past the burst
}

type mark struct {
	t time.Time
	n int64 // bytes sent by then
}

func (f *filler) Read(b []byte) (int, error) {
	now := time.Now()
	if f.start.IsZero() {
		f.start = now
		f.rng = rand.NewChaCha8([32]byte{'l', 'i', 'n', 'k'})
	}
	if f.sent >= probeBurst {
		f.marks = append(f.marks, mark{now, f.sent})
	}
	if f.left <= 0 || now.Sub(f.start) > probeTime || f.rate() >= probeFast {
		return 0, io.EOF
	}
	n := int(min(int64(len(b)), f.left, 64<<10))
	f.rng.Read(b[:n])
	f.left -= int64(n)
	f.sent += int64(n)
	return n, nil
}

// rate is the best rate over a probeWindow of reads past the burst, or 0
// before there is one: a stall (a lost packet waits for its resend) says
// little of what the link carries.
func (f *filler) rate() float64 {
	best, j := 0.0, 0
	for i := 1; i < len(f.marks); i++ {
		for j < i && f.marks[i].t.Sub(f.marks[j+1].t) >= probeWindow {
			j++
		}
		if d := f.marks[i].t.Sub(f.marks[j].t); d >= probeWindow {
			best = max(best, float64(f.marks[i].n-f.marks[j].n)/d.Seconds())
		}
	}
	return best
}

// Links remembers, on this machine, the rate each host's transfers ran at:
// a JSON file (in the user's cache folder) of host name → rate. A big
// transfer to a host with a recent rate on record goes by it instead of a
// probe: a probe on a connection's first bulk transfer reads low (here,
// with a loopback link, ~2 MB/s for its first half second), a whole
// transfer does not. The rate of each transfer of probeMin or more is
// recorded after it.
type Links string

// linksFresh is how long a recorded rate is trusted: a laptop changes
// networks.
const linksFresh = 7 * 24 * time.Hour

type linkRecord struct {
	Rate float64   `json:"rate"` // bytes/s
	At   time.Time `json:"at"`
}

// Rate is the recorded rate for host, if recent.
func (l Links) Rate(host string) (float64, bool) {
	r, ok := l.read()[host]
	if !ok || r.Rate <= 0 || time.Since(r.At) > linksFresh {
		return 0, false
	}
	return r.Rate, true
}

// Record keeps rate for host. Errors are ignored: a rate not kept means a
// probe next time.
func (l Links) Record(host string, rate float64) {
	if l == "" || rate <= 0 || math.IsInf(rate, 0) {
		return
	}
	m := l.read()
	m[host] = linkRecord{Rate: rate, At: time.Now().UTC()}
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil || os.MkdirAll(filepath.Dir(string(l)), 0o700) != nil {
		return
	}
	tmp := fmt.Sprintf("%s.%d", l, os.Getpid())
	if os.WriteFile(tmp, b, 0o600) == nil {
		_ = os.Rename(tmp, string(l))
	}
}

func (l Links) read() map[string]linkRecord {
	m := map[string]linkRecord{}
	if l == "" {
		return m
	}
	if b, err := os.ReadFile(string(l)); err == nil {
		_ = json.Unmarshal(b, &m)
	}
	return m
}
