//! The BMC client against a fake BMC on loopback: status, certificate pinning
//! on first use, a changed certificate, --insecure, a wrong password (never
//! retried) and an expired token (one re-login).

mod support {
    pub mod bmc;
    pub mod bytes;
    pub mod fixtures;
    pub mod harness;
    pub mod http;
    pub mod mirror;
}

use std::path::Path;

use support::bmc::FakeBmc;
use support::{bytes::*, fixtures::*, harness::*, mirror::*};

/// A profile copy whose Turing Pi board's BMC is `host`.
fn profiles_for(dir: &Path, host: &str) -> std::path::PathBuf {
    sh(&format!("cp -r {} {}", q(&repo().join("profiles")), q(dir)));
    let p = dir.join("profiles/cluster.yaml");
    let text = std::fs::read_to_string(&p)
        .unwrap()
        .replace("bmc: turingpi.home.arpa", &format!("bmc: {host}"));
    std::fs::write(&p, text).unwrap();
    dir.join("profiles")
}

fn status(dir: &Path, profiles: &Path, password: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["bmc", "status"];
    args.extend_from_slice(extra);
    command(dir, profiles, password, &args).output().unwrap()
}

/// imgbuild with `args` against the profile copy in `dir`, its own secrets, and
/// `password` for the BMC; no terminal.
fn command(dir: &Path, profiles: &Path, password: &str, args: &[&str]) -> std::process::Command {
    let manifests = repo().join("firmware-manifests");
    let mut cmd = std::process::Command::new(bin());
    cmd.args(args)
        .args([
            "--profiles",
            profiles.to_str().unwrap(),
            "--manifests",
            manifests.to_str().unwrap(),
        ])
        .current_dir(dir)
        .env("IMGBUILD_SECRETS", dir.join("secrets"))
        .env("IMGBUILD_BMC_PASSWORD", password)
        .stdin(std::process::Stdio::null());
    cmd
}

