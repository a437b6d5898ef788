// Package tasks holds what the mage targets do, so that the magefile stays a
// table of contents and every task can be called (and tested) as plain Go.
package tasks

import (
	"context"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/carebot/carebot/internal/config"
	"github.com/carebot/carebot/internal/deploy"
	"github.com/carebot/carebot/internal/engine"
	"github.com/carebot/carebot/internal/host"
)

// Runner carries what the tasks of one mage run share: the configuration,
// where output goes, and the engine connection (opened on first use).
type Runner struct {
	Cfg     *config.Config
	Out     io.Writer
	Verbose bool // show build output even when not on a terminal

	mu         sync.Mutex
	eng        *engine.Engine
	timings    []Timing
	lastBackup string // the backup this run took, named in the deploy history
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

// Deployer builds the deployer for DEPLOY_HOST; the caller closes the host.
func (r *Runner) Deployer(ctx context.Context) (*deploy.Deployer, error) {
	c := r.Cfg
	var h host.Host
	seed := ""
	if !c.Remote() {
		h = host.Local{}
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
	}
	return &deploy.Deployer{
		Host: h, Path: c.DeployPath, ComposeFile: c.ComposeFile, Migrations: c.Migrations, SeedEnv: seed, SeedEnvData: c.AppDotenv,
		ImageName: c.ImageName, AppPort: c.AppPort, HealthPath: c.HealthPath, HealthTimeout: c.HealthTimeout,
		LogLines: 20, Out: r.Out,
	}, nil
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

// Close releases the engine connection.
func (r *Runner) Close() error {
	if r.eng != nil {
		return r.eng.Close()
	}
	return nil
}
