//go:build mage

// CareBot's build and deploy: build the image, inspect it, test it, and
// deploy it with Docker Compose, rolling back by itself when a release is
// not healthy. Settings come from .env, then the environment (see
// .env.example); `mage config` prints them.
package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"sync"

	"github.com/magefile/mage/mg"

	"github.com/carebot/carebot/internal/tasks"
)

// Default runs when mage is called with no target.
var Default = Full

var (
	runner     *tasks.Runner
	runnerErr  error
	runnerOnce sync.Once
	// Set by the targets' flags before the shared steps run.
	buildOpts      tasks.BuildOptions
	keepTest       bool
	skipBackup     bool
	downloadBackup bool
	backupHost     string
)

// run loads and validates the configuration once per mage process. The
// runner's connections (one to the deploy host, one to the build engine)
// serve every target of the process, `mage backup deploy status` included;
// Full closes them when it ends, and otherwise the process's exit does.
func run() (*tasks.Runner, error) {
	runnerOnce.Do(func() {
		dir, err := os.Getwd()
		if err != nil {
			runnerErr = err
			return
		}
		runner, runnerErr = tasks.New(dir, os.Stdout)
		if runner != nil {
			runner.Verbose = mg.Verbose()
			runner.HoldLock = true // one deploy lock for the whole run; the process's end frees it
		}
	})
	return runner, runnerErr
}

// Config prints the settings in effect and where each came from (secrets hidden).
func Config() error {
	r, err := run()
	if err != nil {
		return err
	}
	r.Cfg.Print(os.Stdout)
	return nil
}

// Binary compiles the sample service (./app) into build/carebot for the image.
func Binary(ctx context.Context) error {
	r, err := run()
	if err != nil {
		return err
	}
	return r.Timed("binary", func() error { return r.Binary(ctx) })
}

// Build builds IMAGE_NAME:IMAGE_TAG and :latest from DOCKERFILE with BuildKit through the Docker Engine API.
//
// Reads IMAGE_NAME, IMAGE_TAG (default: the git commit), DOCKERFILE,
// BUILD_TARGET, BUILD_ARG_<NAME>, BUILD_SECRETS (for RUN --mount=type=secret;
// never printed or kept in the image) and SSH_AUTH_SOCK (RUN --mount=type=ssh);
// the build context honours .dockerignore, or <DOCKERFILE>.dockerignore.
// BuildKit's display on a terminal; plain lines with -v and in CI.
func Build(ctx context.Context, noCache *bool) error {
	if noCache != nil {
		buildOpts.NoCache = *noCache
	}
	mg.CtxDeps(ctx, build)
	return nil
}

func build(ctx context.Context) error {
	mg.CtxDeps(ctx, Binary)
	r, err := run()
	if err != nil {
		return err
	}
	return r.Timed("build", func() error {
		_, err := r.Build(ctx, buildOpts)
		return err
	})
}

// Inspect shows the image's tags, size, labels, layers and files, and fails if it holds .env, .git, data/ or keys.
//
// Reads IMAGE_NAME and IMAGE_TAG. Runs no container: the files are read
// from the image's layers.
func Inspect(ctx context.Context) error {
	r, err := run()
	if err != nil {
		return err
	}
	return r.Timed("inspect", func() error {
		_, err := r.Inspect(ctx)
		return err
	})
}

// Test builds the image, runs it as <IMAGE_NAME>_test (carebot_test) on TEST_PORT with ./test-data, and waits for /health.
//
// Reads TEST_PORT, TEST_DATA, HEALTH_PATH, HEALTH_TIMEOUT and the app's
// settings from .env. -keep leaves the container running afterwards.
func Test(ctx context.Context, keep *bool) error {
	if keep != nil {
		keepTest = *keep
	}
	mg.CtxDeps(ctx, test)
	return nil
}

func test(ctx context.Context) error {
	mg.CtxDeps(ctx, build)
	r, err := run()
	if err != nil {
		return err
	}
	return r.Timed("test", func() error { return r.Test(ctx, keepTest) })
}

// Deploy backs up the data, then puts the built IMAGE_NAME:IMAGE_TAG into service with Compose, rolling back if it is not healthy.
//
// Reads DEPLOY_HOST (empty: this machine), DEPLOY_PATH, COMPOSE_FILE,
// APP_PORT, HEALTH_PATH, HEALTH_TIMEOUT, BACKUP_KEEP, LOCK_WAIT, and SSH_*,
// TRANSFER_COMPRESSION and TRANSFER_STAGE for a server. Does not build: any built tag can be deployed with
// IMAGE_TAG=<tag> mage deploy. -noBackup skips the backup (not advised).
func Deploy(ctx context.Context, noBackup *bool) error {
	if noBackup != nil {
		skipBackup = *noBackup
	}
	mg.CtxDeps(ctx, deploy)
	return nil
}

func deploy(ctx context.Context) error {
	if !skipBackup {
		mg.CtxDeps(ctx, backup) // data is safe before anything changes
	}
	r, err := run()
	if err != nil {
		return err
	}
	return r.Timed("deploy", func() error { return r.Deploy(ctx) })
}

// Backup archives DEPLOY_PATH/data on each deploy host (or swarm node with a task) with its sha256; -download also copies it to ./backups (-host picks the server or node).
//
// Reads DEPLOY_HOST, DEPLOY_PATH, BACKUP_KEEP (older backups are removed).
// The service is paused only while the folder is copied.
func Backup(ctx context.Context, download *bool, host *string) error {
	if download != nil {
		downloadBackup = *download
	}
	if host != nil {
		backupHost = *host
	}
	mg.CtxDeps(ctx, backup)
	return nil
}

