// Package fleet deploys to several hosts as one: every host is checked
// before any changes, the locks are taken in one order, the image travels
// to all of them at once (saved once, each host sent only the layers it
// lacks), and the switch goes host by host or all at once, with every host
// put back when the release fails on one.
package fleet

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/carebot/carebot/internal/deploy"
	"github.com/carebot/carebot/internal/ship"
)

// Strategies of the switch (DEPLOY_STRATEGY).
const (
	// Rolling switches one host at a time, each health-gated; on a failure
	// the hosts already switched go back and the rest are not touched.
	Rolling = "rolling"
	// All switches every host at once, once every transfer has landed; if
	// any is unhealthy, all go back.
	All = "all"
)

// Fleet is the hosts of one run.
type Fleet struct {
	Hosts    []*deploy.Deployer
	Strategy string // Rolling (default) or All
	Out      io.Writer
}

// Sorted returns the hosts in the order their locks are taken: by name,
// so two runs over the same hosts never hold one lock each and wait for
// the other's.
func (f *Fleet) Sorted() []*deploy.Deployer {
	hs := append([]*deploy.Deployer(nil), f.Hosts...)
	sort.SliceStable(hs, func(i, j int) bool { return hs[i].Host.String() < hs[j].Host.String() })
	return hs
}

func (f *Fleet) printf(format string, a ...any) {
	if f.Out != nil {
		fmt.Fprintf(f.Out, format, a...)
	}
}

// Each runs step on every host at once and joins the errors, each of
// which names its host.
func Each(hosts []*deploy.Deployer, step func(d *deploy.Deployer) error) error {
	errs := make([]error, len(hosts))
	var wg sync.WaitGroup
	for i, d := range hosts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = step(d)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// Deploy puts r into service on every host. backups names the backup
// taken on each host before (by its Host.String(); none: "").
func (f *Fleet) Deploy(ctx context.Context, r deploy.Release, backups map[string]string) error {
	hosts := f.Sorted()
	names := make([]string, len(hosts))
	for i, d := range hosts {
		names[i] = d.Host.String()
	}
	// Every host is looked at before any of them changes.
	if err := Each(hosts, func(d *deploy.Deployer) error { return d.Check(ctx) }); err != nil {
		return fmt.Errorf("%w\nnothing was changed on any server", err)
	}
	for _, d := range hosts {
		if !d.HasDeployment() {
			f.printf("warning: this runs the service on %d servers at once. A service that must run once (a bot that polls one BOT_TOKEN: Telegram answers a second poller with 409 Conflict; a single SQLite writer) belongs on one server; each server keeps its own data/. See the README, \"Growing past one server\".\n", len(hosts))
			break
		}
	}
	for _, d := range hosts {
		if err := d.Lock(ctx); err != nil {
			return fmt.Errorf("%w\nnothing was changed on any server", err)
		}
	}

	// The image travels to all hosts at once, saved once.
	done := share(ctx, hosts)
	defer done()
	staged := make([]*deploy.Staged, len(hosts))
	err := Each(hosts, func(d *deploy.Deployer) error {
		rd := r
		rd.Backup = backups[d.Host.String()]
		s, err := d.Prepare(ctx, rd)
		staged[index(hosts, d)] = s
		return err
	})
	if err != nil {
		f.unstage(ctx, hosts, staged)
		return fmt.Errorf("%w\nno server was switched: each serves what it served", err)
	}
	var todo []int
	for i, s := range staged {
		if !s.Noop {
			todo = append(todo, i)
		}
	}
	if len(todo) == 0 {
		f.printf("every server already serves %s: nothing was restarted\n", r.Version)
		return nil
	}
	// A host switched early waits, unconfirmed, for the hosts after it:
	// its journal must not undo it before the last one has had its turn.
	within := time.Duration(len(todo)) * (2*hosts[0].HealthTimeout + 2*time.Minute)
	if f.Strategy == All {
		err = f.switchAll(ctx, hosts, staged, todo, within)
	} else {
		err = f.switchRolling(ctx, hosts, staged, todo, within)
	}
	if err != nil {
		return err
	}
	// Every host is healthy on r: confirm them all.
	if err := Each(hosts, func(d *deploy.Deployer) error { return d.Confirm(ctx, staged[index(hosts, d)]) }); err != nil {
		return err
	}
	f.printf("%d servers serve %s: %s\n", len(hosts), r.Version, strings.Join(names, ", "))
	return nil
}

// share has every host's transfer read one shared save of the image (and
// share its compressed layers) for the rest of the step; done closes it
// and gives each host its own source back.
func share(ctx context.Context, hosts []*deploy.Deployer) (done func()) {
	src := ship.Share(ctx, hosts[0].Engine)
	own := make([]ship.Source, len(hosts))
	for i, d := range hosts {
		own[i], d.Engine = d.Engine, src
	}
	return func() {
		for i, d := range hosts {
			d.Engine = own[i]
		}
		src.Close()
	}
}

func index(hosts []*deploy.Deployer, d *deploy.Deployer) int {
	for i, h := range hosts {
		if h == d {
			return i
		}
	}
	return -1
}

// switchRolling switches the hosts one at a time. When one fails (it puts
// its own previous release back), the hosts before it go back too and
// those after it are not switched.
func (f *Fleet) switchRolling(ctx context.Context, hosts []*deploy.Deployer, staged []*deploy.Staged, todo []int, within time.Duration) error {
	for k, i := range todo {
		d := hosts[i]
		err := d.Switch(ctx, staged[i], within)
		if err == nil {
			continue
		}
		if ctx.Err() != nil {
			return f.interrupted(hosts, staged)
		}
		why := fmt.Sprintf("%s failed on %s", staged[i].Release.Version, d.Host)
		back := f.revert(ctx, hosts, staged, todo[:k], why)
		var untouched []string
		for _, j := range todo[k+1:] {
			untouched = append(untouched, hosts[j].Host.String())
		}
		f.unstage(ctx, hosts, staged)
		msg := fmt.Sprintf("%s: %v", d.Host, err)
		if len(back) > 0 {
			msg += "; put back on " + strings.Join(back, ", ")
		}
		if len(untouched) > 0 {
			msg += "; not switched: " + strings.Join(untouched, ", ")
		}
		return errors.New(msg)
	}
	return nil
}

// switchAll switches every host at once; if any fails, the others go back.
func (f *Fleet) switchAll(ctx context.Context, hosts []*deploy.Deployer, staged []*deploy.Staged, todo []int, within time.Duration) error {
	errs := make([]error, len(hosts))
	var wg sync.WaitGroup
	for _, i := range todo {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = hosts[i].Switch(ctx, staged[i], within)
		}()
	}
	wg.Wait()
	var failed []string
	var joined []error
	for i, err := range errs {
		if err != nil {
			failed = append(failed, hosts[i].Host.String())
			joined = append(joined, fmt.Errorf("%s: %w", hosts[i].Host, err))
		}
	}
	if len(failed) == 0 {
		return nil
	}
	if ctx.Err() != nil {
		return f.interrupted(hosts, staged)
	}
	why := fmt.Sprintf("%s failed on %s", staged[todo[0]].Release.Version, strings.Join(failed, ", "))
	var ok []int
	for _, i := range todo {
		if errs[i] == nil {
			ok = append(ok, i)
		}
	}
	back := f.revert(ctx, hosts, staged, ok, why)
	err := errors.Join(joined...)
	if len(back) > 0 {
		err = fmt.Errorf("%w\nput back on %s", err, strings.Join(back, ", "))
	}
	return err
}

