package tasks

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"time"

	"github.com/carebot/carebot/internal/config"
	"github.com/carebot/carebot/internal/doctor"
	"github.com/carebot/carebot/internal/engine"
	"github.com/carebot/carebot/internal/host"
	"github.com/carebot/carebot/internal/wsl"
)

// Doctor checks, in order, what the build and deploy of the project in dir
// need: the settings; Go and mage; on Windows, WSL and WSL_DISTRO; the
// Docker engine; with DEPLOY_HOST, the SSH server, the key, the host key in
// known_hosts, the login, the server's engine and Compose, free disk and
// the deploy folder's .env; and the ports. One line per check, with its
// fix, written to out. It keeps going after a failure, changes nothing,
// and returns an error when any check failed.
func Doctor(ctx context.Context, dir string, out io.Writer) error {
	c, cfgErr := config.LoadAll(dir, os.Environ())
	d := &doctorRun{dir: dir, c: c}
	defer d.close()
	results := doctor.Run(ctx, out, d.checks(cfgErr))
	if n := doctor.Failed(results); n > 0 {
		return fmt.Errorf("doctor: %d of %d checks failed", n, len(results))
	}
	return nil
}

// doctorRun is what the checks of one Doctor share: the connections a
// later check reuses.
type doctorRun struct {
	dir string
	c   *config.Config

	eng     *engine.Engine
	servers []*serverLogin // one per DEPLOY_HOST server
}

// serverLogin is what the checks of one server share.
type serverLogin struct {
	ssh          *host.SSH
	hostKeyKnown bool
}

func (d *doctorRun) close() {
	if d.eng != nil {
		d.eng.Close()
	}
	for _, s := range d.servers {
		if s.ssh != nil {
			s.ssh.Close()
		}
	}
}

// docker is the login as the deploy uses it for docker: through sudo -n
// with DEPLOY_DOCKER_SUDO.
func (d *doctorRun) docker(s *serverLogin) host.Host {
	if d.c != nil && d.c.DeployDockerSudo {
		return host.DockerSudo(s.ssh)
	}
	return s.ssh
}

// checks lists the checks in the order they run.
func (d *doctorRun) checks(cfgErr error) []doctor.Check {
	checks := d.settings(cfgErr)
	checks = append(checks,
		doctor.Check{Name: "go", Run: func(ctx context.Context) doctor.Result { return doctor.Go(ctx, doctor.Exec, d.dir) }},
		doctor.Check{Name: "mage", Run: func(ctx context.Context) doctor.Result { return doctor.Mage(ctx, doctor.Exec, exec.LookPath) }},
	)
	c := d.c
	if c == nil {
		return checks // nothing else can be checked without the settings
	}
	via := engine.Choose(c.DockerViaWSL, c.WSLDistro, c.DockerSudo)
	var engineNeeds []string
	if via.WSL {
		checks = append(checks,
			doctor.Check{Name: "wsl", Run: func(ctx context.Context) doctor.Result { return doctor.WSL(ctx, wsl.Status) }},
			doctor.Check{Name: "wsl distro", Needs: []string{"wsl"}, Run: func(ctx context.Context) doctor.Result {
				return doctor.Distro(ctx, wsl.Distros, c.WSLDistro, wsl.Has)
			}},
			doctor.Check{Name: "wsl docker", Needs: []string{"wsl distro"}, Run: func(ctx context.Context) doctor.Result {
				run := func(ctx context.Context, script string) (string, error) {
					return wsl.Pipe(ctx, c.WSLDistro, script).String()
				}
				return doctor.WSLDocker(ctx, run, c.WSLDistro, c.DockerSudo)
			}},
		)
		engineNeeds = []string{"wsl docker"}
	} else if distro, ok := wsl.Inside(); ok {
		checks = append(checks, doctor.Check{Name: "wsl", Run: func(context.Context) doctor.Result {
			in := "inside WSL"
			if distro != "" {
				in += " (" + distro + ")"
			}
			return doctor.Result{Status: doctor.OK, Detail: in + ": the engine is this distro's own"}
		}})
	}
	checks = append(checks, doctor.Check{Name: "engine", Needs: engineNeeds, Run: func(ctx context.Context) doctor.Result {
		return doctor.Engine(ctx, func(ctx context.Context) (string, string, error) {
			e, err := engine.ConnectVia(ctx, via)
			if err != nil {
				return "", "", err
			}
			d.eng = e
			v, err := e.Version(ctx)
			return v, e.Host, err
		})
	}})

	if c.Remote() {
		for i := range c.Targets {
			checks = append(checks, d.serverChecks(i)...)
		}
	} else {
		checks = append(checks, d.localDeployChecks()...)
	}

	checks = append(checks, doctor.Check{Name: "test port", Run: func(ctx context.Context) doctor.Result {
		return d.port(ctx, "TEST_PORT", c.TestPort, func(u engine.PortUser) (string, bool) {
			if u.Labels[roleLabel] == "test" {
				return fmt.Sprintf("our test container %s, left by test -keep (test replaces it)", u.Name), true
			}
			return "", false
		})
	}})
	if !c.Remote() {
		checks = append(checks, doctor.Check{Name: "app port", Run: func(ctx context.Context) doctor.Result {
			return d.port(ctx, "APP_PORT", c.AppPort, func(u engine.PortUser) (string, bool) {
				if d.ours(u.Image) {
					return fmt.Sprintf("our service %s (%s; deploy replaces it)", u.Name, u.Image), true
				}
				return "", false
			})
		}})
	}
	return checks
}

