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
	if err := d.Lock(ctx); err != nil {
		return Backup{}, err
	}
	b, err := d.snapshot(ctx, "", "")
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
// It runs as one step on the host (see stepScript): when the run goes
// away (Ctrl-C, kill, a cut link) the host stops it, unpauses the service
// and removes the partial copy by itself; the journal, written before the
// pause, unpauses it even if the step itself is killed. The archive and
// its checksum appear only when complete. Names come from the host's
// clock, so backups sort in the order they were taken there.
func (d *Deployer) snapshot(ctx context.Context, label, version string) (Backup, error) {
	states, err := d.containers(ctx)
	if err != nil {
		return Backup{}, err
	}
	if version == "" { // else the caller knows: it stopped the service
		version = d.serving(states)
	}
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
	idList := shell.Quote(strings.Join(ids, " "))
	undo := fmt.Sprintf("# pausing the service for a backup: unpause it\ndocker unpause %s >/dev/null 2>&1; rm -rf %s/backups/.staging-*; true\n", strings.Join(ids, " "), shell.Quote(d.Path))
	body := fmt.Sprintf(`cd %[1]s && mkdir -p backups || exit 1
ts=$(date -u +%%Y%%m%%dT%%H%%M%%S.%%3NZ)
case "$ts" in *N*) ts=$(date -u +%%Y%%m%%dT%%H%%M%%S).000Z ;; esac
n="$ts-"%[2]s.tar.gz ids=%[3]s stage=backups/.staging-$$ paused= done=
if [ -e "backups/$n" ]; then echo "backups/$n exists already" >&2; exit 1; fi
cleanup() {
	if [ -n "$paused" ]; then docker unpause $ids >/dev/null 2>&1; rm -f "$d/journal"; fi
	rm -rf "$stage" "backups/$n.tmp" "backups/$n.sha256.tmp"
	[ -n "$done" ] || rm -f "backups/$n" "backups/$n.sha256"
}
if [ -n "$ids" ]; then
	printf '%%s' %[4]s > "$d/journal" || exit 1
	paused=1
	docker pause $ids >/dev/null || exit 1
fi
bg cp -a data "$stage" || exit 1
if [ -n "$paused" ]; then docker unpause $ids >/dev/null || exit 1; paused=; rm -f "$d/journal"; fi
bg tar -C "$stage" -czf "backups/$n.tmp" . || exit 1
sum=$(sha256sum "backups/$n.tmp" | cut -d' ' -f1)
printf '%%s  %%s\n' "$sum" "$n" > "backups/$n.sha256.tmp" || exit 1
mv "backups/$n.tmp" "backups/$n" && mv "backups/$n.sha256.tmp" "backups/$n.sha256" || exit 1
done=1
echo "$n $(wc -c < "backups/$n") $sum"`, shell.Quote(d.Path), shell.Quote(safeName(tag)), idList, shell.Quote(undo))
	start := time.Now()
	out, err := d.step(ctx, body, true)
	if err != nil {
		if ctx.Err() != nil {
			return Backup{}, fmt.Errorf("back up %s/data on %s: interrupted; the host stops the backup, unpauses the service and removes the partial copy by itself: the data and earlier backups are untouched", d.Path, d.Host)
		}
		return Backup{}, fmt.Errorf("back up %s/data on %s: %w; the data and earlier backups are untouched", d.Path, d.Host, err)
	}
	f := strings.Fields(out)
	if len(f) != 3 {
		return Backup{}, fmt.Errorf("back up %s/data on %s: unexpected output %q", d.Path, d.Host, strings.TrimSpace(out))
	}
	size, _ := strconv.ParseInt(f[1], 10, 64)
	b := Backup{Name: f[0], Version: tag, Size: size, SHA256: f[2], Time: d.now().UTC()}
	if m := backupName.FindStringSubmatch(f[0]); m != nil {
		b.Time, _ = time.Parse(backupTimeLayout, m[1])
	}
	d.printf("backed up %s/data to backups/%s (%s) in %.1fs\n", d.Path, b.Name, text.Bytes(size), time.Since(start).Seconds())
	return b, nil
}

