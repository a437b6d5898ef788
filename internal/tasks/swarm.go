package tasks

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"text/tabwriter"

	"github.com/carebot/carebot/internal/config"
	"github.com/carebot/carebot/internal/deploy"
	"github.com/carebot/carebot/internal/engine"
	"github.com/carebot/carebot/internal/fleet"
	"github.com/carebot/carebot/internal/host"
	"github.com/carebot/carebot/internal/shell"
	"github.com/carebot/carebot/internal/text"
)

// DEPLOY_MODE=swarm: DEPLOY_HOST is a Swarm manager; the tasks reach the
// other nodes from what it says of them.

func (r *Runner) swarmMode() bool { return r.Cfg.Mode == "swarm" }

// swarm is the run's view of the swarm through its manager.
func (r *Runner) swarm(ctx context.Context) (*fleet.Swarm, error) {
	m, err := r.Deployer(ctx)
	if err != nil {
		return nil, err
	}
	return &fleet.Swarm{Manager: m, Reach: r.reachNode, Stack: r.Cfg.StackName, StackFile: r.Cfg.ComposeFile, Out: r.Out}, nil
}

// stack is the swarm and the stack file, read first: a file the stack
// deploy would refuse stops the task before any connection.
func (r *Runner) stack(ctx context.Context) (*fleet.Swarm, *fleet.StackFile, error) {
	sf, err := r.stackFile()
	if err != nil {
		return nil, nil, err
	}
	s, err := r.swarm(ctx)
	return s, sf, err
}

// stackFile reads COMPOSE_FILE as docker stack deploy will.
func (r *Runner) stackFile() (*fleet.StackFile, error) {
	data, err := os.ReadFile(r.Cfg.ComposeFile)
	if err != nil {
		return nil, fmt.Errorf("read COMPOSE_FILE: %w", err)
	}
	return fleet.ReadStackFile(filepath.Base(r.Cfg.ComposeFile), data, r.Cfg.ImageName)
}

// reachNode connects to a swarm node the manager named, by its address:
// SWARM_NODES says how when that address is not how SSH reaches it; else
// DEPLOY_HOST's user at that address, port 22. Its host key must be known:
// SSH_ACCEPT_NEW applies to the hosts the user named, not to these.
func (r *Runner) reachNode(ctx context.Context, addr string) (*deploy.Deployer, error) {
	h, err := dialNode(ctx, r.Cfg, addr, r.Out)
	if err != nil {
		return nil, err
	}
	out := r.nodeOut(addr)
	d := r.deployerOn(h, out)
	r.hostMu.Lock()
	r.nodes = append(r.nodes, d)
	r.hostMu.Unlock()
	return d, nil
}

// dialNode connects to the swarm node at addr as reachNode says, docker
// through sudo with DEPLOY_DOCKER_SUDO.
func dialNode(ctx context.Context, c *config.Config, addr string, out io.Writer) (host.Host, error) {
	t, ok := c.SwarmNodes[addr]
	if !ok {
		t = config.Target{User: c.Targets[0].User, Host: addr, Port: 22}
	}
	sc := sshConfig(c, t, out)
	sc.AcceptNew = false
	s, err := host.DialSSH(ctx, sc)
	if err != nil {
		return nil, err
	}
	if c.DeployDockerSudo {
		return host.DockerSudo(s), nil
	}
	return s, nil
}

func (r *Runner) nodeOut(addr string) *text.Prefixed {
	return &text.Prefixed{W: r.Out, Prefix: "[" + addr + "] ", Mu: &r.outMu}
}

// swarmDeploy delivers the image to the swarm's nodes and deploys the stack.
func (r *Runner) swarmDeploy(ctx context.Context, rel deploy.Release) error {
	s, sf, err := r.stack(ctx)
	if err != nil {
		return err
	}
	defer r.taskDone(s.Manager)
	if nodes, err := s.DeployNodes(ctx, sf); err == nil { // else Deploy says why
		if !slices.Contains(nodes, s.Manager) { // it writes too: the stack deploy
			nodes = append([]*deploy.Deployer{s.Manager}, nodes...)
		}
		var end func()
		s.Out, end = r.board(nodes)
		defer end()
	}
	return s.Deploy(ctx, rel, sf, r.backupOn(s.Manager))
}

// swarmStatus is one row per task of the stack's services: node, state,
// the version its image carries, and what the node's HEALTH_PATH says.
func (r *Runner) swarmStatus(ctx context.Context) error {
	s, sf, err := r.stack(ctx)
	if err != nil {
		return err
	}
	rows, err := s.Status(ctx, sf)
	tw := tabwriter.NewWriter(r.Out, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "SERVICE\tNODE\tTASK\tVERSION\tHEALTH\n")
	for _, row := range rows {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", row.Service, row.Node, row.State, row.Version, row.Health)
	}
	tw.Flush()
	return err
}

// swarmRollback serves version (or the release before the current one)
// on the swarm again.
func (r *Runner) swarmRollback(ctx context.Context, version string) error {
	s, sf, err := r.stack(ctx)
	if err != nil {
		return err
	}
	defer r.taskDone(s.Manager)
	return s.Rollback(ctx, sf, version)
}

