//! `imgbuild cache list|clean`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use serde::Serialize;

use super::{FetchSettings, Paths, Result};
use crate::source::Cache;
use crate::source::cache::{Entry, EntryKind};

/// The cache's entries, each with the board whose manifest refers to it
/// (`k3s` for release assets) when known.
#[derive(Debug, Serialize)]
pub struct CacheListing {
    pub root: PathBuf,
    pub entries: Vec<Listed>,
}

#[derive(Debug, Serialize)]
pub struct Listed {
    #[serde(flatten)]
    pub entry: Entry,
    pub board: Option<String>,
}

/// What `cache clean` did.
#[derive(Debug, Default, Serialize)]
pub struct Cleaned {
    pub removed: Vec<PathBuf>,
    /// Entries another imgbuild is working on: left alone.
    pub in_use: Vec<PathBuf>,
}

/// Cache keys of the current manifests' images, with their boards.
fn board_keys(paths: &Paths, cache: &Cache) -> BTreeMap<String, String> {
    let mut keys = BTreeMap::new();
    if let Ok(manifests) = super::load_manifests(paths) {
        for m in manifests.values() {
            let key = m.source.sha256.clone().or_else(|| {
                cache
                    .remembered_digest(&m.source.url)
                    .map(|d| d.to_string())
            });
            if let Some(k) = key {
                keys.insert(k, m.board.clone());
            }
        }
    }
    keys
}

pub fn list(paths: &Paths, settings: &FetchSettings) -> Result<CacheListing> {
    let cache = settings.cache()?;
    let keys = board_keys(paths, &cache);
    let entries = cache
        .entries()?
        .into_iter()
        .map(|entry| {
            let board = match entry.kind {
                EntryKind::Asset => Some("k3s".to_string()),
                _ => keys.get(&entry.key.to_string()).cloned(),
            };
            Listed { entry, board }
        })
        .collect();
    Ok(CacheListing {
        root: cache.root,
        entries,
    })
}

/// Removes cache entries no current manifest refers to, unfinished downloads
/// and unpacks left by killed runs (every entry, k3s assets and learnt
/// digests included, with `all`); entries another run is using are skipped.
pub fn clean(paths: &Paths, settings: &FetchSettings, all: bool) -> Result<Cleaned> {
    let listing = list(paths, settings)?;
    let cache = settings.cache()?;
    let mut done = Cleaned::default();
    for Listed { entry: e, board } in listing.entries {
        let unfinished = matches!(e.kind, EntryKind::Partial | EntryKind::Incoming);
        if !(all || board.is_none() || unfinished) {
            continue;
        }
        // Never wait: an entry someone holds is in use (a download or unpack
        // in progress), not abandoned.
        let Some(_lock) = cache.try_lock(&e.key.to_string())? else {
            done.in_use.push(e.path);
            continue;
        };
        match std::fs::remove_file(&e.path) {
            Ok(()) => done.removed.push(e.path),
            // Finished or removed by another run since the listing.
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => {
                return Err(anyhow::Error::new(err)
                    .context(format!("removing {}", e.path.display()))
                    .into());
            }
        }
    }
    // Lock files of keys with nothing left in the cache.
    let live: BTreeSet<String> = cache
        .entries()?
        .into_iter()
        .map(|e| e.key.to_string())
        .collect();
    for key in cache.lock_keys() {
        if !live.contains(&key)
            && let Some(lock) = cache.try_lock(&key)?
        {
            lock.remove_file()?;
        }
    }
    if all {
        cache.forget_digests()?;
        cache.remove_empty_dirs();
    }
    Ok(done)
}