// dataEmpty reports whether the data folder is missing or empty; one that
// cannot be read is an error, not "nothing to back up".
func (d *Deployer) dataEmpty(ctx context.Context) (bool, error) {
	out, err := host.Run(ctx, d.Host, fmt.Sprintf(`cd %s 2>/dev/null && [ -e data ] || { echo empty; exit 0; }
l=$(ls -A data) || exit 1
if [ -n "$l" ]; then echo data; else echo empty; fi`, shell.Quote(d.Path)))
	if err != nil {
		return false, fmt.Errorf("read %s/data on %s: %w", d.Path, d.Host, err)
	}
	return strings.TrimSpace(out) == "empty", nil
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

// Restore puts backup name (or the newest) back as the data folder and
// checks health: RestoreData, then ConfirmRestore once the release that
// served answers HEALTH_PATH with its version again, else UndoRestore.
func (d *Deployer) Restore(ctx context.Context, name string) (Backup, error) {
	rs, err := d.RestoreData(ctx, name, "", "")
	if err != nil {
		return rs.Backup, err
	}
	if rs.Serving != "" {
		if _, err := d.waitHealthy(ctx, rs.Serving); err != nil {
			return rs.Backup, d.UndoRestore(ctx, rs, err)
		}
	}
	return rs.Backup, d.ConfirmRestore(ctx, rs)
}

// Restoring is a restore whose data is in place and whose containers run
// again, not confirmed yet: the journal still puts the data before it
// back should the run go away.
type Restoring struct {
	Backup  Backup // what was restored
	Safety  Backup // the data before it ("" name when there were none)
	Serving string // the release that served before, "" when none ran
	undo    string
	names   []string // the containers started again
}

// RestoreData verifies the archive, stops every container that uses the
// data folder (whatever its image or state, paused included), takes a
// safety backup of the data as they stopped it, swaps the folders and
// starts them again. serving is the release the data belong to ("": the
// one the deployment's containers run); after is appended to the journal's
// undo, to run once the data before it are back.
//
// The journal, written before the first stop, puts the data before it
// back and starts those containers again: the host runs it when the run
// goes away before the restore is confirmed. On a swarm node (Stack set)
// Swarm, not this host, starts the tasks: the journal stops whatever uses
// the data when it runs (a task Swarm started meanwhile) before putting
// the data back, and Swarm starts it again on them.
func (d *Deployer) RestoreData(ctx context.Context, name, serving, after string) (*Restoring, error) {
	rs := &Restoring{}
	if d.Stack == "" {
		if err := d.Deployed(ctx); err != nil {
			return rs, err
		}
	}
	if err := d.Lock(ctx); err != nil {
		return rs, err
	}
	list, err := d.Backups(ctx)
	if err != nil {
		return rs, err
	}
	b, err := Find(list, name)
	if err != nil {
		return rs, err
	}
	rs.Backup = b
	if err := d.Verify(ctx, b); err != nil {
		return rs, err
	}
	if serving == "" {
		if serving, err = d.Serving(ctx); err != nil {
			return rs, err
		}
	}
	rs.Serving = serving
	users, err := d.dataUsers(ctx)
	if err != nil {
		return rs, err
	}
	var ids []string // the containers to start again
	for _, u := range users {
		if u.Status == "running" || u.Status == "paused" || u.Status == "restarting" {
			ids = append(ids, u.ID)
			rs.names = append(rs.names, u.Name)
		}
	}
	names := orNone(strings.Join(rs.names, ", "))
	p := shell.Quote(d.Path)
	start := "true"
	if len(ids) > 0 {
		start = "docker start " + strings.Join(ids, " ") + " >/dev/null"
	}
	stop := stopCmd(ids)
	if d.Stack != "" {
		stop = "(" + d.dataUsersCmd("ps -q --no-trunc") + "\n" + `[ -z "$ids" ] || docker stop $ids >/dev/null) || exit 1`
	}
	rs.undo = fmt.Sprintf(`cd %[1]s || exit 1
%[2]s
if [ -d data.replaced ]; then rm -rf data.failed; if [ -d data ]; then mv data data.failed; fi; mv data.replaced data || exit 1; rm -rf data.failed; fi
rm -rf data.restoring
%[3]s
%[4]s`, p, stop, start, after)
	if err := d.intend(ctx, "restoring "+b.Name+": put the data before it back and start what used it", rs.undo, 0); err != nil {
		return rs, err
	}
	if len(ids) > 0 {
		d.printf("stopping %s (using %s/data)\n", names, d.Path)
		if _, err := d.step(ctx, stopCmd(ids)+" || { "+start+"; exit 1; }", false); err != nil {
			_ = d.settle(ctx)
			return rs, fmt.Errorf("restore %s on %s: could not stop every container that uses %s/data (%s): %w; they run as before and nothing was changed", b.Name, d.Host, d.Path, names, err)
		}
	}
	// A run that goes away from here on leaves the rest to the host, which
	// runs the journal: say so instead of undoing it twice.
	fail := func(err error, format string, a ...any) (*Restoring, error) {
		if d.gone(ctx) {
			return rs, d.leftToHost(rs, err)
		}
		d.undoRestore(ctx, rs.undo)
		if format == "" {
			return rs, err
		}
		return rs, fmt.Errorf(format, a...)
	}
	if empty, err := d.dataEmpty(ctx); err != nil {
		return fail(err, "")
	} else if !empty {
		if rs.Safety, err = d.snapshot(ctx, "pre-restore", serving); err != nil {
			return fail(err, "safety backup before restoring: %w", err)
		}
	}
	// Extract beside the data first: if that fails (a full disk), the data
	// folder was never touched. The swap itself is two renames, and the old
	// folder stays until the restored data are confirmed.
	swap := fmt.Sprintf(`cd %[1]s || exit 1
rm -rf data.restoring data.replaced
mkdir data.restoring || exit 1
cleanup() { [ -n "$swapped" ] || rm -rf data.restoring; }
swapped=
bg tar -xzf backups/%[2]s -C data.restoring || exit 1
mv data data.replaced && mv data.restoring data || { [ -d data ] || mv data.replaced data; exit 1; }
swapped=1`, p, shell.Quote(b.Name))
	if _, err := d.step(ctx, swap, true); err != nil {
		return fail(err, "restore %s on %s failed (%s); the data folder is as it was and %s runs again", b.Name, d.Host, text.ErrLine(err), names)
	}
	if len(ids) > 0 {
		if _, err := d.step(ctx, start, false); err != nil {
			return fail(err, "restore %s on %s: start %s again: %w; the data before it was put back", b.Name, d.Host, names, err)
		}
	}
	return rs, nil
}

// gone says whether the run went away (interrupted, or its lock lost).
func (d *Deployer) gone(ctx context.Context) bool { return ctx.Err() != nil || !d.held() }

// leftToHost gives an unconfirmed restore up to the host's journal.
func (d *Deployer) leftToHost(rs *Restoring, err error) error {
	d.Abandon()
	return fmt.Errorf("restore %s on %s interrupted (%s): the host puts the data before it back and starts %s again by itself",
		rs.Backup.Name, d.Host, text.ErrLine(err), orNone(strings.Join(rs.names, ", ")))
}

// ConfirmRestore keeps the restored data: the folder it replaced goes, and
// the journal with it.
func (d *Deployer) ConfirmRestore(ctx context.Context, rs *Restoring) error {
	if _, err := host.Run(context.WithoutCancel(ctx), d.Host, fmt.Sprintf("rm -rf %s/data.replaced", shell.Quote(d.Path))); err != nil {
		return fmt.Errorf("remove the replaced data folder on %s: %w", d.Host, err)
	}
	if err := d.settle(ctx); err != nil {
		return err
	}
	d.printf("restored %s (%s) into %s/data; the data before is in backups/%s\n", rs.Backup.Name, text.Bytes(rs.Backup.Size), d.Path, orNone(rs.Safety.Name))
	return nil
}

// UndoRestore puts the data before the restore back because the release
// was not healthy with the restored data (cause), checks it is with the
// old where this host starts it, and returns the error that says so.
func (d *Deployer) UndoRestore(ctx context.Context, rs *Restoring, cause error) error {
	if d.gone(ctx) {
		return d.leftToHost(rs, cause)
	}
	why, b, safety := text.ErrLine(cause), rs.Backup, orNone(rs.Safety.Name)
	if err := d.undoRestore(ctx, rs.undo); err != nil {
		return fmt.Errorf("restored %s but %s is not healthy (%s; putting the data back failed: %s); the data before the restore is in backups/%s", b.Name, orNone(rs.Serving), why, text.ErrLine(err), safety)
	}
	if rs.Serving != "" && len(rs.names) > 0 {
		if _, err := d.waitHealthy(context.WithoutCancel(ctx), rs.Serving); err != nil {
			return fmt.Errorf("restored %s but %s is not healthy (%s; with the data put back it is not healthy either: %s); the data before the restore is in backups/%s", b.Name, rs.Serving, why, text.ErrLine(err), safety)
		}
	}
	return fmt.Errorf("restored %s but %s was not healthy with it (%s); the data was put back as it was and serves again", b.Name, orNone(rs.Serving), why)
}

// undoRestore runs a restore's journal now, from this run, and settles it.
func (d *Deployer) undoRestore(ctx context.Context, undo string) error {
	ctx = context.WithoutCancel(ctx)
	if _, err := d.step(ctx, undo, false); err != nil {
		return err
	}
	return d.settle(ctx)
}

// stopCmd stops containers, unpausing the paused ones first (a frozen
// process cannot handle the stop signal).
func stopCmd(ids []string) string {
	if len(ids) == 0 {
		return "true"
	}
	l := strings.Join(ids, " ")
	return fmt.Sprintf(`for c in %s; do [ "$(docker inspect --format '{{.State.Paused}}' $c 2>/dev/null)" = true ] && docker unpause $c >/dev/null; done; docker stop %s >/dev/null`, l, l)
}

// DataUser is a container that mounts the deployment's data folder.
type DataUser struct{ ID, Name, Status string }

// dataUsers lists every container, of any image or state, that mounts
// DEPLOY_PATH/data (by its path, or the path with symlinks resolved).
func (d *Deployer) dataUsers(ctx context.Context) ([]DataUser, error) {
	cmd := d.dataUsersCmd("ps -aq --no-trunc") + `
[ -z "$ids" ] || docker inspect --format '{{.Id}} {{.Name}} {{.State.Status}}' $ids`
	out, err := host.Run(ctx, d.Host, cmd)
	if err != nil {
		return nil, fmt.Errorf("list the containers that use %s/data on %s: %w", d.Path, d.Host, err)
	}
	var users []DataUser
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) == 3 {
			users = append(users, DataUser{ID: f[0], Name: strings.TrimPrefix(f[1], "/"), Status: f[2]})
		}
	}
	return users, nil
}

// dataUsersCmd sets ids to what `docker <ps>` lists of the containers
// that mount DEPLOY_PATH/data (by its path, or the path with symlinks
// resolved; none when there is no data folder). It changes directory.
func (d *Deployer) dataUsersCmd(ps string) string {
	return fmt.Sprintf(`ids=
if cd %s/data 2>/dev/null; then a=$(pwd -L) b=$(pwd -P); cd /; ids=$(docker %s --filter "volume=$a" --filter "volume=$b") || exit 1; fi`, shell.Quote(d.Path), ps)
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
