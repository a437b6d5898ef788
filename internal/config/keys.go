package config

import (
	"slices"
	"strings"
	"unicode"
)

// One .env holds the tool's settings, the build's, and the app's. Classify
// is the one rule that tells them apart and says which values are secret:
// the app's container (test), the seeded deploy .env, Print and every
// error go by it.

// Owner is whose a .env key is.
type Owner int

const (
	App   Owner = iota // the app's: every key nobody else claims; its container gets them
	Tool               // this tool's own settings: never passed to the app
	Build              // the image build's: BUILD_ARG_* and BUILD_SECRETS (reserved for BuildKit)
)

func (o Owner) String() string {
	switch o {
	case Tool:
		return "tool"
	case Build:
		return "build"
	}
	return "app"
}

// Key is what the tool knows of a .env key.
type Key struct {
	Owner  Owner
	Secret bool // its value is never shown (see Redact)
}

// settingKeys lists the tool's settings in the order Print shows them.
var settingKeys = []string{
	"IMAGE_NAME", "IMAGE_TAG", "DOCKERFILE", "IMAGE_KEEP",
	"TEST_PORT", "HEALTH_PATH", "HEALTH_TIMEOUT", "TEST_DATA",
	"DEPLOY_HOST", "DEPLOY_PATH", "COMPOSE_FILE", "APP_PORT", "MIGRATIONS",
	"BACKUP_KEEP",
	"SSH_KEY", "SSH_KEY_PASSPHRASE", "SSH_KNOWN_HOSTS", "SSH_ACCEPT_NEW", "TRANSFER_COMPRESSION",
	"WSL_DISTRO", "DOCKER_VIA_WSL", "DOCKER_SUDO",
}

// toolOnly are keys the tool reads but Print does not show: SSH_AUTH_SOCK
// is the ssh-agent's socket, which the environment sets.
var toolOnly = []string{"SSH_AUTH_SOCK"}

// Build keys, for the coming BuildKit build: build arguments (BUILD_ARG_X
// is the build argument X) and the secrets handed to RUN --mount=type=secret.
const (
	buildArgPrefix = "BUILD_ARG_"
	buildSecrets   = "BUILD_SECRETS"
)

// Classify says whose key is and whether its value is secret. Names are
// case-sensitive, as in the environment; the secret words are not.
func Classify(key string) Key {
	k := Key{Owner: App, Secret: secretName(key)}
	switch {
	case slices.Contains(settingKeys, key), slices.Contains(toolOnly, key):
		k.Owner = Tool
	case strings.HasPrefix(key, buildArgPrefix), key == buildSecrets:
		k.Owner = Build
	}
	return k
}

const redacted = "****"

// secretWords mark a variable name as holding a secret.
var secretWords = []string{"TOKEN", "SECRET", "PASSWORD", "PASSWD", "KEY", "CREDENTIAL"}

// secretName reports whether s, in any case, contains a secret word. It
// takes a name, or a whole .env line (redactLine).
func secretName(s string) bool {
	s = strings.ToUpper(s)
	for _, w := range secretWords {
		if strings.Contains(s, w) {
			return true
		}
	}
	return false
}

// Redact returns value as it may be shown for variable key: "****" (or ""
// when value is empty) when key is secret (it contains, in any case, TOKEN,
// SECRET, PASSWORD, PASSWD, KEY or CREDENTIAL); otherwise value, with the
// password of a URL such as "postgres://user:pass@host/db" replaced by "****".
func Redact(key, value string) string {
	if value == "" {
		return ""
	}
	if Classify(key).Secret {
		return redacted
	}
	return redactURLPassword(value)
}

// redactURLPassword hides the password in scheme://user:password@host/...
func redactURLPassword(v string) string {
	i := strings.Index(v, "://")
	if i <= 0 {
		return v
	}
	for _, r := range v[:i] { // must look like a scheme
		if !(r == '+' || r == '-' || r == '.' || r >= '0' && r <= '9' || unicode.IsLetter(r)) {
			return v
		}
	}
	authStart := i + 3
	authEnd := len(v)
	if j := strings.IndexAny(v[authStart:], "/?#"); j >= 0 {
		authEnd = authStart + j
	}
	at := strings.LastIndex(v[authStart:authEnd], "@")
	if at < 0 {
		return v
	}
	userinfo := v[authStart : authStart+at]
	colon := strings.Index(userinfo, ":")
	if colon < 0 || colon == len(userinfo)-1 {
		return v
	}
	return v[:authStart+colon+1] + redacted + v[authStart+at:]
}
