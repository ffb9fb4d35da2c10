//! The BMC client (`bmc status`, `flash`, `deploy`) against a fake BMC on
//! loopback that behaves like bmcd 2.3.x (tests/support/bmc.rs cites the
//! bmcd source for each behaviour), plus fidelity checks of the fake with
//! curl, and a property test over the client's answer parsers.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::support::bmc::{Daemon, FakeBmc, Fault, Flash};
use crate::support::project::{Cmd, Project, Run};
use crate::support::{bytes::*, fixtures::*, harness::*};

/// A fake BMC with password `password`, and the example profiles with their
/// Turing Pi board's BMC pointing at it.
struct Setup {
    bmc: FakeBmc,
    p: Project,
}

impl Setup {
    fn new() -> Setup {
        Setup::with_password("turing")
    }

    fn with_password(password: &str) -> Setup {
        let bmc = FakeBmc::start(password);
        let p = Project::example();
        p.edit(
            "profiles/cluster.yaml",
            "bmc: turingpi.home.arpa",
            &format!("bmc: {}", bmc.host()),
        );
        Setup { bmc, p }
    }

    fn dir(&self) -> &Path {
        self.p.path()
    }

    /// imgbuild with `args` and the BMC password `password`; no terminal.
    fn imgbuild_as(&self, password: &str, args: &[&str]) -> Cmd {
        self.p
            .imgbuild(args)
            .args([
                "--manifests",
                repo().join("firmware-manifests").to_str().unwrap(),
            ])
            .env("IMGBUILD_BMC_PASSWORD", password)
    }

    fn imgbuild(&self, args: &[&str]) -> Cmd {
        self.imgbuild_as("turing", args)
    }

    /// Points the profiles at another BMC address.
    fn retarget(&self, host: &str) {
        let text = self.p.read("profiles/cluster.yaml");
        let start = text.find("bmc: ").unwrap() + 5;
        let end = start + text[start..].find('\n').unwrap();
        self.p.write(
            "profiles/cluster.yaml",
            format!("{}{host}{}", &text[..start], &text[end..]),
        );
    }

    /// Stand-in images for the Turing Pi nodes in `dist`, distinct per node.
    fn images(&self) {
        let dist = self.dir().join("dist");
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
            std::fs::write(dist.join(name), image_bytes(i as u8 + 1)).unwrap();
        }
    }

    fn image(&self, name: &str) -> PathBuf {
        self.dir().join("dist").join(name)
    }

    /// The requests the fake saw that contain `needle`.
    fn requests(&self, needle: &str) -> Vec<String> {
        self.bmc
            .lock()
            .log
            .iter()
            .filter(|l| l.contains(needle))
            .cloned()
            .collect()
    }
}

fn image_bytes(tag: u8) -> Vec<u8> {
    let mut body = vec![0u8; 3 << 20];
    body[..64].copy_from_slice(&[tag; 64]);
    body[(2 << 20)..(2 << 20) + 5].copy_from_slice(b"tail!");
    body
}

/// (successful, failed) logins the fake saw.
fn logins(bmc: &FakeBmc) -> (u32, u32) {
    let st = bmc.lock();
    (st.logins, st.failed_logins)
}

/// No raw JSON envelope and no password ever reach the user.
fn clean(t: &str) {
    assert!(!t.contains("{\"response\""), "raw JSON shown: {t}");
    assert!(!t.contains("turing\""), "{t}");
}

// ---------------------------------------------------------------- status

#[test]
fn status_pins_the_certificate_0600_on_first_use_and_refuses_a_changed_one() {
    let s = Setup::new();
    // umask 000: the pin and its directory must still be private.
    let t = s.imgbuild(&["bmc", "status"]).umask(0).expect_exit(0).text;
    // bmcd 2.3.7: the firmware's `version` and bmcd's own `bmcd_version`.
    assert!(t.contains("Turing Pi 2 (v2.5)"), "{t}");
    assert!(
        t.lines()
            .any(|l| l.trim_start().starts_with("bmcd_version") && l.contains("2.3.7")),
        "{t}"
    );
    assert!(
        t.contains("slot 1: off") && t.contains("slot 4: off"),
        "{t}"
    );
    assert!(t.contains("12345000000"), "SD card free space missing: {t}");
    assert!(
        t.contains("first connection; pinned") && t.contains(&s.bmc.cert_sha256),
        "{t}"
    );
    let pin_file = s.dir().join("secrets/bmc/tp1.sha256");
    assert_eq!(
        std::fs::read_to_string(&pin_file).unwrap().trim(),
        s.bmc.cert_sha256
    );
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&pin_file), 0o600, "pin file mode");
    assert_eq!(
        mode(&s.dir().join("secrets/bmc")),
        0o700,
        "pin directory mode"
    );
    // Second time: the pin matches, no first-use warning.
    let out = s.imgbuild(&["bmc", "status", "--json"]).expect_exit(0);
    let t = &out.text;
    assert!(!t.contains("first connection"), "{t}");
    let j = out.json();
    assert_eq!(
        j[0]["fingerprint"].as_str(),
        Some(s.bmc.cert_sha256.as_str())
    );
    assert_eq!(j[0]["power"]["2"].as_bool(), Some(false));
    assert_eq!(j[0]["about"]["version"].as_str(), Some("2.1.0"));

    // A BMC with another certificate at the same name is refused...
    let other = FakeBmc::start("turing");
    s.retarget(&other.host());
    let t = s.imgbuild(&["bmc", "status"]).expect_exit(1).text;
    assert!(
        t.contains("certificate changed since it was pinned") && t.contains("--insecure"),
        "{t}"
    );
    assert_eq!(
        logins(&other),
        (0, 0),
        "sent credentials to an unverified BMC"
    );
    // ...unless --insecure is given explicitly; the pin stays as it was.
    s.imgbuild(&["bmc", "status", "--insecure"]).expect_exit(0);
    assert_eq!(other.lock().logins, 1);
    assert_eq!(
        std::fs::read_to_string(&pin_file).unwrap().trim(),
        s.bmc.cert_sha256
    );
}