// settings reports each invalid setting on a line of its own, except
// those a later check looks at more closely (SSH_KEY: the key check).
func (d *doctorRun) settings(cfgErr error) []doctor.Check {
	one := func(r doctor.Result) doctor.Check {
		return doctor.Check{Name: "settings", Run: func(context.Context) doctor.Result { return r }}
	}
	if cfgErr == nil {
		src := "no .env: defaults and the environment"
		if d.c.EnvFile != "" {
			src = d.c.EnvFile + " and the environment"
		}
		return []doctor.Check{one(doctor.Result{Status: doctor.OK, Detail: "valid (" + src + ")"})}
	}
	if d.c == nil { // no project, or a .env that does not parse
		return []doctor.Check{one(doctor.Result{Status: doctor.Fail, Detail: cfgErr.Error(), Fix: "fix .env (see .env.example); mage config shows the settings"})}
	}
	errs := []error{cfgErr}
	if j, ok := cfgErr.(interface{ Unwrap() []error }); ok {
		errs = j.Unwrap()
	}
	var checks []doctor.Check
	for _, err := range errs {
		var se *config.SettingError
		if errors.As(err, &se) && se.Key == "SSH_KEY" && d.c.Remote() {
			continue
		}
		checks = append(checks, one(doctor.Result{Status: doctor.Fail, Detail: err.Error(), Fix: "change it in .env or the environment (.env.example documents each setting)"}))
	}
	if len(checks) == 0 {
		checks = append(checks, one(doctor.Result{Status: doctor.OK, Detail: "valid apart from SSH_KEY (see ssh key below)"}))
	}
	return checks
}

