//! Bare-metal installers (`<node>.nuc.iso`): a stand-in for Ubuntu's
//! live-server ISO built here the way Ubuntu builds it (tests/fixtures/live-iso.sh),
//! served on loopback and fetched through the manifest's `installer` source,
//! remastered by imgbuild, and read back with independent tools: xorriso and
//! osirrox, subiquity's autoinstall JSON schema (python jsonschema),
//! `cloud-init schema`, Python's tarfile, and `imgbuild render` for what the
//! payload must hold.

mod support {
    pub mod harness;
    pub mod http;
    pub mod mirror;
}

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;

use sha2::{Digest, Sha256};
use support::{harness::*, mirror::*};

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

/// A manifest directory whose `nuc` installer is `path` on the loopback
/// mirror with `sha256` (the built-in manifest otherwise).
fn manifests(dir: &Path, path: &str, sha256: &str) -> PathBuf {
    let m = dir.join("manifests");
    std::fs::create_dir_all(&m).unwrap();
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
    std::fs::write(m.join("nuc.yaml"), text).unwrap();
    m
}

/// imgbuild with the example profiles, this binary's secrets/cache/mirror,
/// and `path` as PATH when given.
fn run(cwd: &Path, args: &[&str], path: Option<&Path>) -> Output {
    let e = env();
    let profiles = repo().join("profiles");
    let mut c = command();
    if !args.contains(&"--profiles") {
        c.arg("--profiles").arg(&profiles);
    }
    c.args(args)
        .current_dir(cwd)
        .env("IMGBUILD_SECRETS", e.secrets())
        .env("IMGBUILD_CACHE_DIR", e.cache())
        .env("IMGBUILD_K3S_MIRROR", e.mirror_url());
    if let Some(p) = path {
        c.env("PATH", p);
    }
    c.output().expect("imgbuild runs")
}

fn build(cwd: &Path, m: &Path, target: &str) -> Output {
    run(cwd, &["--manifests", m.to_str().unwrap(), target], None)
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
    let dir = scratch();
    let m = manifests(dir.path(), "/releases/live-server.iso", &s.sha256);
    let started = std::time::Instant::now();
    let out = build(dir.path(), &m, &format!("dist/{NODE}.nuc.iso"));
    let took = started.elapsed();
    assert!(out.status.success(), "iso build failed: {}", text(&out));
    eprintln!("ISO build of {NODE} took {:.2}s", took.as_secs_f64());
    let iso = dir.path().join(format!("dist/{NODE}.nuc.iso"));
    assert!(iso.is_file());
    // The stock ISO (and the cached download) is only read.
    assert_eq!(sha256_file(&s.iso), stock_before);
    let cached = env().cache().join("assets").join(&s.sha256);
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
    let render_text = run(dir.path(), &["render", NODE, "--contents"], None);
    assert!(render_text.status.success(), "{}", text(&render_text));
    let render_json = run(dir.path(), &["render", NODE, "--json"], None);
    assert!(render_json.status.success(), "{}", text(&render_json));
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
    let dir = scratch();
    let m = manifests(dir.path(), "/releases/live-server.iso", &s.sha256);
    let profiles = dir.path().join("profiles");
    sh(&format!(
        "cp -r {} {}",
        q(&repo().join("profiles")),
        q(&profiles)
    ));
    std::fs::write(
        profiles.join("nodes/ws03.yaml"),
        std::fs::read_to_string(repo().join("profiles/nodes/ws03.yaml")).unwrap()
            + "install:\n  disk: {serial: \"S4EVNX0N*\", model: \"Samsung SSD 980*\"}\n  shutdown: reboot\n",
    )
    .unwrap();
    let out = run(
        dir.path(),
        &[
            "--profiles",
            profiles.to_str().unwrap(),
            "--manifests",
            m.to_str().unwrap(),
            "dist/ws03.nuc.iso",
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out));
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
    assert_eq!(
        v["storage"]["layout"]["match"],
        serde_json::json!({"serial": "S4EVNX0N*", "model": "Samsung SSD 980*"})
    );
    assert_eq!(v["shutdown"], "reboot");

    // A size the installer cannot match is refused by `check`, by field.
    std::fs::write(
        profiles.join("nodes/ws03.yaml"),
        "board: nuc\ninstall:\n  disk: {size: 500GB}\n  shutdown: halt\n",
    )
    .unwrap();
    let out = run(
        dir.path(),
        &["--profiles", profiles.to_str().unwrap(), "check"],
        None,
    );
    let t = text(&out);
    assert!(!out.status.success(), "{t}");
    assert!(
        t.contains("install.disk.size") && t.contains("largest"),
        "{t}"
    );
    assert!(
        t.contains("install.shutdown") && t.contains("poweroff"),
        "{t}"
    );
}

#[test]
fn missing_xorriso_names_the_package() {
    let s = stock();
    let dir = scratch();
    let m = manifests(dir.path(), "/releases/live-server.iso", &s.sha256);
    let empty = dir.path().join("empty-path");
    std::fs::create_dir_all(&empty).unwrap();
    let out = run(
        dir.path(),
        &["--manifests", m.to_str().unwrap(), "dist/ws03.nuc.iso"],
        Some(&empty),
    );
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.contains("xorriso is not installed") && t.contains("apt-get install xorriso"),
        "{t}"
    );
    only_left(&dir.path().join("dist"), &[]);
}

#[test]
fn corrupt_installer_is_refused_clearly() {
    let _ = stock();
    let dir = scratch();
    // Right digest, wrong content: what a truncated or mislabelled pin serves.
    let garbage = b"<html>not an ISO</html>".repeat(4000);
    let sha = hex::encode(Sha256::digest(&garbage));
    env().mirror.put("/releases/garbage.iso", garbage);
    let m = manifests(dir.path(), "/releases/garbage.iso", &sha);
    let out = build(dir.path(), &m, "dist/ws03.nuc.iso");
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.contains("not an ISO 9660 image") && t.contains("CD001"),
        "{t}"
    );
    only_left(&dir.path().join("dist"), &[]);

    // A download that does not match the pinned digest never gets that far.
    let m = manifests(dir.path(), "/releases/live-server.iso", &"0".repeat(64));
    let out = build(dir.path(), &m, "dist/ws03.nuc.iso");
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("sha256"), "{t}");
    only_left(&dir.path().join("dist"), &[]);
}

#[test]
fn iso_targets_refused_where_they_cannot_be_built() {
    let dir = scratch();
    // rk1 has no installer in its manifest.
    let out = run(dir.path(), &["dist/node02.rk1.iso"], None);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(
        t.contains("no `installer`") && t.contains("node02.rk1.img"),
        "{t}"
    );
    // Unsealed installers are not supported yet: refused before any work.
    let out = run(dir.path(), &["--unsealed", "dist/ws03.nuc.iso"], None);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(2), "{t}");
    assert!(t.contains("--unsealed is not supported for .iso"), "{t}");
    assert!(!dir.path().join("dist").exists());
}
