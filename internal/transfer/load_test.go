package transfer

import (
	"strings"
	"testing"
)

func TestCheckLoad(t *testing.T) {
	for _, tc := range []struct {
		out  string
		want string // "" = no error
	}{
		{"Loaded image: carebot:1.2\n", ""},
		{"Loaded image ID: sha256:abc\n", ""},
		// containerd store, base layer missing: exit status 0.
		{"Loaded image: carebot:b\nError unpacking image carebot:b: apply layer error for \"docker.io/library/carebot:b\": failed to extract layer sha256:1e16: not found\n", "Error unpacking image carebot:b"},
		{"", "no \"Loaded image\""},
		{"open /var/lib/docker/tmp/x: no such file or directory\n", "no \"Loaded image\""},
	} {
		err := CheckLoad(tc.out)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("CheckLoad(%q) = %v, want nil", tc.out, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("CheckLoad(%q) = %v, want an error with %q", tc.out, err, tc.want)
		}
	}
}
