// Package deploy puts a built image into service on a host with Docker
// Compose: lock, files, image, compose up, health, and rollback when the new
// release never becomes healthy. The host is this machine or a server; the
// steps are the same.
package deploy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/carebot/carebot/internal/text"

	"github.com/carebot/carebot/internal/engine"
	"github.com/carebot/carebot/internal/health"
	"github.com/carebot/carebot/internal/host"
	"github.com/carebot/carebot/internal/shell"
	"github.com/carebot/carebot/internal/ship"
)

// Deployer deploys to one host.
type Deployer struct {
	Host host.Host
	Path string // DEPLOY_PATH on the host, absolute

	ComposeFile string // local compose file, copied to Path under its own name
	Migrations  string // local migrations folder, copied to Path/migrations
	SeedEnv     string // the local .env that seeds Path/.env when the host has none, for messages; "" = refuse to deploy without one
	SeedEnvData []byte // what is written then: SeedEnv's lines that set the app's keys (config's AppDotenv), never the tool's settings

	ImageName     string
	AppPort       int
	HealthPath    string
	HealthTimeout time.Duration
	LogLines      int // shown when a release fails

	// Engine is the engine the image was built on: Deploy ships the
	// release's image from it, and nothing travels when the host has it
	// (a deploy to this machine's own engine).
	Engine      ship.Source
	Compression string     // COMPRESSION: how the image travels (see ship.Options)
	Stage       string     // TRANSFER_STAGE: whether it goes through DEPLOY_PATH/.carebot/staging (see ship.Options)
	Links       ship.Links // where the link's rate to each host is kept between runs; "" = measured each time

	// Server is the host's engine, reached through its API. nil: on first
	// use, through `docker system dial-stdio` on the host (see
	// engine.ConnectServer; host.DockerSudo makes that `sudo -n docker`).
	Server ServerEngine

	// LockWait is how long a run waits for the deploy lock another run
	// holds (LOCK_WAIT); 0 refuses at once. LeaseTime is how long the host
	// keeps the lock of a run whose link went silent (0: Lease).
	LockWait  time.Duration
	LeaseTime time.Duration

	// Run names the run in the journal and the history, and Fleet the
	// hosts it deploys to together, so a run over several hosts that is
	// cut short can be told apart (and is undone on each host alike).
	Run   string
	Fleet []string

	// Stack, on a swarm node, makes the deployment's containers the
	// stack's tasks there (a backup pauses them) instead of a Compose
	// project's.
	Stack string

	Out io.Writer
	Now func() time.Time

	compose string // the compose command the host has, found once
	facts   facts  // what look found
	looked  bool
	srvMu   sync.Mutex
	srvErr  error
	dialed  bool // Server was connected here, and is closed by Close

	lockMu sync.Mutex
	lease  *lease // the run's hold on the deploy lock, once taken
}

// ServerEngine is what a deploy asks of the host's Docker engine;
// *engine.Engine has it.
type ServerEngine interface {
	ship.Server
	Tag(ctx context.Context, id, ref string) error
	ProjectContainers(ctx context.Context, dirs ...string) ([]engine.ProjectContainer, error)
	PublishedOn(ctx context.Context, port int) ([]engine.PortUser, error)
	Close() error
}

var _ ServerEngine = (*engine.Engine)(nil)

// server is the host's engine, connected on first use and kept for the run.
func (d *Deployer) server(ctx context.Context) (ServerEngine, error) {
	d.srvMu.Lock()
	defer d.srvMu.Unlock()
	if d.Server != nil || d.srvErr != nil {
		return d.Server, d.srvErr
	}
	e, err := engine.ConnectServer(ctx, d.Host.String(), d.Host.Exec)
	if err != nil {
		if ctx.Err() == nil {
			d.srvErr = err // a server that does not answer will not this run
		}
		return nil, err
	}
	d.Server, d.dialed = e, true
	return e, nil
}

// Close gives the lock back and closes the connection to the host's
// engine; the host itself is the caller's.
func (d *Deployer) Close() error {
	d.Release()
	d.srvMu.Lock()
	defer d.srvMu.Unlock()
	if d.dialed && d.Server != nil {
		err := d.Server.Close()
		d.Server, d.dialed = nil, false
		return err
	}
	return nil
}

