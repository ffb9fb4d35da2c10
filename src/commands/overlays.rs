//! `imgbuild overlays export DIR` and `overlays list`: the built-in overlay
//! files written out for editing, and where each file in use comes from.

use std::path::{Path, PathBuf};

use anyhow::anyhow;

use super::{CommandError, Paths, Result, load_overlays};
use crate::config::layered::{BuiltinFile, Origin, builtin};

/// One overlay file in use and where it comes from.
#[derive(Debug)]
pub struct Sourced {
    pub name: String,
    pub origin: Origin,
}

/// Every overlay file in use (built-in with the override directory laid over).
pub fn list(paths: &Paths) -> Result<Vec<Sourced>> {
    Ok(load_overlays(paths)?
        .files()
        .map(|f| Sourced {
            name: f.rel.clone(),
            origin: f.origin.clone(),
        })
        .collect())
}

/// Writes the built-in overlays under `dir`; returns the files written.
/// Without `force`, refuses (before writing anything) when one exists.
pub fn export(dir: &Path, force: bool) -> Result<Vec<PathBuf>> {
    let targets: Vec<(PathBuf, &BuiltinFile)> = builtin::OVERLAYS
        .iter()
        .map(|f| (dir.join(f.path), f))
        .collect();
    if !force {
        let existing: Vec<String> = targets
            .iter()
            .filter(|(p, _)| p.symlink_metadata().is_ok())
            .map(|(p, _)| p.display().to_string())
            .collect();
        if !existing.is_empty() {
            return Err(CommandError::usage(format!(
                "{} file(s) exist and would be overwritten (pass --force to overwrite them): {}",
                existing.len(),
                super::shorten(&existing)
            )));
        }
    }
    let mut written = Vec::new();
    for (path, f) in targets {
        let io = |e: std::io::Error| CommandError::Failed(anyhow!("{}: {e}", path.display()));
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        std::fs::write(&path, f.data).map_err(io)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(f.mode)).map_err(io)?;
        written.push(path);
    }
    Ok(written)
}
