package deploy

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/carebot/carebot/internal/text"

	"github.com/carebot/carebot/internal/host"
	"github.com/carebot/carebot/internal/shell"
)

// Backup is one archive of the deployment's data folder, kept on the host
// as DEPLOY_PATH/backups/<time>-<version>.tar.gz beside its .sha256.
type Backup struct {
	Name    string // file name, e.g. 20261127T081400Z-v2.tar.gz
	Time    time.Time
	Version string // the release that was serving
	Size    int64
	SHA256  string
}

func (b Backup) String() string {
	return fmt.Sprintf("%s  %-20s %10s  %s", b.Time.Local().Format("2006-01-02 15:04:05"), b.Version, text.Bytes(b.Size), b.Name)
}

const backupTimeLayout = "20060102T150405.000Z" // sorts by time as text

var backupName = regexp.MustCompile(`^(\d{8}T\d{6}\.\d{3}Z)-(.+)\.tar\.gz$`)

func (d *Deployer) backupDir() string { return d.Path + "/backups" }

// Backup archives the data folder under the deploy lock; see snapshot.
// Before the first deploy there is no data and nothing to do.
func (d *Deployer) Backup(ctx context.Context, keep int) (Backup, error) {
	if empty, err := d.dataEmpty(ctx); err != nil || empty {
		if err == nil {
			d.printf("no data in %s/data on %s: nothing to back up\n", d.Path, d.Host)
		}
		return Backup{}, err
	}
	unlock, err := d.Lock(ctx)
	if err != nil {
		return Backup{}, err
	}
	defer unlock()
	b, err := d.snapshot(ctx, "")
	if err != nil || b.Name == "" {
		return b, err
	}
	return b, d.prune(ctx, keep, "")
}

// snapshot takes a consistent copy of DEPLOY_PATH/data (callers check it is
// not empty) and archives it.
//
// Consistency: the service's containers are frozen with `docker pause`
// while the folder is copied (cp -a, at page-cache speed), then resumed
// before the slow part, compressing. Pausing works for any service, not
// only SQLite, and needs nothing inside the image (ours has no shell or
// sqlite3); with every writer frozen, SQLite's database and WAL files are
// copied in one state, which SQLite recovers like a power cut: intact.
// SQLite's online backup API would need the app's help; a pause of a
// fraction of a second is the price of not needing it.
//
// Everything runs as one shell script on the host, so a dropped connection
// still unpauses the service (trap) and leaves no partial archive; the
// archive and its checksum appear only when complete.
func (d *Deployer) snapshot(ctx context.Context, label string) (Backup, error) {
	states, err := d.containers(ctx)
	if err != nil {
		return Backup{}, err
	}
	version := d.serving(states)
	var ids []string // the containers to pause
	for _, s := range states {
		if s.Status == "running" {
			ids = append(ids, s.ID)
		}
	}
	tag := orNone(version)
	if label != "" {
		tag = label + "-" + tag
	}
	name := d.now().UTC().Format(backupTimeLayout) + "-" + safeName(tag) + ".tar.gz"
	script := fmt.Sprintf(`set -e
cd %[1]s
mkdir -p backups
n=%[2]s ids=%[3]s stage=backups/.staging-$$ paused=
if [ -e "backups/$n" ]; then echo "backups/$n exists already" >&2; exit 1; fi
cleanup() { if [ -n "$paused" ]; then docker unpause $ids >/dev/null 2>&1 || true; fi; rm -rf "$stage" "backups/$n.tmp" "backups/$n.sha256.tmp"; }
trap cleanup EXIT
trap 'cleanup; exit 1' HUP INT TERM
if [ -n "$ids" ]; then docker pause $ids >/dev/null; paused=1; fi
cp -a data "$stage"
if [ -n "$paused" ]; then docker unpause $ids >/dev/null; paused=; fi
tar -C "$stage" -czf "backups/$n.tmp" .
sum=$(sha256sum "backups/$n.tmp" | cut -d' ' -f1)
printf '%%s  %%s\n' "$sum" "$n" > "backups/$n.sha256.tmp"
mv "backups/$n.tmp" "backups/$n"
mv "backups/$n.sha256.tmp" "backups/$n.sha256"
echo "$(wc -c < "backups/$n") $sum"`, shell.Quote(d.Path), shell.Quote(name), shell.Quote(strings.Join(ids, " ")))
	start := time.Now()
	out, err := host.Run(ctx, d.Host, script)
	if err != nil {
		return Backup{}, fmt.Errorf("back up %s/data on %s: %w; the data and earlier backups are untouched", d.Path, d.Host, err)
	}
	f := strings.Fields(out)
	if len(f) != 2 {
		return Backup{}, fmt.Errorf("back up %s/data on %s: unexpected output %q", d.Path, d.Host, strings.TrimSpace(out))
	}
	size, _ := strconv.ParseInt(f[0], 10, 64)
	b := Backup{Name: name, Version: tag, Size: size, SHA256: f[1], Time: d.now().UTC()}
	d.printf("backed up %s/data to backups/%s (%s) in %.1fs\n", d.Path, name, text.Bytes(size), time.Since(start).Seconds())
	return b, nil
}

