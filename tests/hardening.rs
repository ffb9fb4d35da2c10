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

struct Run {
    code: i32,
    text: String,
}

fn run(cwd: &Path, args: &[&str]) -> Run {
    let profiles = repo().join("profiles");
    let mut all = vec!["--profiles", profiles.to_str().unwrap()];
    all.extend_from_slice(args);
    let out = imgbuild(cwd, &all);
    Run {
        code: out.status.code().unwrap_or(-1),
        text: text(&out),
    }
}

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
