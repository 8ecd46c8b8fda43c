#!/bin/sh
# The container entrypoint's defaults (node name, bind and advertised addresses, keys from the
# keys folder) never override what a config file sets: the environment wins over the file in
# troupe-node, so a default exported for a key the file has would silently replace it.
# Runs docker/entrypoint.sh with a stand-in troupe-node that prints what it was given.
set -eu
root=$(cd "$(dirname "$0")/../.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cat >"$tmp/troupe-node" <<'STUB'
#!/bin/sh
env | grep '^TROUPE_' | sort
echo "ARGS $*"
STUB
chmod +x "$tmp/troupe-node"
mkdir "$tmp/keys"
: >"$tmp/keys/node.key"
: >"$tmp/keys/allow-list"
echo s3cret >"$tmp/keys/admin-token"
failed=0
expect() {  # expect <output> <grep -E pattern> <what>
  if ! printf '%s\n' "$1" | grep -Eq "$2"; then echo "FAIL: $3"; printf '%s\n' "$1" | sed 's/^/  | /'; failed=1; fi
}
refuse() {
  if printf '%s\n' "$1" | grep -Eq "$2"; then echo "FAIL: $3"; printf '%s\n' "$1" | sed 's/^/  | /'; failed=1; fi
}
run() {  # run [VAR=value ...] -- [entrypoint arguments ...]
  vars=
  while [ "$1" != "--" ]; do vars="$vars $1"; shift; done
  shift
  # shellcheck disable=SC2086  # the assignments are words without spaces
  env -i PATH="$tmp:/usr/bin:/bin" TROUPE_KEYS_DIR="$tmp/keys" $vars sh "$root/docker/entrypoint.sh" "$@" 2>/dev/null || true
}

# Without a config file: every default is filled in.
out=$(run TROUPE_ADVERTISE=10.1.1.1 -- --port 7947)
expect "$out" "^TROUPE_NAME=.+" "the node name defaults to the host name"
expect "$out" "^TROUPE_BIND=0\.0\.0\.0$" "bind defaults to 0.0.0.0"
expect "$out" "^TROUPE_KEY_FILE=$tmp/keys/node\.key$" "the key file comes from the keys folder"
expect "$out" "^TROUPE_ALLOW_LIST=$tmp/keys/allow-list$" "the allow-list comes from the keys folder"
expect "$out" "^TROUPE_ADMIN_BIND=0\.0\.0\.0$" "with a token the admin port listens everywhere"
expect "$out" "^ARGS --port 7947$" "the arguments are handed over"

# A config file (by flag) that sets the name, the addresses and the key file keeps them.
cat >"$tmp/n.toml" <<'TOML'
name = "from-file"
advertise = "10.9.9.9"
bind = "127.0.0.1"
key-file = "/elsewhere/n.key"
admin-bind = "127.0.0.1"
TOML
out=$(run -- --config "$tmp/n.toml")
expect "$out" "^ARGS --config $tmp/n.toml$" "--config FILE: troupe-node was not started with its arguments"
refuse "$out" "^TROUPE_NAME=" "the file's name was overridden"
refuse "$out" "^TROUPE_ADVERTISE=" "the file's advertised address was overridden"
refuse "$out" "^TROUPE_BIND=" "the file's bind address was overridden"
refuse "$out" "^TROUPE_KEY_FILE=" "the file's key file was overridden"
refuse "$out" "^TROUPE_ADMIN_BIND=" "the file's admin bind address was overridden"
expect "$out" "^TROUPE_ALLOW_LIST=$tmp/keys/allow-list$" "what the file leaves out still comes from the keys folder"

# The same file through TROUPE_CONFIG, and --config=FILE.
out=$(run TROUPE_CONFIG="$tmp/n.toml" --)
expect "$out" "^ARGS" "TROUPE_CONFIG: troupe-node was not started"
refuse "$out" "^TROUPE_NAME=" "TROUPE_CONFIG: the file's name was overridden"
out=$(run -- "--config=$tmp/n.toml")
expect "$out" "^ARGS --config=" "--config=FILE: troupe-node was not started"
refuse "$out" "^TROUPE_ADVERTISE=" "--config=FILE: the file's advertised address was overridden"

# A token in the file (and no admin bind there): the admin port listens everywhere, as with a
# token from the keys folder.
printf 'admin-token = "t0ken"\nadvertise = "10.9.9.9"\n' >"$tmp/token.toml"
rm "$tmp/keys/admin-token"
out=$(run -- --config "$tmp/token.toml")
expect "$out" "^TROUPE_ADMIN_BIND=0\.0\.0\.0$" "a token from the file: the admin port listens everywhere"
refuse "$out" "^TROUPE_ADMIN_TOKEN=" "the file's token was overridden"
echo s3cret >"$tmp/keys/admin-token"

# The environment still wins where it is set explicitly.
out=$(run TROUPE_NAME=from-env -- --config "$tmp/n.toml")
expect "$out" "^TROUPE_NAME=from-env$" "an explicit TROUPE_NAME is kept"

[ "$failed" -eq 0 ] && echo "entrypoint: all checks passed"
exit "$failed"
