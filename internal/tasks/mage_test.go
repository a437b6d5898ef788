package tasks

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/carebot/carebot/internal/deploy"
	"github.com/carebot/carebot/internal/testenv"
)

// These tests run mage as a child process, as a user does: the magefile's
// targets and dependencies, each target's Runner entry point, and what one
// process shares between its targets.

var (
	mageOnce sync.Once
	mageBin  string
	mageErr  error
)

// mageBinary compiles this repository's magefile into a mage binary, once
// per test binary. It goes to a folder of this checkout's own (other
// checkouts on the machine compile theirs), under a temporary name first.
func mageBinary(t testing.TB) string {
	t.Helper()
	mageOnce.Do(func() {
		root := repoRoot(t)
		sum := sha256.Sum256([]byte(root))
		dir := filepath.Join(os.TempDir(), "carebot-test-mage-"+hex.EncodeToString(sum[:4]))
		if mageErr = os.MkdirAll(dir, 0o755); mageErr != nil {
			return
		}
		tmp := filepath.Join(dir, fmt.Sprintf("mage-%d", os.Getpid()))
		cmd := exec.Command("go", "run", "mage.go", "-compile", tmp)
		cmd.Dir = root
		if out, err := cmd.CombinedOutput(); err != nil {
			mageErr = fmt.Errorf("go run mage.go -compile: %v\n%s", err, out)
			return
		}
		mageBin = filepath.Join(dir, "mage")
		mageErr = os.Rename(tmp, mageBin)
	})
	if mageErr != nil {
		t.Fatal(mageErr)
	}
	return mageBin
}

// mage runs the compiled mage in the project's folder with its settings,
// IMAGE_TAG=tag, and args (targets and their flags); it returns what mage
// printed.
func (p *remoteProject) mage(tag string, args ...string) (string, error) {
	p.t.Helper()
	cmd := exec.Command(mageBinary(p.t), args...)
	cmd.Dir = p.dir
	cmd.Env = append(append(os.Environ(), envList(p.env)...), "IMAGE_TAG="+tag)
	out, err := cmd.CombinedOutput()
	p.t.Logf("mage %s:\n%s", strings.Join(args, " "), out)
	return string(out), err
}

// One mage process opens one connection to the server, and every target
// it runs uses it: backup, then deploy (which names that backup in the
// history), then status. A connection that breaks is not dialled again.
func TestOneConnectionPerRun(t *testing.T) {
	p := newRemoteProject(t, "conns", testenv.NewCompose(t, "v2"))
	p.createServerEnv()
	ctx := context.Background()
	p.release("v1", nil)
	if err := p.runner("v1").Deploy(ctx); err != nil {
		t.Fatal(err)
	}
	postRecord(t, p, "to back up")
	v2 := p.release("v2", nil)

	before := p.proxy.Conns()
	out, err := p.mage("v2", "backup", "deploy", "status")
	if err != nil {
		t.Fatalf("mage backup deploy status: %v", err)
	}
	if n := p.proxy.Conns() - before; n != 1 {
		t.Errorf("mage backup deploy status opened %d connections to the server, want 1", n)
	}
	if !strings.Contains(out, "backed up ") || !strings.Contains(out, "version v2") {
		t.Errorf("mage did not back up, then show v2 serving:\n%s", out)
	}
	if v := p.health(); v != "v2" {
		t.Fatalf("after mage deploy the server answers %q", v)
	}
	if got := serverImageID(t, p.env["IMAGE_NAME"]+":v2"); got != v2.ID {
		t.Errorf("server image ID %s, built %s", got, v2.ID)
	}
	history, _ := p.serverFile("deploy-history.jsonl")
	entries := deploy.ParseHistory([]byte(history))
	list := backups(t, p)
	if len(entries) != 2 || len(list) != 1 || entries[1].Version != "v2" || entries[1].Backup != list[0].Name {
		t.Errorf("history %+v, backups %+v: want the v2 deploy to name the one backup this run took", entries, list)
	}

	// The link breaks mid-run: the next task fails, and nothing redials.
	r := p.runner("v2")
	if err := r.Status(ctx); err != nil {
		t.Fatal(err)
	}
	before = p.proxy.Conns()
	p.proxy.Cut()
	err = r.Status(ctx)
	t.Logf("status after the cut: %v", err)
	if err == nil {
		t.Error("status over a cut connection succeeded")
	}
	if _, err := r.Backup(ctx, false); err == nil {
		t.Error("backup over a cut connection succeeded")
	}
	if n := p.proxy.Conns() - before; n != 0 {
		t.Errorf("%d connections were dialled after the cut, want none", n)
	}
}
