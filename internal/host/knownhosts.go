package host

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/carebot/carebot/internal/shell"
)

// hostKeyCheck checks a server's host key against one known_hosts file the
// way OpenSSH does with StrictHostKeyChecking=yes, or =accept-new when
// acceptNew is set: an unknown key is refused (or recorded), a changed key
// is always refused.
type hostKeyCheck struct {
	file      string // known_hosts path
	acceptNew bool
	log       io.Writer

	db    ssh.HostKeyCallback // what the file said when we dialled
	algos []string            // host key algorithms to offer, known types first
	probe bool                // only look: stop the handshake at the key, record nothing

	mu       sync.Mutex
	seen     ssh.PublicKey // the key the server showed
	isNew    bool          // seen is not on file, and acceptNew lets it in
	accepted ssh.PublicKey // the key this connection was accepted with
	refused  error         // why the last check failed, one line
}

// hostKeyPreference is OpenSSH's order, so a key recorded here is the one
// `ssh` itself would have recorded.
var hostKeyPreference = []string{
	ssh.KeyAlgoED25519,
	ssh.KeyAlgoECDSA256, ssh.KeyAlgoECDSA384, ssh.KeyAlgoECDSA521,
	ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256,
}

var hostCertPreference = []string{
	ssh.CertAlgoED25519v01,
	ssh.CertAlgoECDSA256v01, ssh.CertAlgoECDSA384v01, ssh.CertAlgoECDSA521v01,
	ssh.CertAlgoRSASHA512v01, ssh.CertAlgoRSASHA256v01,
}

// newHostKeyCheck reads file (a missing file is an empty one) and works
// out which host key algorithms to offer addr ("host:port").
func newHostKeyCheck(file string, acceptNew bool, log io.Writer, addr string) (*hostKeyCheck, error) {
	if file == "" {
		return nil, &Problem{What: "no home folder to find ~/.ssh/known_hosts in", Fix: "set SSH_KNOWN_HOSTS"}
	}
	h := &hostKeyCheck{file: file, acceptNew: acceptNew, log: log}
	raw, err := os.ReadFile(file)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		h.db, err = knownhosts.New() // nothing known yet
	case err != nil:
		return nil, &Problem{What: fmt.Sprintf("cannot read SSH_KNOWN_HOSTS %s: %v", file, pathErr(err)),
			Fix: "fix its permissions, or set SSH_KNOWN_HOSTS to another file"}
	default:
		h.db, err = knownhosts.New(file)
	}
	if err != nil {
		return nil, &Problem{What: fmt.Sprintf("cannot use SSH_KNOWN_HOSTS %s: %v", file, pathErr(err)),
			Fix: "fix or move the file, or set SSH_KNOWN_HOSTS to another one"}
	}
	h.algos = offerAlgos(h.known(addr), bytes.Contains(raw, []byte("@cert-authority")))
	return h, nil
}

// known returns the keys the file holds for addr. knownhosts has no lookup,
// so ask it about a throwaway key: the mismatch lists what it wanted.
func (h *hostKeyCheck) known(addr string) []knownhosts.KnownKey {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil
	}
	probe, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		return nil
	}
	var ke *knownhosts.KeyError
	if errors.As(h.db(addr, &net.TCPAddr{IP: net.IPv4zero}, probe.PublicKey()), &ke) {
		return ke.Want
	}
	return nil
}

// offerAlgos puts the algorithms of the keys we know first. x/crypto's own
// default prefers ECDSA, so a server with ECDSA and ED25519 keys whose
// ED25519 key is known would otherwise look like a changed key.
func offerAlgos(known []knownhosts.KnownKey, certs bool) []string {
	var first, rest []string
	has := func(list []string, a string) bool {
		for _, x := range list {
			if x == a {
				return true
			}
		}
		return false
	}
	for _, k := range known {
		for _, a := range algosForKeyType(k.Key.Type()) {
			if !has(first, a) {
				first = append(first, a)
			}
		}
	}
	pref := hostKeyPreference
	if certs {
		pref = append(append([]string{}, hostCertPreference...), hostKeyPreference...)
	}
	for _, a := range pref {
		if !has(first, a) {
			rest = append(rest, a)
		}
	}
	return append(first, rest...)
}

func algosForKeyType(t string) []string {
	if t == ssh.KeyAlgoRSA {
		return []string{ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256}
	}
	return []string{t}
}

// errProbed stops a probe's handshake once the host key is judged.
var errProbed = errors.New("host key seen")

// callback is the ssh.HostKeyCallback. hostname is the "host:port" we dialled.
func (h *hostKeyCheck) callback(hostname string, remote net.Addr, key ssh.PublicKey) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.accepted != nil { // a re-key within this connection
		if bytes.Equal(h.accepted.Marshal(), key.Marshal()) {
			return nil
		}
		h.refused = fmt.Errorf("host key of %s changed during the session (now %s): this may be a man-in-the-middle attack",
			knownhosts.Normalize(hostname), fingerprint(key))
		return h.refused
	}
	h.seen = key
	h.refused = h.verdict(hostname, remote, key)
	switch {
	case h.probe:
		return errProbed
	case h.refused != nil:
		return h.refused
	case h.isNew:
		if err := h.record(hostname, key); err != nil {
			h.refused = &Problem{
				What: fmt.Sprintf("cannot record host key of %s (%s) in %s: %v", knownhosts.Normalize(hostname), fingerprint(key), h.file, pathErr(err)),
				Fix:  "fix the file's permissions or set SSH_KNOWN_HOSTS",
			}
			return h.refused
		}
	}
	h.accepted = key
	return nil
}

