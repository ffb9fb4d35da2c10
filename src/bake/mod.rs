//! Baking: check a base image against its board, then apply a node's plan to
//! a working copy of it, partition by partition (FAT through our writer, ext4
//! through e2fsprogs). Knows no profiles: it sees a plan and a manifest.

mod base;
pub mod shrink;

use std::fs::File;
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};

pub use base::check_base;

use crate::config::manifest::{FsKind, Manifest};
use crate::fs::ext4::{self, Contents, Op};
use crate::fs::fat::FatVolume;
use crate::image::{PartitionTable, Region};
use crate::plan::{Content, FileKind, FileRecord, NodePlan, PlannedFile};

/// Applies `plan` to `image` (a copy of the base at `image_path`, whose table
/// is `table`). Returns the records of stock files it edited besides the plan's
/// (the kernel command line).
pub fn apply(
    plan: &NodePlan,
    manifest: &Manifest,
    table: &PartitionTable,
    image_path: &Path,
    image: &File,
    build_time: u64,
) -> Result<Vec<FileRecord>> {
    apply_roles(
        plan,
        manifest,
        table,
        image_path,
        image,
        build_time,
        &|_| true,
    )
}

/// [`apply`] to the partitions whose role `roles` accepts only.
pub fn apply_roles(
    plan: &NodePlan,
    manifest: &Manifest,
    table: &PartitionTable,
    image_path: &Path,
    image: &File,
    build_time: u64,
    roles: &dyn Fn(&str) -> bool,
) -> Result<Vec<FileRecord>> {
    let mut edited = Vec::new();
    for (role, spec) in manifest.partitions.iter().filter(|(r, _)| roles(r)) {
        let part = table.get(image_path, spec.index)?;
        let files: Vec<&PlannedFile> = plan.files.iter().filter(|f| &f.partition == role).collect();
        let cmdline = manifest
            .kernel_cmdline
            .as_ref()
            .filter(|k| &k.partition == role);
        let removes = plan.removals.iter().any(|r| &r.partition == role);
        if files.is_empty() && cmdline.is_none() && !removes {
            continue;
        }
        let what = format!(
            "partition {} ({role}) of {}",
            spec.index,
            image_path.display()
        );
        match spec.fs {
            FsKind::Vfat => {
                let mut vol = FatVolume::open(Region::new(image, part))
                    .with_context(|| format!("opening {what}"))?;
                vol.set_timestamp(build_time);
                for f in files {
                    let FileKind::Regular(Content::Bytes(bytes)) = &f.kind else {
                        bail!("{what} is FAT: it can hold only regular files");
                    };
                    vol.write_file(&f.path, bytes)
                        .with_context(|| format!("writing {} to {what}", f.path))?;
                    tracing::debug!("wrote {} ({} bytes) to {role}", f.path, bytes.len());
                }
                if let Some(k) = cmdline {
                    let old = vol
                        .read_file(&k.path)?
                        .ok_or_else(|| anyhow!("{} not found on {what}", k.path))?;
                    let new = append_cmdline(&old, &k.append);
                    if new != old {
                        vol.write_file(&k.path, &new)
                            .with_context(|| format!("writing {} to {what}", k.path))?;
                        edited.push(FileRecord {
                            partition: role.clone(),
                            path: k.path.clone(),
                            mode: 0o644,
                            size: new.len() as u64,
                        });
                    }
                }
                vol.flush()
                    .with_context(|| format!("writing the FAT of {what}"))?;
            }
            FsKind::Ext4 => {
                let mut ops = Vec::new();
                for r in plan.removals.iter().filter(|r| &r.partition == role) {
                    let names = ext4::list_dir(Region::new(image, part), &r.dir)
                        .with_context(|| format!("reading {} on {what}", r.dir))?;
                    for name in names.iter().filter(|n| n.starts_with(&r.prefix)) {
                        let path = format!("{}/{name}", r.dir.trim_end_matches('/'));
                        if !files.iter().any(|f| f.path == path) {
                            tracing::debug!("removing the stock {path}");
                            ops.push(Op::Remove { path });
                        }
                    }
                }
                ops.extend(files.into_iter().map(ext4_op));
                ext4::apply(image_path, image, part, &ops, build_time)
                    .with_context(|| format!("writing into {what}"))?;
            }
        }
    }
    Ok(edited)
}

fn ext4_op(f: &PlannedFile) -> Op {
    let owner = ext4::Owner {
        mode: f.owner.mode,
        uid: f.owner.uid,
        gid: f.owner.gid,
    };
    match &f.kind {
        FileKind::Symlink(target) => Op::Symlink {
            path: f.path.clone(),
            target: target.clone(),
            uid: f.owner.uid,
            gid: f.owner.gid,
        },
        FileKind::Regular(content) => Op::Write {
            path: f.path.clone(),
            contents: match content {
                Content::Bytes(b) => Contents::Bytes(b.clone()),
                Content::HostFile(p) => Contents::File(p.clone()),
            },
            owner,
        },
    }
}

/// Appends the arguments missing from the first line of a kernel command line;
/// the file stays one line (the firmware ignores anything after it).
pub fn append_cmdline(old: &[u8], args: &[String]) -> Vec<u8> {
    let text = String::from_utf8_lossy(old);
    let first = text.lines().next().unwrap_or("").trim();
    let mut words: Vec<String> = first.split_whitespace().map(str::to_string).collect();
    for a in args {
        if !words.iter().any(|w| w == a) {
            words.push(a.clone());
        }
    }
    let mut line = words.join(" ");
    if line == first && text.ends_with('\n') && text.lines().count() == 1 {
        return old.to_vec();
    }
    line.push('\n');
    line.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_append_is_idempotent() {
        let args = vec![
            "cgroup_memory=1".to_string(),
            "cgroup_enable=memory".to_string(),
        ];
        let once = append_cmdline(b"console=tty1 root=LABEL=writable rootwait\n", &args);
        assert_eq!(
            once,
            b"console=tty1 root=LABEL=writable rootwait cgroup_memory=1 cgroup_enable=memory\n"
        );
        assert_eq!(append_cmdline(&once, &args), once);
        let two_lines = append_cmdline(b"a b\nignored\n", &args);
        assert_eq!(two_lines, b"a b cgroup_memory=1 cgroup_enable=memory\n");
    }
}
