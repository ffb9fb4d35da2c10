//! Flashing nodes of a cluster that may be running, without losing its data
//! or its quorum. Before anything is flashed, the cluster's API is asked
//! (admin identity, pinned to the cluster CA) what runs; every node then
//! gets a decision, and any refusal stops the run before the first flash:
//!
//! - a cluster that answers: servers first, one at a time, each only when
//!   the etcd quorum allows taking it out (k3s member removal through the
//!   API), re-made at flash time to join the cluster instead of founding it;
//!   then agents; each cordoned and drained before, waited for (Ready, booted
//!   since the flash, voting for a server), uncordoned and tagged with its
//!   image's instance after; a node already Ready with its image's instance
//!   is skipped;
//! - the only server is refused (re-flashing it empties the datastore)
//!   unless its k3s data lives on a data disk, or the user says
//!   `--reset-cluster`;
//! - a cluster that does not answer but was up before (recorded in the
//!   secrets directory) has its servers refused unless `--new-cluster`;
//!   a cluster never seen up is new: day one goes ahead as before.

use std::time::{Duration, Instant, SystemTime};

use anyhow::anyhow;

use super::{CommandError, Result, Workspace};
use crate::config::profile::{Node, Role};
use crate::kube::admin::AdminApi;
use crate::kube::cluster::{ClusterView, QuorumOk};
use crate::kube::drain::DrainOptions;
use crate::kube::skew::{self, Change, KubeVersion};
use crate::kube::{ApiConfig, Health};

/// How a rolling flash treats a running cluster.
#[derive(Debug, Clone)]
pub struct RolloutSettings {
    /// Re-flash nodes that already run their image's instance.
    pub force: bool,
    /// The API does not answer and the user starts a new cluster anyway.
    pub new_cluster: bool,
    /// Re-flash the only server although its datastore is lost.
    pub reset_cluster: bool,
    pub drain: DrainOptions,
    /// How long a flashed node may take to be Ready (and voting) again.
    pub node_timeout: Duration,
    pub interval: Duration,
    /// The API's URL instead of `https://<cluster.server>:6443`.
    pub server: Option<String>,
}

impl Default for RolloutSettings {
    fn default() -> Self {
        RolloutSettings {
            force: false,
            new_cluster: false,
            reset_cluster: false,
            drain: DrainOptions::default(),
            node_timeout: Duration::from_secs(20 * 60),
            interval: Duration::from_secs(5),
            server: None,
        }
    }
}

/// What the API said before anything was flashed.
pub enum Cluster {
    /// It answers: its Nodes as they are now.
    Up { admin: AdminApi, view: ClusterView },
    /// It does not answer, and nothing says it ever ran: day one.
    New { why: String },
    /// It does not answer, but it was up before.
    Down { why: String, since: String },
}

impl Cluster {
    pub fn is_up(&self) -> bool {
        matches!(self, Cluster::Up { .. })
    }
}

/// What happens to one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Ready with its image's instance already (or, with no cluster to ask,
    /// flashed with this image by an earlier run).
    Skip {
        reason: String,
    },
    Flash(FlashStep),
    /// An earlier, interrupted run flashed this image: only what comes after
    /// the flash is left (wait, uncordon, record the instance).
    Finish(FlashStep),
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct FlashStep {
    /// Cordon first, and uncordon once back (registered in a running cluster).
    pub drain: bool,
    /// Evict its pods after cordoning. Not for a node that is not Ready: no
    /// kubelet stops them there, so they would never go (it is flashed as
    /// it is).
    pub evict: bool,
    /// Remove its etcd member first.
    pub remove_member: bool,
    /// A server joins the running cluster through this API URL.
    pub join: Option<String>,
    /// Wait until it is Ready (and voting) again, then uncordon and record
    /// its instance.
    pub wait: bool,
    /// Its boot ID before the flash, to tell the re-flashed node.
    pub boot_before: Option<String>,
    /// A server of a running cluster: must vote again before the next one.
    pub voter: bool,
    /// The only server, re-flashed without its data (`--reset-cluster`):
    /// what is lost, for the confirmation.
    pub reset: Option<String>,
}

