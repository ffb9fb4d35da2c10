//! A USB stick as a destination: the node's installer ISO written raw to a
//! whole removable or USB-attached disk, after checks that keep it from ever
//! touching the wrong disk (read from sysfs and the mount table, both
//! injectable so tests can stand a regular file in for the device).
//!
//! Refused: partitions, disks that are neither removable nor on a USB bus,
//! the disk holding `/`, mounted disks (or any partition of them), disks
//! something else holds (device-mapper, RAID), and disks smaller than the
//! image. Written in large aligned blocks, synced, dropped from the page
//! cache and read back: done only when the read-back's sha256 matches.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::{Destination, Phase};
use crate::io::Sha256Digest;

/// Where the checks read the system's state from.
#[derive(Debug, Clone)]
pub struct SystemPaths {
    /// `/sys` (tests: a fake tree).
    pub sysfs: PathBuf,
    /// `/proc/self/mountinfo` (tests: a fake table).
    pub mountinfo: PathBuf,
}

impl Default for SystemPaths {
    fn default() -> Self {
        SystemPaths {
            sysfs: "/sys".into(),
            mountinfo: "/proc/self/mountinfo".into(),
        }
    }
}

/// Writes go in blocks of this size, at offsets that are multiples of it.
pub const BLOCK: usize = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum UsbError {
    #[error("{0}: no such device")]
    Missing(PathBuf),
    #[error("{path}: not a block device; give the stick's whole-disk device, e.g. /dev/sdb")]
    NotBlockDevice { path: PathBuf },
    #[error("{path}: {name} is not a disk the kernel lists in {sysfs}/block")]
    Unknown {
        path: PathBuf,
        name: String,
        sysfs: PathBuf,
    },
    #[error("{path}: is a partition; give the whole disk (e.g. /dev/{disk})")]
    Partition { path: PathBuf, disk: String },
    #[error(
        "{path}: {disk} is neither removable nor attached over USB (it looks like an internal disk); refusing to overwrite it"
    )]
    NotRemovable { path: PathBuf, disk: String },
    #[error(
        "{path}: {disk} holds the running system's root file system (/); refusing to overwrite it"
    )]
    RootDisk { path: PathBuf, disk: String },
    #[error("{path}: {what} is mounted at {mountpoint}; unmount it first (umount {mountpoint})")]
    Mounted {
        path: PathBuf,
        what: String,
        mountpoint: String,
    },
    #[error(
        "{path}: {disk} is in use by {holders} (device-mapper, RAID or LVM); refusing to overwrite it"
    )]
    Held {
        path: PathBuf,
        disk: String,
        holders: String,
    },
    #[error("{path}: the stick has {have} bytes, the image needs {need}; use a larger stick")]
    TooSmall { path: PathBuf, have: u64, need: u64 },
    #[error(
        "{path}: no write access; add yourself to the `disk` group (sudo usermod -aG disk $USER, then log in again) or run as root"
    )]
    NoAccess { path: PathBuf },
    #[error(
        "{path}: writing failed after {done} of {total} bytes: {source}; the stick holds an incomplete installer, write it again"
    )]
    WriteFailed {
        path: PathBuf,
        done: u64,
        total: u64,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path}: read-back mismatch: wrote sha256 {expected}, read back {actual}; the stick may be faulty or counterfeit"
    )]
    Mismatch {
        path: PathBuf,
        expected: Sha256Digest,
        actual: Sha256Digest,
    },
    #[error(
        "{path}: the device changed since it was checked (was {was}, now {now}); check which stick is plugged in and run again"
    )]
    Changed {
        path: PathBuf,
        was: String,
        now: String,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> UsbError + '_ {
    move |source| UsbError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What sysfs says about the disk behind a device path.
#[derive(Debug, Clone)]
pub struct Stick {
    pub path: PathBuf,
    /// The kernel's name: `sdb`.
    pub name: String,
    pub model: String,
    pub serial: String,
    pub size: u64,
    pub removable: bool,
    pub usb: bool,
    /// `major:minor` from sysfs: the opened device must have these numbers.
    pub dev: Option<String>,
}

impl Stick {
    /// Whether `other` (a later probe of the same path) is still this disk.
    pub fn same_disk(&self, other: &Stick) -> bool {
        (&self.name, &self.model, &self.serial, self.size, &self.dev)
            == (
                &other.name,
                &other.model,
                &other.serial,
                other.size,
                &other.dev,
            )
    }

    pub fn describe(&self) -> String {
        format!(
            "{} ({}, serial {}, {:.1} GB{})",
            self.path.display(),
            if self.model.is_empty() {
                "unknown model"
            } else {
                &self.model
            },
            if self.serial.is_empty() {
                "unknown"
            } else {
                &self.serial
            },
            self.size as f64 / 1e9,
            match (self.usb, self.removable) {
                (true, _) => ", USB",
                (false, true) => ", removable",
                _ => "",
            }
        )
    }
}

fn read_trim(p: &Path) -> Option<String> {
    std::fs::read_to_string(p)
        .ok()
        .map(|s| s.trim().to_string())
}

/// `major:minor` of a sysfs block directory's `dev` file.
fn dev_numbers(dir: &Path) -> Option<String> {
    read_trim(&dir.join("dev"))
}

/// Reads the disk behind `device` from sysfs and refuses what is not a whole,
/// removable or USB-attached disk. `device` must be a block device unless the
/// sysfs root is not `/sys` (tests stand a regular file in for it).
pub fn probe(device: &Path, sys: &SystemPaths) -> Result<Stick, UsbError> {
    let meta = std::fs::metadata(device).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => UsbError::Missing(device.to_owned()),
        _ => io(device)(e),
    })?;
    let real = std::fs::canonicalize(device).map_err(io(device))?;
    let name = real
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if !meta.file_type().is_block_device() && sys.sysfs == Path::new("/sys") {
        return Err(UsbError::NotBlockDevice {
            path: device.to_owned(),
        });
    }
    let class = sys.sysfs.join("class/block").join(&name);
    if class.join("partition").exists() {
        let disk = std::fs::canonicalize(&class)
            .ok()
            .and_then(|p| p.parent().map(|d| d.to_owned()))
            .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "sdX".into());
        return Err(UsbError::Partition {
            path: device.to_owned(),
            disk,
        });
    }
    let dir = sys.sysfs.join("block").join(&name);
    let resolved = std::fs::canonicalize(&dir).map_err(|_| UsbError::Unknown {
        path: device.to_owned(),
        name: name.clone(),
        sysfs: sys.sysfs.clone(),
    })?;
    let removable = read_trim(&dir.join("removable")).as_deref() == Some("1");
    // A USB disk's sysfs path runs through its host controller's `usbN`
    // bus and the port's `N-M` device.
    let inner = resolved.strip_prefix(&sys.sysfs).unwrap_or(&resolved);
    let usb = inner
        .components()
        .any(|c| c.as_os_str().to_string_lossy().starts_with("usb"));
    let sectors: u64 = read_trim(&dir.join("size"))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let model = [
        read_trim(&dir.join("device/vendor")),
        read_trim(&dir.join("device/model")),
    ]
    .into_iter()
    .flatten()
    .filter(|s| !s.is_empty())
    .collect::<Vec<_>>()
    .join(" ");
    // The serial of a USB stick is its USB device's; walk up to it.
    let serial = read_trim(&dir.join("device/serial"))
        .or_else(|| {
            resolved
                .ancestors()
                .take_while(|a| a.starts_with(&sys.sysfs) && *a != sys.sysfs)
                .find_map(|a| read_trim(&a.join("serial")))
        })
        .unwrap_or_default();
    let stick = Stick {
        path: device.to_owned(),
        name,
        model,
        serial,
        size: sectors.saturating_mul(512),
        removable,
        usb,
        dev: dev_numbers(&dir),
    };
    if !stick.removable && !stick.usb {
        return Err(UsbError::NotRemovable {
            path: device.to_owned(),
            disk: stick.name,
        });
    }
    Ok(stick)
}

