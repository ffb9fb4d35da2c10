//! Unpacks a downloaded image by its content (not its name) into a sparse raw file.

use std::cell::Cell;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::rc::Rc;

use super::qcow2;
use crate::io::SparseWriter;
use crate::io::progress::Progress;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Xz,
    Gzip,
    Zstd,
    Qcow2,
    Raw,
}

impl Format {
    pub fn sniff(head: &[u8]) -> Format {
        if head.starts_with(&[0xFD, b'7', b'z', b'X', b'Z', 0x00]) {
            Format::Xz
        } else if head.starts_with(&[0x1F, 0x8B]) {
            Format::Gzip
        } else if head.starts_with(&[0x28, 0xB5, 0x2F, 0xFD]) {
            Format::Zstd
        } else if head.starts_with(qcow2::MAGIC) {
            Format::Qcow2
        } else {
            Format::Raw
        }
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
}

fn corrupt(format: Format, detail: impl std::fmt::Display) -> UnpackError {
    UnpackError::Corrupt {
        format,
        detail: detail.to_string(),
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

fn counting(src: &File) -> (BufReader<Counting<&File>>, Rc<Cell<u64>>) {
    let count = Rc::new(Cell::new(0));
    let reader = BufReader::with_capacity(
        1 << 20,
        Counting {
            inner: src,
            count: count.clone(),
        },
    );
    (reader, count)
}

/// Copies a decoder's output into `out`; a read error means corrupt input.
fn drain(
    format: Format,
    mut decoder: impl Read,
    out: &mut SparseWriter,
    progress: &mut Progress,
    read: &Cell<u64>,
) -> Result<(), UnpackError> {
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let k = match decoder.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(k) => k,
            Err(e) => return Err(corrupt(format, e)),
        };
        out.write_all(&buf[..k])?;
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

/// Unpacks `src` into the empty file `dst` (sparse). Returns the format and raw size.
pub fn unpack(src: &File, dst: &File, label: &str) -> Result<(Format, u64), UnpackError> {
    let len = src.metadata()?.len();
    let mut head = [0u8; 8];
    let n = src.read_at_start(&mut head)?;
    let format = Format::sniff(&head[..n]);
    let mut out = SparseWriter::new(dst);
    let mut progress = Progress::new(
        label,
        Some(if format == Format::Qcow2 {
            qcow2::virtual_size(src)?
        } else {
            len
        }),
    );
    match format {
        Format::Raw => {
            let (reader, read) = counting(src);
            drain(format, reader, &mut out, &mut progress, &read)?;
        }
        Format::Qcow2 => {
            qcow2::convert(src, &mut out, |p| progress.set_position(p))?;
        }
        Format::Gzip => {
            // Multi-member gzip is valid; anything after the last member must be another member.
            let (reader, read) = counting(src);
            let mut d = flate2::read::MultiGzDecoder::new(reader);
            drain(format, &mut d, &mut out, &mut progress, &read)?;
            no_trailing(
                format,
                len,
                read.get(),
                d.get_ref().buffer().len(),
                "gzip stream",
            )?;
        }
        Format::Zstd => {
            let (reader, read) = counting(src);
            let mut d = zstd::stream::read::Decoder::with_buffer(reader)?;
            drain(format, &mut d, &mut out, &mut progress, &read)?;
            let r = d.finish();
            no_trailing(format, len, read.get(), r.buffer().len(), "zstd frames")?;
        }
        Format::Xz => unpack_xz(src, len, &mut out, &mut progress)?,
    }
    let size = out.finish()?;
    progress.finish();
    Ok((format, size))
}

/// Decodes every xz stream in `src` (multithreaded where a stream has several
/// blocks), allowing stream padding between and after streams and nothing else.
fn unpack_xz(
    src: &File,
    len: u64,
    out: &mut SparseWriter,
    progress: &mut Progress,
) -> Result<(), UnpackError> {
    let (mut reader, read) = counting(src);
    let physmem = physical_memory();
    loop {
        let stream = liblzma::stream::MtStreamBuilder::new()
            .threads(threads())
            .memlimit_threading(physmem / 4)
            .memlimit_stop(u64::MAX)
            .decoder()
            .map_err(|e| corrupt(Format::Xz, e))?;
        let mut d = liblzma::bufread::XzDecoder::new_stream(&mut reader, stream);
        drain(Format::Xz, &mut d, out, progress, &read)?;
        if d.total_in() == 0 {
            return Err(corrupt(Format::Xz, "truncated: the stream ended early"));
        }
        drop(d);
        // Skip stream padding (NUL bytes in multiples of four).
        let mut padding = 0u64;
        loop {
            let avail = reader.fill_buf()?;
            if avail.is_empty() {
                break;
            }
            let zeros = avail.iter().take_while(|&&b| b == 0).count();
            padding += zeros as u64;
            let done = zeros < avail.len();
            reader.consume(zeros);
            if done {
                break;
            }
        }
        let rest_len = reader.fill_buf()?.len();
        let rest_is_xz = reader
            .fill_buf()?
            .starts_with(&[0xFD, b'7', b'z', b'X', b'Z', 0x00]);
        if rest_len == 0 {
            if !padding.is_multiple_of(4) {
                return Err(corrupt(
                    Format::Xz,
                    "stream padding is not a multiple of four bytes",
                ));
            }
            return Ok(());
        }
        if !rest_is_xz || !padding.is_multiple_of(4) {
            let consumed = read.get() - rest_len as u64;
            return Err(corrupt(
                Format::Xz,
                format!(
                    "{} bytes of trailing data after the xz stream",
                    len - consumed
                ),
            ));
        }
    }
}

fn physical_memory() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let pages = unsafe { libc::sysconf(libc::_SC_PHYS_PAGES) };
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if pages > 0 && size > 0 {
        pages as u64 * size as u64
    } else {
        1 << 30
    }
}

trait ReadAtStart {
    fn read_at_start(&self, buf: &mut [u8]) -> io::Result<usize>;
}

impl ReadAtStart for File {
    fn read_at_start(&self, buf: &mut [u8]) -> io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let mut n = 0;
        while n < buf.len() {
            let k = self.read_at(&mut buf[n..], n as u64)?;
            if k == 0 {
                break;
            }
            n += k;
        }
        Ok(n)
    }
}
