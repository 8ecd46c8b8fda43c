#!/usr/bin/env bash
# Builds the local base image troupe/bookworm:local without any registry: a Debian bookworm root
# file system made by debootstrap (--variant=minbase) with the shared libraries the Troupe
# binaries need (found with ldd and mapped to packages with dpkg -S), ca-certificates, curl (the
# health check) and iproute2, no documentation or locales, apt lists cleaned; then `docker import`.
#
# Usage: scripts/docker-base.sh [--force]
#   Keeps the image when it was made from the same package list (--force rebuilds it). The root file system is cached as a tar
#   under $BUILD/docker/ (git-ignored), keyed by the package list, and the downloaded .debs too,
#   so a re-run after `docker rmi` takes seconds.
# Environment: BUILD (default build), TROUPE_BASE_IMAGE (default troupe/bookworm:local),
#   DEBIAN_MIRROR (default http://deb.debian.org/debian), TROUPE_BASE_PACKAGES (extra packages).
# Needs root (or sudo) for debootstrap; installs debootstrap with apt when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
image=${TROUPE_BASE_IMAGE:-troupe/bookworm:local}
build=${BUILD:-build}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
suite=bookworm
force=0
[ "${1:-}" = "--force" ] && force=1

# The packages that hold the shared libraries of every Troupe binary built on this host.
bins=()
for b in "$build/node/troupe-node" "$build/node/troupectl" "$build/remoting/troupe-keygen" \
         "$build/examples/client_service/troupe-client-service"; do
  [ -x "$b" ] && bins+=("$b")
done
libs=""
if [ ${#bins[@]} -gt 0 ]; then
  libs=$(docker/runtime-packages.sh "${bins[@]}")
else
  echo "docker-base: no Troupe binary in $build: the image gets no Troupe libraries (docker/Dockerfile installs them)"
fi
read -r -d '' -a packages <<<"ca-certificates curl iproute2 $libs" || true
[ -n "${TROUPE_BASE_PACKAGES:-}" ] && read -r -a extra <<<"$TROUPE_BASE_PACKAGES" && packages+=("${extra[@]}")
mapfile -t packages < <(printf '%s\n' "${packages[@]}" | sort -u)
echo "docker-base: packages: ${packages[*]}"

key=$(printf '%s\n' "$suite" "$mirror" "${packages[@]}" | sha256sum | cut -c1-12)
# An image made from the same package list is kept.
if [ "$force" = 0 ] && [ "$(docker image inspect -f '{{index .Config.Labels "troupe.base.key"}}' "$image" 2>/dev/null)" = "$key" ]; then
  echo "docker-base: $image is up to date (--force rebuilds it)"
  exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "docker-base: debootstrap needs root or sudo" >&2; exit 1; }
  sudo="sudo"
fi
command -v debootstrap >/dev/null || [ -x /usr/sbin/debootstrap ] || TROUPE_EXTRA_PACKAGES=debootstrap scripts/install-deps.sh

cache=$(mkdir -p "$build/docker/debs" && cd "$build/docker" && pwd)
tarball=$cache/$suite-minbase-$key.tar
if [ ! -s "$tarball" ]; then
  root=$(mktemp -d "$cache/rootfs-XXXXXX")
  trap '$sudo rm -rf "$root"' EXIT
  echo "docker-base: debootstrap $suite (minbase) into $root (log: $cache/debootstrap.log)"
  if ! $sudo debootstrap --variant=minbase --cache-dir="$cache/debs" --include="$(IFS=,; echo "${packages[*]}")" \
      "$suite" "$root/rootfs" "$mirror" >"$cache/debootstrap.log" 2>&1; then
    tail -20 "$cache/debootstrap.log" >&2
    exit 1
  fi
  r=$root/rootfs
  # Small: no documentation (copyright files stay), manuals, locales or package lists, now and
  # for whatever apt installs later in images built on this one.
  $sudo sh -e -c "
    cat >'$r/etc/dpkg/dpkg.cfg.d/01-troupe-nodoc' <<'CFG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
path-exclude /usr/share/lintian/*
CFG
    cat >'$r/etc/apt/apt.conf.d/01-troupe-small' <<'CFG'
APT::Install-Recommends \"false\";
APT::Install-Suggests \"false\";
Acquire::Languages \"none\";
DPkg::Post-Invoke { \"rm -f /var/cache/apt/archives/*.deb /var/cache/apt/*.bin || true\"; };
CFG
    cat >'$r/etc/apt/sources.list' <<'CFG'
deb $mirror $suite main
deb $mirror $suite-updates main
deb http://deb.debian.org/debian-security $suite-security main
CFG
    find '$r/usr/share/doc' -mindepth 1 -not -name copyright -not -type d -delete
    find '$r/usr/share/doc' -mindepth 1 -type d -empty -delete
    rm -rf '$r'/usr/share/man/* '$r'/usr/share/info/* '$r'/usr/share/lintian
    find '$r/usr/share/locale' -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +
    rm -rf '$r'/var/lib/apt/lists/* '$r'/var/cache/apt/*.bin '$r'/var/cache/apt/archives/*.deb
    rm -rf '$r'/var/log/* '$r'/tmp/* '$r'/var/tmp/*
    : >'$r/etc/resolv.conf'; : >'$r/etc/hostname'
  "
  $sudo tar -C "$r" --numeric-owner -cf "$tarball.part" .
  $sudo chown "$(id -u):$(id -g)" "$tarball.part"
  mv "$tarball.part" "$tarball"
  $sudo rm -rf "$root"
  trap - EXIT
else
  echo "docker-base: reusing $tarball"
fi

docker import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'ENV LANG=C.UTF-8' \
  --change 'CMD ["/bin/bash"]' \
  --change "LABEL troupe.base.key=$key" \
  --message "debootstrap --variant=minbase $suite + ${packages[*]}" \
  "$tarball" "$image" >/dev/null
echo "docker-base: $image ($(docker image inspect -f '{{.Size}}' "$image" | awk '{printf "%.0f MB", $1/1e6}'))"
