//! `imgbuild flash NODE` and `imgbuild deploy`: build what is missing, then
//! deliver each node's image to its Turing Pi slot, in slot order.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::bmc::BmcOptions;
use super::build::{BuildSettings, build_targets};
use super::wait::WaitReport;
use super::{CommandError, Paths, Result, Workspace, rollout};
use crate::artifact::{Format, Target, sums};
use crate::deliver::state::Before;
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
/// time (servers first in a running cluster, see `rollout`); builds a node's
/// image when it is missing. `images` overrides the image of a node. With
/// `deploy`, progress is recorded in the output directory, so that a run
/// that stopped continues where it did.
pub fn flash(
    ws: &Workspace,
    nodes: &[String],
    images: &BTreeMap<String, PathBuf>,
    settings: &FlashSettings,
    deploy: bool,
) -> Result<Vec<Report>> {
    let planned = plan(ws, nodes, images, settings)?;
    let out_dir = &settings.build.out_dir;
    let state = if deploy {
        std::fs::create_dir_all(out_dir)
            .map_err(|e| anyhow::anyhow!("creating {}: {e}", out_dir.display()))?;
        Some(DeployState::load(out_dir))
    } else {
        None
    };
    let mut candidates = Vec::new();
    for p in &planned {
        candidates.push(candidate(ws, p, state.as_ref())?);
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
    let mut run = Run {
        ws,
        settings,
        bmc: settings.bmc.settings(ws)?,
        cluster,
        state,
        temp: temp.path().to_owned(),
    };
    let mut reports = Vec::new();
    for (candidate, action) in decided {
        let p = planned
            .iter()
            .find(|p| p.node.name == candidate.node.name)
            .expect("every decided node was planned");
        let result = match action {
            rollout::Action::Skip { reason } => {
                tracing::info!("{}: {reason}; skipping", p.node.name);
                reports.push(p.skipped()?);
                continue;
            }
            rollout::Action::Finish(step) => {
                tracing::info!(
                    "{}: already flashed with this image by an earlier run; finishing it",
                    p.node.name
                );
                reports.push(p.skipped()?);
                run.after(&candidate, &step)
            }
            rollout::Action::Flash(step) => run.flash_one(p, &candidate, step, &mut reports),
        };
        match result {
            Ok(()) => {}
            // `deploy --wait` reports every node's state next; nothing after
            // the node that did not come back is flashed.
            Err(Stop::NotBack(e)) if settings.wait.is_some() => {
                tracing::warn!("{}; not flashing the remaining nodes", e.inner());
                break;
            }
            Err(Stop::NotBack(e) | Stop::Failed(e)) => return Err(e),
        }
    }
    Ok(reports)
}

/// One node to flash: its slot and the image for it.
struct Planned<'w> {
    node: &'w crate::config::profile::Node,
    slot: crate::config::profile::Slot,
    image: PathBuf,
}

impl Planned<'_> {
    fn destination(&self) -> String {
        format!("{}/slot {}", self.slot.board, self.slot.slot)
    }

    fn skipped(&self) -> Result<Report> {
        Ok(Report {
            node: self.node.name.clone(),
            destination: self.destination(),
            image: self.image.clone(),
            sha256: sums::digest_of(&self.image)?,
            result: deliver::Outcome::Skipped,
            error: None,
        })
    }
}

/// The named nodes in slot order, each with its image; builds the missing ones.
fn plan<'w>(
    ws: &'w Workspace,
    nodes: &[String],
    images: &BTreeMap<String, PathBuf>,
    settings: &FlashSettings,
) -> Result<Vec<Planned<'w>>> {
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
    let mut missing = Vec::new();
    let mut planned = Vec::new();
    for (node, slot) in chosen {
        let image = match images.get(&node.name) {
            Some(p) => p.clone(),
            None => {
                let t = Target::in_dir(
                    &settings.build.out_dir,
                    &node.name,
                    &node.board,
                    Format::Raw,
                );
                if !t.path.is_file() {
                    tracing::info!("{} does not exist; building it", t.path.display());
                    missing.push(t.clone());
                }
                t.path
            }
        };
        planned.push(Planned { node, slot, image });
    }
    if !missing.is_empty() {
        build_targets(ws, &missing, &settings.build)?;
    }
    Ok(planned)
}

/// A node for the rollout to decide about: its image's instance, and whether
/// an earlier run of this deploy flashed this very (raw, sealed) image.
fn candidate<'w>(
    ws: &Workspace,
    p: &Planned<'w>,
    state: Option<&DeployState>,
) -> Result<rollout::Candidate<'w>> {
    let art = ws.open_artifact(&p.image)?;
    let mut delivered = None;
    if let Some(s) = state
        && art.is_raw()
        && !art.is_unsealed()
        && s.delivered(&p.node.name).is_some()
        && s.is_done(&p.node.name, &sums::digest_of(&p.image)?)
    {
        let boot_before = match s.delivery(&p.node.name).and_then(|d| d.before.clone()) {
            Some(Before::BootId(b)) => Some(b),
            _ => None,
        };
        delivered = Some(rollout::Delivered { boot_before });
    }
    Ok(rollout::Candidate {
        node: p.node,
        instance_id: art.provenance.map(|p| p.instance_id),
        delivered,
    })
}

