package wsl

import (
	"os/exec"
	"reflect"
	"strings"
	"testing"

	"golang.org/x/sys/windows"
)

// TestWindowsCommandLine checks, on Windows, that the command line os/exec
// builds for wsl.exe splits back (with CommandLineToArgvW, which wsl.exe
// uses after -e) into exactly the arguments given.
func TestWSLWindowsCommandLine(t *testing.T) {
	for _, s := range []string{
		`printf '%s\n' "it's" 'a "b"' '$HOME'`,
		`cd "C:\Program Files\" && echo \\server\share "x\"y"`,
		"echo one\necho two",
	} {
		cmd := exec.Command(`C:\Windows\System32\wsl.exe`, BashArgs("Ubuntu-22.04", s)...)
		// The line os/exec builds: each argument escaped, joined by spaces.
		var b strings.Builder
		for i, a := range cmd.Args {
			if i > 0 {
				b.WriteByte(' ')
			}
			b.WriteString(windows.EscapeArg(a))
		}
		got, err := windows.DecomposeCommandLine(b.String())
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got[1:], BashArgs("Ubuntu-22.04", s)) {
			t.Errorf("%q split into %q", b.String(), got[1:])
		}
	}
}
