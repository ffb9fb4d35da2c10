//! Bad inputs: each gets one clear message and a meaningful exit status, and
//! leaves the base and any existing output untouched, with no partial file.

use std::path::{Path, PathBuf};

use crate::support::project::{Project, Run};
use crate::support::{bytes::*, fixtures::*, harness::*};

/// imgbuild with the project's profiles and `args`.
fn run(p: &Project, args: &[&str]) -> Run {
    p.imgbuild(args).run()
}

fn assert_clean(dir: &Path) {
    for e in std::fs::read_dir(dir).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            !name.ends_with(".partial") && !name.ends_with(".img"),
            "left {name} behind"
        );
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn target_names_and_nodes_are_checked_before_any_work() {
    let fx = fixtures();
    let p = Project::example();
    let base = s(&fx.rk1.path);
    let r = run(&p, &["--base", base, "node02.cm4.img"]);
    assert_eq!(r.code, 2, "{}", r.text);
    assert!(
        r.text.contains("node node02 is a rk1 board") && r.text.contains("node02.rk1.img"),
        "{}",
        r.text
    );
    let r = run(&p, &["--base", base, "node02.img"]);
    assert_eq!(r.code, 2, "{}", r.text);
    assert!(r.text.contains("<node>.<board>.img"), "{}", r.text);
    let r = run(&p, &["--base", base, "node99.rk1.img"]);
    assert_eq!(r.code, 2, "{}", r.text);
    assert!(
        r.text.contains("no profile for node \"node99\""),
        "{}",
        r.text
    );
    let r = run(&p, &[]);
    assert_eq!(r.code, 2, "{}", r.text);
    assert!(r.text.contains("nothing to build"), "{}", r.text);
    let r = run(&p, &["--base", "/nonexistent/base.img", "node02.rk1.img"]);
    assert_eq!(r.code, 1, "{}", r.text);
    assert!(
        r.text.contains("/nonexistent/base.img: no such file"),
        "{}",
        r.text
    );
    let cache = p.path().join("empty-cache");
    let r = run(
        &p,
        &["--offline", "--cache-dir", s(&cache), "node02.rk1.img"],
    );
    assert_eq!(r.code, 1, "{}", r.text);
    assert!(
        r.text.contains("--offline: the rk1 stock image") && r.text.contains("imgbuild fetch rk1"),
        "{}",
        r.text
    );
    std::fs::remove_dir_all(&cache).ok();
    assert_clean(p.path());
}

#[test]
fn a_base_of_the_wrong_layout_is_refused() {
    let fx = fixtures();
    let p = Project::example();
    // MBR image for a GPT board.
    let r = run(&p, &["--base", s(&fx.cm4.path), "node02.rk1.img"]);
    assert_eq!(r.code, 1, "{}", r.text);
    assert!(
        r.text.contains("expected a GPT partition table, found MBR"),
        "{}",
        r.text
    );
    assert!(r.text.contains(s(&fx.cm4.path)), "{}", r.text);
    // GPT image for an MBR board.
    let r = run(&p, &["--base", s(&fx.rk1.path), "node01.cm4.img"]);
    assert!(
        r.text
            .contains("expected a MBR (DOS) partition table, found GPT"),
        "{}",
        r.text
    );
    // Not a disk image at all.
    let junk = p.path().join("junk.img");
    std::fs::write(&junk, vec![7u8; 1 << 20]).unwrap();
    let r = run(&p, &["--base", s(&junk), "node02.rk1.img"]);
    assert_eq!(r.code, 1, "{}", r.text);
    assert!(r.text.contains("no partition table"), "{}", r.text);
    // A GPT whose partition 2 is missing.
    let one = p.path().join("one-part.img");
    sh(&format!(
        "truncate -s 64M {i}; sgdisk -a 1 -n 1:32768:40959 -t 1:EBD0A0A2-B9E5-4433-87C0-68B6B72699C7 {i} >/dev/null",
        i = q(&one)
    ));
    sh(&format!(
        "truncate -s 4M {d}/f; mkfs.vfat -F32 -n CIDATA {d}/f >/dev/null 2>&1",
        d = q(p.path())
    ));
    place(&one, &p.path().join("f"), 16 * MIB);
    let r = run(&p, &["--base", s(&one), "node02.rk1.img"]);
    assert!(
        r.text
            .contains("partition 2 not found (the table has partitions 1)"),
        "{}",
        r.text
    );
    // The seed partition holds ext4 instead of FAT.
    let wrong = p.path().join("wrong-fs.img");
    sh(&format!(
        "truncate -s 64M {i}; sgdisk -a 1 -n 1:32768:40959 -n 2:40960:0 {i} >/dev/null; truncate -s 4M {d}/e; mkfs.ext4 -q -L CIDATA {d}/e",
        i = q(&wrong),
        d = q(p.path())
    ));
    place(&wrong, &p.path().join("e"), 16 * MIB);
    let r = run(&p, &["--base", s(&wrong), "node02.rk1.img"]);
    assert!(
        r.text.contains("partition 1 (cidata) should hold vfat labelled \"CIDATA\" for a rk1 image, but holds ext4 labelled \"CIDATA\""),
        "{}",
        r.text
    );
    for f in ["junk.img", "one-part.img", "wrong-fs.img", "f", "e"] {
        std::fs::remove_file(p.path().join(f)).unwrap();
    }
    assert_clean(p.path());
}

