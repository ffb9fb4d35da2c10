//! Writes a 70 MB file and 300 small files into the root of an ext4 fixture
//! (Ubuntu 24.04 mke2fs defaults, /etc htree-indexed), three ways in the same
//! run: imgbuild's writer, plain `debugfs -w` doing the same writes, and `cp`
//! into a directory on the host. Prints medians and ratios.
//!
//!   cargo bench --bench ext4_write [-- ROUNDS]

mod common;

use common::{median, sh};
use std::fs::OpenOptions;
use std::path::Path;
use std::time::Instant;

use imgbuild::fs::ext4::{self, Contents, Op, Owner};
use imgbuild::image::Partition;

fn main() {
    let rounds: usize = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(5);
    let dir = tempfile::Builder::new()
        .prefix("imgbuild-ext4-bench")
        .tempdir_in("/var/tmp")
        .unwrap();
    let d = dir.path();
    let q = |p: &Path| format!("'{}'", p.display());
    sh(&format!(
        "mkdir -p {d}/tree/etc {d}/small; for i in $(seq 1500); do echo $i > {d}/tree/etc/f$i.conf; done; \
         truncate -s 512M {d}/fixture.img; mkfs.ext4 -q -F -d {d}/tree {d}/fixture.img; e2fsck -fyD {d}/fixture.img >/dev/null 2>&1 || true; \
         head -c 70000000 /dev/urandom > {d}/big.bin; for i in $(seq 300); do echo small $i > {d}/small/s$i.conf; done",
        d = d.display()
    ));
    let big = d.join("big.bin");
    let mut ops = vec![Op::Write {
        path: "/var/lib/rancher/k3s/agent/images/airgap.tar".into(),
        contents: Contents::File(big.clone()),
        owner: Owner {
            mode: 0o644,
            uid: 0,
            gid: 0,
        },
    }];
    let mut cmds = String::from(
        "mkdir /var\nmkdir /var/lib\nmkdir /var/lib/rancher\nmkdir /var/lib/rancher/k3s\nmkdir /var/lib/rancher/k3s/agent\nmkdir /var/lib/rancher/k3s/agent/images\n",
    );
    cmds.push_str(&format!(
        "write {} /var/lib/rancher/k3s/agent/images/airgap.tar\n",
        big.display()
    ));
    for i in 1..=300 {
        let src = d.join(format!("small/s{i}.conf"));
        ops.push(Op::Write {
            path: format!("/etc/s{i}.conf"),
            contents: Contents::Bytes(std::fs::read(&src).unwrap()),
            owner: Owner {
                mode: 0o644,
                uid: 0,
                gid: 0,
            },
        });
        cmds.push_str(&format!("write {} /etc/s{i}.conf\n", src.display()));
    }
    std::fs::write(d.join("cmds"), cmds).unwrap();

    let (mut ours, mut debugfs, mut cp) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..rounds {
        let img = d.join("work.img");
        sh(&format!(
            "cp --sparse=always {} {}; sync",
            q(&d.join("fixture.img")),
            q(&img)
        ));
        let t = Instant::now();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&img)
            .unwrap();
        let part = Partition::whole(file.metadata().unwrap().len());
        ext4::apply(&img, &file, &part, &ops, 1_714_003_200).unwrap();
        file.sync_all().unwrap();
        ours.push(t.elapsed().as_secs_f64());

        sh(&format!(
            "cp --sparse=always {} {}; sync",
            q(&d.join("fixture.img")),
            q(&img)
        ));
        let t = Instant::now();
        sh(&format!(
            "debugfs -w -f {} {} >/dev/null 2>&1; sync {}",
            q(&d.join("cmds")),
            q(&img),
            q(&img)
        ));
        debugfs.push(t.elapsed().as_secs_f64());

        sh(&format!(
            "rm -rf {0}/plain; mkdir {0}/plain; sync",
            d.display()
        ));
        let t = Instant::now();
        sh(&format!(
            "cp {} {}/plain/airgap.tar; cp -r {}/small {}/plain/etc; sync -f {}/plain/airgap.tar",
            q(&big),
            d.display(),
            d.display(),
            d.display(),
            d.display()
        ));
        cp.push(t.elapsed().as_secs_f64());
    }
    let (o, g, c) = (
        median(ours.clone()),
        median(debugfs.clone()),
        median(cp.clone()),
    );
    println!("70 MB file + 300 small files, {rounds} rounds, medians (each includes an fsync):");
    println!("  imgbuild ext4 writer: {o:.3} s  {ours:.3?}");
    println!("  debugfs -w, same writes: {g:.3} s  {debugfs:.3?}");
    println!("  cp to a host directory: {c:.3} s  {cp:.3?}");
    println!(
        "  ratio imgbuild/debugfs: {:.2}   ratio imgbuild/cp: {:.2}",
        o / g,
        o / c
    );
}
