#!/usr/bin/env python3
"""make test-cluster: a Troupe cluster in Docker (docker/docker-compose.yml) under faults.

Builds what it needs (the base image troupe/bookworm:local, an image of the binaries built on the
host, keys), starts the compose project (a seed, TROUPE_TEST_NODES node replicas, the example
client service) under a unique project name, then runs the scenarios, each with asserts and
bounded waits (polls; the only sleeps that are not polls are the pause itself and the window in
which nothing may be downed):

  a. the cluster forms: every node's /api/v1/members shows all nodes up; troupectl members (run
     in a container) lists them all
  b. docker kill of a node (the seed, which hosts the active coordinator; TROUPE_TEST_KILL=node
     kills a replica): the others down it, its shards move, the client's requests succeed again;
     the node comes back (restart policy, or docker start) and joins as a new incarnation
  c. docker pause of a node for less than the preset's tolerance: nothing is downed
  d. docker network disconnect of a node: the others down it and keep serving the client; after
     docker network connect it rejoins as a new incarnation (another uid)

Everything is torn down at the end, also on failure (the containers' logs are printed then).
Python 3 standard library only. Environment: BUILD (default build), TROUPE_TEST_IMAGE (use this
image instead of building one from $BUILD), TROUPE_TEST_NODES (default 3), TROUPE_TEST_KEEP=1
(leave the cluster running).
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BUILD = os.path.join(ROOT, os.environ.get("BUILD", "build"))
COMPOSE_FILE = os.path.join(ROOT, "docker", "docker-compose.yml")
PROJECT = "troupetest%d" % os.getpid()
NODES = int(os.environ.get("TROUPE_TEST_NODES", "3"))
PRESET = "lan"      # pause tolerance: suspicion, then stable_after 5 s before anyone is downed
PAUSE_S = 2.0
ENTITY = "kv"
KILL = os.environ.get("TROUPE_TEST_KILL", "seed")  # the service whose container scenario b kills
T0 = time.monotonic()


class Failed(Exception):
    pass


def log(msg):
    print("[%6.1fs] %s" % (time.monotonic() - T0, msg), flush=True)


def run(cmd, check=True, timeout=600, env=None):
    """Runs cmd (a list); returns its stdout; raises Failed with stderr when check and it fails."""
    try:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        raise Failed("%s did not finish within %d s" % (" ".join(cmd), timeout))
    if check and p.returncode != 0:
        raise Failed("%s exited %d:\n%s%s" % (" ".join(cmd), p.returncode, p.stdout[-3000:], p.stderr[-3000:]))
    return p.stdout if p.returncode == 0 else None


def wait_until(what, fn, timeout, interval=0.5):
    """Polls fn until it returns a true value (returned), at most timeout seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            v = fn()
            if v:
                return v
            last = v
        except Failed as e:
            last = str(e)
        if time.monotonic() >= deadline:
            raise Failed("timed out after %.0f s waiting for %s (last: %s)" % (timeout, what, last))
        time.sleep(interval)


