package text

import (
	"bytes"
	"fmt"
	"io"
	"strings"
	"sync"
)

// Board shows several hosts working at once on a terminal: their whole
// lines scroll above, each with its host's prefix, and below them stays a
// block of one line per host with what it is doing now (the line it
// redraws in place with \r, a transfer's progress; else the last line it
// wrote), redrawn as it changes. Lines longer than Width are cut, so the
// block keeps its height.
type Board struct {
	W     io.Writer
	Width int // the terminal's columns; 0: 80

	mu    sync.Mutex
	rows  []*Row
	drawn int  // lines of the block on the screen, above the cursor
	ended bool // End was called: no block any more
}

// Row is one host's writer on a Board.
type Row struct {
	b      *Board
	prefix string
	buf    []byte
	now    string // the line being redrawn
	last   string // the last whole line
}

// Row adds a host's line to the block; what is written to it is shown
// with prefix.
func (b *Board) Row(prefix string) *Row {
	b.mu.Lock()
	defer b.mu.Unlock()
	r := &Row{b: b, prefix: prefix}
	b.rows = append(b.rows, r)
	return r
}

// Log is a writer for the lines of the run itself: they scroll above the
// block, as they are.
func (b *Board) Log() io.Writer { return &Row{b: b} }

// Terminal says that what is written here is shown on a terminal, so a
// progress line may be redrawn in place.
func (r *Row) Terminal() bool { return r.prefix != "" }

func (r *Row) Write(p []byte) (int, error) {
	b := r.b
	b.mu.Lock()
	defer b.mu.Unlock()
	r.buf = append(r.buf, p...)
	var lines []string
	for {
		i := bytes.IndexAny(r.buf, "\r\n")
		if i < 0 {
			break
		}
		seg, sep := strings.TrimRight(string(r.buf[:i]), " "), r.buf[i]
		r.buf = r.buf[i+1:]
		// Text ended by \r is a redrawn line that the next one replaces.
		if sep == '\n' && strings.TrimSpace(seg) != "" {
			lines = append(lines, r.prefix+seg)
			r.last = seg
		}
	}
	r.now = strings.TrimSpace(string(r.buf))
	if r.prefix == "" && r.now != "" { // the run's own output is whole lines; keep a part for later
		r.now = ""
	}
	return len(p), b.show(lines)
}

// show prints lines above the block and draws the block again.
func (b *Board) show(lines []string) error {
	var out strings.Builder
	if b.drawn > 0 {
		fmt.Fprintf(&out, "\x1b[%dA\r\x1b[J", b.drawn) // up to the block's first line, and clear from there
		b.drawn = 0
	}
	for _, l := range lines {
		out.WriteString(l + "\n")
	}
	if !b.ended {
		width := b.Width
		if width <= 0 {
			width = 80
		}
		for _, r := range b.rows {
			l := r.now
			if l == "" {
				l = r.last
			}
			l = r.prefix + l
			if rs := []rune(l); len(rs) > width-1 {
				l = string(rs[:width-2]) + "…"
			}
			out.WriteString(l + "\n")
			b.drawn++
		}
	}
	_, err := io.WriteString(b.W, out.String())
	return err
}

// End takes the block off the screen (every whole line a row wrote is
// above it): what the rows are written after it scrolls like any other
// line.
func (b *Board) End() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.ended {
		return
	}
	b.ended = true
	_ = b.show(nil)
}
