//! Hostile inputs, faults and local attackers (issue 11): each test feeds one
//! crafted input or fault and checks that imgbuild refuses it with a clear
//! message, writes nothing outside what it targets, and leaves nothing behind.

mod support {
    pub mod bytes;
    pub mod fixtures;
    pub mod harness;
    pub mod http;
    pub mod mirror;
}

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use support::{bytes::*, fixtures::*, harness::*, mirror::*};

use support::mirror::run_example as run;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A sparse copy of `base` in `dir` named `name`.
fn copy_of(base: &Path, dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    sh(&format!("cp --sparse=always {} {}", q(base), q(&p)));
    p
}

/// Edits GPT fields (both copies) and fixes the CRCs with zlib (tests/fixtures/gpt.py).
fn gpt_edit(img: &Path, edits: &[&str]) {
    sh(&format!(
        "python3 {} {} {}",
        q(&repo().join("tests/fixtures/gpt.py")),
        q(img),
        edits.join(" ")
    ));
}

/// The hash of an image's data: its size and its first 512 MiB, which hold
/// every fixture's partitions (the sparse 64 GiB images are not read whole).
fn whole_hash(p: &Path) -> String {
    let size = std::fs::metadata(p).unwrap().len();
    format!("{size}:{}", hash_range(p, 0, size.min(512 * MIB)))
}

/// Runs a bake of node02 (RK1) or node01 (CM4) on `base` and expects a refusal
/// whose message contains every one of `expect`; the base is unchanged and no
/// output or partial file is left.
fn refused(base: &Path, target: &str, expect: &[&str]) {
    let before = whole_hash(base);
    let out = tempfile::tempdir().unwrap();
    let r = run(out.path(), &["--base", s(base), target]);
    assert_eq!(r.code, 1, "{}", r.text);
    assert!(!r.text.contains("panicked"), "{}", r.text);
    for e in expect {
        assert!(r.text.contains(e), "expected {e:?} in:\n{}", r.text);
    }
    assert_eq!(whole_hash(base), before, "the base image changed");
    let left: Vec<_> = std::fs::read_dir(out.path()).unwrap().collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn gpt_entries_that_overflow_or_leave_the_disk_are_refused() {
    let fx = fixtures();
    let w = tempfile::tempdir().unwrap();
    // Finding 2: last_lba = 2^64-1 wrapped the partition length.
    let img = copy_of(&fx.rk1.path, w.path(), "wrap.img");
    gpt_edit(&img, &["entry:2:last=0xFFFFFFFFFFFFFFFF"]);
    refused(
        &img,
        "node02.rk1.img",
        &[
            "GPT partition table is unreadable",
            "partition 2",
            "outside the usable sectors",
        ],
    );
    // Even with the usable area widened to match, the extent must fit the image.
    let img = copy_of(&fx.rk1.path, w.path(), "past-end.img");
    let sectors = std::fs::metadata(&img).unwrap().len() / 512;
    gpt_edit(
        &img,
        &[
            &format!("entry:2:last={}", sectors + 100),
            &format!("header:last_usable={}", sectors + 100),
        ],
    );
    refused(
        &img,
        "node02.rk1.img",
        &["GPT partition table is unreadable", "usable sectors"],
    );
    // Overlapping partitions.
    let img = copy_of(&fx.rk1.path, w.path(), "overlap.img");
    gpt_edit(&img, &["entry:1:last=40970"]);
    refused(&img, "node02.rk1.img", &["partitions 1 and 2 overlap"]);
}

#[test]
fn gpt_headers_that_panicked_or_hung_the_reader_are_refused_quickly() {
    let fx = fixtures();
    let w = tempfile::tempdir().unwrap();
    // Finding 8: entry sizes 0, 8 and 0x80000000 panicked inside the gpt crate;
    // 0xFFFFFFFF entries ran for minutes.
    for (edit, expect) in [
        ("header:entry_size=0", "entry size 0"),
        ("header:entry_size=8", "entry size 8"),
        ("header:entry_size=0x80000000", "exceed the"),
        ("header:count=0xFFFFFFFF", "exceed the"),
    ] {
        let img = copy_of(&fx.rk1.path, w.path(), "hdr.img");
        // A large sparse image, as in the report.
        sh(&format!("truncate -s 64G {}", q(&img)));
        gpt_edit(&img, &[edit]);
        let started = std::time::Instant::now();
        refused(
            &img,
            "node02.rk1.img",
            &["GPT partition table is unreadable", expect],
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(20),
            "{edit}: took {:?}",
            started.elapsed()
        );
        std::fs::remove_file(&img).unwrap();
    }
}

#[test]
fn mbr_problems_say_mbr_and_overlaps_are_refused() {
    let fx = fixtures();
    let w = tempfile::tempdir().unwrap();
    // Partition 1 grown into partition 2 (its sector count at byte 446+12).
    let img = copy_of(&fx.cm4.path, w.path(), "mbr-overlap.img");
    let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    f.write_all_at(&200_000u32.to_le_bytes(), 446 + 12).unwrap();
    refused(&img, "node01.cm4.img", &["partitions 1 and 2 overlap"]);
    // Partition 2 running past the end of the image.
    let img = copy_of(&fx.cm4.path, w.path(), "mbr-long.img");
    let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    f.write_all_at(&u32::MAX.to_le_bytes(), 446 + 16 + 12)
        .unwrap();
    refused(&img, "node01.cm4.img", &["partition 2", "outside the"]);
    // A bad entry: the message names the MBR, not the GPT.
    f.write_all_at(&[0x33], 446 + 16).unwrap();
    refused(
        &img,
        "node01.cm4.img",
        &["MBR (DOS) partition table is unreadable", "boot flag"],
    );
}

fn fatcraft(img: &Path, offset: u64, args: &str) {
    sh(&format!(
        "python3 {} {} {offset} {args}",
        q(&repo().join("tests/fixtures/fatcraft.py")),
        q(img)
    ));
}

/// fsck.fat's verdict on the FAT partition at `offset`: its output when it finds problems.
fn fsck_fat_problems(img: &Path, offset: u64, len: u64, dir: &Path) -> String {
    let part = dir.join("fat.part");
    extract(img, offset, len, &part);
    let (code, out) = sh_status(&format!("fsck.fat -n {}", q(&part)));
    std::fs::remove_file(&part).unwrap();
    assert_ne!(code, 0, "fsck.fat finds no problem:\n{out}");
    out
}

#[test]
fn damaged_fat_chains_are_refused_before_anything_changes() {
    let fx = fixtures();
    let w = tempfile::tempdir().unwrap();
    let (start, len) = fx.rk1.part(1);
    // Finding 10: user-data shares meta-data's cluster. Freeing meta-data's
    // chain used to free a cluster user-data still uses.
    let img = copy_of(&fx.rk1.path, w.path(), "crosslinked.img");
    fatcraft(&img, start, "crosslink META-DAT USER-DAT");
    let fsck = fsck_fat_problems(&img, start, len, w.path());
    println!("fsck.fat on the crafted volume:\n{fsck}");
    refused(
        &img,
        "node02.rk1.img",
        &["FAT volume is damaged", "fsck.fat", "also used elsewhere"],
    );
    // A chain that loops onto itself.
    let img = copy_of(&fx.rk1.path, w.path(), "loop.img");
    fatcraft(&img, start, "loop USER-DAT");
    fsck_fat_problems(&img, start, len, w.path());
    refused(
        &img,
        "node02.rk1.img",
        &["FAT volume is damaged", "fsck.fat"],
    );
}

/// Peak memory (KiB) of `imgbuild args` and its output, measured by the kernel
/// through Python's resource module.
fn peak_kib(cwd: &Path, args: &[&str]) -> (u64, i32, String) {
    let e = env();
    let out = std::process::Command::new("python3")
        .arg("-c")
        .arg(
            "import resource, subprocess, sys\n\
             r = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n\
             print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n\
             print(r.returncode)\n\
             print(r.stdout + r.stderr)",
        )
        .arg(bin())
        .args(args)
        .current_dir(cwd)
        .env("IMGBUILD_SECRETS", e.secrets())
        .env("IMGBUILD_CACHE_DIR", e.cache())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut lines = text.lines();
    let kib = lines.next().unwrap().parse().unwrap();
    let code = lines.next().unwrap().parse().unwrap();
    (kib, code, lines.collect::<Vec<_>>().join("\n"))
}

#[test]
fn a_fat_claiming_a_huge_table_is_inspected_in_little_memory() {
    // Finding 9: a sparse image whose FAT32 BPB claims a ~1.5 GB FAT made
    // `inspect` read the whole table into memory.
    let w = tempfile::tempdir().unwrap();
    let img = w.path().join("huge-fat.img");
    sh(&format!(
        "truncate -s 100G {i}; printf 'label: dos\\nstart=2048, type=c\\n' | sfdisk -q {i}",
        i = q(&img)
    ));
    fatcraft(&img, 2048 * 512, "huge");
    let started = std::time::Instant::now();
    let (kib, code, out) = peak_kib(w.path(), &["inspect", s(&img)]);
    println!(
        "inspect: exit {code}, peak {kib} KiB, {:?}\n{out}",
        started.elapsed()
    );
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("HUGE"), "{out}");
    assert!(kib < 100 * 1024, "inspect used {kib} KiB");
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
}

