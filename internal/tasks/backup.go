package tasks

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"path/filepath"

	"github.com/carebot/carebot/internal/engine"
	"github.com/carebot/carebot/internal/text"

	"github.com/carebot/carebot/internal/deploy"
	"github.com/carebot/carebot/internal/fleet"
)

// Backup archives DEPLOY_PATH/data on the deploy host (consistently: the
// service is paused for the copy), keeps BACKUP_KEEP backups, and with
// download also copies it to ./backups here and checks its checksum. It
// returns the backup ("" name when there was no data yet), for the deploy
// that follows to name in its history.
func (r *Runner) Backup(ctx context.Context, download bool) (deploy.Backup, error) {
	var d *deploy.Deployer
	var err error
	switch {
	case r.swarmMode() && !download && r.Host == "":
		return deploy.Backup{}, r.swarmBackup(ctx)
	case r.swarmMode():
		d, err = r.swarmDataNode(ctx)
	case r.Several() && download && r.Host == "":
		return deploy.Backup{}, fmt.Errorf("backup -download copies one server's backup: choose it with -host (one of %s)", targetList(r.Cfg.Targets))
	case r.Several() && r.Host == "":
		return deploy.Backup{}, r.backupEach(ctx)
	default:
		d, err = r.Deployer(ctx)
	}
	if err != nil {
		return deploy.Backup{}, err
	}
	defer r.taskDone(d)
	b, err := d.Backup(ctx, r.Cfg.BackupKeep)
	r.tookBackup(d, b.Name)
	if err != nil || b.Name == "" || !download {
		return b, err
	}
	dst, err := d.Download(ctx, b, filepath.Join(r.Cfg.Dir, "backups"))
	if err != nil {
		return b, err
	}
	r.printf("copied it to %s (sha256 checked)\n", dst)
	return b, nil
}

// backupEach backs up every server at once; a failure on one fails the
// task, so the deploy after it does not start.
func (r *Runner) backupEach(ctx context.Context) error {
	deps, err := r.Deployers(ctx)
	if err != nil {
		return err
	}
	return fleet.Each(deps, func(d *deploy.Deployer) error {
		defer r.taskDone(d)
		b, err := d.Backup(ctx, r.Cfg.BackupKeep)
		r.tookBackup(d, b.Name)
		return err
	})
}

// tookBackup remembers the backup taken on d, for the history of the
// deploy that follows in this run.
func (r *Runner) tookBackup(d *deploy.Deployer, name string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.backups == nil {
		r.backups = map[string]string{}
	}
	r.backups[d.Host.String()] = name
}

func (r *Runner) backupOn(d *deploy.Deployer) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.backups[d.Host.String()]
}

// Restore puts a backup (the newest when name is empty) back as the data,
// after a safety backup of the current data; with list it only lists them.
func (r *Runner) Restore(ctx context.Context, name string, list bool) error {
	if r.swarmMode() && !list {
		return r.swarmRestore(ctx, name)
	}
	var d *deploy.Deployer
	var err error
	if r.swarmMode() {
		d, err = r.swarmDataNode(ctx)
	} else {
		d, err = r.Deployer(ctx)
	}
	if err != nil {
		return err
	}
	if list {
		backups, err := d.Backups(ctx)
		if err != nil {
			return err
		}
		if len(backups) == 0 {
			r.printf("no backups in %s/backups on %s\n", d.Path, d.Host)
		}
		for _, b := range backups {
			r.printf("%s\n", b)
		}
		return nil
	}
	defer r.taskDone(d)
	_, err = d.Restore(ctx, name)
	return err
}

// Cleanup removes image tags beyond IMAGE_KEEP on the build engine and
// each server (never an image a server serves or would roll back to),
// dangling images, leftover test containers, and backups beyond
// BACKUP_KEEP. With dryRun it only says what would go.
func (r *Runner) Cleanup(ctx context.Context, dryRun bool) error {
	if r.swarmMode() {
		return r.swarmCleanup(ctx, dryRun)
	}
	deps, err := r.Deployers(ctx)
	if err != nil {
		return err
	}
	verb := "removed"
	if dryRun {
		verb = "would remove"
	}
	// What any server serves or would roll back to stays everywhere: the
	// build engine is where a redeploy of it would come from.
	protect := map[string]bool{r.Cfg.ImageTag: true} // what was just built is about to be tested or deployed
	deps, err = deployed(ctx, deps)
	if err != nil {
		return err
	}
	for _, d := range deps {
		if !dryRun { // not while a deploy of another run loads or switches images
			if err := d.Lock(ctx); err != nil {
				return err
			}
			defer r.taskDone(d)
		}
		p, err := d.Protected(ctx)
		if err != nil {
			return err
		}
		maps.Copy(protect, p)
	}

	// The build engine through its API, reached as build and test reach it
	// (WSL, sudo); a server's engine through the host's shell. A deploy to
	// this machine uses the build engine.
	e, err := r.Engine(ctx)
	if err != nil {
		return err
	}
	reclaimed, err := r.cleanEngine(ctx, r.Out, e, protect, dryRun, verb)
	if err != nil {
		return err
	}

	// This project's test container, left by test -keep (only when it
	// carries our label: a container of that name we did not start stays).
	ct, err := e.Container(ctx, r.testContainer())
	switch {
	case errors.Is(err, engine.ErrNotFound):
	case err != nil:
		return err
	case ct.Labels[roleLabel] == "test":
		r.printf("%s the leftover test container %s\n", verb, r.testContainer())
		if !dryRun {
			if err := e.Remove(ctx, ct.ID); err != nil {
				return err
			}
		}
	}

	n, err := r.cleanBuildCache(ctx, e, dryRun, verb)
	if err != nil {
		return err
	}
	reclaimed += n

	for _, d := range deps {
		n, err := r.cleanServer(ctx, d, protect, dryRun, verb, r.Cfg.Remote())
		reclaimed += n
		if err != nil {
			return err
		}
	}
	r.reclaimed(dryRun, reclaimed)
	return nil
}

