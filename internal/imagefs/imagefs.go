// Package imagefs reads the files of an image from a `docker save` stream,
// without running a container, and checks them against a policy of what
// must never be shipped in an image.
//
// A save archive lists its entries in lexical order, not layer order, and
// manifest.json (which gives the order) may come last; so each layer's
// entries are collected as they pass and merged once the manifest is known.
// Both layouts are read: the legacy one (<id>/layer.tar) of the classic
// image store and the OCI one (blobs/sha256/<digest>) of newer engines.
package imagefs

import (
	"archive/tar"
	"bufio"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"io"
	"path"
	"sort"
	"strings"
)

// File is one regular file (or symlink) of the merged filesystem.
type File struct {
	Path string // absolute, e.g. /app/carebot
	Size int64
	Mode int64
	Link string // symlink target
}

// Finding is a file that the policy forbids, and why.
type Finding struct {
	Path   string
	Reason string
}

func (f Finding) String() string { return f.Path + " (" + f.Reason + ")" }

// Contents is what Read found in an image.
type Contents struct {
	Files    []File    // merged view: what a container would see, sorted by path
	Findings []Finding // in any layer, even if a later layer deleted the file: the bytes still ship
}

type layerEntry struct {
	File
	whiteout bool // deletes Path (or everything under it, for an opaque dir)
	opaque   bool
	dir      bool
}

// sniffLimit bounds how much of each small file is read to look for key material.
const sniffLimit = 8 << 10

// Secret is a value that must not be anywhere in the image: not in a file
// of any layer, nor in its config (history, environment, labels).
type Secret struct {
	Name  string // for the finding: "build secret pip_token"
	Value []byte
}

// Read consumes a `docker save` archive of one image. Each of secrets is
// looked for in every file of every layer, whole, and in the image's config.
func Read(r io.Reader, secrets ...Secret) (Contents, error) {
	look := seeker(secrets)
	tr := tar.NewReader(r)
	layers := map[string][]layerEntry{}
	var findings []Finding
	var manifest []struct{ Layers []string }
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return Contents{}, fmt.Errorf("read image archive: %w", err)
		}
		name := path.Clean(h.Name)
		switch {
		case h.Typeflag != tar.TypeReg:
		case strings.HasSuffix(name, ".json") && name != "manifest.json" && name != "index.json":
			// the legacy layout's image config
			findings = append(findings, look.in(tr, configPlace)...)
		case name == "manifest.json":
			if err := json.NewDecoder(tr).Decode(&manifest); err != nil {
				return Contents{}, fmt.Errorf("read image archive: manifest.json: %w", err)
			}
		case strings.HasSuffix(name, "/layer.tar") || strings.HasPrefix(name, "blobs/"):
			entries, found, isLayer, err := readLayer(tr, look)
			if err != nil {
				return Contents{}, fmt.Errorf("read layer %s: %w", name, err)
			}
			if isLayer {
				layers[name] = entries
			}
			findings = append(findings, found...) // a config's secrets too
		}
	}
	if len(manifest) != 1 {
		return Contents{}, fmt.Errorf("read image archive: want one image in manifest.json, found %d", len(manifest))
	}
	merged := map[string]File{}
	for _, l := range manifest[0].Layers {
		entries, ok := layers[path.Clean(l)]
		if !ok {
			return Contents{}, fmt.Errorf("read image archive: layer %s is missing", l)
		}
		apply(merged, entries)
	}
	c := Contents{Findings: dedupe(findings)}
	for _, f := range merged {
		c.Files = append(c.Files, f)
	}
	sort.Slice(c.Files, func(i, j int) bool { return c.Files[i].Path < c.Files[j].Path })
	return c, nil
}

