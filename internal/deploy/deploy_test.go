package deploy

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/carebot/carebot/internal/health"
	"github.com/carebot/carebot/internal/host"
	"github.com/carebot/carebot/internal/shell"
	"github.com/carebot/carebot/internal/ship/shiptest"
)

var t0 = time.Date(2024, 5, 1, 10, 0, 0, 0, time.UTC)

func TestParseHistory(t *testing.T) {
	data := strings.Join([]string{
		`{"time":"2024-05-01T10:00:00Z","action":"deploy","version":"v1","image_id":"sha256:111","commit":"abc","result":"ok","serving":"v1"}`,
		``,
		`not json at all`,
		`{"time":"2024-05-01T11:00:00Z","action":"deploy","version":"v2",`, // truncated
		`{"action":"deploy","result":"ok"}`,                                // no version
		`   `,
		`{"time":"2024-05-01T12:00:00Z","action":"deploy","version":"v3","result":"rolled-back","serving":"v1","previous":"v1","error":"no healthy answer"}`,
		`{"time":"2024-05-01T13:00:00Z","action":"rollback","version":"v1","result":"ok","serving":"v1","unknown_field":42}`,
		`[1,2,3]`,
		`{"time":"2024-05-01T14:00:00Z","action":"deploy","version":"v4","result":"failed"}`, // no newline at the end
	}, "\n")
	got := ParseHistory([]byte(data))
	want := []Entry{
		{Time: t0, Action: "deploy", Version: "v1", ImageID: "sha256:111", Commit: "abc", Result: ResultOK, Serving: "v1"},
		{Time: t0.Add(2 * time.Hour), Action: "deploy", Version: "v3", Result: ResultRolledBack, Serving: "v1", Previous: "v1", Error: "no healthy answer"},
		{Time: t0.Add(3 * time.Hour), Action: "rollback", Version: "v1", Result: ResultOK, Serving: "v1"},
		{Time: t0.Add(4 * time.Hour), Action: "deploy", Version: "v4", Result: ResultFailed},
	}
	if len(got) != len(want) {
		t.Fatalf("got %d entries, want %d: %+v", len(got), len(want), got)
	}
	for i := range want {
		if !got[i].Time.Equal(want[i].Time) {
			t.Errorf("entry %d time %v, want %v", i, got[i].Time, want[i].Time)
		}
		got[i].Time, want[i].Time = time.Time{}, time.Time{}
		if got[i] != want[i] {
			t.Errorf("entry %d:\n got %+v\nwant %+v", i, got[i], want[i])
		}
	}
	for _, empty := range [][]byte{nil, []byte(""), []byte("\n\n"), []byte("garbage")} {
		if got := ParseHistory(empty); len(got) != 0 {
			t.Errorf("ParseHistory(%q) = %+v, want none", empty, got)
		}
	}
}

func ok(v string) Entry { return Entry{Action: "deploy", Version: v, Result: ResultOK, Serving: v} }
func rolledBack(v, serving string) Entry {
	return Entry{Action: "deploy", Version: v, Result: ResultRolledBack, Serving: serving, Previous: serving}
}
func failed(v string) Entry { return Entry{Action: "deploy", Version: v, Result: ResultFailed} }

func TestPrevious(t *testing.T) {
	tests := []struct {
		name    string
		history []Entry
		current string
		want    string
	}{
		{"empty history", nil, "", ""},
		{"empty history, something serves", nil, "v1", ""},
		{"one ok release that serves", []Entry{ok("v1")}, "v1", ""},
		{"one ok release, nothing serves", []Entry{ok("v1")}, "", "v1"},
		{"current is the last", []Entry{ok("v1"), ok("v2"), ok("v3")}, "v3", "v2"},
		{"current is an older one", []Entry{ok("v1"), ok("v2"), ok("v3")}, "v2", "v3"},
		{"current is unknown", []Entry{ok("v1"), ok("v2")}, "hand-started", "v2"},
		{"nothing serves", []Entry{ok("v1"), ok("v2")}, "", "v2"},
		{"same version deployed twice", []Entry{ok("v1"), ok("v2"), ok("v2")}, "v2", "v1"},
		{"failed entries are ignored", []Entry{ok("v1"), failed("v2"), failed("v3")}, "", "v1"},
		{"failed entry after current", []Entry{ok("v1"), ok("v2"), failed("v3")}, "v2", "v1"},
		{"rolled back: its serving version counts", []Entry{ok("v1"), rolledBack("v2", "v1")}, "v3", "v1"},
		{"rolled back to current is skipped", []Entry{ok("v1"), ok("v2"), rolledBack("v3", "v2")}, "v2", "v1"},
		{"rolled back, the failed version never counts", []Entry{ok("v1"), rolledBack("v2", "v1")}, "v1", ""},
		{"rolled back with no serving version", []Entry{ok("v1"), {Action: "deploy", Version: "v2", Result: ResultRolledBack}}, "v3", "v1"},
		{"a rollback entry is a release that served", []Entry{ok("v1"), ok("v2"), {Action: "rollback", Version: "v1", Result: ResultOK, Serving: "v1"}}, "v1", "v2"},
		{"unknown results are ignored", []Entry{ok("v1"), {Version: "v2", Result: "weird"}}, "", "v1"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := Previous(tc.history, tc.current); got != tc.want {
				t.Errorf("Previous(current %q) = %q, want %q", tc.current, got, tc.want)
			}
		})
	}
}

func TestImageOf(t *testing.T) {
	history := []Entry{
		{Version: "v1", ImageID: "sha256:old1", Result: ResultOK},
		{Version: "v2", ImageID: "sha256:two", Result: ResultOK},
		{Version: "v1", ImageID: "sha256:new1", Result: ResultOK}, // v1 rebuilt
		{Version: "v1", Result: ResultOK},                         // a rollback that did not know the ID
		{Version: "v3", Result: ResultFailed},
	}
	tests := []struct{ version, want string }{
		{"v1", "sha256:new1"},
		{"v2", "sha256:two"},
		{"v3", ""},
		{"v9", ""},
		{"", ""},
	}
	for _, tc := range tests {
		if got := ImageOf(history, tc.version); got != tc.want {
			t.Errorf("ImageOf(%q) = %q, want %q", tc.version, got, tc.want)
		}
	}
	if got := ImageOf(nil, "v1"); got != "" {
		t.Errorf("ImageOf(nil) = %q", got)
	}
}

func TestEntryString(t *testing.T) {
	stamp := t0.Local().Format("2006-01-02 15:04:05")
	tests := []struct {
		e        Entry
		want     string
		contains []string
		lacks    []string
	}{
		{
			e:    Entry{Time: t0, Action: "deploy", Version: "v1", Result: ResultOK, Serving: "v1"},
			want: stamp + "  deploy   v1                   ok",
		},
		{
			e:        Entry{Time: t0, Action: "deploy", Version: "v2", Result: ResultRolledBack, Serving: "v1", Error: "no healthy answer"},
			contains: []string{stamp, "deploy", "v2", "rolled-back", " serving v1", "  (no healthy answer)"},
		},
		{
			e:        Entry{Time: t0, Action: "rollback", Version: "v1", Result: ResultFailed, Error: "boom"},
			contains: []string{"rollback", "v1", "failed", "(boom)"},
			lacks:    []string{"serving"},
		},
	}
	for _, tc := range tests {
		s := tc.e.String()
		if tc.want != "" && strings.TrimRight(s, " ") != tc.want {
			t.Errorf("String() = %q, want %q", s, tc.want)
		}
		for _, c := range tc.contains {
			if !strings.Contains(s, c) {
				t.Errorf("String() = %q, want it to contain %q", s, c)
			}
		}
		for _, c := range tc.lacks {
			if strings.Contains(s, c) {
				t.Errorf("String() = %q, should not contain %q", s, c)
			}
		}
		if strings.Contains(s, "\n") {
			t.Errorf("String() = %q is more than one line", s)
		}
	}
	// Columns line up whatever the action and version.
	a := Entry{Time: t0, Action: "deploy", Version: "v1", Result: ResultOK}.String()
	b := Entry{Time: t0, Action: "rollback", Version: "2024.05.01-abcdef", Result: ResultFailed}.String()
	if ia, ib := strings.Index(a, "ok"), strings.Index(b, "failed"); ia != ib {
		t.Errorf("result columns differ: %q / %q", a, b)
	}
}

