#!/usr/bin/env bash
# Runs the whole pipeline on this machine (build, inspect, test, deploy),
# starting the Docker engine first if none answers.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_go
ensure_docker
exec go run mage.go full "$@"
