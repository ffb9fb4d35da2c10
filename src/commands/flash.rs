//! `imgbuild flash NODE` and `imgbuild deploy`: build what is missing, then
//! deliver each node's image to its Turing Pi slot, in slot order.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::bmc::BmcOptions;
use super::build::{BuildSettings, build_targets};
use super::wait::WaitReport;
use super::{CommandError, Paths, Result, Workspace, rollout};
use crate::artifact::{Format, Target, sums};
use crate::deliver::{self, Confirm, DeployState, Job, Report, turing_pi};

#[derive(Debug, Clone)]
pub struct FlashSettings {
    pub bmc: BmcOptions,
    pub yes: bool,
    pub skip_crc: bool,
    /// Where images are found, and built when missing.
    pub build: BuildSettings,
    /// `deploy --wait`: ask the cluster about each node before flashing it.
    pub wait: Option<super::wait::WaitSettings>,
    /// How a running cluster is treated (preflight, drain, etcd, skips).
    pub rollout: super::rollout::RolloutSettings,
}

/// `imgbuild flash NODE [--image FILE]`.
#[derive(Debug, Clone)]
pub struct FlashNode {
    pub node: String,
    /// Flash this image instead of the node's output (built when missing).
    pub image: Option<PathBuf>,
    pub flash: FlashSettings,
}

/// `imgbuild deploy [--nodes ...] [--wait]`.
#[derive(Debug, Clone)]
pub struct DeploySettings {
    /// Only these nodes; every Turing Pi node when empty.
    pub nodes: Vec<String>,
    /// With `flash.wait` set, the deploy waits for the nodes afterwards.
    pub flash: FlashSettings,
}

/// What a deploy did: each node's delivery, then the wait when asked for.
#[derive(Debug)]
pub struct Deployed {
    pub delivered: Vec<Report>,
    pub waited: Option<WaitReport>,
}

/// Flashes one node: its own output (built when missing) or the image given.
pub fn flash_node(paths: &Paths, s: &FlashNode) -> Result<Vec<Report>> {
    let ws = Workspace::load(paths)?;
    let images: BTreeMap<_, _> = s
        .image
        .clone()
        .map(|i| (s.node.clone(), i))
        .into_iter()
        .collect();
    flash(&ws, std::slice::from_ref(&s.node), &images, &s.flash, false)
}

/// Flashes the nodes (skipping those a resumed run already did), then, with
/// `--wait`, waits until they are Ready. `delivered` is told the deliveries
/// before the wait starts, so they can be shown while it runs.
pub fn deploy(
    paths: &Paths,
    s: &DeploySettings,
    delivered: &mut dyn FnMut(&[Report]) -> Result<()>,
) -> Result<Deployed> {
    let ws = Workspace::load(paths)?;
    let names = deploy_nodes(&ws, &s.nodes)?;
    let reports = flash(&ws, &names, &BTreeMap::new(), &s.flash, true)?;
    let Some(w) = &s.flash.wait else {
        return Ok(Deployed {
            delivered: reports,
            waited: None,
        });
    };
    delivered(&reports)?;
    let waited = super::wait::wait(&ws, &names, w)?;
    Ok(Deployed {
        delivered: reports,
        waited: Some(waited),
    })
}

/// Every Turing Pi node of the profiles, for deploy; or the nodes named, each
/// once, where an unknown name is an error (and a node outside a Turing Pi is
/// refused by [`flash`]) rather than silently skipped.
pub fn deploy_nodes(ws: &Workspace, only: &[String]) -> Result<Vec<String>> {
    if only.is_empty() {
        return Ok(ws
            .profiles
            .nodes
            .iter()
            .filter(|n| n.turing_pi.is_some())
            .map(|n| n.name.clone())
            .collect());
    }
    let mut names: Vec<String> = Vec::new();
    for name in only {
        ws.node(name)?;
        if !names.contains(name) {
            names.push(name.clone());
        }
    }
    Ok(names)
}

