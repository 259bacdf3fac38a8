#!/bin/sh
# Install the Debian packages sbx needs to build, test and boot guests.
# Idempotent: only missing packages are installed. Needs root (or sudo).
set -eu

PKGS="build-essential cmake pkg-config clang clang-format libclang-rt-14-dev
      libuv1-dev libmsgpack-dev libseccomp-dev libcmocka-dev libarchive-dev
      zlib1g-dev liblzma-dev libzstd-dev libbz2-dev libacl1-dev libxml2-dev liblz4-dev libssl-dev libb2-dev nettle-dev libjansson-dev
      libwslay-dev libhttp-parser-dev libpcre2-dev libssh-dev libgnutls28-dev openssh-client openssl
      socat bc tmux python3 nodejs util-linux procps iproute2
      qemu-system-x86 busybox-static cpio kmod e2fsprogs squashfs-tools debootstrap"
[ $# -gt 0 ] && PKGS="$*"

missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
        missing="$missing $p"
done
[ -z "$missing" ] && exit 0

SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
echo "sbx: installing:$missing" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# shellcheck disable=SC2086
$SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
