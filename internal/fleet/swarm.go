package fleet

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/carebot/carebot/internal/deploy"
	"github.com/carebot/carebot/internal/engine"
	"github.com/carebot/carebot/internal/health"
	"github.com/carebot/carebot/internal/text"
)

// Swarm deploys a stack through a Swarm manager: the image goes to every
// node that can run the service (no registry: each node loads it, sent
// only the layers it lacks), pinned by a tag unique to the build, then
// `docker stack deploy`; the run waits until the service has converged on
// that tag and every node that runs a task answers HEALTH_PATH with the
// new version, and rolls the service back otherwise.
type Swarm struct {
	Manager *deploy.Deployer // DEPLOY_HOST: its engine and its deploy folder
	// Reach connects to a node by its swarm address (SSH, with host keys
	// checked and never accepted on first sight: the user did not name it).
	Reach     func(ctx context.Context, addr string) (*deploy.Deployer, error)
	Stack     string
	StackFile string // the local COMPOSE_FILE
	Out       io.Writer

	nodes   map[string]*deploy.Deployer // by node ID, once reached
	saidOff bool                        // the nodes the placement constraints leave out were named
}

// swarmAPI is what a deploy asks of the manager's engine; *engine.Engine
// has it.
type swarmAPI interface {
	Swarm(ctx context.Context) (engine.SwarmRole, error)
	Nodes(ctx context.Context) ([]engine.Node, error)
	Service(ctx context.Context, name string) (engine.Service, error)
	Tasks(ctx context.Context, name string) ([]engine.Task, error)
}

var _ swarmAPI = (*engine.Engine)(nil)

func (s *Swarm) printf(format string, a ...any) {
	if s.Out != nil {
		fmt.Fprintf(s.Out, format, a...)
	}
}

// SwarmTag is the tag a build is deployed under: IMAGE_TAG repeats (a
// rebuild of abc1234-dirty), and Swarm ignores a spec that did not change.
func SwarmTag(version, imageID string) string {
	id := strings.TrimPrefix(imageID, "sha256:")
	if len(id) > 12 {
		id = id[:12]
	}
	return version + "-" + id
}

// api is the manager's engine, checked to be a manager.
func (s *Swarm) api(ctx context.Context) (swarmAPI, engine.SwarmRole, error) {
	srv, err := s.Manager.ServerAPI(ctx)
	if err != nil {
		return nil, engine.SwarmRole{}, err
	}
	api, ok := srv.(swarmAPI)
	if !ok {
		return nil, engine.SwarmRole{}, fmt.Errorf("%s: its engine cannot be asked about Swarm", s.Manager.Host)
	}
	role, err := api.Swarm(ctx)
	if err != nil {
		return nil, role, err
	}
	if !role.Manager {
		what := "is not part of a swarm"
		if role.State == "active" {
			what = "is a Swarm worker, not a manager"
		}
		return nil, role, fmt.Errorf("%s %s (DEPLOY_MODE=swarm): run docker swarm init there (or name a manager in DEPLOY_HOST), or set DEPLOY_MODE=compose", s.Manager.Host, what)
	}
	return api, role, nil
}

// reachNodes connects to every node that can run a task (ready, active),
// the manager through its own connection, all at once.
func (s *Swarm) reachNodes(ctx context.Context, api swarmAPI, role engine.SwarmRole) ([]engine.Node, error) {
	return s.reachNodesFor(ctx, api, role, nil)
}

