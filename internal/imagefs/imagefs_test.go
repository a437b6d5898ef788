package imagefs

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"reflect"
	"sort"
	"strings"
	"testing"
)

// ent is one entry of a synthetic layer tar.
type ent struct {
	name string
	body string
	typ  byte // 0 means a regular file
	link string
	mode int64
}

func dir(name string) ent             { return ent{name: name, typ: tar.TypeDir, mode: 0o755} }
func file(name, body string) ent      { return ent{name: name, body: body} }
func symlink(name, target string) ent { return ent{name: name, typ: tar.TypeSymlink, link: target} }

// layerTar builds an uncompressed layer tar of the entries, in the order given.
func layerTar(t *testing.T, ents ...ent) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range ents {
		h := &tar.Header{Name: e.name, Typeflag: e.typ, Linkname: e.link, Mode: e.mode}
		if h.Typeflag == 0 {
			h.Typeflag = tar.TypeReg
		}
		if h.Mode == 0 {
			h.Mode = 0o644
		}
		if h.Typeflag == tar.TypeReg {
			h.Size = int64(len(e.body))
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatalf("layer header %s: %v", e.name, err)
		}
		if h.Typeflag == tar.TypeReg {
			if _, err := tw.Write([]byte(e.body)); err != nil {
				t.Fatalf("layer body %s: %v", e.name, err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func gz(t *testing.T, data []byte) []byte {
	t.Helper()
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	if _, err := zw.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func digest(data []byte) string {
	h := sha256.Sum256(data)
	return hex.EncodeToString(h[:])
}

// member is one entry of the outer save archive; data == nil with dir set
// makes a directory entry.
type member struct {
	name string
	data []byte
	dir  bool
}

// saveArchive writes the members the way `docker save` does: in lexical
// order, except manifest.json, which comes last whatever its name.
func saveArchive(t *testing.T, members []member, manifest any) []byte {
	t.Helper()
	sort.Slice(members, func(i, j int) bool { return members[i].name < members[j].name })
	if manifest != nil {
		m, err := json.Marshal(manifest)
		if err != nil {
			t.Fatal(err)
		}
		members = append(members, member{name: "manifest.json", data: m})
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, m := range members {
		h := &tar.Header{Name: m.name, Mode: 0o644, Typeflag: tar.TypeReg, Size: int64(len(m.data))}
		if m.dir {
			h = &tar.Header{Name: m.name, Mode: 0o755, Typeflag: tar.TypeDir}
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if !m.dir {
			if _, err := tw.Write(m.data); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

type manifestEntry struct {
	Config   string
	RepoTags []string
	Layers   []string
}

// bigConfig is an image config JSON longer than a tar block, so that the
// archive reader must tell it from a layer by its content, not its size.
func bigConfig(t *testing.T) []byte {
	t.Helper()
	cfg := map[string]any{
		"architecture": "amd64",
		"os":           "linux",
		"config":       map[string]any{"Env": []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}, "Entrypoint": []string{"/app/carebot"}},
		"history":      []map[string]string{},
	}
	for i := 0; i < 20; i++ {
		cfg["history"] = append(cfg["history"].([]map[string]string), map[string]string{"created_by": fmt.Sprintf("/bin/sh -c #(nop) step %d of the build", i)})
	}
	b, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) <= 1024 {
		t.Fatalf("config is only %d bytes", len(b))
	}
	return b
}

// legacyIDs are chosen so that the lexical order of the layer folders is
// the reverse of the layer order: only manifest.json gives the right one.
var legacyIDs = []string{
	"f1" + strings.Repeat("0", 62),
	"c2" + strings.Repeat("0", 62),
	"a3" + strings.Repeat("0", 62),
}

// legacyArchive is the classic image store's layout: <id>/layer.tar.
func legacyArchive(t *testing.T, layers ...[]byte) []byte {
	t.Helper()
	if len(layers) > len(legacyIDs) {
		t.Fatalf("at most %d layers", len(legacyIDs))
	}
	cfg := bigConfig(t)
	cfgName := digest(cfg) + ".json"
	members := []member{
		{name: cfgName, data: cfg},
		{name: "repositories", data: []byte(`{"carebot":{"v1":"` + legacyIDs[len(layers)-1] + `"}}`)},
	}
	var names []string
	for i, l := range layers {
		id := legacyIDs[i]
		members = append(members,
			member{name: id + "/", dir: true},
			member{name: id + "/VERSION", data: []byte("1.0")},
			member{name: id + "/json", data: []byte(`{"id":"` + id + `"}`)},
			member{name: id + "/layer.tar", data: l},
		)
		names = append(names, id+"/layer.tar")
	}
	return saveArchive(t, members, []manifestEntry{{Config: cfgName, RepoTags: []string{"carebot:v1"}, Layers: names}})
}

// ociArchive is the layout of newer engines: blobs/sha256/<digest>, with
// the config and the OCI manifest as blobs beside the layers.
func ociArchive(t *testing.T, layers ...[]byte) []byte {
	t.Helper()
	cfg := bigConfig(t)
	members := []member{
		{name: "blobs/", dir: true},
		{name: "blobs/sha256/", dir: true},
		{name: "blobs/sha256/" + digest(cfg), data: cfg},
		{name: "oci-layout", data: []byte(`{"imageLayoutVersion":"1.0.0"}`)},
	}
	type desc struct {
		MediaType string `json:"mediaType"`
		Digest    string `json:"digest"`
		Size      int    `json:"size"`
	}
	var names []string
	var descs []desc
	for _, l := range layers {
		d := digest(l)
		members = append(members, member{name: "blobs/sha256/" + d, data: l})
		names = append(names, "blobs/sha256/"+d)
		descs = append(descs, desc{"application/vnd.oci.image.layer.v1.tar", "sha256:" + d, len(l)})
	}
	m, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"mediaType":     "application/vnd.oci.image.manifest.v1+json",
		"config":        desc{"application/vnd.oci.image.config.v1+json", "sha256:" + digest(cfg), len(cfg)},
		"layers":        descs,
	})
	if err != nil {
		t.Fatal(err)
	}
	members = append(members, member{name: "blobs/sha256/" + digest(m), data: m})
	idx, err := json.Marshal(map[string]any{
		"schemaVersion": 2,
		"manifests":     []desc{{"application/vnd.oci.image.manifest.v1+json", "sha256:" + digest(m), len(m)}},
	})
	if err != nil {
		t.Fatal(err)
	}
	members = append(members, member{name: "index.json", data: idx})
	return saveArchive(t, members, []manifestEntry{{Config: "blobs/sha256/" + digest(cfg), RepoTags: []string{"carebot:v1"}, Layers: names}})
}

// layouts builds the same image in each archive layout the reader knows.
var layouts = []struct {
	name  string
	build func(t *testing.T, layers ...[]byte) []byte
}{
	{"legacy", legacyArchive},
	{"oci", ociArchive},
	{"oci-gzip", func(t *testing.T, layers ...[]byte) []byte {
		z := make([][]byte, len(layers))
		for i, l := range layers {
			z[i] = gz(t, l)
		}
		return ociArchive(t, z...)
	}},
	{"legacy-gzip-middle", func(t *testing.T, layers ...[]byte) []byte {
		z := append([][]byte(nil), layers...)
		if len(z) > 1 {
			z[1] = gz(t, z[1])
		}
		return legacyArchive(t, z...)
	}},
}

func read(t *testing.T, archive []byte) Contents {
	t.Helper()
	c, err := Read(bytes.NewReader(archive))
	if err != nil {
		t.Fatalf("Read: %v", err)
	}
	return c
}

func findingPaths(fs []Finding) []string {
	out := []string{}
	for _, f := range fs {
		out = append(out, f.Path)
	}
	return out
}

func TestReadMergesLayers(t *testing.T) {
	base := layerTar(t,
		dir("app/"),
		file("app/carebot", "old binary"),
		symlink("app/current", "carebot"),
		file("app/old.txt", "gone later"),
		dir("app/static/"),
		file("app/static/a.css", "a"),
		file("app/static/b.js", "bb"),
		dir("app/tmp/"),
		file("app/tmp/x", "x"),
		dir("app/tmp/y/"),
		file("app/tmp/y/z", "z"),
		dir("etc/"),
		file("etc/hostname", "host"),
		file("etc/passwd", "root:x:0:0"),
	)
	middle := layerTar(t,
		dir("app/"),
		file("app/.wh.old.txt", ""),
		ent{name: "app/carebot", body: "new binary, longer", mode: 0o755},
		file("app/new.txt", "new"),
		dir("app/static/"),
		file("app/static/.wh..wh..opq", ""),
		file("app/static/c.css", "ccc"),
	)
	top := layerTar(t,
		dir("app/"),
		file("app/.wh.tmp", ""),
		file("app/static/d.css", "dddd"),
		dir("etc/"),
		file("etc/.wh.passwd", ""),
	)
	want := []File{
		{Path: "/app/carebot", Size: int64(len("new binary, longer")), Mode: 0o755},
		{Path: "/app/current", Mode: 0o644, Link: "carebot"},
		{Path: "/app/new.txt", Size: 3, Mode: 0o644},
		{Path: "/app/static/c.css", Size: 3, Mode: 0o644},
		{Path: "/app/static/d.css", Size: 4, Mode: 0o644},
		{Path: "/etc/hostname", Size: 4, Mode: 0o644},
	}
	for _, l := range layouts {
		t.Run(l.name, func(t *testing.T) {
			c := read(t, l.build(t, base, middle, top))
			if !reflect.DeepEqual(c.Files, want) {
				t.Errorf("files:\n got %+v\nwant %+v", c.Files, want)
			}
			if len(c.Findings) != 0 {
				t.Errorf("findings in a clean image: %v", c.Findings)
			}
		})
	}
}

// The order of the layers is the manifest's, not the archive's.
func TestReadLayerOrderFromManifest(t *testing.T) {
	one := layerTar(t, file("app/version", "1"))
	two := layerTar(t, file("app/version", "22"))
	for _, l := range layouts {
		t.Run(l.name, func(t *testing.T) {
			for _, tc := range []struct {
				layers [][]byte
				size   int64
			}{
				{[][]byte{one, two}, 2},
				{[][]byte{two, one}, 1},
			} {
				c := read(t, l.build(t, tc.layers...))
				if len(c.Files) != 1 || c.Files[0].Path != "/app/version" || c.Files[0].Size != tc.size {
					t.Errorf("want /app/version of size %d from the upper layer, got %+v", tc.size, c.Files)
				}
			}
		})
	}
}

// Neither the config nor the OCI manifest nor index.json adds files.
func TestReadIgnoresJSONBlobs(t *testing.T) {
	layer := layerTar(t, dir("app/"), file("app/carebot", "bin"))
	for _, l := range layouts {
		t.Run(l.name, func(t *testing.T) {
			c := read(t, l.build(t, layer))
			if got := len(c.Files); got != 1 || c.Files[0].Path != "/app/carebot" {
				t.Errorf("want only /app/carebot, got %+v", c.Files)
			}
		})
	}
}

func TestReadErrors(t *testing.T) {
	layer := layerTar(t, file("app/carebot", "bin"))
	d := digest(layer)
	tests := []struct {
		name    string
		archive []byte
		want    []string
	}{
		{
			name: "layer named in manifest is missing (oci)",
			archive: saveArchive(t, []member{{name: "blobs/sha256/" + d, data: layer}},
				[]manifestEntry{{Layers: []string{"blobs/sha256/" + d, "blobs/sha256/" + strings.Repeat("e", 64)}}}),
			want: []string{"missing", strings.Repeat("e", 64)},
		},
		{
			name: "layer named in manifest is missing (legacy)",
			archive: saveArchive(t, []member{{name: "abc/layer.tar", data: layer}},
				[]manifestEntry{{Layers: []string{"abc/layer.tar", "def/layer.tar"}}}),
			want: []string{"missing", "def/layer.tar"},
		},
		{
			name: "layer is a JSON blob, not a tar",
			archive: saveArchive(t, []member{{name: "blobs/sha256/" + strings.Repeat("c", 64), data: bigConfig(t)}},
				[]manifestEntry{{Layers: []string{"blobs/sha256/" + strings.Repeat("c", 64)}}}),
			want: []string{"missing"},
		},
		{
			name:    "no manifest.json",
			archive: saveArchive(t, []member{{name: "blobs/sha256/" + d, data: layer}}, nil),
			want:    []string{"manifest.json", "found 0"},
		},
		{
			name: "two images",
			archive: saveArchive(t, []member{{name: "blobs/sha256/" + d, data: layer}},
				[]manifestEntry{{Layers: []string{"blobs/sha256/" + d}}, {Layers: []string{"blobs/sha256/" + d}}}),
			want: []string{"found 2"},
		},
		{
			name:    "broken manifest.json",
			archive: saveArchive(t, []member{{name: "manifest.json", data: []byte(`[{"Layers": [`)}}, nil),
			want:    []string{"manifest.json"},
		},
		{
			name: "corrupt gzip layer",
			archive: saveArchive(t, []member{{name: "blobs/sha256/" + d, data: []byte{0x1f, 0x8b, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}}},
				[]manifestEntry{{Layers: []string{"blobs/sha256/" + d}}}),
			want: []string{"read layer", "blobs/sha256/" + d},
		},
		{
			name:    "not a tar at all",
			archive: []byte(strings.Repeat("not a tar archive ", 100)),
			want:    []string{"read image archive"},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Read(bytes.NewReader(tc.archive))
			if err == nil {
				t.Fatalf("want an error, got %+v", c)
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not say %q", err, w)
				}
			}
		})
	}
}

const opensshKey = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\n-----END OPENSSH PRIVATE KEY-----\n"

func TestReadFindings(t *testing.T) {
	tests := []struct {
		name   string
		layers [][]ent
		want   []string // finding paths
		reason map[string]string
		files  []string // when set: the merged file list
	}{
		{
			name:   ".env",
			layers: [][]ent{{dir("app/"), file("app/.env", "BOT_TOKEN=x")}},
			want:   []string{"/app/.env"},
			reason: map[string]string{"/app/.env": "environment file"},
		},
		{
			name:   ".env.production",
			layers: [][]ent{{dir("app/"), file("app/.env.production", "BOT_TOKEN=x")}},
			want:   []string{"/app/.env.production"},
		},
		{
			name:   ".env.example is fine",
			layers: [][]ent{{dir("app/"), file("app/.env.example", "BOT_TOKEN=")}},
			want:   []string{},
		},
		{
			name:   ".git",
			layers: [][]ent{{dir("app/"), file("app/.git/config", "[core]")}},
			want:   []string{"/app/.git/config"},
			reason: map[string]string{"/app/.git/config": "git"},
		},
		{
			name:   ".git folder itself",
			layers: [][]ent{{dir("app/"), dir("app/.git/"), file("app/.git/HEAD", "ref: refs/heads/main")}},
			want:   []string{"/app/.git", "/app/.git/HEAD"},
		},
		{
			name:   "app data",
			layers: [][]ent{{dir("app/"), dir("app/data/"), file("app/data/carebot.db", "SQLite format 3")}},
			want:   []string{"/app/data/carebot.db"},
			reason: map[string]string{"/app/data/carebot.db": "data"},
		},
		{
			name:   "empty app data folder is fine",
			layers: [][]ent{{dir("app/"), dir("app/data/")}},
			want:   []string{},
		},
		{
			name:   "a base image's data folder is fine",
			layers: [][]ent{{dir("usr/share/foo/data/"), file("usr/share/foo/data/x", "x")}},
			want:   []string{},
			files:  []string{"/usr/share/foo/data/x"},
		},
		{
			name:   "test-data",
			layers: [][]ent{{dir("app/"), file("app/test-data/x", "x")}},
			want:   []string{"/app/test-data/x"},
			reason: map[string]string{"/app/test-data/x": "test-data"},
		},
		{
			name:   "backups",
			layers: [][]ent{{dir("app/"), dir("app/backups/"), file("app/backups/2024.db", "x")}},
			want:   []string{"/app/backups/2024.db"},
		},
		{
			name:   "ssh key by name",
			layers: [][]ent{{dir("root/.ssh/"), file("root/.ssh/id_ed25519", "whatever"), file("root/.ssh/id_ed25519.pub", "ssh-ed25519 AAAA")}},
			want:   []string{"/root/.ssh/id_ed25519"},
			reason: map[string]string{"/root/.ssh/id_ed25519": "key file name"},
		},
		{
			name:   "key material under an innocent name",
			layers: [][]ent{{dir("app/"), file("app/config.txt", opensshKey), file("app/readme.txt", "hello")}},
			want:   []string{"/app/config.txt"},
			reason: map[string]string{"/app/config.txt": "key material"},
		},
		{
			name: "secret deleted by an upper whiteout still ships",
			layers: [][]ent{
				{dir("app/"), file("app/.env", "BOT_TOKEN=x"), file("app/carebot", "bin")},
				{dir("app/"), file("app/.wh..env", "")},
			},
			want:  []string{"/app/.env"},
			files: []string{"/app/carebot"},
		},
		{
			name: "secret hidden by an upper opaque folder still ships",
			layers: [][]ent{
				{dir("root/"), dir("root/.ssh/"), file("root/.ssh/id_rsa", "x")},
				{dir("root/"), dir("root/.ssh/"), file("root/.ssh/.wh..wh..opq", ""), file("root/.ssh/known_hosts", "h")},
			},
			want:  []string{"/root/.ssh/id_rsa"},
			files: []string{"/root/.ssh/known_hosts"},
		},
		{
			name: "key material deleted by an upper layer still ships",
			layers: [][]ent{
				{dir("app/"), file("app/config.txt", opensshKey)},
				{dir("app/"), file("app/config.txt", "plain now")},
			},
			want:  []string{"/app/config.txt"},
			files: []string{"/app/config.txt"},
		},
		{
			name: "a whiteout of a secret is not itself a finding",
			layers: [][]ent{
				{dir("app/"), file("app/carebot", "bin")},
				{dir("app/"), file("app/.wh..env", ""), file("app/.wh.id_rsa", ""), file("app/.git/.wh.index", ""), file("app/data/.wh..wh..opq", "")},
			},
			want:  []string{},
			files: []string{"/app/carebot"},
		},
		{
			name: "the same secret in two layers is one finding",
			layers: [][]ent{
				{dir("app/"), file("app/.env", "A=1")},
				{dir("app/"), file("app/.env", "A=2")},
			},
			want: []string{"/app/.env"},
		},
		{
			name: "findings are sorted by path",
			layers: [][]ent{
				{dir("root/.ssh/"), file("root/.ssh/id_rsa", "x")},
				{dir("app/"), file("app/.env", "A=1")},
			},
			want: []string{"/app/.env", "/root/.ssh/id_rsa"},
		},
	}
	for _, tc := range tests {
		for _, l := range layouts {
			t.Run(tc.name+"/"+l.name, func(t *testing.T) {
				var layers [][]byte
				for _, ents := range tc.layers {
					layers = append(layers, layerTar(t, ents...))
				}
				c := read(t, l.build(t, layers...))
				if got := findingPaths(c.Findings); !reflect.DeepEqual(got, tc.want) {
					t.Errorf("findings: got %q, want %q (%v)", got, tc.want, c.Findings)
				}
				for _, f := range c.Findings {
					if want, ok := tc.reason[f.Path]; ok && !strings.Contains(f.Reason, want) {
						t.Errorf("reason for %s is %q, want it to say %q", f.Path, f.Reason, want)
					}
					if f.Reason == "" {
						t.Errorf("finding %s has no reason", f.Path)
					}
					if s := f.String(); !strings.HasPrefix(s, f.Path+" (") || !strings.Contains(s, f.Reason) {
						t.Errorf("Finding.String() = %q", s)
					}
				}
				if tc.files != nil {
					var got []string
					for _, f := range c.Files {
						got = append(got, f.Path)
					}
					if !reflect.DeepEqual(got, tc.files) {
						t.Errorf("files: got %q, want %q", got, tc.files)
					}
				}
			})
		}
	}
}

func TestForbidden(t *testing.T) {
	tests := []struct {
		path string
		dir  bool
		head string
		want string // substring of the reason; "" = allowed
	}{
		{"/app/.env", false, "", "environment file"},
		{"/.env", false, "", "environment file"},
		{"/app/.env.production", false, "", "environment file"},
		{"/app/.env.local", false, "", "environment file"},
		{"/app/.env.example", false, "", ""},
		{"/app/.env.sample", false, "", ""},
		{"/app/.env.template", false, "", ""},
		{"/app/.env.dist", false, "", ""},
		{"/app/.envrc", false, "", ""},
		{"/app/env", false, "", ""},
		{"/app/.env", true, "", ""}, // a folder called .env holds no secrets by itself
		{"/app/.git", true, "", "git history"},
		{"/app/.git/config", false, "", "git history"},
		{"/usr/src/lib/.git/HEAD", false, "", "git history"},
		{"/app/.gitignore", false, "", ""},
		{"/app/data", true, "", ""},
		{"/app/data", false, "", "app data"},
		{"/app/data/carebot.db", false, "", "app data"},
		{"/app/data/sub", true, "", "app data"},
		{"/app/internal/data/x.go", false, "", "app data"},
		{"/data/carebot.db", false, "", "app data"},
		{"/data", true, "", ""},
		{"/usr/share/foo/data/x", false, "", ""},
		{"/var/lib/data/x", false, "", ""},
		{"/app/database.go", false, "", ""},
		{"/app/test-data", true, "", ""},
		{"/app/test-data/x", false, "", "test-data folder"},
		{"/app/test-data/sub", true, "", "test-data folder"},
		{"/srv/test-data/x", false, "", "test-data folder"},
		{"/app/backups", true, "", ""},
		{"/app/backups/db.sqlite", false, "", "backups folder"},
		{"/root/.ssh/id_ed25519", false, "", "private key file name"},
		{"/root/.ssh/id_rsa", false, "", "private key file name"},
		{"/home/u/.ssh/id_ecdsa_sk", false, "", "private key file name"},
		{"/root/.ssh/id_ed25519.pub", false, "", ""},
		{"/root/.ssh/id_rsa", true, "", ""},
		{"/etc/ssl/server.key", false, "", "private key file name"},
		{"/app/tls-key.pem", false, "", "private key file name"},
		{"/app/cert.pem", false, "", ""},
		{"/app/keys.txt", false, "", ""},
		{"/app/config.txt", false, "-----BEGIN OPENSSH PRIVATE KEY-----\nabc", "private key material"},
		{"/app/config.txt", false, "-----BEGIN RSA PRIVATE KEY-----\n", "private key material"},
		{"/app/config.txt", false, "-----BEGIN ENCRYPTED PRIVATE KEY-----\n", "private key material"},
		{"/app/bundle.txt", false, "cert first\n-----BEGIN EC PRIVATE KEY-----\n", "private key material"},
		{"/app/pub.txt", false, "-----BEGIN PUBLIC KEY-----\n", ""},
		{"/app/cert.pem", false, "-----BEGIN CERTIFICATE-----\n", ""},
		{"/app/carebot", false, "\x7fELF", ""},
		{"/", true, "", ""},
	}
	for _, tc := range tests {
		name := fmt.Sprintf("%s dir=%v head=%.12q", tc.path, tc.dir, tc.head)
		t.Run(name, func(t *testing.T) {
			var head []byte
			if tc.head != "" {
				head = []byte(tc.head)
			}
			got := Forbidden(tc.path, tc.dir, head)
			switch {
			case tc.want == "" && got != "":
				t.Errorf("Forbidden = %q, want allowed", got)
			case tc.want != "" && !strings.Contains(got, tc.want):
				t.Errorf("Forbidden = %q, want a reason with %q", got, tc.want)
			}
		})
	}
}

// TestReadFindsSecretValues: a secret's value is found in any file, wherever
// it falls against the reader's chunks, and in the image config; a layer
// that does not hold it is not named.
func TestReadFindsSecretValues(t *testing.T) {
	a, b := "QX-secret-value-a-QX", "QX-secret-value-b-QX"
	straddle := func(at int, v string) string {
		return strings.Repeat("x", at-len(v)/2) + v + strings.Repeat("y", 1000)
	}
	layer := layerTar(t, dir("app/"),
		file("app/head", straddle(sniffLimit, a)),       // across the policy's sniffed head
		file("app/far", straddle(64<<10+sniffLimit, b)), // across a read chunk further on
		file("app/clean", strings.Repeat("z", 200<<10)))
	secrets := []Secret{
		{Name: "build secret a", Value: []byte(a)},
		{Name: "build secret b", Value: []byte(b)},
		{Name: "build secret h", Value: []byte("step 7 of the build")}, // in the history
		{Name: "build secret n", Value: []byte("nowhere-to-be-found")},
	}
	for _, l := range layouts {
		t.Run(l.name, func(t *testing.T) {
			c, err := Read(bytes.NewReader(l.build(t, layer)), secrets...)
			if err != nil {
				t.Fatal(err)
			}
			got := strings.Join(findingPaths(c.Findings), "; ")
			for _, want := range []string{"/app/head", "/app/far", "image config"} {
				if !strings.Contains(got, want) {
					t.Errorf("findings %q lack %s", got, want)
				}
			}
			var reasons []string
			for _, f := range c.Findings {
				reasons = append(reasons, f.String())
			}
			all := strings.Join(reasons, "; ")
			if strings.Contains(all, "/app/clean") || strings.Contains(all, "secret n") || strings.Contains(all, a) {
				t.Errorf("findings: %s", all)
			}
		})
	}
}
