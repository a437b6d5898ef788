# Shared helpers for scripts/*.sh: set up what the commands need on a fresh
# Debian/Ubuntu machine (install it with apt-get, start the Docker engine),
# or say in one line what to do when we cannot.
#
# A script calls, in this order:
#   parse_args "$@"; set -- ${ARGS[@]+"${ARGS[@]}"}   # takes -y/--yes out
#   setup_machine engine compose [sshd]                # installs, starts, checks access
#   run_with_docker CMD ARGS...                        # as root, via sg docker, or via sudo

say() { printf '%s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# parse_args takes -y/--yes (install without asking) out of the arguments;
# the rest, in order, are left in ARGS for the command the script runs.
ASSUME_YES=0
ARGS=()
parse_args() {
  local a
  for a in "$@"; do
    case $a in
      -y | --yes) ASSUME_YES=1 ;;
      *) ARGS+=("$a") ;;
    esac
  done
}

ensure_go() {
  command -v go >/dev/null || die "Go is missing: install it from https://go.dev/dl/ (1.26 or newer)"
}

# --- Privileges ---------------------------------------------------------------

# ROOT is how we get root: "self" (we are root), "sudo" (passwordless sudo;
# `sudo -n` never prompts, so a script under CI cannot hang), or "none".
if [ "$(id -u)" = 0 ]; then
  ROOT=self
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
  ROOT=sudo
else
  ROOT=none
fi

as_root() {
  case $ROOT in
    self) "$@" ;;
    sudo) sudo -n "$@" ;;
    *) return 1 ;;
  esac
}

# --- What is there ------------------------------------------------------------

# engine_answers: a Docker engine answers this user on the default socket
# (or DOCKER_HOST).
engine_answers() { docker info >/dev/null 2>&1; }

# engine_answers_root: it answers root (the user may not be in the docker group yet).
# Not with DOCKER_HOST: sudo drops it and would ask the local engine instead.
engine_answers_root() {
  [ -z "${DOCKER_HOST:-}" ] && [ "$ROOT" != none ] && command -v docker >/dev/null &&
    as_root docker info >/dev/null 2>&1
}

# docker_desktop: the docker client is Docker Desktop's WSL integration. Its
# engine runs on Windows; installing docker.io beside it would shadow it.
docker_desktop() {
  local d
  d=$(command -v docker 2>/dev/null) || d=""
  case "$d $(readlink -f "$d" 2>/dev/null) $(readlink /usr/bin/docker 2>/dev/null)" in
    *docker-desktop*) return 0 ;; # /mnt/wsl/docker-desktop/cli-tools/usr/bin/docker
  esac
  return 1
}

pkg_installed() { dpkg -s "$1" 2>/dev/null | grep -q '^Status: install ok installed'; }

# engine_installed: an engine is installed, whether docker.io or another way
# (Docker's own docker-ce, containerd.io, Moby), or some dockerd is on PATH:
# start that one, never install docker.io over it.
engine_installed() {
  command -v dockerd >/dev/null && return 0
  command -v dpkg >/dev/null || return 1
  pkg_installed docker.io || pkg_installed docker-ce || pkg_installed containerd.io || pkg_installed moby-engine
}

# dockerd_path: Debian puts dockerd in /usr/sbin, which a user's PATH lacks.
dockerd_path() {
  command -v dockerd 2>/dev/null && return
  local p
  for p in /usr/sbin/dockerd /usr/bin/dockerd; do
    [ -x "$p" ] && { echo "$p"; return; }
  done
  return 1
}

compose_works() {
  docker compose version >/dev/null 2>&1 || docker-compose version >/dev/null 2>&1
}

sshd_installed() { command -v sshd >/dev/null || [ -x /usr/sbin/sshd ]; }

# --- Planning -----------------------------------------------------------------

# NEED_PKGS are the packages to install; NEED_WHY says, per package, why.
NEED_PKGS=()
NEED_WHY=()
need() { NEED_PKGS+=("$1"); NEED_WHY+=("$1 ($2)"); }

# ENGINE is what to do about the engine: "ok" (answers), "start", "install".
ENGINE=ok

plan_engine() {
  if engine_answers || engine_answers_root; then
    ENGINE=ok
    return
  fi
  if [ "$ROOT" = none ] && docker info 2>&1 | grep -qi 'permission denied'; then
    die "the Docker engine runs but refuses this user: have an admin run usermod -aG docker $(id -un), then log in again"
  fi
  # Someone chose another engine on purpose: do not start or install a local one.
  [ -z "${DOCKER_HOST:-}" ] || die "DOCKER_HOST=$DOCKER_HOST does not answer (docker info): start that engine, or unset DOCKER_HOST to use this machine's"
  docker_desktop && die "Docker Desktop's engine does not answer: start Docker Desktop (WSL integration for this distro)"
  if engine_installed; then
    command -v docker >/dev/null || die "a Docker engine is installed but not its client: install the docker CLI that goes with it (docker-ce-cli)"
    ENGINE=start
  else
    ENGINE=install
    need docker.io "the Docker engine that builds and runs the image"
  fi
}

