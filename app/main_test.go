package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

const secretToken = "123456:SUPER-secret-bot-token-do-not-leak"

// syncBuffer is a goroutine-safe log sink.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func writeFile(t *testing.T, dir, name, content string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// testConfig returns a config with a fresh data dir and migrations dir holding
// two good migrations.
func testConfig(t *testing.T) config {
	t.Helper()
	root := t.TempDir()
	migDir := filepath.Join(root, "migrations")
	if err := os.Mkdir(migDir, 0o755); err != nil {
		t.Fatal(err)
	}
	writeFile(t, migDir, "001_init.sql", `
CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL);
INSERT INTO users (name) VALUES ('alice');
`)
	writeFile(t, migDir, "002_settings.sql", `
CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT);
INSERT INTO settings (key, value) VALUES ('greeting', 'hello');
`)
	writeFile(t, migDir, "README.txt", "not a migration")
	return config{
		Port:          "5555",
		DataDir:       filepath.Join(root, "data"), // does not exist yet: setup creates it
		MigrationsDir: migDir,
		Version:       "v-test",
		Commit:        "abc123",
	}
}

func newTestApp(t *testing.T, cfg config) (*app, *syncBuffer) {
	t.Helper()
	logs := &syncBuffer{}
	a, err := setup(cfg, log.New(logs, "", 0))
	if err != nil {
		t.Fatalf("setup: %v\nlogs:\n%s", err, logs)
	}
	t.Cleanup(func() { a.db.Close() })
	return a, logs
}

func getHealth(t *testing.T, h http.Handler) (int, healthResponse, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/health", nil))
	var hr healthResponse
	if err := json.Unmarshal(rec.Body.Bytes(), &hr); err != nil {
		t.Fatalf("health body not JSON: %v: %q", err, rec.Body.String())
	}
	return rec.Code, hr, rec.Body.String()
}

