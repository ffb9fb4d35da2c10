//! `imgbuild inspect`: what an image holds and who made it.

use std::path::Path;

use anyhow::{Context, Result};

use crate::fs::{FsProbe, ext4, fat::FatVolume, probe};
use crate::image::{PartitionTable, Region};
use crate::plan::{PROVENANCE_FILE, Provenance};

const SEED_FILES: &[&str] = &["meta-data", "user-data", "network-config", "vendor-data"];

/// The largest seed file or provenance record `inspect` reads.
const MAX_SEED_FILE: u64 = 1 << 20;

#[derive(Debug)]
pub struct Inspection {
    pub image: String,
    pub size: u64,
    pub table: String,
    pub partitions: Vec<PartitionInfo>,
    pub seed: Option<SeedInfo>,
    /// What imgbuild recorded when it made the image; `None` for a stock image.
    pub provenance: Option<Provenance>,
    /// Bytes a flash sends: the whole raw image, as the BMC writes every byte.
    pub flash_bytes: u64,
    /// The root file system in the last partition, which the first boot grows.
    pub root: Option<RootGrowth>,
}

/// The last partition's ext4 file system: its size now, and where it grows.
#[derive(Debug)]
pub struct RootGrowth {
    pub partition: u32,
    pub partition_bytes: u64,
    pub fs_bytes: u64,
    pub fs_used_bytes: u64,
    /// Where the first boot grows partition and file system (cloud-init
    /// growpart and resize_rootfs): the end of the device it is flashed to.
    pub grows_to: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionInfo {
    pub index: u32,
    pub start: u64,
    pub size: u64,
    pub type_id: String,
    pub fs: FsProbe,
}

impl PartitionInfo {
    pub fn new(p: &crate::image::Partition, fs: FsProbe) -> Self {
        PartitionInfo {
            index: p.index,
            start: p.start,
            size: p.len,
            type_id: p.type_id.clone(),
            fs,
        }
    }
}

#[derive(Debug)]
pub struct SeedInfo {
    pub partition: u32,
    pub dir: String,
    pub files: Vec<SeedFile>,
    pub instance_id: Option<String>,
}

#[derive(Debug)]
pub struct SeedFile {
    pub name: String,
    pub size: u64,
}

/// Reads `image`; a NoCloud seed inside an ext4 file system is looked for in
/// `ext4_seed_dirs` (FAT seeds are at the volume's root).
/// An image opened for reading: its partition table and each partition's
/// file system as probed; what `inspect` and `diff` both start from.
pub(super) struct Probed {
    pub table: PartitionTable,
    pub file: std::fs::File,
    pub filesystems: Vec<FsProbe>,
}

impl Probed {
    pub fn open(image: &Path) -> Result<Probed> {
        let table = PartitionTable::read(image, None)?;
        let file =
            std::fs::File::open(image).with_context(|| format!("opening {}", image.display()))?;
        let filesystems = table
            .partitions
            .iter()
            .map(|p| probe(&Region::new(&file, p)))
            .collect::<Result<_, _>>()?;
        Ok(Probed {
            table,
            file,
            filesystems,
        })
    }

    /// Each partition with its bounds-checked region and probed file system.
    pub fn partitions(
        &self,
    ) -> impl Iterator<Item = (&crate::image::Partition, Region<'_>, &FsProbe)> {
        self.table
            .partitions
            .iter()
            .zip(&self.filesystems)
            .map(|(p, fs)| (p, Region::new(&self.file, p), fs))
    }
}

pub fn inspect(image: &Path, ext4_seed_dirs: &[String]) -> Result<Inspection> {
    let probed = Probed::open(image)?;
    let (table, file) = (&probed.table, &probed.file);
    let mut partitions = Vec::new();
    let mut seed = None;
    let mut provenance = None;
    for (p, region, fs) in probed.partitions() {
        let fs = fs.clone();
        let found = match &fs {
            FsProbe::Vfat { .. } => read_fat_seed(region)?,
            FsProbe::Ext4 { .. } => ext4_seed_dirs
                .iter()
                .find_map(|dir| read_ext4_seed(region, dir)),
            FsProbe::Unknown => None,
        };
        if let Some((dir, files, iid, prov)) = found {
            if seed.is_none() || prov.is_some() {
                seed = Some(SeedInfo {
                    partition: p.index,
                    dir,
                    files,
                    instance_id: iid,
                });
            }
            if prov.is_some() {
                provenance = prov;
            }
        }
        partitions.push(PartitionInfo::new(p, fs));
    }
    // The partition that ends last, when it holds ext4, is the one growpart
    // grows (the root on every board imgbuild knows).
    let root = table
        .partitions
        .iter()
        .max_by_key(|p| p.end())
        .and_then(|p| {
            let sb = ext4::Superblock::read(&Region::new(file, p)).ok()?;
            Some(RootGrowth {
                partition: p.index,
                partition_bytes: p.len,
                fs_bytes: sb.blocks * sb.block_size,
                fs_used_bytes: sb.blocks.saturating_sub(sb.free_blocks) * sb.block_size,
                grows_to: "the end of the device it is flashed to",
            })
        });
    Ok(Inspection {
        image: image.display().to_string(),
        flash_bytes: table.image_size,
        root,
        size: table.image_size,
        table: table.kind.to_string(),
        partitions,
        seed,
        provenance,
    })
}

type Found = (String, Vec<SeedFile>, Option<String>, Option<Provenance>);

fn instance_id(meta: &[u8]) -> Option<String> {
    let v: serde_yaml_ng::Value = serde_yaml_ng::from_slice(meta).ok()?;
    v.get("instance-id")?.as_str().map(str::to_string)
}

fn read_fat_seed(region: Region) -> Result<Option<Found>> {
    let Ok(vol) = FatVolume::open(region) else {
        return Ok(None);
    };
    let entries = vol.list("/")?;
    let files: Vec<SeedFile> = entries
        .iter()
        .filter(|e| !e.is_dir && SEED_FILES.contains(&e.name.as_str()))
        .map(|e| SeedFile {
            name: e.name.clone(),
            size: e.size,
        })
        .collect();
    if files.is_empty() {
        return Ok(None);
    }
    let iid = vol.read_file("/meta-data")?.and_then(|m| instance_id(&m));
    let prov = vol
        .read_file(&format!("/{PROVENANCE_FILE}"))?
        .and_then(|b| serde_json::from_slice(&b).ok());
    Ok(Some(("/".into(), files, iid, prov)))
}

fn read_ext4_seed(region: Region, dir: &str) -> Option<Found> {
    let fs = ext4::open_reader(region).ok()?;
    let dir = dir.trim_end_matches('/');
    let mut files = Vec::new();
    for name in SEED_FILES {
        let path = format!("{dir}/{name}");
        if let Ok(m) = fs.metadata(path.as_str()) {
            files.push(SeedFile {
                name: name.to_string(),
                size: m.len(),
            });
        }
    }
    if files.is_empty() {
        return None;
    }
    // Bounded reads: the image says how large its files are.
    let iid = ext4::read_bounded(&fs, &format!("{dir}/meta-data"), MAX_SEED_FILE)
        .ok()
        .and_then(|m| instance_id(&m));
    let prov = ext4::read_bounded(&fs, &format!("{dir}/{PROVENANCE_FILE}"), MAX_SEED_FILE)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    Some((dir.into(), files, iid, prov))
}
