//! Bare-metal installers (`<node>.nuc.iso`): a stand-in for Ubuntu's
//! live-server ISO built here the way Ubuntu builds it (tests/fixtures/live-iso.sh),
//! served on loopback and fetched through the manifest's `installer` source,
//! remastered by imgbuild, and read back with independent tools: xorriso and
//! osirrox, subiquity's autoinstall JSON schema (python jsonschema),
//! `cloud-init schema`, Python's tarfile, and `imgbuild render` for what the
//! payload must hold.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use sha2::{Digest, Sha256};

use crate::support::harness::*;
use crate::support::mirror::env;
use crate::support::project::{Cmd, Project, Run};

const NODE: &str = "ws03";
const SEED_DIR: &str = "/var/lib/cloud/seed/nocloud";

/// The stand-in stock ISO, built once per test binary, and its sha256.
struct Stock {
    iso: PathBuf,
    sha256: String,
}

fn sha256_file(p: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(p).unwrap()))
}

fn stock() -> &'static Stock {
    static S: OnceLock<Stock> = OnceLock::new();
    S.get_or_init(|| {
        let dir = shared_scratch().join("live-iso");
        std::fs::create_dir_all(&dir).unwrap();
        let iso = dir.join("ubuntu-24.04.3-live-server-amd64.iso");
        sh(&format!(
            "bash {} {} {}",
            q(&repo().join("tests/fixtures/live-iso.sh")),
            q(&iso),
            q(&dir.join("work"))
        ));
        let sha256 = sha256_file(&iso);
        env()
            .mirror
            .put("/releases/live-server.iso", std::fs::read(&iso).unwrap());
        Stock { iso, sha256 }
    })
}

/// A manifest directory (`manifests/` in the project, named with
/// `--manifests`) whose `nuc` installer is `path` on the loopback mirror with
/// `sha256` (the built-in manifest otherwise).
fn manifests(p: &Project, path: &str, sha256: &str) -> PathBuf {
    let builtin = std::fs::read_to_string(repo().join("firmware-manifests/nuc.yaml")).unwrap();
    let url = format!("{}{path}", env().mirror_url());
    let text = builtin
        .replace(
            "https://releases.ubuntu.com/24.04.3/ubuntu-24.04.3-live-server-amd64.iso",
            &url,
        )
        .replace(
            "c3514bf0056180d09376462a7a1b4f213c1d6e8ea67fae5c25099c6fd3d8274b",
            sha256,
        );
    assert_ne!(
        text, builtin,
        "the built-in nuc manifest has no installer to replace"
    );
    p.write("manifests/nuc.yaml", text);
    p.join("manifests")
}

/// A build of `target` with the manifests `m`.
fn build(p: &Project, m: &Path, target: &str) -> Cmd {
    p.imgbuild(["--manifests".as_ref(), m.as_os_str(), target.as_ref()])
}

