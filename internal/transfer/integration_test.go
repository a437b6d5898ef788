package transfer

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/carebot/carebot/internal/engine"
	"github.com/carebot/carebot/internal/testenv"
)

// TestLoadIntoServer ships real images from the local engine into the test
// server's engine (a second dockerd, see testenv) through `docker load`:
// the whole image, then only the changed top layer, then the same partial
// archive into a server that lacks the base, which must be refused.
//
// It loads into both image stores; CAREBOT_TEST_SERVER_HOSTS may name more
// engines (comma separated DOCKER_HOSTs).
func TestLoadIntoServer(t *testing.T) {
	testenv.NeedEngine(t)
	ctx := t.Context()
	local, err := engine.Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer local.Close()
	testenv.ServerEngine(t)
	// Both image stores: Debian's 20.10 (classic) and a current engine
	// with the containerd store.
	servers := []string{testenv.ServerDockerHost, testenv.CurrentEngine(t)}
	for _, h := range strings.Split(os.Getenv("CAREBOT_TEST_SERVER_HOSTS"), ",") {
		if h = strings.TrimSpace(h); h != "" {
			servers = append(servers, h)
		}
	}

	// Two images FROM scratch: a 6 MB base layer they share, and a small
	// top layer that differs.
	suffix := randomHex(t, 4)
	refA, refB := "carebot-transfer-test:a-"+suffix, "carebot-transfer-test:b-"+suffix
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "Dockerfile"), []byte("FROM scratch\nCOPY base.bin /base.bin\nCOPY top.bin /top.bin\n"))
	writeFile(t, filepath.Join(dir, "base.bin"), randomBytes(t, 6<<20))
	writeFile(t, filepath.Join(dir, "top.bin"), randomBytes(t, 64<<10))
	imgA := buildImage(t, local, dir, refA)
	writeFile(t, filepath.Join(dir, "top.bin"), randomBytes(t, 64<<10))
	imgB := buildImage(t, local, dir, refB)
	if len(imgA.Layers) != 2 || len(imgB.Layers) != 2 || imgA.Layers[0] != imgB.Layers[0] || imgA.Layers[1] == imgB.Layers[1] {
		t.Fatalf("want two images sharing only the base layer, got %v and %v", imgA.Layers, imgB.Layers)
	}
	t.Logf("local engine saves the %s layout", saveLayout(t, local, imgA.ID))

	for _, host := range servers {
		t.Run(strings.TrimPrefix(host, "unix://"), func(t *testing.T) {
			rmiServer(t, host, refA, refB) // left by an earlier run that died
			t.Cleanup(func() { rmiServer(t, host, refA, refB) })
			api := serverAPI(t, host)

			full, _, err := load(ctx, t, host, local, imgA, Options{Ref: refA, Layers: imgA.Layers, Compress: Gzip})
			if err != nil {
				t.Fatalf("full load: %v", err)
			}
			checkLoaded(t, host, refA, imgA, full)

			skip := Present(imgB.Layers, serverChains(t, host))
			if skip != 1 {
				t.Fatalf("Present = %d after loading %s, want 1 (the shared base)", skip, refA)
			}
			partial, _, err := load(ctx, t, host, local, imgB, Options{Ref: refB, Layers: imgB.Layers, Skip: skip, Compress: Gzip})
			if err != nil {
				t.Fatalf("partial load: %v", err)
			}
			checkLoaded(t, host, refB, imgB, partial)
			t.Logf("%s (API %s): full %d layers, %d bytes raw, %d on the wire; partial %d of %d layers, %d raw, %d on the wire",
				host, api, full.Sent, full.RawBytes, full.WireBytes, partial.Sent, partial.Layers, partial.RawBytes, partial.WireBytes)
			if partial.Sent != 1 || partial.WireBytes*20 > full.WireBytes {
				t.Errorf("partial archive: %d layers, %d bytes on the wire; want 1 layer and under 1/20 of the full %d", partial.Sent, partial.WireBytes, full.WireBytes)
			}

			// zstd: refused by Docker 20.10 (API 1.41), taken from Docker 25 (API 1.44) on.
			rmiServer(t, host, refB)
			zst, out, err := load(ctx, t, host, local, imgB, Options{Ref: refB, Layers: imgB.Layers, Skip: 1, Compress: Zstd})
			if apiBefore(api, "1.44") {
				if err == nil {
					t.Errorf("API %s loaded a zstd archive, expected a refusal", api)
				} else {
					t.Logf("zstd refused as expected: %s", strings.TrimSpace(out))
				}
			} else if err != nil {
				t.Errorf("zstd load on API %s: %v", api, err)
			} else {
				checkLoaded(t, host, refB, imgB, zst)
				t.Logf("zstd loaded: %d bytes on the wire (gzip: %d)", zst.WireBytes, partial.WireBytes)
			}

			// A server without the base layer cannot take the partial archive:
			// the error the caller's fallback to a full load relies on.
			rmiServer(t, host, refA, refB)
			if n := Present(imgB.Layers, serverChains(t, host)); n != 0 {
				t.Fatalf("server still has %d of the layers after removing the images", n)
			}
			_, out, err = load(ctx, t, host, local, imgB, Options{Ref: refB, Layers: imgB.Layers, Skip: 1, Compress: Gzip})
			if err == nil {
				t.Fatalf("a partial archive loaded into a server lacking its base layer:\n%s", out)
			}
			t.Logf("partial load without the base refused: %v", err)

			// The caller's fallback: the whole image, into whatever state the
			// refused load left.
			again, _, err := load(ctx, t, host, local, imgB, Options{Ref: refB, Layers: imgB.Layers, Compress: Gzip})
			if err != nil {
				t.Fatalf("full load after the refused partial one: %v", err)
			}
			checkLoaded(t, host, refB, imgB, again)
		})
	}
}

