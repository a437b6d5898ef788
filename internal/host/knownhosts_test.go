//go:build !windows

package host

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/carebot/carebot/internal/testenv"
)

// TestCheckHostKeyAgreesWithDialSSH runs CheckHostKey and DialSSH on the
// same servers and known_hosts files: the probe must say what the login
// does, word for word, and never write the file.
func TestCheckHostKeyAgreesWithDialSSH(t *testing.T) {
	other := testenv.NewKey(t).Public
	closed := func() string {
		ln, _ := net.Listen("tcp", "127.0.0.1:0")
		defer ln.Close()
		return ln.Addr().String()
	}()
	tests := []struct {
		name      string
		opts      []serverOpt
		file      func(f fixture) string // known_hosts contents
		acceptNew bool
		addr      string // instead of the server's
		want      string // in both errors; "" = no error
		known     bool
	}{
		{name: "known", file: func(f fixture) string { return knownhosts.Line([]string{f.srv.addr}, f.srv.hostKey()) }, known: true},
		{name: "known of the preferred type only", opts: []serverOpt{withECDSA(t)}, file: func(f fixture) string {
			return knownhosts.Line([]string{f.srv.addr}, f.srv.hostKey())
		}, known: true},
		{name: "unknown", file: func(fixture) string { return "" }, want: "is not known"},
		{name: "changed", acceptNew: true, file: func(f fixture) string { return knownhosts.Line([]string{f.srv.addr}, other) }, want: "has CHANGED"},
		{name: "revoked", file: func(f fixture) string {
			return "@revoked * " + strings.TrimSpace(string(ssh.MarshalAuthorizedKey(f.srv.hostKey())))
		}, want: "is marked @revoked"},
		{name: "unreachable", file: func(fixture) string { return "" }, addr: closed, want: "cannot reach " + closed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t, tc.opts...)
			if tc.addr != "" {
				f.cfg.Port = portOf(t, tc.addr)
			}
			f.cfg.KnownHosts = writeKnownHosts(t, tc.file(f))
			f.cfg.AcceptNew = tc.acceptNew
			before, _ := os.ReadFile(f.cfg.KnownHosts)

			k, probeErr := CheckHostKey(context.Background(), f.cfg)
			s, dialErr := DialSSH(context.Background(), f.cfg)
			if s != nil {
				s.Close()
			}
			if after, _ := os.ReadFile(f.cfg.KnownHosts); !bytes.Equal(before, after) {
				t.Errorf("known_hosts changed:\n%s", after)
			}
			if tc.want == "" {
				if probeErr != nil || dialErr != nil || k.Known != tc.known {
					t.Fatalf("CheckHostKey = %+v, %v; DialSSH: %v", k, probeErr, dialErr)
				}
				return
			}
			if probeErr == nil || dialErr == nil || probeErr.Error() != dialErr.Error() {
				t.Fatalf("they disagree:\nCheckHostKey: %v\nDialSSH:      %v", probeErr, dialErr)
			}
			var p *Problem
			if !errors.As(probeErr, &p) || p.Fix == "" || !strings.Contains(p.Error(), tc.want) {
				t.Errorf("error %q: want a *Problem with a fix, saying %q", probeErr, tc.want)
			}
			if k.Known {
				t.Errorf("refused, yet Known: %+v", k)
			}
		})
	}
}

// TestCheckHostKeyAcceptNew: a new key with SSH_ACCEPT_NEW=1 is reported as
// new, not recorded; DialSSH records it, and then it is known.
func TestCheckHostKeyAcceptNew(t *testing.T) {
	f := newFixture(t)
	f.cfg.KnownHosts = filepath.Join(t.TempDir(), ".ssh", "known_hosts")
	f.cfg.AcceptNew = true
	k, err := CheckHostKey(context.Background(), f.cfg)
	norm := knownhosts.Normalize(f.srv.addr)
	if err != nil || !k.New || k.Known || k.Name != norm || k.Fingerprint != "ED25519 "+ssh.FingerprintSHA256(f.srv.hostKey()) || k.File != f.cfg.KnownHosts {
		t.Fatalf("CheckHostKey = %+v, %v", k, err)
	}
	if _, err := os.Stat(f.cfg.KnownHosts); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the probe wrote known_hosts: %v", err)
	}
	dialOK(t, f.cfg).Close()
	if k, err := CheckHostKey(context.Background(), f.cfg); err != nil || !k.Known || k.New {
		t.Errorf("after DialSSH recorded it: %+v, %v", k, err)
	}
}

// TestKeysAgreesWithDialSSH: Keys names what DialSSH offers, and stops
// where DialSSH stops.
func TestKeysAgreesWithDialSSH(t *testing.T) {
	f := newFixture(t)
	got, err := Keys(f.cfg)
	if err != nil || got != "SSH_KEY "+f.cfg.KeyFile+" (ED25519 "+ssh.FingerprintSHA256(mustPub(t, f.cfg.KeyFile))+")" {
		t.Fatalf("Keys = %q, %v", got, err)
	}

	wrong := testenv.NewKey(t)
	f.cfg.KeyFile = wrong.TempFile(t, "")
	offered, err := Keys(f.cfg)
	if err != nil {
		t.Fatal(err)
	}
	wantContains(t, dialErr(t, f.cfg), "refused our key(s) (tried "+offered+")", "ssh-copy-id -i "+f.cfg.KeyFile)

	for _, file := range []string{filepath.Join(t.TempDir(), "no-such-key"), wrong.TempFile(t, "sesame")} {
		f.cfg.KeyFile = file
		_, err := Keys(f.cfg)
		var p *Problem
		if !errors.As(err, &p) || err.Error() != dialErr(t, f.cfg) {
			t.Errorf("SSH_KEY %s: Keys says %v, DialSSH %q", file, err, dialErr(t, f.cfg))
		}
	}
}

func mustPub(t *testing.T, keyFile string) ssh.PublicKey {
	t.Helper()
	pem, err := os.ReadFile(keyFile)
	if err != nil {
		t.Fatal(err)
	}
	s, err := ssh.ParsePrivateKey(pem)
	if err != nil {
		t.Fatal(err)
	}
	return s.PublicKey()
}
