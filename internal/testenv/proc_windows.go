package testenv

import "syscall"

func detached() *syscall.SysProcAttr { return nil }
