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

/// What a change does to a `SHA256SUMS` file.
enum Change {
    Keep,
    Write(String),
    Remove,
}

/// Reads the `SHA256SUMS` beside `path` (if any) and applies `change`, given
/// its text and `path`'s name, under a lock on the directory itself (no lock
/// file left beside the outputs), so concurrent runs do not lose each
/// other's lines; a new text replaces the file atomically.
fn change_sums(path: &Path, change: impl FnOnce(Option<&str>, &str) -> Change) -> Result<()> {
    let dir = parent_dir(path);
    let sums = dir.join(SUMS_FILE);
    let lock = File::open(&dir).with_context(|| format!("opening {}", dir.display()))?;
    // SAFETY: flock on an open descriptor; released when `lock` is dropped.
    unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
    let old = read_sums(&sums)?;
    match change(old.as_deref(), &name_of(path)) {
        Change::Keep => Ok(()),
        Change::Remove => {
            std::fs::remove_file(&sums).with_context(|| format!("removing {}", sums.display()))
        }
        Change::Write(text) => {
            let mut tmp = tempfile::NamedTempFile::new_in(&dir)
                .with_context(|| format!("writing {}", sums.display()))?;
            tmp.write_all(text.as_bytes())?;
            tmp.persist(&sums)
                .map_err(|e| e.error)
                .with_context(|| format!("writing {}", sums.display()))?;
            Ok(())
        }
    }
}

