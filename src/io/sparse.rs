//! Sparse files: a writer that leaves holes for zero blocks, the data extents
//! of a file (SEEK_DATA/SEEK_HOLE), streaming a sparse file without reading
//! its holes, and copying one by reflink or by its data extents only.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

pub const SPARSE_BLOCK: usize = 64 * 1024;

/// Writes a stream into a file, leaving holes where whole aligned blocks are zero.
pub struct SparseWriter<'f> {
    file: &'f File,
    pos: u64,
    buf: Vec<u8>,
    writeback: WritebackTrail,
}

impl<'f> SparseWriter<'f> {
    pub fn new(file: &'f File) -> Self {
        SparseWriter {
            file,
            pos: 0,
            buf: Vec::with_capacity(SPARSE_BLOCK),
            writeback: WritebackTrail::new(0),
        }
    }

    fn put_block(&mut self, block: &[u8]) -> io::Result<()> {
        if block.iter().any(|&b| b != 0) {
            self.file.write_all_at(block, self.pos)?;
        }
        self.pos += block.len() as u64;
        self.writeback.advance(self.file, self.pos);
        Ok(())
    }

    /// Skips `len` zero bytes without writing them.
    pub fn skip_zeros(&mut self, len: u64) -> io::Result<()> {
        if !self.buf.is_empty() {
            let fill = (SPARSE_BLOCK - self.buf.len()).min(len as usize);
            self.buf.resize(self.buf.len() + fill, 0);
            let rest = len - fill as u64;
            if self.buf.len() == SPARSE_BLOCK {
                let b = std::mem::take(&mut self.buf);
                self.put_block(&b)?;
                self.buf = b;
                self.buf.clear();
            }
            self.pos += rest;
            return Ok(());
        }
        self.pos += len;
        Ok(())
    }

    /// Writes what is buffered and sets the file's length; returns the length.
    pub fn finish(mut self) -> io::Result<u64> {
        let b = std::mem::take(&mut self.buf);
        if !b.is_empty() {
            self.put_block(&b)?;
        }
        self.file.set_len(self.pos)?;
        Ok(self.pos)
    }
}

impl Write for SparseWriter<'_> {
    fn write(&mut self, mut data: &[u8]) -> io::Result<usize> {
        let n = data.len();
        if !self.buf.is_empty() {
            let take = (SPARSE_BLOCK - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data[..take]);
            data = &data[take..];
            if self.buf.len() == SPARSE_BLOCK {
                let b = std::mem::take(&mut self.buf);
                self.put_block(&b)?;
                self.buf = b;
                self.buf.clear();
            }
        }
        while data.len() >= SPARSE_BLOCK {
            self.put_block(&data[..SPARSE_BLOCK])?;
            data = &data[SPARSE_BLOCK..];
        }
        self.buf.extend_from_slice(data);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Data extents of a file as (offset, len), found with SEEK_DATA/SEEK_HOLE.
pub fn data_extents(file: &File) -> io::Result<Vec<(u64, u64)>> {
    let len = file.metadata()?.len() as i64;
    let mut out = Vec::new();
    let mut pos = 0i64;
    while pos < len {
        // SAFETY: lseek on an open descriptor.
        let data = unsafe { libc::lseek(file.as_raw_fd(), pos, libc::SEEK_DATA) };
        if data < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                break;
            }
            return Err(e);
        }
        let hole = unsafe { libc::lseek(file.as_raw_fd(), data, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(io::Error::last_os_error());
        }
        out.push((data as u64, (hole - data) as u64));
        pos = hole;
    }
    Ok(out)
}

/// Streams a sparse file's full contents (holes as zeros) to `sink` without
/// reading the holes from disk.
pub fn stream_sparse(file: &File, mut sink: impl FnMut(&[u8]) -> io::Result<()>) -> io::Result<()> {
    let len = file.metadata()?.len();
    let zeros = vec![0u8; 1 << 20];
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0u64;
    let feed_zeros =
        |mut n: u64, sink: &mut dyn FnMut(&[u8]) -> io::Result<()>| -> io::Result<()> {
            while n > 0 {
                let k = n.min(zeros.len() as u64) as usize;
                sink(&zeros[..k])?;
                n -= k as u64;
            }
            Ok(())
        };
    for (start, elen) in data_extents(file)? {
        feed_zeros(start - pos, &mut sink)?;
        let mut done = 0;
        while done < elen {
            let k = ((elen - done) as usize).min(buf.len());
            file.read_exact_at(&mut buf[..k], start + done)?;
            sink(&buf[..k])?;
            done += k as u64;
        }
        pos = start + elen;
    }
    feed_zeros(len - pos, &mut sink)
}

/// How a file was copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyMethod {
    /// Shared extents (btrfs, XFS): no data copied.
    Reflink,
    /// Data extents copied, holes kept.
    Sparse,
}

impl std::fmt::Display for CopyMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            CopyMethod::Reflink => "reflink",
            CopyMethod::Sparse => "sparse",
        })
    }
}

