#!/bin/sh
# .ci/install-qemu.sh — prepare a machine for the pydmabuf real-kernel tiers (pytest -m qemu).
#
# Idempotent: does nothing (no apt-get update) when everything is already there.
#   1. installs qemu-system-x86 (qemu-system-x86_64, TCG), kmod (depmod/modprobe, used on the
#      host to resolve guest module dependencies with `modprobe -d TREE --show-depends`), and
#      for the P2P oracle kit's initramfs cpio, gcc and a static glibc (p2p_pair.c);
#   2. downloads (never installs) Debian's 6.12 kernel image and busybox-static into the cache
#      directory that src/dmabuf/testing/qemu.py uses (default ~/.cache/pydmabuf/qemu, override
#      with PYDMABUF_QEMU_CACHE); the harness unpacks them and builds the initramfs on first use.
# The P2P oracle kernel is not downloaded: it is /work/shared/kernel/bzImage-6.12-p2pdma.
set -eu
CACHE=${PYDMABUF_QEMU_CACHE:-${HOME:-/root}/.cache/pydmabuf/qemu}
DEBS=$CACHE/debs
# The kernel verified in /work/shared/specs/machine-and-real-kernel.md §3; any other
# linux-image-6.12.*+deb12-amd64-unsigned works too (the newest one is taken if this one is gone).
PREFERRED_KERNEL=linux-image-6.12.107+deb12-amd64-unsigned
mkdir -p "$DEBS"

SUDO=""; SANDBOX=""
if [ "$(id -u)" = 0 ]; then SANDBOX="-o APT::Sandbox::User=root"; else SUDO=sudo; fi
updated=0
apt_update_once() { [ $updated = 1 ] || { $SUDO apt-get update -qq; updated=1; }; }

need=""
command -v qemu-system-x86_64 >/dev/null 2>&1 || need="$need qemu-system-x86"
PATH=$PATH:/usr/sbin:/sbin
{ command -v modprobe && command -v depmod; } >/dev/null 2>&1 || need="$need kmod"
command -v cpio >/dev/null 2>&1 || need="$need cpio"     # the P2P kit's make-initrd.sh
command -v gcc >/dev/null 2>&1 && [ -e /usr/lib/x86_64-linux-gnu/libc.a ] || need="$need gcc libc6-dev"
if [ -n "$need" ]; then
  echo "install-qemu: installing$need"
  apt_update_once
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $need
fi

have_kernel() { ls "$DEBS"/linux-image-6.12.*-amd64-unsigned_*.deb >/dev/null 2>&1; }
have_busybox() { ls "$DEBS"/busybox-static_*.deb >/dev/null 2>&1; }
if ! have_kernel || ! have_busybox; then
  apt_update_once
  cd "$DEBS"
  if ! have_kernel; then
    pkg=$PREFERRED_KERNEL
    if ! apt-cache show "$pkg" >/dev/null 2>&1; then
      pkg=$(apt-cache search --names-only '^linux-image-6\.12\.[0-9]+\+deb[0-9]+-amd64-unsigned$' \
            | cut -d' ' -f1 | sort -V | tail -1)
    fi
    [ -n "$pkg" ] || { echo "install-qemu: no linux-image-6.12.*-amd64-unsigned in apt" >&2; exit 1; }
    echo "install-qemu: downloading $pkg into $DEBS"
    apt-get download -qq $SANDBOX "$pkg"
  fi
  have_busybox || { echo "install-qemu: downloading busybox-static"; apt-get download -qq $SANDBOX busybox-static; }
fi
echo "install-qemu: ready: $(command -v qemu-system-x86_64), cache $CACHE:"
ls -1 "$DEBS"
