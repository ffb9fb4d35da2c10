//! Reading images back: what an image imgbuild wrote holds (`inspect`:
//! partition table, file systems, provenance record, seed) and how two
//! images differ (`diff`). Only reads; the same readers serve `seal`,
//! `flash`, `verify`, `wait`, `inspect` and `diff`.

pub mod diff;
pub mod inspect;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::plan::Provenance;
use crate::source::unpack;

/// An artifact read once: how it is packed and, for a raw image, the
/// provenance record in its seed. `seal`, `flash`, `verify`, `inspect` and
/// `diff` ask this instead of sniffing and reading each on their own.
#[derive(Debug, Clone)]
pub struct Artifact {
    pub path: PathBuf,
    pub packing: unpack::Format,
    /// `None` for a compressed artifact (unpack it first), an image imgbuild
    /// did not build, or one whose table or seed cannot be read (the BMC
    /// writes any bytes, so such an image is flashed as it is).
    pub provenance: Option<Provenance>,
}

impl Artifact {
    /// Reads the packing and, for a raw image, its provenance record from
    /// a seed directory of `ext4_seed_dirs` (or the FAT seed).
    pub fn open(path: &Path, ext4_seed_dirs: &[String]) -> Result<Artifact> {
        use std::io::Read;
        let mut head = [0u8; 8];
        let mut f =
            std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let n = f
            .read(&mut head)
            .with_context(|| format!("reading {}", path.display()))?;
        let packing = unpack::Format::sniff(&head[..n]);
        let provenance = match packing {
            unpack::Format::Raw => inspect::inspect(path, ext4_seed_dirs)
                .ok()
                .and_then(|i| i.provenance),
            _ => None,
        };
        Ok(Artifact {
            path: path.to_owned(),
            packing,
            provenance,
        })
    }

    pub fn is_raw(&self) -> bool {
        self.packing == unpack::Format::Raw
    }

    /// Built `--unsealed`: the node's secrets are still to be added.
    pub fn is_unsealed(&self) -> bool {
        self.provenance.as_ref().is_some_and(|p| p.unsealed)
    }
}