func TestLoadConfig(t *testing.T) {
	cfg, err := loadConfig(func(string) string { return "" })
	if err != nil {
		t.Fatal(err)
	}
	want := config{Port: "5555", DataDir: "/app/data", MigrationsDir: "/app/CareBot/migrations", Version: "dev", Commit: "unknown"}
	if cfg != want {
		t.Errorf("defaults = %+v, want %+v", cfg, want)
	}

	env := map[string]string{
		"APP_PORT": "8080", "CAREBOT_DATA_DIR": "/d", "CAREBOT_MIGRATIONS_DIR": "/m",
		"CAREBOT_VERSION": "v1.2.3", "CAREBOT_COMMIT": "deadbeef", "CAREBOT_HEALTH_FAIL": "Yes",
		"BOT_TOKEN": secretToken,
	}
	cfg, err = loadConfig(func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	want = config{Port: "8080", DataDir: "/d", MigrationsDir: "/m", Version: "v1.2.3", Commit: "deadbeef", HealthFail: true, TokenConfigured: true}
	if cfg != want {
		t.Errorf("cfg = %+v, want %+v", cfg, want)
	}
	if s := fmt.Sprintf("%+v %#v", cfg, cfg); strings.Contains(s, secretToken) {
		t.Error("config holds the token")
	}

	for _, p := range []string{"0", "abc", "70000", "-1"} {
		if _, err := loadConfig(func(k string) string { return map[string]string{"APP_PORT": p}[k] }); err == nil {
			t.Errorf("APP_PORT=%q accepted", p)
		}
	}
}

func TestTruthy(t *testing.T) {
	for s, want := range map[string]bool{
		"1": true, "true": true, "TRUE": true, "yes": true, " Yes ": true,
		"": false, "0": false, "false": false, "no": false, "on": false,
	} {
		if got := truthy(s); got != want {
			t.Errorf("truthy(%q) = %v, want %v", s, got, want)
		}
	}
}

func TestMigrationsAppliedOnceAcrossTwoStarts(t *testing.T) {
	cfg := testConfig(t)

	for start := 1; start <= 2; start++ {
		logs := &syncBuffer{}
		a, err := setup(cfg, log.New(logs, "", 0))
		if err != nil {
			t.Fatalf("start %d: %v", start, err)
		}
		var applied, users, settings int
		if err := a.db.QueryRow(`SELECT COUNT(*) FROM schema_migrations`).Scan(&applied); err != nil {
			t.Fatal(err)
		}
		if err := a.db.QueryRow(`SELECT COUNT(*) FROM users`).Scan(&users); err != nil {
			t.Fatal(err)
		}
		if err := a.db.QueryRow(`SELECT COUNT(*) FROM settings`).Scan(&settings); err != nil {
			t.Fatal(err)
		}
		if applied != 2 || users != 1 || settings != 1 {
			t.Errorf("start %d: applied=%d users=%d settings=%d, want 2/1/1", start, applied, users, settings)
		}
		wantNew := map[int]string{1: "new this start: 2", 2: "new this start: 0"}[start]
		if !strings.Contains(logs.String(), wantNew) || !strings.Contains(logs.String(), "migrations_applied=2") {
			t.Errorf("start %d: logs lack %q:\n%s", start, wantNew, logs)
		}
		if start == 2 && strings.Contains(logs.String(), "applied migration") {
			t.Errorf("start 2 re-applied a migration:\n%s", logs)
		}
		if code, hr, _ := getHealth(t, a.routes()); code != 200 || hr.Migrations != 2 {
			t.Errorf("start %d: health code=%d migrations=%d", start, code, hr.Migrations)
		}
		var mode string
		if err := a.db.QueryRow(`PRAGMA journal_mode`).Scan(&mode); err != nil || mode != "wal" {
			t.Errorf("journal_mode = %q (%v), want wal", mode, err)
		}
		a.db.Close()
	}

	// A new migration added later is applied on the next start, alone.
	writeFile(t, cfg.MigrationsDir, "003_more.sql", `ALTER TABLE users ADD COLUMN email TEXT;`)
	logs := &syncBuffer{}
	a, err := setup(cfg, log.New(logs, "", 0))
	if err != nil {
		t.Fatal(err)
	}
	defer a.db.Close()
	if !strings.Contains(logs.String(), "applied migration 003_more.sql") ||
		!strings.Contains(logs.String(), "new this start: 1") ||
		!strings.Contains(logs.String(), "migrations_applied=3") {
		t.Errorf("third start logs:\n%s", logs)
	}
}

func TestFailingMigrationIsReportedByName(t *testing.T) {
	cfg := testConfig(t)
	// Creates a table, then fails: the whole file must be rolled back.
	writeFile(t, cfg.MigrationsDir, "003_broken.sql", `
CREATE TABLE half_done (id INTEGER);
INSERT INTO no_such_table VALUES (1);
`)
	writeFile(t, cfg.MigrationsDir, "004_after.sql", `CREATE TABLE after_broken (id INTEGER);`)

	logs := &syncBuffer{}
	_, err := setup(cfg, log.New(logs, "", 0))
	if err == nil {
		t.Fatal("setup succeeded despite a broken migration")
	}
	if !strings.Contains(err.Error(), "003_broken.sql") {
		t.Errorf("error does not name the file: %v", err)
	}
	t.Logf("error: %v", err)

	db, err := openDB(filepath.Join(cfg.DataDir, dbFileName))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	rows, err := db.Query(`SELECT name FROM schema_migrations ORDER BY name`)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			t.Fatal(err)
		}
		names = append(names, n)
	}
	rows.Close()
	if strings.Join(names, ",") != "001_init.sql,002_settings.sql" {
		t.Errorf("recorded migrations = %v", names)
	}
	for _, tbl := range []string{"half_done", "after_broken"} {
		var n int
		if err := db.QueryRow(`SELECT COUNT(*) FROM sqlite_master WHERE name = ?`, tbl).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n != 0 {
			t.Errorf("table %s exists: failed migration not rolled back / later one ran", tbl)
		}
	}
}

func TestMissingMigrationsDirContinues(t *testing.T) {
	cfg := testConfig(t)
	cfg.MigrationsDir = filepath.Join(t.TempDir(), "nope")
	a, logs := newTestApp(t, cfg)
	if !strings.Contains(logs.String(), "does not exist") {
		t.Errorf("missing dir not logged:\n%s", logs)
	}
	if code, hr, _ := getHealth(t, a.routes()); code != 200 || hr.Migrations != 0 {
		t.Errorf("health code=%d migrations=%d", code, hr.Migrations)
	}
}

func TestHealthOK(t *testing.T) {
	a, _ := newTestApp(t, testConfig(t))
	code, hr, body := getHealth(t, a.routes())
	if code != http.StatusOK {
		t.Fatalf("code = %d, body %s", code, body)
	}
	want := healthResponse{Status: "ok", Version: "v-test", Commit: "abc123", Migrations: 2}
	hr.UptimeSeconds = 0
	if hr != want {
		t.Errorf("health = %+v, want %+v", hr, want)
	}
	for _, key := range []string{`"status"`, `"version"`, `"commit"`, `"migrations"`, `"uptime_seconds"`, `"token_configured":false`} {
		if !strings.Contains(body, key) {
			t.Errorf("body lacks %s: %s", key, body)
		}
	}
}

