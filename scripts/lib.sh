# Shared helpers for scripts/*.sh: start what the commands need, or say
# exactly what to install.

die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# ensure_docker makes sure a Docker engine answers on the default socket
# (starting dockerd when we are root and it is installed) and that Compose
# (v2 plugin or v1 docker-compose) is there.
ensure_docker() {
  command -v docker >/dev/null || die "the docker client is missing: apt-get install docker.io (Debian/Ubuntu)"
  if ! docker info >/dev/null 2>&1; then
    command -v dockerd >/dev/null || die "no Docker engine answers and dockerd is not installed: apt-get install docker.io docker-compose"
    [ "$(id -u)" = 0 ] || die "no Docker engine answers: start it (sudo service docker start)"
    echo "starting dockerd (log: /tmp/carebot-dockerd.log)"
    (dockerd >/tmp/carebot-dockerd.log 2>&1 &)
    for _ in $(seq 60); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
    docker info >/dev/null 2>&1 || { tail -20 /tmp/carebot-dockerd.log >&2; die "dockerd did not start (see /tmp/carebot-dockerd.log)"; }
  fi
  docker compose version >/dev/null 2>&1 || docker-compose version >/dev/null 2>&1 ||
    die "Docker Compose is missing: apt-get install docker-compose (or the docker-compose-plugin)"
}

ensure_go() {
  command -v go >/dev/null || die "Go is missing: install it from https://go.dev/dl/ (1.26 or newer)"
}

# ensure_sshd checks that OpenSSH's server is installed: the end-to-end tests
# start their own sshd on 127.0.0.1 (and a second dockerd as the server).
ensure_sshd() {
  command -v sshd >/dev/null || [ -x /usr/sbin/sshd ] ||
    die "sshd is missing (the end-to-end tests run one on 127.0.0.1): apt-get install openssh-server"
  command -v ssh >/dev/null || die "the ssh client is missing: apt-get install openssh-client"
}
