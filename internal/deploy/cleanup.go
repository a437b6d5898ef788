package deploy

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/carebot/carebot/internal/engine"
	"github.com/carebot/carebot/internal/host"
	"github.com/carebot/carebot/internal/shell"
)

// ImageTag is one tag of the app's repository on an engine.
type ImageTag = engine.ImageTag

// Images is one engine's images as cleanup sees them: the build engine
// through the Engine API (*engine.Engine), a deploy host's engine through
// the host's shell (HostImages). Both are planned by PlanTagCleanup.
type Images interface {
	Tags(ctx context.Context, name string) ([]ImageTag, error)
	ImagesInUse(ctx context.Context) (map[string]bool, error)
	DanglingImages(ctx context.Context) ([]string, error)
	RemoveTags(ctx context.Context, name string, tags []ImageTag) error
	PruneDangling(ctx context.Context) error
	ImageDiskUsage(ctx context.Context) (int64, error)
	String() string
}

var (
	_ Images = (*engine.Engine)(nil)
	_ Images = HostImages{}
)

// HostImages is the Docker engine of a host, reached through its shell
// (a server has no API socket we can reach, only SSH).
type HostImages struct{ Host host.Host }

func (s HostImages) String() string { return s.Host.String() }

// Tags lists the tags of repository name.
func (s HostImages) Tags(ctx context.Context, name string) ([]ImageTag, error) {
	out, err := host.Run(ctx, s.Host, "docker image ls --no-trunc --format '{{.Tag}} {{.ID}}' "+shell.Quote(name))
	if err != nil {
		return nil, fmt.Errorf("list images on %s: %w", s.Host, err)
	}
	var tags []ImageTag
	ids := map[string]bool{}
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) == 2 && f[0] != "<none>" {
			tags = append(tags, ImageTag{Tag: f[0], ID: f[1]})
			ids[f[1]] = true
		}
	}
	if len(ids) == 0 {
		return nil, nil
	}
	var list []string
	for id := range ids {
		list = append(list, shell.Quote(id))
	}
	out, err = host.Run(ctx, s.Host, "docker image inspect --format '{{.Id}} {{.Size}} {{.Created}} {{index .Config.Labels \""+engine.CreatedLabel+"\"}}' "+strings.Join(list, " "))
	if err != nil {
		return nil, fmt.Errorf("inspect images on %s: %w", s.Host, err)
	}
	meta := map[string]ImageTag{}
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) >= 3 {
			size, _ := strconv.ParseInt(f[1], 10, 64)
			created, _ := time.Parse(time.RFC3339Nano, f[2])
			label := ""
			if len(f) >= 4 {
				label = f[3]
			}
			meta[f[0]] = ImageTag{Size: size, Created: engine.BuiltAt(created, label)}
		}
	}
	for i := range tags {
		m := meta[tags[i].ID]
		tags[i].Size, tags[i].Created = m.Size, m.Created
	}
	return tags, nil
}

// ImagesInUse are the IDs of images that containers were made from.
func (s HostImages) ImagesInUse(ctx context.Context) (map[string]bool, error) {
	out, err := host.Run(ctx, s.Host, "docker ps -aq --no-trunc | xargs -r docker inspect --format '{{.Image}}'")
	if err != nil {
		return nil, fmt.Errorf("list containers on %s: %w", s.Host, err)
	}
	used := map[string]bool{}
	for _, id := range strings.Fields(out) {
		used[id] = true
	}
	return used, nil
}

// PlanTagCleanup picks the tags to remove: all but the keep newest, never
// "latest", a protected tag (serving, rollback target, the one just
// built), or a tag whose image a container uses.
func PlanTagCleanup(tags []ImageTag, keep int, protect map[string]bool, inUse map[string]bool) []ImageTag {
	sorted := append([]ImageTag(nil), tags...)
	sort.SliceStable(sorted, func(i, j int) bool { return sorted[i].Created.After(sorted[j].Created) })
	var remove []ImageTag
	kept := 0
	for _, t := range sorted {
		switch {
		case t.Tag == "latest" || protect[t.Tag] || inUse[t.ID]:
		case kept < keep:
			kept++
		default:
			remove = append(remove, t)
		}
	}
	return remove
}

