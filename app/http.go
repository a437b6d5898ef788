package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"
)

// maxRecordBody caps the size of a POST /api/records body.
const maxRecordBody = 1 << 20

func (a *app) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", a.handleRoot)
	mux.HandleFunc("GET /health", a.handleHealth)
	mux.HandleFunc("POST /api/records", a.handleCreateRecord)
	mux.HandleFunc("GET /api/records", a.handleListRecords)
	mux.HandleFunc("GET /api/records/{id}", a.handleGetRecord)
	return mux
}

func (a *app) handleRoot(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	fmt.Fprintf(w, "CareBot %s (commit %s)\n", a.cfg.Version, a.cfg.Commit)
}

// healthResponse is the /health body. It carries only whether a bot token is
// configured, never the token.
type healthResponse struct {
	Status          string `json:"status"`
	Reason          string `json:"reason,omitempty"`
	Version         string `json:"version"`
	Commit          string `json:"commit"`
	Migrations      int    `json:"migrations"`
	UptimeSeconds   int64  `json:"uptime_seconds"`
	TokenConfigured bool   `json:"token_configured"`
}

func (a *app) handleHealth(w http.ResponseWriter, r *http.Request) {
	resp := healthResponse{
		Status:          "ok",
		Version:         a.cfg.Version,
		Commit:          a.cfg.Commit,
		UptimeSeconds:   int64(time.Since(a.started).Seconds()),
		TokenConfigured: a.cfg.TokenConfigured,
	}
	code := http.StatusOK

	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	n, err := a.migrationCount(ctx)
	switch {
	case err != nil:
		resp.Status, resp.Reason, code = "unhealthy", "database: "+err.Error(), http.StatusServiceUnavailable
	case a.cfg.HealthFail:
		resp.Status, resp.Reason, code = "unhealthy", "forced by CAREBOT_HEALTH_FAIL", http.StatusServiceUnavailable
	case time.Since(a.started) < a.cfg.StartupDelay:
		resp.Status, resp.Reason, code = "starting", "CAREBOT_STARTUP_DELAY has not passed yet", http.StatusServiceUnavailable
	}
	resp.Migrations = n
	writeJSON(w, code, resp)
}

// migrationCount pings the database and counts the applied migrations (which
// also proves the database file can actually be read).
func (a *app) migrationCount(ctx context.Context) (int, error) {
	if err := a.db.PingContext(ctx); err != nil {
		return 0, err
	}
	var n int
	err := a.db.QueryRowContext(ctx, `SELECT COUNT(*) FROM schema_migrations`).Scan(&n)
	return n, err
}

func (a *app) handleCreateRecord(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxRecordBody))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			writeError(w, http.StatusRequestEntityTooLarge, "body too large")
			return
		}
		writeError(w, http.StatusBadRequest, "cannot read body")
		return
	}
	if len(body) == 0 {
		writeError(w, http.StatusBadRequest, "empty body")
		return
	}
	res, err := a.db.ExecContext(r.Context(),
		`INSERT INTO records (body, created_at) VALUES (?, ?)`,
		string(body), time.Now().UTC().Format(time.RFC3339Nano))
	if err != nil {
		a.logger.Printf("insert record: %v", err)
		writeError(w, http.StatusInternalServerError, "database error")
		return
	}
	id, err := res.LastInsertId()
	if err != nil {
		a.logger.Printf("insert record: last id: %v", err)
		writeError(w, http.StatusInternalServerError, "database error")
		return
	}
	writeJSON(w, http.StatusCreated, map[string]int64{"id": id})
}

func (a *app) handleListRecords(w http.ResponseWriter, r *http.Request) {
	var out struct {
		Count int    `json:"count"`
		Last  string `json:"last"`
	}
	if err := a.db.QueryRowContext(r.Context(), `SELECT COUNT(*) FROM records`).Scan(&out.Count); err != nil {
		a.logger.Printf("count records: %v", err)
		writeError(w, http.StatusInternalServerError, "database error")
		return
	}
	var last sql.NullString
	err := a.db.QueryRowContext(r.Context(), `SELECT body FROM records ORDER BY id DESC LIMIT 1`).Scan(&last)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		a.logger.Printf("last record: %v", err)
		writeError(w, http.StatusInternalServerError, "database error")
		return
	}
	out.Last = last.String
	writeJSON(w, http.StatusOK, out)
}

// handleGetRecord answers one record by its id, for clients that check
// what they wrote is still there.
func (a *app) handleGetRecord(w http.ResponseWriter, r *http.Request) {
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil {
		writeError(w, http.StatusBadRequest, "bad id")
		return
	}
	var body string
	err = a.db.QueryRowContext(r.Context(), `SELECT body FROM records WHERE id = ?`, id).Scan(&body)
	switch {
	case errors.Is(err, sql.ErrNoRows):
		writeError(w, http.StatusNotFound, "no such record")
	case err != nil:
		a.logger.Printf("get record: %v", err)
		writeError(w, http.StatusInternalServerError, "database error")
	default:
		writeJSON(w, http.StatusOK, map[string]any{"id": id, "body": body})
	}
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, map[string]string{"error": msg})
}
