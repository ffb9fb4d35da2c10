//! Outputs being written: a temporary `.partial` file beside the target, mode
//! 0600, deleted on failure or interrupt, renamed into place only when
//! complete (raw or compressed), with its line in `SHA256SUMS` when it was
//! hashed (see [`PendingOutput::finish`]).
//!
//! A run killed outright (`kill -9`, power loss) cannot delete its partial
//! file, so every partial is locked (flock) by the process writing it, and a
//! later run in the same directory removes the partial files no live process
//! holds. Creating and locking a partial, and looking for stale ones, happen
//! under a lock on the directory, so a partial is never seen unlocked while
//! its writer lives.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::{Format, sums};
use crate::io::{CopyMethod, HashingWriter, Sha256Digest, copy_file_with_progress};

/// An output being written. Dropping it without [`PendingOutput::commit`] deletes it.
pub struct PendingOutput {
    pub final_path: PathBuf,
    temp: tempfile::NamedTempFile,
    pub method: CopyMethod,
    _cleanup: crate::util::cleanup::Registered,
}

impl PendingOutput {
    /// Creates the temporary output next to `final_path` as a copy of `base`.
    pub fn from_base(base: &Path, final_path: &Path) -> Result<Self> {
        let dir = super::parent_dir(final_path);
        if !dir.is_dir() {
            // Outputs hold secrets: a new output directory is private whatever the umask.
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .with_context(|| format!("creating the output directory {}", dir.display()))?;
        }
        let (temp, cleanup) = partial_beside(final_path, &dir)?;
        let src = File::open(base)
            .with_context(|| format!("opening the base image {}", base.display()))?;
        let method = copy_file_with_progress(&src, temp.as_file(), "copy")
            .with_context(|| format!("copying {} to {}", base.display(), temp.path().display()))?;
        Ok(PendingOutput {
            final_path: final_path.to_owned(),
            temp,
            method,
            _cleanup: cleanup,
        })
    }

