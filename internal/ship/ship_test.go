package ship

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/carebot/carebot/internal/engine"
	"github.com/carebot/carebot/internal/ship/shiptest"
)

const ref = "carebot:v2"

var _ Source = (*shiptest.Engine)(nil)

// built is a fake build engine holding one image, ref.
func built(t *testing.T) (*shiptest.Engine, engine.Image) {
	src := &shiptest.Engine{}
	return src, src.Build(t, ref)
}

// server is a fake server on the same platform as img, on Docker 20.10,
// that ends up with img's ID after a load.
func server(img engine.Image) *fakeServer {
	return &fakeServer{api: "1.41", os: "linux", arch: "x86_64", after: img.ID}
}

func shipIt(t *testing.T, ctx context.Context, src *shiptest.Engine, img engine.Image, srv *fakeServer) (Stats, string, error) {
	t.Helper()
	var out bytes.Buffer
	st, err := Image(ctx, src, srv, ref, img.ID, Options{Compression: "none", Out: &out})
	return st, out.String(), err
}

func TestImage(t *testing.T) {
	t.Run("already there: nothing sent", func(t *testing.T) {
		src, img := built(t)
		srv := server(img)
		srv.id = img.ID
		st, out, err := shipIt(t, context.Background(), src, img, srv)
		if err != nil {
			t.Fatal(err)
		}
		if !st.Skipped || st.ServerID != img.ID || len(srv.loads) != 0 || src.Saves != 0 {
			t.Errorf("skipped %v, server ID %s, %d loads, %d saves; want skipped, nothing saved or loaded", st.Skipped, st.ServerID, len(srv.loads), src.Saves)
		}
		if !strings.Contains(out, "ubuntu@server already has carebot:v2") {
			t.Errorf("output: %q", out)
		}
		if strings.Join(srv.cmds, " ") != "Platform ImageID" {
			t.Errorf("the server was asked %q, want its platform and the image's ID only", srv.cmds)
		}
	})

	t.Run("the server has the lower layers: only the top one crosses", func(t *testing.T) {
		src, img := built(t)
		srv := server(img)
		srv.chains = [][]string{img.Layers[:2], {"sha256:other"}}
		st, out, err := shipIt(t, context.Background(), src, img, srv)
		if err != nil {
			t.Fatal(err)
		}
		if len(srv.loads) != 1 || len(srv.loads[0]) != 1 || srv.loads[0][0] != img.Layers[2] {
			t.Errorf("loads carried %v, want one load with the top layer only", srv.loads)
		}
		if st.Fallback || st.Sent != 1 || st.ServerID != img.ID || st.Compression != "none" {
			t.Errorf("stats %+v", st)
		}
		if !strings.Contains(out, "1 of 3 layers (the server has the other 2)") {
			t.Errorf("output: %q", out)
		}
	})

	t.Run("auto: each layer's choice is said", func(t *testing.T) {
		for _, api := range []string{"1.41", "1.44"} {
			src, img := built(t)
			srv := server(img)
			srv.api = api
			var out bytes.Buffer
			st, err := Image(context.Background(), src, srv, ref, img.ID, Options{Compression: "auto", Out: &out})
			if err != nil {
				t.Fatal(err)
			}
			codec := "gzip"
			if api == "1.44" {
				codec = "zstd"
			}
			if len(srv.loads) != 1 || len(srv.loads[0]) != 3 || st.Compression != "auto" || st.Codec != codec || len(st.Choices) != 3 {
				t.Errorf("API %s: loads carried %v, stats %+v", api, srv.loads, st)
			}
			if !strings.Contains(out.String(), "each layer raw or "+codec) || !strings.Contains(out.String(), "  layer 3/3 (") {
				t.Errorf("API %s: output %q", api, out.String())
			}
			t.Logf("%s", out.String())
		}
	})

	t.Run("partial refused: the whole image once", func(t *testing.T) {
		src, img := built(t)
		srv := server(img)
		srv.chains = [][]string{img.Layers[:2]}
		// The containerd store's refusal: exit 0, but an error line.
		srv.load = func(n int, _ []string) (string, bool) {
			if n == 1 {
				return "Loaded image: carebot:v2\nError unpacking image carebot:v2: layer not found\n", false
			}
			return "Loaded image: carebot:v2\n", false
		}
		st, out, err := shipIt(t, context.Background(), src, img, srv)
		if err != nil {
			t.Fatal(err)
		}
		if len(srv.loads) != 2 || len(srv.loads[1]) != 3 {
			t.Fatalf("loads carried %v, want a partial one, then all 3 layers", srv.loads)
		}
		if !st.Fallback || st.Sent != 3 || st.ServerID != img.ID {
			t.Errorf("stats %+v, want a fallback that sent 3 layers", st)
		}
		if n := strings.Count(out, "sending the whole image once"); n != 1 {
			t.Errorf("the fallback is said %d times:\n%s", n, out)
		}
		if !strings.Contains(out, "Error unpacking image") {
			t.Errorf("the refusal's reason is not shown:\n%s", out)
		}
	})

	t.Run("full image refused: an error, no second try", func(t *testing.T) {
		src, img := built(t)
		srv := server(img)
		srv.load = func(int, []string) (string, bool) {
			return "Error processing tar file: no space left on device\n", true
		}
		_, out, err := shipIt(t, context.Background(), src, img, srv)
		if err == nil || !strings.Contains(err.Error(), "docker load on ubuntu@server") || !strings.Contains(err.Error(), "no space left") {
			t.Fatalf("err = %v, want docker load's reason", err)
		}
		if len(srv.loads) != 1 || strings.Contains(out, "whole image once") {
			t.Errorf("%d loads, output %q: a full image that is refused is not sent again", len(srv.loads), out)
		}
	})

	t.Run("partial and then full refused", func(t *testing.T) {
		src, img := built(t)
		srv := server(img)
		srv.chains = [][]string{img.Layers[:1]}
		srv.load = func(int, []string) (string, bool) { return "Error processing tar file: unexpected EOF\n", true }
		st, _, err := shipIt(t, context.Background(), src, img, srv)
		if err == nil || !st.Fallback || len(srv.loads) != 2 {
			t.Errorf("err %v, fallback %v, %d loads; want an error after one fallback", err, st.Fallback, len(srv.loads))
		}
	})

	t.Run("another platform: refused before a byte is sent", func(t *testing.T) {
		src, img := built(t)
		srv := server(img)
		srv.arch = "aarch64"
		_, _, err := shipIt(t, context.Background(), src, img, srv)
		if err == nil || !strings.Contains(err.Error(), "runs linux/aarch64") || !strings.Contains(err.Error(), "nothing was sent") {
			t.Fatalf("err = %v", err)
		}
		if len(srv.loads) != 0 || src.Saves != 0 {
			t.Errorf("%d loads, %d saves for an image the server cannot run", len(srv.loads), src.Saves)
		}
	})

	t.Run("another ID after loading: an error", func(t *testing.T) {
		src, img := built(t)
		srv := server(img)
		srv.after = "sha256:eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee"
		_, _, err := shipIt(t, context.Background(), src, img, srv)
		want := "carebot:v2 on ubuntu@server is eeeeeeeeeeee after loading, not the " + img.ID[7:19] + " that was built"
		if err == nil || err.Error() != want {
			t.Fatalf("err = %v, want %q", err, want)
		}
	})

	t.Run("interrupted: no fallback", func(t *testing.T) {
		src, img := built(t)
		srv := server(img)
		srv.chains = [][]string{img.Layers[:2]}
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		srv.load = func(int, []string) (string, bool) {
			cancel() // Ctrl-C while the archive crosses
			return "", true
		}
		st, out, err := shipIt(t, ctx, src, img, srv)
		if err == nil || st.Fallback || len(srv.loads) != 1 || strings.Contains(out, "whole image") {
			t.Errorf("err %v, fallback %v, %d loads: an interrupt must not start a second transfer", err, st.Fallback, len(srv.loads))
		}
	})

	t.Run("an image no longer on the build engine", func(t *testing.T) {
		src, img := built(t)
		srv := server(img)
		_, err := Image(context.Background(), src, srv, ref, "sha256:0123456789abcdef", Options{})
		if err == nil || !strings.Contains(err.Error(), "is not on the build engine any more") || len(srv.cmds) != 0 {
			t.Errorf("err = %v after %d server commands", err, len(srv.cmds))
		}
	})
}

