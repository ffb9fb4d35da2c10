//! Byte-level helpers for images: place and extract ranges, hash ranges,
//! compare everything outside the edited partitions.
#![allow(dead_code)]

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;

pub const MIB: u64 = 1024 * 1024;

/// Copies `src` into `img` at byte `offset` without touching anything else.
pub fn place(img: &Path, src: &Path, offset: u64) {
    let data = std::fs::read(src).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(img).unwrap();
    // Write only non-zero 64 KiB chunks so the image stays sparse.
    for (i, chunk) in data.chunks(64 * 1024).enumerate() {
        if chunk.iter().any(|&b| b != 0) {
            f.write_all_at(chunk, offset + (i as u64) * 64 * 1024)
                .unwrap();
        }
    }
}

/// Copies `len` bytes at `offset` of `img` into a new file.
pub fn extract(img: &Path, offset: u64, len: u64, out: &Path) {
    let f = File::open(img).unwrap();
    let mut o = File::create(out).unwrap();
    let mut buf = vec![0u8; MIB as usize];
    let mut done = 0;
    while done < len {
        let n = ((len - done) as usize).min(buf.len());
        f.read_exact_at(&mut buf[..n], offset + done).unwrap();
        o.write_all(&buf[..n]).unwrap();
        done += n as u64;
    }
}

/// sha256 of `len` bytes at `offset` of `path`.
pub fn hash_range(path: &Path, offset: u64, len: u64) -> String {
    use sha2::{Digest, Sha256};
    let f = File::open(path).unwrap();
    let mut h = Sha256::new();
    let mut buf = vec![0u8; MIB as usize];
    let mut done = 0;
    while done < len {
        let n = ((len - done) as usize).min(buf.len());
        f.read_exact_at(&mut buf[..n], offset + done).unwrap();
        h.update(&buf[..n]);
        done += n as u64;
    }
    hex::encode(h.finalize())
}

/// Asserts that every byte of `a` and `b` outside the given ranges is equal.
pub fn assert_equal_outside(a: &Path, b: &Path, ranges: &[(u64, u64)]) {
    let size = std::fs::metadata(a).unwrap().len();
    assert_eq!(
        size,
        std::fs::metadata(b).unwrap().len(),
        "image sizes differ"
    );
    let mut ranges = ranges.to_vec();
    ranges.sort();
    let mut pos = 0;
    for (start, len) in ranges.iter().copied().chain([(size, 0)]) {
        if start > pos {
            assert_eq!(
                hash_range(a, pos, start - pos),
                hash_range(b, pos, start - pos),
                "bytes {pos}..{start} differ between {} and {}",
                a.display(),
                b.display()
            );
        }
        pos = pos.max(start + len);
    }
}