/// The admin API client, pinned to the cluster's server CA.
fn admin_api(ws: &Workspace, server: Option<&str>) -> anyhow::Result<AdminApi> {
    use crate::secrets::client::{ADMIN_GROUP, ADMIN_USER};
    let secrets = crate::secrets::Secrets::open_existing(&ws.paths.secrets)?;
    let client = secrets.mint_client(
        ADMIN_USER,
        Some(ADMIN_GROUP),
        Duration::from_secs(2 * 3600),
        SystemTime::now(),
    )?;
    AdminApi::new(&ApiConfig {
        url: super::wait::api_url(ws, server),
        server_ca_pem: secrets.existing_tls("server-ca.crt")?,
        client,
        request_timeout: Duration::from_secs(10),
    })
}

/// Asks the cluster's API what runs. Without a secrets directory (or its CA)
/// no cluster can have been made from it: the cluster is new.
pub fn preflight(ws: &Workspace, settings: &RolloutSettings) -> Cluster {
    let secrets = crate::secrets::Secrets::open_existing(&ws.paths.secrets).ok();
    if secrets
        .as_ref()
        .is_none_or(|s| s.existing_tls("client-ca.crt").is_err())
    {
        return Cluster::New {
            why: format!(
                "{} holds no cluster CA: no cluster was made from it",
                ws.paths.secrets.display()
            ),
        };
    }
    let since = secrets.and_then(|s| s.established());
    let why = match admin_api(ws, settings.server.as_deref()) {
        Err(e) => format!("{e:#}"),
        Ok(admin) => match admin.readyz(Duration::from_secs(10)) {
            Ok(Health::Ready) => match ClusterView::fetch(&admin, Duration::from_secs(20)) {
                Ok(view) => {
                    tracing::info!(
                        "the cluster's API answers: {} node(s), {} etcd voter(s)",
                        view.nodes.len(),
                        view.voters().count()
                    );
                    return Cluster::Up { admin, view };
                }
                Err(e) => e.to_string(),
            },
            Ok(Health::NotReady(why)) => format!("the API is not ready: {why}"),
            Err(e) => e.to_string(),
        },
    };
    match since {
        Some(since) => Cluster::Down { why, since },
        None => {
            tracing::info!("no cluster answers ({why}) and none was seen up before: a new cluster");
            Cluster::New { why }
        }
    }
}

/// A node to flash, with its image's instance ID.
pub struct Candidate<'a> {
    pub node: &'a Node,
    pub instance_id: Option<String>,
    /// The deploy state records this very image flashed onto the node by an
    /// earlier run.
    pub delivered: Option<Delivered>,
}

/// What the deploy state says about an earlier flash of the same image.
#[derive(Debug, Clone, Default)]
pub struct Delivered {
    /// The node's boot ID before that flash, when it was known.
    pub boot_before: Option<String>,
}

/// Every node's action, in the order they run (servers first when the
/// cluster is up); the first refusal is an error and nothing is flashed.
pub fn decide<'a>(
    ws: &Workspace,
    candidates: Vec<Candidate<'a>>,
    cluster: &Cluster,
    settings: &RolloutSettings,
) -> Result<Vec<(Candidate<'a>, Action)>> {
    let mut ordered = candidates;
    if cluster.is_up() {
        // Stable: slot order within servers and within agents.
        ordered.sort_by_key(|c| c.node.k3s.role != Role::Server);
    }
    if let Cluster::Up { view, .. } = cluster {
        check_skew(ws, &ordered, view, settings)?;
    }
    let mut out = Vec::new();
    for c in ordered {
        let action = decide_one(ws, &c, cluster, settings)?;
        out.push((c, action));
    }
    Ok(out)
}

fn refuse(msg: String) -> CommandError {
    CommandError::Failed(anyhow!(msg))
}