/// Why the rollout stopped at a node.
enum Stop {
    /// It was flashed but did not come back in time.
    NotBack(CommandError),
    Failed(CommandError),
}

impl From<CommandError> for Stop {
    fn from(e: CommandError) -> Stop {
        Stop::Failed(e)
    }
}

impl From<anyhow::Error> for Stop {
    fn from(e: anyhow::Error) -> Stop {
        Stop::Failed(e.into())
    }
}

/// What every node's flash shares.
struct Run<'w, 's> {
    ws: &'w Workspace,
    settings: &'s FlashSettings,
    bmc: crate::deliver::turing_pi::BmcSettings,
    cluster: rollout::Cluster,
    state: Option<DeployState>,
    temp: PathBuf,
}

impl Run<'_, '_> {
    /// Flashes one node: in a running cluster with what comes before (ask,
    /// cordon, drain, etcd) and after (wait, uncordon, record).
    fn flash_one(
        &mut self,
        p: &Planned,
        candidate: &rollout::Candidate,
        mut step: rollout::FlashStep,
        reports: &mut Vec<Report>,
    ) -> std::result::Result<(), Stop> {
        let (ws, settings, node) = (self.ws, self.settings, p.node);
        let image = super::seal::flashable(
            ws,
            node,
            &p.image,
            &self.temp,
            settings.build.build_time,
            step.join.as_deref(),
        )?;
        let job = Job {
            node: node.name.clone(),
            sha256: sums::digest_of(&image)?,
            image,
            destination: Box::new(turing_pi::Slot {
                board: p.slot.board.clone(),
                host: p.slot.bmc.clone(),
                slot: p.slot.slot,
                settings: self.bmc.clone(),
                skip_crc: settings.skip_crc,
            }),
        };
        let up = self.cluster.is_up();
        // Without a running cluster, a run that stopped skips what it
        // flashed already (sealed copies too); a running cluster has decided.
        let done = !up
            && !settings.rollout.force
            && self
                .state
                .as_ref()
                .is_some_and(|s| s.is_done(&job.node, &job.sha256));
        if let Some(s) = self.state.as_mut()
            && !done
        {
            s.forget(&job.node);
            match &self.cluster {
                rollout::Cluster::Up { .. } => s.prepare(
                    &job.node,
                    candidate.instance_id.clone(),
                    match &step.boot_before {
                        Some(b) => Some(Before::BootId(b.clone())),
                        None if !step.drain => Some(Before::NotRegistered),
                        None => None,
                    },
                ),
                _ => {
                    let pending = [(job.node.clone(), job.image.clone())];
                    super::wait::before_flash(ws, &pending, settings.wait.as_ref(), s);
                }
            }
        }
        let confirm = Confirm { yes: settings.yes };
        let mut _left = None;
        if let (rollout::Cluster::Up { admin, .. }, false) = (&self.cluster, done) {
            confirm
                .ask(&question(node, &job.image, &step))
                .map_err(CommandError::from)?;
            // Said on an interrupt from here until the node is back.
            _left = rollout::left_behind(node, &step).map(crate::util::cleanup::note);
            step.drain = rollout::before_flash(admin, node, &step, &settings.rollout)?;
        }
        // Asked once: the question above already named the erase.
        let confirm = if up { Confirm { yes: true } } else { confirm };
        let flashed = deliver::deliver_all(vec![job], confirm, self.state.as_mut())
            .map_err(|e| self.stopped(node, &step, e.into()))?;
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
        if up && step.wait && !skipped {
            self.after(candidate, &step)?;
        }
        Ok(())
    }

    /// After the flash in a running cluster: wait, uncordon, record.
    fn after(
        &self,
        candidate: &rollout::Candidate,
        step: &rollout::FlashStep,
    ) -> std::result::Result<(), Stop> {
        let rollout::Cluster::Up { admin, .. } = &self.cluster else {
            return Ok(());
        };
        rollout::after_flash(
            admin,
            candidate.node,
            step,
            candidate.instance_id.as_deref(),
            &self.settings.rollout,
        )
        .map_err(Stop::NotBack)
    }

    /// A flash that failed after the node was taken out: the error says
    /// what the node is left with.
    fn stopped(
        &self,
        node: &crate::config::profile::Node,
        step: &rollout::FlashStep,
        e: CommandError,
    ) -> Stop {
        match rollout::left_behind(node, step).filter(|_| self.cluster.is_up()) {
            Some(left) => Stop::Failed(CommandError::Failed(anyhow::anyhow!(
                "{:#}\n{left}",
                e.inner()
            ))),
            None => Stop::Failed(e),
        }
    }
}

/// The confirmation before a node of a running cluster is taken out.
fn question(
    node: &crate::config::profile::Node,
    image: &std::path::Path,
    step: &rollout::FlashStep,
) -> String {
    match &step.reset {
        Some(lost) => format!("{lost}. Flash {} ({}) anyway?", node.name, image.display()),
        None => format!(
            "Drain and flash {} ({}) in the running cluster{}?",
            node.name,
            image.display(),
            step.join
                .as_deref()
                .map(|u| format!(", joining it through {u}"))
                .unwrap_or_default()
        ),
    }
}