/// Nothing but `keep` is left in `dir` (no partial output, no staging).
fn only_left(dir: &Path, keep: &[&str]) {
    let mut left: Vec<String> = std::fs::read_dir(dir)
        .map(|r| {
            r.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    left.retain(|n| !keep.contains(&n.as_str()));
    assert!(
        left.is_empty(),
        "left behind in {}: {left:?}",
        dir.display()
    );
}

#[test]
fn remastered_installer_reads_back() {
    let s = stock();
    let stock_before = sha256_file(&s.iso);
    let dir = Project::example();
    let m = manifests(&dir, "/releases/live-server.iso", &s.sha256);
    let started = std::time::Instant::now();
    let out = build(&dir, &m, &format!("dist/{NODE}.nuc.iso")).run();
    let took = started.elapsed();
    assert_eq!(out.code, 0, "iso build failed: {}", out.text);
    eprintln!("ISO build of {NODE} took {:.2}s", took.as_secs_f64());
    let iso = dir.path().join(format!("dist/{NODE}.nuc.iso"));
    assert!(iso.is_file());
    // The stock ISO (and the cached download) is only read.
    assert_eq!(sha256_file(&s.iso), stock_before);
    let cached = dir.cache().join("assets").join(&s.sha256);
    assert_eq!(
        sha256_file(&cached),
        s.sha256,
        "the cached installer changed"
    );
    // Only the output, its SHA256SUMS line and provenance statement remain.
    only_left(
        &dir.path().join("dist"),
        &[
            &format!("{NODE}.nuc.iso"),
            "SHA256SUMS",
            &format!("{NODE}.nuc.iso.intoto.json"),
        ],
    );
    let sums = std::fs::read_to_string(dir.path().join("dist/SHA256SUMS")).unwrap();
    assert!(sums.contains(&sha256_file(&iso)), "{sums}");

    // Boot records: El Torito BIOS and UEFI entries, the hybrid MBR and GPT.
    let report = sh(&format!(
        "xorriso -indev {} -report_el_torito plain -report_system_area plain 2>/dev/null",
        q(&iso)
    ));
    let report = String::from_utf8_lossy(&report.stdout).into_owned();
    let boot_line = |pltf: &str| {
        report
            .lines()
            .any(|l| l.starts_with("El Torito boot img") && l.split_whitespace().any(|w| w == pltf))
    };
    assert!(boot_line("BIOS"), "no BIOS El Torito entry:\n{report}");
    assert!(boot_line("UEFI"), "no UEFI El Torito entry:\n{report}");
    assert!(
        report.contains("grub2-mbr") && report.contains("GPT"),
        "{report}"
    );
    assert!(
        report.contains("28732ac11ff8d211ba4b00a0c93ec93b"),
        "the EFI partition is gone from the GPT:\n{report}"
    );

    // Everything read back with osirrox.
    let tree = dir.path().join("tree");
    sh(&format!(
        "osirrox -indev {} -extract / {} 2>/dev/null && chmod -R u+w {}",
        q(&iso),
        q(&tree),
        q(&tree)
    ));
    for kept in [
        "casper/vmlinuz",
        "casper/initrd",
        ".disk/info",
        "pool/main/l/linux/linux-generic_6.8.0_amd64.deb",
    ] {
        assert!(tree.join(kept).is_file(), "{kept} is gone");
    }
    for cfg in ["boot/grub/grub.cfg", "boot/grub/loopback.cfg"] {
        let text = std::fs::read_to_string(tree.join(cfg)).unwrap();
        let linux: Vec<&str> = text
            .lines()
            .filter(|l| l.trim_start().starts_with("linux"))
            .collect();
        assert!(!linux.is_empty(), "{cfg} has no linux lines");
        for l in &linux {
            let words: Vec<&str> = l.split_whitespace().collect();
            let auto = words.iter().position(|w| *w == "autoinstall");
            let sep = words.iter().position(|w| *w == "---");
            assert!(auto.is_some(), "{cfg}: {l:?} lacks autoinstall");
            assert!(auto < sep, "{cfg}: {l:?}: autoinstall must come before ---");
        }
        if cfg.ends_with("grub.cfg") {
            assert!(text.contains("set timeout=3\n"), "{text}");
            assert!(!text.contains("timeout=30"), "{text}");
        }
    }
    // casper's media check no longer lists the replaced GRUB configuration.
    let md5 = std::fs::read_to_string(tree.join("md5sum.txt")).unwrap();
    assert!(!md5.contains("./boot/grub/grub.cfg"), "{md5}");
    assert!(md5.contains("./casper/vmlinuz"), "{md5}");

    // autoinstall.yaml and the payload against the schema and `imgbuild render`.
    let render_text = dir.imgbuild(["render", NODE, "--contents"]).run();
    assert_eq!(render_text.code, 0, "{}", render_text.text);
    let render_json = dir.imgbuild(["render", NODE, "--json"]).run();
    assert_eq!(render_json.code, 0, "{}", render_json.text);
    std::fs::write(dir.path().join("render.txt"), &render_text.stdout).unwrap();
    std::fs::write(dir.path().join("render.json"), &render_json.stdout).unwrap();
    let schema = repo().join("../shared/oracles/subiquity-autoinstall-schema.json");
    assert!(
        schema.is_file(),
        "{} is missing (CI has ../shared beside the checkout)",
        schema.display()
    );
    let user_data = dir.path().join("user-data");
    let check = sh(&format!(
        "{} {} {} {} {} {} {} {}",
        python(),
        q(&repo().join("tests/fixtures/iso_check.py")),
        q(&tree),
        q(&schema),
        q(&dir.path().join("render.txt")),
        q(&dir.path().join("render.json")),
        SEED_DIR,
        q(&user_data)
    ));
    let summary: serde_json::Value = serde_json::from_slice(&check.stdout).unwrap();
    assert_eq!(
        summary["storage"]["layout"]["match"],
        serde_json::json!({"size": "largest"})
    );
    assert_eq!(summary["shutdown"], "poweroff");
    sh(&format!(
        "cloud-init schema --config-file {} >/dev/null",
        q(&user_data)
    ));
    let ud = std::fs::read_to_string(&user_data).unwrap();
    assert!(ud.contains("hostname: ws03"), "{ud}");
    // The payload holds the node's secrets: the ISO is private.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&iso).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode & 0o077, 0, "the ISO is readable by others: {mode:o}");
}

#[test]
fn install_disk_and_shutdown_come_from_the_profile() {
    let s = stock();
    let dir = Project::example();
    let m = manifests(&dir, "/releases/live-server.iso", &s.sha256);
    let profiles = dir.profiles();
    std::fs::write(
        profiles.join("nodes/ws03.yaml"),
        std::fs::read_to_string(repo().join("profiles/nodes/ws03.yaml")).unwrap()
            + "install:\n  disk: {serial: \"S4EVNX0N*\", model: \"Samsung SSD 980*\"}\n  shutdown: reboot\n",
    )
    .unwrap();
    let out = dir
        .imgbuild([
            "--profiles",
            profiles.to_str().unwrap(),
            "--manifests",
            m.to_str().unwrap(),
            "dist/ws03.nuc.iso",
        ])
        .run();
    assert_eq!(out.code, 0, "{}", out.text);
    let yaml = dir.path().join("autoinstall.yaml");
    sh(&format!(
        "osirrox -indev {} -extract /autoinstall.yaml {} 2>/dev/null",
        q(&dir.path().join("dist/ws03.nuc.iso")),
        q(&yaml)
    ));
    let check = sh(&format!(
        "{} -c 'import sys, json, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))' {}",
        python(),
        q(&yaml)
    ));
    let v: serde_json::Value = serde_json::from_slice(&check.stdout).unwrap();
    // `size` is always there: subiquity keeps its own boot medium out of a
    // match only when the match has one.
    assert_eq!(
        v["storage"]["layout"]["match"],
        serde_json::json!({"serial": "S4EVNX0N*", "model": "Samsung SSD 980*", "size": "largest"})
    );
    assert_eq!(v["shutdown"], "reboot");

    // A size the installer cannot match is refused by `check`, by field.
    std::fs::write(
        profiles.join("nodes/ws03.yaml"),
        "board: nuc\ninstall:\n  disk: {size: 500GB}\n  shutdown: halt\n",
    )
    .unwrap();
    let out = dir
        .imgbuild(["--profiles", profiles.to_str().unwrap(), "check"])
        .run();
    let t = &out.text;
    assert!(out.code != 0, "{t}");
    assert!(
        t.contains("install.disk.size") && t.contains("largest"),
        "{t}"
    );
    assert!(
        t.contains("install.shutdown") && t.contains("poweroff"),
        "{t}"
    );

    // Matches that never apply or that would wipe a data disk are refused.
    for (install, storage, field, reason) in [
        (
            "install:\n  disk: {path: /dev/disk/by-id/nvme-X}\n",
            "",
            "install.disk.path",
            "compares `path` with the kernel's name",
        ),
        (
            "install:\n  disk: {path: \"/dev/sd*\"}\n",
            "storage:\n  - {device: /dev/sdb, mount: /var/lib/longhorn}\n",
            "install.disk.path",
            "matches the data disk \"/dev/sdb\"",
        ),
    ] {
        std::fs::write(
            profiles.join("nodes/ws03.yaml"),
            format!("board: nuc\n{install}{storage}"),
        )
        .unwrap();
        let out = dir
            .imgbuild(["--profiles", profiles.to_str().unwrap(), "check"])
            .run();
        let t = &out.text;
        assert_eq!(out.code, 3, "{t}");
        let line = t
            .lines()
            .find(|l| l.contains("ws03.yaml") && l.contains(reason))
            .unwrap_or_else(|| panic!("no {reason:?} in\n{t}"));
        assert!(line.contains(&format!(": {field}: ")), "{line}");
    }
    // A node with data disks passes check (its .img needs no install disk),
    // but its installer is refused until it names the disk to wipe.
    std::fs::write(
        profiles.join("nodes/ws03.yaml"),
        std::fs::read_to_string(repo().join("profiles/nodes/ws03.yaml")).unwrap()
            + "storage:\n  - {device: /dev/sdb, mount: /var/lib/longhorn}\n",
    )
    .unwrap();
    let out = dir
        .imgbuild(["--profiles", profiles.to_str().unwrap(), "check"])
        .run();
    assert_eq!(out.code, 0, "{}", out.text);
    let iso = dir.path().join("dist/ws03.nuc.iso");
    let before = std::fs::metadata(&iso).unwrap().modified().unwrap();
    let out = dir
        .imgbuild([
            "--profiles",
            profiles.to_str().unwrap(),
            "--manifests",
            m.to_str().unwrap(),
            "dist/ws03.nuc.iso",
        ])
        .run();
    let t = &out.text;
    assert_eq!(out.code, 3, "{t}");
    assert!(t.contains("install.disk: node ws03 has data disks"), "{t}");
    let after = std::fs::metadata(&iso).unwrap().modified().unwrap();
    assert_eq!(after, before, "the ISO was replaced");
    // Naming the system disk next to data disks is accepted.
    std::fs::write(
        profiles.join("nodes/ws03.yaml"),
        "board: nuc\ninstall:\n  disk: {serial: \"*S64DNX0R123456\"}\nstorage:\n  - {device: /dev/sdb, mount: /var/lib/longhorn}\n",
    )
    .unwrap();
    let out = dir
        .imgbuild(["--profiles", profiles.to_str().unwrap(), "check"])
        .run();
    assert_eq!(out.code, 0, "{}", out.text);
}

#[test]
fn missing_xorriso_names_the_package() {
    let s = stock();
    let dir = Project::example();
    let m = manifests(&dir, "/releases/live-server.iso", &s.sha256);
    let empty = dir.path().join("empty-path");
    std::fs::create_dir_all(&empty).unwrap();
    let out = dir
        .imgbuild(["--manifests", m.to_str().unwrap(), "dist/ws03.nuc.iso"])
        .env("PATH", &empty)
        .run();
    let t = &out.text;
    assert_eq!(out.code, 1, "{t}");
    assert!(
        t.contains("xorriso is not installed") && t.contains("apt-get install xorriso"),
        "{t}"
    );
    only_left(&dir.path().join("dist"), &[]);
}

#[test]
fn corrupt_installer_is_refused_clearly() {
    let _ = stock();
    let dir = Project::example();
    // Right digest, wrong content: what a truncated or mislabelled pin serves.
    let garbage = b"<html>not an ISO</html>".repeat(4000);
    let sha = hex::encode(Sha256::digest(&garbage));
    env().mirror.put("/releases/garbage.iso", garbage);
    let m = manifests(&dir, "/releases/garbage.iso", &sha);
    let out = build(&dir, &m, "dist/ws03.nuc.iso").run();
    let t = &out.text;
    assert_eq!(out.code, 1, "{t}");
    assert!(
        t.contains("not an ISO 9660 image") && t.contains("CD001"),
        "{t}"
    );
    only_left(&dir.path().join("dist"), &[]);

    // A download that does not match the pinned digest never gets that far.
    let m = manifests(&dir, "/releases/live-server.iso", &"0".repeat(64));
    let out = build(&dir, &m, "dist/ws03.nuc.iso").run();
    let t = &out.text;
    assert_eq!(out.code, 1, "{t}");
    assert!(t.contains("sha256"), "{t}");
    only_left(&dir.path().join("dist"), &[]);
}

#[test]
fn iso_targets_refused_where_they_cannot_be_built() {
    let dir = Project::example();
    // rk1 has no installer in its manifest.
    let out = dir.imgbuild(["dist/node02.rk1.iso"]).run();
    let t = &out.text;
    assert_eq!(out.code, 2, "{t}");
    assert!(
        t.contains("no `installer`") && t.contains("node02.rk1.img"),
        "{t}"
    );
    assert!(!dir.path().join("dist").exists());
}

// ---- `imgbuild usb`: a regular file stands in for the stick, with a fake
// sysfs tree and mount table (IMGBUILD_SYSFS_ROOT, IMGBUILD_MOUNTINFO).

/// A fake `/sys` and `/proc/self/mountinfo` with one disk `name`.
struct FakeSystem {
    sysfs: PathBuf,
    mountinfo: PathBuf,
    device: PathBuf,
}

#[derive(Clone, Copy)]
enum Bus {
    Usb,
    /// An internal NVMe disk (not removable).
    Internal,
    /// A removable disk on an internal card reader (not USB).
    Removable,
}

const ROOT_ON_NVME: &str = "22 1 259:2 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p2 rw\n";

fn fake_system(dir: &Path, name: &str, bus: Bus, sectors: u64, mountinfo: &str) -> FakeSystem {
    let sysfs = dir.join("sys");
    let host = match bus {
        Bus::Usb => "devices/pci0000:00/0000:00:14.0/usb2/2-1/2-1:1.0/host6/target6:0:0/6:0:0:0",
        Bus::Internal => "devices/pci0000:00/0000:00:1d.0/0000:3a:00.0/nvme/nvme0",
        Bus::Removable => "devices/pci0000:00/0000:00:1c.0/mmc_host/mmc0/mmc0:aaaa",
    };
    let disk = sysfs.join(host).join("block").join(name);
    std::fs::create_dir_all(disk.join(format!("{name}1"))).unwrap();
    std::fs::create_dir_all(disk.join("holders")).unwrap();
    std::fs::create_dir_all(disk.join(format!("{name}1/holders"))).unwrap();
    let w = |p: PathBuf, s: &str| std::fs::write(p, s).unwrap();
    w(disk.join("dev"), "8:16\n");
    w(disk.join("size"), &format!("{sectors}\n"));
    w(
        disk.join("removable"),
        if matches!(bus, Bus::Internal) {
            "0\n"
        } else {
            "1\n"
        },
    );
    w(disk.join(format!("{name}1/partition")), "1\n");
    w(disk.join(format!("{name}1/dev")), "8:17\n");
    w(sysfs.join(host).join("model"), "Cruzer Blade    \n");
    w(sysfs.join(host).join("vendor"), "SanDisk \n");
    if matches!(bus, Bus::Usb) {
        w(
            sysfs.join("devices/pci0000:00/0000:00:14.0/usb2/2-1/serial"),
            "4C530001231107115485\n",
        );
    }
    std::os::unix::fs::symlink("../..", disk.join("device")).unwrap();
    for (link, up) in [("block", ".."), ("class/block", "../..")] {
        std::fs::create_dir_all(sysfs.join(link)).unwrap();
        std::os::unix::fs::symlink(
            format!("{up}/{host}/block/{name}"),
            sysfs.join(link).join(name),
        )
        .unwrap();
        std::os::unix::fs::symlink(
            format!("{up}/{host}/block/{name}/{name}1"),
            sysfs.join(link).join(format!("{name}1")),
        )
        .unwrap();
    }
    let mountinfo_path = dir.join("mountinfo");
    std::fs::write(&mountinfo_path, mountinfo).unwrap();
    let devdir = dir.join("dev");
    std::fs::create_dir_all(&devdir).unwrap();
    let device = devdir.join(name);
    std::fs::write(&device, b"").unwrap();
    std::fs::write(devdir.join(format!("{name}1")), b"").unwrap();
    FakeSystem {
        sysfs,
        mountinfo: mountinfo_path,
        device,
    }
}

/// ws03's installer, built once per test binary (sealed).
fn installer() -> &'static Stock {
    static I: OnceLock<Stock> = OnceLock::new();
    I.get_or_init(|| {
        let s = stock();
        // Built by a project of its own, into the directory every test of
        // this binary shares (the project goes, the installer stays).
        let p = Project::example();
        let m = manifests(&p, "/releases/live-server.iso", &s.sha256);
        let iso = shared_scratch().join("installer/dist/ws03.nuc.iso");
        build(&p, &m, iso.to_str().unwrap()).ok();
        let sha256 = sha256_file(&iso);
        Stock { iso, sha256 }
    })
}

/// `imgbuild usb` with `args`, on the fake system `sys`.
fn usb(p: &Project, sys: &FakeSystem, args: &[&str]) -> Cmd {
    p.imgbuild(["usb"])
        .args(args)
        .env("IMGBUILD_SYSFS_ROOT", &sys.sysfs)
        .env("IMGBUILD_MOUNTINFO", &sys.mountinfo)
}

const GIB_SECTORS: u64 = 2 * 1024 * 1024;

/// What is refused, the disk's bus and size (sectors), the mount table, the
/// device-name suffix given (`1`: a partition) and what the message says.
type RefusalCase = (
    &'static str,
    Bus,
    u64,
    String,
    &'static str,
    &'static [&'static str],
);

