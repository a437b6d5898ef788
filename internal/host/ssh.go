package host

import (
	"bytes"
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/melbahja/goph"
	"github.com/pkg/sftp"
	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"

	"github.com/carebot/carebot/internal/shell"
)

// SSHConfig says how to reach a server over SSH. The names in the comments
// are the settings each field comes from.
type SSHConfig struct {
	User           string        // the login, resolved by config from DEPLOY_HOST
	Host           string        // name or address (IPv6 without brackets)
	Port           int           // default 22
	KeyFile        string        // SSH_KEY: private key path ("" = use the agent, then ~/.ssh/id_ed25519, id_ecdsa, id_rsa if present)
	Passphrase     string        // SSH_KEY_PASSPHRASE (secret: never print it)
	AgentSocket    string        // SSH_AUTH_SOCK ("" = no agent)
	KnownHosts     string        // SSH_KNOWN_HOSTS, default ~/.ssh/known_hosts
	AcceptNew      bool          // SSH_ACCEPT_NEW: accept and record an unknown host key; a changed key is always refused
	ConnectTimeout time.Duration // TCP dial plus SSH handshake; default 10s
	Keepalive      time.Duration // default 15s, negative = off; the link is dropped after 3 unanswered keepalives
	Log            io.Writer     // one-line notes (a recorded host key); nil discards
}

const (
	defaultConnectTimeout = 10 * time.Second
	defaultKeepalive      = 15 * time.Second
	keepaliveMaxMissed    = 3
)

// SSH is a server reached over SSH: commands run in its login shell, dials
// go out through direct-tcpip channels, files are written over SFTP.
type SSH struct {
	client *goph.Client
	conn   *meteredConn
	name   string // user@host:port

	done      chan struct{} // closed by Close: stops the keepalive
	ended     chan struct{} // closed when the connection has ended, lost set if we did not end it
	wg        sync.WaitGroup
	closeOnce sync.Once
	closeErr  error

	mu   sync.Mutex
	lost error // why the connection was dropped under us: a *ConnLostError
}

var _ Host = (*SSH)(nil)

// DialSSH connects and authenticates, or returns one line saying what to
// fix (a *Problem, unless ctx ended).
func DialSSH(ctx context.Context, c SSHConfig) (*SSH, error) {
	c, home := c.resolve()
	addr := c.addr()
	hk, err := newHostKeyCheck(c.KnownHosts, c.AcceptNew, c.Log, addr)
	if err != nil {
		return nil, err
	}
	keys, err := loadKeys(c, home)
	if keys != nil && keys.agent != nil {
		defer keys.agent.Close() // only needed while we authenticate
	}
	if err != nil {
		return nil, err
	}

	cfg := &goph.Config{
		Auth:     goph.Auth{ssh.PublicKeys(keys.signers...)},
		User:     c.User,
		Addr:     c.Host,
		Port:     uint(c.Port),
		Timeout:  c.ConnectTimeout,
		Callback: hk.callback,
	}
	client, conn, err := dial(ctx, cfg, hk.algos)
	if err != nil {
		if ctx.Err() == nil {
			if r := hk.refusal(); r != nil {
				return nil, r
			}
			if strings.Contains(err.Error(), "unable to authenticate") {
				return nil, c.keysRefused(keys)
			}
		}
		return nil, c.connectError(ctx, err)
	}
	s := &SSH{client: client, conn: conn, name: c.User + "@" + addr, done: make(chan struct{}), ended: make(chan struct{})}
	s.wg.Add(1)
	go s.watch()
	if c.Keepalive > 0 {
		s.wg.Add(1)
		go s.keepalive(c.Keepalive)
	}
	return s, nil
}

// resolve fills in c's defaults and expands ~ in its paths, so that
// DialSSH, Keys and CheckHostKey read c the same way. It also returns the
// home folder, where the default keys are. KnownHosts stays empty when
// there is no home folder (newHostKeyCheck says so).
func (c SSHConfig) resolve() (SSHConfig, string) {
	if c.Port == 0 {
		c.Port = 22
	}
	if c.ConnectTimeout <= 0 {
		c.ConnectTimeout = defaultConnectTimeout
	}
	if c.Keepalive == 0 {
		c.Keepalive = defaultKeepalive
	}
	if c.Log == nil {
		c.Log = io.Discard
	}
	home, _ := os.UserHomeDir()
	if c.KnownHosts == "" && home != "" {
		c.KnownHosts = filepath.Join(home, ".ssh", "known_hosts")
	}
	c.KnownHosts = expandHome(c.KnownHosts, home)
	c.KeyFile = expandHome(c.KeyFile, home)
	return c, home
}

