//go:build !windows

package tasks

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/carebot/carebot/internal/config"
	"github.com/carebot/carebot/internal/engine"
	"github.com/carebot/carebot/internal/text"

	"github.com/carebot/carebot/internal/shell"

	"github.com/carebot/carebot/internal/host"
	"github.com/carebot/carebot/internal/ship"
	"github.com/carebot/carebot/internal/testenv"
)

// BenchmarkRedeploy measures a redeploy after a one-layer change of a
// ~250 MB image, against the ways people move images without a registry,
// all in the same run, over a plain loopback link and one limited to
// 50 Mbit/s. It prints a table; run it with `mage bench` (or
// go test -run '^$' -bench Redeploy -benchtime 1x ./internal/tasks/).
func BenchmarkRedeploy(b *testing.B) {
	if os.Getenv("CAREBOT_BENCH_QUICK") != "" {
		benchBase = 40 << 20
	}
	for _, link := range []struct {
		name string
		bps  int64
	}{{"loopback", 0}, {"50 Mbit/s", 50_000_000}} {
		b.Run(strings.ReplaceAll(link.name, " ", ""), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				benchLink(b, link.name, link.bps)
			}
		})
	}
}

var benchBase int64 = 240 << 20

type benchRow struct {
	method   string
	wire     int64
	wall     time.Duration
	peakKB   int64 // peak RSS: our process, or the largest process of a baseline's pipeline
	tempDisk int64 // bytes written to a temp file on the server
}

func benchLink(b *testing.B, linkName string, bps int64) {
	p := newBenchProject(b, bps)
	v1 := p.release("v1")
	// The server starts with v1, sent by us (setup, not measured).
	sh := p.dial(b)
	shipWith(b, p.runner("v1"), sh, v1)
	sh.Close()
	v2 := p.release("v2")
	imgSize := p.imageSize(b, v2)

	var rows []benchRow
	methods := []struct {
		name string
		run  func() benchRow
	}{
		{"carebot (layers the server lacks, streamed)", func() benchRow { return p.ours(b, v2) }},
		{"seed: docker save -o, scp, docker load -i", func() benchRow { return p.seed(b, v2) }},
		{"docker save | ssh docker load", func() benchRow { return p.pipe(b, v2, false) }},
		{"docker save | gzip | ssh docker load", func() benchRow { return p.pipe(b, v2, true) }},
	}
	for _, m := range methods {
		p.forget(b, v2)
		p.proxy.Reset()
		row := m.run()
		row.method, row.wire = m.name, p.proxy.Bytes()
		if id := serverImageIDB(b, v2); id == "" {
			b.Fatalf("%s: the server lacks %s afterwards", m.name, v2)
		}
		rows = append(rows, row)
	}
	printBench(linkName, imgSize, rows)
	b.ReportMetric(float64(rows[0].wire), "B-wire")
	b.ReportMetric(rows[0].wall.Seconds(), "s-wall")
	b.ReportMetric(float64(rows[0].peakKB)/1024, "MB-peak")
}

func printBench(link string, image int64, rows []benchRow) {
	fmt.Printf("\nredeploy after a one-layer change, %s, image %s\n\n", link, text.Bytes(image))
	fmt.Printf("| method | bytes on the wire | %% of image | wall time | peak memory | temp disk on server |\n")
	fmt.Printf("|---|---:|---:|---:|---:|---:|\n")
	for _, r := range rows {
		fmt.Printf("| %s | %s | %.2f%% | %.1f s | %.0f MB | %s |\n", r.method, text.Bytes(r.wire),
			100*float64(r.wire)/float64(image), r.wall.Seconds(), float64(r.peakKB)/1024, text.Bytes(r.tempDisk))
	}
	fmt.Println()
}

// benchProject is a remote project whose base layer is ~250 MB of real
// files from this machine (so compression behaves as it would on an app's
// dependencies), with one small file changing between releases.
type benchProject struct {
	*remoteProject
}

func newBenchProject(b *testing.B, bps int64) *benchProject {
	p := newRemoteProjectWith(b, "bench", testenv.NewCompose(b, "v1"), bps, func(dir string) {
		os.Remove(filepath.Join(dir, "base.bin"))
		if err := os.MkdirAll(filepath.Join(dir, "base"), 0o755); err != nil {
			b.Fatal(err)
		}
		collectFiles(b, filepath.Join(dir, "base"), benchBase)
		df := filepath.Join(dir, "Dockerfile.production")
		data, _ := os.ReadFile(df)
		data = []byte(strings.Replace(string(data), "COPY base.bin /opt/base/base.bin", "COPY base/ /opt/base/", 1))
		os.WriteFile(df, data, 0o644)
		os.WriteFile(filepath.Join(dir, ".dockerignore"), []byte("*\n!build/carebot\n!base\n!release.txt\n"), 0o644)
	})
	return &benchProject{p}
}

