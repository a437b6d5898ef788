package transfer

import "testing"

func TestPresent(t *testing.T) {
	img := []string{"sha256:a", "sha256:b", "sha256:c"}
	tests := []struct {
		name   string
		server [][]string
		want   int
	}{
		{"empty server", nil, 0},
		{"server images without layers", [][]string{{}}, 0},
		{"other images only", [][]string{{"sha256:x"}, {"sha256:y", "sha256:z"}}, 0},
		{"base shared", [][]string{{"sha256:a", "sha256:x"}}, 1},
		{"two of three shared, best of several images", [][]string{{"sha256:a"}, {"sha256:a", "sha256:b", "sha256:y"}, {"sha256:x"}}, 2},
		{"shorter image that is a prefix", [][]string{{"sha256:a", "sha256:b"}}, 2},
		// b and c are there, but on another base: their chain IDs differ.
		{"same diff IDs on another base", [][]string{{"sha256:x", "sha256:b", "sha256:c"}}, 0},
		{"same diff ID, different layer below", [][]string{{"sha256:a", "sha256:x", "sha256:c"}}, 1},
		{"all present", [][]string{{"sha256:a", "sha256:b", "sha256:c"}}, 3},
		{"all present in a longer image", [][]string{{"sha256:a", "sha256:b", "sha256:c", "sha256:d"}}, 3},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Present(img, tt.server); got != tt.want {
				t.Errorf("Present(%v, %v) = %d, want %d", img, tt.server, got, tt.want)
			}
		})
	}
	if got := Present(nil, [][]string{{"sha256:a"}}); got != 0 {
		t.Errorf("Present of an image without layers = %d, want 0", got)
	}
}
