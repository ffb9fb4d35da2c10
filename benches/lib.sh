# Shared by the benchmark scripts: an RK1-layout base image (shared/REFERENCE.md §1).
#
#   make_rk1_base BASE SIZE WORK FILL
# creates BASE of SIZE (truncate syntax) with the GPT, a 4 MiB FAT32 CIDATA p1 and an
# ext4 cloudimg-rootfs p2 whose tree the shell function FILL populates (it gets the
# tree directory as $1). Scratch files go to WORK.
make_rk1_base() {
  local base=$1 size=$2 work=$3 fill=$4
  truncate -s "$size" "$base"
  sgdisk -a 1 -n 1:32768:40959 -t 1:EBD0A0A2-B9E5-4433-87C0-68B6B72699C7 \
    -n 2:40960:0 -t 2:C12A7328-F81F-11D2-BA4B-00A0C93EC93B "$base" >/dev/null
  truncate -s 4M "$work/cidata"; mkfs.vfat -F32 -n CIDATA "$work/cidata" >/dev/null 2>&1
  mkdir -p "$work/tree/etc" "$work/tree/usr/bin" "$work/tree/var/lib"
  printf 'NAME="Ubuntu"\nVERSION_ID="24.04"\nID=ubuntu\n' > "$work/tree/etc/os-release"
  printf '\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\xb7\x00' > "$work/tree/usr/bin/dash"
  "$fill" "$work/tree"
  local root_bytes=$(( ($(stat -c %s "$base") - 34*512 - 20*1024*1024) / 4096 * 4096 ))
  truncate -s "$root_bytes" "$work/root"
  mkfs.ext4 -q -L cloudimg-rootfs -d "$work/tree" "$work/root"
  dd if="$work/cidata" of="$base" bs=1M seek=16 conv=notrunc,sparse status=none
  dd if="$work/root" of="$base" bs=1M seek=20 conv=notrunc,sparse status=none
  rm -rf "$work/tree" "$work/root" "$work/cidata"
}

# Isolates a benchmark run: secrets and cache in WORK, and a loopback k3s
# release mirror with stand-ins of realistic size (70 MB binary, 150 MB image
# tarball) so bakes write what a real air-gapped bake writes.
#   bench_env WORK    (sets IMGBUILD_SECRETS, IMGBUILD_CACHE_DIR, IMGBUILD_K3S_MIRROR, MIRROR_PID)
bench_env() {
  local work=$1 version arch bin port
  version=$(awk '/version:/{print $2; exit}' profiles/cluster.yaml)
  mkdir -p "$work/mirror/$version"
  for arch in arm64 amd64; do
    bin=k3s; [ "$arch" = arm64 ] && bin=k3s-arm64
    head -c 70000000 /dev/urandom > "$work/mirror/$version/$bin"
    head -c 150000000 /dev/urandom > "$work/mirror/$version/k3s-airgap-images-$arch.tar.zst"
    (cd "$work/mirror/$version" && sha256sum "$bin" "k3s-airgap-images-$arch.tar.zst" > "sha256sum-$arch.txt")
  done
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  (cd "$work/mirror" && exec python3 -m http.server "$port" --bind 127.0.0.1 >/dev/null 2>&1) &
  MIRROR_PID=$!
  export IMGBUILD_SECRETS=$work/secrets IMGBUILD_CACHE_DIR=$work/cache IMGBUILD_K3S_MIRROR=http://127.0.0.1:$port
  sleep 1
}

# Creates the run's scratch directory $work (removed on exit, the mirror stopped)
# and isolates the run in it with bench_env.
bench_setup() {
  work=$(mktemp -d "${TMPDIR:-/var/tmp}/imgbuild-bench.XXXXXX")
  MIRROR_PID=""
  trap '[ -n "$MIRROR_PID" ] && kill $MIRROR_PID 2>/dev/null; rm -rf "$work"' EXIT
  bench_env "$work"
}

# Wall seconds of a command (its output discarded); a failure ends the run.
time_of() { local s e; s=$(date +%s.%N); "$@" >/dev/null 2>&1 || { echo "failed: $*" >&2; exit 1; }; e=$(date +%s.%N); echo "$e - $s" | bc; }

# The median of the numbers given.
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END{print (NR%2)? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }
