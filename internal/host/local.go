package host

import (
	"context"
	"errors"
	"io"
	"net"
	"os/exec"
	"time"
)

// Local is this machine: commands run under /bin/sh, dials go straight out.
type Local struct{}

var _ Host = Local{}

// localWaitDelay is how long a cancelled command has to end after SIGTERM
// before it is killed.
var localWaitDelay = 10 * time.Second // a variable for the tests

// Exec runs cmd under /bin/sh. The shell gets a process group of its own,
// so a Ctrl-C in the terminal reaches only us, and we decide what the
// command gets: when ctx ends, SIGTERM to the whole group (the shell and
// what it started), which lets a script's trap clean up (a backup unpauses
// the service); whatever is left after localWaitDelay is killed. Mage gives
// a target 5s after Ctrl-C before it exits itself; a trap still running then
// finishes on its own.
func (Local) Exec(ctx context.Context, cmd string, stdin io.Reader, stdout, stderr io.Writer) error {
	c := exec.CommandContext(ctx, "/bin/sh", "-c", cmd)
	c.Stdin, c.Stdout, c.Stderr = stdin, stdout, stderr
	c.SysProcAttr = ownProcessGroup()
	var kill *time.Timer
	c.Cancel = func() error {
		kill = time.AfterFunc(localWaitDelay, func() { _ = signalGroup(c.Process, true) })
		return signalGroup(c.Process, false)
	}
	c.WaitDelay = localWaitDelay // then Go kills the shell and stops waiting for its output
	err := c.Run()
	if kill != nil { // Cancel ran in Run's own goroutine, which Run has waited for
		kill.Stop()
	}
	return err
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