#[test]
fn status_of_one_board_and_of_an_unknown_board() {
    let s = Setup::new();
    let t = s
        .imgbuild(&["bmc", "status", "--board", "tp1"])
        .expect_exit(0)
        .text;
    assert!(t.contains(&format!("BMC {}", s.bmc.host())), "{t}");
    assert_eq!(s.bmc.lock().logins, 1);
    let t = s
        .imgbuild(&["bmc", "status", "--board", "tp9"])
        .expect_exit(2)
        .text;
    assert!(t.contains("no Turing Pi board named \"tp9\""), "{t}");
    assert_eq!(s.bmc.lock().logins, 1, "logged in for an unknown board");
}

#[test]
fn an_enveloped_error_shows_its_message_not_json() {
    let s = Setup::new();
    // bmcd wraps anyhow errors as "Failed to {context}: {cause}" in the
    // envelope with status 500 (into_legacy_response.rs:77-84).
    s.bmc.lock().faults.insert(
        "about".into(),
        Fault::Enveloped(
            500,
            "Failed to read os-release: No such file or directory (os error 2)".into(),
        ),
    );
    let t = s.imgbuild(&["bmc", "status"]).expect_exit(1).text;
    clean(&t);
    assert!(
        t.contains("reading the BMC's versions failed: Failed to read os-release: No such file or directory (os error 2) (HTTP 500)"),
        "{t}"
    );
}

// ---------------------------------------------------------- login, bans

#[test]
fn a_wrong_password_is_reported_once_and_not_retried() {
    let s = Setup::new();
    let t = s
        .imgbuild_as("wrong-pw", &["bmc", "status"])
        .expect_exit(1)
        .text;
    assert!(
        t.contains("rejected user \"root\"")
            && t.contains("credentials incorrect")
            && t.contains("HTTP 403")
            && t.contains("does not retry"),
        "{t}"
    );
    assert!(
        !t.contains("wrong-pw"),
        "the password appeared in the output: {t}"
    );
    assert_eq!(s.bmc.lock().failed_logins, 1);
}

#[test]
fn five_failed_logins_ban_this_machine_and_imgbuild_says_to_wait() {
    let s = Setup::new();
    s.bmc.lock().ban_base = Duration::from_secs(1);
    for n in 1..=4 {
        let t = s
            .imgbuild_as("wrong", &["bmc", "status"])
            .expect_exit(1)
            .text;
        assert!(t.contains("credentials incorrect"), "failure {n}: {t}");
    }
    // The fifth failure is answered with the ban itself (ban_patrol.rs:49-86).
    let t = s
        .imgbuild_as("wrong", &["bmc", "status"])
        .expect_exit(1)
        .text;
    assert!(
        t.contains("blocks this machine for under a second") && t.contains("wait that long"),
        "{t}"
    );
    assert!(
        !t.contains("Exceeded allowed authentication attempts. Access blocked for 9"),
        "{t}"
    );
    // During the ban even the right password is refused, and not counted.
    let t = s.imgbuild(&["bmc", "status"]).expect_exit(1).text;
    assert!(t.contains("blocks this machine"), "{t}");
    assert_eq!(logins(&s.bmc), (0, 5));
    std::thread::sleep(Duration::from_millis(1100));
    // The count survives the ban: the next failure bans for twice as long.
    let t = s
        .imgbuild_as("wrong", &["bmc", "status"])
        .expect_exit(1)
        .text;
    assert!(t.contains("blocks this machine for 1s"), "{t}");
    std::thread::sleep(Duration::from_millis(2100));
    s.imgbuild(&["bmc", "status"]).expect_exit(0);
    assert_eq!(logins(&s.bmc), (1, 6));
}

#[test]
fn an_expired_token_is_renewed_exactly_once() {
    let s = Setup::new();
    s.bmc.lock().expire_token_after = Some(1);
    s.imgbuild(&["bmc", "status"]).expect_exit(0);
    assert_eq!(s.bmc.lock().logins, 2, "one renewal after the expiry");
    // A daemon that forgot its tokens says "not registered": also one renewal.
    let s = Setup::new();
    s.bmc.lock().forget_tokens_after = Some(2);
    s.imgbuild(&["bmc", "status"]).expect_exit(0);
    assert_eq!(s.bmc.lock().logins, 2);
}

#[test]
fn a_session_refused_after_a_fresh_login_is_reported_without_the_token() {
    let s = Setup::new();
    {
        let mut st = s.bmc.lock();
        st.expire_token_after = Some(1);
        // Tokens die at once: the renewed one is refused too.
        st.token_ttl = Duration::ZERO;
    }
    let t = s.imgbuild(&["bmc", "status"]).expect_exit(1).text;
    assert!(
        t.contains("refused the session again right after a new login (token expired"),
        "{t}"
    );
    assert_eq!(s.bmc.lock().logins, 2, "renewed more than once");
}

#[test]
fn the_password_comes_from_a_file() {
    let s = Setup::with_password("s3cret");
    let pw = s.dir().join("bmc-password");
    std::fs::write(&pw, "s3cret\n").unwrap();
    let t = s
        .imgbuild_as(
            "",
            &["bmc", "status", "--bmc-password-file", pw.to_str().unwrap()],
        )
        .env_remove("IMGBUILD_BMC_PASSWORD")
        .expect_exit(0)
        .text;
    assert!(!t.contains("s3cret"));
}

#[test]
fn another_bmc_user_is_used_when_asked() {
    let s = Setup::new();
    s.images();
    s.bmc.lock().user = "admin".into();
    let t = s
        .imgbuild(&["flash", "node02", "--yes"])
        .expect_exit(1)
        .text;
    assert!(t.contains("rejected user \"root\""), "{t}");
    let t = s
        .imgbuild(&["flash", "node02", "--yes", "--bmc-user", "bob"])
        .expect_exit(1)
        .text;
    assert!(t.contains("rejected user \"bob\""), "{t}");
    s.imgbuild(&["flash", "node02", "--yes", "--bmc-user", "admin"])
        .expect_exit(0);
    assert_eq!(s.bmc.lock().flashed, [2]);
}

// ------------------------------------------------------ transport hardening

#[test]
fn a_silent_bmc_times_out() {
    let s = Setup::new();
    s.bmc.lock().silent = true;
    let t0 = Instant::now();
    let t = s
        .imgbuild(&["bmc", "status", "--bmc-timeout", "1"])
        .expect_exit(1)
        .text;
    let took = t0.elapsed();
    assert!(
        t.contains("no answer to the login within 1 s") && t.contains("--bmc-timeout"),
        "{t}"
    );
    assert!(took < Duration::from_secs(10), "took {took:?}");
}

