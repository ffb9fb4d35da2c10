//! Data disks (`storage` node key): what `check` refuses, and the cloud-config
//! a node with disks gets, read by cloud-init itself (schema and NoCloud reader).
//! The boot test (tests/boot) boots a node with a blank and a used disk.

use crate::support::project::Project;
use crate::support::{fixtures::*, harness::*};

/// The shipped profiles with `node`'s file extended by `extra`.
fn profiles_with(node: &str, extra: &str) -> Project {
    let p = Project::example();
    p.append(&format!("profiles/nodes/{node}.yaml"), extra);
    p
}

fn check(p: &Project) -> (i32, String) {
    let r = p.imgbuild(["check"]).run();
    (r.code, r.text)
}

fn user_data(p: &Project, node: &str) -> Vec<u8> {
    p.imgbuild(["secrets", "--generate"]).ok();
    p.rendered_file(node, "seed", "/user-data")
}

#[test]
fn storage_renders_cloud_config_that_cloud_init_accepts() {
    let dir = profiles_with(
        "node02",
        "storage:\n  - device: /dev/disk/by-id/nvme-Samsung_SSD_980_1TB_S64DNX0R123456\n    mount: /var/lib/rancher\n  - device: /dev/sda\n    mount: /var/lib/longhorn\n    fs: xfs\n    label: lh\n    options: [noatime]\n",
    );
    let (code, out) = check(&dir);
    assert_eq!(code, 0, "{out}");
    let ud = user_data(&dir, "node02");
    cloud_init_schema(&ud, dir.path());

    // What cloud-init's NoCloud reader makes of it: each disk prepared by
    // imgbuild's own script in bootcmd (cloud-init's fs_setup `auto` formats
    // a partition it cannot identify, so it is not used), mounted by label
    // with nofail.
    let seen = cloud_init_seed(b"instance-id: iid-x\n", &ud);
    let u = &seen["user_data"];
    let nvme = "/dev/disk/by-id/nvme-Samsung_SSD_980_1TB_S64DNX0R123456";
    assert!(
        u.get("disk_setup").is_none() && u.get("fs_setup").is_none(),
        "{u}"
    );
    assert_eq!(
        u["bootcmd"],
        serde_json::json!([
            [
                "/usr/local/lib/imgbuild/storage-prepare",
                nvme,
                "ext4",
                "rancher"
            ],
            [
                "/usr/local/lib/imgbuild/storage-prepare",
                "/dev/sda",
                "xfs",
                "lh"
            ]
        ])
    );
    assert_eq!(
        u["mounts"],
        serde_json::json!([
            [
                "LABEL=rancher",
                "/var/lib/rancher",
                "ext4",
                "nofail,x-systemd.device-timeout=30s",
                "0",
                "2"
            ],
            [
                "LABEL=lh",
                "/var/lib/longhorn",
                "xfs",
                "noatime,nofail,x-systemd.device-timeout=30s",
                "0",
                "2"
            ]
        ])
    );

    // The fill step runs after cloud-init and before k3s, for both mounts;
    // k3s requires it, and it requires the disk that holds k3s's data.
    let files = dir.rendered("node02");
    let unit = files
        .iter()
        .find(|f| f.path == "/etc/systemd/system/imgbuild-storage-fill.service")
        .expect("fill unit");
    let unit = String::from_utf8(unit.contents.clone()).unwrap();
    assert!(unit.contains("After=cloud-init.service"), "{unit}");
    assert!(
        unit.contains("Before=k3s.service k3s-agent.service"),
        "{unit}"
    );
    assert!(
        unit.contains("ExecStart=/usr/local/lib/imgbuild/storage-fill \"/var/lib/rancher\" \"/var/lib/longhorn\""),
        "{unit}"
    );
    let script = files
        .iter()
        .find(|f| f.path == "/usr/local/lib/imgbuild/storage-fill")
        .unwrap();
    assert_eq!(script.mode, 0o755);
    let s = dir.path().join("storage-fill");
    std::fs::write(&s, &script.contents).unwrap();
    let (code, out) = sh_status(&format!("sh -n {}", q(&s)));
    assert_eq!(code, 0, "{out}");
    // Nodes without disks get none of it.
    let plain = dir.rendered("node03");
    assert!(plain.iter().all(|f| !f.path.contains("storage")));
    let ud3 = String::from_utf8(
        plain
            .iter()
            .find(|f| f.path == "/user-data")
            .unwrap()
            .contents
            .clone(),
    )
    .unwrap();
    assert!(
        !ud3.contains("disk_setup") && !ud3.contains("mounts:"),
        "{ud3}"
    );
}

