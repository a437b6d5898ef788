package host

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestFiles(t *testing.T) {
	ctx := context.Background()
	h := Local{}
	root := t.TempDir()
	names := []string{
		"plain.txt",
		"with space.txt",
		"it's quoted.txt",
		`dollar $HOME "and" quotes`,
		"données/файл.txt",
		"dir with space/sub'dir/file",
	}
	contents := []string{
		"hello\n",
		"no trailing newline",
		"",
		"n\nlooks like the 'missing' marker\n",
		"y\nlooks like the 'exists' marker\n",
		"binary \x00\x01\xff\n\n\n",
	}
	modes := []uint32{0o644, 0o600, 0o755, 0o640, 0o700, 0o444}
	for i, name := range names {
		t.Run(name, func(t *testing.T) {
			p := filepath.Join(root, name)
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				t.Fatal(err)
			}
			if ok, err := Exists(ctx, h, p); err != nil || ok {
				t.Fatalf("Exists before writing = %v, %v; want false, nil", ok, err)
			}
			if data, ok, err := ReadFile(ctx, h, p); err != nil || ok || data != nil {
				t.Fatalf("ReadFile of a missing file = %q, %v, %v; want nil, false, nil", data, ok, err)
			}

			// Write twice: the second write replaces the first.
			if err := WriteFile(ctx, h, p, []byte("first version, longer than the second\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			content, mode := contents[i], modes[i]
			if err := WriteFile(ctx, h, p, []byte(content), mode); err != nil {
				t.Fatalf("WriteFile: %v", err)
			}
			raw, err := os.ReadFile(p)
			if err != nil || string(raw) != content {
				t.Fatalf("file holds %q (%v), want %q", raw, err, content)
			}
			fi, err := os.Stat(p)
			if err != nil {
				t.Fatal(err)
			}
			if got := uint32(fi.Mode().Perm()); got != mode {
				t.Errorf("mode %o, want %o", got, mode)
			}
			if _, err := os.Stat(p + ".tmp"); !os.IsNotExist(err) {
				t.Errorf("WriteFile left its temp file behind: %v", err)
			}

			if ok, err := Exists(ctx, h, p); err != nil || !ok {
				t.Errorf("Exists after writing = %v, %v; want true, nil", ok, err)
			}
			data, ok, err := ReadFile(ctx, h, p)
			if err != nil || !ok || string(data) != content {
				t.Errorf("ReadFile = %q, %v, %v; want %q, true, nil", data, ok, err, content)
			}

			if mode&0o200 == 0 {
				return // read-only (root could append anyway)
			}
			if err := AppendFile(ctx, h, p, []byte("more\n")); err != nil {
				t.Fatalf("AppendFile: %v", err)
			}
			if err := AppendFile(ctx, h, p, []byte("and more")); err != nil {
				t.Fatalf("AppendFile: %v", err)
			}
			data, ok, err = ReadFile(ctx, h, p)
			if want := content + "more\nand more"; err != nil || !ok || string(data) != want {
				t.Errorf("after AppendFile: ReadFile = %q, %v, %v; want %q", data, ok, err, want)
			}
		})
	}
}

// TestShellWriteCmd: WriteFile without SFTP never lets others read the
// data on its way (the temp file is private until complete, even when an
// earlier run left one readable), and leaves no temp file when it fails.
func TestShellWriteCmd(t *testing.T) {
	const data = "BOT_TOKEN=secret\n"
	dir := t.TempDir()
	p := filepath.Join(dir, "app.env")
	tmp := p + ".tmp"
	noTemp := func(when string) {
		t.Helper()
		if _, err := os.Stat(tmp); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s: the temp file is left (%v)", when, err)
		}
	}
	// start runs the command on a stdin that the test feeds, and waits for
	// the temp file to hold what it was fed first.
	start := func(ctx context.Context, first string) (*io.PipeWriter, <-chan error) {
		t.Helper()
		in, feed := io.Pipe()
		done := make(chan error, 1)
		go func() { done <- Local{}.Exec(ctx, shellWriteCmd(p, len(data), 0o640), in, nil, nil) }()
		if _, err := feed.Write([]byte(first)); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(10 * time.Second)
		for {
			if b, _ := os.ReadFile(tmp); string(b) == first {
				return feed, done
			}
			if time.Now().After(deadline) {
				t.Fatalf("the temp file never held %q", first)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}

	if err := os.WriteFile(tmp, []byte("left by an earlier run"), 0o644); err != nil {
		t.Fatal(err)
	}
	feed, done := start(context.Background(), data[:10])
	if fi, err := os.Stat(tmp); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("halfway, the temp file is %v (%v), want -rw-------", fi.Mode(), err)
	}
	_, _ = feed.Write([]byte(data[10:]))
	feed.Close()
	if err := <-done; err != nil {
		t.Fatalf("write: %v", err)
	}
	if b, err := os.ReadFile(p); err != nil || string(b) != data {
		t.Errorf("the file holds %q (%v), want %q", b, err, data)
	}
	if fi, err := os.Stat(p); err != nil || fi.Mode().Perm() != 0o640 {
		t.Errorf("the file is %v (%v), want -rw-r-----", fi.Mode(), err)
	}
	noTemp("after a write")

	// Short input: refused, the file stays as it was.
	var out strings.Builder
	err := Local{}.Exec(context.Background(), shellWriteCmd(p, len(data), 0o640), strings.NewReader("BOT"), &out, &out)
	if err == nil || !strings.Contains(out.String(), "incomplete upload") {
		t.Errorf("short input: %v, %q", err, out.String())
	}
	if b, _ := os.ReadFile(p); string(b) != data {
		t.Errorf("short input replaced the file with %q", b)
	}
	noTemp("after short input")

	// Cancelled halfway: the signal, not an end of input, stops it (Exec
	// returns only once its input ends too, so that comes after).
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	feed, done = start(ctx, data[:3])
	cancel()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if _, err := os.Stat(tmp); errors.Is(err, fs.ErrNotExist) {
			break
		}
	}
	noTemp("after a cancel")
	feed.Close()
	if err := <-done; err == nil {
		t.Error("a cancelled write succeeded")
	}

	// A folder that is not there: cat fails before the file exists.
	err = WriteFile(context.Background(), Local{}, filepath.Join(dir, "missing", "f"), []byte(data), 0o600)
	if err == nil || !strings.Contains(err.Error(), "missing") {
		t.Errorf("into a missing folder: %v", err)
	}
}

