//! Shrinking a baked copy before it is written out: the BMC writes (and reads
//! back) every byte it is sent at about 5 MB/s, so the free space of a stock
//! root (2 GiB on RK1) costs minutes per flash. The root file system is shrunk
//! by e2fsprogs' resize2fs to what it uses plus headroom, its partition then
//! ends there and the image right after it; cloud-init's growpart and
//! resize_rootfs grow both back to the whole device on first boot.
//!
//! Anything that makes shrinking unsafe before the first write (a root that is
//! not the last partition per the manifest, recorded errors, a check that is
//! not clean, too little free space) leaves the stock size with a warning;
//! a failure after the first write fails the bake, whose partial output is
//! then deleted, so a damaged image is never written out.

use std::fs::File;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::Serialize;

use crate::config::manifest::Manifest;
use crate::fs::{ext4, resize};
use crate::image::{PartitionTable, Region};

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
#[derive(Debug, Clone, Serialize)]
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
}

/// Shrinks the root of `image` (the working copy at `path`, whose table is
/// `table`), leaving `headroom_mib` (or [`default_headroom`]) free in it.
pub fn shrink(
    manifest: &Manifest,
    table: &PartitionTable,
    path: &Path,
    image: &File,
    headroom_mib: Option<u32>,
    build_time: u64,
) -> Result<ShrinkReport> {
    let root = &manifest.partitions["root"];
    let part = table.get(path, root.index)?.clone();
    let what = format!("partition {} (root) of {}", root.index, path.display());
    let region = Region::new(image, &part);
    let sb = ext4::Superblock::read(&region).with_context(|| format!("reading {what}"))?;
    let used = (sb.blocks.saturating_sub(sb.free_blocks)) * sb.block_size;
    let headroom = headroom_mib.map_or_else(|| default_headroom(used), |m| u64::from(m) * MIB);
    let mut report = ShrinkReport {
        shrunk: false,
        reason: None,
        stock_bytes: table.image_size,
        image_bytes: table.image_size,
        root_stock_bytes: part.len,
        root_bytes: part.len,
        root_used_bytes: used,
        headroom_bytes: headroom,
    };
    let keep = |mut r: ShrinkReport, reason: String| {
        tracing::warn!("{}: keeping the stock size: {reason}", path.display());
        r.reason = Some(reason);
        Ok(r)
    };
    if !manifest.root_is_last {
        return keep(
            report,
            format!(
                "the {} manifest does not say `root_is_last: true`, so the image cannot end after its root",
                manifest.board
            ),
        );
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
        return keep(
            report,
            format!(
                "{what} {}; run e2fsck on the base image first",
                if sb.needs_recovery {
                    "has a journal that needs recovery"
                } else {
                    "has errors recorded"
                }
            ),
        );
    }
    let fs_bytes = sb.blocks * sb.block_size;
    let minimum = resize::minimum_blocks(path, part.start)
        .with_context(|| format!("estimating the smallest size of {what}"))?
        * sb.block_size;
    // Whole MiB keep the partition's end aligned, and a multiple of any block size.
    // `resize2fs -P` overestimates (with flex_bg it reserved ~2 GiB for a
    // root using 1.1 GiB in the benchmark), so the used blocks, which include
    // all metadata, are the target, and its estimate only the fallback.
    let wanted = (used + headroom).div_ceil(MIB) * MIB;
    let fallback = (minimum.max(used) + headroom).div_ceil(MIB) * MIB;
    let limit = fs_bytes.min(part.len);
    if wanted >= limit {
        return keep(
            report,
            format!(
                "the root file system uses {} MiB of {} MiB; with {} MiB of headroom there is nothing to cut",
                used / MIB,
                fs_bytes / MIB,
                headroom / MIB
            ),
        );
    }
    let before = resize::check(path, part.start)?;
    if !before.clean {
        return keep(
            report,
            format!("e2fsck -fn finds problems in {what}:\n{}", before.output),
        );
    }

    // From here on the copy changes: any failure fails the bake.
    //
    // resize2fs takes `image?offset=N`, but after shrinking a regular file it
    // truncates the file to the new file-system size without the offset
    // (e2fsprogs 1.47, resize/main.c), which would cut the last N bytes off
    // the shrunk file system. So the root is resized in a file of its own:
    // its data extents are copied out (shared where the file system can),
    // resized at offset 0, where that truncation is right, and copied back.
    let dir = path.parent().unwrap_or(Path::new("."));
    let temp = tempfile::Builder::new()
        .prefix(".imgbuild-root.")
        .suffix(".partial")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .tempfile_in(dir)
        .with_context(|| format!("cannot write in {}", dir.display()))?;
    let _cleanup = crate::util::cleanup::register(temp.path());
    let root_file = temp.as_file();
    let copy_err = |e| anyhow::anyhow!("copying the root of {}: {e}", path.display());
    let now = build_time.max(resize::latest_time(&region)?);
    let copy_out = || -> Result<()> {
        root_file.set_len(0).map_err(copy_err)?;
        root_file.set_len(fs_bytes).map_err(copy_err)?;
        crate::io::copy_extents(image, part.start, fs_bytes, root_file, 0).map_err(copy_err)?;
        resize::record_check(temp.path(), 0, now)
            .with_context(|| format!("checking {what} before resizing it"))?;
        Ok(())
    };
    copy_out()?;
    // Below its own estimate resize2fs needs -f (which skips only that and
    // the fresh-check test, both covered here); if it then runs out of room,
    // the copy is discarded and its estimate used, the image being untouched.
    let target = match resize::resize(temp.path(), 0, wanted, now, wanted < minimum) {
        Ok(()) => wanted,
        Err(e) if fallback < limit && fallback > wanted => {
            tracing::debug!(
                "resize2fs to {} MiB failed ({e}); trying its own minimum",
                wanted / MIB
            );
            copy_out()?;
            resize::resize(temp.path(), 0, fallback, now, false)
                .with_context(|| format!("shrinking {what} to {} MiB", fallback / MIB))?;
            fallback
        }
        Err(e) => {
            return Err(
                anyhow::Error::new(e).context(format!("shrinking {what} to {} MiB", wanted / MIB))
            );
        }
    };
    let after = resize::check(temp.path(), 0)?;
    if !after.clean {
        bail!(
            "{what}: e2fsck -fn finds problems after resize2fs; the image is not written:\n{}",
            after.output
        );
    }
    if root_file.metadata().map_err(copy_err)?.len() != target {
        bail!("{what}: resize2fs left a file system of another size than {target} bytes");
    }
    // The root is the last partition: drop it (and the old backup GPT behind
    // it), put the shrunk one in its place, then end the table after it.
    image.set_len(part.start).map_err(copy_err)?;
    image.set_len(part.start + target).map_err(copy_err)?;
    crate::io::copy_extents(root_file, 0, target, image, part.start).map_err(copy_err)?;
    drop(temp);
    let after = resize::check(path, part.start)?;
    if !after.clean {
        bail!(
            "{what}: e2fsck -fn finds problems in the shrunk root put back; the image is not written:\n{}",
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
    // Read back what was written, as every later stage will.
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
    report.shrunk = true;
    report.image_bytes = size;
    report.root_bytes = target;
    tracing::info!(
        "{}: root shrunk from {} MiB to {} MiB ({} MiB used + {} MiB headroom); the image is {} MiB instead of {} MiB",
        path.display(),
        part.len / MIB,
        target / MIB,
        used / MIB,
        headroom / MIB,
        size.div_ceil(MIB),
        table.image_size.div_ceil(MIB)
    );
    Ok(report)
}
