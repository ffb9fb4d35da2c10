//! Planning: a node's profile, its board's manifest, the overlays, the
//! secret values and what `source` gathered become one complete
//! [`NodePlan`]: every file the node gets (overlays, k3s payload, image
//! archives, bootstrap manifests, provenance), each with its partition,
//! path, owner, content and secret flag, plus the provenance record and the
//! statement's dependencies. `render`/`check` previews, bakes and installers
//! all read this one plan. Pure: reads templates, writes nothing.

pub mod additions;
pub mod bootstrap;
mod context;
mod filters;
pub mod kube_vip;
pub mod overlay_source;
pub mod provenance;
pub mod render;

use std::path::PathBuf;

use anyhow::{Result, anyhow, bail};

pub use additions::{Dependency, Origin, OriginKind, Unfetched};
pub use context::{SecretValues, TemplateContext};
pub use provenance::{FileRecord, PROVENANCE_FILE, Provenance, ProvenanceError};
pub use render::RenderedFile;

use crate::config::manifest::{FsKind, Manifest, Manifests};
use crate::config::profile::{Node, ProfileSet, profile_digest};
use crate::source::supplies::Supplies;

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
    /// For files beyond the overlays: where they come from.
    pub origin: Option<Origin>,
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

/// Everything a bake or an installer of one node writes, in order.
#[derive(Debug, Clone)]
pub struct NodePlan {
    pub node: String,
    pub board: String,
    pub instance_id: String,
    pub files: Vec<PlannedFile>,
    pub provenance: Provenance,
    /// Stock files to delete before writing (those the plan does not write).
    pub removals: Vec<Removal>,
    /// The overlay files as rendered (what `render` shows).
    pub rendered: Vec<RenderedFile>,
    /// What a build would add once fetched: empty unless the plan is a
    /// preview (made from [`Supplies::preview`]).
    pub unfetched: Vec<Unfetched>,
    /// The inputs besides the stock image, for the provenance statement.
    pub dependencies: Vec<Dependency>,
    /// Set when the plan is a server's image re-made to join a running
    /// cluster instead of founding one.
    pub join: Option<Join>,
}

/// Stock files a plan deletes: the base image's SSH host keys (every node
/// flashed from it would share them) and, for a server that joins instead
/// of founding, the CA set an image built to found the cluster holds.
fn removals(joining: bool) -> Vec<Removal> {
    let mut out = vec![Removal {
        partition: "root".into(),
        dir: "/etc/ssh".into(),
        prefix: "ssh_host_".into(),
    }];
    if joining {
        for (dir, prefixes) in [
            (
                SERVER_TLS.to_string(),
                &["server-ca", "client-ca", "request-header-ca", "service.key"][..],
            ),
            (format!("{SERVER_TLS}/etcd"), &["server-ca", "peer-ca"][..]),
        ] {
            for prefix in prefixes {
                out.push(Removal {
                    partition: "root".into(),
                    dir: dir.clone(),
                    prefix: prefix.to_string(),
                });
            }
        }
    }
    out
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
    /// For a server: join the running cluster at this API URL instead of
    /// founding it (see [`Join`]).
    pub join: Option<String>,
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
    render_variant(inputs, node, secrets, None)
}

/// Renders `node`, or (with `join`) the variant of a server that joins the
/// running cluster at `join.server_url` instead of founding it: the same
/// overlays (the cluster-init server's auto-deploy manifests stay, so k3s's
/// deploy controller deletes nothing), `server:` instead of `cluster-init`,
/// no CA set (a joining server gets the cluster's from its peers), and the
/// instance ID of the node as profiled.
fn render_variant(
    inputs: &PlanInputs,
    node: &Node,
    secrets: Option<SecretValues>,
    join: Option<(&str, &str)>,
) -> Result<(Vec<RenderedFile>, String)> {
    let manifest = inputs.manifest(node)?;
    let mut joining = node.clone();
    if join.is_some() {
        joining.k3s.cluster_init = false;
    }
    let context = |values| -> Result<TemplateContext> {
        let mut ctx = TemplateContext::new(
            inputs.profiles,
            &joining,
            manifest,
            inputs.build_time,
            values,
        )?;
        if let Some((url, _)) = join {
            ctx.k3s.server_url = url.to_string();
        }
        Ok(ctx)
    };
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
    let identity = match join {
        Some((_, id)) => render::Identity::Fixed(id),
        None => render::Identity::Derive(&identity),
    };
    let (mut files, instance_id) = render::render(
        inputs.overlays,
        &features,
        &ctx,
        [&probe_a, &probe_b],
        &node.name,
        identity,
    )?;
    if join.is_some() {
        files.retain(|f| !(f.target == "root" && f.path.starts_with(&format!("{SERVER_TLS}/"))));
    }
    // Placing checks targets and names against the partition's writer, so
    // `check` and `render` refuse what the bake would.
    for f in &files {
        place(manifest, f)?;
    }
    Ok((files, instance_id))
}

/// Where the cluster-init server's CA set lives.
pub const SERVER_TLS: &str = "/var/lib/rancher/k3s/server/tls";

/// A server image re-made to join a running cluster (decided at flash time).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Join {
    /// The API server it joins through (`server:` in its k3s config).
    pub server_url: String,
    /// Public files that differ from the image as built (its k3s config):
    /// what a flash writes into the copy besides the secrets.
    pub changed: Vec<String>,
}