// addr is host:port, an IPv6 address in brackets.
func (c SSHConfig) addr() string { return net.JoinHostPort(c.Host, strconv.Itoa(c.Port)) }

// connectError says why a connection failed before any key mattered: the
// server was not reached, or did not finish the handshake.
func (c SSHConfig) connectError(ctx context.Context, err error) error {
	addr := c.addr()
	var de *dialError
	switch {
	case ctx.Err() != nil:
		return fmt.Errorf("ssh to %s@%s: %w", c.User, addr, context.Cause(ctx))
	case errors.As(err, &de):
		return &Problem{What: fmt.Sprintf("cannot reach %s within %s: %s", addr, c.ConnectTimeout, NetReason(de.err)),
			Fix: "check DEPLOY_HOST and that sshd runs"}
	case errors.Is(err, os.ErrDeadlineExceeded):
		return &Problem{What: fmt.Sprintf("%s did not finish the SSH handshake within %s", addr, c.ConnectTimeout),
			Fix: "check DEPLOY_HOST points at an SSH server and the link is up"}
	}
	if inner := errors.Unwrap(err); inner != nil { // drop "ssh: handshake failed: "
		err = inner
	}
	return &Problem{What: fmt.Sprintf("ssh handshake with %s failed: %v", addr, NetReason(err)),
		Fix: "check DEPLOY_HOST points at an SSH server"}
}

// keysRefused is the server saying no to every key we offered.
func (c SSHConfig) keysRefused(k *keySet) error {
	copyID := "ssh-copy-id"
	if c.KeyFile != "" {
		copyID += " -i " + shell.Quote(c.KeyFile)
	}
	copyID += fmt.Sprintf(" -p %d %s", c.Port, shell.Quote(c.User+"@"+c.Host))
	return &Problem{
		What: fmt.Sprintf("ssh: %s@%s refused our key(s) (tried %s)", c.User, c.addr(), k.describe()),
		Fix:  fmt.Sprintf("add your public key to ~%s/.ssh/authorized_keys on the server (%s)", c.User, copyID),
	}
}

type dialError struct{ err error }

func (e *dialError) Error() string { return e.err.Error() }
func (e *dialError) Unwrap() error { return e.err }

// dial is goph.NewConn, except that the connect timeout covers the SSH
// handshake as well as the TCP dial, ctx is honoured, and we choose which
// host key algorithms to offer.
func dial(ctx context.Context, cfg *goph.Config, hostKeyAlgos []string) (*goph.Client, *meteredConn, error) {
	addr := net.JoinHostPort(cfg.Addr, strconv.FormatUint(uint64(cfg.Port), 10))
	c, mc, chans, reqs, err := handshake(ctx, addr, cfg.Timeout, &ssh.ClientConfig{
		User:              cfg.User,
		Auth:              cfg.Auth,
		HostKeyCallback:   cfg.Callback,
		HostKeyAlgorithms: hostKeyAlgos,
		BannerCallback:    cfg.BannerCallback,
		Timeout:           cfg.Timeout,
	})
	if err != nil {
		return nil, nil, err
	}
	return &goph.Client{Client: ssh.NewClient(c, chans, reqs), Config: cfg}, mc, nil
}

// meteredConn counts the bytes the server sends: a link that still
// delivers them is alive even when a keepalive's answer waits behind a
// transfer's data (the server's window adjustments keep arriving). Bytes
// written do not count: the kernel takes them on a dead link too.
type meteredConn struct {
	net.Conn
	moved atomic.Int64
}

func (m *meteredConn) Read(p []byte) (int, error) {
	n, err := m.Conn.Read(p)
	m.moved.Add(int64(n))
	return n, err
}

