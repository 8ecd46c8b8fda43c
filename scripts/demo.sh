#!/usr/bin/env bash
# make demo: a local three-node Troupe cluster (troupe-node processes with CURVE keys, an
# allow-list and a gossip keyring, on loopback), a client that joins it and runs a workload
# (asks to every node, a relay across the cluster), then a graceful shutdown.
# Usage: scripts/demo.sh [build-dir]
set -euo pipefail
build=${1:-build}
dir=$(mktemp -d /tmp/troupe-demo-XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$dir"
}
trap cleanup EXIT

echo "== keys and keyring in $dir"
for n in n1 n2 n3 client; do "$build/remoting/troupe-keygen" "$dir" "$n" | grep -v '^#' >>"$dir/allow"; done
(umask 077 && head -c 32 /dev/urandom | base64 >"$dir/keyring")

start() {  # start NAME [extra flags]: runs a node, waits for its ready line, sets $ready
  local name=$1
  shift
  "$build/node/troupe-node" --name "$name" --port 0 --gossip-port 0 --admin-port 0 --workers 1 --preset local \
    --key-file "$dir/$name.key" --allow-list "$dir/allow" --keyring "$dir/keyring" --test-actors "$@" \
    >"$dir/$name.out" 2>"$dir/$name.log" &
  pids+=($!)
  for _ in $(seq 200); do
    ready=$(grep -m1 '^troupe-node ready' "$dir/$name.out" || true)
    [ -n "$ready" ] && break
    sleep 0.05
  done
  [ -n "$ready" ] || { echo "$name did not start:"; cat "$dir/$name.log"; exit 1; }
  echo "== $name: ${ready#troupe-node ready }"
}

start n1
seed=${ready#* gossip }
seed=${seed%% *}  # the admin endpoint follows
start n2 --seed "$seed"
start n3 --seed "$seed"

echo "== client joins through $seed and runs the workload"
"$build/examples/cluster_demo" "$dir/client.key" "$dir/allow" "$dir/keyring" "$seed" 3 1000

echo "== membership events seen by n1"
sed -n 's/^troupe-node event /  /p' "$dir/n1.out"
