//! Where overlay files come from: the built-in tree compiled into imgbuild,
//! with an override directory laid over it file by file
//! (`config::layered` decides which copy wins). `render` reads overlay
//! files only through an [`OverlaySet`], so it never cares which layer a
//! file is in.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::config::layered::{self, DirFile, LayeredFile, Origin};

/// Every overlay file, by relative path (`<feature>/<target>/<path>`).
#[derive(Debug, Clone, Default)]
pub struct OverlaySet {
    files: BTreeMap<String, LayeredFile>,
}

/// `foo.j2` and `foo` render to the same file, so an override in either form
/// replaces the built-in one in either form.
fn key(rel: &str) -> String {
    rel.strip_suffix(".j2").unwrap_or(rel).to_string()
}

impl OverlaySet {
    /// The built-in overlays (unless `builtin` is false) with `dir` laid over them.
    pub fn load(dir: Option<&Path>, builtin: bool) -> Result<OverlaySet, RenderError> {
        let listed = match dir {
            None => None,
            Some(d) => {
                if !d.is_dir() {
                    return Err(RenderError::Overlay {
                        path: d.to_owned(),
                        reason: "the overlays directory does not exist".into(),
                    });
                }
                let mut paths = Vec::new();
                walk(d, &mut paths)?;
                let files = paths
                    .into_iter()
                    .map(|p| {
                        let rel = p
                            .strip_prefix(d)
                            .ok()
                            .and_then(|r| r.to_str())
                            .map(str::to_string)
                            .ok_or_else(|| RenderError::Overlay {
                                path: p.clone(),
                                reason: "overlay file names must be UTF-8".into(),
                            })?;
                        Ok(DirFile { rel, path: p })
                    })
                    .collect::<Result<Vec<_>, RenderError>>()?;
                Some((d, files))
            }
        };
        let files =
            layered::layer(layered::builtin::OVERLAYS, builtin, listed, key).map_err(|e| {
                RenderError::Io {
                    path: e.path,
                    source: e.source,
                }
            })?;
        Ok(OverlaySet { files })
    }

    /// Every file, in relative path order.
    pub fn files(&self) -> impl Iterator<Item = &LayeredFile> {
        self.files.values()
    }

    /// The files of one feature (`common`, `role-server`, ...).
    pub fn feature<'a>(&'a self, feature: &'a str) -> impl Iterator<Item = &'a LayeredFile> {
        let prefix = format!("{feature}/");
        self.files
            .values()
            .filter(move |f| f.rel.starts_with(&prefix))
    }

    /// How many files come from the built-in tree and which come from a directory.
    pub fn overridden(&self) -> Vec<&LayeredFile> {
        self.files
            .values()
            .filter(|f| f.origin != Origin::BuiltIn)
            .collect()
    }

    /// A digest of the whole set (every file's relative path, mode and
    /// content), for provenance: any change to any overlay changes it, and
    /// the built-in tree and an identical exported copy give the same one.
    pub fn digest(&self) -> String {
        let mut h = Sha256::new();
        for f in self.files.values() {
            h.update(f.rel.as_bytes());
            h.update([0]);
            h.update(format!("{:o}", f.mode).as_bytes());
            h.update([0]);
            h.update((f.data.len() as u64).to_le_bytes());
            h.update(&f.data);
        }
        hex::encode(h.finalize())
    }
}

/// The path to show for an overlay file.
pub fn display_path(f: &LayeredFile) -> PathBuf {
    f.display_path("overlays")
}

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Overlay { path: PathBuf, reason: String },
    #[error("{path}: template error: {detail}")]
    Template { path: PathBuf, detail: String },
}

fn read_sorted(dir: &Path) -> Result<Vec<PathBuf>, RenderError> {
    let io = |source| RenderError::Io {
        path: dir.to_owned(),
        source,
    };
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io)?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(io)?;
    v.sort();
    Ok(v)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), RenderError> {
    for p in read_sorted(dir)? {
        let meta = std::fs::symlink_metadata(&p).map_err(|source| RenderError::Io {
            path: p.clone(),
            source,
        })?;
        if meta.is_dir() {
            walk(&p, out)?;
        } else if meta.is_file() {
            out.push(p);
        } else if meta.file_type().is_symlink() {
            return Err(symlinked(p));
        } else {
            return Err(RenderError::Overlay {
                path: p,
                reason: "only regular files and directories may be in an overlay".into(),
            });
        }
    }
    Ok(())
}

/// Overlays are read only from inside the overlay tree: a symlinked directory
/// could pull any host file (a private key, /etc/shadow) into an image.
fn symlinked(path: PathBuf) -> RenderError {
    RenderError::Overlay {
        path,
        reason: "is a symlink; overlays may hold only regular files and directories".into(),
    }
}
