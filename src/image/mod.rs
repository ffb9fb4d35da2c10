//! Partition tables (GPT and MBR) and partitions as bounded byte regions.
//!
//! Every read or write into an image goes through a [`Region`], which refuses
//! any access outside the partition it was made for.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

pub mod resize;

pub use crate::config::manifest::TableKind;

pub const SECTOR: u64 = 512;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: expected a {expected} partition table, found {found}")]
    WrongTable {
        path: PathBuf,
        expected: TableKind,
        found: String,
    },
    #[error("{path}: the GPT is unreadable: {reason}")]
    BadGpt { path: PathBuf, reason: String },
    #[error("{path}: partition {index} not found (the table has partitions {present})")]
    MissingPartition {
        path: PathBuf,
        index: u32,
        present: String,
    },
    #[error("{path}: partition {index} ({start}..{end}) lies outside the {size}-byte image")]
    OutOfImage {
        path: PathBuf,
        index: u32,
        start: u64,
        end: u64,
        size: u64,
    },
    #[error("access of {len} bytes at offset {offset} is outside the {region_len}-byte region")]
    OutOfRegion {
        offset: u64,
        len: u64,
        region_len: u64,
    },
    #[error("I/O at offset {offset} in the partition: {source}")]
    RegionIo {
        offset: u64,
        #[source]
        source: std::io::Error,
    },
}

/// One partition: its 1-based index and byte extent in the image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Partition {
    pub index: u32,
    pub start: u64,
    pub len: u64,
    /// Type GUID (GPT) or type byte as hex (MBR); informative only.
    pub type_id: String,
    pub name: String,
}

impl Partition {
    pub fn end(&self) -> u64 {
        self.start + self.len
    }

