//go:build !windows

package host

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/carebot/carebot/internal/shell"

	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/carebot/carebot/internal/testenv"
)

// testServer is an in-process SSH server on 127.0.0.1 that runs "exec"
// requests with /bin/sh -c, serves the sftp subsystem and direct-tcpip.
type testServer struct {
	addr     string // 127.0.0.1:port
	hostKeys []ssh.Signer

	// ignoreGlobal makes the server read global requests (keepalives)
	// and never answer them, like a server that has stopped responding.
	ignoreGlobal bool
	noSFTP       bool // refuse the sftp subsystem

	mu    sync.Mutex
	conns []net.Conn
	procs map[*exec.Cmd]bool
}

type serverOpt func(*testServer)

func withIgnoreGlobal() serverOpt { return func(s *testServer) { s.ignoreGlobal = true } }
func withoutSFTP() serverOpt      { return func(s *testServer) { s.noSFTP = true } }

// withECDSA adds an ECDSA host key, offered by x/crypto before ED25519.
func withECDSA(t *testing.T) serverOpt {
	return func(s *testServer) {
		priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		s.hostKeys = append(s.hostKeys, mustSigner(t, priv))
	}
}

func startServer(t *testing.T, authorized ssh.PublicKey, opts ...serverOpt) *testServer {
	t.Helper()
	s := &testServer{hostKeys: []ssh.Signer{testenv.NewKey(t).Signer(t)}, procs: map[*exec.Cmd]bool{}}
	for _, o := range opts {
		o(s)
	}
	cfg := &ssh.ServerConfig{
		PublicKeyCallback: func(_ ssh.ConnMetadata, key ssh.PublicKey) (*ssh.Permissions, error) {
			if bytes.Equal(key.Marshal(), authorized.Marshal()) {
				return nil, nil
			}
			return nil, errors.New("not authorized")
		},
	}
	for _, k := range s.hostKeys {
		cfg.AddHostKey(k)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s.addr = ln.Addr().String()
	go func() {
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.conns = append(s.conns, nc)
			s.mu.Unlock()
			go s.serveConn(nc, cfg)
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		s.mu.Lock()
		defer s.mu.Unlock()
		for _, c := range s.conns {
			c.Close()
		}
		for p := range s.procs {
			_ = syscall.Kill(-p.Process.Pid, syscall.SIGKILL)
		}
	})
	return s
}

// waitIdle waits until every command the server started has exited and
// been reaped, the event tests wait for before they look at what the
// commands left behind.
func (s *testServer) waitIdle(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		s.mu.Lock()
		n := len(s.procs)
		s.mu.Unlock()
		if n == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d command(s) still run on the server 5s later", n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// cut resets every connection, as a server that reboots or a firewall
// that forgets the connection does.
func (s *testServer) cut() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.conns {
		if tc, ok := c.(*net.TCPConn); ok {
			_ = tc.SetLinger(0) // close with RST
		}
		c.Close()
	}
}

// hostKey is the server's ED25519 host key.
func (s *testServer) hostKey() ssh.PublicKey { return s.hostKeys[0].PublicKey() }

func (s *testServer) serveConn(nc net.Conn, cfg *ssh.ServerConfig) {
	_, chans, reqs, err := ssh.NewServerConn(nc, cfg)
	if err != nil {
		nc.Close()
		return
	}
	go func() {
		for r := range reqs {
			if !s.ignoreGlobal && r.WantReply {
				_ = r.Reply(false, nil)
			}
		}
	}()
	for nch := range chans {
		switch nch.ChannelType() {
		case "session":
			go s.serveSession(nch)
		case "direct-tcpip":
			go serveDirect(nch)
		default:
			_ = nch.Reject(ssh.UnknownChannelType, "not here")
		}
	}
}

