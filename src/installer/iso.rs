//! Bare-metal installers: the board's vendor installer ISO (Ubuntu's
//! live-server ISO) remastered with `xorriso`, without root: the boot records
//! (El Torito BIOS and UEFI entries, the hybrid MBR/GPT) are replayed as the
//! stock ISO has them, and only the files given are added or replaced.
//!
//! Also here: the GRUB edit that makes the installer start unattended, and the
//! root payload archive (a tar of a node's planned root files, with modes and
//! owners) that the installer unpacks into the installed system.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::io::{HashingWriter, Sha256Digest};
use crate::plan::{Content, FileKind, PlannedFile};

/// The Debian/Ubuntu package that ships `xorriso` and `osirrox`.
pub const XORRISO_PACKAGE: &str = "xorriso";

/// The GRUB configurations of a live ISO that hold boot menu entries:
/// `grub.cfg` (booted from the medium) and `loopback.cfg` (booted as an ISO
/// file from another GRUB), when present.
pub const GRUB_CONFIGS: [&str; 2] = ["/boot/grub/grub.cfg", "/boot/grub/loopback.cfg"];

/// The menu timeout (seconds) of a remastered installer: long enough to see
/// the menu, short enough that an unattended install starts by itself.
pub const MENU_TIMEOUT: u32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum IsoError {
    #[error(
        "xorriso is not installed (it remasters the installer ISO without root): install the package `{XORRISO_PACKAGE}` (apt-get install {XORRISO_PACKAGE})"
    )]
    XorrisoMissing,
    #[error("{path}: not an ISO 9660 image ({detail})")]
    NotIso { path: PathBuf, detail: String },
    #[error("{path}: {what} failed: {detail}")]
    Tool {
        path: PathBuf,
        what: String,
        detail: String,
    },
    #[error("{path}: {reason}")]
    Layout { path: PathBuf, reason: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> IsoError + '_ {
    move |source| IsoError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Runs xorriso with `args` on `iso` (named in errors); its stdout on success.
fn xorriso(iso: &Path, what: &str, args: &[&std::ffi::OsStr]) -> Result<String, IsoError> {
    let out = Command::new("xorriso")
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => IsoError::XorrisoMissing,
            _ => IsoError::Io {
                path: "xorriso".into(),
                source: e,
            },
        })?;
    if !out.status.success() {
        // xorriso reports on stderr, one `xorriso : FAILURE : ...` line per problem.
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = stderr
            .lines()
            .filter(|l| l.contains("FAILURE") || l.contains("SORRY") || l.contains("FATAL"))
            .collect();
        let detail = if lines.is_empty() {
            stderr.lines().last().unwrap_or("no message").to_string()
        } else {
            lines.join("; ")
        };
        return Err(IsoError::Tool {
            path: iso.to_owned(),
            what: format!("xorriso ({what}, {})", out.status),
            detail,
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Checks that `path` is an ISO 9660 image (its primary volume descriptor
/// magic), so a corrupt or wrong file gets a clear error, not xorriso's
/// attempt to treat it as blank media.
pub fn check_iso9660(path: &Path) -> Result<(), IsoError> {
    let mut f = std::fs::File::open(path).map_err(io_err(path))?;
    let mut magic = [0u8; 6];
    let not_iso = |detail: &str| IsoError::NotIso {
        path: path.to_owned(),
        detail: detail.to_string(),
    };
    f.seek(SeekFrom::Start(16 * 2048)).map_err(io_err(path))?;
    match f.read_exact(&mut magic) {
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            return Err(not_iso("shorter than the volume descriptors at 32 KiB"));
        }
        Err(e) => return Err(io_err(path)(e)),
        Ok(()) => {}
    }
    if &magic[1..6] != b"CD001" || magic[0] != 1 {
        return Err(not_iso(
            "no primary volume descriptor (CD001) at byte 32768; is the download complete?",
        ));
    }
    Ok(())
}

/// The files under `dir` in `iso` (absolute ISO paths).
pub fn list_files(iso: &Path, dir: &str) -> Result<Vec<String>, IsoError> {
    let out = xorriso(
        iso,
        "listing files",
        &[
            "-indev".as_ref(),
            iso.as_os_str(),
            "-find".as_ref(),
            dir.as_ref(),
            "-type".as_ref(),
            "f".as_ref(),
        ],
    )?;
    // -find prints one quoted path per line: '/boot/grub/grub.cfg'.
    Ok(out
        .lines()
        .filter_map(|l| l.trim().strip_prefix('\'')?.strip_suffix('\''))
        .map(|p| p.replace("'\"'\"'", "'"))
        .collect())
}

/// Copies the file `inner` of `iso` to `dest` on the host.
pub fn extract(iso: &Path, inner: &str, dest: &Path) -> Result<(), IsoError> {
    xorriso(
        iso,
        &format!("extracting {inner}"),
        &[
            "-osirrox".as_ref(),
            "on".as_ref(),
            "-indev".as_ref(),
            iso.as_os_str(),
            "-extract".as_ref(),
            inner.as_ref(),
            dest.as_os_str(),
        ],
    )?;
    Ok(())
}

/// Writes `out` (an empty file) as `stock` with each `(host file, ISO path)`
/// of `maps` added or replacing the file there; boot records replayed.
pub fn remaster(stock: &Path, out: &Path, maps: &[(PathBuf, String)]) -> Result<(), IsoError> {
    let mut args: Vec<&std::ffi::OsStr> = vec![
        "-indev".as_ref(),
        stock.as_os_str(),
        "-outdev".as_ref(),
        out.as_os_str(),
        // Keep BIOS and UEFI boot exactly as the stock ISO has them (El
        // Torito catalogue, hybrid MBR, appended EFI partition in the GPT).
        "-boot_image".as_ref(),
        "any".as_ref(),
        "replay".as_ref(),
    ];
    for (host, inner) in maps {
        args.extend(["-map".as_ref(), host.as_os_str(), inner.as_ref()]);
    }
    xorriso(stock, "remastering", &args)?;
    Ok(())
}

/// Makes every `linux` entry of a GRUB configuration start the installer
/// unattended (`autoinstall` on the kernel command line, before the `---`
/// that separates installer from installed-system arguments) and shortens the
/// menu timeout. Returns the new text and how many `linux` lines it has.
pub fn enable_autoinstall(cfg: &str) -> (String, usize) {
    let mut out = String::with_capacity(cfg.len() + 256);
    let mut entries = 0;
    let mut timeout = false;
    for line in cfg.split_inclusive('\n') {
        let body = line.trim_end_matches(['\n', '\r']);
        let ending = &line[body.len()..];
        let indent_len = body.len() - body.trim_start().len();
        let (indent, rest) = body.split_at(indent_len);
        let mut words = rest.split_whitespace();
        match words.next() {
            Some("linux" | "linuxefi" | "linux16") => {
                entries += 1;
                if rest.split_whitespace().any(|w| w == "autoinstall") {
                    out.push_str(line);
                    continue;
                }
                let toks: Vec<&str> = rest.split_whitespace().collect();
                let edited = match toks.iter().position(|t| *t == "---") {
                    Some(i) => {
                        let mut t = toks.clone();
                        t.insert(i, "autoinstall");
                        t.join(" ")
                    }
                    None => format!("{} autoinstall", toks.join(" ")),
                };
                out.push_str(indent);
                out.push_str(&edited);
                out.push_str(ending);
            }
            Some(w)
                if w == "set"
                    && rest
                        .split_whitespace()
                        .nth(1)
                        .is_some_and(|a| a.starts_with("timeout=")) =>
            {
                timeout = true;
                out.push_str(&format!("{indent}set timeout={MENU_TIMEOUT}{ending}"));
            }
            _ => out.push_str(line),
        }
    }
    if !timeout && entries > 0 {
        out.insert_str(0, &format!("set timeout={MENU_TIMEOUT}\n"));
    }
    (out, entries)
}

/// `md5sum.txt` (casper's media check list) without the lines of files the
/// remaster replaced, so the check does not report them as corrupt.
pub fn drop_md5_lines(md5sum: &str, replaced: &[&str]) -> String {
    md5sum
        .lines()
        .filter(|l| {
            let name = l.split_whitespace().nth(1).unwrap_or("");
            let name = name.strip_prefix('.').unwrap_or(name);
            !replaced.contains(&name)
        })
        .map(|l| format!("{l}\n"))
        .collect()
}

/// Writes the planned files of the root partition as a tar archive (paths
/// relative to `/`, with each file's mode, owner and `mtime`) to `out`;
/// returns the archive's sha256. Other partitions are an error: the
/// installer owns the disk layout, so only the root can be carried over.
pub fn write_payload(
    files: &[&PlannedFile],
    out: &std::fs::File,
    out_path: &Path,
    mtime: u64,
) -> Result<Sha256Digest, IsoError> {
    let hashing = HashingWriter::new(std::io::BufWriter::with_capacity(1 << 20, out));
    let mut tar = tar::Builder::new(hashing);
    let write = |e: std::io::Error| io_err(out_path)(e);
    for f in files {
        if f.partition != "root" {
            return Err(IsoError::Layout {
                path: out_path.to_owned(),
                reason: format!(
                    "{} goes to the {} partition; an installer carries root files only",
                    f.path, f.partition
                ),
            });
        }
        let name = f.path.trim_start_matches('/');
        let mut h = tar::Header::new_gnu();
        h.set_mode(f.owner.mode & 0o7777);
        h.set_uid(f.owner.uid.into());
        h.set_gid(f.owner.gid.into());
        h.set_mtime(mtime);
        match &f.kind {
            FileKind::Symlink(target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                tar.append_link(&mut h, name, target).map_err(write)?;
            }
            FileKind::Regular(Content::Bytes(b)) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(b.len() as u64);
                tar.append_data(&mut h, name, b.as_slice()).map_err(write)?;
            }
            FileKind::Regular(Content::HostFile(p)) => {
                let src = std::fs::File::open(p).map_err(io_err(p))?;
                let len = src.metadata().map_err(io_err(p))?.len();
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(len);
                tar.append_data(&mut h, name, src.take(len))
                    .map_err(write)?;
            }
        }
    }
    let hashing = tar.into_inner().map_err(write)?;
    let (mut inner, digest) = hashing.finish();
    inner.flush().map_err(write)?;
    Ok(digest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grub_entries_get_autoinstall() {
        let cfg = "set timeout=30\nmenuentry \"Try or Install Ubuntu Server\" {\n\tset gfxpayload=keep\n\tlinux\t/casper/vmlinuz  ---\n\tinitrd\t/casper/initrd\n}\nmenuentry x {\n  linux /casper/vmlinuz quiet\n}\n";
        let (out, n) = enable_autoinstall(cfg);
        assert_eq!(n, 2);
        assert!(
            out.contains("\tlinux /casper/vmlinuz autoinstall ---\n"),
            "{out}"
        );
        assert!(
            out.contains("  linux /casper/vmlinuz quiet autoinstall\n"),
            "{out}"
        );
        assert!(out.starts_with(&format!("set timeout={MENU_TIMEOUT}\n")));
        // Idempotent.
        assert_eq!(enable_autoinstall(&out).0, out);
        let (_, n) = enable_autoinstall("menuentry x {\n  chainloader +1\n}\n");
        assert_eq!(n, 0);
    }

    #[test]
    fn md5_lines_dropped() {
        let s = "aa  ./boot/grub/grub.cfg\nbb  ./casper/vmlinuz\n";
        assert_eq!(
            drop_md5_lines(s, &["/boot/grub/grub.cfg"]),
            "bb  ./casper/vmlinuz\n"
        );
    }
}
