// Package config loads the settings of the CareBot build/deploy tool.
//
// Settings come from the .env file in the project root (which also holds the
// app's own settings, such as BOT_TOKEN: Classify tells whose a key is) and
// from the process environment, which wins over .env. A variable that is
// set but empty counts as unset, so the default applies (an empty variable
// in the environment therefore also hides the .env value). Every setting is validated by Load, and every
// problem is reported as a one-line error that names the setting, says where
// its value came from (".env:LINE", "environment" or the default) and what
// to fix. Secret values never appear in errors or in Print; see Redact.
package config

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"net"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"

	"github.com/carebot/carebot/internal/text"

	units "github.com/docker/go-units"
)

// Sources of a setting's value, as stored in Config.Sources. A value read
// from .env has the source ".env:LINE".
const (
	SourceDefault     = "default"
	SourceGit         = "git" // IMAGE_TAG derived from the git commit
	SourceEnvironment = "environment"
)

// Config is the validated configuration of the build/deploy tool.
type Config struct {
	Dir            string            // project root (absolute)
	ImageName      string            // IMAGE_NAME, default "carebot"
	ImageTag       string            // IMAGE_TAG, default: short git commit of Dir, plus "-dirty" for uncommitted changes
	Commit         string            // full git commit of Dir ("" when unknown), for OCI labels
	Dirty          bool              // Dir had uncommitted or untracked changes (false when unknown)
	Dockerfile     string            // DOCKERFILE, default "Dockerfile.production" (absolute)
	ComposeFile    string            // COMPOSE_FILE, default "docker-compose.production.yml" (absolute)
	AppPort        int               // APP_PORT, default 5555
	TestPort       int               // TEST_PORT, default 5556
	HealthPath     string            // HEALTH_PATH, default "/health"
	HealthTimeout  time.Duration     // HEALTH_TIMEOUT, default 60s
	DeployHost     string            // DEPLOY_HOST as written; "" deploys to this machine
	Targets        []Target          // DEPLOY_HOST parsed: the servers deployed to (none: this machine)
	Strategy       string            // DEPLOY_STRATEGY with several servers: rolling (one at a time) or all
	Mode           string            // DEPLOY_MODE: compose, or swarm (DEPLOY_HOST is a Swarm manager)
	StackName      string            // STACK_NAME in swarm mode; default IMAGE_NAME
	SwarmNodes     map[string]Target // SWARM_NODES parsed: a node's swarm address -> how to reach it over SSH
	SwarmNodesSpec string            // SWARM_NODES as written
	DeployPath     string            // DEPLOY_PATH (absolute; a remote path when DeployHost is set)
	ImageKeep      int               // IMAGE_KEEP, default 5
	BackupKeep     int               // BACKUP_KEEP, default 10
	LockWait       time.Duration     // LOCK_WAIT, default 0: how long a run waits for another's deploy lock (0 refuses at once)
	TestData       string            // TEST_DATA, default "./test-data" (absolute; may not exist)
	Migrations     string            // MIGRATIONS, default "./migrations" (absolute; may not exist)

	// SSH, read only when DeployHost is set.
	SSHKey           string // SSH_KEY: private key file ("" = the agent, then ~/.ssh/id_*)
	SSHKeyPassphrase string // SSH_KEY_PASSPHRASE (secret)
	SSHAuthSock      string // SSH_AUTH_SOCK: the ssh-agent's socket
	SSHKnownHosts    string // SSH_KNOWN_HOSTS, default ~/.ssh/known_hosts
	SSHAcceptNew     bool   // SSH_ACCEPT_NEW: record an unknown host key (a changed one is always refused)
	Compression      string // TRANSFER_COMPRESSION: auto (zstd where the server takes it, else gzip), zstd, gzip, none
	Stage            string // TRANSFER_STAGE: auto (stage layers in DEPLOY_PATH/.carebot/staging above 32 MiB), always, never

	// The Docker engine inside WSL, used from Windows.
	WSLDistro    string // WSL_DISTRO, default "Ubuntu-22.04": the WSL distro whose engine Windows uses
	DockerViaWSL string // DOCKER_VIA_WSL: "auto" (default: through WSL on Windows unless DOCKER_HOST is set), "1" (always, as tests on Linux do), "0" (never)
	DockerSudo   bool   // DOCKER_SUDO: run docker as `sudo -n docker` inside WSL

	DeployDockerSudo bool // DEPLOY_DOCKER_SUDO: reach the server's engine as `sudo -n docker`

	EnvFile string // path of the .env that was read ("" when there was none)

	// The keys of .env that are not the tool's settings (see Classify),
	// each with its value (the environment's when set there).
	AppEnv   map[string]string // the app's: its test container's environment
	BuildEnv map[string]string // the build's: BUILD_ARG_*, BUILD_SECRETS and the variables it reads
	// AppDotenv is .env's lines that set the app's keys, as written: what
	// a first deploy to this machine writes as the deploy folder's .env, so
	// the tool's settings and secrets stay here. Empty without a .env.
	AppDotenv []byte

	// The build's settings (config/build.go).
	BuildArgs      map[string]string // BUILD_ARG_<NAME>=value: build argument NAME
	BuildTarget    string            // BUILD_TARGET: the stage to build; "" is the last
	BuildSecrets   []BuildSecret     // BUILD_SECRETS
	BuildCacheKeep int64             // BUILD_CACHE_KEEP: bytes of build cache cleanup keeps

	buildSecretKeys []string // variables BUILD_SECRETS reads: secret, not the app's

	// Sources maps each setting above, by variable name, and each AppEnv
	// and BuildEnv key to where its value came from: SourceDefault,
	// SourceGit, SourceEnvironment or ".env:LINE".
	Sources map[string]string
}

