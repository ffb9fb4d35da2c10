//! The image cache: downloads and unpacked images keyed by the download's
//! sha256, a lock per key so concurrent runs never corrupt an entry, and
//! entries that appear (by rename) only when complete.
//!
//! ```text
//! <cache>/images/<sha256>.img   unpacked raw image (sparse)
//! <cache>/downloads/<sha256>    verified download, until unpacked
//! <cache>/assets/<sha256>       verified file used as is (k3s binary, air-gap images,
//!                               bootstrap chart archives, container image blobs)
//! <cache>/oci/<index sha256>-<arch>-<name hash>.tar  a container image's OCI layout tar
//! <cache>/partial/<sha256>.part download in progress (resumable)
//! <cache>/sums/<sha256 of URL>  digest learnt from a checksum file (for --offline)
//! <cache>/locks/<key>.lock
//! <cache>/images/.incoming-<key>-XXXXXX  an image being unpacked (left by a killed run)
//! ```

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

use crate::io::Sha256Digest;

#[derive(Debug, Clone)]
pub struct Cache {
    pub root: PathBuf,
}

/// Held while a key is being fetched or unpacked.
pub struct KeyLock {
    _file: File,
    path: PathBuf,
}

impl KeyLock {
    /// Deletes the lock file while holding it; a run waiting on it notices
    /// and locks a new one (see [`Cache::lock`]).
    pub fn remove_file(self) -> Result<()> {
        match std::fs::remove_file(&self.path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("removing {}", self.path.display()))
            }
            _ => Ok(()),
        }
    }
}

