#!/usr/bin/env bash
# Bare-metal installer figures: the time to build <node>.nuc.iso from a
# live-server-layout stock ISO of realistic size (POOL_MIB of package data,
# default 1024; the real 24.04.3 ISO is 3.1 GB), and the USB stick writer
# (`imgbuild usb`: write, fsync, read back and compare sha256) against
# `dd bs=4M oflag=direct` of the same ISO to the same target (a file on this
# disk, with a fake sysfs tree saying it is a USB stick), also with a direct
# read-back through sha256sum for a like-for-like verify. Medians of RUNS (default 3).
#   benches/iso-usb.sh        (run from the repository; needs cargo build --release first)
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/lib.sh
bin=${IMGBUILD:-target/release/imgbuild}
runs=${RUNS:-3}
bench_setup
node=ws03

POOL_MIB=${POOL_MIB:-1024} bash tests/fixtures/live-iso.sh "$work/stock.iso" "$work/live" >/dev/null
rm -rf "$work/live"
sha=$(sha256sum "$work/stock.iso" | cut -d' ' -f1)
mkdir -p "$IMGBUILD_CACHE_DIR/assets" "$work/manifests"
mv "$work/stock.iso" "$IMGBUILD_CACHE_DIR/assets/$sha"
sed "s#c3514bf0056180d09376462a7a1b4f213c1d6e8ea67fae5c25099c6fd3d8274b#$sha#" \
  firmware-manifests/nuc.yaml > "$work/manifests/nuc.yaml"
ib() { "$bin" --profiles profiles --manifests "$work/manifests" "$@"; }
ib "$work/dist/$node.nuc.iso" >/dev/null 2>&1   # fetches k3s assets, makes secrets, warms the page cache
iso=$work/dist/$node.nuc.iso
size=$(stat -c %s "$iso")

build=()
for _ in $(seq "$runs"); do
  rm -f "$iso"
  build+=("$(time_of ib "$iso")")
done

# A fake sysfs: a USB-attached removable disk `sdx` of 64 GiB, root elsewhere.
host=$work/sys/devices/pci0000:00/0000:00:14.0/usb2/2-1/2-1:1.0/host6/target6:0:0/6:0:0:0
mkdir -p "$host/block/sdx/holders" "$work/sys/block" "$work/sys/class/block" "$work/dev"
echo 8:16 > "$host/block/sdx/dev"; echo 1 > "$host/block/sdx/removable"
echo $((64 * 2 * 1024 * 1024)) > "$host/block/sdx/size"; echo "Bench stick" > "$host/model"
ln -s "../devices/pci0000:00/0000:00:14.0/usb2/2-1/2-1:1.0/host6/target6:0:0/6:0:0:0/block/sdx" "$work/sys/block/sdx"
ln -s "../../devices/pci0000:00/0000:00:14.0/usb2/2-1/2-1:1.0/host6/target6:0:0/6:0:0:0/block/sdx" "$work/sys/class/block/sdx"
echo "22 1 259:2 / / rw - ext4 /dev/nvme0n1p2 rw" > "$work/mountinfo"
dev=$work/dev/sdx
usb() { IMGBUILD_SYSFS_ROOT=$work/sys IMGBUILD_MOUNTINFO=$work/mountinfo ib usb "$node" --device "$dev" --iso "$iso" --yes; }
dd_write() { dd if="$iso" of="$dev" bs=4M oflag=direct status=none; }
dd_verify() { dd_write && dd if="$dev" bs=4M iflag=direct status=none | head -c "$size" | sha256sum >/dev/null; }

ours=() dd1=() dd2=()
for _ in $(seq "$runs"); do
  rm -f "$dev"; touch "$dev"; ours+=("$(time_of usb)")
  cmp -n "$size" "$iso" "$dev"
  rm -f "$dev"; dd1+=("$(time_of dd_write)")
  rm -f "$dev"; dd2+=("$(time_of dd_verify)")
done
rm -f "$dev"
mb() { echo "scale=1; $size / 1000000 / $1" | bc; }
b=$(median "${build[@]}") o=$(median "${ours[@]}") d1=$(median "${dd1[@]}") d2=$(median "${dd2[@]}")
echo "ISO: $((size / 1000000)) MB (stock pool ${POOL_MIB:-1024} MiB + k3s stand-ins 220 MB), $runs runs, medians"
echo "build $node.nuc.iso:                   ${b}s ($(mb "$b") MB/s of output)"
echo "imgbuild usb (write+fsync+read-back):  ${o}s ($(mb "$o") MB/s)"
echo "dd bs=4M oflag=direct:                 ${d1}s ($(mb "$d1") MB/s)   imgbuild usb / dd = $(echo "scale=2; $o / $d1" | bc)"
echo "dd oflag=direct + dd iflag=direct|sha256sum: ${d2}s ($(mb "$d2") MB/s)   imgbuild usb / that = $(echo "scale=2; $o / $d2" | bc)"
