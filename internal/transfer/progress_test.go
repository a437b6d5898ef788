package transfer

import (
	"bytes"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/carebot/carebot/internal/text"
)

type fakeClock struct{ t time.Time }

func (c *fakeClock) now() time.Time { return c.t }

func TestProgressPlainLines(t *testing.T) {
	var out, sink bytes.Buffer
	clk := &fakeClock{time.Unix(1000, 0)}
	p := &Progress{W: &sink, Out: &out, Total: 40e6, now: clk.now}
	chunk := make([]byte, 1e6)
	for i := 0; i < 20; i++ { // 20 MB in 10 s: 2 MB/s
		p.Write(chunk)
		clk.t = clk.t.Add(500 * time.Millisecond)
	}
	p.Write(chunk[:0])
	p.Done()
	if sink.Len() != 20e6 || p.N() != 20e6 {
		t.Fatalf("passed %d bytes (counted %d), want 20e6", sink.Len(), p.N())
	}
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	want := []string{
		"sent 11.0 MB of ~40.0 MB  2.2 MB/s  0:13 left", // after 5 s
		"sent 20.0 MB of ~40.0 MB  2.0 MB/s  0:10 left", // after 10 s
		"sent 20.0 MB in 0:10  2.0 MB/s",
	}
	if strings.Join(lines, "\n") != strings.Join(want, "\n") {
		t.Errorf("progress printed\n%s\nwant\n%s", out.String(), strings.Join(want, "\n"))
	}
	if strings.Contains(out.String(), "\r") {
		t.Error("carriage returns outside a terminal")
	}
}

func TestProgressTerminal(t *testing.T) {
	var out bytes.Buffer
	clk := &fakeClock{time.Unix(1000, 0)}
	p := &Progress{W: io.Discard, Out: &out, TTY: true, now: clk.now}
	for i := 0; i < 5; i++ {
		p.Write(make([]byte, 3e6))
		clk.t = clk.t.Add(time.Second)
	}
	p.Write(nil)
	p.Done()
	s := out.String()
	if n := strings.Count(s, "\r"); n != 6 {
		t.Errorf("%d redraws, want 6: %q", n, s)
	}
	if !strings.HasSuffix(s, "\rsent 15.0 MB  3.0 MB/s\rsent 15.0 MB in 0:05  3.0 MB/s\n") {
		t.Errorf("last redraw: %q", s)
	}
	if strings.Contains(s, "left") || strings.Contains(s, "of ~") {
		t.Errorf("no total given, but a time left was shown: %q", s)
	}
}

func TestWriteReportsProgress(t *testing.T) {
	img := threeLayers(t)
	var out, prog bytes.Buffer
	st, err := Write(t.Context(), bytes.NewReader(saveLegacy(t, img, "carebot:v1")), &out, Options{Layers: img.diffIDs, Progress: &prog})
	if err != nil {
		t.Fatal(err)
	}
	if want := "sent " + text.Bytes(st.WireBytes) + " in 0:00\n"; prog.String() != want {
		t.Errorf("progress = %q, want %q", prog.String(), want)
	}
}

func TestCounter(t *testing.T) {
	var b bytes.Buffer
	c := &Counter{W: &b}
	io.WriteString(c, "hello ")
	io.WriteString(c, "world")
	if c.N != 11 || b.String() != "hello world" {
		t.Errorf("counted %d, passed %q", c.N, b.String())
	}
}
