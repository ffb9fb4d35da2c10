//! The one place that walks the pipeline for a node:
//! profile -> render -> base image checks -> copy -> file-system edits -> commit.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use serde::Serialize;

use crate::fs::ext4::{self, Contents, Op, Owner};
use crate::fs::fat::FatVolume;
use crate::image::{FsProbe, PartitionTable, Region};
use crate::manifest::{FsKind, Manifest};
use crate::output::{Compression, PendingOutput};
use crate::profile::{Cluster, Install, Node, ProfileSet, Role};
use crate::render::{self, RenderedFile};
use crate::secrets::{ClusterSecrets, NodeSecrets, Secrets};

/// Default build time (2024-04-25T00:00:00Z, the Ubuntu 24.04 release): a fixed
/// value so that identical inputs give identical images.
pub const DEFAULT_BUILD_TIME: u64 = 1_714_003_200;
pub const PROVENANCE_FILE: &str = "imgbuild.json";

/// Build time for file stamps: `SOURCE_DATE_EPOCH` when set, else the fixed default.
pub fn build_time() -> Result<u64> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) => v
            .trim()
            .parse()
            .map_err(|_| anyhow!("SOURCE_DATE_EPOCH={v:?} is not a number of seconds since 1970")),
        Err(_) => Ok(DEFAULT_BUILD_TIME),
    }
}

/// A target parsed from an output file name `<node>.<board>.img[.xz|.zst]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub node: String,
    pub board: String,
    pub path: PathBuf,
    pub compression: Compression,
}

impl Target {
    pub fn parse(path: &Path) -> Result<Self> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let usage = || {
            anyhow!(
                "{}: the target must be named <node>.<board>.img (or .img.xz, .img.zst), like node02.rk1.img",
                path.display()
            )
        };
        let (stem, compression) = Compression::from_name(&name).ok_or_else(usage)?;
        match stem.rsplit_once('.') {
            Some((node, board)) if !node.is_empty() && !board.is_empty() => Ok(Target {
                node: node.to_string(),
                board: board.to_string(),
                path: path.to_owned(),
                compression,
            }),
            _ => Err(usage()),
        }
    }
}

/// Everything a bake reads, resolved at the edge.
pub struct BakeInputs<'a> {
    pub profiles: &'a ProfileSet,
    pub manifests: &'a BTreeMap<String, Manifest>,
    pub overlays: &'a Path,
    pub build_time: u64,
    pub secrets: &'a Secrets,
    /// k3s air-gap assets by architecture (empty unless `k3s.install: airgap`).
    pub k3s_assets: &'a BTreeMap<String, crate::k3s::Assets>,
}

#[derive(Debug, Serialize)]
pub struct BakeReport {
    pub output: PathBuf,
    pub sha256: String,
    pub compression: Compression,
    pub node: String,
    pub board: String,
    pub instance_id: String,
    pub copy: String,
    pub files: Vec<PlannedFile>,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct PlannedFile {
    pub partition: String,
    pub path: String,
    pub mode: u32,
    pub size: u64,
}

/// Checks a target against the profiles and finds its node.
pub fn resolve_target<'p>(profiles: &'p ProfileSet, target: &Target) -> Result<&'p Node> {
    let node = profiles.node(&target.node).ok_or_else(|| {
        let names: Vec<&str> = profiles.nodes.iter().map(|n| n.name.as_str()).collect();
        anyhow!(
            "{}: no profile for node {:?} in {} (nodes: {})",
            target.path.display(),
            target.node,
            profiles.dir.display(),
            names.join(", ")
        )
    })?;
    if node.board != target.board {
        bail!(
            "{}: node {} is a {} board in {}, not {}; name the target {}.{}.img",
            target.path.display(),
            node.name,
            node.board,
            node.file.display(),
            target.board,
            node.name,
            node.board
        );
    }
    Ok(node)
}

