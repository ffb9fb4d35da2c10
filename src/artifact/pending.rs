//! Outputs being written: a temporary `.partial` file beside the target, mode
//! 0600, deleted on failure or interrupt, renamed into place only when
//! complete (raw or compressed), with its line in `SHA256SUMS`.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::{Format, sums};
use crate::io::{CopyMethod, HashingWriter, Sha256Digest, copy_file};

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
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("creating the output directory {}", dir.display()))?;
        }
        let (temp, cleanup) = partial_beside(final_path, &dir)?;
        let src = File::open(base)
            .with_context(|| format!("opening the base image {}", base.display()))?;
        let method = copy_file(&src, temp.as_file())
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

    /// Finishes the output in `format`, renames it into place and records
    /// its sha256 in `SHA256SUMS` beside it. Returns the final path and digest.
    pub fn finish(self, format: Format) -> Result<(PathBuf, Sha256Digest)> {
        let (path, digest) = match format {
            Format::Raw => {
                let digest = crate::io::sha256_sparse(self.temp.as_file())
                    .with_context(|| format!("hashing {}", self.temp.path().display()))?;
                (self.commit()?, digest)
            }
            c => self.compress(c)?,
        };
        sums::record(&path, &digest)?;
        Ok((path, digest))
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
        let hashing = HashingWriter::new(std::io::BufWriter::with_capacity(1 << 20, sink));
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        let out_path = out.path().to_owned();
        let write_err = |e: std::io::Error| anyhow::anyhow!("writing {}: {e}", out_path.display());
        let hashing = match c {
            Format::Xz => {
                let stream = liblzma::stream::MtStreamBuilder::new()
                    .threads(threads)
                    .preset(6)
                    .check(liblzma::stream::Check::Crc64)
                    .encoder()
                    .context("setting up the xz encoder")?;
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
            Format::Raw => unreachable!(),
        };
        progress.finish();
        let (inner, digest) = hashing.finish();
        let file = inner.into_inner().map_err(|e| write_err(e.into_error()))?;
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

/// A `.<name>.XXXX.partial` file (mode 0600) in `dir` for the output
/// `final_path`, deleted on drop or on interrupt.
fn partial_beside(
    final_path: &Path,
    dir: &Path,
) -> Result<(tempfile::NamedTempFile, crate::util::cleanup::Registered)> {
    let name = final_path
        .file_name()
        .context("the output path has no file name")?
        .to_string_lossy()
        .into_owned();
    let temp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".partial")
        .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .tempfile_in(dir)
        .with_context(|| format!("cannot write in the output directory {}", dir.display()))?;
    let cleanup = crate::util::cleanup::register(temp.path());
    Ok((temp, cleanup))
}
