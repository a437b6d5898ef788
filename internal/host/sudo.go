package host

import (
	"context"
	"io"
)

// sudoPreamble puts, first on PATH, `docker` and `docker-compose` that run
// the real ones through `sudo -n`: made once per user on the host, then
// found by every command, the scripts those start included (a shell
// function would not reach a child `sh`, and dash refuses the name
// docker-compose).
const sudoPreamble = `b="${HOME:-/tmp}/.cache/carebot/sudo-bin"
if [ ! -x "$b/docker" ]; then
  mkdir -p "$b" || exit 3
  for c in docker docker-compose; do
    r=$(command -v "$c") || continue
    printf '#!/bin/sh\nexec sudo -n %s "$@"\n' "$r" > "$b/$c.$$" && chmod 755 "$b/$c.$$" && mv -f "$b/$c.$$" "$b/$c" || exit 3
  done
fi
PATH="$b:$PATH"; export PATH
`

// DockerSudo is h where every command runs docker (and docker-compose, and
// `docker system dial-stdio` for the engine's API) as `sudo -n docker`:
// for a deploy user who is not in the docker group but may run docker
// through passwordless sudo (DEPLOY_DOCKER_SUDO).
func DockerSudo(h Host) Host { return sudoHost{h} }

type sudoHost struct{ Host }

func (s sudoHost) Exec(ctx context.Context, cmd string, stdin io.Reader, stdout, stderr io.Writer) error {
	return s.Host.Exec(ctx, sudoPreamble+cmd, stdin, stdout, stderr)
}

// WriteFile keeps the wrapped host's own way of writing files (SFTP).
func (s sudoHost) WriteFile(ctx context.Context, path string, data []byte, mode uint32) error {
	return WriteFile(ctx, s.Host, path, data, mode)
}