func (s *testServer) serveSession(nch ssh.NewChannel) {
	ch, reqs, err := nch.Accept()
	if err != nil {
		return
	}
	var proc *exec.Cmd
	var mu sync.Mutex
	kill := func(sig syscall.Signal) {
		mu.Lock()
		defer mu.Unlock()
		if proc != nil {
			_ = syscall.Kill(-proc.Process.Pid, sig)
		}
	}
	for req := range reqs {
		switch req.Type {
		case "exec":
			var p struct{ Command string }
			if ssh.Unmarshal(req.Payload, &p) != nil {
				_ = req.Reply(false, nil)
				continue
			}
			cmd := exec.Command("/bin/sh", "-c", p.Command)
			cmd.Stdout, cmd.Stderr = ch, ch.Stderr()
			cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
			cmd.WaitDelay = time.Second
			// Like sshd, feed stdin without waiting for its end when the
			// command exits (os/exec would, with cmd.Stdin = ch).
			stdin, err := cmd.StdinPipe()
			if err != nil {
				_ = req.Reply(false, nil)
				continue
			}
			if err := cmd.Start(); err != nil {
				_ = req.Reply(false, nil)
				continue
			}
			// Registered before the reply: once the client's Start
			// returns, waitIdle sees the command.
			mu.Lock()
			proc = cmd
			mu.Unlock()
			s.mu.Lock()
			s.procs[cmd] = true
			s.mu.Unlock()
			go func() {
				_, _ = io.Copy(stdin, ch)
				stdin.Close()
			}()
			_ = req.Reply(true, nil)
			go func() {
				_ = cmd.Wait()
				s.mu.Lock()
				delete(s.procs, cmd)
				s.mu.Unlock()
				code := cmd.ProcessState.ExitCode()
				if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
					code = 128 + int(ws.Signal())
				}
				_, _ = ch.SendRequest("exit-status", false, ssh.Marshal(struct{ Status uint32 }{uint32(code)}))
				ch.Close()
			}()
		case "subsystem":
			var p struct{ Name string }
			if ssh.Unmarshal(req.Payload, &p) != nil || p.Name != "sftp" || s.noSFTP {
				_ = req.Reply(false, nil)
				continue
			}
			_ = req.Reply(true, nil)
			go func() {
				srv, err := sftp.NewServer(ch)
				if err == nil {
					_ = srv.Serve()
					srv.Close()
				}
				ch.Close()
			}()
		case "signal":
			var p struct{ Signal string }
			if ssh.Unmarshal(req.Payload, &p) == nil {
				sig := map[string]syscall.Signal{"TERM": syscall.SIGTERM, "INT": syscall.SIGINT, "KILL": syscall.SIGKILL}[p.Signal]
				if sig != 0 {
					kill(sig)
				}
			}
		default:
			if req.WantReply {
				_ = req.Reply(false, nil)
			}
		}
	}
	kill(syscall.SIGKILL) // the client closed the channel
}

func serveDirect(nch ssh.NewChannel) {
	var p struct {
		Host     string
		Port     uint32
		OrigHost string
		OrigPort uint32
	}
	if err := ssh.Unmarshal(nch.ExtraData(), &p); err != nil {
		_ = nch.Reject(ssh.ConnectionFailed, "bad request")
		return
	}
	c, err := net.DialTimeout("tcp", net.JoinHostPort(p.Host, strconv.Itoa(int(p.Port))), 2*time.Second)
	if err != nil {
		_ = nch.Reject(ssh.ConnectionFailed, err.Error())
		return
	}
	ch, reqs, err := nch.Accept()
	if err != nil {
		c.Close()
		return
	}
	go ssh.DiscardRequests(reqs)
	go func() {
		_, _ = io.Copy(c, ch)
		_ = c.(*net.TCPConn).CloseWrite()
	}()
	_, _ = io.Copy(ch, c)
	ch.Close()
	c.Close()
}

