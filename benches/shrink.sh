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

make_rk1_base "$work/rk1.img" "$((size_mib + 20))M" "$work" payload
make_cm4_base "$work/cm4.img" "$size_mib" "$work" payload
make_nuc_base "$work/nuc.img" "$((size_mib + 1135))" "$work" payload

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
