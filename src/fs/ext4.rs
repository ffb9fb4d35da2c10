//! Writes into an ext4 file system inside a partition of an image file.
//!
//! Writes go through e2fsprogs' own `debugfs` (libext2fs), which keeps htree
//! directories indexed, checksums current and every feature Ubuntu uses
//! supported; it is present on every Linux host. The image file is opened by
//! libext2fs with an `offset=` I/O option, so nothing is mounted and no loop
//! device or root is needed. Before the first write this module checks the
//! superblock itself: known features only, a clean journal, a file system that
//! fits its partition, and room for everything planned.
//!
//! Reads (existence checks, os-release, `inspect`) use ext4-view, which is
//! read-only and verifies metadata checksums.

use std::collections::{BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::image::{ImageError, Partition, Region};

#[derive(Debug, thiserror::Error)]
pub enum Ext4Error {
    #[error(transparent)]
    Io(#[from] ImageError),
    #[error("not an ext4 file system (no superblock magic)")]
    NotExt4,
    #[error(
        "the journal needs recovery (the file system was not cleanly unmounted); refusing to edit it. Run `e2fsck -fy` on the partition first"
    )]
    NeedsRecovery,
    #[error("the file system has errors recorded; run e2fsck on it first")]
    HasErrors,
    #[error("unsupported ext4 feature(s): {0}; refusing to edit")]
    UnknownFeature(String),
    #[error("the file system claims {fs_bytes} bytes but its partition has {part_bytes}")]
    TooBig { fs_bytes: u64, part_bytes: u64 },
    #[error(
        "not enough room: the planned writes need about {need_blocks} blocks of {block_size} bytes and {need_inodes} inodes; the file system has {free_blocks} blocks and {free_inodes} inodes free"
    )]
    NoSpace {
        need_blocks: u64,
        need_inodes: u64,
        free_blocks: u64,
        free_inodes: u64,
        block_size: u64,
    },
    #[error("{path}: {reason}")]
    Path { path: String, reason: String },
    #[error("reading the file system: {0}")]
    Read(String),
    #[error(
        "cannot run debugfs (from e2fsprogs; install it with `apt-get install e2fsprogs`): {0}"
    )]
    NoDebugfs(std::io::Error),
    #[error("debugfs failed at `{command}`: {message}")]
    Debugfs { command: String, message: String },
    #[error("{0}")]
    Temp(std::io::Error),
}

type Result<T> = std::result::Result<T, Ext4Error>;

// Feature bits (ext4 on-disk format) that libext2fs writes correctly and this
// module accepts. Anything else is refused rather than risked.
// compat: dir_prealloc imagic_inodes has_journal ext_attr resize_inode dir_index
// sparse_super2 fast_commit stable_inodes orphan_file
const COMPAT_KNOWN: u32 = 0x1 | 0x2 | 0x4 | 0x8 | 0x10 | 0x20 | 0x200 | 0x400 | 0x800 | 0x1000;
const INCOMPAT_RECOVER: u32 = 0x0004;
// incompat: filetype recover meta_bg extents 64bit flex_bg ea_inode csum_seed
// largedir inline_data (refused: journal_dev mmp dirdata encrypt casefold)
const INCOMPAT_KNOWN: u32 =
    0x2 | 0x4 | 0x10 | 0x40 | 0x80 | 0x200 | 0x400 | 0x2000 | 0x4000 | 0x8000;
// ro_compat: sparse_super large_file btree_dir huge_file gdt_csum dir_nlink
// extra_isize metadata_csum project verity (refused: snapshot quota bigalloc
// replica readonly shared_blocks; orphan_present means an unclean unmount)
const RO_COMPAT_KNOWN: u32 = 0x1 | 0x2 | 0x4 | 0x8 | 0x10 | 0x20 | 0x40 | 0x400 | 0x2000 | 0x8000;
const RO_COMPAT_ORPHAN_PRESENT: u32 = 0x10000;

/// What the superblock says, as far as editing needs to know.
#[derive(Debug, Clone)]
pub struct Superblock {
    pub block_size: u64,
    pub blocks: u64,
    pub free_blocks: u64,
    pub free_inodes: u64,
    pub inode_size: u64,
    pub label: String,
    pub features: Features,
    pub needs_recovery: bool,
    pub has_errors: bool,
}

#[derive(Debug, Clone, Copy)]
pub struct Features {
    pub compat: u32,
    pub incompat: u32,
    pub ro_compat: u32,
}

