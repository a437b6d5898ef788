package tasks

import (
	"strings"
	"testing"

	"github.com/carebot/carebot/internal/engine"
)

func TestCheckPlatform(t *testing.T) {
	img := engine.Image{OS: "linux", Arch: "amd64"}
	for _, tc := range []struct {
		srv  serverEngine
		fail bool
	}{
		{serverEngine{OS: "linux", Arch: "amd64"}, false},
		{serverEngine{OS: "linux", Arch: "x86_64"}, false},
		{serverEngine{OS: "linux", Arch: "arm64"}, true},
		{serverEngine{OS: "linux", Arch: "aarch64"}, true},
		{serverEngine{OS: "windows", Arch: "amd64"}, true},
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
	if err := checkPlatform(arm, serverEngine{OS: "linux", Arch: "aarch64"}, "x", "y"); err != nil {
		t.Errorf("arm64 image on an aarch64 server: %v", err)
	}
}

func TestCompressionChoice(t *testing.T) {
	for _, tc := range []struct{ setting, api, want string }{
		{"auto", "1.41", "gzip"}, // Debian's 20.10: no zstd in docker load
		{"auto", "1.43", "gzip"},
		{"auto", "1.44", "zstd"},
		{"auto", "1.56", "zstd"},
		{"auto", "2.0", "zstd"},
		{"auto", "garbage", "gzip"},
		{"none", "1.56", "none"},
		{"zstd", "1.41", "zstd"}, // the user's explicit choice stands
	} {
		if got := compression(tc.setting, serverEngine{APIVersion: tc.api}); got != tc.want {
			t.Errorf("compression(%s, API %s) = %s, want %s", tc.setting, tc.api, got, tc.want)
		}
	}
}
