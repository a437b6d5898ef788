package wsl_test

import (
	"context"
	"os/exec"
	"reflect"
	"strings"
	"testing"

	"github.com/carebot/carebot/internal/testenv"
	"github.com/carebot/carebot/internal/wsl"
	"github.com/carebot/carebot/internal/wsl/wsltest"
)

// scripts that break naive quoting: spaces, both quotes, $, backslashes,
// globs, newlines, non-ASCII, and an empty one.
var scripts = []string{
	`echo hello`,
	`printf '%s\n' "it's" 'a "b"' '$HOME' "tab	here"`,
	`cd '/mnt/c/Users/Ana María/My Projects' 2>/dev/null; echo "a  b"   'c\d' \$x`,
	"echo one\necho 'two lines'\n",
	`echo ünï ✓ データ; echo *; echo $((1+2))`,
	`x='a'"'"'b'; echo "$x"`,
	``,
}

// TestCommandLineQuoting checks CommandLine against a real bash: bash splits
// it back into exactly wsl and BashArgs.
func TestWSLCommandLineQuoting(t *testing.T) {
	bash, err := exec.LookPath("bash")
	if err != nil {
		testenv.Skip(t, "no bash to check the quoting against")
	}
	for _, s := range scripts {
		line := wsl.CommandLine("Ubuntu-22.04", s)
		out, err := exec.Command(bash, "-c", `printf '%s\0' `+line).Output()
		if err != nil {
			t.Fatalf("bash on %q: %v", line, err)
		}
		got := strings.Split(strings.TrimSuffix(string(out), "\x00"), "\x00")
		want := append([]string{"wsl"}, wsl.BashArgs("Ubuntu-22.04", s)...)
		if !reflect.DeepEqual(got, want) {
			t.Errorf("bash split %s into\n %q\nwant %q", line, got, want)
		}
	}
	if got := wsl.CommandLine("Ubuntu-22.04", "echo hi"); got != "wsl -d Ubuntu-22.04 -e bash -c 'echo hi'" {
		t.Errorf("CommandLine = %s", got)
	}
}

// TestPipeRunsScripts runs each script through the fake wsl, both with the
// arguments as they are (Pipe) and through script.Exec's own splitting of
// the command line (Exec), and compares with bash run directly.
func TestWSLPipeRunsScripts(t *testing.T) {
	fake := wsltest.Install(t)
	ctx := context.Background()
	for _, s := range scripts {
		direct, err := exec.Command("bash", "-c", s).CombinedOutput()
		if err != nil {
			t.Fatalf("bash -c %q: %v", s, err)
		}
		viaPipe, err := wsl.Pipe(ctx, "Ubuntu-22.04", s).String()
		if err != nil {
			t.Fatalf("Pipe(%q): %v", s, err)
		}
		viaExec, err := wsl.Exec(ctx, "Ubuntu-22.04", s).String()
		if err != nil {
			t.Fatalf("Exec(%q): %v", s, err)
		}
		if viaPipe != string(direct) || viaExec != string(direct) {
			t.Errorf("script %q:\n bash %q\n Pipe %q\n Exec %q", s, direct, viaPipe, viaExec)
		}
	}
	calls := fake.Calls()
	if len(calls) != 2*len(scripts) {
		t.Fatalf("fake wsl ran %d times, want %d", len(calls), 2*len(scripts))
	}
	if want := wsl.BashArgs("Ubuntu-22.04", scripts[1]); !reflect.DeepEqual(calls[2], want) {
		t.Errorf("wsl got %q, want %q", calls[2], want)
	}
}

func TestWSLPipeFailure(t *testing.T) {
	wsltest.Install(t)
	ctx := context.Background()
	p := wsl.Pipe(ctx, "Ubuntu-22.04", "echo oops >&2; exit 3")
	out, _ := p.String()
	if p.ExitStatus() != 3 {
		t.Errorf("exit status %d, want 3 (output %q)", p.ExitStatus(), out)
	}
	p = wsl.Pipe(ctx, "Debian", "true")
	p.Wait()
	if p.Error() == nil {
		t.Error("a distro that is not installed: no error")
	}
}

func TestWSLDistros(t *testing.T) {
	wsltest.Install(t, "Ubuntu-22.04", "docker-desktop", "Debian")
	ctx := context.Background()
	ds, err := wsl.Distros(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"Ubuntu-22.04", "docker-desktop", "Debian"}; !reflect.DeepEqual(ds, want) {
		t.Errorf("Distros = %q, want %q", ds, want)
	}
	if !wsl.Has(ds, "ubuntu-22.04") || wsl.Has(ds, "Ubuntu") {
		t.Error("Has does not match whole names without regard to case")
	}
	if _, err := wsl.Status(ctx); err != nil {
		t.Errorf("Status: %v", err)
	}
}

func TestWSLMissing(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	if _, err := wsl.Distros(context.Background()); err == nil || !strings.Contains(err.Error(), "not installed") {
		t.Errorf("Distros without wsl: %v", err)
	}
}

func TestWSLDecode(t *testing.T) {
	utf16le := func(s string) []byte {
		var b []byte
		for _, r := range s { // ASCII and BMP only
			b = append(b, byte(r), byte(r>>8))
		}
		return b
	}
	tests := []struct {
		in   []byte
		want string
	}{
		{[]byte("Ubuntu-22.04\r\nDebian\r\n"), "Ubuntu-22.04\nDebian\n"},
		{utf16le("Ubuntu-22.04\r\nÜber\r\n"), "Ubuntu-22.04\nÜber\n"},
		{append([]byte{0xff, 0xfe}, utf16le("x\r\n")...), "x\n"},
		{nil, ""},
	}
	for _, tt := range tests {
		if got := wsl.Decode(tt.in); got != tt.want {
			t.Errorf("Decode(% x) = %q, want %q", tt.in, got, tt.want)
		}
	}
}
