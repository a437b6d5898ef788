// Package tasks holds what the mage targets do, so that the magefile stays a
// table of contents and every task can be called (and tested) as plain Go.
package tasks

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/carebot/carebot/internal/config"
	"github.com/carebot/carebot/internal/deploy"
	"github.com/carebot/carebot/internal/engine"
	"github.com/carebot/carebot/internal/host"
	"github.com/carebot/carebot/internal/ship"
	"github.com/carebot/carebot/internal/text"
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

	// Host picks one server of several for the tasks that act on one
	// server's data (restore, backup -download, logs): the -host flag.
	Host string

	hostMu  sync.Mutex
	hosts   []*hostSlot        // one per deploy host, dialled on first use
	nodes   []*deploy.Deployer // swarm nodes reached through the manager
	closed  bool
	outMu   sync.Mutex // the servers' prefixed output writes whole lines
	runID   string
	backups map[string]string // the backup taken on each host this run, by host
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

// Deployer is the deployer of the run's one deploy host: this machine
// when DEPLOY_HOST is empty, else the server it names, or, when it names
// several, the one Host picks (the targets that act on one server's data).
// Its SSH connection is dialled on first use; every task of the run uses
// it, and what it learns once (the host's Compose) serves them all.
//
// The connection is never redialled: a failed dial fails every task that
// needs the host, and a connection lost mid-run fails the tasks with the
// reason. Whatever a run holds on the host through its connection (a
// lock) must end with it, never carry over to a second one.
func (r *Runner) Deployer(ctx context.Context) (*deploy.Deployer, error) {
	i, err := r.pick()
	if err != nil {
		return nil, err
	}
	return r.member(ctx, i)
}

// Deployers are the deployers of every deploy host, dialled at once; one
// that cannot be reached fails the call (naming it) before any task
// changes anything anywhere.
func (r *Runner) Deployers(ctx context.Context) ([]*deploy.Deployer, error) {
	deps, errs := r.reach(ctx)
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return deps, nil
}

// reach dials every deploy host at once and returns, for each, its
// deployer or why it could not be reached.
func (r *Runner) reach(ctx context.Context) ([]*deploy.Deployer, []error) {
	n := max(1, len(r.Cfg.Targets))
	deps, errs := make([]*deploy.Deployer, n), make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			deps[i], errs[i] = r.member(ctx, i)
		}()
	}
	wg.Wait()
	return deps, errs
}

// Several says whether DEPLOY_HOST names more than one server.
func (r *Runner) Several() bool { return len(r.Cfg.Targets) > 1 }

// pick is the index of the one deploy host a task acts on: Host's, or the
// only one.
func (r *Runner) pick() (int, error) {
	ts := r.Cfg.Targets
	if r.Host == "" {
		if len(ts) > 1 {
			return 0, fmt.Errorf("DEPLOY_HOST names %d servers: choose one with -host (one of %s)", len(ts), targetList(ts))
		}
		return 0, nil
	}
	for i, t := range ts {
		if slices.Contains([]string{t.String(), t.Host, t.Addr(), t.User + "@" + t.Host}, r.Host) {
			return i, nil
		}
	}
	if len(ts) == 0 {
		return 0, fmt.Errorf("-host %s: DEPLOY_HOST is empty, so the deploy host is this machine: leave -host out", r.Host)
	}
	return 0, fmt.Errorf("-host %s is not one of DEPLOY_HOST's servers (%s)", r.Host, targetList(ts))
}

func targetList(ts []config.Target) string {
	names := make([]string, len(ts))
	for i, t := range ts {
		names[i] = t.String()
	}
	return strings.Join(names, ", ")
}

// hostSlot is one deploy host of the run, dialled once.
type hostSlot struct {
	once sync.Once
	dep  *deploy.Deployer
	err  error
}

// member is deploy host i's deployer, dialled on first use.
func (r *Runner) member(ctx context.Context, i int) (*deploy.Deployer, error) {
	r.hostMu.Lock()
	if r.closed {
		r.hostMu.Unlock()
		return nil, errors.New("this run's connections are closed: run the task in a mage call of its own")
	}
	if r.hosts == nil {
		r.hosts = make([]*hostSlot, max(1, len(r.Cfg.Targets)))
		for j := range r.hosts {
			r.hosts[j] = &hostSlot{}
		}
	}
	slot := r.hosts[i]
	r.hostMu.Unlock()
	slot.once.Do(func() { slot.dep, slot.err = r.newDeployer(ctx, i) })
	return slot.dep, slot.err
}

// hostOut is where the output of deploy host i goes: the run's output,
// each line prefixed with the server when there are several.
func (r *Runner) hostOut(i int) io.Writer {
	if r.swarmMode() && r.Cfg.Remote() { // the manager, beside the other nodes
		return r.nodeOut(r.Cfg.Targets[i].Host)
	}
	if !r.Several() {
		return r.Out
	}
	return &text.Prefixed{W: r.Out, Prefix: "[" + r.Cfg.Targets[i].Addr() + "] ", Mu: &r.outMu}
}

// RunID names this run in the journals and histories of its servers.
func (r *Runner) RunID() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.runID == "" {
		b := make([]byte, 3)
		_, _ = rand.Read(b)
		r.runID = time.Now().UTC().Format("20060102T150405Z") + "-" + hex.EncodeToString(b)
	}
	return r.runID
}

func (r *Runner) newDeployer(ctx context.Context, i int) (*deploy.Deployer, error) {
	c := r.Cfg
	out := r.hostOut(i)
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
		s, err := host.DialSSH(ctx, sshConfig(c, c.Targets[i], out))
		if err != nil {
			if r.Several() && !strings.Contains(err.Error(), c.Targets[i].Addr()) {
				err = fmt.Errorf("%s: %w", c.Targets[i], err)
			}
			return nil, err
		}
		h = s // the server's .env is its own: no seed, a deploy without one stops
		if c.DeployDockerSudo {
			h = host.DockerSudo(s)
		}
	}
	d := r.deployerOn(h, out)
	d.SeedEnv, d.SeedEnvData, d.Server = seed, c.AppDotenv, srv
	if r.Several() {
		d.Run, d.Fleet = r.RunID(), strings.Split(targetList(c.Targets), ", ")
	}
	return d, nil
}

// deployerOn is a deployer of this run's settings on h, its output to out.
func (r *Runner) deployerOn(h host.Host, out io.Writer) *deploy.Deployer {
	c := r.Cfg
	return &deploy.Deployer{
		Host: h, Path: c.DeployPath, ComposeFile: c.ComposeFile, Migrations: c.Migrations,
		ImageName: c.ImageName, AppPort: c.AppPort, HealthPath: c.HealthPath, HealthTimeout: c.HealthTimeout,
		Engine: buildEngine{r}, Compression: c.Compression, Stage: c.Stage, LockWait: c.LockWait,
		Links: r.linksFile(), LogLines: 20, Out: out,
	}
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
	hosts, nodes := r.hosts, r.nodes
	r.hostMu.Unlock()
	var errs []error
	for _, d := range nodes {
		errs = append(errs, d.Close(), d.Host.Close())
	}
	for _, slot := range hosts {
		slot.once.Do(func() {}) // a dial under way ends first
		if slot.dep != nil {
			errs = append(errs, slot.dep.Close(), slot.dep.Host.Close())
		}
	}
	r.mu.Lock()
	if r.eng != nil {
		errs = append(errs, r.eng.Close())
	}
	r.mu.Unlock()
	r.dropSave()
	return errors.Join(errs...)
}