// reachNodesFor is reachNodes for the nodes the stack file's placement
// constraints let run the app (sf nil: every node).
func (s *Swarm) reachNodesFor(ctx context.Context, api swarmAPI, role engine.SwarmRole, sf *StackFile) ([]engine.Node, error) {
	all, err := api.Nodes(ctx)
	if err != nil {
		return nil, err
	}
	var nodes, off []engine.Node
	for _, n := range all {
		switch {
		case !n.Ready || !n.Active:
		case sf != nil && !sf.Runs(n):
			off = append(off, n)
		default:
			nodes = append(nodes, n)
		}
	}
	if sf != nil && len(nodes) == 0 {
		return nil, fmt.Errorf("no ready node of the swarm meets the placement constraints of %s (%s): check deploy.placement.constraints in %s", strings.Join(sf.Services, ", "), nodeList(off), s.StackFile)
	}
	if sf != nil && len(off) > 0 && !s.saidOff {
		s.saidOff = true
		s.printf("left out by the placement constraints of %s: %s (the image does not go there)\n", strings.Join(sf.Services, ", "), nodeList(off))
	}
	if s.nodes == nil {
		s.nodes = map[string]*deploy.Deployer{}
	}
	var mu sync.Mutex
	errs := make([]error, len(nodes))
	var wg sync.WaitGroup
	for i, n := range nodes {
		if n.ID == role.NodeID {
			s.nodes[n.ID] = s.Manager
			continue
		}
		if s.nodes[n.ID] != nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			d, err := s.Reach(ctx, n.Addr)
			if err != nil {
				errs[i] = fmt.Errorf("swarm node %s (%s): %w", n.Hostname, n.Addr, err)
				return
			}
			mu.Lock()
			s.nodes[n.ID] = d
			mu.Unlock()
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("%w\nnothing was changed: every node that can run the service needs the image (set SWARM_NODES when a node's swarm address is not how SSH reaches it)", err)
	}
	return nodes, nil
}

// Deploy delivers r to the swarm's nodes and deploys the stack with it.
func (s *Swarm) Deploy(ctx context.Context, r deploy.Release, stackFile *StackFile, backup string) error {
	m := s.Manager
	api, role, err := s.api(ctx)
	if err != nil {
		return err
	}
	for _, w := range stackFile.Warnings {
		s.printf("warning: %s\n", w)
	}
	if err := m.Check(ctx); err != nil {
		return err
	}
	nodes, err := s.reachNodesFor(ctx, api, role, stackFile)
	if err != nil {
		return err
	}
	if err := m.Lock(ctx); err != nil {
		return err
	}

	// The image, to every node at once, saved once.
	tag := SwarmTag(r.Version, r.ImageID)
	ref := m.ImageName + ":" + tag
	var targets []*deploy.Deployer
	for _, n := range nodes {
		targets = append(targets, s.nodes[n.ID])
	}
	done := share(ctx, targets)
	defer done()
	if err := Each(targets, func(d *deploy.Deployer) error {
		_, err := d.ShipImage(ctx, r.ImageID, ref)
		return err
	}); err != nil {
		return fmt.Errorf("%w\nthe stack was not changed", err)
	}

	history, err := m.PrepareStack(ctx, r.Version, stackFile.Data)
	if err != nil {
		return err
	}
	services := s.services(stackFile)
	current, curTag := "", ""
	if svc, err := api.Service(ctx, services[0]); err == nil {
		curTag = tagOf(svc.Image)
		current = deploy.VersionOfTag(history, curTag)
		if current == "" {
			current = curTag
		}
	} else if !errors.Is(err, engine.ErrNotFound) {
		return err
	}
	entry := deploy.Entry{Action: "deploy", Version: r.Version, ImageID: r.ImageID, Commit: r.Commit, Previous: current, Backup: backup, Tag: tag}
	undo, what := s.undo(current, curTag), fmt.Sprintf("deploying stack %s %s (serving: %s): put it back", s.Stack, r.Version, noneIf(current))
	failed := entry
	failed.Result, failed.Serving = deploy.ResultRolledBack, current
	if current == "" {
		failed.Result = deploy.ResultFailed
	}
	confirm := 2*m.HealthTimeout + 3*time.Minute
	if err := m.Intend(ctx, what, m.UndoRecord(undo, failed), confirm); err != nil {
		return err
	}
	s.printf("deploying stack %s with %s to %d node(s) (serving now: %s)\n", s.Stack, ref, len(nodes), noneIf(current))
	if out, err := m.RunStep(ctx, "docker stack deploy", m.StackCommand(s.Stack, tag)); err != nil {
		return s.fail(ctx, api, services, entry, current, curTag, fmt.Errorf("%w: %s", err, strings.TrimSpace(out)))
	}
	if err := s.converge(ctx, api, services, ref); err != nil {
		return s.fail(ctx, api, services, entry, current, curTag, err)
	}
	if err := s.healthy(ctx, api, services, r.Version); err != nil {
		return s.fail(ctx, api, services, entry, current, curTag, err)
	}
	entry.Result, entry.Serving = deploy.ResultOK, r.Version
	if err := m.Conclude(ctx, entry); err != nil {
		return err
	}
	s.printf("stack %s serves %s (%s) on every node that runs it\n", s.Stack, r.Version, ref)
	return nil
}