/// Flashes each named node (Turing Pi modules only) in slot order, one at a
/// time; builds a node's image when it is missing. `images` overrides the
/// image of a node. With `deploy`, nodes already flashed with the same image
/// are skipped and progress is recorded in the output directory.
pub fn flash(
    ws: &Workspace,
    nodes: &[String],
    images: &BTreeMap<String, PathBuf>,
    settings: &FlashSettings,
    deploy: bool,
) -> Result<Vec<Report>> {
    let mut chosen = Vec::new();
    for name in nodes {
        let n = ws.node(name)?;
        let slot = n.turing_pi.clone().ok_or_else(|| {
            CommandError::usage(format!(
                "node {name} is a {} board, not in a Turing Pi slot",
                n.board
            ))
        })?;
        chosen.push((n, slot));
    }
    chosen.sort_by(|a, b| (&a.1.board, a.1.slot).cmp(&(&b.1.board, b.1.slot)));

    let out_dir = &settings.build.out_dir;
    let mut missing = Vec::new();
    let mut planned = Vec::new();
    for (node, slot) in chosen {
        let image = match images.get(&node.name) {
            Some(p) => p.clone(),
            None => {
                let t = Target::in_dir(out_dir, &node.name, &node.board, Format::Raw);
                if !t.path.is_file() {
                    tracing::info!("{} does not exist; building it", t.path.display());
                    missing.push(t.clone());
                }
                t.path
            }
        };
        planned.push((node, slot, image));
    }
    if !missing.is_empty() {
        build_targets(ws, &missing, &settings.build)?;
    }
    let bmc = settings.bmc.settings(ws)?;
    let mut state = if deploy {
        std::fs::create_dir_all(out_dir)
            .map_err(|e| anyhow::anyhow!("creating {}: {e}", out_dir.display()))?;
        Some(DeployState::load(out_dir))
    } else {
        None
    };
    // A resumed deploy: raw, sealed images this deploy already flashed are
    // not decided about again.
    let mut reports = Vec::new();
    let mut candidates = Vec::new();
    for (node, slot, image) in &planned {
        let art = ws.open_artifact(image)?;
        if let Some(s) = &state
            && art.is_raw()
            && !art.is_unsealed()
        {
            let sha256 = sums::digest_of(image)?;
            if s.is_done(&node.name, &sha256) {
                tracing::info!("{}: already flashed with this image; skipping", node.name);
                reports.push(Report {
                    node: node.name.clone(),
                    destination: format!("{}/slot {}", slot.board, slot.slot),
                    image: image.clone(),
                    sha256,
                    result: deliver::Outcome::Skipped,
                    error: None,
                });
                continue;
            }
        }
        candidates.push(rollout::Candidate {
            node,
            instance_id: art.provenance.map(|p| p.instance_id),
        });
    }
    // Ask the cluster first; every refusal comes before the first flash.
    let cluster = rollout::preflight(ws, &settings.rollout);
    let decided = rollout::decide(ws, candidates, &cluster, &settings.rollout)?;
    // Unsealed or compressed images (e.g. CI artifacts) are sealed/unpacked
    // into a temporary directory first, and a server of a running cluster is
    // re-made there to join it; the artifacts are never modified.
    std::fs::create_dir_all(out_dir)
        .map_err(|e| anyhow::anyhow!("creating {}: {e}", out_dir.display()))?;
    let temp = tempfile::Builder::new()
        .prefix(".imgbuild-flash-")
        .tempdir_in(out_dir)
        .map_err(|e| anyhow::anyhow!("creating a directory in {}: {e}", out_dir.display()))?;
    let _temp_cleanup = crate::util::cleanup::register_dir(temp.path());
    let confirm = Confirm { yes: settings.yes };
    for (candidate, action) in decided {
        let node = candidate.node;
        let (_, slot, image) = planned
            .iter()
            .find(|(n, _, _)| n.name == node.name)
            .expect("every decided node was planned");
        let step = match action {
            rollout::Action::Skip { reason } => {
                tracing::info!("{}: {reason}; skipping", node.name);
                reports.push(Report {
                    node: node.name.clone(),
                    destination: format!("{}/slot {}", slot.board, slot.slot),
                    image: image.clone(),
                    sha256: sums::digest_of(image)?,
                    result: deliver::Outcome::Skipped,
                    error: None,
                });
                continue;
            }
            rollout::Action::Flash(step) => step,
        };
        let image = super::seal::flashable(
            ws,
            node,
            image,
            temp.path(),
            settings.build.build_time,
            step.join.as_deref(),
        )?;
        let job = Job {
            node: node.name.clone(),
            sha256: sums::digest_of(&image)?,
            image,
            destination: Box::new(turing_pi::Slot {
                board: slot.board.clone(),
                host: slot.bmc.clone(),
                slot: slot.slot,
                settings: bmc.clone(),
                skip_crc: settings.skip_crc,
            }),
        };
        let done = state
            .as_ref()
            .is_some_and(|s| s.is_done(&job.node, &job.sha256));
        if let Some(s) = state.as_mut()
            && !done
        {
            let pending = [(job.node.clone(), job.image.clone())];
            super::wait::before_flash(ws, &pending, settings.wait.as_ref(), s);
        }
        if let (rollout::Cluster::Up { admin, .. }, false) = (&cluster, done) {
            let question = match &step.reset {
                Some(lost) => format!(
                    "{lost}. Flash {} ({}) anyway?",
                    node.name,
                    job.image.display()
                ),
                None => format!(
                    "Drain and flash {} ({}) in the running cluster{}?",
                    node.name,
                    job.image.display(),
                    step.join
                        .as_deref()
                        .map(|u| format!(", joining it through {u}"))
                        .unwrap_or_default()
                ),
            };
            confirm.ask(&question)?;
            rollout::before_flash(admin, node, &step, &settings.rollout)?;
        }
        // Asked once: the question above already named the erase.
        let confirm = if cluster.is_up() {
            Confirm { yes: true }
        } else {
            confirm
        };
        let flashed = deliver::deliver_all(vec![job], confirm, state.as_mut())?;
        let skipped = flashed
            .iter()
            .all(|r| r.result == deliver::Outcome::Skipped);
        reports.extend(flashed);
        // Only an image imgbuild built (with a provenance record) can make a
        // cluster from these secrets.
        if node.k3s.role == crate::config::profile::Role::Server
            && !skipped
            && candidate.instance_id.is_some()
            && let Ok(s) = crate::secrets::Secrets::open_existing(&ws.paths.secrets)
        {
            s.mark_established(&format!("server {} flashed", node.name))?;
        }
        if let rollout::Cluster::Up { admin, .. } = &cluster
            && step.wait
            && !skipped
        {
            let back = rollout::after_flash(
                admin,
                node,
                &step,
                candidate.instance_id.as_deref(),
                &settings.rollout,
            );
            match back {
                Ok(()) => {}
                // `deploy --wait` reports every node's state next; nothing
                // after the node that did not come back is flashed.
                Err(e) if settings.wait.is_some() => {
                    tracing::warn!("{}; not flashing the remaining nodes", e.inner());
                    break;
                }
                Err(e) => return Err(e),
            }
        }
    }
    Ok(reports)
}
