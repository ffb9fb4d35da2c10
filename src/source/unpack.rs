//! Unpacks a downloaded image by its content (not its name) into a sparse raw file.

use std::cell::Cell;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::rc::Rc;

pub use super::packed::{Format, Input, UnpackError, human};
use super::qcow2;
use crate::io::SparseWriter;
use crate::io::progress::Progress;

/// The default bound on an unpacked image: far above any stock image (a few
/// GB), far below what a decompression bomb would fill.
pub const DEFAULT_MAX_SIZE: u64 = 64 << 30;

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
