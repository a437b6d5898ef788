// Command benchapp is the service of the deploy benchmark's image: it
// answers GET /health as the sample app does, with the version and commit
// from VERSION and COMMIT, and takes its time to stop, as a service that
// drains its work does: on SIGTERM it stops listening at once, then exits
// STOP_DELAY (2s) later. With -healthcheck it probes its own /health (the
// image has no curl), for the compose file's healthcheck.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"log"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"
)

func main() {
	check := flag.Bool("healthcheck", false, "probe /health and exit 0 if it answers 200")
	flag.Parse()
	port := os.Getenv("APP_PORT")
	if port == "" {
		port = "5555"
	}
	if *check {
		c := http.Client{Timeout: 3 * time.Second}
		resp, err := c.Get("http://127.0.0.1:" + port + "/health")
		if err != nil || resp.StatusCode != http.StatusOK {
			os.Exit(1)
		}
		os.Exit(0)
	}
	health, _ := json.Marshal(map[string]string{"status": "ok", "version": os.Getenv("VERSION"), "commit": os.Getenv("COMMIT")})
	mux := http.NewServeMux()
	mux.HandleFunc("GET /health", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write(health)
	})
	srv := &http.Server{Addr: ":" + port, Handler: mux}
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		<-stop
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	}()
	if err := srv.ListenAndServe(); err != http.ErrServerClosed {
		log.Fatal(err)
	}
	delay, err := time.ParseDuration(os.Getenv("STOP_DELAY"))
	if err != nil {
		delay = 2 * time.Second
	}
	time.Sleep(delay)
}