// testDeployer is a Deployer whose deploy folder (with a space and a quote
// in its name) is in a temp folder, with a local compose file and migrations.
func testDeployer(t *testing.T, h host.Host) (*Deployer, *bytes.Buffer) {
	t.Helper()
	root := t.TempDir()
	local := filepath.Join(root, "local")
	if err := os.MkdirAll(filepath.Join(local, "migrations"), 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(local, "compose.yml"), "services:\n  app:\n    image: ${IMAGE_NAME}:${IMAGE_TAG}\n", 0o644)
	writeFile(t, filepath.Join(local, "migrations", "001_init.sql"), "CREATE TABLE t (id INTEGER);\n", 0o644)
	out := &bytes.Buffer{}
	d := &Deployer{
		Host:          h,
		Path:          filepath.Join(root, "srv", "care bot's deploy"),
		ComposeFile:   filepath.Join(local, "compose.yml"),
		Migrations:    filepath.Join(local, "migrations"),
		ImageName:     "carebot",
		AppPort:       8080,
		HealthPath:    "/healthz",
		HealthTimeout: 5 * time.Second,
		LogLines:      50,
		Out:           out,
		Now:           func() time.Time { return t0 },
	}
	t.Cleanup(d.Release)
	return d, out
}

func writeFile(t *testing.T, p, data string, mode os.FileMode) {
	t.Helper()
	if err := os.WriteFile(p, []byte(data), mode); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, mode); err != nil { // past the umask
		t.Fatal(err)
	}
}

func exists(p string) bool {
	_, err := os.Lstat(p)
	return err == nil
}

