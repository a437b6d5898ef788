package ship

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/carebot/carebot/internal/engine"
	"github.com/carebot/carebot/internal/host"
	"github.com/carebot/carebot/internal/testenv"
)

// TestStagedResumesAfterCut ships an image whose bulk is one 48 MiB layer
// of random bytes to a real engine behind OpenSSH's sshd, through a proxy
// that cuts the link at 90 % of it. The next transfer, over a new
// connection, sends only what the cut left out, and the server ends up
// with the image, its staging folder empty. Then a streamed transfer of
// the same image measures what the whole costs. On both image stores:
// Debian's Docker 20.10 (classic) and a current engine (containerd).
func TestStagedResumesAfterCut(t *testing.T) {
	testenv.NeedEngine(t)
	ctx := t.Context()
	local, err := engine.Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer local.Close()
	testenv.ServerEngine(t)

	const bulk = 48 << 20
	suffix := make([]byte, 4)
	rand.Read(suffix)
	ref := "carebot-stage-test:" + hex.EncodeToString(suffix)
	img := buildBulky(t, local, ref, bulk)
	sizes, err := local.LayerSizes(ctx, img.ID, len(img.Layers))
	if err != nil || len(sizes) != 2 || sizes[0] < bulk {
		t.Fatalf("layer sizes %v, %v: want 2 layers, the first over %d bytes", sizes, err, bulk)
	}

	for _, server := range []string{testenv.ServerDockerHost, testenv.CurrentEngine(t)} {
		t.Run(strings.TrimPrefix(server, "unix://"), func(t *testing.T) {
			rmiOn(server, ref)
			t.Cleanup(func() { rmiOn(server, ref) })
			sshd := testenv.StartSSHD(t, testenv.WithEngine(server))
			proxy := testenv.StartProxy(t, sshd.Addr, 0)
			known := filepath.Join(t.TempDir(), "known_hosts")
			testenv.WriteKnownHosts(t, known, proxy.Addr, sshd.HostKey)
			dir := filepath.Join(t.TempDir(), "deploy", ".carebot", "staging")
			o := Options{Compression: "auto", StageDir: dir, Stage: StageAuto}

			// 1. Ctrl-C at 40 % of the big layer: a .part, nothing running.
			stop, cancel := context.WithCancel(ctx)
			go func() {
				for proxy.Bytes() < bulk*4/10 && stop.Err() == nil {
					time.Sleep(10 * time.Millisecond)
				}
				cancel()
			}()
			_, out, err := shipVia(stop, t, local, proxy, sshd, known, ref, o)
			cancel()
			if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "what arrived is kept, and the next deploy resumes") {
				t.Fatalf("err = %v after Ctrl-C, want it to say the next deploy resumes\n%s", err, out)
			}
			noProcessIn(t, dir)
			part := onlyParts(t, dir, sizes[0])

			// 2. Cut the link once the layer is at about 90 % (from where
			// the Ctrl-C left it, which a busy machine makes later than 40 %).
			if part > bulk*8/10 {
				t.Fatalf("the Ctrl-C at 40 %% left %d of %d bytes: too late to cut at 90 %%", part, bulk)
			}
			proxy.Reset()
			proxy.CutAfter(bulk*9/10 - part)
			_, out, err = shipVia(ctx, t, local, proxy, sshd, known, ref, o)
			if err == nil || !strings.Contains(err.Error(), "lost") {
				t.Fatalf("err = %v after the cut, want a lost connection\n%s", err, out)
			}
			if !strings.Contains(out, "staging 2 layers (") || !strings.Contains(out, "resuming the transfer that was cut") {
				t.Errorf("output does not say that it stages:\n%s", out)
			}
			t.Logf("cut: %v", err)
			noProcessIn(t, dir)
			onlyParts(t, dir, sizes[0])

			// 3. Again, over a new connection: the rest only.
			proxy.Reset()
			st, out, err := shipVia(ctx, t, local, proxy, sshd, known, ref, o)
			if err != nil {
				t.Fatalf("after the cut: %v\n%s", err, out)
			}
			resumed := proxy.Bytes()
			t.Logf("resumed:\n%s", out)
			if !strings.Contains(out, "resumed at") {
				t.Errorf("output does not say that it resumed:\n%s", out)
			}
			if id := serverImageID(server, ref); id == "" || id != st.ServerID {
				t.Errorf("the server has %s as %q, ship says %q", ref, id, st.ServerID)
			}
			if files := stagedFiles(t, dir); len(files) != 0 {
				t.Errorf("staging folder after the load: %v, want it empty", files)
			}

			// 4. What the whole costs, streamed as before staging.
			rmiOn(server, ref)
			proxy.Reset()
			full, out, err := shipVia(ctx, t, local, proxy, sshd, known, ref, Options{Compression: "auto", StageDir: dir, Stage: StageNever})
			if err != nil {
				t.Fatalf("streamed: %v\n%s", err, out)
			}
			// (The same config; the containerd store's ID is the manifest's,
			// which names each layer as it was encoded.)
			if !strings.Contains(out, "streaming 2 layers (") || full.Config != st.Config {
				t.Errorf("streamed: config %s (staged: %s), output:\n%s", full.Config, st.Config, out)
			}
			whole := proxy.Bytes()
			t.Logf("on the wire: %d bytes after the cut, %d for the whole image streamed (%.1f%%)", resumed, whole, float64(resumed)*100/float64(whole))
			if resumed*5 > whole {
				t.Errorf("after the cut %d bytes crossed, more than 20%% of the whole %d", resumed, whole)
			}
		})
	}
}

