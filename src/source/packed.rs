//! What a packed image is: its format, told by its magic number, the input
//! it is read from, and what can go wrong unpacking it. Shared by the
//! unpacker and the decoders it hands formats to.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use super::qcow2;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Xz,
    Gzip,
    Zstd,
    Qcow2,
    Raw,
}

/// Magic numbers at the start of each packed format.
const MAGICS: [(&[u8], Format); 4] = [
    (&[0xFD, b'7', b'z', b'X', b'Z', 0x00], Format::Xz),
    (&[0x1F, 0x8B], Format::Gzip),
    (&[0x28, 0xB5, 0x2F, 0xFD], Format::Zstd),
    (qcow2::MAGIC, Format::Qcow2),
];

impl Format {
    /// The format whose magic number `head` (the whole file) is a proper
    /// prefix of: a packed file cut short, not a raw image.
    pub(super) fn cut_magic(head: &[u8]) -> Option<Format> {
        MAGICS
            .iter()
            .find(|(m, _)| !head.is_empty() && head.len() < m.len() && m.starts_with(head))
            .map(|(_, f)| *f)
    }

    /// The packed format a file name promises (`.xz`, `.gz`, `.zst`,
    /// `.qcow2`), if any: a file so named whose content is not that format
    /// has a damaged header, and is refused rather than copied as raw.
    pub fn promised_by(name: &str) -> Option<Format> {
        let lower = name.to_ascii_lowercase();
        [
            (".xz", Format::Xz),
            (".gz", Format::Gzip),
            (".zst", Format::Zstd),
            (".qcow2", Format::Qcow2),
        ]
        .into_iter()
        .find(|(ext, _)| lower.ends_with(ext))
        .map(|(_, f)| f)
    }

    /// Checks what unpacking a file called `name` found: raw content under a
    /// name that promises a packed format is a damaged header (its bytes were
    /// copied as they are), refused.
    pub fn check_named(self, name: &str) -> Result<(), UnpackError> {
        match Format::promised_by(name) {
            Some(promised) if self == Format::Raw => Err(UnpackError::NotAsNamed { promised }),
            _ => Ok(()),
        }
    }

    pub fn sniff(head: &[u8]) -> Format {
        MAGICS
            .iter()
            .find(|(m, _)| head.starts_with(m))
            .map_or(Format::Raw, |(_, f)| *f)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("corrupt {format:?} data: {detail}")]
    Corrupt { format: Format, detail: String },
    #[error("{0}")]
    Qcow2(#[from] qcow2::Qcow2Error),
    #[error("the file is empty")]
    Empty,
    #[error(
        "its name says {promised:?} but it does not start like {promised:?} data (a damaged or wrong file)"
    )]
    NotAsNamed { promised: Format },
    #[error("truncated: the whole file is {len} byte(s), the start of a {format:?} header")]
    CutMagic { format: Format, len: u64 },
    #[error("the unpacked image would exceed the limit of {} ({what})", human(*limit))]
    TooLarge { limit: u64, what: String },
}

/// `64 GiB`, `512 MiB`, or bytes.
pub fn human(n: u64) -> String {
    for (unit, shift) in [("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)] {
        if n >= 1 << shift && n.is_multiple_of(1 << shift) {
            return format!("{} {unit}", n >> shift);
        }
    }
    format!("{n} bytes")
}

/// The packed input: a complete file, or a download still being written
/// (`follow.rs` reads one along as it grows).
pub trait Input: Sync {
    /// Reads at `off`, waiting for bytes still to come; 0 only at the end.
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<usize>;
    /// The whole input's length (waits for the end of a download).
    fn total_len(&self) -> io::Result<u64>;
    /// The complete file, for formats read out of order (qcow2); waits for
    /// the end of a download.
    fn whole_file(&self) -> io::Result<&File>;
}

impl Input for File {
    fn read_at(&self, buf: &mut [u8], off: u64) -> io::Result<usize> {
        FileExt::read_at(self, buf, off)
    }
    fn total_len(&self) -> io::Result<u64> {
        Ok(self.metadata()?.len())
    }
    fn whole_file(&self) -> io::Result<&File> {
        Ok(self)
    }
}
