#!/usr/bin/env bash
# Makes a stand-in for a board's stock Ubuntu 24.04 image from the Debian root
# tarball that build-root.sh made: dresses the root as Ubuntu 24.04, adds the
# boot probe (tests/boot/guest/), and lays the image out like the stock one
# (shared/REFERENCE.md §1), with no mounts: sgdisk, mkfs.ext4 -d, mkfs.vfat.
#
#   tests/boot/make-base.sh nuc ROOT.tar OUT.img     (amd64 cloud image layout)
#   tests/boot/make-base.sh rk1 ROOT.tar OUT.img     (arm64 ubuntu-rockchip layout)
#
# Needs root (the tarball's owners and device nodes must survive extraction).
set -euo pipefail
board=${1:?usage: make-base.sh nuc|rk1 ROOT.tar OUT.img}
tar=${2:?}
out=${3:?}
here=$(cd "$(dirname "$0")" && pwd)
MIB=$((1024 * 1024))

work=$(mktemp -d "${TMPDIR:-/tmp}/imgbuild-boot-base.XXXXXX")
trap 'rm -rf "$work"' EXIT
tree=$work/root
mkdir -p "$tree"
tar -xpf "$tar" -C "$tree" --numeric-owner --xattrs --xattrs-include='*'

# --- Dress as Ubuntu 24.04 (what imgbuild checks: /etc/os-release, which is a
# symlink to ../usr/lib/os-release as on Ubuntu, and the ELF machine of
# /usr/bin/dash, which is the real Debian dash of the right architecture).
cat >"$tree/usr/lib/os-release" <<'OS'
PRETTY_NAME="Ubuntu 24.04.2 LTS"
NAME="Ubuntu"
VERSION_ID="24.04"
VERSION="24.04.2 LTS (Noble Numbat)"
VERSION_CODENAME=noble
ID=ubuntu
ID_LIKE=debian
HOME_URL="https://www.ubuntu.com/"
UBUNTU_CODENAME=noble
OS
[ -L "$tree/etc/os-release" ] || ln -sf ../usr/lib/os-release "$tree/etc/os-release"
cat >"$tree/etc/lsb-release" <<'LSB'
DISTRIB_ID=Ubuntu
DISTRIB_RELEASE=24.04
DISTRIB_CODENAME=noble
DISTRIB_DESCRIPTION="Ubuntu 24.04.2 LTS"
LSB
# The VM has no network: keep cloud-init from writing APT sources it cannot
# reach (the profiles' packages are preinstalled; `apt-get update` with no
# sources succeeds). This is the only cloud-init setting the test adds.
cat >"$tree/etc/cloud/cloud.cfg.d/05-boot-test-offline.cfg" <<'CFG'
# imgbuild boot test: the VM is offline; keep the (empty) APT sources.
apt:
  preserve_sources_list: true
CFG
# The probe unit and script.
cp -a "$here/guest/." "$tree/"
chown -R 0:0 "$tree/usr/local/sbin/boot-probe" "$tree/etc/systemd/system/boot-probe.service"

# ext4 with the host's mke2fs defaults (Debian 12 and Ubuntu 24.04 share e2fsprogs 1.47.0),
# written straight into the image at its partition's offset.
mkext4() { # image start-sector end-sector label tree
  local img=$1 start=$2 end=$3 label=$4 src=$5
  local bytes=$(((end - start + 1) * 512))
  mkfs.ext4 -q -F -L "$label" -E "offset=$((start * 512)),root_owner=0:0" -d "$src" "$img" "$((bytes / 1024))k"
  e2fsck -fn "$img?offset=$((start * 512))" >/dev/null
}

