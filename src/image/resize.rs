//! Cutting an image after its last partition: the partition's new end goes
//! into the table, and the image file ends right after it (GPT: after the
//! backup entries and header, which move there).
//!
//! Only the table is rewritten here; the file system inside the partition
//! must already fit (e2fsprogs' resize2fs shrinks it first). Every value read
//! is checked before anything is written, so a table this code does not
//! understand is refused, never half-rewritten.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::{ImageError, SECTOR, TableKind};

const GPT_SIGNATURE: &[u8; 8] = b"EFI PART";

fn bad(path: &Path, reason: impl Into<String>) -> ImageError {
    let reason = reason.into();
    // Messages about the MBR say so; everything else is about the GPT.
    let kind = if reason.starts_with("MBR") {
        TableKind::Mbr
    } else {
        TableKind::Gpt
    };
    ImageError::BadTable {
        path: path.to_owned(),
        kind,
        reason,
    }
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> ImageError + '_ {
    move |source| ImageError::Io {
        path: path.to_owned(),
        source,
    }
}

fn le32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().unwrap())
}

fn le64(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().unwrap())
}

/// Makes partition `index` of `file` (an image whose table is `kind`) end at
/// byte `new_end` (a sector multiple, after its start, no later than its
/// current end) and cuts the file right after it. Returns the new file size.
///
/// Refuses when another partition ends after `index`.
pub fn truncate_after(
    path: &Path,
    file: &File,
    kind: TableKind,
    index: u32,
    new_end: u64,
) -> Result<u64, ImageError> {
    if !new_end.is_multiple_of(SECTOR) {
        return Err(bad(
            path,
            format!("new end {new_end} is not a multiple of {SECTOR}"),
        ));
    }
    match kind {
        TableKind::Gpt => gpt(path, file, index, new_end / SECTOR),
        TableKind::Mbr => mbr(path, file, index, new_end / SECTOR),
    }
}

fn gpt(path: &Path, file: &File, index: u32, new_end_lba: u64) -> Result<u64, ImageError> {
    let mut header = [0u8; SECTOR as usize];
    file.read_exact_at(&mut header, SECTOR).map_err(io(path))?;
    if &header[0..8] != GPT_SIGNATURE {
        return Err(bad(path, "no GPT header at LBA 1"));
    }
    let header_size = le32(&header, 12) as usize;
    if !(92..=SECTOR as usize).contains(&header_size) {
        return Err(bad(path, format!("GPT header size {header_size}")));
    }
    let mut check = header[..header_size].to_vec();
    check[16..20].fill(0);
    if crc32fast::hash(&check) != le32(&header, 16) {
        return Err(bad(path, "the primary GPT header's CRC does not match"));
    }
    let first_usable = le64(&header, 40);
    let entries_lba = le64(&header, 72);
    let count = le32(&header, 80) as u64;
    let entry_size = le32(&header, 84) as u64;
    if entry_size < 128 || !entry_size.is_multiple_of(8) || count == 0 || count > 1024 {
        return Err(bad(
            path,
            format!("unsupported GPT entry array ({count} entries of {entry_size} bytes)"),
        ));
    }
    let array_len = count * entry_size;
    let array_sectors = array_len.div_ceil(SECTOR);
    let mut entries = vec![0u8; (array_sectors * SECTOR) as usize];
    file.read_exact_at(&mut entries, entries_lba * SECTOR)
        .map_err(io(path))?;
    if crc32fast::hash(&entries[..array_len as usize]) != le32(&header, 88) {
        return Err(bad(path, "the GPT partition entries' CRC does not match"));
    }
    if index == 0 || u64::from(index) > count {
        return Err(bad(path, format!("no partition entry {index}")));
    }
    let entry = |i: u64| &entries[(i * entry_size) as usize..((i + 1) * entry_size) as usize];
    let mine = u64::from(index - 1);
    let (first, last) = (le64(entry(mine), 32), le64(entry(mine), 40));
    if entry(mine)[..16].iter().all(|&b| b == 0) {
        return Err(bad(path, format!("partition entry {index} is unused")));
    }
    for i in 0..count {
        let e = entry(i);
        if i != mine && e[..16].iter().any(|&b| b != 0) && le64(e, 40) >= first {
            return Err(bad(
                path,
                format!(
                    "partition {} lies after partition {index}: it is not the last one, so the image cannot end after it",
                    i + 1
                ),
            ));
        }
    }
    let new_last = new_end_lba
        .checked_sub(1)
        .filter(|&l| l >= first && l <= last && l >= first_usable)
        .ok_or_else(|| {
            bad(
                path,
                format!("partition {index} ({first}..={last}) cannot end at sector {new_end_lba}"),
            )
        })?;
    let off = (mine * entry_size) as usize;
    entries[off + 40..off + 48].copy_from_slice(&new_last.to_le_bytes());
    let entries_crc = crc32fast::hash(&entries[..array_len as usize]);

    // New layout: partition, backup entries, backup header (the last sector).
    let backup_entries_lba = new_last + 1;
    let backup_header_lba = backup_entries_lba + array_sectors;
    let total_sectors = backup_header_lba + 1;
    let with_crc = |mut h: [u8; SECTOR as usize], my: u64, alt: u64, entries_at: u64| {
        h[24..32].copy_from_slice(&my.to_le_bytes());
        h[32..40].copy_from_slice(&alt.to_le_bytes());
        h[48..56].copy_from_slice(&new_last.to_le_bytes()); // LastUsableLBA
        h[72..80].copy_from_slice(&entries_at.to_le_bytes());
        h[88..92].copy_from_slice(&entries_crc.to_le_bytes());
        h[16..20].fill(0);
        let crc = crc32fast::hash(&h[..header_size]);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        h
    };
    let primary = with_crc(header, 1, backup_header_lba, entries_lba);
    let backup = with_crc(header, backup_header_lba, 1, backup_entries_lba);

    // Backup first (beyond the partition's new end, where nothing lives any
    // more), then the primary, then cut the file.
    file.write_all_at(&entries, backup_entries_lba * SECTOR)
        .map_err(io(path))?;
    file.write_all_at(&backup, backup_header_lba * SECTOR)
        .map_err(io(path))?;
    file.write_all_at(&entries, entries_lba * SECTOR)
        .map_err(io(path))?;
    file.write_all_at(&primary, SECTOR).map_err(io(path))?;
    update_protective_mbr(path, file, total_sectors)?;
    let size = total_sectors * SECTOR;
    file.set_len(size).map_err(io(path))?;
    Ok(size)
}