// Release is what to deploy.
type Release struct {
	Version string // image tag
	ImageID string // the ID of the image that was built, which the host must end up with
	Commit  string
	Backup  string // the backup taken before it, for the history
}

func (d *Deployer) now() time.Time {
	if d.Now != nil {
		return d.Now()
	}
	return time.Now()
}

func (d *Deployer) printf(format string, a ...any) {
	if d.Out != nil {
		fmt.Fprintf(d.Out, format, a...)
	}
}

func (d *Deployer) composeName() string { return filepath.Base(d.ComposeFile) }

// Deploy puts r into service. On a health failure it rolls back to the
// release that served before and returns an error saying both.
func (d *Deployer) Deploy(ctx context.Context, r Release) error {
	if err := d.Check(ctx); err != nil {
		return err
	}
	s, err := d.Prepare(ctx, r)
	if err != nil || s.Noop {
		return err
	}
	if err := d.Switch(ctx, s, 0); err != nil {
		return err
	}
	return d.Confirm(ctx, s)
}

// Staged is a release made ready on the host (image loaded, files
// written, the lock held) and not yet serving.
type Staged struct {
	Release  Release
	Current  string // the version serving when it was staged ("" none)
	Fallback string // what a failed switch goes back to ("" none)
	Noop     bool   // the host serves it already, healthy: nothing to switch
	Sent     int64  // bytes of image sent
	history  []Entry
	entry    Entry // the switch's history entry, once switched
	switched bool
}

// Check looks at the host without changing it: the deploy folder, Compose,
// and the .env a deploy needs. A fleet checks every host before it
// changes any.
func (d *Deployer) Check(ctx context.Context) error {
	if err := d.look(ctx); err != nil {
		return err
	}
	if _, err := d.detectCompose(ctx); err != nil {
		return err
	}
	if !d.facts.hasEnv && d.SeedEnv == "" {
		return fmt.Errorf("%s has no .env on %s: create it there (cp .env.example .env, then set BOT_TOKEN) and deploy again; nothing was changed", d.Path, d.Host)
	}
	return nil
}

// Missing reports whether the deploy folder does not exist yet: no deploy
// has been there, and there is no lock to take.
func (d *Deployer) Missing(ctx context.Context) (bool, error) {
	if err := d.lookOnce(ctx); err != nil {
		return false, err
	}
	return d.facts.realPath == "", nil
}

// HasDeployment says whether Check found a release deployed there before.
func (d *Deployer) HasDeployment() bool { return d.facts.hasComposeFile }

// Prepare takes the lock, sends the image and writes the files of r,
// changing nothing that serves: after it, Switch puts r into service.
func (d *Deployer) Prepare(ctx context.Context, r Release) (*Staged, error) {
	ref := d.ImageName + ":" + r.Version
	// The build engine starts saving the image as soon as the host's engine
	// says it lacks it, while the steps below talk to the host.
	src := d.saveEarly(ctx, r.ImageID, ref)
	defer src.Close()
	if err := d.makeFolder(ctx); err != nil {
		return nil, err
	}
	if err := d.Lock(ctx); err != nil {
		return nil, err
	}
	st, err := d.shipFrom(ctx, src, r.ImageID, ref)
	if err != nil {
		return nil, err
	}
	r.ImageID = st.ServerID // checked by ship; the containerd store names it by manifest, not config
	history, sums, err := d.historyAndSums(ctx)
	if err != nil {
		return nil, err
	}
	states, err := d.containers(ctx)
	if err != nil {
		return nil, err
	}
	current := d.serving(states)
	if err := d.checkPort(ctx, states); err != nil {
		return nil, err
	}
	// Files change only now that every check passed: a refused deploy
	// leaves the host as it was.
	changed, err := d.syncFiles(ctx, sums)
	if err != nil {
		return nil, err
	}
	s := &Staged{Release: r, Current: current, Sent: st.WireBytes, history: history}
	if !changed && st.Skipped && current == r.Version && d.unchanged(ctx, states, r) {
		d.printf("%s already serves %s:%s (%s), healthy, with these files: nothing sent, nothing restarted\n", d.Host, d.ImageName, r.Version, text.ShortID(r.ImageID))
		s.Noop = true
		return s, nil
	}
	if err := d.keepCompose(ctx, r.Version); err != nil {
		return nil, err
	}
	s.Fallback = current
	if s.Fallback == r.Version { // redeploying the same tag: fall back to the one before it
		s.Fallback = Previous(history, current)
	}
	return s, nil
}

