//! End-to-end bakes of RK1, CM4 and NUC fixtures through the CLI, checked
//! with fsck.fat, e2fsck, pyfatfs, mtools, cloud-init schema and ext4-view.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::support::project::{Project, bases, fixture};
use crate::support::{bytes::*, fixtures::*, harness::*, mirror::*};

fn touched(report: &serde_json::Value) -> Vec<String> {
    let mut v: Vec<String> = report["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["partition"].as_str().unwrap().to_string())
        .collect();
    v.sort();
    v.dedup();
    v
}

fn assert_no_partials(dir: &Path) {
    for e in std::fs::read_dir(dir).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(!name.ends_with(".partial"), "left a partial file {name}");
    }
}

#[test]
fn rk1_bake_writes_seed_and_root_and_nothing_else() {
    let fx = fixtures();
    let p = Project::example();
    let work = p.path();
    let base_hash = hash_range(
        &fx.rk1.path,
        0,
        std::fs::metadata(&fx.rk1.path).unwrap().len(),
    );
    let (out, report) = p.baked("node02.rk1.img");

    assert_eq!(
        std::fs::metadata(&out).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        hash_range(
            &fx.rk1.path,
            0,
            std::fs::metadata(&fx.rk1.path).unwrap().len()
        ),
        base_hash,
        "base modified"
    );
    assert_no_partials(work);

    let fsck = fsck_fat(&fx.rk1, &out, 1, work);
    assert!(fsck.contains("files"), "{fsck}");
    let part = work.join("p1.fat");
    for name in ["/user-data", "/meta-data", "/network-config"] {
        assert_eq!(
            fat_cat(&part, name),
            p.rendered_file("node02", "seed", name),
            "{name} read back differs"
        );
    }
    let user = fat_cat(&part, "/user-data");
    cloud_init_schema(&user, work);
    let ud: serde_yaml_ng::Value = serde_yaml_ng::from_slice(&user).unwrap();
    assert_eq!(ud["hostname"].as_str(), Some("node02"));
    assert_eq!(ud["users"][0]["name"].as_str(), Some("admin"));
    let net: serde_yaml_ng::Value =
        serde_yaml_ng::from_slice(&fat_cat(&part, "/network-config")).unwrap();
    let lan = &net["ethernets"]["lan0"];
    assert_eq!(lan["addresses"][0].as_str(), Some("192.168.1.102/24"));
    assert_eq!(lan["routes"][0]["to"].as_str(), Some("default"));
    assert_eq!(lan["routes"][0]["via"].as_str(), Some("192.168.1.1"));
    assert!(lan.get("gateway4").is_none());
    let meta: serde_yaml_ng::Value =
        serde_yaml_ng::from_slice(&fat_cat(&part, "/meta-data")).unwrap();
    assert_eq!(meta["instance-id"].as_str(), report["instance_id"].as_str());
    assert_eq!(meta["local-hostname"].as_str(), Some("node02"));
    // What cloud-init and netplan themselves make of the seed.
    let seen = cloud_init_seed(&fat_cat(&part, "/meta-data"), &user);
    assert_eq!(seen["meta_data"]["local-hostname"], "node02");
    assert_eq!(seen["meta_data"]["instance-id"], report["instance_id"]);
    assert_eq!(seen["user_data"]["hostname"], "node02");
    assert_eq!(seen["user_data"]["users"][0]["name"], "admin");
    assert_eq!(
        seen["user_data"]["users"][0]["ssh_authorized_keys"][0],
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEqfAkq5sKqoPzq3y9gWRYeFMZ3xH5P7dWm8vLqGf1bA admin@laptop"
    );
    // RK1 examples match any wired name (e*): eth0 or en*, whichever udev gives.
    assert_networkd(
        &fat_cat(&part, "/network-config"),
        "Name=e*",
        "192.168.1.102/24",
        "192.168.1.1",
    );

    // Everything outside the partitions that received files is byte-identical,
    // U-Boot in the raw area included.
    let mut ranges = Vec::new();
    for role in touched(&report) {
        let idx = match role.as_str() {
            "cidata" => 1,
            "root" => 2,
            other => panic!("unexpected partition {other}"),
        };
        ranges.push(fx.rk1.part(idx));
    }
    assert_eq!(ranges, [fx.rk1.part(1), fx.rk1.part(2)]);
    assert_equal_outside(&fx.rk1.path, &out, &ranges);
    // Overlays reach the root file system, which stays e2fsck-clean.
    let root = fsck_ext4(&fx.rk1, &out, 2, work);
    let fs = ext4_view::Ext4::load_from_path(&root).unwrap();
    assert_eq!(fs.read("/etc/machine-id").unwrap(), b"");
    assert_eq!(
        fs.metadata("/etc/machine-id").unwrap().mode() & 0o777,
        0o444
    );
    assert_eq!(
        fs.read_to_string("/etc/os-release").unwrap().lines().nth(2),
        Some("VERSION_ID=\"24.04\"")
    );
    // The air-gap tarball (over 1 MiB: written straight into its blocks)
    // reads back as served, with the mode and owner a debugfs write gives.
    let images = "/var/lib/rancher/k3s/agent/images/k3s-airgap-images-arm64.tar.zst";
    assert!(fs.read(images).unwrap() == images_stand_in("arm64"));
    let m = fs.metadata(images).unwrap();
    assert_eq!((m.mode() & 0o7777, m.uid(), m.gid()), (0o644, 0, 0));

    let t = p.imgbuild(["inspect", out.to_str().unwrap()]).ok().text;
    assert!(t.contains("node node02 (rk1 board)"), "{t}");
    assert!(t.contains("profile digest"), "{t}");
    assert!(t.contains("GPT"), "{t}");
    let j = p
        .imgbuild(["inspect", "--json", fx.rk1.path.to_str().unwrap()])
        .json();
    assert!(j["provenance"].is_null());
    assert_eq!(j["seed"]["instance_id"].as_str(), Some("cloud-image"));
    let human = p
        .imgbuild(["inspect", fx.rk1.path.to_str().unwrap()])
        .run()
        .text;
    assert!(human.contains("stock image"), "{human}");
}