fn decide_one(
    ws: &Workspace,
    c: &Candidate,
    cluster: &Cluster,
    settings: &RolloutSettings,
) -> Result<Action> {
    let node = c.node;
    let server = node.k3s.role == Role::Server;
    let resumed = c.delivered.as_ref().filter(|_| !settings.force);
    if resumed.is_some() && !cluster.is_up() {
        return Ok(Action::Skip {
            reason: "already flashed with this image by an earlier run (--force flashes it again)"
                .into(),
        });
    }
    let view = match cluster {
        Cluster::New { .. } => return Ok(Action::Flash(FlashStep::default())),
        Cluster::Down { why, since } => {
            if server && !settings.new_cluster {
                return Err(refuse(format!(
                    "refusing to flash server {}: the cluster was up before ({since}) but its API does not answer now ({why}); \
                     flashing a server blind could wipe the datastore. Bring the API back and run again, or restore from a snapshot, \
                     or pass --new-cluster to start the cluster over (its data is lost)",
                    node.name
                )));
            }
            return Ok(Action::Flash(FlashStep::default()));
        }
        Cluster::Up { view, .. } => view,
    };
    let found = view.get(&node.hostname);
    if let Some(n) = found
        && !settings.force
        && n.ready
        && c.instance_id.is_some()
        && n.instance_id == c.instance_id
        && (!n.etcd || n.voter == Some(true))
    {
        return Ok(Action::Skip {
            reason: format!(
                "Ready and already runs instance {} (--force re-flashes it)",
                c.instance_id.as_deref().unwrap_or_default()
            ),
        });
    }
    if let Some(d) = resumed {
        // Flashed by an interrupted run: wait for it, uncordon it (when the
        // run got that far) and record its instance; a server's vote is
        // waited for where k3s reports it.
        return Ok(Action::Finish(FlashStep {
            drain: found.is_some_and(|n| n.unschedulable),
            wait: true,
            boot_before: d.boot_before.clone(),
            voter: server && found.is_some_and(|n| n.voter.is_some()),
            ..FlashStep::default()
        }));
    }
    let step = FlashStep {
        drain: found.is_some(),
        evict: found.is_some_and(|n| n.ready),
        wait: true,
        boot_before: found.map(|n| n.boot_id.clone()).filter(|b| !b.is_empty()),
        ..FlashStep::default()
    };
    if !server {
        return Ok(Action::Flash(step));
    }
    decide_server(ws, node, view, step, settings).map(Action::Flash)
}

/// Whether a data disk holds k3s's embedded etcd, so that it survives a
/// flash: mounted at its directory or one above it (a disk for, say,
/// local-path volumes under /var/lib/rancher/k3s/storage does not).
pub fn keeps_etcd(node: &Node) -> bool {
    const ETCD: &str = "/var/lib/rancher/k3s/server/db";
    node.storage.iter().any(|d| {
        let m = d.mount.trim_end_matches('/');
        m == ETCD || (!m.is_empty() && ETCD.starts_with(&format!("{m}/")))
    })
}

