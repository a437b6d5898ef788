//go:build !windows

package transfer_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/carebot/carebot/internal/engine"
	"github.com/carebot/carebot/internal/host"
	"github.com/carebot/carebot/internal/shell"
	"github.com/carebot/carebot/internal/ship"
	"github.com/carebot/carebot/internal/testenv"
	"github.com/carebot/carebot/internal/text"
)

// BenchmarkFirstTransfer measures the first transfer of a ~230 MB image
// (real files from /usr, ~125 MB, that compress to about 40%; 90 MB of
// random bytes; 10 MB of text; a small top layer) to a server behind
// OpenSSH, the server having none of it: ship with each COMPRESSION
// setting, and `docker save [| gzip] | ssh docker load`, over loopback and
// through a proxy limited to 50 Mbit/s. It prints a table.
//
//	go test -run '^$' -bench FirstTransfer -benchtime 1x ./internal/transfer/
//
// CAREBOT_BENCH_SERVER=current sends to the containerd-store engine
// (zstd) instead of Docker 20.10 (gzip); CAREBOT_BENCH_LINKS=loopback or
// 50mbit runs one link only; CAREBOT_BENCH_METHODS=auto,gzip a subset of
// methods (auto, gzip, zstd, none, pipe, pipe-gzip).
func BenchmarkFirstTransfer(b *testing.B) {
	testenv.NeedEngine(b)
	ctx := context.Background()
	local, err := engine.Connect(ctx)
	if err != nil {
		b.Fatal(err)
	}
	defer local.Close()
	var opts []testenv.SSHDOption
	server := testenv.ServerDockerHost
	if os.Getenv("CAREBOT_BENCH_SERVER") == "current" {
		server = testenv.CurrentEngine(b)
		opts = append(opts, testenv.WithEngine(server))
	} else {
		testenv.ServerEngine(b)
	}
	sshd := testenv.StartSSHD(b, opts...)

	ref := "carebot-transfer-bench:" + strconv.FormatInt(time.Now().Unix(), 36)
	img := benchImage(b, local, ref)
	fmt.Printf("\nimage %s: %s, %d layers; server %s\n", ref, text.Bytes(img.Size), len(img.Layers), server)

	links := []struct {
		key, name string
		bps       int64
	}{{"loopback", "loopback", 0}, {"50mbit", "50 Mbit/s", 50_000_000}}
	for _, link := range links {
		if l := os.Getenv("CAREBOT_BENCH_LINKS"); l != "" && !pickedLink(strings.Split(l, ","), link.key, link.name) {
			continue
		}
		b.Run(strings.ReplaceAll(link.name, " ", ""), func(b *testing.B) {
			proxy := testenv.StartProxy(b, sshd.Addr, link.bps)
			known := filepath.Join(b.TempDir(), "known_hosts")
			testenv.WriteKnownHosts(b, known, proxy.Addr, sshd.HostKey)
			_, portStr, _ := strings.Cut(proxy.Addr, ":")
			port, _ := strconv.Atoi(portStr)
			sshArgs := []string{"-i", sshd.KeyFile, "-o", "UserKnownHostsFile=" + known, "-o", "StrictHostKeyChecking=yes",
				"-o", "BatchMode=yes", "-p", portStr, "root@127.0.0.1"}
			methods := []struct {
				name, key string
				run       func() (string, error)
			}{
				{"ship, COMPRESSION=auto", "auto", func() (string, error) { return shipIt(ctx, local, sshd, known, port, ref, "auto") }},
				{"ship, COMPRESSION=gzip", "gzip", func() (string, error) { return shipIt(ctx, local, sshd, known, port, ref, "gzip") }},
				{"ship, COMPRESSION=zstd", "zstd", func() (string, error) { return shipIt(ctx, local, sshd, known, port, ref, "zstd") }},
				{"ship, COMPRESSION=none", "none", func() (string, error) { return shipIt(ctx, local, sshd, known, port, ref, "none") }},
				{"docker save | ssh docker load", "pipe", func() (string, error) { return pipe(ref, sshArgs, "") }},
				{"docker save | gzip -1 | ssh docker load", "pipe-gzip", func() (string, error) { return pipe(ref, sshArgs, "gzip -1") }},
			}
			fmt.Printf("\nfirst transfer, %s, image %s, server %s\n\n| method | bytes on the wire | wall time |\n|---|---:|---:|\n", link.name, text.Bytes(img.Size), server)
			for _, m := range methods {
				if ms := os.Getenv("CAREBOT_BENCH_METHODS"); ms != "" && !contains(strings.Split(ms, ","), m.key) {
					continue
				}
				if m.key == "zstd" && os.Getenv("CAREBOT_BENCH_SERVER") != "current" {
					continue // Docker 20.10 does not load zstd
				}
				rmi(server, ref)
				proxy.Reset()
				start := time.Now()
				out, err := m.run()
				wall := time.Since(start)
				if err != nil {
					b.Fatalf("%s: %v\n%s", m.name, err, out)
				}
				if id := serverID(server, ref); id == "" {
					b.Fatalf("%s: the server lacks %s afterwards\n%s", m.name, ref, out)
				}
				fmt.Printf("| %s | %s | %.1f s |\n", m.name, text.Bytes(proxy.Bytes()), wall.Seconds())
				for _, line := range strings.Split(out, "\n") {
					if strings.HasPrefix(strings.TrimSpace(line), "layer ") || strings.Contains(line, "filler") {
						fmt.Printf("|   %s | | |\n", strings.TrimSpace(line))
					}
				}
			}
			rmi(server, ref)
		})
	}
}