// load saves img from the local engine and streams the archive Write makes
// of it into `docker load` on host through a pipe: no file on either side.
func load(ctx context.Context, t *testing.T, host string, local *engine.Engine, img engine.Image, o Options) (Stats, string, error) {
	t.Helper()
	o.ID = img.ID
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	save, err := local.Save(ctx, img.ID)
	if err != nil {
		t.Fatal(err)
	}
	defer save.Close()
	pr, pw := io.Pipe()
	var out bytes.Buffer
	cmd := exec.CommandContext(ctx, "docker", "-H", host, "load")
	cmd.Stdin, cmd.Stdout, cmd.Stderr = pr, &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	type result struct {
		st  Stats
		err error
	}
	done := make(chan result, 1)
	go func() {
		st, err := Write(ctx, save, pw, o)
		pw.CloseWithError(err)
		done <- result{st, err}
	}()
	lerr := cmd.Wait()
	pr.CloseWithError(errors.New("docker load ended"))
	r := <-done
	if r.err != nil && lerr == nil {
		return r.st, out.String(), fmt.Errorf("write: %w", r.err)
	}
	if lerr != nil {
		return r.st, out.String(), fmt.Errorf("docker load: %v: %s", lerr, strings.TrimSpace(out.String()))
	}
	return r.st, out.String(), CheckLoad(out.String())
}

// checkLoaded checks that host has ref as the local image: same config
// (the image ID on the classic store) and same layers.
func checkLoaded(t *testing.T, host, ref string, img engine.Image, st Stats) {
	t.Helper()
	out, err := serverDocker(host, "image", "inspect", "--format", "{{.Id}} {{json .RootFS.Layers}}", ref)
	if err != nil {
		t.Fatalf("%s is not on the server after the load: %v %s", ref, err, out)
	}
	id, layers, _ := strings.Cut(strings.TrimSpace(out), " ")
	var got []string
	if err := json.Unmarshal([]byte(layers), &got); err != nil || strings.Join(got, ",") != strings.Join(img.Layers, ",") {
		t.Errorf("%s has layers %s on the server, want %v", ref, layers, img.Layers)
	}
	// The classic store shows the config's digest as the image ID (the local
	// ID, if the local engine has the classic store too); the containerd
	// store shows the manifest's digest.
	switch id {
	case img.ID:
		t.Logf("%s on %s: ID %s, the local ID", ref, host, id)
	case st.Config, st.Manifest:
		t.Logf("%s on %s: ID %s, the archive's config %s / manifest %s (local ID %s)", ref, host, id, st.Config, st.Manifest, img.ID)
	default:
		t.Errorf("%s has ID %s on the server, want the local %s (or config %s / manifest %s)", ref, id, img.ID, st.Config, st.Manifest)
	}
}

func buildImage(t *testing.T, e *engine.Engine, dir, ref string) engine.Image {
	t.Helper()
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

// saveLayout names the layout the local engine's `docker save` writes.
func saveLayout(t *testing.T, e *engine.Engine, id string) string {
	t.Helper()
	rc, err := e.Save(t.Context(), id)
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	var names []string
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if err != nil {
			break
		}
		names = append(names, h.Name)
	}
	all := strings.Join(names, " ")
	switch {
	case strings.Contains(all, "oci-layout"):
		return "OCI (" + all + ")"
	case strings.Contains(all, "/layer.tar"):
		return "legacy (" + all + ")"
	}
	return "unknown (" + all + ")"
}

func serverDocker(host string, args ...string) (string, error) {
	out, err := exec.Command("docker", append([]string{"-H", host}, args...)...).CombinedOutput()
	return string(out), err
}

func serverAPI(t *testing.T, host string) string {
	t.Helper()
	out, err := serverDocker(host, "version", "--format", "{{.Server.APIVersion}}")
	if err != nil {
		t.Fatalf("server %s: %v %s", host, err, out)
	}
	return strings.TrimSpace(out)
}

// serverChains is the RootFS.Layers of every image on host.
func serverChains(t *testing.T, host string) [][]string {
	t.Helper()
	out, err := serverDocker(host, "image", "ls", "-aq", "--no-trunc")
	if err != nil {
		t.Fatalf("list images on %s: %v %s", host, err, out)
	}
	var chains [][]string
	for _, id := range strings.Fields(out) {
		js, err := serverDocker(host, "image", "inspect", "--format", "{{json .RootFS.Layers}}", id)
		if err != nil {
			continue // removed meanwhile by another test
		}
		var layers []string
		if json.Unmarshal([]byte(strings.TrimSpace(js)), &layers) == nil {
			chains = append(chains, layers)
		}
	}
	return chains
}

