//! sha256 while data flows: a hashing reader and writer, and the digest of a
//! sparse file.

use std::fs::File;
use std::io::{self, Read, Write};

use sha2::{Digest, Sha256};

use super::{Sha256Digest, stream_sparse};

/// Hashes what passes through it into `inner`.
pub struct HashingWriter<W: Write> {
    inner: W,
    hasher: Sha256,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
        }
    }

    /// The inner writer and the digest of everything written.
    pub fn finish(self) -> (W, Sha256Digest) {
        (self.inner, Sha256Digest::of(self.hasher))
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// Hashes what is read through it from `inner`.
pub struct HashingReader<R: Read> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
        }
    }

    /// The digest of everything read so far.
    pub fn digest(self) -> Sha256Digest {
        Sha256Digest::of(self.hasher)
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// sha256 of everything `r` yields.
pub fn sha256_reader(r: impl Read) -> io::Result<Sha256Digest> {
    let mut h = HashingReader::new(r);
    io::copy(&mut h, &mut io::sink())?;
    Ok(h.digest())
}

/// sha256 of a (sparse) file's full contents.
pub fn sha256_sparse(file: &File) -> io::Result<Sha256Digest> {
    let mut h = HashingWriter::new(io::sink());
    stream_sparse(file, |b| h.write_all(b))?;
    Ok(h.finish().1)
}