// handshake dials addr and runs the SSH handshake, both within timeout
// (goph's timeout, like ssh.Dial's, covers only the dial) and ctx. A
// failed dial is a *dialError.
func handshake(ctx context.Context, addr string, timeout time.Duration, cc *ssh.ClientConfig) (ssh.Conn, *meteredConn, <-chan ssh.NewChannel, <-chan *ssh.Request, error) {
	deadline := time.Now().Add(timeout)
	d := net.Dialer{Deadline: deadline}
	raw, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, nil, nil, nil, &dialError{err}
	}
	conn := &meteredConn{Conn: raw}
	_ = conn.SetDeadline(deadline)
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	c, chans, reqs, err := ssh.NewClientConn(conn, addr, cc)
	if !stop() && err == nil { // ctx ended just as the handshake finished
		c.Close()
		return nil, nil, nil, nil, context.Cause(ctx)
	}
	if err != nil {
		return nil, nil, nil, nil, err // NewClientConn closed conn
	}
	_ = conn.SetDeadline(time.Time{})
	return c, conn, chans, reqs, nil
}

// NetReason is the part of a network error a person can act on:
// "connection refused", "no answer", "no such host example.org".
func NetReason(err error) string {
	var dns *net.DNSError
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		return "connection refused"
	case errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, context.DeadlineExceeded):
		return "no answer"
	case errors.As(err, &dns):
		if dns.IsNotFound {
			return "no such host " + dns.Name
		}
		return dns.Err
	}
	for {
		var op *net.OpError
		var sc *os.SyscallError
		switch {
		case errors.As(err, &op) && op.Err != nil:
			err = op.Err
		case errors.As(err, &sc) && sc.Err != nil:
			err = sc.Err
		default:
			return err.Error()
		}
	}
}

// keepalive asks the server for a reply every interval and drops the
// connection when keepaliveMaxMissed ticks pass with no reply, so that
// anything blocked on it fails instead of hanging on a dead link.
func (s *SSH) keepalive(every time.Duration) {
	defer s.wg.Done()
	t := time.NewTicker(every)
	defer t.Stop()
	replies := make(chan error, 1)
	waiting, missed := false, 0
	moved := s.conn.moved.Load()
	for {
		select {
		case <-s.done:
			return
		case err := <-replies:
			waiting, missed = false, 0
			if err != nil {
				s.drop(&ConnLostError{Host: s.name, Err: err})
				return
			}
		case <-t.C:
			// Bytes that arrived since the last tick are as good as an
			// answer: on a busy link the answer queues behind the data.
			m := s.conn.moved.Load()
			busy := m != moved
			moved = m
			if waiting && busy {
				missed = 0
				continue
			}
			if waiting {
				if missed++; missed >= keepaliveMaxMissed {
					s.drop(&ConnLostError{Host: s.name, Err: fmt.Errorf("no answer to keepalives for %s", time.Duration(missed)*every)})
					return
				}
				continue
			}
			waiting = true
			go func() {
				_, _, err := s.client.SendRequest("keepalive@openssh.com", true, nil)
				replies <- err
			}()
		}
	}
}

// watch waits for the connection to end, and when that was not our doing
// (the server went away, the link broke) records why.
func (s *SSH) watch() {
	defer s.wg.Done()
	defer close(s.ended)
	err := s.client.Wait()
	select {
	case <-s.done: // Close
	default:
		s.drop(&ConnLostError{Host: s.name, Err: err})
	}
}

// drop closes the connection under its users and remembers why.
func (s *SSH) drop(why *ConnLostError) {
	s.mu.Lock()
	if s.lost == nil {
		s.lost = why
	}
	s.mu.Unlock()
	_ = s.client.Client.Close()
}

// lostGrace is how long connErr waits to learn whether the connection has
// ended: a broken link fails its sessions a moment before watch hears why.
const lostGrace = 250 * time.Millisecond

// connErr explains an error from a connection that may have been dropped:
// a *ConnLostError when it was.
func (s *SSH) connErr(err error) error {
	select {
	case <-s.ended:
	case <-time.After(lostGrace):
	}
	s.mu.Lock()
	lost := s.lost
	s.mu.Unlock()
	if lost != nil {
		return lost
	}
	return fmt.Errorf("ssh %s: %w", s.name, err)
}

