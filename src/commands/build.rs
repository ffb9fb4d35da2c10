//! `imgbuild [build] TARGET...`: plan, fetch, bake and write each target.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::anyhow;

use super::{CommandError, FetchSettings, Paths, Result, Workspace};
use crate::artifact::statement::{ResourceDescriptor, Statement};
use crate::artifact::{Format, PendingOutput, Target};
use crate::config::k3s::DEFAULT_MIRROR;
use crate::config::manifest::Arch;
use crate::config::profile::{Install, Node};
use crate::io::CopyMethod;
use crate::plan::{self, FileRecord, K3sPayload, PlanInputs, Provenance, SecretValues};
use crate::secrets::Secrets;
use anyhow::Context;

#[derive(Debug, Clone)]
pub struct BuildSettings {
    pub targets: Vec<PathBuf>,
    pub all: bool,
    pub out_dir: PathBuf,
    /// Output format for `--all`.
    pub all_format: Format,
    pub bases: Bases,
    pub fetch: FetchSettings,
    /// Unix seconds stamped on every file written.
    pub build_time: u64,
    pub sealing: Sealing,
    /// Shrink raw outputs to the root's use plus headroom (`--no-shrink` off).
    pub shrink: bool,
    /// Hash raw outputs at bake time to record them in `SHA256SUMS` and a
    /// provenance statement (`--sums`, or CI). Unsealed builds always do:
    /// `seal` and `verify` check their artifacts against those records.
    pub sums: bool,
}

/// Whether a build bakes the cluster's secrets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sealing {
    /// Everything, secrets included: ready to flash.
    Sealed,
    /// Everything that does not depend on the secrets directory (which is not
    /// even read): safe to publish, sealed on the way to the node.
    Unsealed,
}

/// Local base images from `--base`: one for every board, or per board.
#[derive(Debug, Clone, Default)]
pub struct Bases(Vec<(Option<String>, PathBuf)>);

impl Bases {
    /// Parses `--base` values: `FILE` or `BOARD=FILE`.
    pub fn parse(values: &[String]) -> Result<Bases> {
        let mut out: Vec<(Option<String>, PathBuf)> = Vec::new();
        for v in values {
            let (board, file) = match v.split_once('=') {
                Some((b, f)) if !b.is_empty() && !b.contains('/') => {
                    (Some(b.to_string()), PathBuf::from(f))
                }
                _ => (None, PathBuf::from(v)),
            };
            if out.iter().any(|(b, _)| *b == board) {
                return Err(CommandError::usage(format!(
                    "--base given twice for {}",
                    board.map_or("all boards".into(), |b| format!("board {b}"))
                )));
            }
            out.push((board, file));
        }
        Ok(Bases(out))
    }

    /// The base given for `board`, if any; it must exist.
    fn for_board(&self, board: &str) -> anyhow::Result<Option<PathBuf>> {
        let found = self
            .0
            .iter()
            .find(|(b, _)| b.as_deref() == Some(board))
            .or_else(|| self.0.iter().find(|(b, _)| b.is_none()));
        match found {
            Some((_, f)) if !f.is_file() => Err(anyhow!("--base {}: no such file", f.display())),
            Some((_, f)) => Ok(Some(f.clone())),
            None => Ok(None),
        }
    }
}

#[derive(Debug)]
pub struct BakeReport {
    pub output: PathBuf,
    /// `None` for a raw output baked without `--sums`: it was not hashed
    /// (`flash` computes the digest when it needs it).
    pub sha256: Option<String>,
    pub compression: Format,
    pub node: String,
    pub board: String,
    pub instance_id: String,
    pub copy: CopyMethod,
    /// Built without the cluster's secrets (to be sealed on delivery).
    pub unsealed: bool,
    /// Bytes of the raw image: what a flash sends.
    pub flash_bytes: u64,
    /// What shrinking did (absent with `--no-shrink`).
    pub shrink: Option<crate::bake::shrink::ShrinkReport>,
    pub files: Vec<FileRecord>,
}

