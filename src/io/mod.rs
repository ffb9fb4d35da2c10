//! Generic I/O pieces shared by download, unpack, output and upload: a
//! sha256 digest type, hashing readers and writers, sparse files, progress.

pub mod hash;
pub mod progress;
pub mod sparse;
pub mod sums;

pub use hash::{BackgroundHasher, HashingReader, HashingWriter, hash_range, sha256_sparse};
pub use sparse::{
    CopyMethod, SparseWriter, WritebackFile, WritebackTrail, collapse_start, copy_extents,
    copy_file, copy_file_with_progress, copy_range, data_extents, insert_start, start_writeback,
    stream_sparse,
};

use sha2::{Digest, Sha256};
use std::fmt;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_parse_and_print() {
        let s = "88584d5797bac01efd3bb1063935ce9f00947e4d4aa0c671d0a39ec8db6ca8f7";
        assert_eq!(Sha256Digest::parse(s).unwrap().to_string(), s);
        assert!(Sha256Digest::parse("abc").is_none());
        assert!(Sha256Digest::parse(&"g".repeat(64)).is_none());
    }
}