#[test]
fn usb_writes_and_verifies() {
    let s = installer();
    let dir = Project::example();
    let sys = fake_system(dir.path(), "sdx", Bus::Usb, 8 * GIB_SECTORS, ROOT_ON_NVME);
    let dev = sys.device.to_str().unwrap();
    let out = usb(
        &dir,
        &sys,
        &[
            "ws03",
            "--device",
            dev,
            "--iso",
            s.iso.to_str().unwrap(),
            "--yes",
        ],
    )
    .run();
    let t = &out.text;
    assert_eq!(out.code, 0, "{t}");
    assert!(
        t.contains("flashed") && t.contains("wrote and verified"),
        "{t}"
    );
    assert_eq!(
        std::fs::read(&sys.device).unwrap(),
        std::fs::read(&s.iso).unwrap()
    );

    // Without --iso the node's installer is built into --out-dir first, then written.
    let m = manifests(&dir, "/releases/live-server.iso", &stock().sha256);
    let out = usb(
        &dir,
        &sys,
        &[
            "--manifests",
            m.to_str().unwrap(),
            "ws03",
            "--device",
            dev,
            "--yes",
            "--json",
        ],
    )
    .run();
    let t = &out.text;
    assert_eq!(out.code, 0, "{t}");
    let built = dir.path().join("dist/ws03.nuc.iso");
    assert_eq!(
        std::fs::read(&sys.device).unwrap(),
        std::fs::read(&built).unwrap()
    );
    let report = out.json();
    assert_eq!(report[0]["result"], "flashed", "{report}");
    assert_eq!(report[0]["sha256"], sha256_file(&built));

    // No terminal and no --yes: refused before a byte is written.
    std::fs::write(&sys.device, b"").unwrap();
    let out = usb(
        &dir,
        &sys,
        &["ws03", "--device", dev, "--iso", s.iso.to_str().unwrap()],
    )
    .run();
    let t = &out.text;
    assert_eq!(out.code, 2, "{t}");
    assert!(
        t.contains("without confirmation") && t.contains("--yes"),
        "{t}"
    );
    assert!(
        t.contains("SanDisk Cruzer Blade") && t.contains("4C530001231107115485"),
        "the question names model and serial: {t}"
    );
    assert_eq!(std::fs::metadata(&sys.device).unwrap().len(), 0);
}

