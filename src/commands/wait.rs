//! `imgbuild wait [NODE...]` (and `deploy --wait`): wait until nodes have
//! joined and are Ready, then say so, or say per node what is wrong and what
//! to try next. Talks to the API as the least-privilege node reader, with a
//! certificate minted for this run only.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::{CommandError, Result, Workspace};
use crate::config::profile::{Node, Role};
use crate::deliver::state::{Before, DeployState};
use crate::kube::wait::{NodeState, Target, WaitOptions};
use crate::kube::{Api, ApiConfig, ApiError};
use crate::secrets::client::NODE_READER_USER;

#[derive(Debug, Clone)]
pub struct WaitSettings {
    pub timeout: Duration,
    pub interval: Duration,
    /// The API's URL instead of `https://<cluster.server>:6443`.
    pub server: Option<String>,
    /// Where the deploy state is (the images' directory).
    pub out_dir: PathBuf,
}

/// The API URL for the cluster: the override, else `cluster.server` on 6443.
pub fn api_url(ws: &Workspace, server: Option<&str>) -> String {
    server
        .map(|s| s.trim_end_matches('/').to_string())
        .unwrap_or_else(|| crate::kube::api_url(&ws.profiles.cluster.server))
}

/// An API client as the node reader, with a certificate valid for `validity`.
pub fn reader_api(ws: &Workspace, server: Option<&str>, validity: Duration) -> Result<Api> {
    let secrets = ws.secrets()?;
    let client = secrets.mint_client(NODE_READER_USER, None, validity, SystemTime::now())?;
    let cfg = ApiConfig {
        url: api_url(ws, server),
        server_ca_pem: secrets.existing_tls("server-ca.crt")?,
        client,
        request_timeout: Duration::from_secs(10),
    };
    Ok(Api::new(&cfg)?)
}

/// Before a deploy's flashes: records each image's instance ID and, with
/// `probe`, what the API says about each node now (its boot ID), so that
/// waiting afterwards can tell the re-flashed node from its old Node object.
pub fn before_flash(
    ws: &Workspace,
    jobs: &[(String, PathBuf)],
    probe: Option<&WaitSettings>,
    state: &mut DeployState,
) {
    let api =
        probe.and_then(
            |w| match reader_api(ws, w.server.as_deref(), Duration::from_secs(600)) {
                Ok(a) => Some(a),
                Err(e) => {
                    tracing::warn!(
                        "cannot ask the cluster about the nodes before flashing: {}",
                        e.inner()
                    );
                    None
                }
            },
        );
    let mut reachable = api.is_some();
    for (name, image) in jobs {
        let instance_id = image_instance_id(ws, image);
        let mut before = None;
        if reachable && let (Some(api), Ok(node)) = (&api, ws.node(name)) {
            match api.node(&node.hostname, Duration::from_secs(5)) {
                Ok(Some(n)) if !n.status.node_info.boot_id.is_empty() => {
                    before = Some(Before::BootId(n.status.node_info.boot_id.clone()))
                }
                Ok(Some(_)) => {}
                Ok(None) => before = Some(Before::NotRegistered),
                Err(e) => {
                    // One failure is enough: the API is down (a first deploy).
                    tracing::info!("before flashing: {e}; waiting will go by the flash time");
                    reachable = false;
                }
            }
        }
        state.prepare(name, instance_id, before);
    }
}

/// The cloud-init instance ID an image was built with (its provenance record).
pub fn image_instance_id(ws: &Workspace, image: &Path) -> Option<String> {
    match ws.open_artifact(image) {
        Ok(a) => a.provenance.map(|p| p.instance_id),
        Err(e) => {
            tracing::debug!("{}: no provenance: {e:#}", image.display());
            None
        }
    }
}

