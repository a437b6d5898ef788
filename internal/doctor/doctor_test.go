package doctor

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/carebot/carebot/internal/engine"
	"github.com/carebot/carebot/internal/host"
	"github.com/carebot/carebot/internal/testenv"
)

func TestDoctorRunSkipsDependents(t *testing.T) {
	var ran []string
	check := func(name string, s Status, needs ...string) Check {
		return Check{Name: name, Needs: needs, Run: func(context.Context) Result {
			ran = append(ran, name)
			return Result{Status: s, Detail: name + " detail\nsecond line", Fix: map[Status]string{Fail: "do this"}[s]}
		}}
	}
	var out bytes.Buffer
	rs := Run(context.Background(), &out, []Check{
		check("a", OK),
		check("b", Fail, "a"),
		check("c", OK, "b"),      // b failed: skipped
		check("d", OK, "c"),      // c skipped: skipped too
		check("e", Warn, "a"),    // a warning passes
		check("f", OK, "e"),      //
		check("g", OK, "nobody"), // an unknown need is not met
	})
	if got := strings.Join(ran, ","); got != "a,b,e,f" {
		t.Errorf("ran %s, want a,b,e,f", got)
	}
	if Failed(rs) != 1 {
		t.Errorf("Failed = %d, want 1", Failed(rs))
	}
	lines := strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n")
	if len(lines) != 7 {
		t.Fatalf("%d lines for 7 checks:\n%s", len(lines), out.String())
	}
	if want := "FAIL  b             b detail — fix: do this"; lines[1] != want {
		t.Errorf("line 2 = %q, want %q", lines[1], want)
	}
	if want := "skip  c             needs b"; lines[2] != want {
		t.Errorf("line 3 = %q, want %q", lines[2], want)
	}
}

func TestDoctorGo(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module x\n\ngo 1.26.8\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	goCmd := func(out string, err error) Cmd {
		return func(_ context.Context, _, name string, args ...string) (string, error) {
			if name != "go" || strings.Join(args, " ") != "env GOVERSION" {
				t.Errorf("ran %s %v", name, args)
			}
			return out, err
		}
	}
	ctx := context.Background()
	tests := []struct {
		out    string
		err    error
		status Status
		detail string
	}{
		{"go1.26.8\n", nil, OK, "go1.26.8 (go.mod asks for 1.26.8)"},
		{"go1.27rc1\n", nil, OK, "go1.27rc1 (go.mod asks for 1.26.8)"},
		{"go1.26.2\n", nil, Fail, "go1.26.2, but go.mod asks for 1.26.8"},
		{"go1.9\n", nil, Fail, "go1.9, but go.mod asks for 1.26.8"},
		{"", &exec.Error{Name: "go", Err: exec.ErrNotFound}, Fail, "go is not on PATH"},
	}
	for _, tt := range tests {
		r := Go(ctx, goCmd(tt.out, tt.err), dir)
		if r.Status != tt.status || r.Detail != tt.detail {
			t.Errorf("go %q %v: %s %q", tt.out, tt.err, r.Status, r.Detail)
		}
		if r.Status == Fail && !strings.Contains(r.Fix, "install Go 1.26.8 or later") {
			t.Errorf("fix %q", r.Fix)
		}
	}
}

func TestDoctorMage(t *testing.T) {
	ctx := context.Background()
	missing := func(string) (string, error) { return "", exec.ErrNotFound }
	r := Mage(ctx, nil, missing)
	if r.Status != Warn || !strings.Contains(r.Fix, "go run mage.go") || !strings.Contains(r.Fix, "go install github.com/magefile/mage@v1.17.2") {
		t.Errorf("no mage: %+v", r)
	}
	found := func(string) (string, error) { return "/go/bin/mage", nil }
	run := func(context.Context, string, string, ...string) (string, error) {
		return "Mage Build Tool v1.17.2\nBuild Date: 2025-01-01\nCommit: abc\nbuilt with: go1.26.8\n", nil
	}
	if r := Mage(ctx, run, found); r.Status != OK || r.Detail != "mage v1.17.2 (/go/bin/mage)" {
		t.Errorf("mage: %+v", r)
	}
}