// shipVia ships ref over a new SSH connection through proxy.
func shipVia(ctx context.Context, t *testing.T, local *engine.Engine, proxy *testenv.Proxy, sshd *testenv.SSHD, known, ref string, o Options) (Stats, string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	_, portStr, _ := strings.Cut(proxy.Addr, ":")
	port, _ := strconv.Atoi(portStr)
	h, err := host.DialSSH(ctx, host.SSHConfig{User: sshd.User, Host: "127.0.0.1", Port: port, KeyFile: sshd.KeyFile, KnownHosts: known})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	srv, err := engine.ConnectServer(ctx, h.String(), h.Exec)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	var out bytes.Buffer
	o.Out, o.Files = &out, h
	st, err := Image(ctx, local, srv, ref, "", o)
	return st, out.String(), err
}

// buildBulky builds ref FROM scratch: size random bytes, then a small file.
func buildBulky(t *testing.T, e *engine.Engine, ref string, size int) engine.Image {
	t.Helper()
	dir := t.TempDir()
	random := make([]byte, size)
	rand.Read(random)
	for name, data := range map[string][]byte{
		"Dockerfile": []byte("FROM scratch\nCOPY bulk.bin /bulk.bin\nCOPY top.txt /top.txt\n"),
		"bulk.bin":   random,
		"top.txt":    []byte(ref + "\n"),
	} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	var out bytes.Buffer
	id, err := e.Build(t.Context(), engine.BuildOptions{ContextDir: dir, Dockerfile: filepath.Join(dir, "Dockerfile"), Tags: []string{ref}, Out: &out, Quiet: true})
	t.Cleanup(func() {
		if id != "" {
			if err := e.RemoveImage(context.Background(), id); err != nil {
				t.Errorf("clean up: %v", err)
			}
		}
	})
	if err != nil {
		t.Fatalf("build %s: %v\n%s", ref, err, out.String())
	}
	img, err := e.Image(t.Context(), ref)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

// onlyParts checks that an interrupted transfer left one .part in dir,
// besides at most one complete (small) layer.
func onlyParts(t *testing.T, dir string, layer int64) (part int64) {
	t.Helper()
	files := stagedFiles(t, dir)
	parts := 0
	for name, size := range files {
		if strings.HasSuffix(name, ".part") {
			parts++
			part = size
			t.Logf("left: %s, %d bytes (%.0f%% of the layer)", name, size, float64(size)*100/float64(layer))
		}
	}
	if parts != 1 || len(files) > 2 {
		t.Errorf("staging folder after the interruption: %v, want one .part (and at most one complete file)", files)
	}
	return part
}

// stagedFiles lists the staging folder: name -> size.
func stagedFiles(t *testing.T, dir string) map[string]int64 {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	files := map[string]int64{}
	for _, e := range entries {
		if info, err := e.Info(); err == nil {
			files[e.Name()] = info.Size()
		}
	}
	return files
}

// noProcessIn waits a little for every process working in dir (the
// server's side of a cut upload) to end, and fails if one does not.
func noProcessIn(t *testing.T, dir string) {
	t.Helper()
	var left []string
	for range 50 {
		left = left[:0]
		procs, _ := filepath.Glob("/proc/[0-9]*/cwd")
		for _, p := range procs {
			if cwd, err := os.Readlink(p); err == nil && cwd == dir {
				cmdline, _ := os.ReadFile(filepath.Join(filepath.Dir(p), "cmdline"))
				left = append(left, strings.ReplaceAll(string(cmdline), "\x00", " "))
			}
		}
		if len(left) == 0 {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Errorf("processes still working in the staging folder 5s after the cut: %q", left)
}

func rmiOn(server, ref string) {
	exec.Command("docker", "-H", server, "image", "rm", "-f", ref).Run()
}

func serverImageID(server, ref string) string {
	out, err := exec.Command("docker", "-H", server, "image", "inspect", "--format", "{{.Id}}", ref).Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}
