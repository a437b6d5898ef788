package wsl

import "testing"

func TestWSLInside(t *testing.T) {
	tests := []struct {
		name   string
		env    map[string]string
		files  []string
		distro string
		ok     bool
	}{
		{name: "plain Linux"},
		{name: "WSL_DISTRO_NAME", env: map[string]string{"WSL_DISTRO_NAME": "Ubuntu-22.04"}, distro: "Ubuntu-22.04", ok: true},
		{name: "interop handler", files: []string{"/proc/sys/fs/binfmt_misc/WSLInterop"}, ok: true},
		{name: "late interop handler", files: []string{"/proc/sys/fs/binfmt_misc/WSLInterop-late"}, ok: true},
	}
	for _, tt := range tests {
		d, ok := inside(func(k string) string { return tt.env[k] }, func(p string) bool {
			for _, f := range tt.files {
				if f == p {
					return true
				}
			}
			return false
		})
		if d != tt.distro || ok != tt.ok {
			t.Errorf("%s: inside = %q, %v; want %q, %v", tt.name, d, ok, tt.distro, tt.ok)
		}
	}
}