func TestDoctorWSLAndDistro(t *testing.T) {
	ctx := context.Background()
	if r := WSL(ctx, func(context.Context) (string, error) {
		return "", errors.New("wsl.exe not found: WSL is not installed")
	}); r.Status != Fail || !strings.Contains(r.Fix, "wsl --install") {
		t.Errorf("no WSL: %+v", r)
	}
	if r := WSL(ctx, func(context.Context) (string, error) {
		return "Default Distribution: Ubuntu\nDefault Version: 1\n", nil
	}); r.Status != Warn {
		t.Errorf("WSL 1: %+v", r)
	}
	if r := WSL(ctx, func(context.Context) (string, error) {
		return "Default Distribution: Ubuntu\nDefault Version: 2\n", nil
	}); r.Status != OK {
		t.Errorf("WSL 2: %+v", r)
	}
	has := func(ds []string, n string) bool {
		for _, d := range ds {
			if strings.EqualFold(d, n) {
				return true
			}
		}
		return false
	}
	list := func(ds ...string) func(context.Context) ([]string, error) {
		return func(context.Context) ([]string, error) { return ds, nil }
	}
	if r := Distro(ctx, list("Ubuntu-22.04", "docker-desktop"), "ubuntu-22.04", has); r.Status != OK {
		t.Errorf("installed: %+v", r)
	}
	r := Distro(ctx, list("Debian", "docker-desktop"), "Ubuntu-22.04", has)
	if r.Status != Fail || r.Detail != "WSL_DISTRO=Ubuntu-22.04 is not installed (installed: Debian, docker-desktop)" ||
		r.Fix != "wsl --install -d Ubuntu-22.04, or set WSL_DISTRO to one of: Debian, docker-desktop" {
		t.Errorf("missing: %+v", r)
	}
	if r := Distro(ctx, list(), "Ubuntu-22.04", has); r.Status != Fail || !strings.Contains(r.Detail, "no WSL distro") {
		t.Errorf("none: %+v", r)
	}
}

func TestDoctorWSLDocker(t *testing.T) {
	ctx := context.Background()
	out := func(s string) func(context.Context, string) (string, error) {
		return func(_ context.Context, script string) (string, error) {
			if script != WSLDockerScript {
				t.Errorf("ran %q", script)
			}
			return s, nil
		}
	}
	const v = "docker=Docker version 24.0.7, build 24.0.7-0ubuntu2~22.04.1\n"
	tests := []struct {
		out         string
		sudo        bool
		status      Status
		detail, fix string
	}{
		{"docker=\n", false, Fail, "docker is not installed in Ubuntu-22.04", `wsl -d Ubuntu-22.04 -u root -e sh -c "apt-get update && apt-get install -y docker.io docker-compose"`},
		{v + "user=ana\ngroup=yes\nsudo=no\n", false, OK, "Docker version 24.0.7, build 24.0.7-0ubuntu2~22.04.1 in Ubuntu-22.04; ana is in the docker group", ""},
		{v + "user=root\ngroup=no\nsudo=yes\n", false, OK, "; running as root", ""},
		{v + "user=ana\ngroup=no\nsudo=no\n", false, Warn, "ana is not in the docker group", "usermod -aG docker ana, then wsl --terminate Ubuntu-22.04 (or set DOCKER_SUDO=1)"},
		{v + "user=ana\ngroup=no\nsudo=yes\n", true, OK, "ana uses sudo -n", ""},
		{v + "user=ana\ngroup=no\nsudo=no\n", true, Fail, "DOCKER_SUDO=1, but sudo asks ana for a password", "set DOCKER_SUDO=0"},
	}
	for _, tt := range tests {
		r := WSLDocker(ctx, out(tt.out), "Ubuntu-22.04", tt.sudo)
		if r.Status != tt.status || !strings.Contains(r.Detail, tt.detail) || !strings.Contains(r.Fix, tt.fix) {
			t.Errorf("%q sudo=%v: %s %q fix %q", tt.out, tt.sudo, r.Status, r.Detail, r.Fix)
		}
	}
	failing := func(context.Context, string) (string, error) { return "", errors.New("exit status 255") }
	if r := WSLDocker(ctx, failing, "Ubuntu-22.04", false); r.Status != Fail {
		t.Errorf("bash fails: %+v", r)
	}
}