// Exec runs cmd, verbatim, in a new session: the remote login shell parses
// it, so quote arguments with Quote. A non-zero exit is an error wrapping
// *ssh.ExitError. When ctx ends, or reading stdin fails, the command gets
// SIGTERM, the session is closed and Exec returns at once.
//
// OpenSSH refuses signals in root logins, and closing a session neither
// kills its command nor makes sshd let go of it before the command ends:
// a cancelled command that never writes keeps running on the server, and
// one reading stdin sees EOF. Commands fed by stdin must check they got all
// of it (WriteFile's shell fallback compares the size).
func (s *SSH) Exec(ctx context.Context, cmd string, stdin io.Reader, stdout, stderr io.Writer) error {
	sess, err := s.newSession(ctx)
	if err != nil {
		return err
	}
	defer sess.Close()
	// x/crypto copies stdout and stderr in two goroutines; callers like Run
	// may pass one writer to both, so take turns (os/exec does the same).
	// The gate also keeps late output of an abandoned session from reaching
	// the caller's writers after Exec has returned.
	gate := &outputGate{}
	defer gate.close()
	if stdout != nil {
		sess.Stdout = &gatedWriter{gate, stdout}
	}
	if stderr != nil {
		sess.Stderr = &gatedWriter{gate, stderr}
	}
	var in io.WriteCloser
	if stdin != nil {
		if in, err = sess.StdinPipe(); err != nil {
			return s.connErr(err)
		}
	}
	if err := sess.Start(cmd); err != nil {
		return s.connErr(err)
	}
	readErr := make(chan error, 1)
	if stdin != nil {
		// Not sess.Stdin: Wait would then wait for stdin to run dry even
		// after the command has exited.
		go func() {
			if err := copyStdin(in, stdin); err != nil {
				readErr <- err
			}
		}()
	}
	done := make(chan error, 1)
	go func() { done <- sess.Wait() }()
	select {
	case err = <-done:
	case <-ctx.Done():
		abort(sess, done)
		return fmt.Errorf("on %s: %w", s.name, context.Cause(ctx))
	case rerr := <-readErr:
		abort(sess, done)
		return fmt.Errorf("reading input for the command on %s: %w", s.name, rerr)
	}
	var ee *ssh.ExitError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &ee):
		return &remoteExit{ee}
	default:
		return s.connErr(err)
	}
}

// abort signals and closes a session, giving its output a moment to drain.
// It does not wait for the close to complete: OpenSSH completes it only
// when the command has exited.
func abort(sess *ssh.Session, done <-chan error) {
	_ = sess.Signal(ssh.SIGTERM)
	sess.Close()
	select {
	case <-done:
	case <-time.After(200 * time.Millisecond):
	}
}

// outputGate serialises a session's output writers, and drops output that
// arrives after close.
type outputGate struct {
	mu     sync.Mutex
	closed bool
}

func (g *outputGate) close() {
	g.mu.Lock()
	g.closed = true
	g.mu.Unlock()
}

type gatedWriter struct {
	g *outputGate
	w io.Writer
}

func (w *gatedWriter) Write(p []byte) (int, error) {
	w.g.mu.Lock()
	defer w.g.mu.Unlock()
	if w.g.closed {
		return len(p), nil
	}
	return w.w.Write(p)
}

// copyStdin feeds r to the command and then sends EOF. It returns only
// errors reading r; a failed write means the command stopped reading.
func copyStdin(w io.WriteCloser, r io.Reader) error {
	buf := make([]byte, 32<<10)
	for {
		n, err := r.Read(buf)
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return nil
			}
		}
		if err == io.EOF {
			w.Close()
			return nil
		}
		if err != nil {
			return err
		}
	}
}

func (s *SSH) newSession(ctx context.Context) (*ssh.Session, error) {
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("on %s: %w", s.name, context.Cause(ctx))
	}
	type result struct {
		sess *ssh.Session
		err  error
	}
	ch := make(chan result, 1)
	go func() {
		sess, err := s.client.NewSession()
		ch <- result{sess, err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			return nil, s.connErr(r.err)
		}
		return r.sess, nil
	case <-ctx.Done():
		go func() {
			if r := <-ch; r.sess != nil {
				r.sess.Close()
			}
		}()
		return nil, fmt.Errorf("on %s: %w", s.name, context.Cause(ctx))
	}
}

