#!/usr/bin/env bash
# Builds the Troupe node image.
#   docker/build-image.sh prebuilt [TAG]  binaries built on the host ($BUILD, default build) on
#                                         troupe/bookworm:local (default TAG troupe/node:prebuilt)
#   docker/build-image.sh source [TAG]    docker/Dockerfile, compiled inside Docker on
#                                         BASE (default troupe/bookworm:local; JOBS, default nproc)
#                                         (default TAG troupe/node:local)
# The source context is the working tree as git sees it (tracked and untracked files, without
# what .gitignore lists: no build folders, no keys), sent as a tar.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:?usage: docker/build-image.sh prebuilt|source [TAG]}
build=${BUILD:-build}
base=${BASE:-troupe/bookworm:local}
case "$mode" in
  prebuilt)
    tag=${2:-troupe/node:prebuilt}
    ctx=$build/docker/prebuilt
    rm -rf "$ctx"
    mkdir -p "$ctx/bin"
    for b in node/troupe-node node/troupectl remoting/troupe-keygen examples/client_service/troupe-client-service; do
      if [ -x "$build/$b" ]; then
        objcopy --strip-unneeded "$build/$b" "$ctx/bin/$(basename "$b")" 2>/dev/null || cp "$build/$b" "$ctx/bin/"
      fi
    done
    [ -x "$ctx/bin/troupe-node" ] || { echo "build-image: $build/node/troupe-node is missing: run make build" >&2; exit 1; }
    cp docker/entrypoint.sh "$ctx/entrypoint.sh"
    echo "build-image: $tag from $(cd "$ctx/bin" && echo *) on $base"
    docker build -q --build-arg BASE="$base" -t "$tag" -f docker/Dockerfile.prebuilt "$ctx" >/dev/null
    ;;
  source)
    tag=${2:-troupe/node:local}
    echo "build-image: $tag from source on $base (JOBS=${JOBS:-$(nproc)})"
    git ls-files -z --cached --others --exclude-standard |
      while IFS= read -r -d '' f; do [ -f "$f" ] && printf '%s\0' "$f"; done |
      tar --null -T - -c |
      docker build --build-arg BASE="$base" --build-arg JOBS="${JOBS:-$(nproc)}" -t "$tag" -f docker/Dockerfile -
    ;;
  *)
    echo "usage: docker/build-image.sh prebuilt|source [TAG]" >&2
    exit 2
    ;;
esac
echo "build-image: $tag ($(docker image inspect -f '{{.Size}}' "$tag" | awk '{printf "%.0f MB", $1/1e6}'))"
