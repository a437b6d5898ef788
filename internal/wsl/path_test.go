package wsl

import (
	"strings"
	"testing"
)

func TestLinuxPath(t *testing.T) {
	const distro = "Ubuntu-22.04"
	tests := []struct {
		in, want string
		err      string // part of the error; "" = no error
	}{
		// Drives: any letter, either case, either separator.
		{in: `C:\Users\x`, want: "/mnt/c/Users/x"},
		{in: `d:/data`, want: "/mnt/d/data"},
		{in: `Z:\`, want: "/mnt/z"},
		{in: `E:`, want: "/mnt/e"},
		{in: `C:/Users\Ana/CareBot\`, want: "/mnt/c/Users/Ana/CareBot"},
		{in: `C:\Users\x\..\y\.\z`, want: "/mnt/c/Users/y/z"},
		{in: `C:\..\..`, want: "/mnt/c"},
		// Spaces and non-ASCII names are kept.
		{in: `C:\Users\Ana María\My Projects\CareBot`, want: "/mnt/c/Users/Ana María/My Projects/CareBot"},
		{in: `D:\Проекты\кэр бот\データ`, want: "/mnt/d/Проекты/кэр бот/データ"},
		{in: `C:\it's "quoted" $HOME`, want: `/mnt/c/it's "quoted" $HOME`},
		// Long-path prefixes.
		{in: `\\?\C:\very\long\path`, want: "/mnt/c/very/long/path"},
		{in: `\\.\D:\x`, want: "/mnt/d/x"},
		{in: `\\?\UNC\wsl$\Ubuntu-22.04\home\u`, want: "/home/u"},
		{in: `\\.\PhysicalDrive0`, err: "device path"},
		// UNC paths into the distro.
		{in: `\\wsl$\Ubuntu-22.04\home\u\p`, want: "/home/u/p"},
		{in: `\\wsl.localhost\Ubuntu-22.04\home\u\my project`, want: "/home/u/my project"},
		{in: `\\WSL.LOCALHOST\ubuntu-22.04\srv`, want: "/srv"},
		{in: `//wsl$/Ubuntu-22.04/home/u`, want: "/home/u"},
		{in: `\\wsl$\Ubuntu-22.04`, want: "/"},
		{in: `\\wsl$\Ubuntu-22.04\`, want: "/"},
		// ... but not into another distro.
		{in: `\\wsl$\Debian\home\u`, err: "inside WSL distro Debian, but the engine is in Ubuntu-22.04: set WSL_DISTRO=Debian"},
		{in: `\\wsl.localhost\Ubuntu\home\u`, err: "set WSL_DISTRO=Ubuntu"},
		// Network shares are refused with a reason.
		{in: `\\server\share\carebot`, err: `network share \\server\share, which the engine in WSL cannot mount`},
		{in: `\\fileserver.corp\projects`, err: "network share"},
		{in: `\\server`, err: "not a complete network path"},
		{in: `\\`, err: "not a complete network path"},
		// Linux paths pass through.
		{in: "/home/u/p", want: "/home/u/p"},
		{in: "/tmp/a b/../c", want: "/tmp/c"},
		// Relative paths are refused.
		{in: `Users\x`, err: "relative path"},
		{in: `.\test-data`, err: "relative path"},
		{in: `..\x`, err: "relative path"},
		{in: `C:test-data`, err: "relative to drive C:'s current folder"},
		{in: "", err: "empty path"},
		{in: "1:/x", err: "relative path"},
	}
	for _, tt := range tests {
		got, err := LinuxPath(tt.in, distro)
		switch {
		case tt.err == "" && err != nil:
			t.Errorf("LinuxPath(%q): %v", tt.in, err)
		case tt.err == "" && got != tt.want:
			t.Errorf("LinuxPath(%q) = %q, want %q", tt.in, got, tt.want)
		case tt.err != "" && err == nil:
			t.Errorf("LinuxPath(%q) = %q, want an error containing %q", tt.in, got, tt.err)
		case tt.err != "" && !strings.Contains(err.Error(), tt.err):
			t.Errorf("LinuxPath(%q) error %q, want it to contain %q", tt.in, err, tt.err)
		case err != nil && strings.ContainsAny(err.Error(), "\n"):
			t.Errorf("LinuxPath(%q) error is not one line: %q", tt.in, err)
		}
	}
}