func TestDoctorEngine(t *testing.T) {
	ctx := context.Background()
	down := func(context.Context) (string, string, error) {
		return "", "", &engine.ConnectError{Where: "unix:///x.sock", Reason: "connection refused", Fix: "start it"}
	}
	if r := Engine(ctx, down); r.Status != Fail || r.Detail != "no Docker engine answers at unix:///x.sock (connection refused)" || r.Fix != "start it" {
		t.Errorf("down: %+v", r)
	}
	up := func(context.Context) (string, string, error) {
		return "28.0.1 (API 1.48)", "WSL distro Ubuntu-22.04", nil
	}
	if r := Engine(ctx, up); r.Status != OK || r.Detail != "Docker 28.0.1 (API 1.48) at WSL distro Ubuntu-22.04" {
		t.Errorf("up: %+v", r)
	}
}

func TestDoctorPort(t *testing.T) {
	ctx := context.Background()
	free := func(int) error { return nil }
	taken := func(int) error { return errors.New("in use") }
	users := func(us ...engine.PortUser) func(context.Context, int) ([]engine.PortUser, error) {
		return func(context.Context, int) ([]engine.PortUser, error) { return us, nil }
	}
	ours := func(u engine.PortUser) (string, bool) { return "our " + u.Name, u.Image == "carebot:v1" }
	tests := []struct {
		free   func(int) error
		users  func(context.Context, int) ([]engine.PortUser, error)
		status Status
		detail string
	}{
		{free, nil, OK, "APP_PORT 5555 is free"},
		{taken, users(engine.PortUser{Name: "carebot_production", Image: "carebot:v1"}), OK, "APP_PORT 5555 is used by our carebot_production"},
		{taken, users(engine.PortUser{Name: "web", Image: "nginx:latest"}), Fail, "APP_PORT 5555 is in use by container web (nginx:latest)"},
		{taken, users(), Fail, "APP_PORT 5555 is in use on this machine by another program"},
		{taken, nil, Fail, "APP_PORT 5555 is in use on this machine (the engine is down, so it is not known by what)"},
	}
	for _, tt := range tests {
		r := Port(ctx, "APP_PORT", 5555, tt.free, tt.users, ours)
		if r.Status != tt.status || r.Detail != tt.detail {
			t.Errorf("got %s %q, want %s %q", r.Status, r.Detail, tt.status, tt.detail)
		}
		if r.Status == Fail && !strings.Contains(r.Fix, "set APP_PORT to a free port") {
			t.Errorf("fix %q", r.Fix)
		}
	}
}

func TestDoctorLocalEnv(t *testing.T) {
	dir := t.TempDir()
	if r := LocalEnv(dir, "/p/.env"); r.Status != OK || !strings.Contains(r.Detail, "first deploy writes the app's settings in /p/.env") {
		t.Errorf("before the first deploy: %+v", r)
	}
	if r := LocalEnv(dir, ""); r.Status != Warn {
		t.Errorf("no .env anywhere: %+v", r)
	}
	if err := os.WriteFile(filepath.Join(dir, ".env"), []byte("BOT_TOKEN=secret-value\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if r := LocalEnv(dir, ""); r.Status != OK || strings.Contains(r.Line(), "secret-value") {
		t.Errorf("deployed: %+v", r)
	}
}

// startAgent serves an in-memory ssh-agent holding keys on a unix socket.
func startAgent(t *testing.T, keys ...any) string {
	t.Helper()
	kr := agent.NewKeyring()
	for _, k := range keys {
		if err := kr.Add(agent.AddedKey{PrivateKey: k}); err != nil {
			t.Fatal(err)
		}
	}
	dir, err := os.MkdirTemp("", "agent") // short: a socket path has a length limit
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close(); os.RemoveAll(dir) })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { _ = agent.ServeAgent(kr, c); c.Close() }()
		}
	}()
	return sock
}

