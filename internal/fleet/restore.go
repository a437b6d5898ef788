package fleet

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/carebot/carebot/internal/deploy"
	"github.com/carebot/carebot/internal/engine"
	"github.com/carebot/carebot/internal/shell"
	"github.com/carebot/carebot/internal/text"
)

// A swarm's data lives in the bind-mounted data folder of the node a task
// runs on. Restoring it there needs the tasks on that node stopped, and a
// task stopped by hand is one Swarm starts again: so the manager takes
// them off the node first (a replicated service scaled to 0; a global one
// kept off that node by a placement constraint, which leaves its other
// nodes serving), and puts them back once the data are swapped.

// DataNode is the node whose data folder a task acts on: the one sel
// names (its address, hostname or SSH name), or else the only node that
// runs a task of the stack.
func (s *Swarm) DataNode(ctx context.Context, sf *StackFile, sel string) (*deploy.Deployer, error) {
	api, role, err := s.api(ctx)
	if err != nil {
		return nil, err
	}
	d, _, err := s.dataNode(ctx, api, role, sf, sel)
	return d, err
}

func (s *Swarm) dataNode(ctx context.Context, api swarmAPI, role engine.SwarmRole, sf *StackFile, sel string) (*deploy.Deployer, engine.Node, error) {
	nodes, err := s.reachNodes(ctx, api, role)
	if err != nil {
		return nil, engine.Node{}, err
	}
	var pick []engine.Node
	if sel != "" {
		for _, n := range nodes {
			if slices.Contains([]string{n.Addr, n.Hostname, n.ID, s.nodes[n.ID].Host.String()}, sel) {
				pick = append(pick, n)
			}
		}
		if len(pick) == 0 {
			return nil, engine.Node{}, fmt.Errorf("-host %s is not a node of the swarm that can run tasks (%s)", sel, nodeList(nodes))
		}
	} else {
		running, err := s.taskNodeIDs(ctx, api, sf)
		if err != nil {
			return nil, engine.Node{}, err
		}
		for _, n := range nodes {
			if running[n.ID] {
				pick = append(pick, n)
			}
		}
		switch {
		case len(pick) == 0:
			return nil, engine.Node{}, fmt.Errorf("no task of stack %s runs, so no node is known to hold its data: name the node with -host (one of %s)", s.Stack, nodeList(nodes))
		case len(pick) > 1:
			return nil, engine.Node{}, fmt.Errorf("tasks of stack %s run on %d nodes, each with its own data folder: choose one with -host (one of %s)", s.Stack, len(pick), nodeList(pick))
		}
	}
	d := s.nodes[pick[0].ID]
	d.Stack = s.Stack
	return d, pick[0], nil
}

func nodeList(nodes []engine.Node) string {
	var names []string
	for _, n := range nodes {
		names = append(names, n.Addr)
	}
	return strings.Join(names, ", ")
}

// taskNodeIDs are the nodes on which a task of the stack should run now.
func (s *Swarm) taskNodeIDs(ctx context.Context, api swarmAPI, sf *StackFile) (map[string]bool, error) {
	ids := map[string]bool{}
	for _, name := range s.services(sf) {
		tasks, err := api.Tasks(ctx, name)
		if err != nil {
			return nil, err
		}
		for _, t := range tasks {
			if t.Desired == "running" {
				ids[t.NodeID] = true
			}
		}
	}
	return ids, nil
}

// offNode is how the manager takes a service's tasks off node and puts
// them back: commands that return at once (the run waits through the
// API) and can run twice.
func offNode(svc engine.Service, node string) (off, back string) {
	name := shell.Quote(svc.Name)
	if svc.Global {
		c := shell.Quote("node.id!=" + node)
		return "docker service update --detach --constraint-add " + c + " " + name + " >/dev/null",
			"docker service update --detach --constraint-rm " + c + " " + name + " >/dev/null"
	}
	return "docker service scale --detach " + name + "=0 >/dev/null",
		fmt.Sprintf("docker service scale --detach %s=%d >/dev/null", name, svc.Replicas)
}

