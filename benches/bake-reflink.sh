#!/usr/bin/env bash
# On file systems with reflinks (XFS, btrfs) a bake should copy no data: the
# output's extents outside what the bake edits (payload, seed, metadata) stay
# shared with the base. For each file system this makes one in a sparse file
# under target/, mounts it on a loop device (the benchmark does; imgbuild never
# does), puts the 4 GiB RK1 base with 1 GiB of random data and the asset cache
# there, and bakes node02 into it, shrunk and --no-shrink, interleaved with
# `cp --reflink=always` of the base + sync. Prints, per bake: its time against
# the reflink copy's, the file system's used bytes before/after (df, after
# sync), the output's shared and exclusive bytes (filefrag -v; on btrfs also
# `btrfs filesystem du`), the base copy's and the shrink's method (--json).
#
#   sudo benches/bake-reflink.sh [ROUNDS] [FS...]   (default 3 rounds, xfs btrfs;
#                                                    needs root, xfsprogs, btrfs-progs)
#   IMGBUILD_BENCH_BIN=path: bake with that binary (no build)
#   KEEP_CACHE_OFF_FS=1: keep the asset cache off the reflink file system
#                        (the payload is then copied, not shared)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
shift || true
filesystems=("$@")
[ ${#filesystems[@]} -gt 0 ] || filesystems=(xfs btrfs)
[ "$(id -u)" = 0 ] || { echo "needs root (mkfs, losetup, mount)" >&2; exit 1; }
source benches/lib.sh
bench_bin

scratch=$PWD/target/bench-reflink.$$
mnt=$scratch/mnt
loopdev=""
bench_setup
# Replaces bench_setup's trap: also unmounts, detaches and removes the backing file.
cleanup() {
  if mountpoint -q "$mnt" 2>/dev/null; then umount "$mnt" || umount -l "$mnt"; fi
  [ -z "$loopdev" ] || losetup -d "$loopdev" 2>/dev/null || true
  [ -z "$MIRROR_PID" ] || kill "$MIRROR_PID" 2>/dev/null || true
  rm -rf "$scratch" "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
mkdir -p "$mnt"

used() {
  sync
  # btrfs frees and accounts extents at its transaction commit.
  [ "$fs" != btrfs ] || btrfs filesystem sync "$mnt" >/dev/null
  df -B1 --output=used "$mnt" | tail -1 | tr -d ' '; }
# "shared exclusive" bytes of a file's data extents, by filefrag's flags.
extents() {
  filefrag -v "$1" | awk -F: '
    /blocks of/ { n = split($0, w, " "); for (i = 1; i < n; i++) if (w[i] == "blocks") bs = w[i + 2] }
    /^ *[0-9]+:/ { if ($NF ~ /shared/) s += $4 * bs; else x += $4 * bs }
    END { printf "%d %d\n", s, x }'
}
mib() { echo "scale=1; $1 / 1048576" | bc; }

payload() { head -c 1G /dev/urandom > "$1/var/lib/payload"; }

for fs in "${filesystems[@]}"; do
  case $fs in
    xfs) command -v mkfs.xfs >/dev/null || { echo "mkfs.xfs missing (apt-get install xfsprogs)" >&2; continue; } ;;
    btrfs) command -v mkfs.btrfs >/dev/null || { echo "mkfs.btrfs missing (apt-get install btrfs-progs)" >&2; continue; } ;;
    *) echo "unknown file system $fs" >&2; exit 2 ;;
  esac
  truncate -s 16G "$scratch/$fs.img"
  case $fs in
    xfs) mkfs.xfs -q -m reflink=1 "$scratch/$fs.img" ;;
    btrfs) mkfs.btrfs -q "$scratch/$fs.img" ;;
  esac
  loopdev=$(losetup -f --show "$scratch/$fs.img")
  mount "$loopdev" "$mnt"
  [ -n "${KEEP_CACHE_OFF_FS:-}" ] || export IMGBUILD_CACHE_DIR=$mnt/cache
  mkdir -p "$mnt/out"
  # Scratch files off the mount: btrfs accounts a large delete late, which would
  # show in the first round's df figure.
  make_rk1_base "$mnt/base.img" 4G "$work" payload
  base=$mnt/base.img
  # Warm the asset cache (on $mnt unless KEEP_CACHE_OFF_FS) so rounds time the bake.
  "$bin" --profiles profiles --base "$base" "$mnt/out/node02.rk1.img" >/dev/null 2>&1
  rm -f "$mnt/out/node02.rk1.img"
  read -r _ bx < <(extents "$base")
  echo "== $fs: base $(mib "$(stat -c %s "$base")") MiB apparent, $(mib "$bx") MiB data; 2 shared cores, rounds interleaved"
  echo "load average before the rounds: $(cut -d" " -f1-3 /proc/loadavg)"
  printf '%-10s %5s %8s %8s %8s %10s %10s %10s %8s %8s\n' \
    mode round bake_s cp_s ratio df_MiB shared_MiB excl_MiB copy shrink
  for i in $(seq "$rounds"); do
    for mode in shrink no-shrink; do
      out=$mnt/out/node02.rk1.img
      rm -f "$out" "$mnt/copy.img"
      args=(--json); [ "$mode" = shrink ] || args+=(--no-shrink)
      u0=$(used)
      s=$(date +%s.%N)
      "$bin" --profiles profiles --base "$base" "${args[@]}" "$out" > "$scratch/report.json" 2> "$scratch/err" ||
        { cat "$scratch/err" >&2; exit 1; }
      sync
      e=$(date +%s.%N)
      u1=$(used)
      bt=$(echo "$e - $s" | bc)
      # shellcheck disable=SC2016
      ct=$(time_of sh -c 'cp --reflink=always "$1" "$2" && sync "$2"' sh "$base" "$mnt/copy.img")
      read -r os ox < <(extents "$out")
      read -r copy shrink < <(python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))[0]
sh = r.get("shrink") or {}
print(r.get("copy", "?"), sh.get("method") or ("no" if not sh.get("shrunk") else "?"))' "$scratch/report.json")
      printf '%-10s %5s %8.2f %8.3f %8.1f %10s %10s %10s %8s %8s\n' "$mode" "$i" "$bt" "$ct" \
        "$(echo "scale=1; $bt / $ct" | bc)" "$(mib $((u1 - u0)))" "$(mib "$os")" "$(mib "$ox")" "$copy" "$shrink"
      echo "$bt" >> "$scratch/$fs.$mode.bake"; echo "$ct" >> "$scratch/$fs.$mode.cp"
      if [ "$fs" = btrfs ] && [ "$i" = 1 ]; then
        btrfs filesystem du --raw "$out" | tail -1 | awk '{printf "           btrfs fi du: total %.1f MiB, exclusive %.1f MiB, set shared %.1f MiB\n", $1/1048576, $2/1048576, $3/1048576}'
      fi
    done
  done
  for mode in shrink no-shrink; do
    mapfile -t b < "$scratch/$fs.$mode.bake"; mapfile -t c < "$scratch/$fs.$mode.cp"
    mb=$(median "${b[@]}"); mc=$(median "${c[@]}")
    echo "$fs $mode: median bake ${mb}s, median cp --reflink=always + sync ${mc}s"
  done
  rm -f "$scratch"/*.bake "$scratch"/*.cp
  umount "$mnt"; losetup -d "$loopdev"; loopdev=""
  rm -f "$scratch/$fs.img"
done
echo "df_MiB: used bytes of the file system after the bake minus before (sync'd); shared/excl: the output's data extents by filefrag's shared flag"