func rmiServer(t *testing.T, host string, refs ...string) {
	t.Helper()
	for _, ref := range refs {
		if out, err := serverDocker(host, "image", "rm", "-f", ref); err != nil && !strings.Contains(out, "No such image") {
			t.Errorf("remove %s on %s: %v %s", ref, host, err, out)
		}
	}
}

func apiBefore(v, min string) bool {
	var a, b, c, d int
	fmt.Sscanf(v, "%d.%d", &a, &b)
	fmt.Sscanf(min, "%d.%d", &c, &d)
	return a < c || a == c && b < d
}

func randomBytes(t *testing.T, n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	return b
}

func randomHex(t *testing.T, n int) string { return hex.EncodeToString(randomBytes(t, n)) }

func writeFile(t *testing.T, name string, data []byte) {
	t.Helper()
	if err := os.WriteFile(name, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestLoadAdaptive loads Auto's archives, a plain tar with some layer
// blobs raw and others gzip or zstd compressed (named by their own digest,
// with ...tar+gzip / ...tar+zstd media types in the OCI manifest), into
// both image stores: Docker 20.10 reads the legacy manifest.json, the
// containerd store the OCI index. Layers: 6 MB random (incompressible),
// 6 MB of text, a small top.
func TestLoadAdaptive(t *testing.T) {
	testenv.NeedEngine(t)
	ctx := t.Context()
	local, err := engine.Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer local.Close()
	testenv.ServerEngine(t)
	servers := []string{testenv.ServerDockerHost, testenv.CurrentEngine(t)}

	suffix := randomHex(t, 4)
	ref := "carebot-transfer-test:auto-" + suffix
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "Dockerfile"), []byte("FROM scratch\nCOPY random.bin /random.bin\nCOPY text.txt /text.txt\nCOPY top.bin /top.bin\n"))
	writeFile(t, filepath.Join(dir, "random.bin"), randomBytes(t, 6<<20))
	var text bytes.Buffer
	for i := 0; text.Len() < 6<<20; i++ {
		fmt.Fprintf(&text, "line %d: the quick brown fox %x jumps over the lazy dog\n", i, i*7919)
	}
	writeFile(t, filepath.Join(dir, "text.txt"), text.Bytes())
	writeFile(t, filepath.Join(dir, "top.bin"), randomBytes(t, 64<<10))
	img := buildImage(t, local, dir, ref)
	if len(img.Layers) != 3 {
		t.Fatalf("want 3 layers, got %v", img.Layers)
	}

	for _, host := range servers {
		t.Run(strings.TrimPrefix(host, "unix://"), func(t *testing.T) {
			rmiServer(t, host, ref)
			t.Cleanup(func() { rmiServer(t, host, ref) })
			api := serverAPI(t, host)
			codecs := []string{Gzip}
			if !apiBefore(api, "1.44") {
				codecs = append(codecs, Zstd)
			}
			for _, codec := range codecs {
				// As measured: the random layer raw, the others compressed
				// (the link is not measured yet for layers this small).
				st, out, err := load(ctx, t, host, local, img, Options{Ref: ref, Layers: img.Layers, Compress: Auto, Codec: codec})
				if err != nil {
					t.Fatalf("%s: %v\n%s", codec, err, out)
				}
				checkLoaded(t, host, ref, img, st)
				methods := map[int]string{}
				for _, c := range st.Choices {
					t.Logf("%s: %s", codec, c)
					methods[c.Layer] = c.Method
				}
				if methods[1] != None || methods[2] != codec || len(st.Choices) != 3 {
					t.Errorf("%s: choices %v, want the random layer raw and the text %s", codec, st.Choices, codec)
				}
				t.Logf("%s: %d bytes raw, %d on the wire", codec, st.RawBytes, st.WireBytes)
				rmiServer(t, host, ref)

				// Forced the other way round: each layer as the pattern says.
				pattern := []string{codec, None, codec}
				st, out, err = load(ctx, t, host, local, img, Options{Ref: ref, Layers: img.Layers, Compress: Auto, Codec: codec,
					decide: func(i int) string { return pattern[i] }})
				if err != nil {
					t.Fatalf("%s forced %v: %v\n%s", codec, pattern, err, out)
				}
				checkLoaded(t, host, ref, img, st)
				rmiServer(t, host, ref)
			}
			// zstd layers where only gzip is read: refused (ship never sends them there).
			if apiBefore(api, "1.44") {
				_, out, err := load(ctx, t, host, local, img, Options{Ref: ref, Layers: img.Layers, Compress: Auto, Codec: Zstd,
					decide: func(int) string { return Zstd }})
				t.Logf("zstd layers into API %s: err %v, %s", api, err, strings.TrimSpace(out))
				rmiServer(t, host, ref)
			}
		})
	}
}
