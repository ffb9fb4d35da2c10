//! Fuzzing on stable Rust: proptest mutates real fixture bytes (images made
//! with sgdisk, sfdisk, mkfs.vfat, pyfatfs, mkfs.ext4, qemu-img, xz, gzip,
//! zstd, and the shipped profiles) and feeds them to imgbuild's parsers.
//!
//! Properties, for every case: no panic; an answer within a time bound (a
//! watchdog fails the test on a hang); memory stays bounded (peak RSS checked
//! at the end); writes stay inside the targeted partition (guard bytes
//! around it are compared); the input read is never modified; whatever the
//! profile checks accept renders to YAML that parses.
//!
//! The seed is fixed (printed; `IMGBUILD_FUZZ_SEED=<64 hex digits>` changes
//! it) and the case count is small by default; `IMGBUILD_FUZZ_CASES=N` runs N
//! cases per target for a long local run (see CONTRIBUTING.md, Fuzzing).

mod support {
    pub mod harness;
}

use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use support::harness::*;

const DEFAULT_SEED: [u8; 32] = *b"imgbuild-fuzz-seed-issue-11-2025";

fn seed() -> [u8; 32] {
    match std::env::var("IMGBUILD_FUZZ_SEED") {
        Ok(h) => hex::decode(h.trim())
            .ok()
            .and_then(|b| b.try_into().ok())
            .expect("IMGBUILD_FUZZ_SEED must be 64 hex digits"),
        Err(_) => DEFAULT_SEED,
    }
}

fn cases(default: u32) -> u32 {
    std::env::var("IMGBUILD_FUZZ_CASES")
        .ok()
        .map(|v| v.parse().expect("IMGBUILD_FUZZ_CASES must be a number"))
        .unwrap_or(default)
}

fn runner(target: &str, cases: u32) -> TestRunner {
    let seed = seed();
    println!("fuzz {target}: {cases} cases, seed {}", hex::encode(seed));
    TestRunner::new_with_rng(
        Config {
            cases,
            failure_persistence: None,
            // Shrinking re-runs slow cases; the failing input is printed whole instead.
            max_shrink_iters: 0,
            ..Config::default()
        },
        TestRng::from_seed(RngAlgorithm::ChaCha, &seed),
    )
}

/// Scratch space under the cargo target directory, removed on drop.
fn scratch() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

/// Runs `f` on a thread; fails the case on a panic or when it takes longer than `limit`.
fn bounded<T: Send + 'static>(
    limit: Duration,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, TestCaseError> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
        let _ = tx.send(r);
    });
    match rx.recv_timeout(limit) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(p)) => {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Err(TestCaseError::fail(format!("panicked: {msg}")))
        }
        Err(_) => Err(TestCaseError::fail(format!(
            "no answer within {limit:?} (a hang)"
        ))),
    }
}

/// Peak resident memory of this test process (KiB), from the kernel.
fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn assert_memory_bounded(target: &str) {
    let kib = peak_rss_kib();
    println!(
        "fuzz {target}: peak RSS of the test process {} MiB",
        kib / 1024
    );
    assert!(kib < 1536 * 1024, "{target}: peak RSS {kib} KiB");
}

/// One edit to fixture bytes.
#[derive(Debug, Clone)]
enum Mutation {
    Byte(usize, u8),
    Bit(usize, u8),
    Le32(usize, u32),
    Le64(usize, u64),
    Zero(usize, usize),
}

fn interesting32() -> impl Strategy<Value = u32> {
    prop_oneof![
        Just(0u32),
        Just(1),
        Just(2),
        Just(8),
        Just(0x7F),
        Just(0x80),
        Just(0xFF),
        Just(0xFFFF),
        Just(0x0FFF_FFF7),
        Just(0x0FFF_FFFF),
        Just(0x7FFF_FFFF),
        Just(0x8000_0000),
        Just(u32::MAX),
        any::<u32>(),
    ]
}

fn interesting64() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(1),
        Just(u64::MAX),
        Just(u64::MAX / 512),
        Just(0x8000_0000_0000_0000),
        Just(1 << 32),
        interesting32().prop_map(u64::from),
        any::<u64>(),
    ]
}

/// Up to `max` mutations at offsets inside `hot` (where the structures are).
fn mutations(hot: Vec<Range<usize>>, max: usize) -> impl Strategy<Value = Vec<Mutation>> {
    let offset = (0..hot.len(), any::<prop::sample::Index>()).prop_map(move |(r, i)| {
        let range = &hot[r];
        range.start + i.index(range.len())
    });
    let m = (
        offset,
        0u8..5,
        any::<u8>(),
        interesting32(),
        interesting64(),
        1usize..64,
    )
        .prop_map(|(o, kind, b, v32, v64, n)| match kind {
            0 => Mutation::Byte(o, b),
            1 => Mutation::Bit(o, b % 8),
            2 => Mutation::Le32(o, v32),
            3 => Mutation::Le64(o, v64),
            _ => Mutation::Zero(o, n),
        });
    prop::collection::vec(m, 1..=max)
}

fn put(bytes: &mut [u8], o: usize, v: &[u8]) {
    let end = (o + v.len()).min(bytes.len());
    if o < end {
        bytes[o..end].copy_from_slice(&v[..end - o]);
    }
}

fn apply(bytes: &mut [u8], muts: &[Mutation]) {
    for m in muts {
        match *m {
            Mutation::Byte(o, b) => put(bytes, o, &[b]),
            Mutation::Bit(o, bit) => {
                if o < bytes.len() {
                    bytes[o] ^= 1 << bit;
                }
            }
            Mutation::Le32(o, v) => put(bytes, o, &v.to_le_bytes()),
            Mutation::Le64(o, v) => put(bytes, o, &v.to_le_bytes()),
            Mutation::Zero(o, n) => put(bytes, o, &vec![0u8; n]),
        }
    }
}

