package engine

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/docker/docker/api/types"
	"github.com/docker/docker/api/types/container"
	"github.com/docker/docker/api/types/filters"
	"github.com/docker/docker/api/types/image"
)

// What cleanup asks of an engine, through the API, so that the build
// engine is reached the way build and test reach it (WSL, sudo), never
// through a shell on this machine.

// ImageTag is one tag of a repository on an engine.
type ImageTag struct {
	Tag     string
	ID      string
	Created time.Time // when it was built (see BuiltAt)
	Size    int64
}

// CreatedLabel is the OCI label a build sets to its own time.
const CreatedLabel = "org.opencontainers.image.created"

// BuiltAt is when an image was built: its CreatedLabel when that parses,
// else the engine's creation time. BuildKit sets the latter to the time of
// the newest cached step, so two builds on the same cached layers look
// equally old, or older than builds before them, and cleanup would order
// them wrong.
func BuiltAt(created time.Time, label string) time.Time {
	if t, err := time.Parse(time.RFC3339Nano, label); err == nil {
		return t
	}
	return created
}

// String names the engine for messages.
func (e *Engine) String() string {
	if e.server {
		return e.Host
	}
	if e.via.WSL {
		return "the engine in " + e.Host
	}
	return "the engine at " + e.Host
}

// Tags lists the tags of repository name with their images' IDs, sizes
// and creation times.
func (e *Engine) Tags(ctx context.Context, name string) ([]ImageTag, error) {
	list, err := e.ImagesOf(ctx, name)
	if err != nil {
		return nil, fmt.Errorf("list images of %s on %s: %w", name, e, err)
	}
	var tags []ImageTag
	for _, s := range list {
		// The list's creation time is in whole seconds; builds a second
		// apart must still sort in order.
		img, err := e.Image(ctx, s.ID)
		if err != nil {
			return nil, err
		}
		for _, rt := range s.RepoTags {
			if tag, ok := strings.CutPrefix(rt, name+":"); ok {
				tags = append(tags, ImageTag{Tag: tag, ID: s.ID, Created: BuiltAt(img.Created, img.Labels[CreatedLabel]), Size: s.Size})
			}
		}
	}
	return tags, nil
}

// ImagesInUse are the IDs of the images that containers, running or not,
// were made from.
func (e *Engine) ImagesInUse(ctx context.Context) (map[string]bool, error) {
	list, err := e.api.ContainerList(ctx, container.ListOptions{All: true})
	if err != nil {
		return nil, fmt.Errorf("list containers on %s: %w", e, err)
	}
	used := map[string]bool{}
	for _, c := range list {
		used[c.ImageID] = true
	}
	return used, nil
}

// DanglingImages lists the untagged images (what PruneDangling removes).
func (e *Engine) DanglingImages(ctx context.Context) ([]string, error) {
	list, err := e.api.ImageList(ctx, image.ListOptions{Filters: filters.NewArgs(filters.Arg("dangling", "true"))})
	if err != nil {
		return nil, fmt.Errorf("list dangling images on %s: %w", e, err)
	}
	ids := make([]string, len(list))
	for i, s := range list {
		ids[i] = s.ID
	}
	return ids, nil
}

// RemoveTags untags each tag of repository name (an image goes with its
// last tag), like docker image rm without -f.
func (e *Engine) RemoveTags(ctx context.Context, name string, tags []ImageTag) error {
	for _, t := range tags {
		if _, err := e.api.ImageRemove(ctx, name+":"+t.Tag, image.RemoveOptions{PruneChildren: true}); err != nil {
			return fmt.Errorf("remove %s:%s on %s: %w", name, t.Tag, e, err)
		}
	}
	return nil
}

// PruneDangling removes the dangling images, like docker image prune.
func (e *Engine) PruneDangling(ctx context.Context) error {
	if _, err := e.api.ImagesPrune(ctx, filters.NewArgs(filters.Arg("dangling", "true"))); err != nil {
		return fmt.Errorf("prune images on %s: %w", e, err)
	}
	return nil
}

// ImageDiskUsage is the engine's image storage in bytes, shared layers
// counted once (the Images row of docker system df).
func (e *Engine) ImageDiskUsage(ctx context.Context) (int64, error) {
	du, err := e.api.DiskUsage(ctx, types.DiskUsageOptions{Types: []types.DiskUsageObject{types.ImageObject}})
	if err != nil {
		return 0, fmt.Errorf("disk usage of %s: %w", e, err)
	}
	return du.LayersSize, nil
}