#[derive(Debug, Clone)]
pub struct NodeOutcome {
    pub node: String,
    /// The Kubernetes node name (hostname).
    pub kube_name: String,
    pub state: NodeState,
    /// What is wrong, when the node is not up.
    pub problem: Option<String>,
    /// What to try next.
    pub next: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct WaitReport {
    pub api: String,
    pub ready: usize,
    pub total: usize,
    pub elapsed_secs: u64,
    pub timeout_secs: u64,
    pub api_error: Option<String>,
    pub nodes: Vec<NodeOutcome>,
}

impl WaitReport {
    pub fn all_ready(&self) -> bool {
        self.ready == self.total
    }
}

/// Every node of the profiles, or those named (in profile order).
pub fn select<'a>(ws: &'a Workspace, names: &[String]) -> Result<Vec<&'a Node>> {
    if names.is_empty() {
        return Ok(ws.profiles.nodes.iter().collect());
    }
    names.iter().map(|n| ws.node(n)).collect()
}

/// Waits for `names` (every node when empty).
pub fn wait(ws: &Workspace, names: &[String], settings: &WaitSettings) -> Result<WaitReport> {
    let nodes = select(ws, names)?;
    let state = DeployState::load(&settings.out_dir);
    let targets: Vec<Target> = nodes
        .iter()
        .map(|n| Target {
            name: n.name.clone(),
            node_name: n.hostname.clone(),
            flash: state.delivery(&n.name).cloned(),
        })
        .collect();
    // Valid for the whole wait and a little after; never stored.
    let api = reader_api(
        ws,
        settings.server.as_deref(),
        settings.timeout + Duration::from_secs(600),
    )?;
    tracing::info!(
        "waiting up to {} for {} node(s) at {}",
        crate::util::duration::format_duration(settings.timeout),
        targets.len(),
        api.url()
    );
    let result = crate::kube::wait::wait(
        &api,
        &targets,
        &WaitOptions {
            timeout: settings.timeout,
            interval: settings.interval,
            heartbeat: Duration::from_secs(30),
        },
    );
    let init = ws
        .profiles
        .nodes
        .iter()
        .find(|n| n.k3s.cluster_init)
        .map(|n| n.name.as_str())
        .unwrap_or("the cluster-init server");
    // A server seen Ready: a cluster made from these secrets is up, and
    // flashing its servers blind is refused from now on.
    if nodes
        .iter()
        .zip(&result.states)
        .any(|(n, s)| n.k3s.role == crate::config::profile::Role::Server && s.is_ready())
    {
        ws.secrets()?
            .mark_established("a server seen Ready")
            .map_err(CommandError::Failed)?;
    }
    let mut outcomes = Vec::new();
    for (node, state) in nodes.iter().zip(result.states) {
        let (problem, next) =
            diagnose(ws, node, &state, result.api_error.as_ref(), api.url(), init);
        outcomes.push(NodeOutcome {
            node: node.name.clone(),
            kube_name: node.hostname.clone(),
            state,
            problem,
            next,
        });
    }
    Ok(WaitReport {
        api: api.url().to_string(),
        ready: outcomes.iter().filter(|o| o.state.is_ready()).count(),
        total: outcomes.len(),
        elapsed_secs: result.elapsed.as_secs(),
        timeout_secs: settings.timeout.as_secs(),
        api_error: result.api_error.map(|e| e.to_string()),
        nodes: outcomes,
    })
}

/// Where to SSH to a node: its static address, node IP, FQDN or hostname.
pub fn ssh_host(node: &Node) -> String {
    node.network
        .address
        .map(|a| a.addr.to_string())
        .or_else(|| node.k3s.node_ip.map(|i| i.to_string()))
        .or_else(|| node.fqdn.clone())
        .unwrap_or_else(|| node.hostname.clone())
}

fn ssh_hint(ws: &Workspace, node: &Node, what: &str) -> String {
    let unit = match node.k3s.role {
        Role::Server => "k3s",
        Role::Agent => "k3s-agent",
    };
    format!(
        "ssh with the pinned host key, then read k3s's log{what}: ssh -o StrictHostKeyChecking=yes -o UserKnownHostsFile=<(imgbuild secrets --known-hosts) {}@{} sudo journalctl -b -u {unit} --no-pager -n 100",
        ws.profiles.cluster.admin.user,
        ssh_host(node)
    )
}

