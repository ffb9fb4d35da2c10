//! A small FAT32 editor: read, create, replace and remove files and create
//! directories on a FAT32 volume inside a partition [`Region`].
//!
//! Written here because fatfs 0.3 and mtools refuse the RK1 `CIDATA` volume:
//! `mkfs.vfat -F32` on 4 MiB gives a volume that is FAT32 by its BPB (16-bit
//! FAT size field is 0) but has fewer clusters than the spec's FAT32 minimum.
//! Like the Linux kernel and dosfstools, this code takes the FAT type from the
//! BPB. FAT12/16 volumes are refused rather than guessed at.
//!
//! Writes touch only: the FAT sectors whose entries change (in every FAT copy),
//! the clusters of files and directories being written, and the FSInfo sector.
//!
//! Nothing on disk is trusted: memory stays bounded whatever the BPB says (the
//! FAT is read a chunk at a time, never whole; a directory is at most 2 MiB,
//! as the specification allows; a file read at most [`MAX_READ`] bytes), and
//! before the first change the whole volume's cluster chains are checked
//! (loops, cross-links, out-of-range and bad clusters, lengths that disagree
//! with file sizes): a damaged volume is refused, never "repaired".

use std::cell::RefCell;
use std::collections::{BTreeMap, HashSet};

use crate::image::{ImageError, Region};

#[derive(Debug, thiserror::Error)]
pub enum FatError {
    #[error(transparent)]
    Io(#[from] ImageError),
    #[error("not a FAT file system: {0}")]
    NotFat(String),
    #[error("FAT12/FAT16 volumes are not supported (only FAT32, as on the Ubuntu images)")]
    NotFat32,
    #[error("corrupt FAT volume: {0}")]
    Corrupt(String),
    #[error(
        "the FAT volume is damaged ({0}); refusing to change it. Check and repair it with `fsck.fat -a` first"
    )]
    Damaged(String),
    #[error("no space left on the FAT volume: {needed} bytes needed, {free} bytes free")]
    NoSpace { needed: u64, free: u64 },
    #[error("{path}: {reason}")]
    Path { path: String, reason: String },
}

type Result<T> = std::result::Result<T, FatError>;

const EOC: u32 = 0x0FFF_FFFF;
const BAD_CLUSTER: u32 = 0x0FFF_FFF7;
/// The most clusters a FAT32 volume can have.
const MAX_CLUSTERS: u64 = 0x0FFF_FFF5;
/// A directory holds at most 65536 entries of 32 bytes (FAT specification).
const MAX_DIR_BYTES: u64 = 65_536 * 32;
/// The largest file [`FatVolume::read_file`] reads (seed files and kernel
/// command lines are a few KiB).
pub const MAX_READ: u64 = 16 << 20;
/// FAT bytes read at a time.
const FAT_CHUNK: u64 = 64 * 1024;
const ATTR_DIR: u8 = 0x10;
const ATTR_ARCHIVE: u8 = 0x20;
const ATTR_VOLUME: u8 = 0x08;
const ATTR_LFN: u8 = 0x0F;

#[derive(Debug, Clone, Copy)]
struct Geometry {
    bytes_per_sector: u64,
    cluster_size: u64,
    fat_offset: u64,
    fat_size: u64,
    num_fats: u64,
    data_offset: u64,
    cluster_count: u32,
    root_cluster: u32,
    fsinfo_offset: Option<u64>,
}

/// An entry of a directory listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub name: String,
    pub is_dir: bool,
    pub size: u64,
}

#[derive(Debug, Clone)]
struct RawEntry {
    /// Slot of the first LFN entry (or of the short entry when there is none).
    first_slot: usize,
    /// Slot of the 8.3 entry.
    slot: usize,
    name: String,
    short: [u8; 11],
    attr: u8,
    cluster: u32,
    size: u32,
}

impl RawEntry {
    fn is_dir(&self) -> bool {
        self.attr & ATTR_DIR != 0
    }
}

/// A directory loaded into memory with the clusters it occupies.
struct Dir {
    chain: Vec<u32>,
    /// Cluster number of the directory itself (for `..` of children); 0 for root.
    self_ref: u32,
    data: Vec<u8>,
}

pub struct FatVolume<'f> {
    region: Region<'f>,
    geo: Geometry,
    /// FAT entries changed and not yet flushed, by cluster.
    dirty: BTreeMap<u32, u32>,
    /// The last chunk of the first FAT read: (byte offset in the FAT, bytes).
    chunk: RefCell<Option<(u64, Vec<u8>)>>,
    /// Whether the volume's chains were checked (done before the first change).
    checked: bool,
    last_alloc: Option<u32>,
    /// FAT timestamp (date, time) given to new entries.
    stamp: (u16, u16),
}

