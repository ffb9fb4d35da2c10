//! `imgbuild fetch BOARD...`: download, verify and unpack stock images ahead of time.

use std::path::PathBuf;

use super::{CommandError, FetchSettings, Paths, Result, load_manifests};

/// Downloads and unpacks the stock images of `boards` (every board with `all`).
pub fn fetch(
    paths: &Paths,
    boards: &[String],
    all: bool,
    settings: &FetchSettings,
) -> Result<Vec<(String, PathBuf)>> {
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
    let cache = settings.cache()?;
    let mut out = Vec::new();
    for b in wanted {
        let p = crate::source::ensure_base(&manifests[&b], &cache, &settings.options())?;
        out.push((b, p));
    }
    Ok(out)
}
