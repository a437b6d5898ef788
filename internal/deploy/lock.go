package deploy

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/user"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/carebot/carebot/internal/host"
	"github.com/carebot/carebot/internal/shell"
)

// The deploy lock is an flock(1) on DEPLOY_PATH/.carebot/lock, held by a
// small shell process on the host for as long as the run that took it is
// there: the run's own session (SSH, or a child process on this machine)
// feeds it a heartbeat on its standard input. The kernel frees an flock
// when its holder exits, so the lock cannot outlive what holds it:
//   - the run ends, or is killed, or Ctrl-C'd: its end of the session closes,
//     the holder reads EOF and exits;
//   - the link goes silent (half-open: sshd's ClientAliveInterval is 0 by
//     default, so sshd itself may never notice): no heartbeat for Lease,
//     and the holder exits.
//
// Before it exits, the holder finishes what the run left half-done: it
// waits for a host-side step still running (see step), then runs the
// journal, the script that puts back what served before. Only then is the
// lock free, so the next run finds the host whole.
const (
	// Lease is how long the holder waits for a heartbeat before it takes
	// the run for gone.
	Lease = 30 * time.Second
	// heartbeat is how often the run tells the holder it is there.
	heartbeat = 5 * time.Second
	// lockGrace is how long a run waits for a lock that is being freed
	// (a run that has just ended, or a holder that is putting things back)
	// even with LOCK_WAIT=0: the next plain command must just work.
	lockGrace = 5 * time.Second
	// recoverWait bounds the wait for a holder that is putting back what
	// its run left half-done (a compose up of the previous release).
	recoverWait = 3 * time.Minute
	// legacyStale is the age after which a .deploy.lock folder of an
	// earlier version of this tool is taken for left behind: those versions
	// gave up their lock within 30 minutes.
	legacyStale = 30 * time.Minute
)

// ErrLocked means another run holds the lock.
var ErrLocked = errors.New("locked")

// stateDir is where the tool keeps its own files on the host: the lock,
// the holder's name, the journal.
func (d *Deployer) stateDir() string { return d.Path + "/.carebot" }
func (d *Deployer) lockPath() string { return d.stateDir() + "/lock" }
func (d *Deployer) legacyLock() string {
	return d.Path + "/.deploy.lock"
}

// lease is a held lock: the holder process's session on the host.
type lease struct {
	hb   io.WriteCloser // the holder's standard input: heartbeats, then EOF
	done chan struct{}  // closed when the holder has exited
	err  error          // why it exited, once done is closed
	stop chan struct{}
	once sync.Once
}

// Lock takes the host's deploy lock for the rest of the Deployer's life:
// backup, deploy, rollback and restore of one run share it, and Release
// (or the run's end) gives it back. A second call returns at once, unless
// the lock was lost since (its holder was killed, or the link went silent
// for longer than Lease), which is an error: what the run does next would
// no longer be guarded.
func (d *Deployer) Lock(ctx context.Context) error {
	d.lockMu.Lock()
	defer d.lockMu.Unlock()
	if d.lease != nil {
		return d.lease.check(d)
	}
	l, err := d.acquire(ctx)
	if err != nil {
		return err
	}
	d.lease = l
	return d.recoverJournal(ctx)
}

// Release gives the lock back and waits (briefly) until the host has
// freed it, so the next run does not find it still held.
func (d *Deployer) Release() {
	l := d.letGo()
	if l == nil {
		return
	}
	select {
	case <-l.done:
	case <-time.After(10 * time.Second):
	}
}

// letGo stops the heartbeat and closes the holder's input, which tells it
// the run is over; it returns the lease it let go, nil when none was held.
func (d *Deployer) letGo() *lease {
	d.lockMu.Lock()
	l := d.lease
	d.lease = nil
	d.lockMu.Unlock()
	if l != nil {
		l.once.Do(func() { close(l.stop) })
		l.hb.Close()
	}
	return l
}

func (l *lease) check(d *Deployer) error {
	select {
	case <-l.done:
		return fmt.Errorf("the deploy lock on %s was lost (%v): stopped before changing anything more; run the command again", d.Host, l.err)
	default:
		return nil
	}
}