#[test]
fn usb_refuses_the_wrong_disks() {
    let s = installer();
    let iso = s.iso.to_str().unwrap();
    let cases: [RefusalCase; 6] = [
        (
            "internal",
            Bus::Internal,
            8 * GIB_SECTORS,
            ROOT_ON_NVME.into(),
            "",
            &["neither removable nor attached over USB"],
        ),
        (
            "mounted",
            Bus::Usb,
            8 * GIB_SECTORS,
            format!(
                "{ROOT_ON_NVME}40 22 8:17 / /media/admin/STICK rw,nosuid - vfat /dev/sdx1 rw\n"
            ),
            "",
            &["/dev/sdx1 is mounted at /media/admin/STICK", "umount"],
        ),
        (
            "root",
            Bus::Usb,
            8 * GIB_SECTORS,
            "22 1 8:17 / / rw - ext4 /dev/sdx1 rw\n".into(),
            "",
            &["holds the running system's root file system"],
        ),
        (
            "small",
            Bus::Usb,
            2048,
            ROOT_ON_NVME.into(),
            "",
            &["the stick has 1048576 bytes", "larger stick"],
        ),
        (
            "partition",
            Bus::Usb,
            8 * GIB_SECTORS,
            ROOT_ON_NVME.into(),
            "1",
            &["is a partition", "/dev/sdx"],
        ),
        // A removable card reader disk that is not USB is fine; it is refused
        // here only because something holds it (see below).
        (
            "held",
            Bus::Removable,
            8 * GIB_SECTORS,
            ROOT_ON_NVME.into(),
            "",
            &["in use by dm-0"],
        ),
    ];
    for (what, bus, sectors, mountinfo, suffix, needles) in cases {
        let dir = Project::example();
        let sys = fake_system(dir.path(), "sdx", bus, sectors, &mountinfo);
        if what == "held" {
            std::fs::write(sys.sysfs.join("block/sdx/sdx1/holders/dm-0"), b"").unwrap();
        }
        let dev = format!("{}{suffix}", sys.device.display());
        let out = usb(
            &dir,
            &sys,
            &["ws03", "--device", &dev, "--iso", iso, "--yes"],
        )
        .run();
        let t = &out.text;
        assert_eq!(out.code, 2, "{what}: {t}");
        for n in needles {
            assert!(t.contains(n), "{what}: expected {n:?} in: {t}");
        }
        assert_eq!(
            std::fs::metadata(&dev).unwrap().len(),
            0,
            "{what}: the device was written"
        );
        only_left(&dir.path().join("dist"), &[]);
    }
}