// Defaults.
const (
	defaultImageName       = "carebot"
	defaultDockerfile      = "Dockerfile.production"
	defaultComposeFile     = "docker-compose.production.yml"
	defaultAppPort         = 5555
	defaultTestPort        = 5556
	defaultHealthPath      = "/health"
	defaultHealthTimeout   = 60 * time.Second
	defaultLocalDeployPath = "./.deploy/production"
	defaultRemoteDeploy    = "/home/ubuntu/carebot-production"
	defaultImageKeep       = 5
	defaultBackupKeep      = 10
	defaultTestData        = "./test-data"
	defaultMigrations      = "./migrations"
	defaultWSLDistro       = "Ubuntu-22.04"

	shortCommitLen = 7
	maxDuration    = 24 * time.Hour // of HEALTH_TIMEOUT and LOCK_WAIT
)

// SettingError reports one invalid setting. Its message is a single line.
type SettingError struct {
	Key    string // variable name, e.g. "APP_PORT"
	Value  string // the offending value, already passed through Redact ("" when unset)
	Source string // SourceDefault, SourceGit, SourceEnvironment or ".env:LINE"
	Msg    string // what is wrong and how to fix it
}

// Error formats e as, for example,
//
//	.env:3: APP_PORT="abc" is not a port number (1-65535)
//	environment: APP_PORT="abc" is not a port number (1-65535)
//	DOCKERFILE="Dockerfile.production" (default) does not exist (looked for /x/Dockerfile.production; set DOCKERFILE to your Dockerfile)
//	IMAGE_TAG is not set and ... (set IMAGE_TAG)
func (e *SettingError) Error() string {
	src := e.Source
	if src == "" {
		src = SourceDefault
	}
	if src == SourceDefault || src == SourceGit {
		if e.Value == "" {
			return e.Key + " " + e.Msg
		}
		return fmt.Sprintf("%s=%q (%s) %s", e.Key, e.Value, src, e.Msg)
	}
	return fmt.Sprintf("%s: %s=%q %s", src, e.Key, e.Value, e.Msg)
}

// Load reads dir/.env if there is one, lets environ (in os.Environ form)
// override it, applies defaults and validates every setting. On failure it
// returns a *ParseError for an unparsable .env, or all invalid settings as
// *SettingError values joined with errors.Join (one per line).
func Load(dir string, environ []string) (*Config, error) {
	c, err := LoadAll(dir, environ)
	if err != nil {
		return nil, err
	}
	return c, nil
}