/// Builds every requested target; stops at the first failure.
pub fn build(paths: &Paths, settings: &BuildSettings) -> Result<Vec<BakeReport>> {
    let mut targets = Vec::new();
    for t in &settings.targets {
        targets.push(Target::parse(t).map_err(CommandError::usage)?);
    }
    if targets.is_empty() && !settings.all {
        return Err(CommandError::usage(
            "nothing to build: name targets like dist/node02.rk1.img, or use --all".into(),
        ));
    }
    let ws = &Workspace::load(paths)?;
    if settings.all {
        for n in &ws.profiles.nodes {
            targets.push(Target::in_dir(
                &settings.out_dir,
                &n.name,
                &n.board,
                settings.all_format,
            ));
        }
    }
    build_targets(ws, &targets, settings)
}

/// Checks a target against the profiles and finds its node.
fn resolve<'w>(ws: &'w Workspace, target: &Target) -> Result<&'w Node> {
    let node = ws.profiles.node(&target.node).ok_or_else(|| {
        CommandError::usage(format!(
            "{}: no profile for node {:?} in {} (nodes: {})",
            target.path.display(),
            target.node,
            ws.profiles.dir.display(),
            ws.node_names().join(", ")
        ))
    })?;
    if node.board != target.board {
        return Err(CommandError::usage(format!(
            "{}: node {} is a {} board in {}, not {}; name the target {}.{}.img",
            target.path.display(),
            node.name,
            node.board,
            node.file.display(),
            target.board,
            node.name,
            node.board
        )));
    }
    Ok(node)
}

/// Builds `targets` (already parsed); every target and given base is checked
/// before anything is downloaded or written.
pub fn build_targets(
    ws: &Workspace,
    targets: &[Target],
    settings: &BuildSettings,
) -> Result<Vec<BakeReport>> {
    let mut jobs = Vec::new();
    for t in targets {
        let node = resolve(ws, t)?;
        if t.format == Format::Iso {
            super::iso::check_target(ws, t, node)?;
            jobs.push((t, node, None));
            continue;
        }
        jobs.push((t, node, settings.bases.for_board(&node.board)?));
    }
    let cache = settings.fetch.cache()?;
    let options = settings.fetch.options();
    let mut fetched: BTreeMap<String, PathBuf> = BTreeMap::new();
    let mut resolved = Vec::new();
    for (t, node, given) in jobs {
        let base = match given {
            // An installer ISO is kept as downloaded (and cached by digest).
            None if t.format == Format::Iso => {
                crate::source::ensure_installer(&ws.manifests[&node.board], &cache, &options)?
            }
            Some(b) => b,
            None => match fetched.get(&node.board) {
                Some(b) => b.clone(),
                None => {
                    let b =
                        crate::source::ensure_base(&ws.manifests[&node.board], &cache, &options)?;
                    fetched.insert(node.board.clone(), b.clone());
                    b
                }
            },
        };
        resolved.push((t, node, base));
    }
    // An unsealed build never reads (or creates) the secrets directory.
    let secrets = match settings.sealing {
        Sealing::Sealed => Some(ws.secrets()?),
        Sealing::Unsealed => None,
    };
    let mut k3s: BTreeMap<Arch, K3sPayload> = BTreeMap::new();
    let cluster_k3s = &ws.profiles.cluster.k3s;
    if cluster_k3s.install == Install::Airgap {
        let mirror = settings
            .fetch
            .k3s_mirror
            .clone()
            .or_else(|| cluster_k3s.mirror.clone())
            .unwrap_or_else(|| DEFAULT_MIRROR.to_string());
        for (_, node, _) in &resolved {
            let arch = ws.manifests[&node.board].arch;
            if let std::collections::btree_map::Entry::Vacant(slot) = k3s.entry(arch) {
                slot.insert(crate::source::k3s::ensure_assets(
                    &cluster_k3s.version,
                    arch,
                    &mirror,
                    &cache,
                    &options,
                )?);
            }
        }
    }
    let inputs = PlanInputs {
        profiles: &ws.profiles,
        manifests: &ws.manifests,
        overlays: &ws.overlays,
        build_time: settings.build_time,
    };
    let nodes: Vec<&Node> = resolved.iter().map(|(_, n, _)| *n).collect();
    let additions = super::additions::Additions::prepare(
        ws,
        &nodes,
        &cache,
        &options,
        settings.fetch.registry_auth.as_deref(),
    )?;
    let mut reports = Vec::new();
    for (target, node, base) in resolved {
        if let Some(secrets) = &secrets {
            warn_cluster_init(secrets, node)?;
        }
        let payload = k3s.get(&ws.manifests[&node.board].arch);
        if target.format == Format::Iso {
            let values = match &secrets {
                Some(s) => Some(secret_values(s, node, inputs.build_time)?),
                None => None,
            };
            let r = super::iso::build_iso(&inputs, values, node, target, &base, payload)?;
            tracing::info!("built {} (instance {})", r.output.display(), r.instance_id);
            reports.push(r);
            continue;
        }
        let r = bake_one(
            &inputs,
            secrets.as_ref(),
            node,
            target,
            &base,
            payload,
            settings.shrink,
            settings.sums || settings.sealing == Sealing::Unsealed,
            &additions,
        )?;
        tracing::info!(
            "built {} ({}, instance {})",
            r.output.display(),
            r.copy,
            r.instance_id
        );
        reports.push(r);
    }
    Ok(reports)
}