/// Sets the line for `path` in the `SHA256SUMS` file beside it (sha256sum format).
pub fn record(path: &Path, digest: &Sha256Digest) -> Result<()> {
    change_sums(path, |old, name| {
        Change::Write(set_line(old.unwrap_or_default(), name, digest))
    })
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

/// Removes the line for `path` from the `SHA256SUMS` beside it, if any: an
/// output written without a digest must not inherit the line of an older
/// file of the same name.
pub fn forget(path: &Path) -> Result<()> {
    change_sums(path, |old, name| {
        let Some(old) = old.filter(|old| find_digest(old, name).is_some()) else {
            return Change::Keep;
        };
        let kept: String = old
            .lines()
            .filter(|l| crate::io::sums::line_name(l) != Some(name))
            .map(|l| format!("{l}\n"))
            .collect();
        if kept.trim().is_empty() {
            // An empty list would make `sha256sum -c` fail: none at all instead.
            Change::Remove
        } else {
            Change::Write(kept)
        }
    })
}

/// The sha256 of an image, for the BMC or whoever needs it now: the digest
/// cached on the file (see [`cache`]) while the file is the one it was
/// computed for, else computed (holes not read) and cached.
///
/// A `SHA256SUMS` line is never taken on its own: it cannot tell whether the
/// image changed after it was written (another output's line rewrites the
/// file, so its mtime says nothing about this image). It is only compared,
/// to warn that it no longer matches. Nor is a computed digest written into
/// `SHA256SUMS`: a line there attests what a build wrote, and one taken from
/// a modified image would make `verify` pass on it.
pub fn digest_of(path: &Path) -> Result<Sha256Digest> {
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let digest = match cache::get(&f) {
        Some(d) => d,
        None => {
            let started = std::time::SystemTime::now();
            let before = f
                .metadata()
                .with_context(|| format!("reading {}", path.display()))?;
            let d = crate::io::sha256_sparse(&f)
                .with_context(|| format!("hashing {}", path.display()))?;
            cache::set_if_settled(&f, &before, started, &d);
            d
        }
    };
    if let Some(line) = recorded(path)
        && line != digest
    {
        tracing::warn!(
            "{}: SHA256SUMS records sha256 {line}, but the file now has {digest}: it was modified after it was built",
            path.display()
        );
    }
    Ok(digest)
}

/// A digest cached on the image itself, in the extended attribute
/// `user.imgbuild.sha256` = `v1 <size> <mtime_ns> <inode> <hex>`: valid
/// while the file keeps that size, mtime and inode (a write changes the
/// mtime; a copy that keeps attributes gets another inode). Best effort:
/// a file system without user attributes, or any error, means no cache.
pub mod cache {
    use std::fs::{File, Metadata};
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;
    use std::time::{Duration, SystemTime};

    use crate::io::Sha256Digest;

    const NAME: &std::ffi::CStr = c"user.imgbuild.sha256";

    fn key(m: &Metadata) -> String {
        let mtime_ns = i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec());
        format!("{} {mtime_ns} {}", m.len(), m.ino())
    }

    /// The cached digest of `f`, if one is stored and still describes it.
    pub fn get(f: &File) -> Option<Sha256Digest> {
        let meta = f.metadata().ok()?;
        let mut buf = [0u8; 256];
        // SAFETY: the buffer is valid for its length; the name is NUL-terminated.
        let n = unsafe {
            libc::fgetxattr(
                f.as_raw_fd(),
                NAME.as_ptr(),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        let value = std::str::from_utf8(buf.get(..usize::try_from(n).ok()?)?).ok()?;
        let (k, hex) = value.strip_prefix("v1 ")?.rsplit_once(' ')?;
        (k == key(&meta))
            .then(|| Sha256Digest::parse(hex))
            .flatten()
    }

    /// Caches `digest` for `f` as it is now. Best effort.
    pub fn set(f: &File, digest: &Sha256Digest) {
        let Ok(meta) = f.metadata() else { return };
        let value = format!("v1 {} {digest}", key(&meta));
        // SAFETY: the value is valid for its length; the name is NUL-terminated.
        let r = unsafe {
            libc::fsetxattr(
                f.as_raw_fd(),
                NAME.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        };
        if r != 0 {
            tracing::debug!("no digest cache: {}", std::io::Error::last_os_error());
        }
    }

    /// Caches `digest`, computed from `f` as `before` described it when
    /// hashing `started`, unless the file changed meanwhile or may change
    /// unseen: file times come from a coarse clock (a jiffy), so a write
    /// just after `before` was read could keep the same mtime; a file last
    /// written more than a second before hashing started cannot.
    pub fn set_if_settled(f: &File, before: &Metadata, started: SystemTime, digest: &Sha256Digest) {
        let Ok(now) = f.metadata() else { return };
        let settled = before
            .modified()
            .is_ok_and(|m| m + Duration::from_secs(1) < started);
        if settled && key(&now) == key(before) {
            set(f, digest);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn scratch() -> tempfile::TempDir {
        // Under target/, not /tmp: a tmpfs may lack user attributes.
        let base = Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
        std::fs::create_dir_all(&base).unwrap();
        tempfile::tempdir_in(base).unwrap()
    }

    fn sha(b: &[u8]) -> Sha256Digest {
        use sha2::Digest;
        Sha256Digest::of(sha2::Sha256::new_with_prefix(b))
    }

    /// Sets the file's mtime `secs` seconds back, as if written long ago.
    fn age(path: &Path, secs: u64) {
        let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
        let t = std::time::SystemTime::now() - std::time::Duration::from_secs(secs);
        f.set_modified(t).unwrap();
    }

    fn xattrs_work(path: &Path) -> bool {
        let f = File::open(path).unwrap();
        cache::set(&f, &Sha256Digest([0; 32]));
        cache::get(&f).is_some()
    }

    #[test]
    fn digest_of_caches_and_notices_changes() {
        let dir = scratch();
        let img = dir.path().join("n.rk1.img");
        std::fs::write(&img, b"first").unwrap();
        if !xattrs_work(&img) {
            eprintln!("skipped: no user xattrs on {}", dir.path().display());
            return;
        }
        age(&img, 10);
        let first = digest_of(&img).unwrap();
        assert_eq!(first, sha(b"first"));
        // The cache is what is used now: a forged cache value with the
        // right key is returned without reading the file.
        let forged = Sha256Digest([9; 32]);
        cache::set(&File::open(&img).unwrap(), &forged);
        assert_eq!(digest_of(&img).unwrap(), forged);
        // Any write changes the key: the cache is ignored.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&img)
            .unwrap()
            .write_all(b"!")
            .unwrap();
        assert_eq!(digest_of(&img).unwrap(), sha(b"first!"));
        // Fresh file: not cached (a same-jiffy write could go unseen).
        assert!(cache::get(&File::open(&img).unwrap()).is_none());
    }

    #[test]
    fn a_stale_sums_line_is_not_trusted() {
        let dir = scratch();
        let img = dir.path().join("n.rk1.img");
        std::fs::write(&img, b"new contents").unwrap();
        record(&img, &sha(b"old contents")).unwrap();
        assert_eq!(recorded(&img), Some(sha(b"old contents")));
        assert_eq!(digest_of(&img).unwrap(), sha(b"new contents"));
    }

    #[test]
    fn forget_removes_only_that_line() {
        let dir = scratch();
        let a = dir.path().join("a.rk1.img");
        let b = dir.path().join("b.rk1.img");
        record(&a, &Sha256Digest([1; 32])).unwrap();
        record(&b, &Sha256Digest([2; 32])).unwrap();
        forget(&a).unwrap();
        assert_eq!(recorded(&a), None);
        assert_eq!(recorded(&b), Some(Sha256Digest([2; 32])));
        forget(&a).unwrap();
        forget(&dir.path().join("none.rk1.img")).unwrap();
        assert_eq!(recorded(&b), Some(Sha256Digest([2; 32])));
        forget(&b).unwrap();
        assert!(!dir.path().join(SUMS_FILE).exists());
        forget(&b).unwrap();
    }
}
