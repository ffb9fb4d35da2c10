#!/usr/bin/env bash
# Bakes one RK1 node from a 4 GiB sparse base and, in the same run, copies the
# same base with `cp --sparse=always` (what a user would do before editing an
# image by hand), plain and followed by an fsync as imgbuild does before its
# rename. Prints the median of each and the ratios.
#
#   benches/bake-vs-cp.sh [ROUNDS]     (default 5; needs the tools from .ci/run)
#   IMGBUILD_BENCH_BIN=path: bake with that binary (e.g. a build of an older commit)
#   BAKE_ARGS="--no-shrink": extra arguments for every bake
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
source benches/lib.sh
bench_bin
bench_setup
base=$work/rk1-base.img

# RK1 layout from shared/REFERENCE.md §1, 4 GiB, with 1 GiB of incompressible
# data in the root so the copy has real extents to move.
payload() { head -c 1G /dev/urandom > "$1/var/lib/payload"; }
make_rk1_base "$base" 4G "$work" payload
sync
# Warm the k3s asset cache so rounds time the bake, not the download.
"$bin" --profiles profiles --base "$base" "$work/out/node02.rk1.img" >/dev/null 2>&1
rm -rf "$work/out"

echo "base: $(du -h --apparent-size "$base" | cut -f1) apparent, $(du -h "$base" | cut -f1) allocated, on $(df -T "$work" | awk 'NR==2{print $2}')"
bake_t=(); cp_t=(); cps_t=(); r_t=()
for i in $(seq "$rounds"); do
  rm -f "$work/out/node02.rk1.img" "$work/copy.img"; mkdir -p "$work/out"; sync
  # shellcheck disable=SC2086
  bake_t+=("$(time_of "$bin" --profiles profiles --base "$base" ${BAKE_ARGS:-} "$work/out/node02.rk1.img")")
  sync
  cp_t+=("$(time_of cp --sparse=always "$base" "$work/copy.img")")
  sync; rm -f "$work/copy.img"; sync
  # imgbuild fsyncs the image before renaming it into place; so does this one.
  cps_t+=("$(time_of sh -c 'cp --sparse=always "$1" "$2" && sync "$2"' sh "$base" "$work/copy.img")")
  sync
  r_t+=("$(echo "scale=4; ${bake_t[-1]} / ${cps_t[-1]}" | bc)")
done
mb=$(median "${bake_t[@]}"); mc=$(median "${cp_t[@]}"); ms=$(median "${cps_t[@]}")
echo "imgbuild bake (copy + seed + root edits incl. 220 MB of k3s): median ${mb}s over $rounds rounds (${bake_t[*]})"
echo "cp --sparse=always (copy only):   median ${mc}s over $rounds rounds (${cp_t[*]})"
echo "cp --sparse=always + fsync:       median ${ms}s over $rounds rounds (${cps_t[*]})"
echo "ratio bake/cp: $(echo "scale=3; $mb / $mc" | bc)   ratio bake/(cp+fsync): $(echo "scale=3; $mb / $ms" | bc)"
echo "median of the pair ratios bake/(cp+fsync): $(median "${r_t[@]}") (${r_t[*]})"
