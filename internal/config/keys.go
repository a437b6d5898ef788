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
	Build              // the image build's: BUILD_ARG_* and BUILD_SECRETS
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
	"IMAGE_NAME", "IMAGE_TAG", "DOCKERFILE", "IMAGE_KEEP", "BUILD_TARGET", "BUILD_CACHE_KEEP",
	"TEST_PORT", "HEALTH_PATH", "HEALTH_TIMEOUT", "TEST_DATA",
	"DEPLOY_HOST", "DEPLOY_PATH", "DEPLOY_STRATEGY", "DEPLOY_MODE", "STACK_NAME", "SWARM_NODES", "COMPOSE_FILE", "APP_PORT", "MIGRATIONS",
	"BACKUP_KEEP", "LOCK_WAIT",
	"SSH_KEY", "SSH_KEY_PASSPHRASE", "SSH_KNOWN_HOSTS", "SSH_ACCEPT_NEW", "TRANSFER_COMPRESSION", "TRANSFER_STAGE", "DEPLOY_DOCKER_SUDO",
	"WSL_DISTRO", "DOCKER_VIA_WSL", "DOCKER_SUDO",
}

// toolOnly are keys the tool reads but Print does not show: SSH_AUTH_SOCK
// is the ssh-agent's socket, which the environment sets.
var toolOnly = []string{"SSH_AUTH_SOCK"}

// Build keys: build arguments (BUILD_ARG_X is the build argument X) and the
// secrets handed to RUN --mount=type=secret (see loadBuild).
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

// A name is secret when one of its words (the runs of letters, digits, _
// and . in it) has one of the markers below, compared in upper case.
var (
	// secretWords anywhere in a word: DB_PASSWORD, BOT_TOKEN, MONKEY (better
	// hidden by mistake than shown by mistake).
	secretWords = []string{"TOKEN", "SECRET", "PASSWORD", "PASSWD", "PASSPHRASE", "KEY", "CREDENTIAL", "PRIVATE", "COOKIE"}
	// secretEnds end a word, or are all of it: SMTP_PASS and PASS but not
	// BYPASS, SENTRY_DSN, BASIC_AUTH and AUTH but not AUTHOR or SSH_AUTH_SOCK.
	// PWD alone is the shell's working folder, so only _PWD counts.
	secretEnds  = []string{"_PASS", "_PWD", "_DSN", "AUTH"}
	secretWhole = []string{"PASS", "DSN"}
)

// secretName reports whether s names a secret. It takes a name, or a whole
// .env line (redactLine), where any word naming a secret counts.
func secretName(s string) bool {
	words := strings.FieldsFunc(strings.ToUpper(s), func(r rune) bool { return !isNameRune(r) })
	for _, w := range words {
		if slices.Contains(secretWhole, w) {
			return true
		}
		for _, end := range secretEnds {
			if strings.HasSuffix(w, end) {
				return true
			}
		}
		for _, sw := range secretWords {
			if strings.Contains(w, sw) {
				return true
			}
		}
	}
	return false
}

// isNameRune reports whether r may be part of a .env name (see validKey).
func isNameRune(r rune) bool {
	return r == '_' || r == '.' || r >= '0' && r <= '9' || r >= 'A' && r <= 'Z' || r >= 'a' && r <= 'z'
}

// Redact returns value as it may be shown for variable key: "****" (or ""
// when value is empty) when Classify says key is secret; otherwise value,
// with the password of every URL in it, as in "postgres://user:pass@host/db",
// replaced by "****".
func Redact(key, value string) string {
	if value == "" {
		return ""
	}
	if Classify(key).Secret {
		return redacted
	}
	return redactURLPasswords(value)
}

// redactURLPasswords hides the password of each scheme://user:password@host
// in v, wherever it stands: a value may be a URL, or hold one
// ("--db=postgres://...", "jdbc:postgresql://...").
func redactURLPasswords(v string) string {
	var b strings.Builder
	for {
		i := strings.Index(v, "://")
		if i < 0 {
			break
		}
		authStart := i + 3
		// A scheme is letters, digits, + - . before "://", starting with a letter.
		s := i
		for s > 0 && isSchemeRune(rune(v[s-1])) {
			s--
		}
		for s < i && !unicode.IsLetter(rune(v[s])) {
			s++
		}
		if s == i {
			b.WriteString(v[:authStart])
			v = v[authStart:]
			continue
		}
		// The authority ends at the path, query or fragment, or where the
		// URL itself does (a space or a quote).
		authEnd := len(v)
		if j := strings.IndexFunc(v[authStart:], func(r rune) bool {
			return strings.ContainsRune("/?#\"'`", r) || unicode.IsSpace(r)
		}); j >= 0 {
			authEnd = authStart + j
		}
		auth := v[authStart:authEnd]
		at := strings.LastIndex(auth, "@")
		colon := strings.Index(auth, ":")
		if at >= 0 && colon >= 0 && colon < at-1 { // a password, even an empty user's (redis://:pw@host)
			b.WriteString(v[:authStart+colon+1] + redacted)
			v = v[authStart+at:]
			continue
		}
		b.WriteString(v[:authEnd])
		v = v[authEnd:]
	}
	b.WriteString(v)
	return b.String()
}

func isSchemeRune(r rune) bool {
	return r == '+' || r == '-' || r == '.' || r >= '0' && r <= '9' || r >= 'A' && r <= 'Z' || r >= 'a' && r <= 'z'
}
