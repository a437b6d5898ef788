//go:build !windows

package testenv

import "syscall"

// detached puts the engine in its own process group, so it outlives the
// test binary and the next package's tests find it running.
func detached() *syscall.SysProcAttr { return &syscall.SysProcAttr{Setpgid: true} }