#[test]
fn a_journal_needing_recovery_gets_the_clear_refusal() {
    // Finding 14: the reader failed first with "missing required journal features: 18".
    let fx = fixtures();
    let w = tempfile::tempdir().unwrap();
    let img = copy_of(&fx.rk1.path, w.path(), "recover.img");
    let (start, _) = fx.rk1.part(2);
    // debugfs (e2fsprogs) sets the flag and keeps the superblock checksum valid.
    sh(&format!(
        "debugfs -w -R 'feature needs_recovery' '{}?offset={start}' >/dev/null 2>&1",
        img.display()
    ));
    refused(
        &img,
        "node02.rk1.img",
        &["the journal needs recovery", "e2fsck -fy"],
    );
    let r = run(w.path(), &["--base", s(&img), "node02.rk1.img"]);
    assert!(!r.text.contains("journal features"), "{}", r.text);
}

/// Every path under `dir` with its permission bits.
fn modes_under(dir: &Path) -> Vec<(PathBuf, u32)> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let Ok(m) = std::fs::symlink_metadata(e.path()) else {
                continue;
            };
            out.push((e.path(), m.permissions().mode() & 0o7777));
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    out
}

/// Starts a bake of node02 into `out` with `tmp` as TMPDIR under `umask`.
/// debugfs is reached through a wrapper in `slow/` that records its PID in
/// `slow/debugfs.pid`, waits `pause` seconds, then runs the real debugfs: a
/// window to look at (or signal) the bake while its ext4 writes are staged.
fn spawn_bake(base: &Path, out: &Path, tmp: &Path, umask: &str, pause: f32) -> std::process::Child {
    let e = env();
    let profiles = repo().join("profiles");
    let slow = tmp.parent().unwrap().join("slow");
    std::fs::create_dir_all(&slow).unwrap();
    let real = sh("command -v debugfs").stdout;
    let wrapper = slow.join("debugfs");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\necho $$ > {pid}.new && mv {pid}.new {pid}\nsleep {pause}\nexec {real} \"$@\"\n",
            pid = q(&slow.join("debugfs.pid")),
            real = String::from_utf8_lossy(&real).trim()
        ),
    )
    .unwrap();
    sh(&format!("chmod 755 {}", q(&wrapper)));
    std::process::Command::new("bash")
        .env_remove("CI")
        .arg("-c")
        .arg(format!(
            "umask {umask}; exec {} --profiles {} --base {} {}",
            q(&bin()),
            q(&profiles),
            q(base),
            q(&out.join("node02.rk1.img"))
        ))
        .env(
            "PATH",
            format!("{}:{}", slow.display(), std::env::var("PATH").unwrap()),
        )
        .env("TMPDIR", tmp)
        .env("IMGBUILD_SECRETS", e.secrets())
        .env("IMGBUILD_CACHE_DIR", e.cache())
        .env("IMGBUILD_K3S_MIRROR", e.mirror_url())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits until the bake runs debugfs; returns the wrapper's PID.