class Cluster:
    def __init__(self, image, keys):
        self.image = image
        self.keys = keys
        if run(["docker", "compose", "version"], check=False) is not None:
            self.compose_cmd = ["docker", "compose"]
        else:
            self.compose_cmd = ["docker-compose"]
        self.env = dict(os.environ, TROUPE_IMAGE=image, TROUPE_KEYS=keys, TROUPE_NODES=str(NODES),
                        TROUPE_PRESET=PRESET, TROUPE_ENTITY=ENTITY, COMPOSE_PROJECT_NAME=PROJECT)
        self.network = None
        self.seen = set()  # every container id ever seen, for the logs

    def compose(self, *args, timeout=300):
        return run(self.compose_cmd + ["-p", PROJECT, "-f", COMPOSE_FILE] + list(args), env=self.env, timeout=timeout)

    def containers(self, service):
        out = run(["docker", "ps", "-a", "--filter", "label=com.docker.compose.project=" + PROJECT,
                   "--filter", "label=com.docker.compose.service=" + service, "--format", "{{.ID}}"])
        ids = sorted(out.split())
        self.seen.update(ids)
        return ids

    def nodes(self):
        return self.containers("seed") + self.containers("node")

    def client(self):
        c = self.containers("client")
        if len(c) != 1:
            raise Failed("expected one client container, found %s" % c)
        return c[0]

    def state(self, c):
        return json.loads(run(["docker", "inspect", "-f", "{{json .State}}", c]))

    def restarts(self, c):
        return int(run(["docker", "inspect", "-f", "{{.RestartCount}}", c]).strip())

    def get(self, c, path):
        """GET on the container's admin port, from inside the container; None when it does not answer."""
        out = run(["docker", "exec", c, "curl", "-fsS", "--max-time", "2", "http://127.0.0.1:7948" + path],
                  check=False, timeout=15)
        return json.loads(out) if out else None

    def members(self, c):
        return self.get(c, "/api/v1/members")

    def client_stats(self):
        out = run(["docker", "logs", "--since", "5s", self.client()], timeout=30)
        lines = [l for l in out.splitlines() if l.startswith("client t=")]
        if not lines:
            return None
        return {k: float(v) for k, v in re.findall(r"(\w+)=([0-9.]+)", lines[-1])}

    def logs(self):
        for c in sorted(self.seen):
            name = run(["docker", "inspect", "-f", "{{.Name}}", c], check=False) or c
            print("\n===== logs of %s (%s), last 80 lines =====" % (name.strip(), c), flush=True)
            p = subprocess.run(["docker", "logs", "--tail", "80", c], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
            print(p.stdout, flush=True)

    def down(self):
        for c in self.seen:
            subprocess.run(["docker", "unpause", c], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        subprocess.run(self.compose_cmd + ["-p", PROJECT, "-f", COMPOSE_FILE, "down", "-v", "--remove-orphans",
                                           "-t", "5"], env=self.env, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)


# ---- what the nodes see -------------------------------------------------------------------------

def converged(cl, expect_names):
    """True when every container answers and sees exactly one up, reachable member per container."""
    for c in cl.nodes():
        ms = cl.members(c)
        if ms is None:
            return False
        live = {m["name"] for m in ms if m["status"] == "up" and m["liveness"] == "alive"}
        if live != set(expect_names):
            return False
    return True


def member_of(cl, observer, name):
    """The newest incarnation named `name` in observer's view (None if absent)."""
    ms = cl.members(observer) or []
    same = [m for m in ms if m["name"] == name]
    return same[-1] if same else None


def status_of_uid(cl, observer, uid):
    for m in cl.members(observer) or []:
        if m["uid"] == uid:
            return m["status"]
    return "absent"


def shards(cl, observer):
    s = cl.get(observer, "/api/v1/shards?type=" + ENTITY)
    return s[ENTITY] if s else None


def owns(region, member):
    return region is not None and (member["uid"] in region or member["remoting"] in region)


def client_progress(cl, min_ok, window_s, what):
    """Waits until the client's ok count grows by min_ok over window_s with failed constant."""
    first = wait_until("client output", cl.client_stats, 30)

    def check():
        now = cl.client_stats()
        if now is None:
            return False
        if now["t"] - check.base["t"] >= window_s:
            good = now["ok"] - check.base["ok"] >= min_ok and now["failed"] == check.base["failed"]
            if good:
                return now
            check.base = now  # a window with failures: start a new one
        return False

    check.base = first
    got = wait_until(what, check, 60, interval=1.0)
    log("  client: ok=%d failed=%d unavailable=%d p99_ms=%s wrong=%d" % (
        got["ok"], got["failed"], got["unavailable"], got["p99_ms"], got["wrong"]))
    return got


# ---- scenarios ----------------------------------------------------------------------------------

def scenario_forms(cl):
    log("a. the cluster forms")
    nodes = cl.nodes()
    if len(nodes) != NODES + 1:
        raise Failed("expected %d node containers, found %d" % (NODES + 1, len(nodes)))
    wait_until("every node to see %d members up" % len(nodes), lambda: converged(cl, nodes), 90)
    log("  every node sees %d members up: %s" % (len(nodes), ", ".join(nodes)))
    ms = cl.members(nodes[0])
    leaders = [m["name"] for m in ms if m["leader"]]
    log("  leader: %s" % leaders)
    wait_until("every shard of %s to have a home" % ENTITY,
               lambda: all(cl.get(c, "/readyz") for c in nodes), 60)
    if run(["docker", "exec", nodes[0], "sh", "-c", "command -v troupectl"], check=False):
        out = run(["docker", "exec", nodes[-1], "troupectl", "members"])
        missing = [n for n in nodes if n not in out]
        if missing:
            raise Failed("troupectl members does not list %s:\n%s" % (missing, out))
        log("  troupectl members lists all %d nodes" % len(nodes))
    else:
        log("  troupectl is not in the image: checked through the admin API only")
    client_progress(cl, 50, 2, "the client to get answers")


def scenario_kill(cl):
    log("b. docker kill of a node")
    # The seed by default: the oldest member, so the active coordinator moves too, and a seed that
    # comes back must join the running cluster rather than form a new one.
    victim = cl.containers(KILL)[0]
    others = [c for c in cl.nodes() if c != victim]
    seed = others[0]  # an observer
    before = member_of(cl, seed, victim)
    table = shards(cl, seed)
    owned = sum(1 for s in table["shards"] if owns(s["region"], before))
    log("  killing %s (uid %s, %d of %d shards)" % (victim, before["uid"], owned, table["num_shards"]))
    restarts = cl.restarts(victim)
    run(["docker", "kill", victim])
    t = time.monotonic()
    wait_until("the others to down %s" % victim,
               lambda: all(status_of_uid(cl, o, before["uid"]) in ("down", "removed") for o in others), 60)
    log("  downed by all %d others after %.1f s" % (len(others), time.monotonic() - t))

    def moved():
        tb = shards(cl, seed)
        return tb and tb["unallocated"] == 0 and not any(owns(s["region"], before) for s in tb["shards"])

    wait_until("its shards to move", moved, 60)
    log("  its shards moved after %.1f s" % (time.monotonic() - t))
    client_progress(cl, 50, 2, "the client's requests to succeed again")

    # Back as a new incarnation: the restart policy, or (when the engine counts `docker kill` as a
    # manual stop) a start by hand.
    try:
        wait_until("%s to be restarted" % victim, lambda: cl.restarts(victim) > restarts, 3)
        log("  restarted by its restart policy")
    except Failed:
        log("  not restarted by the restart policy (docker kill counts as a manual stop): docker start")
        run(["docker", "start", victim])
    wait_until("%s to rejoin" % victim, lambda: converged(cl, cl.nodes()), 90)
    after = member_of(cl, seed, victim)
    if after["uid"] == before["uid"]:
        raise Failed("%s came back with its old uid %s" % (victim, after["uid"]))
    log("  rejoined as a new incarnation: uid %s -> %s (%.1f s after the kill)" % (
        before["uid"], after["uid"], time.monotonic() - t))


def scenario_pause(cl):
    log("c. docker pause of a node for %.1f s (preset %s)" % (PAUSE_S, PRESET))
    seed = cl.containers("seed")[0]
    victim = cl.containers("node")[-1]
    wait_until("a converged cluster", lambda: converged(cl, cl.nodes()), 60)
    uids = {c: member_of(cl, seed, c)["uid"] for c in cl.nodes()}
    restarts = {c: cl.restarts(c) for c in uids}
    run(["docker", "pause", victim])
    time.sleep(PAUSE_S)  # the fault itself
    run(["docker", "unpause", victim])
    # Nothing may be downed: watch for longer than stable_after + removal_margin (8 s with lan).
    end = time.monotonic() + 12
    while time.monotonic() < end:
        for o in cl.nodes():
            for c, uid in uids.items():
                st = status_of_uid(cl, o, uid)
                if st not in ("up", "absent") or (st == "absent" and o != c):
                    raise Failed("%s sees %s (uid %s) as %s after a %.1f s pause" % (o, c, uid, st, PAUSE_S))
        time.sleep(0.5)
    if any(cl.restarts(c) != restarts[c] or cl.state(c)["Status"] != "running" for c in uids):
        raise Failed("a container stopped or restarted after the pause")
    wait_until("every member reachable again", lambda: converged(cl, list(uids)), 30)
    now = {c: member_of(cl, seed, c)["uid"] for c in cl.nodes()}
    if now != uids:
        raise Failed("incarnations changed after a pause: %s -> %s" % (uids, now))
    log("  nobody downed, every uid unchanged")


def scenario_partition(cl):
    log("d. docker network disconnect of a node")
    seed = cl.containers("seed")[0]
    victim = cl.containers("node")[1 % NODES]
    others = [c for c in cl.nodes() if c != victim]
    wait_until("a converged cluster", lambda: converged(cl, cl.nodes()), 60)
    before = member_of(cl, seed, victim)
    net = json.loads(run(["docker", "inspect", "-f", "{{json .NetworkSettings.Networks}}", victim]))
    network = list(net)[0]
    restarts = cl.restarts(victim)
    run(["docker", "network", "disconnect", network, victim])
    t = time.monotonic()
    wait_until("the others to down %s" % victim,
               lambda: all(status_of_uid(cl, o, before["uid"]) in ("down", "removed") for o in others), 60)
    log("  downed by all %d others after %.1f s" % (len(others), time.monotonic() - t))

    def moved():
        tb = shards(cl, seed)
        return tb and tb["unallocated"] == 0 and not any(owns(s["region"], before) for s in tb["shards"])

    wait_until("its shards to move", moved, 60)
    client_progress(cl, 50, 2, "the rest to keep serving the client")
    # Alone, it is the minority: it downs itself and exits 3; the restart policy starts it again
    # and its entrypoint waits for a network address.
    wait_until("%s to down itself and be restarted" % victim, lambda: cl.restarts(victim) > restarts, 60)
    log("  it downed itself (minority) and was restarted, %.1f s after the disconnect" % (time.monotonic() - t))
    run(["docker", "network", "connect", "--alias", "node", network, victim])
    wait_until("%s to rejoin" % victim, lambda: converged(cl, cl.nodes()), 90)
    after = member_of(cl, seed, victim)
    if after["uid"] == before["uid"]:
        raise Failed("%s rejoined with its old uid %s" % (victim, after["uid"]))
    log("  rejoined as a new incarnation: uid %s -> %s (%.1f s after the disconnect)" % (
        before["uid"], after["uid"], time.monotonic() - t))
    client_progress(cl, 50, 2, "the client after the rejoin")


# ---- setup --------------------------------------------------------------------------------------

def build_images():
    image = os.environ.get("TROUPE_TEST_IMAGE")
    if image:
        log("image %s (TROUPE_TEST_IMAGE)" % image)
        return image
    env = dict(os.environ, BUILD=os.path.relpath(BUILD, ROOT))
    t = time.monotonic()
    subprocess.run([os.path.join(ROOT, "scripts", "docker-base.sh")], check=True, env=env)
    log("base image ready in %.1f s" % (time.monotonic() - t))
    t = time.monotonic()
    image = "troupe/node:prebuilt"
    subprocess.run([os.path.join(ROOT, "docker", "build-image.sh"), "prebuilt", image], check=True, env=env)
    log("prebuilt image ready in %.1f s" % (time.monotonic() - t))
    return image


def main():
    if run(["docker", "info"], check=False) is None:
        print("cluster_test: no Docker engine answers", file=sys.stderr)
        return 2
    image = build_images()
    os.makedirs(os.path.join(BUILD, "docker"), exist_ok=True)
    keys = tempfile.mkdtemp(prefix="keys-%s-" % PROJECT, dir=os.path.join(BUILD, "docker"))
    subprocess.run([os.path.join(ROOT, "docker", "gen-keys.sh"), keys], check=True,
                   env=dict(os.environ, TROUPE_IMAGE=image, BUILD=os.path.relpath(BUILD, ROOT)))
    cl = Cluster(image, keys)

    def on_signal(sig, _frame):
        raise Failed("signal %d" % sig)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    ok = False
    try:
        log("compose project %s: seed + %d nodes + client (%s)" % (PROJECT, NODES, " ".join(cl.compose_cmd)))
        t = time.monotonic()
        cl.compose("up", "-d", timeout=300)
        cl.nodes()
        cl.containers("client")
        log("  up (seed, nodes healthy) in %.1f s" % (time.monotonic() - t))
        for scenario in (scenario_forms, scenario_kill, scenario_pause, scenario_partition):
            t = time.monotonic()
            scenario(cl)
            log("  -> passed in %.1f s" % (time.monotonic() - t))
        final = cl.client_stats()
        log("client at the end: %s" % final)
        ok = True
    except (Failed, subprocess.SubprocessError, KeyboardInterrupt) as e:
        log("FAILED: %s" % e)
        cl.seen.update(cl.nodes() + cl.containers("client"))
        cl.logs()
    finally:
        if os.environ.get("TROUPE_TEST_KEEP") == "1":
            log("TROUPE_TEST_KEEP=1: compose project %s left running" % PROJECT)
        else:
            cl.down()
            shutil.rmtree(keys, ignore_errors=True)
    log("cluster test %s in %.1f s" % ("passed" if ok else "FAILED", time.monotonic() - T0))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
