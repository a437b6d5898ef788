// Package wsl is what the tool needs of WSL2 when it runs on Windows:
// converting Windows paths to the paths the distro sees (LinuxPath),
// building `wsl -d DISTRO -e ...` command lines with correct quoting, running
// shell steps inside the distro as bitfield/script pipelines, listing the
// installed distros, and telling whether we already run inside WSL.
//
// How wsl.exe reads its arguments matters for quoting: after -e (--exec) it
// splits the rest of its command line with CommandLineToArgvW, the same
// rules Go's os/exec uses to build that line on Windows, so an argument
// given to exec.Command reaches the Linux program unchanged, spaces and
// quotes included. (Without -e, wsl.exe hands the line to the user's login
// shell as one string, to be parsed again: never use that form.)
package wsl

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"unicode/utf16"

	"github.com/bitfield/script"

	"github.com/carebot/carebot/internal/shell"
)

// Program is the WSL launcher. Tests put a fake of that name first on PATH.
const Program = "wsl"

// Args are the arguments of `wsl -d distro -e argv...`: argv runs in the
// distro as its default user, with no shell in between.
func Args(distro string, argv ...string) []string {
	return append([]string{"-d", distro, "-e"}, argv...)
}

// BashArgs are the arguments of `wsl -d distro -e bash -c script`.
func BashArgs(distro, script string) []string {
	return Args(distro, "bash", "-c", script)
}

// CommandLine is `wsl -d DISTRO -e bash -c '<script>'` as one line, each word
// quoted for a POSIX shell; it is what Exec runs, and what messages show.
// script.Exec splits it back into exactly BashArgs (the tests check that,
// and that a real bash does the same).
func CommandLine(distro, script string) string {
	return shell.Join(append([]string{Program}, BashArgs(distro, script)...)...) // POSIX quoting, which script.Exec also reads
}

// Pipe runs script in the distro's bash as a bitfield/script pipeline:
// `wsl -d distro -e bash -c script`, the arguments passed as they are (no
// shell on this side to re-parse them). The pipe's input is the script's
// stdin; read its output (stdout and stderr) at the sink, e.g. .String().
func Pipe(ctx context.Context, distro, script string) *script.Pipe {
	return Script(ctx).ExecCommand(Program, BashArgs(distro, script)...)
}

// Exec is Pipe through script.Exec's own splitting of CommandLine: the same
// command, for callers that hold a command line rather than arguments.
func Exec(ctx context.Context, distro, script string) *script.Pipe {
	return Script(ctx).Exec(CommandLine(distro, script))
}

// Script is an empty pipeline bound to ctx, whose commands see WSL_UTF8=1
// (so wsl.exe's own messages are UTF-8, not UTF-16).
func Script(ctx context.Context) *script.Pipe {
	return script.NewPipe().WithContext(ctx).WithEnv(append(os.Environ(), "WSL_UTF8=1"))
}

// Inside reports whether this process runs inside WSL, and in which distro
// when it can tell: then the engine is local, as on any Linux.
func Inside() (distro string, ok bool) {
	return inside(os.Getenv, func(p string) bool { _, err := os.Stat(p); return err == nil })
}

func inside(getenv func(string) string, exists func(string) bool) (string, bool) {
	if d := getenv("WSL_DISTRO_NAME"); d != "" {
		return d, true
	}
	// WSL registers its interop handler (running Windows programs) here;
	// newer versions may name it WSLInterop-late.
	for _, p := range []string{"/proc/sys/fs/binfmt_misc/WSLInterop", "/proc/sys/fs/binfmt_misc/WSLInterop-late"} {
		if exists(p) {
			return "", true
		}
	}
	return "", false
}

// Status runs `wsl --status`, which fails when WSL is not installed or not
// enabled; its output, decoded, is returned either way.
func Status(ctx context.Context) (string, error) {
	out, err := run(ctx, "--status")
	if err != nil {
		if errors.Is(err, exec.ErrNotFound) {
			return "", fmt.Errorf("wsl.exe not found: WSL is not installed")
		}
		return out, fmt.Errorf("wsl --status: %v%s", err, lastLine(out))
	}
	return out, nil
}

// Distros lists the installed distros (`wsl -l -q`).
func Distros(ctx context.Context) ([]string, error) {
	out, err := run(ctx, "-l", "-q")
	if err != nil {
		if errors.Is(err, exec.ErrNotFound) {
			return nil, fmt.Errorf("wsl.exe not found: WSL is not installed")
		}
		return nil, fmt.Errorf("wsl -l -q: %v%s", err, lastLine(out))
	}
	var ds []string
	for _, l := range strings.Split(out, "\n") {
		if l = strings.TrimSpace(l); l != "" {
			ds = append(ds, l)
		}
	}
	return ds, nil
}

// Has reports whether distros holds name; wsl.exe matches names without
// regard to case.
func Has(distros []string, name string) bool {
	for _, d := range distros {
		if strings.EqualFold(d, name) {
			return true
		}
	}
	return false
}

func run(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, Program, args...)
	cmd.Env = append(os.Environ(), "WSL_UTF8=1")
	b, err := cmd.CombinedOutput()
	return Decode(b), err
}

// Decode turns wsl.exe's own output into a string. wsl.exe writes UTF-16LE
// (the console's encoding) unless WSL_UTF8=1 is set, which older versions
// ignore; text with NUL bytes is taken to be UTF-16LE. Carriage returns go.
func Decode(b []byte) string {
	if len(b) >= 2 && bytes.IndexByte(b, 0) >= 0 {
		b = bytes.TrimPrefix(b, []byte{0xff, 0xfe}) // a BOM, if any
		u := make([]uint16, len(b)/2)
		for i := range u {
			u[i] = uint16(b[2*i]) | uint16(b[2*i+1])<<8
		}
		b = []byte(string(utf16.Decode(u)))
	}
	return strings.ReplaceAll(string(b), "\r", "")
}

func lastLine(out string) string {
	out = strings.TrimSpace(out)
	if i := strings.LastIndexByte(out, '\n'); i >= 0 {
		out = strings.TrimSpace(out[i+1:])
	}
	if out == "" {
		return ""
	}
	return ": " + out
}