// remoteExit is a command's non-zero exit, worded like os/exec's.
type remoteExit struct{ err *ssh.ExitError }

func (e *remoteExit) Error() string {
	if sig := e.err.Signal(); sig != "" {
		return "killed by signal " + sig
	}
	return "exit status " + strconv.Itoa(e.err.ExitStatus())
}
func (e *remoteExit) Unwrap() error   { return e.err }
func (e *remoteExit) ExitStatus() int { return e.err.ExitStatus() }

// DialContext opens a direct-tcpip channel: the server makes the TCP
// connection, so addr may be on its loopback. Deadlines on the returned
// conn are not supported (x/crypto); cancel through ctx or Close instead.
func (s *SSH) DialContext(ctx context.Context, network, addr string) (net.Conn, error) {
	c, err := s.client.DialContext(ctx, network, addr)
	if err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("dial %s on %s: %w", addr, s.name, context.Cause(ctx))
		}
		s.mu.Lock()
		lost := s.lost
		s.mu.Unlock()
		if lost != nil {
			return nil, lost
		}
		return nil, fmt.Errorf("dial %s on %s: %w", addr, s.name, err)
	}
	return c, nil
}

// WriteFile writes data to path on the server over SFTP, atomically: into
// path+".tmp", chmod, then posix-rename over path. The mode is set before
// any data goes in. A server without the sftp subsystem gets the shell
// pipeline that host.WriteFile uses.
func (s *SSH) WriteFile(ctx context.Context, path string, data []byte, mode uint32) error {
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("write %s on %s: %w", path, s.name, context.Cause(ctx))
	}
	c, err := s.client.NewSftp()
	if err != nil {
		if strings.Contains(err.Error(), "subsystem request failed") {
			return s.writeFileShell(ctx, path, data, mode)
		}
		return s.connErr(fmt.Errorf("sftp: %w", err))
	}
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	if err := sftpWrite(c, path, data, mode); err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("write %s on %s: %w", path, s.name, context.Cause(ctx))
		}
		return fmt.Errorf("%w on %s", err, s.name)
	}
	return nil
}

func sftpWrite(c *sftp.Client, path string, data []byte, mode uint32) error {
	tmp := path + ".tmp"
	f, err := c.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC)
	if err != nil {
		return fmt.Errorf("write %s: %w", tmp, err)
	}
	fail := func(what string, err error) error {
		f.Close()
		_ = c.Remove(tmp)
		return fmt.Errorf("%s %s: %w", what, tmp, err)
	}
	if err := f.Chmod(fileMode(mode)); err != nil {
		return fail("chmod", err)
	}
	if _, err := f.Write(data); err != nil {
		return fail("write", err)
	}
	if err := f.Close(); err != nil {
		_ = c.Remove(tmp)
		return fmt.Errorf("write %s: %w", tmp, err)
	}
	if err := c.PosixRename(tmp, path); err != nil {
		_ = c.Remove(tmp)
		return fmt.Errorf("rename %s to %s: %w", tmp, path, err)
	}
	return nil
}

// fileMode turns a Unix mode (0o640, 0o4755) into an os.FileMode.
func fileMode(m uint32) fs.FileMode {
	fm := fs.FileMode(m & 0o777)
	if m&0o4000 != 0 {
		fm |= fs.ModeSetuid
	}
	if m&0o2000 != 0 {
		fm |= fs.ModeSetgid
	}
	if m&0o1000 != 0 {
		fm |= fs.ModeSticky
	}
	return fm
}

func (s *SSH) writeFileShell(ctx context.Context, path string, data []byte, mode uint32) error {
	cmd := shellWriteCmd(path, len(data), mode)
	var both bytes.Buffer
	if err := s.Exec(ctx, cmd, bytes.NewReader(data), &both, &both); err != nil {
		return &CommandError{Cmd: cmd, Output: both.String(), Err: err}
	}
	return nil
}

