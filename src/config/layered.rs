//! Built-in defaults layered under a directory of overrides, file by file
//! (like systemd's vendor/admin units): the shipped `firmware-manifests/`
//! and `overlays/` are compiled into the binary, and a file at the same
//! relative path in the user's directory replaces the built-in one.
//!
//! The one place that decides which copy of a file wins; `manifest.rs` and
//! `plan::overlay_source` only say how a directory is listed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One file compiled into the binary (`build.rs` writes the table).
#[derive(Debug, Clone, Copy)]
pub struct BuiltinFile {
    /// Relative path, `/`-separated.
    pub path: &'static str,
    pub data: &'static [u8],
    pub mode: u32,
}

/// The shipped defaults.
pub mod builtin {
    use super::BuiltinFile;
    include!(concat!(env!("OUT_DIR"), "/builtin.rs"));
}

/// Where a file comes from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Origin {
    /// Compiled into imgbuild.
    #[default]
    BuiltIn,
    /// An override directory (the directory, not the file).
    Dir(PathBuf),
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::BuiltIn => f.write_str("built-in"),
            Origin::Dir(d) => write!(f, "{}", d.display()),
        }
    }
}

/// One file of a layered tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayeredFile {
    /// Relative path inside the tree, `/`-separated.
    pub rel: String,
    pub data: Vec<u8>,
    /// Permission bits (`0o644`, `0o755`).
    pub mode: u32,
    pub origin: Origin,
}

impl LayeredFile {
    /// A path to show in messages: the real file for an override,
    /// `<built-in>/<kind>/<rel>` for a built-in one (there is no file).
    pub fn display_path(&self, kind: &str) -> PathBuf {
        match &self.origin {
            Origin::BuiltIn => PathBuf::from(format!("<built-in>/{kind}/{}", self.rel)),
            Origin::Dir(d) => d.join(&self.rel),
        }
    }
}

/// A file found in an override directory: its relative path and where it is.
pub struct DirFile {
    pub rel: String,
    pub path: PathBuf,
}

#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", .path.display())]
pub struct LayerError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// `builtin` (unless `use_builtin` is false) with the files of `dir` laid
/// over it. `key` maps a relative path to the identity two copies share
/// (e.g. `foo` and `foo.j2` make the same file), so that the override
/// replaces the built-in file whatever form it takes.
pub fn layer(
    builtin: &[BuiltinFile],
    use_builtin: bool,
    dir: Option<(&Path, Vec<DirFile>)>,
    key: impl Fn(&str) -> String,
) -> Result<BTreeMap<String, LayeredFile>, LayerError> {
    let mut out = BTreeMap::new();
    if use_builtin {
        for b in builtin {
            out.insert(
                key(b.path),
                LayeredFile {
                    rel: b.path.to_string(),
                    data: b.data.to_vec(),
                    mode: b.mode,
                    origin: Origin::BuiltIn,
                },
            );
        }
    }
    if let Some((dir, files)) = dir {
        use std::os::unix::fs::PermissionsExt;
        for f in files {
            let io = |source| LayerError {
                path: f.path.clone(),
                source,
            };
            let mode = std::fs::metadata(&f.path).map_err(io)?.permissions().mode() & 0o777;
            let data = std::fs::read(&f.path).map_err(io)?;
            out.insert(
                key(&f.rel),
                LayeredFile {
                    rel: f.rel,
                    data,
                    mode,
                    origin: Origin::Dir(dir.to_owned()),
                },
            );
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_tables_hold_the_shipped_trees() {
        let m: Vec<&str> = builtin::MANIFESTS.iter().map(|f| f.path).collect();
        assert!(m.contains(&"rk1.yaml") && m.contains(&"nuc.yaml"), "{m:?}");
        let o = builtin::OVERLAYS
            .iter()
            .find(|f| f.path == "common/seed/user-data.j2")
            .expect("user-data template built in");
        assert!(
            std::str::from_utf8(o.data)
                .unwrap()
                .contains("#cloud-config")
        );
    }
}
