#!/bin/sh
# troupe-node in a container: fills in what a container knows and a config file cannot, then runs
# troupe-node with the rest of the command line (every flag is also a TROUPE_<NAME> variable; a
# flag given here wins over the environment).
#   TROUPE_NAME           node name (default: the container's host name)
#   TROUPE_ADVERTISE      address other nodes use (default: this container's first global IPv4
#                         address; waits for one, so a container restarted while disconnected
#                         from its network starts once it is connected again)
#   TROUPE_BIND           default 0.0.0.0
#   TROUPE_SEED           comma-separated host:port seeds; waits (TROUPE_SEED_WAIT s, default 30)
#                         for their names to resolve, then hands them over as given
#   TROUPE_KEYS_DIR       folder of keys (default /keys): TROUPE_KEY_NAME.key (default node),
#                         allow-list, keyring, admin-token; each is used unless its flag is set
#   TROUPE_ADMIN_BIND     default 0.0.0.0 when an admin token is known, else 127.0.0.1
# A config file (--config or TROUPE_CONFIG) loses to the environment, so none of these defaults
# is set for a key the file sets (its own `name = ...`, `advertise = ...`, `key-file = ...`).
# `troupe-client-service ARGS` runs the example client service with --bind, --advertise, --key-file
# and --allow-list filled in the same way; any other first argument that is not a flag is run as
# is (`troupectl ...`, `sh`, ...).
set -eu

log() { echo "entrypoint: $*" >&2; }
address() { ip -4 -o addr show scope global 2>/dev/null | awk '{ split($4, a, "/"); print a[1]; exit }'; }
wait_for_address() {  # prints this container's address once it has one
  waited=0
  while :; do
    a=$(address)
    [ -n "$a" ] && break
    [ $((waited % 10)) -eq 0 ] && log "no network address yet: waiting"
    sleep 1
    waited=$((waited + 1))
  done
  echo "$a"
}
keys=${TROUPE_KEYS_DIR:-/keys}

case "${1:-}" in
  "" | -*) ;;
  troupe-client-service)
    # The example client service: binds everywhere, advertises this container's address and
    # uses the client key pair and the allow-list from the keys folder unless told otherwise.
    shift
    set -- --bind 0.0.0.0 --advertise "$(wait_for_address)" "$@"
    case " $* " in *" --key-file"*|*" --insecure "*) ;; *) set -- --key-file "$keys/${TROUPE_CLIENT_KEY_NAME:-client}.key" "$@" ;; esac
    case " $* " in *" --allow-list"*|*" --insecure "*) ;; *) set -- --allow-list "$keys/allow-list" "$@" ;; esac
    exec troupe-client-service "$@"
    ;;
  *) exec "$@" ;;
esac

config=${TROUPE_CONFIG:-}
prev=
for a in "$@"; do
  case "$a" in --config=*) config=${a#--config=} ;; esac
  [ "$prev" = "--config" ] && config=$a
  prev=$a
done
sets() {  # sets KEY: the config file sets KEY (a top-level "KEY = ..." line)
  [ -n "$config" ] && [ -r "$config" ] && grep -Eq "^[[:space:]]*$1[[:space:]]*=" "$config"
}

key_name=${TROUPE_KEY_NAME:-node}
if [ -d "$keys" ]; then
  if [ -z "${TROUPE_KEY_FILE:-}" ] && ! sets key-file && [ -f "$keys/$key_name.key" ]; then export TROUPE_KEY_FILE="$keys/$key_name.key"; fi
  if [ -z "${TROUPE_ALLOW_LIST:-}" ] && ! sets allow-list && [ -f "$keys/allow-list" ]; then export TROUPE_ALLOW_LIST="$keys/allow-list"; fi
  if [ -z "${TROUPE_KEYRING:-}" ] && ! sets keyring && [ -f "$keys/keyring" ]; then export TROUPE_KEYRING="$keys/keyring"; fi
  if [ -z "${TROUPE_ADMIN_TOKEN:-}" ] && ! sets admin-token && [ -f "$keys/admin-token" ]; then
    TROUPE_ADMIN_TOKEN=$(cat "$keys/admin-token")
    export TROUPE_ADMIN_TOKEN
  fi
fi
for f in "${TROUPE_KEY_FILE:-}" "${TROUPE_KEYRING:-}"; do
  if [ -n "$f" ] && [ ! -r "$f" ]; then
    log "$f is not readable by uid $(id -u): run docker/gen-keys.sh (it gives the keys to uid $(id -u))"
    exit 2
  fi
done

if [ -z "${TROUPE_NAME:-}" ] && ! sets name; then export TROUPE_NAME="$(hostname)"; fi
if [ -z "${TROUPE_BIND:-}" ] && ! sets bind; then export TROUPE_BIND=0.0.0.0; fi
if { [ -n "${TROUPE_ADMIN_TOKEN:-}" ] || sets admin-token; } && [ -z "${TROUPE_ADMIN_BIND:-}" ] && ! sets admin-bind; then
  export TROUPE_ADMIN_BIND=0.0.0.0
fi

if [ -z "${TROUPE_ADVERTISE:-}" ] && ! sets advertise; then
  TROUPE_ADVERTISE=$(wait_for_address)
  export TROUPE_ADVERTISE
fi

if [ -n "${TROUPE_SEED:-}" ]; then
  deadline=$(( $(date +%s) + ${TROUPE_SEED_WAIT:-30} ))
  for seed in $(echo "$TROUPE_SEED" | tr ',' ' '); do
    host=${seed%:*}
    host=${host#[}; host=${host%]}
    until getent hosts "$host" >/dev/null 2>&1 || [ "$(date +%s)" -ge "$deadline" ]; do sleep 0.2; done
  done
fi

log "node ${TROUPE_NAME:-(from $config)} advertising ${TROUPE_ADVERTISE:-(from $config)}, seeds ${TROUPE_SEED:-none}"
exec troupe-node "$@"
