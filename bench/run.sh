#!/usr/bin/env bash
# Runs Troupe's benchmarks and their peers in one go and writes build/bench/results.json:
# one object per figure {"name","value","unit","peer","peer_value","ratio"}, ratio = value /
# peer_value (for throughputs higher is better, for bytes lower is better).
# Usage: bench/run.sh [build-dir] [extra args for the harnesses, e.g. --scale 0.1]
set -euo pipefail
build=${1:-build}
shift || true
out="$build/bench"
mkdir -p "$out"

run() {  # run <label> <binary> [args]: JSON lines to $out/<label>.jsonl
  local label=$1 bin=$2
  shift 2
  if [ -x "$bin" ]; then
    echo "== $label" >&2
    "$bin" "$@" >"$out/$label.jsonl" || echo "== $label: exit $? (a workload the harness does not have?)" >&2
  else
    echo "== $label: $bin not built, skipped" >&2
    : >"$out/$label.jsonl"
  fi
}

# The two actor harnesses alternate workloads so that both see the same machine conditions.
: >"$out/troupe.jsonl"
: >"$out/caf.jsonl"
for w in pingpong_1pair pingpong_100pairs fanin_2senders idle_actor_bytes pool_roundrobin_2x4 pool_broadcast_2x4 direct_tell_2x1; do
  run troupe.part "$build/bench/troupe_bench" --only "$w" "$@"
  cat "$out/troupe.part.jsonl" >>"$out/troupe.jsonl"
  run caf.part "$build/bench/caf_bench" --only "$w" "$@"
  cat "$out/caf.part.jsonl" >>"$out/caf.jsonl"
done
rm -f "$out"/*.part.jsonl

# Join on name (awk: the lines are flat objects written by our own harnesses).
awk -v peer="CAF 0.17.6" '
  function field(line, key,   m) {
    if (match(line, "\"" key "\":\"[^\"]*\"")) { m = substr(line, RSTART, RLENGTH); sub("^\"" key "\":\"", "", m); sub("\"$", "", m); return m }
    if (match(line, "\"" key "\":[-0-9.eE+]+")) { m = substr(line, RSTART, RLENGTH); sub("^\"" key "\":", "", m); return m }
    return ""
  }
  FNR == 1 { file++ }
  file == 1 { peerv[field($0, "name")] = field($0, "value"); next }
  { name = field($0, "name"); order[++n] = name; val[name] = field($0, "value"); unit[name] = field($0, "unit") }
  END {
    printf "[\n"
    for (i = 1; i <= n; i++) {
      k = order[i]
      if (k in peerv && peerv[k] + 0 != 0) {
        printf "  {\"name\":\"%s\",\"value\":%s,\"unit\":\"%s\",\"peer\":\"%s\",\"peer_value\":%s,\"ratio\":%.3f}", k, val[k], unit[k], peer, peerv[k], val[k] / peerv[k]
      } else {
        printf "  {\"name\":\"%s\",\"value\":%s,\"unit\":\"%s\",\"peer\":null,\"peer_value\":null,\"ratio\":null}", k, val[k], unit[k]
      }
      printf (i < n ? ",\n" : "\n")
    }
    printf "]\n"
  }' "$out/caf.jsonl" "$out/troupe.jsonl" >"$out/results.json"

printf '%-22s %16s %16s %8s  %s\n' figure troupe "CAF 0.17" ratio unit
awk '
  function field(line, key,   m) {
    if (match(line, "\"" key "\":\"[^\"]*\"")) { m = substr(line, RSTART, RLENGTH); sub("^\"" key "\":\"", "", m); sub("\"$", "", m); return m }
    if (match(line, "\"" key "\":[-0-9.eE+]+|\"" key "\":null")) { m = substr(line, RSTART, RLENGTH); sub("^\"" key "\":", "", m); return m }
    return ""
  }
  /"name"/ { printf "%-22s %16s %16s %8s  %s\n", field($0,"name"), field($0,"value"), field($0,"peer_value"), field($0,"ratio"), field($0,"unit") }
' "$out/results.json"
echo "written: $out/results.json" >&2
