//go:build !windows

package host

import (
	"errors"
	"os"
	"syscall"
)

// ownProcessGroup starts a command as the leader of a new process group,
// out of the terminal's foreground group that gets SIGINT on Ctrl-C.
func ownProcessGroup() *syscall.SysProcAttr { return &syscall.SysProcAttr{Setpgid: true} }

// signalGroup sends SIGTERM, or SIGKILL when kill is set, to the process
// group p leads. A group already gone is os.ErrProcessDone.
func signalGroup(p *os.Process, kill bool) error {
	sig := syscall.SIGTERM
	if kill {
		sig = syscall.SIGKILL
	}
	if err := syscall.Kill(-p.Pid, sig); err != nil {
		if errors.Is(err, syscall.ESRCH) {
			return os.ErrProcessDone
		}
		return err
	}
	return nil
}
