// Package text writes things for people the one way this tool writes them
// everywhere: sizes as the docker CLI prints them, image IDs shortened as
// docker shortens them, and an error cut to its first line for a message.
package text

import (
	"bytes"
	"fmt"
	"io"
	"math"
	"strings"
	"sync"
)

// Bytes is n in B, kB, MB or GB, in units of 1000 with one decimal, as the
// docker CLI prints sizes (and as network speeds are counted).
func Bytes(n int64) string {
	switch {
	case n >= 1e9:
		return fmt.Sprintf("%.1f GB", float64(n)/1e9)
	case n >= 1e6:
		return fmt.Sprintf("%.1f MB", float64(n)/1e6)
	case n >= 1e3:
		return fmt.Sprintf("%.1f kB", float64(n)/1e3)
	}
	return fmt.Sprintf("%d B", n)
}

// Rate is a rate in bytes/s as Bytes prints sizes ("6.2 MB/s"), or "∞"
// for a rate too fast to have been timed.
func Rate(r float64) string {
	if math.IsInf(r, 1) || r > 1e12 {
		return "∞"
	}
	return Bytes(int64(r)) + "/s"
}

// ShortID is an image or container ID as docker prints it: without the
// algorithm, 12 hex digits.
func ShortID(id string) string {
	id = strings.TrimPrefix(id, "sha256:")
	if len(id) > 12 {
		id = id[:12]
	}
	return id
}

// FirstLine is the first non-empty line of s, trimmed: a multi-line error
// (a command's output, a wrapped chain) fits in a one-line message.
func FirstLine(s string) string {
	for _, line := range strings.Split(s, "\n") {
		if line = strings.TrimSpace(line); line != "" {
			return line
		}
	}
	return strings.TrimSpace(s)
}

// ErrLine is FirstLine of err's message.
func ErrLine(err error) string {
	if err == nil {
		return ""
	}
	return FirstLine(err.Error())
}

// Prefixed writes to W whole lines, each starting with Prefix: the output
// of several hosts working at once stays readable and says whose it is.
// Writers that share a Mu do not interleave their lines. A line redrawn in
// place (\r) is written as a line of its own. Flush writes a last line
// that has no newline yet.
type Prefixed struct {
	W      io.Writer
	Prefix string
	Mu     *sync.Mutex
	buf    []byte
}

func (p *Prefixed) Write(b []byte) (int, error) {
	p.Mu.Lock()
	defer p.Mu.Unlock()
	p.buf = append(p.buf, b...)
	for {
		i := bytes.IndexAny(p.buf, "\r\n")
		if i < 0 {
			return len(b), nil
		}
		line := p.buf[:i]
		p.buf = p.buf[i+1:]
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		if _, err := fmt.Fprintf(p.W, "%s%s\n", p.Prefix, line); err != nil {
			return len(b), err
		}
	}
}

// Flush writes what is left of an unfinished line.
func (p *Prefixed) Flush() {
	p.Mu.Lock()
	defer p.Mu.Unlock()
	if len(bytes.TrimSpace(p.buf)) > 0 {
		fmt.Fprintf(p.W, "%s%s\n", p.Prefix, p.buf)
	}
	p.buf = nil
}