impl Superblock {
    pub fn read(region: &Region) -> Result<Self> {
        let mut sb = [0u8; 1024];
        region.read_at(1024, &mut sb)?;
        if sb[56..58] != [0x53, 0xEF] {
            return Err(Ext4Error::NotExt4);
        }
        let le32 = |o: usize| u32::from_le_bytes(sb[o..o + 4].try_into().unwrap()) as u64;
        let le16 = |o: usize| u16::from_le_bytes(sb[o..o + 2].try_into().unwrap()) as u64;
        let features = Features {
            compat: le32(0x5C) as u32,
            incompat: le32(0x60) as u32,
            ro_compat: le32(0x64) as u32,
        };
        let is64 = features.incompat & 0x80 != 0;
        let hi = |o: usize| if is64 { le32(o) << 32 } else { 0 };
        let log = le32(0x18);
        if log > 6 {
            return Err(Ext4Error::NotExt4);
        }
        let end = sb[0x78..0x88].iter().position(|&b| b == 0).unwrap_or(16);
        Ok(Superblock {
            block_size: 1024 << log,
            blocks: le32(0x04) | hi(0x150),
            free_blocks: le32(0x0C) | hi(0x158),
            free_inodes: le32(0x10),
            inode_size: if le32(0x4C) >= 1 { le16(0x58) } else { 128 },
            label: String::from_utf8_lossy(&sb[0x78..0x78 + end]).into_owned(),
            needs_recovery: features.incompat & INCOMPAT_RECOVER != 0
                || features.ro_compat & RO_COMPAT_ORPHAN_PRESENT != 0,
            has_errors: le16(0x3A) & 0x2 != 0,
            features,
        })
    }

    fn check_editable(&self, part_len: u64) -> Result<()> {
        if self.needs_recovery {
            return Err(Ext4Error::NeedsRecovery);
        }
        if self.has_errors {
            return Err(Ext4Error::HasErrors);
        }
        let f = self.features;
        let mut unknown = Vec::new();
        if f.compat & !COMPAT_KNOWN != 0 {
            unknown.push(format!("compat {:#x}", f.compat & !COMPAT_KNOWN));
        }
        if f.incompat & !INCOMPAT_KNOWN != 0 {
            unknown.push(format!("incompat {:#x}", f.incompat & !INCOMPAT_KNOWN));
        }
        if f.ro_compat & !RO_COMPAT_KNOWN != 0 {
            unknown.push(format!("ro_compat {:#x}", f.ro_compat & !RO_COMPAT_KNOWN));
        }
        if !unknown.is_empty() {
            return Err(Ext4Error::UnknownFeature(unknown.join(", ")));
        }
        // Checked: the block count is whatever the superblock says.
        let fs_bytes = self.blocks.saturating_mul(self.block_size);
        if fs_bytes > part_len {
            return Err(Ext4Error::TooBig {
                fs_bytes,
                part_bytes: part_len,
            });
        }
        Ok(())
    }
}

/// Where a regular file's bytes come from.
#[derive(Debug, Clone)]
pub enum Contents {
    Bytes(Vec<u8>),
    /// A host file, streamed by debugfs (for large files such as the k3s binary).
    File(PathBuf),
}

