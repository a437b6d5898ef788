package text

import (
	"bytes"
	"fmt"
	"strings"
	"testing"
)

// screen plays what a board wrote on a small terminal: \r, \n, cursor up
// (ESC[nA) and clear to the end (ESC[J), which is all a board uses.
func screen(t *testing.T, out string) []string {
	t.Helper()
	var lines []string
	row, col := 0, 0
	put := func(r rune) {
		for len(lines) <= row {
			lines = append(lines, "")
		}
		l := []rune(lines[row])
		for len(l) < col {
			l = append(l, ' ')
		}
		if col < len(l) {
			l[col] = r
		} else {
			l = append(l, r)
		}
		lines[row] = string(l)
		col++
	}
	rs := []rune(out)
	for i := 0; i < len(rs); i++ {
		switch rs[i] {
		case '\r':
			col = 0
		case '\n':
			row, col = row+1, 0
		case '\x1b':
			j := i + 2
			for j < len(rs) && rs[j] >= '0' && rs[j] <= '9' {
				j++
			}
			var n int
			fmt.Sscan(string(rs[i+2:j]), &n)
			switch rs[j] {
			case 'A':
				row -= n
			case 'J':
				if row < len(lines) {
					lines = lines[:row]
				}
			default:
				t.Fatalf("unexpected escape %q", string(rs[i:j+1]))
			}
			i = j
		default:
			put(rs[i])
		}
	}
	return lines
}

func TestBoard(t *testing.T) {
	var out bytes.Buffer
	b := &Board{W: &out, Width: 40}
	a, c := b.Row("[a] "), b.Row("[c] ")
	log := b.Log()
	fmt.Fprintf(log, "deploying v2 to 2 servers\n")
	fmt.Fprintf(a, "sending 3 layers\n")
	fmt.Fprintf(a, "\rsent 1.0 MB of ~4.0 MB")
	fmt.Fprintf(c, "sending 1 layer\n")
	fmt.Fprintf(a, "\rsent 2.0 MB of ~4.0 MB  1.0 MB/s  0:02 left and a long tail")
	got := screen(t, out.String())
	want := []string{
		"deploying v2 to 2 servers",
		"[a] sending 3 layers",
		"[c] sending 1 layer",
		"[a] sent 2.0 MB of ~4.0 MB  1.0 MB/s  …", // cut to the width
		"[c] sending 1 layer",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("screen:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	fmt.Fprintf(a, "\rsent 4.0 MB in 0:04\n")
	b.End()
	fmt.Fprintf(c, "healthy\n")
	got = screen(t, out.String())
	want = []string{
		"deploying v2 to 2 servers",
		"[a] sending 3 layers",
		"[c] sending 1 layer",
		"[a] sent 4.0 MB in 0:04",
		"[c] healthy",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("after End:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if !a.Terminal() || b.Log().(*Row).Terminal() {
		t.Error("a host's row redraws in place, the run's log does not")
	}
}
