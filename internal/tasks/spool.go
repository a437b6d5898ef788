package tasks

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"slices"
	"time"
)

// A run that inspects the image and then deploys it (mage full) has the
// build engine save it once: inspect reads the save and copies it to a
// local temporary file on the way, and the deploy's transfer reads that
// file instead of a second save (which, on the classic image store, first
// exports the whole image: seconds). The file goes when the run ends; a
// copy that could not be written whole (a full disk) is simply not used.

// spool is the copy being written: a Writer that never fails its
// caller, so a full disk here costs the reuse, not the inspection.
type spool struct {
	f    *os.File
	err  error
	kept bool // the run keeps it: discard leaves it
}

// spoolStale is how old a copy left by a killed run must be to be removed.
const spoolStale = 24 * time.Hour

func newSpool() *spool {
	removeStaleSpools()
	f, err := os.CreateTemp("", "carebot-save-*.tar")
	return &spool{f: f, err: err}
}

func (s *spool) Write(b []byte) (int, error) {
	if s.err == nil {
		_, s.err = s.f.Write(b)
	}
	return len(b), nil
}

// finish copies what the reader of save left unread.
func (s *spool) finish(save io.Reader) {
	if _, err := io.Copy(io.Discard, save); err != nil && s.err == nil {
		s.err = err
	}
	if s.err == nil {
		s.err = s.f.Close()
	}
}

// complete says whether the copy is whole and closed.
func (s *spool) complete() bool { return s != nil && s.err == nil }

// discard removes the copy unless it was kept.
func (s *spool) discard() {
	if s.f != nil && !s.kept {
		s.f.Close()
		os.Remove(s.f.Name())
	}
}

// removeStaleSpools removes the copies of runs that were killed before
// they could remove their own.
func removeStaleSpools() {
	old, _ := filepath.Glob(filepath.Join(os.TempDir(), "carebot-save-*.tar"))
	for _, p := range old {
		if fi, err := os.Stat(p); err == nil && time.Since(fi.ModTime()) > spoolStale {
			os.Remove(p)
		}
	}
}

// savedImage is a save of image id kept in a local file for the run.
type savedImage struct {
	id, path string
}

// keepSave keeps the copy of image id's save for the rest of the run.
func (r *Runner) keepSave(id string, s *spool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.saved != nil {
		os.Remove(r.saved.path)
	}
	r.saved = &savedImage{id: id, path: s.f.Name()}
	s.kept = true
}

// savedCopy opens the kept save of exactly refs, if there is one.
func (r *Runner) savedCopy(_ context.Context, refs []string) (io.ReadCloser, bool) {
	r.mu.Lock()
	saved := r.saved
	r.mu.Unlock()
	if saved == nil || !slices.Equal(refs, []string{saved.id}) {
		return nil, false
	}
	f, err := os.Open(saved.path)
	if err != nil {
		return nil, false
	}
	return f, true
}

// dropSave removes the kept copy (Close).
func (r *Runner) dropSave() {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.saved != nil {
		os.Remove(r.saved.path)
		r.saved = nil
	}
}
