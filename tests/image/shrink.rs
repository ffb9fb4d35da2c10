//! Shrunk outputs: bakes of RK1, CM4 and NUC fixtures with much free space in
//! the root, checked with e2fsck, sgdisk/sfdisk, debugfs and ext4-view against
//! an unshrunk (`--no-shrink`) bake of the same inputs; and the inputs that
//! must not be shrunk.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::support::project::{Project, repo_overrides};
use crate::support::{bytes::*, fixtures::*, harness::*};
use imgbuild::image::{Partition, PartitionTable, Region};

/// Fixtures whose roots are mostly free (sparse files: little disk used).
struct Big {
    rk1: Layout,
    cm4: Layout,
    nuc: Layout,
}

fn big() -> &'static Big {
    static B: OnceLock<Big> = OnceLock::new();
    B.get_or_init(|| {
        let dir = shared_scratch().join("big");
        std::fs::create_dir_all(&dir).unwrap();
        Big {
            rk1: build_rk1(&dir, 2048),
            cm4: build_cm4(&dir, 2048),
            nuc: build_nuc(&dir, 2048),
        }
    })
}

/// Bakes `target` from `base` with `extra` flags: the image and its report.
fn bake(proj: &Project, target: &str, base: &Path, extra: &[&str]) -> (PathBuf, serde_json::Value) {
    let report = proj.bake_from(target, base).args(extra).json()[0].clone();
    (proj.join(target), report)
}

fn table(img: &Path) -> PartitionTable {
    PartitionTable::read(img, None).unwrap()
}

fn part(img: &Path, index: u32) -> Partition {
    table(img)
        .partitions
        .into_iter()
        .find(|p| p.index == index)
        .unwrap()
}

/// `e2fsck -fn` on the partition in place (the `?offset=` form).
fn e2fsck_clean(img: &Path, p: &Partition) {
    let (code, out) = sh_status(&format!(
        "e2fsck -fn '{}?offset={}'",
        img.display(),
        p.start
    ));
    assert_eq!(code, 0, "e2fsck -fn on {}:\n{out}", img.display());
}

/// Every inode under / as ext4-view reads it: kind, mode, owner, size, and
/// the bytes of regular files and symlink targets.
fn ext4_tree(img: &Path, p: &Partition) -> BTreeMap<String, (u16, u32, u32, u64, Vec<u8>)> {
    let file = File::open(img).unwrap();
    let fs = imgbuild::fs::ext4::open_reader(Region::new(&file, p)).unwrap();
    let mut out = BTreeMap::new();
    let mut dirs = vec![ext4_view::PathBuf::new("/")];
    while let Some(dir) = dirs.pop() {
        for e in fs.read_dir(&dir).unwrap() {
            let e = e.unwrap();
            let name = e.file_name();
            if name.as_str() == Ok(".") || name.as_str() == Ok("..") {
                continue;
            }
            let path = e.path();
            let m = fs.symlink_metadata(&path).unwrap();
            let body = if m.is_symlink() {
                fs.read_link(&path).unwrap().as_ref().to_vec()
            } else if m.file_type().is_regular_file() {
                fs.read(&path).unwrap()
            } else {
                Vec::new()
            };
            if m.is_dir() {
                dirs.push(path.clone());
            }
            out.insert(
                path.display().to_string(),
                (m.mode(), m.uid(), m.gid(), m.len(), body),
            );
        }
    }
    out
}

/// debugfs' own dump of the whole tree (`rdump / DIR`), then each file's bytes.
fn debugfs_tree(img: &Path, p: &Partition, work: &Path, name: &str) -> BTreeMap<String, Vec<u8>> {
    let dir = work.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    sh(&format!(
        "debugfs -R 'rdump / {d}' '{i}?offset={o}' >/dev/null 2>&1",
        d = dir.display(),
        i = img.display(),
        o = p.start
    ));
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let t = e.file_type().unwrap();
            let rel = e.path().strip_prefix(&dir).unwrap().display().to_string();
            if t.is_dir() {
                stack.push(e.path());
                out.insert(rel, b"<dir>".to_vec());
            } else if t.is_symlink() {
                out.insert(
                    rel,
                    std::fs::read_link(e.path())
                        .unwrap()
                        .to_string_lossy()
                        .into_owned()
                        .into_bytes(),
                );
            } else {
                out.insert(rel, std::fs::read(e.path()).unwrap());
            }
        }
    }
    sh(&format!("chmod -R u+rwx {0}; rm -rf {0}", q(&dir)));
    out
}

