//! Shrinking a baked copy before it is written out: the BMC writes (and reads
//! back) every byte it is sent at about 5 MB/s, so the free space of a stock
//! root (2 GiB on RK1) costs minutes per flash. The root file system is shrunk
//! by e2fsprogs' resize2fs to what it uses plus headroom, its partition then
//! ends there and the image right after it; cloud-init's growpart and
//! resize_rootfs grow both back to the whole device on first boot.
//!
//! resize2fs works on the root at offset 0 of a file (see [`shrink`]): the
//! image itself with the bytes before the root collapsed out of it where the
//! file system can (ext4, XFS), which moves no data, else a copy of the root.
//!
//! Anything that makes shrinking unsafe before the first write (a root that is
//! not the last partition per the manifest, recorded errors, a check that is
//! not clean, too little free space) leaves the stock size with a warning;
//! a failure after the first write fails the bake, whose partial output is
//! then deleted, so a damaged image is never written out.

use std::fs::File;
use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::config::manifest::Manifest;
use crate::fs::{ext4, resize};
use crate::image::{Partition, PartitionTable, Region};

const MIB: u64 = 1 << 20;

/// The built-in headroom: a quarter of what the root uses, at least 512 MiB.
///
/// Before growpart runs (cloud-init's init stage, before network-online and
/// so before k3s, the swap file and packages) the first boot writes little:
/// the journal, cloud-init's logs and instance data, SSH and machine state,
/// tens of MiB. The floor leaves an order of magnitude more for a boot that
/// fails to grow and must still be logged into and debugged; the share keeps
/// that margin for large roots (a k3s air-gap tarball of a few hundred MiB is
/// imported only after growth, but a quarter also covers a retry of it) while
/// costing ~100 s of flashing per GiB at the BMC's 5 MB/s.
pub fn default_headroom(used: u64) -> u64 {
    (used / 4).max(512 * MIB)
}

/// What shrinking did to an image.
#[derive(Debug, Clone)]
pub struct ShrinkReport {
    /// Whether the image was shrunk; when not, `reason` says why.
    pub shrunk: bool,
    pub reason: Option<String>,
    /// Size of the image before shrinking (the stock size).
    pub stock_bytes: u64,
    /// Size of the image file now: the bytes a flash sends.
    pub image_bytes: u64,
    /// The root partition before and after.
    pub root_stock_bytes: u64,
    pub root_bytes: u64,
    /// Bytes of the root file system in use (blocks), and the headroom asked for.
    pub root_used_bytes: u64,
    pub headroom_bytes: u64,
    /// How the root was resized (absent when it was not).
    pub method: Option<Method>,
}

/// How the root file system was brought to offset 0 of a file for resize2fs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// The bytes before the root were collapsed out of the image itself
    /// (`FALLOC_FL_COLLAPSE_RANGE`) and put back after resizing: no data copied.
    InPlace,
    /// The root was copied into a file of its own and back (shared extents
    /// where the file system can, else a data copy): file systems that cannot
    /// collapse a range (tmpfs, btrfs, NFS) or a root not aligned to their blocks.
    Copy,
}

/// How [`shrink`] runs.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Free space to leave in the root, in MiB; [`default_headroom`] when `None`.
    pub headroom_mib: Option<u32>,
    /// Unix seconds e2fsprogs stamps instead of the clock.
    pub build_time: u64,
    /// Try [`Method::InPlace`] first (tests turn it off to exercise the copy).
    pub in_place: bool,
}