#[test]
fn a_flash_that_stops_progressing_is_given_up() {
    let s = Setup::new();
    s.images();
    s.bmc.lock().hang_after_upload = true;
    let t0 = Instant::now();
    let t = s
        .imgbuild(&["flash", "node02", "--yes", "--bmc-timeout", "1"])
        .expect_exit(1)
        .text;
    assert!(
        t.contains("reported no progress flashing slot 2 for 2 s") && t.contains("--bmc-timeout"),
        "{t}"
    );
    assert!(
        t0.elapsed() < Duration::from_secs(20),
        "took {:?}",
        t0.elapsed()
    );
    assert_eq!(
        s.bmc.lock().power.get(&2),
        Some(&true),
        "powered on after the hang?"
    );
    assert!(s.bmc.lock().flashed.is_empty());
}

#[test]
fn an_upload_the_bmc_stops_reading_is_given_up_and_cancelled() {
    let s = Setup::new();
    let dist = s.dir().join("dist");
    std::fs::create_dir_all(&dist).unwrap();
    // Larger than the socket buffers, so the stall reaches imgbuild.
    sh(&format!(
        "head -c 48M /dev/urandom > {}",
        q(&dist.join("node02.rk1.img"))
    ));
    s.bmc.lock().stall_upload_after = Some(1 << 20);
    let t0 = Instant::now();
    let t = s
        .imgbuild(&["flash", "node02", "--yes", "--bmc-timeout", "1"])
        .expect_exit(1)
        .text;
    assert!(
        t.contains("the upload made no progress for 2 s")
            && t.contains("cancelled the transfer on the BMC"),
        "{t}"
    );
    assert!(
        t0.elapsed() < Duration::from_secs(30),
        "took {:?}",
        t0.elapsed()
    );
    assert_eq!(s.requests("/cancel").len(), 1);
    assert_eq!(s.bmc.lock().flash, Flash::Error("cancelled by user".into()));
}

// Children are reaped with wait4 (to read their peak RSS), which clippy cannot see.
#[allow(clippy::zombie_processes)]
fn run_measured(cmd: &mut std::process::Command) -> (i32, i64) {
    let child = cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut status = 0;
    // SAFETY: plain wait4 on our own child; rusage is written by the kernel.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as i32);
    assert!(libc::WIFEXITED(status));
    (libc::WEXITSTATUS(status), usage.ru_maxrss / 1024)
}

#[test]
fn a_huge_answer_is_refused_with_flat_memory() {
    for declared in [Some(3u64 << 30), None] {
        let s = Setup::new();
        s.bmc
            .lock()
            .faults
            .insert("about".into(), Fault::Huge(declared));
        let t0 = Instant::now();
        let t = s.imgbuild(&["bmc", "status"]).expect_exit(1).text;
        assert!(
            t.contains("the answer to reading the BMC's versions is larger than 1024 KiB"),
            "{declared:?}: {t}"
        );
        assert!(t.len() < 2000, "the body was echoed: {} bytes", t.len());
        assert!(t0.elapsed() < Duration::from_secs(20));
        let (code, peak_mib) = run_measured(&mut s.imgbuild(&["bmc", "status"]).command());
        assert_eq!(code, 1);
        assert!(peak_mib < 100, "peak RSS {peak_mib} MiB for a huge answer");
    }
}