/// Bakes `target` shrunk and unshrunk and checks what the issue asks of a
/// shrunk output. Returns (shrunk, stock) reports.
fn shrunk_vs_stock(
    base: &Layout,
    target: &str,
    seed: u32,
    root: u32,
) -> (serde_json::Value, serde_json::Value) {
    let proj = Project::example();
    let work = proj.path();
    let (small, rs) = bake(&proj, target, &base.path, &[]);
    let (stock, rn) = bake(
        &proj,
        &format!("stock/{target}"),
        &base.path,
        &["--no-shrink"],
    );

    let (small_len, stock_len) = (
        std::fs::metadata(&small).unwrap().len(),
        std::fs::metadata(&stock).unwrap().len(),
    );
    assert_eq!(stock_len, std::fs::metadata(&base.path).unwrap().len());
    assert!(
        small_len < stock_len / 2,
        "{target}: shrunk to {small_len} of {stock_len} bytes only"
    );
    assert_eq!(rs["flash_bytes"].as_u64(), Some(small_len), "{rs}");
    assert_eq!(rn["flash_bytes"].as_u64(), Some(stock_len), "{rn}");
    assert_eq!(rs["shrink"]["shrunk"].as_bool(), Some(true), "{rs}");
    if collapses(work) {
        assert_eq!(rs["shrink"]["method"].as_str(), Some("in-place"), "{rs}");
    }
    assert!(rn["shrink"].is_null(), "{rn}");
    assert_eq!(
        rs["shrink"]["stock_bytes"].as_u64(),
        Some(stock_len),
        "{rs}"
    );
    // inspect: the bytes a flash sends, and the root that grows on first boot.
    let i = proj
        .imgbuild(["inspect", "--json", small.to_str().unwrap()])
        .json();
    assert_eq!(i["flash_bytes"].as_u64(), Some(small_len), "{i}");
    assert_eq!(
        i["root"]["partition"].as_u64(),
        Some(u64::from(root)),
        "{i}"
    );
    assert_eq!(i["root"]["fs_bytes"], rs["shrink"]["root_bytes"], "{i}");
    assert_eq!(
        i["root"]["partition_bytes"], rs["shrink"]["root_bytes"],
        "{i}"
    );
    let t = proj
        .imgbuild(["inspect", small.to_str().unwrap()])
        .run()
        .stdout;
    assert!(
        t.contains(&format!("a flash sends {small_len} bytes"))
            && t.contains("grows both to the end of the device"),
        "{t}"
    );

    // The tables: the tools' own verifiers, and the root ending where the file does.
    let t = table(&small);
    let r = part(&small, root);
    match t.kind {
        imgbuild::image::TableKind::Gpt => {
            let (code, out) = sh_status(&format!("sgdisk -v {}", q(&small)));
            assert_eq!(code, 0, "{out}");
            assert!(out.contains("No problems found"), "sgdisk -v:\n{out}");
            // Root, 32 sectors of backup entries, the backup header: nothing else.
            assert_eq!(r.end() + 33 * 512, small_len);
            let (_, pr) = sh_status(&format!("sgdisk -p {}", q(&small)));
            assert!(
                pr.contains(&format!("last usable sector is {}", r.end() / 512 - 1)),
                "{pr}"
            );
        }
        imgbuild::image::TableKind::Mbr => {
            let (code, out) = sh_status(&format!("sfdisk --verify {}", q(&small)));
            assert_eq!(code, 0, "sfdisk --verify:\n{out}");
            assert!(
                !out.to_lowercase().contains("warn"),
                "sfdisk --verify:\n{out}"
            );
            assert_eq!(r.end(), small_len);
        }
    }
    let rstock = part(&stock, root);
    assert_eq!(r.start, rstock.start);
    assert_eq!(rs["shrink"]["root_bytes"].as_u64(), Some(r.len));
    let used = rs["shrink"]["root_used_bytes"].as_u64().unwrap();
    let headroom = rs["shrink"]["headroom_bytes"].as_u64().unwrap();
    assert_eq!(headroom, (used / 4).max(512 << 20), "default headroom");
    // The target of the issue: no more than used + headroom + what precedes
    // the root (plus rounding to a MiB and resize2fs' own minimum for metadata).
    assert!(
        small_len <= r.start + used + headroom + (8 << 20) + 33 * 512,
        "{small_len} > {} + {used} + {headroom}",
        r.start
    );

    // The file systems: clean, and every file the same as in the stock-size bake.
    e2fsck_clean(&small, &r);
    e2fsck_clean(&stock, &rstock);
    let (a, b) = (ext4_tree(&small, &r), ext4_tree(&stock, &rstock));
    assert!(a.len() > 100, "only {} inodes read", a.len());
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (k, v) in &a {
        assert!(
            b[k] == *v,
            "{k} differs between the shrunk and stock-size bakes"
        );
    }
    let (da, db) = (
        debugfs_tree(&small, &r, work, "dump-small"),
        debugfs_tree(&stock, &rstock, work, "dump-stock"),
    );
    assert!(da.len() > 100);
    assert!(
        da == db,
        "debugfs rdump differs between the shrunk and stock-size bakes"
    );
    let fs_blocks = sh(&format!(
        "dumpe2fs -h '{}?offset={}' 2>/dev/null | sed -n 's/^Block count: *//p;s/^Block size: *//p'",
        small.display(),
        r.start
    ));
    let v: Vec<u64> = String::from_utf8_lossy(&fs_blocks.stdout)
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect();
    assert_eq!(v[0] * v[1], r.len, "the file system fills its partition");

    // The seed partition and the raw areas before p1 are untouched by shrinking.
    let s = part(&small, seed);
    assert_eq!(s, part(&stock, seed));
    assert_eq!(
        hash_range(&small, s.start, s.len),
        hash_range(&stock, s.start, s.len)
    );
    let first = t.partitions.iter().map(|p| p.start).min().unwrap();
    // Boot code before the MBR's entries, then everything after the table
    // sectors (LBA 0, plus the GPT header and 32 sectors of entries) up to p1.
    assert_eq!(hash_range(&small, 0, 440), hash_range(&stock, 0, 440));
    let table_end = match t.kind {
        imgbuild::image::TableKind::Gpt => 34 * 512,
        imgbuild::image::TableKind::Mbr => 512,
    };
    assert_eq!(
        hash_range(&small, table_end, first - table_end),
        hash_range(&stock, table_end, first - table_end),
        "raw area before p1 differs"
    );
    // Partitions before the root (NUC: BIOS boot, ESP, /boot) are identical too.
    for p in t.partitions.iter().filter(|p| p.index != root) {
        assert_eq!(
            hash_range(&small, p.start, p.len),
            hash_range(&stock, p.start, p.len),
            "partition {} differs",
            p.index
        );
    }
    (rs, rn)
}

