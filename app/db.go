package main

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io/fs"
	"log"
	"os"
	"path/filepath"
	"strings"
	"time"

	_ "modernc.org/sqlite" // pure-Go SQLite driver ("sqlite"): no cgo, static binary
)

// dbFileName is the database file inside the data directory.
const dbFileName = "carebot.db"

// app is the running service state shared by the HTTP handlers.
type app struct {
	cfg     config
	db      *sql.DB
	started time.Time
	logger  *log.Logger
}

// setup prepares everything the service needs before it serves requests:
// data directory, database, migrations and the app's own tables.
// On success the caller owns a.db and must close it.
func setup(cfg config, logger *log.Logger) (*app, error) {
	if err := os.MkdirAll(cfg.DataDir, 0o755); err != nil {
		return nil, fmt.Errorf("create data dir %s: %w", cfg.DataDir, err)
	}
	dbPath := filepath.Join(cfg.DataDir, dbFileName)
	db, err := openDB(dbPath)
	if err != nil {
		return nil, err
	}

	newly, total, err := applyMigrations(db, cfg.MigrationsDir, logger)
	if err != nil {
		db.Close()
		return nil, err
	}
	if err := ensureAppTables(db); err != nil {
		db.Close()
		return nil, err
	}

	logger.Printf("starting carebot version=%s commit=%s port=%s db=%s migrations_applied=%d (new this start: %d) token_configured=%t",
		cfg.Version, cfg.Commit, cfg.Port, dbPath, total, newly, cfg.TokenConfigured)
	if cfg.HealthFail {
		logger.Printf("CAREBOT_HEALTH_FAIL is set: /health will answer 503 unhealthy")
	}
	return &app{cfg: cfg, db: db, started: time.Now(), logger: logger}, nil
}

// openDB opens (creating if needed) the SQLite database at path. The pragmas
// are given in the DSN so that every pooled connection gets them:
//   - journal_mode=WAL: readers don't block the writer;
//   - busy_timeout=5000: wait up to 5 s for a lock instead of failing at once;
//   - temp_store=MEMORY: the scratch image has no /tmp for temp files.
//
// _txlock=immediate makes write transactions take the write lock up front,
// which avoids SQLITE_BUSY on lock upgrade.
func openDB(path string) (*sql.DB, error) {
	dsn := path + "?_pragma=busy_timeout(5000)&_pragma=journal_mode(WAL)&_pragma=temp_store(MEMORY)&_txlock=immediate"
	db, err := sql.Open("sqlite", dsn)
	if err != nil {
		return nil, fmt.Errorf("open database %s: %w", path, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := db.PingContext(ctx); err != nil {
		db.Close()
		return nil, fmt.Errorf("open database %s: %w", path, err)
	}
	return db, nil
}

// applyMigrations applies every *.sql file in dir, in lexical order, each at
// most once. Applied files are recorded in schema_migrations; each file runs
// in its own transaction together with its bookkeeping row, so a failing file
// leaves no trace and is retried on the next start. It returns how many files
// were applied now and how many are recorded in total.
//
// A missing dir is logged and is not an error (nothing to apply).
func applyMigrations(db *sql.DB, dir string, logger *log.Logger) (newly, total int, err error) {
	if _, err := db.Exec(`CREATE TABLE IF NOT EXISTS schema_migrations (
		name       TEXT PRIMARY KEY,
		applied_at TEXT
	)`); err != nil {
		return 0, 0, fmt.Errorf("create schema_migrations: %w", err)
	}

	entries, err := os.ReadDir(dir) // sorted by file name
	switch {
	case errors.Is(err, fs.ErrNotExist):
		logger.Printf("migrations dir %s does not exist; no migrations applied", dir)
	case err != nil:
		return 0, 0, fmt.Errorf("read migrations dir %s: %w", dir, err)
	}

	for _, e := range entries {
		name := e.Name()
		if !strings.HasSuffix(name, ".sql") || e.IsDir() {
			continue
		}
		done, err := migrationApplied(db, name)
		if err != nil {
			return newly, 0, err
		}
		if done {
			continue
		}
		body, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			return newly, 0, fmt.Errorf("migration %s: read: %w", name, err)
		}
		if err := applyOne(db, name, string(body)); err != nil {
			return newly, 0, err
		}
		logger.Printf("applied migration %s", name)
		newly++
	}

	if err := db.QueryRow(`SELECT COUNT(*) FROM schema_migrations`).Scan(&total); err != nil {
		return newly, 0, fmt.Errorf("count migrations: %w", err)
	}
	return newly, total, nil
}

func migrationApplied(db *sql.DB, name string) (bool, error) {
	var n int
	if err := db.QueryRow(`SELECT COUNT(*) FROM schema_migrations WHERE name = ?`, name).Scan(&n); err != nil {
		return false, fmt.Errorf("migration %s: check if applied: %w", name, err)
	}
	return n > 0, nil
}

// applyOne runs one migration file and records it, in a single transaction.
func applyOne(db *sql.DB, name, body string) (err error) {
	tx, err := db.Begin()
	if err != nil {
		return fmt.Errorf("migration %s failed: begin: %w", name, err)
	}
	defer func() {
		if err != nil {
			_ = tx.Rollback()
		}
	}()
	if strings.TrimSpace(body) != "" {
		if _, err = tx.Exec(body); err != nil {
			return fmt.Errorf("migration %s failed: %w", name, err)
		}
	}
	if _, err = tx.Exec(`INSERT INTO schema_migrations (name, applied_at) VALUES (?, ?)`,
		name, time.Now().UTC().Format(time.RFC3339)); err != nil {
		return fmt.Errorf("migration %s failed: record: %w", name, err)
	}
	if err = tx.Commit(); err != nil {
		return fmt.Errorf("migration %s failed: commit: %w", name, err)
	}
	return nil
}

// ensureAppTables creates the app's own tables (not managed by migrations).
func ensureAppTables(db *sql.DB) error {
	if _, err := db.Exec(`CREATE TABLE IF NOT EXISTS records (
		id         INTEGER PRIMARY KEY,
		body       TEXT,
		created_at TEXT
	)`); err != nil {
		return fmt.Errorf("create records table: %w", err)
	}
	return nil
}
