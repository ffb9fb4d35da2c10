//! Planning: a node's profile, its board's manifest, the overlays and the
//! secret values become a typed plan of files to place, plus the provenance
//! record. Pure: reads templates, writes nothing.

pub mod bootstrap;
mod context;
mod filters;
pub mod kube_vip;
pub mod overlay_source;
pub mod provenance;
pub mod render;

use std::path::PathBuf;

use anyhow::{Result, anyhow, bail};

pub use context::{SecretValues, TemplateContext};
pub use provenance::{FileRecord, PROVENANCE_FILE, Provenance};
pub use render::RenderedFile;

use crate::config::manifest::{FsKind, Manifest, Manifests};
use crate::config::profile::{Node, ProfileSet, profile_digest};

/// Default build time (2024-04-25T00:00:00Z, the Ubuntu 24.04 release): a fixed
/// value so that identical inputs give identical images.
pub const DEFAULT_BUILD_TIME: u64 = 1_714_003_200;

/// Where an overlay file goes: the board's NoCloud seed location, or a
/// partition by its role in the board manifest (`root`, `boot`, ...).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PartitionTarget {
    Seed,
    Role(String),
}

impl PartitionTarget {
    /// An overlay's target directory name.
    pub fn from_dir_name(name: &str) -> Self {
        match name {
            "seed" => PartitionTarget::Seed,
            role => PartitionTarget::Role(role.to_string()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            PartitionTarget::Seed => "seed",
            PartitionTarget::Role(r) => r,
        }
    }
}

impl std::fmt::Display for PartitionTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

impl PartialEq<&str> for PartitionTarget {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl Ord for PartitionTarget {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl PartialOrd for PartitionTarget {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// Where a regular file's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    Bytes(Vec<u8>),
    /// A file on the host, streamed into the image (large payloads).
    HostFile(PathBuf),
}

/// Mode and owner of a placed file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileKind {
    Regular(Content),
    Symlink(String),
}

/// One file to place in a concrete partition.
#[derive(Debug, Clone)]
pub struct PlannedFile {
    /// The partition's role in the board manifest.
    pub partition: String,
    pub path: String,
    pub owner: Owner,
    pub kind: FileKind,
    /// Depends on the secrets directory (a token, password, key or the CA
    /// set): left out of unsealed images, written when sealing.
    pub secret: bool,
}

impl PlannedFile {
    /// Size in bytes (a host file's current size).
    pub fn size(&self) -> u64 {
        match &self.kind {
            FileKind::Regular(Content::Bytes(b)) => b.len() as u64,
            FileKind::Regular(Content::HostFile(p)) => {
                std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
            }
            FileKind::Symlink(t) => t.len() as u64,
        }
    }

    pub fn record(&self) -> FileRecord {
        FileRecord {
            partition: self.partition.clone(),
            path: self.path.clone(),
            mode: self.owner.mode,
            size: self.size(),
        }
    }
}

/// The k3s binary and air-gap image tarball on the host, for air-gapped nodes.
#[derive(Debug, Clone)]
pub struct K3sPayload {
    pub binary: PathBuf,
    pub images: PathBuf,
    /// The tarball's release asset name (kept in the image).
    pub images_name: String,
    /// Where they came from and their sha256, for provenance.
    pub binary_url: String,
    pub binary_sha256: String,
    pub images_url: String,
    pub images_sha256: String,
}

/// Everything a bake of one node writes, in order.
#[derive(Debug, Clone)]
pub struct NodePlan {
    pub node: String,
    pub board: String,
    pub instance_id: String,
    pub files: Vec<PlannedFile>,
    pub provenance: Provenance,
    /// Stock files to delete before writing (those the plan does not write).
    pub removals: Vec<Removal>,
}

/// Every entry of `dir` in a partition whose name starts with `prefix`, except
/// the plan's own files, is deleted: e.g. SSH host keys a stock image carries,
/// which every node flashed from it would otherwise share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Removal {
    pub partition: String,
    pub dir: String,
    pub prefix: String,
}

/// What planning reads besides the node and its secrets.
pub struct PlanInputs<'a> {
    pub profiles: &'a ProfileSet,
    pub manifests: &'a Manifests,
    pub overlays: &'a overlay_source::OverlaySet,
    pub build_time: u64,
}