func backup(ctx context.Context) error {
	r, err := run()
	if err != nil {
		return err
	}
	r.Host = backupHost
	return r.Timed("backup", func() error {
		_, err := r.Backup(ctx, downloadBackup)
		return err
	})
}

// Restore puts a backup back as the data (-name, default the newest) after a safety backup; -list lists them; -host picks the server or swarm node.
//
// Reads DEPLOY_HOST, DEPLOY_PATH. A corrupt or truncated archive is refused
// before anything is touched; the service is stopped, restored, started
// and health-checked.
func Restore(ctx context.Context, name *string, list *bool, host *string) error {
	r, err := run()
	if err != nil {
		return err
	}
	r.Host = deref(host)
	return r.Restore(ctx, deref(name), deref(list))
}

// Cleanup removes image tags beyond IMAGE_KEEP, dangling images, test containers, old backups and build cache beyond BUILD_CACHE_KEEP; -dryRun only lists them.
//
// Never removes the serving image or the rollback target. Reads IMAGE_NAME,
// IMAGE_KEEP, BACKUP_KEEP, BUILD_CACHE_KEEP, DEPLOY_HOST, DEPLOY_PATH.
func Cleanup(ctx context.Context, dryRun *bool) error {
	r, err := run()
	if err != nil {
		return err
	}
	return r.Cleanup(ctx, deref(dryRun))
}

func deref[T any](p *T) T {
	var zero T
	if p == nil {
		return zero
	}
	return *p
}

// Full builds, inspects, tests, backs up and deploys, stopping at the first failure, then shows each step's time.
func Full(ctx context.Context) error {
	r, err := run()
	if err != nil {
		return err
	}
	defer r.Close() // after the timings: Full is the whole run
	defer r.PrintTimings()
	r.KeepSave = true // the engine saves the image once, for inspect and deploy
	mg.SerialCtxDeps(ctx, build, Inspect, test, deploy)
	return nil
}

// Status shows the deployment's health, version, container state and last deploys.
//
// Reads DEPLOY_HOST, DEPLOY_PATH, APP_PORT, HEALTH_PATH. Exits non-zero when
// the service is not healthy.
func Status(ctx context.Context) error {
	r, err := run()
	if err != nil {
		return err
	}
	return r.Status(ctx)
}

// Logs prints the service's last log lines (-n, default 100); -follow keeps printing; -host picks the server.
//
// Reads DEPLOY_HOST and DEPLOY_PATH.
func Logs(ctx context.Context, n *int, follow *bool, host *string) error {
	r, err := run()
	if err != nil {
		return err
	}
	r.Host = deref(host)
	lines := 100
	if n != nil {
		lines = *n
	}
	return r.Logs(ctx, lines, deref(follow))
}

// Rollback serves the previous release again, or the one named with -to.
//
// Reads DEPLOY_HOST, DEPLOY_PATH, IMAGE_NAME, APP_PORT, HEALTH_TIMEOUT. The
// image of that version must still be on the host.
func Rollback(ctx context.Context, to *string) error {
	r, err := run()
	if err != nil {
		return err
	}
	return r.Rollback(ctx, deref(to))
}

// Bench deploys a ~240 MB image with carebot and with docker save/scp/load pipelines, first/redeploy/no-op, loopback and 50 Mbit/s, then redeploys to 1, 2 and 4 servers, and builds beside docker build: three tables.
//
// Needs root, dockerd, docker-compose and sshd (it starts a second engine
// and sshd on 127.0.0.1, and four servers in network namespaces, as the
// end-to-end tests do). Prints the markdown tables of medians and writes
// them to bench-results.md. Reads
// CAREBOT_BENCH_LINKS (loopback,50mbit), CAREBOT_BENCH_CASES
// (first,redeploy,noop), CAREBOT_BENCH_METHODS (carebot,seed,pipe,pipe-gzip),
// CAREBOT_BENCH_RUNS (3), CAREBOT_BENCH_QUICK (1: a small image, one run,
// loopback) and CAREBOT_BENCH_OUT.
func Bench() error {
	cmd := exec.Command("go", "test", "-run", "^$", "-bench", "^Benchmark(Deploy|Fleet|Build)$", "-benchtime", "1x", "-timeout", "180m", "./internal/tasks/")
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	if os.Getenv("CAREBOT_BENCH_OUT") == "" {
		// go test runs in the package's folder; the results belong here.
		if dir, err := os.Getwd(); err == nil {
			cmd.Env = append(os.Environ(), "CAREBOT_BENCH_OUT="+filepath.Join(dir, "bench-results.md"))
		}
	}
	return cmd.Run()
}

// Doctor checks Go, mage, WSL, the Docker engine, the server over SSH and the ports, each on one line with its fix.
//
// Reads every setting, and reports an invalid one instead of stopping:
// WSL_DISTRO, DOCKER_VIA_WSL and DOCKER_SUDO (the engine in WSL, on
// Windows), DOCKER_HOST, DEPLOY_HOST, SSH_KEY, SSH_KNOWN_HOSTS,
// SSH_ACCEPT_NEW, DEPLOY_PATH, APP_PORT and TEST_PORT. Keeps going after a
// failure and changes nothing; exits non-zero when a check failed.
func Doctor(ctx context.Context) error {
	dir, err := os.Getwd()
	if err != nil {
		return err
	}
	return tasks.Doctor(ctx, dir, os.Stdout)
}
