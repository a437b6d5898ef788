package doctor

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/carebot/carebot/internal/text"

	"github.com/carebot/carebot/internal/engine"
)

// Cmd runs a program in dir and returns what it printed (both streams):
// os/exec in the doctor, a fake in tests.
type Cmd func(ctx context.Context, dir, name string, args ...string) (string, error)

// Exec is the real Cmd.
func Exec(ctx context.Context, dir, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// Go checks that the go command is there and at least the version go.mod
// in dir asks for.
func Go(ctx context.Context, run Cmd, dir string) Result {
	want := goModVersion(filepath.Join(dir, "go.mod"))
	out, err := run(ctx, dir, "go", "env", "GOVERSION")
	install := "install Go " + orLatest(want) + " from https://go.dev/dl/ and put it on PATH"
	if err != nil {
		if errors.Is(err, exec.ErrNotFound) {
			return Result{Status: Fail, Detail: "go is not on PATH", Fix: install}
		}
		return Result{Status: Fail, Detail: "go env GOVERSION: " + lastLine(out, err), Fix: install}
	}
	have := strings.TrimSpace(out)
	if want == "" {
		return Result{Status: OK, Detail: have}
	}
	if versionLess(strings.TrimPrefix(have, "go"), want) {
		return Result{Status: Fail, Detail: fmt.Sprintf("%s, but go.mod asks for %s", have, want),
			Fix: install + " (or let GOTOOLCHAIN=auto fetch it)"}
	}
	return Result{Status: OK, Detail: fmt.Sprintf("%s (go.mod asks for %s)", have, want)}
}

func orLatest(v string) string {
	if v == "" {
		return "(latest)"
	}
	return v + " or later"
}

// goModVersion is the version on go.mod's "go" line, or "".
func goModVersion(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if f := strings.Fields(s.Text()); len(f) == 2 && f[0] == "go" {
			return f[1]
		}
	}
	return ""
}

// versionLess compares Go versions such as "1.26.8" and "1.26" (numbers
// only; a pre-release suffix such as rc1 counts as its release).
func versionLess(a, b string) bool {
	pa, pb := versionParts(a), versionParts(b)
	for i := 0; i < 3; i++ {
		if pa[i] != pb[i] {
			return pa[i] < pb[i]
		}
	}
	return false
}

func versionParts(v string) [3]int {
	var p [3]int
	for i, s := range strings.SplitN(v, ".", 3) {
		end := strings.IndexFunc(s, func(r rune) bool { return r < '0' || r > '9' })
		if end >= 0 {
			s = s[:end]
		}
		p[i], _ = strconv.Atoi(s)
	}
	return p
}

// MageVersion is the mage that go.mod pins, for the install hint.
const MageVersion = "v1.17.2"

// Mage looks for an installed mage. None is a warning: `go run mage.go`
// builds it from go.mod.
func Mage(ctx context.Context, run Cmd, look func(string) (string, error)) Result {
	path, err := look("mage")
	if err != nil {
		return Result{Status: Warn, Detail: "mage is not installed",
			Fix: "nothing needed: go run mage.go <target> does the same; for a `mage` command: go install github.com/magefile/mage@" + MageVersion}
	}
	out, err := run(ctx, "", path, "-version")
	if err != nil {
		return Result{Status: Warn, Detail: path + " -version failed: " + lastLine(out, err),
			Fix: "reinstall it: go install github.com/magefile/mage@" + MageVersion + ", or use go run mage.go <target>"}
	}
	v := text.FirstLine(out)
	for _, f := range strings.Fields(out) {
		if strings.HasPrefix(f, "v") && strings.Count(f, ".") == 2 {
			v = f
			break
		}
	}
	return Result{Status: OK, Detail: fmt.Sprintf("mage %s (%s)", v, path)}
}