// pickedLink reads CAREBOT_BENCH_LINKS as BenchmarkDeploy does (loopback,
// 50mbit), and as a prefix of the link's name (50) as it used to.
func pickedLink(picked []string, key, name string) bool {
	for _, p := range picked {
		if p = strings.TrimSpace(p); p == key || (p != "" && strings.HasPrefix(name, p)) {
			return true
		}
	}
	return false
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// shipIt connects through the proxy and ships ref, connection included.
func shipIt(ctx context.Context, local *engine.Engine, sshd *testenv.SSHD, known string, port int, ref, comp string) (string, error) {
	h, err := host.DialSSH(ctx, host.SSHConfig{User: "root", Host: "127.0.0.1", Port: port, KeyFile: sshd.KeyFile, KnownHosts: known})
	if err != nil {
		return "", err
	}
	defer h.Close()
	srv, err := engine.ConnectServer(ctx, h.String(), h.Exec)
	if err != nil {
		return "", err
	}
	defer srv.Close()
	var out bytes.Buffer
	_, err = ship.Image(ctx, local, srv, ref, "", ship.Options{Compression: comp, Out: &out})
	return out.String(), err
}

func pipe(ref string, sshArgs []string, filter string) (string, error) {
	script := "docker save " + shell.Quote(ref)
	if filter != "" {
		script += " | " + filter
	}
	script += " | ssh " + shell.Join(sshArgs...) + " 'docker load'"
	out, err := exec.Command("bash", "-o", "pipefail", "-c", script).CombinedOutput()
	return string(out), err
}

func rmi(server, ref string) {
	exec.Command("docker", "-H", server, "image", "rm", "-f", ref).Run()
}

func serverID(server, ref string) string {
	out, err := exec.Command("docker", "-H", server, "image", "inspect", "--format", "{{.Id}}", ref).Output()
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(out))
}

// benchImage builds the image: /usr files, random bytes, text, a top file.
func benchImage(b *testing.B, e *engine.Engine, ref string) engine.Image {
	dir := b.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "usr"), 0o755); err != nil {
		b.Fatal(err)
	}
	testenv.CollectFiles(b, filepath.Join(dir, "usr"), 125<<20, 1<<20+1, 1<<40)
	random := make([]byte, 90<<20)
	rand.Read(random)
	os.WriteFile(filepath.Join(dir, "random.bin"), random, 0o644)
	var txt bytes.Buffer
	for i := 0; txt.Len() < 10<<20; i++ {
		fmt.Fprintf(&txt, "%d,patient-%x,2026-11-%02d,ward %d,checked\n", i, i*7919, i%28+1, i%17)
	}
	os.WriteFile(filepath.Join(dir, "data.csv"), txt.Bytes(), 0o644)
	top := make([]byte, 256<<10)
	rand.Read(top)
	os.WriteFile(filepath.Join(dir, "top.bin"), top, 0o644)
	os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte("FROM scratch\nCOPY usr/ /usr/\nCOPY random.bin /random.bin\nCOPY data.csv /data.csv\nCOPY top.bin /top.bin\n"), 0o644)
	var out bytes.Buffer
	id, err := e.Build(b.Context(), engine.BuildOptions{ContextDir: dir, Dockerfile: filepath.Join(dir, "Dockerfile"), Tags: []string{ref}, Out: &out, Quiet: true})
	if err != nil {
		b.Fatalf("build: %v\n%s", err, out.String())
	}
	b.Cleanup(func() { e.RemoveImage(context.Background(), id) })
	img, err := e.Image(b.Context(), ref)
	if err != nil {
		b.Fatal(err)
	}
	return img
}
