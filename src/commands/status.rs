//! `imgbuild status`: one row per node (board and slot, the image last
//! flashed vs the one a build would make now, reachable, registered, Ready,
//! k3s version, roles) and the API's health. Every probe is independent, so
//! the table fills in what it can with part of the cluster down.

use std::time::Duration;

use super::wait::{WaitSettings, reader_api, ssh_host};
use super::{Result, Workspace};
use crate::deliver::state::DeployState;
use crate::kube::{ApiError, Health};

#[derive(Debug, Clone)]
pub struct NodeRow {
    pub node: String,
    pub board: String,
    /// `tp1/2` for a Turing Pi slot.
    pub slot: Option<String>,
    /// sha256 of the image last flashed (deploy state).
    pub flashed_sha256: Option<String>,
    pub flashed_at: Option<u64>,
    /// Whether a build now would make a different image than the one flashed
    /// (by instance ID); `None` when unknown.
    pub stale: Option<bool>,
    /// SSH (port 22) answered.
    pub reachable: bool,
    /// `None` when the API could not be asked.
    pub registered: Option<bool>,
    /// The Ready condition's status (`True`, `False`, `Unknown`).
    pub ready: Option<String>,
    pub version: Option<String>,
    pub roles: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct ClusterStatus {
    pub cluster: String,
    pub api: String,
    /// `ready`, `not ready: <checks>` or the error.
    pub health: String,
    pub api_version: Option<String>,
    pub nodes: Vec<NodeRow>,
}

/// A TCP connection to port 22 within `timeout`, for each address at once.
fn reachable(hosts: &[String], timeout: Duration) -> Vec<bool> {
    use std::net::{TcpStream, ToSocketAddrs};
    std::thread::scope(|s| {
        let handles: Vec<_> = hosts
            .iter()
            .map(|h| {
                s.spawn(move || {
                    let host = if h.parse::<std::net::Ipv6Addr>().is_ok() {
                        format!("[{h}]:22")
                    } else {
                        format!("{h}:22")
                    };
                    host.to_socket_addrs()
                        .map(|mut a| a.any(|a| TcpStream::connect_timeout(&a, timeout).is_ok()))
                        .unwrap_or(false)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or(false))
            .collect()
    })
}

pub fn status(ws: &Workspace, settings: &WaitSettings, build_time: u64) -> Result<ClusterStatus> {
    let state = DeployState::load(&settings.out_dir);
    let inputs = ws.plan_inputs(build_time);
    let hosts: Vec<String> = ws.profiles.nodes.iter().map(ssh_host).collect();
    let probe = settings.timeout.min(Duration::from_secs(3));
    let up = reachable(&hosts, probe);

    let api = reader_api(ws, settings.server.as_deref(), Duration::from_secs(600))?;
    let (health, api_version, api_ok) = match api.readyz(settings.timeout) {
        Ok(Health::Ready) => (
            "ready".to_string(),
            api.version(settings.timeout).ok(),
            true,
        ),
        Ok(Health::NotReady(why)) => (
            format!("not ready: {why}"),
            api.version(settings.timeout).ok(),
            true,
        ),
        Err(e) => (unreachable_text(&e), None, false),
    };
    let mut rows = Vec::new();
    for (node, reachable) in ws.profiles.nodes.iter().zip(up) {
        let delivery = state.delivery(&node.name);
        // The instance-id does not depend on secrets: rendered with stand-ins.
        let stale = delivery.and_then(|d| {
            let flashed = d.instance_id.as_ref()?;
            let (_, now) = crate::plan::render_node(&inputs, node, None).ok()?;
            Some(&now != flashed)
        });
        let mut row = NodeRow {
            node: node.name.clone(),
            board: node.board.clone(),
            slot: node
                .turing_pi
                .as_ref()
                .map(|s| format!("{}/{}", s.board, s.slot)),
            flashed_sha256: delivery.map(|d| d.sha256.clone()),
            flashed_at: delivery.and_then(|d| d.flashed_at),
            stale,
            reachable,
            registered: None,
            ready: None,
            version: None,
            roles: Vec::new(),
        };
        if api_ok {
            match api.node(&node.hostname, settings.timeout) {
                Ok(Some(n)) => {
                    row.registered = Some(true);
                    row.ready = n.ready().map(|c| c.status.clone());
                    row.version =
                        Some(n.status.node_info.kubelet_version.clone()).filter(|v| !v.is_empty());
                    row.roles = n.roles();
                }
                Ok(None) => row.registered = Some(false),
                Err(e) => tracing::warn!("{}: {e}", node.name),
            }
        }
        rows.push(row);
    }
    Ok(ClusterStatus {
        cluster: ws.profiles.cluster.name.clone(),
        api: api.url().to_string(),
        health,
        api_version,
        nodes: rows,
    })
}

fn unreachable_text(e: &ApiError) -> String {
    if e.is_certificate() {
        format!("certificate mismatch: {e}")
    } else {
        format!("unreachable: {e}")
    }
}
