//! `imgbuild fetch BOARD...`: download, verify and unpack stock images ahead
//! of time, and with a profile set, everything else the builds of those
//! boards' nodes download (k3s air-gap assets, bootstrap Helm charts,
//! air-gapped container images), so `--offline` builds work afterwards.

use std::path::PathBuf;

use super::{CommandError, FetchSettings, Paths, Result, Workspace, load_manifests};

/// What `fetch` put in (or found in) the cache.
#[derive(Debug, Default)]
pub struct Fetched {
    /// Unpacked stock images by board.
    pub boards: Vec<(String, PathBuf)>,
    /// Everything else, by what it is (`k3s arm64`, `chart NAME ...`,
    /// `image REF (ARCH)`).
    pub extras: Vec<(String, PathBuf)>,
}

/// Downloads and unpacks the stock images of `boards` (every board with
/// `all`); when the profile directory exists, also what its nodes on those
/// boards need beyond the stock image.
pub fn fetch(
    paths: &Paths,
    boards: &[String],
    all: bool,
    settings: &FetchSettings,
) -> Result<Fetched> {
    let manifests = load_manifests(paths)?;
    let known = || manifests.keys().cloned().collect::<Vec<_>>().join(", ");
    let wanted: Vec<String> = if all {
        manifests.keys().cloned().collect()
    } else {
        boards.to_vec()
    };
    if wanted.is_empty() {
        return Err(CommandError::usage(format!(
            "name the boards to fetch ({}), or use --all",
            known()
        )));
    }
    for b in &wanted {
        if !manifests.contains_key(b) {
            return Err(CommandError::usage(format!(
                "no firmware manifest for board {b:?} (built in{}; boards: {})",
                paths
                    .manifests
                    .as_ref()
                    .map(|d| format!(" or in {}", d.display()))
                    .unwrap_or_default(),
                known()
            )));
        }
    }
    // Profiles that exist but do not load are an error here too: what they
    // name could not be fetched, and the offline build would fail later.
    let ws = if paths.profiles.is_dir() {
        Some(Workspace::load(paths)?)
    } else {
        None
    };
    let cache = settings.cache()?;
    let options = settings.options();
    let mut out = Fetched::default();
    for b in &wanted {
        let p = crate::source::ensure_base(&manifests[b], &cache, &options)?;
        out.boards.push((b.clone(), p));
    }
    let Some(ws) = ws else {
        return Ok(out);
    };
    let nodes: Vec<&crate::config::profile::Node> = ws
        .profiles
        .nodes
        .iter()
        .filter(|n| wanted.contains(&n.board))
        .collect();
    let supplies = ws.gather(&nodes, settings)?;
    out.extras
        .extend(supplies.fetched.map(|f| f.listing).unwrap_or_default());
    Ok(out)
}