// Unstage puts back the compose file of the release that serves, for a
// staged release that will not be switched to (a fleet stopped first).
func (d *Deployer) Unstage(ctx context.Context, s *Staged) error {
	if s.Noop || s.Current == "" || s.switched {
		return nil
	}
	return d.useCompose(context.WithoutCancel(ctx), s.Current)
}

// Switch puts a staged release into service and waits for its health;
// if health never comes, it brings the fallback back and fails. Once it
// succeeds, Confirm records it, or Revert undoes it: until then the
// journal still puts the fallback back should the run go away, and with
// within > 0 the host does so by itself when the run has not confirmed
// by then (a fleet's later hosts take their time too).
func (d *Deployer) Switch(ctx context.Context, s *Staged, within time.Duration) error {
	d.printf("deploying %s:%s to %s (serving now: %s)\n", d.ImageName, s.Release.Version, d.Host, orNone(s.Current))
	return d.switchTo(ctx, "deploy", s, within)
}

// Rollback serves version (or, when empty, the release before the one
// serving now), and goes back to the current one if it does not come up.
func (d *Deployer) Rollback(ctx context.Context, version string) error {
	if err := d.Deployed(ctx); err != nil {
		return err
	}
	if err := d.Lock(ctx); err != nil {
		return err
	}
	history, err := d.History(ctx)
	if err != nil {
		return err
	}
	states, err := d.containers(ctx)
	if err != nil {
		return err
	}
	current := d.serving(states)
	if version == "" {
		version = Previous(history, current)
		if version == "" {
			return fmt.Errorf("no earlier release to roll back to on %s (serving: %s): name one with -to", d.Host, orNone(current))
		}
	}
	r := Release{Version: version, ImageID: ImageOf(history, version)}
	if err := d.retag(ctx, r); err != nil {
		return err
	}
	if err := d.checkPort(ctx, states); err != nil {
		return err
	}
	if err := d.useCompose(ctx, version); err != nil {
		return err
	}
	d.printf("rolling back %s from %s to %s\n", d.Host, orNone(current), version)
	s := &Staged{Release: r, Current: current, Fallback: current, history: history}
	if err := d.switchTo(ctx, "rollback", s, 0); err != nil {
		return err
	}
	return d.Confirm(ctx, s)
}

// Deployed checks that something was deployed to Path, so commands that
// need a deployment say so instead of failing on a missing file.
func (d *Deployer) Deployed(ctx context.Context) error {
	if err := d.look(ctx); err != nil {
		return err
	}
	if _, err := d.detectCompose(ctx); err != nil {
		return err
	}
	if !d.facts.hasComposeFile {
		return fmt.Errorf("nothing is deployed at %s on %s: run mage deploy first (or check DEPLOY_PATH)", d.Path, d.Host)
	}
	return nil
}

