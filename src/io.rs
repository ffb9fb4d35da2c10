//! Generic I/O pieces: a sha256 digest type, a sparse writer, hashing of sparse files.

use std::fmt;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

use sha2::{Digest, Sha256};

/// A sha256 digest that parses from and prints as 64 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha256Digest(pub [u8; 32]);

impl Sha256Digest {
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim();
        if s.len() != 64 {
            return None;
        }
        let bytes = hex::decode(s).ok()?;
        Some(Sha256Digest(bytes.try_into().ok()?))
    }

    pub fn of(hasher: Sha256) -> Self {
        Sha256Digest(hasher.finalize().into())
    }
}

impl fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{self}")
    }
}

pub const SPARSE_BLOCK: usize = 64 * 1024;

/// Writes a stream into a file, leaving holes where whole aligned blocks are zero.
pub struct SparseWriter<'f> {
    file: &'f File,
    pos: u64,
    buf: Vec<u8>,
}

impl<'f> SparseWriter<'f> {
    pub fn new(file: &'f File) -> Self {
        SparseWriter {
            file,
            pos: 0,
            buf: Vec::with_capacity(SPARSE_BLOCK),
        }
    }

    fn put_block(&mut self, block: &[u8]) -> io::Result<()> {
        if block.iter().any(|&b| b != 0) {
            self.file.write_all_at(block, self.pos)?;
        }
        self.pos += block.len() as u64;
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

/// sha256 of a (sparse) file's full contents.
pub fn sha256_sparse(file: &File) -> io::Result<Sha256Digest> {
    let mut h = Sha256::new();
    stream_sparse(file, |b| {
        h.update(b);
        Ok(())
    })?;
    Ok(Sha256Digest::of(h))
}

#[cfg(test)]
mod tests {
    use super::*;
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

    #[test]
    fn digests_parse_and_print() {
        let s = "88584d5797bac01efd3bb1063935ce9f00947e4d4aa0c671d0a39ec8db6ca8f7";
        assert_eq!(Sha256Digest::parse(s).unwrap().to_string(), s);
        assert!(Sha256Digest::parse("abc").is_none());
        assert!(Sha256Digest::parse(&"g".repeat(64)).is_none());
    }
}
