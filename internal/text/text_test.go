package text

import (
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
)

func TestBytes(t *testing.T) {
	for n, want := range map[int64]string{
		0: "0 B", 999: "999 B", 1000: "1.0 kB", 1500: "1.5 kB", 8_700: "8.7 kB",
		999_949: "999.9 kB", 1_000_000: "1.0 MB", 246_600_000: "246.6 MB", 1_500_000_000: "1.5 GB",
	} {
		if got := Bytes(n); got != want {
			t.Errorf("Bytes(%d) = %q, want %q", n, got, want)
		}
	}
}

func TestShortID(t *testing.T) {
	if got := ShortID("sha256:0123456789abcdef0123"); got != "0123456789ab" {
		t.Errorf("got %q", got)
	}
	if got := ShortID("abc"); got != "abc" {
		t.Errorf("got %q", got)
	}
}

func TestFirstLine(t *testing.T) {
	for in, want := range map[string]string{
		"one":                  "one",
		"\n  first \nsecond\n": "first",
		"":                     "",
		"  \n\t\n":             "",
		"a: b\ncaused by: c\n": "a: b",
	} {
		if got := FirstLine(in); got != want {
			t.Errorf("FirstLine(%q) = %q, want %q", in, got, want)
		}
	}
	if ErrLine(nil) != "" || ErrLine(errors.New("x\ny")) != "x" {
		t.Error("ErrLine")
	}
}

func TestPrefixed(t *testing.T) {
	var out strings.Builder
	var mu sync.Mutex
	a := &Prefixed{W: &out, Prefix: "[a] ", Mu: &mu}
	b := &Prefixed{W: &out, Prefix: "[b] ", Mu: &mu}
	fmt.Fprint(a, "one ")
	fmt.Fprint(b, "two\n")
	fmt.Fprint(a, "line\rsent 1 MB\r\n")
	fmt.Fprint(b, "last")
	b.Flush()
	want := "[b] two\n[a] one line\n[a] sent 1 MB\n[b] last\n"
	if out.String() != want {
		t.Errorf("got\n%s\nwant\n%s", out.String(), want)
	}
}
