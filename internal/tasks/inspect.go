package tasks

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/carebot/carebot/internal/text"

	"github.com/carebot/carebot/internal/engine"
	"github.com/carebot/carebot/internal/imagefs"
)

// Report is what Inspect learned of an image.
type Report struct {
	Image    engine.Image
	Steps    []engine.Step
	Files    []imagefs.File // under /app
	Findings []imagefs.Finding
}

// Inspect shows IMAGE_NAME:IMAGE_TAG without running it, and fails when the
// image holds what must never ship (.env, .git, data/, keys).
func (r *Runner) Inspect(ctx context.Context) (Report, error) {
	e, err := r.Engine(ctx)
	if err != nil {
		return Report{}, err
	}
	ref := r.Cfg.Image()
	var keep *spool
	if r.KeepSave {
		keep = newSpool()
		defer keep.discard() // unless kept below
	}
	rep, err := inspectImage(ctx, e, ref, keep, r.buildSecrets()...)
	if err != nil {
		return rep, err
	}
	if keep.complete() {
		r.keepSave(rep.Image.ID, keep)
	}
	r.printReport(ref, rep)
	if len(rep.Findings) > 0 {
		paths := make([]string, len(rep.Findings))
		for i, f := range rep.Findings {
			paths[i] = f.String()
		}
		return rep, fmt.Errorf("image %s holds files that must not ship: %s; keep them out with .dockerignore and build again", ref, strings.Join(paths, ", "))
	}
	return rep, nil
}

// inspectImage reads the image's history and files; keep, if not nil,
// gets a copy of the save it reads them from.
func inspectImage(ctx context.Context, e *engine.Engine, ref string, keep *spool, secrets ...imagefs.Secret) (Report, error) {
	img, err := e.Image(ctx, ref)
	if errors.Is(err, engine.ErrNotFound) {
		return Report{}, fmt.Errorf("image %s does not exist: run mage build (or set IMAGE_TAG to a built version)", ref)
	}
	if err != nil {
		return Report{}, err
	}
	rep := Report{Image: img}
	if rep.Steps, err = e.History(ctx, img.ID); err != nil {
		return rep, err
	}
	rc, err := e.Save(ctx, img.ID)
	if err != nil {
		return rep, err
	}
	defer rc.Close()
	var save io.Reader = rc
	if keep != nil {
		save = io.TeeReader(rc, keep)
	}
	contents, err := imagefs.Read(save, secrets...)
	if err != nil {
		return rep, fmt.Errorf("read files of %s: %w", ref, err)
	}
	if keep != nil {
		keep.finish(save)
	}
	for _, f := range contents.Files {
		if strings.HasPrefix(f.Path, "/app/") {
			rep.Files = append(rep.Files, f)
		}
	}
	rep.Findings = contents.Findings
	return rep, nil
}

func (r *Runner) printReport(ref string, rep Report) {
	img := rep.Image
	r.printf("image    %s\n", ref)
	r.printf("id       %s\n", img.ID)
	r.printf("tags     %s\n", strings.Join(img.Tags, ", "))
	r.printf("size     %s\n", text.Bytes(img.Size))
	r.printf("created  %s (%s ago)\n", img.Created.Local().Format(time.DateTime), time.Since(img.Created).Round(time.Second))
	r.printf("platform %s/%s\n", img.OS, img.Arch)
	keys := make([]string, 0, len(img.Labels))
	for k := range img.Labels {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for i, k := range keys {
		label := "labels  "
		if i > 0 {
			label = "        "
		}
		r.printf("%s %s=%s\n", label, k, img.Labels[k])
	}
	r.printf("\nlayers (oldest first)\n")
	for _, s := range rep.Steps {
		r.printf("  %10s  %s\n", text.Bytes(s.Size), instruction(s.CreatedBy))
	}
	r.printf("\nfiles under /app\n")
	for _, f := range rep.Files {
		r.printf("  %10s  %s\n", text.Bytes(f.Size), f.Path)
	}
	if len(rep.Findings) == 0 {
		r.printf("\npolicy   ok: no .env, .git, data/, test-data/, backups/ or private keys in any layer")
		if n := len(r.buildSecrets()); n > 0 {
			r.printf("; the value of no build secret (%d looked for) in any file or the config", n)
		}
		r.printf("\n")
		return
	}
	r.printf("\npolicy   FAILED:\n")
	for _, f := range rep.Findings {
		r.printf("  %s\n", f)
	}
}

// minSecretLen is the shortest secret value inspect looks for: a shorter
// one would be found by chance in any binary.
const minSecretLen = 4

// buildSecrets are the values of BUILD_SECRETS, which must be nowhere in
// the image.
func (r *Runner) buildSecrets() []imagefs.Secret {
	var l []imagefs.Secret
	for _, s := range r.Cfg.BuildSecrets {
		if len(s.Value) >= minSecretLen {
			l = append(l, imagefs.Secret{Name: "build secret " + s.ID, Value: s.Value})
		}
	}
	return l
}

// instruction turns the history line that made a layer into the Dockerfile
// line: the classic builder's "/bin/sh -c #(nop) COPY ...", "/bin/sh -c make",
// or BuildKit's "COPY ... # buildkit", "RUN /bin/sh -c make # buildkit".
func instruction(createdBy string) string {
	s := strings.TrimSpace(createdBy)
	if bk, ok := strings.CutSuffix(s, " # buildkit"); ok {
		s = bk
	}
	if first, _, _ := strings.Cut(s, " "); first != "" && first == strings.ToUpper(first) && first != strings.ToLower(first) {
		run, ok := strings.CutPrefix(s, "RUN ")
		if ok {
			s = "RUN " + strings.TrimPrefix(run, "/bin/sh -c ")
		}
		return cut(s)
	}
	s = strings.TrimPrefix(s, "/bin/sh -c ")
	if rest, ok := strings.CutPrefix(s, "#(nop) "); ok {
		s = strings.TrimSpace(rest)
	} else if s != "" && !strings.HasPrefix(s, "|") {
		s = "RUN " + s
	}
	return cut(s)
}

func cut(s string) string {
	if len(s) > 100 {
		s = s[:97] + "..."
	}
	return s
}
