#!/usr/bin/env bash
# Sealing a CI artifact vs building the sealed image directly, same run:
# alternates `imgbuild seal` of an unsealed RK1 image (raw, then .img.zst) with a
# direct sealed build of the same node from the same 4 GiB base (1 GiB of data,
# the default 220 MB air-gap payload). Prints the medians and the median of the
# per-pair ratios.
#
#   benches/seal-vs-build.sh [ROUNDS]     (default 5; needs the tools from .ci/run)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-5}
source benches/lib.sh
cargo build --release --quiet
bin=$PWD/target/release/imgbuild
bench_setup
base=$work/rk1-base.img
payload() { head -c 1G /dev/urandom > "$1/var/lib/payload"; }
make_rk1_base "$base" 4G "$work" payload
"$bin" --profiles profiles secrets --generate >/dev/null 2>&1
"$bin" --profiles profiles --base "$base" --unsealed "$work/ci/node02.rk1.img" >/dev/null 2>&1
"$bin" --profiles profiles --base "$base" --unsealed "$work/ci/node02.rk1.img.zst" >/dev/null 2>&1
sync
seal_t=(); zst_t=(); build_t=(); r1=(); r2=()
for i in $(seq "$rounds"); do
  rm -rf "$work/out"; mkdir -p "$work/out"; sync
  b=$(time_of "$bin" --profiles profiles --base "$base" "$work/out/node02.rk1.img"); sync
  s=$(time_of "$bin" --profiles profiles seal "$work/ci/node02.rk1.img" -o "$work/out/sealed.img"); sync
  z=$(time_of "$bin" --profiles profiles seal "$work/ci/node02.rk1.img.zst" -o "$work/out/sealed-zst.img"); sync
  build_t+=("$b"); seal_t+=("$s"); zst_t+=("$z")
  r1+=("$(echo "scale=4; $s / $b" | bc)"); r2+=("$(echo "scale=4; $z / $b" | bc)")
done
echo "direct sealed build: median $(median "${build_t[@]}")s (${build_t[*]})"
echo "seal of raw artifact: median $(median "${seal_t[@]}")s (${seal_t[*]}); median pair ratio seal/build $(median "${r1[@]}")"
echo "seal of .img.zst artifact: median $(median "${zst_t[@]}")s (${zst_t[*]}); median pair ratio $(median "${r2[@]}")"