impl PlanInputs<'_> {
    pub fn manifest(&self, node: &Node) -> Result<&Manifest> {
        self.manifests
            .get(&node.board)
            .ok_or_else(|| anyhow!("no firmware manifest for board {:?}", node.board))
    }
}

/// A node's rendered overlay files and its instance ID (no image needed).
/// Without `secrets` (an unsealed build) the files that depend on them are
/// rendered with placeholders; they are flagged `secret` either way.
pub fn render_node(
    inputs: &PlanInputs,
    node: &Node,
    secrets: Option<SecretValues>,
) -> Result<(Vec<RenderedFile>, String)> {
    let manifest = inputs.manifest(node)?;
    let context =
        |values| TemplateContext::new(inputs.profiles, node, manifest, inputs.build_time, values);
    let probe_a = context(SecretValues::placeholder("a"))?;
    let probe_b = context(SecretValues::placeholder("b"))?;
    let ctx = match secrets {
        Some(values) => context(values)?,
        None => probe_a.clone(),
    };
    let mut features = render::features_for(
        &node.board,
        node.k3s.role,
        node.k3s.cluster_init,
        inputs.profiles.cluster.k3s.install,
        node.nvidia,
        node.swap.enabled(),
        !node.storage.is_empty(),
    );
    // kube-vip runs on every server; each applies the same manifest.
    if inputs.profiles.cluster.vip.is_some()
        && node.k3s.role == crate::config::profile::Role::Server
    {
        features.push("vip".into());
    }
    let identity = format!(
        "{}:{}:{}",
        manifest.board,
        manifest
            .source
            .sha256
            .as_deref()
            .unwrap_or(&manifest.source.url),
        profile_digest(&inputs.profiles.cluster, node)
    );
    let (files, instance_id) = render::render(
        inputs.overlays,
        &features,
        &ctx,
        [&probe_a, &probe_b],
        &node.name,
        &identity,
    )?;
    // Placing checks targets and names against the partition's writer, so
    // `check` and `render` refuse what the bake would.
    for f in &files {
        place(manifest, f)?;
    }
    Ok((files, instance_id))
}

/// Where a bake's k3s payload comes from.
#[derive(Debug, Clone, Copy)]
pub enum Payload<'a> {
    /// The air-gap assets fetched for the node's architecture.
    K3s(&'a K3sPayload),
    /// No payload: k3s installs online or not at all, or the plan is only
    /// used to seal an image that already holds it.
    None,
}

/// The plan for baking `node`: its rendered files placed in partitions, the
/// provenance record, and (air-gapped) the k3s payload. Without `secrets` the
/// plan is unsealed: it holds no file that depends on the secrets directory.
pub fn plan_node(
    inputs: &PlanInputs,
    node: &Node,
    secrets: Option<SecretValues>,
    payload: Payload,
) -> Result<NodePlan> {
    let manifest = inputs.manifest(node)?;
    let unsealed = secrets.is_none();
    let (rendered, instance_id) = render_node(inputs, node, secrets)?;
    let mut files = Vec::new();
    for f in rendered.iter().filter(|f| !(unsealed && f.secret)) {
        files.push(place(manifest, f)?);
    }
    let provenance = Provenance {
        base_sha256: manifest.source.sha256.clone(),
        board: node.board.clone(),
        build_time: inputs.build_time,
        cluster: inputs.profiles.cluster.name.clone(),
        files: files.iter().map(PlannedFile::record).collect(),
        imgbuild: env!("CARGO_PKG_VERSION").to_string(),
        instance_id: instance_id.clone(),
        node: node.name.clone(),
        profile_digest: profile_digest(&inputs.profiles.cluster, node),
        unsealed,
    };
    files.push(provenance_file(manifest, &provenance)?);
    if let Payload::K3s(k3s) = payload {
        let root = Owner {
            mode: 0o755,
            uid: 0,
            gid: 0,
        };
        // Where install.sh would put them, for an air-gapped first start.
        for (path, host, owner) in [
            ("/usr/local/bin/k3s".to_string(), &k3s.binary, root),
            (
                format!("/var/lib/rancher/k3s/agent/images/{}", k3s.images_name),
                &k3s.images,
                Owner {
                    mode: 0o644,
                    ..root
                },
            ),
        ] {
            files.push(PlannedFile {
                partition: "root".into(),
                path,
                owner,
                kind: FileKind::Regular(Content::HostFile(host.clone())),
                secret: false,
            });
        }
    }
    Ok(NodePlan {
        node: node.name.clone(),
        board: node.board.clone(),
        instance_id,
        files,
        provenance,
        removals: vec![Removal {
            partition: "root".into(),
            dir: "/etc/ssh".into(),
            prefix: "ssh_host_".into(),
        }],
    })
}

