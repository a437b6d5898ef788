#!/usr/bin/env bash
# Runs every test: unit tests, integration tests against a real Docker
# engine (started here if none answers), and end-to-end tests that start a
# second engine as the server and OpenSSH's sshd on 127.0.0.1 themselves.
# Under CI=true a missing engine or sshd is a failure, not a skip.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_go
ensure_docker
ensure_sshd
go vet ./...
go test -count=1 -timeout 30m ./...