// serverChecks reach server i of DEPLOY_HOST over SSH and look at it,
// with the SSH settings a deploy uses (sshConfig). With several servers
// each check's name carries the server's address.
func (d *doctorRun) serverChecks(i int) []doctor.Check {
	c := d.c
	const timeout = 10 * time.Second
	t := c.Targets[i]
	sc := sshConfig(c, t, nil)
	sc.ConnectTimeout = timeout
	s := &serverLogin{}
	d.servers = append(d.servers, s)
	name := func(n string) string {
		if len(c.Targets) > 1 {
			return n + " " + t.Addr()
		}
		return n
	}
	login := []string{name("ssh login")}
	return []doctor.Check{
		{Name: name("ssh reach"), Run: func(ctx context.Context) doctor.Result { return doctor.Reach(ctx, t.Addr(), timeout) }},
		{Name: name("ssh key"), Run: func(context.Context) doctor.Result { return doctor.Key(sc) }},
		{Name: name("known_hosts"), Needs: []string{name("ssh reach")}, Run: func(ctx context.Context) doctor.Result {
			r, known := doctor.KnownHosts(ctx, sc)
			s.hostKeyKnown = known
			return r
		}},
		{Name: name("ssh login"), Needs: []string{name("ssh reach"), name("ssh key"), name("known_hosts")}, Run: func(ctx context.Context) doctor.Result {
			if !s.hostKeyKnown { // unknown with SSH_ACCEPT_NEW=1: the doctor records nothing
				return doctor.Result{Status: doctor.Skip, Detail: "the host key is not recorded yet (the next deploy does it)"}
			}
			r, ssh := doctor.Login(ctx, sc)
			s.ssh = ssh
			return r
		}},
		{Name: name("server engine"), Needs: login, Run: func(ctx context.Context) doctor.Result { return doctor.ServerEngine(ctx, d.docker(s)) }},
		d.composeOrSwarm(name, login, s),
		{Name: name("tools"), Needs: login, Run: func(ctx context.Context) doctor.Result { return doctor.Tools(ctx, s.ssh) }},
		{Name: name("disk"), Needs: login, Run: func(ctx context.Context) doctor.Result { return doctor.Disk(ctx, s.ssh, c.DeployPath) }},
		{Name: name("server .env"), Needs: login, Run: func(ctx context.Context) doctor.Result { return doctor.ServerEnv(ctx, s.ssh, c.DeployPath) }},
		{Name: name("app port"), Needs: login, Run: func(ctx context.Context) doctor.Result {
			return doctor.ServerPort(ctx, d.docker(s), c.AppPort, func(_, image string) bool { return d.ours(image) })
		}},
	}
}

// composeOrSwarm checks what deploys on the server: its Compose, or in
// swarm mode the swarm it manages and the nodes a deploy would reach.
func (d *doctorRun) composeOrSwarm(name func(string) string, login []string, s *serverLogin) doctor.Check {
	c := d.c
	if c.Mode != "swarm" {
		return doctor.Check{Name: name("compose"), Needs: login, Run: func(ctx context.Context) doctor.Result { return doctor.Compose(ctx, d.docker(s)) }}
	}
	return doctor.Check{Name: name("swarm"), Needs: login, Run: func(ctx context.Context) doctor.Result {
		return doctor.Swarm(ctx, d.docker(s), func(ctx context.Context, addr string) (host.Host, error) {
			return dialNode(ctx, c, addr, nil)
		})
	}}
}

// localDeployChecks look at this machine as the deploy target.
func (d *doctorRun) localDeployChecks() []doctor.Check {
	c := d.c
	if runtime.GOOS == "windows" {
		// Deploy runs its steps with /bin/sh on the target: on Windows that
		// target must be a server (or the WSL distro, reached over SSH).
		return []doctor.Check{{Name: "deploy", Run: func(context.Context) doctor.Result {
			return doctor.Result{Status: doctor.Warn, Detail: "DEPLOY_HOST is empty: deploy and the targets after it run shell steps on this machine, which Windows cannot",
				Fix: "set DEPLOY_HOST to your server; build, inspect and test work as they are"}
		}}}
	}
	local := host.Local{}
	return []doctor.Check{
		{Name: "compose", Run: func(ctx context.Context) doctor.Result { return doctor.Compose(ctx, local) }},
		{Name: "tools", Run: func(ctx context.Context) doctor.Result { return doctor.Tools(ctx, local) }},
		{Name: "disk", Run: func(ctx context.Context) doctor.Result { return doctor.Disk(ctx, local, c.DeployPath) }},
		{Name: "deploy .env", Run: func(context.Context) doctor.Result { return doctor.LocalEnv(c.DeployPath, c.EnvFile) }},
	}
}

// port checks a port on this machine; with the engine up, a port held by
// one of our containers is fine.
func (d *doctorRun) port(ctx context.Context, setting string, port int, ours func(engine.PortUser) (string, bool)) doctor.Result {
	if port == 0 {
		return doctor.Result{Status: doctor.Skip, Detail: "needs a valid " + setting}
	}
	var users func(context.Context, int) ([]engine.PortUser, error)
	if d.eng != nil {
		users = d.eng.PublishedOn
	}
	return doctor.Port(ctx, setting, port, portFree, users, ours)
}

// ours tells our images (IMAGE_NAME:any tag) from others.
func (d *doctorRun) ours(image string) bool {
	name := image
	if i := strings.LastIndex(name, ":"); i > strings.LastIndex(name, "/") {
		name = name[:i]
	}
	return name == d.c.ImageName
}