/// Whether the file system holding `dir` can collapse and insert ranges
/// (ext4, XFS), as `stat -f` names it.
fn collapses(dir: &Path) -> bool {
    let out = sh(&format!("stat -f -c %T {}", q(dir)));
    let kind = String::from_utf8_lossy(&out.stdout).trim().to_string();
    kind == "ext2/ext3" || kind == "xfs"
}

/// Both ways of bringing the root to offset 0 for resize2fs, collapsing the
/// image in place and copying the root out and back, give the same bytes;
/// e2fsck and the table verifiers find them clean, everything before the
/// root but the table is the base's, and the copy leaves no file behind.
fn methods_agree(base: &Layout, board: &str, root: u32) {
    use imgbuild::bake::shrink::{Method, Options, shrink};
    let work = scratch();
    let manifests =
        imgbuild::config::manifest::load_all(&repo().join("firmware-manifests")).unwrap();
    let m = &manifests[board];
    let stock = File::open(&base.path).unwrap();
    let mut images = Vec::new();
    for in_place in [true, false] {
        let img = work.path().join(format!("in-place-{in_place}.img"));
        sh(&format!("cp --sparse=always {} {}", q(&base.path), q(&img)));
        let t = PartitionTable::read(&img, Some(m.partition_table)).unwrap();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&img)
            .unwrap();
        let options = Options {
            headroom_mib: None,
            build_time: 1_714_003_200,
            in_place,
        };
        let r = shrink(m, &t, &img, &f, &stock, &options).unwrap();
        assert!(r.shrunk, "{r:?}");
        let want = if !in_place {
            Some(Method::Copy)
        } else if collapses(work.path()) {
            Some(Method::InPlace)
        } else {
            r.method
        };
        assert_eq!(r.method, want, "{r:?}");
        let p = part(&img, root);
        e2fsck_clean(&img, &p);
        let verify = match t.kind {
            imgbuild::image::TableKind::Gpt => format!("sgdisk -v {}", q(&img)),
            imgbuild::image::TableKind::Mbr => format!("sfdisk --verify {}", q(&img)),
        };
        let (code, out) = sh_status(&verify);
        assert_eq!(code, 0, "{verify}:\n{out}");
        let table_end = match t.kind {
            imgbuild::image::TableKind::Gpt => 34 * 512,
            imgbuild::image::TableKind::Mbr => 512,
        };
        assert_eq!(
            hash_range(&img, table_end, p.start - table_end),
            hash_range(&base.path, table_end, p.start - table_end),
            "{board}: bytes before the root differ from the base (in place: {in_place})"
        );
        images.push(img);
    }
    let len = std::fs::metadata(&images[0]).unwrap().len();
    assert_eq!(len, std::fs::metadata(&images[1]).unwrap().len());
    assert_eq!(
        hash_range(&images[0], 0, len),
        hash_range(&images[1], 0, len),
        "{board}: shrinking in place and by copy give different images"
    );
    let mut names: Vec<String> = std::fs::read_dir(work.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["in-place-false.img", "in-place-true.img"]);
}