func TestAppendFileCreates(t *testing.T) {
	ctx := context.Background()
	p := filepath.Join(t.TempDir(), "new 'history'.jsonl")
	for _, line := range []string{"{\"a\":1}\n", "{\"b\":2}\n"} {
		if err := AppendFile(ctx, Local{}, p, []byte(line)); err != nil {
			t.Fatal(err)
		}
	}
	raw, err := os.ReadFile(p)
	if want := "{\"a\":1}\n{\"b\":2}\n"; err != nil || string(raw) != want {
		t.Errorf("file holds %q (%v), want %q", raw, err, want)
	}
}

func TestExistsAndReadFileOfFolder(t *testing.T) {
	ctx := context.Background()
	dir := filepath.Join(t.TempDir(), "a folder")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if ok, err := Exists(ctx, Local{}, dir); err != nil || !ok {
		t.Errorf("Exists(folder) = %v, %v; want true, nil", ok, err)
	}
	if ok, err := Exists(ctx, Local{}, dir+"/nope"); err != nil || ok {
		t.Errorf("Exists(missing) = %v, %v; want false, nil", ok, err)
	}
	// A folder exists but cannot be read as a file: an error, not ok=false.
	if _, _, err := ReadFile(ctx, Local{}, dir); err == nil {
		t.Errorf("ReadFile(folder) gave no error")
	}
}

