//! Unpacking and compressing against the reference tools, same run, same
//! machine, alternating the two commands (median of the pair ratios), with
//! imgbuild's peak RSS (wait4):
//!
//! - unpack: `imgbuild unpack IMG.xz OUT` vs `xz -T0 -dc IMG.xz > OUT`, for a
//!   dense image (1 GiB holding 400 MB of incompressible data, `xz -1` with
//!   32 MiB blocks) and a sparse one (4 GiB holding 200 MB);
//! - compress: imgbuild's `.img.xz` and `.img.zst` outputs (the artifact code
//!   path: a copy of the raw image, then the encoder; xz preset
//!   `artifact::XZ_PRESET` / zstd level 3) vs `xz -T0 -<preset> -c` and
//!   `zstd -T0 -3 -c` of the same raw image; the ratio is of the encoding
//!   (with its sha256, fsync and rename), the copy reported beside it.
//!
//! The ratio printed is imgbuild's time over the tool's (below 1.0: faster).
//!
//!   cargo bench --bench pack [-- ROUNDS]   (IMGBUILD_BENCH_BIN=path: unpack with that binary)

mod common;

use common::{median, sh};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// Runs `cmd` through bash; wall seconds and peak RSS in MiB.
// Children are reaped with wait4 (to read their peak RSS), which clippy cannot see.
#[allow(clippy::zombie_processes)]
fn timed(cmd: &str) -> (f64, i64) {
    sh("sync");
    let t = Instant::now();
    let child = Command::new("bash").arg("-ec").arg(cmd).spawn().unwrap();
    let mut status = 0;
    // SAFETY: wait4 on our own child to read its rusage.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert_eq!(status, 0, "{cmd} failed");
    (t.elapsed().as_secs_f64(), usage.ru_maxrss / 1024)
}

/// The compress worker: the artifact path for one output (copy, encode,
/// SHA256SUMS); prints the seconds the copy and the encoding took (the copy
/// is bake work a reflink makes free; the encoding is what competes with the tool).
fn worker(raw: &Path, out: &Path) {
    let format = imgbuild::artifact::Target::parse(out).unwrap().format;
    let t = Instant::now();
    let pending = imgbuild::artifact::PendingOutput::from_base(raw, out).unwrap();
    let copy = t.elapsed().as_secs_f64();
    sh("sync");
    let t = Instant::now();
    pending.finish(format, true).unwrap();
    println!("copy {copy} encode {}", t.elapsed().as_secs_f64());
}