plan_compose() {
  compose_works && return
  # With Docker's own packages, Compose comes as their plugin when apt knows it.
  if command -v dpkg >/dev/null && pkg_installed docker-ce &&
    apt-cache show docker-compose-plugin >/dev/null 2>&1; then
    need docker-compose-plugin "Compose v2, which deploy runs"
  else
    need docker-compose "Compose, which deploy runs"
  fi
}

plan_sshd() {
  sshd_installed || need openssh-server "sshd: the end-to-end tests start their own on 127.0.0.1"
  command -v ssh >/dev/null || need openssh-client "ssh, for the end-to-end tests"
  [ -x /bin/busybox ] || need busybox-static "a static shell for the BuildKit tests' RUN steps (images here are FROM scratch)"
}

# --- Doing it -----------------------------------------------------------------

# why_list: "docker.io (why), docker-compose (why)" for one-line messages.
why_list() {
  local IFS='|'
  local s="${NEED_WHY[*]}"
  printf '%s' "${s//|/, }"
}

# sudo_prefix: "sudo " when installing goes through sudo, for messages.
sudo_prefix() { [ "$ROOT" != sudo ] || printf 'sudo '; }

# confirm_install asks once on a terminal; -y or CI=true stand for yes.
# Anywhere else (a pipe, cron) nobody can answer: refuse in one line.
confirm_install() {
  local answer
  if [ "$ASSUME_YES" = 1 ] || [ "${CI:-}" = true ]; then
    return 0
  fi
  if [ -t 0 ]; then
    printf 'This needs %s. Install with %sapt-get now? [Y/n] ' "$(why_list)" "$(sudo_prefix)" >&2
    read -r answer || answer=n
    case $answer in
      '' | [yY] | [yY][eE][sS]) return 0 ;;
      *) die "nothing installed: install ${NEED_PKGS[*]} yourself, or rerun and answer y" ;;
    esac
  fi
  die "${NEED_PKGS[*]} missing and no terminal to ask: rerun with -y to install them with apt-get (or install them yourself)"
}

install_needed() {
  [ ${#NEED_PKGS[@]} -gt 0 ] || return 0
  local how="apt-get install ${NEED_PKGS[*]}"
  command -v apt-get >/dev/null ||
    die "missing ${NEED_PKGS[*]} and this is not Debian/Ubuntu: install them (or your system's equivalents) yourself"
  if [ "$ROOT" = none ]; then
    [ "$ENGINE" = install ] && die "no Docker engine answers and dockerd is not installed: sudo $how"
    die "missing ${NEED_PKGS[*]}: sudo $how"
  fi
  confirm_install
  say "installing with $(sudo_prefix)apt-get: $(why_list)"
  # update once first: a fresh machine's package lists may be empty or stale
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq ||
    die "apt-get update failed (see above)"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${NEED_PKGS[@]}" ||
    die "$how failed (see above)"
}

DOCKERD_LOG=/tmp/carebot-dockerd.log

# start_engine starts the installed engine the way this machine runs
# services: systemd when it is PID 1, else the init script, else dockerd
# itself in its own session (so Ctrl-C on the pipeline does not stop it).
start_engine() {
  local log=$DOCKERD_LOG
  if [ -d /run/systemd/system ]; then
    say "starting the Docker engine: systemctl start docker"
    as_root systemctl start docker || die "systemctl start docker failed: see journalctl -u docker"
    log=""
  elif as_root service docker start >/dev/null 2>&1; then
    say "started the Docker engine: service docker start"
    log=/var/log/docker.log
  else
    local dockerd
    dockerd=$(dockerd_path) || die "no dockerd to start (is the engine's package complete?)"
    say "starting dockerd in the background (log: $log)"
    # Its own session: Ctrl-C on the pipeline must not stop the engine. The
    # system folders first on its PATH: it runs containerd, runc and
    # docker-proxy from there long after this script's PATH is gone.
    # shellcheck disable=SC2016 # $0 and $1 are for the inner sh
    as_root env "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:$PATH" \
      sh -c 'exec setsid -f "$1" >>"$0" 2>&1 </dev/null' "$log" "$dockerd" || die "could not start dockerd"
  fi
  local _
  for _ in $(seq 60); do
    engine_answers_root && return 0
    sleep 0.5
  done
  if [ -n "$log" ]; then
    as_root tail -n 20 "$log" >&2 || true
    die "the Docker engine did not answer within 30 s (log: $log)"
  fi
  die "the Docker engine did not answer within 30 s: see journalctl -u docker"
}

# RUN_VIA is how the commands reach the engine: "" directly, "sg" (this run
# takes the docker group the user was just added to), or "sudo".
RUN_VIA=""

# ensure_access: right after an install the user is in the docker group only
# for new logins. Add them, and carry this run through sg docker (or sudo).
ensure_access() {
  engine_answers && return 0
  [ "$ROOT" = sudo ] || die "the Docker engine does not answer this user: add yourself to the docker group (sudo usermod -aG docker \$USER) and log in again"
  local user added=""
  user=$(id -un)
  if getent group docker >/dev/null && ! id -nG "$user" | tr ' ' '\n' | grep -qx docker; then
    as_root usermod -aG docker "$user" && added=1
  fi
  if command -v sg >/dev/null && sg docker -c 'docker info' >/dev/null 2>&1; then
    RUN_VIA=sg
  else
    RUN_VIA=sudo
  fi
  say "${added:+added you to the docker group; }this run goes through ${RUN_VIA/sg/sg docker}; log in again for new shells"
}

# setup_machine installs what is missing (engine, compose, sshd as asked),
# starts the engine and makes sure this run can use it.
setup_machine() {
  local what
  for what in "$@"; do
    case $what in
      engine) plan_engine ;;
      compose) plan_compose ;;
      sshd) plan_sshd ;;
    esac
  done
  install_needed
  if [ "$ENGINE" != ok ] && ! engine_answers_root && ! engine_answers; then
    [ "$ROOT" != none ] || die "no Docker engine answers: start it (sudo service docker start)"
    start_engine
  fi
  compose_works || die "Docker Compose does not work after the install: check 'docker-compose version'"
  ensure_access
}

