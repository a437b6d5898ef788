//go:build !windows

package tasks

import (
	"bytes"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/carebot/carebot/internal/deploy"
	"github.com/carebot/carebot/internal/testenv"
)

// testStack is the stack file of the swarm tests: the service on every
// node (mode: global), its port published in mode: host (this kernel has
// no IPVS, so the ingress routing mesh does not work here), stop-first
// (two tasks cannot hold one host port), and Swarm's own rollback.
const testStack = `services:
  carebot:
    image: "${IMAGE_NAME}:${IMAGE_TAG}"
    container_name: ignored_by_swarm
    env_file: .env
    environment:
      APP_PORT: "${APP_PORT}"
    ports:
      - target: 5555
        published: 5555
        protocol: tcp
        mode: host
    volumes:
      - ./data:/app/data
    deploy:
      mode: global
      update_config:
        order: stop-first
        parallelism: 0
        failure_action: rollback
        monitor: 5s
      restart_policy:
        condition: on-failure
`

// TestSwarmDeploy deploys to a two-node swarm (two servers in network
// namespaces, the first its manager) with the server's own Docker 20.10
// CLI and with the current one: v1, v2, an unhealthy v3 that is rolled
// back, status, and rollback to v1.
func TestSwarmDeploy(t *testing.T) {
	if _, err := os.Stat("/usr/bin/python3"); err != nil {
		testenv.Skip(t, "python3 asks the servers' health from inside them (apt-get install python3)")
	}
	for _, cli := range []struct{ name, docker, version string }{{"20.10", "/usr/bin/docker", "20.10."}, {"current", "/usr/local/bin/docker", ""}} {
		t.Run("cli="+cli.name, func(t *testing.T) {
			if _, err := os.Stat(cli.docker); err != nil {
				testenv.Skip(t, "no docker CLI at %s", cli.docker)
			}
			// The sessions find this CLI first on their PATH.
			bin := t.TempDir()
			if err := os.Symlink(cli.docker, filepath.Join(bin, "docker")); err != nil {
				t.Fatal(err)
			}
			want := cli.version
			if want == "" {
				out, err := exec.Command(cli.docker, "version", "--format", "{{.Client.Version}}").Output()
				if err != nil {
					t.Fatal(err)
				}
				want = strings.TrimSpace(string(out))
			}
			testSwarm(t, "PATH="+bin+":/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", want)
		})
	}
}

