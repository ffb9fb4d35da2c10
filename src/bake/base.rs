//! Checks that a base image is what its board's manifest says: the partition
//! table, each partition's file system and label, and the root's release and
//! architecture.

use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};

use crate::config::manifest::{Arch, FsKind, Manifest};
use crate::fs::{FsProbe, ext4, probe};
use crate::image::{Partition, PartitionTable, Region};

/// Checks that `base` has the layout its board's manifest describes.
pub fn check_base(base: &Path, manifest: &Manifest) -> Result<PartitionTable> {
    let table = PartitionTable::read(base, Some(manifest.partition_table)).with_context(|| {
        format!(
            "{} is not a usable {} base image",
            base.display(),
            manifest.board
        )
    })?;
    let file = std::fs::File::open(base).with_context(|| format!("opening {}", base.display()))?;
    for (role, spec) in &manifest.partitions {
        let part = table.get(base, spec.index)?;
        let found = probe(&Region::new(&file, part))?;
        let label_ok = |l: &str| match spec.fs {
            FsKind::Vfat => l.eq_ignore_ascii_case(&spec.label),
            FsKind::Ext4 => l == spec.label,
        };
        let ok = match (&found, spec.fs) {
            (FsProbe::Vfat { label }, FsKind::Vfat) | (FsProbe::Ext4 { label }, FsKind::Ext4) => {
                label_ok(label)
            }
            _ => false,
        };
        if !ok {
            bail!(
                "{}: partition {} ({role}) should hold {} labelled {:?} for a {} image, but holds {}{}",
                base.display(),
                spec.index,
                spec.fs.name(),
                spec.label,
                manifest.board,
                found.kind_name(),
                found
                    .label()
                    .map(|l| format!(" labelled {l:?}"))
                    .unwrap_or_default()
            );
        }
    }
    let root = &manifest.partitions["root"];
    let part = table.get(base, root.index)?;
    check_os(base, &file, part, manifest)?;
    Ok(table)
}

fn check_os(
    base: &Path,
    file: &std::fs::File,
    part: &Partition,
    manifest: &Manifest,
) -> Result<()> {
    let fs = ext4::open_reader(Region::new(file, part))
        .with_context(|| format!("{}: reading the root file system", base.display()))?;
    // Bounded reads: the base image says how large its files are.
    let text = ext4::read_bounded(&fs, "/etc/os-release", 64 << 10)
        .or_else(|_| ext4::read_bounded(&fs, "/usr/lib/os-release", 64 << 10))
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .map_err(|e| anyhow!("{}: no readable /etc/os-release in the root file system ({e}); is this an Ubuntu image?", base.display()))?;
    let field = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .map(|v| v.trim().trim_matches('"').to_string())
    };
    let (id, version) = (field("ID"), field("VERSION_ID"));
    if id.as_deref() != Some(&manifest.os.id) || version.as_deref() != Some(&manifest.os.version_id)
    {
        bail!(
            "{}: the root file system is {} {}, but the {} manifest expects {} {}",
            base.display(),
            id.as_deref().unwrap_or("(no ID)"),
            version.as_deref().unwrap_or("(no VERSION_ID)"),
            manifest.board,
            manifest.os.id,
            manifest.os.version_id
        );
    }
    // The ELF machine of the shell tells the architecture.
    if let Ok(elf) = ext4::read_bounded(&fs, "/usr/bin/dash", 16 << 20) {
        let arch = (elf.len() >= 20 && elf[..4] == *b"\x7fELF")
            .then(|| u16::from_le_bytes([elf[18], elf[19]]))
            .and_then(Arch::from_elf_machine);
        if arch != Some(manifest.arch) {
            bail!(
                "{}: the root file system's programs are {}, but board {} is {}",
                base.display(),
                arch.map_or("unknown", Arch::as_str),
                manifest.board,
                manifest.arch
            );
        }
    }
    Ok(())
}
