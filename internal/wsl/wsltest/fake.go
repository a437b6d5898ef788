// Package wsltest puts a fake `wsl` first on PATH, so that the code paths
// meant for Windows run on Linux: `wsl -d DISTRO -e cmd args...` runs cmd
// here, with its arguments exactly as given; `wsl -l -q` lists the fake's
// distros in UTF-16LE as wsl.exe does; `wsl --status` succeeds. Every call
// is logged, so a test can check the WSL path was really taken. Only tests
// import it.
package wsltest

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"unicode/utf16"
)

// Fake is a fake wsl installed for one test.
type Fake struct {
	Dir     string // holds the program and its log
	log     string
	Distros []string
}

// Install writes the fake into a temporary folder and puts that folder
// first on PATH for the rest of the test (so the test cannot be parallel).
// The fake knows the given distros (default: Ubuntu-22.04); `-d` with any
// other one fails the way wsl.exe does. Skips on Windows, where the real
// wsl.exe is the one to test.
func Install(t testing.TB, distros ...string) *Fake {
	t.Helper()
	if runtime.GOOS == "windows" {
		t.Skip("the fake wsl is a bash script: on Windows the real wsl.exe is used")
	}
	if len(distros) == 0 {
		distros = []string{"Ubuntu-22.04"}
	}
	dir := t.TempDir()
	f := &Fake{Dir: dir, log: filepath.Join(dir, "calls.log"), Distros: distros}

	// `wsl -l -q` prints UTF-16LE with CRLF line ends and no BOM.
	var list []uint16
	for _, d := range distros {
		list = append(list, utf16.Encode([]rune(d+"\r\n"))...)
	}
	raw := make([]byte, 0, 2*len(list))
	for _, u := range list {
		raw = append(raw, byte(u), byte(u>>8))
	}
	listFile := filepath.Join(dir, "list.utf16")
	if err := os.WriteFile(listFile, raw, 0o644); err != nil {
		t.Fatal(err)
	}

	var known strings.Builder
	for _, d := range distros {
		fmt.Fprintf(&known, " %q", d)
	}
	prog := fmt.Sprintf(`#!/usr/bin/env bash
# Fake wsl.exe for tests (written by wsltest.Install).
# One record per call: arguments ended by US (0x1f), the record by RS (0x1e),
# written with one write so that concurrent calls do not interleave.
rec=$(printf '%%s\x1f' "$@")
printf '%%s\x1e' "$rec" >> %[1]q
case "$1" in
--status) echo "Default Distribution: %[2]s"; echo "Default Version: 2"; exit 0 ;;
-l|--list) cat %[3]q; exit 0 ;;
esac
distro=""
while [ $# -gt 0 ]; do
	case "$1" in
	-d|--distribution) distro="$2"; shift 2 ;;
	-u|--user) shift 2 ;;
	-e|--exec) shift; break ;;
	*) echo "fake wsl: unsupported argument $1 (use -d DISTRO -e cmd...)" >&2; exit 2 ;;
	esac
done
found=""
for d in%[4]s; do
	if [ "${d,,}" = "${distro,,}" ]; then found=1; fi
done
if [ -z "$found" ]; then
	echo "There is no distribution with the supplied name." >&2
	echo "Error code: Wsl/Service/WSL_E_DISTRO_NOT_FOUND" >&2
	exit 255
fi
[ $# -gt 0 ] || { echo "fake wsl: no command after -e" >&2; exit 2; }
exec "$@"
`, f.log, distros[0], listFile, known.String())
	if err := os.WriteFile(filepath.Join(dir, "wsl"), []byte(prog), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", dir+string(os.PathListSeparator)+os.Getenv("PATH"))
	return f
}

// Calls returns the arguments of every call so far, oldest first.
func (f *Fake) Calls() [][]string {
	b, err := os.ReadFile(f.log)
	if err != nil {
		return nil
	}
	var calls [][]string
	for _, rec := range strings.Split(string(b), "\x1e") {
		if rec == "" {
			continue
		}
		calls = append(calls, strings.Split(strings.TrimSuffix(rec, "\x1f"), "\x1f"))
	}
	return calls
}

// Count is how many calls ran cmd (the first word after -e).
func (f *Fake) Count(cmd string) int {
	n := 0
	for _, c := range f.Calls() {
		for i, a := range c {
			if (a == "-e" || a == "--exec") && i+1 < len(c) && c[i+1] == cmd {
				n++
				break
			}
		}
	}
	return n
}