func TestHistoryRecordAndRead(t *testing.T) {
	ctx := context.Background()
	d, _ := testDeployer(t, host.Local{})
	if err := os.MkdirAll(d.Path, 0o755); err != nil {
		t.Fatal(err)
	}
	h, err := d.History(ctx)
	if err != nil || len(h) != 0 {
		t.Fatalf("History with no file = %+v, %v; want none", h, err)
	}
	entries := []Entry{
		{Action: "deploy", Version: "v1", ImageID: "sha256:1", Commit: "abc", Result: ResultOK, Serving: "v1"},
		{Action: "deploy", Version: "v2", Result: ResultRolledBack, Serving: "v1", Previous: "v1", Error: `it said "no" and 'stop'`},
	}
	for i, e := range entries {
		now := t0.Add(time.Duration(i) * time.Hour)
		d.Now = func() time.Time { return now }
		if err := d.record(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	// A hand-edited line in between does not stop the ones after it.
	f, err := os.OpenFile(d.historyPath(), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString("# edited by hand\n")
	f.Close()
	d.Now = func() time.Time { return t0.Add(5 * time.Hour) }
	if err := d.record(ctx, Entry{Action: "rollback", Version: "v1", Result: ResultOK, Serving: "v1"}); err != nil {
		t.Fatal(err)
	}

	got, err := d.History(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var versions []string
	for _, e := range got {
		versions = append(versions, e.Action+" "+e.Version+" "+e.Result)
	}
	if want := []string{"deploy v1 ok", "deploy v2 rolled-back", "rollback v1 ok"}; !reflect.DeepEqual(versions, want) {
		t.Fatalf("History = %q, want %q", versions, want)
	}
	if !got[1].Time.Equal(t0.Add(time.Hour)) || !got[2].Time.Equal(t0.Add(5*time.Hour)) {
		t.Errorf("recorded times %v, %v: want the Deployer's Now", got[1].Time, got[2].Time)
	}
	if got[1].Error != entries[1].Error || got[0].ImageID != "sha256:1" || got[0].Commit != "abc" {
		t.Errorf("fields lost in the round trip: %+v", got)
	}
}

// checkSettled checks that d left no journal, and that once its run ends
// the next run gets the lock.
func checkSettled(t *testing.T, d *Deployer) {
	t.Helper()
	if exists(d.journalPath()) {
		data, _ := os.ReadFile(d.journalPath())
		t.Errorf("a journal was left: %q", data)
	}
	d.Release()
	if !exists(d.Path) {
		return
	}
	if err := locker(t, d).Lock(context.Background()); err != nil && !strings.Contains(err.Error(), "does not exist") {
		t.Errorf("the next run cannot take the lock: %v", err)
	}
}

// locker is a second run's Deployer on d's host and folder.
func locker(t *testing.T, d *Deployer) *Deployer {
	o := &Deployer{Host: d.Host, Path: d.Path, Out: &bytes.Buffer{}, LeaseTime: d.LeaseTime}
	t.Cleanup(o.Release)
	return o
}

func TestLock(t *testing.T) {
	ctx := context.Background()
	d, _ := testDeployer(t, host.Local{})
	if err := os.MkdirAll(d.Path, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := d.Lock(ctx); err != nil {
		t.Fatalf("first Lock: %v", err)
	}
	if err := d.Lock(ctx); err != nil {
		t.Fatalf("a run's second Lock: %v (it holds the lock already)", err)
	}
	holder, err := os.ReadFile(filepath.Join(d.stateDir(), "holder"))
	if err != nil {
		t.Fatalf("no holder file: %v", err)
	}
	if want := fmt.Sprintf("%s pid %d|", whoami(), os.Getpid()); !strings.HasPrefix(string(holder), want) {
		t.Errorf("holder %q, want it to start with %q", holder, want)
	}

	other := locker(t, d)
	for i := 0; i < 2; i++ { // a failed Lock leaves the holder's lock alone
		start := time.Now()
		err := other.Lock(ctx)
		if !errors.Is(err, ErrLocked) {
			t.Fatalf("second run's Lock: %v, want ErrLocked", err)
		}
		if waited := time.Since(start); waited > lockGrace+3*time.Second {
			t.Errorf("LOCK_WAIT=0 waited %s", waited)
		}
		msg := err.Error()
		for _, want := range []string{fmt.Sprintf("%s pid %d since ", whoami(), os.Getpid()), "another run holds the deploy lock on " + d.Host.String(), "LOCK_WAIT="} {
			if !strings.Contains(msg, want) {
				t.Errorf("locked error %q does not say %q", msg, want)
			}
		}
	}

	d.Release()
	if err := other.Lock(ctx); err != nil {
		t.Fatalf("Lock after the first run released it: %v", err)
	}
}

// A run that stops talking (a half-open link) loses the lock after the
// lease; one that waits with LOCK_WAIT gets it then.
func TestLockLeaseAndWait(t *testing.T) {
	ctx := context.Background()
	d, _ := testDeployer(t, host.Local{})
	d.LeaseTime = 2 * time.Second
	if err := os.MkdirAll(d.Path, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := d.Lock(ctx); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * time.Second) // beyond the lease: the heartbeats keep it
	if err := locker(t, d).Lock(ctx); !errors.Is(err, ErrLocked) {
		t.Fatalf("a heartbeating run's lock after its lease: %v, want ErrLocked", err)
	}
	silent, _ := testDeployer(t, host.Local{})
	silent.Path, silent.LeaseTime = t.TempDir(), 2*time.Second
	if err := silent.Lock(ctx); err != nil {
		t.Fatal(err)
	}
	silent.lease.once.Do(func() { close(silent.lease.stop) }) // the link goes silent: no more heartbeats, no EOF
	waiter := locker(t, silent)
	waiter.LockWait = 20 * time.Second
	start := time.Now()
	if err := waiter.Lock(ctx); err != nil {
		t.Fatalf("Lock with LOCK_WAIT behind a silent run: %v", err)
	}
	t.Logf("the silent run's lock was free after %s", time.Since(start).Round(100*time.Millisecond))
	if !strings.Contains(waiter.Out.(*bytes.Buffer).String(), "waiting up to 20s") {
		t.Errorf("the waiting run did not say it waits: %q", waiter.Out)
	}
	if err := silent.Lock(ctx); err == nil || !strings.Contains(err.Error(), "was lost") {
		t.Errorf("the silent run's next step: %v, want the lock lost", err)
	}
}

// The holder runs the journal when its run goes away, and keeps the lock
// until that is done; a journal nobody ran is run by the next Lock.
func TestLockRunsTheJournal(t *testing.T) {
	ctx := context.Background()
	d, _ := testDeployer(t, host.Local{})
	if err := os.MkdirAll(d.Path, 0o755); err != nil {
		t.Fatal(err)
	}
	done := filepath.Join(d.Path, "undone")
	if err := d.intend(ctx, "testing: write a file", "sleep 1; echo yes > "+shell.Quote(done)+"\n", 0); err != nil {
		t.Fatal(err)
	}
	d.Abandon() // the run goes away
	other := locker(t, d)
	if err := other.Lock(ctx); err != nil {
		t.Fatalf("Lock while the holder runs the journal: %v", err)
	}
	if !exists(done) {
		t.Fatal("the journal did not run before the lock was free")
	}
	if exists(d.journalPath()) {
		t.Error("the journal is still there after it ran")
	}
	other.Release()

	writeFile(t, d.journalPath(), "# testing: left behind\necho again >> "+shell.Quote(done)+"\n", 0o600)
	next := locker(t, d)
	if err := next.Lock(ctx); err != nil {
		t.Fatal(err)
	}
	if data, _ := os.ReadFile(done); string(data) != "yes\nagain\n" {
		t.Errorf("the left journal did not run: %q", data)
	}
	if out := next.Out.(*bytes.Buffer).String(); !strings.Contains(out, "interrupted while testing: left behind") {
		t.Errorf("the next run did not say what it finished: %q", out)
	}
	if what, err := next.Interrupted(ctx); err != nil || what != "" {
		t.Errorf("Interrupted after recovery = %q, %v", what, err)
	}
}

func TestLockLegacyFolder(t *testing.T) {
	ctx := context.Background()
	d, _ := testDeployer(t, host.Local{})
	if err := os.MkdirAll(d.legacyLock(), 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(d.legacyLock(), "owner"), "ci@runner pid 1 at 2026-01-01T00:00:00Z\n", 0o644)
	err := d.Lock(ctx)
	if !errors.Is(err, ErrLocked) || !strings.Contains(err.Error(), "earlier version") || !strings.Contains(err.Error(), "ci@runner pid 1") {
		t.Fatalf("Lock beside a fresh .deploy.lock: %v", err)
	}
	old := time.Now().Add(-time.Hour)
	if err := os.Chtimes(d.legacyLock(), old, old); err != nil {
		t.Fatal(err)
	}
	if err := d.Lock(ctx); err != nil {
		t.Fatalf("Lock beside an hour-old .deploy.lock: %v", err)
	}
	if exists(d.legacyLock()) {
		t.Error("the old lock folder is still there")
	}
}

func TestLockMissingPath(t *testing.T) {
	d, _ := testDeployer(t, host.Local{}) // d.Path is not created
	err := d.Lock(context.Background())
	if err == nil {
		t.Fatal("Lock in a missing folder succeeded")
	}
	if errors.Is(err, ErrLocked) {
		t.Errorf("Lock in a missing folder says it is locked: %v", err)
	}
	if !strings.Contains(err.Error(), "take the deploy lock") || !strings.Contains(err.Error(), "does not exist") {
		t.Errorf("error %q should say the lock could not be taken, and why", err)
	}
	if exists(d.Path) {
		t.Errorf("Lock created %s", d.Path)
	}
}

func TestComposeCommand(t *testing.T) {
	d := &Deployer{Path: "/srv/carebot", ComposeFile: "deploy/compose.prod.yml", ImageName: "carebot", AppPort: 8080, compose: "docker-compose"}
	tests := []struct {
		path, image, version, args string
		want                       string
	}{
		{"/srv/carebot", "carebot", "v1.2.3", "up -d",
			"cd /srv/carebot && IMAGE_NAME=carebot APP_PORT=8080 IMAGE_TAG=v1.2.3 docker-compose -f compose.prod.yml up -d"},
		{"/srv/carebot", "carebot", "", "ps -q",
			"cd /srv/carebot && IMAGE_NAME=carebot APP_PORT=8080 docker-compose -f compose.prod.yml ps -q"},
		{"/srv/my bot's app", "ghcr.io/me/carebot", "v1", "logs",
			`cd '/srv/my bot'\''s app' && IMAGE_NAME=ghcr.io/me/carebot APP_PORT=8080 IMAGE_TAG=v1 docker-compose -f compose.prod.yml logs`},
		{"/srv/$HOME", "carebot", "v;rm -rf /", "stop",
			`cd '/srv/$HOME' && IMAGE_NAME=carebot APP_PORT=8080 IMAGE_TAG='v;rm -rf /' docker-compose -f compose.prod.yml stop`},
	}
	for _, tc := range tests {
		d.Path, d.ImageName = tc.path, tc.image
		if got := d.ComposeCommand(tc.version, tc.args); got != tc.want {
			t.Errorf("ComposeCommand:\n got %s\nwant %s", got, tc.want)
		}
	}

	// Through a real shell: the folder and the settings arrive intact.
	root, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(root, `my "bot's" $app`)
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	d = &Deployer{Path: dir, ComposeFile: "/local/compose file.yml", ImageName: "carebot", AppPort: 18080,
		compose: `sh -c 'pwd -P; printf "%s|%s|%s\n" "$IMAGE_NAME" "$APP_PORT" "$IMAGE_TAG"; printf "%s\n" "$@"' compose`}
	out, err := host.Run(context.Background(), host.Local{}, d.ComposeCommand("v 2", "up -d"))
	if err != nil {
		t.Fatal(err)
	}
	want := dir + "\ncarebot|18080|v 2\n-f\ncompose file.yml\nup\n-d\n"
	if out != want {
		t.Errorf("compose saw:\n%s\nwant:\n%s", out, want)
	}
}

func TestDetectCompose(t *testing.T) {
	tests := []struct {
		says    string
		want    string
		wantErr string
	}{
		{"docker compose\n", "docker compose", ""},
		{"docker-compose\n", "docker-compose", ""},
		{"", "", "neither 'docker compose' nor 'docker-compose' works on the fake host"},
		{"\n", "", "install one"},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprintf("%q", tc.says), func(t *testing.T) {
			h := &fakeHost{compose: tc.says}
			d := &Deployer{Host: h}
			for i := 0; i < 2; i++ {
				got, err := d.detectCompose(context.Background())
				if tc.wantErr != "" {
					if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
						t.Fatalf("detectCompose = %q, %v; want error %q", got, err, tc.wantErr)
					}
					continue
				}
				if err != nil || got != tc.want {
					t.Fatalf("detectCompose = %q, %v; want %q", got, err, tc.want)
				}
			}
			wantRuns := 1 // found once, then remembered
			if tc.wantErr != "" {
				wantRuns = 2 // not found: asked again
			}
			if n := len(h.ran("docker compose version")); n != wantRuns {
				t.Errorf("asked the host %d times, want %d", n, wantRuns)
			}
		})
	}
}

func TestPrepare(t *testing.T) {
	tests := []struct {
		name     string
		hostEnv  *string // the host's .env before, nil = none
		seed     string  // "" none, "missing", or the seed's content
		wantErr  []string
		wantEnv  *string // the host's .env after, nil = none
		wantSaid string
	}{
		{
			name:    "no .env and no seed: refuse",
			wantErr: []string{"has no .env on the fake host", "cp .env.example .env", "nothing was changed"},
		},
		{
			name:     "no .env: copy the seed",
			seed:     "BOT_TOKEN=123:abc\n",
			wantEnv:  strp("BOT_TOKEN=123:abc\n"),
			wantSaid: "created ",
		},
		{
			name:     "no .env and the seed is missing: an empty one",
			seed:     "missing",
			wantEnv:  strp(""),
			wantSaid: "created ",
		},
		{
			name:    "the host's .env wins over the seed",
			hostEnv: strp("BOT_TOKEN=on-the-server\n"),
			seed:    "BOT_TOKEN=local\n",
			wantEnv: strp("BOT_TOKEN=on-the-server\n"),
		},
		{
			name:    "the host's .env, no seed",
			hostEnv: strp("BOT_TOKEN=on-the-server\n"),
			wantEnv: strp("BOT_TOKEN=on-the-server\n"),
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := &fakeHost{compose: "docker-compose\n"}
			d, out := testDeployer(t, h)
			envPath := filepath.Join(d.Path, ".env")
			if tc.hostEnv != nil {
				if err := os.MkdirAll(d.Path, 0o755); err != nil {
					t.Fatal(err)
				}
				writeFile(t, envPath, *tc.hostEnv, 0o640)
			}
			switch tc.seed {
			case "":
			case "missing":
				d.SeedEnv = filepath.Join(t.TempDir(), "no", ".env") // and no data
			default:
				d.SeedEnv, d.SeedEnvData = filepath.Join(t.TempDir(), "seed .env"), []byte(tc.seed)
			}

			err := d.makeFolder(context.Background())
			if tc.wantErr != nil {
				if err == nil {
					t.Fatal("prepare succeeded, want an error")
				}
				for _, w := range tc.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q does not say %q", err, w)
					}
				}
			} else if err != nil {
				t.Fatalf("prepare: %v", err)
			}
			if d.compose != "docker-compose" {
				t.Errorf("compose = %q, want it detected", d.compose)
			}
			for _, sub := range []string{"", "data", "migrations"} {
				fi, err := os.Stat(filepath.Join(d.Path, sub))
				switch {
				case tc.wantErr != nil && tc.hostEnv == nil && err == nil:
					t.Errorf("%s/%s created by a refused deploy", d.Path, sub) // nothing changes on refusal
				case tc.wantErr == nil && (err != nil || !fi.IsDir()):
					t.Errorf("%s/%s not created: %v", d.Path, sub, err)
				}
			}
			data, err := os.ReadFile(envPath)
			switch {
			case tc.wantEnv == nil && err == nil:
				t.Errorf(".env created: %q", data)
			case tc.wantEnv != nil && err != nil:
				t.Errorf(".env: %v", err)
			case tc.wantEnv != nil && string(data) != *tc.wantEnv:
				t.Errorf(".env holds %q, want %q", data, *tc.wantEnv)
			}
			if tc.wantSaid != "" {
				if !strings.Contains(out.String(), tc.wantSaid+envPath) {
					t.Errorf("output %q does not say %q", out, tc.wantSaid+envPath)
				}
				if fi, err := os.Stat(envPath); err == nil && fi.Mode().Perm() != 0o600 {
					t.Errorf("seeded .env has mode %o, want 600", fi.Mode().Perm())
				}
			} else if out.Len() != 0 {
				t.Errorf("unexpected output %q", out)
			}
			if tc.hostEnv != nil {
				if fi, err := os.Stat(envPath); err == nil && fi.Mode().Perm() != 0o640 {
					t.Errorf("the host's .env mode changed to %o", fi.Mode().Perm())
				}
			}
		})
	}
}

