#!/usr/bin/env bash
# A base image for ../Dockerfile made from Debian packages alone, for a site that cannot pull
# from a container registry: debootstrap a minimal Debian with python3 and python3-venv, then
# `podman import` it. Needs root, debootstrap and podman (Debian packages).
#
#   scripts/debian-base-image.sh [TAG] [SUITE] [MIRROR]
#   podman build --build-arg BASE_IMAGE=localhost/kd-debian-base:bookworm -t kd-pipeline .
set -euo pipefail
tag=${1:-localhost/kd-debian-base:bookworm}
suite=${2:-bookworm}
mirror=${3:-http://deb.debian.org/debian}
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
  "$suite" "$root" "$mirror" >"$root.log" 2>&1 || { tail -20 "$root.log" >&2; exit 1; }
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root.log"
tar -C "$root" -c . | podman import --change 'CMD ["/bin/bash"]' - "$tag" >/dev/null
echo "$tag"
