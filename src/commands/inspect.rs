//! `imgbuild inspect IMAGE`: what an image holds and who made it.

use std::path::Path;

use super::{Paths, Result};
use crate::readback::inspect::{self, Inspection};

/// cloud-init's own NoCloud seed directory inside a root file system, looked
/// in when no manifest says otherwise.
const NOCLOUD_SEED_DIR: &str = "/var/lib/cloud/seed/nocloud";

pub fn inspect(paths: &Paths, image: &Path) -> Result<Inspection> {
    // Seeds inside ext4 are where the boards' manifests put them; inspect
    // works without manifests too.
    let mut dirs: Vec<String> = super::load_manifests(paths)
        .map(|m| m.values().map(|m| m.seed.dir.clone()).collect())
        .unwrap_or_default();
    dirs.retain(|d| !d.trim_matches('/').is_empty());
    if !dirs.iter().any(|d| d == NOCLOUD_SEED_DIR) {
        dirs.push(NOCLOUD_SEED_DIR.to_string());
    }
    Ok(inspect::inspect(image, &dirs)?)
}