fn wait_for_debugfs(child: &mut std::process::Child, tmp: &Path) -> Option<u32> {
    let pid_file = tmp.parent().unwrap().join("slow/debugfs.pid");
    for _ in 0..6000 {
        if let Ok(pid) = std::fs::read_to_string(&pid_file) {
            return Some(pid.trim().parse().unwrap());
        }
        if child.try_wait().unwrap().is_some() {
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    None
}

/// Ends the debugfs wrapper a test started (through the bake) and left running.
fn end_wrapper(pid: u32) {
    let _ = sh_status(&format!("kill -KILL {pid}"));
}

/// The node password baked into node02 (a secret that must not leak into files).
fn node02_password() -> String {
    std::fs::read_to_string(env().secrets().join("nodes/node02/node-password"))
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn under_umask_000_nothing_is_readable_by_others() {
    // Finding 3: the debugfs work directory and the output directory followed the umask.
    let fx = fixtures();
    let w = tempfile::tempdir().unwrap();
    let (tmp, out) = (w.path().join("tmp"), w.path().join("dist"));
    std::fs::create_dir(&tmp).unwrap();
    let mut child = spawn_bake(&fx.rk1.path, &out, &tmp, "000", 0.5);
    let mut seen = std::collections::BTreeMap::new();
    while child.try_wait().unwrap().is_none() {
        for (p, mode) in modes_under(&tmp).into_iter().chain(modes_under(&out)) {
            seen.insert(p, mode);
        }
    }
    let status = child.wait_with_output().unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    for (p, mode) in modes_under(&out) {
        seen.insert(p, mode);
    }
    let open: Vec<_> = seen.iter().filter(|(_, m)| *m & 0o077 != 0).collect();
    assert!(open.is_empty(), "readable by others: {open:?}");
    use std::os::unix::fs::PermissionsExt;
    let dist = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
    assert_eq!(dist, 0o700);
    assert!(
        modes_under(&tmp).is_empty(),
        "left in TMPDIR: {:?}",
        modes_under(&tmp)
    );
}

#[test]
fn sigterm_and_sigint_leave_no_secret_and_no_temporary_file() {
    // Finding 4: a signal during the ext4 writes left the staged secrets and
    // the command file in /tmp.
    let fx = fixtures();
    for sig in ["TERM", "INT"] {
        let w = tempfile::tempdir().unwrap();
        let (tmp, out) = (w.path().join("tmp"), w.path().join("dist"));
        std::fs::create_dir(&tmp).unwrap();
        let mut child = spawn_bake(&fx.rk1.path, &out, &tmp, "022", 30.0);
        let wrapper = wait_for_debugfs(&mut child, &tmp).expect("the bake never ran debugfs");
        sh(&format!("kill -{sig} {}", child.id()));
        let status = child.wait_with_output().unwrap();
        end_wrapper(wrapper);
        assert_eq!(
            status.status.code(),
            Some(130),
            "{}",
            String::from_utf8_lossy(&status.stderr)
        );
        // Nothing staged for debugfs may outlive the process: not in TMPDIR,
        // and no secret in any file under the test's directory.
        let password = node02_password();
        for (p, _) in modes_under(w.path()) {
            if let Ok(bytes) = std::fs::read(&p) {
                assert!(
                    !String::from_utf8_lossy(&bytes).contains(&password),
                    "SIG{sig}: {} holds the node password",
                    p.display()
                );
            }
        }
        assert!(
            modes_under(&tmp).is_empty(),
            "SIG{sig} left in TMPDIR: {:?}",
            modes_under(&tmp)
        );
        assert!(
            modes_under(&out).is_empty(),
            "SIG{sig} left in the output directory: {:?}",
            modes_under(&out)
        );
    }
}

#[test]
fn a_killed_run_leaves_a_partial_the_next_run_removes_and_live_ones_are_kept() {
    // Finding 4: `kill -9` left a partial image (with secrets in it) that no later run removed.
    let fx = fixtures();
    let w = tempfile::tempdir().unwrap();
    let (tmp, out) = (w.path().join("tmp"), w.path().join("dist"));
    std::fs::create_dir(&tmp).unwrap();
    let mut child = spawn_bake(&fx.rk1.path, &out, &tmp, "022", 30.0);
    let wrapper = wait_for_debugfs(&mut child, &tmp).expect("the bake never ran debugfs");
    sh(&format!("kill -KILL {}", child.id()));
    child.wait().unwrap();
    end_wrapper(wrapper);
    sh("sleep 0.5");
    let partials = || -> Vec<String> {
        std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".partial"))
            .collect()
    };
    let stale = partials();
    assert_eq!(stale.len(), 1, "{stale:?}");
    assert!(modes_under(&tmp).is_empty(), "{:?}", modes_under(&tmp));
    // A partial some live process holds (here `flock`) is not ours to remove,
    // nor is a file of another name or a symlink.
    let live = out.join(".node03.rk1.img.Live01.partial");
    std::fs::write(&live, "being written").unwrap();
    let mut holder = std::process::Command::new("flock")
        .arg(&live)
        .args(["sleep", "60"])
        .spawn()
        .unwrap();
    sh("sleep 0.3");
    let other = out.join(".notes.partial");
    std::fs::write(&other, "x").unwrap();
    std::os::unix::fs::symlink(&other, out.join(".node04.rk1.img.Sym001.partial")).unwrap();
    let r = run(
        &out,
        &["--base", s(&fx.rk1.path), s(&out.join("node02.rk1.img"))],
    );
    holder.kill().unwrap();
    holder.wait().unwrap();
    assert_eq!(r.code, 0, "{}", r.text);
    let mut left = partials();
    left.sort();
    assert_eq!(
        left,
        [
            ".node03.rk1.img.Live01.partial",
            ".node04.rk1.img.Sym001.partial",
            ".notes.partial"
        ],
        "{}",
        r.text
    );
    assert!(r.text.contains(&stale[0]), "{}", r.text);
}

#[test]
fn sha256sums_is_never_read_or_written_through_a_symlink() {
    // Finding 13: a SHA256SUMS symlink planted in a shared output directory
    // was read (and its target's content copied into the new file).
    let fx = fixtures();
    let w = tempfile::tempdir().unwrap();
    let out = w.path().join("dist");
    std::fs::create_dir(&out).unwrap();
    let secret = w.path().join("secret.txt");
    std::fs::write(&secret, "root:$6$hash:19000:0:99999:7:::\n").unwrap();
    std::os::unix::fs::symlink(&secret, out.join("SHA256SUMS")).unwrap();
    let r = run(
        &out,
        &["--base", s(&fx.rk1.path), s(&out.join("node02.rk1.img"))],
    );
    assert_eq!(r.code, 1, "{}", r.text);
    assert!(
        r.text
            .contains("SHA256SUMS is a symlink; refusing to follow it"),
        "{}",
        r.text
    );
    assert!(!r.text.contains("$6$hash"), "{}", r.text);
    assert_eq!(
        std::fs::read_to_string(&secret).unwrap(),
        "root:$6$hash:19000:0:99999:7:::\n"
    );
    assert!(
        std::fs::symlink_metadata(out.join("SHA256SUMS"))
            .unwrap()
            .file_type()
            .is_symlink()
    );
}

/// A private copy of the shipped profiles, manifests and overlays.
struct Workspace {
    dir: tempfile::TempDir,
}

impl Workspace {
    fn new() -> Workspace {
        let dir = tempfile::tempdir().unwrap();
        for d in ["profiles", "firmware-manifests", "overlays"] {
            sh(&format!("cp -r {} {}", q(&repo().join(d)), q(dir.path())));
        }
        Workspace { dir }
    }
    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
    fn edit(&self, rel: &str, f: impl FnOnce(String) -> String) {
        let p = self.path(rel);
        let t = f(std::fs::read_to_string(&p).unwrap());
        std::fs::write(p, t).unwrap();
    }
    fn imgbuild(&self, args: &[&str]) -> Run {
        let out = imgbuild(self.dir.path(), args);
        Run {
            code: out.status.code().unwrap_or(-1),
            text: text(&out),
        }
    }
    fn check(&self) -> Run {
        self.imgbuild(&["check"])
    }
}

#[test]
fn a_k3s_version_with_shell_or_unit_syntax_is_refused() {
    // Finding 1: only the part before `+` was parsed.
    for bad in [
        "v1.32.5+k3s1$(touch /root/x)",
        "v1.32.5+k3s1\\n[Service]\\nExecStartPre=/bin/sh -c id",
        "v1.32.5+k3s1 ; id",
    ] {
        let ws = Workspace::new();
        ws.edit("profiles/cluster.yaml", |t| {
            t.replace(
                "    version: v1.32.5+k3s1\n",
                &format!("    version: \"{bad}\"\n    install: online\n"),
            )
        });
        let r = ws.check();
        assert_eq!(r.code, 3, "{bad}: {}", r.text);
        assert!(
            r.text.contains("cluster.k3s.version") && r.text.contains("is not a k3s release"),
            "{}",
            r.text
        );
    }
}

#[test]
fn the_online_install_command_quotes_each_value_for_the_shell() {
    let ws = Workspace::new();
    ws.edit("profiles/cluster.yaml", |t| {
        t.replace(
            "    version: v1.32.5+k3s1\n",
            "    version: v1.32.5+k3s1\n    install: online\n",
        )
    });
    let paths = imgbuild::commands::Paths::resolve(
        ws.path("profiles"),
        Some(ws.path("firmware-manifests")),
        Some(ws.path("overlays")),
    );
    let files =
        imgbuild::commands::render::render(&paths, "node02", imgbuild::plan::DEFAULT_BUILD_TIME)
            .unwrap();
    let user_data = ws.path("user-data");
    let ud = files.iter().find(|f| f.path == "/user-data").unwrap();
    std::fs::write(&user_data, &ud.contents).unwrap();
    // cloud-init's own parser and schema read it.
    let (code, out) = sh_status(&format!(
        "cloud-init schema --config-file {}",
        q(&user_data)
    ));
    assert_eq!(code, 0, "{out}");
    let cmd = sh(&format!(
        "{} -c 'import yaml,sys; print(yaml.safe_load(open(sys.argv[1]))[\"runcmd\"][0][2])' {}",
        python(),
        q(&user_data)
    ));
    assert_eq!(
        String::from_utf8_lossy(&cmd.stdout).trim(),
        "curl -sfL https://get.k3s.io | INSTALL_K3S_VERSION='v1.32.5+k3s1' INSTALL_K3S_EXEC='agent' sh -"
    );
}

mod filters {
    use imgbuild::plan::render::quote;
    use proptest::prelude::*;
    use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

    /// Strings rich in what breaks quoting: quotes, backslashes, `$`, `%`,
    /// newlines, controls (C0, DEL, C1), line separators and any Unicode.
    fn hostile() -> impl Strategy<Value = String> {
        let pieces = prop_oneof![
            Just("'".to_string()),
            Just("\"".to_string()),
            Just("\\".to_string()),
            Just("$(id)".to_string()),
            Just("`id`".to_string()),
            Just("%n".to_string()),
            Just("${HOME}".to_string()),
            Just("\n[Service]\nExecStartPre=/bin/false\n".to_string()),
            Just("\r".to_string()),
            Just("\u{7f}\u{85}\u{9f}\u{2028}".to_string()),
            Just("; rm -rf / #".to_string()),
            "[\\x01-\\x7f]{0,6}",
            any::<String>().prop_map(|s| s.replace('\0', "")),
        ];
        prop::collection::vec(pieces, 0..6).prop_map(|v| v.concat())
    }

    /// A fixed seed (printed) so CI runs the same cases every time.
    fn runner(cases: u32) -> TestRunner {
        let seed = [11u8; 32];
        println!("seed {}", hex::encode(seed));
        TestRunner::new_with_rng(
            Config {
                cases,
                failure_persistence: None,
                ..Config::default()
            },
            TestRng::from_seed(RngAlgorithm::ChaCha, &seed),
        )
    }

    #[test]
    fn shell_quoting_gives_dash_back_the_exact_value() {
        // Oracle: dash, the /bin/sh of Debian and Ubuntu.
        let dir = tempfile::tempdir().unwrap();
        runner(16)
            .run(&prop::collection::vec(hostile(), 32), |values| {
                let script: String = values
                    .iter()
                    .map(|v| format!("printf '%s\\000' {}\n", quote("shell", v).unwrap()))
                    .collect();
                let f = dir.path().join("s.sh");
                std::fs::write(&f, &script).unwrap();
                let out = std::process::Command::new("dash").arg(&f).output().unwrap();
                prop_assert!(
                    out.status.success(),
                    "{}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let got: Vec<String> = out.stdout[..out.stdout.len().saturating_sub(1)]
                    .split(|&b| b == 0)
                    .map(|b| String::from_utf8_lossy(b).into_owned())
                    .collect();
                let want: Vec<String> = values.clone();
                if values.is_empty() {
                    return Ok(());
                }
                prop_assert_eq!(got, want);
                Ok(())
            })
            .unwrap();
        assert!(quote("shell", "a\0b").is_err());
    }

    #[test]
    fn systemd_quoting_stays_one_setting_on_one_line() {
        // Oracle: systemd's own unit parser (`systemd-analyze verify`).
        let dir = tempfile::tempdir().unwrap();
        runner(12)
            .run(&prop::collection::vec(hostile(), 16), |values| {
                let mut unit =
                    String::from("[Unit]\nDescription=filter test\n\n[Service]\nType=oneshot\n");
                for v in &values {
                    let q = quote("systemd", v).unwrap();
                    prop_assert!(!q.contains('\n') && !q.contains('\r'));
                    unit.push_str(&format!("ExecStartPre=/bin/echo {q}\n"));
                }
                unit.push_str("ExecStart=/bin/true\n");
                let f = dir.path().join("imgbuild-filter-test.service");
                std::fs::write(&f, &unit).unwrap();
                let out = std::process::Command::new("systemd-analyze")
                    .args(["verify", "--man=no"])
                    .arg(&f)
                    .output()
                    .unwrap();
                let err = String::from_utf8_lossy(&out.stderr);
                prop_assert!(
                    out.status.success() && err.trim().is_empty(),
                    "{err}\n{unit}"
                );
                Ok(())
            })
            .unwrap();
    }
}

#[test]
fn control_characters_in_profile_strings_are_refused() {
    // Finding 6: DEL and C1 controls passed validation and the `yaml` filter,
    // and cloud-init then rejected the whole user-data.
    // The profile spells them as YAML escapes (raw ones are refused by the YAML parser).
    let key = |comment: &str| {
        format!(
            "- \"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEqfAkq5sKqoPzq3y9gWRYeFMZ3xH5P7dWm8vLqGf1bA {comment}\""
        )
    };
    let shipped_key = "- ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEqfAkq5sKqoPzq3y9gWRYeFMZ3xH5P7dWm8vLqGf1bA admin@laptop";
    for (from, to, field) in [
        (
            shipped_key.to_string(),
            key("admin@lap\\x7Ftop"),
            "ssh_authorized_keys[0]",
        ),
        (
            shipped_key.to_string(),
            key("admin@lap\\x85top"),
            "ssh_authorized_keys[0]",
        ),
        (
            shipped_key.to_string(),
            key("admin@lap\\x9Btop"),
            "ssh_authorized_keys[0]",
        ),
        (
            shipped_key.to_string(),
            key("admin@lap\\u2028top"),
            "ssh_authorized_keys[0]",
        ),
        (
            "disable: [traefik]".to_string(),
            "disable: [\"traefik\\x7F\"]".to_string(),
            "cluster.k3s.disable[0]",
        ),
        (
            "disable: [traefik]".to_string(),
            "disable: [\"traefik\\n- evil\"]".to_string(),
            "cluster.k3s.disable[0]",
        ),
    ] {
        let ws = Workspace::new();
        ws.edit("profiles/cluster.yaml", |t| {
            assert!(t.contains(&from), "{from}");
            t.replacen(&from, &to, 1)
        });
        let r = ws.check();
        assert_eq!(r.code, 3, "{to:?}: {}", r.text);
        assert!(r.text.contains(field), "{to:?}: {}", r.text);
    }
}

#[test]
fn profiles_are_not_read_through_symlinks_out_of_their_directory() {
    // Finding 7: a node file symlinked to /etc/shadow made `check` print the root hash line.
    let ws = Workspace::new();
    let shadow = ws.path("shadow");
    std::fs::write(
        &shadow,
        "root:$y$j9T$SALTSALTSALTSALT$HASHHASHHASHHASHHASHHASHHASHHASHHASHHASH:19000:0:99999:7:::\n",
    )
    .unwrap();
    std::os::unix::fs::symlink(&shadow, ws.path("profiles/nodes/evil.yaml")).unwrap();
    let r = ws.check();
    assert_eq!(r.code, 3, "{}", r.text);
    assert!(r.text.contains("evil.yaml: leads outside"), "{}", r.text);
    assert!(
        !r.text.contains("SALT") && !r.text.contains("HASH"),
        "{}",
        r.text
    );
    // A symlink that stays inside the profile directory is fine.
    std::fs::remove_file(ws.path("profiles/nodes/evil.yaml")).unwrap();
    std::fs::rename(
        ws.path("profiles/nodes/node03.yaml"),
        ws.path("profiles/node03.real"),
    )
    .unwrap();
    std::os::unix::fs::symlink("../node03.real", ws.path("profiles/nodes/node03.yaml")).unwrap();
    let r = ws.check();
    assert_eq!(r.code, 0, "{}", r.text);
    // The same content inside the directory: only a short excerpt is echoed.
    std::fs::copy(&shadow, ws.path("profiles/nodes/evil.yaml")).unwrap();
    let r = ws.check();
    assert_eq!(r.code, 3, "{}", r.text);
    assert!(!r.text.contains("HASH"), "{}", r.text);
    // A FIFO does not hang the reader; a huge file is not read whole.
    std::fs::remove_file(ws.path("profiles/nodes/evil.yaml")).unwrap();
    sh(&format!(
        "mkfifo {}",
        q(&ws.path("profiles/nodes/fifo.yaml"))
    ));
    let r = ws.check();
    assert_eq!(r.code, 3, "{}", r.text);
    assert!(
        r.text.contains("fifo.yaml: is not a regular file"),
        "{}",
        r.text
    );
    std::fs::remove_file(ws.path("profiles/nodes/fifo.yaml")).unwrap();
    sh(&format!(
        "truncate -s 2G {}",
        q(&ws.path("profiles/nodes/huge.yaml"))
    ));
    let r = ws.check();
    assert_eq!(r.code, 3, "{}", r.text);
    assert!(r.text.contains("huge.yaml: is larger than"), "{}", r.text);
}

#[test]
fn overlay_directories_may_not_be_symlinks() {
    // Finding 13: symlinked overlay directories were followed into the host.
    let ws = Workspace::new();
    let host = ws.path("host-secrets");
    std::fs::create_dir(&host).unwrap();
    std::fs::write(host.join("id_ed25519"), "PRIVATE KEY").unwrap();
    std::os::unix::fs::symlink(&host, ws.path("overlays/common/root/etc/stolen")).unwrap();
    let r = ws.check();
    assert_eq!(r.code, 3, "{}", r.text);
    assert!(r.text.contains("stolen: is a symlink"), "{}", r.text);
    std::fs::remove_file(ws.path("overlays/common/root/etc/stolen")).unwrap();
    // A whole feature or target directory as a symlink.
    sh(&format!(
        "mv {o}/swap {w}/swap-real && ln -s {w}/swap-real {o}/swap && mv {o}/common/seed {w}/seed-real && ln -s {w}/seed-real {o}/common/seed",
        o = q(&ws.path("overlays")),
        w = q(ws.dir.path())
    ));
    let r = ws.check();
    assert_eq!(r.code, 3, "{}", r.text);
    assert!(r.text.contains("seed: is a symlink"), "{}", r.text);
}

#[test]
fn overlay_file_names_the_writers_refuse_fail_check() {
    // Finding 13: `check` accepted names the FAT writer or debugfs refuse at bake time.
    for (file, expect) in [
        ("overlays/common/seed/bad:name", "not a valid FAT file name"),
        (
            "overlays/common/seed/trailing.",
            "not a valid FAT file name",
        ),
        ("overlays/common/root/etc/quote\"d", "quotes, backslashes"),
        (
            "overlays/common/root/etc/back\\slash",
            "quotes, backslashes",
        ),
        ("overlays/common/root/etc/new\nline", "control characters"),
    ] {
        let ws = Workspace::new();
        std::fs::write(ws.path(file), "x").unwrap();
        let r = ws.check();
        assert_eq!(r.code, 3, "{file:?}: {}", r.text);
        assert!(r.text.contains(expect), "{file:?}: {}", r.text);
    }
}

#[test]
fn an_incomplete_ca_set_that_no_image_used_is_regenerated() {
    // Finding 11: a kill between publishing a CA's key and its certificate
    // left one without the other, and every later run failed.
    let w = tempfile::tempdir().unwrap();
    let secrets = w.path().join("secrets");
    let token = |secrets: &Path| {
        let out = imgbuild(
            w.path(),
            &[
                "--profiles",
                repo().join("profiles").to_str().unwrap(),
                "--secrets",
                secrets.to_str().unwrap(),
                "secrets",
                "--print-token",
                "server",
            ],
        );
        (out.status.code().unwrap_or(-1), text(&out))
    };
    let (code, first) = token(&secrets);
    assert_eq!(code, 0, "{first}");
    // What the old code left: server-ca.key without server-ca.crt, and a
    // temporary file from the interrupted write.
    let tls = secrets.join("cluster/tls");
    std::fs::remove_file(tls.join("server-ca.crt")).unwrap();
    std::fs::write(secrets.join("cluster/tls/.new-XyZ123"), "half a key").unwrap();
    let (code, out) = token(&secrets);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("was incomplete") && out.contains("made a new CA set"),
        "{out}"
    );
    let (code, again) = token(&secrets);
    assert_eq!(code, 0, "{again}");
    // One new set, used from then on, complete (openssl checks the pair).
    let last = |t: &str| {
        t.lines()
            .find(|l| l.starts_with("K10"))
            .unwrap()
            .to_string()
    };
    assert_ne!(last(&out), last(&first));
    assert_eq!(last(&again), last(&out));
    sh(&format!(
        "cd {t} && test \"$(openssl x509 -in server-ca.crt -noout -pubkey)\" = \"$(openssl pkey -in server-ca.key -pubout)\"",
        t = q(&tls)
    ));
    let left: Vec<String> = std::fs::read_dir(secrets.join("cluster"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    // After a cluster-init image was recorded, an incomplete set is an error.
    std::fs::write(secrets.join("cluster/initialized"), "node02\n").unwrap();
    std::fs::remove_file(tls.join("client-ca.key")).unwrap();
    let (code, out) = token(&secrets);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("client-ca.key") && out.contains("backup"),
        "{out}"
    );
}

#[test]
fn a_closed_stdout_ends_the_command_quietly() {
    // Finding 12: `imgbuild inspect --json IMG | head` panicked (exit 101).
    use std::os::unix::process::ExitStatusExt;
    let fx = fixtures();
    let w = tempfile::tempdir().unwrap();
    for args in [
        vec!["inspect", "--json", s(&fx.rk1.path)],
        vec!["inspect", s(&fx.rk1.path)],
    ] {
        let e = env();
        let mut child = command()
            .args(&args)
            .current_dir(w.path())
            .env("IMGBUILD_SECRETS", e.secrets())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert_eq!(
            out.status.signal(),
            Some(13),
            "{args:?}: {:?} {err}",
            out.status
        );
        assert!(err.trim().is_empty(), "{args:?}: {err}");
    }
}

// Round three (issue 25): names that become paths, parsers without a size
// cap, network reads without an idle timeout, secrets read unchecked.

const ANSIBLE_GROUP_VARS: &str = "control_plane: node01\nlocal_domain: home.arpa\n";

/// Runs `imgbuild import ansible INVENTORY -o OUT` in `dir` (with
/// `gv.yml` beside it as group_vars, and a fixed admin key).
fn import_ansible(dir: &Path, inventory: &str, out: &str) -> std::process::Output {
    std::fs::write(dir.join("gv.yml"), ANSIBLE_GROUP_VARS).unwrap();
    command()
        .args([
            "import",
            "ansible",
            inventory,
            "--group-vars",
            "gv.yml",
            "-o",
            out,
        ])
        .args([
            "--ssh-key",
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGm1bPd+q7Nw9Nf8oWDV2yR8cFbTL1ox0aLa3ybh9yK7 t@t",
        ])
        .current_dir(dir)
        .env("HOME", dir)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

/// Every path under `dir` (relative), sorted.
fn tree(dir: &Path) -> Vec<String> {
    let out = sh(&format!("cd {} && find . -mindepth 1 | sort", q(dir)));
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn inventory_host_names_that_would_leave_the_profile_set_are_refused_before_writing() {
    // The high finding: an INI host `../../../../tmp/x/ESCAPED` wrote
    // `/tmp/x/ESCAPED.yaml`; `a/b`, `x;touch ...` and `""` landed in
    // subdirectories or hidden files while `check` said OK; a NUL left a
    // half-written import.
    let w = scratch();
    let d = w.path();
    // A sibling cluster whose node directory the first name aims at.
    std::fs::create_dir_all(d.join("other/profiles/nodes")).unwrap();
    let ini = |host: &[u8]| {
        let mut t =
            b"[turing_pis]\ntp1\n[tp1_nodes]\nnode01 slot_num=1 type=rk1\n[extra_nodes]\n".to_vec();
        t.extend_from_slice(host);
        t.push(b'\n');
        t
    };
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("escape.ini", ini(b"../../../other/profiles/nodes/ESCAPED")),
        ("slash.ini", ini(b"a/b")),
        ("shell.ini", ini(b"x;touch${IFS}pwned")),
        ("nul.ini", ini(b"nu\0l")),
        ("upper.ini", ini(b"Node02")),
        (
            "empty.yml",
            b"all:\n  children:\n    turing_pis:\n      hosts: {tp1: {}}\n    tp1_nodes:\n      hosts:\n        node01: {slot_num: 1, type: rk1}\n    extra_nodes:\n      hosts: {\"\": {}}\n"
                .to_vec(),
        ),
    ];
    let before = tree(d);
    for (name, text) in &cases {
        std::fs::write(d.join(name), text).unwrap();
        let o = import_ansible(d, name, "out");
        let t = text_of(&o);
        assert_eq!(o.status.code(), Some(3), "{name}: {t}");
        assert!(t.contains(&format!("{name}: host ")), "{name}: {t}");
        assert!(t.contains("is not a node name"), "{name}: {t}");
        assert!(
            t.contains("rename the host in the inventory"),
            "{name}: {t}"
        );
        std::fs::remove_file(d.join(name)).unwrap();
        std::fs::remove_file(d.join("gv.yml")).unwrap();
        // Nothing written: no output directory, nothing in the sibling
        // cluster, no staging directory.
        assert_eq!(tree(d), before, "{name} left files");
    }
}

/// Runs `imgbuild check` on `profiles`.
fn check_profiles(profiles: &Path) -> std::process::Output {
    command()
        .args(["check", "--profiles", s(profiles)])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

fn text_of(o: &std::process::Output) -> String {
    text(o)
}

#[test]
fn an_import_that_fails_check_leaves_nothing_and_one_that_passes_is_placed_whole() {
    // `import` wrote its files before `check` and left them on exit 3.
    let w = scratch();
    let d = w.path();
    // A board name `check` refuses (it is no node name, and no path either).
    std::fs::write(
        d.join("bad.ini"),
        "[turing_pis]\nTP_1\n[TP_1_nodes]\nnode01 slot_num=1 type=rk1\n",
    )
    .unwrap();
    // Into a new directory, and into one that holds other files.
    std::fs::create_dir_all(d.join("existing/notes")).unwrap();
    std::fs::write(d.join("existing/README"), "mine\n").unwrap();
    let before = tree(d);
    for out in ["new/dir", "existing"] {
        let o = import_ansible(d, "bad.ini", out);
        let t = text(&o);
        assert_eq!(o.status.code(), Some(3), "{out}: {t}");
        assert!(t.contains("nothing was written"), "{out}: {t}");
        assert!(
            t.contains("turing_pi_boards") && !t.contains(".imgbuild-new-"),
            "{out}: the message names the staged files: {t}"
        );
        std::fs::remove_file(d.join("gv.yml")).unwrap();
        assert_eq!(tree(d), before, "{out}: left files");
    }
    // A valid import into the directory with other files: the profile set
    // appears whole, the other files are untouched, and `check` agrees.
    std::fs::write(
        d.join("good.ini"),
        "[turing_pis]\ntp1\n[tp1_nodes]\nnode01 slot_num=1 type=rk1\nnode02 slot_num=2 type=rk1\n",
    )
    .unwrap();
    let o = import_ansible(d, "good.ini", "existing");
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(
        tree(&d.join("existing")),
        [
            "./.gitignore",
            "./README",
            "./notes",
            "./profiles",
            "./profiles/cluster.yaml",
            "./profiles/nodes",
            "./profiles/nodes/node01.yaml",
            "./profiles/nodes/node02.yaml",
        ]
    );
    assert_eq!(
        std::fs::read_to_string(d.join("existing/README")).unwrap(),
        "mine\n"
    );
    let o = check_profiles(&d.join("existing/profiles"));
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    // Node files already there would join the set unchecked: refused.
    std::fs::create_dir_all(d.join("more/profiles/nodes")).unwrap();
    std::fs::write(d.join("more/profiles/nodes/old.yaml"), "board: rk1\n").unwrap();
    let o = import_ansible(d, "good.ini", "more");
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("refusing to overwrite"), "{}", text(&o));
    assert!(text(&o).contains("old.yaml"), "{}", text(&o));
    assert_eq!(
        tree(&d.join("more")),
        [
            "./profiles",
            "./profiles/nodes",
            "./profiles/nodes/old.yaml"
        ]
    );
}

#[test]
fn the_import_header_quotes_the_inventory_path_so_it_adds_no_yaml_keys() {
    // `import` put the inventory path unescaped into its `#` header: a
    // newline in the path added YAML keys to every written file. PyYAML
    // (what cloud-init reads YAML with) also breaks lines at U+0085,
    // U+2028 and U+2029.
    let w = scratch();
    let d = w.path();
    let name = "hosts\nevil: 1\n\u{85}nel: 2\u{2028}ls: 3\u{2029}ps: 4\r.ini";
    std::fs::write(
        d.join(name),
        "[turing_pis]\ntp1\n[tp1_nodes]\nnode01 slot_num=1 type=rk1\n",
    )
    .unwrap();
    let o = import_ansible(d, name, "out");
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let script = d.join("keys.py");
    std::fs::write(
        &script,
        "import sys, yaml\nfor f in sys.argv[1:]:\n    print(sorted(yaml.safe_load(open(f, encoding='utf-8', newline=''))))\n",
    )
    .unwrap();
    let out = sh(&format!(
        "{} {} {} {}",
        python(),
        q(&script),
        q(&d.join("out/profiles/cluster.yaml")),
        q(&d.join("out/profiles/nodes/node01.yaml"))
    ));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "['cluster', 'defaults']\n['board', 'k3s', 'turing_pi']\n"
    );
    let first = std::fs::read_to_string(d.join("out/profiles/cluster.yaml")).unwrap();
    let first = first.lines().next().unwrap();
    assert!(first.starts_with("# Imported by"), "{first}");
    assert!(first.contains(r"hosts\nevil: 1\n"), "{first}");
}

/// `[` repeated `n` times: nesting that cost serde_yaml_ng seconds to
/// minutes before its own depth limit applied (25k took 1.9 s, 100k 30 s).
fn brackets(n: usize) -> String {
    "[".repeat(n)
}

#[test]
fn deep_or_large_inventories_and_profiles_are_refused_by_the_prescan_naming_the_cap() {
    // Inventories and group_vars were read with no size cap (600 MB cost 620
    // MB of RAM) and parsed whatever their nesting. The pre-scan stops at the
    // 65th level: the column in the message is where it stopped reading.
    let w = scratch();
    let d = w.path();
    let deep = brackets(30_000);
    let ok_ini = "[turing_pis]\ntp1\n[tp1_nodes]\nnode01 slot_num=1 type=rk1\n";
    let cases: Vec<(&str, String, Option<String>, String)> = vec![
        (
            "deep.yml",
            format!("all: {deep}"),
            None,
            "deep.yml: the inventory nests collections more than 64 deep (line 1, column 69); at most 64 levels are read".into(),
        ),
        (
            "value.ini",
            format!("{ok_ini}node02 slot_num=2 type=rk1 labels={deep}\n"),
            None,
            "value.ini: line 5: the value nests collections more than 64 deep (line 1, column 65)".into(),
        ),
        (
            "gv-deep.ini",
            ok_ini.to_string(),
            Some(deep.clone()),
            "gv.yml nests collections more than 64 deep (line 1, column 65)".into(),
        ),
        (
            "gv-large.ini",
            ok_ini.to_string(),
            Some(format!("control_plane: node01\n#{}\n", "x".repeat(2 << 20))),
            "gv.yml is 2.0 MiB; at most 1 MiB is read".into(),
        ),
    ];
    for (name, inv, gv, expect) in cases {
        std::fs::write(d.join(name), inv).unwrap();
        let mut c = command();
        c.args([
            "import",
            "ansible",
            name,
            "-o",
            "out",
            "--group-vars",
            "gv.yml",
        ])
        .args([
            "--ssh-key",
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGm1bPd+q7Nw9Nf8oWDV2yR8cFbTL1ox0aLa3ybh9yK7 t@t",
        ])
        .current_dir(d)
        .env("HOME", d);
        std::fs::write(d.join("gv.yml"), gv.unwrap_or(ANSIBLE_GROUP_VARS.into())).unwrap();
        let o = c.output().unwrap();
        assert_eq!(o.status.code(), Some(3), "{name}: {}", text(&o));
        assert!(
            text(&o).contains(&expect),
            "{name}: expected {expect:?} in {}",
            text(&o)
        );
        assert!(!d.join("out").exists(), "{name} wrote files");
    }
    // A profile: the same cap before its parse.
    sh(&format!("cp -r {} {}", q(&repo().join("profiles")), q(d)));
    let cluster = d.join("profiles/cluster.yaml");
    let t = std::fs::read_to_string(&cluster).unwrap();
    std::fs::write(&cluster, format!("{t}extra: {deep}\n")).unwrap();
    let o = check_profiles(&d.join("profiles"));
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    assert!(
        text(&o).contains("cluster.yaml: the file nests collections more than 64 deep"),
        "{}",
        text(&o)
    );
}

#[test]
fn inspect_reads_an_images_seed_only_within_its_caps() {
    // `inspect` parsed an image's own meta-data (up to 1 MiB) whatever its
    // nesting: 100 KB of `[` in a crafted base image cost 17 s. The seed is
    // read within a cap per file, and a warning names the cap.
    let fx = fixtures();
    let w = scratch();
    let cases: [(&str, Vec<u8>, &str); 3] = [
        (
            "meta-data",
            format!("instance-id: x\n#{}\n", "x".repeat(1 << 20)).into_bytes(),
            "partition 1: meta-data is 1.0 MiB; at most 64 KiB is read",
        ),
        (
            "meta-data",
            format!("instance-id: {}", brackets(60_000)).into_bytes(),
            "partition 1: meta-data nests collections more than 64 deep (line 1, column 77)",
        ),
        (
            "imgbuild.json",
            brackets(200_000).into_bytes(),
            "partition 1: imgbuild.json nests collections more than 64 deep (line 1, column 65)",
        ),
    ];
    for (i, (file, body, expect)) in cases.iter().enumerate() {
        let img = copy_of(&fx.rk1.path, w.path(), "seed.img");
        let src = w.path().join("body");
        std::fs::write(&src, body).unwrap();
        // pyfatfs writes the file (mtools refuses this small FAT32 volume).
        let (start, len) = fx.rk1.part(1);
        let part = w.path().join("p1.fat");
        extract(&img, start, len, &part);
        sh(&format!(
            "{} {} put {} /{file} {}",
            python(),
            q(&repo().join("tests/fixtures/fat.py")),
            q(&part),
            q(&src)
        ));
        sh(&format!(
            "dd if={} of={} bs=1M seek={} conv=notrunc status=none",
            q(&part),
            q(&img),
            start / MIB
        ));
        let o = command()
            .args(["inspect", "--json", s(&img)])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(0), "case {i}: {}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains(expect),
            "case {i}: expected {expect:?} in {err}"
        );
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        if *file == "meta-data" {
            assert!(v["seed"]["instance_id"].is_null(), "case {i}: {v}");
        }
        assert!(v["provenance"].is_null(), "case {i}: {v}");
    }
}

/// A fresh copy of a secrets directory made by `imgbuild secrets --generate`.
fn fresh_secrets(w: &Path, name: &str) -> PathBuf {
    let master = w.join("secrets-master");
    if !master.exists() {
        let o = imgbuild(
            w,
            &[
                "--profiles",
                s(&repo().join("profiles")),
                "--secrets",
                s(&master),
                "secrets",
                "--generate",
            ],
        );
        assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    }
    let copy = w.join(name);
    sh(&format!("cp -a {} {}", q(&master), q(&copy)));
    copy
}

/// Writes `body` over the secret `rel` (0600, as a secret is kept).
fn put_secret(dir: &Path, rel: &str, body: &[u8]) {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(rel);
    std::fs::write(&p, body).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
}

#[test]
fn secrets_are_checked_when_read_and_the_message_says_how_to_make_good_ones() {
    // The secrets directory's files were baked verbatim: a token with a
    // control character or a newline, or a garbage CA key or node password,
    // gave exit 0 and an image that failed at boot.
    let w = scratch();
    let w = w.path();
    let profiles = repo().join("profiles");
    let master = fresh_secrets(w, "unused");
    let tls = |f: &str| format!("cluster/tls/{f}");
    let read = |rel: &str| std::fs::read(master.join(rel)).unwrap();
    let sec1 = sh(&format!(
        "openssl ec -in {} 2>/dev/null",
        q(&master.join(tls("server-ca.key")))
    ))
    .stdout;
    let token = String::from_utf8(read("cluster/token")).unwrap();
    let token = token.trim();
    // (how it is read, the file, what is written, the message, more of it)
    type Case<'a> = (&'a str, String, Vec<u8>, &'a str, Vec<&'a str>);
    let cases: Vec<Case> = vec![
        (
            "print-token",
            "cluster/token".into(),
            format!("{}\u{7}{}\n", &token[..10], &token[10..]).into_bytes(),
            "cluster/token: not a k3s join token",
            vec![
                "a control character at position 11",
                "imgbuild secrets --generate",
            ],
        ),
        (
            "print-token",
            "cluster/agent-token".into(),
            format!("{token}\nserver: https://evil:6443\n").into_bytes(),
            "cluster/agent-token: not a k3s join token",
            vec!["a control character", "imgbuild secrets --generate"],
        ),
        (
            "known-hosts",
            "nodes/node02/node-password".into(),
            b"short\n".to_vec(),
            "nodes/node02/node-password: not a k3s node password",
            vec!["it is 5 characters long", "kubectl delete node"],
        ),
        (
            "print-token",
            tls("server-ca.key"),
            b"-----BEGIN PRIVATE KEY-----\ngarbage\n-----END PRIVATE KEY-----\n".to_vec(),
            "server-ca.key: not a PEM private key",
            vec!["imgbuild secrets --generate"],
        ),
        (
            "print-token",
            tls("server-ca.key"),
            sec1,
            "server-ca.key: not a PEM private key",
            vec!["openssl pkcs8 -topk8 -nocrypt"],
        ),
        (
            "print-token",
            tls("etcd/peer-ca.key"),
            read(&tls("client-ca.key")),
            "etcd/peer-ca.key: not the key of",
            vec!["etcd/peer-ca.crt"],
        ),
        (
            "print-token",
            tls("request-header-ca.crt"),
            b"not a certificate\n".to_vec(),
            "request-header-ca.crt: not a PEM certificate",
            vec![],
        ),
        (
            "print-token",
            tls("service.key"),
            b"\n".to_vec(),
            "service.key: not a PEM private key",
            vec![],
        ),
    ];
    for (i, (how, rel, body, expect, more)) in cases.iter().enumerate() {
        let dir = fresh_secrets(w, &format!("case{i}"));
        put_secret(&dir, rel, body);
        let mut args = vec!["--profiles", s(&profiles), "--secrets", s(&dir), "secrets"];
        args.extend(match *how {
            "print-token" => ["--print-token", "agent"],
            _ => ["--known-hosts", ""],
        });
        args.retain(|a| !a.is_empty());
        let o = imgbuild(w, &args);
        let t = text(&o);
        assert_eq!(o.status.code(), Some(1), "case {i}: {t}");
        assert!(t.contains(expect), "case {i}: expected {expect:?} in {t}");
        for m in more {
            assert!(t.contains(m), "case {i}: expected {m:?} in {t}");
        }
        // Never the value: no line of what was written shows up.
        for line in String::from_utf8_lossy(body)
            .lines()
            .filter(|l| l.len() >= 8)
        {
            assert!(
                !t.contains(line.trim()),
                "case {i}: the secret shows in {t}"
            );
        }
    }
    // Before a cluster-init image, a bad CA set may be remade; after, the
    // message says to restore it.
    let dir = fresh_secrets(w, "initialised");
    put_secret(&dir, &tls("client-ca.crt"), b"x\n");
    let args = [
        "--profiles",
        s(&profiles),
        "--secrets",
        s(&dir),
        "secrets",
        "--print-token",
        "agent",
    ];
    let t = text(&imgbuild(w, &args));
    assert!(t.contains("no image was built with it yet: remove"), "{t}");
    std::fs::write(dir.join("cluster/initialized"), "node02\n").unwrap();
    let t = text(&imgbuild(w, &args));
    assert!(t.contains("restore the CA set from a backup"), "{t}");

    // A sealed bake with a bad token fails and leaves no image.
    let fx = fixtures();
    let dir = fresh_secrets(w, "bake");
    put_secret(
        &dir,
        "cluster/token",
        format!("{token}\u{1b}[2J\n").as_bytes(),
    );
    let out = w.join("out");
    std::fs::create_dir(&out).unwrap();
    let r = run(
        &out,
        &[
            "--secrets",
            s(&dir),
            "--base",
            s(&fx.rk1.path),
            "node02.rk1.img",
        ],
    );
    assert_eq!(r.code, 1, "{}", r.text);
    assert!(
        r.text.contains("cluster/token: not a k3s join token"),
        "{}",
        r.text
    );
    assert!(
        std::fs::read_dir(&out).unwrap().next().is_none(),
        "an image was left"
    );
}