/// Copies `src` into the empty `dst`: a reflink where the file system can,
/// else only the data extents (holes stay holes), each byte read once.
pub fn copy_file(src: &File, dst: &File) -> std::io::Result<CopyMethod> {
    copy_file_with_progress(src, dst, "copy")
}

/// [`copy_file`] showing progress under `label` (bytes of data copied) when
/// it has to copy.
pub fn copy_file_with_progress(src: &File, dst: &File, label: &str) -> std::io::Result<CopyMethod> {
    const FICLONE: libc::c_ulong = 0x4004_9409;
    // SAFETY: FICLONE takes the source descriptor as its argument; both are open files.
    let rc = unsafe { libc::ioctl(dst.as_raw_fd(), FICLONE as _, src.as_raw_fd()) };
    if rc == 0 {
        return Ok(CopyMethod::Reflink);
    }
    dst.set_len(src.metadata()?.len())?;
    let extents = data_extents(src)?;
    let total = extents.iter().map(|e| e.1).sum();
    let mut progress = super::progress::Progress::new(label, Some(total));
    for (start, len) in extents {
        // 64 MiB steps so the progress moves on large extents and the disk
        // starts writing each step while the next one is copied.
        let mut done = 0;
        while done < len {
            let n = (len - done).min(64 << 20);
            copy_range(src, start + done, dst, start + done, n)?;
            start_writeback(dst, start + done, n);
            progress.inc(n);
            done += n;
        }
    }
    progress.finish();
    Ok(CopyMethod::Sparse)
}

/// Asks the kernel to start writing `len` bytes of `file` at `offset` to
/// disk, without waiting. A bake's copy and payload are flushed anyway (by
/// the e2fsprogs tools, which fsync the image when they open it, and before
/// the rename); started early, that writeback overlaps the rest of the bake
/// instead of following it. Only a hint: errors are ignored, and the fsync
/// that makes the data durable still comes later.
pub fn start_writeback(file: &File, offset: u64, len: u64) {
    // Whole pages only: a page cut at the end is written again by the next
    // write (and waits for this I/O on file systems with stable pages). A
    // length of 0 would mean "to the end of the file".
    let end = offset.saturating_add(len) & !4095;
    if end <= offset {
        return;
    }
    // SAFETY: sync_file_range on an open descriptor; no memory is passed.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            (end - offset) as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

/// How much a writer writes before it asks the disk to start on it.
const WRITEBACK_STEP: u64 = 32 << 20;

/// Follows a writer moving forward through a file and starts the writeback
/// of what it wrote, a [`WRITEBACK_STEP`] at a time: outputs are fsynced
/// before their rename, so the disk may as well start now.
pub struct WritebackTrail {
    /// Where the last [`start_writeback`] ended.
    from: u64,
}

impl WritebackTrail {
    /// A trail starting at `offset` of the file.
    pub fn new(offset: u64) -> Self {
        WritebackTrail { from: offset }
    }

    /// The writer has written everything up to `offset`.
    pub fn advance(&mut self, file: &File, offset: u64) {
        if offset - self.from >= WRITEBACK_STEP {
            self.finish(file, offset);
        }
    }

    /// The writer stopped at `offset`: start on what is left.
    pub fn finish(&mut self, file: &File, offset: u64) {
        start_writeback(file, self.from, offset - self.from);
        self.from = offset;
    }
}

/// A new file written front to back from offset 0 (a compressed output)
/// whose writeback follows the writes ([`WritebackTrail`]), so the fsync
/// before its rename finds little left to do.
pub struct WritebackFile {
    file: File,
    pos: u64,
    writeback: WritebackTrail,
}

impl WritebackFile {
    pub fn new(file: File) -> Self {
        WritebackFile {
            file,
            pos: 0,
            writeback: WritebackTrail::new(0),
        }
    }

    pub fn into_inner(self) -> File {
        self.file
    }
}

impl Write for WritebackFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.pos += n as u64;
        self.writeback.advance(&self.file, self.pos);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// Copies `len` bytes of `src` at `from` to `dst` at `to`: `copy_file_range`
/// (extents shared where the file system can), else reading and writing.
pub fn copy_range(src: &File, from: u64, dst: &File, to: u64, len: u64) -> std::io::Result<()> {
    let mut done = 0u64;
    while done < len {
        let mut off_in = (from + done) as libc::loff_t;
        let mut off_out = (to + done) as libc::loff_t;
        let chunk = (len - done).min(1 << 30) as usize;
        // SAFETY: valid descriptors and offsets owned by this frame.
        let n = unsafe {
            libc::copy_file_range(
                src.as_raw_fd(),
                &mut off_in,
                dst.as_raw_fd(),
                &mut off_out,
                chunk,
                0,
            )
        };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            if matches!(
                err.raw_os_error(),
                Some(libc::EXDEV | libc::ENOSYS | libc::EOPNOTSUPP | libc::EINVAL)
            ) {
                return copy_range_plain(src, from + done, dst, to + done, len - done);
            }
            return Err(err);
        }
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the file shrank while being copied",
            ));
        }
        done += n as u64;
    }
    Ok(())
}