// Restore puts backup name (or the newest) back as the data folder on the
// node sel names (or the only one that runs a task): the tasks on it are
// taken off, the data swapped there as a Compose restore swaps it (its
// safety backup first), the tasks put back, and the release checked
// healthy on every node; if it is not, the data before go back.
//
// Should the run go away in between, the manager's journal puts the tasks
// back and the node's journal the data before the restore, each by its
// own lock's holder; the node stops what uses the data before it swaps
// them back, and Swarm starts it again.
func (s *Swarm) Restore(ctx context.Context, sf *StackFile, sel, name string) error {
	m := s.Manager
	api, role, err := s.api(ctx)
	if err != nil {
		return err
	}
	d, node, err := s.dataNode(ctx, api, role, sf, sel)
	if err != nil {
		return err
	}
	history, err := s.lockedHistory(ctx)
	if err != nil {
		return err
	}
	services := s.services(sf)
	var offs, backs []string
	version, tag := "", "" // what serves: the release, its image tag (backups are named by it, as on the node)
	for _, name := range services {
		svc, err := api.Service(ctx, name)
		if errors.Is(err, engine.ErrNotFound) {
			return fmt.Errorf("stack %s is not deployed on %s: run mage deploy first", s.Stack, m.Host)
		}
		if err != nil {
			return err
		}
		if tag == "" {
			tag = tagOf(svc.Image)
			version = deploy.VersionOfTag(history, tag)
		}
		off, back := offNode(svc, node.ID)
		offs, backs = append(offs, off), append(backs, back)
	}
	off, back := strings.Join(offs, " && "), strings.Join(backs, " && ")
	at := fmt.Sprintf("%s (%s)", node.Addr, node.Hostname)
	if err := m.Intend(ctx, "restoring the data on "+at+": put the stack's tasks back there", back+"\n", 0); err != nil {
		return err
	}
	interrupted := func(cause error) error {
		m.Abandon()
		d.Abandon()
		return fmt.Errorf("restore on %s interrupted (%s): %s puts the stack's tasks back and %s the data before it, by themselves", at, text.ErrLine(cause), m.Host, d.Host)
	}
	putBack := func(cause error) error {
		if ctx.Err() != nil {
			return interrupted(cause)
		}
		ctx := context.WithoutCancel(ctx)
		if _, err := m.RunStep(ctx, "docker service update", back); err != nil {
			return fmt.Errorf("%w; putting the stack's tasks back on %s failed too: %v (the journal on %s does it on the next run)", cause, at, err, m.Host)
		}
		if err := s.converge(ctx, api, services, ""); err != nil {
			return fmt.Errorf("%w; with the tasks put back the stack did not converge: %v", cause, err)
		}
		if err := m.Settle(ctx); err != nil {
			return err
		}
		return cause
	}

	s.printf("taking the tasks of stack %s off %s for the restore\n", s.Stack, at)
	if _, err := m.RunStep(ctx, "docker service update", off); err != nil {
		return putBack(err)
	}
	if err := s.offNode(ctx, api, services, node.ID); err != nil {
		return putBack(err)
	}
	after := ""
	if d == m { // one journal per host: the data first, then the tasks
		after = back + "\n"
	}
	rs, err := d.RestoreData(ctx, name, tag, after)
	if err != nil {
		return putBack(err)
	}
	s.printf("putting the tasks of stack %s back on %s\n", s.Stack, at)
	_, err = m.RunStep(ctx, "docker service update", back)
	if err == nil {
		err = s.converge(ctx, api, services, "")
	}
	if err == nil && version != "" {
		err = s.healthy(ctx, api, services, version)
	}
	if err != nil {
		if ctx.Err() != nil {
			return interrupted(err)
		}
		// Unhealthy with the restored data: the same again, the other way.
		ctx := context.WithoutCancel(ctx)
		if _, oerr := m.RunStep(ctx, "docker service update", off); oerr != nil {
			return fmt.Errorf("restored %s on %s but the stack is not healthy with it (%s), and taking the tasks off again failed: %v; the data before are in backups/%s there", rs.Backup.Name, at, text.ErrLine(err), oerr, rs.Safety.Name)
		}
		if oerr := s.offNode(ctx, api, services, node.ID); oerr != nil {
			return putBack(fmt.Errorf("restored %s on %s but the stack is not healthy with it (%s), and its tasks there did not stop: %v; the data before are in backups/%s there", rs.Backup.Name, at, text.ErrLine(err), oerr, rs.Safety.Name))
		}
		return putBack(d.UndoRestore(ctx, rs, err))
	}
	if err := d.ConfirmRestore(ctx, rs); err != nil {
		return err
	}
	return m.Settle(ctx)
}

// offNode waits until no task of the services runs (or is about to) on
// node: their containers have stopped.
func (s *Swarm) offNode(ctx context.Context, api swarmAPI, services []string, node string) error {
	deadline := time.Now().Add(s.Manager.HealthTimeout + time.Minute)
	for {
		busy := ""
		for _, name := range services {
			tasks, err := api.Tasks(ctx, name)
			if err != nil {
				return err
			}
			for _, t := range tasks {
				if t.NodeID == node && !taskOver(t.State) {
					busy = fmt.Sprintf("task %s.%d is %s", name, t.Slot, t.State)
				}
			}
		}
		if busy == "" {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("the stack's tasks did not stop within %s: %s", s.Manager.HealthTimeout+time.Minute, busy)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// taskOver says whether a task in state is done with its container.
func taskOver(state string) bool {
	switch state {
	case "complete", "shutdown", "failed", "rejected", "orphaned", "remove":
		return true
	}
	return false
}
