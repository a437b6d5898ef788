package deploy

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/carebot/carebot/internal/host"
	"github.com/carebot/carebot/internal/shell"
)

// The journal (DEPLOY_PATH/.carebot/journal) is written before a step that
// changes what serves or the data (switch release, swap data, pause) and
// removed once its outcome is settled. It is a shell script that puts back
// what was there before, its first line a comment saying what was under
// way. While it exists, the host is not in a state anyone confirmed.
// Whoever finds it runs it: the lock's holder when its run goes away, or
// else the next run that takes the lock.

func (d *Deployer) journalPath() string { return d.stateDir() + "/journal" }

// intend records how to undo the step about to start. It fails, and the
// step must not start, when the lock is not held any more. With confirm >
// 0 the holder undoes the step by itself when the run has not settled it
// that long after: the run is there but stuck.
func (d *Deployer) intend(ctx context.Context, what, undo string, confirm time.Duration) error {
	if err := d.Lock(ctx); err != nil {
		return err
	}
	script := "# " + what + "\n"
	if d.Run != "" {
		script += fmt.Sprintf("# run %s over %s\n", d.Run, strings.Join(d.Fleet, ","))
	}
	if confirm > 0 {
		script += fmt.Sprintf("# confirm within %d\n", int(confirm.Seconds()))
	}
	script += undo
	if err := host.WriteFile(ctx, d.Host, d.journalPath(), []byte(script), 0o600); err != nil {
		if ctx.Err() != nil {
			step, _, _ := strings.Cut(what, ":")
			return fmt.Errorf("interrupted on %s before %s; nothing was changed", d.Host, step)
		}
		return fmt.Errorf("record what to undo on %s before %s: %w; nothing was changed", d.Host, what, err)
	}
	return nil
}

// settle removes the journal: the step's outcome is what serves now.
func (d *Deployer) settle(ctx context.Context) error {
	if _, err := host.Run(context.WithoutCancel(ctx), d.Host, "rm -f "+shell.Quote(d.journalPath())); err != nil {
		return fmt.Errorf("clear the journal on %s: %w", d.Host, err)
	}
	return nil
}

// conclude records e in the history and removes the journal, in one round
// trip: the switch's outcome is what serves now, and the history says so.
func (d *Deployer) conclude(ctx context.Context, e Entry) error {
	e.Time = d.now()
	cmd := d.appendHistoryCmd(e) + " && rm -f " + shell.Quote(d.journalPath())
	if _, err := host.Run(context.WithoutCancel(ctx), d.Host, cmd); err != nil {
		return fmt.Errorf("record deploy history and clear the journal on %s: %w", d.Host, err)
	}
	return nil
}

// Abandon gives the lock back without waiting: the run was interrupted and
// leaves what is left to do (the journal) to the host.
func (d *Deployer) Abandon() { d.letGo() }

// recoverJournal runs a journal that an interrupted run left and its
// holder could not run (the holder was killed too, or the host rebooted).
// Called with the lock held.
func (d *Deployer) recoverJournal(ctx context.Context) error {
	data, ok, err := host.ReadFile(ctx, d.Host, d.journalPath())
	if err != nil {
		return fmt.Errorf("read the journal on %s: %w", d.Host, err)
	}
	if !ok || len(strings.TrimSpace(string(data))) == 0 {
		return nil
	}
	what := journalWhat(data)
	d.printf("%s: an earlier run was interrupted while %s; doing that first\n", d.Host, what)
	p := shell.Quote(d.journalPath())
	start := time.Now()
	if _, err := host.Run(ctx, d.Host, fmt.Sprintf("sh %s && rm -f %s", p, p)); err != nil {
		return fmt.Errorf("finish what an interrupted run left on %s (%s): %w; the journal is %s", d.Host, what, err, d.journalPath())
	}
	d.printf("%s: done in %.1fs\n", d.Host, time.Since(start).Seconds())
	return nil
}

func journalWhat(data []byte) string {
	first, _, _ := strings.Cut(string(data), "\n")
	return strings.TrimSpace(strings.TrimPrefix(first, "#"))
}

