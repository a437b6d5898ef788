package transfer

import (
	"fmt"
	"io"
	"os"
	"time"

	"github.com/carebot/carebot/internal/text"
)

// Counter passes writes through to W and counts the bytes that went.
type Counter struct {
	W io.Writer
	N int64
}

func (c *Counter) Write(b []byte) (int, error) {
	n, err := c.W.Write(b)
	c.N += int64(n)
	return n, err
}

// Progress passes writes through to W and reports to Out how much has gone.
// On a terminal it redraws one line,
//
//	sent 12.3 MB of ~40.0 MB  5.1 MB/s  0:03 left
//
// a few times a second; anywhere else (CI, a log file) it prints that line
// every Every. Call Done at the end for the total.
type Progress struct {
	W     io.Writer
	Out   io.Writer
	Total int64         // estimate of the bytes that will go; 0 if unknown
	TTY   bool          // redraw in place; NewProgress sets it when Out is a terminal
	Every time.Duration // how often to print a line when not TTY; 0 = 5 s

	now         func() time.Time
	n           int64
	start, last time.Time
	width       int // of the line last drawn, to blank its leftovers
}

// NewProgress reports on out the writes that go to w.
func NewProgress(w, out io.Writer, total int64) *Progress {
	return &Progress{W: w, Out: out, Total: total, TTY: isTerminal(out)}
}

func (p *Progress) Write(b []byte) (int, error) {
	now := p.clock()
	if p.start.IsZero() {
		p.start, p.last = now, now
	}
	n, err := p.W.Write(b)
	p.n += int64(n)
	every := p.Every
	if every == 0 {
		every = 5 * time.Second
	}
	if p.TTY {
		every = 200 * time.Millisecond
	}
	if now.Sub(p.last) >= every {
		p.last = now
		p.draw(p.line(now))
	}
	return n, err
}

// Done prints the total and the average speed, and ends the redrawn line.
func (p *Progress) Done() {
	now := p.clock()
	if p.start.IsZero() {
		p.start = now
	}
	d := now.Sub(p.start)
	line := fmt.Sprintf("sent %s in %s", text.Bytes(p.n), clock(d))
	if d >= time.Second {
		line += fmt.Sprintf("  %s/s", text.Bytes(int64(float64(p.n)/d.Seconds())))
	}
	p.draw(line)
	if p.TTY {
		fmt.Fprintln(p.Out)
	}
}

// end prints the total after a transfer that worked, and otherwise only ends
// the redrawn line, so that an error message starts on a line of its own.
func (p *Progress) end(ok bool) {
	switch {
	case ok:
		p.Done()
	case p.TTY && p.width > 0:
		fmt.Fprintln(p.Out)
	}
}

// N is how many bytes have gone through.
func (p *Progress) N() int64 { return p.n }

func (p *Progress) line(now time.Time) string {
	s := "sent " + text.Bytes(p.n)
	if p.Total > p.n {
		s += " of ~" + text.Bytes(p.Total)
	}
	secs := now.Sub(p.start).Seconds()
	if secs <= 0 || p.n == 0 {
		return s
	}
	rate := float64(p.n) / secs
	s += "  " + text.Bytes(int64(rate)) + "/s"
	if p.Total > p.n {
		left := time.Duration(float64(p.Total-p.n) / rate * float64(time.Second))
		s += "  " + clock(left) + " left"
	}
	return s
}

func (p *Progress) draw(line string) {
	if !p.TTY {
		fmt.Fprintln(p.Out, line)
		return
	}
	pad := max(p.width-len(line), 0)
	p.width = len(line)
	fmt.Fprintf(p.Out, "\r%s%*s", line, pad, "")
}

func (p *Progress) clock() time.Time {
	if p.now != nil {
		return p.now()
	}
	return time.Now()
}

// clock shows d as m:ss (or h:mm:ss).
func clock(d time.Duration) string {
	s := int64(d.Round(time.Second) / time.Second)
	if s >= 3600 {
		return fmt.Sprintf("%d:%02d:%02d", s/3600, s/60%60, s%60)
	}
	return fmt.Sprintf("%d:%02d", s/60, s%60)
}

// isTerminal says whether w shows a line redrawn in place: a terminal,
// or a writer that says so (a host's line on a board of several).
func isTerminal(w io.Writer) bool {
	if t, ok := w.(interface{ Terminal() bool }); ok {
		return t.Terminal()
	}
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}
