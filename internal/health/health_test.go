package health

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func init() { Backoff = func(int) time.Duration { return time.Millisecond } }

func TestUntilWaitsForWantedVersion(t *testing.T) {
	var calls atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch n := calls.Add(1); {
		case n < 3:
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprint(w, `{"status":"starting"}`)
		case n < 5:
			fmt.Fprint(w, `{"status":"ok","version":"v1"}`)
		default:
			fmt.Fprint(w, `{"status":"ok","version":"v2","commit":"abc"}`)
		}
	}))
	defer srv.Close()
	s, err := Probe{URL: srv.URL}.Until(context.Background(), Wait{Version: "v2", Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if s.Version != "v2" || s.Commit != "abc" || calls.Load() != 5 {
		t.Fatalf("got %+v after %d calls", s, calls.Load())
	}
}

func TestUntilTimesOutWithLastReason(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprint(w, `{"status":"unhealthy","reason":"forced"}`)
	}))
	defer srv.Close()
	_, err := Probe{URL: srv.URL}.Until(context.Background(), Wait{Timeout: 50 * time.Millisecond})
	if err == nil || !strings.Contains(err.Error(), "HTTP 503 unhealthy: forced") || !strings.Contains(err.Error(), "within 50ms") {
		t.Fatalf("err = %v", err)
	}
}

func TestUntilStopsWhenNotAlive(t *testing.T) {
	dead := errors.New("container exited with code 1")
	_, err := Probe{URL: "http://127.0.0.1:1/health"}.Until(context.Background(), Wait{
		Timeout: 10 * time.Second,
		Alive:   func(context.Context) error { return dead },
	})
	if !errors.Is(err, dead) {
		t.Fatalf("err = %v", err)
	}
}

func TestCheckNonJSON(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusNotFound)
		fmt.Fprint(w, "404 page not found")
	}))
	defer srv.Close()
	_, err := Probe{URL: srv.URL}.Check(context.Background())
	if err == nil || !strings.Contains(err.Error(), "HTTP 404") {
		t.Fatalf("err = %v", err)
	}
}
