//! Data disks (`storage`): formatted on first boot only when blank, mounted by label.

use super::Ctx;
use crate::config::manifest::BoardInfo;
use crate::config::profile::model::{DataDisk, DataDiskSpec};

/// Directories a data disk may not be mounted on (or under, for the ones
/// the system itself manages): the node would not boot, or would lose files
/// the image put there in a way the fill step cannot restore.
const SYSTEM_DIRS: &[&str] = &[
    "/", "/bin", "/boot", "/dev", "/etc", "/lib", "/lib64", "/proc", "/root", "/run", "/sbin",
    "/sys", "/usr", "/var", "/var/lib", "/var/log",
];
const SYSTEM_TREES: &[&str] = &["/boot", "/dev", "/etc", "/proc", "/run", "/sys", "/usr"];

fn path_chars_ok(p: &str) -> bool {
    p.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"/._-:+@".contains(&b))
}

/// Whether `dev` names a partition rather than a whole disk.
fn is_partition(dev: &str) -> bool {
    let name = dev.rsplit('/').next().unwrap_or(dev);
    if let Some((_, n)) = name.rsplit_once("-part") {
        return !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit());
    }
    let trailing_digits = name
        .bytes()
        .rev()
        .take_while(|b| b.is_ascii_digit())
        .count();
    if trailing_digits == 0 {
        return false;
    }
    let stem = &name[..name.len() - trailing_digits];
    // nvme0n1p2, mmcblk0p1: a `p` after a digit; sdb1, vdc3: letters then digits.
    if let Some(before) = stem.strip_suffix('p')
        && before.ends_with(|c: char| c.is_ascii_digit())
    {
        return true;
    }
    ["sd", "vd", "xvd", "hd"].iter().any(|p| {
        stem.strip_prefix(p)
            .is_some_and(|rest| !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_lowercase()))
    })
}

fn label_limit(fs: &str) -> usize {
    if fs == "xfs" { 12 } else { 16 }
}

/// A label from the mount point's last component: `/var/lib/rancher` -> `rancher`.
fn default_label(mount: &str, fs: &str) -> String {
    let last = mount.rsplit('/').find(|c| !c.is_empty()).unwrap_or("data");
    let mut l: String = last
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    l.truncate(label_limit(fs));
    l
}

pub(super) fn storage(
    cx: &mut Ctx,
    specs: Vec<DataDiskSpec>,
    board: Option<&BoardInfo>,
) -> Vec<DataDisk> {
    let mut out: Vec<DataDisk> = Vec::new();
    for (i, spec) in specs.into_iter().enumerate() {
        let field = |k: &str| format!("storage[{i}].{k}");
        let Some(device) = spec.device else {
            cx.bad(
                &field("device"),
                "missing; give the whole disk, e.g. /dev/disk/by-id/nvme-... or /dev/nvme0n1",
            );
            continue;
        };
        let mut ok = device_ok(cx, &field("device"), &device, board);
        let fs = spec.fs.unwrap_or_else(|| "ext4".into());
        if fs != "ext4" && fs != "xfs" {
            cx.bad(
                &field("fs"),
                format!("{fs:?} is not supported; expected ext4 or xfs"),
            );
            ok = false;
        }
        let Some(mount) = spec.mount else {
            cx.bad(
                &field("mount"),
                "missing; e.g. /var/lib/rancher or /var/lib/longhorn",
            );
            continue;
        };
        ok &= mount_ok(cx, &field("mount"), &mount);
        let (label, label_ok) = label(cx, &field("label"), spec.label, &mount, &fs, board);
        ok &= label_ok;
        let (options, options_ok) = mount_options(cx, i, spec.options.unwrap_or_default());
        ok &= options_ok;
        let disk = DataDisk {
            k3s_data: mount == "/var/lib/rancher" || mount.starts_with("/var/lib/rancher/"),
            device,
            mount,
            fs,
            label,
            options: options.join(","),
        };
        ok &= apart_from_others(cx, i, &disk, &out);
        if ok {
            out.push(disk);
        }
    }
    out
}

/// A whole disk's device path, and not the root's eMMC or SD card on a
/// Turing Pi module.
fn device_ok(cx: &mut Ctx, field: &str, device: &str, board: Option<&BoardInfo>) -> bool {
    if !device.starts_with("/dev/")
        || device.contains("/../")
        || device.ends_with("/..")
        || !path_chars_ok(device)
    {
        cx.bad(
            field,
            format!("{device:?} is not a device path; expected /dev/disk/by-id/..., /dev/nvme0n1 or /dev/sdb"),
        );
        false
    } else if is_partition(device) {
        cx.bad(
            field,
            format!("{device:?} is a partition; give the whole disk (imgbuild partitions a blank disk itself)"),
        );
        false
    } else if board.is_some_and(|b| b.turing_pi_module)
        && device
            .rsplit('/')
            .next()
            .is_some_and(|n| n.starts_with("mmcblk"))
    {
        cx.bad(
            field,
            format!("{device:?} is the module's eMMC or SD card, which holds the root; data disks are NVMe, SATA or USB"),
        );
        false
    } else {
        true
    }
}

