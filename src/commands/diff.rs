//! `imgbuild diff A B`: what differs between two images; `imgbuild diff
//! IMAGE`: what a bake changed in the stock image it was built from (the one
//! its provenance record names, taken from the cache).

use std::path::{Path, PathBuf};

use anyhow::anyhow;

use super::{CommandError, FetchSettings, Result};
use crate::io::Sha256Digest;
use crate::readback::diff::{self, ImageDiff};

/// Compares `a` with `b`, or without `b`, the stock image `a` was built
/// from with `a`.
pub fn diff(a: &Path, b: Option<&Path>, fetch: &FetchSettings) -> Result<ImageDiff> {
    let (a, b) = match b {
        Some(b) => (a.to_owned(), b.to_owned()),
        None => (base_of(a, fetch)?, a.to_owned()),
    };
    diff::diff(&a, &b).map_err(CommandError::Failed)
}

/// The cached stock image `image` was built from.
pub fn base_of(image: &Path, fetch: &FetchSettings) -> Result<PathBuf> {
    let seen = crate::readback::inspect::inspect(image, &["/var/lib/cloud/seed/nocloud".into()])
        .map_err(CommandError::Failed)?;
    let prov = seen.provenance.ok_or_else(|| {
        CommandError::usage(format!(
            "{}: no imgbuild provenance record (a stock image?); name the image to compare with: imgbuild diff BASE {}",
            image.display(),
            image.display()
        ))
    })?;
    let digest = prov
        .base_sha256
        .as_deref()
        .and_then(Sha256Digest::parse)
        .ok_or_else(|| {
            CommandError::usage(format!(
                "{}: its record names no pinned stock image digest (board {}); name the base: imgbuild diff BASE {}",
                image.display(),
                prov.board,
                image.display()
            ))
        })?;
    let cache = fetch.cache()?;
    let path = cache.image_path(&digest);
    if !path.is_file() {
        return Err(CommandError::Failed(anyhow!(
            "the {} stock image it was built from (sha256 {digest}) is not in the cache {}; run `imgbuild fetch {}` (with the manifest that pins it), or name the base: imgbuild diff BASE {}",
            prov.board,
            cache.root.display(),
            prov.board,
            image.display()
        )));
    }
    Ok(path)
}