pub(super) fn warn_cluster_init(secrets: &Secrets, node: &Node) -> Result<()> {
    if node.k3s.cluster_init
        && let Some(first) = secrets.mark_initialized(&node.name)?
    {
        tracing::warn!(
            "{} initialises the cluster (k3s.cluster_init: true) and a cluster-init image (for {first}) was built before: \
             flashing it onto the first server of a running cluster starts a new, empty cluster. To re-flash that node, \
             set k3s.cluster_init: false on it so it joins the other servers",
            node.name
        );
    }
    Ok(())
}

/// The secret values a node's files are rendered with.
pub(super) fn secret_values(
    secrets: &Secrets,
    node: &Node,
    build_time: u64,
) -> anyhow::Result<SecretValues> {
    Ok(SecretValues::new(
        &secrets.cluster(build_time)?,
        &secrets.node(&node.name, &node.hostname)?,
    ))
}

// One bake's inputs are many but distinct; a struct would only rename them.
#[allow(clippy::too_many_arguments)]
fn bake_one(
    inputs: &PlanInputs,
    secrets: Option<&Secrets>,
    node: &Node,
    target: &Target,
    base: &std::path::Path,
    k3s: Option<&K3sPayload>,
    shrink: bool,
    hash_raw: bool,
    additions: &super::additions::Additions,
) -> anyhow::Result<BakeReport> {
    let manifest = inputs.manifest(node)?;
    if same_file(base, &target.path) {
        anyhow::bail!(
            "{}: the output would overwrite the base image",
            target.path.display()
        );
    }
    let values = match secrets {
        Some(s) => Some(secret_values(s, node, inputs.build_time)?),
        None => None,
    };
    let payload = match (inputs.profiles.cluster.k3s.install, k3s) {
        (Install::Airgap, Some(k)) => plan::Payload::K3s(k),
        (Install::Airgap, None) => {
            anyhow::bail!("no k3s air-gap assets were fetched for {}", manifest.arch)
        }
        _ => plan::Payload::None,
    };
    let mut plan = plan::plan_node(inputs, node, values, payload)?;
    let (extra_files, extra_deps) = additions.for_node(node);
    plan.files.extend(extra_files);
    let table = crate::bake::check_base(base, manifest)?;
    tracing::info!(node = %node.name, output = %target.path.display(), "copying base {}", base.display());
    let pending = PendingOutput::from_base(base, &target.path)?;
    let image = pending.open()?;
    let apply = |roles: &dyn Fn(&str) -> bool| {
        crate::bake::apply_roles(
            &plan,
            manifest,
            &table,
            pending.path(),
            &image,
            inputs.build_time,
            roles,
        )
    };
    let (edited, shrink) = if shrink {
        // The root first: shrinking puts the base's bytes before the root
        // back (bake::shrink), so the partitions there are edited after it.
        let mut edited = apply(&|role| role == "root")?;
        let headroom = node
            .shrink_headroom_mib
            .or(manifest.shrink.as_ref().and_then(|s| s.headroom_mib));
        let stock = std::fs::File::open(base)
            .with_context(|| format!("opening the base image {}", base.display()))?;
        let report = crate::bake::shrink::shrink(
            manifest,
            &table,
            pending.path(),
            &image,
            &stock,
            &crate::bake::shrink::Options {
                headroom_mib: headroom,
                build_time: inputs.build_time,
                in_place: true,
            },
        )?;
        edited.extend(apply(&|role| role != "root")?);
        (edited, Some(report))
    } else {
        (apply(&|_| true)?, None)
    };
    let flash_bytes = image
        .metadata()
        .with_context(|| format!("reading the size of {}", pending.path().display()))?
        .len();
    drop(image);
    let copy = pending.method;
    let (output, digest) = pending.finish(target.format, hash_raw)?;
    // The statement's subject is the digest: without one there is none.
    if let Some(digest) = &digest {
        provenance_statement(inputs, node, &plan.provenance, target.format, k3s)
            .and_then(|deps| {
                let (params, mut deps) = deps;
                deps.extend(extra_deps);
                Statement::new(&output, digest, params, deps).write(&output)
            })
            .with_context(|| format!("writing the provenance of {}", output.display()))?;
    }
    let mut files: Vec<FileRecord> = plan.files.iter().map(|f| f.record()).collect();
    files.extend(edited);
    Ok(BakeReport {
        output,
        sha256: digest.map(|d| d.to_string()),
        compression: target.format,
        node: node.name.clone(),
        board: node.board.clone(),
        unsealed: plan.provenance.unsealed,
        instance_id: plan.instance_id,
        copy,
        flash_bytes,
        shrink,
        files,
    })
}

