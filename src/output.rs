//! Output images: written under a temporary name beside the target, mode 0600,
//! renamed into place only when complete. The base image is only ever read.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

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
        let name = final_path
            .file_name()
            .context("the output path has no file name")?
            .to_string_lossy()
            .into_owned();
        let temp = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .suffix(".partial")
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .tempfile_in(&dir)
            .with_context(|| format!("cannot write in the output directory {}", dir.display()))?;
        let src = File::open(base)
            .with_context(|| format!("opening the base image {}", base.display()))?;
        let method = copy_file(&src, temp.as_file())
            .with_context(|| format!("copying {} to {}", base.display(), temp.path().display()))?;
        Ok(PendingOutput {
            final_path: final_path.to_owned(),
            temp,
            method,
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
