//! Checking and shrinking an ext4 file system inside an image file through
//! e2fsprogs' own `e2fsck` and `resize2fs`, on `image?offset=N` as `debugfs`
//! is used: nothing is mounted, and no block is moved by this program.
//!
//! `resize2fs` refuses an unmounted file system whose last check is older
//! than its last mount ("Please run 'e2fsck -f' first"), which every stock
//! image that was mounted while it was built is; [`record_check`] is that
//! check, run on the working copy only.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::image::{ImageError, Region};

#[derive(Debug, thiserror::Error)]
pub enum ResizeError {
    #[error(
        "cannot run {tool} (from e2fsprogs; install it with `apt-get install e2fsprogs`): {source}"
    )]
    NoTool {
        tool: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{tool} on {spec} failed ({status}): {output}")]
    Failed {
        tool: &'static str,
        spec: String,
        status: String,
        output: String,
    },
    #[error("resize2fs -P on {spec} printed no minimum size: {output}")]
    NoMinimum { spec: String, output: String },
    #[error(transparent)]
    Io(#[from] ImageError),
}

type Result<T> = std::result::Result<T, ResizeError>;

/// `image?offset=N`, the form libext2fs' tools take for a partition.
fn spec(image: &Path, offset: u64) -> String {
    format!("{}?offset={offset}", image.display())
}

/// e2fsprogs' tools live in /usr/sbin, which a user's PATH may lack.
fn program(tool: &str) -> PathBuf {
    let in_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false);
    if !in_path {
        for dir in ["/usr/sbin", "/sbin"] {
            let p = Path::new(dir).join(tool);
            if p.is_file() {
                return p;
            }
        }
    }
    PathBuf::from(tool)
}

struct Run {
    code: Option<i32>,
    status: String,
    output: String,
}

fn run(tool: &'static str, args: &[&str], now: Option<u64>) -> Result<Run> {
    let mut cmd = Command::new(program(tool));
    cmd.args(args).stdin(Stdio::null());
    if let Some(t) = now {
        // Every time e2fsprogs writes (last check, last write) is the build
        // time, so identical inputs still give identical images.
        cmd.env("E2FSPROGS_FAKE_TIME", t.to_string())
            .env("E2FSCK_TIME", t.to_string());
    }
    let started = std::time::Instant::now();
    let out = cmd
        .output()
        .map_err(|source| ResizeError::NoTool { tool, source })?;
    tracing::debug!(
        "{tool} {} took {:.2} s ({})",
        args.join(" "),
        started.elapsed().as_secs_f64(),
        out.status
    );
    let mut output = String::from_utf8_lossy(&out.stdout).into_owned();
    output.push_str(&String::from_utf8_lossy(&out.stderr));
    Ok(Run {
        code: out.status.code(),
        status: out.status.to_string(),
        output: output.trim().to_string(),
    })
}

/// Runs `tool` on the file system `spec` and requires exit status 0.
fn run_ok(tool: &'static str, spec: &str, args: &[&str], now: Option<u64>) -> Result<Run> {
    let r = run(tool, args, now)?;
    if r.code != Some(0) {
        return Err(ResizeError::Failed {
            tool,
            spec: spec.to_string(),
            status: r.status,
            output: r.output,
        });
    }
    Ok(r)
}

/// What a read-only `e2fsck -fn` found.
#[derive(Debug)]
pub struct Check {
    pub clean: bool,
    pub output: String,
}

/// `e2fsck -fn`: a full check that changes nothing.
pub fn check(image: &Path, offset: u64) -> Result<Check> {
    let s = spec(image, offset);
    let r = run("e2fsck", &["-fn", &s], None)?;
    match r.code {
        Some(0) => Ok(Check {
            clean: true,
            output: r.output,
        }),
        // 4: errors left uncorrected (it may not correct anything with -n).
        Some(4) => Ok(Check {
            clean: false,
            output: r.output,
        }),
        _ => Err(ResizeError::Failed {
            tool: "e2fsck",
            spec: s,
            status: r.status,
            output: r.output,
        }),
    }
}

/// `e2fsck -fp` on a file system [`check`] found clean: records the check
/// (at `now`) so that `resize2fs` accepts it. Anything it had to fix is an
/// error, since a clean file system leaves it nothing to fix.
pub fn record_check(image: &Path, offset: u64, now: u64) -> Result<()> {
    let s = spec(image, offset);
    run_ok("e2fsck", &s, &["-fp", &s], Some(now))?;
    Ok(())
}

/// `resize2fs -P`: the smallest size (in file-system blocks) it could shrink to.
pub fn minimum_blocks(image: &Path, offset: u64) -> Result<u64> {
    let s = spec(image, offset);
    let r = run_ok("resize2fs", &s, &["-P", &s], None)?;
    r.output
        .lines()
        .find_map(|l| l.split_once("minimum size of the filesystem:"))
        .and_then(|(_, n)| n.trim().parse().ok())
        .ok_or(ResizeError::NoMinimum {
            spec: s,
            output: r.output,
        })
}

/// `resize2fs` to `bytes` (a multiple of 1 KiB and of the block size);
/// `force` (-f) lets it go below its own estimate of the minimum.
pub fn resize(image: &Path, offset: u64, bytes: u64, now: u64, force: bool) -> Result<()> {
    let s = spec(image, offset);
    let size = format!("{}K", bytes / 1024);
    let mut args = vec![s.as_str(), size.as_str()];
    if force {
        args.insert(0, "-f");
    }
    run_ok("resize2fs", &s, &args, Some(now))?;
    Ok(())
}

/// The later of the superblock's last mount and last write times (`s_mtime`,
/// `s_wtime`, with their high bytes). A check recorded before either would
/// not satisfy resize2fs, and e2fsck "repairs" times in its future.
pub fn latest_time(region: &Region) -> Result<u64> {
    let mut sb = [0u8; 1024];
    region.read_at(1024, &mut sb)?;
    let at = |lo: usize, hi: usize| {
        u64::from(u32::from_le_bytes(sb[lo..lo + 4].try_into().unwrap()))
            | (u64::from(sb[hi]) << 32)
    };
    // s_mtime 0x2C (high byte 0x275), s_wtime 0x30 (high byte 0x274).
    Ok(at(0x2C, 0x275).max(at(0x30, 0x274)))
}
