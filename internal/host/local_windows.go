package host

import (
	"os"
	"syscall"
)

// Windows has no process groups to signal, nor SIGTERM: the command is
// killed, as exec.CommandContext does by default.
func ownProcessGroup() *syscall.SysProcAttr { return nil }

func signalGroup(p *os.Process, _ bool) error { return p.Kill() }