fn copy_range_plain(src: &File, from: u64, dst: &File, to: u64, len: u64) -> std::io::Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    let mut done = 0u64;
    while done < len {
        let n = ((len - done) as usize).min(buf.len());
        src.read_exact_at(&mut buf[..n], from + done)?;
        dst.write_all_at(&buf[..n], to + done)?;
        done += n as u64;
    }
    Ok(())
}

/// Copies the data extents of `src` within `src_off..src_off + len` to `dst`
/// at `dst_off` onward (holes are skipped: `dst` must read as zeros there).
pub fn copy_extents(
    src: &File,
    src_off: u64,
    len: u64,
    dst: &File,
    dst_off: u64,
) -> std::io::Result<()> {
    let end = src_off + len;
    for (start, elen) in data_extents(src)? {
        let (a, b) = (start.max(src_off), (start + elen).min(end));
        if a < b {
            copy_range(src, a, dst, dst_off + (a - src_off), b - a)?;
        }
    }
    Ok(())
}

/// Removes `0..len` from the start of `file`, shifting the rest down
/// (`FALLOC_FL_COLLAPSE_RANGE`: extents are renumbered, no data moves).
/// `Ok(false)` when the file system cannot (tmpfs, btrfs, NFS, a `len` that
/// is not a multiple of its block size): the file is then unchanged.
pub fn collapse_start(file: &File, len: u64) -> io::Result<bool> {
    shift(file, libc::FALLOC_FL_COLLAPSE_RANGE, len)
}

/// Inserts a hole of `len` bytes at the start of `file`, shifting its
/// contents up (`FALLOC_FL_INSERT_RANGE`); `Ok(false)` as for [`collapse_start`].
pub fn insert_start(file: &File, len: u64) -> io::Result<bool> {
    shift(file, libc::FALLOC_FL_INSERT_RANGE, len)
}

fn shift(file: &File, mode: libc::c_int, len: u64) -> io::Result<bool> {
    let len = libc::off_t::try_from(len).map_err(|_| {
        io::Error::new(io::ErrorKind::InvalidInput, "range past the largest offset")
    })?;
    // SAFETY: fallocate on an open descriptor; no memory is passed.
    if unsafe { libc::fallocate(file.as_raw_fd(), mode, 0, len) } == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    // These say "not here" before anything is changed; anything else (EIO,
    // ENOSPC) may have happened half-way and is the caller's failure.
    match e.raw_os_error() {
        Some(libc::EOPNOTSUPP | libc::EINVAL | libc::ENOSYS | libc::ENOTTY | libc::ENODEV) => {
            Ok(false)
        }
        _ => Err(e),
    }
}

/// The pieces of `file` within `off..off + len`, in order: `(pos, n, true)`
/// for data, `(pos, n, false)` for a hole (and for anything past the end).
pub(crate) fn pieces(file: &File, off: u64, len: u64) -> io::Result<Vec<(u64, u64, bool)>> {
    let end = off.checked_add(len).ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, "range past the largest offset")
    })?;
    let mut out = Vec::new();
    let mut pos = off;
    for (start, elen) in data_extents(file)? {
        let (a, b) = (start.max(pos), (start + elen).min(end));
        if a >= b {
            continue;
        }
        if a > pos {
            out.push((pos, a - pos, false));
        }
        out.push((a, b - a, true));
        pos = b;
    }
    if pos < end {
        out.push((pos, end - pos, false));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::{Sha256Digest, sha256_sparse};
    use sha2::{Digest, Sha256};
    use std::io::Read;

    #[test]
    fn sparse_writer_keeps_bytes_and_makes_holes() {
        let f = tempfile::tempfile().unwrap();
        let mut w = SparseWriter::new(&f);
        let mut expect = Vec::new();
        for (len, byte) in [(1000usize, 1u8), (300_000, 0), (70_000, 7), (5, 0), (3, 9)] {
            let chunk = vec![byte; len];
            w.write_all(&chunk).unwrap();
            expect.extend_from_slice(&chunk);
        }
        w.skip_zeros(1 << 20).unwrap();
        expect.resize(expect.len() + (1 << 20), 0);
        w.write_all(b"tail").unwrap();
        expect.extend_from_slice(b"tail");
        assert_eq!(w.finish().unwrap(), expect.len() as u64);
        let mut got = Vec::new();
        (&f).read_to_end(&mut got).unwrap();
        assert!(got == expect);
        use std::os::unix::fs::MetadataExt;
        assert!(f.metadata().unwrap().blocks() * 512 < expect.len() as u64);
        let mut h = Sha256::new();
        h.update(&expect);
        assert_eq!(sha256_sparse(&f).unwrap(), Sha256Digest::of(h));
    }
}
