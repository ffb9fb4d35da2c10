//! Output images: written under a temporary name beside the target, mode 0600,
//! renamed into place only when complete. The base image is only ever read.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use std::io::Write;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

use crate::io::Sha256Digest;

/// How an output is stored, from its file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// `.img`: sparse raw.
    None,
    /// `.img.xz`: multithreaded xz.
    Xz,
    /// `.img.zst`: multithreaded zstd.
    Zstd,
}

impl Compression {
    /// Splits `name` into its stem (without `.img`) and compression.
    pub fn from_name(name: &str) -> Option<(&str, Compression)> {
        if let Some(s) = name.strip_suffix(".img.xz") {
            Some((s, Compression::Xz))
        } else if let Some(s) = name.strip_suffix(".img.zst") {
            Some((s, Compression::Zstd))
        } else {
            name.strip_suffix(".img").map(|s| (s, Compression::None))
        }
    }

    pub fn extension(self) -> &'static str {
        match self {
            Compression::None => "img",
            Compression::Xz => "img.xz",
            Compression::Zstd => "img.zst",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Compression::None => "copy",
            Compression::Xz => "xz",
            Compression::Zstd => "zstd",
        }
    }
}

struct HashingWriter<W: Write> {
    inner: W,
    hasher: Sha256,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

pub const SUMS_FILE: &str = "SHA256SUMS";

/// Sets the line for `path` in the `SHA256SUMS` file beside it (sha256sum format).
pub fn record_sum(path: &Path, digest: &Sha256Digest) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    let sums = dir.join(SUMS_FILE);
    // Lock the directory itself (no lock file left beside the outputs) so
    // concurrent runs do not lose each other's lines.
    let lock = File::open(&dir).with_context(|| format!("opening {}", dir.display()))?;
    // SAFETY: flock on an open descriptor; released when `lock` is dropped.
    unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
    let old = std::fs::read_to_string(&sums).unwrap_or_default();
    let mut lines: Vec<String> = old
        .lines()
        .filter(|l| {
            let file = l
                .split_once(char::is_whitespace)
                .map(|(_, f)| f.trim_start().trim_start_matches('*'));
            file != Some(name.as_str())
        })
        .map(str::to_string)
        .collect();
    lines.push(format!("{digest}  {name}"));
    lines.sort_by(|a, b| {
        a.split_once("  ")
            .map(|x| x.1)
            .cmp(&b.split_once("  ").map(|x| x.1))
    });
    let mut tmp = tempfile::NamedTempFile::new_in(&dir)
        .with_context(|| format!("writing {}", sums.display()))?;
    tmp.write_all((lines.join("\n") + "\n").as_bytes())?;
    tmp.persist(&sums)
        .map_err(|e| e.error)
        .with_context(|| format!("writing {}", sums.display()))?;
    Ok(())
}

/// How the base was copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyMethod {
    Reflink,
    Sparse,
}

/// An output being written. Dropping it without [`PendingOutput::commit`] deletes it.
pub struct PendingOutput {
    pub final_path: PathBuf,
    temp: tempfile::NamedTempFile,
    pub method: CopyMethod,
    _cleanup: crate::cleanup::Registered,
}

impl PendingOutput {
    /// Creates the temporary output next to `final_path` as a copy of `base`.
    pub fn from_base(base: &Path, final_path: &Path) -> Result<Self> {
        let dir = match final_path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => PathBuf::from("."),
        };
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

    /// Finishes the output in `compression`, renames it into place and records
    /// its sha256 in `SHA256SUMS` beside it. Returns the final path and digest.
    pub fn finish(self, compression: Compression) -> Result<(PathBuf, Sha256Digest)> {
        let (path, digest) = match compression {
            Compression::None => {
                let digest = crate::io::sha256_sparse(self.temp.as_file())
                    .with_context(|| format!("hashing {}", self.temp.path().display()))?;
                (self.commit()?, digest)
            }
            c => self.compress(c)?,
        };
        record_sum(&path, &digest)?;
        Ok((path, digest))
    }

