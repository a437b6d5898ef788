package tasks

import (
	"context"
	"errors"
	"fmt"

	"github.com/carebot/carebot/internal/deploy"
	"github.com/carebot/carebot/internal/engine"
)

// Deploy puts IMAGE_NAME:IMAGE_TAG, already built, into service on
// DEPLOY_HOST, and rolls back by itself when it does not become healthy.
// backup names the backup taken just before, for the history ("" when
// none was).
func (r *Runner) Deploy(ctx context.Context, backup string) error {
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
	d, err := r.Deployer(ctx)
	if err != nil {
		return err
	}
	defer r.taskDone(d)
	return d.Deploy(ctx, deploy.Release{Version: r.Cfg.ImageTag, ImageID: img.ID, Commit: r.Cfg.Commit, Backup: backup})
}

// Rollback serves version, or the release before the current one when
// version is empty.
func (r *Runner) Rollback(ctx context.Context, version string) error {
	d, err := r.Deployer(ctx)
	if err != nil {
		return err
	}
	defer r.taskDone(d)
	return d.Rollback(ctx, version)
}

// Status shows the deployment's health, container and last deploys; it
// fails when the service is not healthy, so scripts can use it.
func (r *Runner) Status(ctx context.Context) error {
	d, err := r.Deployer(ctx)
	if err != nil {
		return err
	}
	if err := d.Deployed(ctx); err != nil {
		return err
	}
	r.printf("deployment %s on %s\n", d.Path, d.Host)
	interrupted, err := d.Interrupted(ctx)
	if err != nil {
		return err
	}
	if interrupted != "" {
		r.printf("UNSETTLED  %s\n", interrupted)
	}
	states, err := d.Containers(ctx)
	if err != nil {
		return err
	}
	if len(states) == 0 {
		r.printf("container  none\n")
	}
	for _, s := range states {
		r.printf("container  %s\n", s)
	}
	probe := d.Probe()
	st, herr := probe.Check(ctx)
	if herr == nil {
		r.printf("health     %s, version %s, commit %s (%s)\n", st.Status, st.Version, st.Commit, probe.URL)
	} else {
		r.printf("health     FAILING: %v (%s)\n", herr, probe.URL)
	}
	history, err := d.History(ctx)
	if err != nil {
		return err
	}
	r.printf("last deploys\n")
	for _, h := range history[max(0, len(history)-5):] {
		r.printf("  %s\n", h)
	}
	if herr != nil {
		return fmt.Errorf("the service on %s is not healthy: %v", d.Host, herr)
	}
	if interrupted != "" {
		return fmt.Errorf("%s is not settled: %s", d.Host, interrupted)
	}
	if confirmed := deploy.Confirmed(history); st.Version != confirmed {
		return fmt.Errorf("%s serves %s, but the last release confirmed healthy there is %s: run mage deploy or mage rollback", d.Host, st.Version, orNone(confirmed))
	}
	return nil
}

// Logs prints the last lines of the service's logs, and follows them when
// asked, until interrupted.
func (r *Runner) Logs(ctx context.Context, lines int, follow bool) error {
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
