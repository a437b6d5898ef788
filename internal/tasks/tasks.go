// Package tasks holds what the mage targets do, so that the magefile stays a
// table of contents and every task can be called (and tested) as plain Go.
package tasks

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/carebot/carebot/internal/config"
	"github.com/carebot/carebot/internal/deploy"
	"github.com/carebot/carebot/internal/engine"
	"github.com/carebot/carebot/internal/host"
	"github.com/carebot/carebot/internal/ship"
)

// Runner carries what the tasks of one mage run share: the configuration,
// where output goes, and the run's connections, each opened on first use
// and then used by every task: the build engine, and the deploy host.
type Runner struct {
	Cfg     *config.Config
	Out     io.Writer
	Verbose bool // show build output even when not on a terminal
	// HoldLock keeps the deploy lock from the first task that takes it
	// until Close, so one lock covers a whole run (mage backup deploy);
	// without it each task gives the lock back when it ends.
	HoldLock bool
	// KeepSave has Inspect keep the save it reads in a local temporary
	// file, which the deploy of the same image later in the run sends from
	// (mage full: the engine saves the image once).
	KeepSave bool
	// LinksFile is where the rate of each server's transfers is kept
	// ("" = this user's cache folder; see ship.Links).
	LinksFile string

	mu      sync.Mutex
	eng     *engine.Engine
	timings []Timing
	saved   *savedImage // Inspect's save, for the deploy (KeepSave)

	hostMu sync.Mutex // held while the deploy host is dialled
	dep    *deploy.Deployer
	depErr error
	closed bool
}

// Timing is how long one step of a run took.
type Timing struct {
	Step     string
	Duration time.Duration
	Err      error
}

// New loads the configuration of the project in dir (its .env, then the
// environment) and validates it before any work starts.
func New(dir string, out io.Writer) (*Runner, error) {
	cfg, err := config.Load(dir, os.Environ())
	if err != nil {
		return nil, err
	}
	return &Runner{Cfg: cfg, Out: out}, nil
}

func (r *Runner) printf(format string, a ...any) { fmt.Fprintf(r.Out, format, a...) }

// Engine connects to the build engine once per run.
func (r *Runner) Engine(ctx context.Context) (*engine.Engine, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.eng != nil {
		return r.eng, nil
	}
	e, err := engine.ConnectVia(ctx, r.engineVia())
	if err != nil {
		return nil, err
	}
	r.eng = e
	return e, nil
}

// engineVia is where this run's engine is: DOCKER_VIA_WSL, WSL_DISTRO and
// DOCKER_SUDO applied to this process (through WSL on Windows).
func (r *Runner) engineVia() engine.Via {
	return engine.Choose(r.Cfg.DockerViaWSL, r.Cfg.WSLDistro, r.Cfg.DockerSudo)
}

// Timed runs step and records how long it took.
func (r *Runner) Timed(name string, step func() error) error {
	start := time.Now()
	err := step()
	r.mu.Lock()
	r.timings = append(r.timings, Timing{Step: name, Duration: time.Since(start), Err: err})
	r.mu.Unlock()
	return err
}

// PrintTimings writes each recorded step with its duration, and the total.
func (r *Runner) PrintTimings() {
	r.mu.Lock()
	defer r.mu.Unlock()
	var total time.Duration
	r.printf("\n%-10s %10s\n", "step", "time")
	for _, t := range r.timings {
		mark := ""
		if t.Err != nil {
			mark = "  FAILED"
		}
		r.printf("%-10s %9.1fs%s\n", t.Step, t.Duration.Seconds(), mark)
		total += t.Duration
	}
	r.printf("%-10s %9.1fs\n", "total", total.Seconds())
}

// Deployer is the run's one deployer, on the run's one connection to the
// deploy host: this machine when DEPLOY_HOST is empty, else an SSH
// connection to the server, dialled on first use. Every task of the run
// uses it, and what it learns once (the host's Compose) serves them all.
//
// The connection is never redialled: a failed dial fails every task that
// needs the host, and a connection lost mid-run fails the tasks with the
// reason. Whatever a run holds on the host through its connection (a
// lock) must end with it, never carry over to a second one.
func (r *Runner) Deployer(ctx context.Context) (*deploy.Deployer, error) {
	r.hostMu.Lock()
	defer r.hostMu.Unlock()
	if r.closed {
		return nil, errors.New("this run's connections are closed: run the task in a mage call of its own")
	}
	if r.dep == nil && r.depErr == nil {
		r.dep, r.depErr = r.newDeployer(ctx)
	}
	return r.dep, r.depErr
}