# shell_quote quotes each argument for sh -c (sg takes one command string).
shell_quote() {
  local a out=""
  for a in "$@"; do
    out="$out '${a//\'/\'\\\'\'}'"
  done
  printf '%s' "${out# }"
}

# run_with_docker runs a command so that it reaches the Docker engine.
run_with_docker() {
  case $RUN_VIA in
    sg) sg docker -c "$(shell_quote "$@")" ;;
    sudo) sudo -n -E env "PATH=$PATH" "$@" ;;
    *) "$@" ;;
  esac
}

# --- Compose v2 for the tests --------------------------------------------------

COMPOSE_V2_VERSION=v2.40.3

# ensure_compose_v2 provides Docker Compose v2 for the end-to-end tests, which
# run against both v1 (Debian's docker-compose) and v2. Debian has no v2
# package, so it is built once from its module source and cached; it is not
# installed as a docker CLI plugin, because the tests choose v1 or v2 per
# server. Exports CAREBOT_COMPOSE_V2 with its path.
ensure_compose_v2() {
  local v=$COMPOSE_V2_VERSION
  local bin="${XDG_CACHE_HOME:-$HOME/.cache}/carebot/docker-compose-$v"
  if [ ! -x "$bin" ]; then
    say "building Docker Compose $v for the tests into $bin (once, about 3 minutes)"
    build_compose_v2 "$v" "$bin" || die "building Docker Compose $v failed (see above)"
  fi
  export CAREBOT_COMPOSE_V2="$bin"
}

# build_compose_v2 VERSION OUT. `go install` refuses compose (its go.mod has
# exclude directives), but building inside a writable copy of its module
# source works. The binary is written under a temp name and renamed, so an
# interrupted build never leaves a broken one at OUT.
build_compose_v2() (
  # Each step checks its own failure: `set -e` does not apply inside a
  # function called as `build_compose_v2 ... || die`.
  v=$1 out=$2
  mod=github.com/docker/compose/v2
  tmp=$(mktemp -d) || exit
  trap 'rm -rf "$tmp"; rm -f "$out.tmp.$$"' EXIT
  # No jq here: take the "Dir" field out of the JSON with sed.
  src=$(go mod download -json "$mod@$v" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
  if [ -z "$src" ] || [ ! -d "$src" ]; then
    echo "go mod download $mod@$v gave no source folder" >&2
    exit 1
  fi
  cp -R "$src" "$tmp/src" && chmod -R u+w "$tmp/src" || exit
  mkdir -p "$(dirname "$out")" && cd "$tmp/src" || exit
  GOFLAGS=-mod=mod go build -ldflags "-X $mod/internal.Version=$v" -o "$out.tmp.$$" ./cmd || exit
  mv -f "$out.tmp.$$" "$out"
)

# setup_for_tests is everything scripts/test.sh needs before `go test`.
setup_for_tests() {
  setup_machine engine compose sshd
  ensure_compose_v2
}
