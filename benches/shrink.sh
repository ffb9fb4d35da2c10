#!/usr/bin/env bash
# Bytes a flash sends for RK1, CM4 and NUC layouts (shared/REFERENCE.md §1),
# stock size (--no-shrink) against shrunk, each baked with realistic k3s
# stand-ins (70 MB binary, 150 MB image tarball) into a root that holds
# PAYLOAD of incompressible data and 2 GiB free, as the RK1 stock image does.
# Also prints the shrunk size as a share of what the issue targets: the
# root's used blocks + headroom + the partitions before the root.
#
#   benches/shrink.sh [PAYLOAD_MIB]     (default 1024; needs the tools from .ci/run)
#   FLASH=RATE benches/shrink.sh        also flashes the RK1 stock-size and shrunk
#                                       images to the fake BMC throttled to RATE
#                                       bytes/s (5000000 is the real eMMC rate)
#   IMGBUILD_BIN=target/debug/imgbuild benches/shrink.sh   (skip the release build;
#   the byte counts do not depend on it, only bake_s does)
set -euo pipefail
cd "$(dirname "$0")/.."
payload_mib=${1:-1024}
source benches/lib.sh
if [ -n "${IMGBUILD_BIN:-}" ]; then
  bin=$(realpath "$IMGBUILD_BIN")
else
  cargo build --release --quiet
  bin=$PWD/target/release/imgbuild
fi
bench_setup
size_mib=$((payload_mib + 2048 + 256))

payload() { head -c "${payload_mib}M" /dev/urandom > "$1/var/lib/payload"; }

# CM4: MBR, 512 MiB FAT32 system-boot at sector 2048 with the stock seed, ext4 writable.
make_cm4_base() {
  local base=$1 w=$work/cm4w
  mkdir -p "$w/tree/etc" "$w/tree/usr/bin" "$w/tree/var/lib"
  truncate -s "${size_mib}M" "$base"
  printf 'label: dos\nstart=2048, size=%d, type=c, bootable\nstart=%d, type=83\n' $((512*2048)) $((513*2048)) | sfdisk -q "$base"
  truncate -s 512M "$w/boot"; mkfs.vfat -S 512 -s 1 -F 32 -n system-boot "$w/boot" >/dev/null
  printf 'console=serial0,115200 console=tty1 root=LABEL=writable rootfstype=ext4 rootwait fixrtc\n' > "$w/cmdline.txt"
  printf 'instance_id: cloud-image\n' > "$w/meta-data"; printf '#cloud-config\n' > "$w/user-data"
  printf 'network:\n  version: 2\n' > "$w/network-config"
  for f in cmdline.txt meta-data user-data network-config; do mcopy -i "$w/boot" "$w/$f" ::$f; done
  printf 'NAME="Ubuntu"\nVERSION_ID="24.04"\nID=ubuntu\n' > "$w/tree/etc/os-release"
  printf '\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\xb7\x00' > "$w/tree/usr/bin/dash"
  payload "$w/tree"
  truncate -s $(( (size_mib - 513) * 1024 * 1024 )) "$w/root"
  mkfs.ext4 -q -L writable -d "$w/tree" "$w/root"
  dd if="$w/boot" of="$base" bs=1M seek=1 conv=notrunc,sparse status=none
  dd if="$w/root" of="$base" bs=1M seek=513 conv=notrunc,sparse status=none
  rm -rf "$w"
}