// switchTo runs compose up with s's release and waits for health; if
// health never comes, it brings s.Fallback back (or stops the release
// when there is none) and fails.
//
// Before anything changes, the journal on the host says how to put the
// fallback back, so a run that goes away in the middle (killed, its link
// cut, Ctrl-C) does not leave an unconfirmed release serving: the lock's
// holder on the host runs the journal as soon as the run is gone, and the
// next run does when the holder could not. The journal stays until
// Confirm or Revert.
func (d *Deployer) switchTo(ctx context.Context, action string, s *Staged, within time.Duration) error {
	r, fallback := s.Release, s.Fallback
	entry := Entry{Action: action, Version: r.Version, ImageID: r.ImageID, Commit: r.Commit, Previous: fallback, Backup: r.Backup, Run: d.Run}
	// The run confirms within its own health wait, a rollback's, and slack.
	confirm := 2*d.HealthTimeout + 2*time.Minute
	if within > confirm {
		confirm = within
	}
	if err := d.intend(ctx, d.switchIntent(r, fallback), d.undoSwitch(entry, fallback, ImageOf(s.history, fallback)), confirm); err != nil {
		return err
	}
	_, upErr := d.composeStep(ctx, r.Version, "up -d")
	var st health.Status
	err := upErr
	if err == nil {
		st, err = d.waitHealthy(ctx, r.Version)
	}
	if err == nil {
		entry.Result, entry.Serving = ResultOK, r.Version
		s.entry, s.switched = entry, true
		d.printf("%s is serving %s (commit %s) on port %d\n", d.Host, st.Version, orNone(st.Commit), d.AppPort)
		return nil
	}
	if ctx.Err() != nil {
		// Interrupted (Ctrl-C): mage gives us 5 s, and bringing the old
		// release back may take longer. The host does it: giving the lock
		// back makes its holder run the journal, and keep the lock until
		// that is done.
		d.Abandon()
		if fallback == "" {
			return fmt.Errorf("interrupted before %s was confirmed healthy: %s stops it by itself (mage status shows when)", r.Version, d.Host)
		}
		return fmt.Errorf("interrupted before %s was confirmed healthy: %s puts %s back by itself (mage status shows when)", r.Version, d.Host, fallback)
	}
	if lost := host.Lost(d.Host); lost != nil {
		// The host's lock holder saw the link go too, and runs the journal.
		d.Abandon()
		return fmt.Errorf("%s before %s was confirmed healthy: %s %s by itself (mage status shows when)", text.ErrLine(lost), r.Version, d.Host, putsBack(fallback))
	}
	entry.Error = text.ErrLine(err)
	d.showLogs(ctx, r.Version)
	_, err = d.goBack(ctx, s, entry, fmt.Sprintf("release %s failed", r.Version))
	return err
}

// Confirm records a switched release as serving and clears the journal:
// from now on nothing puts the fallback back by itself.
func (d *Deployer) Confirm(ctx context.Context, s *Staged) error {
	if !s.switched {
		return nil
	}
	s.switched = false
	return d.conclude(ctx, s.entry)
}

// Revert puts the fallback back after a switch that succeeded here, when
// the run does not keep it (a fleet's other host failed: why). It fails
// only when the fallback could not be brought back.
func (d *Deployer) Revert(ctx context.Context, s *Staged, why string) error {
	if !s.switched {
		return nil
	}
	s.switched = false
	if lost := host.Lost(d.Host); lost != nil {
		// Unconfirmed, it is the journal's: the host's lock holder runs it.
		d.Abandon()
		d.printf("%s: %s %s by itself\n", text.ErrLine(lost), d.Host, putsBack(s.Fallback))
		return nil
	}
	e := s.entry
	e.Error = why
	result, err := d.goBack(ctx, s, e, fmt.Sprintf("%s is undone on %s", s.Release.Version, d.Host))
	if result == ResultRolledBack || (result == ResultFailed && s.Fallback == "") {
		return nil
	}
	return err
}

// goBack serves s.Fallback again (or stops the release when there is
// none), waits for its health, records e with the outcome, and returns
// the outcome and an error that says what happened (what), the cause and
// the outcome.
func (d *Deployer) goBack(ctx context.Context, s *Staged, e Entry, what string) (string, error) {
	// From here on the user's interrupt must not leave the host half-switched.
	ctx = context.WithoutCancel(ctx)
	version, fallback, cause := s.Release.Version, s.Fallback, e.Error
	if fallback == "" {
		_, _ = d.composeStep(ctx, version, "stop")
		e.Result, e.Serving = ResultFailed, ""
		_ = d.conclude(ctx, e)
		return e.Result, fmt.Errorf("%s: %s; there is no earlier release to roll back to, so it was stopped", what, cause)
	}
	d.printf("%s (%s); rolling back to %s\n", what, cause, fallback)
	err := d.useCompose(ctx, fallback)
	if err == nil {
		err = d.retag(ctx, Release{Version: fallback, ImageID: ImageOf(s.history, fallback)})
	}
	if err == nil {
		_, err = d.composeStep(ctx, fallback, "up -d")
	}
	if err == nil {
		_, err = d.waitHealthy(ctx, fallback)
	}
	if err == nil {
		e.Result, e.Serving = ResultRolledBack, fallback
		_ = d.conclude(ctx, e)
		return e.Result, fmt.Errorf("%s: %s; rolled back to %s, which is serving", what, cause, fallback)
	}
	cause += "; rollback to " + fallback + " failed too: " + text.ErrLine(err)
	e.Result, e.Serving = ResultFailed, ""
	e.Error = cause
	_ = d.conclude(ctx, e)
	return e.Result, fmt.Errorf("%s: %s: run mage status and mage logs", what, cause)
}

