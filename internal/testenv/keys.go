package testenv

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/crypto/ssh"
)

// Key is an ed25519 key pair made for one test: a user key, a host key, or
// one the other side does not know. It is the tests' only key generator.
type Key struct {
	Private ed25519.PrivateKey
	Public  ssh.PublicKey
}

// NewKey makes a fresh ed25519 key pair.
func NewKey(t testing.TB) Key {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	k, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return Key{Private: priv, Public: k}
}

// Signer is the key for an in-process SSH server or client.
func (k Key) Signer(t testing.TB) ssh.Signer {
	t.Helper()
	s, err := ssh.NewSignerFromKey(k.Private)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// WriteFile writes the private key to path in OpenSSH's format, encrypted
// with passphrase unless it is empty, and the public key to path.pub, as
// ssh-keygen does. It returns path.
func (k Key) WriteFile(t testing.TB, path, passphrase string) string {
	t.Helper()
	var block *pem.Block
	var err error
	if passphrase == "" {
		block, err = ssh.MarshalPrivateKey(k.Private, "carebot test")
	} else {
		block, err = ssh.MarshalPrivateKeyWithPassphrase(k.Private, "carebot test", []byte(passphrase))
	}
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path+".pub", ssh.MarshalAuthorizedKey(k.Public), 0o644); err != nil {
		t.Fatal(err)
	}
	return path
}

// TempFile writes the key (see WriteFile) as id_ed25519 in a folder of its
// own that the test removes, and returns its path.
func (k Key) TempFile(t testing.TB, passphrase string) string {
	t.Helper()
	return k.WriteFile(t, filepath.Join(t.TempDir(), "id_ed25519"), passphrase)
}