// collectFiles links (or copies) the largest regular files under /usr into
// dir until it holds about limit bytes.
func collectFiles(b *testing.B, dir string, limit int64) {
	type f struct {
		path string
		size int64
	}
	var files []f
	filepath.WalkDir("/usr", func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.Type().IsRegular() {
			return nil
		}
		if info, err := d.Info(); err == nil && info.Size() > 1<<20 {
			files = append(files, f{p, info.Size()})
		}
		return nil
	})
	sort.Slice(files, func(i, j int) bool { return files[i].path < files[j].path })
	var total int64
	for i, x := range files {
		if total+x.size > limit {
			continue
		}
		dst := filepath.Join(dir, fmt.Sprintf("%04d-%s", i, filepath.Base(x.path)))
		if os.Link(x.path, dst) != nil {
			in, err := os.Open(x.path)
			if err != nil {
				continue
			}
			out, _ := os.Create(dst)
			io.Copy(out, in)
			in.Close()
			out.Close()
		}
		total += x.size
	}
	if total < limit/2 {
		b.Fatalf("found only %s of large files under /usr", text.Bytes(total))
	}
}

func (p *benchProject) release(tag string) string {
	p.remoteProject.release(tag, nil)
	return p.env["IMAGE_NAME"] + ":" + tag
}

func (p *benchProject) imageSize(b *testing.B, ref string) int64 {
	out, err := exec.Command("docker", "image", "inspect", "--format", "{{.Size}}", ref).Output()
	if err != nil {
		b.Fatal(err)
	}
	n, _ := strconv.ParseInt(strings.TrimSpace(string(out)), 10, 64)
	return n
}

func (p *benchProject) dial(b *testing.B) *host.SSH {
	c, err := config.Load(p.dir, append(os.Environ(), envList(p.env)...))
	if err != nil {
		b.Fatal(err)
	}
	s, err := host.DialSSH(context.Background(), sshConfig(c, c.Targets[0], nil))
	if err != nil {
		b.Fatal(err)
	}
	return s
}

// forget removes ref from the server, keeping the layers other images use.
func (p *benchProject) forget(b *testing.B, ref string) {
	testenv.ServerDocker(b, "image", "rm", ref)
}

func serverImageIDB(b *testing.B, ref string) string {
	out, err := testenv.ServerDocker(b, "image", "inspect", "--format", "{{.Id}}", ref)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(out)
}

// ours is Ship, connection included, with our process's peak RSS.
func (p *benchProject) ours(b *testing.B, ref string) benchRow {
	resetPeakRSS()
	start := time.Now()
	sh := p.dial(b)
	defer sh.Close()
	r := p.runner(strings.TrimPrefix(ref, p.env["IMAGE_NAME"]+":"))
	r.Out = io.Discard
	shipWith(b, r, sh, ref)
	return benchRow{wall: time.Since(start), peakKB: peakRSS()}
}

// shipWith sends ref to sh as a deploy does: from r's build engine, with
// its COMPRESSION.
func shipWith(b *testing.B, r *Runner, sh host.Host, ref string) {
	ctx := context.Background()
	e, err := r.Engine(ctx)
	if err != nil {
		b.Fatal(err)
	}
	srv, err := engine.ConnectServer(ctx, sh.String(), sh.Exec)
	if err != nil {
		b.Fatal(err)
	}
	defer srv.Close()
	if _, err := ship.Image(ctx, e, srv, ref, "", ship.Options{Compression: r.Cfg.Compression, Out: r.Out}); err != nil {
		b.Fatal(err)
	}
}

func (p *benchProject) sshArgs() []string {
	_, port, _ := strings.Cut(p.proxy.Addr, ":")
	return []string{"-i", p.env["SSH_KEY"], "-o", "UserKnownHostsFile=" + p.env["SSH_KNOWN_HOSTS"],
		"-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-p", port}
}