// Interrupted says, without taking the lock, what the host is in the
// middle of: "" when nothing; else the journal's step, and whether the
// lock's holder is putting it right now.
func (d *Deployer) Interrupted(ctx context.Context) (string, error) {
	sd := shell.Quote(d.stateDir())
	out, err := host.Run(ctx, d.Host, fmt.Sprintf("head -n 1 %s/journal 2>/dev/null; echo; cat %s/holder 2>/dev/null; true", sd, sd))
	if err != nil {
		return "", fmt.Errorf("read the journal on %s: %w", d.Host, err)
	}
	first, holder, _ := strings.Cut(out, "\n")
	what := journalWhat([]byte(first))
	if what == "" {
		return "", nil
	}
	f := strings.Split(strings.TrimSpace(holder), "|")
	switch {
	case len(f) >= 3 && f[2] == "recovering":
		return "a run that went away was " + what + "; the host is doing that now", nil
	case len(f) >= 3:
		return "a run (" + f[0] + ") is " + what + " if it fails", nil
	}
	return "a run was interrupted while " + what + "; the next deploy, rollback or restore does that first", nil
}

// stepMarker separates the step prologue from its body (tests' fake hosts
// look for it).
const stepMarker = "# step body\n"

// stepScript wraps body into a step that runs to its end on the host even
// when the run goes away: one step at a time (step.lock, which the lock's
// holder also waits for before running a journal), its PID recorded for
// the holder, and hangups and broken pipes ignored. With abortable, the
// step is also stopped (SIGTERM, which runs body's cleanup) when its
// session's standard input closes, as it does when the run goes away;
// body may define cleanup() and run long commands with bg so a signal
// interrupts them at once.
func (d *Deployer) stepScript(body string, abortable bool) string {
	var b strings.Builder
	fmt.Fprintf(&b, `trap '' HUP PIPE
d=%s
mkdir -p "$d" && exec 8>>"$d/step.lock" && flock 8 || exit 3
echo $$ > "$d/step.pid"
child= watch=
cleanup() { :; }
bg() { "$@" & child=$!; wait $child; rc=$?; child=; return $rc; }
on_exit() { rc=$?; trap - EXIT INT TERM; if [ -n "$child" ]; then kill $child 2>/dev/null; wait $child; fi; cleanup; rm -f "$d/step.pid"; [ -z "$watch" ] || kill $watch 2>/dev/null; exit $rc; }
trap on_exit EXIT
`, shell.Quote(d.stateDir()))
	if abortable {
		b.WriteString(`trap 'exit 130' INT TERM
exec 7<&0
( head -c 1 <&7; kill -TERM $$ ) >/dev/null 2>&1 & watch=$!
exec 7<&-
`)
	} else {
		b.WriteString("trap '' INT TERM\n")
	}
	b.WriteString(stepMarker)
	b.WriteString(body)
	b.WriteString("\n")
	return b.String()
}

// step runs body as a step (see stepScript) and returns its output. Its
// standard input stays open until the step returns, so the host can tell
// the run is still there.
func (d *Deployer) step(ctx context.Context, body string, abortable bool) (string, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return "", err
	}
	defer r.Close()
	defer w.Close()
	return host.RunWithInput(ctx, d.Host, d.stepScript(body, abortable), r)
}

// composeStep runs compose args as a step that completes even when the run
// goes away: a compose up cut off halfway is not something to undo from.
func (d *Deployer) composeStep(ctx context.Context, version, args string) (string, error) {
	if _, err := d.detectCompose(ctx); err != nil {
		return "", err
	}
	if version == "" {
		version = "latest"
	}
	out, err := d.step(ctx, d.ComposeCommand(version, args), false)
	if err != nil {
		return out, fmt.Errorf("compose %s on %s: %w", strings.Fields(args)[0], d.Host, err)
	}
	return out, nil
}

// held reports whether the run still holds the lock.
func (d *Deployer) held() bool {
	d.lockMu.Lock()
	defer d.lockMu.Unlock()
	return d.lease != nil && d.lease.check(d) == nil
}