/// The protective MBR's 0xEE entry covers the disk after LBA 0 (or says
/// 0xFFFFFFFF when the disk is bigger); keep it true to the new size.
fn update_protective_mbr(path: &Path, file: &File, total_sectors: u64) -> Result<(), ImageError> {
    let mut mbr = [0u8; SECTOR as usize];
    file.read_exact_at(&mut mbr, 0).map_err(io(path))?;
    for i in 0..4 {
        let e = 446 + i * 16;
        if mbr[e + 4] == 0xEE && le32(&mbr, e + 8) == 1 {
            let size = u32::try_from(total_sectors - 1).unwrap_or(u32::MAX);
            file.write_all_at(&size.to_le_bytes(), (e + 12) as u64)
                .map_err(io(path))?;
        }
    }
    Ok(())
}

fn mbr(path: &Path, file: &File, index: u32, new_end_lba: u64) -> Result<u64, ImageError> {
    if !(1..=4).contains(&index) {
        return Err(bad(
            path,
            format!("MBR: only primary partitions (1-4) can be shrunk, not {index}"),
        ));
    }
    let mut mbr = [0u8; SECTOR as usize];
    file.read_exact_at(&mut mbr, 0).map_err(io(path))?;
    if mbr[510..512] != [0x55, 0xAA] {
        return Err(bad(path, "MBR: no boot signature"));
    }
    let entry = |i: usize| 446 + i * 16;
    let mine = (index - 1) as usize;
    let start = u64::from(le32(&mbr, entry(mine) + 8));
    let sectors = u64::from(le32(&mbr, entry(mine) + 12));
    if mbr[entry(mine) + 4] == 0 || sectors == 0 {
        return Err(bad(path, format!("MBR: partition {index} is unused")));
    }
    for i in 0..4 {
        let e = entry(i);
        let (s, n) = (u64::from(le32(&mbr, e + 8)), u64::from(le32(&mbr, e + 12)));
        if i != mine && mbr[e + 4] != 0 && n != 0 && s + n > start {
            return Err(bad(
                path,
                format!(
                    "MBR: partition {} lies after partition {index}: it is not the last one, so the image cannot end after it",
                    i + 1
                ),
            ));
        }
    }
    let new_sectors = new_end_lba
        .checked_sub(start)
        .filter(|&n| n > 0 && n <= sectors)
        .ok_or_else(|| {
            bad(
                path,
                format!(
                    "MBR: partition {index} (sectors {start}+{sectors}) cannot end at sector {new_end_lba}"
                ),
            )
        })?;
    // The CHS end follows the LBA end (255 heads, 63 sectors, as fdisk and
    // sfdisk write it; past cylinder 1023 the usual 1023/254/63 stand-in).
    let mut e = [0u8; 16];
    e.copy_from_slice(&mbr[entry(mine)..entry(mine) + 16]);
    e[5..8].copy_from_slice(&chs(start + new_sectors - 1));
    e[12..16].copy_from_slice(&(new_sectors as u32).to_le_bytes());
    file.write_all_at(&e, entry(mine) as u64)
        .map_err(io(path))?;
    let size = new_end_lba * SECTOR;
    file.set_len(size).map_err(io(path))?;
    Ok(size)
}

/// The CHS address of `lba` in an MBR entry's 3-byte form.
fn chs(lba: u64) -> [u8; 3] {
    let (heads, sectors) = (255u64, 63u64);
    let c = lba / (heads * sectors);
    if c > 1023 {
        return [254, 0xFF, 0xFF];
    }
    let h = (lba / sectors) % heads;
    let s = lba % sectors + 1;
    [h as u8, (s as u8 & 0x3F) | ((c >> 2) as u8 & 0xC0), c as u8]
}

#[cfg(test)]
mod tests {
    use super::chs;

    #[test]
    fn chs_of_known_sectors() {
        // sfdisk's end CHS for a partition ending at sector 2047 and beyond 8 GiB.
        assert_eq!(chs(2047), [32, 32, 0]);
        assert_eq!(chs(40_000_000), [254, 0xFF, 0xFF]);
    }
}
