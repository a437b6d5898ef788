package tasks

import (
	"context"
	"errors"
	"path/filepath"

	"github.com/carebot/carebot/internal/engine"
	"github.com/carebot/carebot/internal/text"

	"github.com/carebot/carebot/internal/deploy"
)

// Backup archives DEPLOY_PATH/data on the deploy host (consistently: the
// service is paused for the copy), keeps BACKUP_KEEP backups, and with
// download also copies it to ./backups here and checks its checksum. It
// returns the backup ("" name when there was no data yet), for the deploy
// that follows to name in its history.
func (r *Runner) Backup(ctx context.Context, download bool) (deploy.Backup, error) {
	d, err := r.Deployer(ctx)
	if err != nil {
		return deploy.Backup{}, err
	}
	defer r.taskDone(d)
	b, err := d.Backup(ctx, r.Cfg.BackupKeep)
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

// Restore puts a backup (the newest when name is empty) back as the data,
// after a safety backup of the current data; with list it only lists them.
func (r *Runner) Restore(ctx context.Context, name string, list bool) error {
	d, err := r.Deployer(ctx)
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

// Cleanup removes image tags beyond IMAGE_KEEP on the build engine and the
// server (never the serving image or the rollback target), dangling
// images, leftover test containers, and backups beyond BACKUP_KEEP. With
// dryRun it only says what would go.
func (r *Runner) Cleanup(ctx context.Context, dryRun bool) error {
	d, err := r.Deployer(ctx)
	if err != nil {
		return err
	}
	if !dryRun { // not while a deploy of another run loads or switches images
		if err := d.Lock(ctx); err != nil {
			return err
		}
		defer r.taskDone(d)
	}
	protect, err := d.Protected(ctx)
	if err != nil {
		return err
	}
	protect[r.Cfg.ImageTag] = true // what was just built is about to be tested or deployed

	verb := "removed"
	if dryRun {
		verb = "would remove"
	}
	// The build engine through its API, reached as build and test reach it
	// (WSL, sudo); a server's engine through the host's shell. A deploy to
	// this machine uses the build engine.
	e, err := r.Engine(ctx)
	if err != nil {
		return err
	}
	engines := []deploy.Images{e}
	if r.Cfg.Remote() {
		engines = append(engines, deploy.HostImages{Host: d.Host})
	}
	var reclaimed int64
	for _, imgs := range engines {
		n, err := r.cleanEngine(ctx, imgs, protect, dryRun, verb)
		if err != nil {
			return err
		}
		reclaimed += n
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

	old, err := d.PlanBackupCleanup(ctx, r.Cfg.BackupKeep)
	if err != nil {
		return err
	}
	for _, b := range old {
		r.printf("%s backup %s (%s) beyond BACKUP_KEEP=%d\n", verb, b.Name, text.Bytes(b.Size), r.Cfg.BackupKeep)
		reclaimed += b.Size
	}
	if !dryRun && len(old) > 0 {
		if err := d.PruneBackups(ctx, r.Cfg.BackupKeep); err != nil {
			return err
		}
	}
	if dryRun {
		r.printf("dry run: nothing was removed; up to %s would be reclaimed\n", text.Bytes(reclaimed))
	} else {
		r.printf("reclaimed %s\n", text.Bytes(reclaimed))
	}
	return nil
}

// cleanEngine removes old tags and dangling images on one engine and
// returns the bytes reclaimed (measured with docker system df; estimated
// from image sizes in a dry run).
func (r *Runner) cleanEngine(ctx context.Context, imgs deploy.Images, protect map[string]bool, dryRun bool, verb string) (int64, error) {
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
		r.printf("%s %s:%s on %s (%s)\n", verb, name, t.Tag, imgs, text.Bytes(t.Size))
	}
	if len(dangling) > 0 {
		r.printf("%s %d dangling image(s) on %s\n", verb, len(dangling), imgs)
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