// WSL checks that WSL answers (`wsl --status`), and that it runs distros
// as WSL 2 by default.
func WSL(ctx context.Context, status func(context.Context) (string, error)) Result {
	out, err := status(ctx)
	if err != nil {
		return Result{Status: Fail, Detail: text.FirstLine(err.Error()),
			Fix: "install or update WSL2 in an administrator PowerShell: wsl --install (or wsl --update), then restart Windows"}
	}
	for _, l := range strings.Split(out, "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "Default Version" && strings.TrimSpace(v) == "1" {
			return Result{Status: Warn, Detail: "WSL is installed, but new distros default to WSL 1",
				Fix: "wsl --set-default-version 2 (and wsl --set-version <distro> 2 for an existing one)"}
		}
	}
	return Result{Status: OK, Detail: "WSL answers (wsl --status)"}
}

// Distro checks that the distro named by WSL_DISTRO is installed.
func Distro(ctx context.Context, list func(context.Context) ([]string, error), distro string, has func([]string, string) bool) Result {
	ds, err := list(ctx)
	if err != nil {
		return Result{Status: Fail, Detail: text.FirstLine(err.Error()), Fix: "install WSL2: wsl --install in an administrator PowerShell"}
	}
	if has(ds, distro) {
		return Result{Status: OK, Detail: "WSL_DISTRO=" + distro + " is installed"}
	}
	if len(ds) == 0 {
		return Result{Status: Fail, Detail: "no WSL distro is installed",
			Fix: fmt.Sprintf("wsl --install -d %s, then install Docker in it (README: From Windows)", distro)}
	}
	return Result{Status: Fail, Detail: fmt.Sprintf("WSL_DISTRO=%s is not installed (installed: %s)", distro, strings.Join(ds, ", ")),
		Fix: fmt.Sprintf("wsl --install -d %s, or set WSL_DISTRO to one of: %s", distro, strings.Join(ds, ", "))}
}

// WSLDockerScript looks at docker inside the distro: installed, the user
// in the docker group, sudo without a password. One key=value per line.
const WSLDockerScript = `command -v docker >/dev/null 2>&1 || { echo docker=; exit 0; }
echo "docker=$(docker --version)"
echo "user=$(id -un)"
if id -nG | tr ' ' '\n' | grep -qx docker; then echo group=yes; else echo group=no; fi
if sudo -n true >/dev/null 2>&1; then echo sudo=yes; else echo sudo=no; fi`

// WSLDocker runs WSLDockerScript in the distro (run: a bitfield/script
// pipeline through wsl) and says what stands between the user and the
// engine there.
func WSLDocker(ctx context.Context, run func(ctx context.Context, script string) (string, error), distro string, sudo bool) Result {
	out, err := run(ctx, WSLDockerScript)
	if err != nil {
		return Result{Status: Fail, Detail: fmt.Sprintf("cannot run bash in %s: %s", distro, lastLine(out, err)),
			Fix: fmt.Sprintf("open it once (wsl -d %s) to finish its setup", distro)}
	}
	kv := map[string]string{}
	for _, l := range strings.Split(out, "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(l), "="); ok {
			kv[k] = v
		}
	}
	root := fmt.Sprintf("wsl -d %s -u root -e", distro)
	user := kv["user"]
	switch {
	case kv["docker"] == "":
		return Result{Status: Fail, Detail: "docker is not installed in " + distro,
			Fix: fmt.Sprintf(`%s sh -c "apt-get update && apt-get install -y docker.io docker-compose"`, root)}
	case sudo && kv["sudo"] != "yes":
		return Result{Status: Fail, Detail: fmt.Sprintf("DOCKER_SUDO=1, but sudo asks %s for a password in %s", user, distro),
			Fix: fmt.Sprintf("%s usermod -aG docker %s, wsl --terminate %s, and set DOCKER_SUDO=0 (or allow %s passwordless sudo)", root, user, distro, user)}
	case sudo, user == "root", kv["group"] == "yes":
		how := user + " is in the docker group"
		if sudo {
			how = user + " uses sudo -n"
		} else if user == "root" {
			how = "running as root"
		}
		return Result{Status: OK, Detail: fmt.Sprintf("%s in %s; %s", kv["docker"], distro, how)}
	}
	return Result{Status: Warn, Detail: fmt.Sprintf("%s in %s, but %s is not in the docker group", kv["docker"], distro, user),
		Fix: fmt.Sprintf("%s usermod -aG docker %s, then wsl --terminate %s (or set DOCKER_SUDO=1)", root, user, distro)}
}