impl Contents {
    fn len(&self) -> Result<u64> {
        match self {
            Contents::Bytes(b) => Ok(b.len() as u64),
            Contents::File(p) => {
                std::fs::metadata(p)
                    .map(|m| m.len())
                    .map_err(|e| Ext4Error::Path {
                        path: p.display().to_string(),
                        reason: e.to_string(),
                    })
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// One edit to the file system; parents of every path are created as needed
/// (mode 0755, root) unless they exist.
#[derive(Debug, Clone)]
pub enum Op {
    Mkdir {
        path: String,
        owner: Owner,
    },
    Write {
        path: String,
        contents: Contents,
        owner: Owner,
    },
    Symlink {
        path: String,
        target: String,
        uid: u32,
        gid: u32,
    },
    Remove {
        path: String,
    },
    SetOwner {
        path: String,
        owner: Owner,
    },
}

impl Op {
    fn path(&self) -> &str {
        match self {
            Op::Mkdir { path, .. }
            | Op::Write { path, .. }
            | Op::Symlink { path, .. }
            | Op::Remove { path }
            | Op::SetOwner { path, .. } => path,
        }
    }
}

/// A path debugfs can take safely inside double quotes.
pub fn check_path(path: &str) -> Result<()> {
    match crate::util::names::debugfs_path_error(path) {
        Some(reason) => Err(Ext4Error::Path {
            path: path.to_string(),
            reason: reason.to_string(),
        }),
        None => Ok(()),
    }
}

fn parents(path: &str) -> impl Iterator<Item = &str> {
    path.match_indices('/')
        .skip(1)
        .map(move |(i, _)| &path[..i])
}

/// Reads an ext4 partition with ext4-view.
///
/// The superblock is checked first, so a journal that needs recovery gets
/// the same clear refusal as from [`apply`] rather than ext4-view's
/// "missing required journal features".
pub fn open_reader(region: Region<'_>) -> Result<ext4_view::Ext4> {
    let sb = Superblock::read(&region)?;
    if sb.needs_recovery {
        return Err(Ext4Error::NeedsRecovery);
    }
    let owned = OwnedRegion::from(region)?;
    ext4_view::Ext4::load(Box::new(owned)).map_err(|e| Ext4Error::Read(e.to_string()))
}

/// The names in directory `dir` (none when it does not exist).
pub fn list_dir(region: Region<'_>, dir: &str) -> Result<Vec<String>> {
    let fs = open_reader(region)?;
    let entries = match fs.read_dir(dir) {
        Ok(e) => e,
        Err(ext4_view::Ext4Error::NotFound) => return Ok(Vec::new()),
        Err(e) => return Err(Ext4Error::Read(format!("{dir}: {e}"))),
    };
    let mut out = Vec::new();
    for e in entries {
        let e = e.map_err(|e| Ext4Error::Read(format!("{dir}: {e}")))?;
        let name = String::from_utf8_lossy(e.file_name().as_ref()).into_owned();
        if name != "." && name != ".." {
            out.push(name);
        }
    }
    Ok(out)
}

/// Reads a file of at most `max` bytes (a larger one is an error): what a
/// hostile image claims about a file's size never decides how much memory
/// is used.
pub fn read_bounded(fs: &ext4_view::Ext4, path: &str, max: u64) -> Result<Vec<u8>> {
    let meta = fs
        .metadata(ext4_view::Path::new(path))
        .map_err(|e| Ext4Error::Read(format!("{path}: {e}")))?;
    if meta.len() > max {
        return Err(Ext4Error::Path {
            path: path.to_string(),
            reason: format!("{} bytes is more than the {max} imgbuild reads", meta.len()),
        });
    }
    fs.read(ext4_view::Path::new(path))
        .map_err(|e| Ext4Error::Read(format!("{path}: {e}")))
}

/// ext4-view wants a `'static` reader; this one owns a handle to the same file.
struct OwnedRegion {
    file: std::fs::File,
    offset: u64,
    len: u64,
}

impl OwnedRegion {
    fn from(region: Region<'_>) -> Result<Self> {
        let file = region
            .try_clone_file()
            .map_err(|source| Ext4Error::Io(ImageError::RegionIo { offset: 0, source }))?;
        Ok(OwnedRegion {
            file,
            offset: region.offset(),
            len: region.len(),
        })
    }
}

impl ext4_view::Ext4Read for OwnedRegion {
    fn read(
        &mut self,
        start_byte: u64,
        dst: &mut [u8],
    ) -> std::result::Result<(), Box<dyn std::error::Error + Send + Sync + 'static>> {
        use std::os::unix::fs::FileExt;
        let end = start_byte.checked_add(dst.len() as u64);
        if end.is_none_or(|e| e > self.len) {
            return Err(Box::new(ImageError::OutOfRegion {
                offset: start_byte,
                len: dst.len() as u64,
                region_len: self.len,
            }));
        }
        self.file.read_exact_at(dst, self.offset + start_byte)?;
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dir,
    File,
    Other,
}

fn kind_of(fs: &ext4_view::Ext4, path: &str) -> Result<Option<Kind>> {
    match fs.symlink_metadata(ext4_view::Path::new(path)) {
        Ok(m) => Ok(Some(if m.is_dir() {
            Kind::Dir
        } else if m.file_type().is_regular_file() {
            Kind::File
        } else {
            Kind::Other
        })),
        Err(ext4_view::Ext4Error::NotFound) => Ok(None),
        Err(e) => Err(Ext4Error::Read(format!("{path}: {e}"))),
    }
}

/// Applies `ops` to the ext4 file system in `part` of `image`.
///
/// `timestamp` (Unix seconds) becomes every touched inode's time, so identical
/// inputs give identical bytes.
///
/// Host files of [`DIRECT_MIN`] bytes or more (the k3s binary, image
/// tarballs, any large payload) are not pushed through debugfs's block-sized
/// I/O: debugfs creates the inode, allocates its blocks (`fallocate`), sets
/// its size and marks the extents written, and the bytes are then copied
/// straight into those blocks with large sequential writes. Data blocks carry
/// no checksums; everything that does (inode, extent tree, bitmaps, group
/// descriptors) is written by libext2fs.
pub fn apply(
    image: &Path,
    image_file: &std::fs::File,
    part: &Partition,
    ops: &[Op],
    timestamp: u64,
) -> Result<()> {
    apply_with(image, image_file, part, ops, timestamp, true)
}

/// Host files at least this large are written straight into their blocks.
pub const DIRECT_MIN: u64 = 1 << 20;

/// [`apply`], with `direct` false writing every file through debugfs
/// (the reference the direct path is tested against).
pub fn apply_with(
    image: &Path,
    image_file: &std::fs::File,
    part: &Partition,
    ops: &[Op],
    timestamp: u64,
    direct: bool,
) -> Result<()> {
    let region = Region::new(image_file, part);
    let sb = Superblock::read(&region)?;
    sb.check_editable(part.len)?;
    for op in ops {
        check_path(op.path())?;
    }
    let fs = open_reader(region)?;

    // Decide every command up front from what exists now, so planning errors
    // come before the first write.
    // Extents (incompat 0x40) and no inline data (0x8000): what the direct path needs.
    let direct = direct && sb.features.incompat & 0x40 != 0 && sb.features.incompat & 0x8000 == 0;
    let mut plan = Plan::new(&fs, sb.block_size, timestamp, direct);
    for op in ops {
        plan.op(op)?;
    }
    plan.stamp_touched_dirs();
    plan.check_space(&sb)?;
    let Plan {
        mut script,
        mut staging,
        direct_files,
        ..
    } = plan;
    drop(fs);
    for f in &direct_files {
        script.push_str(&format!("ex \"{}\"\n", f.path));
    }
    let (script_path, _) = staging.stage(script.as_bytes()).map_err(Ext4Error::Temp)?;
    let maps = run_debugfs(image, part.start, &script_path, timestamp, &staging)?;
    if direct_files.is_empty() {
        return Ok(());
    }
    let extents = mark_written(
        image,
        part,
        &sb,
        timestamp,
        &mut staging,
        &maps,
        &direct_files,
    )?;
    let total = direct_files.iter().map(|f| f.len).sum();
    let mut progress = crate::io::progress::Progress::new("payload", Some(total));
    for (f, map) in direct_files.iter().zip(&extents) {
        write_extents(&region, sb.block_size, &f.host, f.len, map, &mut progress).map_err(|e| {
            Ext4Error::Path {
                path: f.path.clone(),
                reason: format!("writing its data from {}: {e}", f.host.display()),
            }
        })?;
    }
    progress.finish();
    Ok(())
}

/// A file whose blocks debugfs allocates and whose bytes are then copied
/// straight into them.
struct DirectFile {
    path: String,
    host: PathBuf,
    len: u64,
}

/// The debugfs script for a list of ops, decided from what the file system
/// holds (and what earlier ops made of it), with the space it needs.
struct Plan<'f> {
    fs: &'f ext4_view::Ext4,
    script: String,
    staging: Staging,
    /// What each path looked up or planned so far is (`None`: absent).
    state: HashMap<String, Option<Kind>>,
    created_dirs: BTreeSet<String>,
    touched_parents: BTreeSet<String>,
    need_blocks: u64,
    need_inodes: u64,
    block_size: u64,
    stamp: String,
    running_as_root: bool,
    direct: bool,
    direct_files: Vec<DirectFile>,
}

const DIR_BITS: u32 = 0o040000;
const FILE_BITS: u32 = 0o100000;

impl<'f> Plan<'f> {
    fn new(fs: &'f ext4_view::Ext4, block_size: u64, timestamp: u64, direct: bool) -> Self {
        Plan {
            fs,
            script: String::new(),
            staging: Staging::default(),
            state: HashMap::new(),
            created_dirs: BTreeSet::new(),
            touched_parents: BTreeSet::new(),
            need_blocks: 0,
            need_inodes: 0,
            block_size,
            stamp: format!("@{timestamp}"),
            running_as_root: unsafe { libc::geteuid() } == 0,
            direct,
            direct_files: Vec::new(),
        }
    }

    fn lookup(&mut self, path: &str) -> Result<Option<Kind>> {
        if let Some(k) = self.state.get(path) {
            return Ok(*k);
        }
        let k = kind_of(self.fs, path)?;
        self.state.insert(path.to_string(), k);
        Ok(k)
    }

    /// New inodes get the build time from E2FSPROGS_FAKE_TIME; existing inodes
    /// whose metadata changes get it explicitly.
    fn times(&mut self, p: &str) {
        for f in ["atime", "mtime", "ctime", "crtime"] {
            self.script
                .push_str(&format!("sif \"{p}\" {f} {}\n", self.stamp));
        }
    }

    /// debugfs gives a new inode the host file's permission bits (`write`) or
    /// 0755/0777 (`mkdir`/`symlink`) and uid/gid 0; set only what differs. When
    /// not running as root, uid/gid are always set explicitly.
    fn own(&mut self, p: &str, kind_bits: u32, have_mode: Option<u32>, o: &Owner) {
        if have_mode != Some(o.mode & 0o7777) {
            self.script.push_str(&format!(
                "sif \"{p}\" mode 0{:o}\n",
                kind_bits | (o.mode & 0o7777)
            ));
        }
        if o.uid != 0 || have_mode.is_none() || !self.running_as_root {
            self.script
                .push_str(&format!("sif \"{p}\" uid {}\n", o.uid));
        }
        if o.gid != 0 || have_mode.is_none() || !self.running_as_root {
            self.script
                .push_str(&format!("sif \"{p}\" gid {}\n", o.gid));
        }
    }

    fn op(&mut self, op: &Op) -> Result<()> {
        let path = op.path();
        if !matches!(op, Op::Remove { .. } | Op::SetOwner { .. }) {
            self.make_parents(path)?;
        }
        let existing = self.lookup(path)?;
        match op {
            Op::Mkdir { owner, .. } => self.mkdir(path, existing, owner),
            Op::Write {
                contents, owner, ..
            } => self.write(path, existing, contents, owner),
            Op::Symlink {
                target, uid, gid, ..
            } => self.symlink(path, existing, target, *uid, *gid),
            Op::Remove { .. } => {
                self.remove(path, existing);
                Ok(())
            }
            Op::SetOwner { owner, .. } => self.set_owner(path, existing, owner),
        }
    }

    /// Creates the missing parents of `path` (0755, root) and notes its
    /// directory as touched.
    fn make_parents(&mut self, path: &str) -> Result<()> {
        for parent in parents(path) {
            match self.lookup(parent)? {
                Some(Kind::Dir) => {}
                Some(_) => {
                    return Err(Ext4Error::Path {
                        path: path.into(),
                        reason: format!("{parent} exists and is not a directory"),
                    });
                }
                None => {
                    self.script.push_str(&format!("mkdir \"{parent}\"\n"));
                    let root = Owner {
                        mode: 0o755,
                        uid: 0,
                        gid: 0,
                    };
                    self.own(parent, DIR_BITS, Some(0o755), &root);
                    self.state.insert(parent.to_string(), Some(Kind::Dir));
                    self.created_dirs.insert(parent.to_string());
                    self.need_blocks += 1;
                    self.need_inodes += 1;
                }
            }
        }
        if let Some(dir) = path
            .rsplit_once('/')
            .map(|(d, _)| if d.is_empty() { "/" } else { d })
        {
            self.touched_parents.insert(dir.to_string());
        }
        Ok(())
    }

    fn mkdir(&mut self, path: &str, existing: Option<Kind>, owner: &Owner) -> Result<()> {
        match existing {
            Some(Kind::Dir) => {}
            Some(_) => {
                return Err(Ext4Error::Path {
                    path: path.into(),
                    reason: "exists and is not a directory".into(),
                });
            }
            None => {
                self.script.push_str(&format!("mkdir \"{path}\"\n"));
                self.need_blocks += 1;
                self.need_inodes += 1;
                self.state.insert(path.to_string(), Some(Kind::Dir));
            }
        }
        if existing.is_some() {
            self.own(path, DIR_BITS, None, owner);
            self.times(path);
        } else {
            self.own(path, DIR_BITS, Some(0o755), owner);
        }
        Ok(())
    }

    fn write(
        &mut self,
        path: &str,
        existing: Option<Kind>,
        contents: &Contents,
        owner: &Owner,
    ) -> Result<()> {
        match existing {
            Some(Kind::Dir) => {
                return Err(Ext4Error::Path {
                    path: path.into(),
                    reason: "a directory is in the way of this file".into(),
                });
            }
            Some(_) => self.script.push_str(&format!("rm \"{path}\"\n")),
            None => {}
        }
        let len = contents.len()?;
        let bs = self.block_size;
        let data_blocks = len.div_ceil(bs);
        // Extent tree: one index block per ~340 extents; assume 128 MiB extents at worst.
        self.need_blocks += data_blocks + data_blocks / (bs * 8) + 1;
        self.need_inodes += 1;
        if let (true, Contents::File(p)) = (self.direct && len >= DIRECT_MIN, contents) {
            check_host_path(p)?;
            // An empty inode from debugfs, then its blocks; the data follows later.
            let (empty, empty_mode) = self.staging.stage(&[]).map_err(Ext4Error::Temp)?;
            self.script
                .push_str(&format!("write \"{}\" \"{path}\"\n", empty.display()));
            self.script.push_str(&format!(
                "fallocate \"{path}\" 0 {}\nsif \"{path}\" size {len}\n",
                data_blocks - 1
            ));
            self.own(path, FILE_BITS, Some(empty_mode), owner);
            self.state.insert(path.to_string(), Some(Kind::File));
            self.direct_files.push(DirectFile {
                path: path.to_string(),
                host: p.clone(),
                len,
            });
            return Ok(());
        }
        let (host, host_mode) = match contents {
            Contents::File(p) => {
                use std::os::unix::fs::PermissionsExt;
                let mode = std::fs::metadata(p).map_err(|e| Ext4Error::Path {
                    path: p.display().to_string(),
                    reason: e.to_string(),
                })?;
                (p.clone(), mode.permissions().mode() & 0o7777)
            }
            Contents::Bytes(b) => self.staging.stage(b).map_err(Ext4Error::Temp)?,
        };
        check_host_path(&host)?;
        self.script
            .push_str(&format!("write \"{}\" \"{path}\"\n", host.display()));
        self.own(path, FILE_BITS, Some(host_mode), owner);
        self.state.insert(path.to_string(), Some(Kind::File));
        Ok(())
    }

    fn symlink(
        &mut self,
        path: &str,
        existing: Option<Kind>,
        target: &str,
        uid: u32,
        gid: u32,
    ) -> Result<()> {
        if let Some(reason) = crate::util::names::debugfs_target_error(target) {
            return Err(Ext4Error::Path {
                path: path.into(),
                reason,
            });
        }
        match existing {
            Some(Kind::Dir) => {
                return Err(Ext4Error::Path {
                    path: path.into(),
                    reason: "a directory is in the way of this symlink".into(),
                });
            }
            Some(_) => self.script.push_str(&format!("rm \"{path}\"\n")),
            None => {}
        }
        self.need_blocks += 1;
        self.need_inodes += 1;
        self.script
            .push_str(&format!("symlink \"{path}\" \"{target}\"\n"));
        if uid != 0 || !self.running_as_root {
            self.script.push_str(&format!("sif \"{path}\" uid {uid}\n"));
        }
        if gid != 0 || !self.running_as_root {
            self.script.push_str(&format!("sif \"{path}\" gid {gid}\n"));
        }
        self.state.insert(path.to_string(), Some(Kind::Other));
        Ok(())
    }

    fn remove(&mut self, path: &str, existing: Option<Kind>) {
        match existing {
            Some(Kind::Dir) => self.script.push_str(&format!("rmdir \"{path}\"\n")),
            Some(_) => self.script.push_str(&format!("rm \"{path}\"\n")),
            None => return,
        }
        self.state.insert(path.to_string(), None);
    }

    fn set_owner(&mut self, path: &str, existing: Option<Kind>, owner: &Owner) -> Result<()> {
        let bits = match existing {
            Some(Kind::Dir) => DIR_BITS,
            Some(Kind::File) => FILE_BITS,
            Some(Kind::Other) => {
                return Err(Ext4Error::Path {
                    path: path.into(),
                    reason: "can only change mode and owner of files and directories".into(),
                });
            }
            None => {
                return Err(Ext4Error::Path {
                    path: path.into(),
                    reason: "does not exist".into(),
                });
            }
        };
        self.own(path, bits, None, owner);
        self.times(path);
        Ok(())
    }

    /// Directories whose entries changed get the build time too, for determinism.
    fn stamp_touched_dirs(&mut self) {
        for dir in self.touched_parents.difference(&self.created_dirs) {
            if self.state.get(dir.as_str()).copied().flatten() == Some(Kind::Dir) || dir == "/" {
                self.script.push_str(&format!(
                    "sif \"{dir}\" mtime {s}\nsif \"{dir}\" ctime {s}\n",
                    s = self.stamp
                ));
            }
        }
    }

    /// Refuses before the first write when the file system lacks the room.
    fn check_space(&mut self, sb: &Superblock) -> Result<()> {
        // Room for directory growth and htree splits.
        self.need_blocks += self.need_inodes / 16 + 16;
        if self.need_blocks > sb.free_blocks || self.need_inodes > sb.free_inodes {
            return Err(Ext4Error::NoSpace {
                need_blocks: self.need_blocks,
                need_inodes: self.need_inodes,
                free_blocks: sb.free_blocks,
                free_inodes: sb.free_inodes,
                block_size: self.block_size,
            });
        }
        Ok(())
    }
}

/// Reads the extents debugfs allocated for each direct file (the `ex`
/// output in `maps`), checks them, and marks the uninitialised ones written.
fn mark_written(
    image: &Path,
    part: &Partition,
    sb: &Superblock,
    timestamp: u64,
    staging: &mut Staging,
    maps: &[(String, Vec<String>)],
    direct_files: &[DirectFile],
) -> Result<Vec<Vec<super::extents::Extent>>> {
    let mut extents = Vec::new();
    let mut mark = String::new();
    for f in direct_files {
        let command = format!("ex \"{}\"", f.path);
        let lines = maps
            .iter()
            .find(|(c, _)| *c == command)
            .map(|(_, l)| l.as_slice())
            .unwrap_or_default();
        let bad = |reason: String| Ext4Error::Debugfs {
            command: command.clone(),
            message: reason,
        };
        let map = super::extents::parse(lines).map_err(bad)?;
        super::extents::check(&map, f.len.div_ceil(sb.block_size), sb.blocks).map_err(bad)?;
        mark.push_str(&format!("eo \"{}\"\n", f.path));
        for e in map.iter().filter(|e| e.uninit) {
            mark.push_str(&format!(
                "goto {l}\nreplace {l} {n} {p}\n",
                l = e.logical,
                n = e.len,
                p = e.physical
            ));
        }
        mark.push_str("ec\n");
        extents.push(map);
    }
    let (mark_path, _) = staging.stage(mark.as_bytes()).map_err(Ext4Error::Temp)?;
    run_debugfs(image, part.start, &mark_path, timestamp, staging)?;
    Ok(extents)
}

/// Copies `len` bytes of `host` into the blocks `map` gives (block size
/// `bs`) in `region`, with large sequential copies; the last block's tail is
/// zeroed so identical inputs give identical bytes.
fn write_extents(
    region: &Region,
    bs: u64,
    host: &Path,
    len: u64,
    map: &[super::extents::Extent],
    progress: &mut crate::io::progress::Progress,
) -> std::io::Result<()> {
    let src = std::fs::File::open(host)?;
    if src.metadata()?.len() != len {
        return Err(std::io::Error::other(
            "the file changed size while being written",
        ));
    }
    let outside = |_| std::io::Error::other("an extent lies outside the partition");
    let image = region.try_clone_file()?;
    for e in map {
        let from = e.logical * bs;
        let n = (e.len * bs).min(len - from);
        let to = e.physical * bs;
        // Bounds: the region checks the extent's last byte (a zero-length
        // write at its end), the copy goes to its absolute offset.
        region.write_at(to + e.len * bs, &[]).map_err(outside)?;
        crate::io::copy_range(&src, from, &image, region.offset() + to, n)?;
        crate::io::start_writeback(&image, region.offset() + to, n);
        progress.inc(n);
        let tail = e.len * bs - n;
        if tail > 0 {
            region
                .write_at(to + n, &vec![0u8; tail as usize])
                .map_err(|e| std::io::Error::other(e.to_string()))?;
        }
    }
    Ok(())
}

fn check_host_path(p: &Path) -> Result<()> {
    let s = p.to_string_lossy();
    if s.chars().any(|c| c == '"' || c == '\\' || c.is_control()) {
        return Err(Ext4Error::Path {
            path: s.into_owned(),
            reason:
                "host file paths given to debugfs must not contain quotes or control characters"
                    .into(),
        });
    }
    Ok(())
}

/// Where file contents and the command script wait for debugfs.
///
/// Preferably in memory: a memfd per file, handed to debugfs as an inherited
/// descriptor it opens as `/proc/self/fd/N`, so secrets never touch a disk
/// and nothing can be left behind, whatever ends the process. Without
/// memfd (old kernels) they go to a private directory (0700, files 0600,
/// whatever the umask) that is removed on drop and on interrupt.
#[derive(Default)]
struct Staging {
    memfds: Vec<std::fs::File>,
    dir: Option<(tempfile::TempDir, crate::util::cleanup::Registered)>,
    files: usize,
}

impl Staging {
    /// Stages `data`; returns the path debugfs reads it from and its mode there.
    fn stage(&mut self, data: &[u8]) -> std::io::Result<(PathBuf, u32)> {
        use std::os::fd::{AsRawFd, FromRawFd};
        self.files += 1;
        // SAFETY: a NUL-terminated name; the descriptor is owned by the File below.
        let fd = unsafe { libc::memfd_create(c"imgbuild-stage".as_ptr(), libc::MFD_CLOEXEC) };
        if fd >= 0 {
            // SAFETY: `fd` is a new descriptor nothing else owns.
            let mut f = unsafe { std::fs::File::from_raw_fd(fd) };
            f.write_all(data)?;
            let path = PathBuf::from(format!("/proc/self/fd/{}", f.as_raw_fd()));
            self.memfds.push(f);
            // debugfs gives the inode the memfd's mode; `apply` always sets it.
            return Ok((path, 0o777));
        }
        let err = std::io::Error::last_os_error();
        if !matches!(err.raw_os_error(), Some(libc::ENOSYS | libc::EINVAL)) {
            return Err(err);
        }
        if self.dir.is_none() {
            use std::os::unix::fs::PermissionsExt;
            let dir = tempfile::Builder::new()
                .prefix("imgbuild-ext4-")
                .permissions(std::fs::Permissions::from_mode(0o700))
                .tempdir()?;
            let registered = crate::util::cleanup::register_dir(dir.path());
            self.dir = Some((dir, registered));
        }
        let (dir, _) = self.dir.as_ref().expect("created above");
        let path = dir.path().join(format!("f{}", self.files));
        crate::util::create_private(&path, data)?;
        Ok((path, 0o600))
    }

    /// The descriptors debugfs must inherit.
    fn inherited(&self) -> Vec<i32> {
        use std::os::fd::AsRawFd;
        self.memfds.iter().map(|f| f.as_raw_fd()).collect()
    }
}

/// Runs a debugfs script; returns the output of its `ex` commands (command, lines).
fn run_debugfs(
    image: &Path,
    offset: u64,
    script_path: &Path,
    timestamp: u64,
    staging: &Staging,
) -> Result<Vec<(String, Vec<String>)>> {
    let spec = format!("{}?offset={offset}", image.display());
    let (reader, writer) = std::io::pipe().map_err(Ext4Error::Temp)?;
    let writer2 = writer.try_clone().map_err(Ext4Error::Temp)?;
    let inherited = staging.inherited();
    let mut command = Command::new("debugfs");
    command
        .arg("-w")
        .arg("-f")
        .arg(script_path)
        .arg(&spec)
        .env("E2FSPROGS_FAKE_TIME", timestamp.to_string())
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(writer2);
    // SAFETY: between fork and exec only fcntl runs (async-signal-safe); it
    // lets debugfs, and only debugfs, inherit the staged memfds.
    unsafe {
        use std::os::unix::process::CommandExt;
        command.pre_exec(move || {
            for &fd in &inherited {
                if libc::fcntl(fd, libc::F_SETFD, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut child = command.spawn().map_err(Ext4Error::NoDebugfs)?;
    drop(command);
    let mut current = String::from("(opening the file system)");
    let mut failure: Option<(String, String)> = None;
    let mut maps: Vec<(String, Vec<String>)> = Vec::new();
    for line in BufReader::new(reader).lines() {
        let line = line.map_err(Ext4Error::Temp)?;
        if let Some(cmd) = line.strip_prefix("debugfs: ") {
            current = cmd.to_string();
            if current.starts_with("ex ") {
                maps.push((current.clone(), Vec::new()));
            }
        } else if current.starts_with("ex ")
            && (line.starts_with("Level ")
                || line.trim_start().starts_with(|c: char| c.is_ascii_digit()))
        {
            if let Some((_, lines)) = maps.last_mut() {
                lines.push(line);
            }
        } else if ["goto ", "replace "].iter().any(|c| current.starts_with(c))
            && line.starts_with("extent: ")
        {
            // `goto` and `replace` print the extent they are on.
        } else if line.starts_with("debugfs ")
            || line.starts_with("Allocated inode:")
            || line.trim().is_empty()
        {
            // The version banner and the inode number `write` reports.
        } else if failure.is_none() {
            failure = Some((current.clone(), line));
        }
    }
    let status = child.wait().map_err(Ext4Error::Temp)?;
    if let Some((command, message)) = failure {
        return Err(Ext4Error::Debugfs { command, message });
    }
    if !status.success() {
        return Err(Ext4Error::Debugfs {
            command: current,
            message: format!("exited with {status}"),
        });
    }
    Ok(maps)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_block_count_that_overflows_is_too_big_not_a_panic() {
        // Found by tests/fuzz.rs: blocks * block_size overflowed.
        let sb = Superblock {
            block_size: 4096,
            blocks: u64::MAX / 2,
            free_blocks: 0,
            free_inodes: 0,
            inode_size: 256,
            label: String::new(),
            features: Features {
                compat: 0,
                incompat: 0,
                ro_compat: 0,
            },
            needs_recovery: false,
            has_errors: false,
        };
        assert!(matches!(
            sb.check_editable(1 << 30),
            Err(Ext4Error::TooBig { .. })
        ));
    }
}