/// The template context for a node.
pub fn context(
    profiles: &ProfileSet,
    node: &Node,
    manifest: &Manifest,
    build_time: u64,
    cluster_secrets: &ClusterSecrets,
    node_secrets: &NodeSecrets,
) -> Result<serde_json::Value> {
    let cluster: &Cluster = &profiles.cluster;
    let (major, minor, patch) =
        crate::k3s::parse_version(&cluster.k3s.version).ok_or_else(|| {
            anyhow!(
                "cluster.k3s.version {:?} is not like v1.32.5+k3s1",
                cluster.k3s.version
            )
        })?;
    let has_agents = profiles.nodes.iter().any(|n| n.k3s.role == Role::Agent);
    let mut tls_san = vec![cluster.server.clone()];
    for name in [
        Some(node.hostname.clone()),
        node.fqdn.clone(),
        node.network.address.map(|a| a.addr.to_string()),
        node.k3s.node_ip.map(|i| i.to_string()),
    ]
    .into_iter()
    .flatten()
    {
        if !tls_san.contains(&name) {
            tls_san.push(name);
        }
    }
    let tls: serde_json::Map<String, serde_json::Value> = cluster_secrets
        .tls
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::Value::String(v.clone())))
        .collect();
    let install = match cluster.k3s.install {
        Install::Airgap => "airgap",
        Install::Online => "online",
        Install::None => "none",
    };
    Ok(serde_json::json!({
        "cluster": cluster,
        "node": node,
        "board": {
            "name": manifest.board,
            "arch": manifest.arch,
            "description": manifest.description,
        },
        "imgbuild": { "version": env!("CARGO_PKG_VERSION") },
        "build": { "time": build_time },
        "is_server": node.k3s.role == Role::Server,
        "k3s": {
            "version": cluster.k3s.version,
            "major": major,
            "minor": minor,
            "patch": patch,
            "install": install,
            "server_url": format!("https://{}:6443", bracket_ipv6(&cluster.server)),
            "tls_san": tls_san,
            "has_agents": has_agents,
            "unit": if node.k3s.role == Role::Server { "k3s" } else { "k3s-agent" },
            "exec": if node.k3s.role == Role::Server { "server" } else { "agent" },
        },
        "secrets": {
            "server_token": cluster_secrets.server_token(),
            "agent_token": cluster_secrets.agent_token(),
            "ca_hash": cluster_secrets.ca_hash,
            "tls": tls,
            "node_password": node_secrets.node_password,
            "ssh_private": node_secrets.ssh_private,
            "ssh_public": node_secrets.ssh_public,
        },
    }))
}

fn bracket_ipv6(host: &str) -> String {
    if host.parse::<std::net::Ipv6Addr>().is_ok() {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

/// Renders a node's files (no image needed).
pub fn render_node(inputs: &BakeInputs, node: &Node) -> Result<(Vec<RenderedFile>, String)> {
    let manifest = inputs
        .manifests
        .get(&node.board)
        .ok_or_else(|| anyhow!("no firmware manifest for board {:?}", node.board))?;
    let cluster_secrets = inputs.secrets.cluster(inputs.build_time)?;
    let node_secrets = inputs.secrets.node(&node.name, &node.hostname)?;
    let ctx = context(
        inputs.profiles,
        node,
        manifest,
        inputs.build_time,
        &cluster_secrets,
        &node_secrets,
    )?;
    let role = match node.k3s.role {
        Role::Server => "server",
        Role::Agent => "agent",
    };
    let install = ctx["k3s"]["install"].as_str().unwrap_or("none").to_string();
    let features = render::features_for(
        &node.board,
        role,
        node.k3s.cluster_init,
        &install,
        node.nvidia,
        node.swap.enabled(),
    );
    let identity = format!(
        "{}:{}:{}",
        manifest.board,
        manifest
            .source
            .sha256
            .as_deref()
            .unwrap_or(&manifest.source.url),
        crate::profile::profile_digest(&inputs.profiles.cluster, node)
    );
    let (files, iid) = render::render(inputs.overlays, &features, &ctx, &node.name, &identity)?;
    Ok((files, iid))
}

/// A file placed in a concrete partition.
struct Placed<'r> {
    role: String,
    path: String,
    file: &'r RenderedFile,
}

fn place<'r>(manifest: &Manifest, files: &'r [RenderedFile]) -> Result<Vec<Placed<'r>>> {
    let mut out = Vec::new();
    for f in files {
        let (role, path) = if f.target == render::SEED_TARGET {
            let dir = manifest.seed.dir.trim_end_matches('/');
            (manifest.seed.partition.clone(), format!("{dir}{}", f.path))
        } else {
            (f.target.clone(), f.path.clone())
        };
        if f.symlink.is_some()
            && manifest
                .partitions
                .get(&role)
                .is_some_and(|p| p.fs == FsKind::Vfat)
        {
            bail!(
                "{}: FAT partitions cannot hold symlinks",
                f.source.display()
            );
        }
        if !manifest.partitions.contains_key(&role) {
            bail!(
                "{}: targets partition {:?}, which board {} does not have (it has: seed, {})",
                f.source.display(),
                f.target,
                manifest.board,
                manifest
                    .partitions
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        out.push(Placed {
            role,
            path,
            file: f,
        });
    }
    Ok(out)
}

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
        let found = crate::image::probe(&Region::new(&file, part))?;
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
    part: &crate::image::Partition,
    manifest: &Manifest,
) -> Result<()> {
    let fs = ext4::open_reader(Region::new(file, part))
        .with_context(|| format!("{}: reading the root file system", base.display()))?;
    let text = fs
        .read_to_string("/etc/os-release")
        .or_else(|_| fs.read_to_string("/usr/lib/os-release"))
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
    if let Ok(elf) = fs.read("/usr/bin/dash") {
        let machine = (elf.len() >= 20 && elf[..4] == *b"\x7fELF")
            .then(|| u16::from_le_bytes([elf[18], elf[19]]));
        let arch = match machine {
            Some(183) => "arm64",
            Some(62) => "amd64",
            Some(40) => "armhf",
            _ => "unknown",
        };
        if arch != manifest.arch {
            bail!(
                "{}: the root file system's programs are {arch}, but board {} is {}",
                base.display(),
                manifest.board,
                manifest.arch
            );
        }
    }
    Ok(())
}

