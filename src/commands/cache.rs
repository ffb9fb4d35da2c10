//! `imgbuild cache list|clean`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use super::{FetchSettings, Paths, Result};
use crate::source::Cache;
use crate::source::cache::{Entry, EntryKind};

/// The cache's entries, each with the board whose manifest refers to it
/// (`k3s` for release assets) or what of the profiles uses it (a chart, a
/// container image, a blob of one) when known.
#[derive(Debug)]
pub struct CacheListing {
    pub root: PathBuf,
    pub entries: Vec<Listed>,
}

#[derive(Debug)]
pub struct Listed {
    pub entry: Entry,
    pub board: Option<String>,
    /// `chart NAME (CHART VERSION)`, `image REF`, `blob of REF`; for
    /// charts and images the profiles no longer name, `None`.
    pub used_by: Option<String>,
}

impl Listed {
    /// Whether `cache clean` keeps it.
    pub fn referenced(&self) -> bool {
        self.board.is_some() || self.used_by.is_some()
    }
}

/// What `cache clean` did.
#[derive(Debug, Default)]
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

/// The charts and images the profiles name, by digest; `None` when the
/// profiles cannot be read (then nothing of theirs counts as unreferenced).
struct ProfileKeys {
    charts: BTreeMap<String, String>,
    images: BTreeMap<String, String>,
}

fn profile_keys(paths: &Paths) -> Option<ProfileKeys> {
    let ws = super::Workspace::load(paths).ok()?;
    let p = &ws.profiles;
    let mut keys = ProfileKeys {
        charts: BTreeMap::new(),
        images: BTreeMap::new(),
    };
    for c in p.cluster.bootstrap.iter().flat_map(|b| &b.charts) {
        keys.charts.insert(
            c.sha256.to_ascii_lowercase(),
            format!("chart {} ({} {})", c.name, c.chart, c.version),
        );
    }
    for n in &p.nodes {
        for r in p.images_for(n) {
            if let Ok(i) = crate::config::images::ImageRef::parse(&r) {
                keys.images
                    .insert(i.digest.to_string(), format!("image {}", i.original));
            }
        }
    }
    Some(keys)
}

/// Boards' pinned installer ISOs (assets, like k3s's).
fn installer_keys(paths: &Paths) -> BTreeMap<String, String> {
    let mut keys = BTreeMap::new();
    if let Ok(manifests) = super::load_manifests(paths) {
        for m in manifests.values() {
            if let Some(i) = &m.installer {
                keys.insert(i.sha256.to_ascii_lowercase(), m.board.clone());
            }
        }
    }
    keys
}

pub fn list(paths: &Paths, settings: &FetchSettings) -> Result<CacheListing> {
    let cache = settings.cache()?;
    let keys = board_keys(paths, &cache);
    let installers = installer_keys(paths);
    let profile = profile_keys(paths);
    let learnt = cache.remembered_digests();
    let entries = cache.entries()?;
    // Image archives first: their blobs are referenced while they are.
    let mut blob_users: BTreeMap<String, String> = BTreeMap::new();
    let mut archives = BTreeMap::new();
    for e in entries.iter().filter(|e| e.kind == EntryKind::Oci) {
        let contents = crate::source::oci::archive_contents(&e.path);
        let name = contents
            .as_ref()
            .ok()
            .and_then(|c| c.name.clone())
            .unwrap_or_else(|| format!("sha256:{}", e.key));
        let used_by = match (&profile, &contents) {
            // Unreadable (truncated, not ours): unusable, so unreferenced;
            // the next build or fetch pulls the image again.
            (_, Err(err)) => {
                tracing::warn!("{err}");
                None
            }
            (Some(p), _) => p.images.get(&e.key.to_string()).cloned(),
            (None, _) => Some(format!("image {name} (profiles not read)")),
        };
        if let (Some(u), Ok(c)) = (&used_by, &contents) {
            for b in &c.blobs {
                blob_users
                    .entry(b.to_string())
                    .or_insert_with(|| format!("blob of {}", u.trim_start_matches("image ")));
            }
        }
        archives.insert(e.path.clone(), used_by);
    }
    let entries = entries
        .into_iter()
        .map(|entry| {
            let key = entry.key.to_string();
            let (board, used_by) = match entry.kind {
                EntryKind::Oci => (None, archives.remove(&entry.path).flatten()),
                EntryKind::Asset => {
                    if let Some(u) = profile.as_ref().and_then(|p| p.charts.get(&key)) {
                        (None, Some(u.clone()))
                    } else if let Some(u) = blob_users.get(&key) {
                        (None, Some(u.clone()))
                    } else if learnt.contains(&entry.key) {
                        // k3s assets' digests come from its checksum files.
                        (Some("k3s".to_string()), None)
                    } else if let Some(b) = installers.get(&key) {
                        (Some(b.clone()), None)
                    } else if profile.is_none() {
                        (None, Some("? (profiles not read)".to_string()))
                    } else {
                        (None, None)
                    }
                }
                _ => (keys.get(&key).cloned(), None),
            };
            Listed {
                entry,
                board,
                used_by,
            }
        })
        .collect();
    Ok(CacheListing {
        root: cache.root,
        entries,
    })
}

/// Removes cache entries no current manifest refers to (and charts, image
/// archives and blobs the profiles no longer name), unfinished downloads
/// and unpacks left by killed runs (every entry, k3s assets and learnt
/// digests included, with `all`); entries another run is using are skipped.
pub fn clean(paths: &Paths, settings: &FetchSettings, all: bool) -> Result<Cleaned> {
    let listing = list(paths, settings)?;
    let cache = settings.cache()?;
    let mut done = Cleaned::default();
    for l in listing.entries {
        let unfinished = matches!(l.entry.kind, EntryKind::Partial | EntryKind::Incoming);
        if !(all || !l.referenced() || unfinished) {
            continue;
        }
        let e = l.entry;
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