// readLayer lists a layer tar's entries and checks each against the policy.
// isLayer is false for blobs that are not tars (configs, manifests).
func readLayer(r io.Reader, look seeker) (entries []layerEntry, findings []Finding, isLayer bool, err error) {
	br := bufio.NewReaderSize(r, 64<<10)
	if magic, _ := br.Peek(2); bytes.Equal(magic, []byte{0x1f, 0x8b}) {
		zr, err := gzip.NewReader(br)
		if err != nil {
			return nil, nil, false, err
		}
		defer zr.Close()
		br = bufio.NewReaderSize(zr, 64<<10)
	}
	head, _ := br.Peek(512)
	if len(head) < 512 || !allZero(head) && !bytes.Equal(head[257:262], []byte("ustar")) {
		// not a layer: a config (history, environment) or a manifest
		return nil, look.in(br, configPlace), false, nil
	}
	if allZero(head) { // an empty layer (WORKDIR, ENV in some builders) is a bare end-of-archive
		return nil, nil, true, nil
	}
	tr := tar.NewReader(br)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return entries, findings, true, nil
		}
		if err != nil {
			return nil, nil, true, err
		}
		p := "/" + strings.TrimPrefix(path.Clean("/"+h.Name), "/")
		dir, base := path.Split(p)
		e := layerEntry{File: File{Path: p, Size: h.Size, Mode: h.Mode}}
		switch {
		case base == ".wh..wh..opq":
			e.Path, e.whiteout, e.opaque = path.Clean(dir), true, true
		case strings.HasPrefix(base, ".wh."):
			e.Path, e.whiteout = path.Join(dir, strings.TrimPrefix(base, ".wh.")), true
		case h.Typeflag == tar.TypeDir:
			e.dir = true
		case h.Typeflag == tar.TypeSymlink:
			e.Link = h.Linkname
		}
		if !e.whiteout {
			var head []byte
			if h.Typeflag == tar.TypeReg && h.Size > 0 {
				head, _ = io.ReadAll(io.LimitReader(tr, sniffLimit))
			}
			if reason := Forbidden(p, e.dir, head); reason != "" {
				findings = append(findings, Finding{Path: p, Reason: reason})
			}
			if h.Typeflag == tar.TypeReg && len(look) > 0 {
				findings = append(findings, look.in(io.MultiReader(bytes.NewReader(head), tr), p)...)
			}
		}
		entries = append(entries, e)
	}
}

// apply lays one layer's entries over the merged view. A layer's whiteouts
// hide only what lower layers made, so they go first.
func apply(merged map[string]File, entries []layerEntry) {
	for _, e := range entries {
		if !e.whiteout {
			continue
		}
		prefix := strings.TrimSuffix(e.Path, "/") + "/"
		for p := range merged {
			if strings.HasPrefix(p, prefix) || (!e.opaque && p == e.Path) {
				delete(merged, p)
			}
		}
	}
	for _, e := range entries {
		if !e.whiteout && !e.dir {
			merged[e.Path] = e.File
		}
	}
}

func allZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

func dedupe(fs []Finding) []Finding {
	seen := map[string]bool{}
	out := fs[:0]
	for _, f := range fs {
		if !seen[f.Path] {
			seen[f.Path] = true
			out = append(out, f)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Path < out[j].Path })
	return out
}

// configPlace names the image config in a finding.
const configPlace = "image config (history, environment, labels)"

// seeker finds secret values in streams of any length.
type seeker []Secret

// in reads r to its end and returns a finding at where for each secret in it.
func (s seeker) in(r io.Reader, where string) []Finding {
	if len(s) == 0 {
		_, _ = io.Copy(io.Discard, r)
		return nil
	}
	longest := 0
	for _, sec := range s {
		longest = max(longest, len(sec.Value))
	}
	found := make([]bool, len(s))
	buf := make([]byte, 0, 64<<10+longest)
	for {
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		for i, sec := range s {
			if !found[i] && len(sec.Value) > 0 && bytes.Contains(buf, sec.Value) {
				found[i] = true
			}
		}
		if err != nil {
			break
		}
		// keep what a value could still start in
		if keep := longest - 1; len(buf) > keep {
			buf = buf[:copy(buf, buf[len(buf)-keep:])]
		}
	}
	var fs []Finding
	for i, f := range found {
		if f {
			fs = append(fs, Finding{Path: where, Reason: "holds the value of " + s[i].Name})
		}
	}
	return fs
}