/// CRC-32 as GPT uses it; checked against zlib's in `crc32_matches_zlib`.
fn crc32(data: &[u8]) -> u32 {
    let mut c = !0u32;
    for &b in data {
        c ^= u32::from(b);
        for _ in 0..8 {
            c = if c & 1 != 0 {
                0xEDB8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
        }
    }
    !c
}

#[test]
fn crc32_matches_zlib() {
    let data = b"imgbuild fuzz CRC check";
    let out = sh(&format!(
        "python3 -c 'import zlib,sys; print(zlib.crc32(sys.argv[1].encode()))' '{}'",
        std::str::from_utf8(data).unwrap()
    ));
    let zlib: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    assert_eq!(crc32(data), zlib);
}

/// Recomputes the CRCs of the primary GPT (so mutations reach past them).
fn fix_gpt_crcs(img: &mut [u8]) {
    let h = 512;
    if img.len() < 1024 || &img[h..h + 8] != b"EFI PART" {
        return;
    }
    let le32 = |b: &[u8], o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
    let hsize = (le32(img, h + 12) as usize).clamp(92, 512);
    let lba = u64::from_le_bytes(img[h + 72..h + 80].try_into().unwrap());
    let count = le32(img, h + 80) as usize;
    let esize = le32(img, h + 84) as usize;
    let start = lba.saturating_mul(512).min(img.len() as u64) as usize;
    let end = start
        .saturating_add(count.saturating_mul(esize))
        .min(img.len());
    let array_crc = crc32(&img[start..end]);
    img[h + 88..h + 92].copy_from_slice(&array_crc.to_le_bytes());
    img[h + 16..h + 20].fill(0);
    let header_crc = crc32(&img[h..h + hsize]);
    img[h + 16..h + 20].copy_from_slice(&header_crc.to_le_bytes());
}

#[derive(Default)]
struct Tally {
    cases: AtomicUsize,
    accepted: AtomicUsize,
}

impl Tally {
    fn report(&self, target: &str) {
        let n = self.cases.load(Ordering::Relaxed);
        let ok = self.accepted.load(Ordering::Relaxed);
        println!(
            "fuzz {target}: {n} cases ran, {ok} inputs accepted, {} refused with an error, no panic, no hang",
            n - ok
        );
    }
}

#[test]
fn fuzz_partition_tables() {
    use imgbuild::image::PartitionTable;
    let dir = scratch();
    // Real tables: sgdisk (GPT, as on RK1 and NUC) and sfdisk (MBR, as on CM4).
    let gpt = dir.path().join("gpt.img");
    let mbr = dir.path().join("mbr.img");
    sh(&format!(
        "truncate -s 8M {g}; sgdisk -a 1 -n 1:2048:4095 -t 1:0700 -n 2:4096:0 -t 2:8300 {g} >/dev/null; truncate -s 8M {m}; printf 'label: dos\\nstart=2048, size=2048, type=c\\nstart=4096, type=83\\n' | sfdisk -q {m}",
        g = q(&gpt),
        m = q(&mbr)
    ));
    let gpt_bytes = std::fs::read(&gpt).unwrap();
    let mbr_bytes = std::fs::read(&mbr).unwrap();
    let size = gpt_bytes.len();
    let tally = Tally::default();
    let strategy = (
        any::<bool>(),
        any::<bool>(),
        mutations(vec![0..34 * 512, size - 33 * 512..size, 440..512], 8),
    );
    let dir_path = dir.path().to_owned();
    runner("partition tables", cases(400))
        .run(&strategy, |(use_gpt, fix_crc, muts)| {
            let mut img = if use_gpt {
                gpt_bytes.clone()
            } else {
                mbr_bytes.clone()
            };
            apply(&mut img, &muts);
            if fix_crc {
                fix_gpt_crcs(&mut img);
            }
            let path = dir_path.join("case.img");
            std::fs::write(&path, &img).unwrap();
            let p = path.clone();
            let result = bounded(Duration::from_secs(10), move || {
                PartitionTable::read(&p, None).map_err(|e| e.to_string())
            })?;
            tally.cases.fetch_add(1, Ordering::Relaxed);
            if let Ok(t) = result {
                tally.accepted.fetch_add(1, Ordering::Relaxed);
                let mut parts: Vec<_> = t.partitions.iter().collect();
                parts.sort_by_key(|p| p.start);
                for p in &parts {
                    prop_assert!(p.len > 0 && p.start.checked_add(p.len).is_some());
                    prop_assert!(p.end() <= img.len() as u64, "{p:?} outside the image");
                }
                for w in parts.windows(2) {
                    prop_assert!(w[0].end() <= w[1].start, "{:?} overlaps {:?}", w[0], w[1]);
                }
            }
            prop_assert_eq!(std::fs::read(&path).unwrap(), img, "the image was modified");
            Ok(())
        })
        .unwrap();
    tally.report("partition tables");
    assert_memory_bounded("partition tables");
}

/// `len` random bytes, from a fixed generator (no /dev/urandom: reproducible).
fn pseudo_random(len: usize, mut x: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

const GUARD: usize = 64 * 1024;

/// Writes `part` into a file between two guard areas of known bytes.
fn guarded(path: &Path, part: &[u8]) -> (Vec<u8>, imgbuild::image::Partition) {
    let guard = pseudo_random(GUARD, 0x9E37_79B9_7F4A_7C15);
    let mut all = guard.clone();
    all.extend_from_slice(part);
    all.extend_from_slice(&guard);
    std::fs::write(path, &all).unwrap();
    let p = imgbuild::image::Partition {
        index: 1,
        start: GUARD as u64,
        len: part.len() as u64,
        type_id: String::new(),
        name: String::new(),
    };
    (guard, p)
}

fn guards_intact(path: &Path, guard: &[u8], part_len: usize) -> bool {
    let f = File::open(path).unwrap();
    let mut a = vec![0u8; GUARD];
    let mut b = vec![0u8; GUARD];
    f.read_exact_at(&mut a, 0).unwrap();
    f.read_exact_at(&mut b, (GUARD + part_len) as u64).unwrap();
    a == guard && b == guard
}

#[test]
fn fuzz_fat() {
    use imgbuild::fs::fat::FatVolume;
    use imgbuild::image::Region;
    let dir = scratch();
    // The RK1 CIDATA geometry (mkfs.vfat -F32 on 4 MiB), files put by pyfatfs.
    let fat = dir.path().join("fat.img");
    sh(&format!(
        "truncate -s 4M {f}; mkfs.vfat -F32 -n CIDATA {f} >/dev/null 2>&1",
        f = q(&fat)
    ));
    for (name, len) in [
        ("meta-data", 40usize),
        ("user-data", 3000),
        ("network-config", 9000),
    ] {
        let src = dir.path().join(name);
        std::fs::write(&src, pseudo_random(len, len as u64)).unwrap();
        sh(&format!(
            "{} {} put {} /{name} {}",
            python(),
            q(&repo().join("tests/fixtures/fat.py")),
            q(&fat),
            q(&src)
        ));
    }
    sh(&format!(
        "fsck.fat -a {f} >/dev/null 2>&1 || true; fsck.fat -n {f} >/dev/null",
        f = q(&fat)
    ));
    let base = std::fs::read(&fat).unwrap();
    // BPB and FSInfo, the start of both FATs, the root directory and first files.
    let bpb = |o: usize| u16::from_le_bytes([base[o], base[o + 1]]) as usize;
    let (bps, reserved, nfats) = (bpb(11), bpb(14), base[16] as usize);
    let fat_size = u32::from_le_bytes(base[36..40].try_into().unwrap()) as usize * bps;
    let fat0 = reserved * bps;
    let data = fat0 + nfats * fat_size;
    let hot = vec![
        0..96,
        bps..bps + 512,
        fat0..fat0 + 256,
        fat0 + fat_size..fat0 + fat_size + 256,
        data..data + 4096,
    ];
    let tally = Tally::default();
    let dir_path = dir.path().to_owned();
    runner("FAT", cases(300))
        .run(&(mutations(hot, 8), any::<u8>()), |(muts, size_pick)| {
            let mut part = base.clone();
            apply(&mut part, &muts);
            let path = dir_path.join("case.img");
            let (guard, p) = guarded(&path, &part);
            let path2 = path.clone();
            let accepted = bounded(Duration::from_secs(10), move || {
                let file = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&path2)
                    .unwrap();
                let Ok(mut vol) = FatVolume::open(Region::new(&file, &p)) else {
                    return false;
                };
                let _ = vol.label();
                let _ = vol.list("/");
                let _ = vol.read_file("/meta-data");
                let body = vec![b'x'; size_pick as usize * 97];
                let ok = vol.write_file("/user-data", &body).is_ok()
                    & vol.write_file("/dir/sub/new-file.txt", b"hello").is_ok()
                    & vol.remove_file("/network-config").is_ok();
                ok & vol.flush().is_ok()
            })?;
            tally.cases.fetch_add(1, Ordering::Relaxed);
            if accepted {
                tally.accepted.fetch_add(1, Ordering::Relaxed);
            }
            prop_assert!(
                guards_intact(&path, &guard, part.len()),
                "a write left the partition: {muts:?}"
            );
            Ok(())
        })
        .unwrap();
    tally.report("FAT");
    assert_memory_bounded("FAT");
}

#[test]
fn fuzz_ext4() {
    use imgbuild::fs::ext4::{self, Contents, Op, Owner, Superblock};
    use imgbuild::image::Region;
    let dir = scratch();
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(tree.join("etc/cloud")).unwrap();
    std::fs::write(
        tree.join("etc/os-release"),
        "ID=ubuntu\nVERSION_ID=\"24.04\"\n",
    )
    .unwrap();
    for i in 0..40 {
        std::fs::write(tree.join(format!("etc/f{i}.conf")), format!("{i}\n")).unwrap();
    }
    let img = dir.path().join("ext4.img");
    sh(&format!(
        "truncate -s 8M {i}; mkfs.ext4 -q -F -L cloudimg-rootfs -E root_owner=0:0 -d {t} {i}",
        i = q(&img),
        t = q(&tree)
    ));
    let base = std::fs::read(&img).unwrap();
    // Superblock, group descriptors, bitmaps and the first inode table blocks.
    let hot = vec![1024..2048, 2048..8192, 8192..64 * 1024];
    let tally = Tally::default();
    let writes = AtomicUsize::new(0);
    let dir_path = dir.path().to_owned();
    runner("ext4", cases(200))
        .run(&(mutations(hot, 6), 0u8..8), |(muts, write_pick)| {
            let mut part = base.clone();
            apply(&mut part, &muts);
            let path = dir_path.join("case.img");
            let (guard, p) = guarded(&path, &part);
            let path2 = path.clone();
            // One case in eight also writes through debugfs (slower).
            let write = write_pick == 0;
            if write {
                writes.fetch_add(1, Ordering::Relaxed);
            }
            let accepted = bounded(Duration::from_secs(30), move || {
                let file = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(&path2)
                    .unwrap();
                let region = Region::new(&file, &p);
                let _ = Superblock::read(&region);
                let mut ok = false;
                if let Ok(fs) = ext4::open_reader(region) {
                    ok = true;
                    let _ = fs.read_to_string("/etc/os-release");
                    if let Ok(rd) = fs.read_dir("/etc") {
                        for e in rd.take(200) {
                            let _ = e.map(|e| e.path());
                        }
                    }
                    let _ = fs.metadata("/etc/cloud");
                }
                if write {
                    let owner = Owner {
                        mode: 0o600,
                        uid: 0,
                        gid: 0,
                    };
                    let ops = [Op::Write {
                        path: "/etc/cloud/new.cfg".into(),
                        contents: Contents::Bytes(b"fuzz\n".to_vec()),
                        owner,
                    }];
                    ok &= ext4::apply(&path2, &file, &p, &ops, 1_714_003_200).is_ok();
                }
                ok
            })?;
            tally.cases.fetch_add(1, Ordering::Relaxed);
            if accepted {
                tally.accepted.fetch_add(1, Ordering::Relaxed);
            }
            prop_assert!(
                guards_intact(&path, &guard, part.len()),
                "a write left the partition: {muts:?}"
            );
            Ok(())
        })
        .unwrap();
    println!(
        "fuzz ext4: {} cases wrote through debugfs",
        writes.load(Ordering::Relaxed)
    );
    tally.report("ext4");
    assert_memory_bounded("ext4");
}

/// Unpacks `input` (imgbuild::source::unpack, called directly) within a time bound.
fn unpack_case(input: &Path, out: &Path) -> Result<Result<(String, u64), String>, TestCaseError> {
    let (i, o) = (input.to_owned(), out.to_owned());
    bounded(Duration::from_secs(20), move || {
        let src = File::open(&i).unwrap();
        let dst = File::create(&o).unwrap();
        imgbuild::source::unpack::unpack(&src, &dst, "fuzz", 1 << 30)
            .map(|(format, size)| (format!("{format:?}").to_lowercase(), size))
            .map_err(|e| e.to_string())
    })
}

/// The compressed fixtures: 1 MiB of text, random bytes and zeros, through the real tools.
fn compressed_fixtures(dir: &Path) -> (Vec<u8>, Vec<(&'static str, Vec<u8>)>) {
    let mut raw = Vec::new();
    for i in 0..4000 {
        raw.extend_from_slice(format!("line {i} of the fuzz fixture\n").as_bytes());
    }
    raw.extend(pseudo_random(300_000, 7));
    raw.resize(1 << 20, 0);
    let src = dir.join("raw.img");
    std::fs::write(&src, &raw).unwrap();
    let mut out = Vec::new();
    for (name, cmd) in [
        ("xz", "xz -T1 -c"),
        // Blocks with sizes in their headers: decoded in parallel.
        ("xz blocks", "xz -T2 --block-size=256KiB -c"),
        ("gzip", "gzip -c"),
        ("zstd", "zstd -q -c"),
    ] {
        let bytes = sh(&format!("{cmd} {}", q(&src))).stdout;
        out.push((name, bytes));
    }
    (raw, out)
}

#[test]
fn fuzz_compressed_streams() {
    let dir = scratch();
    let (raw, streams) = compressed_fixtures(dir.path());
    let tally = Tally::default();
    // (cases, an example output size) by what happened.
    let found = std::sync::Mutex::new(std::collections::BTreeMap::<String, (usize, u64)>::new());
    let dir_path = dir.path().to_owned();
    let n = streams.len();
    runner("xz/gzip/zstd", cases(240))
        .run(
            &(
                0..n,
                mutations(vec![0..64, 64..4096, 0..1 << 20], 4),
                prop::option::of(0usize..1 << 20),
            ),
            |(which, muts, cut)| {
                let (name, bytes) = &streams[which];
                let mut input = bytes.clone();
                let end = input.len();
                apply(
                    &mut input,
                    &muts.iter().map(|m| clamp(m, end)).collect::<Vec<_>>(),
                );
                if let Some(c) = cut {
                    input.truncate(c % (end + 1));
                }
                let inp = dir_path.join("case.in");
                let out = dir_path.join("case.out");
                std::fs::write(&inp, &input).unwrap();
                let r = unpack_case(&inp, &out)?;
                tally.cases.fetch_add(1, Ordering::Relaxed);
                if let Ok((format, size)) = r {
                    tally.accepted.fetch_add(1, Ordering::Relaxed);
                    // Accepted garbage is worth reporting: a stream cut short or
                    // damaged should not unpack "successfully" to other bytes.
                    let got = std::fs::read(&out).unwrap();
                    if got != raw {
                        let key =
                            format!("{name}: damaged streams unpacked without error as {format}");
                        let mut f = found.lock().unwrap();
                        if f.is_empty() {
                            println!("fuzz xz/gzip/zstd: first such case: {muts:?}, cut {cut:?}");
                        }
                        f.entry(key).or_insert((0, size)).0 += 1;
                    }
                }
                prop_assert_eq!(
                    &std::fs::read(&inp).unwrap(),
                    &input,
                    "the input was modified"
                );
                Ok(())
            },
        )
        .unwrap();
    tally.report("xz/gzip/zstd");
    for (k, (n, size)) in found.lock().unwrap().iter() {
        println!("fuzz xz/gzip/zstd finding: {k}: {n} cases (e.g. {size} bytes out)");
    }
    assert_memory_bounded("xz/gzip/zstd");
}

/// A mutation moved inside `len` bytes.
fn clamp(m: &Mutation, len: usize) -> Mutation {
    let f = |o: usize| if len == 0 { 0 } else { o % len };
    match *m {
        Mutation::Byte(o, b) => Mutation::Byte(f(o), b),
        Mutation::Bit(o, b) => Mutation::Bit(f(o), b),
        Mutation::Le32(o, v) => Mutation::Le32(f(o), v),
        Mutation::Le64(o, v) => Mutation::Le64(f(o), v),
        Mutation::Zero(o, n) => Mutation::Zero(f(o), n),
    }
}

#[test]
fn fuzz_qcow2() {
    let dir = scratch();
    let raw = dir.path().join("disk.raw");
    let mut bytes = pseudo_random(256 * 1024, 3);
    bytes.resize(4 << 20, 0);
    bytes[3 << 20..(3 << 20) + 4096].copy_from_slice(&pseudo_random(4096, 5));
    std::fs::write(&raw, &bytes).unwrap();
    let mut images = Vec::new();
    for (name, opts) in [
        ("qcow2 v3 compressed", "-c -o cluster_size=4096"),
        ("qcow2 v2", "-o compat=0.10,cluster_size=4096"),
        (
            "qcow2 v3 zstd",
            "-c -o cluster_size=4096,compression_type=zstd",
        ),
    ] {
        let out = dir.path().join("disk.qcow2");
        let (code, text) = sh_status(&format!(
            "qemu-img convert -O qcow2 {opts} {} {}",
            q(&raw),
            q(&out)
        ));
        if code == 0 {
            images.push((name, std::fs::read(&out).unwrap()));
        } else {
            println!("fuzz qcow2: qemu-img cannot make {name} here: {text}");
        }
    }
    let tally = Tally::default();
    let dir_path = dir.path().to_owned();
    let n = images.len();
    runner("qcow2", cases(240))
        .run(
            &(0..n, mutations(vec![0..112, 112..64 * 1024, 0..1 << 20], 6)),
            |(which, muts)| {
                let (_, img) = &images[which];
                let mut input = img.clone();
                let len = input.len();
                apply(
                    &mut input,
                    &muts.iter().map(|m| clamp(m, len)).collect::<Vec<_>>(),
                );
                let inp = dir_path.join("case.qcow2");
                let out = dir_path.join("case.raw");
                std::fs::write(&inp, &input).unwrap();
                let r = unpack_case(&inp, &out)?;
                tally.cases.fetch_add(1, Ordering::Relaxed);
                if r.is_ok() {
                    tally.accepted.fetch_add(1, Ordering::Relaxed);
                }
                let _ = std::fs::remove_file(&out);
                prop_assert_eq!(
                    &std::fs::read(&inp).unwrap(),
                    &input,
                    "the input was modified"
                );
                Ok(())
            },
        )
        .unwrap();
    tally.report("qcow2");
    assert_memory_bounded("qcow2");
}

/// A YAML scalar or fragment a hostile or careless profile might hold.
fn yaml_fragment() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>().prop_map(|s| serde_json::to_string(&s).unwrap()),
        "[ -~]{0,40}",
        Just("!!binary AAAA".to_string()),
        Just("&a [*a]".to_string()),
        Just("{a: [1, {b: c}]}".to_string()),
        Just("\"\\x7f\\x85\\u2028\"".to_string()),
        Just("v1.32.5+k3s1$(id)".to_string()),
        Just("999999999999999999999".to_string()),
        Just("-1".to_string()),
        Just("~".to_string()),
        Just("\n  - x\n  - y".to_string()),
    ]
}

