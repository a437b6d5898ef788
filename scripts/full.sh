#!/usr/bin/env bash
# Runs the whole pipeline on this machine (build, inspect, test, deploy).
# On a fresh Debian/Ubuntu machine it first installs Docker Engine and
# Compose with apt-get (asking first on a terminal; -y or CI=true: no
# question) and starts the engine. Other arguments go to `mage full`.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
parse_args "$@"
set -- ${ARGS[@]+"${ARGS[@]}"}
ensure_go
setup_machine engine compose
run_with_docker go run mage.go full "$@"