impl<'f> FatVolume<'f> {
    pub fn open(region: Region<'f>) -> Result<Self> {
        let mut bs = [0u8; 512];
        region.read_at(0, &mut bs)?;
        if bs[510..512] != [0x55, 0xAA] {
            return Err(FatError::NotFat("no boot sector signature".into()));
        }
        let le16 = |o: usize| u16::from_le_bytes([bs[o], bs[o + 1]]) as u64;
        let le32 = |o: usize| u32::from_le_bytes(bs[o..o + 4].try_into().unwrap()) as u64;
        let bps = le16(11);
        let spc = bs[13] as u64;
        let reserved = le16(14);
        let num_fats = bs[16] as u64;
        let root_entries = le16(17);
        let total = if le16(19) != 0 { le16(19) } else { le32(32) };
        if ![512, 1024, 2048, 4096].contains(&bps) || spc == 0 || !spc.is_power_of_two() {
            return Err(FatError::NotFat(format!(
                "bytes per sector {bps}, sectors per cluster {spc}"
            )));
        }
        if reserved == 0 || num_fats == 0 || total == 0 {
            return Err(FatError::NotFat(
                "zero reserved sectors, FATs or size".into(),
            ));
        }
        if le16(22) != 0 {
            return Err(FatError::NotFat32);
        }
        let fat_sectors = le32(36);
        if root_entries != 0 || fat_sectors == 0 {
            return Err(FatError::Corrupt(
                "FAT32 BPB with a fixed root directory".into(),
            ));
        }
        if total * bps > region.len() {
            return Err(FatError::Corrupt(format!(
                "the volume claims {} bytes but its partition has {}",
                total * bps,
                region.len()
            )));
        }
        let meta = reserved + num_fats * fat_sectors;
        if meta >= total {
            return Err(FatError::Corrupt("FATs larger than the volume".into()));
        }
        let cluster_count = (total - meta) / spc;
        if cluster_count == 0 || cluster_count > MAX_CLUSTERS {
            return Err(FatError::Corrupt(format!(
                "{cluster_count} clusters (FAT32 has 1 to {MAX_CLUSTERS})"
            )));
        }
        if cluster_count + 2 > fat_sectors * bps / 4 {
            return Err(FatError::Corrupt(
                "FAT too small for the cluster count".into(),
            ));
        }
        let root_cluster = le32(44) as u32;
        let fsinfo = le16(48);
        let geo = Geometry {
            bytes_per_sector: bps,
            cluster_size: bps * spc,
            fat_offset: reserved * bps,
            fat_size: fat_sectors * bps,
            num_fats,
            data_offset: meta * bps,
            cluster_count: cluster_count as u32,
            root_cluster,
            fsinfo_offset: (fsinfo != 0 && fsinfo != 0xFFFF && fsinfo < reserved)
                .then_some(fsinfo * bps),
        };
        if !(2..geo.cluster_count + 2).contains(&root_cluster) {
            return Err(FatError::Corrupt(format!(
                "root cluster {root_cluster} out of range"
            )));
        }
        Ok(FatVolume {
            region,
            geo,
            dirty: BTreeMap::new(),
            chunk: RefCell::new(None),
            checked: false,
            last_alloc: None,
            stamp: fat_timestamp(315_532_800),
        })
    }

    /// Timestamps given to entries created from now on (Unix seconds, UTC).
    pub fn set_timestamp(&mut self, unix: u64) {
        self.stamp = fat_timestamp(unix);
    }

    pub fn cluster_size(&self) -> u64 {
        self.geo.cluster_size
    }

    /// Free space; unreadable parts of the FAT count as used.
    pub fn free_bytes(&self) -> u64 {
        self.free_clusters().unwrap_or(0) as u64 * self.geo.cluster_size
    }

    /// Counts free clusters, reading the FAT a chunk at a time.
    fn free_clusters(&self) -> Result<u32> {
        let mut free = 0u32;
        let total = self.geo.cluster_count + 2;
        let mut c = 2u32;
        while c < total {
            if self.entry(c)? == 0 {
                free += 1;
            }
            c += 1;
        }
        Ok(free)
    }

    /// The FAT entry of `cluster` (`cluster` < cluster count + 2), low 28 bits.
    fn entry(&self, cluster: u32) -> Result<u32> {
        if let Some(&v) = self.dirty.get(&cluster) {
            return Ok(v & 0x0FFF_FFFF);
        }
        Ok(self.raw_entry(cluster)? & 0x0FFF_FFFF)
    }