/// A server of a running cluster: the quorum decides whether its etcd
/// member may go, and it is re-made to join the cluster.
fn decide_server(
    ws: &Workspace,
    node: &Node,
    view: &ClusterView,
    mut step: FlashStep,
    settings: &RolloutSettings,
) -> Result<FlashStep> {
    use crate::kube::cluster::QuorumRefusal;
    step.voter = true;
    let keeps_data = keeps_etcd(node);
    let found = view.get(&node.hostname);
    let other_servers = view.servers().filter(|n| n.name != node.hostname).count();
    let quorum = if found.is_some() && other_servers == 0 {
        // Registered and alone: the datastore (embedded etcd, or SQLite on
        // a server without `cluster-init`) lives on this node only.
        Err(QuorumRefusal::SingleMember {
            node: node.hostname.clone(),
        })
    } else {
        view.check_quorum(&node.hostname)
    };
    match quorum {
        Ok(QuorumOk::NotAMember) | Ok(QuorumOk::AlreadyRemoved { .. }) => {}
        Ok(QuorumOk::Safe { .. }) | Ok(QuorumOk::RemovalUnderWay) => {
            // With its etcd on a data disk the server keeps its member and
            // data across the flash, as after a reboot: removing the member
            // would leave it a removed member's data to start on, which k3s
            // refuses.
            step.remove_member = !keeps_data;
        }
        // Starts again on its kept data, as after a reboot.
        Err(QuorumRefusal::SingleMember { .. }) if keeps_data => return Ok(step),
        Err(QuorumRefusal::SingleMember { .. }) if settings.reset_cluster => {
            // The datastore goes with the flash: the Node object too, so
            // there is nothing to drain or uncordon, and its boot is new.
            step.voter = false;
            step.drain = false;
            step.boot_before = None;
            step.reset = Some(format!(
                "{} is the only server of cluster {}: re-flashing it deletes the cluster's datastore (every API object; {} node(s) registered) and the cluster starts empty",
                node.name,
                ws.profiles.cluster.name,
                view.nodes.len()
            ));
            return Ok(step);
        }
        Err(QuorumRefusal::SingleMember { .. }) => {
            return Err(refuse(format!(
                "refusing to flash {}: it is the cluster's only server, and a re-flash starts an empty datastore \
                 (every object of cluster {} is lost: {} node(s) registered). To keep the data, put k3s's data on a data disk \
                 (a `storage:` entry mounted at /var/lib/rancher in {}) so that etcd survives the flash; to start over, pass --reset-cluster",
                node.name,
                ws.profiles.cluster.name,
                view.nodes.len(),
                node.file.display()
            )));
        }
        Err(e) => {
            return Err(refuse(format!(
                "refusing to flash server {}: {e}",
                node.name
            )));
        }
    }
    step.join = Some(join_url(ws, view, &node.hostname).ok_or_else(|| {
        refuse(format!(
            "refusing to flash server {}: no other Ready voting server to join through",
            node.name
        ))
    })?);
    Ok(step)
}

/// The API a re-flashed server joins through: the VIP, else a Ready voter
/// other than itself (never the node itself: without a VIP,
/// `cluster.server` is often the very node being flashed).
fn join_url(ws: &Workspace, view: &ClusterView, except: &str) -> Option<String> {
    if let Some(vip) = &ws.profiles.cluster.vip {
        return Some(crate::kube::api_url(&vip.address.to_string()));
    }
    let target = view.join_targets(except).into_iter().next()?;
    let address = target
        .internal_ip
        .clone()
        .or_else(|| {
            ws.profiles
                .nodes
                .iter()
                .find(|n| n.hostname == target.name)
                .map(|n| {
                    n.network
                        .address
                        .map(|a| a.addr.to_string())
                        .or(n.fqdn.clone())
                        .unwrap_or_else(|| n.hostname.clone())
                })
        })
        .unwrap_or_else(|| target.name.clone());
    Some(crate::kube::api_url(&address))
}

/// Refuses a rollout the version-skew policy forbids.
fn check_skew(
    ws: &Workspace,
    ordered: &[Candidate],
    view: &ClusterView,
    settings: &RolloutSettings,
) -> Result<()> {
    let Some(to) = crate::config::k3s::Version::parse(&ws.profiles.cluster.k3s.version) else {
        return Ok(());
    };
    let to = KubeVersion::from(&to);
    let changes: Vec<Change> = ordered
        .iter()
        .map(|c| Change {
            name: c.node.hostname.clone(),
            role: match c.node.k3s.role {
                Role::Server => skew::Role::Server,
                Role::Agent => skew::Role::Agent,
            },
            to,
        })
        .collect();
    let _ = settings;
    skew::check_rollout(&view.members(), &changes)
        .map(|_| ())
        .map_err(|e| refuse(format!("refusing the deploy: {e}")))
}