// TestDoctorKey: the key check says what host.DialSSH will offer, or stops
// where it stops, in its words.
func TestDoctorKey(t *testing.T) {
	t.Setenv("HOME", t.TempDir()) // no default keys
	dir := t.TempDir()
	plainKey := testenv.NewKey(t)
	plain := plainKey.WriteFile(t, filepath.Join(dir, "plain"), "")
	pub := plainKey.Public
	lockedKey := testenv.NewKey(t)
	locked := lockedKey.WriteFile(t, filepath.Join(dir, "locked"), "open sesame")
	lockedPriv := lockedKey.Private
	if err := os.WriteFile(filepath.Join(dir, "pub"), ssh.MarshalAuthorizedKey(pub), 0o644); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "no-such-key")
	tests := []struct {
		name        string
		sc          host.SSHConfig
		status      Status
		detail, fix string
	}{
		{name: "missing", sc: host.SSHConfig{KeyFile: missing}, status: Fail, detail: "SSH_KEY " + missing + " does not exist", fix: "set SSH_KEY to your private key file"},
		{name: "plain", sc: host.SSHConfig{KeyFile: plain}, status: OK, detail: "the login offers SSH_KEY " + plain + " (ED25519 " + ssh.FingerprintSHA256(pub) + ")"},
		{name: "encrypted, no passphrase", sc: host.SSHConfig{KeyFile: locked}, status: Fail, detail: "SSH_KEY " + locked + " is encrypted", fix: "set SSH_KEY_PASSPHRASE"},
		{name: "encrypted, the agent holds it", sc: host.SSHConfig{KeyFile: locked, AgentSocket: startAgent(t, lockedPriv)}, status: OK, detail: "the login offers SSH_KEY " + locked},
		// The deploy would stop there: so does the doctor (it used to warn).
		{name: "encrypted, the agent does not hold it", sc: host.SSHConfig{KeyFile: locked, AgentSocket: startAgent(t)}, status: Fail, detail: "is encrypted", fix: "load it into ssh-agent"},
		{name: "encrypted, passphrase", sc: host.SSHConfig{KeyFile: locked, Passphrase: "open sesame"}, status: OK},
		{name: "wrong passphrase", sc: host.SSHConfig{KeyFile: locked, Passphrase: "nope"}, status: Fail, detail: "SSH_KEY_PASSPHRASE does not decrypt"},
		{name: "public key", sc: host.SSHConfig{KeyFile: filepath.Join(dir, "pub")}, status: Fail, fix: "not the .pub"},
		{name: "nothing", status: Fail, detail: "no SSH key", fix: "set SSH_KEY"},
	}
	for _, tt := range tests {
		r := Key(tt.sc)
		if r.Status != tt.status || !strings.Contains(r.Detail, tt.detail) || !strings.Contains(r.Fix, tt.fix) {
			t.Errorf("%s: %s %q fix %q", tt.name, r.Status, r.Detail, r.Fix)
		}
	}
	// With no SSH_KEY, the default files are looked at.
	home := t.TempDir()
	t.Setenv("HOME", home)
	if err := os.MkdirAll(filepath.Join(home, ".ssh"), 0o700); err != nil {
		t.Fatal(err)
	}
	testenv.NewKey(t).WriteFile(t, filepath.Join(home, ".ssh", "id_ed25519"), "")
	if r := Key(host.SSHConfig{}); r.Status != OK || !strings.Contains(r.Detail, "id_ed25519") {
		t.Errorf("default key: %+v", r)
	}
}

