package engine

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// stdioDialer opens API connections by starting a command each time (on
// this machine, or on a server); the connection is the command's stdin and
// stdout.
type stdioDialer struct {
	start func(report func(string)) (*stdioConn, error)

	mu      sync.Mutex
	failure string // what the last command that failed printed, one line
}

func (d *stdioDialer) DialContext(ctx context.Context, _, _ string) (net.Conn, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	c, err := d.start(d.fail)
	if err != nil {
		d.fail(err.Error())
		return nil, err
	}
	return c, nil
}

func (d *stdioDialer) fail(why string) {
	d.mu.Lock()
	d.failure = why
	d.mu.Unlock()
}

func (d *stdioDialer) lastFailure() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.failure
}

// stdioConn is a net.Conn over a command's stdin (writes) and stdout
// (reads), what the docker CLI calls a commandconn. The command is not
// bound to the dial's context: it lives as long as the connection, and
// Close ends it. When the command fails, reads and writes return an error
// that carries the last thing it printed on stderr (for `wsl ... docker
// system dial-stdio`: no such distro, no docker, daemon not running, sudo
// wants a password).
type stdioConn struct {
	kill   func() // ends the command early
	name   string
	in     *os.File // our end of its stdin
	out    *os.File // our end of its stdout
	stderr *tailBuffer
	report func(string)

	done    chan struct{} // closed when the command has exited
	waitErr error         // set before done is closed

	closed    atomic.Bool
	closeOnce sync.Once
}

// newStdioConn makes the pipes of a connection named name: the command
// gets inR and outW, the connection keeps the other ends. Our own pipes,
// not cmd.StdinPipe/StdoutPipe: Wait would close those under a reader,
// and we wait as soon as the command starts.
func newStdioConn(name string, report func(string)) (c *stdioConn, inR, outW *os.File, err error) {
	inR, inW, err := os.Pipe()
	if err != nil {
		return nil, nil, nil, err
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		inR.Close()
		inW.Close()
		return nil, nil, nil, err
	}
	c = &stdioConn{name: name, in: inW, out: outR, stderr: &tailBuffer{max: 4 << 10}, report: report, done: make(chan struct{})}
	return c, inR, outW, nil
}

func startStdioConn(argv []string, report func(string)) (*stdioConn, error) {
	name := strings.Join(argv, " ")
	c, inR, outW, err := newStdioConn(name, report)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = inR, outW, c.stderr
	err = cmd.Start()
	inR.Close()
	outW.Close()
	if err != nil {
		c.in.Close()
		c.out.Close()
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	c.kill = func() { _ = cmd.Process.Kill() } // reaped by the goroutine waiting on it
	go func() {
		c.waitErr = cmd.Wait()
		close(c.done)
	}()
	return c, nil
}

// ExecFunc runs a shell command line somewhere (a server over SSH) with
// the given stdin and outputs until it ends or ctx is cancelled, as
// host.Host's Exec does.
type ExecFunc func(ctx context.Context, cmd string, stdin io.Reader, stdout, stderr io.Writer) error

// startExecConn is startStdioConn for a command that run starts: the
// connection lives until the command ends or Close cancels it.
func startExecConn(run ExecFunc, cmdline string, report func(string)) (*stdioConn, error) {
	c, inR, outW, err := newStdioConn(cmdline, report)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	c.kill = cancel
	go func() {
		c.waitErr = run(ctx, cmdline, inR, outW, c.stderr)
		inR.Close()
		outW.Close() // our reads end: the command has
		cancel()
		close(c.done)
	}()
	return c, nil
}

func (c *stdioConn) Read(p []byte) (int, error) {
	n, err := c.out.Read(p)
	if err != nil && !c.closed.Load() {
		err = c.commandErr(err)
	}
	return n, err
}

func (c *stdioConn) Write(p []byte) (int, error) {
	n, err := c.in.Write(p)
	if err != nil && !c.closed.Load() {
		err = c.commandErr(err)
	}
	return n, err
}

// commandErr explains err (EOF, a broken pipe) by the command's exit: a
// clean end (exit 0, nothing on stderr) stays err, a failure becomes one
// line naming the command and what it printed.
func (c *stdioConn) commandErr(err error) error {
	select {
	case <-c.done:
	case <-time.After(5 * time.Second):
		return err // still running: the stream itself broke
	}
	why := c.stderr.lastLine()
	if c.waitErr == nil && why == "" {
		return err
	}
	if why == "" {
		why = c.waitErr.Error()
	}
	if c.report != nil {
		c.report(why)
	}
	return &commandError{cmd: c.name, why: why, err: err}
}

type commandError struct {
	cmd, why string
	err      error
}

func (e *commandError) Error() string { return e.cmd + ": " + e.why }
func (e *commandError) Unwrap() error { return e.err }

// CloseWrite ends the command's stdin (the API client's half-close).
func (c *stdioConn) CloseWrite() error { return c.in.Close() }

// CloseRead stops reading the command's stdout.
func (c *stdioConn) CloseRead() error { return c.out.Close() }

// Close closes both pipes and ends the command.
func (c *stdioConn) Close() error {
	c.closeOnce.Do(func() {
		c.closed.Store(true)
		c.in.Close()
		c.out.Close()
		select {
		case <-c.done:
		default:
			c.kill()
		}
	})
	return nil
}

func (c *stdioConn) LocalAddr() net.Addr  { return stdioAddr(c.name) }
func (c *stdioConn) RemoteAddr() net.Addr { return stdioAddr(c.name) }

// Deadlines work where the pipes can be polled (not on Windows); the API
// client relies on contexts, which close the connection, so this is
// best effort.
func (c *stdioConn) SetDeadline(t time.Time) error {
	return errors.Join(c.SetReadDeadline(t), c.SetWriteDeadline(t))
}

func (c *stdioConn) SetReadDeadline(t time.Time) error {
	return ignoreNoDeadline(c.out.SetReadDeadline(t))
}

func (c *stdioConn) SetWriteDeadline(t time.Time) error {
	return ignoreNoDeadline(c.in.SetWriteDeadline(t))
}

func ignoreNoDeadline(err error) error {
	if errors.Is(err, os.ErrNoDeadline) {
		return nil
	}
	return err
}

type stdioAddr string

func (a stdioAddr) Network() string { return "stdio" }
func (a stdioAddr) String() string  { return string(a) }

// tailBuffer keeps the last max bytes written to it.
type tailBuffer struct {
	mu  sync.Mutex
	max int
	b   []byte
}

func (t *tailBuffer) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.b = append(t.b, p...)
	if len(t.b) > t.max {
		t.b = append(t.b[:0], t.b[len(t.b)-t.max:]...)
	}
	return len(p), nil
}

// lastLine is the last line that says something: wsl.exe ends its messages
// with an "Error code: ..." line, so prefer the line before that.
func (t *tailBuffer) lastLine() string {
	t.mu.Lock()
	s := strings.ReplaceAll(string(t.b), "\r", "")
	t.mu.Unlock()
	lines := strings.Split(strings.TrimSpace(s), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		l := strings.TrimSpace(lines[i])
		if l == "" || (strings.HasPrefix(l, "Error code:") && i > 0) {
			continue
		}
		return l
	}
	return ""
}

var _ net.Conn = (*stdioConn)(nil)

// Make sure the half-close the API client looks for is there.
var _ interface{ CloseWrite() error } = (*stdioConn)(nil)

var _ io.ReadWriteCloser = (*stdioConn)(nil)