/// The provenance record as the file a bake writes into the seed directory.
pub fn provenance_file(manifest: &Manifest, provenance: &Provenance) -> Result<PlannedFile> {
    Ok(PlannedFile {
        partition: manifest.seed.partition.clone(),
        path: manifest.seed.path_of(&format!("/{PROVENANCE_FILE}")),
        owner: Owner {
            mode: 0o644,
            uid: 0,
            gid: 0,
        },
        kind: FileKind::Regular(Content::Bytes(serde_json::to_vec_pretty(provenance)?)),
        secret: false,
    })
}

impl NodePlan {
    /// The part of a sealed plan that sealing adds to an unsealed image: the
    /// files that depend on secrets, and the provenance record (now sealed).
    pub fn seal_only(&self) -> NodePlan {
        let mut only = self.clone();
        only.files
            .retain(|f| f.secret || f.path.ends_with(&format!("/{PROVENANCE_FILE}")));
        only
    }
}

/// Puts a rendered file in its concrete partition and path.
fn place(manifest: &Manifest, f: &RenderedFile) -> Result<PlannedFile> {
    let (role, path) = match &f.target {
        PartitionTarget::Seed => (
            manifest.seed.partition.clone(),
            manifest.seed.path_of(&f.path),
        ),
        PartitionTarget::Role(r) => (r.clone(), f.path.clone()),
    };
    let Some(spec) = manifest.partitions.get(&role) else {
        bail!(
            "{}: targets partition {:?}, which board {} does not have (it has: seed, {})",
            f.source.display(),
            f.target.as_str(),
            manifest.board,
            manifest
                .partitions
                .keys()
                .cloned()
                .collect::<Vec<_>>()
                .join(", ")
        );
    };
    if f.symlink.is_some() && spec.fs == FsKind::Vfat {
        bail!(
            "{}: FAT partitions cannot hold symlinks",
            f.source.display()
        );
    }
    let name_error = match spec.fs {
        FsKind::Vfat => crate::util::names::fat_path_error(&path),
        FsKind::Ext4 => crate::util::names::debugfs_path_error(&path)
            .map(str::to_string)
            .or_else(|| {
                f.symlink
                    .as_deref()
                    .and_then(crate::util::names::debugfs_target_error)
            }),
    };
    if let Some(reason) = name_error {
        bail!(
            "{}: {path:?} cannot be written to the {} partition ({role}) of board {}: {reason}",
            f.source.display(),
            spec.fs.name(),
            manifest.board
        );
    }
    let kind = match &f.symlink {
        Some(t) => FileKind::Symlink(t.clone()),
        None => FileKind::Regular(Content::Bytes(f.contents.clone())),
    };
    let secret = f.secret;
    Ok(PlannedFile {
        partition: role,
        path,
        owner: Owner {
            mode: f.mode,
            uid: f.uid,
            gid: f.gid,
        },
        kind,
        secret,
    })
}