func TestCheckPlatform(t *testing.T) {
	img := engine.Image{OS: "linux", Arch: "amd64"}
	for _, tc := range []struct {
		srv  engine.Platform
		fail bool
	}{
		{engine.Platform{OS: "linux", Arch: "amd64"}, false},
		{engine.Platform{OS: "linux", Arch: "x86_64"}, false},
		{engine.Platform{OS: "linux", Arch: "arm64"}, true},
		{engine.Platform{OS: "linux", Arch: "aarch64"}, true},
		{engine.Platform{OS: "windows", Arch: "amd64"}, true},
	} {
		err := checkPlatform(img, tc.srv, "carebot:v1", "ubuntu@server")
		if (err != nil) != tc.fail {
			t.Errorf("%+v: err = %v, want failure %v", tc.srv, err, tc.fail)
		}
		if err != nil && (!strings.Contains(err.Error(), "linux/amd64") || !strings.Contains(err.Error(), "nothing was sent")) {
			t.Errorf("message %q does not name the platforms and that nothing was sent", err)
		}
	}
	arm := engine.Image{OS: "linux", Arch: "arm64"}
	if err := checkPlatform(arm, engine.Platform{OS: "linux", Arch: "aarch64"}, "x", "y"); err != nil {
		t.Errorf("arm64 image on an aarch64 server: %v", err)
	}
}

func TestCompressionChoice(t *testing.T) {
	for _, tc := range []struct{ setting, api, want, codec string }{
		{"auto", "1.41", "auto", "gzip"}, // Debian's 20.10: no zstd in docker load
		{"auto", "1.43", "auto", "gzip"},
		{"auto", "1.44", "auto", "zstd"},
		{"auto", "1.56", "auto", "zstd"},
		{"auto", "2.0", "auto", "zstd"},
		{"auto", "garbage", "auto", "gzip"},
		{"none", "1.56", "none", ""},
		{"zstd", "1.41", "zstd", ""}, // the user's explicit choice stands
	} {
		if got, codec := compression(tc.setting, engine.Platform{APIVersion: tc.api}); got != tc.want || codec != tc.codec {
			t.Errorf("compression(%s, API %s) = %s, %s; want %s, %s", tc.setting, tc.api, got, codec, tc.want, tc.codec)
		}
	}
}
