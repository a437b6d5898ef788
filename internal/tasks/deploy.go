package tasks

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"
	"sync"
	"text/tabwriter"

	"github.com/carebot/carebot/internal/deploy"
	"github.com/carebot/carebot/internal/engine"
	"github.com/carebot/carebot/internal/fleet"
	"github.com/carebot/carebot/internal/health"
	"github.com/carebot/carebot/internal/text"
)

// Deploy puts IMAGE_NAME:IMAGE_TAG, already built, into service on
// DEPLOY_HOST (each of its servers), and rolls back by itself when it does
// not become healthy. The history names the backup this run took before
// on each host, if any.
func (r *Runner) Deploy(ctx context.Context) error {
	e, err := r.Engine(ctx)
	if err != nil {
		return err
	}
	img, err := e.Image(ctx, r.Cfg.Image())
	if errors.Is(err, engine.ErrNotFound) {
		return fmt.Errorf("image %s is not built: run mage build first, or set IMAGE_TAG to a version that is", r.Cfg.Image())
	}
	if err != nil {
		return err
	}
	rel := deploy.Release{Version: r.Cfg.ImageTag, ImageID: img.ID, Commit: r.Cfg.Commit}
	if r.swarmMode() {
		return r.swarmDeploy(ctx, rel)
	}
	if !r.Several() {
		d, err := r.Deployer(ctx)
		if err != nil {
			return err
		}
		defer r.taskDone(d)
		rel.Backup = r.backupOn(d)
		return d.Deploy(ctx, rel)
	}
	deps, err := r.Deployers(ctx)
	if err != nil {
		return fmt.Errorf("%w\nnothing was changed on any server", err)
	}
	defer func() {
		for _, d := range deps {
			r.taskDone(d)
		}
	}()
	backups := map[string]string{}
	for _, d := range deps {
		backups[d.Host.String()] = r.backupOn(d)
	}
	out, end := r.board(deps)
	defer end()
	f := fleet.Fleet{Hosts: deps, Strategy: r.Cfg.Strategy, Out: out}
	return f.Deploy(ctx, rel, backups)
}

// board shows a task on several hosts, when the run's output is a
// terminal, as a block with a line per host under the lines they write
// (see text.Board): each deployer writes to its line until end is
// called. out is for the run's own lines meanwhile. With -v every line
// stays, prefixed.
func (r *Runner) board(deps []*deploy.Deployer) (out io.Writer, end func()) {
	f, ok := r.Out.(*os.File)
	if !ok || !isTerminal(f) || len(deps) < 2 || r.Verbose {
		return r.Out, func() {}
	}
	b := &text.Board{W: r.Out, Width: termWidth(f)}
	old := make([]io.Writer, len(deps))
	for i, d := range deps {
		old[i] = d.Out
		prefix := "[" + d.Host.String() + "] "
		if p, ok := d.Out.(*text.Prefixed); ok {
			prefix = p.Prefix
		}
		d.Out = b.Row(prefix)
	}
	return b.Log(), func() {
		b.End()
		for i, d := range deps {
			d.Out = old[i]
		}
	}
}

// Rollback serves version, or the release before the current one when
// version is empty, on each server in turn; it stops at the first that
// fails (which goes back to what it served).
func (r *Runner) Rollback(ctx context.Context, version string) error {
	if r.swarmMode() {
		return r.swarmRollback(ctx, version)
	}
	deps, err := r.Deployers(ctx)
	if err != nil {
		return err
	}
	for _, d := range (&fleet.Fleet{Hosts: deps}).Sorted() {
		err := d.Rollback(ctx, version)
		r.taskDone(d)
		if err != nil {
			return err
		}
	}
	return nil
}

// Status shows the deployment's health, container and last deploys; it
// fails when the service is not healthy, so scripts can use it. With
// several servers it is one table, a row per server, and fails when any
// is unreachable, unhealthy or unsettled.
func (r *Runner) Status(ctx context.Context) error {
	if r.swarmMode() {
		return r.swarmStatus(ctx)
	}
	if r.Several() {
		return r.statusTable(ctx)
	}
	d, err := r.Deployer(ctx)
	if err != nil {
		return err
	}
	st := statusOf(ctx, d)
	if st.err != nil {
		return st.err
	}
	r.printf("deployment %s on %s\n", d.Path, d.Host)
	if st.interrupted != "" {
		r.printf("UNSETTLED  %s\n", st.interrupted)
	}
	if len(st.containers) == 0 {
		r.printf("container  none\n")
	}
	for _, c := range st.containers {
		r.printf("container  %s\n", c)
	}
	if st.healthErr == nil {
		r.printf("health     %s, version %s, commit %s (%s)\n", st.health.Status, st.health.Version, st.health.Commit, st.url)
	} else {
		r.printf("health     FAILING: %v (%s)\n", st.healthErr, st.url)
	}
	r.printf("last deploys\n")
	for _, h := range st.history[max(0, len(st.history)-5):] {
		r.printf("  %s\n", h)
	}
	return st.problem
}

