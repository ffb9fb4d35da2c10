//! The FAT32 writer against independent oracles: dosfstools' fsck.fat,
//! pyfatfs (reads the small RK1-style volume that mtools refuses) and mtools.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::path::Path;

use crate::support::harness::*;
use imgbuild::fs::fat::{FatError, FatVolume};
use imgbuild::image::{Partition, Region};
use proptest::prelude::*;

/// The RK1 CIDATA volume: 4 MiB, FAT32 by its BPB, ~8000 clusters.
fn small_volume(path: &Path) {
    sh(&format!(
        "rm -f {f}; truncate -s 4M {f}; mkfs.vfat -F32 -n CIDATA {f} >/dev/null 2>&1",
        f = q(path)
    ));
}

/// The CM4 system-boot geometry (512-byte clusters), scaled to 40 MiB.
fn large_volume(path: &Path) {
    sh(&format!(
        "rm -f {f}; truncate -s 40M {f}; mkfs.vfat -S 512 -s 1 -F 32 -n system-boot {f} >/dev/null",
        f = q(path)
    ));
}

fn whole(file: &File) -> Partition {
    Partition::whole(file.metadata().unwrap().len())
}

fn edit<T>(path: &Path, f: impl FnOnce(&mut FatVolume) -> T) -> T {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let part = whole(&file);
    let mut vol = FatVolume::open(Region::new(&file, &part)).unwrap();
    let r = f(&mut vol);
    vol.flush().unwrap();
    r
}

fn fsck_clean(path: &Path) {
    let (code, out) = sh_status(&format!("fsck.fat -n {}", q(path)));
    assert_eq!(code, 0, "fsck.fat -n:\n{out}");
    assert!(
        !out.contains("Auto-correcting") && !out.contains("will be"),
        "fsck.fat -n:\n{out}"
    );
}

fn dump(path: &Path) -> BTreeMap<String, Vec<u8>> {
    let out = sh(&format!(
        "{} {} dump {}",
        python(),
        q(&repo().join("tests/fixtures/fat.py")),
        q(path)
    ))
    .stdout;
    let m: BTreeMap<String, String> = serde_json::from_slice(&out).unwrap();
    m.into_iter()
        .map(|(k, v)| (k, hex::decode(v).unwrap()))
        .collect()
}