tmpimg="$out.tmp.$$"
rm -f "$tmpimg"
case "$board" in
nuc)
  # Ubuntu 24.04 server cloud image, converted to raw: GPT, p14 BIOS boot 4 MiB,
  # p15 ESP FAT32 "UEFI" 106 MiB, p16 ext4 "BOOT" 1 GiB at /boot, p1 ext4
  # "cloudimg-rootfs" the rest; 3.5 GiB in all. The kernel and initrd live in
  # BOOT (p16), as on the cloud image; the root's /boot is the empty mount point.
  size_mib=3584
  p14=2048 p15=10240 p16=227328 p1=2324480
  truncate -s "${size_mib}M" "$tmpimg"
  sgdisk -a 1 \
    -n 14:$p14:$((p15 - 1)) -t 14:EF02 \
    -n 15:$p15:$((p16 - 1)) -t 15:EF00 \
    -n 16:$p16:$((p1 - 1)) -t 16:BC13C2FF-59E6-4262-A352-B275FD6F7172 \
    -n 1:$p1:0 -t 1:8300 "$tmpimg" >/dev/null
  last=$(sgdisk -i 1 "$tmpimg" | awk '/^Last sector/ {print $3}')
  cat >"$tree/etc/fstab" <<'FSTAB'
LABEL=cloudimg-rootfs	/	 ext4	discard,commit=30,errors=remount-ro	0 1
LABEL=BOOT	/boot	ext4	defaults	0 2
LABEL=UEFI	/boot/efi	vfat	umask=0077	0 1
FSTAB
  mkdir -p "$work/boot"
  mv "$tree/boot/"* "$work/boot/"
  mkdir -p "$work/boot/efi"
  mkext4 "$tmpimg" $p16 $((p1 - 1)) BOOT "$work/boot"
  mkfs.vfat -F 32 -n UEFI --offset=$p15 "$tmpimg" $(((p16 - p15) * 512 / 1024)) >/dev/null
  mkext4 "$tmpimg" $p1 "$last" cloudimg-rootfs "$tree"
  ;;
rk1)
  # ubuntu-rockchip v2.4.0 server image: GPT (first 2 MiB zeroed), p1 16-20 MiB
  # FAT32 "CIDATA" (basic data) with the stock NoCloud seed, p2 ext4
  # "cloudimg-rootfs" (typed EFI System) from 20 MiB to the end; kernel and
  # initrd in the root's /boot.
  size_mib=3072
  truncate -s "${size_mib}M" "$tmpimg"
  sgdisk -a 1 -n 1:32768:40959 -t 1:EBD0A0A2-B9E5-4433-87C0-68B6B72699C7 \
    -n 2:40960:0 -t 2:C12A7328-F81F-11D2-BA4B-00A0C93EC93B "$tmpimg" >/dev/null
  last=$(sgdisk -i 2 "$tmpimg" | awk '/^Last sector/ {print $3}')
  cat >"$tree/etc/fstab" <<'FSTAB'
LABEL=cloudimg-rootfs	/	ext4	defaults	0 1
FSTAB
  # The stock seed, as shipped.
  mkdir -p "$work/seed"
  printf 'instance-id: cloud-image\ndsmode: local\n' >"$work/seed/meta-data"
  printf '#cloud-config\nchpasswd:\n  expire: true\n  users:\n    - name: ubuntu\n      password: ubuntu\n      type: text\nssh_pwauth: true\n' >"$work/seed/user-data"
  printf 'version: 2\nethernets:\n  zz-all-en:\n    match:\n      name: "en*"\n    dhcp4: true\n    optional: true\n  zz-all-eth:\n    match:\n      name: "eth*"\n    dhcp4: true\n    optional: true\n' >"$work/seed/network-config"
  # A 4 MiB FAT32 volume, as mkfs.vfat -F32 makes it (dosfstools warns: too few clusters).
  truncate -s 4M "$work/cidata.fat"
  mkfs.vfat -F 32 -n CIDATA "$work/cidata.fat" >/dev/null 2>&1
  # mtools refuses this volume ("Error reading FAT"); pyfatfs goes by the BPB.
  for f in meta-data user-data network-config; do
    "${IMGBUILD_TEST_PYTHON:-$here/../../target/test-venv/bin/python3}" "$here/../fixtures/fat.py" put "$work/cidata.fat" "/$f" "$work/seed/$f"
  done
  fsck.fat -a "$work/cidata.fat" >/dev/null 2>&1 || true
  dd if="$work/cidata.fat" of="$tmpimg" bs=1M seek=16 conv=notrunc,sparse status=none
  mkext4 "$tmpimg" 40960 "$last" cloudimg-rootfs "$tree"
  ;;
*)
  echo "make-base.sh: unknown board $board (nuc or rk1)" >&2
  exit 2
  ;;
esac
mv "$tmpimg" "$out"