// undo is what puts the stack back: the release that served, as it was
// deployed, or no stack at all after a first deploy.
func (s *Swarm) undo(current, curTag string) string {
	if current == "" {
		return deploy.StackRemoveCommand(s.Stack)
	}
	return s.Manager.StackBackCommand(s.Stack, current, curTag)
}

// fail puts the stack back as current ran (Swarm may have rolled the
// services back already, by their update_config: the same spec again
// changes nothing), records it and says what happened.
func (s *Swarm) fail(ctx context.Context, api swarmAPI, services []string, e deploy.Entry, current, curTag string, cause error) error {
	m := s.Manager
	if ctx.Err() != nil {
		m.Abandon()
		return fmt.Errorf("interrupted before %s was confirmed on the swarm: %s puts %s back by itself (mage status shows when)", e.Version, m.Host, noneIf(current))
	}
	ctx = context.WithoutCancel(ctx)
	e.Error = text.ErrLine(cause)
	if current == "" {
		_, _ = m.RunStep(ctx, "docker stack rm", deploy.StackRemoveCommand(s.Stack))
		e.Result = deploy.ResultFailed
		_ = m.Conclude(ctx, e)
		return fmt.Errorf("release %s failed on the swarm: %s; there is no earlier release to roll back to, so stack %s was removed", e.Version, e.Error, s.Stack)
	}
	s.printf("release %s failed (%s); rolling stack %s back to %s\n", e.Version, e.Error, s.Stack, current)
	if _, err := m.RunStep(ctx, "docker stack deploy", m.StackBackCommand(s.Stack, current, curTag)); err != nil {
		e.Result, e.Error = deploy.ResultFailed, e.Error+"; rollback failed too: "+text.ErrLine(err)
		_ = m.Conclude(ctx, e)
		return fmt.Errorf("release %s failed on the swarm: %s: run mage status", e.Version, e.Error)
	}
	err := s.converge(ctx, api, services, m.ImageName+":"+curTag)
	if err == nil {
		err = s.healthy(ctx, api, services, current)
	}
	if err != nil {
		e.Result, e.Error = deploy.ResultFailed, e.Error+"; rollback to "+current+" failed too: "+text.ErrLine(err)
		_ = m.Conclude(ctx, e)
		return fmt.Errorf("release %s failed on the swarm: %s: run mage status and mage logs", e.Version, e.Error)
	}
	e.Result, e.Serving = deploy.ResultRolledBack, current
	_ = m.Conclude(ctx, e)
	return fmt.Errorf("release %s failed on the swarm: %s; rolled back to %s, which is serving", e.Version, e.Error, current)
}