func TestHealthUnhealthyMode(t *testing.T) {
	cfg := testConfig(t)
	cfg.HealthFail = true
	a, logs := newTestApp(t, cfg)
	code, hr, body := getHealth(t, a.routes())
	if code != http.StatusServiceUnavailable || hr.Status != "unhealthy" || !strings.Contains(hr.Reason, "CAREBOT_HEALTH_FAIL") {
		t.Errorf("code=%d body=%s", code, body)
	}
	if !strings.Contains(logs.String(), "CAREBOT_HEALTH_FAIL") {
		t.Errorf("forced failure not logged:\n%s", logs)
	}
}

func TestHealthUnhealthyWhenDBDown(t *testing.T) {
	a, _ := newTestApp(t, testConfig(t))
	a.db.Close()
	code, hr, body := getHealth(t, a.routes())
	if code != http.StatusServiceUnavailable || hr.Status != "unhealthy" || !strings.HasPrefix(hr.Reason, "database:") {
		t.Errorf("code=%d body=%s", code, body)
	}
}

func TestRecordsRoundTrip(t *testing.T) {
	a, _ := newTestApp(t, testConfig(t))
	srv := httptest.NewServer(a.routes())
	defer srv.Close()

	getRecords := func() (count int, last string) {
		t.Helper()
		resp, err := http.Get(srv.URL + "/api/records")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var out struct {
			Count int    `json:"count"`
			Last  string `json:"last"`
		}
		if resp.StatusCode != 200 {
			t.Fatalf("GET /api/records: %s", resp.Status)
		}
		if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
			t.Fatal(err)
		}
		return out.Count, out.Last
	}

	if n, last := getRecords(); n != 0 || last != "" {
		t.Errorf("empty: count=%d last=%q", n, last)
	}
	for i, body := range []string{"first note", "second note — ünïcode"} {
		resp, err := http.Post(srv.URL+"/api/records", "text/plain", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		var out struct {
			ID int64 `json:"id"`
		}
		err = json.NewDecoder(resp.Body).Decode(&out)
		resp.Body.Close()
		if err != nil || resp.StatusCode != http.StatusCreated || out.ID != int64(i+1) {
			t.Errorf("POST %d: status=%d id=%d err=%v", i, resp.StatusCode, out.ID, err)
		}
	}
	if n, last := getRecords(); n != 2 || last != "second note — ünïcode" {
		t.Errorf("count=%d last=%q", n, last)
	}

	// Empty body is refused; wrong method is 405; unknown path 404.
	resp, err := http.Post(srv.URL+"/api/records", "text/plain", strings.NewReader(""))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusBadRequest {
		t.Errorf("empty POST: %s", resp.Status)
	}
	req, _ := http.NewRequest(http.MethodDelete, srv.URL+"/api/records", nil)
	if resp, err = http.DefaultClient.Do(req); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("DELETE: %s", resp.Status)
	}
	if resp, err = http.Get(srv.URL + "/nope"); err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("GET /nope: %s", resp.Status)
	}

	// Rows survive a restart (they live in the data dir).
	a.db.Close()
	a2, _ := newTestApp(t, a.cfg)
	srv.Config.Handler = a2.routes()
	if n, _ := getRecords(); n != 2 {
		t.Errorf("after restart count=%d", n)
	}
}

func TestRootBanner(t *testing.T) {
	a, _ := newTestApp(t, testConfig(t))
	rec := httptest.NewRecorder()
	a.routes().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/", nil))
	if rec.Code != 200 || !strings.Contains(rec.Body.String(), "v-test") || strings.Count(rec.Body.String(), "\n") != 1 {
		t.Errorf("GET / = %d %q", rec.Code, rec.Body.String())
	}
}