func strp(s string) *string { return &s }

func TestPrepareWithoutCompose(t *testing.T) {
	d, _ := testDeployer(t, &fakeHost{compose: ""})
	err := d.makeFolder(context.Background())
	if err == nil || !strings.Contains(err.Error(), "neither") {
		t.Fatalf("prepare = %v, want the no-compose error", err)
	}
	if exists(d.Path) {
		t.Errorf("prepare created %s though it refused", d.Path)
	}
}

func TestSyncFiles(t *testing.T) {
	ctx := context.Background()
	d, out := testDeployer(t, host.Local{})
	// Another migration with its own mode, a folder and a symlink that are not copied.
	writeFile(t, filepath.Join(d.Migrations, "002_add_users.sql"), "CREATE TABLE users (id INTEGER);\n", 0o600)
	writeFile(t, filepath.Join(d.Migrations, "003_hook.sh"), "#!/bin/sh\necho hook\n", 0o755)
	if err := os.Mkdir(filepath.Join(d.Migrations, "subdir"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("001_init.sql", filepath.Join(d.Migrations, "link.sql")); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(d.ComposeFile, 0o640); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(d.Path, "migrations"), 0o755); err != nil {
		t.Fatal(err)
	}
	// Files of the host's own that syncFiles must leave alone.
	writeFile(t, filepath.Join(d.Path, ".env"), "BOT_TOKEN=x\n", 0o600)
	writeFile(t, filepath.Join(d.Path, "migrations", "000_gone_here.sql"), "-- applied long ago\n", 0o644)

	want := map[string]struct {
		src  string
		mode os.FileMode
	}{
		"compose.yml":                  {d.ComposeFile, 0o640},
		"migrations/001_init.sql":      {filepath.Join(d.Migrations, "001_init.sql"), 0o644},
		"migrations/002_add_users.sql": {filepath.Join(d.Migrations, "002_add_users.sql"), 0o600},
		"migrations/003_hook.sh":       {filepath.Join(d.Migrations, "003_hook.sh"), 0o755},
		"migrations/link.sql":          {filepath.Join(d.Migrations, "001_init.sql"), 0o644}, // the file a link names
	}

	if _, err := d.syncNow(ctx); err != nil {
		t.Fatalf("first syncFiles: %v", err)
	}
	if !strings.Contains(out.String(), "skipped "+filepath.Join(d.Migrations, "subdir")+": only files") {
		t.Errorf("the skipped folder went without a word:\n%s", out)
	}
	for name, w := range want {
		dst := filepath.Join(d.Path, name)
		got, err := os.ReadFile(dst)
		if err != nil {
			t.Errorf("%s not copied: %v", name, err)
			continue
		}
		src, _ := os.ReadFile(w.src)
		if !bytes.Equal(got, src) {
			t.Errorf("%s holds %q, want %q", name, got, src)
		}
		if fi, _ := os.Stat(dst); fi.Mode().Perm() != w.mode {
			t.Errorf("%s has mode %o, want %o", name, fi.Mode().Perm(), w.mode)
		}
		if !strings.Contains(out.String(), "updated "+dst+"\n") {
			t.Errorf("output does not say %s was updated:\n%s", dst, out)
		}
	}
	if n := strings.Count(out.String(), "updated "); n != len(want) {
		t.Errorf("%d updated lines, want %d:\n%s", n, len(want), out)
	}
	for _, name := range []string{"migrations/subdir"} {
		if exists(filepath.Join(d.Path, name)) {
			t.Errorf("%s was copied", name)
		}
	}
	if !exists(filepath.Join(d.Path, "migrations", "000_gone_here.sql")) {
		t.Errorf("a migration that is gone locally was removed from the host")
	}
	if data, _ := os.ReadFile(filepath.Join(d.Path, ".env")); string(data) != "BOT_TOKEN=x\n" {
		t.Errorf("the host's .env changed: %q", data)
	}

	// Nothing changed: nothing written.
	out.Reset()
	if _, err := d.syncNow(ctx); err != nil {
		t.Fatalf("second syncFiles: %v", err)
	}
	if strings.Contains(out.String(), "updated ") {
		t.Errorf("second syncFiles wrote files:\n%s", out)
	}

	// One file changed: only it is written.
	writeFile(t, filepath.Join(d.Migrations, "001_init.sql"), "CREATE TABLE t (id INTEGER, name TEXT);\n", 0o644)
	if _, err := d.syncNow(ctx); err != nil {
		t.Fatalf("third syncFiles: %v", err)
	}
	// link.sql names 001_init.sql: it changed too.
	if got := strings.Count(out.String(), "updated "); got != 2 ||
		!strings.Contains(out.String(), "updated "+filepath.Join(d.Path, "migrations", "001_init.sql")+"\n") ||
		!strings.Contains(out.String(), "updated "+filepath.Join(d.Path, "migrations", "link.sql")+"\n") {
		t.Errorf("third syncFiles said %q, want 001_init.sql and link.sql updated", out)
	}
	if data, _ := os.ReadFile(filepath.Join(d.Path, "migrations", "001_init.sql")); !strings.Contains(string(data), "name TEXT") {
		t.Errorf("changed migration not copied: %q", data)
	}

	// The host's copy was edited by hand: it is put back.
	out.Reset()
	writeFile(t, filepath.Join(d.Path, "compose.yml"), "edited on the server\n", 0o644)
	if _, err := d.syncNow(ctx); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "updated "+filepath.Join(d.Path, "compose.yml")) {
		t.Errorf("an edited host compose file was not restored: %q", out)
	}
}