/// The build parameters and resolved dependencies of a node's artifact, for
/// its provenance statement.
pub(crate) fn provenance_statement(
    inputs: &PlanInputs,
    node: &Node,
    provenance: &Provenance,
    format: Format,
    k3s: Option<&K3sPayload>,
) -> anyhow::Result<(BTreeMap<String, serde_json::Value>, Vec<ResourceDescriptor>)> {
    let manifest = inputs.manifest(node)?;
    let params = BTreeMap::from([
        ("node".to_string(), serde_json::json!(node.name)),
        ("board".to_string(), serde_json::json!(node.board)),
        ("format".to_string(), serde_json::json!(format.extension())),
        (
            "unsealed".to_string(),
            serde_json::json!(provenance.unsealed),
        ),
        (
            "buildTime".to_string(),
            serde_json::json!(provenance.build_time),
        ),
        (
            "instanceId".to_string(),
            serde_json::json!(provenance.instance_id),
        ),
    ]);
    let mut deps = Vec::new();
    let mut stock = ResourceDescriptor::sha256(
        Some("stock image"),
        Some(&manifest.source.url),
        manifest.source.sha256.as_deref().unwrap_or(""),
    );
    if manifest.source.sha256.is_none() {
        stock.digest.clear();
    }
    deps.push(stock);
    if let Some(k) = k3s {
        deps.push(ResourceDescriptor::sha256(
            Some("k3s binary"),
            Some(&k.binary_url),
            &k.binary_sha256,
        ));
        deps.push(ResourceDescriptor::sha256(
            Some("k3s air-gap images"),
            Some(&k.images_url),
            &k.images_sha256,
        ));
    }
    deps.push(ResourceDescriptor::sha256(
        Some("overlays"),
        None,
        &inputs.overlays.digest(),
    ));
    deps.push(ResourceDescriptor::sha256(
        Some("profiles"),
        None,
        &provenance.profile_digest,
    ));
    Ok((params, deps))
}

fn same_file(a: &std::path::Path, b: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}