#[test]
fn fuzz_profiles_and_manifests() {
    let dir = scratch();
    for d in ["profiles", "firmware-manifests", "overlays"] {
        sh(&format!("cp -r {} {}", q(&repo().join(d)), q(dir.path())));
    }
    let files: Vec<PathBuf> = [
        "profiles/cluster.yaml",
        "profiles/nodes/node01.yaml",
        "profiles/nodes/node02.yaml",
        "firmware-manifests/rk1.yaml",
        "firmware-manifests/cm4.yaml",
    ]
    .iter()
    .map(|f| dir.path().join(f))
    .collect();
    let originals: Vec<String> = files
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap())
        .collect();
    let tally = Tally::default();
    let paths = imgbuild::commands::Paths::resolve(
        dir.path().join("profiles"),
        Some(dir.path().join("firmware-manifests")),
        Some(dir.path().join("overlays")),
    );
    runner("profiles and manifests", cases(200))
        .run(
            &(
                0..files.len(),
                prop::collection::vec(
                    (any::<prop::sample::Index>(), yaml_fragment(), any::<bool>()),
                    1..4,
                ),
            ),
            |(which, edits)| {
                // Replace the value after a `key:` on a random line, or insert a line.
                let mut lines: Vec<String> = originals[which].lines().map(str::to_string).collect();
                for (at, frag, replace) in &edits {
                    let i = at.index(lines.len());
                    match lines[i].split_once(": ") {
                        Some((k, _)) if *replace => lines[i] = format!("{k}: {frag}"),
                        _ => lines.insert(i, frag.clone()),
                    }
                }
                let text = lines.join("\n") + "\n";
                std::fs::write(&files[which], &text).unwrap();
                let p = paths.clone();
                let outcome = bounded(Duration::from_secs(20), move || {
                    match imgbuild::commands::check::check(&p, imgbuild::plan::DEFAULT_BUILD_TIME) {
                        Err(e) => Err(format!("{:#}", e.inner())),
                        Ok(report) => {
                            let mut bad = Vec::new();
                            for node in &report.nodes {
                                let name = node.split('.').next().unwrap();
                                let files = imgbuild::commands::render::render(
                                    &p,
                                    name,
                                    imgbuild::plan::DEFAULT_BUILD_TIME,
                                )
                                .map_err(|e| format!("{e:#}"))?;
                                for f in files {
                                    let yaml = f.path.ends_with(".yaml")
                                        || ["/user-data", "/meta-data", "/network-config"]
                                            .contains(&f.path.as_str());
                                    // Every document of a multi-document
                                    // file (Kubernetes manifests) must parse.
                                    let parses = serde_yaml_ng::Deserializer::from_slice(
                                        &f.contents,
                                    )
                                    .all(|d| {
                                        <serde_yaml_ng::Value as serde::Deserialize>::deserialize(d)
                                            .is_ok()
                                    });
                                    if yaml && !parses {
                                        bad.push(format!("{node}: {}", f.path));
                                    }
                                }
                            }
                            Ok(bad)
                        }
                    }
                })?;
                std::fs::write(&files[which], &originals[which]).unwrap();
                tally.cases.fetch_add(1, Ordering::Relaxed);
                if let Ok(bad) = outcome {
                    tally.accepted.fetch_add(1, Ordering::Relaxed);
                    prop_assert!(
                        bad.is_empty(),
                        "accepted profiles rendered invalid YAML: {bad:?}\n{text}"
                    );
                }
                Ok(())
            },
        )
        .unwrap();
    tally.report("profiles and manifests");
    assert_memory_bounded("profiles and manifests");
}

