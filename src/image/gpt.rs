//! GPT reading (UEFI 2.10 §5.3): the primary header at LBA 1, else the backup
//! at the last LBA; header and entry-array CRCs checked, the entry array
//! bounded, every entry inside the usable area.

use std::fs::File;
use std::os::unix::fs::FileExt;

use super::{RawPartition, SECTOR, TableError};

/// Entry arrays larger than this are refused (the usual one is 16 KiB: 128
/// entries of 128 bytes), so a header cannot make us read or allocate much.
const MAX_ENTRY_ARRAY: u64 = 1 << 20;

pub(super) fn read(file: &File, image_size: u64) -> Result<Vec<RawPartition>, TableError> {
    let sectors = image_size / SECTOR;
    if sectors < 3 {
        return Err(TableError::Bad("the image is too small for a GPT".into()));
    }
    match read_at(file, 1, sectors) {
        Ok(parts) => Ok(parts),
        Err(TableError::Bad(primary)) => match read_at(file, sectors - 1, sectors) {
            Ok(parts) => {
                tracing::warn!("the primary GPT is damaged ({primary}); using the backup GPT");
                Ok(parts)
            }
            Err(TableError::Bad(_)) => Err(TableError::Bad(primary)),
            Err(e) => Err(e),
        },
        Err(e) => Err(e),
    }
}

fn le32(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

fn le64(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}

fn bad<T>(reason: String) -> Result<T, TableError> {
    Err(TableError::Bad(reason))
}

/// Reads and checks the header at `lba` and its entries.
fn read_at(file: &File, lba: u64, sectors: u64) -> Result<Vec<RawPartition>, TableError> {
    let which = if lba == 1 { "primary" } else { "backup" };
    let mut h = [0u8; SECTOR as usize];
    file.read_exact_at(&mut h, lba * SECTOR)?;
    if &h[..8] != b"EFI PART" {
        return bad(format!("no {which} GPT header signature"));
    }
    let header_size = le32(&h, 12) as usize;
    if !(92..=SECTOR as usize).contains(&header_size) {
        return bad(format!("{which} header size {header_size} is not 92-512"));
    }
    let stored = le32(&h, 16);
    let mut copy = h;
    copy[16..20].fill(0);
    if crc32(&copy[..header_size]) != stored {
        return bad(format!("{which} header CRC mismatch"));
    }
    if le64(&h, 24) != lba {
        return bad(format!("{which} header says it is at LBA {}", le64(&h, 24)));
    }
    let first_usable = le64(&h, 40);
    let last_usable = le64(&h, 48);
    if first_usable > last_usable || last_usable >= sectors {
        return bad(format!(
            "usable sectors {first_usable}..={last_usable} do not fit the {sectors}-sector image"
        ));
    }
    let entries_lba = le64(&h, 72);
    let count = u64::from(le32(&h, 80));
    let entry_size = u64::from(le32(&h, 84));
    if entry_size < 128 || !entry_size.is_power_of_two() {
        return bad(format!(
            "partition entry size {entry_size} is not 128 times a power of two"
        ));
    }
    let array_len = count
        .checked_mul(entry_size)
        .filter(|&l| l <= MAX_ENTRY_ARRAY)
        .ok_or_else(|| {
            TableError::Bad(format!(
                "{count} partition entries of {entry_size} bytes exceed the {MAX_ENTRY_ARRAY}-byte limit"
            ))
        })?;
    let array_end = entries_lba
        .checked_mul(SECTOR)
        .and_then(|s| s.checked_add(array_len));
    if entries_lba < 2 || array_end.is_none_or(|e| e > sectors * SECTOR) {
        return bad(format!(
            "the partition entry array at LBA {entries_lba} lies outside the image"
        ));
    }
    let mut array = vec![0u8; array_len as usize];
    file.read_exact_at(&mut array, entries_lba * SECTOR)?;
    if crc32(&array) != le32(&h, 88) {
        return bad(format!("{which} partition entry array CRC mismatch"));
    }
    let mut out = Vec::new();
    for (i, e) in array.chunks_exact(entry_size as usize).enumerate() {
        if e[..16].iter().all(|&b| b == 0) {
            continue;
        }
        let index = i as u32 + 1;
        let first = le64(e, 32);
        let last = le64(e, 40);
        if last < first {
            return bad(format!("partition {index} ends before it starts"));
        }
        if first < first_usable || last > last_usable {
            return bad(format!(
                "partition {index} (sectors {first}..={last}) lies outside the usable sectors {first_usable}..={last_usable}"
            ));
        }
        let units: Vec<u16> = e[56..128]
            .chunks_exact(2)
            .map(|c| u16::from_le_bytes([c[0], c[1]]))
            .take_while(|&u| u != 0)
            .collect();
        out.push(RawPartition {
            index,
            first_lba: first,
            // last <= last_usable < sectors, so this neither underflows nor overflows.
            sectors: last - first + 1,
            type_id: guid(&e[..16]),
            name: String::from_utf16_lossy(&units),
        });
    }
    Ok(out)
}

/// A GUID in its usual text form (the first three fields are little-endian on disk).
fn guid(b: &[u8]) -> String {
    format!(
        "{:08X}-{:04X}-{:04X}-{:02X}{:02X}-{}",
        le32(b, 0),
        u16::from_le_bytes([b[4], b[5]]),
        u16::from_le_bytes([b[6], b[7]]),
        b[8],
        b[9],
        b[10..16]
            .iter()
            .map(|x| format!("{x:02X}"))
            .collect::<String>()
    )
}

/// CRC-32 (IEEE 802.3, reflected), as GPT uses.
pub(super) fn crc32(data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, slot) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
            *slot = c;
        }
        t
    });
    !data.iter().fold(!0u32, |c, &b| {
        table[((c ^ u32::from(b)) & 0xFF) as usize] ^ (c >> 8)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32_check_value() {
        // The standard check value of CRC-32/ISO-HDLC.
        assert_eq!(crc32(b"123456789"), 0xCBF4_3926);
    }

    #[test]
    fn guids_print_mixed_endian() {
        let b = [
            0x28, 0x73, 0x2A, 0xC1, 0x1F, 0xF8, 0xD2, 0x11, 0xBA, 0x4B, 0x00, 0xA0, 0xC9, 0x3E,
            0xC9, 0x3B,
        ];
        assert_eq!(guid(&b), "C12A7328-F81F-11D2-BA4B-00A0C93EC93B");
    }
}
