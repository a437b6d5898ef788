package engine

import (
	"context"
	"fmt"
	"sort"
	"strings"

	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/swarm"
	"github.com/docker/docker/client"
)

// SwarmRole is what this engine is in a swarm.
type SwarmRole struct {
	NodeID  string
	Manager bool   // it can deploy stacks (a manager)
	State   string // inactive, pending, active, error, locked
}

// Swarm says whether this engine is part of a swarm, and as what.
func (e *Engine) Swarm(ctx context.Context) (SwarmRole, error) {
	info, err := e.api.Info(ctx)
	if err != nil {
		return SwarmRole{}, fmt.Errorf("docker info on %s: %w", e.Host, cause(err))
	}
	return SwarmRole{NodeID: info.Swarm.NodeID, Manager: info.Swarm.ControlAvailable, State: string(info.Swarm.LocalNodeState)}, nil
}

// Node is one node of the swarm, as its manager sees it.
type Node struct {
	ID, Hostname, Addr string
	Manager            bool
	Ready              bool // its engine reports to the managers
	Active             bool // the scheduler may give it tasks
	Labels             map[string]string
	Role               string
}

// Nodes lists the swarm's nodes (a manager's engine only), by address.
func (e *Engine) Nodes(ctx context.Context) ([]Node, error) {
	ns, err := e.api.NodeList(ctx, swarm.NodeListOptions{})
	if err != nil {
		return nil, fmt.Errorf("list the swarm's nodes on %s: %w", e.Host, cause(err))
	}
	var out []Node
	for _, n := range ns {
		out = append(out, Node{
			ID: n.ID, Hostname: n.Description.Hostname, Addr: n.Status.Addr,
			Manager: n.ManagerStatus != nil, Role: string(n.Spec.Role),
			Ready:  n.Status.State == swarm.NodeStateReady,
			Active: n.Spec.Availability == swarm.NodeAvailabilityActive,
			Labels: n.Spec.Labels,
		})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Addr < out[j].Addr })
	return out, nil
}

// Service is what a deploy watches of a swarm service.
type Service struct {
	ID, Name    string
	Image       string // the image of its spec (a digest may follow @)
	Global      bool
	Replicas    uint64 // replicated mode
	Constraints []string
	UpdateState string // "" (never updated), updating, paused, completed, rollback_started, rollback_paused, rollback_completed
	UpdateMsg   string
	PrevImage   string // the image of its previous spec, "" when none
}

// Service inspects service name; ErrNotFound when it does not exist.
func (e *Engine) Service(ctx context.Context, name string) (Service, error) {
	s, _, err := e.api.ServiceInspectWithRaw(ctx, name, swarm.ServiceInspectOptions{})
	if client.IsErrNotFound(err) {
		return Service{}, ErrNotFound
	}
	if err != nil {
		return Service{}, fmt.Errorf("inspect service %s on %s: %w", name, e.Host, cause(err))
	}
	out := Service{ID: s.ID, Name: s.Spec.Name}
	if cs := s.Spec.TaskTemplate.ContainerSpec; cs != nil {
		out.Image = cs.Image
	}
	if p := s.Spec.TaskTemplate.Placement; p != nil {
		out.Constraints = p.Constraints
	}
	switch {
	case s.Spec.Mode.Global != nil:
		out.Global = true
	case s.Spec.Mode.Replicated != nil && s.Spec.Mode.Replicated.Replicas != nil:
		out.Replicas = *s.Spec.Mode.Replicated.Replicas
	}
	if u := s.UpdateStatus; u != nil {
		out.UpdateState, out.UpdateMsg = string(u.State), u.Message
	}
	if p := s.PreviousSpec; p != nil && p.TaskTemplate.ContainerSpec != nil {
		out.PrevImage = p.TaskTemplate.ContainerSpec.Image
	}
	return out, nil
}

// Task is one task of a service.
type Task struct {
	ID, NodeID string
	Slot       int
	Image      string
	State      string // new … running, complete, failed, shutdown, rejected
	Desired    string // running or shutdown
	Err        string
	Container  string
}

// Tasks lists the tasks of service name, newest first.
func (e *Engine) Tasks(ctx context.Context, name string) ([]Task, error) {
	ts, err := e.api.TaskList(ctx, swarm.TaskListOptions{Filters: filters.NewArgs(filters.Arg("service", name))})
	if err != nil {
		return nil, fmt.Errorf("list the tasks of %s on %s: %w", name, e.Host, cause(err))
	}
	sort.Slice(ts, func(i, j int) bool { return ts[i].CreatedAt.After(ts[j].CreatedAt) })
	var out []Task
	for _, t := range ts {
		tk := Task{ID: t.ID, NodeID: t.NodeID, Slot: t.Slot, State: string(t.Status.State), Desired: string(t.DesiredState), Err: t.Status.Err}
		if cs := t.Spec.ContainerSpec; cs != nil {
			tk.Image = cs.Image
		}
		if c := t.Status.ContainerStatus; c != nil {
			tk.Container = c.ContainerID
		}
		out = append(out, tk)
	}
	return out, nil
}

// ImageRef is ref without the digest a spec may pin after @.
func ImageRef(ref string) string {
	r, _, _ := strings.Cut(ref, "@")
	return r
}
