//! Fixture images built with the real tools (sgdisk, sfdisk, mkfs.vfat,
//! mkfs.ext4, mtools, pyfatfs) in the layouts of shared/REFERENCE.md §1, and
//! the file-system checkers run on results.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use super::bytes::{MIB, extract, place};
use super::harness::{python, q, repo, sh, sh_status, shared_scratch};

/// A fake ELF header for /usr/bin/dash with the given e_machine.
fn fake_elf(machine: u16) -> Vec<u8> {
    let mut e = vec![0u8; 64];
    e[..4].copy_from_slice(b"\x7fELF");
    e[4] = 2;
    e[5] = 1;
    e[6] = 1;
    e[18..20].copy_from_slice(&machine.to_le_bytes());
    e
}

/// A small Ubuntu-looking root tree: os-release, a shell of the right
/// architecture, and an /etc big enough to be htree-indexed.
pub fn root_tree(dir: &Path, arch_machine: u16, etc_entries: usize) {
    std::fs::create_dir_all(dir.join("etc/cloud/cloud.cfg.d")).unwrap();
    std::fs::create_dir_all(dir.join("usr/bin")).unwrap();
    std::fs::create_dir_all(dir.join("var/lib/cloud")).unwrap();
    std::fs::create_dir_all(dir.join("boot")).unwrap();
    std::fs::write(
        dir.join("etc/os-release"),
        "PRETTY_NAME=\"Ubuntu 24.04.1 LTS\"\nNAME=\"Ubuntu\"\nVERSION_ID=\"24.04\"\nID=ubuntu\nID_LIKE=debian\n",
    )
    .unwrap();
    std::fs::write(dir.join("etc/hostname"), "ubuntu\n").unwrap();
    std::fs::write(dir.join("etc/machine-id"), "").unwrap();
    std::fs::write(dir.join("usr/bin/dash"), fake_elf(arch_machine)).unwrap();
    // Host keys a stock image may carry (every node flashed from it would
    // share them), and the sshd configuration, which must stay.
    std::fs::create_dir_all(dir.join("etc/ssh")).unwrap();
    for f in [
        "ssh_host_rsa_key",
        "ssh_host_rsa_key.pub",
        "ssh_host_ecdsa_key",
        "ssh_host_ecdsa_key.pub",
        "ssh_host_ed25519_key",
        "ssh_host_ed25519_key.pub",
    ] {
        std::fs::write(dir.join("etc/ssh").join(f), format!("stock {f}\n")).unwrap();
    }
    std::fs::write(
        dir.join("etc/ssh/sshd_config"),
        "Include /etc/ssh/sshd_config.d/*.conf\n",
    )
    .unwrap();
    for i in 0..etc_entries {
        std::fs::write(
            dir.join(format!("etc/conf-{i:05}.conf")),
            format!("# file {i}\n"),
        )
        .unwrap();
    }
}

/// mkfs.ext4 with the host's (Debian 12 / Ubuntu 24.04: e2fsprogs 1.47.0) defaults, populated from `tree`.
pub fn mkfs_ext4(file: &Path, label: &str, size: u64, tree: &Path) {
    sh(&format!(
        "rm -f {f}; truncate -s {size} {f}; mkfs.ext4 -q -F -L {label} -E root_owner=0:0 -d {t} {f}; e2fsck -fyD {f} >/dev/null 2>&1 || true; e2fsck -fn {f} >/dev/null",
        f = q(file),
        t = q(tree)
    ));
}

pub const RK1_META: &str = "instance-id: cloud-image\ndsmode: local\n";
pub const RK1_USER: &str = "#cloud-config\nchpasswd:\n  expire: true\n  users:\n    - name: ubuntu\n      password: ubuntu\n      type: text\nssh_pwauth: true\n";
pub const RK1_NET: &str = "version: 2\nethernets:\n  zz-all-en:\n    match:\n      name: \"en*\"\n    dhcp4: true\n    optional: true\n  zz-all-eth:\n    match:\n      name: \"eth*\"\n    dhcp4: true\n    optional: true\n";
pub const CM4_CMDLINE: &str = "console=serial0,115200 multipath=off dwc_otg.lpm_enable=0 console=tty1 root=LABEL=writable rootfstype=ext4 rootwait fixrtc\n";
pub const CM4_CONFIG: &str = "[all]\nkernel=vmlinuz\ncmdline=cmdline.txt\ninitramfs initrd.img followkernel\n\n[cm4]\ndtoverlay=dwc2,dr_mode=host\n";
pub const CM4_META: &str = "instance_id: cloud-image\n";
pub const CM4_USER: &str = "#cloud-config\nchpasswd:\n  expire: true\n  users:\n    - name: ubuntu\n      password: ubuntu\n      type: text\nssh_pwauth: false\n";
pub const CM4_NET: &str =
    "network:\n  version: 2\n  ethernets:\n    eth0:\n      dhcp4: true\n      optional: true\n";