func TestWriteFileErrors(t *testing.T) {
	ctx := context.Background()
	p := filepath.Join(t.TempDir(), "no such folder", "f")
	err := WriteFile(ctx, Local{}, p, []byte("x"), 0o644)
	var ce *CommandError
	if !errors.As(err, &ce) {
		t.Fatalf("WriteFile into a missing folder: %v (%T), want a *CommandError", err, err)
	}
	if !strings.Contains(ce.Output, "no such folder") || strings.Contains(err.Error(), "\n") {
		t.Errorf("error %q (output %q) should be one line naming the path", err, ce.Output)
	}
	err = AppendFile(ctx, Local{}, p, []byte("x"))
	if !errors.As(err, &ce) {
		t.Fatalf("AppendFile into a missing folder: %v (%T), want a *CommandError", err, err)
	}
}

func TestRunOutput(t *testing.T) {
	out, err := Run(context.Background(), Local{}, "echo out; echo err >&2")
	if err != nil {
		t.Fatal(err)
	}
	if out != "out\n" {
		t.Errorf("Run = %q, want only standard output %q", out, "out\n")
	}
}

func TestRunError(t *testing.T) {
	tests := []struct {
		cmd    string
		status int
		want   string
	}{
		{"echo boom >&2; exit 3", 3, "echo: boom"},
		{"echo first >&2; echo second >&2; echo boom >&2; exit 7", 7, "echo: boom"},
		{"printf 'a\\nwhat went wrong\\n\\n\\n' >&2; exit 2", 2, "printf: what went wrong"},
		{"exit 4", 4, "exit: exit status 4"},
		{"false", 1, "false: exit status 1"},
		{"FOO=1 BAR=2 sh -c 'echo nope >&2; exit 5'", 5, "sh: nope"},
		{"nosuchcommand-carebot-test", 127, "nosuchcommand-carebot-test: "},
	}
	for _, tc := range tests {
		t.Run(tc.cmd, func(t *testing.T) {
			_, err := Run(context.Background(), Local{}, tc.cmd)
			var ce *CommandError
			if !errors.As(err, &ce) {
				t.Fatalf("Run error %v (%T), want a *CommandError", err, err)
			}
			msg := err.Error()
			if strings.Contains(msg, "\n") {
				t.Errorf("Error() has more than one line: %q", msg)
			}
			if !strings.HasPrefix(msg, tc.want) {
				t.Errorf("Error() = %q, want it to start with %q", msg, tc.want)
			}
			if ce.Cmd != tc.cmd {
				t.Errorf("Cmd = %q, want %q", ce.Cmd, tc.cmd)
			}
			if got := ce.ExitStatus(); got != tc.status {
				t.Errorf("ExitStatus() = %d, want %d", got, tc.status)
			}
			if errors.Unwrap(err) == nil {
				t.Errorf("CommandError does not unwrap to the exec error")
			}
		})
	}
}

type statusErr int

func (e statusErr) Error() string   { return "remote failed" }
func (e statusErr) ExitStatus() int { return int(e) }

func TestCommandErrorWithoutExecError(t *testing.T) {
	base := errors.New("connection lost")
	tests := []struct {
		err    *CommandError
		msg    string
		status int
	}{
		{&CommandError{Cmd: "docker ps", Err: base}, "docker: connection lost", 1},
		{&CommandError{Cmd: "docker ps", Output: "  \n\n", Err: base}, "docker: connection lost", 1},
		{&CommandError{Cmd: "docker ps", Output: "Error: daemon down\n", Err: statusErr(9)}, "docker: Error: daemon down", 9},
		{&CommandError{Cmd: "IMAGE_TAG=v1 docker compose up", Output: "x\ny\n", Err: base}, "docker: y", 1},
		// Cut off: neither the program nor its last words, which are not why it stopped.
		{&CommandError{Cmd: "if [ -e f ]; then cat f; fi", Output: "half of f\n", Err: &ConnLostError{Host: "u@h:22", Err: syscall.ECONNRESET}},
			"connection to u@h:22 lost: connection reset by peer", 1},
		{&CommandError{Cmd: "docker ps", Err: fmt.Errorf("wait: %w", &ConnLostError{Host: "u@h:22", Err: io.EOF})},
			"connection to u@h:22 lost: the server closed the connection", 1},
	}
	for _, tc := range tests {
		if got := tc.err.Error(); got != tc.msg {
			t.Errorf("Error() = %q, want %q", got, tc.msg)
		}
		if got := tc.err.ExitStatus(); got != tc.status {
			t.Errorf("%q: ExitStatus() = %d, want %d", tc.msg, got, tc.status)
		}
		if !errors.Is(tc.err, tc.err.Err) {
			t.Errorf("%q does not wrap its cause", tc.msg)
		}
	}
}

