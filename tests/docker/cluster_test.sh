#!/usr/bin/env bash
# make test-cluster: the Docker cluster test (tests/docker/cluster_test.py, Python standard library
# only, describes the scenarios). Needs a Docker engine and docker-compose (v1) or docker compose.
set -euo pipefail
exec python3 "$(dirname "$0")/cluster_test.py" "$@"