#[test]
fn a_redirect_is_an_error_and_the_password_goes_nowhere() {
    let s = Setup::new();
    // A plain-HTTP listener where the redirect points; it records what arrives.
    let plain = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = plain.local_addr().unwrap().port();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
    let seen2 = seen.clone();
    std::thread::spawn(move || {
        for conn in plain.incoming() {
            let Ok(mut c) = conn else { return };
            c.set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            let mut buf = [0u8; 4096];
            let n = std::io::Read::read(&mut c, &mut buf).unwrap_or(0);
            seen2.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    s.bmc.lock().redirect_to = Some(format!("http://127.0.0.1:{port}"));
    let t = s
        .imgbuild(&["bmc", "status", "--bmc-timeout", "3"])
        .expect_exit(1)
        .text;
    assert!(
        t.contains(&format!(
            "answered the login with a redirect (HTTP 308) to http://127.0.0.1:{port}/api/bmc/authenticate"
        )) && t.contains("follows no redirects"),
        "{t}"
    );
    std::thread::sleep(Duration::from_millis(200));
    let seen = seen.lock().unwrap();
    assert!(
        seen.is_empty(),
        "the redirect was followed: {}",
        String::from_utf8_lossy(&seen)
    );
}

#[test]
fn the_bmc_password_is_not_inherited_by_child_processes() {
    let s = Setup::new();
    // A stock-layout RK1 base built with the real tools, in this test's scratch;
    // k3s `install: none`, so no release mirror is needed.
    let base = build_rk1(s.dir(), 160);
    let cluster = s.p.profiles().join("cluster.yaml");
    let text = std::fs::read_to_string(&cluster).unwrap();
    assert!(text.contains("    disable: [traefik]\n"));
    std::fs::write(
        &cluster,
        text.replace(
            "    disable: [traefik]\n",
            "    disable: [traefik]\n    install: none\n",
        ),
    )
    .unwrap();
    // A debugfs in front of the real one that records its environment.
    let wrap = s.dir().join("wrap");
    std::fs::create_dir_all(&wrap).unwrap();
    let real = String::from_utf8(sh("command -v debugfs").stdout).unwrap();
    let envs = s.dir().join("envs");
    std::fs::create_dir_all(&envs).unwrap();
    std::fs::write(
        wrap.join("debugfs"),
        format!(
            "#!/bin/sh\nenv > {}/debugfs.$$\nexec {} \"$@\"\n",
            q(&envs),
            real.trim()
        ),
    )
    .unwrap();
    std::fs::set_permissions(wrap.join("debugfs"), std::fs::Permissions::from_mode(0o755)).unwrap();
    let overlays = repo().join("overlays");
    let args = [
        "flash",
        "node02",
        "--yes",
        "--base",
        base.path.to_str().unwrap(),
        "--overlays",
        overlays.to_str().unwrap(),
    ];
    let path = format!("{}:{}", wrap.display(), std::env::var("PATH").unwrap());
    s.imgbuild(&args)
        .env("PATH", path)
        .env("IMGBUILD_CACHE_DIR", s.dir().join("cache"))
        .expect_exit(0);
    // The image was built first, and is what landed in the slot.
    let built = s.image("node02.rk1.img");
    let slot = s.bmc.slot_file(2);
    let len = std::fs::metadata(&built).unwrap().len();
    assert_eq!(std::fs::metadata(&slot).unwrap().len(), len);
    assert_eq!(hash_range(&slot, 0, len), hash_range(&built, 0, len));
    let runs: Vec<_> = std::fs::read_dir(&envs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(!runs.is_empty(), "debugfs never ran through the wrapper");
    for r in runs {
        let env = std::fs::read_to_string(&r).unwrap();
        assert!(
            env.contains("IMGBUILD_CACHE_DIR="),
            "not the wrapper's env dump"
        );
        assert!(
            !env.contains("IMGBUILD_BMC_PASSWORD") && !env.contains("turing\n"),
            "debugfs inherited the BMC password"
        );
    }
}

// ------------------------------------------------------------------ flash

#[test]
fn flash_writes_the_image_verifies_and_powers_on() {
    let s = Setup::new();
    s.images();
    // Not on a terminal and no --yes: nothing is flashed.
    let t = s.imgbuild(&["flash", "node02"]).expect_exit(2).text;
    assert!(t.contains("refusing to flash without confirmation"), "{t}");
    assert!(s.requests("type=flash").is_empty());

    s.imgbuild(&["flash", "node02", "--yes"]).expect_exit(0);
    let landed = std::fs::read(s.bmc.slot_file(2)).unwrap();
    assert!(
        landed == std::fs::read(s.image("node02.rk1.img")).unwrap(),
        "slot 2 holds other bytes"
    );
    let st = s.bmc.lock();
    assert_eq!(st.flashed, [2]);
    assert_eq!(st.verified, [2], "no CRC read-back");
    assert_eq!(st.power.get(&2), Some(&true), "slot 2 not powered on");
    // bmcd 2.3.7 reports the firmware (2.1.0) in `version`: the sha256 is
    // still sent, because `bmcd_version` says 2.3.7.
    let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&landed));
    let starts: Vec<_> = st
        .log
        .iter()
        .filter(|l| l.contains("opt=set&type=flash"))
        .collect();
    assert_eq!(starts.len(), 1, "{starts:?}");
    assert!(
        starts[0].contains("node=1") && starts[0].contains(&format!("sha256={sha}")),
        "{starts:?}"
    );
    assert!(!starts[0].contains("skip_crc"));
}

#[test]
fn flash_sends_sha256_by_daemon_version() {
    // bmcd 2.3.4 reports itself in `version` (and the firmware in `build_version`).
    let s = Setup::new();
    s.images();
    s.bmc.lock().daemon = Daemon::new("2.3.4");
    let t = s
        .imgbuild(&["flash", "node02", "--yes"])
        .expect_exit(0)
        .text;
    assert!(!t.contains("predates"), "{t}");
    assert_eq!(s.requests("sha256=").len(), 1);
    // A daemon older than 2.3.0 does not know sha256 (it would ignore it).
    let s = Setup::new();
    s.images();
    s.bmc.lock().daemon = Daemon::new("2.2.0");
    let t = s
        .imgbuild(&["flash", "node02", "--yes", "--skip-crc"])
        .expect_exit(0)
        .text;
    assert!(
        t.contains("bmcd \"2.2.0\") predates 2.3.0")
            && t.contains("ignores --skip-crc")
            && t.contains("CRC read-back only"),
        "{t}"
    );
    assert!(s.requests("sha256=").is_empty());
    assert_eq!(s.bmc.lock().verified, [2], "an old daemon always verifies");
    assert_eq!(s.bmc.lock().flashed, [2]);
}

#[test]
fn flash_skip_crc_skips_the_read_back_but_not_the_sha256() {
    let s = Setup::new();
    s.images();
    s.imgbuild(&["flash", "node02", "--yes", "--skip-crc"])
        .expect_exit(0);
    let starts = s.requests("opt=set&type=flash");
    assert!(
        starts.len() == 1 && starts[0].ends_with("&skip_crc"),
        "{starts:?}"
    );
    assert!(
        s.bmc.lock().verified.is_empty(),
        "read back despite --skip-crc"
    );
    assert_eq!(s.bmc.lock().flashed, [2]);
    // A wrong digest (a forged cache): the BMC still checks it.
    let node03 = s.image("node03.rk1.img");
    age(&node03);
    set_cached_digest(&node03, &"ab".repeat(32));
    let t = s
        .imgbuild(&["flash", "node03", "--yes", "--skip-crc"])
        .expect_exit(1)
        .text;
    assert!(t.contains("sha256 checksum failed. Expected: abab"), "{t}");
    assert_eq!(s.bmc.lock().flashed, [2]);
}

/// The image's mtime a minute back: written long enough ago for its digest
/// to be cached (a write in the same clock tick could go unseen).
fn age(path: &Path) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.set_modified(std::time::SystemTime::now() - Duration::from_secs(60))
        .unwrap();
}

/// The cache key imgbuild documents: `v1 <size> <mtime_ns> <inode>`.
fn cache_key(path: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).unwrap();
    let ns = i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec());
    format!("v1 {} {ns} {}", m.len(), m.ino())
}

const CACHE_ATTR: &std::ffi::CStr = c"user.imgbuild.sha256";

