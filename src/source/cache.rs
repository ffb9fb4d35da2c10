//! The image cache: downloads and unpacked images keyed by the download's
//! sha256, a lock per key so concurrent runs never corrupt an entry, and
//! entries that appear (by rename) only when complete.
//!
//! ```text
//! <cache>/images/<sha256>.img   unpacked raw image (sparse)
//! <cache>/downloads/<sha256>    verified download, until unpacked
//! <cache>/assets/<sha256>       verified file used as is (k3s binary, air-gap images)
//! <cache>/partial/<sha256>.part download in progress (resumable)
//! <cache>/sums/<sha256 of URL>  digest learnt from a checksum file (for --offline)
//! <cache>/locks/<key>.lock
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

    pub fn download_path(&self, key: &Sha256Digest) -> PathBuf {
        self.root.join("downloads").join(key.to_string())
    }

    pub fn partial_path(&self, key: &Sha256Digest) -> Result<PathBuf> {
        Ok(self.dir("partial")?.join(format!("{key}.part")))
    }

    /// A temporary file in `dir` of the cache, renamed into place when complete.
    pub fn temp_in(&self, dir: &str) -> Result<tempfile::NamedTempFile> {
        let d = self.dir(dir)?;
        tempfile::Builder::new()
            .prefix(".incoming-")
            .tempfile_in(&d)
            .with_context(|| format!("creating a temporary file in {}", d.display()))
    }

    /// Takes the lock for `key`, waiting for another imgbuild that holds it.
    pub fn lock(&self, key: &str) -> Result<KeyLock> {
        let path = self.dir("locks")?.join(format!("{key}.lock"));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening the lock {}", path.display()))?;
        // SAFETY: flock on an open descriptor.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            tracing::info!("waiting for another imgbuild using the cache entry {key}");
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
                return Err(std::io::Error::last_os_error())
                    .with_context(|| format!("locking {}", path.display()));
            }
        }
        Ok(KeyLock { _file: file })
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
        ] {
            let Ok(rd) = std::fs::read_dir(self.root.join(dir)) else {
                continue;
            };
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let key = name.split('.').next().and_then(Sha256Digest::parse);
                let Some(key) = key else { continue };
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    Image,
    Asset,
    Download,
    Partial,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct Entry {
    pub kind: EntryKind,
    #[serde(serialize_with = "display")]
    pub key: Sha256Digest,
    pub path: PathBuf,
    pub apparent: u64,
    pub allocated: u64,
}

fn display<S: serde::Serializer>(d: &Sha256Digest, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.collect_str(d)
}

/// Moves a complete temporary file into place.
pub fn commit(temp: tempfile::NamedTempFile, dest: &Path) -> Result<()> {
    temp.as_file().sync_all().ok();
    temp.persist(dest)
        .map_err(|e| e.error)
        .with_context(|| format!("moving the finished file to {}", dest.display()))?;
    Ok(())
}
