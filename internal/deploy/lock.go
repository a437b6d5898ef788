package deploy

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/user"
	"strings"
	"time"

	"github.com/carebot/carebot/internal/shell"

	"github.com/carebot/carebot/internal/host"
)

// StaleAfter is how old a lock must be before it is called stale. No deploy
// of this tool holds the lock this long; the holder was killed.
const StaleAfter = 30 * time.Minute

// ErrLocked means another deploy holds the lock.
var ErrLocked = errors.New("locked")

func (d *Deployer) lockPath() string { return d.Path + "/.deploy.lock" }

// Lock takes the host's deploy lock: mkdir is atomic on every POSIX
// filesystem, so of two deploys racing exactly one wins. The holder and time
// are written inside, for the message the loser prints.
func (d *Deployer) Lock(ctx context.Context) (unlock func(), err error) {
	p := shell.Quote(d.lockPath())
	owner := fmt.Sprintf("%s pid %d at %s", whoami(), os.Getpid(), d.now().UTC().Format(time.RFC3339))
	cmd := fmt.Sprintf("mkdir %s 2>/dev/null && printf '%%s\\n' %s > %s/owner", p, shell.Quote(owner), p)
	if _, err := host.Run(ctx, d.Host, cmd); err != nil {
		if held, _ := host.Exists(ctx, d.Host, d.lockPath()); !held {
			return nil, fmt.Errorf("take the deploy lock %s on %s: %w", d.lockPath(), d.Host, err)
		}
		return nil, d.lockedError(ctx)
	}
	return func() {
		_, _ = host.Run(context.WithoutCancel(ctx), d.Host, "rm -rf "+p)
	}, nil
}

func (d *Deployer) lockedError(ctx context.Context) error {
	data, ok, err := host.ReadFile(ctx, d.Host, d.lockPath()+"/owner")
	if err != nil {
		return fmt.Errorf("deploy lock %s: %w", d.lockPath(), err)
	}
	owner := strings.TrimSpace(string(data))
	if !ok || owner == "" {
		owner = "an unknown deploy"
	}
	since := time.Time{}
	if i := strings.LastIndex(owner, " at "); i >= 0 {
		since, _ = time.Parse(time.RFC3339, owner[i+4:])
	}
	if !since.IsZero() && d.now().Sub(since) > StaleAfter {
		return fmt.Errorf("%w: a stale deploy lock on %s (held by %s, %s ago) is left from an interrupted deploy: check nothing is deploying, then remove %s and deploy again",
			ErrLocked, d.Host, owner, d.now().Sub(since).Round(time.Minute), d.lockPath())
	}
	return fmt.Errorf("%w: another deploy is running on %s (held by %s); wait for it, or if none is running remove %s",
		ErrLocked, d.Host, owner, d.lockPath())
}

func whoami() string {
	name := "unknown"
	if u, err := user.Current(); err == nil {
		name = u.Username
	}
	h, _ := os.Hostname()
	return name + "@" + h
}