/// An absolute directory of its own, not one the system manages.
fn mount_ok(cx: &mut Ctx, field: &str, mount: &str) -> bool {
    let mount_ok = mount.starts_with('/')
        && mount.len() > 1
        && !mount.ends_with('/')
        && path_chars_ok(mount)
        && !mount
            .split('/')
            .skip(1)
            .any(|c| c.is_empty() || c == "." || c == "..");
    if !mount_ok {
        cx.bad(
            field,
            format!("{mount:?} is not an absolute directory path like /var/lib/longhorn"),
        );
        false
    } else if SYSTEM_DIRS.contains(&mount)
        || SYSTEM_TREES
            .iter()
            .any(|t| mount.starts_with(&format!("{t}/")))
    {
        cx.bad(
            field,
            format!("{mount:?} belongs to the system; mount data disks on their own directory, e.g. /var/lib/rancher"),
        );
        false
    } else {
        true
    }
}

/// The file system label (given, or made from the mount point): it must fit
/// the file system and differ from the image's own partition labels.
fn label(
    cx: &mut Ctx,
    field: &str,
    given: Option<String>,
    mount: &str,
    fs: &str,
    board: Option<&BoardInfo>,
) -> (String, bool) {
    let mut ok = true;
    let label = match given {
        Some(l) => {
            let fits = !l.is_empty()
                && l.len() <= label_limit(fs)
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !fits {
                cx.bad(
                    field,
                    format!(
                        "{l:?} must be 1 to {} letters, digits, '-' or '_' ({fs} label)",
                        label_limit(fs)
                    ),
                );
                ok = false;
            }
            l
        }
        None => default_label(mount, fs),
    };
    if let Some(b) = board
        && b.partition_labels
            .iter()
            .any(|p| p.eq_ignore_ascii_case(&label))
    {
        cx.bad(
            field,
            format!(
                "{label:?} is the label of a partition of the {} image; LABEL= would be ambiguous",
                b.name
            ),
        );
        ok = false;
    }
    (label, ok)
}

/// The mount options as given, each one option, plus those that keep a
/// missing or dead disk from stopping the boot.
fn mount_options(cx: &mut Ctx, i: usize, given: Vec<String>) -> (Vec<String>, bool) {
    let mut ok = true;
    let mut options: Vec<String> = Vec::new();
    for (j, o) in given.into_iter().enumerate() {
        if o.is_empty()
            || !o
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_=.:-".contains(&b))
        {
            cx.bad(
                &format!("storage[{i}].options[{j}]"),
                format!(
                    "{o:?} is not one mount option like noatime or x-systemd.device-timeout=30s"
                ),
            );
            ok = false;
        }
        options.push(o);
    }
    for required in ["nofail", "x-systemd.device-timeout=30s"] {
        let key = required.split('=').next().unwrap_or(required);
        if !options.iter().any(|o| o.split('=').next() == Some(key)) {
            options.push(required.to_string());
        }
    }
    (options, ok)
}

/// Entry `i` shares no device or label with an earlier entry, and their
/// mount points do not nest.
fn apart_from_others(cx: &mut Ctx, i: usize, disk: &DataDisk, others: &[DataDisk]) -> bool {
    let field = |k: &str| format!("storage[{i}].{k}");
    let (device, label, mount) = (&disk.device, &disk.label, &disk.mount);
    let mut ok = true;
    for other in others {
        if &other.device == device {
            cx.bad(
                &field("device"),
                format!("{device:?} is already used by another storage entry"),
            );
            ok = false;
        }
        if &other.label == label {
            cx.bad(
                &field("label"),
                format!("{label:?} is already used by another storage entry"),
            );
            ok = false;
        }
        let nested = |a: &str, b: &str| a == b || b.starts_with(&format!("{a}/"));
        if nested(&other.mount, mount) || nested(mount, &other.mount) {
            cx.bad(
                &field("mount"),
                format!(
                    "{mount:?} overlaps {:?} of another storage entry; mount points may not nest",
                    other.mount
                ),
            );
            ok = false;
        }
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_and_disks() {
        for dev in [
            "/dev/sdb1",
            "/dev/vdc12",
            "/dev/nvme0n1p1",
            "/dev/mmcblk0p2",
            "/dev/disk/by-id/nvme-Samsung_SSD_980_1TB_S6-part1",
        ] {
            assert!(is_partition(dev), "{dev}");
        }
        for dev in [
            "/dev/sdb",
            "/dev/nvme0n1",
            "/dev/mmcblk0",
            "/dev/disk/by-id/nvme-Samsung_SSD_980_1TB_S64DNX0R123456",
            "/dev/disk/by-id/ata-WDC_WD10EZEX-00BN5A0_WD-WCC3F1234567",
            "/dev/disk/by-path/pci-0000:01:00.0-nvme-1",
        ] {
            assert!(!is_partition(dev), "{dev}");
        }
    }

    #[test]
    fn default_labels_fit() {
        assert_eq!(default_label("/var/lib/rancher", "ext4"), "rancher");
        assert_eq!(default_label("/var/lib/longhorn", "xfs"), "longhorn");
        assert_eq!(
            default_label("/srv/a.very-long.directory.name", "xfs"),
            "a-very-long-"
        );
    }
}