// lockScript takes the lock, says "locked", and holds it while heartbeats
// arrive; see the comment on Lease. Exit codes: 75 = held by another run
// (its holder line follows "busy"), 76 = an earlier version's lock folder,
// anything else = the host could not take it (the reason on stderr).
func (d *Deployer) lockScript(owner string, wait time.Duration) string {
	return fmt.Sprintf(`trap '' HUP PIPE INT TERM
umask 077
p=%[1]s d=%[1]s/.carebot owner=%[2]s wait=%[3]d grace=%[4]d recover=%[5]d lease=%[6]d legacy=%[7]d
command -v flock >/dev/null 2>&1 || { echo "flock is not installed on this host: install util-linux" >&2; exit 3; }
command -v timeout >/dev/null 2>&1 || { echo "timeout is not installed on this host: install coreutils" >&2; exit 3; }
[ -d "$p" ] || { echo "$p does not exist" >&2; exit 3; }
mkdir -p "$d" && exec 9>>"$d/lock" || exit 3
if ! flock -n 9; then
	h=$(cat "$d/holder" 2>/dev/null)
	case "$h" in *"|recovering"*) w=$recover ;; *) w=$wait; [ "$w" -ge "$grace" ] || w=$grace ;; esac
	echo "waiting $w $h"
	flock -w "$w" 9 || { echo "busy $(cat "$d/holder" 2>/dev/null)"; exit 75; }
fi
if [ -d "$p/.deploy.lock" ]; then
	age=$(( $(date +%%s) - $(stat -c %%Y "$p/.deploy.lock" 2>/dev/null || echo 0) ))
	if [ "$age" -lt "$legacy" ]; then echo "legacy $age $(head -n 1 "$p/.deploy.lock/owner" 2>/dev/null)"; exit 76; fi
	rm -rf "$p/.deploy.lock" && echo "removed-legacy $age"
fi
full() { [ "$(df -Pk "$d" 2>/dev/null | awk 'NR==2 {print $4}')" = 0 ] && echo "cannot write in $d: No space left on device" >&2; exit 3; }
printf '%%s|%%s|holding\n' "$owner" "$(date +%%s)" > "$d/holder.tmp" && mv -f "$d/holder.tmp" "$d/holder" || full
echo locked
# A heartbeat can wait behind a transfer's data on a slow link: bytes the
# run's sshd still reads from the network (its rchar) count as a sign of life.
io() { :; }
case "$(cat "/proc/$PPID/comm" 2>/dev/null)" in sshd*) io() { sed -n 's/^rchar: //p' "/proc/$PPID/io" 2>/dev/null; } ;; esac
last=$(io)
while :; do
	c=$(timeout "$lease" head -c 1); rc=$?
	# A dead-man switch: a step the run must confirm in time (a release's
	# health) is undone when the time is up, even if the run still talks.
	ttl=$(sed -n 's/^# confirm within //p' "$d/journal" 2>/dev/null)
	if [ -n "$ttl" ] && [ $(( $(date +%%s) - $(stat -c %%Y "$d/journal" 2>/dev/null || date +%%s) )) -gt "$ttl" ]; then break; fi
	if [ -n "$c" ]; then last=$(io); continue; fi
	[ "$rc" = 124 ] || break
	now=$(io)
	if [ -n "$now" ] && [ "$now" != "$last" ]; then last=$now; continue; fi
	break
done
# The run is gone, or gave the lock back. Let a step it started end (it
# undoes itself when its client goes), then put back what the run left
# half-done, holding the lock until that is over.
[ -s "$d/step.pid" ] && kill -TERM "$(cat "$d/step.pid")" 2>/dev/null
exec 8>>"$d/step.lock" && flock -w "$recover" 8
if [ -s "$d/journal" ]; then
	printf '%%s|%%s|recovering\n' "$owner" "$(date +%%s)" > "$d/holder"
	{ echo "--- $(date -u +%%Y-%%m-%%dT%%H:%%M:%%SZ) the run of $owner went away; running the journal:"; head -n 1 "$d/journal"; } >> "$d/recovery.log"
	if sh "$d/journal" >> "$d/recovery.log" 2>&1; then rm -f "$d/journal"; fi
fi
rm -f "$d/holder"
`, shell.Quote(d.Path), shell.Quote(owner), int(wait.Seconds()), int(lockGrace.Seconds()), int(recoverWait.Seconds()), int(d.lease0().Seconds()), int(legacyStale.Seconds()))
}

// lease0 is the lease the holder grants, a field so tests can shorten it.
func (d *Deployer) lease0() time.Duration {
	if d.LeaseTime > 0 {
		return d.LeaseTime
	}
	return Lease
}