func TestSyncFilesWithoutMigrations(t *testing.T) {
	d, out := testDeployer(t, host.Local{})
	d.Migrations = filepath.Join(t.TempDir(), "none")
	if err := os.MkdirAll(d.Path, 0o755); err != nil {
		t.Fatal(err)
	}
	if _, err := d.syncNow(context.Background()); err != nil {
		t.Fatalf("syncFiles without a migrations folder: %v", err)
	}
	if got := strings.TrimSpace(out.String()); got != "updated "+filepath.Join(d.Path, "compose.yml") {
		t.Errorf("output %q, want only the compose file", got)
	}
	d.ComposeFile = filepath.Join(t.TempDir(), "missing.yml")
	if _, err := d.syncNow(context.Background()); err == nil || !strings.Contains(err.Error(), "missing.yml") {
		t.Errorf("syncFiles with a missing compose file = %v, want an error naming it", err)
	}
}

func TestDeployed(t *testing.T) {
	d, _ := testDeployer(t, &fakeHost{compose: "docker compose\n"})
	err := d.Deployed(context.Background())
	if err == nil || !strings.Contains(err.Error(), "nothing is deployed at "+d.Path+" on the fake host") {
		t.Fatalf("Deployed before any deploy = %v", err)
	}
	if err := os.MkdirAll(d.Path, 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(d.Path, "compose.yml"), "services: {}\n", 0o644)
	if err := d.Deployed(context.Background()); err != nil {
		t.Fatalf("Deployed after a deploy: %v", err)
	}
	d2, _ := testDeployer(t, &fakeHost{})
	if err := d2.Deployed(context.Background()); err == nil || !strings.Contains(err.Error(), "neither") {
		t.Errorf("Deployed without compose = %v, want the no-compose error", err)
	}
}

func TestContainerStateString(t *testing.T) {
	tests := []struct {
		s    ContainerState
		want string
	}{
		{ContainerState{Name: "app", Image: "carebot:v1", Status: "running", Started: "2024-05-01T10:00:00Z"},
			"app: running, image carebot:v1, started 2024-05-01T10:00:00Z"},
		{ContainerState{Name: "app", Image: "carebot:v1", Status: "running", Health: "healthy", Started: "x"},
			"app: running (healthy), image carebot:v1, started x"},
		{ContainerState{Name: "app", Image: "carebot:v2", Status: "exited", ExitCode: 2, Restarts: 3, Started: "x"},
			"app: exited, exit code 2, 3 restarts, image carebot:v2, started x"},
		{ContainerState{Name: "app", Image: "carebot:v2", Status: "restarting", Health: "starting", Restarts: 1, Started: "x"},
			"app: restarting (starting), exit code 0, 1 restarts, image carebot:v2, started x"},
	}
	for _, tc := range tests {
		if got := tc.s.String(); got != tc.want {
			t.Errorf("String() = %q, want %q", got, tc.want)
		}
	}
}

// deployedWorld is a host where compose.yml was deployed before and tag
// serves (none when ""), with the host's own .env.
func deployedWorld(t *testing.T, serving string) (*Deployer, *bytes.Buffer, *world, *fakeHost) {
	t.Helper()
	w := newWorld(t)
	h := &fakeHost{compose: "docker-compose\n", handle: w.handle}
	d, out := testDeployer(t, h)
	d.Server = w
	d.AppPort = w.port
	d.HealthTimeout = 3 * time.Second
	if err := os.MkdirAll(filepath.Join(d.Path, "migrations"), 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(d.Path, ".env"), "BOT_TOKEN=x\n", 0o600)
	if serving != "" {
		if _, err := d.syncNow(context.Background()); err != nil {
			t.Fatal(err)
		}
		w.serve(serving)
	}
	out.Reset()
	backoff := health.Backoff
	health.Backoff = func(int) time.Duration { return 20 * time.Millisecond }
	t.Cleanup(func() { health.Backoff = backoff })
	return d, out, w, h
}

func TestServingAndContainers(t *testing.T) {
	ctx := context.Background()
	d, _, w, _ := deployedWorld(t, "v1")
	got, err := d.Serving(ctx)
	if err != nil || got != "v1" {
		t.Fatalf("Serving = %q, %v; want v1", got, err)
	}
	states, err := d.Containers(ctx)
	if err != nil || len(states) != 1 {
		t.Fatalf("Containers = %+v, %v", states, err)
	}
	if s := states[0]; s.Name != "carebot-app-1" || s.Image != "carebot:v1" || s.Status != "running" || s.Started != "2024-05-01T10:00:00Z" {
		t.Errorf("container %+v", s)
	}
	w.mu.Lock()
	w.running = ""
	w.mu.Unlock()
	if got, err := d.Serving(ctx); err != nil || got != "" {
		t.Errorf("Serving with nothing running = %q, %v", got, err)
	}
	// Before the first deploy there is no compose file: nothing to ask.
	d2, _, _, h2 := deployedWorld(t, "")
	if got, err := d2.Serving(ctx); err != nil || got != "" {
		t.Errorf("Serving before any deploy = %q, %v", got, err)
	}
	if n := len(h2.ran("docker")); n != 0 {
		t.Errorf("asked docker %d times before any deploy", n)
	}
}