// revert puts the previous release back on the hosts of idx that were
// switched, all at once, and names them.
func (f *Fleet) revert(ctx context.Context, hosts []*deploy.Deployer, staged []*deploy.Staged, idx []int, why string) []string {
	var mu sync.Mutex
	var back []string
	var sel []*deploy.Deployer
	for _, i := range idx {
		sel = append(sel, hosts[i])
	}
	_ = Each(sel, func(d *deploy.Deployer) error {
		s := staged[index(hosts, d)]
		if err := d.Revert(ctx, s, why); err != nil {
			f.printf("%s: %v\n", d.Host, err)
			return nil
		}
		mu.Lock()
		back = append(back, fmt.Sprintf("%s (%s)", d.Host, orNone(s.Fallback)))
		mu.Unlock()
		return nil
	})
	sort.Strings(back)
	return back
}

// unstage puts back the compose file on the hosts that were prepared and
// not switched.
func (f *Fleet) unstage(ctx context.Context, hosts []*deploy.Deployer, staged []*deploy.Staged) {
	for i, s := range staged {
		if s != nil {
			_ = hosts[i].Unstage(ctx, s)
		}
	}
}

// interrupted lets every lock go at once: each host's holder puts back
// what its journal says (the run has only seconds left).
func (f *Fleet) interrupted(hosts []*deploy.Deployer, staged []*deploy.Staged) error {
	var back []string
	version := ""
	for i, d := range hosts {
		if s := staged[i]; s != nil && !s.Noop {
			back = append(back, fmt.Sprintf("%s (%s)", d.Host, orNone(s.Fallback)))
			version = s.Release.Version
		}
		d.Abandon()
	}
	return fmt.Errorf("interrupted before %s was confirmed healthy on every server: each puts back what it served by itself: %s (mage status shows when)", version, strings.Join(back, ", "))
}

func orNone(s string) string {
	if s == "" {
		return "stopped: nothing served before"
	}
	return s
}