/// Cordons and drains `node`, and takes its etcd member out, as `step` says.
/// Returns whether it cordoned the node: a Node that is gone (with the
/// datastore of a reset cluster) has nothing to drain.
pub fn before_flash(
    admin: &AdminApi,
    node: &Node,
    step: &FlashStep,
    settings: &RolloutSettings,
) -> Result<bool> {
    let name = &node.hostname;
    let left = |what: &str, e: &dyn std::fmt::Display| {
        refuse(format!(
            "{name}: {what} failed: {e}. {name} is left cordoned and nothing was flashed; \
             run the same command again to continue, or `kubectl uncordon {name}`"
        ))
    };
    let mut cordoned = false;
    if step.drain {
        match admin.cordon(name, Duration::from_secs(20)) {
            Ok(_) => cordoned = true,
            Err(e) if e.status() == Some(404) => {
                tracing::info!("{name}: no such Node any more; nothing to drain");
            }
            Err(e) => {
                return Err(refuse(format!(
                    "{name}: cordoning failed: {e}; nothing was flashed"
                )));
            }
        }
    }
    if cordoned && !step.evict {
        tracing::info!(
            "{name}: not Ready, so its pods cannot be evicted (no kubelet stops them); flashing it as it is"
        );
    }
    if cordoned && step.evict {
        let report = crate::kube::drain::drain(admin, name, &settings.drain)
            .map_err(|e| left("draining", &e))?;
        if !report.skipped.is_empty() {
            tracing::info!(
                "{name}: left on the node: {}",
                report
                    .skipped
                    .iter()
                    .map(|(p, why)| format!("{p} ({why})"))
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
    }
    if step.remove_member {
        crate::kube::etcd::remove_member(admin, name, settings.node_timeout, settings.interval)
            .map_err(|e| left("removing its etcd member", &e))?;
    }
    Ok(cordoned)
}

/// What a node is left with when the rollout stops after `step` began: said
/// in every error and on an interrupt.
pub fn left_behind(node: &Node, step: &FlashStep) -> Option<String> {
    let name = &node.hostname;
    match (step.drain, step.remove_member) {
        (false, false) => None,
        (true, false) => Some(format!(
            "{name} is left cordoned: run the same command again to continue, or `kubectl uncordon {name}` when it is Ready"
        )),
        (_, true) => Some(format!(
            "{name} is left {}out of etcd (its member was removed): run the same command again to flash it so it joins again",
            if step.drain { "cordoned and " } else { "" }
        )),
    }
}

/// Waits until the flashed node is back (Ready, booted since the flash, and
/// voting for a server), then uncordons it and records its instance.
pub fn after_flash(
    admin: &AdminApi,
    node: &Node,
    step: &FlashStep,
    instance_id: Option<&str>,
    settings: &RolloutSettings,
) -> Result<()> {
    let name = &node.hostname;
    let start = Instant::now();
    let back = if step.voter {
        crate::kube::etcd::wait_voter(
            admin,
            name,
            step.boot_before.as_deref(),
            settings.node_timeout,
            settings.interval,
        )
        .map(|_| ())
        .map_err(|e| e.to_string())
    } else {
        let before = step.boot_before.clone();
        crate::kube::wait::until_node(
            admin,
            name,
            start + settings.node_timeout,
            settings.interval,
            |n| {
                n.is_some_and(|n| {
                    n.is_ready()
                        && before
                            .as_deref()
                            .is_none_or(|b| n.status.node_info.boot_id != b)
                })
            },
        )
        .map(|_| ())
        .map_err(|e| match e {
            crate::kube::wait::UntilError::Api(e) => e.to_string(),
            crate::kube::wait::UntilError::TimedOut { .. } => format!(
                "not Ready with a new boot after {}",
                crate::util::duration::format_duration(settings.node_timeout)
            ),
        })
    };
    back.map_err(|e| {
        refuse(format!(
            "{name} was flashed but did not come back: {e}. The deploy stops here (the next nodes are untouched); \
             see `imgbuild wait {}` for why{}",
            node.name,
            if step.drain {
                format!(". {name} is left cordoned: `kubectl uncordon {name}` once it is back, or run the same command again")
            } else {
                String::new()
            }
        ))
    })?;
    if step.drain {
        admin.uncordon(name, Duration::from_secs(20)).map_err(|e| {
            refuse(format!(
                "{name}: uncordoning failed: {e}; run `kubectl uncordon {name}`"
            ))
        })?;
    }
    if let Some(id) = instance_id {
        admin
            .record_instance(name, id, Duration::from_secs(20))
            .map_err(|e| refuse(format!("{name}: recording its instance failed: {e}")))?;
    }
    tracing::info!(
        "{name}: back after {}",
        crate::util::duration::format_duration(start.elapsed())
    );
    Ok(())
}
