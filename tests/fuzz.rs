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