func mustSigner(t *testing.T, priv any) ssh.Signer {
	t.Helper()
	s, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func writeKnownHosts(t *testing.T, lines ...string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "known_hosts")
	if err := os.WriteFile(p, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// fixture: a server that accepts one user key, and a config that trusts it.
type fixture struct {
	srv *testServer
	cfg SSHConfig
}

func newFixture(t *testing.T, opts ...serverOpt) fixture {
	t.Helper()
	k := testenv.NewKey(t)
	srv := startServer(t, k.Public, opts...)
	return fixture{srv: srv, cfg: SSHConfig{
		User: "tester", Host: "127.0.0.1", Port: portOf(t, srv.addr),
		KeyFile:        k.TempFile(t, ""),
		KnownHosts:     writeKnownHosts(t, knownhosts.Line([]string{srv.addr}, srv.hostKey())),
		ConnectTimeout: 5 * time.Second,
	}}
}

func dialOK(t *testing.T, cfg SSHConfig) *SSH {
	t.Helper()
	s, err := DialSSH(context.Background(), cfg)
	if err != nil {
		t.Fatalf("DialSSH: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func dialErr(t *testing.T, cfg SSHConfig) string {
	t.Helper()
	s, err := DialSSH(context.Background(), cfg)
	if err == nil {
		s.Close()
		t.Fatal("DialSSH succeeded, want an error")
	}
	msg := err.Error()
	t.Log(msg)
	if strings.Contains(msg, "\n") {
		t.Errorf("error is more than one line: %q", msg)
	}
	return msg
}

func wantContains(t *testing.T, got string, wants ...string) {
	t.Helper()
	for _, w := range wants {
		if !strings.Contains(got, w) {
			t.Errorf("%q\ndoes not contain %q", got, w)
		}
	}
}

func TestSSHExec(t *testing.T) {
	f := newFixture(t)
	s := dialOK(t, f.cfg)
	ctx := context.Background()
	if got, want := s.String(), "tester@"+f.srv.addr; got != want {
		t.Errorf("String() = %q, want %q", got, want)
	}

	var out, errOut bytes.Buffer
	if err := s.Exec(ctx, "echo hello; echo oops >&2", nil, &out, &errOut); err != nil {
		t.Fatal(err)
	}
	if out.String() != "hello\n" || errOut.String() != "oops\n" {
		t.Errorf("stdout %q stderr %q", out.String(), errOut.String())
	}

	// Run hands one buffer to stdout and stderr: no race between the two.
	got, err := Run(ctx, s, "for i in 1 2 3 4 5 6 7 8; do echo out$i; echo err$i >&2; done; exit 1")
	if err == nil || !strings.Contains(got, "out8") {
		t.Errorf("Run = %q, %v", got, err)
	}

	// The command line reaches the shell verbatim; Quote makes one word.
	got, err = Run(ctx, s, "printf '%s|' "+shell.Join("it's", "a b", "$HOME"))
	if err != nil || got != "it's|a b|$HOME|" {
		t.Errorf("Run = %q, %v", got, err)
	}

	// stdin is streamed, well past the channel window.
	big := bytes.Repeat([]byte("0123456789abcdef"), 3<<20/16)
	out.Reset()
	if err := s.Exec(ctx, "wc -c", bytes.NewReader(big), &out, nil); err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(out.String()) != strconv.Itoa(len(big)) {
		t.Errorf("wc -c = %q, want %d", out.String(), len(big))
	}

	// A command that exits without reading its input does not hang Exec.
	pr, pw := io.Pipe()
	defer pw.Close()
	if err := s.Exec(ctx, "true", pr, nil, nil); err != nil {
		t.Errorf("Exec with unread stdin: %v", err)
	}

	err = s.Exec(ctx, "echo failing >&2; exit 3", nil, nil, nil)
	var ee *ssh.ExitError
	if !errors.As(err, &ee) || ee.ExitStatus() != 3 {
		t.Fatalf("Exec exit 3: %v (%T), want *ssh.ExitError with status 3", err, err)
	}
	_, err = Run(ctx, s, "echo failing >&2; exit 3")
	var ce *CommandError
	if !errors.As(err, &ce) || ce.ExitStatus() != 3 {
		t.Fatalf("Run exit 3: %v, want CommandError with ExitStatus 3", err)
	}
	if err.Error() != "echo: failing" {
		t.Errorf("CommandError = %q", err.Error())
	}
}

func TestSSHStdinReadError(t *testing.T) {
	f := newFixture(t)
	s := dialOK(t, f.cfg)
	dir := t.TempDir()
	target := filepath.Join(dir, "out")
	in := io.MultiReader(strings.NewReader("partial"), &failingReader{})
	err := s.Exec(context.Background(), "cat > "+shell.Quote(target)+" && echo done > "+shell.Quote(target+".done"), in, nil, nil)
	if err == nil || !strings.Contains(err.Error(), "reading input") {
		t.Fatalf("Exec = %v, want a reading input error", err)
	}
	f.srv.waitIdle(t)
	if _, err := os.Stat(target + ".done"); err == nil {
		t.Error("the command saw EOF after a failed read and carried on")
	}
}

type failingReader struct{}

func (*failingReader) Read([]byte) (int, error) { return 0, errors.New("disk on fire") }

func TestSSHHashedKnownHosts(t *testing.T) {
	f := newFixture(t)
	line := knownhosts.HashHostname(knownhosts.Normalize(f.srv.addr)) + " " +
		strings.TrimSpace(string(ssh.MarshalAuthorizedKey(f.srv.hostKey())))
	f.cfg.KnownHosts = writeKnownHosts(t, "# comment", line)
	s := dialOK(t, f.cfg)
	if out, err := Run(context.Background(), s, "echo ok"); err != nil || out != "ok\n" {
		t.Fatalf("Run = %q, %v", out, err)
	}
}

func TestSSHKnownKeyOfPreferredTypeOnly(t *testing.T) {
	// The server has ECDSA and ED25519 keys; only ED25519 is known. x/crypto
	// on its own would pick ECDSA and call it a changed key.
	f := newFixture(t, withECDSA(t))
	dialOK(t, f.cfg)
}

func TestSSHUnknownHostRefused(t *testing.T) {
	f := newFixture(t)
	f.cfg.KnownHosts = filepath.Join(t.TempDir(), "nothing", "known_hosts")
	msg := dialErr(t, f.cfg)
	wantContains(t, msg, "host key of ["+strings.Replace(f.srv.addr, ":", "]:", 1)+" is not known",
		"ED25519 "+ssh.FingerprintSHA256(f.srv.hostKey()), "SSH_ACCEPT_NEW=1", f.cfg.KnownHosts)
	if _, err := os.Stat(filepath.Dir(f.cfg.KnownHosts)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("something was recorded: %v", err)
	}
	// An existing file that does not mention the host: the same, untouched.
	f.cfg.KnownHosts = writeKnownHosts(t, "example.org "+strings.TrimSpace(string(ssh.MarshalAuthorizedKey(f.srv.hostKey()))))
	before, _ := os.ReadFile(f.cfg.KnownHosts)
	wantContains(t, dialErr(t, f.cfg), "is not known")
	if after, _ := os.ReadFile(f.cfg.KnownHosts); !bytes.Equal(before, after) {
		t.Errorf("known_hosts changed:\n%s", after)
	}
}

func TestSSHAcceptNew(t *testing.T) {
	f := newFixture(t)
	dir := filepath.Join(t.TempDir(), ".ssh")
	f.cfg.KnownHosts = filepath.Join(dir, "known_hosts")
	f.cfg.AcceptNew = true
	var log bytes.Buffer
	f.cfg.Log = &log
	s := dialOK(t, f.cfg)
	s.Close()

	norm := "[" + strings.Replace(f.srv.addr, ":", "]:", 1)
	wantContains(t, log.String(), "recorded host key of "+norm+" (ED25519 "+ssh.FingerprintSHA256(f.srv.hostKey())+") in "+f.cfg.KnownHosts)
	data, err := os.ReadFile(f.cfg.KnownHosts)
	if err != nil {
		t.Fatal(err)
	}
	if want := knownhosts.Line([]string{f.srv.addr}, f.srv.hostKey()) + "\n"; string(data) != want {
		t.Errorf("known_hosts = %q, want %q", data, want)
	}
	if st, _ := os.Stat(dir); st.Mode().Perm() != 0o700 {
		t.Errorf("dir mode %v", st.Mode().Perm())
	}
	if st, _ := os.Stat(f.cfg.KnownHosts); st.Mode().Perm() != 0o600 {
		t.Errorf("file mode %v", st.Mode().Perm())
	}

	// Now known: a connection without AcceptNew passes and records nothing.
	f.cfg.AcceptNew = false
	log.Reset()
	dialOK(t, f.cfg)
	if after, _ := os.ReadFile(f.cfg.KnownHosts); !bytes.Equal(data, after) || log.Len() != 0 {
		t.Errorf("second connect changed known_hosts (%q) or logged %q", after, log.String())
	}

	// A file without a final newline gets one before the new line.
	f2 := newFixture(t)
	os.WriteFile(f2.cfg.KnownHosts, []byte("example.org "+strings.TrimSpace(string(ssh.MarshalAuthorizedKey(f.srv.hostKey())))), 0o600)
	f2.cfg.AcceptNew = true
	dialOK(t, f2.cfg)
	data, _ = os.ReadFile(f2.cfg.KnownHosts)
	if lines := strings.Split(strings.TrimSpace(string(data)), "\n"); len(lines) != 2 {
		t.Errorf("known_hosts:\n%s", data)
	}
}

func TestSSHChangedKeyRefused(t *testing.T) {
	f := newFixture(t)
	other := testenv.NewKey(t).Public
	f.cfg.KnownHosts = writeKnownHosts(t, "# first", "example.org "+strings.TrimSpace(string(ssh.MarshalAuthorizedKey(other))),
		knownhosts.Line([]string{f.srv.addr}, other))
	f.cfg.AcceptNew = true // must not matter
	before, _ := os.ReadFile(f.cfg.KnownHosts)
	msg := dialErr(t, f.cfg)
	norm := "[" + strings.Replace(f.srv.addr, ":", "]:", 1)
	wantContains(t, msg, "host key of "+norm+" has CHANGED", "now ED25519 "+ssh.FingerprintSHA256(f.srv.hostKey()),
		f.cfg.KnownHosts+":3 has another", "man-in-the-middle", "ssh-keygen -R '"+norm+"'")
	if after, _ := os.ReadFile(f.cfg.KnownHosts); !bytes.Equal(before, after) {
		t.Errorf("known_hosts changed:\n%s", after)
	}

	// Only a key of another type is known (the server offers no such key):
	// also refused, like OpenSSH.
	priv, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	f.cfg.KnownHosts = writeKnownHosts(t, knownhosts.Line([]string{f.srv.addr}, mustSigner(t, priv).PublicKey()))
	wantContains(t, dialErr(t, f.cfg), "has CHANGED")
}

func TestSSHWrongUserKey(t *testing.T) {
	f := newFixture(t)
	f.cfg.KeyFile = testenv.NewKey(t).TempFile(t, "")
	msg := dialErr(t, f.cfg)
	wantContains(t, msg, "ssh: tester@"+f.srv.addr+" refused our key(s)", "SSH_KEY "+f.cfg.KeyFile, "authorized_keys")
}

func TestSSHKeyFileProblems(t *testing.T) {
	f := newFixture(t)
	f.cfg.KeyFile = filepath.Join(t.TempDir(), "nope")
	wantContains(t, dialErr(t, f.cfg), "SSH_KEY "+f.cfg.KeyFile+" does not exist")

	f.cfg.KeyFile = filepath.Join(t.TempDir(), "id.pub")
	os.WriteFile(f.cfg.KeyFile, ssh.MarshalAuthorizedKey(testenv.NewKey(t).Public), 0o600)
	wantContains(t, dialErr(t, f.cfg), "is not a private key", "not the .pub")
}

func TestSSHEncryptedKey(t *testing.T) {
	const pass = "correct horse battery"
	k := testenv.NewKey(t)
	srv := startServer(t, k.Public)
	cfg := SSHConfig{
		User: "tester", Host: "127.0.0.1", Port: portOf(t, srv.addr),
		KeyFile:    k.TempFile(t, pass),
		KnownHosts: writeKnownHosts(t, knownhosts.Line([]string{srv.addr}, srv.hostKey())),
	}

	msg := dialErr(t, cfg)
	wantContains(t, msg, "SSH_KEY "+cfg.KeyFile+" is encrypted: set SSH_KEY_PASSPHRASE or load it into ssh-agent")

	cfg.Passphrase = "wrong horse"
	msg = dialErr(t, cfg)
	wantContains(t, msg, "SSH_KEY_PASSPHRASE does not decrypt SSH_KEY "+cfg.KeyFile)
	if strings.Contains(msg, "wrong horse") {
		t.Errorf("the passphrase is in the error: %q", msg)
	}

	cfg.Passphrase = pass
	s := dialOK(t, cfg)
	if strings.Contains(s.String(), pass) {
		t.Error("passphrase in String()")
	}

	// Without the passphrase, the agent's copy of the key will do.
	cfg.Passphrase = ""
	cfg.AgentSocket = startAgent(t, k.Private)
	dialOK(t, cfg)
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
	dir, err := os.MkdirTemp("", "agent")
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

func TestSSHAgentAndDefaultKeys(t *testing.T) {
	home := t.TempDir()
	t.Setenv("HOME", home)
	k := testenv.NewKey(t)
	srv := startServer(t, k.Public)
	cfg := SSHConfig{
		User: "tester", Host: "127.0.0.1", Port: portOf(t, srv.addr),
		KnownHosts: writeKnownHosts(t, knownhosts.Line([]string{srv.addr}, srv.hostKey())),
	}

	// Nothing to offer at all.
	wantContains(t, dialErr(t, cfg), "no SSH key to log in with", "SSH_KEY")

	// The agent holds a wrong key and the right one.
	wrong := testenv.NewKey(t)
	cfg.AgentSocket = startAgent(t, wrong.Private, k.Private)
	dialOK(t, cfg)

	// No agent: ~/.ssh/id_ed25519 is used.
	cfg.AgentSocket = ""
	os.MkdirAll(filepath.Join(home, ".ssh"), 0o700)
	k.WriteFile(t, filepath.Join(home, ".ssh", "id_ed25519"), "")
	dialOK(t, cfg)

	// A wrong default key: the message lists what was tried.
	wrong.WriteFile(t, filepath.Join(home, ".ssh", "id_ed25519"), "")
	wantContains(t, dialErr(t, cfg), "refused our key(s) (tried "+filepath.Join(home, ".ssh", "id_ed25519"))
}

func TestSSHDialContext(t *testing.T) {
	f := newFixture(t)
	s := dialOK(t, f.cfg)
	web := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, `{"status":"ok"}`)
	}))
	defer web.Close()

	hc := &http.Client{Transport: &http.Transport{DialContext: s.DialContext, DisableKeepAlives: true}, Timeout: 5 * time.Second}
	resp, err := hc.Get(web.URL + "/health")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != `{"status":"ok"}` {
		t.Errorf("body %q", body)
	}

	// Nothing listens: an error, not a connection.
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	closed := ln.Addr().String()
	ln.Close()
	if c, err := s.DialContext(context.Background(), "tcp", closed); err == nil {
		c.Close()
		t.Error("dial to a closed port succeeded")
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := s.DialContext(ctx, "tcp", web.Listener.Addr().String()); !errors.Is(err, context.Canceled) {
		t.Errorf("dial with a cancelled ctx: %v", err)
	}
}

func TestSSHExecCancel(t *testing.T) {
	f := newFixture(t)
	s := dialOK(t, f.cfg)
	ctx, cancel := context.WithCancel(context.Background())
	time.AfterFunc(200*time.Millisecond, cancel)
	start := time.Now()
	err := s.Exec(ctx, "sleep 30", nil, nil, nil)
	if took := time.Since(start); took > 1500*time.Millisecond {
		t.Errorf("cancelled Exec took %v", took)
	}
	if !errors.Is(err, context.Canceled) {
		t.Errorf("err = %v, want context.Canceled", err)
	}
	// The command got the signal: it is gone long before its 30s.
	f.srv.waitIdle(t)
	// The connection is still good.
	if out, err := Run(context.Background(), s, "echo still here"); err != nil || out != "still here\n" {
		t.Errorf("after cancel: %q, %v", out, err)
	}
}

// TestSSHConnectionCut: a command whose connection is cut under it fails
// with that, not as if it had failed itself, and not named by the keyword
// its line starts with.
func TestSSHConnectionCut(t *testing.T) {
	f := newFixture(t)
	s := dialOK(t, f.cfg)
	ready := filepath.Join(t.TempDir(), "ready")
	errc := make(chan error, 1)
	go func() {
		_, err := Run(context.Background(), s, "if true; then echo started; echo > "+shell.Quote(ready)+"; sleep 30; fi")
		errc <- err
	}()
	waitForLine(t, ready)
	f.srv.cut()
	var err error
	select {
	case err = <-errc:
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return within 5s of the cut")
	}
	want := "connection to " + s.String() + " lost: "
	if err == nil || !strings.HasPrefix(err.Error(), want) {
		t.Errorf("err = %v, want it to start with %q", err, want)
	}
	var lost *ConnLostError
	if !errors.As(err, &lost) {
		t.Errorf("err = %v (%T), want a *ConnLostError in it", err, err)
	}
	t.Log(err)
	// The next command is told the same, at once.
	start := time.Now()
	if _, err := Run(context.Background(), s, "true"); err == nil || !strings.HasPrefix(err.Error(), want) {
		t.Errorf("after the cut: %v, want it to start with %q", err, want)
	}
	if took := time.Since(start); took > lostGrace {
		t.Errorf("after the cut, Run took %v to fail", took)
	}
}

func TestSSHKeepaliveDropsDeadLink(t *testing.T) {
	f := newFixture(t, withIgnoreGlobal())
	f.cfg.Keepalive = 100 * time.Millisecond
	s := dialOK(t, f.cfg)
	start := time.Now()
	err := s.Exec(context.Background(), "sleep 30", nil, nil, nil)
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("Exec on a dead link took %v", took)
	}
	t.Log(err)
	if err == nil || !strings.Contains(err.Error(), "keepalive") {
		t.Errorf("err = %v, want one about keepalives", err)
	}
	if err := s.Exec(context.Background(), "true", nil, nil, nil); err == nil || !strings.Contains(err.Error(), "lost") {
		t.Errorf("Exec after the link died: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
}

func TestSSHKeepaliveKeepsLiveLink(t *testing.T) {
	f := newFixture(t)
	f.cfg.Keepalive = 50 * time.Millisecond
	s := dialOK(t, f.cfg)
	if err := s.Exec(context.Background(), "sleep 0.5", nil, nil, nil); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestSSHUnreachable(t *testing.T) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := ln.Addr().String()
	ln.Close()
	cfg := SSHConfig{User: "tester", Host: "127.0.0.1", Port: portOf(t, addr), KeyFile: testenv.NewKey(t).TempFile(t, ""), KnownHosts: writeKnownHosts(t)}
	start := time.Now()
	msg := dialErr(t, cfg)
	if took := time.Since(start); took > time.Second {
		t.Errorf("took %v", took)
	}
	wantContains(t, msg, "cannot reach "+addr+" within 10s: connection refused: check DEPLOY_HOST and that sshd runs")
}

func TestSSHHandshakeTimeout(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0") // accepts, never speaks
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	cfg := SSHConfig{User: "tester", Host: "127.0.0.1", Port: portOf(t, ln.Addr().String()), KeyFile: testenv.NewKey(t).TempFile(t, ""),
		KnownHosts: writeKnownHosts(t), ConnectTimeout: 300 * time.Millisecond}
	start := time.Now()
	msg := dialErr(t, cfg)
	if took := time.Since(start); took > 2*time.Second {
		t.Errorf("took %v", took)
	}
	wantContains(t, msg, "did not finish the SSH handshake within 300ms")
}

func TestSSHWriteFile(t *testing.T) {
	f := newFixture(t)
	s := dialOK(t, f.cfg)
	dir := filepath.Join(t.TempDir(), "with space")
	os.Mkdir(dir, 0o755)
	path := filepath.Join(dir, "my file.env")
	if err := os.WriteFile(path, []byte("old"), 0o600); err != nil {
		t.Fatal(err)
	}
	data := []byte("A=1\nB='two words'\n")
	if err := s.WriteFile(context.Background(), path, data, 0o640); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(path)
	if err != nil || !bytes.Equal(got, data) {
		t.Errorf("content %q, %v", got, err)
	}
	if st, _ := os.Stat(path); st.Mode().Perm() != 0o640 {
		t.Errorf("mode %v, want 0640", st.Mode().Perm())
	}
	if _, err := os.Stat(path + ".tmp"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("temp file left: %v", err)
	}

	err = s.WriteFile(context.Background(), filepath.Join(dir, "no such dir", "f"), data, 0o600)
	t.Log(err)
	if err == nil || strings.Contains(err.Error(), "\n") || !strings.Contains(err.Error(), "no such dir") {
		t.Errorf("write into a missing dir: %v", err)
	}
}

func TestSSHWriteFileWithoutSFTP(t *testing.T) {
	f := newFixture(t, withoutSFTP())
	s := dialOK(t, f.cfg)
	path := filepath.Join(t.TempDir(), "it's here")
	if err := s.WriteFile(context.Background(), path, []byte("x\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(path)
	if st, err := os.Stat(path); err != nil || st.Mode().Perm() != 0o600 || string(got) != "x\n" {
		t.Errorf("shell fallback wrote %q: %v %v", got, st, err)
	}
}

// TestSSHAgainstOpenSSH checks the parts the in-process server only
// imitates: OpenSSH's keepalive replies, signals, internal-sftp, several
// host key types, and that `ssh` itself accepts the known_hosts line we record.
func TestSSHAgainstOpenSSH(t *testing.T) {
	srv := testenv.StartSSHD(t, testenv.WithoutEngine(), testenv.WithHostKeys("ecdsa", "rsa"))
	addr, dir, keyFile := srv.Addr, srv.Home, srv.KeyFile
	kh := filepath.Join(dir, "client", "known_hosts")
	var log bytes.Buffer
	cfg := SSHConfig{User: srv.User, Host: "127.0.0.1", Port: srv.Port, KeyFile: keyFile, KnownHosts: kh, AcceptNew: true, Log: &log}
	s := dialOK(t, cfg)
	wantContains(t, log.String(), "recorded host key of ["+strings.Replace(addr, ":", "]:", 1)+" (ED25519 SHA256:")

	// OpenSSH's own client trusts the line we wrote.
	_, port, _ := net.SplitHostPort(addr)
	out, err := exec.Command("ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
		"-o", "UserKnownHostsFile="+kh, "-o", "GlobalKnownHostsFile=/dev/null", "-i", keyFile,
		"-p", port, "root@127.0.0.1", "echo", "ok").CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "ok" {
		t.Errorf("ssh with our known_hosts: %v %s", err, out)
	}

	ctx := context.Background()
	got, err := Run(ctx, s, "printf '%s|' "+shell.Join("it's", "a b")+"; echo err >&2")
	if err != nil || got != "it's|a b|" {
		t.Errorf("Run = %q, %v", got, err)
	}
	if _, err := Run(ctx, s, "exit 3"); err == nil || err.(*CommandError).ExitStatus() != 3 {
		t.Errorf("exit 3: %v", err)
	}
	var wc bytes.Buffer
	big := bytes.Repeat([]byte("x"), 5<<20)
	if err := s.Exec(ctx, "wc -c", bytes.NewReader(big), &wc, nil); err != nil || strings.TrimSpace(wc.String()) != strconv.Itoa(len(big)) {
		t.Errorf("wc -c = %q, %v", wc.String(), err)
	}

	// Keepalives are answered: a command that runs for several times the
	// 600ms of missed replies (3 x 200ms) that drop a link is not cut off.
	// On a connection of its own: sshd answers a keepalive only after the
	// channel data sent before it, which on a loaded machine (the 5 MB
	// above) takes longer than that.
	ka := cfg
	ka.Keepalive = 200 * time.Millisecond
	if err := dialOK(t, ka).Exec(ctx, "sleep 2", nil, nil, nil); err != nil {
		t.Errorf("sleep 2 with keepalives: %v", err)
	}

	// A failed read of stdin: the shell fallback of WriteFile sees EOF, and
	// its size check keeps the short file from being renamed into place.
	// The command outlives Exec (sshd does not signal root logins); it
	// records its exit status when done, and the test waits for that. Its
	// complaint goes to /dev/null: the closed session's stderr would kill it
	// with SIGPIPE, after the size check but before its exit status.
	short := filepath.Join(dir, "short.env")
	status := filepath.Join(dir, "short.status")
	in := io.MultiReader(strings.NewReader("partial"), &failingReader{})
	upload := "(" + shellWriteCmd(short, 100, 0o600) + ") 2>/dev/null; echo $? > " + shell.Quote(status)
	if err := s.Exec(ctx, upload, in, nil, nil); err == nil || !strings.Contains(err.Error(), "reading input") {
		t.Errorf("Exec with a failing stdin: %v", err)
	}
	if code := waitForLine(t, status); code != "1" {
		t.Errorf("the short upload's command exited with %s, want 1 (its size check)", code)
	}
	if _, err := os.Stat(short); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("a short upload was renamed into place: %v", err)
	}
	if _, err := os.Stat(short + ".tmp"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the short temp file is left: %v", err)
	}

	web := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "up") }))
	defer web.Close()
	hc := &http.Client{Transport: &http.Transport{DialContext: s.DialContext, DisableKeepAlives: true}, Timeout: 5 * time.Second}
	if resp, err := hc.Get(web.URL); err != nil {
		t.Errorf("GET through the tunnel: %v", err)
	} else {
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if string(body) != "up" {
			t.Errorf("body %q", body)
		}
	}

	p := filepath.Join(dir, "sub dir", "app.env")
	os.Mkdir(filepath.Dir(p), 0o755)
	if err := s.WriteFile(ctx, p, []byte("K=v\n"), 0o640); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(p); err != nil || st.Mode().Perm() != 0o640 {
		t.Errorf("WriteFile over internal-sftp: %v %v", st, err)
	}
	s.Close()

	// sshd offers ECDSA and RSA too; the recorded ED25519 key is enough.
	cfg.AcceptNew = false
	log.Reset()
	dialOK(t, cfg)
	if log.Len() != 0 {
		t.Errorf("second connect logged %q", log.String())
	}
}