func (d *Deployer) acquire(ctx context.Context) (*lease, error) {
	owner := fmt.Sprintf("%s pid %d", whoami(), os.Getpid())
	// An OS pipe, not io.Pipe: this machine's Exec would wait for an
	// io.Reader to end before it returns, and the holder's input ends only
	// when the lock is given back.
	inR, inW, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	outR, outW := io.Pipe()
	var stderr bytes.Buffer
	w := host.Synced(outW, &stderr)
	l := &lease{hb: inW, done: make(chan struct{}), stop: make(chan struct{})}
	go func() {
		// Not ctx: the holder must outlive a cancelled step, and end only
		// when its standard input does.
		err := d.Host.Exec(context.WithoutCancel(ctx), d.lockScript(owner, d.LockWait), inR, w[0], w[1])
		l.err = err
		if err == nil {
			l.err = errors.New("its holder ended")
		}
		outW.CloseWithError(err)
		inR.Close()
		close(l.done)
	}()
	lines := make(chan string)
	go func() {
		sc := bufio.NewScanner(outR)
		for sc.Scan() {
			select {
			case lines <- sc.Text():
			case <-l.done:
			}
		}
		close(lines)
		_, _ = io.Copy(io.Discard, outR)
	}()
	fail := func(err error) (*lease, error) {
		inW.Close()
		return nil, err
	}
	var busy string
	for {
		select {
		case <-ctx.Done():
			return fail(fmt.Errorf("waiting for the deploy lock on %s: %w", d.Host, context.Cause(ctx)))
		case line, ok := <-lines:
			if !ok {
				inW.Close() // this machine's Exec waits for its input to end
				<-l.done
				return nil, d.lockError(busy, l.err, stderr.String())
			}
			word, rest, _ := strings.Cut(line, " ")
			switch word {
			case "locked":
				go l.beat(min(heartbeat, d.lease0()/3))
				return l, nil
			case "waiting":
				secs, h, _ := strings.Cut(rest, " ")
				n, _ := strconv.Atoi(secs)
				d.printf("%s is locked by %s; waiting up to %s for it\n", d.Host, d.describeHolder(h), time.Duration(n)*time.Second)
			case "busy", "legacy":
				busy = line
			case "removed-legacy":
				d.printf("removed %s, the lock an earlier version of this tool left %s ago\n", d.legacyLock(), ago(rest))
			}
		}
	}
}

// beat feeds the holder its heartbeat until the lock is released.
func (l *lease) beat(every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-l.stop:
			return
		case <-l.done:
			return
		case <-t.C:
			if _, err := l.hb.Write([]byte{'.'}); err != nil {
				return
			}
		}
	}
}

// lockError explains why the holder did not say "locked".
func (d *Deployer) lockError(busy string, err error, stderr string) error {
	word, rest, _ := strings.Cut(busy, " ")
	switch {
	case word == "busy":
		return fmt.Errorf("%w: another run holds the deploy lock on %s: %s; it is freed when that run ends (or %s after the last byte of its link reached the server, if the link went silent): wait, or set LOCK_WAIT=2m to queue behind it",
			ErrLocked, d.Host, d.describeHolder(rest), d.lease0())
	case word == "legacy":
		secs, owner, _ := strings.Cut(rest, " ")
		if owner == "" {
			owner = "an unknown deploy"
		}
		return fmt.Errorf("%w: an earlier version of this tool holds %s on %s (%s, taken %s ago): let it finish; if none is running, remove it (rm -rf %s)",
			ErrLocked, d.legacyLock(), d.Host, owner, ago(secs), d.legacyLock())
	}
	why := strings.TrimSpace(stderr)
	if i := strings.LastIndexByte(why, '\n'); i >= 0 {
		why = strings.TrimSpace(why[i+1:])
	}
	if why == "" && err != nil {
		why = err.Error()
	}
	fix := ""
	if strings.Contains(why, "No space left") {
		fix = ": free some space on it"
	}
	return fmt.Errorf("take the deploy lock %s on %s: %s%s", d.lockPath(), d.Host, why, fix)
}

// describeHolder turns the holder line "user@host pid N|since|state" into
// words.
func (d *Deployer) describeHolder(h string) string {
	f := strings.Split(strings.TrimSpace(h), "|")
	if len(f) < 3 || f[0] == "" {
		return "a run that is ending"
	}
	s := f[0]
	if since, err := strconv.ParseInt(f[1], 10, 64); err == nil {
		t := time.Unix(since, 0)
		s += fmt.Sprintf(" since %s (%s ago)", t.UTC().Format("15:04:05 UTC"), time.Since(t).Round(time.Second))
	}
	if f[2] == "recovering" {
		s += ", which went away; the host is putting back what it left half-done"
	}
	return s
}

func ago(secs string) string {
	n, err := strconv.Atoi(strings.TrimSpace(secs))
	if err != nil {
		return "some time"
	}
	return (time.Duration(n) * time.Second).String()
}

func whoami() string {
	name := "unknown"
	if u, err := user.Current(); err == nil {
		name = u.Username
	}
	h, _ := os.Hostname()
	return name + "@" + h
}
