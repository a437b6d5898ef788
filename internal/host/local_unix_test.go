//go:build !windows

package host

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/carebot/carebot/internal/shell"
)

// startLocal runs script with Local.Exec until ctx ends; the script writes
// a line to the file ready names once it is set up.
func startLocal(ctx context.Context, script string) <-chan error {
	done := make(chan error, 1)
	go func() { done <- Local{}.Exec(ctx, script, nil, nil, nil) }()
	return done
}

func waitDone(t *testing.T, done <-chan error, within time.Duration) error {
	t.Helper()
	select {
	case err := <-done:
		return err
	case <-time.After(within):
		t.Fatalf("Exec did not return within %s of the cancel", within)
		return nil
	}
}

// TestLocalCancelRunsTrap: a cancelled command gets SIGTERM, it and what
// it runs, so a script's trap cleans up (as the backup's unpauses the
// service) and its exit status comes back.
func TestLocalCancelRunsTrap(t *testing.T) {
	dir := t.TempDir()
	ready, trapped := filepath.Join(dir, "ready"), filepath.Join(dir, "trapped")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := startLocal(ctx, "trap 'echo trapped > "+shell.Quote(trapped)+"; exit 3' TERM; echo > "+shell.Quote(ready)+"; sleep 30")
	waitForLine(t, ready)
	start := time.Now()
	cancel()
	err := waitDone(t, done, 5*time.Second)
	if got := waitForLine(t, trapped); got != "trapped" {
		t.Errorf("the trap wrote %q", got)
	}
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 3 {
		t.Errorf("Exec = %v, want the trap's exit status 3", err)
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Errorf("the trap ran only after %s: the sleep did not get the signal", took)
	}
}

// TestLocalOwnProcessGroup: the command is not in our process group, which
// a terminal's Ctrl-C signals as a whole.
func TestLocalOwnProcessGroup(t *testing.T) {
	pidFile := filepath.Join(t.TempDir(), "pid")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := startLocal(ctx, "echo $$ > "+shell.Quote(pidFile)+"; sleep 30")
	pid, err := strconv.Atoi(waitForLine(t, pidFile))
	if err != nil {
		t.Fatal(err)
	}
	pgid, err := syscall.Getpgid(pid)
	if err != nil {
		t.Fatal(err)
	}
	if pgid == syscall.Getpgrp() || pgid != pid {
		t.Errorf("the shell %d is in process group %d (ours is %d), want a group of its own", pid, pgid, syscall.Getpgrp())
	}
	cancel()
	waitDone(t, done, 5*time.Second)
}

// TestLocalCancelKillsWhatIgnoresTerm: what ignores SIGTERM is killed, all
// of it, localWaitDelay after the cancel.
func TestLocalCancelKillsWhatIgnoresTerm(t *testing.T) {
	old := localWaitDelay
	localWaitDelay = 300 * time.Millisecond
	t.Cleanup(func() { localWaitDelay = old })
	pidFile := filepath.Join(t.TempDir(), "pid")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := startLocal(ctx, "trap '' TERM; sleep 30 & echo $! > "+shell.Quote(pidFile)+"; wait")
	pid, err := strconv.Atoi(waitForLine(t, pidFile))
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	if err := waitDone(t, done, 5*time.Second); err == nil {
		t.Error("a killed command reported success")
	}
	deadline := time.Now().Add(5 * time.Second)
	for !gone(pid) {
		if time.Now().After(deadline) {
			t.Fatalf("the background sleep %d outlived the kill", pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// gone reports whether process pid has ended: it does not exist, or is a
// zombie (a container's init may never reap it).
func gone(pid int) bool {
	if syscall.Kill(pid, 0) != nil {
		return true
	}
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat") // "pid (name) STATE ..."
	if err != nil {
		return false // no /proc here: the process exists
	}
	f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
	return len(f) > 0 && f[0] == "Z"
}