#[test]
fn storage_entries_that_would_lose_data_or_never_work_are_refused() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "  - mount: /data\n",
            "storage[0].device",
            "missing; give the whole disk",
        ),
        (
            "  - device: /dev/nvme0n1p1\n    mount: /data\n",
            "storage[0].device",
            "is a partition; give the whole disk",
        ),
        (
            "  - device: /dev/disk/by-id/nvme-X-part2\n    mount: /data\n",
            "storage[0].device",
            "is a partition",
        ),
        (
            "  - device: /dev/mmcblk0\n    mount: /data\n",
            "storage[0].device",
            "holds the root",
        ),
        (
            "  - device: sda\n    mount: /data\n",
            "storage[0].device",
            "is not a device path",
        ),
        (
            "  - device: /dev/sda\n    mount: /var\n",
            "storage[0].mount",
            "belongs to the system",
        ),
        (
            "  - device: /dev/sda\n    mount: /etc/data\n",
            "storage[0].mount",
            "belongs to the system",
        ),
        (
            "  - device: /dev/sda\n    mount: data\n",
            "storage[0].mount",
            "is not an absolute directory path",
        ),
        (
            "  - device: /dev/sda\n    mount: /srv/../etc\n",
            "storage[0].mount",
            "is not an absolute directory path",
        ),
        (
            "  - device: /dev/sda\n    mount: /srv\n    fs: ntfs\n",
            "storage[0].fs",
            "expected ext4 or xfs",
        ),
        (
            "  - device: /dev/sda\n    mount: /srv\n    fs: xfs\n    label: thirteen-char\n",
            "storage[0].label",
            "must be 1 to 12",
        ),
        (
            "  - device: /dev/sda\n    mount: /srv\n    label: cloudimg-rootfs\n",
            "storage[0].label",
            "is the label of a partition of the rk1 image",
        ),
        (
            "  - device: /dev/sda\n    mount: /srv\n    options: [\"rw,exec\"]\n",
            "storage[0].options[0]",
            "is not one mount option",
        ),
        (
            "  - device: /dev/sda\n    mount: /srv\n  - device: /dev/sdb\n    mount: /srv/b\n",
            "storage[1].mount",
            "mount points may not nest",
        ),
        (
            "  - device: /dev/sda\n    mount: /srv/a\n  - device: /dev/sda\n    mount: /srv/b\n",
            "storage[1].device",
            "already used by another storage entry",
        ),
        (
            "  - device: /dev/sda\n    mount: /srv/data\n  - device: /dev/sdb\n    mount: /mnt/data\n",
            "storage[1].label",
            "\"data\" is already used",
        ),
        (
            "  - device: /dev/sda\n    mount: /srv\n    colour: blue\n",
            "storage[0]",
            "unknown field `colour`",
        ),
    ];
    for (entry, field, reason) in cases {
        let dir = profiles_with("node02", &format!("storage:\n{entry}"));
        let (code, out) = check(&dir);
        assert_eq!(code, 3, "{entry}\n{out}");
        let line = out
            .lines()
            .find(|l| l.contains("node02.yaml") && l.contains(reason))
            .unwrap_or_else(|| panic!("no problem {reason:?} for\n{entry}\n{out}"));
        assert!(line.contains(field), "field {field} not named in {line}");
    }
}
