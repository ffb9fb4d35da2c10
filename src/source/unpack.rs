//! Unpacks a downloaded image by its content (not its name) into a sparse raw file.

use std::cell::Cell;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::FileExt;
use std::rc::Rc;

use super::qcow2;
use crate::io::SparseWriter;
use crate::io::progress::Progress;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

/// The default bound on an unpacked image: far above any stock image (a few
/// GB), far below what a decompression bomb would fill.
pub const DEFAULT_MAX_SIZE: u64 = 64 << 30;

impl Format {
    /// The format whose magic number `head` (the whole file) is a proper
    /// prefix of: a packed file cut short, not a raw image.
    fn cut_magic(head: &[u8]) -> Option<Format> {
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

/// The output, bounded: refuses to grow past `limit`.
struct Sink<'a, 'f> {
    out: &'a mut SparseWriter<'f>,
    written: u64,
    limit: u64,
}

impl Sink<'_, '_> {
    fn put(&mut self, data: &[u8]) -> Result<(), UnpackError> {
        self.written += data.len() as u64;
        if self.written > self.limit {
            return Err(UnpackError::TooLarge {
                limit: self.limit,
                what: "the decompressed stream is longer".into(),
            });
        }
        self.out.write_all(data)?;
        Ok(())
    }
}

fn corrupt(format: Format, detail: impl std::fmt::Display) -> UnpackError {
    UnpackError::Corrupt {
        format,
        detail: detail.to_string(),
    }
}

/// The packed input: a complete file, or a download still being written
/// ([`super::follow::Growing`]).
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

/// An [`Input`] read in order.
struct InputReader<'a> {
    src: &'a dyn Input,
    pos: u64,
}

impl Read for InputReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.src.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// Progress of an unpack, or none (a download being unpacked shows its own).
struct Meter(Option<Progress>);

impl Meter {
    fn set_position(&mut self, pos: u64) {
        if let Some(p) = &mut self.0 {
            p.set_position(pos);
        }
    }
}

/// Counts bytes taken from the compressed input, for progress and for the
/// trailing-data check; the count is shared so it stays readable while a
/// decoder owns the reader.
struct Counting<R> {
    inner: R,
    count: Rc<Cell<u64>>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.set(self.count.get() + n as u64);
        Ok(n)
    }
}

fn counting(src: &dyn Input) -> (BufReader<Counting<InputReader<'_>>>, Rc<Cell<u64>>) {
    let count = Rc::new(Cell::new(0));
    let reader = BufReader::with_capacity(
        1 << 20,
        Counting {
            inner: InputReader { src, pos: 0 },
            count: count.clone(),
        },
    );
    (reader, count)
}

/// Copies a decoder's output into `out`; a read error means corrupt input.
fn drain(
    format: Format,
    mut decoder: impl Read,
    out: &mut Sink,
    progress: &mut Meter,
    read: &Cell<u64>,
) -> Result<(), UnpackError> {
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let k = match decoder.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(k) => k,
            Err(e) => return Err(corrupt(format, e)),
        };
        out.put(&buf[..k])?;
        progress.set_position(read.get());
    }
}

/// Fails unless the decoder consumed the whole input (`buffered` bytes read ahead).
fn no_trailing(
    format: Format,
    len: u64,
    read: u64,
    buffered: usize,
    what: &str,
) -> Result<(), UnpackError> {
    let consumed = read - buffered as u64;
    if consumed != len {
        return Err(corrupt(
            format,
            format!("{} bytes of trailing data after the {what}", len - consumed),
        ));
    }
    Ok(())
}

fn threads() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

/// Unpacks `src` into the empty file `dst` (sparse), writing at most
/// `max_size` bytes. Returns the format and raw size.
pub fn unpack(
    src: &File,
    dst: &File,
    label: &str,
    max_size: u64,
) -> Result<(Format, u64), UnpackError> {
    unpack_from(src, dst, Some(label), max_size)
}

/// [`unpack`] from any [`Input`], with a progress display when `label` is given.
pub fn unpack_from(
    src: &dyn Input,
    dst: &File,
    label: Option<&str>,
    max_size: u64,
) -> Result<(Format, u64), UnpackError> {
    let mut head = [0u8; 8];
    let n = read_at_start(src, &mut head)?;
    if n == 0 {
        return Err(UnpackError::Empty);
    }
    if let Some(format) = Format::cut_magic(&head[..n]) {
        return Err(UnpackError::CutMagic {
            format,
            len: n as u64,
        });
    }
    let format = Format::sniff(&head[..n]);
    let mut writer = SparseWriter::new(dst);
    let mut out = Sink {
        out: &mut writer,
        written: 0,
        limit: max_size,
    };
    let virtual_size = if format == Format::Qcow2 {
        let v = qcow2::virtual_size(src.whole_file()?)?;
        // Checked before writing anything: the header says how big it gets.
        if v > max_size {
            return Err(UnpackError::TooLarge {
                limit: max_size,
                what: format!("the qcow2 header declares a {} disk", human(v)),
            });
        }
        Some(v)
    } else {
        None
    };
    // The input's length is known up front only for a complete file.
    let total = match (virtual_size, label) {
        (Some(v), _) => Some(v),
        (None, Some(_)) => Some(src.total_len()?),
        (None, None) => None,
    };
    let mut progress = Meter(label.map(|l| Progress::new(l, total)));
    match format {
        Format::Raw => {
            let (reader, read) = counting(src);
            drain(format, reader, &mut out, &mut progress, &read)?;
        }
        Format::Qcow2 => {
            qcow2::convert(src.whole_file()?, out.out, |p| progress.set_position(p))?;
        }
        Format::Gzip => {
            // Multi-member gzip is valid; anything after the last member must be
            // another member (checked here, so that trailing garbage is called
            // that rather than a truncated member).
            let (mut reader, read) = counting(src);
            loop {
                let mut d = flate2::bufread::GzDecoder::new(&mut reader);
                drain(format, &mut d, &mut out, &mut progress, &read)?;
                let rest = reader.fill_buf()?;
                if rest.is_empty() {
                    break;
                }
                // One byte 0x1F at the buffer's end may begin the next member.
                if !(rest.starts_with(&[0x1F, 0x8B]) || rest == [0x1F]) {
                    let buffered = rest.len();
                    no_trailing(
                        format,
                        src.total_len()?,
                        read.get(),
                        buffered,
                        "gzip stream",
                    )?;
                }
            }
        }
        Format::Zstd => {
            let (reader, read) = counting(src);
            let mut d = zstd::stream::read::Decoder::with_buffer(reader)?;
            drain(format, &mut d, &mut out, &mut progress, &read)?;
            let r = d.finish();
            let buffered = r.buffer().len();
            no_trailing(
                format,
                src.total_len()?,
                read.get(),
                buffered,
                "zstd frames",
            )?;
        }
        Format::Xz => {
            let size = super::xz::decode(src, dst, max_size, threads() as usize, &mut |p| {
                progress.set_position(p)
            })?;
            out.out.skip_zeros(size)?;
        }
    }
    let size = writer.finish()?;
    if let Some(p) = progress.0 {
        p.finish();
    }
    Ok((format, size))
}

/// Reads the first `buf.len()` bytes (fewer only when the input is shorter).
fn read_at_start(src: &dyn Input, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        let k = src.read_at(&mut buf[n..], n as u64)?;
        if k == 0 {
            break;
        }
        n += k;
    }
    Ok(n)
}
