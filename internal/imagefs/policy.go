package imagefs

import (
	"bytes"
	"path"
	"strings"
)

// Forbidden says why a path must not be in an image, or "" when it may be.
// head is the start of the file's contents (nil for directories), so keys
// are caught whatever they are called.
//
// The rules mirror what the project's .dockerignore keeps out: secrets
// (.env files, private keys), history (.git) and state that belongs to the
// server's volumes (data/, test-data/, backups/).
func Forbidden(p string, dir bool, head []byte) string {
	parts := strings.Split(strings.Trim(p, "/"), "/")
	for i, part := range parts {
		last := i == len(parts)-1
		switch {
		case part == ".git":
			return "git history"
		case part == "data" && (!last || !dir) && underApp(parts[:i]):
			return "app data: it belongs in the ./data volume"
		case part == "test-data" || part == "backups":
			if !last || !dir {
				return part + " folder"
			}
		case last && !dir && isEnvFile(part):
			return "environment file with secrets"
		}
	}
	base := path.Base(p)
	switch {
	case dir:
		return ""
	case isKeyName(base):
		return "private key file name"
	case bytes.Contains(head, []byte("PRIVATE KEY-----")):
		return "private key material"
	}
	return ""
}

// underApp limits the data/ rule to the app's own tree, so a base image's
// /usr/share/.../data does not trip it.
func underApp(parents []string) bool {
	return len(parents) == 0 || parents[0] == "app"
}

func isEnvFile(name string) bool {
	if name == ".env" {
		return true
	}
	if !strings.HasPrefix(name, ".env.") {
		return false
	}
	switch strings.TrimPrefix(name, ".env.") {
	case "example", "sample", "template", "dist":
		return false
	}
	return true
}

func isKeyName(name string) bool {
	switch name {
	case "id_rsa", "id_dsa", "id_ecdsa", "id_ed25519", "id_ecdsa_sk", "id_ed25519_sk":
		return true
	}
	return strings.HasSuffix(name, ".pem") && strings.Contains(name, "key") || strings.HasSuffix(name, ".key")
}
