package shell

import (
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// sh runs a command line under /bin/sh, as every host does.
func sh(t *testing.T, cmd string) (string, error) {
	t.Helper()
	out, err := exec.Command("/bin/sh", "-c", cmd).Output()
	return string(out), err
}

// nasty are strings a shell would split, expand or choke on unquoted.
var nasty = []string{
	"plain",
	"/srv/carebot",
	"with space",
	"  leading and trailing  ",
	"it's",
	"''",
	`'\''`,
	`say "hi"`,
	"$HOME",
	"${PATH}",
	"$(echo pwned)",
	"`echo pwned`",
	"line one\nline two",
	"trailing newline\n",
	"tab\there",
	"*",
	"/etc/*",
	"?[a-z]",
	"~",
	"~root",
	"a;b",
	"a&&b|c",
	"x>y<z",
	"#comment",
	"back\\slash",
	"-n",
	"--",
	"%s%d",
	"!bang",
	"a=b",
	"données/файл",
	"emoji 🚀",
	"",
}

func TestQuoteRoundTrip(t *testing.T) {
	// Run from an empty folder, so a glob that escaped quoting would
	// still change nothing... except when it matches: put a file there.
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "match-me"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, s := range nasty {
		t.Run(strings.ReplaceAll(s, "\n", `\n`), func(t *testing.T) {
			q := Quote(s)
			out, err := sh(t, "cd "+Quote(dir)+" && HOME=/nowhere printf '%s\\n' "+q)
			if err != nil {
				t.Fatalf("printf %s: %v", q, err)
			}
			if want := s + "\n"; out != want {
				t.Errorf("Quote(%q) = %s; the shell saw %q, want %q", s, q, out, want)
			}
		})
	}
}

func TestQuoteLeavesSafeWordsAlone(t *testing.T) {
	tests := []struct{ in, want string }{
		{"carebot", "carebot"},
		{"/srv/care-bot_1.2/x", "/srv/care-bot_1.2/x"},
		{"user@host:22", "user@host:22"},
		{"IMAGE_TAG=v1.2.3+build,x", "IMAGE_TAG=v1.2.3+build,x"},
		{"100%", "100%"},
		{"", "''"},
		{"a b", "'a b'"},
		{"it's", `'it'\''s'`},
		{"$x", "'$x'"},
		{"données", "'données'"},
	}
	for _, tc := range tests {
		if got := Quote(tc.in); got != tc.want {
			t.Errorf("Quote(%q) = %s, want %s", tc.in, got, tc.want)
		}
	}
}

func TestJoinRoundTrip(t *testing.T) {
	tests := [][]string{
		nasty,
		{"", "", ""},
		{"one"},
		{"a b", "c'd", `e"f`},
	}
	for _, args := range tests {
		// %s\0 so that arguments holding newlines stay whole.
		out, err := sh(t, `printf '%s\0' `+Join(args...))
		if err != nil {
			t.Fatal(err)
		}
		got := strings.Split(strings.TrimSuffix(out, "\x00"), "\x00")
		if !reflect.DeepEqual(got, args) {
			t.Errorf("Join(%q) = %s; the shell saw %q", args, Join(args...), got)
		}
	}
	if got := Join(); got != "" {
		t.Errorf("Join() = %q, want empty", got)
	}
}
