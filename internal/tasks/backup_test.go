package tasks

import (
	"archive/tar"
	"compress/gzip"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	_ "modernc.org/sqlite"

	"github.com/carebot/carebot/internal/deploy"
	"github.com/carebot/carebot/internal/testenv"
)

// deployment is a project deployed to one kind of host: this machine, or
// the SSH test server. Both keep their deploy folder on this machine's
// disk, so the tests can look at the files directly.
type deployment interface {
	runner(tag string, extra ...string) *Runner
	buildTag(tag string, args map[string]string)
	deployPath() string
	appURL(path string) string
	setEnv(key, value string)
	// service is the service's container and the DOCKER_HOST of its
	// engine ("" for this machine's).
	service() (dockerHost, container string)
}

func (p *project) buildTag(tag string, args map[string]string) { p.build(tag, args) }
func (p *project) deployPath() string                          { return p.env["DEPLOY_PATH"] }
func (p *project) appURL(path string) string                   { return p.url(path) }
func (p *project) setEnv(k, v string)                          { p.env[k] = v }
func (p *project) service() (string, string)                   { return "", p.container }

func (p *remoteProject) buildTag(tag string, args map[string]string) { p.release(tag, args) }
func (p *remoteProject) deployPath() string                          { return p.env["DEPLOY_PATH"] }
func (p *remoteProject) appURL(path string) string                   { return "http://127.0.0.1:" + p.appPort + path }
func (p *remoteProject) setEnv(k, v string)                          { p.env[k] = v }
func (p *remoteProject) service() (string, string) {
	return testenv.ServerDockerHost, p.container
}

// onBothHosts runs test against a deployment of v1 on this machine, made by
// Debian's Compose v1, and on the SSH test server, made by Compose v2 (what
// servers run): subtests local/compose=v1 and ssh/compose=v2. Every test
// that uses it so meets both flavours once; the end-to-end deploy test runs
// each flavour over SSH too.
func onBothHosts(t *testing.T, name string, test func(t *testing.T, d deployment)) {
	for _, kind := range []struct{ host, compose string }{{"local", "v1"}, {"ssh", "v2"}} {
		t.Run(kind.host+"/compose="+kind.compose, func(t *testing.T) {
			c := testenv.NewCompose(t, kind.compose)
			var d deployment
			if kind.host == "local" {
				testenv.NeedEngine(t)
				d = newComposeProject(t, name+"-local", c)
			} else {
				p := newRemoteProject(t, name+"-ssh-"+c.Name, c)
				p.createServerEnv()
				d = p
			}
			d.buildTag("v1", nil)
			if err := d.runner("v1").Deploy(context.Background()); err != nil {
				t.Fatal(err)
			}
			engine, container := d.service()
			c.CheckMadeBy(t, engine, container)
			test(t, d)
		})
	}
}

func postRecord(t testing.TB, d deployment, body string) {
	t.Helper()
	resp, err := http.Post(d.appURL("/api/records"), "text/plain", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("POST /api/records: HTTP %d", resp.StatusCode)
	}
}

func recordCount(t testing.TB, d deployment) int {
	t.Helper()
	resp, err := http.Get(d.appURL("/api/records"))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var rec struct{ Count int }
	json.NewDecoder(resp.Body).Decode(&rec)
	return rec.Count
}

// tree hashes every file under dir by its relative path.
func tree(t testing.TB, dir string) map[string]string {
	t.Helper()
	sums := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, e fs.DirEntry, err error) error {
		if err != nil || !e.Type().IsRegular() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		h := sha256.Sum256(b)
		sums[rel] = hex.EncodeToString(h[:])
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return sums
}