/// One mount: its device numbers, mount point and source.
struct Mount {
    dev: String,
    point: String,
    source: String,
}

/// Parses `/proc/self/mountinfo` (fields: id parent major:minor root point
/// options [optional...] - fstype source super-options); octal escapes in
/// paths are kept as they are (only compared with device names).
fn mounts(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let sep = f.iter().position(|x| *x == "-")?;
            Some(Mount {
                dev: f.get(2)?.to_string(),
                point: f.get(4)?.to_string(),
                source: f.get(sep + 2).unwrap_or(&"").to_string(),
            })
        })
        .collect()
}

/// Refuses the disk holding `/`, a mounted disk or partition, a disk held
/// by device-mapper/RAID, and a disk smaller than `need` bytes.
pub fn check_free(stick: &Stick, need: u64, sys: &SystemPaths) -> Result<(), UsbError> {
    let dir = sys.sysfs.join("block").join(&stick.name);
    // The disk and its partitions (`<disk>/<disk>N/dev`), by number and name.
    let mut parts: Vec<(String, Option<String>)> = vec![(stick.name.clone(), dev_numbers(&dir))];
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with(&stick.name) && e.path().join("partition").exists() {
                parts.push((n, dev_numbers(&e.path())));
            }
        }
    }
    let table = std::fs::read_to_string(&sys.mountinfo).map_err(io(&sys.mountinfo))?;
    let mounts = mounts(&table);
    let hit = |m: &Mount| {
        parts.iter().find(|(n, dev)| {
            dev.as_deref() == Some(m.dev.as_str()) || m.source == format!("/dev/{n}")
        })
    };
    if let Some(root) = mounts.iter().find(|m| m.point == "/")
        && hit(root).is_some()
    {
        return Err(UsbError::RootDisk {
            path: stick.path.clone(),
            disk: stick.name.clone(),
        });
    }
    if let Some((m, (n, _))) = mounts.iter().find_map(|m| hit(m).map(|p| (m, p))) {
        return Err(UsbError::Mounted {
            path: stick.path.clone(),
            what: format!("/dev/{n}"),
            mountpoint: m.point.clone(),
        });
    }
    let mut holders = Vec::new();
    for (n, _) in &parts {
        let h = if *n == stick.name {
            dir.join("holders")
        } else {
            dir.join(n).join("holders")
        };
        if let Ok(entries) = std::fs::read_dir(h) {
            holders.extend(
                entries
                    .flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned()),
            );
        }
    }
    if !holders.is_empty() {
        return Err(UsbError::Held {
            path: stick.path.clone(),
            disk: stick.name.clone(),
            holders: holders.join(", "),
        });
    }
    if stick.size < need {
        return Err(UsbError::TooSmall {
            path: stick.path.clone(),
            have: stick.size,
            need,
        });
    }
    Ok(())
}