    /// Streams the raw image through the compressor into a second temporary
    /// file; the raw one is deleted when this returns.
    fn compress(self, c: Compression) -> Result<(PathBuf, Sha256Digest)> {
        let dir = self.temp.path().parent().unwrap().to_owned();
        let (out, _cleanup) = partial_beside(&self.final_path, &dir)?;
        let raw = self.temp.as_file();
        let total = raw.metadata()?.len();
        let mut progress = crate::progress::Progress::new(c.label(), Some(total));
        let sink = out
            .as_file()
            .try_clone()
            .with_context(|| format!("opening {}", out.path().display()))?;
        let hashing = HashingWriter {
            inner: std::io::BufWriter::with_capacity(1 << 20, sink),
            hasher: Sha256::new(),
        };
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
        let out_path = out.path().to_owned();
        let write_err = |e: std::io::Error| anyhow::anyhow!("writing {}: {e}", out_path.display());
        let hashing = match c {
            Compression::Xz => {
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
            Compression::Zstd => {
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
            Compression::None => unreachable!(),
        };
        progress.finish();
        let HashingWriter { inner, hasher } = hashing;
        let file = inner.into_inner().map_err(|e| write_err(e.into_error()))?;
        file.sync_all()
            .with_context(|| format!("syncing {}", out_path.display()))?;
        let final_path = self.final_path.clone();
        out.persist(&final_path)
            .map_err(|e| e.error)
            .with_context(|| format!("renaming the finished image to {}", final_path.display()))?;
        Ok((final_path, Sha256Digest::of(hasher)))
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
) -> Result<(tempfile::NamedTempFile, crate::cleanup::Registered)> {
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
    let cleanup = crate::cleanup::register(temp.path());
    Ok((temp, cleanup))
}

/// Copies `src` into the empty `dst`: a reflink where the file system can,
/// else only the data extents (holes stay holes), each byte read once.
pub fn copy_file(src: &File, dst: &File) -> std::io::Result<CopyMethod> {
    const FICLONE: libc::c_ulong = 0x4004_9409;
    // SAFETY: FICLONE takes the source descriptor as its argument; both are open files.
    let rc = unsafe { libc::ioctl(dst.as_raw_fd(), FICLONE as _, src.as_raw_fd()) };
    if rc == 0 {
        return Ok(CopyMethod::Reflink);
    }
    let len = src.metadata()?.len();
    dst.set_len(len)?;
    let mut pos: i64 = 0;
    let len = len as i64;
    while pos < len {
        let data = unsafe { libc::lseek(src.as_raw_fd(), pos, libc::SEEK_DATA) };
        if data < 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::ENXIO) {
                break; // Only a hole remains.
            }
            return Err(err);
        }
        let hole = unsafe { libc::lseek(src.as_raw_fd(), data, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(std::io::Error::last_os_error());
        }
        copy_range(src, dst, data as u64, (hole - data) as u64)?;
        pos = hole;
    }
    Ok(CopyMethod::Sparse)
}

fn copy_range(src: &File, dst: &File, start: u64, len: u64) -> std::io::Result<()> {
    let mut done = 0u64;
    while done < len {
        let mut off_in = (start + done) as libc::loff_t;
        let mut off_out = off_in;
        let chunk = (len - done).min(1 << 30) as usize;
        // SAFETY: valid descriptors and offsets owned by this frame.
        let n = unsafe {
            libc::copy_file_range(
                src.as_raw_fd(),
                &mut off_in,
                dst.as_raw_fd(),
                &mut off_out,
                chunk,
                0,
            )
        };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            if matches!(
                err.raw_os_error(),
                Some(libc::EXDEV | libc::ENOSYS | libc::EOPNOTSUPP | libc::EINVAL)
            ) {
                return copy_range_plain(src, dst, start + done, len - done);
            }
            return Err(err);
        }
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the base image shrank while being copied",
            ));
        }
        done += n as u64;
    }
    Ok(())
}

fn copy_range_plain(src: &File, dst: &File, start: u64, len: u64) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    while done < len {
        let n = ((len - done) as usize).min(buf.len());
        src.read_exact_at(&mut buf[..n], start + done)?;
        dst.write_all_at(&buf[..n], start + done)?;
        done += n as u64;
    }
    Ok(())
}
