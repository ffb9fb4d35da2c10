#!/usr/bin/env bash
# Builds the plain Debian 12 (bookworm) root file system that the boot test dresses
# as Ubuntu 24.04 and lays out like a stock image. Output: a tarball.
#
#   tests/boot/build-root.sh ARCH OUT.tar
#
# ARCH is amd64 or arm64 (arm64 on an amd64 host runs the package scripts under
# qemu-user-static through binfmt_misc). Everything that decides the result is in
# this file and in packages-ARCH.txt beside it: run.sh keys its cache on both, so
# editing either rebuilds the root once per machine.
set -euo pipefail
arch=${1:?usage: build-root.sh ARCH OUT.tar}
out=${2:?usage: build-root.sh ARCH OUT.tar}
here=$(cd "$(dirname "$0")" && pwd)
mirror=${BOOT_TEST_DEBIAN_MIRROR:-http://deb.debian.org/debian}

# One package a line, '#' comments allowed.
pkgs=$(sed -e 's/#.*//' "$here/packages-$arch.txt" | tr -s ' \n' ',' | sed -e 's/^,//' -e 's/,$//')

# A foreign architecture's maintainer scripts run under qemu-user-static, found
# through binfmt_misc: make sure it is mounted and the interpreter registered.
host=$(dpkg --print-architecture)
if [ "$arch" != "$host" ]; then
  qarch=$arch
  [ "$arch" = arm64 ] && qarch=aarch64
  if [ ! -e /proc/sys/fs/binfmt_misc/register ]; then
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
  fi
  if [ ! -e "/proc/sys/fs/binfmt_misc/qemu-$qarch" ]; then
    update-binfmts --enable "qemu-$qarch"
  fi
fi

tmp="$out.tmp.$$.tar"
trap 'rm -f "$tmp"' EXIT
# --variant=apt: only what --include names (and its dependencies), no Recommends,
# so the package list is the whole recipe.
# The customize hooks make the system look like an Ubuntu cloud image where
# that matters to first boot: networkd on (Ubuntu renders netplan to networkd),
# hostname "ubuntu", en_US.UTF-8 generated (Ubuntu's locale-gen takes the locale
# cloud-init names as an argument; Debian's reads only /etc/locale.gen), no APT sources (the VM has no network; the packages the
# profiles install at first boot are preinstalled from packages-ARCH.txt).
# The setup hook runs before any package is installed: the initramfs gets only the
# modules a QEMU virt/q35 guest needs to find its root (MODULES=list), not
# Debian's default `most`, whose thousands of module copies take minutes when
# arm64's mkinitramfs runs under emulation.
initramfs_hook='mkdir -p "$1/etc/initramfs-tools/conf.d" "$1/usr/share/initramfs-tools/modules.d"
echo MODULES=list > "$1/etc/initramfs-tools/conf.d/boot-test.conf"
printf "%s\n" virtio_pci virtio_mmio virtio_blk ext4 > "$1/usr/share/initramfs-tools/modules.d/boot-test"'
mmdebstrap --mode=root --format=tar --variant=apt --arch="$arch" \
  --aptopt='APT::Install-Recommends "false"' \
  --include="$pkgs" \
  --setup-hook="$initramfs_hook" \
  --customize-hook='echo ubuntu > "$1/etc/hostname"' \
  --customize-hook='chroot "$1" systemctl enable systemd-networkd.service' \
  --customize-hook='sed -i "s/^# *en_US.UTF-8 UTF-8/en_US.UTF-8 UTF-8/" "$1/etc/locale.gen"; chroot "$1" locale-gen' \
  --customize-hook='rm -f "$1/etc/apt/sources.list"; rm -rf "$1"/var/lib/apt/lists/*' \
  bookworm "$tmp" "$mirror"
mv "$tmp" "$out"
trap - EXIT
