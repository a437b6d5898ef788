//go:build linux

package tasks

import (
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"sort"
	"strings"
	"time"

	"github.com/carebot/carebot/internal/testenv"
	"github.com/carebot/carebot/internal/text"
)

// benchCell is one method in one case over one link, with its runs.
type benchCell struct {
	link    benchLink
	cs      string
	method  string
	samples []benchSample
}

func (c benchCell) wall() time.Duration {
	return time.Duration(c.median(func(s benchSample) float64 { return float64(s.wall) }))
}

// median is the median of f over the cell's runs.
func (c benchCell) median(f func(benchSample) float64) float64 {
	v := make([]float64, len(c.samples))
	for i, s := range c.samples {
		v[i] = f(s)
	}
	sort.Float64s(v)
	n := len(v)
	if n%2 == 1 {
		return v[n/2]
	}
	return (v[n/2-1] + v[n/2]) / 2
}

func spread(samples []benchSample, f func(benchSample) time.Duration) (lo, hi time.Duration) {
	lo, hi = f(samples[0]), f(samples[0])
	for _, s := range samples[1:] {
		lo, hi = min(lo, f(s)), max(hi, f(s))
	}
	return lo, hi
}

// report is the results as markdown: where they were measured, one table
// of every cell, and the stages of carebot's last deploy in each case.
func (e *benchEnv) report(cells []benchCell, took time.Duration) string {
	var w strings.Builder
	e.header(&w, took)
	fmt.Fprintf(&w, "| link | case | method | wall: median (min–max) | × fastest baseline | × seed | × save\\|gzip\\|ssh | bytes on the wire | peak RSS | temp disk on server | downtime: median (max) |\n")
	fmt.Fprintf(&w, "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for i, c := range cells {
		fastest, seed, gzip := time.Duration(0), time.Duration(0), time.Duration(0)
		for _, o := range cells {
			if o.link != c.link || o.cs != c.cs || strings.HasPrefix(o.method, "carebot") {
				continue
			}
			if fastest == 0 || o.wall() < fastest {
				fastest = o.wall()
			}
			switch o.method {
			case "pipe-gzip":
				gzip = o.wall()
			case "seed":
				seed = o.wall()
			}
		}
		link, cs := c.link.name, benchCaseNames[c.cs]
		if i > 0 && cells[i-1].link == c.link && cells[i-1].cs == c.cs {
			link, cs = "", "" // one label per group reads better than a column of repeats
		}
		lo, hi := spread(c.samples, func(s benchSample) time.Duration { return s.wall })
		wire := int64(c.median(func(s benchSample) float64 { return float64(s.wire) }))
		rss := int64(c.median(func(s benchSample) float64 { return float64(s.peakKB) }) * 1024)
		disk := int64(c.median(func(s benchSample) float64 { return float64(s.tempDisk) }))
		fmt.Fprintf(&w, "| %s | %s | %s | %s (%s–%s) | %s | %s | %s | %s | %s | %s | %s |\n",
			link, cs, benchMethodNames[c.method], secs(c.wall()), secs(lo), secs(hi),
			ratio(c.wall(), fastest), ratio(c.wall(), seed), ratio(c.wall(), gzip), text.Bytes(wire), text.Bytes(rss), text.Bytes(disk), e.downtime(c))
	}
	e.stagesTable(&w, cells)
	return w.String()
}

func secs(d time.Duration) string { return fmt.Sprintf("%.1f s", d.Seconds()) }

func ratio(d, ref time.Duration) string {
	if ref <= 0 {
		return "–"
	}
	return fmt.Sprintf("%.2f×", float64(d)/float64(ref))
}

func (e *benchEnv) downtime(c benchCell) string {
	if c.cs == "first" {
		return "–"
	}
	med := time.Duration(c.median(func(s benchSample) float64 { return float64(s.downtime) }))
	_, hi := spread(c.samples, func(s benchSample) time.Duration { return s.downtime })
	return fmt.Sprintf("%.2f s (%.2f s)", med.Seconds(), hi.Seconds())
}