// portOf is the port of a 127.0.0.1:port address.
func portOf(t testing.TB, addr string) int {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.Atoi(p)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// waitForLine waits until a command on the server has written a line to
// path, and returns it.
func waitForLine(t *testing.T, path string) string {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if b, err := os.ReadFile(path); err == nil && bytes.HasSuffix(b, []byte("\n")) {
			return strings.TrimSpace(string(b))
		}
		if time.Now().After(deadline) {
			t.Fatalf("nothing wrote a line to %s within 10s", path)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestSSHCancelAgainstOpenSSH: a cancelled Exec returns at once, and for
// an ordinary login the signal stops the remote command. OpenSSH refuses
// signals in root logins (it runs them without privilege separation), so
// there the command outlives the cancel, as Exec's documentation says.
func TestSSHCancelAgainstOpenSSH(t *testing.T) {
	for _, tc := range []struct {
		login   string
		opts    []testenv.SSHDOption
		stopped bool
	}{
		{"user", []testenv.SSHDOption{testenv.NonRootLogin()}, true},
		{"root", nil, false},
	} {
		t.Run("login="+tc.login, func(t *testing.T) {
			srv := testenv.StartSSHD(t, append(tc.opts, testenv.WithoutEngine())...)
			s := dialOK(t, SSHConfig{User: srv.User, Host: "127.0.0.1", Port: srv.Port, KeyFile: srv.KeyFile, KnownHosts: srv.KnownHosts})

			// Cancel when the command runs, as its first line of output
			// says, rather than after a guessed delay.
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			type started struct {
				pid      int
				canceled time.Time
			}
			pr, pw := io.Pipe()
			ran := make(chan started, 1)
			go func() {
				line, _ := bufio.NewReader(pr).ReadString('\n')
				pid, _ := strconv.Atoi(strings.TrimSpace(line))
				cancel()
				ran <- started{pid, time.Now()}
				io.Copy(io.Discard, pr)
			}()
			err := s.Exec(ctx, "echo $$; exec sleep 30", nil, pw, nil)
			returned := time.Now()
			pw.Close()
			run := <-ran
			if run.pid == 0 {
				t.Fatalf("the command printed no pid; Exec: %v", err)
			}
			if !errors.Is(err, context.Canceled) {
				t.Errorf("cancelled Exec: %v, want context.Canceled", err)
			}
			if took := returned.Sub(run.canceled); took > time.Second {
				t.Errorf("Exec returned %v after the cancel", took)
			}

			alive := func() bool { return syscall.Kill(run.pid, 0) == nil }
			defer syscall.Kill(run.pid, syscall.SIGKILL)
			if !tc.stopped {
				if !alive() {
					t.Errorf("the root login's command (pid %d) stopped on cancel: OpenSSH signals root logins now, update Exec's documentation", run.pid)
				}
				return
			}
			deadline := time.Now().Add(5 * time.Second)
			for alive() {
				if time.Now().After(deadline) {
					t.Fatalf("the remote command (pid %d) still runs 5s after the cancel", run.pid)
				}
				time.Sleep(10 * time.Millisecond)
			}
		})
	}
}