#[test]
fn status_pins_the_certificate_on_first_use_and_refuses_a_changed_one() {
    let w = tempfile::tempdir().unwrap();
    let bmc = FakeBmc::start("turing");
    let profiles = profiles_for(w.path(), &bmc.host());
    let out = status(w.path(), &profiles, "turing", &[]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("Turing Pi 2.5") && t.contains("2.3.4"), "{t}");
    assert!(
        t.contains("slot 1: off") && t.contains("slot 4: off"),
        "{t}"
    );
    assert!(t.contains("12345000000"), "SD card free space missing: {t}");
    assert!(
        t.contains("first connection; pinned") && t.contains(&bmc.cert_sha256),
        "{t}"
    );
    let pin = std::fs::read_to_string(w.path().join("secrets/bmc/tp1.sha256")).unwrap();
    assert_eq!(pin.trim(), bmc.cert_sha256);
    // Second time: the pin matches, no first-use warning.
    let t = text(&status(w.path(), &profiles, "turing", &["--json"]));
    assert!(!t.contains("first connection"), "{t}");
    let j: serde_json::Value = serde_json::from_str(t.trim()).unwrap();
    assert_eq!(j[0]["fingerprint"].as_str(), Some(bmc.cert_sha256.as_str()));
    assert_eq!(j[0]["power"]["2"].as_bool(), Some(false));

    // A BMC with another certificate at the same name is refused...
    let other = FakeBmc::start("turing");
    let text_cluster = std::fs::read_to_string(profiles.join("cluster.yaml"))
        .unwrap()
        .replace(&bmc.host(), &other.host());
    std::fs::write(profiles.join("cluster.yaml"), text_cluster).unwrap();
    let out = status(w.path(), &profiles, "turing", &[]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.contains("certificate changed since it was pinned") && t.contains("--insecure"),
        "{t}"
    );
    assert_eq!(
        other.state.lock().unwrap().logins,
        0,
        "sent credentials to an unverified BMC"
    );
    // ...unless --insecure is given explicitly; the pin stays as it was.
    let out = status(w.path(), &profiles, "turing", &["--insecure"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        std::fs::read_to_string(w.path().join("secrets/bmc/tp1.sha256"))
            .unwrap()
            .trim(),
        bmc.cert_sha256
    );
}

#[test]
fn a_wrong_password_is_reported_once_and_not_retried() {
    let w = tempfile::tempdir().unwrap();
    let bmc = FakeBmc::start("turing");
    let profiles = profiles_for(w.path(), &bmc.host());
    let out = status(w.path(), &profiles, "wrong", &[]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.contains("rejected user \"root\"") && t.contains("does not retry"),
        "{t}"
    );
    assert!(
        !t.contains("wrong"),
        "the password appeared in the output: {t}"
    );
    assert_eq!(bmc.state.lock().unwrap().failed_logins, 1);
}

#[test]
fn an_expired_token_is_renewed_once() {
    let w = tempfile::tempdir().unwrap();
    let bmc = FakeBmc::start("turing");
    bmc.state.lock().unwrap().expire_after = Some(1);
    let profiles = profiles_for(w.path(), &bmc.host());
    let out = status(w.path(), &profiles, "turing", &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        bmc.state.lock().unwrap().logins >= 2,
        "no re-login after the 401"
    );
}

#[test]
fn the_password_comes_from_a_file() {
    let w = tempfile::tempdir().unwrap();
    let bmc = FakeBmc::start("s3cret");
    let profiles = profiles_for(w.path(), &bmc.host());
    let pw = w.path().join("bmc-password");
    std::fs::write(&pw, "s3cret\n").unwrap();
    let out = command(
        w.path(),
        &profiles,
        "",
        &["bmc", "status", "--bmc-password-file", pw.to_str().unwrap()],
    )
    .env_remove("IMGBUILD_BMC_PASSWORD")
    .output()
    .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(!text(&out).contains("s3cret"));
}

fn run(dir: &Path, profiles: &Path, args: &[&str]) -> std::process::Output {
    command(dir, profiles, "turing", args).output().unwrap()
}

/// Stand-in images for the Turing Pi nodes in `dir/dist`, distinct per node.
fn images(dir: &Path) {
    let dist = dir.join("dist");
    std::fs::create_dir_all(&dist).unwrap();
    for (i, name) in [
        "node01.cm4.img",
        "node02.rk1.img",
        "node03.rk1.img",
        "node04.rk1.img",
    ]
    .iter()
    .enumerate()
    {
        let mut body = vec![0u8; 3 << 20];
        body[..64].copy_from_slice(&[i as u8 + 1; 64]);
        body[(2 << 20)..(2 << 20) + 5].copy_from_slice(b"tail!");
        std::fs::write(dist.join(name), body).unwrap();
    }
}

#[test]
fn flash_writes_the_image_verifies_and_powers_on() {
    let w = tempfile::tempdir().unwrap();
    let bmc = FakeBmc::start("turing");
    let profiles = profiles_for(w.path(), &bmc.host());
    images(w.path());
    // Not on a terminal and no --yes: nothing is flashed.
    let out = run(w.path(), &profiles, &["flash", "node02"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("refusing to flash without confirmation"),
        "{}",
        text(&out)
    );
    assert!(bmc.state.lock().unwrap().flashed.is_empty());

    let out = run(w.path(), &profiles, &["flash", "node02", "--yes"]);
    assert!(out.status.success(), "{}", text(&out));
    let st = bmc.state.lock().unwrap();
    let landed = std::fs::read(st.slots_dir.join("slot2.img")).unwrap();
    assert!(
        landed == std::fs::read(w.path().join("dist/node02.rk1.img")).unwrap(),
        "slot 2 holds other bytes"
    );
    assert_eq!(st.flashed, [2]);
    assert_eq!(st.power.get(&2), Some(&true), "slot 2 not powered on");
    assert!(
        st.log
            .iter()
            .any(|l| l.contains("type=flash") && l.contains("node=1") && l.contains("sha256=")),
        "{:?}",
        st.log
    );
    assert!(!st.log.iter().any(|l| l.contains("skip_crc")));
}

#[test]
fn flash_faults_are_reported_with_what_to_do() {
    let w = tempfile::tempdir().unwrap();
    let bmc = FakeBmc::start("turing");
    let profiles = profiles_for(w.path(), &bmc.host());
    images(w.path());
    bmc.state.lock().unwrap().busy = true;
    let out = run(w.path(), &profiles, &["flash", "node03", "--yes"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("already flashing a module"),
        "{}",
        text(&out)
    );
    {
        let mut st = bmc.state.lock().unwrap();
        st.busy = false;
        st.crc_error_slots = vec![3];
    }
    let out = run(w.path(), &profiles, &["flash", "node03", "--yes"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("flashing slot 3 failed: crc error"),
        "{}",
        text(&out)
    );
    assert_eq!(
        bmc.state.lock().unwrap().power.get(&3),
        Some(&false),
        "a failed slot was powered on"
    );
    bmc.state.lock().unwrap().missing_slots = vec![4];
    let out = run(w.path(), &profiles, &["flash", "node04", "--yes"]);
    assert!(
        text(&out).contains("could not find a module in node 4"),
        "{}",
        text(&out)
    );
    // A node outside the Turing Pi is refused before anything is sent.
    let out = run(w.path(), &profiles, &["flash", "ws03", "--yes"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out).contains("not in a Turing Pi slot"),
        "{}",
        text(&out)
    );
}

#[test]
fn deploy_flashes_in_slot_order_and_resumes_after_a_failure() {
    let w = tempfile::tempdir().unwrap();
    let bmc = FakeBmc::start("turing");
    let profiles = profiles_for(w.path(), &bmc.host());
    images(w.path());
    bmc.state.lock().unwrap().missing_slots = vec![3];
    let out = run(w.path(), &profiles, &["deploy", "--yes"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("continue from node03"), "{t}");
    assert_eq!(bmc.state.lock().unwrap().flashed, [1, 2]);
    bmc.state.lock().unwrap().missing_slots.clear();
    let out = run(w.path(), &profiles, &["deploy", "--yes", "--json"]);
    let t = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_str(&t).unwrap();
    let results: Vec<(&str, &str)> = report
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["node"].as_str().unwrap(), r["result"].as_str().unwrap()))
        .collect();
    assert_eq!(
        results,
        [
            ("node01", "skipped"),
            ("node02", "skipped"),
            ("node03", "flashed"),
            ("node04", "flashed")
        ]
    );
    let st = bmc.state.lock().unwrap();
    assert_eq!(
        st.flashed,
        [1, 2, 3, 4],
        "a finished node was flashed again"
    );
    for slot in 1..=4u8 {
        assert_eq!(st.power.get(&slot), Some(&true), "slot {slot}");
    }
}

#[test]
fn upload_faults_and_unreachable_bmcs_are_reported() {
    let w = tempfile::tempdir().unwrap();
    let bmc = FakeBmc::start("turing");
    let profiles = profiles_for(w.path(), &bmc.host());
    images(w.path());
    // A stale SHA256SUMS line: the BMC (>= 2.3.0) checks the digest.
    std::fs::write(
        w.path().join("dist/SHA256SUMS"),
        format!("{}  node02.rk1.img\n", "ab".repeat(32)),
    )
    .unwrap();
    let out = run(w.path(), &profiles, &["flash", "node02", "--yes"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("sha256 mismatch")
            && text(&out).contains("not usable until flashed again"),
        "{}",
        text(&out)
    );
    std::fs::remove_file(w.path().join("dist/SHA256SUMS")).unwrap();
    // The connection drops mid-upload.
    bmc.state.lock().unwrap().drop_upload_after = Some(1 << 20);
    let out = run(w.path(), &profiles, &["flash", "node02", "--yes"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("127.0.0.1"), "{}", text(&out));
    assert!(bmc.state.lock().unwrap().flashed.is_empty());
    // Nothing listens on the BMC's address.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let cluster = std::fs::read_to_string(profiles.join("cluster.yaml"))
        .unwrap()
        .replace(&bmc.host(), &format!("127.0.0.1:{port}"));
    std::fs::write(profiles.join("cluster.yaml"), cluster).unwrap();
    let out = run(w.path(), &profiles, &["bmc", "status"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains(&format!("127.0.0.1:{port}"))
            && text(&out).to_lowercase().contains("connect"),
        "{}",
        text(&out)
    );
}

#[test]
fn flash_builds_a_missing_image_first() {
    let fx = fixtures();
    let w = tempfile::tempdir().unwrap();
    let bmc = FakeBmc::start("turing");
    let profiles = profiles_for(w.path(), &bmc.host());
    let e = env();
    let overlays = repo().join("overlays");
    let args = [
        "flash",
        "node02",
        "--yes",
        "--base",
        fx.rk1.path.to_str().unwrap(),
        "--overlays",
        overlays.to_str().unwrap(),
    ];
    let out = command(w.path(), &profiles, "turing", &args)
        .env("IMGBUILD_CACHE_DIR", e.cache())
        .env("IMGBUILD_K3S_MIRROR", e.mirror_url())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let built = w.path().join("dist/node02.rk1.img");
    let st = bmc.state.lock().unwrap();
    let slot = st.slots_dir.join("slot2.img");
    assert_eq!(
        hash_range(&slot, 0, std::fs::metadata(&slot).unwrap().len()),
        hash_range(&built, 0, std::fs::metadata(&built).unwrap().len())
    );
}

#[test]
// The child is reaped with wait4 (to read its peak RSS), which clippy cannot see.
#[allow(clippy::zombie_processes)]
fn a_2_gib_sparse_upload_keeps_memory_flat() {
    let w = tempfile::tempdir().unwrap();
    let bmc = FakeBmc::start("turing");
    let profiles = profiles_for(w.path(), &bmc.host());
    let dist = w.path().join("dist");
    std::fs::create_dir_all(&dist).unwrap();
    let image = dist.join("node02.rk1.img");
    sh(&format!(
        "truncate -s 2G {i}; printf head | dd of={i} conv=notrunc status=none; printf tail | dd of={i} bs=1 seek=$((2*1024*1024*1024 - 4)) conv=notrunc status=none",
        i = q(&image)
    ));
    let child = command(w.path(), &profiles, "turing", &["flash", "node02", "--yes"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut status = 0;
    // SAFETY: plain wait4 on our own child; rusage is written by the kernel.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as i32);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "flash failed"
    );
    let peak_mib = usage.ru_maxrss / 1024;
    println!("peak RSS of imgbuild flash for a 2 GiB image: {peak_mib} MiB");
    assert!(peak_mib < 200, "peak RSS {peak_mib} MiB for a 2 GiB upload");
    let slot = bmc.state.lock().unwrap().slots_dir.join("slot2.img");
    assert_eq!(std::fs::metadata(&slot).unwrap().len(), 2 << 30);
    assert_eq!(
        hash_range(&slot, 0, 2 << 30),
        hash_range(&image, 0, 2 << 30)
    );
}

#[test]
fn an_interrupted_flash_cancels_the_upload_on_the_bmc() {
    let w = tempfile::tempdir().unwrap();
    let bmc = FakeBmc::start("turing");
    let profiles = profiles_for(w.path(), &bmc.host());
    let dist = w.path().join("dist");
    std::fs::create_dir_all(&dist).unwrap();
    sh(&format!(
        "head -c 1500M /dev/urandom > {}",
        q(&dist.join("node02.rk1.img"))
    ));
    let child = command(w.path(), &profiles, "turing", &["flash", "node02", "--yes"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until bytes are flowing, then Ctrl-C.
    for _ in 0..600 {
        if bmc.state.lock().unwrap().flash.contains("Transferring") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(
        bmc.state.lock().unwrap().flash.contains("Transferring"),
        "the upload never started"
    );
    sh(&format!("kill -INT {}", child.id()));
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let st = bmc.state.lock().unwrap();
    assert!(
        st.log
            .iter()
            .any(|l| l.starts_with("GET /api/bmc/upload/") && l.ends_with("/cancel")),
        "{:?}",
        st.log
    );
    assert!(st.flashed.is_empty());
}
