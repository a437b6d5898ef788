#!/usr/bin/env bash
# Runs every test: unit tests, and integration tests against a real Docker
# engine (started here if none answers). Under CI=true a missing engine is a
# failure, not a skip.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_go
ensure_docker
go vet ./...
go test -count=1 -timeout 30m ./...