# NUC: GPT, p14 BIOS boot 4 MiB, p15 ESP 106 MiB, p16 ext4 BOOT 1 GiB, p1 ext4 root last.
make_nuc_base() {
  local base=$1 w=$work/nucw p1=$(( (1 + 4 + 106 + 1024) * 2048 ))
  mkdir -p "$w/tree/etc" "$w/tree/usr/bin" "$w/tree/var/lib" "$w/boot/grub"
  truncate -s "$((size_mib + 1135))M" "$base"
  sgdisk -a 1 -n 14:2048:10239 -t 14:EF02 -n 15:10240:227327 -t 15:EF00 \
    -n 16:227328:$((p1 - 1)) -t 16:BC13C2FF-59E6-4262-A352-B275FD6F7172 -n 1:$p1:0 -t 1:8300 "$base" >/dev/null
  truncate -s 106M "$w/esp"; mkfs.vfat -F 32 -n UEFI "$w/esp" >/dev/null 2>&1
  echo '# grub' > "$w/boot/grub/grub.cfg"
  truncate -s 1G "$w/bootfs"; mkfs.ext4 -q -L BOOT -d "$w/boot" "$w/bootfs"
  printf 'NAME="Ubuntu"\nVERSION_ID="24.04"\nID=ubuntu\n' > "$w/tree/etc/os-release"
  printf '\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x3e\x00' > "$w/tree/usr/bin/dash"
  payload "$w/tree"
  truncate -s $(( ($(stat -c %s "$base") - 34*512 - p1*512) / 4096 * 4096 )) "$w/root"
  mkfs.ext4 -q -L cloudimg-rootfs -d "$w/tree" "$w/root"
  dd if="$w/esp" of="$base" bs=512 seek=10240 conv=notrunc,sparse status=none
  dd if="$w/bootfs" of="$base" bs=512 seek=227328 conv=notrunc,sparse status=none
  dd if="$w/root" of="$base" bs=512 seek=$p1 conv=notrunc,sparse status=none
  rm -rf "$w"
}

make_rk1_base "$work/rk1.img" "$((size_mib + 20))M" "$work" payload
make_cm4_base "$work/cm4.img"
make_nuc_base "$work/nuc.img"

mib() { echo $(( ($1 + 1048575) / 1048576 )); }
printf '%-5s %12s %12s %8s %12s %12s %14s %7s %9s\n' board stock_MiB shrunk_MiB ratio used_MiB headroom_MiB before_root_MiB share bake_s
for b in rk1:node02 cm4:node01 nuc:nuc2; do
  board=${b%%:*} node=${b##*:}
  rm -rf "$work/out"; mkdir -p "$work/out/stock"
  "$bin" --profiles profiles --base "$work/$board.img" --json --no-shrink "$work/out/stock/$node.$board.img" > "$work/stock.json" 2>"$work/stock.err" || { cat "$work/stock.err"; exit 1; }
  s=$(date +%s.%N)
  "$bin" --profiles profiles --base "$work/$board.img" --json "$work/out/$node.$board.img" > "$work/small.json" 2>"$work/small.err" || { cat "$work/small.err"; exit 1; }
  e=$(date +%s.%N)
  if [ "$board" = rk1 ]; then
    mv "$work/out/stock/$node.$board.img" "$work/rk1-stock-out.img"
    mv "$work/out/$node.$board.img" "$work/rk1-small-out.img"
  fi
  python3 - "$work/stock.json" "$work/small.json" "$board" "$(echo "$e - $s" | bc)" <<'EOF'
import json, sys
stock = json.load(open(sys.argv[1]))[0]
small = json.load(open(sys.argv[2]))[0]
sh = small["shrink"]
before = sh["stock_bytes"] - sh["root_stock_bytes"] - (33 * 512 if sys.argv[3] != "cm4" else 0)
target = sh["root_used_bytes"] + sh["headroom_bytes"] + before
M = 1 << 20
print(f'{sys.argv[3]:<5} {stock["flash_bytes"]/M:12.0f} {small["flash_bytes"]/M:12.0f} {small["flash_bytes"]/stock["flash_bytes"]:8.2f} '
      f'{sh["root_used_bytes"]/M:12.0f} {sh["headroom_bytes"]/M:12.0f} {before/M:14.0f} {small["flash_bytes"]/target:7.3f} {float(sys.argv[4]):9.1f}')
EOF
done
if [ -n "${FLASH:-}" ]; then
  # The debug profile: the flash time is the throttled upload, not our code.
  cargo test --quiet --bench shrink_flash -- "$work/rk1-stock-out.img" "$work/rk1-small-out.img" "$FLASH"
fi
echo "share = shrunk image / (root used + headroom + partitions before the root); at the BMC's 5 MB/s each 100 MiB is ~21 s of writing and ~21 s of CRC read-back"