func (d *Deployer) dataEmpty(ctx context.Context) (bool, error) {
	out, err := host.Run(ctx, d.Host, fmt.Sprintf("ls -A %s/data 2>/dev/null | head -n 1", shell.Quote(d.Path)))
	return strings.TrimSpace(out) == "", err
}

// Backups lists the complete backups on the host, oldest first. An archive
// without its checksum file is unfinished and not listed.
func (d *Deployer) Backups(ctx context.Context) ([]Backup, error) {
	out, err := host.Run(ctx, d.Host, fmt.Sprintf(
		`cd %s 2>/dev/null || exit 0; for f in *.tar.gz; do [ -f "$f" ] && [ -f "$f.sha256" ] && echo "$(wc -c < "$f") $(cut -d' ' -f1 "$f.sha256") $f"; done; true`,
		shell.Quote(d.backupDir())))
	if err != nil {
		return nil, fmt.Errorf("list backups on %s: %w", d.Host, err)
	}
	var list []Backup
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) != 3 {
			continue
		}
		m := backupName.FindStringSubmatch(f[2])
		if m == nil {
			continue
		}
		t, _ := time.Parse(backupTimeLayout, m[1])
		size, _ := strconv.ParseInt(f[0], 10, 64)
		list = append(list, Backup{Name: f[2], Time: t, Version: m[2], Size: size, SHA256: f[1]})
	}
	sort.Slice(list, func(i, j int) bool { return list[i].Name < list[j].Name })
	return list, nil
}

// prune removes the oldest backups beyond keep, never the one named spare.
func (d *Deployer) prune(ctx context.Context, keep int, spare string) error {
	if keep < 1 {
		return nil
	}
	list, err := d.Backups(ctx)
	if err != nil {
		return err
	}
	victims := PruneList(list, keep, spare)
	if len(victims) == 0 {
		return nil
	}
	var args []string
	for _, b := range victims {
		args = append(args, shell.Quote(b.Name), shell.Quote(b.Name+".sha256"))
	}
	if _, err := host.Run(ctx, d.Host, "cd "+shell.Quote(d.backupDir())+" && rm -f "+strings.Join(args, " ")); err != nil {
		return fmt.Errorf("remove old backups on %s: %w", d.Host, err)
	}
	d.printf("removed %d old backup(s) beyond BACKUP_KEEP=%d\n", len(victims), keep)
	return nil
}

// PruneList is which backups retention removes: the oldest beyond keep,
// never spare.
func PruneList(list []Backup, keep int, spare string) []Backup {
	var out []Backup
	excess := len(list) - keep
	for _, b := range list {
		if excess <= 0 {
			break
		}
		if b.Name == spare {
			continue
		}
		out = append(out, b)
		excess--
	}
	return out
}

// Find returns the backup called name (a full file name, or its time or
// version part), or the newest when name is empty.
func Find(list []Backup, name string) (Backup, error) {
	if len(list) == 0 {
		return Backup{}, errors.New("there are no backups yet: run mage backup")
	}
	if name == "" {
		return list[len(list)-1], nil
	}
	var found []Backup
	for _, b := range list {
		if b.Name == name || b.Name == name+".tar.gz" || strings.HasPrefix(b.Name, name) {
			found = append(found, b)
		}
	}
	switch len(found) {
	case 0:
		return Backup{}, fmt.Errorf("no backup called %q: mage restore -list shows them", name)
	case 1:
		return found[0], nil
	}
	return Backup{}, fmt.Errorf("%q names %d backups: give more of the name (mage restore -list)", name, len(found))
}

// Verify checks an archive against its checksum and reads it to the end,
// so a corrupt or truncated one is refused before anything is touched.
func (d *Deployer) Verify(ctx context.Context, b Backup) error {
	cmd := fmt.Sprintf("cd %s && sha256sum -c --status %s && tar -tzf %s >/dev/null",
		shell.Quote(d.backupDir()), shell.Quote(b.Name+".sha256"), shell.Quote(b.Name))
	if _, err := host.Run(ctx, d.Host, cmd); err != nil {
		return fmt.Errorf("backup %s on %s is corrupt or truncated (%v); nothing was changed", b.Name, d.Host, err)
	}
	return nil
}

