//! What a partition holds, told from its superblock (magic and label).

use crate::fs::fat::FatVolume;
use crate::image::{ImageError, Region};

/// What a partition holds, from its superblock magic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FsProbe {
    Vfat { label: String },
    Ext4 { label: String },
    Unknown,
}

impl FsProbe {
    pub fn kind_name(&self) -> &'static str {
        match self {
            FsProbe::Vfat { .. } => "vfat",
            FsProbe::Ext4 { .. } => "ext4",
            FsProbe::Unknown => "unknown",
        }
    }
    pub fn label(&self) -> Option<&str> {
        match self {
            FsProbe::Vfat { label } | FsProbe::Ext4 { label } => Some(label),
            FsProbe::Unknown => None,
        }
    }
}

pub fn probe(region: &Region) -> Result<FsProbe, ImageError> {
    if region.len() < 4096 {
        return Ok(FsProbe::Unknown);
    }
    let mut sb = [0u8; 1024];
    if region.len() >= 2048 {
        region.read_at(1024, &mut sb)?;
        if sb[56..58] == [0x53, 0xEF] {
            return Ok(FsProbe::Ext4 {
                label: cstr(&sb[120..136]),
            });
        }
    }
    let mut boot = [0u8; 512];
    region.read_at(0, &mut boot)?;
    if boot[510..512] == [0x55, 0xAA] && (&boot[82..87] == b"FAT32" || &boot[54..57] == b"FAT") {
        if let Ok(vol) = FatVolume::open(*region) {
            return Ok(FsProbe::Vfat { label: vol.label() });
        }
        let raw = if &boot[82..87] == b"FAT32" {
            &boot[71..82]
        } else {
            &boot[43..54]
        };
        return Ok(FsProbe::Vfat {
            label: String::from_utf8_lossy(raw).trim_end().to_string(),
        });
    }
    Ok(FsProbe::Unknown)
}

fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}