/// Free bytes as dosfstools counts them: `fsck.fat -n -v` reports used/total
/// clusters and the cluster size from its own walk of the FAT.
fn fsck_free_bytes(img: &Path) -> u64 {
    let (code, out) = sh_status(&format!("fsck.fat -n -v {}", q(img)));
    assert_eq!(code, 0, "{out}");
    let cluster: u64 = out
        .lines()
        .find_map(|l| l.trim().strip_suffix(" bytes per cluster"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let (used, total) = out
        .lines()
        .find_map(|l| l.trim().strip_suffix(" clusters"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|l| l.split_once('/'))
        .unwrap();
    let used: u64 = used.parse().unwrap();
    let total: u64 = total.parse().unwrap();
    (total - used) * cluster
}

#[test]
fn writes_to_the_rk1_cidata_volume_that_fatfs_and_mtools_refuse() {
    let dir = scratch();
    let img = dir.path().join("cidata");
    small_volume(&img);
    // mtools refuses this volume; this is the reason the writer exists.
    let (code, _) = sh_status(&format!("mdir -i {} ::", q(&img)));
    assert_ne!(
        code, 0,
        "mtools now accepts the RK1 CIDATA volume; REFERENCE §1 should be updated"
    );
    let label = edit(&img, |v| {
        v.write_file("/meta-data", b"instance-id: x\n").unwrap();
        v.write_file("/user-data", b"#cloud-config\n").unwrap();
        v.write_file("/network-config", b"version: 2\n").unwrap();
        v.label()
    });
    assert_eq!(label, "CIDATA");
    // dosfstools reads the same label from the boot sector / root entry.
    let out = sh(&format!("fatlabel {} 2>/dev/null", q(&img))).stdout;
    assert_eq!(String::from_utf8(out).unwrap().trim(), "CIDATA");
    fsck_clean(&img);
    let files = dump(&img);
    assert_eq!(files["/meta-data"], b"instance-id: x\n");
    assert_eq!(files["/user-data"], b"#cloud-config\n");
    assert_eq!(files["/network-config"], b"version: 2\n");
}

#[test]
fn replacing_a_file_frees_its_clusters() {
    let dir = scratch();
    let img = dir.path().join("v");
    small_volume(&img);
    let free0 = edit(&img, |v| v.free_bytes());
    assert_eq!(free0, fsck_free_bytes(&img), "free space before");
    edit(&img, |v| v.write_file("/big", &vec![1u8; 100_000]).unwrap());
    let free1 = edit(&img, |v| v.free_bytes());
    assert_eq!(free0 - free1, 100_352); // 196 clusters of 512 bytes
    // dosfstools counts the same free clusters (it walks the FAT itself).
    assert_eq!(free1, fsck_free_bytes(&img), "free space after a write");
    edit(&img, |v| v.write_file("/BIG", b"small").unwrap());
    let free2 = edit(&img, |v| v.free_bytes());
    assert_eq!(free0 - free2, 512);
    assert_eq!(
        free2,
        fsck_free_bytes(&img),
        "free space after a replacement"
    );
    fsck_clean(&img);
    // Case-insensitive replacement kept the original long name's entry out.
    let files = dump(&img);
    assert_eq!(files.len(), 1, "{:?}", files.keys());
    assert_eq!(files.values().next().unwrap(), b"small");
    assert!(edit(&img, |v| v.remove_file("/big").unwrap()));
    assert_eq!(edit(&img, |v| v.free_bytes()), free0);
    fsck_clean(&img);
}

#[test]
fn a_full_volume_reports_sizes() {
    let dir = scratch();
    let img = dir.path().join("v");
    small_volume(&img);
    let err = edit(&img, |v| {
        v.write_file("/huge", &vec![0u8; 5 << 20]).unwrap_err()
    });
    match err {
        FatError::NoSpace { needed, free } => {
            assert_eq!(needed, 5 << 20);
            assert!(free > 4_000_000 && free < 4_200_000, "{free}");
        }
        e => panic!("unexpected {e}"),
    }
}

#[test]
fn directories_grow_and_nest() {
    let dir = scratch();
    let img = dir.path().join("v");
    large_volume(&img);
    let mut model = BTreeMap::new();
    edit(&img, |v| {
        // 300 long names need far more than one 512-byte directory cluster.
        for i in 0..300 {
            let name = format!("/many/a long file name number {i}.conf");
            let body = format!("entry {i}\n").into_bytes();
            v.write_file(&name, &body).unwrap();
            model.insert(name, body);
        }
        v.write_file("/deep/er/still/deeper/Café naïve.txt", b"utf-16 names")
            .unwrap();
        model.insert(
            "/deep/er/still/deeper/Café naïve.txt".into(),
            b"utf-16 names".to_vec(),
        );
        v.mkdir_all("/empty/dir").unwrap();
    });
    fsck_clean(&img);
    assert_eq!(dump(&img), model);
    // mtools, a second independent reader, agrees on a sample.
    let out = sh(&format!(
        "mtype -i {} '::/many/a long file name number 299.conf'",
        q(&img)
    ))
    .stdout;
    assert_eq!(out, b"entry 299\n");
    let listing =
        String::from_utf8(sh(&format!("mdir -i {} -b ::/empty", q(&img))).stdout).unwrap();
    assert!(listing.contains("dir"), "{listing}");
}

#[derive(Debug, Clone)]
enum FatOp {
    Write { name: String, size: usize, seed: u8 },
    Remove { pick: usize },
}

fn name_strategy() -> impl Strategy<Value = String> {
    let component = prop_oneof![
        "[A-Z0-9]{1,8}(\\.[A-Z]{1,3})?",
        "[a-z0-9]{1,8}\\.[a-z]{1,3}",
        "[a-zA-Z0-9 _.-]{1,30}[a-zA-Z0-9]",
        "[a-z]{1,6}-[a-z]{1,8}",
    ];
    (prop::collection::vec("[a-d]{1,2}", 0..3), component).prop_map(|(dirs, name)| {
        let mut p = String::new();
        for d in dirs {
            p.push('/');
            p.push_str(&d);
        }
        p.push('/');
        p.push_str(&name);
        p
    })
}

fn op_strategy() -> impl Strategy<Value = FatOp> {
    prop_oneof![
        4 => (name_strategy(), 0usize..20_000, any::<u8>()).prop_map(|(name, size, seed)| FatOp::Write { name, size, seed }),
        1 => any::<usize>().prop_map(|pick| FatOp::Remove { pick }),
    ]
}

fn apply_ops(img: &Path, ops: &[FatOp]) -> BTreeMap<String, Vec<u8>> {
    // FAT names compare case-insensitively: key the model by upper case.
    let mut model: BTreeMap<String, (String, Vec<u8>)> = BTreeMap::new();
    let mut dirs: BTreeMap<String, String> = BTreeMap::new();
    edit(img, |v| {
        for op in ops {
            match op {
                FatOp::Write { name, size, seed } => {
                    let key = name.to_uppercase();
                    // Skip names whose path collides with an existing file or directory.
                    let parent_is_file = key
                        .match_indices('/')
                        .skip(1)
                        .any(|(i, _)| model.contains_key(&key[..i]));
                    if parent_is_file || dirs.contains_key(&key) {
                        continue;
                    }
                    let body: Vec<u8> = (0..*size)
                        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(*seed))
                        .collect();
                    v.write_file(name, &body).unwrap();
                    // A replaced file's new entry carries the new spelling.
                    model.insert(key.clone(), (name.clone(), body));
                    for (i, _) in key.match_indices('/').skip(1) {
                        dirs.insert(key[..i].to_string(), name[..i].to_string());
                    }
                }
                FatOp::Remove { pick } => {
                    if model.is_empty() {
                        continue;
                    }
                    let key = model.keys().nth(pick % model.len()).unwrap().clone();
                    let (name, _) = model.remove(&key).unwrap();
                    assert!(v.remove_file(&name).unwrap());
                }
            }
        }
    });
    // Directories keep the spelling they were created with.
    model
        .into_values()
        .map(|(name, body)| {
            let mut fixed = String::new();
            for (i, comp) in name.split('/').enumerate().skip(1) {
                fixed.push('/');
                let prefix = format!("{fixed}{comp}").to_uppercase();
                match dirs.get(&prefix) {
                    Some(d) if i < name.split('/').count() - 1 => fixed = d.clone(),
                    _ => fixed.push_str(comp),
                }
            }
            (fixed, body)
        })
        .collect()
}

proptest! {
    // IMGBUILD_PROPTEST_CASES / IMGBUILD_PROPTEST_SEED for a longer local run.
    #![proptest_config(proptest_config(48))]

    #[test]
    fn random_edits_stay_fsck_clean_and_read_back(small in any::<bool>(), ops in prop::collection::vec(op_strategy(), 1..40)) {
        let dir = scratch();
        let img = dir.path().join("v");
        if small { small_volume(&img) } else { large_volume(&img) }
        let before = std::fs::read(&img).unwrap();
        let model = apply_ops(&img, &ops);
        fsck_clean(&img);
        // Names must read back exactly as written, case included.
        prop_assert_eq!(dump(&img), model);
        // The boot sector and its backup are never written.
        let after = std::fs::read(&img).unwrap();
        prop_assert_eq!(&before[..512], &after[..512]);
        prop_assert_eq!(&before[6 * 512..7 * 512], &after[6 * 512..7 * 512]);
    }
}