#[test]
fn rk1_shrinks_the_same_in_place_and_by_copy() {
    methods_agree(&big().rk1, "rk1", 2);
}

#[test]
fn cm4_shrinks_the_same_in_place_and_by_copy() {
    methods_agree(&big().cm4, "cm4", 2);
}

#[test]
fn nuc_shrinks_the_same_in_place_and_by_copy() {
    methods_agree(&big().nuc, "nuc", 1);
}

#[test]
fn rk1_shrunk_output_is_clean_and_equal_to_stock_size() {
    shrunk_vs_stock(&big().rk1, "node02.rk1.img", 1, 2);
}

#[test]
fn cm4_shrunk_output_is_clean_and_equal_to_stock_size() {
    shrunk_vs_stock(&big().cm4, "node01.cm4.img", 1, 2);
}

#[test]
fn nuc_shrunk_output_is_clean_and_equal_to_stock_size() {
    shrunk_vs_stock(&big().nuc, "nuc2.nuc.img", 15, 1);
}

/// A copy of the shipped profiles with `node02_extra` appended to node02's file.
fn profiles_with(node02_extra: &str) -> Project {
    let proj = Project::example();
    proj.append("profiles/nodes/node02.yaml", node02_extra);
    proj
}

fn assert_no_output(dir: &Path) {
    for e in std::fs::read_dir(dir).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(
            !name.ends_with(".img") && !name.ends_with(".partial"),
            "left {name} behind"
        );
    }
}

#[test]
fn node_headroom_setting_sizes_the_root() {
    let proj = profiles_with("shrink:\n  headroom_mib: 64\n");
    let rep = proj
        .bake_from("node02.rk1.img", &big().rk1.path)
        .args(repo_overrides())
        .json();
    let s = &rep[0]["shrink"];
    assert_eq!(s["headroom_bytes"].as_u64(), Some(64 << 20), "{s}");
    let img = proj.join("node02.rk1.img");
    let root = part(&img, 2);
    let used = s["root_used_bytes"].as_u64().unwrap();
    // used (or resize2fs' minimum, which adds some metadata) + 64 MiB, in MiB.
    assert_eq!(root.len % (1 << 20), 0);
    assert!(
        root.len >= used + (64 << 20) && root.len <= used + (80 << 20),
        "root of {} bytes for {used} used",
        root.len
    );
    e2fsck_clean(&img, &root);
    // The free space the first boot gets is at least the headroom.
    let out = sh(&format!(
        "dumpe2fs -h '{}?offset={}' 2>/dev/null | sed -n 's/^Free blocks: *//p;s/^Block size: *//p'",
        img.display(),
        root.start
    ));
    let v: Vec<u64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect();
    assert!(v[0] * v[1] >= 60 << 20, "only {} bytes free", v[0] * v[1]);
}