/// Writes `image` to the start of `device` in [`BLOCK`]-sized writes, syncs,
/// drops the written range from the page cache and reads it back; returns
/// the read-back digest (checked against `expected`).
pub fn write_and_verify(
    image: &Path,
    stick: &Stick,
    expected: &Sha256Digest,
    progress: &mut dyn FnMut(Phase, u64, u64),
) -> Result<(), UsbError> {
    let device = stick.path.as_path();
    let mut src = File::open(image).map_err(io(image))?;
    let total = src.metadata().map_err(io(image))?.len();
    // O_EXCL on a block device fails while the kernel has it in use
    // (mounted, held): a last guard against a race with the checks.
    let mut dev = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_EXCL | libc::O_CLOEXEC)
        .open(device)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::PermissionDenied => UsbError::NoAccess {
                path: device.to_owned(),
            },
            _ => io(device)(e),
        })?;
    let opened = dev.metadata().map_err(io(device))?;
    let is_block = opened.file_type().is_block_device();
    if is_block {
        // The descriptor must be the disk sysfs described (a swapped stick
        // or a fake sysfs tree would not match).
        use std::os::unix::fs::MetadataExt;
        let rdev = opened.rdev();
        let now = format!("{}:{}", libc::major(rdev), libc::minor(rdev));
        if stick.dev.as_deref() != Some(now.as_str()) {
            return Err(UsbError::Changed {
                path: device.to_owned(),
                was: stick
                    .dev
                    .clone()
                    .unwrap_or_else(|| "no device numbers in sysfs".into()),
                now: format!("device {now}"),
            });
        }
    }
    let mut buf = vec![0u8; BLOCK];
    let mut done = 0u64;
    let failed = |done: u64, source: std::io::Error| UsbError::WriteFailed {
        path: device.to_owned(),
        done,
        total,
        source,
    };
    progress(Phase::Writing, 0, total);
    while done < total {
        let want = (total - done).min(BLOCK as u64) as usize;
        src.read_exact(&mut buf[..want]).map_err(io(image))?;
        dev.write_all(&buf[..want]).map_err(|e| failed(done, e))?;
        done += want as u64;
        progress(Phase::Writing, done, total);
    }
    dev.sync_all().map_err(|e| failed(done, e))?;
    // Read back what the stick holds, not what the page cache kept.
    // SAFETY: an advisory call on an open descriptor.
    unsafe {
        libc::posix_fadvise(
            std::os::fd::AsRawFd::as_raw_fd(&dev),
            0,
            0,
            libc::POSIX_FADV_DONTNEED,
        )
    };
    if is_block {
        // SAFETY: BLKFLSBUF on an open block device only flushes its buffers.
        unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&dev), 0x1261 as _, 0) };
    }
    dev.seek(SeekFrom::Start(0)).map_err(io(device))?;
    let mut hasher = crate::io::HashingWriter::new(std::io::sink());
    let mut read = 0u64;
    progress(Phase::Verifying, 0, total);
    while read < total {
        let want = (total - read).min(BLOCK as u64) as usize;
        dev.read_exact(&mut buf[..want]).map_err(io(device))?;
        hasher.write_all(&buf[..want]).map_err(io(device))?;
        read += want as u64;
        progress(Phase::Verifying, read, total);
    }
    let (_, actual) = hasher.finish();
    if actual != *expected {
        return Err(UsbError::Mismatch {
            path: device.to_owned(),
            expected: *expected,
            actual,
        });
    }
    Ok(())
}

