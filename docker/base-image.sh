#!/bin/sh
# Makes the local base image qwen3-vl-platform/base:bookworm from Debian's mirror, for
# machines that cannot pull from a registry. Python 3.11 is bookworm's python3, the same
# minor version as the Triton backend stub the images use. Skips when the image exists.
# Needs root (debootstrap) and a running Docker engine.
set -eu

image=${BASE_IMAGE_TAG:-qwen3-vl-platform/base:bookworm}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
root=$(cd "$(dirname "$0")/.." && pwd)
rootfs=${BASE_ROOTFS:-$root/var/docker/rootfs-bookworm}

if docker image inspect "$image" >/dev/null 2>&1; then
    echo "base image $image exists"
    exit 0
fi

# sh, flock (util-linux), stat (coreutils) come with minbase; libpython3.11 is the shared
# library the Triton Python backend stub links against.
packages=python3,python3-venv,libpython3.11,ca-certificates

rm -rf "$rootfs"
mkdir -p "$rootfs"
started=$(date +%s)
debootstrap --variant=minbase --include="$packages" bookworm "$rootfs" "$mirror"
chroot "$rootfs" apt-get clean
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/log/*.log
tar -C "$rootfs" -c . | docker import \
    -c 'ENV LANG=C.UTF-8' \
    -c 'CMD ["/bin/sh"]' \
    -m "debootstrap --variant=minbase bookworm + $packages" - "$image"
rm -rf "$rootfs"
echo "base image $image built in $(( $(date +%s) - started ))s"