// TestTokenNeverExposed runs the whole service (config from an environment
// holding BOT_TOKEN, real listener, graceful shutdown) and checks the token
// appears nowhere in responses or logs.
func TestTokenNeverExposed(t *testing.T) {
	base := testConfig(t)
	env := map[string]string{
		"APP_PORT":               "5555",
		"CAREBOT_DATA_DIR":       base.DataDir,
		"CAREBOT_MIGRATIONS_DIR": base.MigrationsDir,
		"CAREBOT_VERSION":        "v-test",
		"BOT_TOKEN":              secretToken,
	}
	cfg, err := loadConfig(func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- run(ctx, cfg, log.New(logs, "", 0), ln) }()

	baseURL := "http://" + ln.Addr().String()
	var seen strings.Builder
	fetch := func(method, path, body string) int {
		t.Helper()
		req, _ := http.NewRequest(method, baseURL+path, strings.NewReader(body))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		seen.Write(b)
		for k, v := range resp.Header {
			seen.WriteString(k + ": " + strings.Join(v, ",") + "\n")
		}
		return resp.StatusCode
	}

	if code := fetch("GET", "/health", ""); code != 200 {
		t.Errorf("/health = %d", code)
	}
	if !strings.Contains(seen.String(), `"token_configured":true`) {
		t.Errorf("health lacks token_configured:true: %s", seen.String())
	}
	fetch("GET", "/", "")
	fetch("POST", "/api/records", "hello")
	fetch("GET", "/api/records", "")
	fetch("GET", "/missing", "")

	// The -healthcheck probe against the running server succeeds.
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	var hcOut bytes.Buffer
	if code := runHealthcheck(port, &hcOut); code != 0 {
		t.Errorf("healthcheck exit %d: %s", code, hcOut.String())
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("run returned %v", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("run did not shut down")
	}

	all := seen.String() + logs.String() + hcOut.String()
	for _, needle := range []string{secretToken, "SUPER-secret", url.QueryEscape(secretToken)} {
		if strings.Contains(all, needle) {
			t.Errorf("token fragment %q leaked:\n%s", needle, all)
		}
	}
	for _, want := range []string{"starting carebot", "version=v-test", "port=5555", "migrations_applied=2", "token_configured=true", "shutdown complete"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("logs lack %q:\n%s", want, logs)
		}
	}
}

func TestHealthcheckProbe(t *testing.T) {
	status := http.StatusOK
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/health" {
			http.NotFound(w, r)
			return
		}
		w.WriteHeader(status)
	}))
	defer srv.Close()
	_, port, _ := net.SplitHostPort(strings.TrimPrefix(srv.URL, "http://"))

	var out bytes.Buffer
	if code := runHealthcheck(port, &out); code != 0 {
		t.Errorf("200: exit %d (%s)", code, out.String())
	}
	status = http.StatusServiceUnavailable
	if code := runHealthcheck(port, &out); code != 1 {
		t.Errorf("503: exit %d (%s)", code, out.String())
	}

	// Nothing listening.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	_, closedPort, _ := net.SplitHostPort(ln.Addr().String())
	ln.Close()
	if code := runHealthcheck(closedPort, &out); code != 1 {
		t.Errorf("closed port: exit %d", code)
	}
}

func TestHealthStartingDuringStartupDelay(t *testing.T) {
	cfg := testConfig(t)
	cfg.StartupDelay = time.Hour
	a, _ := newTestApp(t, cfg)
	code, hr, body := getHealth(t, a.routes())
	if code != http.StatusServiceUnavailable || hr.Status != "starting" {
		t.Errorf("code=%d body=%s", code, body)
	}
	a.started = time.Now().Add(-2 * time.Hour)
	if code, _, body := getHealth(t, a.routes()); code != http.StatusOK {
		t.Errorf("after the delay: code=%d body=%s", code, body)
	}
	if _, err := loadConfig(func(k string) string {
		if k == "CAREBOT_STARTUP_DELAY" {
			return "soon"
		}
		return ""
	}); err == nil {
		t.Error("CAREBOT_STARTUP_DELAY=soon was accepted")
	}
}

func TestGetRecordByID(t *testing.T) {
	a, _ := newTestApp(t, testConfig(t))
	srv := httptest.NewServer(a.routes())
	defer srv.Close()
	resp, err := http.Post(srv.URL+"/api/records", "text/plain", strings.NewReader("hello"))
	if err != nil {
		t.Fatal(err)
	}
	var created struct{ ID int64 }
	json.NewDecoder(resp.Body).Decode(&created)
	resp.Body.Close()
	resp, err = http.Get(fmt.Sprintf("%s/api/records/%d", srv.URL, created.ID))
	if err != nil {
		t.Fatal(err)
	}
	var got struct {
		ID   int64
		Body string
	}
	json.NewDecoder(resp.Body).Decode(&got)
	resp.Body.Close()
	if resp.StatusCode != 200 || got.ID != created.ID || got.Body != "hello" {
		t.Errorf("GET record %d: %d %+v", created.ID, resp.StatusCode, got)
	}
	resp, err = http.Get(fmt.Sprintf("%s/api/records/%d", srv.URL, created.ID+1))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNotFound {
		t.Errorf("GET of a missing record: %d", resp.StatusCode)
	}
}