/// Whether `path` still names the file open as `file`.
fn same_file(file: &File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

fn flock(file: &File, op: libc::c_int) -> bool {
    // SAFETY: flock on an open descriptor.
    unsafe { libc::flock(file.as_raw_fd(), op) == 0 }
}

impl Cache {
    pub fn new(root: PathBuf) -> Cache {
        Cache { root }
    }

    fn dir(&self, name: &str) -> Result<PathBuf> {
        let d = self.root.join(name);
        std::fs::create_dir_all(&d)
            .with_context(|| format!("creating the cache directory {}", d.display()))?;
        Ok(d)
    }

    pub fn image_path(&self, key: &Sha256Digest) -> PathBuf {
        self.root.join("images").join(format!("{key}.img"))
    }

    /// A verified file kept as downloaded (k3s binaries and image tarballs).
    pub fn asset_path(&self, key: &Sha256Digest) -> PathBuf {
        self.root.join("assets").join(key.to_string())
    }

    /// The asset `key`, made by `fetch` into a partial file when missing:
    /// checked again under the key's lock (another run may have made it
    /// meanwhile) and renamed into place when `fetch` succeeds. `fetch` must
    /// verify what it wrote and decides what a failure leaves (a release
    /// download keeps its partial file to resume; a bad one is removed).
    pub fn fill_asset<E>(
        &self,
        key: &Sha256Digest,
        fetch: impl FnOnce(&Path) -> std::result::Result<(), E>,
    ) -> Result<PathBuf>
    where
        anyhow::Error: From<E>,
    {
        let path = self.asset_path(key);
        if path.is_file() {
            return Ok(path);
        }
        let _lock = self.lock(key)?;
        if path.is_file() {
            return Ok(path);
        }
        let partial = self.partial_path(key)?;
        fetch(&partial)?;
        std::fs::create_dir_all(path.parent().unwrap_or(&self.root))?;
        std::fs::rename(&partial, &path)
            .with_context(|| format!("moving the download to {}", path.display()))?;
        Ok(path)
    }

    pub fn download_path(&self, key: &Sha256Digest) -> PathBuf {
        self.root.join("downloads").join(key.to_string())
    }

    pub fn partial_path(&self, key: &Sha256Digest) -> Result<PathBuf> {
        Ok(self.dir("partial")?.join(format!("{key}.part")))
    }

    /// A temporary file in `dir` of the cache for `key`, renamed into place
    /// when complete. Only ever created under the key's lock, so `cache
    /// clean` can tell a live one from one a killed run left.
    pub fn temp_in(&self, dir: &str, key: &Sha256Digest) -> Result<tempfile::NamedTempFile> {
        let d = self.dir(dir)?;
        tempfile::Builder::new()
            .prefix(&format!("{INCOMING}{key}-"))
            .tempfile_in(&d)
            .with_context(|| format!("creating a temporary file in {}", d.display()))
    }

    fn open_lock(&self, key: &str) -> Result<(File, PathBuf)> {
        let path = self.dir("locks")?.join(format!("{key}.lock"));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening the lock {}", path.display()))?;
        Ok((file, path))
    }

    /// Takes the lock for `key`, waiting for another imgbuild that holds it.
    /// Keys are digests: a lock file's name is never made from anything else.
    pub fn lock(&self, key: &Sha256Digest) -> Result<KeyLock> {
        let key = key.to_string();
        let mut said = false;
        loop {
            let (file, path) = self.open_lock(&key)?;
            if !flock(&file, libc::LOCK_EX | libc::LOCK_NB) {
                if !said {
                    tracing::info!("waiting for another imgbuild using the cache entry {key}");
                    said = true;
                }
                if !flock(&file, libc::LOCK_EX) {
                    return Err(std::io::Error::last_os_error())
                        .with_context(|| format!("locking {}", path.display()));
                }
            }
            // `cache clean` may have removed the lock file while we waited:
            // then we hold a lock nobody else will see; take the new one.
            if same_file(&file, &path) {
                return Ok(KeyLock { _file: file, path });
            }
        }
    }

    /// Takes the lock for `key` if no other imgbuild holds it.
    pub fn try_lock(&self, key: &str) -> Result<Option<KeyLock>> {
        let (file, path) = self.open_lock(key)?;
        if flock(&file, libc::LOCK_EX | libc::LOCK_NB) && same_file(&file, &path) {
            Ok(Some(KeyLock { _file: file, path }))
        } else {
            Ok(None)
        }
    }

    /// Keys that have a lock file.
    pub fn lock_keys(&self) -> Vec<String> {
        let Ok(rd) = std::fs::read_dir(self.root.join("locks")) else {
            return Vec::new();
        };
        rd.flatten()
            .filter_map(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_suffix(".lock"))
                    .map(str::to_string)
            })
            .collect()
    }

    /// Forgets every digest learnt from checksum files.
    pub fn forget_digests(&self) -> Result<usize> {
        let Ok(rd) = std::fs::read_dir(self.root.join("sums")) else {
            return Ok(0);
        };
        let mut n = 0;
        for e in rd.flatten() {
            std::fs::remove_file(e.path())
                .with_context(|| format!("removing {}", e.path().display()))?;
            n += 1;
        }
        Ok(n)
    }

    /// Removes the cache's subdirectories that are empty.
    pub fn remove_empty_dirs(&self) {
        for d in DIRS {
            let _ = std::fs::remove_dir(self.root.join(d));
        }
    }

    fn url_key(url: &str) -> String {
        hex::encode(Sha256::digest(url.as_bytes()))
    }

    /// Remembers the digest a checksum file gave for `url`.
    pub fn remember_digest(&self, url: &str, digest: &Sha256Digest) -> Result<()> {
        let path = self.dir("sums")?.join(Self::url_key(url));
        std::fs::write(&path, digest.to_string())
            .with_context(|| format!("writing {}", path.display()))
    }

    /// Every digest learnt from checksum files (whatever the URL).
    pub fn remembered_digests(&self) -> std::collections::BTreeSet<Sha256Digest> {
        let Ok(rd) = std::fs::read_dir(self.root.join("sums")) else {
            return Default::default();
        };
        rd.flatten()
            .filter_map(|e| std::fs::read_to_string(e.path()).ok())
            .filter_map(|t| Sha256Digest::parse(t.trim()))
            .collect()
    }

    pub fn remembered_digest(&self, url: &str) -> Option<Sha256Digest> {
        let text = std::fs::read_to_string(self.root.join("sums").join(Self::url_key(url))).ok()?;
        Sha256Digest::parse(&text)
    }

    /// Every file in the cache with its kind and size on disk.
    pub fn entries(&self) -> Result<Vec<Entry>> {
        let mut out = Vec::new();
        for (dir, kind) in [
            ("images", EntryKind::Image),
            ("assets", EntryKind::Asset),
            ("downloads", EntryKind::Download),
            ("partial", EntryKind::Partial),
            ("oci", EntryKind::Oci),
        ] {
            let Ok(rd) = std::fs::read_dir(self.root.join(dir)) else {
                continue;
            };
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let (kind, key) = match name.strip_prefix(INCOMING) {
                    Some(rest) => (EntryKind::Incoming, rest.get(..64)),
                    // `<index digest>-<arch>-<name hash>.tar`
                    None if kind == EntryKind::Oci => (kind, name.get(..64)),
                    None => (kind, name.split('.').next()),
                };
                let Some(key) = key.and_then(Sha256Digest::parse) else {
                    continue;
                };
                let meta = e.metadata()?;
                use std::os::unix::fs::MetadataExt;
                out.push(Entry {
                    kind,
                    key,
                    path: e.path(),
                    apparent: meta.len(),
                    allocated: meta.blocks() * 512,
                });
            }
        }
        out.sort_by_key(|a| (a.kind as u8, a.key));
        Ok(out)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    Image,
    Asset,
    Download,
    Partial,
    /// An unpack in progress, or left by a killed run.
    Incoming,
    /// A container image's archive (its key is the pinned index digest;
    /// its blobs are assets).
    Oci,
}

/// Name prefix of temporary files in the cache.
const INCOMING: &str = ".incoming-";

/// Every subdirectory the cache may have.
const DIRS: [&str; 7] = [
    "images",
    "assets",
    "downloads",
    "partial",
    "sums",
    "locks",
    "oci",
];

#[derive(Debug, Clone)]
pub struct Entry {
    pub kind: EntryKind,
    pub key: Sha256Digest,
    pub path: PathBuf,
    pub apparent: u64,
    pub allocated: u64,
}

/// Moves a complete temporary file into place.
pub fn commit(temp: tempfile::NamedTempFile, dest: &Path) -> Result<()> {
    temp.as_file().sync_all().ok();
    temp.persist(dest)
        .map_err(|e| e.error)
        .with_context(|| format!("moving the finished file to {}", dest.display()))?;
    Ok(())
}