#[test]
fn cm4_bake_appends_cgroups_once_and_keeps_other_files() {
    let fx = fixtures();
    let p = Project::example();
    let work = p.path();
    let (out, report) = p.baked("node01.cm4.img");
    fsck_fat(&fx.cm4, &out, 1, work);
    let part = work.join("p1.fat");
    let mtype = |name: &str| sh(&format!("mtype -i {} ::{name}", q(&part))).stdout;
    let cmdline = String::from_utf8(mtype("cmdline.txt")).unwrap();
    assert_eq!(
        cmdline,
        format!(
            "{} cgroup_memory=1 cgroup_enable=memory\n",
            CM4_CMDLINE.trim_end()
        )
    );
    assert_eq!(String::from_utf8(mtype("config.txt")).unwrap(), CM4_CONFIG);
    for name in ["user-data", "meta-data", "network-config"] {
        assert_eq!(
            mtype(name),
            p.rendered_file("node01", "seed", &format!("/{name}")),
            "{name}"
        );
    }
    cloud_init_schema(&mtype("user-data"), work);
    let seen = cloud_init_seed(&mtype("meta-data"), &mtype("user-data"));
    assert_eq!(seen["meta_data"]["local-hostname"], "node01");
    assert_eq!(seen["user_data"]["hostname"], "node01");
    // CM4 examples match the GENET driver, whatever the interface is named.
    assert_networkd(
        &mtype("network-config"),
        "Driver=bcmgenet",
        "192.168.1.101/24",
        "192.168.1.1",
    );
    // Other files on system-boot are intact.
    let listing = String::from_utf8(sh(&format!("mdir -i {} -b ::/", q(&part))).stdout).unwrap();
    assert!(
        listing.contains("vmlinuz") && listing.contains("overlays"),
        "{listing}"
    );
    assert_eq!(touched(&report), ["boot", "root"]);
    fsck_ext4(&fx.cm4, &out, 2, work);
    assert_equal_outside(&fx.cm4.path, &out, &[fx.cm4.part(1), fx.cm4.part(2)]);

    // Baking again from the baked image does not append the arguments twice.
    let again_dir = p.mkdir("again");
    let (again, _) = p.baked_from("again/node01.cm4.img", &out);
    fsck_fat(&fx.cm4, &again, 1, &again_dir);
    let cmdline2 = sh(&format!(
        "mtype -i {} ::cmdline.txt",
        q(&again_dir.join("p1.fat"))
    ))
    .stdout;
    assert_eq!(String::from_utf8(cmdline2).unwrap(), cmdline);
}

