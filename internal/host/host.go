// Package host is where a deploy happens: this machine, or (later) a server
// over SSH. Everything the deploy does there is a shell command line, a
// stream into one, or a TCP dial, so one implementation of the deploy steps
// serves every kind of host.
package host

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"

	"github.com/carebot/carebot/internal/shell"
)

// Host runs commands and dials ports on the machine that serves the app.
type Host interface {
	// Exec runs a POSIX shell command line, with stdin (may be nil) and
	// the given output writers (nil discards).
	Exec(ctx context.Context, cmd string, stdin io.Reader, stdout, stderr io.Writer) error
	// DialContext opens a TCP connection from the host's side, so a health
	// check reaches a port that is published only on the host's loopback.
	DialContext(ctx context.Context, network, addr string) (net.Conn, error)
	// String names the host for messages ("this machine", "ubuntu@server").
	String() string
	Close() error
}

// Problem is an error the user fixes: what is wrong, and what to do about
// it. Its message is both on one line, as a deploy prints it; the doctor
// shows them apart.
type Problem struct {
	What string
	Fix  string // "" when there is nothing to say
}

func (p *Problem) Error() string {
	if p.Fix == "" {
		return p.What
	}
	return p.What + ": " + p.Fix
}

// CommandError is a failed command with what it printed, so the caller's
// message can show why without a second run.
type CommandError struct {
	Cmd    string
	Output string
	Err    error
}

// Error is one line: the program and the last line of its output (or the
// error, when it printed nothing). A lost connection is only that: the
// command did not fail, it was cut off.
func (e *CommandError) Error() string {
	var lost *ConnLostError
	if errors.As(e.Err, &lost) {
		return lost.Error()
	}
	out := strings.TrimSpace(e.Output)
	if i := strings.LastIndexByte(out, '\n'); i >= 0 {
		out = strings.TrimSpace(out[i+1:]) // the last line says what went wrong
	}
	if out == "" {
		return fmt.Sprintf("%s: %v", firstWord(e.Cmd), e.Err)
	}
	return fmt.Sprintf("%s: %s", firstWord(e.Cmd), out)
}

func (e *CommandError) Unwrap() error { return e.Err }

// ExitStatus lets mage exit with the remote command's code.
func (e *CommandError) ExitStatus() int {
	var s interface{ ExitStatus() int }
	if ok := asExit(e.Err, &s); ok {
		return s.ExitStatus()
	}
	return 1
}

// ConnLostError is the connection to a server failing under a command:
// whether the command ran, and how it ended, is not known.
type ConnLostError struct {
	Host string // user@host:port
	Err  error  // why: a network error, io.EOF (the server hung up), no answer to keepalives
}

// Error is "connection to user@host:port lost: connection reset by peer".
func (e *ConnLostError) Error() string {
	why := "the server closed the connection"
	if e.Err != nil && !errors.Is(e.Err, io.EOF) {
		why = NetReason(e.Err)
	}
	return fmt.Sprintf("connection to %s lost: %s", e.Host, why)
}

func (e *ConnLostError) Unwrap() error { return e.Err }

// Synced wraps writers so that they share one lock: a command's two output
// streams are copied by two goroutines, often into one buffer.
func Synced(ws ...io.Writer) []io.Writer {
	mu := &sync.Mutex{}
	out := make([]io.Writer, len(ws))
	for i, w := range ws {
		out[i] = &lockedWriter{mu, w}
	}
	return out
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// Run runs cmd and returns its standard output; on failure the error
// carries the combined output.
func Run(ctx context.Context, h Host, cmd string) (string, error) {
	return RunWithInput(ctx, h, cmd, nil)
}

// RunWithInput is Run with stdin: a step script reads its standard input
// to learn that the run that started it is gone (EOF).
func RunWithInput(ctx context.Context, h Host, cmd string, stdin io.Reader) (string, error) {
	var out, both bytes.Buffer
	w := Synced(io.MultiWriter(&out, &both), &both)
	err := h.Exec(ctx, cmd, stdin, w[0], w[1])
	if err != nil {
		return out.String(), &CommandError{Cmd: cmd, Output: both.String(), Err: err}
	}
	return out.String(), nil
}

// WriteFile writes data to path on the host atomically (temp file, then
// rename), so a reader never sees half a file.
func WriteFile(ctx context.Context, h Host, path string, data []byte, mode uint32) error {
	if w, ok := h.(interface {
		WriteFile(ctx context.Context, path string, data []byte, mode uint32) error
	}); ok {
		return w.WriteFile(ctx, path, data, mode) // SFTP over SSH
	}
	cmd := shellWriteCmd(path, len(data), mode)
	var both bytes.Buffer
	if err := h.Exec(ctx, cmd, bytes.NewReader(data), &both, &both); err != nil {
		return &CommandError{Cmd: cmd, Output: both.String(), Err: err}
	}
	return nil
}

// AppendFile appends data to path on the host.
func AppendFile(ctx context.Context, h Host, path string, data []byte) error {
	cmd := "cat >> " + shell.Quote(path)
	var both bytes.Buffer
	if err := h.Exec(ctx, cmd, bytes.NewReader(data), &both, &both); err != nil {
		return &CommandError{Cmd: cmd, Output: both.String(), Err: err}
	}
	return nil
}

// ReadFile returns the contents of path, and ok=false when it does not exist.
func ReadFile(ctx context.Context, h Host, path string) (data []byte, ok bool, err error) {
	p := shell.Quote(path)
	out, err := Run(ctx, h, fmt.Sprintf("if [ -e %s ]; then echo y; cat %s; else echo n; fi", p, p))
	if err != nil {
		return nil, false, err
	}
	if strings.HasPrefix(out, "n\n") {
		return nil, false, nil
	}
	return []byte(strings.TrimPrefix(out, "y\n")), true, nil
}

// Exists reports whether path exists on the host.
func Exists(ctx context.Context, h Host, path string) (bool, error) {
	out, err := Run(ctx, h, fmt.Sprintf("if [ -e %s ]; then echo y; else echo n; fi", shell.Quote(path)))
	return strings.TrimSpace(out) == "y", err
}

// Lost is why the connection to h ended under its users (a
// *ConnLostError), or nil while it is up or when h is this machine.
func Lost(h Host) error {
	switch h := h.(type) {
	case *SSH:
		h.mu.Lock()
		defer h.mu.Unlock()
		if h.lost != nil {
			return h.lost
		}
	case sudoHost:
		return Lost(h.Host)
	}
	return nil
}