#[test]
fn fuzz_yaml_filter_against_pyyaml() {
    // Oracle: PyYAML, the parser cloud-init reads user-data with.
    use imgbuild::plan::render::quote;
    let dir = scratch();
    let script = dir.path().join("load.py");
    std::fs::write(
        &script,
        "import json, sys, yaml\nprint(json.dumps(yaml.safe_load(open(sys.argv[1], encoding='utf-8'))))\n",
    )
    .unwrap();
    let strings = prop::collection::vec(
        prop_oneof![
            any::<String>(),
            "[\\x00-\\x7f\\u{80}-\\u{9f}\\u{2028}\\u{2029}\\u{feff}\\u{fffe}\\u{ffff}]{0,12}",
        ],
        64,
    );
    let total = AtomicUsize::new(0);
    let dir_path = dir.path().to_owned();
    runner("yaml filter", cases(24))
        .run(&strings, |values| {
            let mut doc = String::from("#cloud-config\n");
            for (i, v) in values.iter().enumerate() {
                doc.push_str(&format!("k{i}: {}\n", quote("yaml", v).unwrap()));
            }
            let f = dir_path.join("doc.yaml");
            std::fs::write(&f, &doc).unwrap();
            let out = std::process::Command::new("bash")
                .arg("-c")
                .arg(format!("{} {} {}", python(), q(&script), q(&f)))
                .output()
                .unwrap();
            prop_assert!(
                out.status.success(),
                "PyYAML refused the document: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let back: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            for (i, v) in values.iter().enumerate() {
                prop_assert_eq!(back[format!("k{i}")].as_str(), Some(v.as_str()));
            }
            total.fetch_add(values.len(), Ordering::Relaxed);
            Ok(())
        })
        .unwrap();
    println!(
        "fuzz yaml filter: {} strings round-tripped through PyYAML",
        total.load(Ordering::Relaxed)
    );
}