/// A stick that passed [`probe`] and [`check_free`], as a delivery destination.
pub struct UsbStick {
    pub stick: Stick,
    pub system: SystemPaths,
}

impl Destination for UsbStick {
    fn name(&self) -> String {
        self.stick.path.display().to_string()
    }

    fn describe(&self) -> String {
        format!("the USB stick {}", self.stick.describe())
    }

    fn finished(&self) -> String {
        format!(
            "wrote and verified {}; boot the NUC from it to install",
            self.stick.path.display()
        )
    }

    fn write(
        &mut self,
        image: &Path,
        sha256: &Sha256Digest,
        progress: &mut dyn FnMut(Phase, u64, u64),
    ) -> anyhow::Result<()> {
        let path = self.stick.path.clone();
        crate::util::cleanup::on_interrupt(Box::new(move || {
            tracing::error!(
                "interrupted while writing {}: the stick holds an incomplete installer; write it again",
                path.display()
            );
        }));
        // Probed again right before writing: still the disk the user
        // confirmed, still free.
        let now = probe(&self.stick.path, &self.system)?;
        if !self.stick.same_disk(&now) {
            return Err(UsbError::Changed {
                path: self.stick.path.clone(),
                was: self.stick.describe(),
                now: now.describe(),
            }
            .into());
        }
        let need = std::fs::metadata(image).map(|m| m.len()).unwrap_or(0);
        check_free(&now, need, &self.system)?;
        let r = write_and_verify(image, &self.stick, sha256, progress);
        crate::util::cleanup::clear_interrupt_hook();
        Ok(r?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A USB stick `sdz` in a fake sysfs tree, its device a regular file.
    fn fake(dir: &Path) -> (SystemPaths, PathBuf) {
        let host = "devices/pci0000:00/0000:00:14.0/usb2/2-1/2-1:1.0/host6/target6:0:0/6:0:0:0";
        let sysfs = dir.join("sys");
        let disk = sysfs.join(host).join("block/sdz");
        std::fs::create_dir_all(disk.join("holders")).unwrap();
        for (f, v) in [("dev", "8:16"), ("size", "4194304"), ("removable", "1")] {
            std::fs::write(disk.join(f), v).unwrap();
        }
        std::fs::write(sysfs.join(host).join("model"), "Cruzer").unwrap();
        std::fs::write(
            sysfs.join("devices/pci0000:00/0000:00:14.0/usb2/2-1/serial"),
            "AAA",
        )
        .unwrap();
        std::os::unix::fs::symlink("../..", disk.join("device")).unwrap();
        for (link, up) in [("block", ".."), ("class/block", "../..")] {
            std::fs::create_dir_all(sysfs.join(link)).unwrap();
            std::os::unix::fs::symlink(
                format!("{up}/{host}/block/sdz"),
                sysfs.join(link).join("sdz"),
            )
            .unwrap();
        }
        let mountinfo = dir.join("mountinfo");
        std::fs::write(&mountinfo, "22 1 259:2 / / rw - ext4 /dev/nvme0n1p2 rw\n").unwrap();
        std::fs::create_dir_all(dir.join("dev")).unwrap();
        let device = dir.join("dev/sdz");
        std::fs::write(&device, b"").unwrap();
        (SystemPaths { sysfs, mountinfo }, device)
    }

    #[test]
    fn a_stick_swapped_after_the_checks_is_not_written() {
        let dir = tempfile::tempdir().unwrap();
        let (system, device) = fake(dir.path());
        let stick = probe(&device, &system).unwrap();
        assert_eq!(
            (stick.serial.as_str(), stick.dev.as_deref()),
            ("AAA", Some("8:16"))
        );
        let image = dir.path().join("image.iso");
        std::fs::write(&image, vec![7u8; 4096]).unwrap();
        let digest = crate::io::sha256_sparse(&File::open(&image).unwrap()).unwrap();
        // Another stick now answers to the same name.
        std::fs::write(
            system
                .sysfs
                .join("devices/pci0000:00/0000:00:14.0/usb2/2-1/serial"),
            "BBB",
        )
        .unwrap();
        let mut dest = UsbStick { stick, system };
        let err = dest.write(&image, &digest, &mut |_, _, _| {}).unwrap_err();
        assert!(
            format!("{err}").contains("the device changed since it was checked"),
            "{err}"
        );
        assert_eq!(std::fs::metadata(&device).unwrap().len(), 0, "written to");
    }

    #[test]
    fn mountinfo_fields() {
        let m = super::mounts(
            "36 35 8:17 / /media/usb rw,nosuid shared:1 - vfat /dev/sdb1 rw\n22 1 259:2 / / rw - ext4 /dev/nvme0n1p2 rw\nbad line\n",
        );
        assert_eq!(m.len(), 2);
        assert_eq!(
            (m[0].dev.as_str(), m[0].point.as_str(), m[0].source.as_str()),
            ("8:17", "/media/usb", "/dev/sdb1")
        );
        assert_eq!(m[1].point, "/");
    }
}
