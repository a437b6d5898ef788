//go:build !windows

package host

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// With DockerSudo, docker reached from the command and from a script it
// starts goes through `sudo -n`; the wrappers are made once.
func TestDockerSudo(t *testing.T) {
	home, bin := t.TempDir(), t.TempDir()
	log := filepath.Join(t.TempDir(), "sudo.log")
	write := func(name, body string) {
		if err := os.WriteFile(filepath.Join(bin, name), []byte("#!/bin/sh\n"+body), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	write("sudo", `echo "sudo $*" >> `+log+`; [ "$1" = -n ] && shift; exec "$@"`+"\n")
	write("docker", `echo "docker $*"`+"\n")
	write("docker-compose", `echo "compose $*"`+"\n")
	t.Setenv("HOME", home)
	t.Setenv("PATH", bin+":/usr/bin:/bin")
	h := DockerSudo(Local{})
	ctx := context.Background()
	out, err := Run(ctx, h, `docker version; sh -c 'docker-compose up -d'`)
	if err != nil {
		t.Fatal(err)
	}
	if out != "docker version\ncompose up -d\n" {
		t.Errorf("output %q", out)
	}
	if _, err := Run(ctx, h, "docker ps"); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(log)
	want := "sudo -n " + bin + "/docker version\nsudo -n " + bin + "/docker-compose up -d\nsudo -n " + bin + "/docker ps\n"
	if string(got) != want {
		t.Errorf("sudo ran:\n%s\nwant:\n%s", got, want)
	}
	if _, err := os.Stat(filepath.Join(home, ".cache/carebot/sudo-bin/docker")); err != nil || strings.Contains(string(got), "sudo-bin") {
		t.Errorf("the wrappers: %v", err)
	}
}