#[test]
fn zero_headroom_is_refused_by_check() {
    let proj = profiles_with("shrink:\n  headroom_mib: 0\n");
    let r = proj.imgbuild(repo_overrides()).arg("check").expect_exit(3);
    assert!(r.text.contains("shrink.headroom_mib"), "{}", r.text);
}

#[test]
fn root_not_last_is_refused_and_no_shrink_still_builds() {
    let proj = Project::example();
    // An RK1 layout with a partition 3 behind the root.
    let dir = proj.mkdir("fx");
    let fx = build_rk1_with(&dir, "rk1-p3.img", 1024, 183, "24.04");
    sh(&format!(
        "truncate -s +64M {i}; sgdisk -e {i} >/dev/null; sgdisk -n 3:0:0 -t 3:8300 {i} >/dev/null",
        i = q(&fx.path)
    ));
    let out = proj.mkdir("out");
    let r = proj.bake_from("out/node02.rk1.img", &fx.path).run();
    assert!(r.code != 0, "a root that is not last was shrunk");
    let msg = r.text;
    assert!(
        msg.contains("partition 3 ends after it starts")
            && msg.contains("root_is_last")
            && msg.contains("--no-shrink"),
        "{msg}"
    );
    assert_no_output(&out);
    let (img, rep) = bake(&proj, "out/node02.rk1.img", &fx.path, &["--no-shrink"]);
    assert_eq!(
        std::fs::metadata(&img).unwrap().len(),
        std::fs::metadata(&fx.path).unwrap().len()
    );
    assert!(rep["shrink"].is_null());
}

#[test]
fn manifest_without_root_is_last_keeps_the_stock_size_with_a_warning() {
    let proj = Project::example();
    let manifests = proj.join("manifests");
    sh(&format!(
        "cp -r {} {m}; sed -i 's/^root_is_last: true$/root_is_last: false/' {m}/rk1.yaml; grep -q '^root_is_last: false' {m}/rk1.yaml",
        q(&repo().join("firmware-manifests")),
        m = q(&manifests)
    ));
    let r = proj
        .bake_from("node02.rk1.img", &big().rk1.path)
        .arg("--manifests")
        .arg(&manifests)
        .args(["--overlays", repo().join("overlays").to_str().unwrap()])
        .ok();
    let rep = r.json();
    assert_eq!(rep[0]["shrink"]["shrunk"].as_bool(), Some(false));
    let err = &r.stderr;
    assert!(
        err.contains("WARN") && err.contains("root_is_last: true"),
        "{err}"
    );
    assert_eq!(
        std::fs::metadata(proj.join("node02.rk1.img"))
            .unwrap()
            .len(),
        std::fs::metadata(&big().rk1.path).unwrap().len()
    );
}

#[test]
fn full_root_keeps_the_stock_size_unchanged_with_a_warning() {
    let proj = profiles_with("shrink:\n  headroom_mib: 8\n");
    let dir = proj.mkdir("fx");
    let fx = build_rk1_with(&dir, "rk1-full.img", 200, 183, "24.04");
    // Fill the root: a file as big as the free space leaves a few MiB.
    let (start, _) = fx.part(2);
    let spec = format!("{}?offset={start}", fx.path.display());
    let free = sh(&format!(
        "dumpe2fs -h '{spec}' 2>/dev/null | sed -n 's/^Free blocks: *//p;s/^Block size: *//p'"
    ));
    let v: Vec<u64> = String::from_utf8_lossy(&free.stdout)
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect();
    let filler = dir.join("filler");
    sh(&format!(
        "head -c {} /dev/urandom > {f}; debugfs -w -R 'write {f} /filler' '{spec}' >/dev/null 2>&1; e2fsck -fn '{spec}' >/dev/null",
        v[0] * v[1] - (6 << 20),
        f = q(&filler)
    ));
    std::fs::remove_file(&filler).unwrap();
    let r = proj
        .bake_from("node02.rk1.img", &fx.path)
        .args(repo_overrides())
        .ok();
    let err = &r.stderr;
    assert!(
        err.contains("keeping the stock size") && err.contains("nothing to cut"),
        "{err}"
    );
    let stock = proj.mkdir("stock");
    proj.bake_from("stock/node02.rk1.img", &fx.path)
        .args(repo_overrides())
        .arg("--no-shrink")
        .cwd(&stock)
        .ok();
    let (a, b) = (proj.join("node02.rk1.img"), stock.join("node02.rk1.img"));
    let len = std::fs::metadata(&a).unwrap().len();
    assert_eq!(len, std::fs::metadata(&b).unwrap().len());
    assert_eq!(
        hash_range(&a, 0, len),
        hash_range(&b, 0, len),
        "an unshrunk output differs from --no-shrink"
    );
}