pub struct Layout {
    pub path: PathBuf,
    /// (start, len) of each partition by index.
    pub parts: Vec<(u32, u64, u64)>,
}

impl Layout {
    pub fn part(&self, index: u32) -> (u64, u64) {
        let p = self.parts.iter().find(|p| p.0 == index).unwrap();
        (p.1, p.2)
    }
}

/// RK1 (ubuntu-rockchip v2.4.0): GPT, random "U-Boot" at 32 KiB, p1 16-20 MiB
/// FAT32 CIDATA with the stock seed (basic data type), p2 ext4 cloudimg-rootfs
/// typed as EFI System, to the end.
pub fn build_rk1(dir: &Path, size_mib: u64) -> Layout {
    build_rk1_with(dir, "rk1-base.img", size_mib, 183, "24.04")
}

/// An RK1 layout whose root claims another architecture (ELF machine) or release.
pub fn build_rk1_with(
    dir: &Path,
    name: &str,
    size_mib: u64,
    machine: u16,
    version: &str,
) -> Layout {
    let img = dir.join(name);
    let work = dir.join(format!("{name}-work"));
    std::fs::create_dir_all(&work).unwrap();
    sh(&format!(
        "rm -f {i}; truncate -s {size_mib}M {i}; sgdisk -a 1 -n 1:32768:40959 -t 1:EBD0A0A2-B9E5-4433-87C0-68B6B72699C7 -n 2:40960:0 -t 2:C12A7328-F81F-11D2-BA4B-00A0C93EC93B {i} >/dev/null",
        i = q(&img)
    ));
    // U-Boot stand-in: random bytes from 32 KiB to 8 MiB.
    sh(&format!(
        "head -c $((8*1024*1024 - 32768)) /dev/urandom > {w}/uboot",
        w = q(&work)
    ));
    place(&img, &work.join("uboot"), 32 * 1024);
    let fat = work.join("cidata.fat");
    sh(&format!(
        "rm -f {f}; truncate -s 4M {f}; mkfs.vfat -F32 -n CIDATA {f} >/dev/null 2>&1",
        f = q(&fat)
    ));
    for (name, body) in [
        ("meta-data", RK1_META),
        ("user-data", RK1_USER),
        ("network-config", RK1_NET),
    ] {
        let src = work.join(name);
        std::fs::write(&src, body).unwrap();
        sh(&format!(
            "{python} {py} put {f} /{name} {s}",
            python = python(),
            py = q(&repo().join("tests/fixtures/fat.py")),
            f = q(&fat),
            s = q(&src)
        ));
    }
    // pyfatfs leaves FSInfo's free count stale; let dosfstools set it, as the
    // kernel would have on the real image, then check the volume is clean.
    sh(&format!(
        "fsck.fat -a {f} >/dev/null 2>&1 || true; fsck.fat -n {f} >/dev/null 2>&1",
        f = q(&fat)
    ));
    place(&img, &fat, 16 * MIB);
    let root_len = (size_mib * MIB - 34 * 512) - 20 * MIB;
    let root_len = root_len / 4096 * 4096;
    let tree = work.join("tree");
    root_tree(&tree, machine, 1500);
    if version != "24.04" {
        let osr = tree.join("etc/os-release");
        let t = std::fs::read_to_string(&osr)
            .unwrap()
            .replace("24.04", version);
        std::fs::write(osr, t).unwrap();
    }
    let ext = work.join("root.ext4");
    mkfs_ext4(&ext, "cloudimg-rootfs", root_len, &tree);
    place(&img, &ext, 20 * MIB);
    std::fs::remove_dir_all(&work).unwrap();
    Layout {
        path: img,
        parts: vec![
            (1, 16 * MIB, 4 * MIB),
            (
                2,
                20 * MIB,
                (size_mib * MIB - 34 * 512 - 20 * MIB) / 512 * 512,
            ),
        ],
    }
}

