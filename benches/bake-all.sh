#!/usr/bin/env bash
# `imgbuild build --all` for the six example nodes of profiles/ (node01 CM4,
# node02-04 RK1, nuc2 and ws03 NUC) against one `cp --sparse=always` + sync of
# the RK1 base, interleaved, on the local file system (no reflinks expected).
# Each board gets a 4 GiB base holding 1 GiB of random data in its root
# (`--base BOARD=FILE` once per board), and every bake the default air-gap
# payload (70 MB k3s binary + 150 MB image tarball stand-ins). Prints the
# medians and the median of the pair ratios (the issue's target: <= 6.5x).
#
#   benches/bake-all.sh [ROUNDS]     (default 3; needs the tools from .ci/run)
#   IMGBUILD_BENCH_BIN=path: bake with that binary (no build)
#   BAKE_ARGS="--no-shrink": extra arguments for every --all
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
source benches/lib.sh
bench_bin
bench_setup

payload() { head -c 1G /dev/urandom > "$1/var/lib/payload"; }
make_rk1_base "$work/rk1.img" 4G "$work" payload
make_cm4_base "$work/cm4.img" 4096 "$work" payload
make_nuc_base "$work/nuc.img" 4096 "$work" payload
bases=(--base "rk1=$work/rk1.img" --base "cm4=$work/cm4.img" --base "nuc=$work/nuc.img")
nodes=$(find profiles/nodes -name '*.yaml' | wc -l)
sync
# Warm the k3s asset cache (both architectures) so rounds time the bakes.
"$bin" build --all --profiles profiles --out-dir "$work/out" "${bases[@]}" >/dev/null 2>&1 ||
  { "$bin" build --all --profiles profiles --out-dir "$work/out" "${bases[@]}"; exit 1; }
ls "$work/out"
rm -rf "$work/out"

echo "$nodes nodes; bases 4 GiB apparent, 1 GiB data each, on $(df -T "$work" | awk 'NR==2{print $2}'); 2 cores shared with other work"
echo "load average before the rounds: $(cut -d" " -f1-3 /proc/loadavg)"
all_t=(); cp_t=(); r_t=()
for i in $(seq "$rounds"); do
  rm -rf "$work/out" "$work/copy.img"; sync
  # shellcheck disable=SC2086
  all_t+=("$(time_of "$bin" build --all --profiles profiles --out-dir "$work/out" "${bases[@]}" ${BAKE_ARGS:-})")
  sync
  # shellcheck disable=SC2016
  cp_t+=("$(time_of sh -c 'cp --sparse=always "$1" "$2" && sync "$2"' sh "$work/rk1.img" "$work/copy.img")")
  sync
  r_t+=("$(echo "scale=4; ${all_t[-1]} / ${cp_t[-1]}" | bc)")
  echo "round $i: --all ${all_t[-1]}s, cp+sync ${cp_t[-1]}s, ratio ${r_t[-1]}"
done
ma=$(median "${all_t[@]}"); mc=$(median "${cp_t[@]}")
echo "imgbuild build --all ($nodes nodes): median ${ma}s over $rounds rounds (${all_t[*]})"
echo "cp --sparse=always + sync (RK1 base): median ${mc}s over $rounds rounds (${cp_t[*]})"
echo "median of the pair ratios --all/(cp+sync): $(median "${r_t[@]}") (${r_t[*]}); target <= 6.5"
