// Package health asks a service's health endpoint until it answers healthy
// with the expected version, through any dialer (this machine, or a tunnel
// into a server), with backoff.
package health

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"
)

// Status is what the service's health endpoint reports.
type Status struct {
	Status  string `json:"status"`
	Version string `json:"version"`
	Commit  string `json:"commit"`
	Reason  string `json:"reason,omitempty"`
	Code    int    `json:"-"`
}

// DialFunc opens a connection the way net.Dialer.DialContext does.
type DialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// Probe checks one URL through one dialer.
type Probe struct {
	URL  string
	Dial DialFunc // nil: this machine
}

func (p Probe) client() *http.Client {
	tr := &http.Transport{DisableKeepAlives: true, Proxy: nil}
	if p.Dial != nil {
		tr.DialContext = p.Dial
	}
	return &http.Client{Transport: tr, Timeout: 5 * time.Second}
}

// Check asks once. A non-2xx answer is an error that still carries the status.
func (p Probe) Check(ctx context.Context) (Status, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, p.URL, nil)
	if err != nil {
		return Status{}, fmt.Errorf("health URL %s: %w", p.URL, err)
	}
	resp, err := p.client().Do(req)
	if err != nil {
		return Status{}, err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	var s Status
	if err := json.Unmarshal(body, &s); err != nil {
		s.Status = fmt.Sprintf("non-JSON answer %q", truncate(string(body), 60))
	}
	s.Code = resp.StatusCode
	if resp.StatusCode/100 != 2 {
		msg := fmt.Sprintf("HTTP %d %s", resp.StatusCode, s.Status)
		if s.Reason != "" {
			msg += ": " + s.Reason
		}
		return s, errors.New(msg)
	}
	return s, nil
}

// Wait options: the version to expect, how long to try, and an optional
// liveness check that stops the wait early (a container that exited will
// never become healthy).
type Wait struct {
	Version string
	Timeout time.Duration
	Alive   func(ctx context.Context) error
}

// Backoff is the pause after the n-th failed try; a variable so tests can
// make it instant.
var Backoff = func(n int) time.Duration {
	d := 250 * time.Millisecond << min(n, 3)
	return min(d, 2*time.Second)
}

// Until asks until the service is healthy at the wanted version, or the
// timeout passes, or Alive fails. The error says what the last answer was.
func (p Probe) Until(ctx context.Context, w Wait) (Status, error) {
	ctx, cancel := context.WithTimeout(ctx, w.Timeout)
	defer cancel()
	var last error
	for n := 0; ; n++ {
		s, err := p.Check(ctx)
		if err == nil && w.Version != "" && s.Version != w.Version {
			err = fmt.Errorf("version %q answers, want %q", s.Version, w.Version)
		}
		if err == nil {
			return s, nil
		}
		if last == nil || ctx.Err() == nil { // a try cut short by the deadline says nothing new
			last = err
		}
		if w.Alive != nil {
			if aerr := w.Alive(ctx); aerr != nil && ctx.Err() == nil {
				return s, fmt.Errorf("%w (last answer: %v)", aerr, trimErr(last))
			}
		}
		select {
		case <-ctx.Done():
			if errors.Is(context.Cause(ctx), context.DeadlineExceeded) || errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return s, fmt.Errorf("no healthy answer from %s within %s (last: %v)", p.URL, w.Timeout, trimErr(last))
			}
			return s, ctx.Err()
		case <-time.After(Backoff(n)):
		}
	}
}

// trimErr drops Go's URL-error prefix, which repeats the URL.
func trimErr(err error) error {
	var ue interface{ Unwrap() error }
	if errors.As(err, &ue) {
		if inner := ue.Unwrap(); inner != nil {
			var oe *net.OpError
			if errors.As(inner, &oe) && oe.Err != nil {
				return oe.Err
			}
			return inner
		}
	}
	return err
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}