// checkPortNow runs checkPort with the containers the host has now, as
// Deploy and Rollback do.
func checkPortNow(t *testing.T, d *Deployer) error {
	t.Helper()
	states, err := d.containers(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return d.checkPort(context.Background(), states)
}

func TestCheckPort(t *testing.T) {
	t.Run("free", func(t *testing.T) {
		d, _, _, _ := deployedWorld(t, "")
		if err := checkPortNow(t, d); err != nil {
			t.Errorf("checkPort on a free port: %v", err)
		}
	})
	t.Run("held by our own container", func(t *testing.T) {
		d, _, _, _ := deployedWorld(t, "v1")
		if err := checkPortNow(t, d); err != nil {
			t.Errorf("checkPort with our container on the port: %v", err)
		}
	})
	t.Run("held by another container", func(t *testing.T) {
		d, _, w, _ := deployedWorld(t, "v1")
		w.foreign = true
		err := checkPortNow(t, d)
		if err == nil || !strings.Contains(err.Error(), "taken by container other-app") || !strings.Contains(err.Error(), fmt.Sprint(d.AppPort)) {
			t.Errorf("checkPort = %v, want it taken by other-app", err)
		}
	})
	t.Run("held by another program", func(t *testing.T) {
		d, _, w, _ := deployedWorld(t, "")
		w.mu.Lock()
		w.publish() // listening, but no container of ours
		w.mu.Unlock()
		err := checkPortNow(t, d)
		if err == nil || !strings.Contains(err.Error(), "taken by another program") {
			t.Errorf("checkPort = %v, want it taken by another program", err)
		}
	})
}

const (
	id1  = "sha256:1111111111111111111111111111111111111111111111111111111111111111"
	id2  = "sha256:2222222222222222222222222222222222222222222222222222222222222222"
	id2b = "sha256:2bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
	id3  = "sha256:3333333333333333333333333333333333333333333333333333333333333333"
	idX  = "sha256:eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee"
)

func TestDeploy(t *testing.T) {
	tests := []struct {
		name     string
		serving  string
		history  []Entry
		images   map[string]string
		dangling []string
		broken   []string
		foreign  bool
		locked   bool
		notBuilt bool // the build engine does not have the release's image
		release  Release

		wantErr     []string // nil: success
		wantLocked  bool     // errors.Is(err, ErrLocked)
		wantServing string
		wantEntry   *Entry // the entry recorded; nil: none
		wantOut     []string
		wantImages  map[string]string // tags that must point at these IDs after
		wantNoSync  bool              // the local change to compose.yml must not reach the host
	}{
		{
			name:        "first deploy",
			images:      map[string]string{"v1": id1},
			release:     Release{Version: "v1", ImageID: id1, Commit: "abc"},
			wantServing: "v1",
			wantEntry:   &Entry{Action: "deploy", Version: "v1", ImageID: id1, Commit: "abc", Result: ResultOK, Serving: "v1"},
			wantOut:     []string{"deploying carebot:v1 to the fake host (serving now: none)", "is serving v1 (commit commit-v1)", "updated "},
		},
		{
			name:        "deploy over a serving release",
			serving:     "v1",
			history:     []Entry{{Action: "deploy", Version: "v1", ImageID: id1, Result: ResultOK, Serving: "v1"}},
			images:      map[string]string{"v1": id1, "v2": id2},
			release:     Release{Version: "v2", ImageID: id2},
			wantServing: "v2",
			wantEntry:   &Entry{Action: "deploy", Version: "v2", ImageID: id2, Result: ResultOK, Serving: "v2", Previous: "v1"},
			wantOut:     []string{"(serving now: v1)", "is serving v2"},
		},
		{
			name:        "a release that never gets healthy rolls back, to the recorded image",
			serving:     "v1",
			history:     []Entry{{Action: "deploy", Version: "v1", ImageID: id1, Result: ResultOK, Serving: "v1"}},
			images:      map[string]string{"v1": idX, "v3": id3}, // v1's tag was reused by a later build
			dangling:    []string{id1},
			broken:      []string{"v3"},
			release:     Release{Version: "v3", ImageID: id3},
			wantErr:     []string{"release v3 failed: container carebot-app-1 is running (exit code 0, 2 restarts)", "rolled back to v1, which is serving"},
			wantServing: "v1",
			wantEntry:   &Entry{Action: "deploy", Version: "v3", ImageID: id3, Result: ResultRolledBack, Serving: "v1", Previous: "v1"},
			wantOut:     []string{"last log lines of v3", "panic: it broke", "release v3 failed (", "rolling back to v1"},
			wantImages:  map[string]string{"v1": id1},
		},
		{
			name:        "a broken first release is stopped",
			images:      map[string]string{"v3": id3},
			broken:      []string{"v3"},
			release:     Release{Version: "v3", ImageID: id3},
			wantErr:     []string{"release v3 failed", "no earlier release to roll back to, so it was stopped"},
			wantServing: "",
			wantEntry:   &Entry{Action: "deploy", Version: "v3", ImageID: id3, Result: ResultFailed},
		},
		{
			name:    "redeploying the serving tag falls back to the release before it",
			serving: "v2",
			history: []Entry{
				{Action: "deploy", Version: "v1", ImageID: id1, Result: ResultOK, Serving: "v1"},
				{Action: "deploy", Version: "v2", ImageID: id2, Result: ResultOK, Serving: "v2"},
			},
			images:      map[string]string{"v1": id1, "v2": id2b},
			broken:      []string{"v2"},
			release:     Release{Version: "v2", ImageID: id2b},
			wantErr:     []string{"release v2 failed", "rolled back to v1"},
			wantServing: "v1",
			wantEntry:   &Entry{Action: "deploy", Version: "v2", ImageID: id2b, Result: ResultRolledBack, Serving: "v1", Previous: "v1"},
		},
		{
			name:        "the rollback fails too",
			serving:     "v1",
			history:     []Entry{{Action: "deploy", Version: "v1", ImageID: id1, Result: ResultOK, Serving: "v1"}},
			images:      map[string]string{"v1": id1, "v3": id3},
			broken:      []string{"v1", "v3"},
			release:     Release{Version: "v3", ImageID: id3},
			wantErr:     []string{"release v3 failed", "rollback to v1 failed too", "mage status"},
			wantServing: "v1",
			wantEntry:   &Entry{Action: "deploy", Version: "v3", ImageID: id3, Result: ResultFailed, Previous: "v1"},
		},
		{
			name:        "image no longer built: refused, nothing changes",
			serving:     "v1",
			images:      map[string]string{"v1": id1},
			notBuilt:    true,
			release:     Release{Version: "v2", ImageID: id2},
			wantErr:     []string{"image carebot:v2 (222222222222) is not on the build engine any more"},
			wantServing: "v1",
			wantNoSync:  true,
		},
		{
			name:        "port taken by another container: refused",
			serving:     "v1",
			images:      map[string]string{"v1": id1, "v2": id2},
			foreign:     true,
			release:     Release{Version: "v2", ImageID: id2},
			wantErr:     []string{"taken by container other-app", "nothing was changed"},
			wantServing: "v1",
			wantNoSync:  true,
		},
		{
			name:        "another deploy holds the lock",
			serving:     "v1",
			images:      map[string]string{"v1": id1, "v2": id2},
			locked:      true,
			release:     Release{Version: "v2", ImageID: id2},
			wantLocked:  true,
			wantErr:     []string{"another run holds the deploy lock"},
			wantServing: "v1",
			wantNoSync:  true,
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			d, out, w, _ := deployedWorld(t, tc.serving)
			for _, e := range tc.history {
				if err := d.record(ctx, e); err != nil {
					t.Fatal(err)
				}
			}
			before, _ := d.History(ctx)
			w.mu.Lock()
			w.images, w.foreign = tc.images, tc.foreign
			for _, id := range tc.dangling {
				w.dangling[id] = true
			}
			for _, v := range tc.broken {
				w.broken[v] = true
			}
			w.mu.Unlock()
			eng := &shiptest.Engine{}
			if !tc.notBuilt {
				eng.Know(tc.release.ImageID) // and the host has it: nothing is sent
			}
			d.Engine = eng
			if tc.locked {
				if err := os.MkdirAll(d.Path, 0o755); err != nil {
					t.Fatal(err)
				}
				if err := locker(t, d).Lock(ctx); err != nil {
					t.Fatal(err)
				}
			}
			hostCompose := filepath.Join(d.Path, "compose.yml")
			oldCompose, _ := os.ReadFile(hostCompose)
			writeFile(t, d.ComposeFile, "services:\n  app:\n    image: ${IMAGE_NAME}:${IMAGE_TAG}\n    restart: unless-stopped\n", 0o644)

			err := d.Deploy(ctx, tc.release)

			switch {
			case tc.wantErr == nil && err != nil:
				t.Fatalf("Deploy: %v\noutput:\n%s", err, out)
			case tc.wantErr != nil && err == nil:
				t.Fatalf("Deploy succeeded, want an error\noutput:\n%s", out)
			}
			for _, want := range tc.wantErr {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not say %q", err, want)
				}
			}
			if err != nil && errors.Is(err, ErrLocked) != tc.wantLocked {
				t.Errorf("errors.Is(err, ErrLocked) = %v, want %v", !tc.wantLocked, tc.wantLocked)
			}
			for _, want := range tc.wantOut {
				if !strings.Contains(out.String(), want) {
					t.Errorf("output does not say %q:\n%s", want, out)
				}
			}
			running, images := w.state()
			if running != tc.wantServing {
				t.Errorf("serving %q after, want %q", running, tc.wantServing)
			}
			for tag, id := range tc.wantImages {
				if images[tag] != id {
					t.Errorf("%s is %s after, want %s", tag, images[tag], id)
				}
			}
			if !tc.locked {
				checkSettled(t, d)
			}

			after, _ := d.History(ctx)
			if tc.wantEntry == nil {
				if len(after) != len(before) {
					t.Errorf("a refused deploy recorded %+v", after[len(before):])
				}
			} else {
				if len(after) != len(before)+1 {
					t.Fatalf("history grew from %d to %d entries, want one more", len(before), len(after))
				}
				got := after[len(after)-1]
				if !got.Time.Equal(t0) {
					t.Errorf("entry time %v, want %v", got.Time, t0)
				}
				if (got.Error != "") != (got.Result != ResultOK) {
					t.Errorf("entry %+v: an error must be recorded exactly when it failed", got)
				}
				if strings.Contains(got.Error, "\n") {
					t.Errorf("entry error is more than one line: %q", got.Error)
				}
				got.Time, got.Error = time.Time{}, ""
				if got != *tc.wantEntry {
					t.Errorf("entry:\n got %+v\nwant %+v", got, *tc.wantEntry)
				}
			}

			newCompose, _ := os.ReadFile(hostCompose)
			synced := strings.Contains(string(newCompose), "restart: unless-stopped")
			if synced == tc.wantNoSync {
				t.Errorf("compose file synced: %v, want %v (before %q, after %q)", synced, !tc.wantNoSync, oldCompose, newCompose)
			}
		})
	}
}