func (r *Runner) newDeployer(ctx context.Context) (*deploy.Deployer, error) {
	c := r.Cfg
	var h host.Host
	var srv deploy.ServerEngine
	seed := ""
	if !c.Remote() {
		// This machine's engine is the build engine: one client for both.
		e, err := r.Engine(ctx)
		if err != nil {
			return nil, err
		}
		h, srv = host.Local{}, e
		seed = c.EnvFile
		if seed == "" {
			seed = c.Dir + "/.env" // absent: the deploy gets an empty .env
		}
	} else {
		s, err := host.DialSSH(ctx, sshConfig(c, c.Targets[0], r.Out))
		if err != nil {
			return nil, err
		}
		h = s // the server's .env is its own: no seed, a deploy without one stops
		if c.DeployDockerSudo {
			h = host.DockerSudo(s)
		}
	}
	return &deploy.Deployer{
		Host: h, Path: c.DeployPath, ComposeFile: c.ComposeFile, Migrations: c.Migrations, SeedEnv: seed, SeedEnvData: c.AppDotenv,
		ImageName: c.ImageName, AppPort: c.AppPort, HealthPath: c.HealthPath, HealthTimeout: c.HealthTimeout,
		Engine: buildEngine{r}, Compression: c.Compression, Stage: c.Stage, LockWait: c.LockWait,
		Server: srv, Links: r.linksFile(),
		LogLines: 20, Out: r.Out,
	}, nil
}

// linksFile is where the rates of past transfers are kept, per server (see
// ship.Links): this machine's user cache, or nowhere.
func (r *Runner) linksFile() ship.Links {
	if r.LinksFile != "" {
		return ship.Links(r.LinksFile)
	}
	dir, err := os.UserCacheDir()
	if err != nil {
		return ""
	}
	return ship.Links(filepath.Join(dir, "carebot", "links.json"))
}

// buildEngine is the run's build engine as shipping sees it, connected on
// first use: the tasks that only touch the deploy host (status, logs,
// backup) never need it.
type buildEngine struct{ r *Runner }

func (b buildEngine) Image(ctx context.Context, ref string) (engine.Image, error) {
	e, err := b.r.Engine(ctx)
	if err != nil {
		return engine.Image{}, err
	}
	return e.Image(ctx, ref)
}

func (b buildEngine) Save(ctx context.Context, refs ...string) (io.ReadCloser, error) {
	if rc, ok := b.r.savedCopy(ctx, refs); ok {
		return rc, nil
	}
	e, err := b.r.Engine(ctx)
	if err != nil {
		return nil, err
	}
	return e.Save(ctx, refs...)
}

// LayerSizes lets shipping estimate a transfer (and so whether to stage it).
func (b buildEngine) LayerSizes(ctx context.Context, id string, n int) ([]int64, error) {
	e, err := b.r.Engine(ctx)
	if err != nil {
		return nil, err
	}
	return e.LayerSizes(ctx, id, n)
}

// sshConfig is how the settings reach target: the one place that turns
// them into an SSH login, for deploys and for the doctor alike.
func sshConfig(c *config.Config, t config.Target, log io.Writer) host.SSHConfig {
	return host.SSHConfig{
		User: t.User, Host: t.Host, Port: t.Port,
		KeyFile: c.SSHKey, Passphrase: c.SSHKeyPassphrase, AgentSocket: c.SSHAuthSock,
		KnownHosts: c.SSHKnownHosts, AcceptNew: c.SSHAcceptNew, Log: log,
	}
}

// taskDone gives the deploy lock back after a task, unless the run holds
// it to its end.
func (r *Runner) taskDone(d *deploy.Deployer) {
	if !r.HoldLock {
		d.Release()
	}
}

// Close ends the run's connections, to the deploy host and to the build
// engine; tasks that need the deploy host afterwards fail rather than dial
// again.
func (r *Runner) Close() error {
	r.hostMu.Lock()
	r.closed = true
	dep := r.dep
	r.hostMu.Unlock()
	var errs []error
	if dep != nil {
		errs = append(errs, dep.Close(), dep.Host.Close())
	}
	r.mu.Lock()
	if r.eng != nil {
		errs = append(errs, r.eng.Close())
	}
	r.mu.Unlock()
	r.dropSave()
	return errors.Join(errs...)
}
