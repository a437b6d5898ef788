package deploy

import (
	"context"
	"fmt"
	"time"

	"github.com/carebot/carebot/internal/host"
	"github.com/carebot/carebot/internal/shell"
	"github.com/carebot/carebot/internal/ship"
)

// The pieces a deploy to Docker Swarm uses on its manager (fleet drives
// them): the stack file in the deploy folder, `docker stack deploy` and
// `docker service rollback` as steps that finish on the host, and the
// same journal and history as a Compose deploy.

// ServerAPI is the host's engine through its API, connected on first use.
func (d *Deployer) ServerAPI(ctx context.Context) (ServerEngine, error) { return d.server(ctx) }

// ShipImage sends image id to the host's engine as ref (the host keeps
// only what it lacks), with the image saved early as for a deploy.
func (d *Deployer) ShipImage(ctx context.Context, id, ref string) (ship.Stats, error) {
	src := d.saveEarly(ctx, id, ref)
	defer src.Close()
	return d.shipFrom(ctx, src, id, ref)
}

// saveEarly starts the build engine's save of image id as soon as the
// host's engine says it lacks it as ref (see ship.SaveEarly).
func (d *Deployer) saveEarly(ctx context.Context, id, ref string) *ship.Early {
	return ship.SaveEarly(ctx, d.Engine, id, func(ctx context.Context) bool {
		srv, err := d.server(ctx)
		if err != nil {
			return false
		}
		have, err := srv.ImageID(ctx, ref)
		return err == nil && have != id
	})
}

// shipFrom sends image id from src to the host's engine as ref, as this
// deployment's settings say (compression, staging, the link's rate).
func (d *Deployer) shipFrom(ctx context.Context, src ship.Source, id, ref string) (ship.Stats, error) {
	srv, err := d.server(ctx)
	if err != nil {
		return ship.Stats{}, err
	}
	return ship.Image(ctx, src, srv, ref, id, ship.Options{Compression: d.Compression, Out: d.Out,
		Files: d.Host, StageDir: d.stateDir() + "/staging", Stage: d.Stage, Links: d.Links})
}

// PrepareStack makes the deploy folder (its .env as for Compose: the stack
// file's env_file reads it there) and writes the stack file for version
// into it, kept beside the release as a Compose deploy keeps its compose
// file. It returns the history.
func (d *Deployer) PrepareStack(ctx context.Context, version string, stackFile []byte) ([]Entry, error) {
	if err := d.makeFolder(ctx); err != nil {
		return nil, err
	}
	history, sums, err := d.historyAndSums(ctx)
	if err != nil {
		return nil, err
	}
	// The migrations, as for Compose (a task on this node mounts them);
	// then the stack file as the manager's CLI must read it.
	if _, err := d.syncFiles(ctx, sums); err != nil {
		return nil, err
	}
	if err := host.WriteFile(ctx, d.Host, d.Path+"/"+d.composeName(), stackFile, 0o644); err != nil {
		return nil, fmt.Errorf("write the stack file to %s: %w", d.Host, err)
	}
	d.facts.hasComposeFile = true
	if err := d.keepCompose(ctx, version); err != nil {
		return nil, err
	}
	return history, nil
}

// StackCommand is `docker stack deploy` of the deploy folder's stack file
// as stack, with the image pinned at tag and no registry asked. Newer
// CLIs wait for the services to converge unless --detach is given; the
// run waits itself, through the API, with its own timeout.
func (d *Deployer) StackCommand(stack, tag string) string {
	return fmt.Sprintf("cd %s && det=; if docker stack deploy --help 2>/dev/null | grep -q -e '--detach'; then det=--detach=true; fi; "+
		"IMAGE_NAME=%s IMAGE_TAG=%s APP_PORT=%d docker stack deploy -c %s --resolve-image never $det %s",
		shell.Quote(d.Path), shell.Quote(d.ImageName), shell.Quote(tag), d.AppPort, shell.Quote(d.composeName()), shell.Quote(stack))
}

// StackBackCommand deploys the stack as release version ran it: its kept
// stack file, its image tag. Unlike `docker service rollback` it can run
// twice (a journal may), and it does not matter whether the new spec was
// ever applied.
func (d *Deployer) StackBackCommand(stack, version, tag string) string {
	return d.useComposeCmd(version) + " && " + d.StackCommand(stack, tag)
}

// StackRemoveCommand removes a stack (a first release that failed).
func StackRemoveCommand(stack string) string { return "docker stack rm " + shell.Quote(stack) }

// Intend records how to undo the step about to start, for the lock's
// holder to run should the run go away, and undoes it by itself when the
// run has not confirmed within confirm (see intend).
func (d *Deployer) Intend(ctx context.Context, what, undo string, confirm time.Duration) error {
	return d.intend(ctx, what, undo, confirm)
}

// UndoRecord is a journal's undo that also records e (its result and the
// error set to "interrupted…") in the history once cmd has run.
func (d *Deployer) UndoRecord(cmd string, e Entry) string {
	e.Time = d.now()
	if e.Error == "" {
		e.Error = "interrupted before it was confirmed healthy"
	}
	return cmd + " || exit 1\n" + d.appendHistoryCmd(e) + "\n"
}

// RunStep runs cmd on the host as a step that finishes even when the run
// goes away.
func (d *Deployer) RunStep(ctx context.Context, what, cmd string) (string, error) {
	out, err := d.step(ctx, cmd, false)
	if err != nil {
		return out, fmt.Errorf("%s on %s: %w", what, d.Host, err)
	}
	return out, nil
}

// Conclude records e in the history and clears the journal.
func (d *Deployer) Conclude(ctx context.Context, e Entry) error { return d.conclude(ctx, e) }

// Settle clears the journal: what the step changed is what stays.
func (d *Deployer) Settle(ctx context.Context) error { return d.settle(ctx) }

// Stream runs cmd on the host with its output going to out (service logs).
func (d *Deployer) Stream(ctx context.Context, cmd string) error {
	return d.Host.Exec(ctx, cmd, nil, d.Out, d.Out)
}

// Printf writes to the deployer's output.
func (d *Deployer) Printf(format string, a ...any) { d.printf(format, a...) }

// VersionOfTag is the release a stack's image tag belongs to, by the
// history ("" when none recorded it).
func VersionOfTag(history []Entry, tag string) string {
	for i := len(history) - 1; i >= 0; i-- {
		if e := history[i]; e.Tag == tag || (e.Tag == "" && e.Version == tag) {
			return e.Version
		}
	}
	return ""
}

// TagOf is the image tag a release was deployed under ("" when none).
func TagOf(history []Entry, version string) string {
	for i := len(history) - 1; i >= 0; i-- {
		if e := history[i]; e.Version == version && e.Tag != "" && e.Result == ResultOK {
			return e.Tag
		}
	}
	return ""
}

// ServiceName is how Swarm names a stack's service: <stack>_<service>.
func ServiceName(stack, service string) string { return stack + "_" + service }