func TestFirstWord(t *testing.T) {
	tests := []struct{ cmd, want string }{
		{"docker ps", "docker"},
		{"  docker ps  ", "docker"},
		{"IMAGE_TAG=v1 docker compose up", "docker"},
		{"FOO='a b c' BAR=\"x y\" docker ps", "docker"},
		{"cd '/srv/app dir' && docker compose up -d", "docker"},
		{"cd /srv; tar -czf x.tgz data", "tar"},
		{"set -e; cd /srv && rm -rf data.replaced", "rm"},
		{"set -eu && umask 077 && cat > f", "cat"},
		{"if docker compose version 2>/dev/null; then echo 'docker compose'; fi", "docker"},
		{"if [ -f a ]; then cp -p a b.tmp && mv -f b.tmp b; fi", "cp"},
		{"if ! mkdir /l 2>/dev/null; then exit 1; fi", "mkdir"},
		{"[ -d /srv ] || mkdir -p /srv", "mkdir"},
		{"[[ -d /srv ]] && ls /srv", "ls"},
		{"test -e f && rm f", "rm"},
		{"for f in a b; do rm -f \"$f\"; done", "rm"},
		{"while read -r l; do echo \"$l\"; done", "read"},
		{"{ docker ps; docker images; } 2>&1", "docker"},
		{"(cd /srv && docker compose down)", "docker"},
		{"exec docker load", "docker"},
		{"sudo -n docker ps", "docker"},
		{"trap 'rm -f \"$t\"; exit 1' TERM; sleep 30", "sleep"},
		{"t='/x y.tmp' && trap 'rm -f \"$t\"' EXIT && cat > \"$t\"", "cat"},
		{"2>/dev/null docker ps", "docker"},
		{"> /tmp/out docker ps", "docker"},
		{"p=$(dirname \"$p\"); df -Pk \"$p\"", "df"},
		{"x=`pwd`; ls", "ls"},
		{"docker ps # if", "docker"},
		{"'my prog' --flag", "my prog"},
		{"cd /x", "cd"},
		{"[ -e f ]", "["},
		{"exit 4", "exit"},
		{"", "command"},
		{"set -e\ncd /srv\ndocker pause x", "script"},
		{"\n  docker ps  \n", "docker"},
	}
	for _, tt := range tests {
		if got := firstWord(tt.cmd); got != tt.want {
			t.Errorf("firstWord(%q) = %q, want %q", tt.cmd, got, tt.want)
		}
	}
}

func TestLocal(t *testing.T) {
	var h Host = Local{}
	if h.String() != "this machine" {
		t.Errorf("String() = %q", h.String())
	}
	if err := h.Close(); err != nil {
		t.Errorf("Close() = %v", err)
	}
	// stdin reaches the command; nil writers discard.
	var out strings.Builder
	if err := h.Exec(context.Background(), "tr a-z A-Z", strings.NewReader("shout"), &out, nil); err != nil || out.String() != "SHOUT" {
		t.Errorf("Exec with stdin = %q, %v", out.String(), err)
	}
	if err := h.Exec(context.Background(), "echo discarded; echo too >&2", nil, nil, nil); err != nil {
		t.Errorf("Exec with nil writers: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := h.Exec(ctx, "true", nil, nil, nil); err == nil {
		t.Errorf("Exec with a cancelled context succeeded")
	}
}