// swarmLogs prints (or follows) the logs of the stack's services.
func (r *Runner) swarmLogs(ctx context.Context, lines int, follow bool) error {
	if sel := r.swarmNode(); sel != "" {
		r.printf("swarm mode: the service logs of every task, each line naming its task and node (-host %s does not narrow them)\n", sel)
	}
	s, sf, err := r.stack(ctx)
	if err != nil {
		return err
	}
	var errs []error
	for _, svc := range sf.Services {
		cmd := "docker service logs --no-trunc --tail " + strconv.Itoa(lines)
		if follow {
			cmd += " --follow"
		}
		cmd += " " + deploy.ServiceName(s.Stack, svc)
		if err := s.Manager.Stream(ctx, cmd); err != nil && ctx.Err() == nil {
			errs = append(errs, fmt.Errorf("service logs on %s: %w", s.Manager.Host, err))
		}
	}
	return errors.Join(errs...)
}

// swarmNode takes -host as the swarm node a task acts on (DEPLOY_HOST
// names only the manager): it returns it and clears Host.
func (r *Runner) swarmNode() string {
	sel := r.Host
	r.Host = ""
	return sel
}

// swarmDataNode is the node whose data a task acts on: -host, or the only
// node that runs a task of the stack.
func (r *Runner) swarmDataNode(ctx context.Context) (*deploy.Deployer, error) {
	sel := r.swarmNode()
	s, sf, err := r.stack(ctx)
	if err != nil {
		return nil, err
	}
	return s.DataNode(ctx, sf, sel)
}

// swarmRestore restores a backup on the node that holds the data (-host,
// or the only one that runs a task), its tasks taken off it meanwhile.
// The restore picks the node; every node's lock it took goes back after.
func (r *Runner) swarmRestore(ctx context.Context, name string) error {
	sel := r.swarmNode()
	s, sf, err := r.stack(ctx)
	if err != nil {
		return err
	}
	defer r.taskDone(s.Manager)
	defer r.nodesDone()
	return s.Restore(ctx, sf, sel, name)
}

// nodesDone ends the task on every swarm node reached (see taskDone); a
// node whose lock was not taken has nothing to give back.
func (r *Runner) nodesDone() {
	r.hostMu.Lock()
	nodes := slices.Clone(r.nodes)
	r.hostMu.Unlock()
	for _, d := range nodes {
		r.taskDone(d)
	}
}

// swarmCleanup removes, on every node, the stack's image tags beyond
// IMAGE_KEEP (never one a task runs or a rollback would go to), dangling
// images; on the build engine the same by version; and the manager's
// backups beyond BACKUP_KEEP.
func (r *Runner) swarmCleanup(ctx context.Context, dryRun bool) error {
	s, sf, err := r.stack(ctx)
	if err != nil {
		return err
	}
	nodes, err := s.Nodes(ctx)
	if err != nil {
		return err
	}
	if !dryRun { // not while a deploy of another run loads or switches images
		if err := s.Manager.Lock(ctx); err != nil {
			return err
		}
		defer r.taskDone(s.Manager)
	}
	tags, versions, err := s.Protected(ctx, sf)
	if err != nil {
		return err
	}
	versions[r.Cfg.ImageTag] = true // what was just built is about to be tested or deployed
	verb := "removed"
	if dryRun {
		verb = "would remove"
	}
	e, err := r.Engine(ctx)
	if err != nil {
		return err
	}
	reclaimed, err := r.cleanEngine(ctx, r.Out, e, versions, dryRun, verb)
	if err != nil {
		return err
	}
	cache, err := r.cleanBuildCache(ctx, e, dryRun, verb)
	if err != nil {
		return err
	}
	reclaimed += cache
	for _, d := range nodes {
		// Swarm keeps the containers of a service's last tasks, stopped:
		// their images count as in use. Nothing needs them (a rollback
		// deploys a tag again), so they go first.
		if !dryRun {
			prune := "docker container prune -f --filter " + shell.Quote("label="+engine.StackLabel+"="+s.Stack) + " >/dev/null"
			if _, err := host.Run(ctx, d.Host, prune); err != nil {
				return fmt.Errorf("remove the stopped task containers of stack %s on %s: %w", s.Stack, d.Host, err)
			}
		}
		n, err := r.cleanEngine(ctx, d.Out, deploy.HostImages{Host: d.Host}, tags, dryRun, verb)
		reclaimed += n
		if err != nil {
			return err
		}
	}
	n, err := r.cleanServer(ctx, s.Manager, tags, dryRun, verb, false)
	reclaimed += n
	if err != nil {
		return err
	}
	r.reclaimed(dryRun, reclaimed)
	return nil
}

// swarmBackup backs up the data folder on every node that runs a task of
// the stack (a bind-mounted ./data lives there), pausing those tasks for
// the copy as a Compose backup pauses its containers. The deploy's
// history names them all.
func (r *Runner) swarmBackup(ctx context.Context) error {
	s, sf, err := r.stack(ctx)
	if err != nil {
		return err
	}
	nodes, err := s.TaskNodes(ctx, sf)
	if err != nil {
		return err
	}
	if len(nodes) == 0 {
		r.printf("no task of stack %s runs: nothing to back up\n", s.Stack)
		return nil
	}
	var mu sync.Mutex
	var names []string
	err = fleet.Each(nodes, func(d *deploy.Deployer) error {
		defer r.taskDone(d)
		b, err := d.Backup(ctx, r.Cfg.BackupKeep)
		if b.Name != "" {
			mu.Lock()
			names = append(names, d.Host.String()+":"+b.Name)
			mu.Unlock()
		}
		return err
	})
	sort.Strings(names)
	r.tookBackup(s.Manager, strings.Join(names, ", "))
	return err
}
