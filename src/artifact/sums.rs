//! `SHA256SUMS` beside outputs: the one place that reads and writes it.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::Path;

use anyhow::{Context, Result};

use super::parent_dir;
use crate::io::Sha256Digest;
use crate::io::sums::{find_digest, set_line};

pub const SUMS_FILE: &str = "SHA256SUMS";

fn name_of(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Sets the line for `path` in the `SHA256SUMS` file beside it (sha256sum format).
pub fn record(path: &Path, digest: &Sha256Digest) -> Result<()> {
    let dir = parent_dir(path);
    let sums = dir.join(SUMS_FILE);
    // Lock the directory itself (no lock file left beside the outputs) so
    // concurrent runs do not lose each other's lines.
    let lock = File::open(&dir).with_context(|| format!("opening {}", dir.display()))?;
    // SAFETY: flock on an open descriptor; released when `lock` is dropped.
    unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
    let old = read_sums(&sums)?.unwrap_or_default();
    let mut tmp = tempfile::NamedTempFile::new_in(&dir)
        .with_context(|| format!("writing {}", sums.display()))?;
    tmp.write_all(set_line(&old, &name_of(path), digest).as_bytes())?;
    tmp.persist(&sums)
        .map_err(|e| e.error)
        .with_context(|| format!("writing {}", sums.display()))?;
    Ok(())
}

/// `SHA256SUMS` files larger than this are refused (a line per output is ~100 bytes).
const MAX_SUMS: u64 = 4 << 20;

/// Reads a `SHA256SUMS` file: `None` when there is none. Never through a
/// symlink (one planted in a shared output directory could point anywhere)
/// and never anything but a small regular file.
fn read_sums(sums: &Path) -> Result<Option<String>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let f = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(sums)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => anyhow::bail!(
            "{} is a symlink; refusing to follow it (remove it, and check who put it there)",
            sums.display()
        ),
        Err(e) => return Err(e).with_context(|| format!("opening {}", sums.display())),
    };
    let meta = f
        .metadata()
        .with_context(|| format!("reading {}", sums.display()))?;
    if !meta.is_file() {
        anyhow::bail!("{} is not a regular file", sums.display());
    }
    let mut text = String::new();
    f.take(MAX_SUMS + 1)
        .read_to_string(&mut text)
        .with_context(|| format!("reading {}", sums.display()))?;
    if text.len() as u64 > MAX_SUMS {
        anyhow::bail!("{} is larger than {MAX_SUMS} bytes", sums.display());
    }
    Ok(Some(text))
}

/// The digest `SHA256SUMS` beside `path` records for it, if any.
pub fn recorded(path: &Path) -> Option<Sha256Digest> {
    let text = read_sums(&parent_dir(path).join(SUMS_FILE)).ok()??;
    find_digest(&text, &name_of(path))
}

/// The sha256 of an image: recorded in `SHA256SUMS` beside it, else computed.
pub fn digest_of(path: &Path) -> Result<Sha256Digest> {
    if let Some(d) = recorded(path) {
        return Ok(d);
    }
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    crate::io::sha256_sparse(&f).with_context(|| format!("hashing {}", path.display()))
}