#[test]
fn usb_refuses_an_iso_imgbuild_did_not_build() {
    let dir = Project::example();
    let sys = fake_system(dir.path(), "sdx", Bus::Usb, 8 * GIB_SECTORS, ROOT_ON_NVME);
    let out = usb(
        &dir,
        &sys,
        &[
            "ws03",
            "--device",
            sys.device.to_str().unwrap(),
            "--iso",
            stock().iso.to_str().unwrap(),
            "--yes",
        ],
    )
    .run();
    let t = &out.text;
    assert_eq!(out.code, 1, "{t}");
    assert!(t.contains("not an installer imgbuild built"), "{t}");
    assert_eq!(std::fs::metadata(&sys.device).unwrap().len(), 0);
    only_left(&dir.path().join("dist"), &[]);
}

#[test]
fn usb_rebuilds_an_installer_made_from_other_profiles() {
    let dir = Project::example();
    let m = manifests(&dir, "/releases/live-server.iso", &stock().sha256);
    let profiles = dir.profiles();
    let sys = fake_system(dir.path(), "sdx", Bus::Usb, 8 * GIB_SECTORS, ROOT_ON_NVME);
    let args = [
        "--profiles",
        profiles.to_str().unwrap(),
        "--manifests",
        m.to_str().unwrap(),
        "ws03",
        "--device",
        sys.device.to_str().unwrap(),
        "--yes",
    ];
    let out = usb(&dir, &sys, &args).run();
    assert_eq!(out.code, 0, "{}", out.text);
    let iso = dir.path().join("dist/ws03.nuc.iso");
    let first = sha256_file(&iso);
    // Reused while the profiles are the same.
    let out = usb(&dir, &sys, &args).run();
    assert_eq!(out.code, 0, "{}", out.text);
    assert!(!out.text.contains("rebuilding"), "{}", out.text);
    assert_eq!(sha256_file(&iso), first);
    // A changed profile: the stale installer is rebuilt, not written.
    let node = profiles.join("nodes/ws03.yaml");
    let yaml = std::fs::read_to_string(&node).unwrap();
    std::fs::write(
        &node,
        yaml.replace(
            "node-role: workstation",
            "node-role: workstation\n    zone: attic",
        ),
    )
    .unwrap();
    let out = usb(&dir, &sys, &args).run();
    let t = &out.text;
    assert_eq!(out.code, 0, "{t}");
    assert!(t.contains("built from other profiles; rebuilding"), "{t}");
    assert_ne!(sha256_file(&iso), first);
    assert_eq!(
        std::fs::read(&sys.device).unwrap(),
        std::fs::read(&iso).unwrap()
    );
}

#[test]
fn usb_write_failure_is_not_reported_done() {
    let s = installer();
    let dir = Project::example();
    // /dev/full fails every write with ENOSPC, as a stick that dies would.
    let sys = fake_system(dir.path(), "full", Bus::Usb, 8 * GIB_SECTORS, ROOT_ON_NVME);
    let out = usb(
        &dir,
        &sys,
        &[
            "ws03",
            "--device",
            "/dev/full",
            "--iso",
            s.iso.to_str().unwrap(),
            "--yes",
        ],
    )
    .run();
    let t = &out.text;
    assert_eq!(out.code, 1, "{t}");
    assert!(
        t.contains("writing failed after 0 of") && t.contains("incomplete installer"),
        "{t}"
    );
    assert!(!out.stdout.contains("flashed"), "{t}");
}

#[test]
fn usb_interrupted_write_is_not_reported_done() {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let s = installer();
    let dir = Project::example();
    let sys = fake_system(dir.path(), "sdy", Bus::Usb, 8 * GIB_SECTORS, ROOT_ON_NVME);
    // A FIFO for the device: writes block once its buffer is full, so the
    // interrupt lands in the middle of the write.
    std::fs::remove_file(&sys.device).unwrap();
    sh(&format!("mkfifo {}", q(&sys.device)));
    let mut reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&sys.device)
        .unwrap();
    let child = usb(
        &dir,
        &sys,
        &[
            "ws03",
            "--device",
            sys.device.to_str().unwrap(),
            "--iso",
            s.iso.to_str().unwrap(),
            "--yes",
        ],
    )
    .command()
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    // Wait until the first bytes arrive: the write has started.
    let mut buf = [0u8; 4096];
    let started = std::time::Instant::now();
    loop {
        match reader.read(&mut buf) {
            Ok(n) if n > 0 => break,
            _ if started.elapsed() > std::time::Duration::from_secs(60) => {
                panic!("no write started")
            }
            _ => std::thread::sleep(std::time::Duration::from_millis(20)),
        }
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = Run::from(&child.wait_with_output().unwrap());
    let t = &out.text;
    assert_eq!(out.code, 130, "{t}");
    assert!(
        t.contains("interrupted while writing") && t.contains("incomplete installer"),
        "{t}"
    );
    assert!(!out.stdout.contains("flashed"), "{t}");
    drop(reader);
}

