package ship

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/carebot/carebot/internal/engine"
	"github.com/carebot/carebot/internal/host"
	"github.com/carebot/carebot/internal/ship/shiptest"
	"github.com/carebot/carebot/internal/transfer"
)

// stageServer is the fake server with a staging folder: the staging steps
// run in a real shell on a temporary folder, where `docker` is a stand-in
// that keeps the archive it is given to load (and `cat` one that can
// pretend the disk is full); the survey and the ID check stay the fake's.
type stageServer struct {
	*fakeServer
	dir, bin string
	uploaded atomic.Int64 // bytes read by upload commands
	failLoad bool         // docker load fails
	full     bool         // the disk is full after 1000 bytes of an upload
	cut      bool         // an upload's input ends after 1000 bytes, as a cut link ends it
	refuse   int          // how many loads the containerd store refuses (exit 0, an error line)
}

func newStageServer(t *testing.T, img engine.Image) *stageServer {
	t.Helper()
	s := &stageServer{fakeServer: server(img), dir: filepath.Join(t.TempDir(), ".carebot", "staging"), bin: t.TempDir()}
	shims := map[string]string{
		"docker": "#!/bin/sh\n[ \"$1\" = load ] || exit 2\n/bin/cat > \"$LOADED\"\n[ -z \"$FAIL_LOAD\" ] || { echo 'Error processing tar file: no space left on device'; exit 1; }\n[ -z \"$REFUSE\" ] || { echo 'Loaded image: carebot:v2'; echo 'Error unpacking image carebot:v2: layer not found'; exit 0; }\necho 'Loaded image: carebot:v2'\n",
		"cat":    "#!/bin/sh\nif [ -n \"$FULL\" ]; then /usr/bin/head -c 1000; echo 'cat: write error: No space left on device' >&2; exit 1; fi\nexec /bin/cat \"$@\"\n",
	}
	for name, script := range shims {
		if err := os.WriteFile(filepath.Join(s.bin, name), []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return s
}

func (s *stageServer) Exec(ctx context.Context, cmd string, stdin io.Reader, stdout, stderr io.Writer) error {
	if !strings.Contains(cmd, s.dir) {
		return fmt.Errorf("the fake server runs only staging commands, not %q", cmd)
	}
	s.mu.Lock()
	s.cmds = append(s.cmds, cmd)
	s.mu.Unlock()
	loaded := filepath.Join(filepath.Dir(s.bin), "loaded.tar")
	c := exec.CommandContext(ctx, "/bin/sh", "-c", cmd)
	c.Env = append(os.Environ(), "PATH="+s.bin+":"+os.Getenv("PATH"), "LOADED="+loaded)
	if s.failLoad {
		c.Env = append(c.Env, "FAIL_LOAD=1")
	}
	if s.full {
		c.Env = append(c.Env, "FULL=1")
	}
	refused := s.refuse > 0 && strings.Contains(cmd, "docker load")
	if refused {
		c.Env = append(c.Env, "REFUSE=1")
		s.refuse--
	}
	if strings.Contains(cmd, "&& cat ") && stdin != nil {
		stdin = io.TeeReader(stdin, counter{&s.uploaded})
		if s.cut {
			stdin = io.LimitReader(stdin, 1000)
		}
	}
	c.Stdin, c.Stdout, c.Stderr = stdin, stdout, stderr
	err := c.Run()
	if b, rerr := os.ReadFile(loaded); rerr == nil {
		os.Remove(loaded)
		layers, berr := blobs(bytes.NewReader(b))
		if berr != nil {
			return berr
		}
		s.mu.Lock()
		s.loads = append(s.loads, layers)
		if err == nil && !refused {
			s.id = s.after
		}
		s.mu.Unlock()
	}
	return err
}

func (s *stageServer) DialContext(context.Context, string, string) (net.Conn, error) {
	return nil, errors.New("the fake server dials nothing")
}
func (s *stageServer) Close() error { return nil }

var _ host.Host = (*stageServer)(nil)

type counter struct{ n *atomic.Int64 }

func (c counter) Write(b []byte) (int, error) { c.n.Add(int64(len(b))); return len(b), nil }

// files lists the staging folder: name -> size.
func (s *stageServer) files(t *testing.T) map[string]int64 {
	t.Helper()
	entries, err := os.ReadDir(s.dir)
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]int64{}
	for _, e := range entries {
		info, err := e.Info()
		if err != nil {
			t.Fatal(err)
		}
		files[e.Name()] = info.Size()
	}
	return files
}

func shipStaged(t *testing.T, src *shiptest.Engine, img engine.Image, srv *stageServer, compression string) (Stats, string, error) {
	t.Helper()
	var out bytes.Buffer
	st, err := Image(context.Background(), src, srv, ref, img.ID, Options{Compression: compression, Out: &out, StageDir: srv.dir, Stage: StageAlways, Files: srv})
	t.Logf("%s", out.String())
	return st, out.String(), err
}

// stagedOnce stages img on a server whose load fails, which keeps the
// files: every layer is then staged complete. It returns their sizes.
func stagedOnce(t *testing.T, src *shiptest.Engine, img engine.Image, srv *stageServer, compression string) map[string]int64 {
	t.Helper()
	srv.failLoad = true
	_, _, err := shipStaged(t, src, img, srv, compression)
	if err == nil || !strings.Contains(err.Error(), "no space left on device") {
		t.Fatalf("err = %v, want the failed load's", err)
	}
	srv.failLoad = false
	files := srv.files(t)
	if len(files) != len(img.Layers) {
		t.Fatalf("staging folder after a failed load: %v, want the %d layers kept", files, len(img.Layers))
	}
	for name := range files {
		if strings.HasSuffix(name, ".part") {
			t.Fatalf("staging folder after a failed load: %v, want complete files", files)
		}
	}
	return files
}

// loadedAll checks that the last load carried every layer, built from the
// staged files, that the server has the image, and that the staging
// folder is empty.
func loadedAll(t *testing.T, img engine.Image, srv *stageServer, st Stats) {
	t.Helper()
	if len(srv.loads) == 0 || !slices.Equal(srv.loads[len(srv.loads)-1], img.Layers) {
		t.Errorf("loads carried %v, want the last with all of %v", srv.loads, img.Layers)
	}
	if st.ServerID != img.ID {
		t.Errorf("server ID %s, want %s", st.ServerID, img.ID)
	}
	if files := srv.files(t); len(files) != 0 {
		t.Errorf("staging folder after the load: %v, want it empty", files)
	}
}

func TestStaged(t *testing.T) {
	t.Run("the load is built from the staged files, which are then removed", func(t *testing.T) {
		src, img := built(t)
		srv := newStageServer(t, img)
		if err := os.MkdirAll(srv.dir, 0o755); err != nil {
			t.Fatal(err)
		}
		// Left by a transfer of another image: removed first.
		for _, stale := range []string{"deadbeef.tar", "deadbeef.tar.gz.part"} {
			if err := os.WriteFile(filepath.Join(srv.dir, stale), []byte("old"), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		st, out, err := shipStaged(t, src, img, srv, "none")
		if err != nil {
			t.Fatal(err)
		}
		loadedAll(t, img, srv, st)
		if len(srv.loads) != 1 || slices.Contains(srv.cmds, "docker load") {
			t.Errorf("%d loads, commands %q: want one load, from the staging folder", len(srv.loads), srv.cmds)
		}
		if !strings.Contains(out, "staging 3 layers (") || !strings.Contains(out, "a cut transfer resumes where it stopped") {
			t.Errorf("output does not say that it stages:\n%s", out)
		}
		if st.WireBytes < srv.uploaded.Load() || srv.uploaded.Load() == 0 {
			t.Errorf("wire bytes %d, uploaded %d", st.WireBytes, srv.uploaded.Load())
		}
	})

	t.Run("a complete staged layer is not sent again", func(t *testing.T) {
		src, img := built(t)
		srv := newStageServer(t, img)
		stagedOnce(t, src, img, srv, "none")
		srv.uploaded.Store(0)
		st, out, err := shipStaged(t, src, img, srv, "none")
		if err != nil {
			t.Fatal(err)
		}
		loadedAll(t, img, srv, st)
		if n := srv.uploaded.Load(); n != 0 {
			t.Errorf("%d bytes uploaded, want none: every layer was staged", n)
		}
		if strings.Count(out, "staged already, not sent again") != 3 {
			t.Errorf("output:\n%s", out)
		}
	})

	for _, comp := range []string{"none", "auto"} { // auto: gzip layers on API 1.41
		t.Run("a partial layer resumes from its size, "+comp, func(t *testing.T) {
			src, img := built(t)
			srv := newStageServer(t, img)
			files := stagedOnce(t, src, img, srv, comp)
			name, size := largest(files)
			if comp == "auto" && !strings.HasSuffix(name, ".tar.gz") {
				t.Fatalf("staged %v, want gzip layers", files)
			}
			cut(t, srv, name, size/2, false)
			srv.uploaded.Store(0)
			st, out, err := shipStaged(t, src, img, srv, comp)
			if err != nil {
				t.Fatal(err)
			}
			loadedAll(t, img, srv, st)
			if n := srv.uploaded.Load(); n != size-size/2 {
				t.Errorf("%d bytes uploaded, want the %d the partial file lacked", n, size-size/2)
			}
			if !strings.Contains(out, "resumed at") {
				t.Errorf("output:\n%s", out)
			}
		})
	}

	t.Run("a corrupt partial layer is sent again from the start", func(t *testing.T) {
		src, img := built(t)
		srv := newStageServer(t, img)
		files := stagedOnce(t, src, img, srv, "none")
		name, size := largest(files)
		cut(t, srv, name, size/2, true)
		srv.uploaded.Store(0)
		st, out, err := shipStaged(t, src, img, srv, "none")
		if err != nil {
			t.Fatal(err)
		}
		loadedAll(t, img, srv, st)
		if n := srv.uploaded.Load(); n != size {
			t.Errorf("%d bytes uploaded, want the whole %d", n, size)
		}
		if !strings.Contains(out, "is not the start of this layer: sent again from the start") {
			t.Errorf("output:\n%s", out)
		}
	})

	t.Run("a cut upload keeps what arrived, and the next one resumes there", func(t *testing.T) {
		src, img := built(t)
		srv := newStageServer(t, img)
		srv.cut = true
		_, _, err := shipStaged(t, src, img, srv, "none")
		if err == nil || !strings.Contains(err.Error(), "has 1000 of") {
			t.Fatalf("err = %v, want an upload that stopped early", err)
		}
		files := srv.files(t)
		if len(files) != 1 {
			t.Fatalf("staging folder: %v, want the one partial file", files)
		}
		name, size := largest(files)
		if !strings.HasSuffix(name, ".part") || size != 1000 {
			t.Fatalf("staging folder: %v, want the one partial file of 1000 bytes", files)
		}
		srv.cut = false
		st, out, err := shipStaged(t, src, img, srv, "none")
		if err != nil {
			t.Fatal(err)
		}
		loadedAll(t, img, srv, st)
		if !strings.Contains(out, "resumed at 1.0 kB of") {
			t.Errorf("output:\n%s", out)
		}
	})

	t.Run("partial image refused: staged again whole, the staged top layer kept", func(t *testing.T) {
		src, img := built(t)
		srv := newStageServer(t, img)
		srv.chains = [][]string{img.Layers[:2]}
		srv.refuse = 1
		st, out, err := shipStaged(t, src, img, srv, "none")
		if err != nil {
			t.Fatal(err)
		}
		if len(srv.loads) != 2 || !slices.Equal(srv.loads[0], img.Layers[2:]) {
			t.Fatalf("loads carried %v, want the top layer, then all", srv.loads)
		}
		loadedAll(t, img, srv, st)
		if !st.Fallback || strings.Count(out, "sending the whole image once") != 1 || !strings.Contains(out, "layer 3/3 (") ||
			!strings.Contains(out, "staged already, not sent again") {
			t.Errorf("fallback %v, output:\n%s", st.Fallback, out)
		}
	})

	t.Run("disk full: one line that says what to do, no second transfer", func(t *testing.T) {
		src, img := built(t)
		srv := newStageServer(t, img)
		srv.chains = [][]string{img.Layers[:1]} // a partial image: no fallback either
		srv.full = true
		_, out, err := shipStaged(t, src, img, srv, "none")
		if err == nil || strings.Contains(err.Error(), "\n") || !strings.Contains(err.Error(), "the disk of ubuntu@server is full") ||
			!strings.Contains(err.Error(), "the next deploy resumes") {
			t.Fatalf("err = %v", err)
		}
		if strings.Contains(out, "whole image") || len(srv.loads) != 0 {
			t.Errorf("%d loads, output:\n%s", len(srv.loads), out)
		}
		files := srv.files(t)
		if len(files) != 1 {
			t.Errorf("staging folder: %v, want the one partial file", files)
		}
		for name, size := range files {
			if !strings.HasSuffix(name, ".part") || size != 1000 {
				t.Errorf("staging folder: %v, want the one partial file of 1000 bytes", files)
			}
		}
	})
}

// largest is the biggest file of files, and its size.
func largest(files map[string]int64) (string, int64) {
	name, size := "", int64(-1)
	for n, s := range files {
		if s > size {
			name, size = n, s
		}
	}
	return name, size
}

// cut makes a staged file a partial one of n bytes, as a cut transfer
// leaves it; corrupt changes one of those bytes.
func cut(t *testing.T, srv *stageServer, name string, n int64, corrupt bool) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(srv.dir, name))
	if err != nil {
		t.Fatal(err)
	}
	b = b[:n]
	if corrupt {
		b[n/2] ^= 0xff
	}
	if err := os.WriteFile(filepath.Join(srv.dir, name+".part"), b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(srv.dir, name)); err != nil {
		t.Fatal(err)
	}
}

// sized is a build engine that says how big its layers are.
type sized struct {
	*shiptest.Engine
	sizes []int64
}

func (s sized) LayerSizes(context.Context, string, int) ([]int64, error) { return s.sizes, nil }

func TestStageOrStream(t *testing.T) {
	src, img := built(t)
	big := sized{src, []int64{100 << 20, 30 << 20, 3 << 20}}
	const slow, fast = 6.25e6, 300e6 // 50 Mbit/s, loopback
	for _, tc := range []struct {
		setting string
		src     Source
		skip    int
		link    float64 // the probe's answer; 0: it fails
		want    string
	}{
		{"auto", big, 0, slow, "staging 3 layers (139.5 MB), ~22s at the measured 6.2 MB/s in /srv/.carebot/staging: a cut transfer resumes where it stopped"},
		{"", big, 0, slow, "staging 3 layers (139.5 MB)"},
		{"auto", big, 0, fast, "streaming 3 layers (139.5 MB), ~0s at the measured 300.0 MB/s into docker load: a cut costs little to send again"},
		{"auto", big, 0, 0, "  (measure the link to this machine: no link; the transfer measures it as it goes)\nstaging 3 layers (139.5 MB) in"},
		{"auto", big, 1, slow, "streaming 2 layers (34.6 MB), ~6s at the measured 6.2 MB/s into docker load: a cut costs little"},
		{"auto", big, 1, 2e6, "staging 2 layers (34.6 MB), ~17s at the measured 2.0 MB/s"},
		{"auto", big, 2, slow, "streaming 1 layer (3.1 MB) into docker load"},
		{"never", big, 0, slow, "streaming 3 layers (139.5 MB) into docker load (TRANSFER_STAGE=never)"},
		{"always", big, 2, slow, "staging 1 layer (3.1 MB)"},
		{"auto", src, 0, slow, "streaming 3 layers ("}, // no sizes: the image's, small
	} {
		var out bytes.Buffer
		probed := false
		o := Options{StageDir: "/srv/.carebot/staging", Stage: tc.setting, Files: host.Local{}}
		o.probe = func(context.Context, host.Host) (float64, error) {
			probed = true
			if tc.link == 0 {
				return 0, errors.New("measure the link to this machine: no link")
			}
			return tc.link, nil
		}
		p := plan{img: img, skip: tc.skip, comp: transfer.Auto, out: &out}
		o.transport(context.Background(), tc.src, &p)
		if !strings.HasPrefix(out.String(), tc.want) {
			t.Errorf("TRANSFER_STAGE=%q, skip %d, link %.0f: %q, want %q", tc.setting, tc.skip, tc.link, out.String(), tc.want)
		}
		if _, sized := tc.src.(sized); probed != (sized && tc.skip < 2) {
			t.Errorf("TRANSFER_STAGE=%q, skip %d: link measured %v, want it only for 16 MiB or more", tc.setting, tc.skip, probed)
		}
		if tc.link != 0 && probed && p.link != tc.link {
			t.Errorf("TRANSFER_STAGE=%q, skip %d: the transfer is told the link is %.0f B/s, want %.0f", tc.setting, tc.skip, p.link, tc.link)
		}
	}
	var out bytes.Buffer
	p := plan{img: img, comp: transfer.Gzip, out: &out}
	Options{Stage: "always"}.transport(context.Background(), big, &p)
	if out.Len() != 0 || p.link != 0 {
		t.Errorf("without a staging folder: %q (link %.0f), want today's streaming, nothing said and nothing measured", out.String(), p.link)
	}
}

// The probe measures what the host's shell reads: the filler arrives, and
// the rate is a rate.
func TestLinkRate(t *testing.T) {
	r, err := linkRate(context.Background(), host.Local{})
	if err != nil {
		t.Fatal(err)
	}
	if !(r > 1e6) {
		t.Errorf("this machine's own pipe measured %.0f B/s, want more than 1 MB/s", r)
	}
	f := &filler{left: 1 << 20}
	n, _ := io.Copy(io.Discard, f)
	if n != 1<<20 {
		t.Errorf("filler gave %d bytes, want %d", n, 1<<20)
	}
	f = &filler{left: 1 << 40}
	f.Read(make([]byte, 10))
	f.start = f.start.Add(-time.Second)
	if n, _ := io.Copy(io.Discard, f); n != 0 {
		t.Errorf("filler past its time gave %d bytes more, want none", n)
	}
}

func TestStagedEncodingChoice(t *testing.T) {
	for _, tc := range []struct{ comp, codec, wantCodec, fixed string }{
		{transfer.Auto, transfer.Zstd, transfer.Zstd, ""},
		{transfer.Gzip, "", transfer.Gzip, transfer.Gzip},
		{transfer.None, "", transfer.Gzip, transfer.None},
	} {
		s := &staging{}
		if c, codec := stagedEncoding(tc.comp, tc.codec, s); c != transfer.Auto || codec != tc.wantCodec || s.fixed != tc.fixed {
			t.Errorf("%s/%s: %s, %s, fixed %q", tc.comp, tc.codec, c, codec, s.fixed)
		}
	}
}

// Of two partial files of one layer (the codec changed between two cut
// transfers), the one this transfer can produce again is resumed.
func TestStagedPartChoice(t *testing.T) {
	const d = "sha256:00ab"
	for _, tc := range []struct {
		codec, want string
		size        int64
	}{{transfer.Zstd, transfer.Zstd, 50}, {transfer.Gzip, transfer.Gzip, 100}} {
		for _, order := range [][]string{{"part 100 00ab.tar.gz.part", "part 50 00ab.tar.zst.part"}, {"part 50 00ab.tar.zst.part", "part 100 00ab.tar.gz.part"}} {
			s := &staging{codec: tc.codec, parts: map[string]part{}, done: map[string]transfer.Blob{}}
			for _, line := range order {
				s.parse(strings.Fields(line), []string{d})
			}
			if p := s.parts[d]; p.method != tc.want || p.size != tc.size {
				t.Errorf("codec %s, %q: resumes %+v, want the %s part of %d bytes", tc.codec, order, p, tc.want, tc.size)
			}
			if m, _ := s.Method(d); m != tc.want {
				t.Errorf("codec %s: Method = %q", tc.codec, m)
			}
		}
	}
}

// A host's rate on record decides instead of a probe, and a stale or
// missing one does not.
func TestLinksRemembered(t *testing.T) {
	src, img := built(t)
	big := sized{src, []int64{100 << 20, 30 << 20, 3 << 20}}
	links := Links(filepath.Join(t.TempDir(), "cache", "links.json"))
	if _, ok := links.Rate("this machine"); ok {
		t.Fatal("a rate on record in an empty file")
	}
	links.Record("this machine", 80e6)
	links.Record("elsewhere", 1e6)
	if r, ok := links.Rate("this machine"); !ok || r != 80e6 {
		t.Fatalf("rate on record %v %v, want 80 MB/s", r, ok)
	}
	var out bytes.Buffer
	o := Options{StageDir: "/srv/.carebot/staging", Files: host.Local{}, Links: links}
	o.probe = func(context.Context, host.Host) (float64, error) {
		t.Error("probed with a rate on record")
		return 1, nil
	}
	p := plan{img: img, comp: transfer.Auto, out: &out}
	o.transport(context.Background(), big, &p)
	if want := "streaming 3 layers (139.5 MB), ~2s at the last transfer's 80.0 MB/s into docker load"; !strings.HasPrefix(out.String(), want) || p.link != 80e6 {
		t.Errorf("said %q (link %.0f), want %q", out.String(), p.link, want)
	}

	// A week old: measured again.
	b, _ := os.ReadFile(string(links))
	old := strings.Replace(string(b), time.Now().UTC().Format("2006-01-02"), "2020-01-01", -1)
	os.WriteFile(string(links), []byte(old), 0o600)
	if _, ok := links.Rate("this machine"); ok {
		t.Errorf("a rate from 2020 is still trusted:\n%s", old)
	}
	probed := false
	o.probe = func(context.Context, host.Host) (float64, error) { probed = true; return 2e6, nil }
	out.Reset()
	o.transport(context.Background(), big, &p)
	if !probed || !strings.Contains(out.String(), "at the measured 2.0 MB/s") {
		t.Errorf("with a stale record: probed %v, said %q", probed, out.String())
	}
	Links("").Record("x", 1) // no file: nothing, no panic
}