// converge waits until every service runs ref (or, with ref "", whatever
// its spec says now: after a rollback) on all of its tasks, and its update
// is over. An update Swarm paused or rolled back fails it.
func (s *Swarm) converge(ctx context.Context, api swarmAPI, services []string, ref string) error {
	m := s.Manager
	deadline := time.Now().Add(m.HealthTimeout + time.Minute)
	s.printf("waiting up to %s for %s to converge\n", time.Until(deadline).Round(time.Second), strings.Join(services, ", "))
	for {
		why, done, err := s.converged(ctx, api, services, ref)
		if err != nil || done {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the swarm did not converge within %s: %s", m.HealthTimeout+time.Minute, why)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// converged says whether the services run what they should, or why not.
func (s *Swarm) converged(ctx context.Context, api swarmAPI, services []string, ref string) (string, bool, error) {
	for _, name := range services {
		svc, err := api.Service(ctx, name)
		if err != nil {
			return "", false, err
		}
		want := ref
		if want == "" {
			want = engine.ImageRef(svc.Image)
		}
		at := engine.ImageRef(svc.Image) == want
		switch svc.UpdateState {
		case "paused", "rollback_paused":
			return "", false, fmt.Errorf("Swarm paused the update of %s: %s", name, svc.UpdateMsg)
		case "rollback_started", "rollback_completed":
			if !at {
				return "", false, fmt.Errorf("Swarm rolled %s back by itself: %s", name, svc.UpdateMsg)
			}
		}
		if !at {
			return fmt.Sprintf("%s runs %s", name, svc.Image), false, nil
		}
		if svc.UpdateState == "updating" || svc.UpdateState == "rollback_started" {
			return fmt.Sprintf("%s is %s", name, svc.UpdateState), false, nil
		}
		tasks, err := api.Tasks(ctx, name)
		if err != nil {
			return "", false, err
		}
		running := 0
		for _, t := range tasks {
			if t.Desired != "running" {
				continue
			}
			if engine.ImageRef(t.Image) != want || t.State != "running" {
				msg := fmt.Sprintf("task %s.%d is %s", name, t.Slot, t.State)
				if t.Err != "" {
					msg += ": " + t.Err
				}
				return msg, false, nil
			}
			running++
		}
		if running == 0 || (!svc.Global && uint64(running) < svc.Replicas) {
			return fmt.Sprintf("%s has %d of %d tasks running", name, running, max(svc.Replicas, 1)), false, nil
		}
	}
	return "", true, nil
}

// healthy checks, on every node that runs a task of the services, that
// HEALTH_PATH answers with version (ports published in mode: host; asked
// from the node itself, through its SSH connection).
func (s *Swarm) healthy(ctx context.Context, api swarmAPI, services []string, version string) error {
	nodes := map[string]bool{}
	for _, name := range services {
		tasks, err := api.Tasks(ctx, name)
		if err != nil {
			return err
		}
		for _, t := range tasks {
			if t.Desired == "running" && t.State == "running" {
				nodes[t.NodeID] = true
			}
		}
	}
	var ds []*deploy.Deployer
	for id := range nodes {
		d := s.nodes[id]
		if d == nil {
			return fmt.Errorf("a task runs on node %s, which the deploy did not reach", id)
		}
		ds = append(ds, d)
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i].Host.String() < ds[j].Host.String() })
	return Each(ds, func(d *deploy.Deployer) error {
		probe := d.Probe()
		_, err := probe.Until(ctx, health.Wait{Version: version, Timeout: d.HealthTimeout})
		if err != nil {
			return fmt.Errorf("%s: %s: %w", d.Host, probe.URL, err)
		}
		return nil
	})
}

// services are the swarm names of the stack's services that run the app.
func (s *Swarm) services(sf *StackFile) []string {
	names := make([]string, len(sf.Services))
	for i, svc := range sf.Services {
		names[i] = deploy.ServiceName(s.Stack, svc)
	}
	return names
}

// tagOf is the tag of an image reference (without its digest).
func tagOf(ref string) string {
	ref = engine.ImageRef(ref)
	if i := strings.LastIndex(ref, ":"); i > strings.LastIndex(ref, "/") {
		return ref[i+1:]
	}
	return "latest"
}

// TaskRow is one task of a stack, as status shows it.
type TaskRow struct {
	Service, Node, State, Version, Health string
}

// Status lists the running tasks of the stack's services with each
// node's health answer; it fails when a task is not running the release
// confirmed last or a node's health does not answer with it.
func (s *Swarm) Status(ctx context.Context, sf *StackFile) ([]TaskRow, error) {
	m := s.Manager
	api, role, err := s.api(ctx)
	if err != nil {
		return nil, err
	}
	history, err := m.History(ctx)
	if err != nil {
		return nil, err
	}
	confirmed := deploy.Confirmed(history)
	nodes, err := api.Nodes(ctx)
	if err != nil {
		return nil, err
	}
	byID := map[string]engine.Node{}
	for _, n := range nodes {
		byID[n.ID] = n
	}
	var rows []TaskRow
	var problems []error
	for _, svc := range sf.Services {
		name := deploy.ServiceName(s.Stack, svc)
		tasks, err := api.Tasks(ctx, name)
		if err != nil {
			return rows, err
		}
		for _, t := range tasks {
			if t.Desired != "running" {
				continue
			}
			n := byID[t.NodeID]
			tag := tagOf(t.Image)
			row := TaskRow{Service: name, Node: n.Addr, State: t.State, Version: tag, Health: "-"}
			if v := deploy.VersionOfTag(history, tag); v != "" {
				row.Version = v
			}
			if t.State == "running" {
				row.Health = s.nodeHealth(ctx, api, role, n)
			}
			if t.Err != "" {
				row.State += ": " + t.Err
			}
			rows = append(rows, row)
			switch {
			case t.State != "running":
				problems = append(problems, fmt.Errorf("task %s.%d on %s is %s", name, t.Slot, n.Addr, row.State))
			case row.Health != "ok "+row.Version:
				problems = append(problems, fmt.Errorf("%s on %s: health %s", name, n.Addr, row.Health))
			case row.Version != confirmed:
				problems = append(problems, fmt.Errorf("%s on %s runs %s, but the last release confirmed healthy is %s: run mage deploy or mage rollback", name, n.Addr, row.Version, noneIf(confirmed)))
			}
		}
		if len(tasks) == 0 {
			problems = append(problems, fmt.Errorf("service %s has no tasks: run mage deploy", name))
		}
	}
	if what, _ := m.Interrupted(ctx); what != "" {
		problems = append(problems, fmt.Errorf("%s is not settled: %s", m.Host, what))
	}
	return rows, errors.Join(problems...)
}

// nodeHealth asks HEALTH_PATH on node n through its SSH connection.
func (s *Swarm) nodeHealth(ctx context.Context, api swarmAPI, role engine.SwarmRole, n engine.Node) string {
	if s.nodes == nil || s.nodes[n.ID] == nil {
		if _, err := s.reachNodes(ctx, api, role); err != nil {
			return "unreachable"
		}
	}
	d := s.nodes[n.ID]
	if d == nil {
		return "unreachable"
	}
	st, err := d.Probe().Check(ctx)
	if err != nil {
		return "FAILING: " + text.ErrLine(err)
	}
	return "ok " + st.Version
}

// Rollback serves version (or the release confirmed before the current
// one) again: its stack file and its tag, whose image the nodes still
// have; back to the current one if it does not become healthy.
func (s *Swarm) Rollback(ctx context.Context, sf *StackFile, version string) error {
	m := s.Manager
	api, role, err := s.api(ctx)
	if err != nil {
		return err
	}
	if _, err := s.reachNodes(ctx, api, role); err != nil {
		return err
	}
	history, err := s.lockedHistory(ctx)
	if err != nil {
		return err
	}
	services := s.services(sf)
	svc, err := api.Service(ctx, services[0])
	if errors.Is(err, engine.ErrNotFound) {
		return fmt.Errorf("stack %s is not deployed on %s: run mage deploy first", s.Stack, m.Host)
	}
	if err != nil {
		return err
	}
	curTag := tagOf(svc.Image)
	current := deploy.VersionOfTag(history, curTag)
	if version == "" {
		version = deploy.Previous(history, current)
		if version == "" {
			return fmt.Errorf("no earlier release to roll back to on the swarm (serving: %s): name one with -to", noneIf(current))
		}
	}
	tag := deploy.TagOf(history, version)
	if tag == "" {
		return fmt.Errorf("no release %s was deployed to stack %s (see mage status): name one the history has", version, s.Stack)
	}
	entry := deploy.Entry{Action: "rollback", Version: version, ImageID: deploy.ImageOf(history, version), Previous: current, Tag: tag}
	failed := entry
	failed.Result, failed.Serving = deploy.ResultRolledBack, current
	if err := m.Intend(ctx, fmt.Sprintf("rolling stack %s back from %s to %s: put %s back", s.Stack, noneIf(current), version, noneIf(current)),
		m.UndoRecord(s.undo(current, curTag), failed), 2*m.HealthTimeout+3*time.Minute); err != nil {
		return err
	}
	s.printf("rolling stack %s back from %s to %s\n", s.Stack, noneIf(current), version)
	ref := m.ImageName + ":" + tag
	if out, err := m.RunStep(ctx, "docker stack deploy", m.StackBackCommand(s.Stack, version, tag)); err != nil {
		return s.fail(ctx, api, services, entry, current, curTag, fmt.Errorf("%w: %s", err, strings.TrimSpace(out)))
	}
	if err := s.converge(ctx, api, services, ref); err != nil {
		return s.fail(ctx, api, services, entry, current, curTag, err)
	}
	if err := s.healthy(ctx, api, services, version); err != nil {
		return s.fail(ctx, api, services, entry, current, curTag, err)
	}
	entry.Result, entry.Serving = deploy.ResultOK, version
	if err := m.Conclude(ctx, entry); err != nil {
		return err
	}
	s.printf("stack %s serves %s again\n", s.Stack, version)
	return nil
}

// lockedHistory takes the manager's deploy lock and reads its history.
func (s *Swarm) lockedHistory(ctx context.Context) ([]deploy.Entry, error) {
	if err := s.Manager.Lock(ctx); err != nil {
		return nil, err
	}
	return s.Manager.History(ctx)
}

func noneIf(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

// Nodes reaches every node that can run tasks and returns them, the
// manager first.
func (s *Swarm) Nodes(ctx context.Context) ([]*deploy.Deployer, error) {
	api, role, err := s.api(ctx)
	if err != nil {
		return nil, err
	}
	nodes, err := s.reachNodes(ctx, api, role)
	if err != nil {
		return nil, err
	}
	out := []*deploy.Deployer{s.Manager}
	for _, n := range nodes {
		if d := s.nodes[n.ID]; d != s.Manager {
			out = append(out, d)
		}
	}
	return out, nil
}

// DeployNodes reaches the nodes a deploy of sf sends the image to (those
// its placement constraints let run the app) and returns them.
func (s *Swarm) DeployNodes(ctx context.Context, sf *StackFile) ([]*deploy.Deployer, error) {
	api, role, err := s.api(ctx)
	if err != nil {
		return nil, err
	}
	nodes, err := s.reachNodesFor(ctx, api, role, sf)
	if err != nil {
		return nil, err
	}
	var out []*deploy.Deployer
	for _, n := range nodes {
		out = append(out, s.nodes[n.ID])
	}
	return out, nil
}

// Protected is what cleanup must keep: on the nodes, the image tags the
// stack's tasks run and the tag of the release a rollback would go to;
// on the build engine, those releases' versions.
func (s *Swarm) Protected(ctx context.Context, sf *StackFile) (tags, versions map[string]bool, err error) {
	api, _, err := s.api(ctx)
	if err != nil {
		return nil, nil, err
	}
	history, err := s.Manager.History(ctx)
	if err != nil {
		return nil, nil, err
	}
	tags, versions = map[string]bool{}, map[string]bool{}
	for _, svc := range sf.Services {
		tasks, err := api.Tasks(ctx, deploy.ServiceName(s.Stack, svc))
		if err != nil {
			return nil, nil, err
		}
		for _, t := range tasks {
			if t.Desired == "running" {
				tag := tagOf(t.Image)
				tags[tag] = true
				if v := deploy.VersionOfTag(history, tag); v != "" {
					versions[v] = true
				}
			}
		}
	}
	if cur := deploy.Confirmed(history); cur != "" {
		versions[cur] = true
		tags[deploy.TagOf(history, cur)] = true
		if prev := deploy.Previous(history, cur); prev != "" {
			versions[prev] = true
			tags[deploy.TagOf(history, prev)] = true
		}
	}
	delete(tags, "")
	return tags, versions, nil
}

// TaskNodes are the nodes that run a task of the stack's services now
// (where their bind-mounted data lives), each set to see those tasks as
// its deployment's containers.
func (s *Swarm) TaskNodes(ctx context.Context, sf *StackFile) ([]*deploy.Deployer, error) {
	api, role, err := s.api(ctx)
	if err != nil {
		return nil, err
	}
	if _, err := s.reachNodes(ctx, api, role); err != nil {
		return nil, err
	}
	seen := map[string]bool{}
	var out []*deploy.Deployer
	for _, svc := range sf.Services {
		tasks, err := api.Tasks(ctx, deploy.ServiceName(s.Stack, svc))
		if err != nil {
			return nil, err
		}
		for _, t := range tasks {
			if t.Desired != "running" || seen[t.NodeID] {
				continue
			}
			seen[t.NodeID] = true
			d := s.nodes[t.NodeID]
			if d == nil {
				return nil, fmt.Errorf("a task of %s runs on node %s, which could not be reached", svc, t.NodeID)
			}
			d.Stack = s.Stack
			out = append(out, d)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Host.String() < out[j].Host.String() })
	return out, nil
}
