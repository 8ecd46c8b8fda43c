#!/bin/sh
# Prints the Debian packages that hold the shared libraries of the given executables, one a line
# (ldd, then dpkg -S; usrmerge: both /lib and /usr/lib spellings are tried). Exits 1 naming a
# library no package holds. Used by scripts/docker-base.sh on the host and by docker/Dockerfile.
# Usage: docker/runtime-packages.sh EXECUTABLE...
set -eu
package_of() {
  for p in "$1" "$(readlink -f "$1")"; do
    for c in "$p" "${p#/usr}" "/usr$p"; do
      out=$(dpkg -S "$c" 2>/dev/null | grep -v '^diversion' | head -n 1) || true
      if [ -n "$out" ]; then
        echo "${out%%:*}"
        return 0
      fi
    done
  done
  return 1
}
libs=$(for b in "$@"; do ldd "$b"; done | awk '$2 == "=>" && $3 ~ /^\// { print $3 }' | sort -u)
# Not a pipeline into sort: an exit inside it would only end a subshell (sh has no pipefail).
packages=""
for l in $libs; do
  p=$(package_of "$l") || { echo "runtime-packages: no Debian package holds $l" >&2; exit 1; }
  packages="$packages $p"
done
printf '%s\n' $packages | sort -u