    /// The entry as stored in the first FAT, through a one-chunk cache.
    fn raw_entry(&self, cluster: u32) -> Result<u32> {
        let at = u64::from(cluster) * 4;
        let base = at - at % FAT_CHUNK;
        let mut cache = self.chunk.borrow_mut();
        let hit = matches!(&*cache, Some((b, _)) if *b == base);
        if !hit {
            let len = FAT_CHUNK.min(self.geo.fat_size - base) as usize;
            let mut buf = vec![0u8; len];
            self.region.read_at(self.geo.fat_offset + base, &mut buf)?;
            *cache = Some((base, buf));
        }
        let (_, buf) = cache.as_ref().expect("filled above");
        let o = (at - base) as usize;
        Ok(u32::from_le_bytes([
            buf[o],
            buf[o + 1],
            buf[o + 2],
            buf[o + 3],
        ]))
    }

    /// The volume label: the root directory's label entry, else the BPB's.
    pub fn label(&self) -> String {
        if let Ok(dir) = self.load_dir(self.geo.root_cluster, 0) {
            for slot in 0..dir.data.len() / 32 {
                let e = &dir.data[slot * 32..slot * 32 + 32];
                if e[0] == 0 {
                    break;
                }
                if e[0] != 0xE5
                    && e[11] & 0x3F != ATTR_LFN
                    && e[11] & (ATTR_VOLUME | ATTR_DIR) == ATTR_VOLUME
                {
                    return String::from_utf8_lossy(&e[..11]).trim_end().to_string();
                }
            }
        }
        let mut bs = [0u8; 82];
        if self.region.read_at(0, &mut bs).is_ok() {
            return String::from_utf8_lossy(&bs[71..82]).trim_end().to_string();
        }
        String::new()
    }

    fn in_range(&self, cluster: u32) -> bool {
        (2..self.geo.cluster_count + 2).contains(&cluster)
    }

    fn next(&self, cluster: u32) -> Result<Option<u32>> {
        match self.entry(cluster)? {
            0x0FFF_FFF8..=0x0FFF_FFFF => Ok(None),
            BAD_CLUSTER => Err(FatError::Corrupt(format!(
                "cluster {cluster} links to a cluster marked bad"
            ))),
            v if self.in_range(v) => Ok(Some(v)),
            v => Err(FatError::Corrupt(format!(
                "cluster {cluster} links to invalid cluster {v:#x}"
            ))),
        }
    }

    /// The chain from `start`, at most `limit` clusters long (longer is an error,
    /// which also ends loops).
    fn chain(&self, start: u32, limit: usize) -> Result<Vec<u32>> {
        let mut out = Vec::new();
        if start == 0 {
            return Ok(out);
        }
        if !self.in_range(start) {
            return Err(FatError::Corrupt(format!(
                "chain starts at invalid cluster {start}"
            )));
        }
        let mut c = Some(start);
        while let Some(cur) = c {
            if out.len() >= limit {
                return Err(FatError::Corrupt(format!(
                    "the cluster chain from {start} is longer than {limit} clusters (a loop, or a size that disagrees with it)"
                )));
            }
            out.push(cur);
            c = self.next(cur)?;
        }
        Ok(out)
    }

    /// Clusters a directory may have.
    fn dir_limit(&self) -> usize {
        (MAX_DIR_BYTES / self.geo.cluster_size).max(1) as usize
    }

    /// Clusters a file of `size` bytes has.
    fn clusters_for(&self, size: u64) -> usize {
        size.div_ceil(self.geo.cluster_size) as usize
    }

    /// Checks every chain of the volume before the first change: each
    /// cluster belongs to at most one file or directory (no loops, no
    /// cross-links), every link is in range and not bad, and each file's chain
    /// has exactly the clusters its size needs. Memory: one bit per cluster.
    fn ensure_checked(&mut self) -> Result<()> {
        if self.checked {
            return Ok(());
        }
        let damaged = |e: FatError| match e {
            FatError::Corrupt(m) => FatError::Damaged(m),
            e => e,
        };
        let mut seen = vec![0u64; (self.geo.cluster_count as usize + 2).div_ceil(64)];
        let mut mark = |chain: &[u32], what: &str| -> Result<()> {
            for &c in chain {
                let (w, b) = (c as usize / 64, c % 64);
                if seen[w] & (1 << b) != 0 {
                    return Err(FatError::Damaged(format!(
                        "cluster {c} of {what} is also used elsewhere (cross-linked or looping chains)"
                    )));
                }
                seen[w] |= 1 << b;
            }
            Ok(())
        };
        let root = self.geo.root_cluster;
        let mut stack = vec![(root, "/".to_string())];
        while let Some((cluster, path)) = stack.pop() {
            let chain = self.chain(cluster, self.dir_limit()).map_err(damaged)?;
            mark(&chain, &path)?;
            let data = self.read_chain(&chain)?;
            for e in parse_entries(&data) {
                if e.name == "." || e.name == ".." {
                    continue;
                }
                let child = format!("{}{}", path, e.name);
                if e.is_dir() {
                    if e.cluster == 0 {
                        return Err(FatError::Damaged(format!(
                            "directory {child} has no clusters"
                        )));
                    }
                    stack.push((e.cluster, format!("{child}/")));
                    continue;
                }
                let need = self.clusters_for(u64::from(e.size));
                let chain = self.chain(e.cluster, need).map_err(damaged)?;
                if chain.len() != need {
                    return Err(FatError::Damaged(format!(
                        "{child} has {} bytes but {} clusters",
                        e.size,
                        chain.len()
                    )));
                }
                mark(&chain, &child)?;
            }
        }
        self.checked = true;
        Ok(())
    }