func backups(t testing.TB, d deployment) []deploy.Backup {
	t.Helper()
	r := d.runner("v1")
	dep, err := r.Deployer(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer dep.Host.Close()
	list, err := dep.Backups(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return list
}

func compose(t testing.TB, d deployment, args string) {
	t.Helper()
	dep, err := d.runner("v1").Deployer(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer dep.Host.Close()
	if out, err := dep.ComposeOutput(context.Background(), args); err != nil {
		t.Fatalf("compose %s: %v\n%s", args, err, out)
	}
}

func TestBackupRestoreRoundTrip(t *testing.T) {
	onBothHosts(t, "roundtrip", func(t *testing.T, d deployment) {
		ctx := context.Background()
		for i := 0; i < 3; i++ {
			postRecord(t, d, fmt.Sprint("record ", i))
		}
		data := filepath.Join(d.deployPath(), "data")
		blob := make([]byte, 1<<20)
		rand.Read(blob)
		os.WriteFile(filepath.Join(data, "blob.bin"), blob, 0o640)

		// With the service stopped nothing writes, so the bytes can be compared.
		compose(t, d, "stop")
		before := tree(t, data)
		b, err := d.runner("v1").Backup(ctx, true)
		if err != nil {
			t.Fatal(err)
		}
		// Downloaded into the project's backups folder: this repository's,
		// for a local deployment.
		download := filepath.Join(d.runner("v1").Cfg.Dir, "backups", b.Name)
		t.Cleanup(func() { os.Remove(download); os.Remove(download + ".sha256") })
		sum, err := os.ReadFile(download + ".sha256")
		if err != nil || !strings.HasPrefix(string(sum), b.SHA256) {
			t.Fatalf("downloaded checksum %q, %v; want %s", sum, err, b.SHA256)
		}

		os.Remove(filepath.Join(data, "blob.bin"))
		os.WriteFile(filepath.Join(data, "carebot.db"), []byte("garbage"), 0o644)
		os.WriteFile(filepath.Join(data, "extra"), []byte("not in the backup"), 0o644)
		if err := d.runner("v1").Restore(ctx, b.Name, false); err != nil {
			t.Fatal(err)
		}
		after := tree(t, data)
		if fmt.Sprint(after) != fmt.Sprint(before) {
			t.Fatalf("restored data differs:\nbefore %v\nafter  %v", before, after)
		}
		// A safety backup of the damaged data was taken first.
		list := backups(t, d)
		if len(list) != 2 || !strings.Contains(list[1].Name, "pre-restore") {
			t.Fatalf("backups after restore: %v", list)
		}

		// The service comes back with the restored records.
		compose(t, d, "start")
		waitRecords(t, d, 3)
	})
}

// TestBackupWhileWritingIsConsistent takes backups while a client writes
// records without pause. Each backup must have been taken while writes
// were under way (one was waiting on the frozen service while the data was
// copied), hold every record acknowledged before the pause and none sent
// after it ended, and pass SQLite's integrity check.
func TestBackupWhileWritingIsConsistent(t *testing.T) {
	onBothHosts(t, "live", func(t *testing.T, d deployment) {
		ctx := context.Background()
		w := startWriter(d)
		defer w.stop()
		w.waitFor(t, 1) // the writer runs
		var taken []deploy.Backup
		last := 0
		for i := 0; i < 3; i++ {
			from := time.Now()
			b, err := d.runner("v1").Backup(ctx, false)
			if err != nil {
				t.Fatal(err)
			}
			pause, unpause := pauseWindow(t, d, from, time.Now())
			taken = append(taken, b)
			n := checkArchive(t, filepath.Join(d.deployPath(), "backups", b.Name))
			acked, sent, held := w.around(pause, unpause)
			t.Logf("%s: %d records; %d writes acknowledged before the pause, %d sent before it ended, %d under way during it (%v)",
				b.Name, n, acked, sent, held, unpause.Sub(pause).Round(time.Millisecond))
			if held == 0 {
				t.Errorf("%s: no write was under way while the service was paused for the copy", b.Name)
			}
			if n < acked || n > sent {
				t.Errorf("%s holds %d records, want %d..%d (acknowledged before the pause .. sent before it ended)", b.Name, n, acked, sent)
			}
			if n < last {
				t.Errorf("%s holds %d records, fewer than the backup before it (%d)", b.Name, n, last)
			}
			last = n
			w.waitFor(t, w.count()+1) // the next backup sees new writes
		}
		written := w.stop()
		// The service was unpaused after every backup and kept every write.
		if n := recordCount(t, d); n < written {
			t.Errorf("service has %d records, %d were acknowledged", n, written)
		}
		// Restoring the last one under the running service brings its count back.
		if err := d.runner("v1").Restore(ctx, taken[2].Name, false); err != nil {
			t.Fatal(err)
		}
		if n := recordCount(t, d); n != last {
			t.Errorf("after restoring %s: %d records, want %d", taken[2].Name, n, last)
		}
	})
}

// writer posts records to a deployment one after the other until stopped,
// and remembers when each acknowledged one was sent and answered.
type writer struct {
	mu     sync.Mutex
	writes []timedWrite
	done   chan struct{}
	ended  chan struct{}
	once   sync.Once
}

type timedWrite struct{ sent, answered time.Time }

func startWriter(d deployment) *writer {
	w := &writer{done: make(chan struct{}), ended: make(chan struct{})}
	go func() {
		defer close(w.ended)
		body := strings.Repeat("x", 4096)
		for {
			select {
			case <-w.done:
				return
			default:
			}
			// A steady writer, not a load test: flat out, it starves the
			// backup it is there to watch of CPU. Every pause for a copy
			// lasts far longer than this.
			time.Sleep(5 * time.Millisecond)
			sent := time.Now()
			resp, err := http.Post(d.appURL("/api/records"), "text/plain", strings.NewReader(body))
			if err != nil {
				continue
			}
			resp.Body.Close()
			if resp.StatusCode == http.StatusCreated {
				w.mu.Lock()
				w.writes = append(w.writes, timedWrite{sent, time.Now()})
				w.mu.Unlock()
			}
		}
	}()
	return w
}

// stop ends the writer, waits for its last request, and returns how many
// writes were acknowledged.
func (w *writer) stop() int {
	w.once.Do(func() { close(w.done) })
	<-w.ended
	return w.count()
}

func (w *writer) count() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.writes)
}

// waitFor waits until n writes have been acknowledged.
func (w *writer) waitFor(t testing.TB, n int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for w.count() < n {
		if time.Now().After(deadline) {
			t.Fatalf("the service acknowledged %d writes in 30s, want %d", w.count(), n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// around counts the acknowledged writes answered before pause, those sent
// before unpause, and those under way while paused (sent before unpause,
// answered after pause: a paused service answers nothing, so they waited).
func (w *writer) around(pause, unpause time.Time) (acked, sent, held int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	for _, x := range w.writes {
		if x.answered.Before(pause) {
			acked++
		}
		if x.sent.Before(unpause) {
			sent++
			if x.answered.After(pause) {
				held++
			}
		}
	}
	return acked, sent, held
}

// pauseWindow is when the backup between from and to paused the service's
// container and resumed it, as its engine recorded them.
func pauseWindow(t testing.TB, d deployment, from, to time.Time) (pause, unpause time.Time) {
	t.Helper()
	engine, container := d.service()
	args := []string{"events", "--since", unixNano(from), "--until", unixNano(to),
		"--filter", "container=" + container, "--filter", "event=pause", "--filter", "event=unpause",
		"--format", "{{.Action}} {{.TimeNano}}"}
	if engine != "" {
		args = append([]string{"-H", engine}, args...)
	}
	out, err := exec.Command("docker", args...).CombinedOutput()
	if err != nil {
		t.Fatalf("docker events: %v %s", err, out)
	}
	var events []string
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		action, nano, ok := strings.Cut(line, " ")
		n, err := strconv.ParseInt(nano, 10, 64)
		if !ok || err != nil {
			continue
		}
		events = append(events, action)
		switch action {
		case "pause":
			pause = time.Unix(0, n)
		case "unpause":
			unpause = time.Unix(0, n)
		}
	}
	if fmt.Sprint(events) != "[pause unpause]" {
		t.Fatalf("the engine recorded %v for %s during the backup, want one pause and one unpause", events, container)
	}
	return pause, unpause
}

func unixNano(t time.Time) string {
	return fmt.Sprintf("%d.%09d", t.Unix(), t.Nanosecond())
}

// checkArchive extracts a backup and checks its database with SQLite's own
// integrity check; it returns the number of records.
func checkArchive(t testing.TB, archive string) int {
	t.Helper()
	dir := t.TempDir()
	f, err := os.Open(archive)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	tr := tar.NewReader(zr)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if h.Typeflag != tar.TypeReg {
			continue
		}
		p := filepath.Join(dir, filepath.Clean(h.Name))
		os.MkdirAll(filepath.Dir(p), 0o755)
		out, _ := os.Create(p)
		io.Copy(out, tr)
		out.Close()
	}
	db, err := sql.Open("sqlite", filepath.Join(dir, "carebot.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var check string
	if err := db.QueryRow("PRAGMA integrity_check").Scan(&check); err != nil || check != "ok" {
		t.Fatalf("%s: integrity_check = %q, %v", filepath.Base(archive), check, err)
	}
	var n int
	if err := db.QueryRow("SELECT count(*) FROM records").Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestBackupRetentionAndCorruptRestore(t *testing.T) {
	onBothHosts(t, "retain", func(t *testing.T, d deployment) {
		ctx := context.Background()
		postRecord(t, d, "one")
		d.setEnv("BACKUP_KEEP", "3")
		var names []string
		for i := 0; i < 5; i++ {
			b, err := d.runner("v1").Backup(ctx, false)
			if err != nil {
				t.Fatal(err)
			}
			names = append(names, b.Name)
		}
		list := backups(t, d)
		if len(list) != 3 || list[0].Name != names[2] || list[2].Name != names[4] {
			t.Fatalf("after 5 backups with BACKUP_KEEP=3: %v, want the newest 3 of %v", list, names)
		}

		// A truncated archive is refused before anything is touched.
		data := filepath.Join(d.deployPath(), "data")
		postRecord(t, d, "two")
		victim := filepath.Join(d.deployPath(), "backups", list[1].Name)
		st, _ := os.Stat(victim)
		os.Truncate(victim, st.Size()/2)
		err := d.runner("v1").Restore(ctx, list[1].Name, false)
		if err == nil || !strings.Contains(err.Error(), "corrupt or truncated") || !strings.Contains(err.Error(), "nothing was changed") {
			t.Fatalf("restore of a truncated archive: %v", err)
		}
		if len(backups(t, d)) != 3 {
			t.Error("a refused restore took a safety backup")
		}
		if n := recordCount(t, d); n != 2 {
			t.Errorf("after a refused restore the service has %d records, want 2", n)
		}
		if _, err := os.Stat(filepath.Join(data, "carebot.db")); err != nil {
			t.Error(err)
		}
	})
}

func TestBackupOnFullDiskLeavesEverythingIntact(t *testing.T) {
	if os.Getuid() != 0 {
		testenv.Skip(t, "mounting a tmpfs needs root")
	}
	onBothHosts(t, "full", func(t *testing.T, d deployment) {
		ctx := context.Background()
		postRecord(t, d, "small")
		backupDir := filepath.Join(d.deployPath(), "backups")
		os.MkdirAll(backupDir, 0o755)
		if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", backupDir).CombinedOutput(); err != nil {
			testenv.Skip(t, "mount tmpfs: %v %s", err, out)
		}
		t.Cleanup(func() { exec.Command("umount", "-l", backupDir).Run() })

		first, err := d.runner("v1").Backup(ctx, false)
		if err != nil {
			t.Fatalf("a small backup into the 2 MB folder: %v", err)
		}
		big := make([]byte, 4<<20) // random: gzip cannot shrink it below the free space
		rand.Read(big)
		data := filepath.Join(d.deployPath(), "data")
		os.WriteFile(filepath.Join(data, "big.bin"), big, 0o644)
		before := tree(t, data)

		_, err = d.runner("v1").Backup(ctx, false)
		if err == nil || !strings.Contains(err.Error(), "No space left") || !strings.Contains(err.Error(), "untouched") {
			t.Fatalf("backup onto a full disk: %v", err)
		}
		if strings.Contains(err.Error(), "\n") {
			t.Errorf("error is not one line: %q", err)
		}
		after := tree(t, data)
		delete(before, "carebot.db-wal") // the live service may write its WAL meanwhile
		delete(before, "carebot.db-shm")
		for k, v := range before {
			if after[k] != v {
				t.Errorf("data file %s changed", k)
			}
		}
		entries, _ := os.ReadDir(backupDir)
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		if len(names) != 2 || names[0] != first.Name || names[1] != first.Name+".sha256" {
			t.Errorf("backups folder after the failure: %v, want only the first backup and its checksum", names)
		}
		if n := checkArchive(t, filepath.Join(backupDir, first.Name)); n != 1 {
			t.Errorf("the earlier backup holds %d records", n)
		}
		if n := recordCount(t, d); n != 1 {
			t.Errorf("the service (unpaused?) answers %d records", n)
		}
	})
}

func TestCleanupKeepsServingAndRollbackTarget(t *testing.T) {
	onBothHosts(t, "clean", func(t *testing.T, d deployment) {
		ctx := context.Background()
		for _, v := range []string{"v2", "v3", "v4"} {
			d.buildTag(v, nil)
			if err := d.runner(v).Deploy(ctx); err != nil {
				t.Fatal(err)
			}
		}
		d.buildTag("v5", nil) // built, not deployed
		// serving v4, rollback target v3, current build v5; keep 1 more: v2.
		d.setEnv("IMAGE_KEEP", "1")
		r := d.runner("v5")
		if err := r.Test(ctx, true); err != nil { // leaves a test container behind
			t.Fatal(err)
		}
		name := r.Cfg.ImageName
		tags := func(h string) map[string]bool {
			args := []string{"image", "ls", "--format", "{{.Tag}}", name}
			if h != "" {
				args = append([]string{"-H", h}, args...)
			}
			out, _ := exec.Command("docker", args...).Output()
			m := map[string]bool{}
			for _, t := range strings.Fields(string(out)) {
				m[t] = true
			}
			return m
		}
		hosts := []string{""}
		if r.Cfg.Remote() {
			hosts = append(hosts, "unix:///run/carebot-server-docker.sock")
		}
		before := map[string]map[string]bool{}
		for _, h := range hosts {
			before[h] = tags(h)
		}
		if err := d.runner("v5").Cleanup(ctx, true); err != nil {
			t.Fatal(err)
		}
		for _, h := range hosts {
			if fmt.Sprint(tags(h)) != fmt.Sprint(before[h]) {
				t.Fatalf("a dry run removed images on %q: %v -> %v", h, before[h], tags(h))
			}
		}
		if err := d.runner("v5").Cleanup(ctx, false); err != nil {
			t.Fatal(err)
		}
		for _, h := range hosts {
			got := tags(h)
			if got["v1"] {
				t.Errorf("engine %q still has v1: %v", h, got)
			}
			for _, keep := range []string{"v3", "v4"} {
				if !got[keep] {
					t.Errorf("engine %q lost %s (serving or rollback target): %v", h, keep, got)
				}
			}
		}
		if !tags("")["v5"] || !tags("")["v2"] {
			t.Errorf("build engine lost the current build or the one kept by IMAGE_KEEP: %v", tags(""))
		}
		if out, _ := exec.Command("docker", "ps", "-aq", "--filter", "name="+TestContainerName(r.Cfg.ImageName)).Output(); len(strings.TrimSpace(string(out))) > 0 {
			t.Error("the leftover test container is still there")
		}
		if err := d.runner("v4").Rollback(ctx, ""); err != nil {
			t.Fatalf("rollback after cleanup: %v", err)
		}
	})
}

// A backup the service cannot start with is put in, found unhealthy, and
// taken out again: the data that served before serves again.
func TestRestoreOfBadDataPutsTheOldDataBack(t *testing.T) {
	onBothHosts(t, "badrestore", func(t *testing.T, d deployment) {
		ctx := context.Background()
		postRecord(t, d, "kept")
		d.setEnv("HEALTH_TIMEOUT", "20s")
		data := filepath.Join(d.deployPath(), "data")

		// Make a backup of a broken database while the service is stopped.
		compose(t, d, "stop")
		if err := os.Rename(data, data+".good"); err != nil {
			t.Fatal(err)
		}
		os.MkdirAll(data, 0o755)
		os.WriteFile(filepath.Join(data, "carebot.db"), []byte("this is not a database"), 0o644)
		bad, err := d.runner("v1").Backup(ctx, false)
		if err != nil {
			t.Fatal(err)
		}
		os.RemoveAll(data)
		if err := os.Rename(data+".good", data); err != nil {
			t.Fatal(err)
		}
		compose(t, d, "start")
		waitRecords(t, d, 1)

		err = d.runner("v1").Restore(ctx, bad.Name, false)
		if err == nil || !strings.Contains(err.Error(), "put back as it was and serves again") {
			t.Fatalf("restore of a backup the service cannot start with: %v", err)
		}
		waitRecords(t, d, 1)
		if _, err := os.Stat(data + ".replaced"); err == nil {
			t.Error("data.replaced left behind")
		}
	})
}

func waitRecords(t testing.TB, d deployment, want int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(d.appURL("/api/records"))
		if err == nil {
			var rec struct{ Count int }
			json.NewDecoder(resp.Body).Decode(&rec)
			resp.Body.Close()
			if rec.Count == want {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the service does not answer %d records", want)
		}
		time.Sleep(300 * time.Millisecond)
	}
}