// Deploy sends the release's image when the host lacks it, and refuses,
// before anything changes, one that is another image there after loading.
func TestDeployShipsTheImage(t *testing.T) {
	for _, tc := range []struct {
		name    string
		loads   string // what carebot:v2 is on the host after a load; "" = the image sent
		wantErr string
	}{
		{name: "the host lacks it: sent, then served"},
		{name: "another image under the tag after loading: refused", loads: idX, wantErr: "carebot:v2 on the fake host is eeeeeeeeeeee after loading, not the "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			d, out, w, _ := deployedWorld(t, "v1")
			eng := &shiptest.Engine{}
			img := eng.Build(t, "carebot:v2")
			d.Engine = eng
			w.mu.Lock()
			w.images = map[string]string{"v1": id1}
			w.loads = map[string]string{"v2": img.ID}
			if tc.loads != "" {
				w.loads["v2"] = tc.loads
			}
			w.mu.Unlock()

			err := d.Deploy(ctx, Release{Version: "v2", ImageID: img.ID})

			history, _ := d.History(ctx)
			running, _ := w.state()
			if w.loaded != 1 {
				t.Errorf("%d docker loads, want 1", w.loaded)
			}
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("Deploy: %v\noutput:\n%s", err, out)
				}
				if running != "v2" || len(history) != 1 || history[0].ImageID != img.ID {
					t.Errorf("serving %q, history %+v; want v2 recorded with the image sent", running, history)
				}
				if !strings.Contains(out.String(), "sending carebot:v2 to the fake host: all 3 layers") {
					t.Errorf("output:\n%s", out)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("Deploy = %v, want %q", err, tc.wantErr)
			}
			if running != "v1" || len(history) != 0 {
				t.Errorf("serving %q, history %+v: a refused image must change nothing", running, history)
			}
			checkSettled(t, d)
		})
	}
}

func TestRollback(t *testing.T) {
	history := []Entry{
		{Action: "deploy", Version: "v1", ImageID: id1, Result: ResultOK, Serving: "v1"},
		{Action: "deploy", Version: "v2", ImageID: id2, Result: ResultOK, Serving: "v2"},
	}
	tests := []struct {
		name        string
		deployed    bool
		history     []Entry
		images      map[string]string
		dangling    []string
		broken      []string
		to          string
		wantErr     []string
		wantServing string
		wantEntry   *Entry
		wantImages  map[string]string
	}{
		{
			name: "to the release before", deployed: true, history: history,
			images:      map[string]string{"v1": id1, "v2": id2},
			wantServing: "v1",
			wantEntry:   &Entry{Action: "rollback", Version: "v1", ImageID: id1, Result: ResultOK, Serving: "v1", Previous: "v2"},
		},
		{
			name: "to a named release, whose tag was reused", deployed: true, history: history,
			images: map[string]string{"v1": idX, "v2": id2}, dangling: []string{id1}, to: "v1",
			wantServing: "v1",
			wantEntry:   &Entry{Action: "rollback", Version: "v1", ImageID: id1, Result: ResultOK, Serving: "v1", Previous: "v2"},
			wantImages:  map[string]string{"v1": id1},
		},
		{
			name: "no earlier release", deployed: true, history: history[1:],
			images:      map[string]string{"v2": id2},
			wantErr:     []string{"no earlier release to roll back to", "(serving: v2)", "-to"},
			wantServing: "v2",
		},
		{
			name: "the image is gone", deployed: true, history: history,
			images:      map[string]string{"v2": id2},
			wantErr:     []string{"image carebot:v1 is not on the fake host any more"},
			wantServing: "v2",
		},
		{
			name: "the older release does not come up: back to the current one", deployed: true, history: history,
			images: map[string]string{"v1": id1, "v2": id2}, broken: []string{"v1"},
			wantErr:     []string{"release v1 failed", "rolled back to v2"},
			wantServing: "v2",
			wantEntry:   &Entry{Action: "rollback", Version: "v1", ImageID: id1, Result: ResultRolledBack, Serving: "v2", Previous: "v2"},
		},
		{
			name:    "nothing deployed",
			images:  map[string]string{"v1": id1},
			to:      "v1",
			wantErr: []string{"nothing is deployed at"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			serving := ""
			if tc.deployed {
				serving = "v2"
			}
			d, out, w, _ := deployedWorld(t, serving)
			for _, e := range tc.history {
				if err := d.record(ctx, e); err != nil {
					t.Fatal(err)
				}
			}
			before, _ := d.History(ctx)
			w.mu.Lock()
			w.images = tc.images
			for _, id := range tc.dangling {
				w.dangling[id] = true
			}
			for _, v := range tc.broken {
				w.broken[v] = true
			}
			w.mu.Unlock()

			err := d.Rollback(ctx, tc.to)

			if tc.wantErr == nil && err != nil {
				t.Fatalf("Rollback: %v\noutput:\n%s", err, out)
			}
			if tc.wantErr != nil && err == nil {
				t.Fatalf("Rollback succeeded, want an error\noutput:\n%s", out)
			}
			for _, want := range tc.wantErr {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error %q does not say %q", err, want)
				}
			}
			running, images := w.state()
			if running != tc.wantServing {
				t.Errorf("serving %q after, want %q", running, tc.wantServing)
			}
			for tag, id := range tc.wantImages {
				if images[tag] != id {
					t.Errorf("%s is %s after, want %s", tag, images[tag], id)
				}
			}
			checkSettled(t, d)
			after, _ := d.History(ctx)
			if tc.wantEntry == nil {
				if len(after) != len(before) {
					t.Errorf("recorded %+v", after[len(before):])
				}
				return
			}
			if len(after) != len(before)+1 {
				t.Fatalf("history grew from %d to %d entries, want one more", len(before), len(after))
			}
			got := after[len(after)-1]
			got.Time, got.Error = time.Time{}, ""
			if got != *tc.wantEntry {
				t.Errorf("entry:\n got %+v\nwant %+v", got, *tc.wantEntry)
			}
			if tc.wantErr == nil && !strings.Contains(out.String(), "rolling back the fake host from v2 to v1") {
				t.Errorf("output does not say what it rolls back:\n%s", out)
			}
		})
	}
}