    /// Creates an empty temporary output next to `final_path`, to be filled
    /// by the caller (e.g. unpacked into).
    pub fn empty(final_path: &Path) -> Result<Self> {
        let dir = super::parent_dir(final_path);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("creating the output directory {}", dir.display()))?;
        let (temp, cleanup) = partial_beside(final_path, &dir)?;
        Ok(PendingOutput {
            final_path: final_path.to_owned(),
            temp,
            method: CopyMethod::Sparse,
            _cleanup: cleanup,
        })
    }

    pub fn path(&self) -> &Path {
        self.temp.path()
    }

    /// A read-write handle to the temporary image.
    pub fn open(&self) -> Result<File> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(self.temp.path())
            .with_context(|| format!("opening {}", self.temp.path().display()))
    }

    /// Finishes the output in `format` and renames it into place. A
    /// compressed output is hashed in its compression pass and its sha256
    /// recorded in `SHA256SUMS` beside it. A raw one (or an `.iso`) is hashed
    /// only with `hash_raw` (a pass over its data, holes not read): then its
    /// digest is recorded, and cached on the file for `sums::digest_of`;
    /// without, any line or provenance statement left by an older file of
    /// that name is removed, and no digest is returned.
    pub fn finish(self, format: Format, hash_raw: bool) -> Result<(PathBuf, Option<Sha256Digest>)> {
        let (path, digest) = match format {
            Format::Raw | Format::Iso if hash_raw => {
                // Hash (holes not read) while the image is flushed to disk.
                let file = self.temp.as_file();
                let (digest, synced) = std::thread::scope(|s| {
                    let sync = s.spawn(|| file.sync_all());
                    let digest = crate::io::sha256_sparse(file);
                    (digest, sync.join())
                });
                let digest =
                    digest.with_context(|| format!("hashing {}", self.temp.path().display()))?;
                synced
                    .map_err(|_| anyhow::anyhow!("syncing {} failed", self.temp.path().display()))?
                    .with_context(|| format!("syncing {}", self.temp.path().display()))?;
                // Nothing else writes the partial file: the digest is its own.
                sums::cache::set(file, &digest);
                (self.commit()?, digest)
            }
            Format::Raw | Format::Iso => {
                // Before the rename: a crash in between leaves the old image
                // without its records, never the new one with the old records.
                sums::forget(&self.final_path)?;
                let statement = super::statement::path_for(&self.final_path);
                match std::fs::remove_file(&statement) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        return Err(e).with_context(|| {
                            format!("removing the stale {}", statement.display())
                        });
                    }
                }
                return Ok((self.commit()?, None));
            }
            c => self.compress(c)?,
        };
        sums::record(&path, &digest)?;
        Ok((path, Some(digest)))
    }

    /// Streams the raw image through the compressor into a second temporary
    /// file; the raw one is deleted when this returns.
    fn compress(self, c: Format) -> Result<(PathBuf, Sha256Digest)> {
        let dir = self.temp.path().parent().unwrap().to_owned();
        let (out, _cleanup) = partial_beside(&self.final_path, &dir)?;
        let raw = self.temp.as_file();
        let total = raw.metadata()?.len();
        let mut progress = crate::io::progress::Progress::new(c.label(), Some(total));
        let sink = out
            .as_file()
            .try_clone()
            .with_context(|| format!("opening {}", out.path().display()))?;
        let hashing = HashingWriter::new(std::io::BufWriter::with_capacity(
            1 << 20,
            crate::io::WritebackFile::new(sink),
        ));
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        let out_path = out.path().to_owned();
        let write_err = |e: std::io::Error| anyhow::anyhow!("writing {}: {e}", out_path.display());
        let hashing = match c {
            Format::Xz => {
                let stream = xz_encoder(threads)?;
                let mut enc = liblzma::write::XzEncoder::new_stream(hashing, stream);
                crate::io::stream_sparse(raw, |b| {
                    progress.inc(b.len() as u64);
                    enc.write_all(b)
                })
                .map_err(write_err)?;
                enc.finish().map_err(write_err)?
            }
            Format::Zstd => {
                let mut enc = zstd::stream::write::Encoder::new(hashing, 3).map_err(write_err)?;
                enc.multithread(threads).map_err(write_err)?;
                enc.include_checksum(true).map_err(write_err)?;
                crate::io::stream_sparse(raw, |b| {
                    progress.inc(b.len() as u64);
                    enc.write_all(b)
                })
                .map_err(write_err)?;
                enc.finish().map_err(write_err)?
            }
            Format::Raw | Format::Iso => unreachable!(),
        };
        progress.finish();
        let (inner, digest) = hashing.finish();
        let file = inner
            .into_inner()
            .map_err(|e| write_err(e.into_error()))?
            .into_inner();
        file.sync_all()
            .with_context(|| format!("syncing {}", out_path.display()))?;
        let final_path = self.final_path.clone();
        out.persist(&final_path)
            .map_err(|e| e.error)
            .with_context(|| format!("renaming the finished image to {}", final_path.display()))?;
        Ok((final_path, digest))
    }

    /// Flushes the image to disk and renames it to its final name.
    pub fn commit(self) -> Result<PathBuf> {
        self.temp
            .as_file()
            .sync_all()
            .with_context(|| format!("syncing {}", self.temp.path().display()))?;
        let final_path = self.final_path.clone();
        self.temp
            .persist(&final_path)
            .map_err(|e| e.error)
            .with_context(|| format!("renaming the finished image to {}", final_path.display()))?;
        Ok(final_path)
    }
}

/// The xz preset of `.img.xz` outputs: 4 MiB dictionary, hash-chain match
/// finder. Preset 6 (xz's default) makes images ~8 % smaller but takes twice
/// the time and 94 MiB per encoder thread, more than the whole budget below
/// with two threads.
pub const XZ_PRESET: u32 = 3;

/// What the xz encoder may use by liblzma's own estimate, so that compressing
/// stays under 100 MiB peak RSS on any machine (the rest is the process).
const XZ_MEMORY_BUDGET: u64 = 88 << 20;

/// The multithreaded xz encoder for `threads` cores within
/// [`XZ_MEMORY_BUDGET`]: xz's default block size (3 dictionaries) and all the
/// threads when they fit, else smaller blocks (down to one dictionary: the
/// output barely changes) and then fewer threads. Each thread holds about
/// three blocks (its input and liblzma's output buffers) besides its encoder,
/// so memory never grows with the image.
fn xz_encoder(threads: u32) -> Result<liblzma::stream::Stream> {
    let (builder, threads, block_size) = xz_fitted(threads);
    tracing::debug!(
        threads,
        block_size,
        memusage = builder.memusage(),
        "xz encoder"
    );
    builder.encoder().context("setting up the xz encoder")
}

/// The builder of [`xz_encoder`], with the threads and block size it chose.
fn xz_fitted(threads: u32) -> (liblzma::stream::MtStreamBuilder, u32, u64) {
    let dict = 4u64 << 20;
    let mut builder = liblzma::stream::MtStreamBuilder::new();
    builder
        .preset(XZ_PRESET)
        .check(liblzma::stream::Check::Crc64);
    for t in (1..=threads.max(1)).rev() {
        for blocks in [3, 2, 1] {
            builder.threads(t).block_size(blocks * dict);
            if builder.memusage() <= XZ_MEMORY_BUDGET {
                return (builder, t, blocks * dict);
            }
        }
    }
    // One thread with one-dictionary blocks fits preset 3 (~40 MiB); keep the
    // smallest setting should liblzma's estimate ever grow.
    builder.threads(1).block_size(dict);
    (builder, 1, dict)
}