// sshServer is an in-process SSH server on 127.0.0.1 that shows its host
// key and lets in the user key authorized (nil: nobody), to no shell.
func sshServer(t *testing.T, authorized ssh.PublicKey) (addr string, hostKey ssh.PublicKey) {
	t.Helper()
	signer := testenv.NewKey(t).Signer(t)
	cfg := &ssh.ServerConfig{PublicKeyCallback: func(_ ssh.ConnMetadata, k ssh.PublicKey) (*ssh.Permissions, error) {
		if authorized != nil && bytes.Equal(k.Marshal(), authorized.Marshal()) {
			return nil, nil
		}
		return nil, errors.New("no")
	}}
	cfg.AddHostKey(signer)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, chans, reqs, err := ssh.NewServerConn(c, cfg)
				if err != nil {
					return
				}
				go ssh.DiscardRequests(reqs)
				for ch := range chans {
					ch.Reject(ssh.Prohibited, "no")
				}
			}()
		}
	}()
	return l.Addr().String(), signer.PublicKey()
}

// sshConfig reaches addr as the deploy would, with known_hosts file.
func sshConfig(t *testing.T, addr, file string) host.SSHConfig {
	t.Helper()
	h, p, _ := net.SplitHostPort(addr)
	port, err := strconv.Atoi(p)
	if err != nil {
		t.Fatal(err)
	}
	return host.SSHConfig{User: "doctor", Host: h, Port: port, KnownHosts: file, ConnectTimeout: 5 * time.Second}
}

func TestDoctorReach(t *testing.T) {
	ctx := context.Background()
	addr, _ := sshServer(t, nil)
	if r := Reach(ctx, addr, 5*time.Second); r.Status != OK || !strings.Contains(r.Detail, "SSH-2.0-Go") {
		t.Errorf("ssh server: %+v", r)
	}
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	closed := l.Addr().String()
	l.Close()
	if r := Reach(ctx, closed, 2*time.Second); r.Status != Fail || !strings.Contains(r.Detail, "connection refused") || !strings.Contains(r.Fix, "sshd runs") {
		t.Errorf("nothing listening: %+v", r)
	}
}