fn console_hint(node: &Node) -> String {
    match &node.turing_pi {
        Some(s) => {
            // The BMC's serial devices for slots 1-4.
            let tty = match s.slot {
                1 => "ttyS2",
                2 => "ttyS1",
                3 => "ttyS4",
                _ => "ttyS5",
            };
            let host = s
                .bmc
                .rsplit_once(':')
                .filter(|(_, p)| p.chars().all(|c| c.is_ascii_digit()))
                .map(|(h, _)| h)
                .unwrap_or(&s.bmc);
            format!(
                "watch its serial console through the BMC (did it boot, did cloud-init finish?): tpi --host {host} uart --node {} get, or ssh root@{host} then microcom -s 115200 /dev/{tty}",
                s.slot
            )
        }
        None => "look at its console (screen, or the machine's own remote console): did it boot, did cloud-init finish?".into(),
    }
}

/// What is wrong with a node that is not up, and what to try next.
fn diagnose(
    ws: &Workspace,
    node: &Node,
    state: &NodeState,
    api_error: Option<&ApiError>,
    url: &str,
    init: &str,
) -> (Option<String>, Vec<String>) {
    let secrets = ws.paths.secrets.display();
    match state {
        NodeState::Ready { .. } => (None, Vec::new()),
        NodeState::Unknown => match api_error {
            Some(e @ ApiError::ServerCertificate { .. }) => (
                Some(format!("certificate mismatch: {e}")),
                vec![
                    format!(
                        "the cluster at {url} was not created from the CA in {secrets}: re-flash {init} with an image built from these secrets, or pass --secrets with the directory the cluster was built from"
                    ),
                    format!(
                        "if another machine answers at {url}, fix cluster.server in the profiles (or --server)"
                    ),
                ],
            ),
            Some(e @ ApiError::ClientRejected { .. }) => (
                Some(format!(
                    "certificate mismatch: {e}: the API does not trust this cluster's client CA ({secrets}/cluster/tls/client-ca.crt)"
                )),
                vec![format!(
                    "the cluster at {url} was created from other secrets: re-flash {init} with an image built from {secrets}, or pass --secrets with the right directory"
                )],
            ),
            Some(e @ ApiError::Forbidden { .. }) => (
                Some(format!(
                    "the API refused to show nodes to {NODE_READER_USER}: {e}"
                )),
                vec![format!(
                    "k3s applies /var/lib/rancher/k3s/server/manifests/imgbuild-node-reader.yaml on {init} at start; an image built before imgbuild baked it lacks it: rebuild and re-flash, or apply it with the admin kubeconfig (imgbuild render {init} --contents shows it)"
                )],
            ),
            Some(e) => (
                Some(format!("API unreachable: {e}")),
                vec![
                    format!("the API is served by {init}: check it first"),
                    console_hint(node),
                    ssh_hint(ws, node, ""),
                ],
            ),
            None => (
                Some("API unreachable: no answer before the timeout".into()),
                vec!["wait longer (--timeout)".into()],
            ),
        },
        NodeState::NotRegistered => (
            Some(format!(
                "never registered: the API has no node named {}",
                node.hostname
            )),
            vec![
                console_hint(node),
                ssh_hint(
                    ws,
                    node,
                    " (the join error: server address, token, CA hash)",
                ),
            ],
        ),
        NodeState::NotReady { .. } => (
            Some(format!("registered but not Ready: {}", state.describe())),
            vec![
                ssh_hint(ws, node, ""),
                format!(
                    "kubectl --kubeconfig $(imgbuild kubeconfig) describe node {}",
                    node.hostname
                ),
                console_hint(node),
            ],
        ),
        NodeState::Stale { detail } => (
            Some(format!(
                "not back since the flash: its Node object is from before it ({detail})"
            )),
            vec![
                console_hint(node),
                "check that its slot is powered on: imgbuild bmc status".into(),
                ssh_hint(ws, node, ""),
            ],
        ),
    }
}
