package testenv

import (
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"testing"

	"github.com/carebot/carebot/internal/text"
)

// CollectFiles links (or copies) regular files under /usr whose size is in
// [minSize, maxSize) into dir until it holds about limit bytes: real files
// of a real system, for benchmark images that compress as such trees do.
func CollectFiles(b testing.TB, dir string, limit, minSize, maxSize int64) {
	type f struct {
		path string
		size int64
	}
	var files []f
	filepath.WalkDir("/usr", func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return nil
		}
		if info, err := d.Info(); err == nil && info.Size() >= minSize && info.Size() < maxSize {
			files = append(files, f{p, info.Size()})
		}
		return nil
	})
	sort.Slice(files, func(i, j int) bool { return files[i].path < files[j].path })
	var total int64
	for i, x := range files {
		if total+x.size > limit {
			continue
		}
		dst := filepath.Join(dir, fmt.Sprintf("%04d-%s", i, filepath.Base(x.path)))
		if os.Link(x.path, dst) != nil {
			in, err := os.Open(x.path)
			if err != nil {
				continue
			}
			out, _ := os.Create(dst)
			io.Copy(out, in)
			in.Close()
			out.Close()
		}
		total += x.size
	}
	if total < limit/2 {
		b.Fatalf("found only %s of files of %s to %s under /usr", text.Bytes(total), text.Bytes(minSize), text.Bytes(maxSize))
	}
}
