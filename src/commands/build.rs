//! `imgbuild [build] TARGET...`: resolve the targets, fetch what their
//! nodes need (source), plan each node once (plan), then bake an image or
//! remaster an installer from that plan and write the output (artifact).

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::anyhow;

pub use super::written::BakeReport;
use super::written::write_statement;
use super::{CommandError, FetchSettings, Paths, Result, Workspace};
use crate::artifact::{Format, PendingOutput, Target};
use crate::config::profile::Node;
use crate::plan::{Dependency, FileRecord, NodePlan};
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

/// Builds every requested target; stops at the first failure.
pub fn build(paths: &Paths, settings: &BuildSettings) -> Result<Vec<BakeReport>> {
    let mut targets = Vec::new();
    for t in &settings.targets {
        let target =
            Target::parse(t).map_err(|e| match node_hint(paths, t, &settings.out_dir) {
                Some(hint) => CommandError::usage(format!("{e}\nhint: {hint}")),
                None => CommandError::usage(e),
            })?;
        targets.push(target);
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

/// For a bare node name given as a target: the target it probably meant.
fn node_hint(paths: &Paths, given: &std::path::Path, out_dir: &std::path::Path) -> Option<String> {
    let name = given.to_str().filter(|n| !n.contains(['.', '/']))?;
    let ws = Workspace::load(paths).ok()?;
    let node = ws.profiles.node(name)?;
    let t = Target::in_dir(out_dir, &node.name, &node.board, Format::Raw);
    Some(format!(
        "did you mean `imgbuild {}` (node {} is a {} board)?",
        t.path.display(),
        node.name,
        node.board
    ))
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

/// One target to build: its node and the base it is built from.
struct Job<'a> {
    target: &'a Target,
    node: &'a Node,
    base: PathBuf,
}

/// Builds `targets` (already parsed); every target and given base is checked
/// before anything is downloaded or written.
pub fn build_targets(
    ws: &Workspace,
    targets: &[Target],
    settings: &BuildSettings,
) -> Result<Vec<BakeReport>> {
    let jobs = resolve_jobs(ws, targets, settings)?;
    // An unsealed build never reads (or creates) the secrets directory.
    let secrets = match settings.sealing {
        Sealing::Sealed => Some(ws.secrets()?),
        Sealing::Unsealed => None,
    };
    let nodes: Vec<&Node> = jobs.iter().map(|j| j.node).collect();
    let supplies = ws.gather(&nodes, &settings.fetch)?;
    let mut reports = Vec::new();
    for job in jobs {
        if let Some(secrets) = &secrets {
            super::warn_cluster_init(secrets, job.node)?;
        }
        let plan = ws.plan(job.node, secrets.as_ref(), &supplies, settings.build_time)?;
        if job.target.format == Format::Iso {
            let r = super::iso::build_iso(ws, &plan, job.node, job.target, &job.base)?;
            tracing::info!("built {} (instance {})", r.output.display(), r.instance_id);
            reports.push(r);
            continue;
        }
        let options = BakeOptions {
            shrink: settings.shrink,
            hash_raw: settings.sums || settings.sealing == Sealing::Unsealed,
        };
        let r = bake_one(ws, &job, &plan, options)?;
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

/// Each target's node and base: given bases are checked, stock images and
/// installers fetched (once per board).
fn resolve_jobs<'w>(
    ws: &'w Workspace,
    targets: &'w [Target],
    settings: &BuildSettings,
) -> Result<Vec<Job<'w>>> {
    let mut given = Vec::new();
    for t in targets {
        let node = resolve(ws, t)?;
        if t.format == Format::Iso {
            super::iso::check_target(ws, t, node)?;
            given.push((t, node, None));
        } else {
            given.push((t, node, settings.bases.for_board(&node.board)?));
        }
    }
    let cache = settings.fetch.cache()?;
    let options = settings.fetch.options();
    let mut fetched: BTreeMap<String, PathBuf> = BTreeMap::new();
    let mut jobs = Vec::new();
    for (target, node, base) in given {
        let manifest = &ws.manifests[&node.board];
        let base = match base {
            Some(b) => b,
            // An installer ISO is kept as downloaded (and cached by digest).
            None if target.format == Format::Iso => {
                crate::source::ensure_installer(manifest, &cache, &options)?
            }
            None => match fetched.get(&node.board) {
                Some(b) => b.clone(),
                None => {
                    let b = crate::source::ensure_base(manifest, &cache, &options).map_err(|e| {
                        if options.offline {
                            e
                        } else {
                            e.context(format!(
                                "hint: without network, give the stock image with --base {}=FILE, or run `imgbuild fetch {}` \
                                 where there is network and build with --offline",
                                node.board, node.board
                            ))
                        }
                    })?;
                    fetched.insert(node.board.clone(), b.clone());
                    b
                }
            },
        };
        jobs.push(Job { target, node, base });
    }
    Ok(jobs)
}

#[derive(Debug, Clone, Copy)]
struct BakeOptions {
    /// Shrink the output to the root's use plus headroom.
    shrink: bool,
    /// Hash a raw output (`--sums`, unsealed builds, CI).
    hash_raw: bool,
}

fn bake_one(
    ws: &Workspace,
    job: &Job,
    plan: &NodePlan,
    options: BakeOptions,
) -> anyhow::Result<BakeReport> {
    let (node, target, base) = (job.node, job.target, job.base.as_path());
    let manifest = &ws.manifests[&node.board];
    let build_time = plan.provenance.build_time;
    if same_file(base, &target.path) {
        anyhow::bail!(
            "{}: the output would overwrite the base image",
            target.path.display()
        );
    }
    plan.require_complete()?;
    let table = crate::bake::check_base(base, manifest)?;
    tracing::info!(node = %node.name, output = %target.path.display(), "copying base {}", base.display());
    let pending = PendingOutput::from_base(base, &target.path)?;
    let image = pending.open()?;
    let apply = |roles: &dyn Fn(&str) -> bool| {
        crate::bake::apply_roles(
            plan,
            manifest,
            &table,
            pending.path(),
            &image,
            build_time,
            roles,
        )
    };
    let (edited, shrink) = if options.shrink {
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
                build_time,
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
    let (output, digest) = pending.finish(target.format, options.hash_raw)?;
    // The statement's subject is the digest: without one there is none.
    if let Some(digest) = &digest {
        let stock = Dependency {
            name: "stock image".into(),
            uri: Some(manifest.source.url.clone()),
            sha256: manifest.source.sha256.clone().unwrap_or_default(),
        };
        write_statement(&output, digest, plan, target.format, Some(stock))?;
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
        instance_id: plan.instance_id.clone(),
        copy,
        flash_bytes,
        shrink,
        files,
    })
}

fn same_file(a: &std::path::Path, b: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}