/// The complete plan for `node`: its rendered files placed in partitions,
/// the provenance record, and everything beyond the overlays that
/// `supplies` holds (or, in a preview, lists as unfetched). Without
/// `secrets` the plan is unsealed: it holds no file that depends on the
/// secrets directory.
pub fn plan_node(
    inputs: &PlanInputs,
    node: &Node,
    secrets: Option<SecretValues>,
    supplies: &Supplies,
) -> Result<NodePlan> {
    let manifest = inputs.manifest(node)?;
    let unsealed = secrets.is_none();
    let (rendered, instance_id, join) = match inputs.join.as_deref() {
        Some(url) if node.k3s.role == crate::config::profile::Role::Server => {
            let (profiled, id) = render_node(inputs, node, None)?;
            let (rendered, id) = render_variant(inputs, node, secrets, Some((url, &id)))?;
            let changed = rendered
                .iter()
                .filter(|f| !f.secret)
                .filter(|f| {
                    !profiled.iter().any(|p| {
                        p.target == f.target && p.path == f.path && p.contents == f.contents
                    })
                })
                .filter_map(|f| place(manifest, f).ok().map(|p| p.path))
                .collect();
            let join = Join {
                server_url: url.to_string(),
                changed,
            };
            (rendered, id, Some(join))
        }
        _ => {
            let (rendered, id) = render_node(inputs, node, secrets)?;
            (rendered, id, None)
        }
    };
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
        joined: join.as_ref().map(|j| j.server_url.clone()),
    };
    files.push(provenance_file(manifest, &provenance)?);
    let extra = additions::extra_files(inputs.profiles, node, manifest.arch, supplies)?;
    let dependencies = dependencies(inputs, &provenance, &extra.files, &extra.unfetched);
    files.extend(extra.files);
    Ok(NodePlan {
        node: node.name.clone(),
        board: node.board.clone(),
        instance_id,
        files,
        provenance,
        removals: removals(join.is_some()),
        join,
        rendered,
        unfetched: extra.unfetched,
        dependencies,
    })
}

/// The statement's inputs besides the stock image, in the order earlier
/// statements listed them: k3s, overlays, profiles, then the rest.
fn dependencies(
    inputs: &PlanInputs,
    provenance: &Provenance,
    files: &[PlannedFile],
    unfetched: &[Unfetched],
) -> Vec<Dependency> {
    let origins: Vec<&Origin> = files
        .iter()
        .filter_map(|f| f.origin.as_ref())
        .chain(unfetched.iter().map(|u| &u.origin))
        .collect();
    let (k3s, rest): (Vec<&Origin>, Vec<&Origin>) =
        origins.into_iter().partition(|o| o.kind == OriginKind::K3s);
    let mut out: Vec<Dependency> = k3s.into_iter().map(Dependency::from).collect();
    out.push(Dependency {
        name: "overlays".into(),
        uri: None,
        sha256: inputs.overlays.digest(),
    });
    out.push(Dependency {
        name: "profiles".into(),
        uri: None,
        sha256: provenance.profile_digest.clone(),
    });
    out.extend(rest.into_iter().map(Dependency::from));
    out
}

/// One file a build adds beyond the overlays (not the k3s payload), as
/// `render` and `check` list it.
#[derive(Debug, Clone)]
pub struct Added {
    /// Absolute path in the root file system.
    pub path: String,
    /// `bootstrap manifest`, `helm chart` or `container image`.
    pub kind: &'static str,
    /// Which: the manifest's file name, `NAME (CHART VERSION)`, `REF (ARCH)`.
    pub what: String,
    /// Where it is fetched from (charts and images).
    pub uri: Option<String>,
    /// The manifest's, chart archive's or image index's sha256.
    pub sha256: String,
    pub owner: Owner,
}

impl NodePlan {
    /// What the build adds beyond the overlays and k3s, placed or still to
    /// fetch, in the order a bake writes it.
    pub fn added(&self) -> Vec<Added> {
        let placed = self
            .files
            .iter()
            .filter_map(|f| f.origin.as_ref().map(|o| (f.path.as_str(), f.owner, o)));
        let pending = self
            .unfetched
            .iter()
            .map(|u| (u.path.as_str(), u.owner, &u.origin));
        placed
            .chain(pending)
            .filter(|(_, _, o)| o.kind != OriginKind::K3s)
            .map(|(path, owner, o)| Added {
                path: path.to_string(),
                kind: o.kind.label(),
                what: o.what.clone(),
                uri: o.uri.clone(),
                sha256: o.sha256.clone(),
                owner,
            })
            .collect()
    }

    /// Refuses a preview: a bake or installer needs every file's content.
    pub fn require_complete(&self) -> Result<()> {
        match self.unfetched.first() {
            None => Ok(()),
            Some(u) => bail!(
                "node {}: {} {} was not fetched; the plan is a preview",
                self.node,
                u.origin.kind.label(),
                u.origin.what
            ),
        }
    }
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
        origin: None,
    })
}

impl NodePlan {
    /// The part of a sealed plan that sealing adds to an unsealed image: the
    /// files that depend on secrets, and the provenance record (now sealed).
    pub fn seal_only(&self) -> NodePlan {
        let mut only = self.clone();
        let changed: &[String] = self.join.as_ref().map_or(&[], |j| &j.changed);
        only.files.retain(|f| {
            f.secret
                || f.path.ends_with(&format!("/{PROVENANCE_FILE}"))
                || changed.contains(&f.path)
        });
        only.unfetched.clear();
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
        origin: None,
    })
}