    fn cluster_offset(&self, cluster: u32) -> u64 {
        self.geo.data_offset + (cluster as u64 - 2) * self.geo.cluster_size
    }

    fn read_chain(&self, chain: &[u32]) -> Result<Vec<u8>> {
        let cs = self.geo.cluster_size as usize;
        let mut data = vec![0u8; chain.len() * cs];
        for (i, &c) in chain.iter().enumerate() {
            self.region
                .read_at(self.cluster_offset(c), &mut data[i * cs..(i + 1) * cs])?;
        }
        Ok(data)
    }

    fn write_chain(&self, chain: &[u32], data: &[u8]) -> Result<()> {
        let cs = self.geo.cluster_size as usize;
        for (i, &c) in chain.iter().enumerate() {
            let start = i * cs;
            let end = (start + cs).min(data.len());
            let mut buf = vec![0u8; cs];
            if start < data.len() {
                buf[..end - start].copy_from_slice(&data[start..end]);
            }
            self.region.write_at(self.cluster_offset(c), &buf)?;
        }
        Ok(())
    }

    fn set_fat(&mut self, cluster: u32, value: u32) -> Result<()> {
        // The top four bits are reserved and must be kept.
        let old = match self.dirty.get(&cluster) {
            Some(&v) => v,
            None => self.raw_entry(cluster)?,
        };
        self.dirty
            .insert(cluster, (old & 0xF000_0000) | (value & 0x0FFF_FFFF));
        Ok(())
    }

    fn allocate(&mut self, count: usize) -> Result<Vec<u32>> {
        if count == 0 {
            return Ok(Vec::new());
        }
        let mut got = Vec::with_capacity(count.min(1 << 16));
        let first = self.last_alloc.map_or(2, |c| c + 1);
        let total = self.geo.cluster_count + 2;
        let order = (first..total).chain(2..first.min(total));
        for c in order {
            if self.entry(c)? == 0 {
                got.push(c);
                if got.len() == count {
                    break;
                }
            }
        }
        if got.len() < count {
            return Err(FatError::NoSpace {
                needed: count as u64 * self.geo.cluster_size,
                free: got.len() as u64 * self.geo.cluster_size,
            });
        }
        for i in 1..got.len() {
            self.set_fat(got[i - 1], got[i])?;
        }
        let last = *got.last().expect("count > 0");
        self.set_fat(last, EOC)?;
        self.last_alloc = Some(last);
        Ok(got)
    }

    /// Frees the chain of a file of `size` bytes (checked to match by [`Self::ensure_checked`]).
    fn free_chain(&mut self, start: u32, size: u64) -> Result<()> {
        for c in self.chain(start, self.clusters_for(size))? {
            self.set_fat(c, 0)?;
        }
        Ok(())
    }

    fn load_dir(&self, cluster: u32, self_ref: u32) -> Result<Dir> {
        let chain = self.chain(cluster, self.dir_limit())?;
        if chain.is_empty() {
            return Err(FatError::Corrupt("directory with no clusters".into()));
        }
        let data = self.read_chain(&chain)?;
        Ok(Dir {
            chain,
            self_ref,
            data,
        })
    }

    fn store_dir(&self, dir: &Dir) -> Result<()> {
        self.write_chain(&dir.chain, &dir.data)
    }

    /// Walks `path` (components separated by `/`) to a directory.
    fn open_dir(&self, path: &str) -> Result<Dir> {
        let mut dir = self.load_dir(self.geo.root_cluster, 0)?;
        for comp in components(path) {
            let e = find(&dir.data, comp).ok_or_else(|| FatError::Path {
                path: path.into(),
                reason: format!("no directory named {comp:?}"),
            })?;
            if !e.is_dir() {
                return Err(FatError::Path {
                    path: path.into(),
                    reason: format!("{comp:?} is a file, not a directory"),
                });
            }
            dir = self.load_dir(e.cluster, e.cluster)?;
        }
        Ok(dir)
    }

    pub fn list(&self, path: &str) -> Result<Vec<DirEntry>> {
        let dir = self.open_dir(path)?;
        Ok(parse_entries(&dir.data)
            .into_iter()
            .filter(|e| e.name != "." && e.name != "..")
            .map(|e| DirEntry {
                is_dir: e.is_dir(),
                size: e.size as u64,
                name: e.name,
            })
            .collect())
    }

