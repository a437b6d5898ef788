// Command carebot is a small sample service that stands for the user's own
// service ("CareBot") in the build-and-deploy tool.
//
// It keeps its state in SQLite (pure-Go driver, so the binary is static and
// runs in a FROM scratch image), applies SQL migrations from a mounted
// directory at start-up and serves a tiny HTTP API with a /health endpoint.
//
// The same binary doubles as its own container healthcheck: run with
// -healthcheck it probes http://127.0.0.1:$APP_PORT/health and exits 0 when
// the answer is 200, 1 otherwise (the image has no shell or curl).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Defaults, overridable through the environment.
const (
	defaultPort          = "5555"
	defaultDataDir       = "/app/data"
	defaultMigrationsDir = "/app/CareBot/migrations"
	defaultVersion       = "dev"
	defaultCommit        = "unknown"

	healthcheckTimeout = 3 * time.Second
	shutdownTimeout    = 8 * time.Second // below Docker's default 10 s stop grace period
)

// config is the service configuration. It deliberately does not hold the bot
// token itself, only whether one is configured, so the secret cannot leak
// through a log line or a %+v of this struct.
type config struct {
	Port            string
	DataDir         string
	MigrationsDir   string
	Version         string
	Commit          string
	HealthFail      bool
	StartupDelay    time.Duration // /health answers 503 "starting" this long after start
	TokenConfigured bool
}

// loadConfig reads the configuration through getenv (os.Getenv in main, a
// map in tests).
func loadConfig(getenv func(string) string) (config, error) {
	get := func(key, def string) string {
		if v := strings.TrimSpace(getenv(key)); v != "" {
			return v
		}
		return def
	}
	cfg := config{
		Port:            get("APP_PORT", defaultPort),
		DataDir:         get("CAREBOT_DATA_DIR", defaultDataDir),
		MigrationsDir:   get("CAREBOT_MIGRATIONS_DIR", defaultMigrationsDir),
		Version:         get("CAREBOT_VERSION", defaultVersion),
		Commit:          get("CAREBOT_COMMIT", defaultCommit),
		HealthFail:      truthy(getenv("CAREBOT_HEALTH_FAIL")),
		TokenConfigured: strings.TrimSpace(getenv("BOT_TOKEN")) != "",
	}
	if err := validatePort(cfg.Port); err != nil {
		return config{}, err
	}
	if v := strings.TrimSpace(getenv("CAREBOT_STARTUP_DELAY")); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 {
			return config{}, fmt.Errorf("invalid CAREBOT_STARTUP_DELAY %q: want a duration such as 8s", v)
		}
		cfg.StartupDelay = d
	}
	return cfg, nil
}

func validatePort(p string) error {
	n, err := strconv.Atoi(p)
	if err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("invalid APP_PORT %q: want a number from 1 to 65535", p)
	}
	return nil
}

// truthy reports whether s is "1", "true" or "yes" (case-insensitive).
func truthy(s string) bool {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "1", "true", "yes":
		return true
	}
	return false
}

func main() {
	healthcheck := flag.Bool("healthcheck", false,
		"probe http://127.0.0.1:$APP_PORT/health and exit 0 if it answers 200, 1 otherwise")
	flag.Parse()

	if *healthcheck {
		os.Exit(runHealthcheck(os.Getenv("APP_PORT"), os.Stdout))
	}

	logger := log.New(os.Stdout, "carebot: ", log.LstdFlags|log.LUTC|log.Lmsgprefix)

	cfg, err := loadConfig(os.Getenv)
	if err != nil {
		logger.Printf("fatal: %v", err)
		os.Exit(1)
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	if err := run(ctx, cfg, logger, nil); err != nil {
		logger.Printf("fatal: %v", err)
		stop()
		os.Exit(1)
	}
}

// run starts the service and blocks until ctx is cancelled (SIGTERM/SIGINT),
// then shuts the HTTP server down gracefully and closes the database. If ln is
// nil it listens on 0.0.0.0:cfg.Port; tests pass their own listener.
func run(ctx context.Context, cfg config, logger *log.Logger, ln net.Listener) error {
	a, err := setup(cfg, logger)
	if err != nil {
		return err
	}
	defer func() {
		if err := a.db.Close(); err != nil {
			logger.Printf("closing database: %v", err)
		}
	}()

	addr := net.JoinHostPort("0.0.0.0", cfg.Port)
	if ln == nil {
		ln, err = net.Listen("tcp", addr)
		if err != nil {
			return fmt.Errorf("listen on %s: %w", addr, err)
		}
	} else {
		addr = ln.Addr().String()
	}

	srv := &http.Server{
		Handler:           a.routes(),
		ReadHeaderTimeout: 10 * time.Second,
		ReadTimeout:       30 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       60 * time.Second,
		ErrorLog:          logger,
	}

	serveErr := make(chan error, 1)
	go func() { serveErr <- srv.Serve(ln) }()
	logger.Printf("listening on %s", addr)

	select {
	case err := <-serveErr:
		return fmt.Errorf("http server: %w", err)
	case <-ctx.Done():
	}

	logger.Printf("shutdown requested, stopping HTTP server (timeout %s)", shutdownTimeout)
	shutdownCtx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		logger.Printf("graceful shutdown incomplete: %v", err)
	}
	if err := <-serveErr; err != nil && !errors.Is(err, http.ErrServerClosed) {
		logger.Printf("http server: %v", err)
	}
	logger.Printf("shutdown complete (version=%s)", cfg.Version)
	return nil
}

// runHealthcheck performs the -healthcheck probe and returns the exit code.
// Only the status is printed (Docker keeps it in `docker inspect`).
func runHealthcheck(port string, out io.Writer) int {
	if strings.TrimSpace(port) == "" {
		port = defaultPort
	}
	port = strings.TrimSpace(port)
	url := "http://" + net.JoinHostPort("127.0.0.1", port) + "/health"
	client := &http.Client{Timeout: healthcheckTimeout}
	resp, err := client.Get(url)
	if err != nil {
		fmt.Fprintf(out, "unhealthy: %v\n", err)
		return 1
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode != http.StatusOK {
		fmt.Fprintf(out, "unhealthy: %s answered %s\n", url, resp.Status)
		return 1
	}
	fmt.Fprintf(out, "healthy: %s answered %s\n", url, resp.Status)
	return 0
}