// seed is the PowerShell script's way: a tar on both sides.
func (p *benchProject) seed(b *testing.B, ref string) benchRow {
	tmp := filepath.Join(b.TempDir(), "carebot.tar")
	remote := "/tmp/carebot-bench-seed.tar"
	_, port, _ := strings.Cut(p.proxy.Addr, ":")
	start := time.Now()
	var peak int64
	run := func(name string, args ...string) {
		cmd := exec.Command(name, args...)
		if out, err := cmd.CombinedOutput(); err != nil {
			b.Fatalf("%s: %v\n%s", name, err, out)
		}
		peak = max(peak, maxRSS(cmd))
	}
	run("docker", "save", "-o", tmp, ref)
	scpArgs := append([]string{"-P", port}, p.sshArgs()[:len(p.sshArgs())-2]...)
	run("scp", append(scpArgs, tmp, "root@127.0.0.1:"+remote)...)
	st, _ := os.Stat(remote) // the "server" is this machine: its temp file is right here
	run("ssh", append(p.sshArgs(), "root@127.0.0.1", "docker load -i "+remote+" && rm -f "+remote)...)
	wall := time.Since(start)
	os.Remove(tmp)
	var size int64
	if st != nil {
		size = st.Size()
	}
	return benchRow{wall: wall, peakKB: peak, tempDisk: size}
}

// pipe is docker save | [gzip |] ssh docker load.
func (p *benchProject) pipe(b *testing.B, ref string, gz bool) benchRow {
	script := "docker save " + shell.Quote(ref)
	if gz {
		script += " | gzip"
	}
	script += " | ssh " + shell.Join(p.sshArgs()...) + " root@127.0.0.1 'docker load'"
	start := time.Now()
	cmd := exec.Command("bash", "-o", "pipefail", "-c", script)
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("%s: %v\n%s", script, err, out)
	}
	return benchRow{wall: time.Since(start), peakKB: maxRSS(cmd)}
}

func maxRSS(cmd *exec.Cmd) int64 {
	if cmd.ProcessState == nil {
		return 0
	}
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		return ru.Maxrss
	}
	return 0
}

// resetPeakRSS starts a new peak-RSS measurement of this process (Linux:
// writing 5 to clear_refs resets VmHWM).
func resetPeakRSS() { os.WriteFile("/proc/self/clear_refs", []byte("5"), 0) }

func peakRSS() int64 {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			return n
		}
	}
	return 0
}

// BenchmarkBackupRestore times Backup and Restore of a 100 MB data folder
// on this machine and over SSH, with the service running (so the pause,
// stop and health check are part of it). Run with `mage bench`.
func BenchmarkBackupRestore(b *testing.B) {
	type result struct {
		host             string
		backup, restore  time.Duration
		archive, dataLen int64
	}
	var results []result
	for _, kind := range []string{"this machine", "SSH"} {
		var d deployment
		if kind == "this machine" {
			testenv.NeedEngine(b)
			d = newProject(b, "bkbench")
		} else {
			rp := newRemoteProject(b, "bkbench", testenv.NewCompose(b, "v1"))
			rp.createServerEnv()
			d = rp
		}
		d.buildTag("v1", nil)
		ctx := context.Background()
		if err := d.runner("v1").Deploy(ctx, ""); err != nil {
			b.Fatal(err)
		}
		// 100 MB: half incompressible, half text, in 20 files beside the database.
		data := filepath.Join(d.deployPath(), "data")
		chunk := make([]byte, 5<<20)
		for i := 0; i < 20; i++ {
			if i%2 == 0 {
				rand.Read(chunk)
			} else {
				copy(chunk, bytes.Repeat([]byte("carebot record line\n"), len(chunk)/20))
			}
			if err := os.WriteFile(filepath.Join(data, fmt.Sprintf("file-%02d.bin", i)), chunk, 0o644); err != nil {
				b.Fatal(err)
			}
		}
		r := d.runner("v1")
		start := time.Now()
		bk, err := r.Backup(ctx, false)
		if err != nil {
			b.Fatal(err)
		}
		backupTime := time.Since(start)
		start = time.Now()
		if err := d.runner("v1").Restore(ctx, bk.Name, false); err != nil {
			b.Fatal(err)
		}
		results = append(results, result{kind, backupTime, time.Since(start), bk.Size, 100 << 20})
	}
	fmt.Printf("\nbackup and restore of a 100 MB data folder, service running\n\n")
	fmt.Printf("| host | backup | restore (verify, safety backup, stop, swap, start, health) | archive |\n|---|---:|---:|---:|\n")
	for _, r := range results {
		fmt.Printf("| %s | %.1f s | %.1f s | %s |\n", r.host, r.backup.Seconds(), r.restore.Seconds(), text.Bytes(r.archive))
	}
	fmt.Println()
}