#[test]
fn identical_inputs_give_identical_images() {
    let p = Project::example();
    let (x, rx) = p.baked("a/node03.rk1.img");
    let (y, ry) = p.baked("b/node03.rk1.img");
    let len = std::fs::metadata(&x).unwrap().len();
    assert_eq!(hash_range(&x, 0, len), hash_range(&y, 0, len));
    assert_eq!(rx["instance_id"], ry["instance_id"]);
    // A different node gets a different instance-id.
    let (_, r4) = p.baked("a/node04.rk1.img");
    assert_ne!(rx["instance_id"], r4["instance_id"]);
}

#[test]
fn all_builds_every_node_with_per_board_bases() {
    let p = Project::example();
    let work = p.path();
    p.imgbuild(["build", "--all"])
        .args(bases())
        .args(["--out-dir", "out", "--sums"])
        .ok();
    let mut names: Vec<String> = std::fs::read_dir(work.join("out"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "SHA256SUMS",
            "node01.cm4.img",
            "node01.cm4.img.intoto.json",
            "node02.rk1.img",
            "node02.rk1.img.intoto.json",
            "node03.rk1.img",
            "node03.rk1.img.intoto.json",
            "node04.rk1.img",
            "node04.rk1.img.intoto.json",
            "nuc2.nuc.img",
            "nuc2.nuc.img.intoto.json",
            "ws03.nuc.img",
            "ws03.nuc.img.intoto.json"
        ]
    );
    let sums = sh(&format!(
        "cd {} && sha256sum -c SHA256SUMS",
        q(&work.join("out"))
    ));
    assert_eq!(
        String::from_utf8(sums.stdout)
            .unwrap()
            .matches(": OK")
            .count(),
        6
    );
}

#[test]
fn raw_bakes_record_a_digest_only_with_sums_or_unsealed() {
    let p = Project::example();
    let dir = p.join("out");
    let sums = dir.join("SHA256SUMS");
    let node03 = dir.join("node03.rk1.img");
    let statement = dir.join("node03.rk1.img.intoto.json");
    let build = |extra: &[&str]| -> serde_json::Value {
        p.imgbuild(["--base", fixture("rk1").path.to_str().unwrap(), "--json"])
            .args(extra)
            .json()[0]
            .clone()
    };
    let subject = || -> String {
        let st: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&statement).unwrap()).unwrap();
        st["subject"][0]["digest"]["sha256"]
            .as_str()
            .unwrap()
            .to_string()
    };
    // --sums: the digest sha256sum computes, in the report, SHA256SUMS and the statement.
    let r = build(&["--sums", node03.to_str().unwrap()]);
    let want = sha256sum(&node03);
    assert_eq!(r["sha256"].as_str(), Some(want.as_str()));
    assert_eq!(subject(), want);
    let check = sh(&format!("cd {} && sha256sum -c SHA256SUMS", q(&dir)));
    assert_eq!(
        String::from_utf8(check.stdout).unwrap(),
        "node03.rk1.img: OK\n"
    );
    build(&["--sums", dir.join("node04.rk1.img").to_str().unwrap()]);

    // The everyday bake hashes nothing, and the older node03's line and
    // statement go: nothing describes the new image wrongly.
    let r = build(&[node03.to_str().unwrap()]);
    assert!(r["sha256"].is_null(), "{r}");
    assert!(!statement.exists(), "a stale statement survived");
    let list = std::fs::read_to_string(&sums).unwrap();
    assert!(!list.contains("node03"), "{list}");
    let check = sh(&format!("cd {} && sha256sum -c SHA256SUMS", q(&dir)));
    assert_eq!(
        String::from_utf8(check.stdout).unwrap(),
        "node04.rk1.img: OK\n",
        "another output's line must stay"
    );
    let v = p
        .imgbuild(["verify", node03.to_str().unwrap()])
        .expect_exit(1);
    assert!(
        v.text.contains("rebuild it with one of them") && v.text.contains("--sums"),
        "{}",
        v.text
    );

    // --unsealed (a CI artifact, checked by seal and verify): recorded too.
    let r = build(&["--unsealed", node03.to_str().unwrap()]);
    let want = sha256sum(&node03);
    assert_eq!(r["sha256"].as_str(), Some(want.as_str()));
    assert_eq!(subject(), want);
    let check = sh(&format!("cd {} && sha256sum -c SHA256SUMS", q(&dir)));
    assert_eq!(
        String::from_utf8(check.stdout)
            .unwrap()
            .matches(": OK")
            .count(),
        2
    );
    p.imgbuild(["verify", node03.to_str().unwrap()]).ok();
}

