package engine

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
)

// PortUser is a running container that publishes a port, for telling our
// own containers from strangers when the port is taken (the doctor).
type PortUser struct {
	ID     string
	Name   string
	Image  string // as the container was created, e.g. carebot:abc1234
	Labels map[string]string
}

// PublishedOn lists the running containers that publish port on the
// engine's machine (through WSL's localhost forwarding, that is this
// machine's port too).
func (e *Engine) PublishedOn(ctx context.Context, port int) ([]PortUser, error) {
	list, err := e.api.ContainerList(ctx, container.ListOptions{
		Filters: filters.NewArgs(filters.Arg("publish", strconv.Itoa(port))),
	})
	if err != nil {
		return nil, fmt.Errorf("containers on port %d: %w", port, err)
	}
	users := make([]PortUser, 0, len(list))
	for _, c := range list {
		name := c.ID
		if len(c.Names) > 0 {
			name = strings.TrimPrefix(c.Names[0], "/")
		}
		users = append(users, PortUser{ID: c.ID, Name: name, Image: c.Image, Labels: c.Labels})
	}
	return users, nil
}
