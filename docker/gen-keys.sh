#!/usr/bin/env bash
# Writes the keys the Docker cluster mounts at /keys (default folder: docker/keys, git-ignored):
#   node.key/.pub     CURVE key pair shared by every replica of the scalable node service
#   client.key/.pub   CURVE key pair of the client service
#   allow-list        the public keys allowed to connect (node, client)
#   keyring           gossip keyring (one base64 AES-256 key)
#   admin-token       bearer token for admin writes (troupectl leave/down); with it the admin
#                     port listens beyond loopback
# Secrets are mode 0600 and owned by the containers' user (uid TROUPE_UID, default 10001), so
# the host user cannot read them unless root. Keeps existing keys; --force makes new ones.
# Key generation: build/remoting/troupe-keygen when built, else troupe-keygen in $TROUPE_IMAGE.
# Usage: docker/gen-keys.sh [--force] [DIR]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
force=0
[ "${1:-}" = "--force" ] && force=1 && shift
dir=${1:-$here/keys}
uid=${TROUPE_UID:-10001}
image=${TROUPE_IMAGE:-troupe/node:local}
keygen=${TROUPE_KEYGEN:-$here/../${BUILD:-build}/remoting/troupe-keygen}

files=(node.key node.pub client.key client.pub allow-list keyring admin-token)
if [ "$force" = 0 ] && [ -d "$dir" ]; then
  have=0
  for f in "${files[@]}"; do [ -e "$dir/$f" ] && have=$((have + 1)); done
  if [ "$have" = "${#files[@]}" ]; then
    echo "gen-keys: keys in $dir already (--force makes new ones)"
    exit 0
  fi
fi

mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
keygen_in() {  # keygen_in NAME: NAME.key/.pub into $tmp, prints the allow-list line
  if [ -x "$keygen" ]; then
    "$keygen" "$tmp" "$1"
  else
    docker run --rm --entrypoint troupe-keygen --user "$(id -u):$(id -g)" -v "$tmp:/out" "$image" /out "$1"
  fi
}
(
  umask 077
  { echo "# troupe allow-list: the CURVE public keys allowed to connect"
    keygen_in node
    keygen_in client
  } >"$tmp/allow-list"
  { echo "# troupe gossip keyring: one base64 AES-256 key per line, the first is the primary"
    head -c 32 /dev/urandom | base64
  } >"$tmp/keyring"
  head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$tmp/admin-token"
)
chmod 0600 "$tmp"/*.key "$tmp/keyring" "$tmp/admin-token"
chmod 0644 "$tmp"/*.pub "$tmp/allow-list"
for f in "${files[@]}"; do rm -f "$dir/$f"; cp -p "$tmp/$f" "$dir/$f"; done
chmod 0755 "$dir"

# The containers run as uid $uid: it must own the secrets (troupe-node refuses group/other bits).
if [ "$(id -u)" = 0 ]; then
  chown "$uid:$uid" "${files[@]/#/$dir/}"
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
  sudo chown "$uid:$uid" "${files[@]/#/$dir/}"
else
  docker run --rm --user 0 --entrypoint chown -v "$dir:/keys" "$image" "$uid:$uid" "${files[@]/#//keys/}"
fi
echo "gen-keys: wrote ${files[*]} to $dir (owner uid $uid)"