#[test]
fn nuc_seed_goes_into_the_root_file_system() {
    let fx = fixtures();
    let p = Project::example();
    let work = p.path();
    let (out, report) = p.baked("ws03.nuc.img");
    let roles = touched(&report);
    assert!(roles.iter().all(|r| r == "root"), "{roles:?}");
    let part = fsck_ext4(&fx.nuc, &out, 1, work);
    let dir = "/var/lib/cloud/seed/nocloud";
    let fs = ext4_view::Ext4::load_from_path(&part).unwrap();
    for name in ["user-data", "meta-data", "network-config"] {
        let via_view = fs.read(format!("{dir}/{name}").as_str()).unwrap();
        assert_eq!(
            via_view,
            p.rendered_file("ws03", "seed", &format!("/{name}")),
            "{name}"
        );
        let via_debugfs = sh(&format!(
            "debugfs -R 'cat {dir}/{name}' {} 2>/dev/null",
            q(&part)
        ))
        .stdout;
        assert_eq!(via_debugfs, via_view, "{name} via debugfs");
    }
    cloud_init_schema(&fs.read(format!("{dir}/user-data").as_str()).unwrap(), work);
    let read = |name: &str| fs.read(format!("{dir}/{name}").as_str()).unwrap();
    let seen = cloud_init_seed(&read("meta-data"), &read("user-data"));
    assert_eq!(seen["meta_data"]["local-hostname"], "ws03");
    assert_eq!(seen["user_data"]["hostname"], "ws03");
    // ws03 takes its address by DHCP on any wired interface (en* and eth*).
    let networkd = netplan_generate(&read("network-config"));
    let mut names: Vec<&str> = networkd
        .values()
        .flat_map(|u| u.lines().filter_map(|l| l.strip_prefix("Name=")))
        .collect();
    names.sort();
    assert_eq!(names, ["en*", "eth*"], "{networkd:?}");
    for unit in networkd.values() {
        assert!(
            unit.lines().any(|l| l == "DHCP=ipv4") && !unit.contains("Address="),
            "{unit}"
        );
    }
    // The ESP, BOOT and BIOS boot partitions are untouched.
    assert_equal_outside(&fx.nuc.path, &out, &[fx.nuc.part(1)]);
    let t = p.imgbuild(["inspect", out.to_str().unwrap()]).run().text;
    assert!(
        t.contains("node ws03 (nuc board)") && t.contains(dir),
        "{t}"
    );
}

/// Checks what netplan renders from a static node's network-config: one
/// systemd-networkd unit matching `name` with the address and default route.
/// `match_line` is the one `[Match]` line netplan must write (`Name=...` or
/// `Driver=...`).
fn assert_networkd(network_config: &[u8], match_line: &str, address: &str, gateway: &str) {
    let units = netplan_generate(network_config);
    assert_eq!(units.len(), 1, "{units:?}");
    let unit = units.values().next().unwrap();
    let match_section: Vec<&str> = unit
        .split("\n\n")
        .find(|s| s.starts_with("[Match]"))
        .unwrap_or_else(|| panic!("no [Match] in\n{unit}"))
        .lines()
        .skip(1)
        .filter(|l| !l.is_empty())
        .collect();
    assert_eq!(match_section, [match_line], "{unit}");
    for line in [
        format!("Address={address}"),
        "Destination=0.0.0.0/0".to_string(),
        format!("Gateway={gateway}"),
        "DNS=192.168.1.1".to_string(),
    ] {
        assert!(unit.lines().any(|l| l == line), "no {line:?} in\n{unit}");
    }
    assert!(!unit.contains("DHCP=ipv4"), "{unit}");
}