#[test]
fn fuzz_debugfs_extent_maps() {
    // The extent map read from debugfs (`ex`) before data is written into
    // the blocks it names: arbitrary lines never panic the parser, and
    // whatever it accepts, `check` holds to the file's blocks and the file
    // system's size, so no write can land outside them.
    use imgbuild::fs::extents::{check, parse};
    let word = prop_oneof![
        "[0-9]{1,12}".prop_map(|s| s),
        Just("-".to_string()),
        Just("Uninit".to_string()),
        "[0-9]{1,2}/ {0,2}[0-9]{1,2}".prop_map(|s| s),
        "[ -~]{0,6}".prop_map(|s| s),
    ];
    let line = prop::collection::vec(word, 0..12).prop_map(|w| w.join(" "));
    runner("extent maps", cases(2000))
        .run(
            &(prop::collection::vec(line, 0..8), 0u64..200, 1u64..1000),
            |(lines, blocks, fs_blocks)| {
                if let Ok(map) = parse(&lines)
                    && check(&map, blocks, fs_blocks).is_ok()
                {
                    let mut next = 0;
                    for e in &map {
                        prop_assert_eq!(e.logical, next);
                        prop_assert!(e.physical > 0 && e.physical + e.len <= fs_blocks);
                        next += e.len;
                    }
                    prop_assert_eq!(next, blocks);
                }
                Ok(())
            },
        )
        .unwrap();
    // Maps printed the way debugfs prints them read back as they were.
    runner("extent maps printed", cases(500))
        .run(
            &prop::collection::vec((1u64..40_000, 1u64..32_768, any::<bool>()), 1..6),
            |runs| {
                let mut lines =
                    vec!["Level Entries       Logical        Physical Length Flags".to_string()];
                let (mut l, mut p) = (0u64, 1u64);
                for (i, (gap, len, uninit)) in runs.iter().enumerate() {
                    p += gap;
                    lines.push(format!(
                        " 0/ 0 {:>3}/{:>3} {:>5} - {:>5} {:>6} - {:>6} {:>6} {}",
                        i + 1,
                        runs.len(),
                        l,
                        l + len - 1,
                        p,
                        p + len - 1,
                        len,
                        if *uninit { "Uninit" } else { "" }
                    ));
                    l += len;
                    p += len;
                }
                let map = parse(&lines).map_err(TestCaseError::fail)?;
                prop_assert_eq!(map.len(), runs.len());
                prop_assert!(check(&map, l, p).is_ok());
                prop_assert!(check(&map, l + 1, p).is_err());
                prop_assert!(check(&map, l, p - 1).is_err());
                Ok(())
            },
        )
        .unwrap();
}

