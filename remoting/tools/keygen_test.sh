#!/usr/bin/env bash
# troupe-keygen writes a 0600 secret key, a public key, and prints an allow-list line that
# matches the .pub file; bad usage exits 2.
set -euo pipefail
keygen=$1
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
line=$("$keygen" "$dir/keys" node1)
pub=$(cat "$dir/keys/node1.pub")
[ "$line" = "$pub  # node1" ] || { echo "printed line does not match node1.pub"; exit 1; }
[ ${#pub} -eq 40 ] || { echo "public key is not 40 characters"; exit 1; }
[ "$(stat -c %a "$dir/keys/node1.key")" = 600 ] || { echo "secret key file is not 0600"; exit 1; }
[ "$(wc -c <"$dir/keys/node1.key")" -eq 41 ] || { echo "secret key file has the wrong size"; exit 1; }
rc=0; "$keygen" only-one-arg >/dev/null 2>&1 || rc=$?
[ $rc -eq 2 ] || { echo "bad usage exited $rc, not 2"; exit 1; }
echo "keygen ok"
