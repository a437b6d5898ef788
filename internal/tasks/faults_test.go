//go:build linux

package tasks

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/carebot/carebot/internal/testenv"
)

// TestFaults breaks deploys, backups and restores in the ways real ones
// break — the link cut or black-holed mid-transfer, mage killed or
// interrupted at each step, two deploys at once, a paused or shared data
// folder, a full disk, the server's engine restarted — and checks after
// each (checkSurvived) that the service still serves, nothing is left
// paused, locked or half-written, no acknowledged write is lost, and the
// next plain command just works.
func TestFaults(t *testing.T) {
	testenv.NeedEngine(t)
	c := testenv.NewCompose(t, "v2")
	s := &faultSuite{t: t}
	defer s.summary()
	s.p = s.newProject(t, "fault-ssh", c)
	p := s.p
	s.deploy(t, p, "v1", nil, 0)

	// 1, 2: the link breaks while a >= 50 MB layer crosses.
	// Reset at three points; black-holed once (each waits out the lease).
	for _, pct := range []int{10, 50, 90} {
		s.run(fmt.Sprintf("link-reset-at-%d%%", pct), func(t *testing.T) { s.linkFault(t, pct, false) })
	}
	s.run("link-silent-at-50%", func(t *testing.T) { s.linkFault(t, 50, true) })
	// 3, 4: mage killed, or interrupted, at each step of a deploy.
	for _, sig := range []string{"kill9", "sigint"} {
		for _, at := range []string{"transfer", "compose-up", "health-wait"} {
			s.run(sig+"-during-"+at, func(t *testing.T) { s.signalFault(t, sig, at) })
		}
	}
	// 5: a backup of 200 MB interrupted, here and over SSH.
	s.backupFaults(c)
	// 6: two deploys at once.
	s.run("two-deploys-at-once", s.concurrentFault)
	s.run("two-deploys-lock-wait", s.lockWaitFault)
	// 7: restore under a paused service, and with another container on the data.
	s.run("restore-while-paused", s.restorePausedFault)
	s.run("restore-while-data-shared", s.restoreSharedFault)
	// 8, 9: a server of the test's own: a small disk, an engine to restart.
	s.smallServerFaults(c)
}

type faultSuite struct {
	t        *testing.T
	p        *remoteProject
	serving  string // what the shared project serves, as far as the suite knows
	n        int    // tags made so far
	names    []string
	survived []bool
}

// run runs one fault as a subtest and counts it.
func (s *faultSuite) run(name string, fault func(t *testing.T)) { s.runOn(s.t, name, fault) }

// runOn runs one fault as a subtest of parent (a group that set
// something up) and counts it.
func (s *faultSuite) runOn(parent *testing.T, name string, fault func(t *testing.T)) {
	ran := false
	ok := parent.Run(name, func(t *testing.T) { ran = true; fault(t) })
	if ran { // not left out by -run
		s.names = append(s.names, name)
		s.survived = append(s.survived, ok)
	}
}

func (s *faultSuite) summary() {
	n := 0
	var failed []string
	for i, ok := range s.survived {
		if ok {
			n++
		} else {
			failed = append(failed, s.names[i])
		}
	}
	msg := fmt.Sprintf("survived %d of %d faults", n, len(s.survived))
	if len(failed) > 0 {
		msg += " (not: " + strings.Join(failed, ", ") + ")"
	}
	s.t.Log(msg)
	fmt.Printf("%s\n", msg)
}

// tag is a fresh release name.
func (s *faultSuite) tag(kind string) string {
	s.n++
	return fmt.Sprintf("%s%d", kind, s.n)
}

const bigLayerSize = 52 << 20 // >= 50 MB, incompressible, new in every big release