// The parsers of issue 25: the Ansible import, registry documents and
// provenance records, each behind the size and nesting pre-scan. Beyond no
// panic and no hang, the structural property: an input past a cap is
// refused by the pre-scan (its own error variant, which no parser returns),
// and an input within the caps never is.

/// An edit to a text: a byte changed, a span deleted, a fragment inserted.
#[derive(Debug, Clone)]
enum Edit {
    Byte(prop::sample::Index, u8),
    Delete(prop::sample::Index, usize),
    Insert(prop::sample::Index, String),
}

/// What a hostile or careless hand puts into an inventory or a document.
fn fragment() -> impl Strategy<Value = String> {
    prop_oneof![
        "[ -~]{0,12}",
        Just("../../../x".to_string()),
        Just("a/b".to_string()),
        Just("\0".to_string()),
        Just("\n".to_string()),
        Just("\u{85}\u{2028}".to_string()),
        Just(": ".to_string()),
        Just("- ".to_string()),
        Just("'".to_string()),
        Just("\"".to_string()),
        Just("|\n".to_string()),
        Just("=".to_string()),
        (1usize..120).prop_map(|n| "[".repeat(n)),
        (1usize..120).prop_map(|n| "{\"a\": ".repeat(n)),
        (1usize..60).prop_map(|n| "- ".repeat(n)),
    ]
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    let edit = prop_oneof![
        (any::<prop::sample::Index>(), any::<u8>()).prop_map(|(i, b)| Edit::Byte(i, b)),
        (any::<prop::sample::Index>(), 1usize..16).prop_map(|(i, n)| Edit::Delete(i, n)),
        (any::<prop::sample::Index>(), fragment()).prop_map(|(i, f)| Edit::Insert(i, f)),
    ];
    prop::collection::vec(edit, 1..5)
}

fn edited(text: &[u8], edits: &[Edit]) -> Vec<u8> {
    let mut b = text.to_vec();
    for e in edits {
        match e {
            Edit::Byte(i, v) if !b.is_empty() => {
                let i = i.index(b.len());
                b[i] = *v;
            }
            Edit::Delete(i, n) if !b.is_empty() => {
                let i = i.index(b.len());
                b.drain(i..(i + n).min(b.len()));
            }
            Edit::Insert(i, f) => {
                let i = i.index(b.len() + 1);
                b.splice(i..i, f.bytes());
            }
            _ => {}
        }
    }
    b
}

const FUZZ_HOSTS_YML: &str = "all:\n  children:\n    turing_pis:\n      hosts:\n        tp1: {ansible_host: bmc.lan}\n    tp1_nodes:\n      hosts:\n        node01: {slot_num: 1, type: rk1}\n        node02: {slot_num: 2, type: pi4, root_dev: /dev/nvme0n1}\n    extra_nodes:\n      hosts:\n        nuc2: {node_ip: 192.168.1.120, workstation: true}\n";
const FUZZ_HOSTS_INI: &str = "[turing_pis]\ntp1 ansible_host=bmc.lan\n\n[tp1_nodes]\nnode01 slot_num=1 type=rk1\nnode02 slot_num=2 type=pi4 root_dev=/dev/nvme0n1\n\n[extra_nodes]\nnuc2 node_ip=192.168.1.120 workstation=true\n\n[all:vars]\ncontrol_plane=node01\n";

fn ansible_choices() -> imgbuild::config::ansible::ImportChoices {
    imgbuild::config::ansible::ImportChoices {
        name: "homelab".into(),
        admin_user: None,
        ssh_keys: vec!["ssh-ed25519 AAAA t@t".into()],
    }
}

#[test]
fn fuzz_ansible_import() {
    use imgbuild::config::ansible::{AnsibleError, import, parse_inventory};
    let gv: serde_yaml_ng::Mapping = serde_yaml_ng::from_str("control_plane: node01\n").unwrap();
    let tally = Tally::default();
    let names = AtomicUsize::new(0);
    runner("ansible import", cases(300))
        .run(&(any::<bool>(), edits()), |(ini, edits)| {
            let base = if ini { FUZZ_HOSTS_INI } else { FUZZ_HOSTS_YML };
            let text = String::from_utf8_lossy(&edited(base.as_bytes(), &edits)).into_owned();
            let gv = gv.clone();
            let outcome = bounded(Duration::from_secs(10), move || {
                let inv = parse_inventory(&text).map_err(|e| e.to_string())?;
                let imported = import(&inv, &gv, &ansible_choices()).map_err(|e| e.to_string())?;
                Ok::<_, String>(imported.nodes.keys().cloned().collect::<Vec<_>>())
            })?;
            tally.cases.fetch_add(1, Ordering::Relaxed);
            if let Ok(nodes) = outcome {
                tally.accepted.fetch_add(1, Ordering::Relaxed);
                // Whatever name the inventory gives, the file it becomes is
                // refused or lies in nodes/ under exactly that name.
                for n in nodes {
                    if let Ok(p) = imgbuild::commands::init::node_file(&n) {
                        names.fetch_add(1, Ordering::Relaxed);
                        let parts: Vec<_> =
                            p.components().map(|c| c.as_os_str().to_owned()).collect();
                        prop_assert_eq!(parts.len(), 3, "{:?}", p);
                        prop_assert_eq!(p, PathBuf::from(format!("profiles/nodes/{n}.yaml")));
                        prop_assert!(imgbuild::config::profile::hostname_error(&n).is_none());
                    }
                }
            }
            Ok(())
        })
        .unwrap();
    tally.report("ansible import");
    println!(
        "fuzz ansible import: {} node names became files",
        names.load(Ordering::Relaxed)
    );
    // The pre-scan: nesting `n` deep in a host's value is refused by it,
    // and only by it, exactly when the document is deeper than the cap.
    runner("ansible import nesting", cases(200))
        .run(&(any::<bool>(), 1usize..200), |(ini, n)| {
            let deep = format!("{}1{}", "[".repeat(n), "]".repeat(n));
            let (text, depth) = if ini {
                (
                    format!("{FUZZ_HOSTS_INI}[tp1_nodes]\nnode03 slot_num=3 type=rk1 x={deep}\n"),
                    n,
                )
            } else {
                // The document's map > all's > children's > tp1_nodes's >
                // hosts' > node02's, then the value.
                (
                    FUZZ_HOSTS_YML.replace("root_dev: /dev/nvme0n1", &format!("x: {deep}")),
                    6 + n,
                )
            };
            let r = bounded(Duration::from_secs(10), move || {
                parse_inventory(&text).map(|_| ())
            })?;
            let by_prescan = matches!(
                r,
                Err(AnsibleError::Limit(_) | AnsibleError::ValueLimit { .. })
            );
            prop_assert_eq!(by_prescan, depth > 64, "depth {}: {:?}", depth, r.err());
            Ok(())
        })
        .unwrap();
    // And the size cap, before any line is read.
    let big = format!("{FUZZ_HOSTS_INI}#{}\n", "x".repeat(1 << 20));
    assert!(matches!(parse_inventory(&big), Err(AnsibleError::Limit(_))));
}