#[test]
fn dirty_journal_is_refused_and_leaves_nothing() {
    let proj = Project::example();
    let dir = proj.mkdir("fx");
    let fx = build_rk1_with(&dir, "rk1-dirty.img", 1024, 183, "24.04");
    let (start, _) = fx.part(2);
    sh(&format!(
        "debugfs -w -R 'feature needs_recovery' '{}?offset={start}' >/dev/null 2>&1",
        fx.path.display()
    ));
    let out = proj.mkdir("out");
    let r = proj.bake_from("out/node02.rk1.img", &fx.path).run();
    assert!(r.code != 0, "a root with a dirty journal was baked");
    // The base check refuses it before anything is copied (ext4-view will
    // not read a file system whose journal needs replaying).
    assert!(r.text.contains("journal"), "{}", r.text);
    assert_no_output(&out);
}

/// Every shipped node's user-data keeps the first boot's growth on, as
/// cloud-init itself reads it (strict schema), and cloud-init's own module
/// order grows the root before the first module that needs space (`mounts`,
/// which makes the swap file); k3s starts after network-online, i.e. after
/// cloud-init's init stage.
#[test]
fn first_boot_grows_the_root_before_anything_needs_the_space() {
    let proj = Project::example();
    let mut swap_file_seen = false;
    let mut units = 0;
    for node in ["node01", "node02", "node03", "node04", "nuc2", "ws03"] {
        let files = proj.rendered(node);
        let seed = |p: &str| {
            files
                .iter()
                .find(|f| f.target == "seed" && f.path == p)
                .unwrap_or_else(|| panic!("{node}: no seed {p}"))
                .contents
                .clone()
        };
        let parsed = cloud_init_seed(&seed("/meta-data"), &seed("/user-data"));
        let ud = &parsed["user_data"];
        assert_eq!(ud["growpart"]["mode"], "auto", "{node}: {ud}");
        assert_eq!(
            ud["growpart"]["devices"],
            serde_json::json!(["/"]),
            "{node}"
        );
        assert_eq!(ud["growpart"]["ignore_growroot_disabled"], false, "{node}");
        assert_eq!(ud["resize_rootfs"], true, "{node}");
        swap_file_seen |= ud.get("swap").is_some_and(|s| !s.is_null());
        for f in &files {
            if f.path.ends_with(".service") && f.target == "root" {
                let unit = String::from_utf8_lossy(&f.contents);
                if unit.contains("ExecStart") {
                    units += 1;
                    assert!(
                        unit.contains("After=network-online.target"),
                        "{node}: {}",
                        f.path
                    );
                }
            }
        }
    }
    assert!(units >= 6, "only {units} k3s units checked");
    assert!(
        swap_file_seen,
        "no shipped node has a swap file: the order check checks nothing"
    );
    // cloud-init's shipped module list (Debian's cloud.cfg; Ubuntu's has the same order).
    let cfg = std::fs::read_to_string("/etc/cloud/cloud.cfg").unwrap();
    let y: serde_yaml_ng::Value = serde_yaml_ng::from_str(&cfg).unwrap();
    let init: Vec<String> = y["cloud_init_modules"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap_or_default().replace('-', "_"))
        .collect();
    let at = |m: &str| {
        init.iter()
            .position(|x| x == m)
            .unwrap_or_else(|| panic!("{m} not in {init:?}"))
    };
    assert!(
        at("growpart") < at("resizefs") && at("resizefs") < at("mounts"),
        "{init:?}"
    );
}

/// Shrinking keeps builds reproducible: e2fsck and resize2fs stamp the build
/// time, not the clock, so two shrunk bakes a second apart are identical.
#[test]
fn shrunk_bakes_are_byte_identical() {
    let proj = Project::example();
    let (a, ra) = bake(&proj, "a/node02.rk1.img", &big().rk1.path, &[]);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let (b, _) = bake(&proj, "b/node02.rk1.img", &big().rk1.path, &[]);
    assert_eq!(ra["shrink"]["shrunk"].as_bool(), Some(true));
    let len = std::fs::metadata(&a).unwrap().len();
    assert_eq!(len, std::fs::metadata(&b).unwrap().len());
    assert_eq!(hash_range(&a, 0, len), hash_range(&b, 0, len));
}

