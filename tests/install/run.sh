#!/usr/bin/env bash
# Installs the build into a temporary prefix, then configures, builds and runs an out-of-tree
# consumer that only does find_package(troupe CONFIG REQUIRED) + troupe::troupe.
#
# usage: run.sh BUILD_DIR CONSUMER_SOURCE_DIR [PROGRAM [ARGS...]]
#   PROGRAM (default: consumer) is the consumer's executable, run with ARGS.
set -euo pipefail
build=$1
consumer=$2
shift 2
program=consumer
if [ $# -gt 0 ]; then
  program=$1
  shift
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cmake --install "$build" --prefix "$tmp/prefix" >"$tmp/install.log"
cmake -S "$consumer" -B "$tmp/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$tmp/prefix" >"$tmp/configure.log" \
  || { cat "$tmp/configure.log"; exit 1; }
cmake --build "$tmp/build" >"$tmp/build.log" || { cat "$tmp/build.log"; exit 1; }
"$tmp/build/$program" "$@"
