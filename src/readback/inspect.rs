//! `imgbuild inspect`: what an image holds and who made it.

use std::path::Path;

use anyhow::{Context, Result};

use crate::fs::{FsProbe, ext4, fat::FatVolume, probe};
use crate::image::{PartitionTable, Region};
use crate::plan::{PROVENANCE_FILE, Provenance};

const SEED_FILES: &[&str] = &["meta-data", "user-data", "network-config", "vendor-data"];

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
            FsProbe::Vfat { .. } => read_fat_seed(p.index, region)?,
            FsProbe::Ext4 { .. } => ext4_seed_dirs
                .iter()
                .find_map(|dir| read_ext4_seed(p.index, region, dir)),
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

/// `meta-data`'s instance-id, when the file is within its caps (a warning
/// names the cap otherwise).
fn instance_id(partition: u32, meta: &[u8]) -> Option<String> {
    use crate::util::prescan;
    if let Err(e) = prescan::yaml("meta-data", meta, prescan::META_DATA) {
        tracing::warn!("partition {partition}: {e}; its instance-id is not shown");
        return None;
    }
    let v: serde_yaml_ng::Value = serde_yaml_ng::from_slice(meta).ok()?;
    v.get("instance-id")?.as_str().map(str::to_string)
}

/// The provenance record, when it is within its caps (a warning names the
/// cap otherwise); an image without a readable one is shown as stock.
fn provenance(partition: u32, record: &[u8]) -> Option<Provenance> {
    match Provenance::read(PROVENANCE_FILE, record) {
        Ok(p) => Some(p),
        Err(crate::plan::ProvenanceError::Limit(e)) => {
            tracing::warn!("partition {partition}: {e}; the image is shown without its provenance");
            None
        }
        Err(_) => None,
    }
}

/// Whether a seed file of `len` bytes is within `limits`; warns when not.
fn within(partition: u32, name: &str, len: u64, limits: crate::util::prescan::Limits) -> bool {
    crate::util::prescan::size(name, len, limits)
        .map_err(|e| tracing::warn!("partition {partition}: {e}; it is not read"))
        .is_ok()
}

fn read_fat_seed(partition: u32, region: Region) -> Result<Option<Found>> {
    use crate::util::prescan::{META_DATA, PROVENANCE};
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
    let size_of = |name: &str| entries.iter().find(|e| e.name == name).map(|e| e.size);
    let read = |name: &str, limits| -> Result<Option<Vec<u8>>> {
        match size_of(name) {
            Some(len) if within(partition, name, len, limits) => {
                Ok(vol.read_file(&format!("/{name}"))?)
            }
            _ => Ok(None),
        }
    };
    let iid = read("meta-data", META_DATA)?.and_then(|m| instance_id(partition, &m));
    let prov = read(PROVENANCE_FILE, PROVENANCE)?.and_then(|b| provenance(partition, &b));
    Ok(Some(("/".into(), files, iid, prov)))
}

fn read_ext4_seed(partition: u32, region: Region, dir: &str) -> Option<Found> {
    use crate::util::prescan::{META_DATA, PROVENANCE};
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
    let read = |name: &str, limits: crate::util::prescan::Limits| {
        let path = format!("{dir}/{name}");
        let len = fs.metadata(path.as_str()).ok()?.len();
        within(partition, name, len, limits)
            .then(|| ext4::read_bounded(&fs, &path, limits.max_bytes).ok())
            .flatten()
    };
    let iid = read("meta-data", META_DATA).and_then(|m| instance_id(partition, &m));
    let prov = read(PROVENANCE_FILE, PROVENANCE).and_then(|b| provenance(partition, &b));
    Some((dir.into(), files, iid, prov))
}
