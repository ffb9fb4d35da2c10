//! qcow2 to raw: the Ubuntu cloud image for NUCs is qcow2 with compressed
//! clusters. Reads version 2 and 3 images without backing files, encryption
//! or external data; compressed clusters are raw deflate (zlib type) or zstd.
//! Written here because the qcow crate pins an old zstd and is unmaintained;
//! tested against `qemu-img convert`.

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;

use crate::io::SparseWriter;

#[derive(Debug, thiserror::Error)]
pub enum Qcow2Error {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("corrupt qcow2 image: {0}")]
    Corrupt(String),
    #[error("unsupported qcow2 image: {0}")]
    Unsupported(String),
}

type Result<T> = std::result::Result<T, Qcow2Error>;

pub const MAGIC: &[u8; 4] = b"QFI\xfb";

struct Header {
    cluster_bits: u32,
    size: u64,
    l1_size: u64,
    l1_offset: u64,
    zstd: bool,
}

fn be64(b: &[u8], o: usize) -> u64 {
    u64::from_be_bytes(b[o..o + 8].try_into().unwrap())
}
fn be32(b: &[u8], o: usize) -> u32 {
    u32::from_be_bytes(b[o..o + 4].try_into().unwrap())
}

fn header(file: &File, file_len: u64) -> Result<Header> {
    let mut h = [0u8; 112];
    let n = file.read_at(&mut h, 0)?;
    if n < 72 || &h[..4] != MAGIC {
        return Err(Qcow2Error::Corrupt("no qcow2 header".into()));
    }
    let version = be32(&h, 4);
    if version != 2 && version != 3 {
        return Err(Qcow2Error::Unsupported(format!("version {version}")));
    }
    if be64(&h, 8) != 0 {
        return Err(Qcow2Error::Unsupported("it has a backing file".into()));
    }
    let cluster_bits = be32(&h, 20);
    if !(9..=21).contains(&cluster_bits) {
        return Err(Qcow2Error::Corrupt(format!("cluster_bits {cluster_bits}")));
    }
    if be32(&h, 32) != 0 {
        return Err(Qcow2Error::Unsupported("it is encrypted".into()));
    }
    let mut zstd = false;
    if version == 3 {
        let incompatible = be64(&h, 72);
        // bit 0 dirty, 1 corrupt, 2 external data file, 3 compression type, 4 extended L2
        if incompatible & 0b10 != 0 {
            return Err(Qcow2Error::Corrupt("the image is marked corrupt".into()));
        }
        if incompatible & !0b1001 != 0 {
            return Err(Qcow2Error::Unsupported(format!(
                "incompatible features {incompatible:#x}"
            )));
        }
        if incompatible & 0b1 != 0 {
            return Err(Qcow2Error::Unsupported(
                "the image is dirty (refcounts need repair: run `qemu-img check -r all`)".into(),
            ));
        }
        let header_len = be32(&h, 100);
        if incompatible & 0b1000 != 0 {
            if header_len <= 104 || n < 105 {
                return Err(Qcow2Error::Corrupt(
                    "compression type bit without the field".into(),
                ));
            }
            zstd = match h[104] {
                0 => false,
                1 => true,
                t => return Err(Qcow2Error::Unsupported(format!("compression type {t}"))),
            };
        }
    }
    let size = be64(&h, 24);
    let l1_size = be32(&h, 36) as u64;
    let l1_offset = be64(&h, 40);
    let cluster = 1u64 << cluster_bits;
    let l2_entries = cluster / 8;
    if l1_size * l2_entries * cluster < size
        || l1_offset
            .checked_add(l1_size * 8)
            .is_none_or(|e| e > file_len)
    {
        return Err(Qcow2Error::Corrupt(
            "the L1 table does not cover the disk or lies outside the file".into(),
        ));
    }
    Ok(Header {
        cluster_bits,
        size,
        l1_size,
        l1_offset,
        zstd,
    })
}