func (d *Deployer) switchIntent(r Release, fallback string) string {
	if fallback == "" {
		return fmt.Sprintf("switching to %s, the first release: stop it", r.Version)
	}
	return fmt.Sprintf("switching from %s to %s: put %s back", fallback, r.Version, fallback)
}

// undoSwitch is the journal of a switch: serve fallback again as a
// rollback would (its compose file, its image), or stop the new release
// when nothing served before; and say so in the history.
func (d *Deployer) undoSwitch(e Entry, fallback, fallbackID string) string {
	var b strings.Builder
	e.Time = d.now()
	e.Error = "interrupted before it was confirmed healthy"
	if fallback == "" {
		e.Result = ResultFailed
		b.WriteString(d.ComposeCommand(e.Version, "stop") + " || exit 1\n")
	} else {
		e.Result, e.Serving = ResultRolledBack, fallback
		b.WriteString(d.useComposeCmd(fallback) + " || exit 1\n")
		if fallbackID != "" {
			b.WriteString(d.retagCmd(fallbackID, fallback) + "\n")
		}
		b.WriteString(d.ComposeCommand(fallback, "up -d") + " || exit 1\n")
	}
	b.WriteString(d.appendHistoryCmd(e) + "\n")
	return b.String()
}

// Probe asks the service's health endpoint from the host's side (through
// the SSH connection for a server), where its port is published.
func (d *Deployer) Probe() health.Probe {
	return health.Probe{
		URL:  "http://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(d.AppPort)) + d.HealthPath,
		Dial: d.Host.DialContext,
	}
}

func (d *Deployer) waitHealthy(ctx context.Context, version string) (health.Status, error) {
	probe := d.Probe()
	d.printf("waiting up to %s for %s to report %s\n", d.HealthTimeout, probe.URL, version)
	return probe.Until(ctx, health.Wait{Version: version, Timeout: d.HealthTimeout, Alive: d.alive})
}

// alive fails when the service's container has stopped or keeps
// restarting: it will not become healthy, so waiting longer is pointless.
func (d *Deployer) alive(ctx context.Context) error {
	if err := host.Lost(d.Host); err != nil {
		return err // the run cannot see the host any more
	}
	states, err := d.containers(ctx)
	if err != nil || len(states) == 0 {
		return nil // not known: let the health wait decide
	}
	for _, s := range states {
		if s.Status == "exited" || s.Status == "dead" || s.Restarts >= 2 {
			return fmt.Errorf("container %s is %s (exit code %d, %d restarts)", s.Name, s.Status, s.ExitCode, s.Restarts)
		}
		if s.Health == "unhealthy" { // the image's own healthcheck gave up: no need to wait out the timeout
			return fmt.Errorf("container %s is unhealthy by its healthcheck", s.Name)
		}
	}
	return nil
}

// makeFolder makes the deploy folder and checks the host's .env, before
// anything that serves changes.
func (d *Deployer) makeFolder(ctx context.Context) error {
	if !d.looked {
		if err := d.Check(ctx); err != nil {
			return err
		}
	}
	envPath := d.Path + "/.env"
	hasEnv := d.facts.hasEnv
	p := shell.Quote(d.Path)
	out, err := host.Run(ctx, d.Host, fmt.Sprintf("mkdir -p %s %s/data %s/migrations && cd %s && pwd -P", p, p, p, p))
	if err != nil {
		return fmt.Errorf("create %s on %s: %w", d.Path, d.Host, err)
	}
	d.facts.realPath = strings.TrimSpace(out)
	if hasEnv {
		return nil
	}
	// Empty when there is no local .env: Compose's env_file needs the file, not content.
	d.printf("created %s from the app's settings in %s (it is the host's from now on)\n", envPath, d.SeedEnv)
	d.facts.hasEnv = true
	return host.WriteFile(ctx, d.Host, envPath, d.SeedEnvData, 0o600)
}