#[test]
fn the_wrong_release_or_architecture_is_refused() {
    let p = Project::example();
    let jammy = build_rk1_with(p.path(), "jammy.img", 64, 183, "22.04");
    let r = run(&p, &["--base", s(&jammy.path), "node02.rk1.img"]);
    assert_eq!(r.code, 1, "{}", r.text);
    assert!(
        r.text.contains(
            "the root file system is ubuntu 22.04, but the rk1 manifest expects ubuntu 24.04"
        ),
        "{}",
        r.text
    );
    let x86 = build_rk1_with(p.path(), "x86.img", 64, 62, "24.04");
    let r = run(&p, &["--base", s(&x86.path), "node02.rk1.img"]);
    assert!(
        r.text
            .contains("programs are amd64, but board rk1 is arm64"),
        "{}",
        r.text
    );
}

#[test]
fn a_full_seed_volume_fails_cleanly_and_keeps_the_old_output() {
    let fx = fixtures();
    let p = Project::example();
    let full = p.path().join("full.img");
    std::fs::copy(&fx.rk1.path, &full).unwrap();
    let (start, len) = fx.rk1.part(1);
    let fat = p.path().join("cidata");
    extract(&full, start, len, &fat);
    let big = p.path().join("big");
    sh(&format!("head -c 4111000 /dev/urandom > {}", q(&big)));
    sh(&format!(
        "{python} {py} put {f} /filler {b}; fsck.fat -a {f} >/dev/null 2>&1 || true",
        python = python(),
        py = q(&repo().join("tests/fixtures/fat.py")),
        f = q(&fat),
        b = q(&big)
    ));
    place(&full, &fat, start);
    let before = hash_range(&full, 0, std::fs::metadata(&full).unwrap().len());

    let outdir = p.path().join("out");
    std::fs::create_dir(&outdir).unwrap();
    let existing = outdir.join("node02.rk1.img");
    std::fs::write(&existing, b"previous build").unwrap();
    let r = p
        .imgbuild(["--base", s(&full), s(&existing)])
        .cwd(&outdir)
        .run();
    assert_eq!(r.code, 1, "{}", r.text);
    assert!(
        r.text.contains("no space left on the FAT volume"),
        "{}",
        r.text
    );
    assert!(r.text.contains("partition 1 (cidata)"), "{}", r.text);
    assert_eq!(std::fs::read(&existing).unwrap(), b"previous build");
    assert_eq!(
        hash_range(&full, 0, std::fs::metadata(&full).unwrap().len()),
        before
    );
    let names: Vec<String> = std::fs::read_dir(&outdir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["node02.rk1.img"]);
}

#[test]
fn an_unwritable_output_directory_is_reported() {
    let fx = fixtures();
    let p = Project::example();
    let blocker = p.path().join("not-a-dir");
    std::fs::write(&blocker, "x").unwrap();
    let target: PathBuf = blocker.join("node02.rk1.img");
    let r = run(&p, &["--base", s(&fx.rk1.path), s(&target)]);
    assert_eq!(r.code, 1, "{}", r.text);
    assert!(
        r.text.contains("creating the output directory") && r.text.contains("not-a-dir"),
        "{}",
        r.text
    );
}

#[test]
fn the_output_may_not_be_the_base() {
    let fx = fixtures();
    let p = Project::example();
    let base = p.path().join("node02.rk1.img");
    std::fs::copy(&fx.rk1.path, &base).unwrap();
    let r = run(&p, &["--base", s(&base), s(&base)]);
    assert_eq!(r.code, 1, "{}", r.text);
    assert!(
        r.text.contains("would overwrite the base image"),
        "{}",
        r.text
    );
}

#[test]
fn help_and_version_are_complete() {
    let p = Project::example();
    let out = run(&p, &["--version"]);
    assert!(out.text.contains(env!("CARGO_PKG_VERSION")));
    let help = run(&p, &["--help"]).text;
    for word in [
        "--base",
        "--all",
        "--profiles",
        "--manifests",
        "--overlays",
        "check",
        "inspect",
        "render",
        "Exit status",
    ] {
        assert!(help.contains(word), "--help lacks {word}:\n{help}");
    }
    for cmd in ["check", "inspect", "render", "build"] {
        let out = run(&p, &[cmd, "--help"]);
        assert_eq!(out.code, 0, "{cmd} --help failed");
    }
    let bad = run(&p, &["--no-such-flag"]);
    assert_eq!(bad.code, 2);
}

#[test]
fn an_interrupted_build_leaves_no_partial_and_no_output() {
    interrupt_a_build("INT");
}

#[test]
fn a_terminated_build_leaves_no_partial_and_no_output() {
    interrupt_a_build("TERM");
}

/// Sends `signal` to a build as soon as it has a half-written file.
fn interrupt_a_build(signal: &str) {
    let fx = fixtures();
    let p = Project::example();
    for attempt in 0..5 {
        // The output directory holds nothing but what the build writes.
        let w = p.mkdir(format!("out-{attempt}"));
        let target = w.join("node01.cm4.img.xz");
        let mut child = p
            .imgbuild(["--base", fx.cm4.path.to_str().unwrap()])
            .arg(&target)
            .command()
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Interrupt as soon as a half-written file exists.
        let mut signalled = false;
        for _ in 0..4000 {
            let partial = std::fs::read_dir(&w).unwrap().any(|e| {
                e.unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".partial")
            });
            if partial {
                sh(&format!("kill -{signal} {}", child.id()));
                signalled = true;
                break;
            }
            if child.try_wait().unwrap().is_some() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        let out = child.wait_with_output().unwrap();
        if !signalled || out.status.code() == Some(0) {
            println!("attempt {attempt}: the build finished before it could be interrupted");
            continue;
        }
        assert_eq!(
            out.status.code(),
            Some(130),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stderr).contains("interrupted"));
        let left: Vec<String> = std::fs::read_dir(&w)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(left.is_empty(), "left behind: {left:?}");
        return;
    }
    panic!("could not interrupt a build with SIG{signal} in five attempts");
}
