//! Partition tables (GPT and MBR) and partitions as bounded byte regions.
//!
//! Every read or write into an image goes through a [`Region`], which refuses
//! any access outside the partition it was made for. The tables are parsed
//! here (not by a crate) so that every on-disk number is checked before it is
//! used: headers and their CRCs, bounded entry arrays, checked arithmetic, and
//! partitions that lie inside the image and do not overlap.

mod gpt;
mod mbr;

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

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
    #[error("{path}: no partition table (no MBR boot signature); this is not a disk image")]
    NotADisk { path: PathBuf },
    #[error("{path}: the {kind} partition table is unreadable: {reason}")]
    BadTable {
        path: PathBuf,
        kind: TableKind,
        reason: String,
    },
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
    #[error("{path}: partitions {first} and {second} overlap")]
    Overlap {
        path: PathBuf,
        first: u32,
        second: u32,
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    pub index: u32,
    pub start: u64,
    pub len: u64,
    /// Type GUID (GPT) or type byte as hex (MBR); informative only.
    pub type_id: String,
    pub name: String,
}

impl Partition {
    /// The first byte after the partition (saturating: a table never yields
    /// a partition whose end overflows, see [`PartitionTable::read`]).
    pub fn end(&self) -> u64 {
        self.start.saturating_add(self.len)
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

/// A partition's extent in sectors as found on disk, before it is checked.
struct RawPartition {
    index: u32,
    first_lba: u64,
    /// Number of sectors (at least 1 once checked).
    sectors: u64,
    type_id: String,
    name: String,
}

#[derive(Debug, Clone)]
pub struct PartitionTable {
    pub kind: TableKind,
    pub image_size: u64,
    pub partitions: Vec<Partition>,
}

impl PartitionTable {
    /// Reads the table of `path`, which must be of `expected` kind when given.
    ///
    /// Every partition returned lies inside the image, has at least one
    /// sector, and overlaps no other.
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
                return Err(ImageError::NotADisk {
                    path: path.to_owned(),
                });
            }
        };
        let bad = |reason: String| ImageError::BadTable {
            path: path.to_owned(),
            kind,
            reason,
        };
        let raw = match kind {
            TableKind::Gpt => gpt::read(&file, image_size).map_err(|e| match e {
                TableError::Io(source) => io(source),
                TableError::Bad(reason) => bad(reason),
            })?,
            TableKind::Mbr => mbr::read(&file).map_err(|e| match e {
                TableError::Io(source) => io(source),
                TableError::Bad(reason) => bad(reason),
            })?,
        };
        let partitions = checked_partitions(path, raw, image_size)?;
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

/// Errors of the table parsers, given the image path by [`PartitionTable::read`].
enum TableError {
    Io(std::io::Error),
    Bad(String),
}

impl From<std::io::Error> for TableError {
    fn from(e: std::io::Error) -> Self {
        TableError::Io(e)
    }
}

/// Byte extents from sector numbers with checked arithmetic; every partition
/// inside the image and no two overlapping.
fn checked_partitions(
    path: &Path,
    raw: Vec<RawPartition>,
    image_size: u64,
) -> Result<Vec<Partition>, ImageError> {
    let mut out: Vec<Partition> = Vec::with_capacity(raw.len());
    for r in raw {
        let start = r.first_lba.checked_mul(SECTOR);
        let len = r.sectors.checked_mul(SECTOR);
        let end = start.zip(len).and_then(|(s, l)| s.checked_add(l));
        match (start, len, end) {
            (Some(start), Some(len), Some(end)) if len > 0 && end <= image_size => {
                out.push(Partition {
                    index: r.index,
                    start,
                    len,
                    type_id: r.type_id,
                    name: r.name,
                })
            }
            _ => {
                return Err(ImageError::OutOfImage {
                    path: path.to_owned(),
                    index: r.index,
                    start: start.unwrap_or(u64::MAX),
                    end: end.unwrap_or(u64::MAX),
                    size: image_size,
                });
            }
        }
    }
    let mut by_start: Vec<&Partition> = out.iter().collect();
    by_start.sort_by_key(|p| p.start);
    for w in by_start.windows(2) {
        if w[0].end() > w[1].start {
            return Err(ImageError::Overlap {
                path: path.to_owned(),
                first: w[0].index.min(w[1].index),
                second: w[0].index.max(w[1].index),
            });
        }
    }
    Ok(out)
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

    /// The absolute file offset of `len` bytes at `offset` in the region,
    /// or an error when any of them lies outside it.
    fn check(&self, offset: u64, len: usize) -> Result<u64, ImageError> {
        let len = len as u64;
        let inside = offset
            .checked_add(len)
            .filter(|&end| end <= self.len)
            .and_then(|_| self.offset.checked_add(offset));
        inside.ok_or(ImageError::OutOfRegion {
            offset,
            len,
            region_len: self.len,
        })
    }

    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), ImageError> {
        let at = self.check(offset, buf.len())?;
        self.file
            .read_exact_at(buf, at)
            .map_err(|source| ImageError::RegionIo { offset, source })
    }

    pub fn write_at(&self, offset: u64, buf: &[u8]) -> Result<(), ImageError> {
        let at = self.check(offset, buf.len())?;
        self.file
            .write_all_at(buf, at)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_region_refuses_every_access_outside_itself() {
        let f = tempfile::tempfile().unwrap();
        f.set_len(4096).unwrap();
        let part = Partition {
            index: 1,
            start: 1024,
            len: 2048,
            type_id: String::new(),
            name: String::new(),
        };
        let r = Region::new(&f, &part);
        let mut buf = [0u8; 16];
        assert!(r.read_at(2032, &mut buf).is_ok());
        for offset in [2033, 2048, u64::MAX - 8, u64::MAX] {
            assert!(matches!(
                r.read_at(offset, &mut buf),
                Err(ImageError::OutOfRegion { .. })
            ));
            assert!(matches!(
                r.write_at(offset, &buf),
                Err(ImageError::OutOfRegion { .. })
            ));
        }
        // A region placed near the end of the address space cannot wrap either.
        let far = Partition {
            start: u64::MAX - 100,
            len: 200,
            ..part
        };
        let r = Region::new(&f, &far);
        assert!(matches!(
            r.read_at(150, &mut buf),
            Err(ImageError::OutOfRegion { .. })
        ));
    }
}