#[test]
fn interrupted_iso_build_leaves_nothing() {
    use std::os::unix::process::CommandExt;
    let s = stock();
    let dir = Project::example();
    let m = manifests(&dir, "/releases/live-server.iso", &s.sha256);
    // An xorriso that hangs when asked to write the remastered ISO, so the
    // interrupt lands while the partial output and staging exist.
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let marker = dir.path().join("remastering");
    let real = String::from_utf8(sh("command -v xorriso").stdout).unwrap();
    std::fs::write(
        bin.join("xorriso"),
        format!(
            "#!/bin/sh\ncase \" $* \" in *\" -outdev \"*) : > {}; exec sleep 60;; esac\nexec {} \"$@\"\n",
            q(&marker),
            real.trim()
        ),
    )
    .unwrap();
    sh(&format!("chmod +x {}", q(&bin.join("xorriso"))));
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let child = build(&dir, &m, "dist/ws03.nuc.iso")
        .env("PATH", path)
        .command()
        .process_group(0)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = std::time::Instant::now();
    while !marker.exists() {
        assert!(
            started.elapsed().as_secs() < 120,
            "the remaster never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let dist = dir.path().join("dist");
    assert!(
        std::fs::read_dir(&dist).unwrap().count() >= 2,
        "no partial output or staging to clean up"
    );
    // Ctrl-C reaches the whole process group, as on a terminal.
    unsafe { libc::kill(-(child.id() as i32), libc::SIGINT) };
    let out = Run::from(&child.wait_with_output().unwrap());
    let t = &out.text;
    assert_eq!(out.code, 130, "{t}");
    only_left(&dist, &[]);
}

/// A kernel for the boot test: `IMGBUILD_TEST_KERNEL`, else the host's newest
/// `/boot/vmlinuz-*`.
fn test_kernel() -> Option<PathBuf> {
    if let Some(k) = std::env::var_os("IMGBUILD_TEST_KERNEL") {
        return Some(PathBuf::from(k)).filter(|p| p.is_file());
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/boot")
        .ok()?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .collect();
    found.sort();
    found.pop()
}

/// Boots `iso` as a disk (the way a stick boots) under QEMU with SeaBIOS or
/// OVMF; returns the serial console's output.
fn boot(iso: &Path, work: &Path, ovmf: Option<&Path>) -> String {
    let log = work.join(if ovmf.is_some() {
        "serial-uefi.log"
    } else {
        "serial-bios.log"
    });
    let mut args = vec![
        "-accel".to_string(),
        "tcg".into(),
        "-m".into(),
        "512".into(),
        "-display".into(),
        "none".into(),
        "-no-reboot".into(),
        "-snapshot".into(),
        "-serial".into(),
        format!("file:{}", log.display()),
        "-drive".into(),
        format!("file={},format=raw,media=disk", iso.display()),
    ];
    if let Some(code) = ovmf {
        let vars = work.join("OVMF_VARS.fd");
        std::fs::copy("/usr/share/OVMF/OVMF_VARS_4M.fd", &vars).unwrap();
        args.extend([
            "-drive".into(),
            format!("if=pflash,format=raw,readonly=on,file={}", code.display()),
            "-drive".into(),
            format!("if=pflash,format=raw,file={}", vars.display()),
        ]);
    }
    let out = std::process::Command::new("timeout")
        .arg("300")
        .arg("qemu-system-x86_64")
        .args(&args)
        .output()
        .expect("qemu runs");
    let serial = String::from_utf8_lossy(&std::fs::read(&log).unwrap_or_default()).into_owned();
    assert!(
        out.status.success(),
        "qemu failed ({}): {}\nserial:\n{serial}",
        out.status,
        text(&out)
    );
    serial
}

#[test]
fn remastered_installer_boots_with_autoinstall_bios_and_uefi() {
    let Some(kernel) = test_kernel() else {
        skipped(
            "booting the installer under QEMU",
            "no kernel: set IMGBUILD_TEST_KERNEL or install one in /boot",
        );
        return;
    };
    if std::process::Command::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_err()
    {
        skipped(
            "booting the installer under QEMU",
            "qemu-system-x86_64 is not installed",
        );
        return;
    }
    let dir = Project::example();
    let initrd = dir.path().join("initrd");
    sh(&format!(
        "bash {} {} {}",
        q(&repo().join("tests/fixtures/cmdline-initrd.sh")),
        q(&initrd),
        q(&dir.path().join("initrd-work"))
    ));
    let stock = dir.path().join("bootable-live.iso");
    sh(&format!(
        "bash {} {} {} {} {}",
        q(&repo().join("tests/fixtures/live-iso.sh")),
        q(&stock),
        q(&dir.path().join("live")),
        q(&kernel),
        q(&initrd)
    ));
    let sha = sha256_file(&stock);
    env().mirror.put(
        "/releases/bootable-live.iso",
        std::fs::read(&stock).unwrap(),
    );
    let m = manifests(&dir, "/releases/bootable-live.iso", &sha);
    let out = build(&dir, &m, "dist/ws03.nuc.iso").run();
    assert_eq!(out.code, 0, "{}", out.text);
    let iso = dir.path().join("dist/ws03.nuc.iso");

    let ovmf = Path::new("/usr/share/OVMF/OVMF_CODE_4M.fd");
    let uefi = ovmf.is_file();
    if !uefi {
        skipped(
            "booting the installer under OVMF (UEFI)",
            "package ovmf is not installed",
        );
    }
    // Both firmwares at once: TCG boots take tens of seconds each.
    let (bios_log, uefi_log) = std::thread::scope(|s| {
        let work = dir.path();
        let b = s.spawn(|| boot(&iso, work, None));
        let u = s.spawn(|| uefi.then(|| boot(&iso, work, Some(ovmf))));
        (b.join().unwrap(), u.join().unwrap())
    });
    for (firmware, log) in [("SeaBIOS", Some(bios_log)), ("OVMF", uefi_log)] {
        let Some(log) = log else { continue };
        let line = log
            .lines()
            .find(|l| l.starts_with("IMGBUILD-CMDLINE:"))
            .unwrap_or_else(|| panic!("{firmware}: the fixture kernel never ran:\n{log}"));
        let words: Vec<&str> = line.split_whitespace().collect();
        let auto = words.iter().position(|w| *w == "autoinstall");
        let sep = words.iter().position(|w| *w == "---");
        assert!(auto.is_some() && auto < sep, "{firmware}: {line}");
        assert!(
            words.contains(&"BOOT_IMAGE=/casper/vmlinuz"),
            "{firmware}: {line}"
        );
    }
}

/// What `render` gives NODE, each file as {target, path, mode, uid, gid,
/// secret, contents_hex}.
fn rendered(p: &Project) -> Vec<serde_json::Value> {
    p.rendered(NODE)
        .into_iter()
        .map(|f| {
            serde_json::json!({
                "target": f.target.to_string(),
                "path": f.path,
                "mode": f.mode,
                "uid": f.uid,
                "gid": f.gid,
                "secret": f.secret,
                "contents_hex": hex::encode(&f.contents),
            })
        })
        .collect()
}

#[test]
fn unsealed_installer_carries_no_secrets_and_usb_seals_it() {
    let s = stock();
    let dir = Project::example();
    // The cluster's secrets exist (an operator made them): `render` shows
    // their values, and `usb` seals with them.
    dir.imgbuild(["secrets", "--generate"]).ok();
    let m = manifests(&dir, "/releases/live-server.iso", &s.sha256);
    let out = dir
        .imgbuild([
            "--manifests",
            m.to_str().unwrap(),
            "--unsealed",
            "dist/ws03.nuc.iso",
        ])
        .run();
    assert_eq!(out.code, 0, "{}", out.text);
    let iso = dir.path().join("dist/ws03.nuc.iso");
    let before = sha256_file(&iso);
    let files = rendered(&dir);
    let secret: Vec<&serde_json::Value> = files.iter().filter(|f| f["secret"] == true).collect();
    assert!(
        secret.len() >= 4,
        "ws03 renders too few secret files: {secret:?}"
    );
    // Not one secret file's contents anywhere in the ISO's bytes.
    let bytes = std::fs::read(&iso).unwrap();
    for f in &secret {
        let c = hex::decode(f["contents_hex"].as_str().unwrap()).unwrap();
        if c.len() >= 16 {
            assert!(
                !bytes.windows(c.len()).any(|w| w == c.as_slice()),
                "the unsealed ISO holds {}",
                f["path"]
            );
        }
    }
    // Booted as it is, the installer stops before touching a disk.
    let yaml = dir.path().join("unsealed.yaml");
    sh(&format!(
        "osirrox -indev {} -extract /autoinstall.yaml {} 2>/dev/null",
        q(&iso),
        q(&yaml)
    ));
    let t = std::fs::read_to_string(&yaml).unwrap();
    assert!(
        t.contains("early-commands") && t.contains("unsealed") && t.contains("exit 1"),
        "{t}"
    );

    // `usb` seals it on the way to the stick; the artifact is not modified.
    let sys = fake_system(dir.path(), "sdx", Bus::Usb, 8 * GIB_SECTORS, ROOT_ON_NVME);
    let out = usb(
        &dir,
        &sys,
        &[
            "ws03",
            "--device",
            sys.device.to_str().unwrap(),
            "--iso",
            iso.to_str().unwrap(),
            "--yes",
        ],
    )
    .run();
    assert_eq!(out.code, 0, "{}", out.text);
    assert_eq!(sha256_file(&iso), before, "the unsealed ISO was modified");
    only_left(
        &dir.path().join("dist"),
        &["ws03.nuc.iso", "SHA256SUMS", "ws03.nuc.iso.intoto.json"],
    );
    let tree = dir.path().join("stick");
    sh(&format!(
        "osirrox -indev {} -extract / {} 2>/dev/null && chmod -R u+w {}",
        q(&sys.device),
        q(&tree),
        q(&tree)
    ));
    let expected = dir.path().join("secret-files.json");
    std::fs::write(&expected, serde_json::to_vec(&secret).unwrap()).unwrap();
    let schema = repo().join("../shared/oracles/subiquity-autoinstall-schema.json");
    let check = r#"
import hashlib, json, sys, tarfile, jsonschema, yaml
tree, expected, schema, seed = sys.argv[1:5]
auto = yaml.safe_load(open(tree + "/autoinstall.yaml"))
jsonschema.validate(auto, json.load(open(schema)))
assert "early-commands" not in auto, auto.get("early-commands")
digest = hashlib.sha256(open(tree + "/imgbuild/secrets.tar", "rb").read()).hexdigest()
late = auto["late-commands"]
assert any(digest in c and "sha256sum -c" in c for c in late), late
assert late[-1].startswith("tar -x") and "/cdrom/imgbuild/secrets.tar" in late[-1], late
want = {}
for f in json.load(open(expected)):
    path = (seed + f["path"]) if f["target"] == "seed" else f["path"]
    want[path.lstrip("/")] = f
with tarfile.open(tree + "/imgbuild/secrets.tar") as t:
    got = {m.name: m for m in t.getmembers()}
    extra = set(got) - set(want) - {seed.lstrip("/") + "/imgbuild.json"}
    assert not extra, extra
    assert set(want) <= set(got), set(want) - set(got)
    for name, f in want.items():
        m = got[name]
        assert (m.mode & 0o7777, m.uid, m.gid) == (f["mode"], f["uid"], f["gid"]), name
        assert t.extractfile(m).read() == bytes.fromhex(f["contents_hex"]), name
    prov = json.loads(t.extractfile(got[seed.lstrip("/") + "/imgbuild.json"]).read())
    assert prov["unsealed"] is False, prov
assert json.load(open(tree + "/imgbuild/provenance.json"))["unsealed"] is False
print(len(want))
"#;
    let out = sh(&format!(
        "{} -c {} {} {} {} {SEED_DIR}",
        python(),
        q(Path::new(check)),
        q(&tree),
        q(&expected),
        q(&schema)
    ));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        secret.len().to_string()
    );
}

/// path -> (mode, uid, gid, sha256) of the regular files in a tar, read by
/// Python's tarfile.
fn tar_entries(tar: &Path) -> std::collections::BTreeMap<String, (u32, u32, u32, String)> {
    let script = tar.with_extension("py");
    std::fs::write(
        &script,
        "import hashlib, json, sys, tarfile\n\
         t = tarfile.open(sys.argv[1])\n\
         print(json.dumps({'/' + m.name: [m.mode, m.uid, m.gid, hashlib.sha256(t.extractfile(m).read()).hexdigest()] for m in t.getmembers() if m.isfile()}))\n",
    )
    .unwrap();
    let out = sh(&format!("{} {} {}", python(), q(&script), q(tar)));
    let v: std::collections::BTreeMap<String, (u32, u32, u32, String)> =
        serde_json::from_slice(&out.stdout).unwrap();
    v
}

/// The same, for every regular file directly in `dir` of an ext4 file
/// system, through debugfs (`stat` and `cat`).
fn ext4_entries(
    part: &Path,
    dir: &str,
) -> std::collections::BTreeMap<String, (u32, u32, u32, String)> {
    let ls = sh(&format!(
        "debugfs -R {} {} 2>/dev/null",
        q(Path::new(&format!("ls -p {dir}"))),
        q(part)
    ));
    let mut out = std::collections::BTreeMap::new();
    for line in String::from_utf8_lossy(&ls.stdout).lines() {
        // /inode/mode/uid/gid/name/size/
        let f: Vec<&str> = line.split('/').collect();
        if f.len() < 7 || !f[2].starts_with("100") {
            continue;
        }
        let mode = u32::from_str_radix(&f[2][3..], 8).unwrap();
        let path = format!("{dir}/{}", f[5]);
        let body = sh(&format!(
            "debugfs -R {} {} 2>/dev/null",
            q(Path::new(&format!("cat {path}"))),
            q(part)
        ));
        out.insert(
            path,
            (
                mode,
                f[3].parse().unwrap(),
                f[4].parse().unwrap(),
                hex::encode(Sha256::digest(&body.stdout)),
            ),
        );
    }
    out
}

/// An installer carries everything a bake of the same node writes beyond its
/// overlays: for a NUC that creates the cluster, the `cluster.images` and
/// node `images` archives and the bootstrap manifest and HelmChart, with the
/// same paths, modes, owners and bytes as in the raw image's root.
#[test]
fn installer_holds_the_image_archives_and_bootstrap_files_a_bake_writes() {
    use crate::support::chart::{PLAIN_TEMPLATE, chart_tgz, sha256_hex};
    let s = stock();
    let dir = Project::example();
    let profiles = dir.profiles();
    let edit = |file: &str, from: &str, to: &str| {
        dir.edit(&format!("profiles/{file}"), from, to);
    };
    // ws03 (a NUC) creates the cluster instead of node01.
    edit(
        "nodes/node01.yaml",
        "cluster_init: true",
        "cluster_init: false",
    );
    edit(
        "nodes/ws03.yaml",
        "k3s:\n",
        "k3s:\n  role: server\n  cluster_init: true\n",
    );
    let reg = crate::support::registry::Registry::start();
    let app = reg.serve_image("team/app", false);
    let tool = reg.serve_image("team/tool", false);
    edit(
        "nodes/ws03.yaml",
        "board: nuc\n",
        &format!("board: nuc\nimages: [\"{}\"]\n", tool.reference),
    );
    let tgz = chart_tgz(dir.path(), PLAIN_TEMPLATE);
    let charts = crate::support::http::Server::start(Default::default());
    charts.put("/charts/demo-0.1.0.tgz", tgz.clone());
    std::fs::create_dir_all(profiles.join("manifests")).unwrap();
    std::fs::write(
        profiles.join("manifests/gitops.yaml"),
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: gitops\n",
    )
    .unwrap();
    edit(
        "cluster.yaml",
        "    disable: [traefik]\n",
        &format!(
            "    disable: [traefik]\n  images: [\"{}\"]\n  bootstrap:\n    manifests: [gitops.yaml]\n    charts:\n      - name: demo\n        repo: http://127.0.0.1:{}/charts\n        chart: demo\n        version: 0.1.0\n        sha256: {}\n        namespace: demo\n",
            app.reference,
            charts.port,
            sha256_hex(&tgz)
        ),
    );
    let m = manifests(&dir, "/releases/live-server.iso", &s.sha256);
    let fx = crate::support::fixtures::fixtures();
    let base = format!("nuc={}", fx.nuc.path.display());
    let p = profiles.to_str().unwrap();
    let img = dir
        .imgbuild([
            "--profiles",
            p,
            "--base",
            &base,
            "--no-shrink",
            "dist/ws03.nuc.img",
        ])
        .run();
    assert_eq!(img.code, 0, "bake failed: {}", img.text);
    let iso = dir
        .imgbuild([
            "--profiles",
            p,
            "--manifests",
            m.to_str().unwrap(),
            "dist/ws03.nuc.iso",
        ])
        .run();
    assert_eq!(iso.code, 0, "iso build failed: {}", iso.text);

    let work = dir.path().join("read");
    std::fs::create_dir(&work).unwrap();
    let part = crate::support::fixtures::fsck_ext4(
        &fx.nuc,
        &dir.path().join("dist/ws03.nuc.img"),
        1,
        &work,
    );
    let tar = work.join("root.tar");
    sh(&format!(
        "osirrox -indev {} -extract /imgbuild/root.tar {} 2>/dev/null",
        q(&dir.path().join("dist/ws03.nuc.iso")),
        q(&tar)
    ));
    let payload = tar_entries(&tar);
    let mut compared = 0;
    for d in [
        "/var/lib/rancher/k3s/agent/images",
        "/var/lib/rancher/k3s/server/manifests",
    ] {
        let baked = ext4_entries(&part, d);
        let carried: std::collections::BTreeMap<_, _> = payload
            .iter()
            .filter(|(p, _)| p.rsplit_once('/').map(|(parent, _)| parent) == Some(d))
            .map(|(p, v)| (p.clone(), v.clone()))
            .collect();
        assert_eq!(
            carried, baked,
            "{d}: the installer's payload differs from the bake"
        );
        compared += baked.len();
    }
    for want in [
        format!(
            "/var/lib/rancher/k3s/agent/images/imgbuild-app-{}.tar",
            &app.index_digest[..12]
        ),
        format!(
            "/var/lib/rancher/k3s/agent/images/imgbuild-tool-{}.tar",
            &tool.index_digest[..12]
        ),
        "/var/lib/rancher/k3s/server/manifests/imgbuild-bootstrap-gitops.yaml".to_string(),
        "/var/lib/rancher/k3s/server/manifests/imgbuild-chart-demo.yaml".to_string(),
    ] {
        assert!(
            payload.contains_key(&want),
            "{want} is not in the payload: {payload:#?}"
        );
    }
    assert!(compared >= 4, "{compared} files compared");
    // The installer's statement names the image and chart inputs as well.
    let st = std::fs::read_to_string(dir.path().join("dist/ws03.nuc.iso.intoto.json")).unwrap();
    for want in [&app.index_digest, &tool.index_digest, &sha256_hex(&tgz)] {
        assert!(
            st.contains(want.as_str()),
            "{want} not in the statement: {st}"
        );
    }
}