// header says what was measured, on what, and how.
func (e *benchEnv) header(w *strings.Builder, took time.Duration) {
	cmd := func(name string, args ...string) string {
		out, err := exec.Command(name, args...).CombinedOutput()
		if err != nil {
			return "?"
		}
		return strings.TrimSpace(strings.SplitN(string(out), "\n", 2)[0])
	}
	cpu := "?"
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			if v, ok := strings.CutPrefix(line, "model name"); ok {
				cpu = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	ref := e.ref(e.tags[0])
	size := cmd("docker", "image", "inspect", "--format", "{{.Size}}", ref)
	// The COPY lines of the history, newest first, are the layers.
	var layers []string
	hist, _ := exec.Command("docker", "history", "--no-trunc", "--format", "{{.Size}}\t{{.CreatedBy}}", ref).Output()
	for _, l := range strings.Split(string(hist), "\n") {
		size, by, _ := strings.Cut(l, "\t")
		if _, what, ok := strings.Cut(by, " COPY "); ok {
			if _, dst, ok := strings.Cut(what, " in "); ok {
				what = dst
			}
			layers = append([]string{size + " " + strings.TrimSpace(what)}, layers...)
		}
	}
	var n int64
	fmt.Sscan(size, &n)
	fmt.Fprintf(w, "## Deploy benchmark, %s\n\n", time.Now().UTC().Format("2006-01-02 15:04 UTC"))
	fmt.Fprintf(w, "- this machine: %d × %s, Linux %s, %s; build engine Docker %s\n", runtime.NumCPU(), cpu,
		cmd("uname", "-r"), runtime.Version(), cmd("docker", "version", "--format", "{{.Server.Version}}"))
	fmt.Fprintf(w, "- server: a second engine on this machine, Docker %s, Compose %s (%s), reached through OpenSSH (%s) and a proxy that counts the bytes both ways; "+
		"the sessions' HOME is an empty folder, so no ~/.bashrc of this machine's slows each command\n",
		cmd("docker", "-H", testenv.ServerDockerHost, "version", "--format", "{{.Server.Version}}"), e.compose.Version, e.compose.Name, cmd("ssh", "-V"))
	fmt.Fprintf(w, "- image: %s FROM scratch, %d layers: %s; the service stops %s after SIGTERM\n", text.Bytes(n), len(layers), strings.Join(layers, ", "), benchStopDelay)
	fmt.Fprintf(w, "- %d run(s) per cell, run in turns across the methods; the whole benchmark took %s; load average at the start %s, at the end %s\n",
		e.s.runs, took.Round(time.Second), e.loadStart, loadAverage())
	fmt.Fprintf(w, "- wall: until /health reports the new version; peak RSS: our process (carebot), or the largest process of the pipeline on this machine; "+
		"temp disk: peak size of the method's files on the server outside Docker's data root (the seed's tar; carebot's DEPLOY_PATH/.carebot/staging), polled every 100 ms; "+
		"downtime: longest time with no 200 from /health, asked every 50 ms\n\n")
}

// loadAverage is the 1-minute load average: on a shared machine, how much
// else was running tells how far to trust a figure.
func loadAverage() string {
	data, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	return strings.Fields(string(data))[0]
}

// benchStages is how one carebot deploy spent its time, read from the
// times its lines were printed at.
type benchStages struct {
	durs [6]time.Duration // -1: the deploy did not print the line that ends the stage
	sent string           // ship's own "sent … in Xs (… on the wire)"
}

var benchStageNames = [6]string{"connect, lock, compare layers", "send layers", "checks, upload files", "compose up", "wait for health", "record, unlock"}

var shipSent = regexp.MustCompile(`^sent \S+:\S+ in [0-9.]+s \(.*\)$`)

// stages ends each stage at the first line of the next one: "sending …"
// or "… already has …", the ship's "sent … in", "deploying …", "waiting
// up to …", "… is serving …", and the return.
func (t *timedLines) stages() benchStages {
	t.mu.Lock()
	defer t.mu.Unlock()
	ends := [6]func(string) bool{
		func(l string) bool { return strings.HasPrefix(l, "sending ") || strings.Contains(l, " already has ") },
		func(l string) bool { return shipSent.MatchString(l) },
		func(l string) bool { return strings.HasPrefix(l, "deploying ") },
		func(l string) bool { return strings.HasPrefix(l, "waiting up to ") },
		func(l string) bool { return strings.Contains(l, " is serving ") },
		func(l string) bool { return l == "(done)" },
	}
	var st benchStages
	prev := time.Duration(0)
	for i, end := range ends {
		st.durs[i] = -1
		for _, l := range t.lines {
			if !strings.HasPrefix(l.text, "$ ") && end(l.text) {
				st.durs[i], prev = l.at-prev, l.at
				if i == 1 {
					st.sent = l.text
				}
				break
			}
		}
	}
	return st
}

func (e *benchEnv) stagesTable(w *strings.Builder, cells []benchCell) {
	var rows []string
	for _, c := range cells {
		st, ok := e.stages[c.method+"/"+c.link.key+"/"+c.cs]
		if !ok {
			continue
		}
		how := "deploy"
		if c.method == "carebot-full" {
			how = "in mage full"
		}
		row := fmt.Sprintf("| %s | %s | %s |", c.link.name, benchCaseNames[c.cs], how)
		for _, d := range st.durs {
			if d < 0 {
				row += " – |"
			} else {
				row += fmt.Sprintf(" %.2f s |", d.Seconds())
			}
		}
		rows = append(rows, row+" "+orNone(st.sent)+" |")
	}
	if len(rows) == 0 {
		return
	}
	fmt.Fprintf(w, "\ncarebot's last deploy of each case, by stage (from when its output lines were printed):\n\n| link | case | run | %s | ship says |\n|---|---|---|%s---|\n",
		strings.Join(benchStageNames[:], " | "), strings.Repeat("---:|", len(benchStageNames)))
	for _, r := range rows {
		fmt.Fprintln(w, r)
	}
}