    /// Reads a file; `None` when it does not exist.
    pub fn read_file(&self, path: &str) -> Result<Option<Vec<u8>>> {
        let (parent, name) = split_parent(path)?;
        let dir = match self.open_dir(parent) {
            Ok(d) => d,
            Err(FatError::Path { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let Some(e) = find(&dir.data, name) else {
            return Ok(None);
        };
        if e.is_dir() {
            return Err(FatError::Path {
                path: path.into(),
                reason: "is a directory".into(),
            });
        }
        if u64::from(e.size) > MAX_READ {
            return Err(FatError::Path {
                path: path.into(),
                reason: format!(
                    "{} bytes is more than the {MAX_READ} bytes imgbuild reads from a FAT volume",
                    e.size
                ),
            });
        }
        let need = self.clusters_for(u64::from(e.size));
        let chain = self.chain(e.cluster, need)?;
        if chain.len() < need {
            return Err(FatError::Corrupt(format!(
                "{path}: {} bytes but only {} clusters",
                e.size,
                chain.len()
            )));
        }
        let mut data = self.read_chain(&chain)?;
        data.truncate(e.size as usize);
        Ok(Some(data))
    }

    /// Creates or replaces a file, creating missing parent directories.
    pub fn write_file(&mut self, path: &str, contents: &[u8]) -> Result<()> {
        let size = u32::try_from(contents.len()).map_err(|_| FatError::Path {
            path: path.into(),
            reason: "files on FAT must be smaller than 4 GiB".into(),
        })?;
        let (parent, name) = split_parent(path)?;
        validate_name(path, name)?;
        self.ensure_checked()?;
        let mut dir = self.mkdir_p(parent)?;
        self.remove_in(&mut dir, path, name)?;
        let clusters = (contents.len() as u64).div_ceil(self.geo.cluster_size) as usize;
        let needed = contents.len() as u64;
        let chain = self.allocate(clusters).map_err(|e| match e {
            FatError::NoSpace { free, .. } => FatError::NoSpace { needed, free },
            e => e,
        })?;
        self.write_chain(&chain, contents)?;
        let first = chain.first().copied().unwrap_or(0);
        self.add_entry(&mut dir, name, ATTR_ARCHIVE, first, size)?;
        self.store_dir(&dir)
    }

    /// Removes a file; returns whether it existed.
    pub fn remove_file(&mut self, path: &str) -> Result<bool> {
        let (parent, name) = split_parent(path)?;
        self.ensure_checked()?;
        let mut dir = match self.open_dir(parent) {
            Ok(d) => d,
            Err(FatError::Path { .. }) => return Ok(false),
            Err(e) => return Err(e),
        };
        let existed = self.remove_in(&mut dir, path, name)?;
        self.store_dir(&dir)?;
        Ok(existed)
    }

    pub fn mkdir_all(&mut self, path: &str) -> Result<()> {
        self.ensure_checked()?;
        self.mkdir_p(path).map(|_| ())
    }

    fn remove_in(&mut self, dir: &mut Dir, path: &str, name: &str) -> Result<bool> {
        let Some(e) = find(&dir.data, name) else {
            return Ok(false);
        };
        if e.is_dir() {
            return Err(FatError::Path {
                path: path.into(),
                reason: "a directory is in the way".into(),
            });
        }
        self.free_chain(e.cluster, u64::from(e.size))?;
        for slot in e.first_slot..=e.slot {
            dir.data[slot * 32] = 0xE5;
        }
        Ok(true)
    }

    fn mkdir_p(&mut self, path: &str) -> Result<Dir> {
        let mut dir = self.load_dir(self.geo.root_cluster, 0)?;
        for comp in components(path) {
            let existing = find(&dir.data, comp);
            let cluster = match existing {
                Some(e) if e.is_dir() => e.cluster,
                Some(_) => {
                    return Err(FatError::Path {
                        path: path.into(),
                        reason: format!("{comp:?} is a file, not a directory"),
                    });
                }
                None => {
                    validate_name(path, comp)?;
                    let c = self.allocate(1)?[0];
                    let mut data = vec![0u8; self.geo.cluster_size as usize];
                    let (date, time) = self.stamp;
                    data[..32].copy_from_slice(&short_entry(
                        *b".          ",
                        ATTR_DIR,
                        0,
                        c,
                        0,
                        date,
                        time,
                    ));
                    data[32..64].copy_from_slice(&short_entry(
                        *b"..         ",
                        ATTR_DIR,
                        0,
                        dir.self_ref,
                        0,
                        date,
                        time,
                    ));
                    self.write_chain(&[c], &data)?;
                    self.add_entry(&mut dir, comp, ATTR_DIR, c, 0)?;
                    self.store_dir(&dir)?;
                    c
                }
            };
            dir = self.load_dir(cluster, cluster)?;
        }
        Ok(dir)
    }

    fn add_entry(
        &mut self,
        dir: &mut Dir,
        name: &str,
        attr: u8,
        cluster: u32,
        size: u32,
    ) -> Result<()> {
        let taken: HashSet<[u8; 11]> = parse_entries(&dir.data).iter().map(|e| e.short).collect();
        let (short, case_flags, lfn) = short_name(name, &taken);
        let checksum = lfn_checksum(&short);
        let mut slots: Vec<[u8; 32]> = match &lfn {
            Some(units) => lfn_entries(units, checksum),
            None => Vec::new(),
        };
        let (date, time) = self.stamp;
        slots.push(short_entry(
            short, attr, case_flags, cluster, size, date, time,
        ));
        let start = loop {
            if let Some(s) = free_run(&dir.data, slots.len()) {
                break s;
            }
            if dir.chain.len() >= self.dir_limit() {
                return Err(FatError::Path {
                    path: name.into(),
                    reason: "the directory is full (65536 entries)".into(),
                });
            }
            let c = self.allocate(1)?[0];
            self.set_fat(*dir.chain.last().expect("a directory has clusters"), c)?;
            dir.chain.push(c);
            dir.data
                .resize(dir.data.len() + self.geo.cluster_size as usize, 0);
        };
        for (i, s) in slots.iter().enumerate() {
            let o = (start + i) * 32;
            dir.data[o..o + 32].copy_from_slice(s);
        }
        Ok(())
    }

    /// Writes the changed FAT sectors to every FAT copy and updates FSInfo.
    pub fn flush(&mut self) -> Result<()> {
        if self.dirty.is_empty() {
            return Ok(());
        }
        let bps = self.geo.bytes_per_sector;
        let mut sectors: BTreeMap<u64, Vec<(usize, u32)>> = BTreeMap::new();
        for (&c, &v) in &self.dirty {
            let at = u64::from(c) * 4;
            sectors
                .entry(at / bps)
                .or_default()
                .push(((at % bps) as usize, v));
        }
        for (sector, entries) in sectors {
            let mut buf = vec![0u8; bps as usize];
            self.region
                .read_at(self.geo.fat_offset + sector * bps, &mut buf)?;
            for (o, v) in entries {
                buf[o..o + 4].copy_from_slice(&v.to_le_bytes());
            }
            for copy in 0..self.geo.num_fats {
                let at = self.geo.fat_offset + copy * self.geo.fat_size + sector * bps;
                self.region.write_at(at, &buf)?;
            }
        }
        self.dirty.clear();
        *self.chunk.borrow_mut() = None;
        if let Some(off) = self.geo.fsinfo_offset {
            let mut info = [0u8; 512];
            self.region.read_at(off, &mut info)?;
            let valid = info[0..4] == 0x4161_5252u32.to_le_bytes()
                && info[484..488] == 0x6141_7272u32.to_le_bytes();
            if valid {
                info[488..492].copy_from_slice(&self.free_clusters()?.to_le_bytes());
                if let Some(c) = self.last_alloc {
                    info[492..496].copy_from_slice(&c.to_le_bytes());
                }
                self.region.write_at(off, &info)?;
            }
        }
        Ok(())
    }
}

fn components(path: &str) -> impl Iterator<Item = &str> {
    path.split('/').filter(|c| !c.is_empty() && *c != ".")
}

fn split_parent(path: &str) -> Result<(&str, &str)> {
    let trimmed = path.trim_end_matches('/');
    let (parent, name) = trimmed.rsplit_once('/').unwrap_or(("", trimmed));
    if name.is_empty() || name == "." || name == ".." {
        return Err(FatError::Path {
            path: path.into(),
            reason: "needs a file name".into(),
        });
    }
    Ok((parent, name))
}

fn validate_name(path: &str, name: &str) -> Result<()> {
    match crate::util::names::fat_name_error(name) {
        Some(reason) => Err(FatError::Path {
            path: path.into(),
            reason,
        }),
        None => Ok(()),
    }
}

fn find(dir_data: &[u8], name: &str) -> Option<RawEntry> {
    let want = name.to_uppercase();
    parse_entries(dir_data).into_iter().find(|e| {
        e.name.to_uppercase() == want || short_display(&e.short, 0).to_uppercase() == want
    })
}

fn free_run(data: &[u8], n: usize) -> Option<usize> {
    let slots = data.len() / 32;
    let mut run = 0;
    for s in 0..slots {
        let b = data[s * 32];
        if b == 0x00 || b == 0xE5 {
            run += 1;
            if run == n {
                return Some(s + 1 - n);
            }
        } else {
            run = 0;
        }
    }
    None
}

fn parse_entries(data: &[u8]) -> Vec<RawEntry> {
    let mut out = Vec::new();
    let mut lfn: Vec<u16> = Vec::new();
    let mut lfn_start = None;
    let mut lfn_sum = 0u8;
    let mut lfn_next = 0u8;
    for slot in 0..data.len() / 32 {
        let e = &data[slot * 32..slot * 32 + 32];
        if e[0] == 0x00 {
            break;
        }
        if e[0] == 0xE5 {
            lfn_start = None;
            continue;
        }
        let attr = e[11];
        if attr & 0x3F == ATTR_LFN {
            let seq = e[0] & 0x1F;
            if e[0] & 0x40 != 0 {
                lfn = vec![0u16; seq as usize * 13];
                lfn_start = Some(slot);
                lfn_sum = e[13];
            } else if lfn_start.is_none() || seq != lfn_next || e[13] != lfn_sum {
                lfn_start = None;
                continue;
            }
            if seq == 0 || seq as usize * 13 > lfn.len() {
                lfn_start = None;
                continue;
            }
            let base = (seq as usize - 1) * 13;
            for (i, off) in [1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30]
                .iter()
                .enumerate()
            {
                lfn[base + i] = u16::from_le_bytes([e[*off], e[off + 1]]);
            }
            lfn_next = seq - 1;
            continue;
        }
        let mut short = [0u8; 11];
        short.copy_from_slice(&e[..11]);
        if attr & ATTR_VOLUME != 0 {
            lfn_start = None;
            continue;
        }
        let long = match lfn_start {
            Some(_) if lfn_next == 0 && lfn_checksum(&short) == lfn_sum => {
                let end = lfn.iter().position(|&u| u == 0).unwrap_or(lfn.len());
                Some(String::from_utf16_lossy(&lfn[..end]))
            }
            _ => None,
        };
        let first_slot = if long.is_some() {
            lfn_start.unwrap()
        } else {
            slot
        };
        lfn_start = None;
        let hi = u16::from_le_bytes([e[20], e[21]]) as u32;
        let lo = u16::from_le_bytes([e[26], e[27]]) as u32;
        out.push(RawEntry {
            first_slot,
            slot,
            name: long.unwrap_or_else(|| short_display(&short, e[12])),
            short,
            attr,
            cluster: (hi << 16) | lo,
            size: u32::from_le_bytes(e[28..32].try_into().unwrap()),
        });
    }
    out
}

fn short_display(short: &[u8; 11], case_flags: u8) -> String {
    let mut base: Vec<u8> = short[..8].to_vec();
    if base[0] == 0x05 {
        base[0] = 0xE5;
    }
    let mut base = String::from_utf8_lossy(&base).trim_end().to_string();
    let mut ext = String::from_utf8_lossy(&short[8..]).trim_end().to_string();
    if case_flags & 0x08 != 0 {
        base = base.to_lowercase();
    }
    if case_flags & 0x10 != 0 {
        ext = ext.to_lowercase();
    }
    if ext.is_empty() {
        base
    } else {
        format!("{base}.{ext}")
    }
}

fn is_short_char(c: char) -> bool {
    c.is_ascii_uppercase() || c.is_ascii_digit() || "$%'-_@~`!(){}^#&".contains(c)
}

/// The 8.3 name for `name`, its lower-case flags, and the LFN (UTF-16) when one is needed.
fn short_name(name: &str, taken: &HashSet<[u8; 11]>) -> ([u8; 11], u8, Option<Vec<u16>>) {
    let (base, ext) = match name.rsplit_once('.') {
        Some((b, e)) if !b.is_empty() => (b, e),
        _ => (name, ""),
    };
    let fits = |s: &str, max: usize| {
        s.len() <= max && s.chars().all(|c| is_short_char(c.to_ascii_uppercase()))
    };
    // Like Linux's default `shortname=mixed`: an 8.3 name is stored upper case,
    // with a long-name entry whenever the name is not all upper case, so readers
    // that ignore the NT case flags still see the right spelling.
    let has_lower = name.chars().any(|c| c.is_ascii_lowercase());
    if !base.is_empty() && fits(base, 8) && fits(ext, 3) && !base.starts_with('.') {
        let mut short = [b' '; 11];
        short[..base.len()].copy_from_slice(base.to_ascii_uppercase().as_bytes());
        short[8..8 + ext.len()].copy_from_slice(ext.to_ascii_uppercase().as_bytes());
        if !taken.contains(&short) {
            let lfn = has_lower.then(|| name.encode_utf16().collect());
            return (short, 0, lfn);
        }
    }
    let clean = |s: &str| -> String {
        s.chars()
            .filter(|&c| c != ' ' && c != '.')
            .map(|c| {
                let u = c.to_ascii_uppercase();
                if is_short_char(u) { u } else { '_' }
            })
            .collect()
    };
    let basis = clean(base.trim_start_matches('.'));
    let ext_basis: String = clean(ext).chars().take(3).collect();
    let mut n = 1u32;
    let short = loop {
        let tail = format!("~{n}");
        let keep = 8 - tail.len();
        let mut b: String = basis.chars().take(keep).collect();
        if b.is_empty() {
            b.push('_');
        }
        b.push_str(&tail);
        let mut short = [b' '; 11];
        short[..b.len()].copy_from_slice(b.as_bytes());
        short[8..8 + ext_basis.len()].copy_from_slice(ext_basis.as_bytes());
        if !taken.contains(&short) {
            break short;
        }
        n += 1;
    };
    (short, 0, Some(name.encode_utf16().collect()))
}

fn lfn_checksum(short: &[u8; 11]) -> u8 {
    short
        .iter()
        .fold(0u8, |sum, &b| (sum >> 1 | (sum & 1) << 7).wrapping_add(b))
}

/// LFN slots in on-disk order (highest sequence number first).
fn lfn_entries(units: &[u16], checksum: u8) -> Vec<[u8; 32]> {
    let count = units.len().div_ceil(13);
    let mut padded: Vec<u16> = units.to_vec();
    if padded.len() < count * 13 {
        padded.push(0);
        padded.resize(count * 13, 0xFFFF);
    }
    (1..=count)
        .rev()
        .map(|seq| {
            let mut e = [0u8; 32];
            e[0] = seq as u8 | if seq == count { 0x40 } else { 0 };
            e[11] = ATTR_LFN;
            e[13] = checksum;
            let chunk = &padded[(seq - 1) * 13..seq * 13];
            for (i, off) in [1, 3, 5, 7, 9, 14, 16, 18, 20, 22, 24, 28, 30]
                .iter()
                .enumerate()
            {
                e[*off..off + 2].copy_from_slice(&chunk[i].to_le_bytes());
            }
            e
        })
        .collect()
}

fn short_entry(
    short: [u8; 11],
    attr: u8,
    case_flags: u8,
    cluster: u32,
    size: u32,
    date: u16,
    time: u16,
) -> [u8; 32] {
    let mut e = [0u8; 32];
    e[..11].copy_from_slice(&short);
    e[11] = attr;
    e[12] = case_flags;
    e[14..16].copy_from_slice(&time.to_le_bytes());
    e[16..18].copy_from_slice(&date.to_le_bytes());
    e[18..20].copy_from_slice(&date.to_le_bytes());
    e[20..22].copy_from_slice(&((cluster >> 16) as u16).to_le_bytes());
    e[22..24].copy_from_slice(&time.to_le_bytes());
    e[24..26].copy_from_slice(&date.to_le_bytes());
    e[26..28].copy_from_slice(&(cluster as u16).to_le_bytes());
    e[28..32].copy_from_slice(&size.to_le_bytes());
    e
}

/// (date, time) in FAT encoding for a Unix time, clamped to FAT's 1980-2107 range.
fn fat_timestamp(unix: u64) -> (u16, u16) {
    let unix = unix.clamp(315_532_800, 4_354_819_198);
    let days = (unix / 86_400) as i64;
    let secs = unix % 86_400;
    let (y, m, d) = crate::util::civil_from_days(days);
    let date = (((y - 1980) as u16) << 9) | ((m as u16) << 5) | d as u16;
    let time = (((secs / 3600) as u16) << 11)
        | ((((secs % 3600) / 60) as u16) << 5)
        | ((secs % 60) / 2) as u16;
    (date, time)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_follow_the_windows_rules() {
        let none = HashSet::new();
        let (s, f, l) = short_name("cmdline.txt", &none);
        assert_eq!(&s, b"CMDLINE TXT");
        assert_eq!(f, 0);
        assert!(l.is_some());
        let (s, _, l) = short_name("CONFIG.TXT", &none);
        assert_eq!(&s, b"CONFIG  TXT");
        assert!(l.is_none());
        let (s, _, l) = short_name("network-config", &none);
        assert_eq!(&s, b"NETWOR~1   ");
        assert!(l.is_some());
        let mut taken = HashSet::new();
        taken.insert(*b"NETWOR~1   ");
        let (s, _, _) = short_name("network-config", &taken);
        assert_eq!(&s, b"NETWOR~2   ");
        let (s, _, l) = short_name("Mixed.txt", &none);
        assert_eq!(&s, b"MIXED   TXT");
        assert!(l.is_some());
    }

    #[test]
    fn fat_dates() {
        // 2024-02-29 12:34:56 UTC
        let (d, t) = fat_timestamp(1_709_210_096);
        assert_eq!(d >> 9, 44);
        assert_eq!((d >> 5) & 0xF, 2);
        assert_eq!(d & 0x1F, 29);
        assert_eq!(t >> 11, 12);
        assert_eq!((t >> 5) & 0x3F, 34);
        assert_eq!((t & 0x1F) * 2, 56);
    }
}
