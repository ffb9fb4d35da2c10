#!/usr/bin/env bash
# Boot test: bake a node with imgbuild into a stand-in for its board's stock
# Ubuntu 24.04 image, boot the result under QEMU, and check what first boot did
# against the profiles and the secrets. See CONTRIBUTING.md, "Boot test".
#
#   tests/boot/run.sh            # amd64 NUC node (nuc2)
#   BOOT_TEST_ARCHES="amd64 arm64" tests/boot/run.sh
#   tests/boot/run.sh --prepare  # only build the cached roots and base images
#                                # (.ci/run does this in the background while
#                                # the crate compiles and its tests run)
#
# Environment:
#   IMGBUILD_BOOT_CACHE    where built roots and base images are kept between runs
#                          (default /var/cache/imgbuild-boot)
#   BOOT_TEST_ARCHES       amd64 (default), arm64, or both
#   BOOT_TEST_NODE_amd64   node baked for amd64 (default nuc2; a nuc node)
#   BOOT_TEST_NODE_arm64   node baked for arm64 (default node02; an rk1 node)
#   BOOT_TEST_EXPECT_FAIL  comma-separated checks known to fail: reported as XFAIL
#                          and not failing the run (arm64 checks are prefixed "arm64:")
#   BOOT_TEST_ACCEL        auto (KVM when usable, else TCG; default), kvm or tcg
#   BOOT_TEST_TIMEOUT      seconds a VM may run before it is killed (default 900)
#   BOOT_TEST_RTC_BASE     start the VM's hardware clock at this date (e.g. 2025-01-01)
#                          instead of now: a board whose clock is behind
#   BOOT_TEST_WORKDIR      work directory (default: a new one under /tmp)
#   BOOT_TEST_KEEP=1       keep the work directory after a passing run
#   BOOT_TEST_STORAGE=0    no data disks (amd64 attaches a blank and a used one)
#   IMGBUILD_BIN           imgbuild binary to test (default: `cargo build`, the binary
#                          cargo reports, wherever CARGO_TARGET_DIR puts it)
#   IMGBUILD_TEST_VENV     the tests' virtual environment (default target/test-venv,
#                          made by tests/setup-python.sh); arm64 needs its pyfatfs
#   IMGBUILD_TEST_PYTHON   the Python with pyfatfs (default: the venv's python3)
#
# Needs root (the root tarball's owners and device nodes), mmdebstrap, QEMU,
# gdisk, e2fsprogs, dosfstools, mtools, openssh-client, openssl, python3-yaml
# (.ci/run installs them), and for arm64 the test venv (bash tests/setup-python.sh).
set -euo pipefail
prepare_only=0
case "${1:-}" in
--prepare) prepare_only=1 ;;
"") ;;
*) echo "usage: tests/boot/run.sh [--prepare]" >&2; exit 2 ;;
esac
repo=$(cd "$(dirname "$0")/../.." && pwd)
here=$repo/tests/boot
cache=${IMGBUILD_BOOT_CACHE:-/var/cache/imgbuild-boot}
arches=${BOOT_TEST_ARCHES:-amd64}
accel=${BOOT_TEST_ACCEL:-auto}
vm_timeout=${BOOT_TEST_TIMEOUT:-900}
work=${BOOT_TEST_WORKDIR:-$(mktemp -d "${TMPDIR:-/tmp}/imgbuild-boot.XXXXXX")}
mkdir -p "$work" "$cache"
t_start=$SECONDS

log() { printf '[boot-test %4ds] %s\n' "$((SECONDS - t_start))" "$*"; }
# To stderr: die also runs inside $(...) (cached_root, cached_base), whose
# output is a path.
die() { { log "ERROR: $*"; log "work directory kept: $work"; } >&2; exit 2; }

for tool in mmdebstrap sgdisk mkfs.ext4 mkfs.vfat debugfs e2fsck ssh-keygen openssl python3 flock sha256sum; do
  command -v "$tool" >/dev/null || die "$tool is missing (see .ci/run for the packages)"
