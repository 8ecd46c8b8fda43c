#!/usr/bin/env bash
# Installs the Debian (bookworm) packages Troupe builds with, skipping those already present.
# Runs as root, or through sudo when not root. Idempotent; quiet when nothing is missing.
set -euo pipefail

packages=(
  cmake ninja-build g++ make pkg-config
  libflatbuffers-dev flatbuffers-compiler
  libspdlog-dev libfmt-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  libboost-dev libboost-system-dev
  libzmq3-dev cppzmq-dev libsodium-dev
  libssl-dev libxxhash-dev libmimalloc-dev
  libcaf-dev openssl
  libcli11-dev
  serf
)
# The dashboard test loads the page in headless Chromium and decodes its screenshot with libpng;
# TROUPE_BUILD_ONLY=1 (the Docker build stage) leaves them out.
[ "${TROUPE_BUILD_ONLY:-}" = 1 ] || packages+=(chromium libpng-dev fonts-dejavu-core)
[ "${TROUPE_EXTRA_PACKAGES:-}" ] && read -r -a extra <<<"$TROUPE_EXTRA_PACKAGES" && packages+=("${extra[@]}")

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

sudo=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "install-deps: need root or sudo to install: ${missing[*]}" >&2; exit 1; }
  sudo="sudo"
fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -q
$sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
# serf is only the membership benchmark's peer: its Debian package enables a system agent on
# the gossip port Troupe uses by default (7946); where systemd runs, keep that agent off.
if [[ " ${missing[*]} " == *" serf "* ]] && [ -d /run/systemd/system ]; then
  $sudo systemctl disable --now serf.service >/dev/null 2>&1 || true
fi