// serverStatus is what status found on one server.
type serverStatus struct {
	err         error // it could not be looked at
	interrupted string
	containers  []deploy.ContainerState
	health      health.Status
	healthErr   error
	url         string
	history     []deploy.Entry
	problem     error // why status fails for it
}

func statusOf(ctx context.Context, d *deploy.Deployer) serverStatus {
	var st serverStatus
	if st.err = d.Deployed(ctx); st.err != nil {
		return st
	}
	if st.interrupted, st.err = d.Interrupted(ctx); st.err != nil {
		return st
	}
	if st.containers, st.err = d.Containers(ctx); st.err != nil {
		return st
	}
	probe := d.Probe()
	st.url = probe.URL
	st.health, st.healthErr = probe.Check(ctx)
	if st.history, st.err = d.History(ctx); st.err != nil {
		return st
	}
	switch confirmed := deploy.Confirmed(st.history); {
	case st.healthErr != nil:
		st.problem = fmt.Errorf("the service on %s is not healthy: %v", d.Host, st.healthErr)
	case st.interrupted != "":
		st.problem = fmt.Errorf("%s is not settled: %s", d.Host, st.interrupted)
	case st.health.Version != confirmed:
		st.problem = fmt.Errorf("%s serves %s, but the last release confirmed healthy there is %s: run mage deploy or mage rollback", d.Host, st.health.Version, orNone(confirmed))
	}
	return st
}

// statusTable is status over several servers, looked at all at once: one
// that cannot be reached is a row of its own, and the others still show.
func (r *Runner) statusTable(ctx context.Context) error {
	deps, errs := r.reach(ctx)
	sts := make([]serverStatus, len(deps))
	var wg sync.WaitGroup
	for i, d := range deps {
		if errs[i] != nil {
			sts[i].err = errs[i]
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			sts[i] = statusOf(ctx, d)
		}()
	}
	wg.Wait()
	tw := tabwriter.NewWriter(r.Out, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "SERVER\tHEALTH\tVERSION\tCONTAINER\tLAST DEPLOY\n")
	var problems []error
	versions := map[string]bool{}
	for i, st := range sts {
		name := r.Cfg.Targets[i].String()
		if st.err != nil {
			fmt.Fprintf(tw, "%s\tUNREACHABLE\t-\t-\t%s\n", name, text.ErrLine(st.err))
			problems = append(problems, st.err)
			continue
		}
		h, v := "ok", st.health.Version
		if st.healthErr != nil {
			h, v = "FAILING", "-"
		} else {
			versions[v] = true
		}
		if st.interrupted != "" {
			h += ", UNSETTLED"
		}
		ct := "none"
		if len(st.containers) > 0 {
			c := st.containers[0]
			ct = c.Status
			if c.Health != "" {
				ct += " (" + c.Health + ")"
			}
		}
		last := "-"
		if n := len(st.history); n > 0 {
			e := st.history[n-1]
			last = fmt.Sprintf("%s %s %s %s", e.Time.Local().Format("2006-01-02 15:04"), e.Action, e.Version, e.Result)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", name, h, v, ct, last)
		if st.problem != nil {
			problems = append(problems, st.problem)
		}
	}
	tw.Flush()
	if len(versions) > 1 {
		problems = append(problems, fmt.Errorf("the servers serve different versions (%s): run mage deploy to bring them to one", strings.Join(slices.Sorted(maps.Keys(versions)), ", ")))
	}
	return errors.Join(problems...)
}

// Logs prints the last lines of the service's logs, and follows them when
// asked, until interrupted.
func (r *Runner) Logs(ctx context.Context, lines int, follow bool) error {
	if r.swarmMode() {
		return r.swarmLogs(ctx, lines, follow)
	}
	d, err := r.Deployer(ctx)
	if err != nil {
		return err
	}
	if err := d.Deployed(ctx); err != nil {
		return err
	}
	args := fmt.Sprintf("logs --no-color --tail=%d", lines)
	if follow {
		args += " --follow"
	}
	if err := d.ComposeStream(ctx, args, r.Out); err != nil && ctx.Err() == nil {
		return fmt.Errorf("logs on %s: %w", d.Host, err)
	}
	return nil
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}
