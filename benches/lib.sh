# shellcheck shell=bash
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

# CM4: MBR, 512 MiB FAT32 system-boot at sector 2048 with the stock seed, ext4 writable.
#   make_cm4_base BASE SIZE_MIB WORK FILL   (FILL as for make_rk1_base)
make_cm4_base() {
  local base=$1 size_mib=$2 w=$3/cm4w fill=$4
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
  "$fill" "$w/tree"
  truncate -s $(( (size_mib - 513) * 1024 * 1024 )) "$w/root"
  mkfs.ext4 -q -L writable -d "$w/tree" "$w/root"
  dd if="$w/boot" of="$base" bs=1M seek=1 conv=notrunc,sparse status=none
  dd if="$w/root" of="$base" bs=1M seek=513 conv=notrunc,sparse status=none
  rm -rf "$w"
}

# NUC: GPT, p14 BIOS boot 4 MiB, p15 ESP 106 MiB, p16 ext4 BOOT 1 GiB, p1 ext4 root last
# (the root gets SIZE_MIB - 1135 MiB).
#   make_nuc_base BASE SIZE_MIB WORK FILL
make_nuc_base() {
  local base=$1 size_mib=$2 w=$3/nucw fill=$4 p1=$(( (1 + 4 + 106 + 1024) * 2048 ))
  mkdir -p "$w/tree/etc" "$w/tree/usr/bin" "$w/tree/var/lib" "$w/boot/grub"
  truncate -s "${size_mib}M" "$base"
  sgdisk -a 1 -n 14:2048:10239 -t 14:EF02 -n 15:10240:227327 -t 15:EF00 \
    -n 16:227328:$((p1 - 1)) -t 16:BC13C2FF-59E6-4262-A352-B275FD6F7172 -n 1:$p1:0 -t 1:8300 "$base" >/dev/null
  truncate -s 106M "$w/esp"; mkfs.vfat -F 32 -n UEFI "$w/esp" >/dev/null 2>&1
  echo '# grub' > "$w/boot/grub/grub.cfg"
  truncate -s 1G "$w/bootfs"; mkfs.ext4 -q -L BOOT -d "$w/boot" "$w/bootfs"
  printf 'NAME="Ubuntu"\nVERSION_ID="24.04"\nID=ubuntu\n' > "$w/tree/etc/os-release"
  printf '\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x3e\x00' > "$w/tree/usr/bin/dash"
  "$fill" "$w/tree"
  truncate -s $(( ($(stat -c %s "$base") - 34*512 - p1*512) / 4096 * 4096 )) "$w/root"
  mkfs.ext4 -q -L cloudimg-rootfs -d "$w/tree" "$w/root"
  dd if="$w/esp" of="$base" bs=512 seek=10240 conv=notrunc,sparse status=none
  dd if="$w/bootfs" of="$base" bs=512 seek=227328 conv=notrunc,sparse status=none
  dd if="$w/root" of="$base" bs=512 seek=$p1 conv=notrunc,sparse status=none
  rm -rf "$w"
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

# The imgbuild binary a bench runs, in $bin: IMGBUILD_BENCH_BIN as given (no
# build that would compete with the rounds), else a fresh release build.
bench_bin() {
  [ -n "${IMGBUILD_BENCH_BIN:-}" ] || cargo build --release --quiet
  bin=$(realpath "${IMGBUILD_BENCH_BIN:-$PWD/target/release/imgbuild}")
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