done
# Test-only Python packages (pyfatfs) live in the test venv, never in the
# system Python; the rest of this script needs only the standard library and
# PyYAML, from the distribution (python3-yaml) or else from the venv.
test_venv=${IMGBUILD_TEST_VENV:-target/test-venv}
[[ $test_venv == /* ]] || test_venv=$repo/$test_venv
test_py=${IMGBUILD_TEST_PYTHON:-$test_venv/bin/python3}
export IMGBUILD_TEST_PYTHON=$test_py # make-base.sh writes the RK1 seed with it
py=python3
if ! python3 -c 'import yaml' 2>/dev/null; then
  "$test_py" -c 'import yaml' 2>/dev/null ||
    die "python3-yaml is missing (apt-get install python3-yaml, or make the test venv: bash tests/setup-python.sh)"
  py=$test_py
fi
if [[ " $arches " == *" arm64 "* ]]; then
  [ -x "$test_py" ] ||
    die "$test_py is missing: make the test venv with bash tests/setup-python.sh (needs python3-venv); arm64 needs its pyfatfs"
  "$test_py" -c 'import pyfatfs' 2>/dev/null ||
    die "pyfatfs is missing from $test_py: run bash tests/setup-python.sh (it writes the stock seed to the RK1 CIDATA volume, which mtools refuses)"
fi
[ "$(id -u)" = 0 ] || die "the boot test needs root (it unpacks a root file system with its owners)"

mirror_pid=
cleanup() {
  [ -n "$mirror_pid" ] && kill "$mirror_pid" 2>/dev/null || true
}
trap cleanup EXIT

# ---------------------------------------------------------------- cached inputs
# The Debian root of an architecture, keyed by its recipe (build-root.sh and the
# package list), and the base image made from it, keyed also by make-base.sh and
# the probe. Both are built once per machine and reused; a changed recipe makes a
# new entry and drops the old one.
hash_files() { cat "$@" | sha256sum | cut -c1-16; }

cached_root() { # arch -> path of the root tarball
  local arch=$1 key path
  key=$(hash_files "$here/build-root.sh" "$here/packages-$arch.txt" <(echo "$arch"))
  path=$cache/root-$arch-$key.tar
  if [ ! -s "$path" ]; then
    (
      flock 9
      if [ ! -s "$path" ]; then
        log "building the $arch Debian root (once per recipe; several minutes)" >&2
        local t=$SECONDS
        "$here/build-root.sh" "$arch" "$path" >"$work/build-root-$arch.log" 2>&1 ||
          { tail -30 "$work/build-root-$arch.log" >&2; exit 1; }
        log "$arch root built in $((SECONDS - t))s" >&2
        find "$cache" -maxdepth 1 -name "root-$arch-*.tar" ! -name "$(basename "$path")" -delete
      fi
    ) 9>"$cache/.lock" || die "building the $arch root failed (log: $work/build-root-$arch.log)"
  fi
  echo "$path"
}

cached_base() { # board arch -> path of the base image
  local board=$1 arch=$2 root key path
  # A command substitution does not inherit errexit: stop here by hand.
  root=$(cached_root "$arch") || exit 2
  key=$(hash_files <(basename "$root") "$here/make-base.sh" <(cd "$here/guest" && find . -type f -o -type l | sort | xargs -d '\n' tail -n +1 --) <(echo "$board"))
  path=$cache/base-$board-$arch-$key.img
  if [ ! -s "$path" ]; then
    (
      flock 9
      if [ ! -s "$path" ]; then
        log "making the $board base image from the $arch root" >&2
        local t=$SECONDS
        "$here/make-base.sh" "$board" "$root" "$path" >"$work/make-base-$board.log" 2>&1 ||
          { tail -30 "$work/make-base-$board.log" >&2; exit 1; }
        log "$board base image made in $((SECONDS - t))s" >&2
        find "$cache" -maxdepth 1 -name "base-$board-$arch-*.img" ! -name "$(basename "$path")" -delete
      fi
    ) 9>"$cache/.lock" || die "making the $board base image failed (log: $work/make-base-$board.log)"
  fi
  echo "$path"
}

board_of() { # arch -> the board its boot test lays out
  case "$1" in
  amd64) echo nuc ;;
  arm64) echo rk1 ;;
  *) die "unknown architecture $1 (amd64 or arm64)" ;;
  esac
}

if [ "$prepare_only" = 1 ]; then
  for arch in $arches; do
    t0=$SECONDS
    base=$(cached_base "$(board_of "$arch")" "$arch")
    log "$arch: base image ready: $base ($((SECONDS - t0))s)"
  done
  rm -rf "$work"
  exit 0
fi

# ---------------------------------------------------------------- imgbuild
if [ -n "${IMGBUILD_BIN:-}" ]; then
  bin=$IMGBUILD_BIN
else
  log "cargo build (imgbuild)"
  # Cargo says where it put the binary (CARGO_TARGET_DIR, a workspace's target).
  bin=$(cd "$repo" && cargo build --locked --quiet --bin imgbuild --message-format=json-render-diagnostics |
    "$py" -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "imgbuild" and m.get("executable"):
        print(m["executable"])
') || die "cargo build failed"
  [ -n "$bin" ] && [ -x "$bin" ] || die "cargo build did not report an imgbuild binary"
fi

# ---------------------------------------------------------------- k3s mirror
# A stand-in k3s release on loopback, laid out like GitHub's release assets:
# <mirror>/<version>/<asset>. imgbuild asks for the version with '+' escaped
# (v1.32.5%2Bk3s1); Python's http.server unescapes the path, so the directory on
# disk is named with a literal '+'.
k3s_version=$("$py" -c 'import sys, yaml; c = yaml.safe_load(open(sys.argv[1]))["cluster"]; print((c.get("k3s") or {}).get("version", "v1.32.5+k3s1"))' "$repo/profiles/cluster.yaml")
rel=$work/mirror/$k3s_version
mkdir -p "$rel"
for arch in amd64 arm64; do
  asset=k3s
  [ "$arch" = arm64 ] && asset=k3s-arm64
  install -m 0755 "$here/k3s-standin.sh" "$rel/$asset"
  tar -cf - -T /dev/null | zstd -q >"$rel/k3s-airgap-images-$arch.tar.zst"
  (cd "$rel" && sha256sum "$asset" "k3s-airgap-images-$arch.tar.zst" >"sha256sum-$arch.txt")
done
"$py" -u - "$work/mirror" >"$work/mirror.port" 2>"$work/mirror.log" <<'PY' &
import functools, http.server, sys
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[1])
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
print(server.server_address[1])
server.serve_forever()
PY
mirror_pid=$!
# Python can take seconds to start on a loaded machine (CI runs this after
# the test suite, with the roots still building): wait up to a minute.
for _ in $(seq 600); do
  [ -s "$work/mirror.port" ] && break
  kill -0 "$mirror_pid" 2>/dev/null || die "the loopback k3s mirror exited: $(tail -3 "$work/mirror.log")"
  sleep 0.1
done
[ -s "$work/mirror.port" ] || die "the loopback k3s mirror did not start within a minute"
mirror=http://127.0.0.1:$(cat "$work/mirror.port")
esc=${k3s_version//+/%2B}
"$py" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1]).read()' "$mirror/$esc/sha256sum-amd64.txt" ||
  die "the loopback k3s mirror does not serve $mirror/$esc/sha256sum-amd64.txt"

# KVM is used when it works, not merely when /dev/kvm exists: some nested set-ups
# open /dev/kvm and then fail to set MSRs or never run the guest. The probe boots
# the kernel for a few seconds and waits for its first console line.
kvm_state=
kvm_usable() { # kernel
  if [ -z "$kvm_state" ]; then
    kvm_state=no
    if [ "$(uname -m)" = x86_64 ] && [ -r /dev/kvm ] && [ -w /dev/kvm ]; then
      (timeout 15 qemu-system-x86_64 -M q35 -accel kvm -cpu host -m 256 -kernel "$1" \
        -append "console=ttyS0 panic=-1" -display none -nodefaults -no-reboot \
        -serial "file:$work/kvm-probe.log" >"$work/kvm-probe.err" 2>&1 || true) 2>/dev/null
      grep -q 'Linux version' "$work/kvm-probe.log" 2>/dev/null && kvm_state=yes
      log "KVM usable: $kvm_state" >&2
    fi
  fi
  [ "$kvm_state" = yes ]
}

# ---------------------------------------------------------------- one node
overall=0
summary=()

# What the VM's data disks hold after it stopped, read on the host with the
# real tools (sgdisk, blkid, e2fsck, debugfs), as JSON keyed by the profile's
# device path.
storage_facts() { # dir
  local d=$1 start table partlabel fstype label fsck=-1 entries evidence
  table=$(sgdisk -p "$d/blank.img" >/dev/null 2>&1 && echo gpt || echo none)
  start=$(sgdisk -i 1 "$d/blank.img" 2>/dev/null | awk '/^First sector/ {print $3}')
  partlabel=$(sgdisk -i 1 "$d/blank.img" 2>/dev/null | sed -n "s/^Partition name: '\(.*\)'$/\1/p")
  evidence=$(sgdisk -p "$d/blank.img" 2>&1 | tail -4)
  if [ -n "$start" ]; then
    dd if="$d/blank.img" of="$d/blank-p1.img" bs=512 skip="$start" status=none conv=sparse
    fstype=$(blkid -p -o value -s TYPE "$d/blank-p1.img" 2>/dev/null || true)
    label=$(blkid -p -o value -s LABEL "$d/blank-p1.img" 2>/dev/null || true)
    fsck=0
    e2fsck -fn "$d/blank-p1.img" >"$d/blank-fsck.txt" 2>&1 || fsck=$?
    entries=$(debugfs -R "ls -p /" "$d/blank-p1.img" 2>/dev/null | awk -F/ 'NF > 5 && $6 != "." && $6 != ".." {print $6}' | tr '\n' ' ')
    rm -f "$d/blank-p1.img"
  fi
  "$py" - "$d" "$table" "${partlabel:-}" "${fstype:-}" "${label:-}" "$fsck" "${entries:-}" "$evidence" <<'PY'
import hashlib, json, os, sys
d, table, partlabel, fstype, label, fsck, entries, evidence = sys.argv[1:]
out = {"/dev/disk/by-id/virtio-imgbuild-blank": {
    "role": "blank", "table": table, "partlabel": partlabel, "fstype": fstype, "label": label,
    "fsck": int(fsck), "root_entries": entries.split(), "evidence": evidence.splitlines()}}
for role, what in [("used", "whole-disk ext4 'olddata'"),
                   ("opaque-table", "GPT with an unrecognised partition"),
                   ("opaque-raw", "no table, data in the first MiB")]:
    with open(os.path.join(d, role + ".img"), "rb") as f:
        h = hashlib.file_digest(f, "sha256").hexdigest()
    before = open(os.path.join(d, role + ".sha256")).read().strip()
    out["/dev/disk/by-id/virtio-imgbuild-" + role] = {
        "role": role, "what": what, "sha256_before": before, "sha256_after": h}
print(json.dumps(out))
PY
}

boot_one() { # arch
  local arch=$1 node board base out disk kdir vmlinuz initrd append qemu rep serial profiles
  board=$(board_of "$arch")
  case "$arch" in
  amd64) node=${BOOT_TEST_NODE_amd64:-nuc2} ;;
  arm64) node=${BOOT_TEST_NODE_arm64:-node02} ;;
  esac
  local d=$work/$arch
  mkdir -p "$d"
  local t0=$SECONDS
  base=$(cached_base "$board" "$arch")
  log "$arch: base image $base ($((SECONDS - t0))s)"

  # The profiles: the shipped ones; on amd64 the node also gets two data disks
  # (profile key storage): a blank one that first boot must format, fill with
  # what the image has under /var/lib/rancher and mount there before k3s, and
  # one holding a file system that must never be written to.
  profiles=$repo/profiles
  local storage_disks=()
  if [ "$arch" = amd64 ] && [ "${BOOT_TEST_STORAGE:-1}" = 1 ]; then
    profiles=$d/profiles
    rm -rf "$profiles"
    cp -r "$repo/profiles" "$profiles"
    cat >>"$profiles/nodes/$node.yaml" <<'YAML'
storage:
  - device: /dev/disk/by-id/virtio-imgbuild-blank
    mount: /var/lib/rancher
  - device: /dev/disk/by-id/virtio-imgbuild-used
    mount: /var/lib/longhorn
  - device: /dev/disk/by-id/virtio-imgbuild-opaque-table
    mount: /srv/opaque-table
  - device: /dev/disk/by-id/virtio-imgbuild-opaque-raw
    mount: /srv/opaque-raw
YAML
    truncate -s 0 "$d/blank.img" && truncate -s 1G "$d/blank.img"
    # A whole-disk ext4 with a file on it.
    rm -f "$d/used.img" && truncate -s 256M "$d/used.img"
    mkfs.ext4 -q -F -L olddata "$d/used.img"
    printf 'data that must survive\n' >"$d/keep.txt"
    debugfs -w -R "write $d/keep.txt keep.txt" "$d/used.img" >/dev/null 2>&1
    # A GPT whose one partition holds data no tool recognises (plain dm-crypt,
    # a raw database volume): cloud-init's fs_setup `auto` would format it.
    rm -f "$d/opaque-table.img" && truncate -s 64M "$d/opaque-table.img"
    printf 'label: gpt\ntype=L\n' | sfdisk --quiet "$d/opaque-table.img" >/dev/null
    dd if=/dev/urandom of="$d/opaque-table.img" bs=1M seek=1 count=8 conv=notrunc status=none
    # No table and no signature, but data at its start.
    rm -f "$d/opaque-raw.img" && truncate -s 64M "$d/opaque-raw.img"
    dd if=/dev/urandom of="$d/opaque-raw.img" bs=1M count=4 conv=notrunc status=none
    for x in used opaque-table opaque-raw; do
      sha256sum <"$d/$x.img" | cut -d' ' -f1 >"$d/$x.sha256"
    done
    storage_disks=(
      -drive "file=$d/blank.img,format=raw,if=none,id=d1,cache=unsafe" -device virtio-blk-pci,drive=d1,serial=imgbuild-blank
      -drive "file=$d/used.img,format=raw,if=none,id=d2,cache=unsafe" -device virtio-blk-pci,drive=d2,serial=imgbuild-used
      -drive "file=$d/opaque-table.img,format=raw,if=none,id=d3,cache=unsafe" -device virtio-blk-pci,drive=d3,serial=imgbuild-opaque-table
      -drive "file=$d/opaque-raw.img,format=raw,if=none,id=d4,cache=unsafe" -device virtio-blk-pci,drive=d4,serial=imgbuild-opaque-raw
    )
  fi

  # Bake with a fresh secrets directory and cache. --sealed: the image never
  # leaves this machine (under CI=true imgbuild refuses to bake secrets without it).
  out=$d/$node.$board.img
  local t=$SECONDS
  IMGBUILD_SECRETS=$work/secrets IMGBUILD_CACHE_DIR=$work/imgbuild-cache IMGBUILD_K3S_MIRROR=$mirror \
    flock "$work/bake.lock" "$bin" --profiles "$profiles" --base "$base" --sealed "$out" >"$d/imgbuild.log" 2>&1 ||
    { cat "$d/imgbuild.log"; die "imgbuild failed for $node"; }
  log "$arch: baked $node in $((SECONDS - t))s"

  # The node's disk is bigger than the image, as a real one is: first boot grows
  # the root (growpart also moves the GPT backup header to the end).
  truncate -s "${BOOT_TEST_DISK_GIB:-10}G" "$out"
  disk=$(stat -c %s "$out")

  # Kernel and initrd from the baked image itself, read with debugfs (no mount):
  # NUC from BOOT (p16), RK1 from the root's /boot (p2).
  local part dir
  case "$board" in
  nuc) part=16 dir=/ ;;
  rk1) part=2 dir=/boot ;;
  esac
  local start
  start=$(sgdisk -i "$part" "$out" 2>/dev/null | awk '/^First sector/ {print $3}')
  local fs="$out?offset=$((start * 512))"
  vmlinuz=$(debugfs -R "ls -p $dir" "$fs" 2>/dev/null | awk -F/ '$6 ~ /^vmlinuz-/ {print $6}' | sort -V | tail -1)
  initrd=$(debugfs -R "ls -p $dir" "$fs" 2>/dev/null | awk -F/ '$6 ~ /^initrd.img-/ {print $6}' | sort -V | tail -1)
  [ -n "$vmlinuz" ] && [ -n "$initrd" ] || die "no kernel or initrd in partition $part of $out"
  debugfs -R "dump ${dir%/}/$vmlinuz $d/vmlinuz" "$fs" >/dev/null 2>&1
  debugfs -R "dump ${dir%/}/$initrd $d/initrd" "$fs" >/dev/null 2>&1

  # Network: user-mode, restricted (no way out of the VM). When the node has a
  # static address, the user-mode network takes the node's subnet and its
  # gateway is the host side, so the configured default route leads somewhere.
  local netinfo net_opts nic_opts=() ifname
  netinfo=$("$py" - "$profiles" "$node" <<'PY'
import ipaddress, os, sys, yaml
c = yaml.safe_load(open(os.path.join(sys.argv[1], "cluster.yaml")))
n = yaml.safe_load(open(os.path.join(sys.argv[1], "nodes", sys.argv[2] + ".yaml"))) or {}
net = dict((c.get("defaults") or {}).get("network") or {}, **(n.get("network") or {}))
opts = ""
if net.get("address") and net.get("gateway"):
    iface = ipaddress.ip_interface(net["address"])
    opts = f",net={iface.network},host={net['gateway']}"
print(opts, (net.get("match") or {}).get("name", ""))
PY
)
  net_opts=${netinfo%% *}
  ifname=${netinfo#* }
  local mac=52:54:00:12:34:56
  rep=$d/report.txt
  serial=$d/serial.log
  rm -f "$rep" "$serial"
  local acc=()
  case "$accel" in
  kvm) acc=(-accel kvm) ;;
  tcg) acc=(-accel tcg) ;;
  auto)
    if [ "$arch" = amd64 ] && kvm_usable "$d/vmlinuz"; then
      acc=(-accel kvm)
    else
      acc=(-accel tcg)
    fi
    ;;
  esac
  local cpu=max
  [ "${acc[1]}" = kvm ] && cpu=host
  case "$arch" in
  amd64)
    # The NIC's name must match the profile (nuc2: enp3s0). Predictable names
    # come from the PCI path, so the NIC is placed where that name says: enpXsY is
    # slot Y on bus X, behind X PCIe root ports (the firmware numbers their buses
    # 1..X in order), with hot-plug off so udev names it by path (enp), not by
    # hot-plug slot (ens). Nothing in the image is changed for this.
    local bus=0 slot=0
    if [[ $ifname =~ ^enp([0-9]+)s([0-9]+)$ ]]; then
      bus=${BASH_REMATCH[1]} slot=${BASH_REMATCH[2]}
    fi
    local i
    for ((i = 1; i <= bus; i++)); do
      nic_opts+=(-device "pcie-root-port,id=rp$i,bus=pcie.0,chassis=$i,addr=$(printf '0x%x' $((0x10 + i))),hotplug=off")
    done
    if ((bus > 0)); then
      nic_opts+=(-device "virtio-net-pci,netdev=n0,mac=$mac,bus=rp$bus,addr=$(printf '0x%x' "$slot"),romfile=")
    else
      nic_opts+=(-device "virtio-net-pci,netdev=n0,mac=$mac,romfile=")
    fi
    qemu=(qemu-system-x86_64 -M q35 "${acc[@]}" -cpu "$cpu" -smp 2 -m 2048
      -kernel "$d/vmlinuz" -initrd "$d/initrd"
      -append "root=LABEL=cloudimg-rootfs ro console=ttyS0 panic=-1"
      -drive "file=$out,format=raw,if=none,id=d0,cache=unsafe,discard=unmap" -device virtio-blk-pci,drive=d0
      -netdev "user,id=n0,restrict=on$net_opts" "${nic_opts[@]}" "${storage_disks[@]}"
      -device virtio-serial-pci -chardev "file,id=probe,path=$rep" -device virtserialport,chardev=probe,name=org.imgbuild.probe
      -serial "file:$serial" -display none -vga none -nodefaults -no-reboot)
    ;;
  arm64)
    # pauth-impdef: QEMU's cheap pointer-authentication algorithm; the
    # architected one makes TCG several times slower.
    qemu=(qemu-system-aarch64 -M virt "${acc[@]}" -cpu max,pauth-impdef=on -smp 2 -m 2048
      -kernel "$d/vmlinuz" -initrd "$d/initrd"
      -append "root=LABEL=cloudimg-rootfs ro console=ttyAMA0 panic=-1"
      -drive "file=$out,format=raw,if=none,id=d0,cache=unsafe,discard=unmap" -device virtio-blk-pci,drive=d0
      -netdev "user,id=n0,restrict=on$net_opts" -device "virtio-net-pci,netdev=n0,mac=$mac"
      -device virtio-serial-pci -chardev "file,id=probe,path=$rep" -device virtserialport,chardev=probe,name=org.imgbuild.probe
      -serial "file:$serial" -display none -nodefaults -no-reboot)
    ;;
  esac
  [ -n "${BOOT_TEST_RTC_BASE:-}" ] && qemu+=(-rtc "base=$BOOT_TEST_RTC_BASE")
  printf '%q ' "${qemu[@]}" >"$d/qemu.cmd"
  log "$arch: booting $node (${acc[*]}; serial log $serial)"
  t=$SECONDS
  local rc=0
  timeout --foreground "$vm_timeout" "${qemu[@]}" >"$d/qemu.log" 2>&1 || rc=$?
  local boot_s=$((SECONDS - t))
  if [ "$rc" = 124 ]; then
    log "$arch: the VM was still running after ${vm_timeout}s and was killed"
  elif [ "$rc" != 0 ]; then
    log "$arch: qemu exited with $rc: $(tail -3 "$d/qemu.log")"
  fi
  log "$arch: VM ran ${boot_s}s (power-on to power-off)"
  echo "$boot_s" >"$d/boot-seconds"

  log "$arch: checks for $node"
  local expect="" prefix=""
  [ "$arch" = arm64 ] && prefix="arm64:"
  local e
  IFS=, read -ra e <<<"${BOOT_TEST_EXPECT_FAIL:-}"
  for x in "${e[@]}"; do
    x=${x// /}
    if [ -n "$prefix" ]; then
      [[ $x == "$prefix"* ]] && expect+="${x#"$prefix"},"
    else
      [[ $x != *:* ]] && [ -n "$x" ] && expect+="$x,"
    fi
  done
  local storage_args=()
  if [ ${#storage_disks[@]} -gt 0 ]; then
    storage_facts "$d" >"$d/storage.json" || die "could not read the data disks"
    storage_args=(--storage "$d/storage.json")
  fi
  local crc=0
  "$py" "$here/check.py" --report "$rep" --serial "$serial" --profiles "$profiles" \
    --secrets "$work/secrets" --node "$node" --disk-bytes "$disk" --expect-fail "$expect" "${storage_args[@]}" \
    --keep-dir "$d" | tee "$d/checks.txt" || crc=$?
  echo "$arch ($node): $(grep -E '^[0-9]+ passed, [0-9]+ failed$' "$d/checks.txt" || echo 'no result'), VM ${boot_s}s" >"$d/summary"
  return "$crc"
  if grep -q '^FAIL\|^XFAIL' "$d/checks.txt"; then
    log "$arch: report: $rep; serial log: $serial"
  fi
}

# The architectures boot side by side: a TCG guest keeps one host core busy
# only while its boot is CPU-bound, so two guests on two cores take little more
# than the slower one alone. Their bakes take turns (one secrets directory);
# each one's lines are prefixed with its architecture.
for arch in $arches; do
  cached_base "$(board_of "$arch")" "$arch" >/dev/null
done
pids=()
for arch in $arches; do
  mkdir -p "$work/$arch"
  ( set -o pipefail; (boot_one "$arch"; echo "$?" >"$work/$arch/rc") 2>&1 | sed -u "s/^/$arch| /" ) &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p" || true; done
for arch in $arches; do
  rc=$(cat "$work/$arch/rc" 2>/dev/null || echo 2)
  [ "$rc" = 0 ] || overall=1
  summary+=("$(cat "$work/$arch/summary" 2>/dev/null || echo "$arch: no result (exit $rc)")")
done

log "done in $((SECONDS - t_start))s"
for s in "${summary[@]}"; do log "$s"; done
if [ "${BOOT_TEST_KEEP:-0}" = 1 ] || [ "$overall" != 0 ]; then
  log "work directory kept: $work"
elif grep -qs '^XFAIL' "$work"/*/checks.txt; then
  # Only known failures: keep the logs and reports, not the disk images.
  find "$work" \( -name '*.img' -o -name vmlinuz -o -name initrd \) -delete
  rm -rf "$work/imgbuild-cache" "$work/mirror"
  log "known failures: serial logs and reports kept in $work"
else
  rm -rf "$work"
fi
exit "$overall"
