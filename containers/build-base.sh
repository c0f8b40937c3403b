#!/bin/sh
# The offline base image: a Debian bookworm root filesystem with PostgreSQL 15 and Python 3,
# made from Debian's packages with debootstrap and imported into Docker. No registry needed.
#   containers/build-base.sh [TAG] [MIRROR]
set -eu
tag=${1:-bc-testbed/base:bookworm}
mirror=${2:-${TESTBED_DEBIAN_MIRROR:-http://deb.debian.org/debian}}
command -v debootstrap >/dev/null || { echo "error: debootstrap is not installed (apt-get install debootstrap)" >&2; exit 2; }
command -v docker >/dev/null || { echo "error: the docker client is not installed (apt-get install docker.io)" >&2; exit 2; }
root=$(mktemp -d /var/tmp/bc-testbed-rootfs.XXXXXX)
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase --include=postgresql-15,python3,util-linux \
    bookworm "$root" "$mirror" >"$root.log" 2>&1 || { tail -5 "$root.log" >&2; exit 1; }
rm -f "$root.log"
# Debian's package makes a cluster of its own in the chroot; our entrypoint makes its own.
rm -rf "$root/var/lib/postgresql/15/main" "$root/etc/postgresql/15/main"
rm -rf "$root/var/cache/apt/archives"/*.deb "$root/var/lib/apt/lists"/*
tar -C "$root" -c . | docker import - "$tag" >/dev/null
echo "$tag"