/// Virtual disk size of a qcow2 file.
pub fn virtual_size(file: &File) -> Result<u64> {
    Ok(header(file, file.metadata()?.len())?.size)
}

/// Converts `file` to raw into `out`; returns the disk size. `progress` gets
/// the number of guest bytes done.
pub fn convert(file: &File, out: &mut SparseWriter, mut progress: impl FnMut(u64)) -> Result<u64> {
    use std::io::Write;
    let file_len = file.metadata()?.len();
    let h = header(file, file_len)?;
    let cluster = 1u64 << h.cluster_bits;
    let l2_entries = cluster / 8;
    let mut l1 = vec![0u8; (h.l1_size * 8) as usize];
    file.read_exact_at(&mut l1, h.l1_offset)?;
    let mut l2 = vec![0u8; cluster as usize];
    let mut data = vec![0u8; cluster as usize];
    let mut compressed = Vec::new();
    let mut guest = 0u64;
    let offset_mask = 0x00ff_ffff_ffff_fe00u64;
    'outer: for i in 0..h.l1_size as usize {
        let l1e = be64(&l1, i * 8) & offset_mask;
        if l1e == 0 {
            let span = (l2_entries * cluster).min(h.size - guest);
            out.skip_zeros(span)?;
            guest += span;
            progress(guest);
            if guest >= h.size {
                break;
            }
            continue;
        }
        if !l1e.is_multiple_of(cluster) || l1e + cluster > file_len {
            return Err(Qcow2Error::Corrupt(format!(
                "L2 table offset {l1e:#x} is invalid"
            )));
        }
        file.read_exact_at(&mut l2, l1e)?;
        for j in 0..l2_entries as usize {
            if guest >= h.size {
                break 'outer;
            }
            let len = cluster.min(h.size - guest);
            let e = be64(&l2, j * 8);
            let is_compressed = e & (1 << 62) != 0;
            if is_compressed {
                let x = 62 - (h.cluster_bits - 8);
                let host = e & ((1u64 << x) - 1);
                let sectors = ((e >> x) & ((1u64 << (h.cluster_bits - 8)) - 1)) + 1;
                let clen = (sectors * 512 - (host & 511)).min(file_len.saturating_sub(host));
                if host >= file_len || clen == 0 {
                    return Err(Qcow2Error::Corrupt(format!(
                        "compressed cluster at {host:#x} is outside the file"
                    )));
                }
                compressed.resize(clen as usize, 0);
                file.read_exact_at(&mut compressed, host)?;
                inflate(&compressed, &mut data, h.zstd).map_err(|e| {
                    Qcow2Error::Corrupt(format!("compressed cluster at guest offset {guest}: {e}"))
                })?;
                out.write_all(&data[..len as usize])?;
            } else {
                let host = e & offset_mask;
                let zero_flag = e & 1 != 0;
                if host == 0 || zero_flag {
                    out.skip_zeros(len)?;
                } else {
                    if !host.is_multiple_of(cluster) || host + len > file_len {
                        return Err(Qcow2Error::Corrupt(format!(
                            "data cluster offset {host:#x} is invalid"
                        )));
                    }
                    file.read_exact_at(&mut data[..len as usize], host)?;
                    out.write_all(&data[..len as usize])?;
                }
            }
            guest += len;
            if guest % (64 << 20) < cluster {
                progress(guest);
            }
        }
    }
    if guest < h.size {
        out.skip_zeros(h.size - guest)?;
    }
    progress(h.size);
    Ok(h.size)
}

/// Decompresses one cluster; it must fill `out` exactly.
fn inflate(src: &[u8], out: &mut [u8], zstd: bool) -> io::Result<()> {
    if zstd {
        let mut d = zstd::stream::read::Decoder::new(src)?.single_frame();
        d.read_exact(out)
    } else {
        // Raw deflate; the stream may end inside the last sector's padding.
        let mut d = flate2::read::DeflateDecoder::new(src);
        d.read_exact(out)
    }
}