/// CM4 (Ubuntu raspi): MBR, p1 type 0x0C FAT32 system-boot at sector 2048
/// (mkfs.vfat -S 512 -s 1 -F 32) with cmdline.txt, config.txt and the stock
/// seed, p2 ext4 writable.
pub fn build_cm4(dir: &Path, size_mib: u64) -> Layout {
    let img = dir.join("cm4-base.img");
    let work = dir.join("cm4-work");
    std::fs::create_dir_all(&work).unwrap();
    let boot_mib = 64;
    let root_start = (1 + boot_mib) * MIB;
    sh(&format!(
        "rm -f {i}; truncate -s {size_mib}M {i}; printf 'label: dos\\nstart=2048, size={bs}, type=c, bootable\\nstart={rs}, type=83\\n' | sfdisk -q {i}",
        i = q(&img),
        bs = boot_mib * MIB / 512,
        rs = root_start / 512
    ));
    let fat = work.join("boot.fat");
    sh(&format!(
        "rm -f {f}; truncate -s {boot_mib}M {f}; mkfs.vfat -S 512 -s 1 -F 32 -n system-boot {f} >/dev/null",
        f = q(&fat)
    ));
    for (name, body) in [
        ("cmdline.txt", CM4_CMDLINE),
        ("config.txt", CM4_CONFIG),
        ("meta-data", CM4_META),
        ("user-data", CM4_USER),
        ("network-config", CM4_NET),
    ] {
        let src = work.join(name);
        std::fs::write(&src, body).unwrap();
        sh(&format!(
            "mcopy -i {f} {s} ::{name}",
            f = q(&fat),
            s = q(&src)
        ));
    }
    // Stand-ins for firmware blobs so the FAT is not nearly empty.
    sh(&format!(
        "head -c 3000000 /dev/urandom > {w}/vmlinuz; mcopy -i {f} {w}/vmlinuz ::vmlinuz; mmd -i {f} ::overlays; printf dtbo > {w}/x.dtbo; mcopy -i {f} {w}/x.dtbo ::overlays/dwc2.dtbo",
        w = q(&work),
        f = q(&fat)
    ));
    sh(&format!("fsck.fat -n {} >/dev/null", q(&fat)));
    place(&img, &fat, MIB);
    let root_len = size_mib * MIB - root_start;
    let tree = work.join("tree");
    root_tree(&tree, 183, 200);
    let ext = work.join("root.ext4");
    mkfs_ext4(&ext, "writable", root_len, &tree);
    place(&img, &ext, root_start);
    std::fs::remove_dir_all(&work).unwrap();
    Layout {
        path: img,
        parts: vec![(1, MIB, boot_mib * MIB), (2, root_start, root_len)],
    }
}

/// NUC (noble server cloud image, raw): GPT with p14 BIOS boot, p15 ESP FAT32
/// "UEFI", p16 ext4 "BOOT", p1 ext4 "cloudimg-rootfs" taking the rest (sizes
/// scaled down from the real 4/106/1024 MiB).
pub fn build_nuc(dir: &Path, size_mib: u64) -> Layout {
    let img = dir.join("nuc-base.img");
    let work = dir.join("nuc-work");
    std::fs::create_dir_all(&work).unwrap();
    let (p14, p15, p16, p1) = (2048u64, 10240u64, 227328u64, 489472u64);
    sh(&format!(
        "rm -f {i}; truncate -s {size_mib}M {i}; sgdisk -a 1 -n 14:{p14}:{e14} -t 14:EF02 -n 15:{p15}:{e15} -t 15:EF00 -n 16:{p16}:{e16} -t 16:BC13C2FF-59E6-4262-A352-B275FD6F7172 -n 1:{p1}:0 -t 1:8300 {i} >/dev/null",
        i = q(&img),
        e14 = p15 - 1,
        e15 = p16 - 1,
        e16 = p1 - 1
    ));
    let esp = work.join("esp.fat");
    let esp_len = (p16 - p15) * 512;
    sh(&format!(
        "rm -f {f}; truncate -s {esp_len} {f}; mkfs.vfat -F 32 -n UEFI {f} >/dev/null 2>&1",
        f = q(&esp)
    ));
    place(&img, &esp, p15 * 512);
    let boot_tree = work.join("boot-tree");
    std::fs::create_dir_all(boot_tree.join("grub")).unwrap();
    std::fs::write(boot_tree.join("grub/grub.cfg"), "# grub\n").unwrap();
    let boot = work.join("boot.ext4");
    mkfs_ext4(&boot, "BOOT", (p1 - p16) * 512, &boot_tree);
    place(&img, &boot, p16 * 512);
    let root_len = (size_mib * MIB - 34 * 512 - p1 * 512) / 4096 * 4096;
    let tree = work.join("tree");
    root_tree(&tree, 62, 300);
    let ext = work.join("root.ext4");
    mkfs_ext4(&ext, "cloudimg-rootfs", root_len, &tree);
    place(&img, &ext, p1 * 512);
    std::fs::remove_dir_all(&work).unwrap();
    Layout {
        path: img,
        parts: vec![
            (14, p14 * 512, (p15 - p14) * 512),
            (15, p15 * 512, esp_len),
            (16, p16 * 512, (p1 - p16) * 512),
            (
                1,
                p1 * 512,
                (size_mib * MIB - 34 * 512 - p1 * 512) / 512 * 512,
            ),
        ],
    }
}

pub struct Fixtures {
    pub dir: PathBuf,
    pub rk1: Layout,
    pub cm4: Layout,
    pub nuc: Layout,
}

