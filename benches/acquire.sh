#!/usr/bin/env bash
# Image acquisition figures, each against the obvious alternative in the same run:
#   1. unpack of a multi-block .img.xz: imgbuild unpack vs xz -dc and xz -T0 -dc
#   2. .img.xz output of a bake vs xz -T0 of the same raw image
#   3. first use from a loopback HTTP server (unlimited and at 50 MB/s):
#      imgbuild fetch of the .img.xz (download, sha256 and unpack in one pass)
#      vs curl -o of the same file (the download alone)
#   4. peak RSS of imgbuild unpack at two image sizes (must stay flat)
#
#   benches/acquire.sh [SIZE_MIB] [ROUNDS]     (defaults 1024 and 3)
#   IMGBUILD_BENCH_BIN=path: run that binary (no build)
set -euo pipefail
cd "$(dirname "$0")/.."
mib=${1:-1024}; rounds=${2:-3}
source benches/lib.sh
bench_bin
m=benches/measure.py
work=$(mktemp -d "${TMPDIR:-/var/tmp}/imgbuild-acq.XXXXXX")
server=""
MIRROR_PID=""
trap '[ -n "$server" ] && kill $server 2>/dev/null; [ -n "$MIRROR_PID" ] && kill $MIRROR_PID 2>/dev/null; rm -rf "$work"' EXIT
bench_env "$work"

# An RK1-layout image of $mib MiB whose root holds compressible text (like
# an OS image) and incompressible data, with free space left as holes.
base=$work/rk1.img
payload() {
  (base64 -w 100 /dev/urandom || true) | head -c $((mib * 1024 * 1024 * 4 / 10)) > "$1/var/lib/text"
  head -c $((mib * 1024 * 1024 / 10)) /dev/urandom > "$1/var/lib/random"
}
make_rk1_base "$base" "${mib}M" "$work" payload
xz -T0 -k -c "$base" > "$work/rk1.img.xz"
echo "image: ${mib} MiB raw ($(du -m "$base" | cut -f1) MiB allocated), $(du -m "$work/rk1.img.xz" | cut -f1) MiB as multi-block xz ($(xz -l "$work/rk1.img.xz" | awk 'NR==2{print $2}') blocks), $(nproc) cores"
ratio() { python3 -c "print(f'{$1/$2:.2f}')"; }
report() { printf '  %-34s median %7.3f s  peak RSS %6s MiB  (%s)\n' "$1" "$2" "$3" "$4"; }
run() { python3 $m "$rounds" "$1" "$2"; }

echo "1. unpack .img.xz to raw"
read -r t_ours r_ours rest < <(run "rm -f $work/u.img; sync" "$bin unpack $work/rk1.img.xz $work/u.img >/dev/null")
report "imgbuild unpack (sparse output)" "$t_ours" "$r_ours" "$rest"
read -r t_xz1 r_xz1 rest < <(run "rm -f $work/u.img; sync" "xz -dc $work/rk1.img.xz > $work/u.img")
report "xz -dc" "$t_xz1" "$r_xz1" "$rest"
read -r t_xz0 r_xz0 rest < <(run "rm -f $work/u.img; sync" "xz -T0 -dc $work/rk1.img.xz > $work/u.img")
report "xz -T0 -dc" "$t_xz0" "$r_xz0" "$rest"
echo "  speed vs xz -dc: $(ratio "$t_xz1" "$t_ours")x   vs xz -T0 -dc: $(ratio "$t_xz0" "$t_ours")x"

echo "2. .img.xz output"
read -r t_bake r_bake rest < <(run "rm -rf $work/out; sync" "$bin --profiles profiles --base $base $work/out/node02.rk1.img.xz >/dev/null 2>&1")
report "imgbuild bake to .img.xz" "$t_bake" "$r_bake" "$rest"
# The preset of .img.xz outputs (src/artifact/pending.rs XZ_PRESET).
read -r t_xzc r_xzc rest < <(run "rm -f $work/c.xz; sync" "xz -T0 -3 -c $base > $work/c.xz")
report "xz -T0 -3 of the raw image" "$t_xzc" "$r_xzc" "$rest"
echo "  speed vs xz -T0 -3: $(ratio "$t_xzc" "$t_bake")x (imgbuild also copies and edits the image)"

echo "3. first use: download + sha256 + unpack of the .img.xz from loopback HTTP vs the download alone"
# imgbuild fetch (download, verify and unpack in one pass) vs curl -o of the
# same file, alternating (median of the pair ratios), without a rate limit and
# at 50 MB/s like a real link (benches/serve.py).
digest=$(sha256sum "$work/rk1.img.xz" | cut -d' ' -f1)
serve=$PWD/benches/serve.py
for rate in 0 50000000; do
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  (cd "$work" && exec python3 "$serve" "$port" "$rate" >/dev/null 2>&1) & server=$!
  sleep 1
  mkdir -p "$work/manifests"
  sed -e "s|https://github.com/.*turing-rk1.img.xz|http://127.0.0.1:$port/rk1.img.xz|" -e "s|sha256: .*|sha256: $digest|" \
    firmware-manifests/rk1.yaml > "$work/manifests/rk1.yaml"
  ratios=(); ours=(); theirs=()
  for _ in $(seq "$rounds"); do
    rm -rf "$work/cache"; sync
    a=$(time_of "$bin" --manifests "$work/manifests" --cache-dir "$work/cache" fetch rk1)
    rm -f "$work/dl.xz"; sync
    b=$(time_of curl -sf -o "$work/dl.xz" "http://127.0.0.1:$port/rk1.img.xz")
    ours+=("$a"); theirs+=("$b"); ratios+=("$(python3 -c "print($a/$b)")")
  done
  kill "$server"; server=""
  label="no rate limit"; [ "$rate" != 0 ] && label="50 MB/s"
  printf '  %-14s imgbuild fetch median %6.2f s, curl -o median %6.2f s, median ratio %.3f (target <= 1.1)\n' \
    "$label" "$(median "${ours[@]}")" "$(median "${theirs[@]}")" "$(median "${ratios[@]}")"
done
rm -rf "$work/cache" "$work/dl.xz"

echo "4. peak RSS of imgbuild unpack as the image grows"
half=$work/half.img.xz
head -c $((mib * 1024 * 1024 / 2)) "$base" | xz -T0 > "$half"
read -r _ r_half _ < <(python3 $m 1 "rm -f $work/h.img" "$bin unpack $half $work/h.img >/dev/null")
echo "  $((mib / 2)) MiB: ${r_half} MiB   ${mib} MiB: ${r_ours} MiB"