/// A `.<name>.XXXX.partial` file (mode 0600, locked while it lives) in `dir`
/// for the output `final_path`, deleted on drop or on interrupt.
fn partial_beside(
    final_path: &Path,
    dir: &Path,
) -> Result<(tempfile::NamedTempFile, crate::util::cleanup::Registered)> {
    let name = final_path
        .file_name()
        .context("the output path has no file name")?
        .to_string_lossy()
        .into_owned();
    let dir_lock = File::open(dir)
        .with_context(|| format!("opening the output directory {}", dir.display()))?;
    lock(&dir_lock, false)
        .with_context(|| format!("locking the output directory {}", dir.display()))?;
    remove_stale_partials(dir);
    let temp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(PARTIAL)
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .tempfile_in(dir)
        .with_context(|| format!("cannot write in the output directory {}", dir.display()))?;
    let cleanup = crate::util::cleanup::register(temp.path());
    lock(temp.as_file(), false).with_context(|| format!("locking {}", temp.path().display()))?;
    drop(dir_lock);
    Ok((temp, cleanup))
}

const PARTIAL: &str = ".partial";

/// Takes an exclusive flock on `f` (held until `f` is closed); with `try_only`,
/// `Ok(false)` when another open file holds it.
fn lock(f: &File, try_only: bool) -> std::io::Result<bool> {
    use std::os::fd::AsRawFd;
    let op = if try_only {
        libc::LOCK_EX | libc::LOCK_NB
    } else {
        libc::LOCK_EX
    };
    // SAFETY: flock on an open descriptor.
    if unsafe { libc::flock(f.as_raw_fd(), op) } == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    if try_only && e.kind() == std::io::ErrorKind::WouldBlock {
        return Ok(false);
    }
    Err(e)
}

/// Whether `name` is one of our partial outputs: `.<node>.<board>.img[.xz|.zst].XXXXXX.partial`.
fn is_partial_name(name: &str) -> bool {
    let Some(stem) = name.strip_prefix('.').and_then(|n| n.strip_suffix(PARTIAL)) else {
        return false;
    };
    let Some((output, random)) = stem.rsplit_once('.') else {
        return false;
    };
    !random.is_empty()
        && random.bytes().all(|b| b.is_ascii_alphanumeric())
        && super::Target::parse(Path::new(output)).is_ok()
}

/// Removes the partial outputs in `dir` that no live process holds: regular
/// files (never through a symlink) of ours, named like ours, not locked.
/// Called with the directory locked. Best effort: a file it cannot check is kept.
fn remove_stale_partials(dir: &Path) {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !is_partial_name(&name) {
            continue;
        }
        let path = e.path();
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if !meta.file_type().is_file() || meta.uid() != uid {
            continue;
        }
        let Ok(f) = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&path)
        else {
            continue;
        };
        let same = f
            .metadata()
            .is_ok_and(|m| m.dev() == meta.dev() && m.ino() == meta.ino());
        if same && lock(&f, true).unwrap_or(false) && std::fs::remove_file(&path).is_ok() {
            tracing::info!(
                "removed {}, left by an imgbuild run that was killed",
                path.display()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xz_encoder_fits_the_memory_budget_on_any_machine() {
        for threads in [1, 2, 3, 4, 8, 16, 64, 256] {
            let (builder, t, block) = xz_fitted(threads);
            let mem = builder.memusage();
            assert!(mem <= XZ_MEMORY_BUDGET, "{threads} cores: {mem} bytes");
            assert!(t >= 1 && t <= threads, "{threads} cores: {t} threads");
            assert!(block >= 4 << 20, "{threads} cores: {block}-byte blocks");
        }
        // Two cores (the machines this runs on) keep both threads.
        assert_eq!(xz_fitted(2).1, 2);
    }

    #[test]
    fn partial_names() {
        assert!(is_partial_name(".node02.rk1.img.AbC123.partial"));
        assert!(is_partial_name(".node02.rk1.img.xz.AbC123.partial"));
        assert!(!is_partial_name("node02.rk1.img.AbC123.partial"));
        assert!(!is_partial_name(".something.AbC123.partial"));
        assert!(!is_partial_name(".node02.rk1.img..partial"));
        assert!(!is_partial_name(".node02.rk1.img.AbC123"));
    }
}
