//! `imgbuild diff A B`: what differs between two images, read through the
//! same readers as `inspect` (partition table, FAT volume, ext4-view):
//! the partition table, then per file system the added, removed and changed
//! files with mode, owner, size and a sha256 of the content. Files that hold
//! secrets are reported as changed or not, never with a digest or size.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

use crate::fs::{FsProbe, ext4, fat::FatVolume};
use crate::image::Region;

/// One entry of a file system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub kind: &'static str,
    /// Permission bits; `None` on FAT (it has none).
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    /// sha256 of the content (of the link target for a symlink).
    pub sha256: Option<String>,
}

/// Paths whose content is secret in an imgbuild image (tokens, private
/// keys, node passwords, the k3s unit environment with the token, shadow
/// files): matched by name so that `diff` needs no profiles.
pub fn is_secret(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    name.ends_with(".key")
        || name.contains("token")
        || (name.starts_with("ssh_host_") && name.ends_with("_key"))
        || path == "/etc/rancher/node/password"
        || (name.starts_with("k3s") && name.ends_with(".service.env"))
        || matches!(
            path,
            "/etc/shadow" | "/etc/gshadow" | "/etc/shadow-" | "/etc/gshadow-"
        )
}

/// A partition as both images are compared by (the same record `inspect` shows).
pub use super::inspect::PartitionInfo as PartSummary;

#[derive(Debug)]
pub struct FileChange {
    pub path: String,
    /// `added`, `removed` or `changed`.
    pub change: &'static str,
    pub secret: bool,
    /// Left out for secret files.
    pub before: Option<Entry>,
    pub after: Option<Entry>,
}

#[derive(Debug)]
pub struct FsDiff {
    pub partition: u32,
    pub fs: String,
    pub changes: Vec<FileChange>,
}

#[derive(Debug)]
pub struct ImageDiff {
    pub a: String,
    pub b: String,
    pub table_a: String,
    pub table_b: String,
    /// Partitions that differ in extent, type or file system: (a, b).
    pub partitions: Vec<(Option<PartSummary>, Option<PartSummary>)>,
    pub file_systems: Vec<FsDiff>,
    pub equal: bool,
}

type Listing = BTreeMap<String, Entry>;