// unchanged says whether the release that serves is r exactly and healthy,
// so a deploy of it changes nothing: its container runs r's image, did not
// restart, started after the host's .env last changed (Compose would
// recreate it for a new env_file), and /health reports r's version.
func (d *Deployer) unchanged(ctx context.Context, states []ContainerState, r Release) bool {
	ok := false
	for _, s := range states {
		started, err := time.Parse(time.RFC3339Nano, s.Started)
		if s.Status != "running" || s.ImageID != r.ImageID || s.Restarts > 0 || s.Health == "unhealthy" ||
			err != nil || started.Unix() < d.facts.envTime {
			return false
		}
		ok = true
	}
	if !ok {
		return false
	}
	st, err := d.Probe().Check(ctx)
	return err == nil && st.Version == r.Version
}

// syncFiles copies the compose file and migrations, writing only files
// whose contents differ from the host's (have: their checksums, from
// historyAndSums), and says whether it wrote any. Migrations gone from
// here stay on the host: a database that applied them still records them.
func (d *Deployer) syncFiles(ctx context.Context, have map[string]string) (changed bool, err error) {
	files := map[string]string{d.Path + "/" + d.composeName(): d.ComposeFile}
	if entries, err := os.ReadDir(d.Migrations); err == nil {
		for _, e := range entries {
			src := filepath.Join(d.Migrations, e.Name())
			if e.Type()&os.ModeSymlink != 0 {
				// A link is copied as the file it points to: the host
				// gets the contents, not a link into this machine.
				fi, err := os.Stat(src)
				if err != nil {
					return false, fmt.Errorf("migration %s is a broken link (%v): fix it or remove it; nothing was changed", src, err)
				}
				if !fi.Mode().IsRegular() {
					return false, fmt.Errorf("migration %s links to something that is not a file: link a file or remove it; nothing was changed", src)
				}
			} else if !e.Type().IsRegular() {
				d.printf("skipped %s: only files in %s are copied\n", src, d.Migrations)
				continue
			}
			files[d.Path+"/migrations/"+e.Name()] = src
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return false, fmt.Errorf("migrations: %w", err)
	}
	for dst, src := range files {
		data, err := os.ReadFile(src)
		if err != nil {
			return changed, fmt.Errorf("read %s: %w", src, err)
		}
		if have[dst] == sum(data) {
			continue
		}
		mode := uint32(0o644)
		if fi, err := os.Stat(src); err == nil {
			mode = uint32(fi.Mode().Perm())
		}
		if err := host.WriteFile(ctx, d.Host, dst, data, mode); err != nil {
			return changed, fmt.Errorf("copy %s to %s: %w", src, d.Host, err)
		}
		changed = true
		d.facts.hasComposeFile = d.facts.hasComposeFile || src == d.ComposeFile
		d.printf("updated %s\n", dst)
	}
	return changed, nil
}

func (d *Deployer) sumsCmd() string {
	return fmt.Sprintf("cd %s && find . ./migrations -maxdepth 1 -type f -exec sha256sum -- {} + 2>/dev/null; true", shell.Quote(d.Path))
}

func (d *Deployer) parseSums(out string) map[string]string {
	sums := map[string]string{}
	for _, line := range strings.Split(out, "\n") {
		sumv, name, ok := strings.Cut(line, "  ")
		if ok {
			sums[path.Join(d.Path, name)] = sumv
		}
	}
	return sums
}

// historyAndSums reads the deploy history and the checksums of the files
// a deploy copies, in one round trip.
func (d *Deployer) historyAndSums(ctx context.Context) ([]Entry, map[string]string, error) {
	const mark = "\n#-- sums --#\n"
	h := shell.Quote(d.historyPath())
	out, err := host.Run(ctx, d.Host, fmt.Sprintf("if [ -e %s ]; then cat %s; fi; printf %s; %s", h, h, shell.Quote(strings.ReplaceAll(mark, "\n", "\\n")), d.sumsCmd()))
	if err != nil {
		return nil, nil, fmt.Errorf("read the deploy history and files on %s: %w", d.Host, err)
	}
	hist, sums, ok := strings.Cut(out, mark)
	if !ok {
		return nil, nil, fmt.Errorf("read the deploy history and files on %s: unexpected output %q", d.Host, text.FirstLine(out))
	}
	return ParseHistory([]byte(hist)), d.parseSums(sums), nil
}

// releaseCompose is where the compose file a release was deployed with is
// kept, so that going back to it runs it as it ran (a later release may
// have changed the file in a way the old image does not survive).
func (d *Deployer) releaseCompose(version string) string {
	return d.Path + "/releases/" + safeName(version) + "/" + d.composeName()
}

func (d *Deployer) keepCompose(ctx context.Context, version string) error {
	dst := d.releaseCompose(version)
	cmd := fmt.Sprintf("mkdir -p %s && cp -p %s %s", shell.Quote(path.Dir(dst)), shell.Quote(d.Path+"/"+d.composeName()), shell.Quote(dst))
	if _, err := host.Run(ctx, d.Host, cmd); err != nil {
		return fmt.Errorf("keep the compose file of %s on %s: %w", version, d.Host, err)
	}
	return nil
}

// useCompose puts back the compose file version was deployed with, when it
// was kept (releases deployed before this tool kept them use the current one).
func (d *Deployer) useCompose(ctx context.Context, version string) error {
	if _, err := host.Run(ctx, d.Host, d.useComposeCmd(version)); err != nil {
		return fmt.Errorf("use the compose file of %s on %s: %w", version, d.Host, err)
	}
	return nil
}

func (d *Deployer) useComposeCmd(version string) string {
	src, dst := shell.Quote(d.releaseCompose(version)), shell.Quote(d.Path+"/"+d.composeName())
	return fmt.Sprintf("if [ -f %s ]; then cp -p %s %s.tmp && mv -f %s.tmp %s; fi", src, src, dst, dst, dst)
}

func (d *Deployer) retagCmd(id, version string) string {
	return fmt.Sprintf("docker image inspect %s >/dev/null 2>&1 && docker tag %s %s", shell.Quote(id), shell.Quote(id), shell.Quote(d.ImageName+":"+version))
}

// retag points name:version back at the image that history recorded for
// it, in case a later build reused the tag; then checks it exists.
func (d *Deployer) retag(ctx context.Context, r Release) error {
	gone := fmt.Errorf("image %s:%s is not on %s any more: deploy it again, or roll back to another version", d.ImageName, r.Version, d.Host)
	srv, err := d.server(ctx)
	if err != nil {
		return err
	}
	if r.ImageID != "" {
		// The image that served as version, not whatever carries the tag
		// now: a later build may have reused it.
		if err := srv.Tag(ctx, r.ImageID, d.ImageName+":"+r.Version); errors.Is(err, engine.ErrNotFound) {
			return gone
		} else if err != nil {
			return err
		}
	}
	id, err := srv.ImageID(ctx, d.ImageName+":"+r.Version)
	if err != nil {
		return err
	}
	if id == "" {
		return gone
	}
	return nil
}

// checkPort refuses to start when APP_PORT is held by something that is
// not this deployment's own container (ours: its containers, as
// containers() found them): compose up would stop the release that serves
// and then fail to bind.
func (d *Deployer) checkPort(ctx context.Context, ours []ContainerState) error {
	own := map[string]bool{}
	for _, c := range ours {
		own[c.ID] = true
	}
	srv, err := d.server(ctx)
	if err != nil {
		return err
	}
	users, err := srv.PublishedOn(ctx, d.AppPort)
	if err != nil {
		return fmt.Errorf("list containers on %s: %w", d.Host, err)
	}
	for _, u := range users {
		if !own[u.ID] {
			return fmt.Errorf("APP_PORT %d on %s is taken by container %s: stop it or set APP_PORT to a free port; nothing was changed", d.AppPort, d.Host, u.Name)
		}
	}
	if len(ours) > 0 {
		return nil
	}
	dctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if c, err := d.Host.DialContext(dctx, "tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(d.AppPort))); err == nil {
		c.Close()
		return fmt.Errorf("APP_PORT %d on %s is taken by another program: stop it or set APP_PORT to a free port; nothing was changed", d.AppPort, d.Host)
	}
	return nil
}

func (d *Deployer) showLogs(ctx context.Context, version string) {
	if d.LogLines <= 0 || d.Out == nil {
		return
	}
	out, _ := d.composeRun(context.WithoutCancel(ctx), version, fmt.Sprintf("logs --no-color --tail=%d", d.LogLines))
	if strings.TrimSpace(out) != "" {
		d.printf("last log lines of %s:\n%s", version, out)
	}
}

func sum(data []byte) string { return sha256Hex(data) }

// putsBack is what a host's journal does about an unconfirmed release.
func putsBack(fallback string) string {
	if fallback == "" {
		return "stops the release"
	}
	return "puts " + fallback + " back"
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}
