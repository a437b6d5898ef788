#!/usr/bin/env bash
# Runs every test: unit tests, integration tests against a real Docker
# engine, and end-to-end tests that start a second engine as the server and
# OpenSSH's sshd on 127.0.0.1 themselves, with Compose v1 and v2.
# Like full.sh it first installs what is missing with apt-get (Docker Engine,
# Compose, openssh-server; asking on a terminal, -y or CI=true: no question),
# starts the engine, and builds Compose v2 for the tests once (cached).
# Under CI=true a missing engine or sshd is a failure, not a skip.
# Other arguments go to `go test` (e.g. -run TestDeploy).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
parse_args "$@"
set -- ${ARGS[@]+"${ARGS[@]}"}
ensure_go
setup_for_tests
run_with_docker go vet ./...
run_with_docker go test -count=1 -timeout 75m "$@" ./...