// Protected is what cleanup must keep on a deploy host: the version that
// serves and the one a rollback would go to.
func (d *Deployer) Protected(ctx context.Context) (map[string]bool, error) {
	serving, err := d.Serving(ctx)
	if err != nil {
		return nil, err
	}
	history, err := d.History(ctx)
	if err != nil {
		return nil, err
	}
	p := map[string]bool{}
	for _, v := range []string{serving, Previous(history, serving)} {
		if v != "" {
			p[v] = true
		}
	}
	return p, nil
}

// RemoveTags untags each (the image goes when its last tag does).
func (s HostImages) RemoveTags(ctx context.Context, name string, tags []ImageTag) error {
	if len(tags) == 0 {
		return nil
	}
	var refs []string
	for _, t := range tags {
		refs = append(refs, shell.Quote(name+":"+t.Tag))
	}
	if _, err := host.Run(ctx, s.Host, "docker image rm "+strings.Join(refs, " ")); err != nil {
		return fmt.Errorf("remove images on %s: %w", s.Host, err)
	}
	return nil
}

// ImageDiskUsage is the engine's image storage in bytes, shared layers
// counted once (docker system df).
func (s HostImages) ImageDiskUsage(ctx context.Context) (int64, error) {
	out, err := host.Run(ctx, s.Host, "docker system df --format '{{json .}}'")
	if err != nil {
		return 0, fmt.Errorf("docker system df on %s: %w", s.Host, err)
	}
	for _, line := range strings.Split(out, "\n") {
		var row struct{ Type, Size string }
		if json.Unmarshal([]byte(line), &row) == nil && row.Type == "Images" {
			return ParseSize(row.Size), nil
		}
	}
	return 0, fmt.Errorf("docker system df on %s: no Images row", s.Host)
}

// ParseSize reads Docker's human sizes ("10.9MB", "1.2GB", "0B").
func ParseSize(s string) int64 {
	s = strings.TrimSpace(s)
	units := []struct {
		suffix string
		mult   float64
	}{{"TB", 1e12}, {"GB", 1e9}, {"MB", 1e6}, {"kB", 1e3}, {"KB", 1e3}, {"B", 1}}
	for _, u := range units {
		if num, ok := strings.CutSuffix(s, u.suffix); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(num), 64)
			if err != nil {
				return 0
			}
			return int64(f * u.mult)
		}
	}
	return 0
}

// DanglingImages lists untagged images nothing uses (what prune removes).
func (s HostImages) DanglingImages(ctx context.Context) ([]string, error) {
	out, err := host.Run(ctx, s.Host, "docker image ls -q --no-trunc --filter dangling=true")
	if err != nil {
		return nil, fmt.Errorf("list dangling images on %s: %w", s.Host, err)
	}
	return strings.Fields(out), nil
}

// PruneDangling removes dangling images.
func (s HostImages) PruneDangling(ctx context.Context) error {
	if _, err := host.Run(ctx, s.Host, "docker image prune -f >/dev/null"); err != nil {
		return fmt.Errorf("prune images on %s: %w", s.Host, err)
	}
	return nil
}

// PlanBackupCleanup lists the backups retention would remove.
func (d *Deployer) PlanBackupCleanup(ctx context.Context, keep int) ([]Backup, error) {
	list, err := d.Backups(ctx)
	if err != nil {
		return nil, err
	}
	return PruneList(list, keep, ""), nil
}

// PruneBackups applies retention.
func (d *Deployer) PruneBackups(ctx context.Context, keep int) error { return d.prune(ctx, keep, "") }