// LoadAll is Load for a caller that reports problems rather than stopping
// at them (the doctor): when only settings are invalid, it returns the
// Config as well as their errors; an invalid setting's field may be zero or
// hold the raw value (SSH_KEY keeps its path, so the key can be checked).
// For a missing project directory or an unparsable .env the Config is nil.
func LoadAll(dir string, environ []string) (*Config, error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, fmt.Errorf("project directory %q: %v", dir, err)
	}
	if fi, err := os.Stat(abs); err != nil || !fi.IsDir() {
		return nil, fmt.Errorf("project directory %s does not exist or is not a directory", abs)
	}

	l := &loader{
		dir: abs,
		env: parseEnviron(environ),
		c:   &Config{Dir: abs, AppEnv: map[string]string{}, BuildEnv: map[string]string{}, Sources: map[string]string{}},
	}
	envFile := filepath.Join(abs, ".env")
	switch d, err := readDotenv(envFile); {
	case err == nil:
		l.c.EnvFile, l.dotenv, l.lines, l.d = envFile, d.values, d.lineOf, &d
	case errors.Is(err, fs.ErrNotExist):
		// No .env (as in CI): defaults and environment only.
	default:
		var pe *ParseError
		if errors.As(err, &pe) {
			return nil, err
		}
		return nil, fmt.Errorf(".env: %v", err)
	}
	for k, v := range l.dotenv {
		if ev, ok := l.env[k]; ok {
			v = ev
		}
		switch Classify(k).Owner {
		case App:
			l.c.AppEnv[k] = v
		case Build:
			l.c.BuildEnv[k] = v
		case Tool:
			continue // read below, validated, into its field
		}
		l.c.Sources[k] = l.sourceOf(k)
	}

	l.loadImage()
	l.loadTest()
	l.loadDeploy()
	l.loadSSH()
	l.loadWSL()
	l.loadBuild()
	if l.d != nil {
		l.c.AppDotenv = l.d.only(App, l.c.buildSecretKeys...)
	}
	return l.c, errors.Join(l.errs...)
}

// Image returns the image reference ImageName:ImageTag.
func (c *Config) Image() string { return c.ImageName + ":" + c.ImageTag }

// Remote reports whether deploys go over SSH to servers.
func (c *Config) Remote() bool { return len(c.Targets) > 0 }

// Target is one server reached over SSH, every part resolved: DEPLOY_HOST
// is parsed here and nowhere else.
type Target struct {
	User string // the login: from DEPLOY_HOST, else $USER, else root
	Host string // a name or an address (IPv6 without brackets)
	Port int    // 22 unless DEPLOY_HOST names another
}

// Addr is host:port, with an IPv6 address in brackets.
func (t Target) Addr() string { return net.JoinHostPort(t.Host, strconv.Itoa(t.Port)) }

// String is user@host:port, as messages name a server.
func (t Target) String() string { return t.User + "@" + t.Addr() }

// Print writes one line per setting, "KEY=value (source: SOURCE)": first
// the tool's settings, then the build's and the app's keys of .env, each
// in name order. Secret values are redacted (see Redact).
func (c *Config) Print(w io.Writer) {
	values := map[string]string{
		"IMAGE_NAME":      c.ImageName,
		"IMAGE_TAG":       c.ImageTag,
		"DOCKERFILE":      c.Dockerfile,
		"IMAGE_KEEP":      strconv.Itoa(c.ImageKeep),
		"TEST_PORT":       strconv.Itoa(c.TestPort),
		"HEALTH_PATH":     c.HealthPath,
		"HEALTH_TIMEOUT":  c.HealthTimeout.String(),
		"TEST_DATA":       c.TestData,
		"DEPLOY_HOST":     c.DeployHost,
		"DEPLOY_PATH":     c.DeployPath,
		"DEPLOY_STRATEGY": c.Strategy,
		"DEPLOY_MODE":     c.Mode,
		"STACK_NAME":      c.StackName,
		"SWARM_NODES":     c.SwarmNodesSpec,
		"COMPOSE_FILE":    c.ComposeFile,
		"APP_PORT":        strconv.Itoa(c.AppPort),
		"MIGRATIONS":      c.Migrations,

		"BACKUP_KEEP":          strconv.Itoa(c.BackupKeep),
		"LOCK_WAIT":            c.LockWait.String(),
		"SSH_KEY":              c.SSHKey,
		"SSH_KEY_PASSPHRASE":   c.SSHKeyPassphrase,
		"SSH_KNOWN_HOSTS":      c.SSHKnownHosts,
		"SSH_ACCEPT_NEW":       strconv.FormatBool(c.SSHAcceptNew),
		"TRANSFER_COMPRESSION": c.Compression,
		"DEPLOY_DOCKER_SUDO":   strconv.FormatBool(c.DeployDockerSudo),
		"TRANSFER_STAGE":       c.Stage,

		"BUILD_TARGET":     c.BuildTarget,
		"BUILD_CACHE_KEEP": units.HumanSize(float64(c.BuildCacheKeep)),

		"WSL_DISTRO":     c.WSLDistro,
		"DOCKER_VIA_WSL": c.DockerViaWSL,
		"DOCKER_SUDO":    strconv.FormatBool(c.DockerSudo),
	}
	line := func(k, v string) {
		src := c.Sources[k]
		if src == "" {
			src = SourceDefault
		}
		if c.SecretKey(k) && v != "" {
			v = redacted
		}
		fmt.Fprintf(w, "%s=%s (source: %s)\n", k, printable(Redact(k, v)), src)
	}
	for _, k := range settingKeys {
		line(k, values[k])
	}
	for _, env := range []map[string]string{c.BuildEnv, c.AppEnv} {
		for _, k := range slices.Sorted(maps.Keys(env)) {
			line(k, env[k])
		}
	}
}