fn set_cached_digest(path: &Path, hex: &str) {
    let value = format!("{} {hex}", cache_key(path));
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: NUL-terminated strings and a value valid for its length.
    let r = unsafe {
        libc::setxattr(
            c.as_ptr(),
            CACHE_ATTR.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    assert_eq!(r, 0, "setxattr: {}", std::io::Error::last_os_error());
}

fn cached_digest(path: &Path) -> Option<String> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let mut buf = [0u8; 256];
    // SAFETY: NUL-terminated strings and a buffer valid for its length.
    let n = unsafe {
        libc::getxattr(
            c.as_ptr(),
            CACHE_ATTR.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    (n >= 0).then(|| String::from_utf8(buf[..n as usize].to_vec()).unwrap())
}

#[test]
fn flash_digest_is_cached_on_the_image_and_computed_afresh_after_a_change() {
    let s = Setup::new();
    s.images();
    let img = s.image("node02.rk1.img");
    // A stale SHA256SUMS line is never what the BMC gets.
    std::fs::write(
        s.dir().join("dist/SHA256SUMS"),
        format!("{}  node02.rk1.img\n", "ab".repeat(32)),
    )
    .unwrap();
    age(&img);
    s.imgbuild(&["flash", "node02", "--yes"]).expect_exit(0);
    let first = sha256sum(&img);
    assert_eq!(s.requests(&format!("sha256={first}")).len(), 1);
    // The digest is cached on the image, keyed by what it is now.
    assert_eq!(
        cached_digest(&img),
        Some(format!("{} {first}", cache_key(&img)))
    );
    // The cache is what the next flash sends: a forged one is sent as is
    // (and the BMC, which hashes what it receives, refuses it).
    set_cached_digest(&img, &"cd".repeat(32));
    let t = s
        .imgbuild(&["flash", "node02", "--yes"])
        .expect_exit(1)
        .text;
    assert!(t.contains("sha256 checksum failed. Expected: cdcd"), "{t}");
    // Appending a byte changes size and mtime: the cache is ignored and the
    // digest computed afresh.
    use std::io::Write;
    std::fs::OpenOptions::new()
        .append(true)
        .open(&img)
        .unwrap()
        .write_all(b"x")
        .unwrap();
    s.imgbuild(&["flash", "node02", "--yes"]).expect_exit(0);
    let second = sha256sum(&img);
    assert_ne!(first, second);
    assert_eq!(s.requests(&format!("sha256={second}")).len(), 1);
    assert_eq!(
        std::fs::read(s.bmc.slot_file(2)).unwrap(),
        std::fs::read(&img).unwrap()
    );
    // `touch` alone (same bytes, new mtime) also drops the cache: the
    // forged digest set now is not used once the image is touched.
    age(&img);
    set_cached_digest(&img, &"cd".repeat(32));
    let touched = std::process::Command::new("touch")
        .arg(&img)
        .status()
        .unwrap();
    assert!(touched.success());
    s.imgbuild(&["flash", "node02", "--yes"]).expect_exit(0);
    assert_eq!(s.requests(&format!("sha256={second}")).len(), 2);
}

#[test]
fn flash_image_flag_names_another_file() {
    let s = Setup::new();
    s.images();
    let other = s.dir().join("other.img");
    std::fs::write(&other, image_bytes(0x77)).unwrap();
    s.imgbuild(&[
        "flash",
        "node03",
        "--yes",
        "--image",
        other.to_str().unwrap(),
    ])
    .expect_exit(0);
    assert_eq!(
        std::fs::read(s.bmc.slot_file(3)).unwrap(),
        std::fs::read(&other).unwrap()
    );
    assert!(s.requests("file=other.img").len() == 1);
    let missing = s.dir().join("missing.img");
    let t = s
        .imgbuild(&[
            "flash",
            "node03",
            "--yes",
            "--image",
            missing.to_str().unwrap(),
        ])
        .expect_exit(1)
        .text;
    assert!(t.contains("missing.img"), "{t}");
    assert_eq!(s.bmc.lock().flashed, [3]);
}

#[test]
fn flash_refuses_while_the_bmc_is_flashing_something_else() {
    let s = Setup::new();
    s.images();
    // bmcd has no busy error: a start would cancel the other transfer
    // (streaming_data_service.rs:48-80), so imgbuild must not send one.
    let id = s.bmc.begin_other_transfer(1, 1 << 30);
    let t = s
        .imgbuild(&["flash", "node03", "--yes"])
        .expect_exit(1)
        .text;
    assert!(t.contains("already flashing a module"), "{t}");
    assert!(s.requests("opt=set&type=flash").is_empty());
    assert!(matches!(s.bmc.lock().flash, Flash::Transferring { id: i, .. } if i == id));
}

#[test]
fn a_flash_started_by_another_client_is_reported() {
    let s = Setup::new();
    s.images();
    s.bmc.lock().other_start_after_upload = true;
    let t = s
        .imgbuild(&["flash", "node02", "--yes", "--bmc-timeout", "5"])
        .expect_exit(1)
        .text;
    assert!(
        t.contains("another flash was started on the BMC while slot 2 was being flashed"),
        "{t}"
    );
    assert_eq!(
        s.bmc.lock().power.get(&2),
        Some(&true),
        "USB stage left it on"
    );
    assert_eq!(s.requests("node2=1").len(), 0, "powered on after a failure");
}

#[test]
fn a_daemon_restart_during_the_flash_is_not_success() {
    let s = Setup::new();
    s.images();
    s.bmc.lock().restart_after_upload = true;
    let t = s
        .imgbuild(&["flash", "node02", "--yes"])
        .expect_exit(1)
        .text;
    assert!(t.contains("daemon restarted while flashing slot 2"), "{t}");
    assert!(
        s.requests("node2=1").is_empty(),
        "powered on after a restart"
    );
}

#[test]
fn flash_faults_are_reported_with_what_to_do() {
    let s = Setup::new();
    s.images();
    s.bmc.lock().crc_error_slots = vec![3];
    let t = s
        .imgbuild(&["flash", "node03", "--yes"])
        .expect_exit(1)
        .text;
    assert!(
        t.contains("the read-back of slot 3 did not match what was written (crc error. expected ")
            && t.contains("flash again"),
        "{t}"
    );
    assert_eq!(
        s.bmc.lock().power.get(&3),
        Some(&false),
        "a failed slot was powered on"
    );
    // No module: bmcd accepts the start and fails ~1.2 s later in the USB
    // stage (upgrade_worker.rs:76; usb_boot.rs:110-113).
    s.bmc.lock().missing_slots = vec![4];
    let t = s
        .imgbuild(&["flash", "node04", "--yes"])
        .expect_exit(1)
        .text;
    clean(&t);
    assert!(
        t.contains("found no compute module in slot 4 (Compute module's USB interface not found or supported)")
            && t.contains("check that a module is seated in slot 4"),
        "{t}"
    );
    assert_eq!(
        s.requests("opt=set&type=flash&file=node04").len(),
        1,
        "start not sent"
    );
    // A node outside the Turing Pi is refused before anything is sent.
    let t = s.imgbuild(&["flash", "ws03", "--yes"]).expect_exit(2).text;
    assert!(t.contains("not in a Turing Pi slot"), "{t}");
}

#[test]
fn a_missed_upload_window_is_explained() {
    let s = Setup::new();
    s.images();
    {
        let mut st = s.bmc.lock();
        st.send_window = Duration::from_millis(100);
        st.upload_delay = Duration::from_secs(1);
    }
    let t = s
        .imgbuild(&["flash", "node02", "--yes"])
        .expect_exit(1)
        .text;
    clean(&t);
    assert!(
        t.contains("gave up waiting for the upload to begin (Send timeout")
            && t.contains("check the network")
            && t.contains("current=Error, expected=Transferring"),
        "{t}"
    );
    assert_eq!(s.bmc.lock().flash, Flash::Error("Send timeout".into()));
}

#[test]
fn upload_faults_are_explained_from_the_flash_state() {
    let s = Setup::new();
    s.images();
    // A wrong digest (a forged cache on the image): bmcd answers the upload
    // 200 and fails the digest afterwards, in the flash state (io.rs:88-96).
    let img = s.image("node02.rk1.img");
    age(&img);
    set_cached_digest(&img, &"ab".repeat(32));
    let t = s
        .imgbuild(&["flash", "node02", "--yes"])
        .expect_exit(1)
        .text;
    assert!(
        t.contains("sha256 checksum failed. Expected: abab")
            && t.contains("`touch` it")
            && t.contains("not usable until it is flashed again"),
        "{t}"
    );
    let touched = std::process::Command::new("touch")
        .arg(&img)
        .status()
        .unwrap();
    assert!(touched.success());
    // The connection drops mid-upload: bmcd cancels ("cancelled by user").
    s.bmc.lock().drop_upload_after = Some(1 << 20);
    let t = s
        .imgbuild(&["flash", "node02", "--yes"])
        .expect_exit(1)
        .text;
    assert!(
        t.contains("the BMC cancelled the transfer (cancelled by user)") && t.contains("127.0.0.1"),
        "{t}"
    );
    assert!(s.bmc.lock().flashed.is_empty());
    // Nothing listens on the BMC's address (a port held, so no one else takes it).
    let (_held, port) = closed_port();
    s.retarget(&format!("127.0.0.1:{port}"));
    let t = s.imgbuild(&["bmc", "status"]).expect_exit(1).text;
    assert!(
        t.contains(&format!("127.0.0.1:{port}")) && t.to_lowercase().contains("connect"),
        "{t}"
    );
}

/// A loopback port bound but not listening, held while the descriptor lives:
/// connections to it are refused, and no other test can take it meanwhile.
fn closed_port() -> (std::os::fd::OwnedFd, u16) {
    use std::os::fd::FromRawFd;
    // SAFETY: plain socket calls on a descriptor we own; `addr` outlives them.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0);
        let owned = std::os::fd::OwnedFd::from_raw_fd(fd);
        let mut addr: libc::sockaddr_in = std::mem::zeroed();
        addr.sin_family = libc::AF_INET as libc::sa_family_t;
        addr.sin_addr.s_addr = u32::from(std::net::Ipv4Addr::LOCALHOST).to_be();
        let size = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        assert_eq!(
            libc::bind(fd, &addr as *const _ as *const libc::sockaddr, size),
            0
        );
        let mut len = size;
        assert_eq!(
            libc::getsockname(fd, &mut addr as *mut _ as *mut libc::sockaddr, &mut len),
            0
        );
        (owned, u16::from_be(addr.sin_port))
    }
}

#[test]
fn an_image_cut_short_during_the_upload_is_reported() {
    let s = Setup::new();
    let dist = s.dir().join("dist");
    std::fs::create_dir_all(&dist).unwrap();
    let image = dist.join("node02.rk1.img");
    sh(&format!("head -c 16M /dev/urandom > {}", q(&image)));
    s.bmc.lock().upload_rate = Some(4 << 20);
    let child = s
        .imgbuild(&["flash", "node02", "--yes"])
        .command()
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(
        &s.bmc,
        |f| matches!(f, Flash::Transferring { bytes_written, .. } if *bytes_written > 0),
    );
    // Another process truncates the image while it is being sent.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&image)
        .unwrap()
        .set_len(1 << 20)
        .unwrap();
    let out = Run::from(&child.wait_with_output().unwrap());
    assert_eq!(out.code, 1, "{}", out.text);
    let t = out.text;
    assert!(
        t.contains("node02.rk1.img changed size while it was being sent (16777216 bytes at the start, 1048576 now")
            && t.contains("the upload to slot 2 failed"),
        "{t}"
    );
    assert_eq!(s.bmc.lock().flash, Flash::Error("cancelled by user".into()));
    assert!(s.bmc.lock().flashed.is_empty());
}

fn wait_for(bmc: &FakeBmc, ok: impl Fn(&Flash) -> bool) {
    for _ in 0..600 {
        if ok(&bmc.lock().flash) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!(
        "the fake BMC never reached the state: {:?}",
        bmc.lock().flash
    );
}

#[test]
fn an_interrupted_flash_cancels_the_upload_on_the_bmc() {
    let s = Setup::new();
    let dist = s.dir().join("dist");
    std::fs::create_dir_all(&dist).unwrap();
    // A throttled BMC instead of gigabytes: 64 MiB at 8 MiB/s.
    sh(&format!(
        "head -c 64M /dev/urandom > {}",
        q(&dist.join("node02.rk1.img"))
    ));
    s.bmc.lock().upload_rate = Some(8 << 20);
    let child = s
        .imgbuild(&["flash", "node02", "--yes"])
        .command()
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_for(
        &s.bmc,
        |f| matches!(f, Flash::Transferring { bytes_written, .. } if *bytes_written > 0),
    );
    sh(&format!("kill -INT {}", child.id()));
    let out = child.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(s.requests("/cancel").len(), 1);
    let st = s.bmc.lock();
    assert!(st.flashed.is_empty());
    assert_eq!(st.flash, Flash::Error("cancelled by user".into()));
}

#[test]
fn a_2_gib_sparse_upload_keeps_memory_flat() {
    let s = Setup::new();
    let dist = s.dir().join("dist");
    std::fs::create_dir_all(&dist).unwrap();
    let image = dist.join("node02.rk1.img");
    sh(&format!(
        "truncate -s 2G {i}; printf head | dd of={i} conv=notrunc status=none; printf tail | dd of={i} bs=1 seek=$((2*1024*1024*1024 - 4)) conv=notrunc status=none",
        i = q(&image)
    ));
    let (code, peak_mib) = run_measured(&mut s.imgbuild(&["flash", "node02", "--yes"]).command());
    assert_eq!(code, 0, "flash failed");
    println!("peak RSS of imgbuild flash for a 2 GiB image: {peak_mib} MiB");
    assert!(peak_mib < 200, "peak RSS {peak_mib} MiB for a 2 GiB upload");
    let slot = s.bmc.slot_file(2);
    assert_eq!(std::fs::metadata(&slot).unwrap().len(), 2 << 30);
    assert_eq!(
        hash_range(&slot, 0, 2 << 30),
        hash_range(&image, 0, 2 << 30)
    );
}

// ----------------------------------------------------------------- deploy

#[test]
fn deploy_flashes_in_slot_order_and_resumes_after_a_failure() {
    let s = Setup::new();
    s.images();
    s.bmc.lock().missing_slots = vec![3];
    let t = s.imgbuild(&["deploy", "--yes"]).expect_exit(1).text;
    assert!(
        t.contains("continue from node03") && t.contains("no compute module in slot 3"),
        "{t}"
    );
    assert_eq!(s.bmc.lock().flashed, [1, 2]);
    s.bmc.lock().missing_slots.clear();
    let report = s.imgbuild(&["deploy", "--yes", "--json"]).json();
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
    let st = s.bmc.lock();
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
fn deploy_nodes_flashes_only_those_named() {
    let s = Setup::new();
    s.images();
    let report = s
        .imgbuild(&["deploy", "--yes", "--json", "--nodes", "node04,node02"])
        .json();
    let nodes: Vec<&str> = report
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["node"].as_str().unwrap())
        .collect();
    assert_eq!(nodes, ["node02", "node04"], "not in slot order");
    assert_eq!(s.bmc.lock().flashed, [2, 4]);
    // A name that is not a node is an error, not silently skipped.
    let t = s
        .imgbuild(&["deploy", "--yes", "--nodes", "node01,nosuch"])
        .expect_exit(2)
        .text;
    assert!(t.contains("no node \"nosuch\""), "{t}");
    let t = s
        .imgbuild(&["deploy", "--yes", "--nodes", "ws03"])
        .expect_exit(2)
        .text;
    assert!(t.contains("not in a Turing Pi slot"), "{t}");
    assert_eq!(s.bmc.lock().flashed, [2, 4]);
}

// ------------------------------------------- the fake itself, seen by curl

/// curl (OpenSSL, independent of the client under test) against the fake:
/// `args` then `https://<bmc><path>`; (status, body).
fn curl(bmc: &FakeBmc, args: &str, path: &str) -> (u16, String) {
    let out = sh(&format!(
        "curl -sk -w '\n%{{http_code}}' {args} 'https://{}{path}'",
        bmc.host()
    ));
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.trim().parse().unwrap(), body.to_string())
}

#[test]
fn the_fake_answers_like_bmcd() {
    let bmc = FakeBmc::start("turing");
    let head = sh(&format!(
        "curl -sk -D - -o /dev/null -d '{{\"username\":\"root\",\"password\":\"turing\"}}' https://{}/api/bmc/authenticate",
        bmc.host()
    ));
    let head = String::from_utf8(head.stdout).unwrap();
    let tok = head
        .lines()
        .find_map(|l| l.strip_prefix("X-Auth-Token: "))
        .expect("no X-Auth-Token header")
        .trim()
        .to_string();
    assert_eq!(tok.len(), 64);
    assert!(!head.to_lowercase().contains("content-type"), "{head}");
    let auth = format!("-H 'Authorization: Bearer {tok}'");
    let get = |q: &str, a: &str| curl(&bmc, a, &format!("/api/bmc?{q}"));
    assert_eq!(
        get("opt=get&type=about", ""),
        (401, "no authorization header provided".into())
    );
    assert_eq!(
        get("opt=get&type=nonsense", &auth),
        (
            400,
            r#"{"response":[{"result":"Invalid `type` parameter nonsense"}]}"#.into()
        )
    );
    assert_eq!(
        get("opt=set&type=power&node2=7", &auth),
        (
            400,
            r#"{"response":[{"result":"Invalid value `7` for parameter `node2`"}]}"#.into()
        )
    );
    assert_eq!(
        get("opt=set&type=flash&file=a.img&length=10&node=4", &auth),
        (
            500,
            "Parameter `node` is out of range 0..3 of node IDs".into()
        )
    );
    assert_eq!(
        get("opt=set&type=flash&file=a.img&length=ten&node=0", &auth),
        (500, "`length` parameter is not a number".into())
    );
    // A short upload: 500 "missing {humansize}", state "cancelled by user"
    // (legacy.rs:674-680).
    let (code, start) = get("opt=set&type=flash&file=a.img&length=1020&node=0", &auth);
    assert_eq!(code, 200, "{start}");
    let handle = |s: &str| {
        serde_json::from_str::<serde_json::Value>(s).unwrap()["handle"]
            .as_u64()
            .unwrap()
    };
    let w = scratch();
    let part = w.path().join("part");
    std::fs::write(&part, [7u8; 20]).unwrap();
    let form = format!("{auth} -F file=@{}", q(&part));
    assert_eq!(
        curl(&bmc, &form, &format!("/api/bmc/upload/{}", handle(&start))),
        (500, "missing 1 kB".into())
    );
    assert_eq!(
        get("opt=get&type=flash", &auth),
        (200, r#"{"Error":"cancelled by user"}"#.into())
    );
    // A second start replaces the first; the old handle is refused.
    let (_, first) = get("opt=set&type=flash&file=a.img&length=20&node=1", &auth);
    let (_, second) = get("opt=set&type=flash&file=a.img&length=20&node=2", &auth);
    assert_ne!(handle(&first), handle(&second));
    assert_eq!(
        curl(&bmc, &form, &format!("/api/bmc/upload/{}", handle(&first))),
        (500, "unauthorized request for handle".into())
    );
    assert_eq!(curl(&bmc, &form, "/api/bmc/upload/abc").0, 404);
    // The right handle, the right size: an empty 200, then the read-back.
    assert_eq!(
        curl(&bmc, &form, &format!("/api/bmc/upload/{}", handle(&second))),
        (200, String::new())
    );
    wait_for(&bmc, |f| matches!(f, Flash::Done { .. }));
    assert_eq!(bmc.lock().flashed, [3]);
    // A wrong password: 403, plain text; an unknown token: 401, and counted.
    assert_eq!(
        curl(
            &bmc,
            r#"-d '{"username":"root","password":"x"}'"#,
            "/api/bmc/authenticate"
        ),
        (403, "credentials incorrect".into())
    );
    assert_eq!(
        get("opt=get&type=about", "-H 'Authorization: Bearer nope'"),
        (401, "token nope is not registered".into())
    );
}

/// The fake's own faults (here a request it does not model) fail the test
/// instead of being swallowed.
#[test]
#[should_panic(expected = "Basic authentication is not modelled")]
fn the_fakes_faults_fail_the_test() {
    let bmc = FakeBmc::start("turing");
    let (code, _) = curl(&bmc, "-u root:turing", "/api/bmc?opt=get&type=about");
    assert_eq!(code, 401);
    drop(bmc);
}

#[test]
fn the_fake_formats_sizes_and_durations_like_bmcd() {
    use crate::support::bmc::{humansize, humantime};
    // humansize 2.1 DECIMAL (its tests/test.rs), and the u64 wrap of a too-long upload.
    assert_eq!(humansize(10), "10 B");
    assert_eq!(humansize(1000), "1 kB");
    assert_eq!(humansize(1024), "1.02 kB");
    assert_eq!(humansize(0u64.wrapping_sub(5)), "18.45 EB");
    // humantime: every unit down to nanoseconds.
    assert_eq!(
        humantime(Duration::new(59, 999_998_100)),
        "59s 999ms 998us 100ns"
    );
    assert_eq!(humantime(Duration::from_secs(3600 + 120)), "1h 2m");
}

// ------------------------------------------------- the client's parsers

mod parsers {
    use imgbuild::deliver::turing_pi::response::{self, DaemonVersion, FlashState};
    use proptest::prelude::*;

    /// Real bmcd answers, for mutation.
    const SAMPLES: &[&str] = &[
        r#""Ready""#,
        r#"{"Transferring":{"id":3141592653,"process_name":"Node 2 os install service","size":1073741824,"cancelled":false,"bytes_written":524288}}"#,
        r#"{"Done":[{"secs":62,"nanos":125000000},1073741824]}"#,
        r#"{"Error":"Compute module's USB interface not found or supported"}"#,
        r#"{"response":[{"result":"Invalid `type` parameter x"}]}"#,
        r#"{"response":[{"result":[{"node1":"1","node2":"0","node3":"Unknown","node4":"0"}]}]}"#,
        r#"{"response":[{"result":{"api":"1.1","version":"2.1.0","bmcd_version":"2.3.7","buildroot":"Buildroot 2024.05.1"}}]}"#,
        r#"{"handle":4294967295}"#,
        r#"{"id":"abcdEFGH0123","name":"User Session","description":"User Session","username":"root"}"#,
        "Exceeded allowed authentication attempts. Access blocked for 1m 59s 999ms",
    ];

    fn json() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::from),
            any::<u64>().prop_map(serde_json::Value::from),
            any::<i64>().prop_map(serde_json::Value::from),
            any::<f64>().prop_map(|f| serde_json::json!(f)),
            ".{0,40}".prop_map(serde_json::Value::from),
            prop::sample::select(vec![
                "Ready",
                "Transferring",
                "Done",
                "Error",
                "response",
                "result",
                "1",
                "0"
            ])
            .prop_map(serde_json::Value::from),
        ];
        leaf.prop_recursive(4, 64, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
                prop::collection::btree_map(
                    prop_oneof![
                        prop::sample::select(vec![
                            "Transferring",
                            "Done",
                            "Error",
                            "response",
                            "result",
                            "id",
                            "size",
                            "bytes_written",
                            "handle",
                            "node1",
                            "node4",
                            "node9",
                            "version",
                            "bmcd_version",
                        ])
                        .prop_map(str::to_string),
                        ".{0,12}",
                    ],
                    inner,
                    0..5
                )
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    /// Every parser on `text`: none may panic.
    fn all(text: &str) {
        let _ = FlashState::parse(text);
        let _ = response::error_message(text);
        let _ = response::ban(text);
        let _ = response::flash_handle(text);
        let _ = response::login_token(Some(text), text);
        let _ = response::login_token(None, text);
        if let Ok(r) = response::envelope_result(text) {
            let _ = response::power(&r);
            if let Ok(a) = response::about(r) {
                let v = DaemonVersion::from_about(&a);
                let _ = v.checks_sha256();
            }
        }
        if let Ok(FlashState::Error(m)) = FlashState::parse(text) {
            assert!(!m.chars().any(char::is_control) && m.chars().count() <= 301);
            let _ = response::explain_flash_error(2, &m);
        }
        let shown = response::error_message(text);
        assert!(!shown.chars().any(char::is_control), "{shown:?}");
    }

    fn config() -> ProptestConfig {
        // A fixed seed unless PROPTEST_RNG_SEED says otherwise; a long run:
        // IMGBUILD_FUZZ_CASES=200000 cargo test --test deliver bmc::parsers.
        let seed = std::env::var("PROPTEST_RNG_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(0x5eed_b3cd);
        let cases = std::env::var("IMGBUILD_FUZZ_CASES")
            .ok()
            .and_then(|c| c.parse().ok())
            .unwrap_or(3000);
        eprintln!("bmc parser fuzz: {cases} cases per property, seed {seed}");
        ProptestConfig {
            cases,
            rng_seed: proptest::test_runner::RngSeed::Fixed(seed),
            failure_persistence: None,
            ..ProptestConfig::default()
        }
    }

    proptest! {
        #![proptest_config(config())]

        #[test]
        fn arbitrary_text_never_panics(text in ".{0,200}") {
            all(&text);
        }

        #[test]
        fn arbitrary_json_never_panics(v in json()) {
            all(&v.to_string());
            let wrapped = serde_json::json!({"response": [{"result": v.clone()}]}).to_string();
            all(&wrapped);
            all(&serde_json::json!({"Transferring": v.clone()}).to_string());
            all(&serde_json::json!({"Error": v}).to_string());
        }

        #[test]
        fn mutated_answers_never_panic(
            i in 0..SAMPLES.len(),
            edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..6),
        ) {
            let mut b = SAMPLES[i].as_bytes().to_vec();
            for (at, byte, op) in edits {
                let n = b.len().max(1);
                let p = at.index(n).min(b.len());
                match op {
                    0 if p < b.len() => b[p] = byte,
                    1 => b.insert(p, byte),
                    _ if p < b.len() => { b.remove(p); }
                    _ => b.push(byte),
                }
            }
            all(&String::from_utf8_lossy(&b));
        }
    }
}