/// A two-platform OCI index and one image manifest, as registries serve them.
fn oci_documents() -> (Vec<u8>, Vec<u8>) {
    let d = |c: char| format!("sha256:{}", c.to_string().repeat(64));
    let manifest = serde_json::to_vec_pretty(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": d('c'), "size": 512},
        "layers": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d('1'), "size": 1024},
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d('2'), "size": 2048}
        ]
    }))
    .unwrap();
    let index = serde_json::to_vec_pretty(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": d('a'), "size": 700,
             "platform": {"os": "linux", "architecture": "amd64"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": d('b'), "size": 700,
             "platform": {"os": "linux", "architecture": "arm64"}},
            {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": d('e'), "size": 700,
             "platform": {"os": "linux", "architecture": "arm", "variant": "v7"}}
        ]
    }))
    .unwrap();
    (index, manifest)
}

#[test]
fn fuzz_registry_documents() {
    use imgbuild::config::manifest::Arch;
    use imgbuild::source::oci::{OciError, parse_manifest, select_platform};
    let image = imgbuild::config::images::ImageRef::parse(&format!(
        "registry.example/app:1@sha256:{}",
        "f".repeat(64)
    ))
    .unwrap();
    let (index, manifest) = oci_documents();
    let tally = Tally::default();
    runner("registry documents", cases(400))
        .run(
            &(any::<bool>(), 0usize..3, edits()),
            |(is_index, arch, edits)| {
                let arch = [Arch::Arm64, Arch::Amd64, Arch::Armhf][arch];
                let doc = edited(if is_index { &index } else { &manifest }, &edits);
                let image = image.clone();
                let text = String::from_utf8_lossy(&doc).into_owned();
                let found = bounded(Duration::from_secs(10), move || {
                    if is_index {
                        select_platform(&image, arch, &doc).map(|d| vec![(d, 0)])
                    } else {
                        parse_manifest("manifest", &doc)
                    }
                    .map_err(|e| e.to_string())
                })?;
                tally.cases.fetch_add(1, Ordering::Relaxed);
                if let Ok(found) = found {
                    tally.accepted.fetch_add(1, Ordering::Relaxed);
                    // Every digest read is one of the document's strings
                    // (after JSON escapes), as it stands there.
                    let mut strings = Vec::new();
                    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
                    let mut stack = vec![&v];
                    while let Some(v) = stack.pop() {
                        match v {
                            serde_json::Value::String(s) => strings.push(s.clone()),
                            serde_json::Value::Array(a) => stack.extend(a),
                            serde_json::Value::Object(o) => stack.extend(o.values()),
                            _ => {}
                        }
                    }
                    for (d, _) in found {
                        let named = strings.contains(&format!("sha256:{d}"));
                        prop_assert!(named, "{d} not in {text}");
                    }
                }
                Ok(())
            },
        )
        .unwrap();
    tally.report("registry documents");
    runner("registry documents nesting", cases(200))
        .run(&(any::<bool>(), 1usize..200), |(is_index, n)| {
            let (open, close) = ("[".repeat(n), "]".repeat(n));
            // The manifest's layers (depth 2) or the index's manifests hold
            // the nesting.
            let (doc, depth) = if is_index {
                let t = String::from_utf8(index.clone()).unwrap();
                (
                    t.replacen(
                        "\"manifests\": [",
                        &format!("\"manifests\": [{open}{close},"),
                        1,
                    ),
                    2 + n,
                )
            } else {
                let t = String::from_utf8(manifest.clone()).unwrap();
                (
                    t.replacen("\"layers\": [", &format!("\"layers\": [{open}{close},"), 1),
                    2 + n,
                )
            };
            let image = image.clone();
            let r = bounded(Duration::from_secs(10), move || {
                if is_index {
                    select_platform(&image, Arch::Arm64, doc.as_bytes()).map(|_| ())
                } else {
                    parse_manifest("manifest", doc.as_bytes()).map(|_| ())
                }
            })?;
            prop_assert_eq!(
                matches!(r, Err(OciError::Limit(_))),
                depth > 64,
                "depth {}",
                depth
            );
            Ok(())
        })
        .unwrap();
}

#[test]
fn fuzz_provenance_records() {
    use imgbuild::plan::{FileRecord, Provenance, ProvenanceError};
    let record = Provenance {
        base_sha256: Some("0".repeat(64)),
        board: "rk1".into(),
        build_time: 1_700_000_000,
        cluster: "homelab".into(),
        files: (0..6)
            .map(|i| FileRecord {
                partition: if i % 2 == 0 { "seed" } else { "root" }.into(),
                path: format!("/etc/imgbuild/file-{i}"),
                mode: 0o644,
                size: 100 * i,
            })
            .collect(),
        imgbuild: "0.1.0".into(),
        instance_id: "node02-1".into(),
        node: "node02".into(),
        profile_digest: "1".repeat(64),
        unsealed: false,
        joined: None,
    };
    let text = serde_json::to_vec_pretty(&record).unwrap();
    assert_eq!(Provenance::read("r", &text).unwrap(), record);
    let tally = Tally::default();
    runner("provenance records", cases(400))
        .run(&edits(), |edits| {
            let doc = edited(&text, &edits);
            let r = bounded(Duration::from_secs(10), move || {
                Provenance::read("imgbuild.json", &doc).map_err(|e| e.to_string())
            })?;
            tally.cases.fetch_add(1, Ordering::Relaxed);
            if let Ok(p) = r {
                tally.accepted.fetch_add(1, Ordering::Relaxed);
                // What is accepted reads back as itself.
                let again = serde_json::to_vec(&p).unwrap();
                prop_assert_eq!(Provenance::read("again", &again).unwrap(), p);
            }
            Ok(())
        })
        .unwrap();
    tally.report("provenance records");
    runner("provenance records nesting", cases(200))
        .run(&(1usize..200), |n| {
            let t = String::from_utf8(text.clone()).unwrap();
            let doc = t.replacen(
                "\"files\": [",
                &format!("\"files\": [{}{},", "[".repeat(n), "]".repeat(n)),
                1,
            );
            let r = bounded(Duration::from_secs(10), move || {
                Provenance::read("imgbuild.json", doc.as_bytes()).map(|_| ())
            })?;
            prop_assert_eq!(
                matches!(r, Err(ProvenanceError::Limit(_))),
                2 + n > 64,
                "depth {}",
                2 + n
            );
            Ok(())
        })
        .unwrap();
    // A record past the size cap is refused before it is parsed.
    let big = format!("{{\"pad\": \"{}\"}}", "x".repeat(1 << 20));
    assert!(matches!(
        Provenance::read("r", big.as_bytes()),
        Err(ProvenanceError::Limit(_))
    ));
}

