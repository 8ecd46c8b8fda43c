#!/usr/bin/env bash
# Runs Troupe's benchmarks and their peers in one go and writes build/bench/results.json:
# one object per figure {"name","value","unit","peer","peer_value","ratio"}, ratio = value /
# peer_value (for throughputs higher is better, for bytes and latencies lower is better).
# Usage: bench/run.sh [build-dir] [extra args for the actor and remoting harnesses, e.g. --scale 0.1]
# Environment (defaults in brackets):
#   TROUPE_BENCH_PARTS        which parts run [actors remote membership sim sharding]
#   TROUPE_BENCH_RESULTS      the results file under build-dir/bench [results.json]
#   BENCH_REPS                alternations of each actor and remoting workload; each figure is
#                             the median of its runs [3]
#   MEMBERSHIP_WORKLOADS      membership workloads, Troupe and Serf [detect_5 detect_9 false_downs]
#   MEMBERSHIP_RUNS           fresh clusters per detection figure, median reported [3]
#   MEMBERSHIP_FALSE_SECONDS  length of the false-positive workload [60; make bench-membership-long: 300]
#   SHARDED_REPS              turns of the sharded tell and its baseline, alternated; medians [5]
#   SIM_ARGS                  membership_sim_bench arguments [--sizes 100,1000,10000 --reps 3]
set -euo pipefail
build=${1:-build}
shift || true
out="$build/bench"
mkdir -p "$out"
parts=" ${TROUPE_BENCH_PARTS:-actors remote membership sim sharding} "
results=${TROUPE_BENCH_RESULTS:-results.json}

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

# field(line, key): the value of "key" in one of our flat JSON lines (a string or a number), "" if
# absent. The awk programs below start with it.
awk_field='
  function field(line, key,   m) {
    if (match(line, "\"" key "\":\"[^\"]*\"")) { m = substr(line, RSTART, RLENGTH); sub("^\"" key "\":\"", "", m); sub("\"$", "", m); return m }
    if (match(line, "\"" key "\":[-0-9.eE+]+")) { m = substr(line, RSTART, RLENGTH); sub("^\"" key "\":", "", m); return m }
    return ""
  }'

reps=${BENCH_REPS:-3}
# median <in.jsonl> <out.jsonl>: one line per figure name (first-seen order), the run with the
# median value (the lower middle one for an even count).
median() {
  awk "$awk_field"'
    /"name"/ {
      k = field($0, "name")
      if (!(k in n)) { order[++names] = k; n[k] = 0 }
      i = ++n[k]; v[k, i] = field($0, "value") + 0; l[k, i] = $0
    }
    END {
      for (j = 1; j <= names; ++j) {
        k = order[j]
        for (a = 1; a <= n[k]; ++a) idx[a] = a
        for (a = 2; a <= n[k]; ++a) for (b = a; b > 1 && v[k, idx[b - 1]] > v[k, idx[b]]; --b) { t = idx[b]; idx[b] = idx[b - 1]; idx[b - 1] = t }
        print l[k, idx[int((n[k] + 1) / 2)]]
      }
    }' "$1" >"$2"
}

# The two actor harnesses alternate workloads, BENCH_REPS times each, so that both see the same
# machine conditions (on a shared 2-core VM a single run of either moves by 2x from run to run).
: >"$out/troupe.reps.jsonl"
: >"$out/caf.reps.jsonl"
[[ $parts == *" actors "* ]] && for w in pingpong_1pair pingpong_100pairs fanin_2senders idle_actor_bytes pool_roundrobin_2x4 pool_broadcast_2x4 direct_tell_2x1; do
  for _ in $(seq "$reps"); do
    run troupe.part "$build/bench/troupe_bench" --only "$w" "$@"
    cat "$out/troupe.part.jsonl" >>"$out/troupe.reps.jsonl"
    run caf.part "$build/bench/caf_bench" --only "$w" "$@"
    cat "$out/caf.part.jsonl" >>"$out/caf.reps.jsonl"
  done
done
median "$out/troupe.reps.jsonl" "$out/troupe.jsonl"
median "$out/caf.reps.jsonl" "$out/caf.jsonl"