// reclaimed says how much a cleanup freed, or would have.
func (r *Runner) reclaimed(dryRun bool, n int64) {
	if dryRun {
		r.printf("dry run: nothing was removed; up to %s would be reclaimed\n", text.Bytes(n))
	} else {
		r.printf("reclaimed %s\n", text.Bytes(n))
	}
}

// cleanServer removes a server's old image tags (with images: when it is
// not the build engine) and its backups beyond BACKUP_KEEP.
func (r *Runner) cleanServer(ctx context.Context, d *deploy.Deployer, protect map[string]bool, dryRun bool, verb string, images bool) (int64, error) {
	var reclaimed int64
	if images {
		n, err := r.cleanEngine(ctx, d.Out, deploy.HostImages{Host: d.Host}, protect, dryRun, verb)
		if err != nil {
			return 0, err
		}
		reclaimed += n
	}
	old, err := d.PlanBackupCleanup(ctx, r.Cfg.BackupKeep)
	if err != nil {
		return reclaimed, err
	}
	for _, b := range old {
		fmt.Fprintf(d.Out, "%s backup %s (%s) beyond BACKUP_KEEP=%d\n", verb, b.Name, text.Bytes(b.Size), r.Cfg.BackupKeep)
		reclaimed += b.Size
	}
	if !dryRun && len(old) > 0 {
		if err := d.PruneBackups(ctx, r.Cfg.BackupKeep); err != nil {
			return reclaimed, err
		}
	}
	return reclaimed, nil
}

// deployed leaves out the deploy hosts whose deploy folder does not exist
// yet (a cleanup before the first deploy cleans the build engine), saying
// so; where it does, cleanup takes its lock as before.
func deployed(ctx context.Context, deps []*deploy.Deployer) ([]*deploy.Deployer, error) {
	var l []*deploy.Deployer
	for _, d := range deps {
		missing, err := d.Missing(ctx)
		if err != nil {
			return nil, err
		}
		if missing {
			fmt.Fprintf(d.Out, "nothing deployed at %s on %s yet: nothing to clean there\n", d.Path, d.Host)
			continue
		}
		l = append(l, d)
	}
	return l, nil
}

// cleanBuildCache prunes the build engine's build cache down to
// BUILD_CACHE_KEEP: a cache mount or a layer used least recently goes first,
// so the next build of this project still finds what it used last.
func (r *Runner) cleanBuildCache(ctx context.Context, e *engine.Engine, dryRun bool, verb string) (int64, error) {
	size, err := e.BuildCacheSize(ctx)
	if err != nil {
		return 0, err
	}
	keep := r.Cfg.BuildCacheKeep
	if size <= keep {
		r.printf("build cache on %s: %s, within BUILD_CACHE_KEEP=%s\n", e, text.Bytes(size), text.Bytes(keep))
		return 0, nil
	}
	if dryRun {
		r.printf("%s build cache on %s: %s of %s, down to BUILD_CACHE_KEEP=%s\n", verb, e, text.Bytes(size-keep), text.Bytes(size), text.Bytes(keep))
		return size - keep, nil
	}
	n, err := e.PruneBuildCache(ctx, keep)
	if err != nil {
		return 0, err
	}
	r.printf("%s build cache on %s: %s (it was %s; BUILD_CACHE_KEEP=%s)\n", verb, e, text.Bytes(n), text.Bytes(size), text.Bytes(keep))
	return n, nil
}

// cleanEngine removes old tags and dangling images on one engine and
// returns the bytes reclaimed (measured with docker system df; estimated
// from image sizes in a dry run).
func (r *Runner) cleanEngine(ctx context.Context, out io.Writer, imgs deploy.Images, protect map[string]bool, dryRun bool, verb string) (int64, error) {
	name := r.Cfg.ImageName
	tags, err := imgs.Tags(ctx, name)
	if err != nil {
		return 0, err
	}
	inUse, err := imgs.ImagesInUse(ctx)
	if err != nil {
		return 0, err
	}
	remove := deploy.PlanTagCleanup(tags, r.Cfg.ImageKeep, protect, inUse)
	dangling, err := imgs.DanglingImages(ctx)
	if err != nil {
		return 0, err
	}
	for _, t := range remove {
		fmt.Fprintf(out, "%s %s:%s on %s (%s)\n", verb, name, t.Tag, imgs, text.Bytes(t.Size))
	}
	if len(dangling) > 0 {
		fmt.Fprintf(out, "%s %d dangling image(s) on %s\n", verb, len(dangling), imgs)
	}
	if dryRun {
		var est int64
		for _, t := range remove {
			est += t.Size
		}
		return est, nil
	}
	before, err := imgs.ImageDiskUsage(ctx)
	if err != nil {
		return 0, err
	}
	if err := imgs.RemoveTags(ctx, name, remove); err != nil {
		return 0, err
	}
	if err := imgs.PruneDangling(ctx); err != nil {
		return 0, err
	}
	after, err := imgs.ImageDiskUsage(ctx)
	if err != nil {
		return 0, err
	}
	if before > after {
		return before - after, nil
	}
	return 0, nil
}
