package host

import (
	"context"
	"errors"
	"io"
	"net"
	"os/exec"
)

// Local is this machine: commands run under /bin/sh, dials go straight out.
type Local struct{}

var _ Host = Local{}

func (Local) Exec(ctx context.Context, cmd string, stdin io.Reader, stdout, stderr io.Writer) error {
	c := exec.CommandContext(ctx, "/bin/sh", "-c", cmd)
	c.Stdin, c.Stdout, c.Stderr = stdin, stdout, stderr
	return c.Run()
}

func (Local) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	var d net.Dialer
	return d.DialContext(ctx, network, addr)
}

func (Local) String() string { return "this machine" }
func (Local) Close() error   { return nil }

func asExit(err error, target *interface{ ExitStatus() int }) bool {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		*target = exitCode(ee.ExitCode())
		return true
	}
	return errors.As(err, target)
}

type exitCode int

func (c exitCode) ExitStatus() int { return int(c) }