// printable quotes v when printing it raw could be misread or span lines.
func printable(v string) string {
	if strings.IndexFunc(v, func(r rune) bool {
		return unicode.IsSpace(r) || !unicode.IsPrint(r) || strings.ContainsRune(`"'#\`, r)
	}) >= 0 {
		return strconv.Quote(v)
	}
	return v
}

// gitInfo returns the commit checked out in dir and whether the work tree
// has changes (git status --porcelain is not empty). Tests replace it.
var gitInfo = func(dir string) (commit string, dirty bool, err error) {
	commit, err = runGit(dir, "rev-parse", "--verify", "HEAD^{commit}")
	if err != nil {
		return "", false, err
	}
	status, err := runGit(dir, "status", "--porcelain")
	if err != nil {
		return "", false, err
	}
	return commit, status != "", nil
}

// loader carries the state of one Load.
type loader struct {
	dir    string
	env    map[string]string
	dotenv map[string]string
	lines  map[string]int
	d      *dotenv
	c      *Config
	errs   []error
}

// setting is one variable as looked up: its trimmed value and source.
type setting struct {
	key, val, src string
	set           bool // false: unset or empty, val is the default
}

func parseEnviron(environ []string) map[string]string {
	m := make(map[string]string, len(environ))
	for _, kv := range environ {
		if k, v, ok := strings.Cut(kv, "="); ok && k != "" {
			m[k] = v // later entries win, as in os/exec
		}
	}
	return m
}

func (l *loader) sourceOf(key string) string {
	if _, ok := l.env[key]; ok {
		return SourceEnvironment
	}
	if n, ok := l.lines[key]; ok {
		return ".env:" + strconv.Itoa(n)
	}
	return SourceDefault
}

// get looks key up (environment first, then .env) and records its source.
func (l *loader) get(key, def string) setting {
	v, ok := l.env[key]
	if !ok {
		v = l.dotenv[key]
	}
	s := setting{key: key, val: strings.TrimSpace(v), src: l.sourceOf(key), set: true}
	if s.val == "" {
		s = setting{key: key, val: def, src: SourceDefault}
	}
	l.c.Sources[key] = s.src
	return s
}

// fail records that s is invalid; msg must be one line and must not
// contain the value (it is shown, redacted, by SettingError).
func (l *loader) fail(s setting, msg string) {
	l.errs = append(l.errs, &SettingError{Key: s.key, Value: Redact(s.key, s.val), Source: s.src, Msg: msg})
}

func (l *loader) loadImage() {
	c := l.c

	s := l.get("IMAGE_NAME", defaultImageName)
	if msg := checkImageName(s.val); msg != "" {
		l.fail(s, msg)
	}
	c.ImageName = s.val

	commit, dirty, gitErr := gitInfo(l.dir)
	if gitErr == nil {
		c.Commit, c.Dirty = commit, dirty
	}
	s = l.get("IMAGE_TAG", "")
	switch {
	case s.set:
		if !validTag.MatchString(s.val) {
			l.fail(s, "is not a valid Docker tag (up to 128 of A-Z a-z 0-9 _ . -, not starting with . or -)")
		}
		c.ImageTag = s.val
	case gitErr != nil:
		l.fail(s, fmt.Sprintf("is not set and the git commit of %s is unknown (%s); set IMAGE_TAG", l.dir, text.FirstLine(gitErr.Error())))
	case len(commit) < shortCommitLen || !validTag.MatchString(commit):
		l.fail(s, fmt.Sprintf("is not set and git gave an unusable commit %q for %s; set IMAGE_TAG", commit, l.dir))
	default:
		c.ImageTag = commit[:shortCommitLen]
		if dirty {
			c.ImageTag += "-dirty"
		}
		c.Sources[s.key] = SourceGit
	}

	c.Dockerfile = l.file(l.get("DOCKERFILE", defaultDockerfile), "set DOCKERFILE to your Dockerfile")

	s = l.get("IMAGE_KEEP", strconv.Itoa(defaultImageKeep))
	if n, err := strconv.Atoi(s.val); err != nil || n < 1 {
		l.fail(s, "is not a whole number of images to keep (1 or more)")
	} else {
		c.ImageKeep = n
	}
}

func (l *loader) loadTest() {
	c := l.c

	app := l.get("APP_PORT", strconv.Itoa(defaultAppPort))
	c.AppPort = l.port(app)
	test := l.get("TEST_PORT", strconv.Itoa(defaultTestPort))
	c.TestPort = l.port(test)
	if c.AppPort != 0 && c.AppPort == c.TestPort {
		// Blame the one that was set (TEST_PORT when both were).
		if test.set || !app.set {
			l.fail(test, fmt.Sprintf("is the same port as APP_PORT (%s); set TEST_PORT to a different port", app.src))
		} else {
			l.fail(app, fmt.Sprintf("is the same port as TEST_PORT (%s); set APP_PORT or TEST_PORT to a different port", test.src))
		}
	}

	s := l.get("HEALTH_PATH", defaultHealthPath)
	switch {
	case !strings.HasPrefix(s.val, "/"):
		l.fail(s, `does not start with "/" (set HEALTH_PATH to a URL path such as /health)`)
	case strings.IndexFunc(s.val, func(r rune) bool { return unicode.IsSpace(r) || !unicode.IsPrint(r) || r == '#' }) >= 0:
		l.fail(s, `contains spaces, control characters or "#" (set HEALTH_PATH to a URL path such as /health)`)
	default:
		c.HealthPath = s.val
	}

	s = l.get("HEALTH_TIMEOUT", defaultHealthTimeout.String())
	if d, msg := parseDuration(s.val, false, `(use a duration such as "90s" or "2m", or a whole number of seconds)`); msg != "" {
		l.fail(s, msg)
	} else {
		c.HealthTimeout = d
	}

	c.TestData = l.directory(l.get("TEST_DATA", defaultTestData), true) // Test creates it
}

func (l *loader) loadDeploy() {
	c := l.c

	host := l.get("DEPLOY_HOST", "")
	if host.set {
		c.DeployHost = host.val
		user := l.env["USER"]
		if user == "" {
			user = "root" // what an unnamed login most often is on a server of one's own
		}
		for _, part := range strings.Split(host.val, ",") {
			t, msg := parseDeployHost(strings.TrimSpace(part), user)
			if msg != "" {
				l.fail(host, msg+" (set DEPLOY_HOST to [user@]host[:port], e.g. ubuntu@203.0.113.10, or leave it empty to deploy to this machine)")
				break
			}
			c.Targets = append(c.Targets, t)
		}
		seen := map[string]bool{}
		for _, t := range c.Targets {
			if seen[t.String()] {
				l.fail(host, "names "+t.String()+" twice: name each server once")
				break
			}
			seen[t.String()] = true
		}
	}
	switch st := l.get("DEPLOY_STRATEGY", "rolling"); st.val {
	case "rolling", "all":
		c.Strategy = st.val
	default:
		l.fail(st, "is not one of rolling (one server at a time), all (every server at once)")
	}
	l.loadSwarm(host.set)

	if host.set {
		s := l.get("DEPLOY_PATH", defaultRemoteDeploy)
		switch {
		case strings.HasPrefix(s.val, "~"):
			l.fail(s, "starts with ~, which is not expanded; set DEPLOY_PATH to an absolute path on DEPLOY_HOST such as /home/ubuntu/carebot-production")
		case !path.IsAbs(s.val):
			l.fail(s, "is not an absolute path; set DEPLOY_PATH to an absolute path on DEPLOY_HOST such as /home/ubuntu/carebot-production")
		case hasControl(s.val):
			l.fail(s, "contains control characters; set DEPLOY_PATH to a plain absolute path")
		case path.Clean(s.val) == "/":
			l.fail(s, "is the root directory; set DEPLOY_PATH to a directory of its own")
		default:
			c.DeployPath = path.Clean(s.val)
		}
	} else {
		s := l.get("DEPLOY_PATH", defaultLocalDeployPath)
		if p, ok := l.localPath(s, "DEPLOY_PATH"); ok {
			if p == filepath.VolumeName(p)+string(filepath.Separator) {
				l.fail(s, "is the root directory; set DEPLOY_PATH to a directory of its own")
			} else if fi, err := os.Stat(p); err == nil && !fi.IsDir() {
				l.fail(s, fmt.Sprintf("is not a directory (%s); set DEPLOY_PATH to a directory", p))
			} else {
				c.DeployPath = p
			}
		}
	}

	bk := l.get("BACKUP_KEEP", strconv.Itoa(defaultBackupKeep))
	if n, err := strconv.Atoi(bk.val); err != nil || n < 1 {
		l.fail(bk, "is not a whole number of 1 or more (how many data backups to keep)")
	} else {
		c.BackupKeep = n
	}

	lw := l.get("LOCK_WAIT", "0")
	if d, msg := parseDuration(lw.val, true, `(use a duration such as "30s" or "2m", a whole number of seconds, or 0 to refuse at once)`); msg != "" {
		l.fail(lw, msg)
	} else {
		c.LockWait = d
	}

	c.ComposeFile = l.file(l.get("COMPOSE_FILE", defaultComposeFile), "set COMPOSE_FILE to your production compose file")
	c.Migrations = l.directory(l.get("MIGRATIONS", defaultMigrations), false)
}

func (l *loader) loadSSH() {
	c := l.c
	s := l.get("TRANSFER_COMPRESSION", "auto")
	switch s.val {
	case "auto", "zstd", "gzip", "none":
		c.Compression = s.val
	default:
		l.fail(s, "is not one of auto, zstd, gzip, none")
	}
	switch st := l.get("TRANSFER_STAGE", "auto"); st.val {
	case "auto", "always", "never":
		c.Stage = st.val
	default:
		l.fail(st, "is not one of auto, always, never")
	}
	c.SSHKeyPassphrase = l.get("SSH_KEY_PASSPHRASE", "").val
	c.SSHAuthSock = l.get("SSH_AUTH_SOCK", "").val
	if a := l.get("SSH_ACCEPT_NEW", "0"); a.set {
		v, err := strconv.ParseBool(a.val)
		if err != nil {
			l.fail(a, "is not 1/0 or true/false")
		}
		c.SSHAcceptNew = v
	}
	home, _ := os.UserHomeDir()
	if k := l.get("SSH_KEY", ""); k.set {
		c.SSHKey = l.homePath(k, home)
		if c.SSHKey != "" && c.Remote() {
			if _, err := os.Stat(c.SSHKey); err != nil {
				l.fail(k, fmt.Sprintf("cannot be read (%s); set SSH_KEY to your private key file, or leave it empty to use ssh-agent", text.FirstLine(err.Error())))
			}
		}
	}
	c.SSHKnownHosts = l.homePath(l.get("SSH_KNOWN_HOSTS", "~/.ssh/known_hosts"), home)
}

var validDistro = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)

func (l *loader) loadWSL() {
	c := l.c
	s := l.get("WSL_DISTRO", defaultWSLDistro)
	if validDistro.MatchString(s.val) {
		c.WSLDistro = s.val
	} else {
		l.fail(s, "is not a WSL distro name (letters, digits, . _ -; `wsl -l -q` lists yours)")
	}
	s = l.get("DOCKER_VIA_WSL", "auto")
	if s.val == "auto" {
		c.DockerViaWSL = s.val
	} else if v, err := strconv.ParseBool(s.val); err != nil {
		l.fail(s, "is not auto, 1 or 0 (auto: through WSL on Windows unless DOCKER_HOST is set)")
	} else if v {
		c.DockerViaWSL = "1"
	} else {
		c.DockerViaWSL = "0"
	}
	if s := l.get("DOCKER_SUDO", "0"); s.set {
		v, err := strconv.ParseBool(s.val)
		if err != nil {
			l.fail(s, "is not 1/0 or true/false")
		}
		c.DockerSudo = v
	}
	if s := l.get("DEPLOY_DOCKER_SUDO", "0"); s.set {
		v, err := strconv.ParseBool(s.val)
		if err != nil {
			l.fail(s, "is not 1/0 or true/false")
		}
		c.DeployDockerSudo = v
	}
}

// homePath resolves a path on this machine where ~ means the home folder,
// as it does for ssh.
func (l *loader) homePath(s setting, home string) string {
	v := s.val
	if v == "~" || strings.HasPrefix(v, "~/") {
		v = filepath.Join(home, strings.TrimPrefix(v, "~"))
	}
	s.val = v
	p, ok := l.localPath(s, s.key)
	if !ok {
		return ""
	}
	return p
}

// localPath makes s.val absolute against the project root.
func (l *loader) localPath(s setting, key string) (string, bool) {
	switch {
	case strings.HasPrefix(s.val, "~"):
		l.fail(s, fmt.Sprintf("starts with ~, which is not expanded; set %s to a path relative to %s or an absolute one", key, l.dir))
		return "", false
	case hasControl(s.val):
		l.fail(s, fmt.Sprintf("contains control characters; set %s to a plain path", key))
		return "", false
	}
	p := s.val
	if !filepath.IsAbs(p) {
		p = filepath.Join(l.dir, p)
	}
	return filepath.Clean(p), true
}

// file resolves s as a path to an existing regular file.
func (l *loader) file(s setting, fix string) string {
	p, ok := l.localPath(s, s.key)
	if !ok {
		return ""
	}
	fi, err := os.Stat(p)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		l.fail(s, fmt.Sprintf("does not exist (looked for %s; %s)", p, fix))
	case err != nil:
		l.fail(s, fmt.Sprintf("cannot be read (%s; %s)", text.FirstLine(err.Error()), fix))
	case fi.IsDir():
		l.fail(s, fmt.Sprintf("is a directory, not a file (%s; %s)", p, fix))
	default:
		return p
	}
	return ""
}

// directory resolves s as a path to a directory, which may be missing when the
// setting is left to its default, or when the task creates it (create).
func (l *loader) directory(s setting, create bool) string {
	p, ok := l.localPath(s, s.key)
	if !ok {
		return ""
	}
	fi, err := os.Stat(p)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if s.set && !create {
			l.fail(s, fmt.Sprintf("does not exist (looked for %s; create it, fix %s or leave %s unset)", p, s.key, s.key))
			return ""
		}
	case err != nil:
		l.fail(s, fmt.Sprintf("cannot be read (%s)", text.FirstLine(err.Error())))
		return ""
	case !fi.IsDir():
		l.fail(s, fmt.Sprintf("is not a directory (%s; set %s to a directory)", p, s.key))
		return ""
	}
	return p
}

func (l *loader) port(s setting) int {
	n, err := strconv.Atoi(s.val)
	if err != nil || n < 1 || n > 65535 {
		l.fail(s, "is not a port number (1-65535)")
		return 0
	}
	return n
}

var (
	// Docker reference grammar (distribution/reference), lowercase only.
	pathComponent   = `[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*`
	domainComponent = `(?:[a-z0-9]|[a-z0-9][a-z0-9-]*[a-z0-9])`
	domain          = domainComponent + `(?:\.` + domainComponent + `)*(?::[0-9]+)?`
	validRepo       = regexp.MustCompile(`^(?:` + domain + `/)?` + pathComponent + `(?:/` + pathComponent + `)*$`)
	validTag        = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$`)
)

// checkImageName returns what is wrong with name as a Docker repository
// name, or "".
func checkImageName(name string) string {
	last := name[strings.LastIndex(name, "/")+1:]
	switch {
	case strings.Contains(name, "@"):
		return "must not contain a digest (@...); set IMAGE_NAME to a repository name such as carebot"
	case strings.Contains(last, ":"):
		return "must not contain a tag; set the tag with IMAGE_TAG and IMAGE_NAME to a repository name such as carebot"
	case strings.ToLower(name) != name:
		return "must be lowercase (set IMAGE_NAME to a repository name such as carebot)"
	case len(name) > 255:
		return "is longer than 255 characters"
	case !validRepo.MatchString(name):
		return "is not a valid Docker repository name (lowercase letters and digits separated by . _ - or /, optionally after registry.host[:port]/, e.g. ghcr.io/acme/carebot)"
	}
	return ""
}

// parseDuration parses "90s", "2m" or a bare number of seconds, up to 24h
// and more than zero (or zero too, when zeroOK). On failure msg says what
// is wrong, followed by how, which gives an example.
func parseDuration(v string, zeroOK bool, how string) (d time.Duration, msg string) {
	if n, err := strconv.ParseInt(v, 10, 64); err == nil {
		if n > int64(maxDuration/time.Second) {
			return 0, "is more than 24h " + how
		}
		d = time.Duration(n) * time.Second
	} else if d, err = time.ParseDuration(v); err != nil {
		return 0, "is not a duration " + how
	}
	switch {
	case d < 0 && zeroOK:
		return 0, "is negative " + how
	case d <= 0 && !zeroOK:
		return 0, "is not more than zero " + how
	case d > maxDuration:
		return 0, "is more than 24h " + how
	}
	return d, ""
}

var (
	validUser     = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]*$`)
	validHostname = regexp.MustCompile(`^(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*\.?$`)
	validIPv6     = regexp.MustCompile(`^[0-9A-Fa-f:.]+(?:%[A-Za-z0-9_.-]+)?$`)
)

// loadSwarm reads DEPLOY_MODE and, in swarm mode, the stack's name and
// how the swarm's nodes are reached.
func (l *loader) loadSwarm(remote bool) {
	c := l.c
	m := l.get("DEPLOY_MODE", "compose")
	switch m.val {
	case "compose", "swarm":
		c.Mode = m.val
	default:
		l.fail(m, "is not one of compose (Docker Compose on each server), swarm (docker stack deploy on a Swarm manager)")
	}
	// The default is the image's own name, without its registry or path.
	st := l.get("STACK_NAME", path.Base(c.ImageName))
	if stackName.MatchString(st.val) {
		c.StackName = st.val
	} else if st.set || c.Mode == "swarm" {
		l.fail(st, "is not a stack name (letters, digits, _ . -, starting with a letter or digit)")
	}
	nodes := l.get("SWARM_NODES", "")
	c.SwarmNodesSpec = nodes.val
	user := l.env["USER"]
	if user == "" {
		user = "root"
	}
	for _, part := range strings.Split(nodes.val, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		addr, login, ok := strings.Cut(part, "=")
		msg := "has an entry that is not NODE_ADDRESS=[user@]host[:port]"
		var t Target
		if ok && strings.TrimSpace(addr) != "" {
			t, msg = parseDeployHost(strings.TrimSpace(login), user)
		}
		if msg != "" {
			l.fail(nodes, msg+" (set SWARM_NODES to NODE_ADDRESS=[user@]host[:port],…: how to reach each node whose swarm address is not reachable over SSH as it is)")
			break
		}
		if c.SwarmNodes == nil {
			c.SwarmNodes = map[string]Target{}
		}
		c.SwarmNodes[strings.TrimSpace(addr)] = t
	}
	if c.Mode == "swarm" {
		switch {
		case !remote:
			l.fail(m, "needs DEPLOY_HOST: set it to a Swarm manager ([user@]host[:port])")
		case len(c.Targets) > 1:
			l.fail(m, "takes one DEPLOY_HOST, the Swarm manager: the tool finds the other nodes from it (name them in SWARM_NODES when their addresses differ)")
		}
	}
}

var stackName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]*$`)

// parseDeployHost parses one server of DEPLOY_HOST: [ssh://][user@]host[:port],
// an IPv6 address in brackets. A missing user is defaultUser, a missing port
// 22. msg says what is wrong.
func parseDeployHost(v, defaultUser string) (t Target, msg string) {
	v = strings.TrimPrefix(v, "ssh://")
	switch {
	case v == "":
		return t, "names no server (an empty entry)"
	case strings.Contains(v, "://"):
		return t, "has a scheme other than ssh://"
	case strings.IndexFunc(v, func(r rune) bool { return unicode.IsSpace(r) || !unicode.IsPrint(r) }) >= 0:
		return t, "must not contain spaces"
	case strings.Contains(v, "/"):
		return t, "must not contain a path (put that in DEPLOY_PATH)"
	case strings.Count(v, "@") > 1:
		return t, `contains more than one "@"`
	}
	t.User, t.Port = defaultUser, 22
	rest := v
	if u, h, ok := strings.Cut(v, "@"); ok {
		if !validUser.MatchString(u) {
			return Target{}, "has an empty or invalid user name before @"
		}
		t.User, rest = u, h
	}
	portStr := ""
	if strings.HasPrefix(rest, "[") {
		end := strings.Index(rest, "]")
		if end < 0 {
			return Target{}, `has "[" without "]"`
		}
		t.Host = rest[1:end]
		if !validIPv6.MatchString(t.Host) || !strings.Contains(t.Host, ":") {
			return Target{}, "has an invalid IPv6 address in brackets"
		}
		switch after := rest[end+1:]; {
		case after == "":
		case strings.HasPrefix(after, ":"):
			portStr = after[1:]
			if portStr == "" {
				return Target{}, `has ":" but no port number`
			}
		default:
			return Target{}, `has text after "]" (expected [ipv6]:port)`
		}
	} else {
		switch strings.Count(rest, ":") {
		case 0:
			t.Host = rest
		case 1:
			t.Host, portStr, _ = strings.Cut(rest, ":")
			if portStr == "" {
				return Target{}, `has ":" but no port number`
			}
		default:
			if ip := net.ParseIP(strings.Split(rest, "%")[0]); ip != nil {
				return Target{}, fmt.Sprintf("is a bare IPv6 address: write it in brackets, e.g. [%s]:22", rest)
			}
			return Target{}, "has too many colons (write an IPv6 address in brackets, e.g. [2001:db8::1]:22)"
		}
		if t.Host == "" {
			return Target{}, "has no host name"
		}
		if !validHostname.MatchString(t.Host) {
			return Target{}, "has an invalid host name (letters, digits, - and .)"
		}
	}
	if portStr != "" {
		n, err := strconv.Atoi(portStr)
		if err != nil || n < 1 || n > 65535 {
			return Target{}, "has an invalid port (1-65535)"
		}
		t.Port = n
	}
	return t, ""
}

func hasControl(s string) bool {
	return strings.IndexFunc(s, unicode.IsControl) >= 0
}