fn digest(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn list_fat(region: Region) -> Result<Listing> {
    let vol = FatVolume::open(region)?;
    let mut out = Listing::new();
    let mut dirs = vec!["/".to_string()];
    while let Some(d) = dirs.pop() {
        for e in vol.list(&d)? {
            let path = format!("{}/{}", d.trim_end_matches('/'), e.name);
            if e.is_dir {
                out.insert(path.clone(), entry("dir", None, None, None));
                dirs.push(path);
            } else {
                let data = vol.read_file(&path)?.unwrap_or_default();
                out.insert(
                    path,
                    Entry {
                        kind: "file",
                        mode: None,
                        uid: None,
                        gid: None,
                        size: Some(data.len() as u64),
                        sha256: Some(digest(&data)),
                    },
                );
            }
        }
    }
    Ok(out)
}

fn entry(kind: &'static str, mode: Option<u32>, uid: Option<u32>, gid: Option<u32>) -> Entry {
    Entry {
        kind,
        mode,
        uid,
        gid,
        size: None,
        sha256: None,
    }
}

fn list_ext4(region: Region) -> Result<Listing> {
    let fs = ext4::open_reader(region)?;
    let mut out = Listing::new();
    let mut dirs = vec!["/".to_string()];
    while let Some(d) = dirs.pop() {
        let rd = fs
            .read_dir(d.as_str())
            .map_err(|e| anyhow::anyhow!("ext4 {d}: {e}"))?;
        for e in rd {
            let e = e.map_err(|e| anyhow::anyhow!("ext4 {d}: {e}"))?;
            let name = e
                .file_name()
                .as_str()
                .map_err(|_| anyhow::anyhow!("ext4 {d}: a name that is not UTF-8"))?
                .to_string();
            if name == "." || name == ".." {
                continue;
            }
            let path = format!("{}/{name}", d.trim_end_matches('/'));
            let m = e
                .metadata()
                .map_err(|e| anyhow::anyhow!("ext4 {path}: {e}"))?;
            let (mode, uid, gid) = (
                Some(u32::from(m.mode()) & 0o7777),
                Some(m.uid()),
                Some(m.gid()),
            );
            let ft = m.file_type();
            let en = if ft.is_dir() {
                dirs.push(path.clone());
                entry("dir", mode, uid, gid)
            } else if ft.is_symlink() {
                let t = fs
                    .read_link(path.as_str())
                    .map_err(|e| anyhow::anyhow!("ext4 {path}: {e}"))?;
                let t = t.to_str().unwrap_or_default().to_string();
                Entry {
                    size: Some(t.len() as u64),
                    sha256: Some(digest(t.as_bytes())),
                    ..entry("symlink", mode, uid, gid)
                }
            } else if ft.is_regular_file() {
                let data = fs
                    .read(path.as_str())
                    .map_err(|e| anyhow::anyhow!("ext4 {path}: {e}"))?;
                Entry {
                    size: Some(data.len() as u64),
                    sha256: Some(digest(&data)),
                    ..entry("file", mode, uid, gid)
                }
            } else {
                entry("special", mode, uid, gid)
            };
            out.insert(path, en);
        }
    }
    Ok(out)
}

struct Read {
    table: String,
    parts: Vec<PartSummary>,
    listings: BTreeMap<u32, (String, Listing)>,
}

fn read(image: &Path) -> Result<Read> {
    let probed = super::inspect::Probed::open(image)?;
    let mut parts = Vec::new();
    let mut listings = BTreeMap::new();
    for (p, region, fs) in probed.partitions() {
        let listing = match fs {
            FsProbe::Vfat { .. } => Some(list_fat(region).with_context(|| {
                format!(
                    "{}: reading the FAT file system of partition {}",
                    image.display(),
                    p.index
                )
            })?),
            FsProbe::Ext4 { .. } => Some(list_ext4(region).with_context(|| {
                format!(
                    "{}: reading the ext4 file system of partition {}",
                    image.display(),
                    p.index
                )
            })?),
            FsProbe::Unknown => None,
        };
        if let Some(l) = listing {
            listings.insert(p.index, (fs.kind_name().to_string(), l));
        }
        parts.push(PartSummary::new(p, fs.clone()));
    }
    Ok(Read {
        table: probed.table.kind.to_string(),
        parts,
        listings,
    })
}

/// Compares two images.
pub fn diff(a: &Path, b: &Path) -> Result<ImageDiff> {
    let (ra, rb) = (read(a)?, read(b)?);
    let mut partitions = Vec::new();
    let indexes: std::collections::BTreeSet<u32> =
        ra.parts.iter().chain(&rb.parts).map(|p| p.index).collect();
    for i in &indexes {
        let pa = ra.parts.iter().find(|p| p.index == *i).cloned();
        let pb = rb.parts.iter().find(|p| p.index == *i).cloned();
        if pa != pb {
            partitions.push((pa, pb));
        }
    }
    let mut file_systems = Vec::new();
    for i in &indexes {
        let empty = (String::new(), Listing::new());
        let (ka, la) = ra.listings.get(i).unwrap_or(&empty);
        let (kb, lb) = rb.listings.get(i).unwrap_or(&empty);
        if la.is_empty() && lb.is_empty() {
            continue;
        }
        let mut changes = Vec::new();
        let paths: std::collections::BTreeSet<&String> = la.keys().chain(lb.keys()).collect();
        for p in paths {
            let (ea, eb) = (la.get(p), lb.get(p));
            let change = match (ea, eb) {
                (Some(x), Some(y)) if x == y => continue,
                (Some(_), Some(_)) => "changed",
                (None, Some(_)) => "added",
                (Some(_), None) => "removed",
                (None, None) => continue,
            };
            let secret = is_secret(p);
            let shown = |e: Option<&Entry>| if secret { None } else { e.cloned() };
            changes.push(FileChange {
                path: p.clone(),
                change,
                secret,
                before: shown(ea),
                after: shown(eb),
            });
        }
        file_systems.push(FsDiff {
            partition: *i,
            fs: if ka.is_empty() {
                kb.clone()
            } else {
                ka.clone()
            },
            changes,
        });
    }
    let equal = ra.table == rb.table
        && partitions.is_empty()
        && file_systems.iter().all(|f| f.changes.is_empty());
    Ok(ImageDiff {
        a: a.display().to_string(),
        b: b.display().to_string(),
        table_a: ra.table,
        table_b: rb.table,
        partitions,
        file_systems,
        equal,
    })
}

#[cfg(test)]
mod tests {
    use super::is_secret;

    #[test]
    fn secret_paths() {
        for p in [
            "/etc/rancher/k3s/token",
            "/etc/rancher/k3s/agent-token",
            "/etc/rancher/node/password",
            "/etc/ssh/ssh_host_ed25519_key",
            "/var/lib/rancher/k3s/server/tls/server-ca.key",
            "/etc/systemd/system/k3s-agent.service.env",
            "/etc/shadow",
        ] {
            assert!(is_secret(p), "{p}");
        }
        for p in [
            "/etc/ssh/ssh_host_ed25519_key.pub",
            "/etc/hostname",
            "/user-data",
        ] {
            assert!(!is_secret(p), "{p}");
        }
    }
}
