//! `imgbuild cache list|clean`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;
use serde::Serialize;

use super::{FetchSettings, Paths, Result};
use crate::source::Cache;
use crate::source::cache::{Entry, EntryKind};

/// A cache entry with the board whose manifest refers to it, when known.
#[derive(Debug, Serialize)]
pub struct CacheListing {
    pub root: PathBuf,
    pub entries: Vec<(Entry, Option<String>)>,
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
        .map(|e| {
            let owner = match e.kind {
                EntryKind::Asset => Some("k3s".to_string()),
                _ => keys.get(&e.key.to_string()).cloned(),
            };
            (e, owner)
        })
        .collect();
    Ok(CacheListing {
        root: cache.root,
        entries,
    })
}

/// Removes cache entries no current manifest refers to, and unfinished
/// downloads (every entry, k3s assets included, with `all`); returns what was removed.
pub fn clean(paths: &Paths, settings: &FetchSettings, all: bool) -> Result<Vec<PathBuf>> {
    let listing = list(paths, settings)?;
    let cache = settings.cache()?;
    let mut removed = Vec::new();
    for (e, board) in listing.entries {
        let unfinished = e.kind == EntryKind::Partial;
        if all || board.is_none() || unfinished {
            let _lock = cache.lock(&e.key.to_string())?;
            std::fs::remove_file(&e.path)
                .with_context(|| format!("removing {}", e.path.display()))?;
            removed.push(e.path);
        }
    }
    Ok(removed)
}