func testSwarm(t *testing.T, path, cliVersion string) {
	testenv.NeedEngine(t)
	f := testenv.StartFleet(t, 2, path)
	mgr, worker := f.Servers[0], f.Servers[1]
	if out, err := mgr.Docker("swarm", "init", "--advertise-addr", mgr.IP); err != nil {
		t.Fatalf("swarm init: %v\n%s", err, out)
	}
	token, err := mgr.Docker("swarm", "join-token", "-q", "worker")
	if err != nil {
		t.Fatal(err)
	}
	if out, err := worker.Docker("swarm", "join", "--token", strings.TrimSpace(token), mgr.IP+":2377"); err != nil {
		t.Fatalf("swarm join: %v\n%s", err, out)
	}
	// The CLI the deploy's SSH sessions on the manager run.
	out, err := exec.Command("ssh", "-i", f.KeyFile, "-o", "UserKnownHostsFile="+f.KnownHosts, "-o", "StrictHostKeyChecking=yes",
		"-o", "BatchMode=yes", "root@"+mgr.IP, "docker version --format {{.Client.Version}}").CombinedOutput()
	if err != nil || !strings.HasPrefix(strings.TrimSpace(string(out)), cliVersion) {
		t.Fatalf("the manager's sessions run docker %q (%v), want %s", out, err, cliVersion)
	}

	dir := t.TempDir()
	writeE2EProject(t, dir, "swarm")
	if err := os.WriteFile(filepath.Join(dir, "docker-compose.production.yml"), []byte(testStack), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, s := range f.Servers { // the bind-mounted data folder must exist on every node
		if err := os.MkdirAll(filepath.Join(s.Root, "carebot", "data"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(mgr.Root, "carebot", ".env"), []byte("BOT_TOKEN=swarm\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p := &fleetProject{remoteProject: &remoteProject{t: t, dir: dir, out: &bytes.Buffer{}, appPort: "5555"}, fleet: f}
	p.env = map[string]string{
		"IMAGE_NAME":      "carebot-swarm",
		"APP_PORT":        "5555",
		"HEALTH_TIMEOUT":  "40s",
		"DEPLOY_MODE":     "swarm",
		"DEPLOY_HOST":     "root@" + mgr.IP,
		"DEPLOY_PATH":     testenv.FleetPath + "/carebot",
		"SSH_KEY":         f.KeyFile,
		"SSH_KNOWN_HOSTS": f.KnownHosts,
		"SSH_AUTH_SOCK":   "",
	}
	ctx := context.Background()
	both := func(want string) {
		t.Helper()
		for i := range f.Servers {
			if v := p.serving(i); v != want {
				t.Errorf("node %d serves %q, want %s", i+1, v, want)
			}
		}
	}

	p.release("v1", nil)
	if err := p.runner("v1").Deploy(ctx); err != nil {
		t.Fatalf("deploy v1: %v\n%s", err, p.out)
	}
	both("v1")
	for _, w := range []string{"warning: service carebot: Swarm ignores container_name", "keeps ./data on the node it runs on", "env_file: Swarm copies its values into the service spec"} {
		if !strings.Contains(p.out.String(), w) {
			t.Errorf("no warning %q:\n%s", w, p.out)
		}
	}
	for i, s := range f.Servers {
		out, _ := s.Docker("image", "ls", "--format", "{{.Tag}}", "carebot-swarm")
		if !strings.Contains(out, "v1-") {
			t.Errorf("node %d has no v1-<id> tag: %q", i+1, out)
		}
	}

	p.release("v2", nil)
	if err := p.runner("v2").Deploy(ctx); err != nil {
		t.Fatalf("deploy v2: %v\n%s", err, p.out)
	}
	both("v2")

	// Backup: on every node that runs a task, where its ./data is.
	if _, err := p.runner("v2").Backup(ctx, false); err != nil {
		t.Fatalf("backup: %v\n%s", err, p.out)
	}
	for i, s := range f.Servers {
		got, _ := filepath.Glob(filepath.Join(s.Root, "carebot", "backups", "*-v2-*.tar.gz"))
		if len(got) != 1 {
			t.Errorf("node %d has backups %v, want one of v2", i+1, got)
		}
	}

	testSwarmRestore(t, p)
	testSwarmPinned(t, p)
	testSwarmDoctor(t, p)

	// A rebuild under the same IMAGE_TAG is a new tag for Swarm.
	p.release("v3", map[string]string{"HEALTH_FAIL": "1"})
	p.out.Reset()
	err = p.runner("v3").Deploy(ctx)
	if err == nil || !strings.Contains(err.Error(), "rolled back to v2") {
		t.Fatalf("deploy of an unhealthy v3: %v\n%s", err, p.out)
	}
	t.Logf("v3: %v", err)
	both("v2")
	h := p.history(0)
	if last := h[len(h)-1]; last.Version != "v3" || last.Result != deploy.ResultRolledBack || last.Serving != "v2" {
		t.Errorf("last history entry %+v, want v3 rolled back to v2", last)
	}

	p.out.Reset()
	if err := p.runner("v3").Status(ctx); err != nil {
		t.Errorf("status on v2: %v\n%s", err, p.out)
	}
	if s := p.out.String(); strings.Count(s, "ok v2") != 2 || !strings.Contains(s, mgr.IP) || !strings.Contains(s, worker.IP) {
		t.Errorf("status:\n%s", s)
	}

	if err := p.runner("v3").Rollback(ctx, ""); err != nil {
		t.Fatalf("rollback: %v\n%s", err, p.out)
	}
	both("v1")
	p.out.Reset()
	if err := p.runner("v3").Status(ctx); err != nil || strings.Count(p.out.String(), "ok v1") != 2 {
		t.Errorf("status after the rollback: %v\n%s", err, p.out)
	}

	// Ctrl-C while the swarm converges on v4: the manager puts v1 back by
	// itself, and the next plain deploy works.
	p.release("v4", nil)
	cctx, cancel := context.WithCancel(ctx)
	r := p.runner("v4")
	r.Out = io.MultiWriter(r.Out, onLine(func(line string) {
		if strings.Contains(line, "to converge") {
			cancel()
		}
	}))
	err = r.Deploy(cctx)
	cancel()
	if err == nil || !strings.Contains(err.Error(), "interrupted") {
		t.Fatalf("deploy interrupted while converging: %v", err)
	}
	t.Logf("interrupted: %v", err)
	deadline := time.Now().Add(2 * time.Minute)
	for (p.serving(0) != "v1" || p.serving(1) != "v1") && time.Now().Before(deadline) {
		time.Sleep(2 * time.Second)
	}
	both("v1")
	if err := p.runner("v4").Deploy(ctx); err != nil {
		t.Fatalf("the next plain deploy after the interruption: %v\n%s", err, p.out)
	}
	both("v4")

	// Cleanup on every node: the serving tag and the rollback target's
	// stay, and IMAGE_KEEP=1 more (the newest other: v3); v2 goes.
	if err := p.runner("v4", "IMAGE_KEEP=1").Cleanup(ctx, false); err != nil {
		t.Fatalf("cleanup: %v\n%s", err, p.out)
	}
	for i, s := range f.Servers {
		out, _ := s.Docker("image", "ls", "--format", "{{.Tag}}", "carebot-swarm")
		if !strings.Contains(out, "v4-") || !strings.Contains(out, "v1-") || !strings.Contains(out, "v3-") || strings.Contains(out, "v2-") {
			t.Errorf("node %d keeps %q after cleanup, want v4, v1 (the rollback target) and v3 (IMAGE_KEEP=1), not v2", i+1, strings.Fields(out))
		}
	}
	both("v4")
}

// testSwarmRestore restores the v2 backups on a global service that runs
// on both nodes: -host is needed; Ctrl-C once the worker's data are
// swapped leaves both journals to their holders (the tasks back, the data
// before); then a restore on the worker and one on the manager (its one
// journal for both).
func testSwarmRestore(t *testing.T, p *fleetProject) {
	ctx := context.Background()
	mgr, worker := p.fleet.Servers[0], p.fleet.Servers[1]
	marker := func(s *testenv.NetServer) string {
		return filepath.Join(s.Root, "carebot", "data", "written-after-the-backup")
	}
	for _, s := range p.fleet.Servers {
		if err := os.WriteFile(marker(s), []byte("new"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	settled := func(s *testenv.NetServer) bool {
		_, err := os.Stat(filepath.Join(s.Root, "carebot", ".carebot", "journal"))
		return os.IsNotExist(err)
	}

	err := p.runner("v2").Restore(ctx, "", false)
	if err == nil || !strings.Contains(err.Error(), "choose one with -host") {
		t.Fatalf("restore with tasks on two nodes and no -host: %v", err)
	}
	p.out.Reset()
	r := p.runner("v2")
	r.Host = worker.IP
	if err := r.Restore(ctx, "", true); err != nil || !strings.Contains(p.out.String(), "-v2-") {
		t.Fatalf("restore -list -host=%s: %v\n%s", worker.IP, err, p.out)
	}

	r = p.runner("v2")
	r.Host = worker.IP
	if _, err := r.Backup(ctx, true); err != nil {
		t.Fatalf("backup -download -host=%s: %v\n%s", worker.IP, err, p.out)
	}
	if got, _ := filepath.Glob(filepath.Join(p.dir, "backups", "*-v2-*.tar.gz")); len(got) != 1 {
		t.Errorf("backup -download copied %v, want one archive", got)
	}

	// Ctrl-C once the worker's data are swapped.
	cctx, cancel := context.WithCancel(ctx)
	r = p.runner("v2")
	r.Host = worker.IP
	r.Out = io.MultiWriter(r.Out, onLine(func(line string) {
		if strings.Contains(line, "putting the tasks of stack") {
			cancel()
		}
	}))
	err = r.Restore(cctx, "", false)
	cancel()
	if err == nil || !strings.Contains(err.Error(), "interrupted") {
		t.Fatalf("restore interrupted after the swap: %v\n%s", err, p.out)
	}
	t.Logf("interrupted: %v", err)
	deadline := time.Now().Add(2 * time.Minute)
	for !(settled(mgr) && settled(worker) && p.serving(1) == "v2") && time.Now().Before(deadline) {
		time.Sleep(2 * time.Second)
	}
	if !settled(mgr) || !settled(worker) || p.serving(1) != "v2" {
		t.Fatalf("after the interrupted restore: journals left (manager %v, worker %v) or the worker serves %q", !settled(mgr), !settled(worker), p.serving(1))
	}
	if _, err := os.Stat(marker(worker)); err != nil {
		t.Errorf("the worker's data before the restore did not come back: %v", err)
	}
	if out, _ := mgr.Docker("service", "inspect", "--format", "{{.Spec.TaskTemplate.Placement}}", "carebot-swarm_carebot"); strings.Contains(out, "node.id") {
		t.Errorf("a placement constraint is left: %s", out)
	}

	for i, s := range []*testenv.NetServer{worker, mgr} {
		p.out.Reset()
		r := p.runner("v2")
		r.Host = s.IP
		taken, _ := filepath.Glob(filepath.Join(s.Root, "carebot", "backups", "*Z-v2-*.tar.gz"))
		if len(taken) == 0 {
			t.Fatalf("%s has no v2 backup", s.IP)
		}
		// Named, the first: the newest is a later one (-download's, the
		// interrupted restore's safety backup).
		if err := r.Restore(ctx, filepath.Base(taken[0]), false); err != nil {
			t.Fatalf("restore on %s: %v\n%s", s.IP, err, p.out)
		}
		if _, err := os.Stat(marker(s)); !os.IsNotExist(err) {
			t.Errorf("restore %d: %s still has the file written after the backup", i, s.IP)
		}
		if got, _ := filepath.Glob(filepath.Join(s.Root, "carebot", "backups", "*-pre-restore-v2-*.tar.gz")); len(got) == 0 {
			t.Errorf("restore %d: no safety backup on %s", i, s.IP)
		}
		if !settled(s) || !settled(mgr) || p.serving(0) != "v2" || p.serving(1) != "v2" {
			t.Errorf("after the restore on %s: serving %q, %q; journals left: %v", s.IP, p.serving(0), p.serving(1), !settled(s) || !settled(mgr))
		}
	}
}

// testSwarmDoctor: doctor in swarm mode looks at the manager and reaches
// the other node as a deploy does; a node whose host key is not known
// fails it, with the fix.
func testSwarmDoctor(t *testing.T, p *fleetProject) {
	for k, v := range p.env {
		t.Setenv(k, v)
	}
	t.Setenv("IMAGE_TAG", "v2")
	swarmLine := func() string {
		var out bytes.Buffer
		_ = Doctor(context.Background(), p.dir, &out)
		for _, l := range strings.Split(out.String(), "\n") {
			if f := strings.Fields(l); len(f) > 1 && f[1] == "swarm" {
				return l
			}
		}
		t.Fatalf("doctor printed no swarm line:\n%s", out.String())
		return ""
	}
	if l := swarmLine(); !strings.HasPrefix(l, "ok") || !strings.Contains(l, "2 ready node(s)") {
		t.Errorf("doctor in swarm mode: %s", l)
	}
	// The worker's key missing from known_hosts: named, with the fix.
	kh, err := os.ReadFile(p.fleet.KnownHosts)
	if err != nil {
		t.Fatal(err)
	}
	var keep []string
	for _, l := range strings.Split(string(kh), "\n") {
		if !strings.Contains(l, p.fleet.Servers[1].IP) {
			keep = append(keep, l)
		}
	}
	only := filepath.Join(t.TempDir(), "known_hosts")
	if err := os.WriteFile(only, []byte(strings.Join(keep, "\n")), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("SSH_KNOWN_HOSTS", only)
	if l := swarmLine(); !strings.HasPrefix(l, "FAIL") || !strings.Contains(l, p.fleet.Servers[1].IP) || !strings.Contains(l, "fix:") {
		t.Errorf("doctor with the worker's host key unknown: %s", l)
	}
}

// pinnedStack is a second stack: one replica kept on the worker by a
// placement constraint, as a service with its data on one node is.
const pinnedStack = `services:
  carebot:
    image: "${IMAGE_NAME}:${IMAGE_TAG}"
    environment:
      APP_PORT: "5566"
    ports:
      - target: 5566
        published: 5566
        protocol: tcp
        mode: host
    volumes:
      - ./data:/app/data
    deploy:
      replicas: 1
      placement:
        constraints: ["node.role == worker"]
      update_config:
        order: stop-first
        failure_action: rollback
        monitor: 5s
`

// testSwarmPinned deploys the pinned stack (the image goes to the worker
// only: the manager is left out by the constraint) and restores its data
// with no -host (one node runs it): the replicated service scaled to 0
// for the swap, and back to 1.
func testSwarmPinned(t *testing.T, p *fleetProject) {
	ctx := context.Background()
	mgr, worker := p.fleet.Servers[0], p.fleet.Servers[1]
	for _, s := range p.fleet.Servers {
		if err := os.MkdirAll(filepath.Join(s.Root, "pinned", "data"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(mgr.Root, "pinned", ".env"), []byte("BOT_TOKEN=pinned\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(p.dir, "pinned.yml")
	if err := os.WriteFile(file, []byte(pinnedStack), 0o644); err != nil {
		t.Fatal(err)
	}
	env := []string{"STACK_NAME=pinned", "COMPOSE_FILE=" + file, "DEPLOY_PATH=" + testenv.FleetPath + "/pinned", "APP_PORT=5566"}
	p.out.Reset()
	if err := p.runner("v2", env...).Deploy(ctx); err != nil {
		t.Fatalf("deploy the pinned stack: %v\n%s", err, p.out)
	}
	if !strings.Contains(p.out.String(), "left out by the placement constraints of carebot: "+mgr.IP) || strings.Contains(p.out.String(), "["+mgr.IP+"] sending") {
		t.Errorf("the manager was not left out of the pinned stack's delivery:\n%s", p.out)
	}
	if v := servedOn(worker, "5566"); v != "v2" {
		t.Fatalf("the worker serves %q on 5566, want v2", v)
	}
	if _, err := p.runner("v2", env...).Backup(ctx, false); err != nil {
		t.Fatalf("backup of the pinned stack: %v\n%s", err, p.out)
	}
	marker := filepath.Join(worker.Root, "pinned", "data", "after")
	if err := os.WriteFile(marker, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	p.out.Reset()
	if err := p.runner("v2", env...).Restore(ctx, "", false); err != nil {
		t.Fatalf("restore of the pinned stack: %v\n%s", err, p.out)
	}
	if _, err := os.Stat(marker); !os.IsNotExist(err) {
		t.Errorf("the restore left the file written after the backup")
	}
	if out, _ := mgr.Docker("service", "inspect", "--format", "{{.Spec.Mode.Replicated.Replicas}}", "pinned_carebot"); strings.TrimSpace(out) != "1" || servedOn(worker, "5566") != "v2" {
		t.Errorf("after the restore: replicas %q, the worker serves %q", strings.TrimSpace(out), servedOn(worker, "5566"))
	}
	if out, err := mgr.Docker("stack", "rm", "pinned"); err != nil {
		t.Logf("stack rm pinned: %v %s", err, out)
	}
}
