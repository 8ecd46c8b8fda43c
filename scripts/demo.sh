#!/usr/bin/env bash
# make demo: a local three-node Troupe cluster on loopback (troupe-node processes with CURVE keys,
# an allow-list and a gossip keyring) hosting the sharded entity type "kv"; the example client
# service (examples/client_service) drives it; a live summary every two seconds (members, shards
# per node, messages per second); one node is killed halfway so its shards move; Ctrl-C or the
# end of DEMO_SECONDS (default 40) stops everything cleanly.
# Usage: scripts/demo.sh [build-dir]
set -euo pipefail
build=${1:-build}
seconds=${DEMO_SECONDS:-40}
dir=$(mktemp -d /tmp/troupe-demo-XXXXXX)
ctl="$build/node/troupectl"
client_bin="$build/examples/client_service/troupe-client-service"
pids=()
cleanup() {
  trap - EXIT
  trap 'rm -rf "$dir"; exit 130' INT TERM  # Ctrl-C again: stop waiting, still clean up
  echo "== stopping (SIGTERM: each node hands its shards off and leaves)"
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$dir"
}
trap cleanup EXIT
trap 'echo; exit 0' INT TERM

echo "== keys and keyring in $dir"
for n in n1 n2 n3 client; do "$build/remoting/troupe-keygen" "$dir" "$n" | grep -v '^#' >>"$dir/allow"; done
(umask 077 && head -c 32 /dev/urandom | base64 >"$dir/keyring")

declare -A pid_of admin_of remoting_of
start() {  # start NAME [extra flags]: runs a node and waits for its ready line
  local name=$1 ready=""
  shift
  cp "$dir/keyring" "$dir/keyring-$name"
  "$build/node/troupe-node" --name "$name" --port 0 --gossip-port 0 --admin-port 0 --workers 1 --preset local \
    --key-file "$dir/$name.key" --allow-list "$dir/allow" --keyring "$dir/keyring-$name" --entity kv:64 "$@" \
    >"$dir/$name.out" 2>"$dir/$name.log" &
  pids+=($!)
  pid_of[$name]=$!
  for _ in $(seq 200); do
    ready=$(grep -m1 '^troupe-node ready' "$dir/$name.out" || true)
    [ -n "$ready" ] && break
    sleep 0.05
  done
  [ -n "$ready" ] || { echo "$name did not start:"; cat "$dir/$name.log"; exit 1; }
  # "troupe-node ready troupe://<uid>@<host:port> gossip <host:port> admin <host:port>"
  read -r _ _ address _ gossip _ admin <<<"$ready"
  remoting_of[$name]=${address#*@}
  admin_of[$name]=$admin
  [ -n "${seed:-}" ] || seed=$gossip
  echo "== $name: remoting ${remoting_of[$name]}, gossip $gossip, admin $admin"
}

start n1
start n2 --seed "$seed"
start n3 --seed "$seed"
echo "== dashboard: http://${admin_of[n1]}/   (or: $ctl --admin ${admin_of[n1]} members)"

formed=""
for _ in $(seq 300); do  # every node up and the shard table complete
  up=$("$ctl" --admin "${admin_of[n1]}" members 2>/dev/null | grep -c ' up ' || true)
  if [ "$up" -ge 3 ] && "$ctl" --admin "${admin_of[n1]}" shards 2>/dev/null | grep -q n3; then formed=1; break; fi
  sleep 0.1
done
[ -n "$formed" ] || { echo "the cluster did not form in 30 s; n1's log:"; tail -20 "$dir/n1.log"; exit 1; }

echo "== the client service adds to and reads 500 counters, 2000 messages per second"
"$client_bin" --contact "${remoting_of[n1]}" --contact "${remoting_of[n2]}" --contact "${remoting_of[n3]}" \
  --key-file "$dir/client.key" --allow-list "$dir/allow" --type kv --shards 64 --rate 2000 --ids 500 --duration 0 \
  >"$dir/client.out" 2>"$dir/client.log" &
pids+=($!)

summary() {  # one line: members with status, shards per node, client rates since the last line
  local members shards line ok failed unavailable wrong
  members=$("$ctl" --admin "${admin_of[n1]}" --json members 2>/dev/null |
    grep -o '"name":"[^"]*"\|"status":"[^"]*"' | sed 's/.*:"\(.*\)"/\1/' | paste -d: - - | sort | paste -sd' ' || true)
  shards=$("$ctl" --admin "${admin_of[n1]}" --json shards 2>/dev/null | grep -o '"regions":{[^}]*}' | head -1 |
    grep -o '"[^"]*":[0-9]*' | sed 's/"[^"]*@\([^"/]*\)[^"]*":/\1 /; s/"//g' | while read -r ep k; do
      for n in n1 n2 n3; do if [ "${remoting_of[$n]}" = "$ep" ]; then echo "$n=$k"; fi; done
    done | sort | paste -sd' ' || true)
  line=$(tail -1 "$dir/client.out" 2>/dev/null || true)
  ok=$(sed -n 's/.* ok=\([0-9]*\).*/\1/p' <<<"$line"); ok=${ok:-0}
  failed=$(sed -n 's/.* failed=\([0-9]*\).*/\1/p' <<<"$line"); failed=${failed:-0}
  unavailable=$(sed -n 's/.* unavailable=\([0-9]*\).*/\1/p' <<<"$line"); unavailable=${unavailable:-0}
  wrong=$(sed -n 's/.* wrong=\([0-9]*\).*/\1/p' <<<"$line"); wrong=${wrong:-0}
  printf '%4ss  members %-28s shards %-20s reads/s %5d  failed %d  unavailable %d  reset %d\n' "$1" "${members:-?}" \
    "${shards:-?}" $(((ok - last_ok) / 2)) "$failed" "$unavailable" "$wrong"
  last_ok=$ok
}

last_ok=0
killed=""
for ((t = 2; t <= seconds; t += 2)); do
  sleep 2
  if [ -z "$killed" ] && [ "$t" -ge $((seconds / 2)) ]; then
    echo "== killing n3 (SIGKILL): the others down it and take over its shards; its counters start again from"
    echo "   zero on their new nodes (a crash loses entity state; a graceful leave hands it over): the client"
    echo "   counts each such counter once as 'reset'"
    { kill -KILL "${pid_of[n3]}" && wait "${pid_of[n3]}"; } 2>/dev/null || true
    killed=n3
  fi
  summary "$t"
done
echo "== membership events seen by n1"
sed -n 's/^troupe-node event /  /p' "$dir/n1.out"
echo "== the client's last line: $(tail -1 "$dir/client.out")"