# Remoting, node to node over loopback in two processes (each harness starts its own server
# process): raw libzmq with CURVE, Troupe and CAF's libcaf_io alternate, workload by workload;
# CAF also with its TLS transport (libcaf_openssl, mutually authenticated by a throwaway
# self-signed certificate), the peer that encrypts and authenticates as Troupe does.
: >"$out/remote.reps.jsonl"
: >"$out/caf_remote.reps.jsonl"
caf_tls=()
if [[ $parts == *" remote "* ]] && command -v openssl >/dev/null; then
  mkdir -p "$out/caf-tls"
  if openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=127.0.0.1 \
    -keyout "$out/caf-tls/key.pem" -out "$out/caf-tls/cert.pem" 2>/dev/null; then
    caf_tls=(--tls "$out/caf-tls")
  fi
fi
[[ $parts == *" remote "* ]] && for size in 64B 1KiB; do
  for _ in $(seq "$reps"); do
    run remote.part "$build/bench/remote_bench" --only "zmq_tell_$size" "$@"
    cat "$out/remote.part.jsonl" >>"$out/remote.reps.jsonl"
    run remote.part "$build/bench/remote_bench" --only "remote_tell_$size" "$@"
    cat "$out/remote.part.jsonl" >>"$out/remote.reps.jsonl"
    run caf_remote.part "$build/bench/caf_remote_bench" --only "remote_tell_$size" "$@"
    cat "$out/caf_remote.part.jsonl" >>"$out/caf_remote.reps.jsonl"
    if [ ${#caf_tls[@]} -gt 0 ]; then
      run caf_remote.part "$build/bench/caf_remote_bench" --only "remote_tell_$size" "${caf_tls[@]}" "$@"
      cat "$out/caf_remote.part.jsonl" >>"$out/caf_remote.reps.jsonl"
    fi
  done
done
[[ $parts == *" remote "* ]] && for _ in $(seq "$reps"); do
  for w in zmq_pingpong remote_ask; do
    run remote.part "$build/bench/remote_bench" --only "$w" "$@"
    cat "$out/remote.part.jsonl" >>"$out/remote.reps.jsonl"
  done
done
median "$out/remote.reps.jsonl" "$out/remote.jsonl"
median "$out/caf_remote.reps.jsonl" "$out/caf_remote.jsonl"
# The frame codec alone (no peer): CPU ns per envelope to lay out and to decode a frame, as
# frame_encode_<payload>_<plain|keyed> and frame_decode_... lines.
if [[ $parts == *" remote "* ]] && [ -x "$build/bench/frame_bench" ]; then
  echo "== frame_bench" >&2
  "$build/bench/frame_bench" --benchmark_format=csv 2>/dev/null | awk -F, '
    /^"BM_/ {
      gsub(/"/, "", $1); split($1, p, "/"); sub("payload:", "", p[2]); sub("keyed:", "", p[3])
      op = p[1] == "BM_Encode" ? "encode" : "decode"
      printf "{\"name\":\"frame_%s_%sB_%s\",\"value\":%.1f,\"unit\":\"ns/envelope\"}\n", op, p[2], p[3] == "1" ? "keyed" : "plain", 1e9 / $7
    }' >>"$out/remote.jsonl"
fi

# Membership between real processes on loopback: troupe-node (preset lan) against HashiCorp Serf
# (memberlist's LAN profile), detection workload by workload alternately (timed: nothing else
# runs meanwhile); the false-positive workload of both at the same time, with the simulator
# beside them (they count events, they do not time them, and leave a core to the simulator).
: >"$out/membership.jsonl"
: >"$out/membership_serf.jsonl"
: >"$out/sim.jsonl"
mbench="$build/bench/membership_bench"
mruns=${MEMBERSHIP_RUNS:-3}
mfalse=${MEMBERSHIP_FALSE_SECONDS:-60}
serf_bin=$(command -v serf || true)
sim_pid=""
run_sim() {
  # shellcheck disable=SC2086  # SIM_ARGS is a list of arguments
  run sim "$build/bench/membership_sim_bench" ${SIM_ARGS:---sizes 100,1000,10000 --reps 3}
}
if [[ $parts == *" membership "* ]]; then
  [ -n "$serf_bin" ] || echo "== membership: serf not installed (scripts/install-deps.sh), the peer is skipped" >&2
  for w in ${MEMBERSHIP_WORKLOADS:-detect_5 detect_9 false_downs}; do
    : >"$out/mserf.part.jsonl"
    if [ "$w" = false_downs ]; then
      if [[ $parts == *" sim "* ]] && [ -z "$sim_pid" ]; then
        run_sim &
        sim_pid=$!
      fi
      run mtroupe.part "$mbench" --system troupe --only "$w" --false-seconds "$mfalse" &
      pids=$!
      if [ -n "$serf_bin" ]; then
        run mserf.part "$mbench" --system serf --serf "$serf_bin" --only "$w" --false-seconds "$mfalse" &
        pids="$pids $!"
      fi
      # shellcheck disable=SC2086
      wait $pids
    else
      run mtroupe.part "$mbench" --system troupe --only "$w" --runs "$mruns"
      [ -n "$serf_bin" ] && run mserf.part "$mbench" --system serf --serf "$serf_bin" --only "$w" --runs "$mruns"
    fi
    cat "$out/mtroupe.part.jsonl" >>"$out/membership.jsonl"
    cat "$out/mserf.part.jsonl" >>"$out/membership_serf.jsonl"
    rm -f "$out/mtroupe.part.jsonl" "$out/mserf.part.jsonl"
  done
fi

# Membership in the deterministic simulator (virtual time): dissemination at scale, no peer.
if [[ $parts == *" sim "* ]]; then
  if [ -n "$sim_pid" ]; then
    wait "$sim_pid"
  else
    run_sim
  fi
fi
# Sharding: placement beside jump consistent hash and rendezvous hashing (computed in the same
# run), memory per idle entity (no peer), end to end against plain remoting, and recovery.
: >"$out/sharding.jsonl"
if [[ $parts == *" sharding "* ]]; then
  run placement.part "$build/bench/placement_bench"
  cat "$out/placement.part.jsonl" >>"$out/sharding.jsonl"
  run entities.part "$build/bench/entity_bench"
  cat "$out/entities.part.jsonl" >>"$out/sharding.jsonl"
  # End to end (a sharding client to entities on three troupe-node processes, beside plain
  # remoting in the same run) and recovery from a SIGKILLed node (preset lan).
  run sharded.part "$build/bench/sharding_bench"
  cat "$out/sharded.part.jsonl" >>"$out/sharding.jsonl"
  # Issue #8's figure: the sharded tell against the remoting benchmark's remote_tell_64B, the
  # baseline the issue names. The two harnesses take turns, SHARDED_REPS times, one run each a
  # turn, and each side's median is compared: both see the same stretch of machine time and are
  # summed up the same way (a 2-core VM drifts by up to 2x over minutes).
  : >"$out/sharded_pair.reps.jsonl"
  for _ in $(seq "${SHARDED_REPS:-5}"); do
    run pair.part "$build/bench/remote_bench" --only remote_tell_64B
    cat "$out/pair.part.jsonl" >>"$out/sharded_pair.reps.jsonl"
    run pair.part "$build/bench/sharding_bench" --only e2e_tell --side sharded --runs 1
    cat "$out/pair.part.jsonl" >>"$out/sharded_pair.reps.jsonl"
  done
  median "$out/sharded_pair.reps.jsonl" "$out/sharded_pair.jsonl"
fi
rm -f "$out"/*.part.jsonl

# Join on name (awk: the lines are flat objects written by our own harnesses).
awk -v peer="CAF 0.17.6" "$awk_field"'
  FNR == 1 { file++ }
  file == 1 { peerv[field($0, "name")] = field($0, "value"); next }
  { name = field($0, "name"); order[++n] = name; val[name] = field($0, "value"); unit[name] = field($0, "unit") }
  END {
    for (i = 1; i <= n; i++) {
      k = order[i]
      if (k in peerv && peerv[k] + 0 != 0) {
        printf "  {\"name\":\"%s\",\"value\":%s,\"unit\":\"%s\",\"peer\":\"%s\",\"peer_value\":%s,\"ratio\":%.3f}\n", k, val[k], unit[k], peer, peerv[k], val[k] / peerv[k]
      } else {
        printf "  {\"name\":\"%s\",\"value\":%s,\"unit\":\"%s\",\"peer\":null,\"peer_value\":null,\"ratio\":null}\n", k, val[k], unit[k]
      }
    }
  }' "$out/caf.jsonl" "$out/troupe.jsonl" >"$out/results.lines"

# The remote figures: each Troupe figure against its own peer (a missing Troupe figure, i.e. an
# invalid run or a harness that was not built, is left out with a warning).
[[ $parts == *" remote "* ]] && awk -v rfile="$out/remote.jsonl" "$awk_field"'
  function pair(name, key, unit, peer, pv,   v) {
    v = remote[key]
    if (v == "") { printf "run.sh: no figure for %s (invalid run or harness not built)\n", name > "/dev/stderr"; return }
    if (pv != "" && pv + 0 != 0) {
      printf "  {\"name\":\"%s\",\"value\":%s,\"unit\":\"%s\",\"peer\":\"%s\",\"peer_value\":%s,\"ratio\":%.3f}\n", name, v, unit, peer, pv, v / pv
    } else {
      printf "  {\"name\":\"%s\",\"value\":%s,\"unit\":\"%s\",\"peer\":null,\"peer_value\":null,\"ratio\":null}\n", name, v, unit
    }
  }
  FILENAME == rfile { remote[field($0, "name")] = field($0, "value"); next }
  { caf[field($0, "name")] = field($0, "value") }
  END {
    zmq = "raw libzmq CURVE, 1 msg/frame"; cafp = "CAF 0.17.6 libcaf-io"; pp = "raw ZeroMQ CURVE ping-pong"
    pair("remote_tell_64B", "remote_tell_64B", "msg/s", zmq, remote["zmq_tell_64B"])
    pair("remote_tell_1KiB", "remote_tell_1KiB", "msg/s", zmq, remote["zmq_tell_1KiB"])
    pair("remote_tell_64B_vs_caf", "remote_tell_64B", "msg/s", cafp, caf["remote_tell_64B"])
    pair("remote_tell_1KiB_vs_caf", "remote_tell_1KiB", "msg/s", cafp, caf["remote_tell_1KiB"])
    if ("remote_tell_64B_tls" in caf) {
      tls = "CAF 0.17.6 libcaf-openssl (TLS)"
      pair("remote_tell_64B_vs_caf_tls", "remote_tell_64B", "msg/s", tls, caf["remote_tell_64B_tls"])
      pair("remote_tell_1KiB_vs_caf_tls", "remote_tell_1KiB", "msg/s", tls, caf["remote_tell_1KiB_tls"])
    }
    pair("remote_ask_p50_us", "remote_ask_p50_us", "us", pp, remote["zmq_pingpong_p50_us"])
    pair("remote_ask_p99_us", "remote_ask_p99_us", "us", pp, remote["zmq_pingpong_p99_us"])
  }' "$out/remote.jsonl" "$out/caf_remote.jsonl" >>"$out/results.lines"

# The frame codec's figures (no peer).
[[ $parts == *" remote "* ]] && awk "$awk_field"'
  field($0, "name") ~ /^frame_/ {
    printf "  {\"name\":\"%s\",\"value\":%s,\"unit\":\"%s\",\"peer\":null,\"peer_value\":null,\"ratio\":null}\n", field($0, "name"), field($0, "value"), field($0, "unit")
  }' "$out/remote.jsonl" >>"$out/results.lines"

# Membership: each Troupe figure against Serf's figure of the same name (a peer value of 0, e.g.
# no false downs, is shown with ratio null); simulator figures have no peer.
awk -v sfile="$out/membership_serf.jsonl" -v simfile="$out/sim.jsonl" -v peer="Serf 0.9.4 (memberlist LAN)" "$awk_field"'
  FILENAME == sfile { serf[field($0, "name")] = field($0, "value"); next }
  {
    k = field($0, "name"); v = field($0, "value"); u = field($0, "unit")
    if (FILENAME != simfile && (k in serf)) {
      pv = serf[k]
      if (pv + 0 != 0) {
        printf "  {\"name\":\"%s\",\"value\":%s,\"unit\":\"%s\",\"peer\":\"%s\",\"peer_value\":%s,\"ratio\":%.3f}\n", k, v, u, peer, pv, v / pv
      } else {
        printf "  {\"name\":\"%s\",\"value\":%s,\"unit\":\"%s\",\"peer\":\"%s\",\"peer_value\":%s,\"ratio\":null}\n", k, v, u, peer, pv
      }
    } else {
      printf "  {\"name\":\"%s\",\"value\":%s,\"unit\":\"%s\",\"peer\":null,\"peer_value\":null,\"ratio\":null}\n", k, v, u
    }
  }' "$out/membership_serf.jsonl" "$out/membership.jsonl" "$out/sim.jsonl" >>"$out/results.lines"

# Sharding lines carry their own peer: add the ratio.
awk "$awk_field"'
  /"name"/ {
    k = field($0, "name"); v = field($0, "value"); u = field($0, "unit"); p = field($0, "peer"); pv = field($0, "peer_value")
    if (p != "" && pv + 0 != 0) {
      printf "  {\"name\":\"%s\",\"value\":%s,\"unit\":\"%s\",\"peer\":\"%s\",\"peer_value\":%s,\"ratio\":%.3f}\n", k, v, u, p, pv, v / pv
    } else {
      printf "  {\"name\":\"%s\",\"value\":%s,\"unit\":\"%s\",\"peer\":null,\"peer_value\":null,\"ratio\":null}\n", k, v, u
    }
  }' "$out/sharding.jsonl" >>"$out/results.lines"

# The end-to-end sharded tell against the remoting benchmark's actor-to-actor tell (64 B): the
# baseline issue #8 names, medians of the alternated runs above. The sharding lines also carry a
# stricter one, the same client telling a plain actor on one node of the same cluster.
[[ $parts == *" sharding "* ]] && awk "$awk_field"'
  field($0, "name") == "remote_tell_64B" { pv = field($0, "value") }
  field($0, "name") == "sharded_tell_rate" { v = field($0, "value") }
  END {
    if (v != "" && pv + 0 != 0) {
      printf "  {\"name\":\"sharded_tell_vs_remote_tell_64B\",\"value\":%s,\"unit\":\"msg/s\",\"peer\":\"remote_tell_64B (remoting benchmark, alternated runs)\",\"peer_value\":%s,\"ratio\":%.3f}\n", v, pv, v / pv
    } else {
      print "run.sh: no sharded_tell_vs_remote_tell_64B (a harness failed or was not built)" > "/dev/stderr"
    }
  }' "$out/sharded_pair.jsonl" >>"$out/results.lines"

# One JSON array: the lines joined with commas.
awk 'BEGIN { printf "[\n" } { if (NR > 1) printf ",\n"; printf "%s", $0 } END { printf "\n]\n" }' \
  "$out/results.lines" >"$out/$results"
rm -f "$out/results.lines"

printf '%-30s %16s %16s %8s  %-12s %s\n' figure troupe peer ratio unit "peer name"
awk '
  function field(line, key,   m) {
    if (match(line, "\"" key "\":\"[^\"]*\"")) { m = substr(line, RSTART, RLENGTH); sub("^\"" key "\":\"", "", m); sub("\"$", "", m); return m }
    if (match(line, "\"" key "\":[-0-9.eE+]+|\"" key "\":null")) { m = substr(line, RSTART, RLENGTH); sub("^\"" key "\":", "", m); return m }
    return ""
  }
  /"name"/ { printf "%-30s %16s %16s %8s  %-12s %s\n", field($0,"name"), field($0,"value"), field($0,"peer_value"), field($0,"ratio"), field($0,"unit"), field($0,"peer") }
' "$out/$results"
echo "written: $out/$results" >&2
