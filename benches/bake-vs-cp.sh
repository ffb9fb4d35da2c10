#!/usr/bin/env bash
# Bakes one RK1 node from a 4 GiB sparse base and, in the same run, copies the
# same base with `cp --sparse=always` (what a user would do before editing an
# image by hand), plain and followed by an fsync as imgbuild does before its
# rename. Prints the median of each and the ratios.
#
#   benches/bake-vs-cp.sh [ROUNDS]     (default 5; needs the tools from .ci/run)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
cargo build --release --quiet
bin=$PWD/target/release/imgbuild
work=$(mktemp -d "${TMPDIR:-/var/tmp}/imgbuild-bench.XXXXXX")
trap 'rm -rf "$work"' EXIT
base=$work/rk1-base.img

# RK1 layout from shared/REFERENCE.md §1, 4 GiB, with 1 GiB of incompressible
# data in the root so the copy has real extents to move.
truncate -s 4G "$base"
sgdisk -a 1 -n 1:32768:40959 -t 1:EBD0A0A2-B9E5-4433-87C0-68B6B72699C7 \
  -n 2:40960:0 -t 2:C12A7328-F81F-11D2-BA4B-00A0C93EC93B "$base" >/dev/null
truncate -s 4M "$work/cidata"; mkfs.vfat -F32 -n CIDATA "$work/cidata" >/dev/null 2>&1
mkdir -p "$work/tree/etc" "$work/tree/usr/bin" "$work/tree/var/lib"
printf 'NAME="Ubuntu"\nVERSION_ID="24.04"\nID=ubuntu\n' > "$work/tree/etc/os-release"
printf '\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\xb7\x00' > "$work/tree/usr/bin/dash"
head -c 1G /dev/urandom > "$work/tree/var/lib/payload"
root_bytes=$(( ($(stat -c %s "$base") - 34*512 - 20*1024*1024) / 4096 * 4096 ))
truncate -s "$root_bytes" "$work/root"
mkfs.ext4 -q -L cloudimg-rootfs -d "$work/tree" "$work/root"
rm -rf "$work/tree"
dd if="$work/cidata" of="$base" bs=1M seek=16 conv=notrunc,sparse status=none
dd if="$work/root" of="$base" bs=1M seek=20 conv=notrunc,sparse status=none
rm -f "$work/cidata" "$work/root"
sync

echo "base: $(du -h --apparent-size "$base" | cut -f1) apparent, $(du -h "$base" | cut -f1) allocated, on $(df -T "$work" | awk 'NR==2{print $2}')"
time_of() { local s e; s=$(date +%s.%N); "$@" >/dev/null 2>&1; e=$(date +%s.%N); echo "$e - $s" | bc; }
bake_t=(); cp_t=(); cps_t=()
for i in $(seq "$rounds"); do
  rm -f "$work/out/node02.rk1.img" "$work/copy.img"; mkdir -p "$work/out"; sync
  bake_t+=("$(time_of "$bin" --profiles profiles --base "$base" "$work/out/node02.rk1.img")")
  sync
  cp_t+=("$(time_of cp --sparse=always "$base" "$work/copy.img")")
  sync; rm -f "$work/copy.img"; sync
  # imgbuild fsyncs the image before renaming it into place; so does this one.
  cps_t+=("$(time_of sh -c 'cp --sparse=always "$1" "$2" && sync "$2"' sh "$base" "$work/copy.img")")
  sync
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END{print (NR%2)? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
mb=$(median "${bake_t[@]}"); mc=$(median "${cp_t[@]}"); ms=$(median "${cps_t[@]}")
echo "imgbuild bake (copy + seed edit): median ${mb}s over $rounds rounds (${bake_t[*]})"
echo "cp --sparse=always (copy only):   median ${mc}s over $rounds rounds (${cp_t[*]})"
echo "cp --sparse=always + fsync:       median ${ms}s over $rounds rounds (${cps_t[*]})"
echo "ratio bake/cp: $(echo "scale=3; $mb / $mc" | bc)   ratio bake/(cp+fsync): $(echo "scale=3; $mb / $ms" | bc)"