/// Shrinks the root of `image` (the working copy at `path`, whose table is
/// `table`), leaving the headroom of `options` free in it.
///
/// `stock` is the base `image` was copied from, and everything before the
/// root must still be as in `stock`: the partitions before the root are
/// edited after shrinking. The in-place method puts those bytes back from
/// `stock` (shared extents where the file system can) instead of saving them
/// first: nothing is copied twice, and the seed's secrets never sit in a
/// temporary file.
pub fn shrink(
    manifest: &Manifest,
    table: &PartitionTable,
    path: &Path,
    image: &File,
    stock: &File,
    options: &Options,
) -> Result<ShrinkReport> {
    let index = manifest.partitions["root"].index;
    let part = table.get(path, index)?.clone();
    let what = format!("partition {index} (root) of {}", path.display());
    let region = Region::new(image, &part);
    let sb = ext4::Superblock::read(&region).with_context(|| format!("reading {what}"))?;
    let root = Root::new(part, what, &sb, options.headroom_mib);
    let mut report = ShrinkReport {
        shrunk: false,
        reason: None,
        stock_bytes: table.image_size,
        image_bytes: table.image_size,
        root_stock_bytes: root.part.len,
        root_bytes: root.part.len,
        root_used_bytes: root.used,
        headroom_bytes: root.headroom,
        method: None,
    };
    if let Some(reason) = why_keep(manifest, table, path, &root, &sb)? {
        tracing::warn!("{}: keeping the stock size: {reason}", path.display());
        report.reason = Some(reason);
        return Ok(report);
    }

    // From here on the copy changes: any failure fails the bake.
    //
    // resize2fs takes `image?offset=N`, but after shrinking a regular file it
    // truncates the file to the new file-system size without the offset
    // (e2fsprogs 1.47, resize/main.c), which would cut the last N bytes off
    // the shrunk file system. So the root is resized at offset 0 of a file,
    // where that truncation is right: the image itself with the bytes before
    // the root collapsed out, else a copy of the root.
    //
    // resize2fs runs with -f: it would otherwise want a check recorded after
    // the last mount (an `e2fsck -fp` that rewrites the superblock, a second
    // full pass) and refuse sizes below its own estimate of the minimum. The
    // clean `e2fsck -fn` above is that check, and a size too small fails
    // resize2fs before it commits anything, which the retry below handles
    // and the final `e2fsck -fn` verifies.
    let now = options.build_time.max(resize::latest_time(&region)?);
    let (target, method) = resize_root(path, image, stock, &root, now, options.in_place)?;
    tracing::debug!("{}: root resized ({method:?})", path.display());
    let size = end_after_root(manifest, path, image, &root, target)?;
    report.shrunk = true;
    report.image_bytes = size;
    report.root_bytes = target;
    report.method = Some(method);
    tracing::info!(
        "{}: root shrunk from {} MiB to {} MiB ({} MiB used + {} MiB headroom); the image is {} MiB instead of {} MiB",
        path.display(),
        root.part.len / MIB,
        target / MIB,
        root.used / MIB,
        root.headroom / MIB,
        size.div_ceil(MIB),
        table.image_size.div_ceil(MIB)
    );
    Ok(report)
}

/// The root partition being shrunk, and the sizes to try.
struct Root {
    part: Partition,
    /// `partition N (root) of <image>`, for messages.
    what: String,
    /// Bytes of the file system in use (blocks), and the headroom asked for.
    used: u64,
    headroom: u64,
    /// The use plus headroom, in whole MiB.
    wanted: u64,
    /// The file system's stock size.
    fs_bytes: u64,
    /// The stock size of the file system (or of its partition, if smaller).
    limit: u64,
    block_size: u64,
}

impl Root {
    fn new(
        part: Partition,
        what: String,
        sb: &ext4::Superblock,
        headroom_mib: Option<u32>,
    ) -> Self {
        let used = (sb.blocks.saturating_sub(sb.free_blocks)) * sb.block_size;
        let headroom = headroom_mib.map_or_else(|| default_headroom(used), |m| u64::from(m) * MIB);
        let fs_bytes = sb.blocks * sb.block_size;
        // Whole MiB keep the partition's end aligned, and a multiple of any block size.
        // `resize2fs -P` overestimates (with flex_bg it reserved ~2 GiB for a
        // root using 1.1 GiB in the benchmark), so the used blocks, which include
        // all metadata, are the target, and its estimate (a pass over all
        // metadata) is only asked for when resize2fs finds the target too small.
        let wanted = (used + headroom).div_ceil(MIB) * MIB;
        Root {
            limit: fs_bytes.min(part.len),
            part,
            what,
            used,
            headroom,
            wanted,
            fs_bytes,
            block_size: sb.block_size,
        }
    }