// shellWriteCmd stores size bytes of stdin at path, atomically. The size
// check matters: if our side fails mid-stream, sshd gives cat an EOF, and a
// short file must not be renamed into place. The temp file is made private
// (umask 077, after removing one an earlier run left with its own mode) and
// gets its mode only once complete, so a secret is never readable by others
// on the way; the EXIT trap removes it on any failure, and the signal trap
// turns a SIGTERM (a cancelled command) into an exit that runs it.
func shellWriteCmd(path string, size int, mode uint32) string {
	const script = `umask 077 && t=%[1]s && trap 'rm -f "$t"' EXIT && trap 'exit 1' HUP INT TERM && rm -f "$t" && cat > "$t" && ` +
		`if [ $(($(wc -c < "$t"))) -ne %[3]d ]; then echo %[4]s >&2; exit 1; fi && chmod %[5]o "$t" && mv -f "$t" %[2]s`
	return fmt.Sprintf(script, shell.Quote(path+".tmp"), shell.Quote(path), size, shell.Quote(path+": incomplete upload"), mode)
}

// String is "user@host:port".
func (s *SSH) String() string { return s.name }

// Close stops the keepalive and closes the connection and its sessions.
func (s *SSH) Close() error {
	s.closeOnce.Do(func() {
		close(s.done)
		err := s.client.Client.Close()
		s.wg.Wait()
		s.mu.Lock()
		lost := s.lost
		s.mu.Unlock()
		if err != nil && lost == nil && !errors.Is(err, net.ErrClosed) {
			s.closeErr = fmt.Errorf("close ssh %s: %w", s.name, err)
		}
	})
	return s.closeErr
}

func expandHome(p, home string) string {
	if home != "" && (p == "~" || strings.HasPrefix(p, "~/")) {
		return filepath.Join(home, p[1:])
	}
	return p
}

// keySet is what we authenticate with, and how to say so when it fails.
type keySet struct {
	signers []ssh.Signer
	tried   []string
	skipped []string
	agent   io.Closer
}

func (k *keySet) describe() string {
	d := strings.Join(k.tried, ", ")
	if len(k.skipped) > 0 {
		d += "; skipped " + strings.Join(k.skipped, ", ")
	}
	return d
}

func (k *keySet) add(s ssh.Signer) bool {
	for _, have := range k.signers {
		if bytes.Equal(have.PublicKey().Marshal(), s.PublicKey().Marshal()) {
			return false
		}
	}
	k.signers = append(k.signers, s)
	return true
}

// agentSigner is the agent's signer for pub, if it holds that key.
func (k *keySet) agentSigner(agentKeys []ssh.Signer, pub ssh.PublicKey) ssh.Signer {
	if pub == nil {
		return nil
	}
	for _, s := range agentKeys {
		if bytes.Equal(s.PublicKey().Marshal(), pub.Marshal()) {
			return s
		}
	}
	return nil
}

var errEncrypted = errors.New("encrypted")

// Keys says which keys a login with c offers, in the order DialSSH offers
// them, and which it skips and why: "SSH_KEY /k (ED25519 SHA256:...)", or
// "agent (2 key(s)), /home/me/.ssh/id_ed25519; skipped ...". The error is
// the one DialSSH would stop at before connecting.
func Keys(c SSHConfig) (string, error) {
	c, home := c.resolve()
	k, err := loadKeys(c, home)
	if k != nil && k.agent != nil {
		k.agent.Close()
	}
	if err != nil {
		return "", err
	}
	return k.describe(), nil
}

