//! `imgbuild inspect`: what an image holds and who made it.

use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::bake::PROVENANCE_FILE;
use crate::fs::{ext4, fat::FatVolume};
use crate::image::{FsProbe, PartitionTable, Region};

const SEED_FILES: &[&str] = &["meta-data", "user-data", "network-config", "vendor-data"];
const ROOT_SEED_DIR: &str = "/var/lib/cloud/seed/nocloud";

#[derive(Debug, Serialize)]
pub struct Inspection {
    pub image: String,
    pub size: u64,
    pub table: String,
    pub partitions: Vec<PartitionInfo>,
    pub seed: Option<SeedInfo>,
    /// What imgbuild recorded when it made the image; `None` for a stock image.
    pub provenance: Option<serde_json::Value>,
}

#[derive(Debug, Serialize)]
pub struct PartitionInfo {
    pub index: u32,
    pub start: u64,
    pub size: u64,
    pub type_id: String,
    pub fs: FsProbe,
}

#[derive(Debug, Serialize)]
pub struct SeedInfo {
    pub partition: u32,
    pub dir: String,
    pub files: Vec<SeedFile>,
    pub instance_id: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct SeedFile {
    pub name: String,
    pub size: u64,
}

pub fn inspect(image: &Path) -> Result<Inspection> {
    let table = PartitionTable::read(image, None)?;
    let file =
        std::fs::File::open(image).with_context(|| format!("opening {}", image.display()))?;
    let mut partitions = Vec::new();
    let mut seed = None;
    let mut provenance = None;
    for p in &table.partitions {
        let region = Region::new(&file, p);
        let fs = crate::image::probe(&region)?;
        let found = match &fs {
            FsProbe::Vfat { .. } => read_fat_seed(region)?,
            FsProbe::Ext4 { .. } => read_ext4_seed(region),
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
        partitions.push(PartitionInfo {
            index: p.index,
            start: p.start,
            size: p.len,
            type_id: p.type_id.clone(),
            fs,
        });
    }
    Ok(Inspection {
        image: image.display().to_string(),
        size: table.image_size,
        table: table.kind.to_string(),
        partitions,
        seed,
        provenance,
    })
}

type Found = (
    String,
    Vec<SeedFile>,
    Option<String>,
    Option<serde_json::Value>,
);

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

fn read_ext4_seed(region: Region) -> Option<Found> {
    let fs = ext4::open_reader(region).ok()?;
    let mut files = Vec::new();
    for name in SEED_FILES {
        let path = format!("{ROOT_SEED_DIR}/{name}");
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
    let iid = fs
        .read(format!("{ROOT_SEED_DIR}/meta-data").as_str())
        .ok()
        .and_then(|m| instance_id(&m));
    let prov = fs
        .read(format!("{ROOT_SEED_DIR}/{PROVENANCE_FILE}").as_str())
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    Some((ROOT_SEED_DIR.into(), files, iid, prov))
}

/// Human-readable report.
pub fn render_text(i: &Inspection) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "{}: {} bytes, {} partition table\n",
        i.image, i.size, i.table
    ));
    for p in &i.partitions {
        s.push_str(&format!(
            "  p{:<2} start {:>12}  size {:>12}  type {:<38} {}{}\n",
            p.index,
            p.start,
            p.size,
            p.type_id,
            p.fs.kind_name(),
            p.fs.label().map(|l| format!(" {l:?}")).unwrap_or_default()
        ));
    }
    match &i.seed {
        Some(seed) => {
            s.push_str(&format!(
                "cloud-init seed on p{} in {}:\n",
                seed.partition, seed.dir
            ));
            for f in &seed.files {
                s.push_str(&format!("  {:<16} {:>8} bytes\n", f.name, f.size));
            }
            if let Some(iid) = &seed.instance_id {
                s.push_str(&format!("  instance-id: {iid}\n"));
            }
        }
        None => s.push_str("no cloud-init seed found\n"),
    }
    match &i.provenance {
        Some(p) => {
            let get = |k: &str| p.get(k).and_then(|v| v.as_str()).unwrap_or("?").to_string();
            s.push_str(&format!(
                "built by imgbuild {} for node {} ({} board) of cluster {}\n  profile digest {}\n",
                get("imgbuild"),
                get("node"),
                get("board"),
                get("cluster"),
                get("profile_digest")
            ));
            if let Some(files) = p.get("files").and_then(|f| f.as_array()) {
                s.push_str(&format!("  {} file(s) baked:\n", files.len()));
                for f in files {
                    let g = |k: &str| {
                        f.get(k)
                            .map(|v| v.to_string().trim_matches('"').to_string())
                            .unwrap_or_default()
                    };
                    s.push_str(&format!(
                        "    {:<6} {} ({} bytes)\n",
                        g("partition"),
                        g("path"),
                        g("size")
                    ));
                }
            }
        }
        None => s.push_str("stock image (not produced by imgbuild)\n"),
    }
    s
}