    /// Resizes the file system at offset 0 of `file` to `wanted`; when
    /// resize2fs runs out of room there, `restore` (which brings back the
    /// stock root where it can) runs, and the file system, checked clean, is
    /// resized to resize2fs' own minimum plus headroom, if that is still a
    /// cut. Returns the size it has now. `now` is the build time.
    fn resize(&self, file: &Path, now: u64, restore: impl Fn() -> Result<()>) -> Result<u64> {
        let what = &self.what;
        let e = match resize::resize(file, 0, self.wanted, now, true) {
            Ok(()) => return Ok(self.wanted),
            Err(e) => e,
        };
        let failed = |e: resize::ResizeError| {
            anyhow::Error::new(e).context(format!("shrinking {what} to {} MiB", self.wanted / MIB))
        };
        restore()?;
        let check = resize::check(file, 0)?;
        if !check.clean {
            bail!(
                "{what}: e2fsck -fn finds problems after resize2fs failed ({e}); the image is not written:\n{}",
                check.output
            );
        }
        let minimum = resize::minimum_blocks(file, 0)
            .with_context(|| format!("estimating the smallest size of {what}"))?
            * self.block_size;
        let fallback = (minimum.max(self.used) + self.headroom).div_ceil(MIB) * MIB;
        if fallback >= self.limit || fallback <= self.wanted {
            return Err(failed(e));
        }
        tracing::debug!(
            "resize2fs to {} MiB failed ({e}); trying its own minimum, {} MiB",
            self.wanted / MIB,
            fallback / MIB
        );
        resize::resize(file, 0, fallback, now, true)
            .with_context(|| format!("shrinking {what} to {} MiB", fallback / MIB))?;
        Ok(fallback)
    }
}

/// Why the image keeps its stock size, if it does: what makes shrinking
/// unsafe or pointless, found before the first write. A manifest whose
/// `root_is_last` the table contradicts is an error.
fn why_keep(
    manifest: &Manifest,
    table: &PartitionTable,
    path: &Path,
    root: &Root,
    sb: &ext4::Superblock,
) -> Result<Option<String>> {
    let (part, what) = (&root.part, &root.what);
    if !manifest.root_is_last {
        return Ok(Some(format!(
            "the {} manifest does not say `root_is_last: true`, so the image cannot end after its root",
            manifest.board
        )));
    }
    // The manifest's claim is checked against the table: cutting the image
    // after the root would cut off any partition behind it.
    if let Some(after) = table
        .partitions
        .iter()
        .find(|p| p.index != part.index && p.end() > part.start)
    {
        bail!(
            "{}: the {} manifest says the root (partition {}) is the last partition, but partition {} ends after it starts ({} > {}); fix `root_is_last` in the manifest or pass --no-shrink",
            path.display(),
            manifest.board,
            part.index,
            after.index,
            after.end(),
            part.start
        );
    }
    if sb.needs_recovery || sb.has_errors {
        return Ok(Some(format!(
            "{what} {}; run e2fsck on the base image first",
            if sb.needs_recovery {
                "has a journal that needs recovery"
            } else {
                "has errors recorded"
            }
        )));
    }
    if root.wanted >= root.limit {
        return Ok(Some(format!(
            "the root file system uses {} MiB of {} MiB; with {} MiB of headroom there is nothing to cut",
            root.used / MIB,
            root.fs_bytes / MIB,
            root.headroom / MIB
        )));
    }
    let before = resize::check(path, part.start)?;
    if !before.clean {
        return Ok(Some(format!(
            "e2fsck -fn finds problems in {what}:\n{}",
            before.output
        )));
    }
    Ok(None)
}