/// Runs the compress worker; (encode seconds, whole run seconds, peak RSS MiB).
// Reaped with wait4 (for its peak RSS), which clippy cannot see.
#[allow(clippy::zombie_processes)]
fn timed_worker(me: &Path, raw: &Path, target: &Path) -> (f64, f64, i64) {
    sh("sync");
    let t = Instant::now();
    let mut child = Command::new(me)
        .args(["worker".as_ref(), raw.as_os_str(), target.as_os_str()])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut text = String::new();
    std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut text).unwrap();
    let mut status = 0;
    // SAFETY: wait4 on our own child to read its rusage.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert_eq!(status, 0, "the compress worker failed");
    let encode: f64 = text
        .split_whitespace()
        .skip_while(|w| *w != "encode")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap();
    (encode, t.elapsed().as_secs_f64(), usage.ru_maxrss / 1024)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("worker") {
        worker(Path::new(&args[1]), Path::new(&args[2]));
        return;
    }
    let rounds: usize = args.iter().find_map(|a| a.parse().ok()).unwrap_or(3);
    let me = std::env::current_exe().unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    sh(&format!(
        "cd {} && cargo build --release --quiet",
        repo.display()
    ));
    // IMGBUILD_BENCH_BIN: another imgbuild binary to unpack with (a "before" build).
    let bin = std::env::var_os("IMGBUILD_BENCH_BIN")
        .map_or_else(|| repo.join("target/release/imgbuild"), PathBuf::from);
    // Scratch under the cargo target directory, removed at the end.
    let w = tempfile::Builder::new()
        .prefix("imgbuild-pack")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let d = w.path();
    println!("(the machine is shared: figures are medians of {rounds} alternating pairs)");
    let mut worst_rss = 0;
    for (name, size, data) in [("dense", "1G", 400u64), ("sparse", "4G", 200)] {
        let raw = d.join(format!("{name}.img"));
        // Incompressible data in 4 MiB runs spread over the image, holes between.
        sh(&format!(
            "truncate -s {size} {r}; n=$(( {data} / 4 )); step=$(( $(stat -c %s {r}) / 4194304 / n )); \
             for i in $(seq 0 $((n - 1))); do head -c 4M /dev/urandom | dd of={r} bs=4M seek=$((i * step)) conv=notrunc,sparse status=none; done",
            r = raw.display()
        ));
        let xz = d.join(format!("{name}.img.xz"));
        sh(&format!(
            "xz -1 -T0 --block-size=32MiB -c {} > {}",
            raw.display(),
            xz.display()
        ));
        let (mut ratios, mut ours, mut theirs) = (Vec::new(), Vec::new(), Vec::new());
        let out = d.join("out.img");
        for _ in 0..rounds {
            let _ = std::fs::remove_file(&out);
            let (a, rss) = timed(&format!(
                "{} unpack {} {} >/dev/null 2>&1",
                bin.display(),
                xz.display(),
                out.display()
            ));
            worst_rss = worst_rss.max(rss);
            let _ = std::fs::remove_file(&out);
            let (b, _) = timed(&format!("xz -T0 -dc {} > {}", xz.display(), out.display()));
            let _ = std::fs::remove_file(&out);
            ours.push(a);
            theirs.push(b);
            ratios.push(a / b);
            println!("  unpack {name}: imgbuild {a:.2}s ({rss} MiB peak), xz -T0 -dc {b:.2}s");
        }
        println!(
            "unpack {name} ({size}, {data} MB data): imgbuild {:.2}s, xz -T0 -dc {:.2}s, median ratio {:.3} (throughput {:.2}x xz)",
            median(ours),
            median(theirs),
            median(ratios.clone()),
            1.0 / median(ratios)
        );
        if name != "dense" {
            continue;
        }
        let xz = format!("xz -T0 -{} -c", imgbuild::artifact::XZ_PRESET);
        for (ext, tool) in [("img.xz", xz.as_str()), ("img.zst", "zstd -q -T0 -3 -c")] {
            let (mut ratios, mut whole_ratios, mut ours, mut theirs) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            let target: PathBuf = d.join(format!("outs/node02.rk1.{ext}"));
            for _ in 0..rounds {
                let _ = std::fs::remove_dir_all(d.join("outs"));
                let (a, whole, rss) = timed_worker(&me, &raw, &target);
                worst_rss = worst_rss.max(rss);
                let (b, _) = timed(&format!(
                    "{tool} {} > {}",
                    raw.display(),
                    d.join("tool.out").display()
                ));
                let _ = std::fs::remove_file(d.join("tool.out"));
                ours.push(a);
                theirs.push(b);
                ratios.push(a / b);
                whole_ratios.push(whole / b);
                println!(
                    "  .{ext}: imgbuild encode {a:.2}s (copy + encode + sums {whole:.2}s, {rss} MiB peak), {tool} {b:.2}s"
                );
            }
            println!(
                ".{ext} of the dense image: imgbuild encode {:.2}s, {tool} {:.2}s, median ratio {:.3} (throughput {:.2}x the tool; with the copy of the base: ratio {:.3})",
                median(ours),
                median(theirs),
                median(ratios.clone()),
                1.0 / median(ratios),
                median(whole_ratios)
            );
        }
        let _ = std::fs::remove_dir_all(d.join("outs"));
    }
    println!("imgbuild peak RSS over all runs: {worst_rss} MiB");
}