    /// A whole file of `len` bytes taken as one partition (a bare file-system image).
    pub fn whole(len: u64) -> Partition {
        Partition {
            index: 1,
            start: 0,
            len,
            type_id: String::new(),
            name: String::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct PartitionTable {
    pub kind: TableKind,
    pub image_size: u64,
    pub partitions: Vec<Partition>,
}

impl PartitionTable {
    /// Reads the table of `path`, which must be of `expected` kind when given.
    pub fn read(path: &Path, expected: Option<TableKind>) -> Result<Self, ImageError> {
        let io = |source| ImageError::Io {
            path: path.to_owned(),
            source,
        };
        let mut file = File::open(path).map_err(io)?;
        let image_size = file.seek(SeekFrom::End(0)).map_err(io)?;
        let found = detect_kind(&mut file).map_err(io)?;
        let kind = match (found, expected) {
            (Some(k), None) => k,
            (Some(k), Some(e)) if k == e => k,
            (found, Some(expected)) => {
                return Err(ImageError::WrongTable {
                    path: path.to_owned(),
                    expected,
                    found: found.map_or("no partition table".into(), |k| k.to_string()),
                });
            }
            (None, None) => {
                return Err(ImageError::BadGpt {
                    path: path.to_owned(),
                    reason: "no MBR boot signature; this is not a disk image".into(),
                });
            }
        };
        let partitions = match kind {
            TableKind::Gpt => read_gpt(path, file)?,
            TableKind::Mbr => read_mbr(path, &mut file)?,
        };
        for p in &partitions {
            if p.end() > image_size || p.len == 0 {
                return Err(ImageError::OutOfImage {
                    path: path.to_owned(),
                    index: p.index,
                    start: p.start,
                    end: p.end(),
                    size: image_size,
                });
            }
        }
        Ok(PartitionTable {
            kind,
            image_size,
            partitions,
        })
    }

    pub fn get(&self, path: &Path, index: u32) -> Result<&Partition, ImageError> {
        self.partitions
            .iter()
            .find(|p| p.index == index)
            .ok_or_else(|| ImageError::MissingPartition {
                path: path.to_owned(),
                index,
                present: self
                    .partitions
                    .iter()
                    .map(|p| p.index.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }
}

/// A protective MBR (a single 0xEE entry) means GPT; any other valid MBR means MBR.
fn detect_kind(file: &mut File) -> std::io::Result<Option<TableKind>> {
    let mut mbr = [0u8; 512];
    file.seek(SeekFrom::Start(0))?;
    if file.read_exact(&mut mbr).is_err() || mbr[510..512] != [0x55, 0xAA] {
        return Ok(None);
    }
    let types: Vec<u8> = (0..4).map(|i| mbr[446 + i * 16 + 4]).collect();
    if types.contains(&0xEE) {
        return Ok(Some(TableKind::Gpt));
    }
    if types.iter().all(|&t| t == 0) {
        return Ok(None);
    }
    Ok(Some(TableKind::Mbr))
}

fn read_gpt(path: &Path, file: File) -> Result<Vec<Partition>, ImageError> {
    let disk = gpt::GptConfig::new()
        .writable(false)
        .logical_block_size(gpt::disk::LogicalBlockSize::Lb512)
        .open_from_device(file)
        .map_err(|e| ImageError::BadGpt {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    let mut out = Vec::new();
    for (&index, p) in disk.partitions() {
        if !p.is_used() {
            continue;
        }
        if p.last_lba < p.first_lba {
            return Err(ImageError::BadGpt {
                path: path.to_owned(),
                reason: format!("partition {index} ends before it starts"),
            });
        }
        out.push(Partition {
            index,
            start: p.first_lba * SECTOR,
            len: (p.last_lba - p.first_lba + 1) * SECTOR,
            type_id: p.part_type_guid.guid.to_string().to_uppercase(),
            name: p.name.clone(),
        });
    }
    Ok(out)
}

fn read_mbr(path: &Path, file: &mut File) -> Result<Vec<Partition>, ImageError> {
    file.seek(SeekFrom::Start(0))
        .map_err(|source| ImageError::Io {
            path: path.to_owned(),
            source,
        })?;
    let mbr = mbrman::MBR::read_from(file, SECTOR as u32).map_err(|e| ImageError::BadGpt {
        path: path.to_owned(),
        reason: format!("MBR: {e}"),
    })?;
    Ok(mbr
        .iter()
        .filter(|(_, p)| p.is_used())
        .map(|(index, p)| Partition {
            index: index as u32,
            start: u64::from(p.starting_lba) * SECTOR,
            len: u64::from(p.sectors) * SECTOR,
            type_id: format!("0x{:02X}", p.sys),
            name: String::new(),
        })
        .collect())
}

/// A partition of an open image file as a bounded byte range.
#[derive(Clone, Copy)]
pub struct Region<'f> {
    file: &'f File,
    offset: u64,
    len: u64,
}

impl<'f> Region<'f> {
    pub fn new(file: &'f File, part: &Partition) -> Self {
        Region {
            file,
            offset: part.start,
            len: part.len,
        }
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Byte offset of the region in the image file.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    fn check(&self, offset: u64, len: usize) -> Result<(), ImageError> {
        let len = len as u64;
        match offset.checked_add(len) {
            Some(end) if end <= self.len => Ok(()),
            _ => Err(ImageError::OutOfRegion {
                offset,
                len,
                region_len: self.len,
            }),
        }
    }

    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), ImageError> {
        self.check(offset, buf.len())?;
        self.file
            .read_exact_at(buf, self.offset + offset)
            .map_err(|source| ImageError::RegionIo { offset, source })
    }

    pub fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), ImageError> {
        self.check(offset, buf.len())?;
        self.file
            .write_all_at(buf, self.offset + offset)
            .map_err(|source| ImageError::RegionIo { offset, source })
    }
}

impl ext4_view::Ext4Read for Region<'_> {
    fn read(
        &mut self,
        start_byte: u64,
        dst: &mut [u8],
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync + 'static>> {
        Region::read_at(self, start_byte, dst).map_err(|e| Box::new(e) as _)
    }
}

impl Region<'_> {
    /// A new handle to the underlying image file.
    pub fn try_clone_file(&self) -> std::io::Result<File> {
        self.file.try_clone()
    }
}
