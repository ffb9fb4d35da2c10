//! Artifacts: the files imgbuild hands out. Output names and formats,
//! pending outputs (written beside the target, renamed when complete),
//! compression, `SHA256SUMS` and provenance statements. Reading an image
//! back is `readback`'s; building installers is `installer`'s.

mod pending;
pub mod statement;
pub mod sums;

use std::path::{Path, PathBuf};

pub use pending::{PendingOutput, XZ_PRESET};

/// How an output image is stored; told by its file name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `.img`: sparse raw.
    Raw,
    /// `.img.xz`: multithreaded xz.
    Xz,
    /// `.img.zst`: multithreaded zstd.
    Zstd,
    /// `.iso`: the board's vendor installer, remastered to install the node
    /// unattended (bare metal; see `installer`).
    Iso,
}

impl Format {
    pub const ALL: [Format; 4] = [Format::Raw, Format::Xz, Format::Zstd, Format::Iso];

    /// Splits a file name into its stem (without `.img...`) and format.
    pub fn from_name(name: &str) -> Option<(&str, Format)> {
        Format::ALL.iter().find_map(|f| {
            name.strip_suffix(f.extension())
                .and_then(|s| s.strip_suffix('.'))
                .map(|s| (s, *f))
        })
    }

    /// The file-name ending, without the leading dot.
    pub fn extension(self) -> &'static str {
        match self {
            Format::Raw => "img",
            Format::Xz => "img.xz",
            Format::Zstd => "img.zst",
            Format::Iso => "iso",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Format::Raw => "copy",
            Format::Xz => "xz",
            Format::Zstd => "zstd",
            Format::Iso => "installer",
        }
    }
}

/// An output named `<node>.<board>.img[.xz|.zst]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub node: String,
    pub board: String,
    pub path: PathBuf,
    pub format: Format,
}

impl Target {
    pub fn parse(path: &Path) -> Result<Self, String> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let usage = || {
            format!(
                "{}: the target must be named <node>.<board>.img (or .img.xz, .img.zst, or .iso for a bare-metal installer), like node02.rk1.img",
                path.display()
            )
        };
        let (stem, format) = Format::from_name(&name).ok_or_else(usage)?;
        match stem.rsplit_once('.') {
            Some((node, board)) if !node.is_empty() && !board.is_empty() => Ok(Target {
                node: node.to_string(),
                board: board.to_string(),
                path: path.to_owned(),
                format,
            }),
            _ => Err(usage()),
        }
    }

    /// The target for `node` on `board` in `dir`.
    pub fn in_dir(dir: &Path, node: &str, board: &str, format: Format) -> Target {
        Target {
            node: node.to_string(),
            board: board.to_string(),
            path: dir.join(format!("{node}.{board}.{}", format.extension())),
            format,
        }
    }
}

/// The directory a path lives in (`.` for a bare file name).
pub fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse() {
        let t = Target::parse(Path::new("dist/node02.rk1.img")).unwrap();
        assert_eq!((t.node.as_str(), t.board.as_str()), ("node02", "rk1"));
        assert!(Target::parse(Path::new("node02.img")).is_err());
        assert!(Target::parse(Path::new("node02.rk1")).is_err());
        let t = Target::parse(Path::new("node02.rk1.img.xz")).unwrap();
        assert_eq!((t.node.as_str(), t.format), ("node02", Format::Xz));
        let t = Target::parse(Path::new("a.b.cm4.img.zst")).unwrap();
        assert_eq!(
            (t.node.as_str(), t.board.as_str(), t.format),
            ("a.b", "cm4", Format::Zstd)
        );
        assert!(Target::parse(Path::new(".rk1.img")).is_err());
        let t = Target::parse(Path::new("dist/ws03.nuc.iso")).unwrap();
        assert_eq!(
            (t.node.as_str(), t.board.as_str(), t.format),
            ("ws03", "nuc", Format::Iso)
        );
        assert!(Target::parse(Path::new("ws03.iso")).is_err());
        assert!(Target::parse(Path::new("x.rk1img")).is_err());
    }
}