/// How deep a parsed YAML value nests (a scalar is 0).
fn value_depth(v: &serde_yaml_ng::Value) -> usize {
    use serde_yaml_ng::Value;
    match v {
        Value::Sequence(s) => 1 + s.iter().map(value_depth).max().unwrap_or(0),
        Value::Mapping(m) => {
            1 + m
                .iter()
                .map(|(k, v)| value_depth(k).max(value_depth(v)))
                .max()
                .unwrap_or(0)
        }
        Value::Tagged(t) => value_depth(&t.value),
        _ => 0,
    }
}

/// One level of a generated YAML document.
#[derive(Debug, Clone, Copy)]
enum Level {
    BlockMap,
    BlockSeq,
    FlowSeq,
    FlowMap,
    PairInFlow,
}

/// Text that looks like nesting but is a scalar: quoted, or in a block
/// scalar (serde_yaml_ng writes a multi-line string as one).
fn decoy() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("[[[[{{".to_string()),
        Just("]]]] '".to_string()),
        Just("[\n'x\n- - [".to_string()),
        Just("a: [b\nc: {".to_string()),
        "[\\[\\]{}'\" :\\-#|>\n]{0,10}",
    ]
}

/// A document nesting `levels` (block levels first: no block collection
/// can sit inside a flow one), with decoys beside the path down.
fn nested_yaml(levels: &[Level], decoys: &[String]) -> String {
    use serde_yaml_ng::{Mapping, Value};
    let block: Vec<Level> = levels
        .iter()
        .copied()
        .filter(|l| matches!(l, Level::BlockMap | Level::BlockSeq))
        .collect();
    let flow: Vec<Level> = levels
        .iter()
        .copied()
        .filter(|l| !matches!(l, Level::BlockMap | Level::BlockSeq))
        .collect();
    let mut inner = String::from("leaf");
    for l in flow.iter().rev() {
        inner = match l {
            Level::FlowSeq => format!("[{inner}, x]"),
            Level::FlowMap => format!("{{k: {inner}, \"]]\": y}}"),
            _ => format!("[k: {inner}]"),
        };
    }
    let sentinel = "SENTINEL-FLOW";
    let mut v = Value::String(sentinel.into());
    for (i, l) in block.iter().rev().enumerate() {
        let d = Value::String(decoys[i % decoys.len()].clone());
        v = match l {
            Level::BlockMap => {
                let mut m = Mapping::new();
                m.insert("decoy".into(), d);
                m.insert("k".into(), v);
                Value::Mapping(m)
            }
            _ => Value::Sequence(vec![d, v]),
        };
    }
    serde_yaml_ng::to_string(&v)
        .unwrap()
        .replacen(sentinel, &inner, 1)
}

#[test]
fn fuzz_yaml_prescan_against_the_parser() {
    // Oracle: serde_yaml_ng itself. For every document it parses, the
    // pre-scan accepts it under a cap exactly when the parsed value nests
    // no deeper than the cap; and when it refuses, the bytes up to the
    // position it names are refused too: it decided on that prefix, never
    // reading what follows.
    use imgbuild::util::prescan::{self, Limits};
    let level = prop_oneof![
        Just(Level::BlockMap),
        Just(Level::BlockSeq),
        Just(Level::FlowSeq),
        Just(Level::FlowMap),
        Just(Level::PairInFlow),
    ];
    let parsed = AtomicUsize::new(0);
    runner("yaml pre-scan", cases(300))
        .run(
            &(
                prop::collection::vec(level, 0..90),
                prop::collection::vec(decoy(), 1..4),
                20usize..80,
            ),
            |(levels, decoys, cap)| {
                let doc = nested_yaml(&levels, &decoys);
                let limits = Limits {
                    max_bytes: 1 << 20,
                    max_depth: cap,
                };
                let v = match serde_yaml_ng::from_str::<serde_yaml_ng::Value>(&doc) {
                    Ok(v) => v,
                    Err(e) => {
                        // Only deeper than serde_yaml_ng's own limit (128).
                        prop_assert!(e.to_string().contains("recursion limit"), "{e}:\n{doc}");
                        prop_assert!(prescan::yaml("doc", doc.as_bytes(), limits).is_err());
                        return Ok(());
                    }
                };
                parsed.fetch_add(1, Ordering::Relaxed);
                let depth = value_depth(&v);
                match prescan::yaml("doc", doc.as_bytes(), limits) {
                    Ok(()) => prop_assert!(depth <= cap, "accepted {depth} > {cap}:\n{doc}"),
                    Err(prescan::PrescanError::TooDeep { line, column, .. }) => {
                        prop_assert!(depth > cap, "refused {depth} <= {cap}:\n{doc}");
                        // The position named, and what the scanner may need
                        // after it to tell a key (its `:` comes on the same
                        // line, within libyaml's 1024-character window).
                        let lines: Vec<&str> = doc.split_inclusive('\n').collect();
                        let start: usize = lines[..line as usize - 1].iter().map(|l| l.len()).sum();
                        let line_end = start + lines[line as usize - 1].len();
                        let end = line_end.min(start + column as usize + 1024);
                        prop_assert!(
                            prescan::yaml("prefix", &doc.as_bytes()[..end], limits).is_err(),
                            "the text to line {line} column {column} passes:\n{doc}"
                        );
                    }
                    Err(e) => prop_assert!(false, "{e}"),
                }
                Ok(())
            },
        )
        .unwrap();
    println!(
        "fuzz yaml pre-scan: {} documents parsed and compared",
        parsed.load(Ordering::Relaxed)
    );
}