/// What the first boot does on a device bigger than the image, with the
/// tools cloud-init runs: `growpart` (cloud-guest-utils) grows the root
/// partition to the device's end, moving a GPT's backup there, and
/// `resize2fs` grows the file system into it. The table verifies clean and
/// every file is still there.
fn grows_back(base: &Layout, target: &str, root: u32) {
    let proj = Project::example();
    let (img, _) = bake(&proj, target, &base.path, &[]);
    let before = ext4_tree(&img, &part(&img, root));
    // The device: 1 GiB bigger than the image.
    sh(&format!("truncate -s +1G {}", q(&img)));
    let (code, out) = sh_status(&format!("growpart {} {root}", q(&img)));
    assert_eq!(code, 0, "growpart: {out}");
    assert!(out.contains("CHANGED"), "{out}");
    let len = std::fs::metadata(&img).unwrap().len();
    let p = part(&img, root);
    match table(&img).kind {
        imgbuild::image::TableKind::Gpt => {
            let (code, out) = sh_status(&format!("sgdisk -v {}", q(&img)));
            assert!(code == 0 && out.contains("No problems found"), "{out}");
            // Backup entries and header at the device's end, the root right before.
            assert_eq!(p.end() + 33 * 512, len);
        }
        imgbuild::image::TableKind::Mbr => {
            let (code, out) = sh_status(&format!("sfdisk --verify {}", q(&img)));
            assert_eq!(code, 0, "{out}");
            assert!(
                len - p.end() < (1 << 20),
                "the root ends {} bytes before the end",
                len - p.end()
            );
        }
    }
    let spec = format!("{}?offset={}", img.display(), p.start);
    // On the node resize2fs sees the partition's block device; on a file with
    // `?offset=` it would take the file's size, so the size is given.
    sh(&format!(
        "resize2fs '{spec}' {}K >/dev/null 2>&1",
        p.len / 1024
    ));
    e2fsck_clean(&img, &p);
    let out = sh(&format!(
        "dumpe2fs -h '{spec}' 2>/dev/null | sed -n 's/^Block count: *//p;s/^Block size: *//p'"
    ));
    let v: Vec<u64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().parse().unwrap())
        .collect();
    assert!(
        p.len - v[0] * v[1] < v[1],
        "the file system did not grow into the partition"
    );
    assert!(ext4_tree(&img, &p) == before, "files changed while growing");
}

#[test]
fn rk1_shrunk_image_grows_back_with_growpart() {
    grows_back(&big().rk1, "node02.rk1.img", 2);
}

#[test]
fn cm4_shrunk_image_grows_back_with_growpart() {
    grows_back(&big().cm4, "node01.cm4.img", 2);
}

/// A shrunk unsealed image (a CI artifact) is sealed on its way to the node:
/// the secrets fit in the headroom, and the sealed image keeps the shrunk
/// size and a clean root.
#[test]
fn a_shrunk_unsealed_image_seals() {
    let proj = Project::example();
    let (img, rep) = bake(&proj, "node02.rk1.img", &big().rk1.path, &["--unsealed"]);
    assert_eq!(rep["shrink"]["shrunk"].as_bool(), Some(true), "{rep}");
    let sealed = proj.join("sealed.img");
    // Sealing never creates secrets: make them as an operator would.
    proj.imgbuild(["secrets", "--generate"]).ok();
    proj.imgbuild([
        "seal",
        img.to_str().unwrap(),
        "-o",
        sealed.to_str().unwrap(),
    ])
    .ok();
    assert_eq!(
        std::fs::metadata(&sealed).unwrap().len(),
        std::fs::metadata(&img).unwrap().len()
    );
    let p = part(&sealed, 2);
    e2fsck_clean(&sealed, &p);
    let (code, out) = sh_status(&format!("sgdisk -v {}", q(&sealed)));
    assert!(code == 0 && out.contains("No problems found"), "{out}");
    assert!(
        ext4_tree(&sealed, &p)
            .keys()
            .any(|k| k.contains("ssh_host_ed25519_key"))
    );
}
