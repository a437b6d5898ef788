package deploy

import (
	"context"
	"errors"
	"testing"

	"github.com/carebot/carebot/internal/host"
)

// TestDetectComposeVersion: DetectCompose reads which Compose answered and
// its version from one round trip, as v1 and v2 print them.
func TestDetectComposeVersion(t *testing.T) {
	tests := []struct {
		says string
		want Compose
	}{
		{"Docker Compose version v2.24.5\ndocker compose\n", Compose{"docker compose", "2.24.5"}},
		{"docker-compose version 1.29.2, build unknown\ndocker-py version: 5.0.3\nCPython version: 3.11.2\ndocker-compose\n", Compose{"docker-compose", "1.29.2"}},
		{"docker compose\n", Compose{"docker compose", ""}},
	}
	for _, tc := range tests {
		got, err := DetectCompose(context.Background(), &fakeHost{compose: tc.says})
		if err != nil || got != tc.want {
			t.Errorf("%q: DetectCompose = %+v, %v; want %+v", tc.says, got, err, tc.want)
		}
	}
	if got := (Compose{"docker-compose", "1.29.2"}).String(); got != "docker-compose 1.29.2" {
		t.Errorf("String = %q", got)
	}
	_, err := DetectCompose(context.Background(), &fakeHost{compose: "bash: docker: command not found\n"})
	var p *host.Problem
	if !errors.As(err, &p) || p.Fix == "" {
		t.Errorf("no Compose: %v, want a *host.Problem with its fix", err)
	}
}