// loadKeys gathers the keys to offer, in one publickey method: x/crypto tries
// each method name once, so a second ssh.PublicKeys method would never run.
// SSH_KEY alone is used when it is set (like IdentitiesOnly); otherwise the
// agent's keys, then the default key files.
func loadKeys(c SSHConfig, home string) (*keySet, error) {
	k := &keySet{}
	var agentKeys []ssh.Signer
	if c.AgentSocket != "" {
		conn, err := net.DialTimeout("unix", c.AgentSocket, 2*time.Second)
		if err == nil {
			k.agent = conn
			agentKeys, err = agent.NewClient(conn).Signers()
		}
		if err != nil {
			k.skipped = append(k.skipped, "agent ("+NetReason(err)+")")
		}
	}

	if c.KeyFile != "" {
		signer, pub, err := readKey(c.KeyFile, c.Passphrase)
		switch {
		case err == nil:
		case errors.Is(err, errEncrypted):
			if signer = k.agentSigner(agentKeys, pub); signer == nil {
				return k, &Problem{What: fmt.Sprintf("SSH_KEY %s is encrypted", c.KeyFile), Fix: "set SSH_KEY_PASSPHRASE or load it into ssh-agent"}
			}
		case errors.Is(err, x509.IncorrectPasswordError):
			return k, &Problem{What: fmt.Sprintf("SSH_KEY_PASSPHRASE does not decrypt SSH_KEY %s", c.KeyFile), Fix: "check it, or load the key into ssh-agent"}
		case errors.Is(err, fs.ErrNotExist):
			return k, &Problem{What: fmt.Sprintf("SSH_KEY %s does not exist", c.KeyFile), Fix: "set SSH_KEY to your private key file"}
		case errors.Is(err, fs.ErrPermission):
			return k, &Problem{What: fmt.Sprintf("SSH_KEY %s cannot be read (permission denied)", c.KeyFile), Fix: "run as its owner or fix its permissions (chmod 600)"}
		default:
			var pe *fs.PathError
			if errors.As(err, &pe) {
				return k, &Problem{What: fmt.Sprintf("SSH_KEY %s cannot be read: %v", c.KeyFile, pe.Err), Fix: "set SSH_KEY to a readable private key file"}
			}
			return k, &Problem{What: fmt.Sprintf("SSH_KEY %s is not a private key we can use (%v)", c.KeyFile, err), Fix: "set SSH_KEY to the private key file, not the .pub"}
		}
		k.add(signer)
		k.tried = append(k.tried, "SSH_KEY "+c.KeyFile+" ("+fingerprint(signer.PublicKey())+")")
		return k, nil
	}

	n := 0
	for _, s := range agentKeys {
		if k.add(s) {
			n++
		}
	}
	if n > 0 {
		k.tried = append(k.tried, fmt.Sprintf("agent (%d key(s))", n))
	} else if c.AgentSocket != "" && k.agent != nil {
		k.skipped = append(k.skipped, "agent (no keys)")
	}
	if home != "" {
		for _, f := range []string{"id_ed25519", "id_ecdsa", "id_rsa"} {
			p := filepath.Join(home, ".ssh", f)
			signer, pub, err := readKey(p, c.Passphrase)
			switch {
			case errors.Is(err, fs.ErrNotExist):
			case errors.Is(err, errEncrypted):
				if k.agentSigner(agentKeys, pub) == nil {
					k.skipped = append(k.skipped, p+" (encrypted: set SSH_KEY_PASSPHRASE or load it into ssh-agent)")
				}
			case errors.Is(err, x509.IncorrectPasswordError):
				k.skipped = append(k.skipped, p+" (SSH_KEY_PASSPHRASE does not decrypt it)")
			case err != nil:
				k.skipped = append(k.skipped, p+" ("+pathErr(err).Error()+")")
			default:
				if k.add(signer) {
					k.tried = append(k.tried, p)
				}
			}
		}
	}
	if len(k.signers) == 0 {
		why := "no agent and no ~/.ssh/id_ed25519, id_ecdsa or id_rsa"
		if len(k.skipped) > 0 {
			why = "skipped " + strings.Join(k.skipped, ", ")
		}
		return k, &Problem{What: fmt.Sprintf("no SSH key to log in with (%s)", why), Fix: "set SSH_KEY to your private key file, or load a key into ssh-agent and set SSH_AUTH_SOCK"}
	}
	return k, nil
}

// readKey parses a private key file. An encrypted key without a passphrase
// gives errEncrypted and, when it can be found, the public key (to look for
// in the agent). The passphrase is ignored for a key that is not encrypted.
func readKey(path, passphrase string) (ssh.Signer, ssh.PublicKey, error) {
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, err
	}
	signer, err := ssh.ParsePrivateKey(pem)
	var missing *ssh.PassphraseMissingError
	if !errors.As(err, &missing) {
		return signer, nil, err
	}
	pub := missing.PublicKey
	if pub == nil {
		if b, err := os.ReadFile(path + ".pub"); err == nil {
			pub, _, _, _, _ = ssh.ParseAuthorizedKey(b)
		}
	}
	if passphrase == "" {
		return nil, pub, errEncrypted
	}
	signer, err = ssh.ParsePrivateKeyWithPassphrase(pem, []byte(passphrase))
	return signer, pub, err
}