func TestDoctorKnownHosts(t *testing.T) {
	ctx := context.Background()
	addr, key := sshServer(t, nil)
	dir := t.TempDir()
	file := filepath.Join(dir, "known_hosts")
	fp := "ED25519 " + ssh.FingerprintSHA256(key)
	sc := sshConfig(t, addr, file)

	r, known := KnownHosts(ctx, sc)
	if r.Status != Fail || known || !strings.Contains(r.Detail, "is not known ("+fp+")") || !strings.Contains(r.Fix, "SSH_ACCEPT_NEW=1") {
		t.Errorf("unknown (no file): %+v", r)
	}
	sc.AcceptNew = true
	r, _ = KnownHosts(ctx, sc)
	if r.Status != Warn || !strings.Contains(r.Fix, "the next deploy records it") || !strings.Contains(r.Detail, fp) {
		t.Errorf("unknown with SSH_ACCEPT_NEW=1: %+v", r)
	}
	if _, err := os.Stat(file); err == nil {
		t.Error("the check wrote known_hosts")
	}

	write := func(k ssh.PublicKey) {
		if err := os.WriteFile(file, []byte(knownhosts.Line([]string{knownhosts.Normalize(addr)}, k)+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(key)
	sc.AcceptNew = false
	if r, known := KnownHosts(ctx, sc); r.Status != OK || !known {
		t.Errorf("known: %+v", r)
	}
	other := testenv.NewKey(t).Public
	write(other)
	sc.AcceptNew = true
	r, known = KnownHosts(ctx, sc)
	if r.Status != Fail || known || !strings.Contains(r.Detail, "has CHANGED") || !strings.Contains(r.Fix, "ssh-keygen -R") {
		t.Errorf("changed (even with SSH_ACCEPT_NEW=1): %+v", r)
	}
}

// TestDoctorAgreesWithDeploy runs the doctor's SSH checks and the deploy's
// login (host.DialSSH) on the same servers, keys and known_hosts: where the
// login fails, the doctor's failing check says the very same thing.
func TestDoctorAgreesWithDeploy(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	t.Setenv("HOME", dir) // no default keys
	userKey := filepath.Join(dir, "id")
	user := testenv.NewKey(t)
	user.WriteFile(t, userKey, "")
	userPub := user.Public
	locked := testenv.NewKey(t).WriteFile(t, filepath.Join(dir, "locked"), "open sesame")
	addr, hostKey := sshServer(t, userPub)
	other := testenv.NewKey(t).Public
	knownHosts := func(addr string, k ssh.PublicKey) string {
		f := filepath.Join(t.TempDir(), "known_hosts")
		if k != nil {
			if err := os.WriteFile(f, []byte(knownhosts.Line([]string{addr}, k)+"\n"), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		return f
	}
	refusing, refusingKey := sshServer(t, nil)
	closed := func() string {
		l, _ := net.Listen("tcp", "127.0.0.1:0")
		defer l.Close()
		return l.Addr().String()
	}()

	tests := []struct {
		name  string
		sc    host.SSHConfig
		check func(host.SSHConfig) Result // the doctor's check that must fail as the login does
		want  string
	}{
		{"unknown host", withKey(sshConfig(t, addr, knownHosts(addr, nil)), userKey), hostKeyCheck(ctx), "is not known"},
		{"changed key", withKey(sshConfig(t, addr, knownHosts(addr, other)), userKey), hostKeyCheck(ctx), "has CHANGED"},
		{"unreachable", withKey(sshConfig(t, closed, knownHosts(closed, nil)), userKey), hostKeyCheck(ctx), "cannot reach"},
		{"encrypted key", withKey(sshConfig(t, addr, knownHosts(addr, hostKey)), locked), Key, "is encrypted"},
		{"refused key", withKey(sshConfig(t, refusing, knownHosts(refusing, refusingKey)), userKey), func(sc host.SSHConfig) Result {
			r, s := Login(ctx, sc)
			if s != nil {
				s.Close()
			}
			return r
		}, "refused our key(s) (tried SSH_KEY " + userKey},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, err := host.DialSSH(ctx, tc.sc)
			if err == nil {
				s.Close()
				t.Fatal("the login succeeded")
			}
			r := tc.check(tc.sc)
			if r.Status != Fail || r.Detail+": "+r.Fix != err.Error() || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("doctor: %s\ndeploy: %v\nwant both to say %q", r.Line(), err, tc.want)
			}
		})
	}

	// The key check named the very keys the refused login tried.
	refused := tests[len(tests)-1].sc
	if _, err := host.DialSSH(ctx, refused); err == nil || !strings.Contains(err.Error(), "(tried "+strings.TrimPrefix(Key(refused).Detail, "the login offers ")+")") {
		t.Errorf("key check: %q; login: %v", Key(refused).Detail, err)
	}

	// Where the login works, so does every check, and the key the doctor
	// names is the one the login used.
	sc := withKey(sshConfig(t, addr, knownHosts(addr, hostKey)), userKey)
	if r := Key(sc); r.Status != OK || !strings.Contains(r.Detail, "SSH_KEY "+userKey+" (ED25519 "+ssh.FingerprintSHA256(userPub)+")") {
		t.Errorf("key: %+v", r)
	}
	if r, known := KnownHosts(ctx, sc); r.Status != OK || !known {
		t.Errorf("known_hosts: %+v", r)
	}
	r, s := Login(ctx, sc)
	if r.Status != OK || s == nil {
		t.Fatalf("login: %+v", r)
	}
	s.Close()
}

func withKey(sc host.SSHConfig, keyFile string) host.SSHConfig {
	sc.KeyFile = keyFile
	return sc
}

func hostKeyCheck(ctx context.Context) func(host.SSHConfig) Result {
	return func(sc host.SSHConfig) Result {
		r, _ := KnownHosts(ctx, sc)
		return r
	}
}

// fakeHost answers commands by the first rule whose key the command contains.
type fakeHost struct {
	rules []rule
	dial  error
}

type rule struct {
	contains, out string
	fail          bool
}

func (f *fakeHost) Exec(_ context.Context, cmd string, _ io.Reader, stdout, stderr io.Writer) error {
	for _, r := range f.rules {
		if strings.Contains(cmd, r.contains) {
			if r.fail {
				fmt.Fprint(stderr, r.out)
				return errors.New("exit status 1")
			}
			fmt.Fprint(stdout, r.out)
			return nil
		}
	}
	return fmt.Errorf("unexpected command %q", cmd)
}

func (f *fakeHost) DialContext(context.Context, string, string) (net.Conn, error) {
	if f.dial != nil {
		return nil, f.dial
	}
	a, b := net.Pipe()
	b.Close()
	return a, nil
}

func (f *fakeHost) String() string { return "ubuntu@server:22" }
func (f *fakeHost) Close() error   { return nil }

var _ host.Host = (*fakeHost)(nil)

// The engine check speaks the Engine API as a deploy does: here through
// dial-stdio on this machine, to the engine DOCKER_HOST names.
func TestDoctorServerEngineAnswers(t *testing.T) {
	testenv.NeedEngine(t)
	r := ServerEngine(context.Background(), host.Local{})
	if r.Status != OK || !strings.HasPrefix(r.Detail, "Docker ") || !strings.Contains(r.Detail, "(API 1.") {
		t.Errorf("engine: %+v", r)
	}
}

func TestDoctorServerChecks(t *testing.T) {
	ctx := context.Background()
	// What dial-stdio prints on the server when it cannot reach the engine.
	h := &fakeHost{rules: []rule{{contains: "docker system dial-stdio", fail: true, out: "permission denied while trying to connect to the Docker daemon socket at unix:///var/run/docker.sock\n"}}}
	if r := ServerEngine(ctx, h); r.Status != Fail || !strings.Contains(r.Fix, "usermod -aG docker") || !strings.Contains(r.Detail, "docker on ubuntu@server:22: permission denied") {
		t.Errorf("engine, no permission: %+v", r)
	}
	h = &fakeHost{rules: []rule{{contains: "docker system dial-stdio", fail: true, out: "bash: docker: command not found\n"}}}
	if r := ServerEngine(ctx, h); r.Status != Fail || !strings.Contains(r.Fix, "apt-get install docker.io") {
		t.Errorf("engine, not installed: %+v", r)
	}
	h = &fakeHost{rules: []rule{{contains: "docker system dial-stdio", fail: true, out: "sudo: a password is required\n"}}}
	if r := ServerEngine(ctx, h); r.Status != Fail || !strings.Contains(r.Fix, "passwordless sudo") {
		t.Errorf("engine, sudo wants a password: %+v", r)
	}

	// What deploy.DetectCompose's one command prints: Compose's version, then which one answered.
	for out, want := range map[string]string{
		"Docker Compose version v2.24.5\ndocker compose\n":               "docker compose 2.24.5 on ubuntu@server:22",
		"docker-compose version 1.29.2, build unknown\ndocker-compose\n": "docker-compose 1.29.2 on ubuntu@server:22",
	} {
		if r := Compose(ctx, &fakeHost{rules: []rule{{contains: "compose", out: out}}}); r.Status != OK || r.Detail != want {
			t.Errorf("compose: %+v", r)
		}
	}
	if r := Compose(ctx, &fakeHost{rules: []rule{{contains: "compose", out: ""}}}); r.Status != Fail || !strings.Contains(r.Fix, "docker-compose-plugin") {
		t.Errorf("no compose: %+v", r)
	}

	df := func(availKB int64) *fakeHost {
		return &fakeHost{rules: []rule{{contains: "df -Pk", out: fmt.Sprintf("/dev/sda1 41152736 20000000 %d 50%% /\n", availKB)}}}
	}
	for kb, want := range map[int64]Status{20 << 20: OK, 1 << 20: Warn, 100 << 10: Fail} {
		r := Disk(ctx, df(kb), "/home/ubuntu/carebot-production")
		if r.Status != want || !strings.Contains(r.Detail, "free on / at /home/ubuntu/carebot-production") {
			t.Errorf("disk %d kB: %+v", kb, r)
		}
	}
	if r := Disk(ctx, df(20<<20), "/x"); r.Detail != "21.5 GB free on / at /x (ubuntu@server:22)" {
		t.Errorf("disk detail %q", r.Detail)
	}

	present := &fakeHost{rules: []rule{{contains: "/srv/cb/.env", out: "y\n"}}}
	if r := ServerEnv(ctx, present, "/srv/cb"); r.Status != OK || !strings.Contains(r.Detail, "contents not shown") {
		t.Errorf(".env present: %+v", r)
	}
	absent := &fakeHost{rules: []rule{{contains: "/srv/cb/.env", out: "n\n"}}}
	if r := ServerEnv(ctx, absent, "/srv/cb"); r.Status != Fail || !strings.Contains(r.Fix, "mkdir -p /srv/cb && nano /srv/cb/.env") {
		t.Errorf(".env absent: %+v", r)
	}

	ours := func(_, image string) bool { return strings.HasPrefix(image, "carebot:") }
	if r := ServerPort(ctx, &fakeHost{dial: errors.New("refused")}, 5555, ours); r.Status != OK {
		t.Errorf("port free: %+v", r)
	}
	if r := ServerPort(ctx, &fakeHost{rules: []rule{{contains: "publish=5555", out: "carebot_production\tcarebot:v1\n"}}}, 5555, ours); r.Status != OK || !strings.Contains(r.Detail, "served by our carebot_production") {
		t.Errorf("port ours: %+v", r)
	}
	if r := ServerPort(ctx, &fakeHost{rules: []rule{{contains: "publish=5555", out: "web\tnginx\n"}}}, 5555, ours); r.Status != Fail || !strings.Contains(r.Detail, "by container web (nginx)") {
		t.Errorf("port other container: %+v", r)
	}
	if r := ServerPort(ctx, &fakeHost{rules: []rule{{contains: "publish=5555", out: ""}}}, 5555, ours); r.Status != Fail || !strings.Contains(r.Detail, "another program") {
		t.Errorf("port other program: %+v", r)
	}
}

func TestDoctorVersionLess(t *testing.T) {
	for _, tt := range []struct {
		a, b string
		less bool
	}{
		{"1.26.2", "1.26.8", true}, {"1.26.8", "1.26.8", false}, {"1.27", "1.26.8", false},
		{"1.26", "1.26.0", false}, {"1.9", "1.26", true}, {"1.27rc1", "1.26.8", false},
	} {
		if got := versionLess(tt.a, tt.b); got != tt.less {
			t.Errorf("versionLess(%s, %s) = %v", tt.a, tt.b, got)
		}
	}
}

func TestTools(t *testing.T) {
	r := Tools(context.Background(), host.Local{})
	if r.Status != OK || !strings.Contains(r.Detail, "flock, timeout, sha256sum, tar") {
		t.Errorf("Tools on this machine = %+v", r)
	}
	bin := t.TempDir() // a PATH with only sh: everything else is missing
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip(err)
	}
	if err := os.Symlink(sh, filepath.Join(bin, "sh")); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", bin)
	r = Tools(context.Background(), host.Local{})
	if r.Status != Fail || !strings.Contains(r.Detail, "flock, timeout, sha256sum, tar missing") || r.Fix != "install them there: sudo apt-get install util-linux coreutils tar" {
		t.Errorf("Tools without them = %+v", r)
	}
}