/// Bakes one node into `target.path`.
pub fn bake(inputs: &BakeInputs, target: &Target, base: &Path) -> Result<BakeReport> {
    let node = resolve_target(inputs.profiles, target)?;
    let manifest = inputs
        .manifests
        .get(&node.board)
        .ok_or_else(|| anyhow!("no firmware manifest for board {:?}", node.board))?;
    if same_file(base, &target.path) {
        bail!(
            "{}: the output would overwrite the base image",
            target.path.display()
        );
    }
    let (files, instance_id) = render_node(inputs, node)?;
    let placed = place(manifest, &files)?;
    let table = check_base(base, manifest)?;
    let mut planned: Vec<PlannedFile> = placed
        .iter()
        .map(|p| PlannedFile {
            partition: p.role.clone(),
            path: p.path.clone(),
            mode: p.file.mode,
            size: p.file.contents.len() as u64,
        })
        .collect();

    let provenance = serde_json::json!({
        "imgbuild": env!("CARGO_PKG_VERSION"),
        "cluster": inputs.profiles.cluster.name,
        "node": node.name,
        "board": node.board,
        "profile_digest": crate::profile::profile_digest(&inputs.profiles.cluster, node),
        "instance_id": instance_id,
        "build_time": inputs.build_time,
        "base_sha256": manifest.source.sha256,
        "files": planned,
    });
    let provenance = serde_json::to_vec_pretty(&provenance)?;
    let seed_dir = manifest.seed.dir.trim_end_matches('/');
    let prov_path = format!("{seed_dir}/{PROVENANCE_FILE}");
    planned.push(PlannedFile {
        partition: manifest.seed.partition.clone(),
        path: prov_path.clone(),
        mode: 0o644,
        size: provenance.len() as u64,
    });

    tracing::info!(node = %node.name, output = %target.path.display(), "copying base {}", base.display());
    let pending = PendingOutput::from_base(base, &target.path)?;
    let image = pending.open()?;
    let assets =
        match inputs.profiles.cluster.k3s.install {
            Install::Airgap => Some(inputs.k3s_assets.get(&manifest.arch).ok_or_else(|| {
                anyhow!("no k3s air-gap assets were fetched for {}", manifest.arch)
            })?),
            _ => None,
        };
    for (role, spec) in &manifest.partitions {
        let part = table.get(base, spec.index)?;
        let mut ops: Vec<Op> = placed
            .iter()
            .filter(|p| &p.role == role)
            .map(|p| match &p.file.symlink {
                Some(target) => Op::Symlink {
                    path: p.path.clone(),
                    target: target.clone(),
                    uid: p.file.uid,
                    gid: p.file.gid,
                },
                None => Op::Write {
                    path: p.path.clone(),
                    contents: Contents::Bytes(p.file.contents.clone()),
                    owner: Owner {
                        mode: p.file.mode,
                        uid: p.file.uid,
                        gid: p.file.gid,
                    },
                },
            })
            .collect();
        if *role == manifest.seed.partition {
            ops.push(Op::Write {
                path: prov_path.clone(),
                contents: Contents::Bytes(provenance.clone()),
                owner: Owner {
                    mode: 0o644,
                    uid: 0,
                    gid: 0,
                },
            });
        }
        if role == "root"
            && let Some(a) = assets
        {
            // Where install.sh would put them, for an air-gapped first start.
            let root = Owner {
                mode: 0o755,
                uid: 0,
                gid: 0,
            };
            let images = format!("/var/lib/rancher/k3s/agent/images/{}", a.images_name);
            for (path, file, owner) in [
                ("/usr/local/bin/k3s".to_string(), &a.binary, root),
                (
                    images,
                    &a.images,
                    Owner {
                        mode: 0o644,
                        ..root
                    },
                ),
            ] {
                planned.push(PlannedFile {
                    partition: role.clone(),
                    path: path.clone(),
                    mode: owner.mode,
                    size: std::fs::metadata(file).map(|m| m.len()).unwrap_or(0),
                });
                ops.push(Op::Write {
                    path,
                    contents: Contents::File(file.clone()),
                    owner,
                });
            }
        }
        let cmdline = manifest
            .kernel_cmdline
            .as_ref()
            .filter(|k| &k.partition == role);
        if ops.is_empty() && cmdline.is_none() {
            continue;
        }
        let what = format!(
            "partition {} ({role}) of {}",
            spec.index,
            target.path.display()
        );
        match spec.fs {
            FsKind::Vfat => {
                let mut vol = FatVolume::open(Region::new(&image, part))
                    .with_context(|| format!("opening {what}"))?;
                vol.set_timestamp(inputs.build_time);
                for op in &ops {
                    let Op::Write {
                        path,
                        contents: Contents::Bytes(bytes),
                        ..
                    } = op
                    else {
                        bail!("{what} is FAT: it can hold only regular files");
                    };
                    vol.write_file(path, bytes)
                        .with_context(|| format!("writing {path} to {what}"))?;
                    tracing::debug!("wrote {path} ({} bytes) to {role}", bytes.len());
                }
                if let Some(k) = cmdline {
                    let old = vol.read_file(&k.path)?.ok_or_else(|| {
                        anyhow!("{}: {} not found on {what}", base.display(), k.path)
                    })?;
                    let new = append_cmdline(&old, &k.append);
                    if new != old {
                        vol.write_file(&k.path, &new)
                            .with_context(|| format!("writing {} to {what}", k.path))?;
                        planned.push(PlannedFile {
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
                ext4::apply(pending.path(), &image, part, &ops, inputs.build_time)
                    .with_context(|| format!("writing into {what}"))?;
            }
        }
    }
    drop(image);
    let method = pending.method;
    let (output, digest) = pending.finish(target.compression)?;
    Ok(BakeReport {
        output,
        sha256: digest.to_string(),
        compression: target.compression,
        node: node.name.clone(),
        board: node.board.clone(),
        instance_id,
        copy: format!("{method:?}").to_lowercase(),
        files: planned,
    })
}

fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
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
    fn targets_parse() {
        let t = Target::parse(Path::new("dist/node02.rk1.img")).unwrap();
        assert_eq!((t.node.as_str(), t.board.as_str()), ("node02", "rk1"));
        assert!(Target::parse(Path::new("node02.img")).is_err());
        assert!(Target::parse(Path::new("node02.rk1")).is_err());
        let t = Target::parse(Path::new("node02.rk1.img.xz")).unwrap();
        assert_eq!(
            (t.node.as_str(), t.compression),
            ("node02", Compression::Xz)
        );
        let t = Target::parse(Path::new("a.b.cm4.img.zst")).unwrap();
        assert_eq!(
            (t.node.as_str(), t.board.as_str(), t.compression),
            ("a.b", "cm4", Compression::Zstd)
        );
        assert!(Target::parse(Path::new(".rk1.img")).is_err());
    }

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