/// Resizes the root at offset 0 of a file: the image itself with the bytes
/// before the root collapsed out where the file system can, else a copy of
/// the root. Returns the root's new size and how it was resized.
fn resize_root(
    path: &Path,
    image: &File,
    stock: &File,
    root: &Root,
    now: u64,
    in_place: bool,
) -> Result<(u64, Method)> {
    let start = root.part.start;
    let io_err = io_error(path);
    // Whatever lies between the file system's end and the partition's (and
    // the backup GPT behind) is cut: the partition ends at the new size.
    image.set_len(start + root.fs_bytes).map_err(io_err)?;
    let in_place = in_place && crate::io::collapse_start(image, start).map_err(io_err)?;
    if in_place {
        // The image now starts with the root; it is the file resize2fs cuts.
        let target = root.resize(path, now, || Ok(()))?;
        if !crate::io::insert_start(image, start).map_err(io_err)? {
            bail!(
                "{}: the file system collapsed the bytes before the root but cannot insert them back; the image is not written",
                path.display()
            );
        }
        crate::io::copy_extents(stock, 0, start, image, 0).map_err(io_err)?;
        return Ok((target, Method::InPlace));
    }
    tracing::debug!(
        "{}: the file system cannot collapse the {} bytes before the root; copying the root out to resize it",
        path.display(),
        start
    );
    let dir = path.parent().unwrap_or(Path::new("."));
    let temp = tempfile::Builder::new()
        .prefix(".imgbuild-root.")
        .suffix(".partial")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .tempfile_in(dir)
        .with_context(|| format!("cannot write in {}", dir.display()))?;
    let _cleanup = crate::util::cleanup::register(temp.path());
    let root_file = temp.as_file();
    let copy_out = || -> Result<()> {
        root_file.set_len(0).map_err(io_err)?;
        root_file.set_len(root.fs_bytes).map_err(io_err)?;
        crate::io::copy_extents(image, start, root.fs_bytes, root_file, 0).map_err(io_err)?;
        Ok(())
    };
    copy_out()?;
    let target = root.resize(temp.path(), now, copy_out)?;
    // The root is the last partition: drop it and put the shrunk one in its place.
    image.set_len(start).map_err(io_err)?;
    image.set_len(start + target).map_err(io_err)?;
    crate::io::copy_extents(root_file, 0, target, image, start).map_err(io_err)?;
    Ok((target, Method::Copy))
}

/// Checks the resized root and ends the root partition, and the image, at
/// its new size; the table is read back as every later stage will. Returns
/// the image's size.
fn end_after_root(
    manifest: &Manifest,
    path: &Path,
    image: &File,
    root: &Root,
    target: u64,
) -> Result<u64> {
    let (part, what) = (&root.part, &root.what);
    let io_err = io_error(path);
    if image.metadata().map_err(io_err)?.len() != part.start + target {
        bail!("{what}: resize2fs left a file system of another size than {target} bytes");
    }
    let after = resize::check(path, part.start)?;
    if !after.clean {
        bail!(
            "{what}: e2fsck -fn finds problems after resize2fs; the image is not written:\n{}",
            after.output
        );
    }
    let size = crate::image::resize::truncate_after(
        path,
        image,
        manifest.partition_table,
        part.index,
        part.start + target,
    )
    .with_context(|| format!("cutting {} after its root", path.display()))?;
    let reread = PartitionTable::read(path, Some(manifest.partition_table))
        .with_context(|| format!("reading back the table of {}", path.display()))?;
    let new_root = reread.get(path, part.index)?;
    if new_root.start != part.start || new_root.len != target || reread.image_size != size {
        bail!(
            "{}: the table read back does not show the shrunk root ({}+{} in {} bytes)",
            path.display(),
            new_root.start,
            new_root.len,
            reread.image_size
        );
    }
    Ok(size)
}

fn io_error(path: &Path) -> impl Fn(std::io::Error) -> anyhow::Error + Copy + '_ {
    move |e| anyhow::anyhow!("shrinking the root of {}: {e}", path.display())
}