// A migration that is a link is copied as the file it points to; a
// broken one stops the deploy before anything changes on the host.
func TestSyncFilesFollowsLinks(t *testing.T) {
	ctx := context.Background()
	d, _ := testDeployer(t, host.Local{})
	if err := os.MkdirAll(filepath.Join(d.Path, "migrations"), 0o755); err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(t.TempDir(), "002_real.sql")
	writeFile(t, target, "CREATE TABLE linked (id INTEGER);\n", 0o644)
	if err := os.Symlink(target, filepath.Join(d.Migrations, "002_linked.sql")); err != nil {
		t.Fatal(err)
	}
	if _, err := d.syncNow(ctx); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(filepath.Join(d.Path, "migrations", "002_linked.sql"))
	if err != nil || string(got) != "CREATE TABLE linked (id INTEGER);\n" {
		t.Fatalf("linked migration on the host: %q, %v", got, err)
	}
	if fi, _ := os.Lstat(filepath.Join(d.Path, "migrations", "002_linked.sql")); fi.Mode()&os.ModeSymlink != 0 {
		t.Error("the host got a link into this machine, not the file")
	}

	if err := os.Symlink(filepath.Join(t.TempDir(), "gone.sql"), filepath.Join(d.Migrations, "003_broken.sql")); err != nil {
		t.Fatal(err)
	}
	_, err = d.syncNow(ctx)
	if err == nil || !strings.Contains(err.Error(), "003_broken.sql is a broken link") {
		t.Fatalf("syncFiles with a broken link: %v", err)
	}
}

// A step the run must confirm in time is undone by the host when the time
// is up, though the run still sends its heartbeat (it is stuck).
func TestLockUndoesAnUnconfirmedStep(t *testing.T) {
	ctx := context.Background()
	d, _ := testDeployer(t, host.Local{})
	d.LeaseTime = 3 * time.Second
	if err := os.MkdirAll(d.Path, 0o755); err != nil {
		t.Fatal(err)
	}
	done := filepath.Join(d.Path, "undone")
	if err := d.intend(ctx, "testing: confirm me", "echo yes > "+shell.Quote(done)+"\n", time.Second); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(15 * time.Second)
	for !exists(done) && time.Now().Before(deadline) {
		time.Sleep(200 * time.Millisecond)
	}
	if !exists(done) {
		t.Fatal("the host did not undo a step left unconfirmed past its time")
	}
	time.Sleep(500 * time.Millisecond)
	if err := d.Lock(ctx); err == nil || !strings.Contains(err.Error(), "was lost") {
		t.Errorf("the stuck run's next step: %v, want the lock lost", err)
	}
}

// A full disk while taking the lock says so; it is not "locked".
func TestLockOnAFullDisk(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a small tmpfs")
	}
	d, _ := testDeployer(t, host.Local{})
	if err := os.MkdirAll(d.Path, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=64k", "carebot-test", d.Path).CombinedOutput(); err != nil {
		t.Skipf("mount tmpfs: %v %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("umount", "-l", d.Path).Run() })
	fill, _ := os.Create(filepath.Join(d.Path, "fill"))
	_, _ = fill.Write(make([]byte, 128<<10)) // until the disk is full
	fill.Close()
	err := d.Lock(context.Background())
	if err == nil {
		t.Fatal("Lock on a full disk succeeded")
	}
	if errors.Is(err, ErrLocked) || strings.Contains(err.Error(), "another run") {
		t.Errorf("a full disk reads as a lock held by another run: %v", err)
	}
	if !strings.Contains(err.Error(), "No space left") || !strings.Contains(err.Error(), "free some space") {
		t.Errorf("error %q does not say the disk is full and what to do", err)
	}
	t.Logf("full disk: %v", err)
}

// A deploy of the release that already serves, healthy, with the same
// files and image, sends nothing and restarts nothing; after the host's
// .env changed, it does restart (Compose recreates for a new env_file).
func TestDeployNoop(t *testing.T) {
	ctx := context.Background()
	d, out, w, h := deployedWorld(t, "")
	eng := &shiptest.Engine{}
	eng.Know(id1)
	d.Engine = eng
	w.mu.Lock()
	w.images = map[string]string{"v1": id1}
	w.mu.Unlock()
	if err := d.Deploy(ctx, Release{Version: "v1", ImageID: id1}); err != nil {
		t.Fatalf("first deploy: %v\n%s", err, out)
	}
	ups := len(h.ran("up -d"))
	out.Reset()
	if err := d.Deploy(ctx, Release{Version: "v1", ImageID: id1}); err != nil {
		t.Fatalf("redeploy: %v\n%s", err, out)
	}
	if got := len(h.ran("up -d")); got != ups || !strings.Contains(out.String(), "already serves carebot:v1") || !strings.Contains(out.String(), "nothing sent, nothing restarted") {
		t.Errorf("redeploy of what serves ran compose up %d more times; output:\n%s", got-ups, out)
	}
	history, _ := d.History(ctx)
	if len(history) != 1 {
		t.Errorf("a no-op redeploy wrote history: %+v", history)
	}

	// The host's .env changed after the container started: not a no-op.
	future := time.Now().Add(2 * time.Second)
	if err := os.Chtimes(filepath.Join(d.Path, ".env"), future, future); err != nil {
		t.Fatal(err)
	}
	out.Reset()
	if err := d.Deploy(ctx, Release{Version: "v1", ImageID: id1}); err != nil {
		t.Fatalf("redeploy after .env changed: %v\n%s", err, out)
	}
	if got := len(h.ran("up -d")); got != ups+1 {
		t.Errorf("after .env changed, compose up ran %d more times, want 1; output:\n%s", got-ups, out)
	}
}