// Engine reports on the build engine: connect reaches it and returns its
// version and where it answers. A *engine.ConnectError carries the fix.
func Engine(ctx context.Context, connect func(context.Context) (version, where string, err error)) Result {
	v, where, err := connect(ctx)
	if err != nil {
		var ce *engine.ConnectError
		if errors.As(err, &ce) {
			return Result{Status: Fail, Detail: fmt.Sprintf("no Docker engine answers at %s (%s)", ce.Where, ce.Reason), Fix: ce.Fix}
		}
		return Result{Status: Fail, Detail: text.FirstLine(err.Error()), Fix: "check DOCKER_HOST, or unset it for the default socket"}
	}
	return Result{Status: OK, Detail: fmt.Sprintf("Docker %s at %s", v, where)}
}

// LocalEnv checks the .env of a deploy to this machine: the first deploy
// writes the app's settings of the project's (projectEnv, "" when there is
// none), not the tool's. Never read.
func LocalEnv(deployPath, projectEnv string) Result {
	p := filepath.Join(deployPath, ".env")
	if _, err := os.Stat(p); err == nil {
		return Result{Status: OK, Detail: p + " exists (contents not shown)"}
	}
	if projectEnv != "" {
		return Result{Status: OK, Detail: p + " not there yet: the first deploy writes the app's settings in " + projectEnv + " (mode 0600)"}
	}
	return Result{Status: Warn, Detail: "no .env in the project nor in " + deployPath + ": the app starts without its settings (BOT_TOKEN)",
		Fix: "cp .env.example .env, and fill in BOT_TOKEN"}
}

// Port checks that port (the setting named setting) is free on this
// machine's loopback, or held by one of our own containers (ours says which,
// and why that is fine).
func Port(ctx context.Context, setting string, port int, free func(int) error,
	users func(context.Context, int) ([]engine.PortUser, error), ours func(engine.PortUser) (string, bool)) Result {
	if err := free(port); err == nil {
		return Result{Status: OK, Detail: fmt.Sprintf("%s %d is free", setting, port)}
	}
	fix := fmt.Sprintf("stop what listens there, or set %s to a free port", setting)
	if users == nil {
		return Result{Status: Fail, Detail: fmt.Sprintf("%s %d is in use on this machine (the engine is down, so it is not known by what)", setting, port), Fix: fix}
	}
	us, err := users(ctx, port)
	if err != nil {
		return Result{Status: Fail, Detail: fmt.Sprintf("%s %d is in use on this machine (%s)", setting, port, text.FirstLine(err.Error())), Fix: fix}
	}
	var names []string
	for _, u := range us {
		if why, ok := ours(u); ok {
			return Result{Status: OK, Detail: fmt.Sprintf("%s %d is used by %s", setting, port, why)}
		}
		names = append(names, fmt.Sprintf("container %s (%s)", u.Name, u.Image))
	}
	if len(names) == 0 {
		return Result{Status: Fail, Detail: fmt.Sprintf("%s %d is in use on this machine by another program", setting, port), Fix: fix}
	}
	return Result{Status: Fail, Detail: fmt.Sprintf("%s %d is in use by %s", setting, port, strings.Join(names, ", ")),
		Fix: fmt.Sprintf("stop it (docker stop %s), or set %s to a free port", us[0].Name, setting)}
}

// lastLine is the last line a failed command printed, or its error.
func lastLine(out string, err error) string {
	out = strings.TrimSpace(strings.ReplaceAll(out, "\r", ""))
	if i := strings.LastIndexByte(out, '\n'); i >= 0 {
		out = strings.TrimSpace(out[i+1:])
	}
	if out != "" {
		return out
	}
	if err != nil {
		return err.Error()
	}
	return ""
}