/// Runs the cargo that builds these tests on this package, offline.
fn cargo(args: &[&str]) -> String {
    let out = std::process::Command::new(env!("CARGO"))
        .args(args)
        .args([
            "--offline",
            "--locked",
            "--manifest-path",
            s(&repo().join("Cargo.toml")),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "cargo {args:?}: {}", text(&out));
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn only_the_tests_build_honours_the_test_hooks() {
    // IMGBUILD_SYSFS_ROOT and IMGBUILD_MOUNTINFO were honoured by the release
    // binary: a fake tree whose device numbers match a real disk passed every
    // `usb` safety check. They are read only with the `test-hooks` feature,
    // which the package's dev-dependency on itself turns on: the build the
    // tests run has it, and a build without dev-dependencies (`cargo build`,
    // `cargo install --locked`, a release build) does not. Cargo's own
    // feature resolution says so without building a second binary.
    let features = |extra: &[&str]| {
        let mut args = vec!["tree", "-p", "imgbuild", "--depth", "0", "-f", "{p} [{f}]"];
        args.extend_from_slice(extra);
        let out = cargo(&args);
        out.lines().next().unwrap_or_default().to_string()
    };
    let shipped = features(&["-e", "no-dev"]);
    assert!(shipped.starts_with("imgbuild v"), "{shipped}");
    assert!(
        shipped.ends_with("[]"),
        "the shipped build has features: {shipped}"
    );
    let tested = features(&[]);
    assert!(
        tested.ends_with("[test-hooks]"),
        "the tests' build: {tested}"
    );
    // Nothing but that dev-dependency turns the feature on: not `default`,
    // not a normal or build dependency.
    let meta: serde_json::Value =
        serde_json::from_str(&cargo(&["metadata", "--no-deps", "--format-version", "1"])).unwrap();
    let pkg = &meta["packages"][0];
    assert_eq!(pkg["name"], "imgbuild");
    assert_eq!(pkg["features"]["test-hooks"], serde_json::json!([]));
    let default = pkg["features"]["default"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert!(!default.contains(&"test-hooks".into()), "{default:?}");
    let enabling: Vec<&serde_json::Value> = pkg["dependencies"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| {
            d["features"]
                .as_array()
                .is_some_and(|f| f.contains(&"test-hooks".into()))
        })
        .collect();
    assert_eq!(enabling.len(), 1, "{enabling:?}");
    assert_eq!(enabling[0]["name"], "imgbuild");
    assert_eq!(enabling[0]["kind"], "dev");
}
