//! MBR reading: the four primary entries of the boot sector. Extended and
//! logical partitions are not followed (no stock image uses them).

use std::fs::File;
use std::os::unix::fs::FileExt;

use super::{RawPartition, TableError};

pub(super) fn read(file: &File) -> Result<Vec<RawPartition>, TableError> {
    let mut s = [0u8; 512];
    file.read_exact_at(&mut s, 0)?;
    if s[510..512] != [0x55, 0xAA] {
        return Err(TableError::Bad("no boot signature".into()));
    }
    let mut out = Vec::new();
    for i in 0..4 {
        let e = &s[446 + i * 16..446 + (i + 1) * 16];
        let sys = e[4];
        let start = u32::from_le_bytes([e[8], e[9], e[10], e[11]]);
        let sectors = u32::from_le_bytes([e[12], e[13], e[14], e[15]]);
        if sys == 0 {
            continue;
        }
        if e[0] & 0x7F != 0 {
            return Err(TableError::Bad(format!(
                "entry {} has an invalid boot flag {:#04x}",
                i + 1,
                e[0]
            )));
        }
        if start == 0 || sectors == 0 {
            return Err(TableError::Bad(format!(
                "partition {} starts at sector {start} with {sectors} sectors",
                i + 1
            )));
        }
        out.push(RawPartition {
            index: i as u32 + 1,
            first_lba: u64::from(start),
            sectors: u64::from(sectors),
            type_id: format!("0x{sys:02X}"),
            name: String::new(),
        });
    }
    Ok(out)
}