// verdict judges key by the file, as OpenSSH does: nil when it may be used
// (h.isNew then says whether it is to be recorded), else a *Problem.
func (h *hostKeyCheck) verdict(hostname string, remote net.Addr, key ssh.PublicKey) error {
	name := knownhosts.Normalize(hostname)
	err := h.db(hostname, remote, key)
	var ke *knownhosts.KeyError
	var re *knownhosts.RevokedError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &re):
		return &Problem{
			What: fmt.Sprintf("host key of %s (%s) is marked @revoked in %s:%d", name, fingerprint(key), re.Revoked.Filename, re.Revoked.Line),
			Fix:  "refusing to connect; ask the server's admin: this key must not be trusted",
		}
	case errors.As(err, &ke) && len(ke.Want) > 0:
		w := ke.Want[0]
		return &Problem{
			What: fmt.Sprintf("host key of %s has CHANGED (now %s; %s:%d has another): this may be a man-in-the-middle attack",
				name, fingerprint(key), w.Filename, w.Line),
			Fix: "if the server was reinstalled, check the new key with its admin, then remove the old entry with " + h.keygenRemove(name),
		}
	case errors.As(err, &ke) && !h.acceptNew:
		return &Problem{
			What: fmt.Sprintf("host key of %s is not known (%s)", name, fingerprint(key)),
			Fix: "check it on the server (ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub) or with its admin, " +
				"then run once with SSH_ACCEPT_NEW=1 to record it in " + h.file,
		}
	case errors.As(err, &ke):
		h.isNew = true
		return nil
	default: // e.g. a host certificate that no @cert-authority signed
		return &Problem{What: fmt.Sprintf("host key of %s (%s) not accepted: %v", name, fingerprint(key), err), Fix: "check SSH_KNOWN_HOSTS"}
	}
}

// HostKey is a server's host key as DialSSH judges it.
type HostKey struct {
	Name        string // the server as known_hosts names it: host, or [host]:port
	Fingerprint string // as OpenSSH prints it: "ED25519 SHA256:..."
	File        string // the known_hosts file it was looked up in
	Known       bool   // File holds this very key
	New         bool   // File does not know the server, and SSH_ACCEPT_NEW lets DialSSH record it
}

// CheckHostKey is DialSSH's host key check on its own: it offers the same
// host key algorithms and judges the key by the same rules, and returns the
// error DialSSH would; but it stops the handshake at the key, so nothing
// logs in and nothing is recorded.
func CheckHostKey(ctx context.Context, c SSHConfig) (HostKey, error) {
	c, _ = c.resolve()
	addr := c.addr()
	h, err := newHostKeyCheck(c.KnownHosts, c.AcceptNew, c.Log, addr)
	if err != nil {
		return HostKey{}, err
	}
	h.probe = true
	_, _, _, _, err = handshake(ctx, addr, c.ConnectTimeout, &ssh.ClientConfig{
		User:              c.User,
		HostKeyCallback:   h.callback,
		HostKeyAlgorithms: h.algos,
		Timeout:           c.ConnectTimeout,
	})
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.seen == nil {
		return HostKey{}, c.connectError(ctx, err)
	}
	k := HostKey{Name: knownhosts.Normalize(addr), Fingerprint: fingerprint(h.seen), File: c.KnownHosts, New: h.isNew}
	k.Known = h.refused == nil && !h.isNew
	return k, h.refused
}

// refusal is why the host key was refused, or nil.
func (h *hostKeyCheck) refusal() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.refused
}

func (h *hostKeyCheck) keygenRemove(name string) string {
	cmd := "ssh-keygen -R " + shell.Quote(name)
	if home, err := os.UserHomeDir(); err != nil || filepath.Clean(h.file) != filepath.Join(home, ".ssh", "known_hosts") {
		cmd += " -f " + shell.Quote(h.file)
	}
	return cmd
}

// record appends a known_hosts line for hostname, creating the file (0600)
// and its directory (0700) when needed.
func (h *hostKeyCheck) record(hostname string, key ssh.PublicKey) error {
	if err := os.MkdirAll(filepath.Dir(h.file), 0o700); err != nil {
		return err
	}
	f, err := os.OpenFile(h.file, os.O_RDWR|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	line := knownhosts.Line([]string{hostname}, key) + "\n"
	if st, err := f.Stat(); err == nil && st.Size() > 0 {
		last := make([]byte, 1)
		if _, err := f.ReadAt(last, st.Size()-1); err == nil && last[0] != '\n' {
			line = "\n" + line
		}
	}
	_, err = f.WriteString(line)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(h.log, "recorded host key of %s (%s) in %s\n", knownhosts.Normalize(hostname), fingerprint(key), h.file)
	return nil
}

// fingerprint reads like OpenSSH: "ED25519 SHA256:...".
func fingerprint(key ssh.PublicKey) string {
	return keyTypeName(key.Type()) + " " + ssh.FingerprintSHA256(key)
}

func keyTypeName(t string) string {
	cert := strings.HasSuffix(t, "-cert-v01@openssh.com")
	t = strings.TrimSuffix(t, "-cert-v01@openssh.com")
	var n string
	switch {
	case t == ssh.KeyAlgoED25519:
		n = "ED25519"
	case t == ssh.KeyAlgoRSA:
		n = "RSA"
	case strings.HasPrefix(t, "ecdsa-sha2-"):
		n = "ECDSA"
	case t == ssh.KeyAlgoSKED25519:
		n = "ED25519-SK"
	case t == ssh.KeyAlgoSKECDSA256:
		n = "ECDSA-SK"
	default:
		n = t
	}
	if cert {
		n += "-CERT"
	}
	return n
}

// pathErr drops the path from an *fs.PathError: our messages name it already.
func pathErr(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}