/// Base images shared by the tests of one test binary (they are only read).
pub fn fixtures() -> &'static Fixtures {
    static F: OnceLock<Fixtures> = OnceLock::new();
    F.get_or_init(|| {
        let dir = shared_scratch();
        let rk1 = build_rk1(&dir, 160);
        let cm4 = build_cm4(&dir, 160);
        let nuc = build_nuc(&dir, 400);
        Fixtures { dir, rk1, cm4, nuc }
    })
}

/// Extracts partition `index` and runs `fsck.fat -n` on it; returns its output.
pub fn fsck_fat(img: &Layout, out: &Path, index: u32, work: &Path) -> String {
    let (s, l) = img.part(index);
    let part = work.join(format!("p{index}.fat"));
    extract(out, s, l, &part);
    let (code, text) = sh_status(&format!("fsck.fat -n {}", q(&part)));
    assert_eq!(code, 0, "fsck.fat -n failed on partition {index}:\n{text}");
    assert!(
        !text.contains("will be") && !text.contains("Dirty"),
        "fsck.fat reports problems:\n{text}"
    );
    text
}

/// Extracts partition `index` and runs `e2fsck -fn` on it.
pub fn fsck_ext4(img: &Layout, out: &Path, index: u32, work: &Path) -> PathBuf {
    let (s, l) = img.part(index);
    let part = work.join(format!("p{index}.ext4"));
    extract(out, s, l, &part);
    let (code, text) = sh_status(&format!("e2fsck -fn {}", q(&part)));
    assert_eq!(code, 0, "e2fsck -fn failed on partition {index}:\n{text}");
    part
}

/// Reads a file from an extracted FAT partition with pyfatfs.
pub fn fat_cat(part: &Path, name: &str) -> Vec<u8> {
    sh(&format!(
        "{python} {py} cat {p} {name}",
        python = python(),
        py = q(&repo().join("tests/fixtures/fat.py")),
        p = q(part)
    ))
    .stdout
}

/// Asserts that `cloud-init schema` accepts `user_data` (written to a file
/// under `work`).
pub fn cloud_init_schema(user_data: &[u8], work: &Path) {
    let f = work.join("user-data.check");
    std::fs::write(&f, user_data).unwrap();
    let (code, out) = sh_status(&format!("cloud-init schema --config-file {}", q(&f)));
    assert_eq!(
        code,
        0,
        "cloud-init schema rejects user-data:\n{out}\n{}",
        String::from_utf8_lossy(user_data)
    );
    assert!(
        out.contains("Valid cloud-config") || out.contains("Valid schema"),
        "{out}"
    );
}

/// What cloud-init itself makes of a NoCloud seed (`meta-data`, `user-data`):
/// read with its NoCloud directory reader, user-data validated strictly against
/// its schema (tests/fixtures/cloudinit_seed.py, run by the system Python that
/// carries the cloudinit package).
pub fn cloud_init_seed(meta_data: &[u8], user_data: &[u8]) -> serde_json::Value {
    let dir = super::harness::scratch();
    std::fs::write(dir.path().join("meta-data"), meta_data).unwrap();
    std::fs::write(dir.path().join("user-data"), user_data).unwrap();
    let out = sh(&format!(
        "/usr/bin/python3 {} {}",
        q(&repo().join("tests/fixtures/cloudinit_seed.py")),
        q(dir.path())
    ));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// What netplan, which consumes network-config v2 on Ubuntu, makes of a
/// network-config: the systemd-networkd files `netplan generate` writes, by
/// file name.
pub fn netplan_generate(network_config: &[u8]) -> std::collections::BTreeMap<String, String> {
    let root = super::harness::scratch();
    let yaml: serde_yaml_ng::Value = serde_yaml_ng::from_slice(network_config).unwrap();
    // cloud-init writes the v2 config under a `network:` key for netplan.
    let wrapped = if yaml.get("network").is_some() {
        yaml
    } else {
        let mut m = serde_yaml_ng::Mapping::new();
        m.insert("network".into(), yaml);
        serde_yaml_ng::Value::Mapping(m)
    };
    let etc = root.path().join("etc/netplan");
    std::fs::create_dir_all(&etc).unwrap();
    let file = etc.join("50-cloud-init.yaml");
    std::fs::write(&file, serde_yaml_ng::to_string(&wrapped).unwrap()).unwrap();
    sh(&format!(
        "chmod 600 {f}; netplan generate --root-dir {r}",
        f = q(&file),
        r = q(root.path())
    ));
    let mut out = std::collections::BTreeMap::new();
    let dir = root.path().join("run/systemd/network");
    for e in std::fs::read_dir(&dir).unwrap() {
        let e = e.unwrap();
        out.insert(
            e.file_name().to_string_lossy().into_owned(),
            std::fs::read_to_string(e.path()).unwrap(),
        );
    }
    out
}
