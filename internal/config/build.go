package config

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"regexp"
	"slices"
	"strings"

	units "github.com/docker/go-units"
)

// BuildSecret is one RUN --mount=type=secret,id=ID source. Its value never
// appears in output, in an error or in the image (inspect checks).
type BuildSecret struct {
	ID    string
	From  string // where the value came from, for messages: "pip_token in .env", "file .npmrc"
	Value []byte
}

// The build arguments the tool sets itself on every build.
var toolBuildArgs = []string{"VERSION", "COMMIT"}

const defaultBuildCacheKeep = "5GB"

var validBuildName = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_.-]*$`)

// loadBuild reads the build's settings: BUILD_ARG_<NAME> (from .env and the
// environment), BUILD_TARGET, BUILD_SECRETS and BUILD_CACHE_KEEP.
func (l *loader) loadBuild() {
	c := l.c
	c.BuildArgs = map[string]string{}
	keys := map[string]bool{}
	for k := range l.dotenv {
		keys[k] = true
	}
	for k := range l.env {
		keys[k] = true
	}
	for _, k := range slices.Sorted(func(yield func(string) bool) {
		for k := range keys {
			if !yield(k) {
				return
			}
		}
	}) {
		name, ok := strings.CutPrefix(k, buildArgPrefix)
		if !ok {
			continue
		}
		s := l.get(k, "")
		c.BuildEnv[k] = s.val
		switch {
		case slices.Contains(toolBuildArgs, name):
			l.fail(s, fmt.Sprintf("is set by the tool on every build (the image's version and commit); remove %s and use IMAGE_TAG for the version", k))
		case secretName(name):
			l.fail(s, fmt.Sprintf("looks like a secret, and a build argument stays in the image's history; rename it %s and pass it as a secret mount (BUILD_SECRETS=%s, RUN --mount=type=secret,id=%s)", name, name, name))
		case !validBuildName.MatchString(name):
			l.fail(s, fmt.Sprintf("does not name a build argument (BUILD_ARG_ is followed by letters, digits and _); rename %s", k))
		default:
			c.BuildArgs[name] = s.val
		}
	}

	s := l.get("BUILD_TARGET", "")
	if s.set && !validBuildName.MatchString(s.val) {
		l.fail(s, "is not a stage name (FROM ... AS <name>); set BUILD_TARGET to one of the Dockerfile's stages, or leave it unset for the last")
	}
	c.BuildTarget = s.val

	s = l.get("BUILD_CACHE_KEEP", defaultBuildCacheKeep)
	if n, err := units.FromHumanSize(s.val); err != nil || n < 0 {
		l.fail(s, "is not a size (e.g. 5GB, 500MB); set BUILD_CACHE_KEEP to how much build cache cleanup keeps")
	} else {
		c.BuildCacheKeep = n
	}

	s = l.get(buildSecrets, "")
	if s.set {
		c.BuildEnv[buildSecrets] = s.val
	}
	for item := range strings.SplitSeq(s.val, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		if sec, ok := l.buildSecret(s, item); ok {
			c.BuildSecrets = append(c.BuildSecrets, sec)
		}
	}
}

// buildSecret resolves one item of BUILD_SECRETS: "id" (the variable id),
// "id=env:VAR" or "id=file:path".
func (l *loader) buildSecret(s setting, item string) (BuildSecret, bool) {
	id, src, hasSrc := strings.Cut(item, "=")
	if !validBuildName.MatchString(id) {
		l.fail(s, fmt.Sprintf("has %q, which is not a secret id (letters, digits, _ . -); write id, id=env:VAR or id=file:path, separated by commas", id))
		return BuildSecret{}, false
	}
	for _, o := range l.c.BuildSecrets {
		if o.ID == id {
			l.fail(s, fmt.Sprintf("names the secret %s twice; keep one", id))
			return BuildSecret{}, false
		}
	}
	kind, arg, _ := strings.Cut(src, ":")
	switch {
	case !hasSrc:
		kind, arg = "env", id
	case kind == "env" && validKey.MatchString(arg), kind == "file" && arg != "":
	default:
		l.fail(s, fmt.Sprintf("has %s=%q: write %s, %s=env:VAR or %s=file:path", id, src, id, id, id))
		return BuildSecret{}, false
	}
	if kind == "file" {
		p, ok := l.localPath(setting{key: s.key, val: arg, src: s.src, set: true}, s.key)
		if !ok {
			return BuildSecret{}, false
		}
		b, err := os.ReadFile(p)
		if err != nil {
			why := "cannot be read: " + err.Error()
			if errors.Is(err, fs.ErrNotExist) {
				why = "does not exist"
			}
			l.fail(s, fmt.Sprintf("reads the secret %s from %s, which %s; create it or fix the path", id, p, why))
			return BuildSecret{}, false
		}
		return BuildSecret{ID: id, From: "file " + arg, Value: b}, true
	}
	v, inEnv := l.env[arg]
	_, inDotenv := l.dotenv[arg]
	if !inEnv {
		v = l.dotenv[arg]
	}
	if !inEnv && !inDotenv {
		l.fail(s, fmt.Sprintf("names the secret %s, but neither .env nor the environment sets %s; set it, or write %s=env:VAR or %s=file:path", id, arg, id, id))
		return BuildSecret{}, false
	}
	// The variable is the build's now: not the app's, never shown.
	delete(l.c.AppEnv, arg)
	l.c.BuildEnv[arg] = v
	l.c.Sources[arg] = l.sourceOf(arg)
	l.c.buildSecretKeys = append(l.c.buildSecretKeys, arg)
	return BuildSecret{ID: id, From: arg + " (" + l.sourceOf(arg) + ")", Value: []byte(v)}, true
}

// SecretKey reports whether the variable key holds a secret: by its name
// (Classify) or because BUILD_SECRETS reads a build secret from it.
func (c *Config) SecretKey(key string) bool {
	return Classify(key).Secret || slices.Contains(c.buildSecretKeys, key)
}