// Restore puts backup name (or the newest) back as the data folder: it
// verifies the archive, takes a safety backup of the current data, stops
// the service, swaps the folders, starts it again and checks health.
func (d *Deployer) Restore(ctx context.Context, name string) (Backup, error) {
	if err := d.Deployed(ctx); err != nil {
		return Backup{}, err
	}
	unlock, err := d.Lock(ctx)
	if err != nil {
		return Backup{}, err
	}
	defer unlock()
	list, err := d.Backups(ctx)
	if err != nil {
		return Backup{}, err
	}
	b, err := Find(list, name)
	if err != nil {
		return Backup{}, err
	}
	if err := d.Verify(ctx, b); err != nil {
		return b, err
	}
	var safety Backup
	if empty, err := d.dataEmpty(ctx); err != nil {
		return b, err
	} else if !empty {
		if safety, err = d.snapshot(ctx, "pre-restore"); err != nil {
			return b, fmt.Errorf("safety backup before restoring: %w", err)
		}
	}
	serving, err := d.Serving(ctx)
	if err != nil {
		return b, err
	}
	if serving != "" {
		if _, err := d.composeRun(ctx, serving, "stop"); err != nil {
			return b, err
		}
	}
	// Extract beside the data first: if that fails (a full disk), the data
	// folder was never touched. The swap itself is two renames, and the old
	// folder stays until the service is healthy with the restored one.
	p := shell.Quote(d.Path)
	swap := fmt.Sprintf(`set -e
cd %[1]s
rm -rf data.restoring data.replaced
mkdir data.restoring
if ! tar -xzf backups/%[2]s -C data.restoring; then rm -rf data.restoring; exit 1; fi
mv data data.replaced
mv data.restoring data`, p, shell.Quote(b.Name))
	ctx = context.WithoutCancel(ctx) // from here the host must not be left half-way
	if _, err := host.Run(ctx, d.Host, swap); err != nil {
		if serving != "" {
			_, _ = d.composeRun(ctx, serving, "up -d")
		}
		return b, fmt.Errorf("restore %s on %s failed (%v); the data folder is as it was", b.Name, d.Host, err)
	}
	if serving != "" {
		if _, err := d.composeRun(ctx, serving, "up -d"); err != nil {
			return b, err
		}
		if _, err := d.waitHealthy(ctx, serving); err != nil {
			cause := text.ErrLine(err)
			undo := fmt.Sprintf("cd %s && rm -rf data.failed && mv data data.failed && mv data.replaced data && rm -rf data.failed", p)
			_, _ = d.composeRun(ctx, serving, "stop")
			if _, uerr := host.Run(ctx, d.Host, undo); uerr == nil {
				if _, uerr = d.composeRun(ctx, serving, "up -d"); uerr == nil {
					if _, uerr = d.waitHealthy(ctx, serving); uerr == nil {
						return b, fmt.Errorf("restored %s but %s was not healthy with it (%s); the data was put back as it was and serves again", b.Name, serving, cause)
					}
				}
				cause += "; with the data put back it is not healthy either: " + text.ErrLine(uerr)
			}
			return b, fmt.Errorf("restored %s but %s is not healthy (%s); the data before the restore is in backups/%s", b.Name, serving, cause, safety.Name)
		}
	}
	if _, err := host.Run(ctx, d.Host, fmt.Sprintf("rm -rf %s/data.replaced", p)); err != nil {
		return b, fmt.Errorf("remove the replaced data folder on %s: %w", d.Host, err)
	}
	d.printf("restored %s (%s) into %s/data; the data before is in backups/%s\n", b.Name, text.Bytes(b.Size), d.Path, orNone(safety.Name))
	return b, nil
}

// Download copies a backup from the host into dir and checks its checksum.
func (d *Deployer) Download(ctx context.Context, b Backup, dir string) (string, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", err
	}
	dst := filepath.Join(dir, b.Name)
	f, err := os.CreateTemp(dir, ".download-*")
	if err != nil {
		return "", err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	h := sha256.New()
	var stderr strings.Builder
	err = d.Host.Exec(ctx, "cat "+shell.Quote(d.backupDir()+"/"+b.Name), nil, io.MultiWriter(f, h), &stderr)
	if err != nil {
		return "", fmt.Errorf("download %s from %s: %v %s", b.Name, d.Host, err, strings.TrimSpace(stderr.String()))
	}
	if got := hex.EncodeToString(h.Sum(nil)); got != b.SHA256 {
		return "", fmt.Errorf("download of %s is corrupt: sha256 %s, the host says %s", b.Name, got, b.SHA256)
	}
	if err := f.Close(); err != nil {
		return "", err
	}
	if err := os.Rename(f.Name(), dst); err != nil {
		return "", err
	}
	sum := fmt.Sprintf("%s  %s\n", b.SHA256, b.Name)
	return dst, os.WriteFile(dst+".sha256", []byte(sum), 0o600)
}

func safeName(s string) string {
	return strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-' {
			return r
		}
		return '_'
	}, s)
}
