//! sha256 while data flows: a hashing reader and writer, and the digest of a
//! sparse file.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;

use sha2::{Digest, Sha256};

use super::Sha256Digest;
use super::sparse::pieces;

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

/// sha256 of a (sparse) file's full contents: data extents are read on this
/// thread and hashed on another; holes are hashed without being read.
pub fn sha256_sparse(file: &File) -> io::Result<Sha256Digest> {
    let mut h = BackgroundHasher::new();
    let len = file.metadata()?.len();
    hash_range(file, 0, len, &mut h)?;
    Ok(h.finish())
}

/// sha256 on a thread of its own, fed chunks and zero runs in order, so the
/// caller's I/O and the hashing overlap (on two cores) with at most a few
/// chunks in flight (bounded memory). Zero runs are hashed from a static
/// block: holes are never read.
pub struct BackgroundHasher {
    tx: std::sync::mpsc::SyncSender<Piece>,
    free: std::sync::mpsc::Receiver<Vec<u8>>,
    handle: std::thread::JoinHandle<Sha256Digest>,
}

enum Piece {
    Data(Vec<u8>),
    Zeros(u64),
}

/// The size of the chunks a [`BackgroundHasher`] lends.
pub const HASH_CHUNK: usize = 1 << 20;
const IN_FLIGHT: usize = 3;
static ZERO_BLOCK: [u8; 64 * 1024] = [0; 64 * 1024];

/// Feeds `n` zero bytes to `h` from a static block (nothing is read).
pub fn update_zeros(h: &mut Sha256, mut n: u64) {
    while n > 0 {
        let k = n.min(ZERO_BLOCK.len() as u64) as usize;
        h.update(&ZERO_BLOCK[..k]);
        n -= k as u64;
    }
}

impl Default for BackgroundHasher {
    fn default() -> Self {
        Self::new()
    }
}

impl BackgroundHasher {
    pub fn new() -> Self {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Piece>(IN_FLIGHT);
        let (free_tx, free) = std::sync::mpsc::sync_channel::<Vec<u8>>(IN_FLIGHT + 1);
        for _ in 0..=IN_FLIGHT {
            // Cannot fail: the channel has room for every buffer.
            let _ = free_tx.send(vec![0u8; HASH_CHUNK]);
        }
        let handle = std::thread::spawn(move || {
            let mut h = Sha256::new();
            for piece in rx {
                match piece {
                    Piece::Data(b) => {
                        h.update(&b);
                        // The lender may have gone (an error ended the copy).
                        let _ = free_tx.send(b);
                    }
                    Piece::Zeros(n) => update_zeros(&mut h, n),
                }
            }
            Sha256Digest::of(h)
        });
        BackgroundHasher { tx, free, handle }
    }

    /// A buffer of [`HASH_CHUNK`] bytes to fill and pass to [`Self::data`].
    pub fn buffer(&mut self) -> Vec<u8> {
        let mut b = self.free.recv().unwrap_or_default();
        b.resize(HASH_CHUNK, 0);
        b
    }

    /// Hashes the first `len` bytes of `buf` (from [`Self::buffer`]).
    pub fn data(&mut self, mut buf: Vec<u8>, len: usize) {
        buf.truncate(len);
        // The hashing thread only ends when `tx` is dropped.
        let _ = self.tx.send(Piece::Data(buf));
    }

    /// Hashes `n` zero bytes.
    pub fn zeros(&mut self, n: u64) {
        if n > 0 {
            let _ = self.tx.send(Piece::Zeros(n));
        }
    }

    /// The digest of everything fed, in order.
    pub fn finish(self) -> Sha256Digest {
        drop(self.tx);
        // sha2 does not panic; a panic there would be a bug worth surfacing.
        self.handle.join().expect("the hashing thread panicked")
    }
}

/// Feeds `off..off + len` of `file` to `hasher`: data extents are read,
/// holes hashed as zero runs without a read.
pub fn hash_range(
    file: &File,
    off: u64,
    len: u64,
    hasher: &mut BackgroundHasher,
) -> io::Result<()> {
    for (pos, n, data) in pieces(file, off, len)? {
        if !data {
            hasher.zeros(n);
            continue;
        }
        let mut done = 0;
        while done < n {
            let mut buf = hasher.buffer();
            let k = ((n - done) as usize).min(buf.len());
            file.read_exact_at(&mut buf[..k], pos + done)?;
            hasher.data(buf, k);
            done += k as u64;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashing_a_range_matches_its_bytes() {
        // Data, a hole, data across chunk boundaries, a trailing hole.
        let src = tempfile::tempfile().unwrap();
        src.set_len(9 << 20).unwrap();
        src.write_all_at(&vec![3u8; 1_500_000], 100).unwrap();
        src.write_all_at(&vec![5u8; 2_300_000], 5 << 20).unwrap();
        let mut all = Vec::new();
        (&src).read_to_end(&mut all).unwrap();
        for (off, len) in [(0u64, 9u64 << 20), (4096, 7 << 20), (6 << 20, 3 << 20)] {
            let range = &all[off as usize..(off + len) as usize];
            let mut h = BackgroundHasher::new();
            hash_range(&src, off, len, &mut h).unwrap();
            let mut want = Sha256::new();
            want.update(range);
            assert_eq!(h.finish(), Sha256Digest::of(want), "{off}+{len}");
        }
    }
}
