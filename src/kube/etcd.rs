//! A server's embedded etcd member, through the Kubernetes API only (k3s
//! `pkg/etcd/member_controller.go`): taking it out before its disk is
//! wiped, and waiting until the re-flashed server votes again.
//!
//! Removal: PATCH the Node with `etcd.k3s.cattle.io/remove: "true"`; the etcd
//! leader's member controller removes the member named by the Node's
//! `etcd.k3s.cattle.io/node-name` (and `node-address`) annotations, then sets
//! `etcd.k3s.cattle.io/removed-node-name` to it and drops the other two. When
//! the server joins again under a new member name, the controller sees the
//! names differ, deletes `removed-node-name` and sets `remove` to "false".

use std::time::{Duration, Instant};

use serde_json::json;

use super::admin::AdminApi;
use super::client::{Api, ApiError, PatchKind};
use super::node::{ETCD_REMOVE_ANNOTATION, Node};
use super::wait::{UntilError, until_node};

#[derive(Debug, Clone, thiserror::Error)]
pub enum EtcdError {
    #[error("{node}: no such Node in the cluster")]
    NoNode { node: String },
    #[error("{node} holds no etcd member (no node-role.kubernetes.io/etcd label)")]
    NotAMember { node: String },
    /// k3s's controller would fail the same way ("node name annotation ...
    /// not found"), so the removal is not asked for.
    #[error(
        "{node} has no etcd.k3s.cattle.io/node-name annotation (k3s sets it once the member has joined), so k3s's member controller could not tell which member to remove"
    )]
    NoMemberName { node: String },
    #[error("{node}: {what} not done after {}{}", crate::util::duration::format_duration(*waited), last.as_ref().map(|l| format!(" (last seen: {l})")).unwrap_or_default())]
    Timeout {
        node: String,
        what: String,
        waited: Duration,
        last: Option<String>,
    },
    #[error(transparent)]
    Api(#[from] ApiError),
}

fn until_error(
    node: &str,
    what: &str,
    start: Instant,
    e: UntilError,
    show: impl Fn(&Node) -> String,
) -> EtcdError {
    match e {
        UntilError::Api(e) => EtcdError::Api(e),
        UntilError::TimedOut { last, api_error } => EtcdError::Timeout {
            node: node.to_string(),
            what: what.to_string(),
            waited: start.elapsed(),
            last: match (last, api_error) {
                (_, Some(e)) => Some(format!("API: {e}")),
                (Some(n), None) => Some(show(&n)),
                (None, None) => Some("no such Node".into()),
            },
        },
    }
}

/// Removes `node`'s etcd member and waits until k3s says it has
/// (`removed-node-name`); returns the removed member's name. Asking again
/// for a member already removed returns its name at once. Check the quorum
/// first (`ClusterView::check_quorum`).
pub fn remove_member(
    admin: &AdminApi,
    node: &str,
    timeout: Duration,
    interval: Duration,
) -> Result<String, EtcdError> {
    let start = Instant::now();
    let deadline = start + timeout;
    let n = admin
        .node(node, timeout)?
        .ok_or_else(|| EtcdError::NoNode { node: node.into() })?;
    if let Some(m) = n.removed_member() {
        return Ok(m.to_string());
    }
    if !n.is_etcd() {
        return Err(EtcdError::NotAMember { node: node.into() });
    }
    let Some(member) = n.member_name().map(str::to_string) else {
        return Err(EtcdError::NoMemberName { node: node.into() });
    };
    tracing::info!("{node}: removing etcd member {member}");
    admin.patch_node(
        node,
        &json!({"metadata": {"annotations": {ETCD_REMOVE_ANNOTATION: "true"}}}),
        PatchKind::Merge,
        deadline.saturating_duration_since(Instant::now()),
    )?;
    let done = until_node(admin, node, deadline, interval, |n| {
        n.is_some_and(|n| n.removed_member().is_some())
    })
    .map_err(|e| {
        until_error(node, "removal of its etcd member", start, e, |_| {
            "no etcd.k3s.cattle.io/removed-node-name yet; the etcd leader's k3s does the removal: see `journalctl -u k3s` on the servers".into()
        })
    })?;
    let removed = done.removed_member().unwrap_or(&member).to_string();
    tracing::info!("{node}: etcd member {removed} removed");
    Ok(removed)
}

/// Waits until `node` is Ready and a voting etcd member (`EtcdIsVoter=True`),
/// and, given the boot ID from before its flash, has booted since. Needs
/// only read access.
pub fn wait_voter(
    api: &Api,
    node: &str,
    boot_before: Option<&str>,
    timeout: Duration,
    interval: Duration,
) -> Result<Node, EtcdError> {
    let start = Instant::now();
    let mut shown = String::new();
    let n = until_node(api, node, start + timeout, interval, |n| {
        let state = match n {
            None => "not registered".to_string(),
            Some(n) => voter_state(n, boot_before),
        };
        if state != shown {
            tracing::info!("{node}: {state}");
            shown = state;
        }
        n.is_some_and(|n| is_back(n, boot_before))
    })
    .map_err(|e| {
        until_error(node, "Ready and voting in etcd", start, e, |n| {
            voter_state(n, boot_before)
        })
    })?;
    Ok(n)
}

fn is_back(n: &Node, boot_before: Option<&str>) -> bool {
    let booted = boot_before.is_none_or(|b| {
        let now = &n.status.node_info.boot_id;
        !now.is_empty() && now != b
    });
    booted && n.is_ready() && n.etcd_voter() == Some(true)
}

/// `Ready=True, EtcdIsVoter=False (MemberIsLearner), booted before the flash`.
fn voter_state(n: &Node, boot_before: Option<&str>) -> String {
    let cond = |kind: &str| match n.condition(kind) {
        None => format!("{kind} unset"),
        Some(c) => match c.reason.as_deref() {
            Some(r) if !r.is_empty() && c.status != "True" => format!("{kind}={} ({r})", c.status),
            _ => format!("{kind}={}", c.status),
        },
    };
    let mut s = format!(
        "{}, {}",
        cond("Ready"),
        cond(super::node::ETCD_VOTER_CONDITION)
    );
    if boot_before.is_some_and(|b| b == n.status.node_info.boot_id) {
        s.push_str(", not rebooted since the flash");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(ready: &str, voter: &str, boot: &str) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": "s1"},
            "status": {"conditions": [
                {"type": "Ready", "status": ready, "reason": "KubeletNotReady"},
                {"type": "EtcdIsVoter", "status": voter, "reason": "MemberIsLearner"}],
                "nodeInfo": {"bootID": boot}}
        }))
        .unwrap()
    }

    #[test]
    fn back_means_ready_voting_and_rebooted() {
        assert!(is_back(&node("True", "True", "b2"), Some("b1")));
        assert!(is_back(&node("True", "True", "b1"), None));
        assert!(!is_back(&node("True", "True", "b1"), Some("b1")));
        assert!(!is_back(&node("True", "False", "b2"), Some("b1")));
        assert!(!is_back(&node("False", "True", "b2"), Some("b1")));
        assert_eq!(
            voter_state(&node("True", "False", "b1"), Some("b1")),
            "Ready=True, EtcdIsVoter=False (MemberIsLearner), not rebooted since the flash"
        );
    }
}