// newProject is a remote project whose image can carry a big layer of its
// own (big.bin, last) and whose service can be slow to become healthy
// (build arg STARTUP_DELAY).
func (s *faultSuite) newProject(t testing.TB, name string, c testenv.Compose) *remoteProject {
	p := newRemoteProjectWith(t, name, c, 0, func(dir string) {
		df := filepath.Join(dir, "Dockerfile.production")
		b, err := os.ReadFile(df)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range [][2]string{
			{"COPY release.txt /app/release.txt", "COPY release.txt /app/release.txt\nCOPY big.bin /opt/big/big.bin"},
			{"ARG HEALTH_FAIL=\n", "ARG HEALTH_FAIL=\nARG STARTUP_DELAY=\n"},
			{"CAREBOT_HEALTH_FAIL=$HEALTH_FAIL \\\n", "CAREBOT_HEALTH_FAIL=$HEALTH_FAIL \\\n    CAREBOT_STARTUP_DELAY=$STARTUP_DELAY \\\n"},
		} {
			if !bytes.Contains(b, []byte(r[0])) {
				t.Fatalf("the project's Dockerfile has no %q to extend", r[0])
			}
			b = bytes.Replace(b, []byte(r[0]), []byte(r[1]), 1)
		}
		must(t, os.WriteFile(df, b, 0o644))
		must(t, os.WriteFile(filepath.Join(dir, "big.bin"), []byte("small\n"), 0o644))
		ign := filepath.Join(dir, ".dockerignore")
		b, _ = os.ReadFile(ign)
		must(t, os.WriteFile(ign, append(b, "!big.bin\n"...), 0o644))
	})
	p.createServerEnv()
	return p
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// build makes release tag of p; bigSize > 0 gives it a fresh incompressible
// layer of that size, which no server has yet.
func (s *faultSuite) build(t testing.TB, p *remoteProject, tag string, args map[string]string, bigSize int64) {
	t.Helper()
	big := filepath.Join(p.dir, "big.bin")
	if bigSize > 0 {
		randomFile(t, big, bigSize)
		defer os.WriteFile(big, []byte("small\n"), 0o644)
	}
	p.release(tag, args)
}

// deploy builds and deploys tag as setup (not a fault): it must work.
func (s *faultSuite) deploy(t testing.TB, p *remoteProject, tag string, args map[string]string, bigSize int64) {
	t.Helper()
	s.build(t, p, tag, args, bigSize)
	m, out, err := runMage(t, p, tag, nil, "deploy")
	if err != nil {
		t.Fatalf("setup: mage deploy %s failed after %.1fs: %v\n%s", tag, m.took.Seconds(), err, out)
	}
	if p == s.p {
		s.serving = tag
	}
}

// outcome is what one fault left, and what checkSurvived expects of it.
type outcome struct {
	d   deployment
	run *mageRun // the command the fault hit
	// maySucceed: the command may also have succeeded (the fault came
	// when nothing could go wrong any more, or the product rode it out).
	maySucceed bool
	// mustSucceed: the command must have succeeded (restore, lock wait).
	mustSucceed bool
	causeHas    []string      // the one-line cause must contain one of these (lower case)
	serving     []string      // versions that may serve after the fault
	settle      time.Duration // how long the host may take to get back to one of them by itself
	next        []string      // the plain command run next: deploy, or backup
	nextTag     string
	nextServing string // the version serving after it
	// retryNext: the next command may be refused while a lease runs out,
	// up to this long after the fault.
	retryNext time.Duration
	faultAt   time.Time
	w         *faultWriter
}

// checkSurvived is how every fault is judged.
func checkSurvived(t *testing.T, o outcome) {
	t.Helper()
	host, container := o.d.service()
	url := o.d.appURL("")
	deployPath := o.d.deployPath()

	// The faulted command: one line of cause, or success where that is right.
	if m := o.run; m != nil {
		if !m.ended() {
			m.wait(3 * time.Minute)
		}
		t.Logf("faulted run (mage %s, %s) ended after %.1fs: %v; last lines:\n  %s",
			strings.Join(m.args, " "), strings.Join(m.signals, ", "), m.took.Seconds(), m.err, strings.Join(m.lastLines(6), "\n  "))
		out := m.out.String()
		switch {
		case m.err == nil && !o.maySucceed && !o.mustSucceed:
			t.Errorf("the faulted run succeeded; want it to fail with a one-line cause")
		case m.err != nil && o.mustSucceed:
			t.Errorf("the run failed, want success: %s", strings.Join(m.lastLines(3), " | "))
		case m.err != nil && m.killedBySignal():
			t.Logf("no cause to check: killed by a signal")
		case m.err != nil:
			line, ok := causeLine(out)
			if !ok {
				t.Errorf("the run failed without a one-line cause as its last line: %q", m.lastLines(3))
			} else {
				t.Logf("cause: %s", line)
				fmt.Printf("%s: cause: %s\n", t.Name(), line)
				if len(o.causeHas) > 0 {
					found := false
					for _, w := range o.causeHas {
						found = found || strings.Contains(strings.ToLower(line), w)
					}
					if !found {
						t.Errorf("cause %q names none of %q", line, o.causeHas)
					}
				}
			}
		}
	}

	// What served before still serves (the host may need a moment to put
	// it back by itself).
	settle := o.settle
	if settle == 0 {
		settle = 20 * time.Second
	}
	if v, ok := waitServing(url, settle, o.serving...); !ok {
		t.Errorf("after the fault the service answers %q within %s, want one of %q", v, settle, o.serving)
	} else {
		t.Logf("after the fault %s serves", v)
	}
	if !waitFor(15*time.Second, func() bool { return pausedContainers(host) == "" }) {
		t.Errorf("containers left paused: %s", pausedContainers(host))
	}
	if !waitFor(15*time.Second, func() bool { return len(backupLeftovers(deployPath)) == 0 }) {
		t.Errorf("an unfinished backup left %q in %s/backups", backupLeftovers(deployPath), deployPath)
	}
	o.w.stop()

	// The very next plain command works, with no manual step.
	if len(o.next) > 0 {
		var m *mageRun
		var out string
		var err error
		tries := 0
		for {
			tries++
			m, out, err = runMage(t, o.d, o.nextTag, nil, o.next...)
			if err == nil || o.retryNext == 0 || time.Since(o.faultAt) > o.retryNext {
				break
			}
			line, _ := causeLine(out)
			t.Logf("%.0fs after the fault: mage %s refused: %s; trying again", time.Since(o.faultAt).Seconds(), strings.Join(o.next, " "), line)
			time.Sleep(3 * time.Second)
		}
		cmd := "mage " + strings.Join(o.next, " ") + " (IMAGE_TAG=" + o.nextTag + ")"
		if err != nil {
			t.Errorf("recovery: %s failed after %.1fs: %s", cmd, m.took.Seconds(), strings.Join(lastLines(out, 3), " | "))
		} else {
			t.Logf("recovery: %s took %.1fs (%d tries, done %.1fs after the fault)", cmd, m.took.Seconds(), tries, time.Since(o.faultAt).Seconds())
			fmt.Printf("%s: recovery: %s took %.1fs (%d tries, done %.1fs after the fault)\n", t.Name(), cmd, m.took.Seconds(), tries, time.Since(o.faultAt).Seconds())
		}
		if strings.Contains(out, "Error: locked") {
			t.Errorf("recovery ran into the lock: %s", strings.Join(lastLines(out, 2), " | "))
		}
		if o.nextServing != "" {
			if v, ok := waitServing(url, 10*time.Second, o.nextServing); !ok {
				t.Errorf("after the recovery the service answers %q, want %s", v, o.nextServing)
			}
		}
		if p := pausedContainers(host); p != "" {
			t.Errorf("containers paused after the recovery: %s", p)
		}
		if l := backupLeftovers(deployPath); len(l) > 0 {
			t.Errorf("after the recovery %s/backups holds %q", deployPath, l)
		}
	}
	if o.w != nil {
		o.w.verify(t, url)
	}
	if t.Failed() {
		tidy(t, o, host, container)
	}
}

// tidy puts the host back in order after a fault it did not survive, so
// that the faults after it test their own thing instead of this one's
// leftovers: the lock folder of older releases of the tool, paused
// containers, unfinished backups; then the next command once more.
func tidy(t *testing.T, o outcome, host, container string) {
	t.Helper()
	deployPath := o.d.deployPath()
	if _, err := os.Stat(filepath.Join(deployPath, ".deploy.lock")); err == nil {
		t.Logf("tidy: removing the lock left behind (%s/.deploy.lock)", deployPath)
		os.RemoveAll(filepath.Join(deployPath, ".deploy.lock"))
	}
	for _, c := range strings.Fields(pausedContainers(host)) {
		t.Logf("tidy: unpausing %s", c)
		dockerOn(host, "unpause", c)
	}
	for _, l := range backupLeftovers(deployPath) {
		t.Logf("tidy: removing backups/%s", l)
		os.RemoveAll(filepath.Join(deployPath, "backups", strings.TrimSuffix(l, " (no .sha256)")))
	}
	if len(o.next) > 0 {
		_, out, err := runMage(t, o.d, o.nextTag, nil, o.next...)
		t.Logf("tidy: mage %s again: %v %q", strings.Join(o.next, " "), err, lastLines(out, 1))
	}
	_ = container
}

// linkFault cuts (resets) or silences the link at pct % of a >= 50 MB
// transfer.
func (s *faultSuite) linkFault(t *testing.T, pct int, silent bool) {
	p := s.p
	tag := s.tag("big")
	s.build(t, p, tag, nil, bigLayerSize)
	w := startFaultWriter(p.appURL(""), t.Name())
	w.waitAcked(t, 3, 20*time.Second)
	at := int64(bigLayerSize) * int64(pct) / 100
	p.proxy.Reset()
	if silent {
		p.proxy.SilenceAfter(at)
	} else {
		p.proxy.CutAfter(at)
	}
	m := startMage(t, p, tag, nil, "deploy")
	o := outcome{d: p, run: m, serving: []string{s.serving}, next: []string{"deploy"}, nextTag: tag, nextServing: tag, w: w}
	// When the link broke.
	if !waitFor(3*time.Minute, func() bool { return p.proxy.Bytes() >= at || m.ended() }) {
		t.Fatalf("the transfer never reached %d bytes", at)
	}
	o.faultAt = time.Now()
	if p.proxy.Bytes() < at {
		t.Fatalf("mage ended before %d bytes crossed (%d): %q", at, p.proxy.Bytes(), m.lastLines(4))
	}
	if silent {
		// The run hangs until its keepalive gives up; meanwhile the
		// server's lease on the lock runs out, 30 s after the last byte of
		// the run reached the server (sshd may still be handing docker load
		// what arrived before the silence): the next deploy, through a
		// fresh connection, is let in within 90 s of the silence.
		o.retryNext = 90 * time.Second
		o.causeHas = []string{"keepalive", "lost", "timeout", "timed out"}
		checkSurvivedBeforeRunEnds(t, &o)
		p.proxy.Cut() // closes the silenced connections
	} else {
		checkSurvived(t, o)
	}
	s.serving = tag
}

// checkSurvivedBeforeRunEnds checks a fault whose run still hangs: the
// recovery must not wait for it. The run's own cause is checked after.
func checkSurvivedBeforeRunEnds(t *testing.T, o *outcome) {
	t.Helper()
	run := o.run
	o.run = nil
	checkSurvived(t, *o)
	run.wait(3 * time.Minute)
	t.Logf("the silenced run ended %.1fs after it started: %v; last lines:\n  %s", run.took.Seconds(), run.err, strings.Join(run.lastLines(4), "\n  "))
	if run.err == nil {
		t.Errorf("the silenced run succeeded")
	} else if line, ok := causeLine(run.out.String()); !ok {
		t.Errorf("the silenced run failed without a one-line cause as its last line: %q", run.lastLines(3))
	} else {
		t.Logf("cause: %s", line)
	}
}

// signalFault kills (kill -9 of the process group) or interrupts (SIGINT
// to mage) a deploy during the transfer, compose up, or the health wait of
// a bad release.
func (s *faultSuite) signalFault(t *testing.T, sig, at string) {
	p := s.p
	prev := s.serving
	o := outcome{d: p, next: []string{"deploy"}, serving: []string{prev}}
	var tag string
	switch at {
	case "transfer":
		tag = s.tag("big")
		s.build(t, p, tag, nil, bigLayerSize)
		o.nextTag, o.nextServing = tag, tag
	case "compose-up":
		tag = s.tag("up")
		s.build(t, p, tag, nil, 0)
		o.serving = []string{prev, tag} // either is right once compose up began
		o.nextTag, o.nextServing = tag, tag
	case "health-wait":
		if sig == "sigint" {
			// The release to go back to takes 8 s to become healthy: more
			// than mage's 5 s after Ctrl-C, so the server must finish the
			// rollback by itself.
			prev = s.tag("slow")
			s.deploy(t, p, prev, map[string]string{"STARTUP_DELAY": "8s"}, 0)
			o.serving = []string{prev}
		}
		tag = s.tag("bad")
		s.build(t, p, tag, map[string]string{"HEALTH_FAIL": "1"}, 0)
		o.nextTag, o.nextServing = prev, prev // a bad release never deploys: redeploy the good one
		o.settle = 45 * time.Second
	}
	o.w = startFaultWriter(p.appURL(""), t.Name())
	o.w.waitAcked(t, 3, 20*time.Second)
	p.proxy.Reset()
	m := startMage(t, p, tag, nil, "deploy")
	o.run = m
	var reached bool
	switch at {
	case "transfer":
		reached = waitFor(3*time.Minute, func() bool { return p.proxy.Bytes() >= bigLayerSize*4/10 || m.ended() }) && !m.ended()
	case "compose-up":
		reached = m.waitLine("deploying ", 3*time.Minute)
	case "health-wait":
		reached = m.waitLine("waiting up to ", 3*time.Minute)
		time.Sleep(2 * time.Second) // the bad release is up and failing its health checks
	}
	if !reached {
		m.wait(time.Minute)
		t.Fatalf("mage never reached the %s (%v): %q", at, m.err, m.lastLines(5))
	}
	o.faultAt = time.Now()
	if sig == "kill9" {
		m.kill9()
	} else {
		m.interrupt(false)
	}
	checkSurvived(t, o)
	s.serving = o.nextServing
}

// backupFaults interrupts and kills a backup of 200 MB of data, on this
// machine and over SSH.
func (s *faultSuite) backupFaults(c testenv.Compose) {
	const seedSize = 200 << 20
	s.t.Run("backup-local", func(t *testing.T) {
		// This machine, with Debian's Compose v1 (as the local tests do).
		c1 := testenv.NewCompose(t, "v1")
		lp := newComposeProject(t, "fault-local", c1)
		lp.build("v1", nil)
		if err := lp.runner("v1").Deploy(t.Context()); err != nil {
			t.Fatal(err)
		}
		randomFile(t, filepath.Join(lp.deployPath(), "data", "seed.bin"), seedSize)
		for _, k := range []struct {
			name  string
			fault func(m *mageRun)
		}{
			{"sigint", func(m *mageRun) { m.interrupt(false) }},
			{"sigint-group", func(m *mageRun) { m.interrupt(true) }},
			{"kill9", func(m *mageRun) { m.kill9() }},
		} {
			s.runOn(t, "backup-local-"+k.name, func(t *testing.T) { s.backupFault(t, lp, "v1", k.fault) })
		}
	})
	p := s.p
	seed := filepath.Join(p.deployPath(), "data", "seed.bin")
	randomFile(s.t, seed, seedSize)
	for _, k := range []struct {
		name  string
		fault func(m *mageRun)
	}{
		{"sigint", func(m *mageRun) { m.interrupt(false) }},
		{"kill9", func(m *mageRun) { m.kill9() }},
	} {
		s.run("backup-ssh-"+k.name, func(t *testing.T) { s.backupFault(t, p, s.serving, k.fault) })
	}
	// The deploys after this back up small data again.
	os.Remove(seed)
	removeBackups(s.t, p.deployPath())
}

func removeBackups(t testing.TB, deployPath string) {
	entries, _ := os.ReadDir(filepath.Join(deployPath, "backups"))
	for _, e := range entries {
		os.RemoveAll(filepath.Join(deployPath, "backups", e.Name()))
	}
}

// backupFault signals `mage backup` while its staging copy exists (the
// service is paused then, or the archive is being written).
func (s *faultSuite) backupFault(t *testing.T, d deployment, serving string, fault func(m *mageRun)) {
	w := startFaultWriter(d.appURL(""), t.Name())
	w.waitAcked(t, 3, 20*time.Second)
	backups := filepath.Join(d.deployPath(), "backups")
	m := startMage(t, d, serving, nil, "backup")
	staging := func() bool {
		entries, _ := os.ReadDir(backups)
		for _, e := range entries {
			if strings.HasPrefix(e.Name(), ".staging") {
				return true
			}
		}
		return false
	}
	deadline := time.Now().Add(2 * time.Minute)
	for !staging() && !m.ended() && time.Now().Before(deadline) {
		time.Sleep(2 * time.Millisecond)
	}
	if m.ended() || !staging() {
		t.Fatalf("the backup never made its staging copy (%v): %q", m.err, m.lastLines(4))
	}
	faultAt := time.Now()
	host, _ := d.service()
	t.Logf("paused when signalled: %q", pausedContainers(host))
	fault(m)
	checkSurvived(t, outcome{d: d, run: m, serving: []string{serving}, next: []string{"backup"}, nextTag: serving,
		nextServing: serving, w: w, faultAt: faultAt})
}

// concurrentFault starts two deploys at once: one deploys, the other is
// refused in one line naming the holder.
func (s *faultSuite) concurrentFault(t *testing.T) {
	p := s.p
	tag := s.tag("two")
	s.build(t, p, tag, nil, 0)
	w := startFaultWriter(p.appURL(""), t.Name())
	history, _ := p.serverFile("deploy-history.jsonl")
	a := startMage(t, p, tag, nil, "deploy")
	b := startMage(t, p, tag, nil, "deploy")
	ea, eb := a.wait(5*time.Minute), b.wait(5*time.Minute)
	for _, m := range []*mageRun{a, b} {
		t.Logf("pid %d: %v after %.1fs:\n  %s", m.pid(), m.err, m.took.Seconds(), strings.Join(m.lastLines(4), "\n  "))
	}
	winner, loser := a, b
	if ea != nil {
		winner, loser = b, a
	}
	if (ea == nil) == (eb == nil) {
		n := 0
		if ea == nil {
			n = 2
		}
		t.Errorf("of two deploys at once %d succeeded, want exactly one", n)
	} else {
		line, ok := causeLine(loser.out.String())
		me, _ := os.Hostname()
		holder := fmt.Sprint(winner.pid())
		switch {
		case !ok:
			t.Errorf("the refused deploy has no one-line cause: %q", loser.lastLines(3))
		case !strings.Contains(line, "locked") || !strings.Contains(line, holder) || !strings.Contains(line, "@"+me):
			t.Errorf("the refusal %q does not say locked, the holder's pid %s and user@%s", line, holder, me)
		default:
			t.Logf("refused: %s", line)
		}
	}
	after, _ := p.serverFile("deploy-history.jsonl")
	if n := strings.Count(after, "\n") - strings.Count(history, "\n"); n != 1 {
		t.Errorf("the deploy history grew by %d entries, want 1", n)
	}
	checkSurvived(t, outcome{d: p, run: winner, mustSucceed: true, serving: []string{tag}, next: []string{"deploy"},
		nextTag: tag, nextServing: tag, w: w, faultAt: time.Now()})
	s.serving = tag
}

// lockWaitFault: with LOCK_WAIT both deploys succeed, one after the other.
func (s *faultSuite) lockWaitFault(t *testing.T) {
	p := s.p
	t1, t2 := s.tag("wait"), s.tag("wait")
	s.build(t, p, t1, nil, 0)
	s.build(t, p, t2, nil, 0)
	w := startFaultWriter(p.appURL(""), t.Name())
	wait := []string{"LOCK_WAIT=120s"}
	a := startMage(t, p, t1, wait, "deploy")
	b := startMage(t, p, t2, wait, "deploy")
	ea, eb := a.wait(5*time.Minute), b.wait(5*time.Minute)
	for _, m := range []*mageRun{a, b} {
		t.Logf("pid %d: %v after %.1fs:\n  %s", m.pid(), m.err, m.took.Seconds(), strings.Join(m.lastLines(3), "\n  "))
	}
	if ea != nil || eb != nil {
		t.Errorf("with LOCK_WAIT=120s: %v, %v; want both deploys to succeed", ea, eb)
	}
	last := t2
	if a.took > b.took {
		last = t1
	}
	checkSurvived(t, outcome{d: p, serving: []string{last}, next: []string{"deploy"}, nextTag: last, nextServing: last, w: w, faultAt: time.Now()})
	s.serving = last
}

// afterRestore writes to the service after a restore, restarts it, and
// hands over to checkSurvived: nothing written after the restore may be
// lost at the next restart.
func (s *faultSuite) afterRestore(t *testing.T, p *remoteProject, m *mageRun, o outcome) {
	host, container := p.service()
	if c := pausedContainers(host); c != "" {
		t.Errorf("right after the restore these containers are paused: %s", c)
	}
	if m.err == nil {
		o.w = startFaultWriter(p.appURL(""), t.Name())
		o.w.waitAcked(t, 50, 30*time.Second)
		o.w.stop()
		if out, err := dockerOn(host, "restart", container); err != nil {
			t.Errorf("docker restart %s: %v %s", container, err, out)
		}
		if v, ok := waitServing(p.appURL(""), 30*time.Second, s.serving); !ok {
			t.Errorf("after a restart the service answers %q", v)
		}
	}
	o.d, o.run, o.faultAt = p, m, time.Now()
	o.serving, o.next, o.nextTag, o.nextServing = []string{s.serving}, []string{"deploy"}, s.serving, s.serving
	checkSurvived(t, o)
}

func (s *faultSuite) takeBackup(t *testing.T, d deployment, tag string) {
	t.Helper()
	if _, out, err := runMage(t, d, tag, nil, "backup"); err != nil {
		t.Fatalf("setup: mage backup: %v\n%s", err, out)
	}
}

// restorePausedFault restores while the service is paused.
func (s *faultSuite) restorePausedFault(t *testing.T) {
	p := s.p
	s.takeBackup(t, p, s.serving)
	host, container := p.service()
	if out, err := dockerOn(host, "pause", container); err != nil {
		t.Fatalf("docker pause: %v %s", err, out)
	}
	t.Cleanup(func() { dockerOn(host, "unpause", container) })
	m, _, _ := runMage(t, p, s.serving, nil, "restore")
	s.afterRestore(t, p, m, outcome{mustSucceed: true})
}

// restoreSharedFault restores while a container of another image name
// (the same image, tagged otherwise) runs on the data folder and writes:
// restore stops it first, or refuses in one line naming it.
func (s *faultSuite) restoreSharedFault(t *testing.T) {
	p := s.p
	s.takeBackup(t, p, s.serving)
	host, _ := p.service()
	other := "fault-other:" + s.serving
	name := "fault-intruder"
	dockerOn(host, "rm", "-f", name)
	if out, err := dockerOn(host, "tag", p.env["IMAGE_NAME"]+":"+s.serving, other); err != nil {
		t.Fatalf("docker tag: %v %s", err, out)
	}
	port := fmt.Sprint(testenv.FreePort(t))
	out, err := dockerOn(host, "run", "-d", "--name", name, "-e", "APP_PORT="+port, "-p", "127.0.0.1:"+port+":"+port,
		"-v", filepath.Join(p.deployPath(), "data")+":/app/data", other)
	if err != nil {
		t.Fatalf("docker run the other container: %v %s", err, out)
	}
	t.Cleanup(func() { dockerOn(host, "rm", "-f", name); dockerOn(host, "rmi", other) })
	iw := startFaultWriter("http://127.0.0.1:"+port, "intruder")
	iw.waitAcked(t, 10, 30*time.Second)
	from := time.Now()
	m, _, _ := runMage(t, p, s.serving, nil, "restore")
	iw.stop()
	// Stopped while the data was swapped (starting it again afterwards is fine).
	events, _ := dockerOn(host, "events", "--since", unixNano(from), "--until", unixNano(time.Now()),
		"--filter", "container="+name, "--filter", "event=die", "--format", "{{.Action}}")
	running, _ := dockerOn(host, "inspect", "-f", "{{.State.Running}}", name)
	t.Logf("the other container: stopped during the restore: %t; running after it: %s", events != "", running)
	if m.err == nil && events == "" {
		t.Errorf("restore succeeded while %s ran on the data all along", name)
	}
	dockerOn(host, "rm", "-f", name)
	s.afterRestore(t, p, m, outcome{maySucceed: true, causeHas: []string{name}})
}

// smallServerFaults runs on a server of the test's own: its engine's data
// root and the deploy folder each on a small file system, and an engine
// the test may restart.
func (s *faultSuite) smallServerFaults(c testenv.Compose) {
	s.t.Run("small-server", func(t *testing.T) {
		deployFS := filepath.Join(t.TempDir(), "deploy-fs")
		testenv.LoopMount(t, deployFS, 200) // before the engine: unmounted after it stops
		e := testenv.StartEngine(t, testenv.EngineConfig{Name: "carebot-fault", Bridge: "cbflt0", CIDR: "172.31.252.1/24", DataRootMB: 500})
		p := s.newProject(t, "fault-disk", c)
		sshd := testenv.StartSSHD(t, testenv.WithEngine(e.Host), testenv.WithCompose(c))
		p.sshd, p.proxy = sshd, testenv.StartProxy(t, sshd.Addr, 0)
		p.env["DEPLOY_HOST"] = "root@" + p.proxy.Addr
		p.env["SSH_KEY"] = sshd.KeyFile
		testenv.WriteKnownHosts(t, p.env["SSH_KNOWN_HOSTS"], p.proxy.Addr, sshd.HostKey)
		p.env["DEPLOY_PATH"] = filepath.Join(deployFS, "carebot fault-disk")
		p.createServerEnv()
		d := smallServer{p, e}
		serving := "v1"
		s.deploy(t, p, serving, nil, 0)

		s.runOn(t, "disk-full-during-load", func(t *testing.T) {
			tag := s.tag("big")
			s.build(t, p, tag, nil, bigLayerSize)
			filler := testenv.Fill(t, e.DataRoot, 40<<20)
			defer os.Remove(filler)
			free, _ := testenv.FreeBytes(e.DataRoot)
			w := startFaultWriter(d.appURL(""), t.Name())
			w.waitAcked(t, 3, 20*time.Second)
			m, _, _ := runMage(t, d, tag, nil, "deploy")
			if out, err := e.Docker("image", "inspect", p.env["IMAGE_NAME"]+":"+tag); err == nil {
				t.Errorf("the server has %s after a load that ran out of space: %.80s", tag, out)
			}
			var after int64
			if !waitFor(10*time.Second, func() bool { after, _ = testenv.FreeBytes(e.DataRoot); return after >= free-8<<20 }) {
				t.Errorf("the failed load left %d MB behind on the server's data root", (free-after)>>20)
			}
			os.Remove(filler)
			checkSurvived(t, outcome{d: d, run: m, causeHas: []string{"no space"}, serving: []string{serving},
				next: []string{"deploy"}, nextTag: tag, nextServing: tag, w: w, faultAt: time.Now()})
			serving = tag
		})
		s.runOn(t, "disk-full-during-backup", func(t *testing.T) {
			seed := filepath.Join(p.deployPath(), "data", "seed.bin")
			randomFile(t, seed, 40<<20)
			defer os.Remove(seed)
			filler := testenv.Fill(t, deployFS, 20<<20)
			defer os.Remove(filler)
			w := startFaultWriter(d.appURL(""), t.Name())
			w.waitAcked(t, 3, 20*time.Second)
			m, _, _ := runMage(t, d, serving, nil, "backup")
			os.Remove(filler)
			checkSurvived(t, outcome{d: d, run: m, causeHas: []string{"no space"}, serving: []string{serving},
				next: []string{"backup"}, nextTag: serving, nextServing: serving, w: w, faultAt: time.Now()})
			os.Remove(seed)
			removeBackups(t, p.deployPath())
		})
		for _, at := range []string{"transfer", "health-wait"} {
			s.runOn(t, "dockerd-restart-during-"+at, func(t *testing.T) {
				tag := s.tag("rs")
				if at == "transfer" {
					s.build(t, p, tag, nil, bigLayerSize)
				} else {
					s.build(t, p, tag, map[string]string{"STARTUP_DELAY": "8s"}, 0)
				}
				w := startFaultWriter(d.appURL(""), t.Name())
				w.waitAcked(t, 3, 20*time.Second)
				p.proxy.Reset()
				m := startMage(t, d, tag, nil, "deploy")
				var reached bool
				if at == "transfer" {
					reached = waitFor(3*time.Minute, func() bool { return p.proxy.Bytes() >= bigLayerSize*4/10 || m.ended() }) && !m.ended()
				} else {
					reached = m.waitLine("waiting up to ", 3*time.Minute)
				}
				if !reached {
					m.wait(time.Minute)
					t.Fatalf("mage never reached the %s (%v): %q", at, m.err, m.lastLines(5))
				}
				faultAt := time.Now()
				m.signals = append(m.signals, "the server's dockerd restarted")
				if err := e.Restart(); err != nil {
					t.Fatalf("restart the server's engine: %v", err)
				}
				t.Logf("the server's engine restarted in %.1fs", time.Since(faultAt).Seconds())
				checkSurvived(t, outcome{d: d, run: m, maySucceed: true, serving: []string{serving, tag}, settle: 60 * time.Second,
					next: []string{"deploy"}, nextTag: tag, nextServing: tag, w: w, faultAt: faultAt})
				serving = tag
			})
		}
	})
}
