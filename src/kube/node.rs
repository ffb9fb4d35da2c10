//! The parts of Kubernetes objects imgbuild reads, typed. Unknown fields are
//! ignored and missing ones default, so any API version that serves v1 Nodes
//! decodes. The label, annotation and condition names k3s uses for servers
//! and etcd members are here too, each with the k3s source it comes from.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Node {
    pub metadata: ObjectMeta,
    pub spec: NodeSpec,
    pub status: NodeStatus,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct NodeSpec {
    /// Cordoned: no new pods are scheduled here.
    pub unschedulable: bool,
    pub taints: Vec<Taint>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Taint {
    pub key: String,
    pub value: Option<String>,
    pub effect: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ObjectMeta {
    pub name: String,
    /// Empty for cluster-scoped objects (Nodes).
    pub namespace: String,
    pub uid: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub owner_references: Vec<OwnerReference>,
    pub creation_timestamp: Option<String>,
    /// Set once deletion has begun (the object may linger until then).
    pub deletion_timestamp: Option<String>,
    pub resource_version: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct OwnerReference {
    pub kind: String,
    pub name: String,
    pub uid: String,
    /// The managing controller (at most one owner has it).
    pub controller: Option<bool>,
}

impl ObjectMeta {
    /// The owner that controls this object (`metav1.GetControllerOf`).
    pub fn controller(&self) -> Option<&OwnerReference> {
        self.owner_references
            .iter()
            .find(|o| o.controller == Some(true))
    }

    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.get(key).map(String::as_str)
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct NodeStatus {
    pub conditions: Vec<Condition>,
    pub node_info: NodeInfo,
    pub addresses: Vec<NodeAddress>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Condition {
    #[serde(rename = "type")]
    pub kind: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    pub reason: Option<String>,
    pub message: Option<String>,
    pub last_transition_time: Option<String>,
    pub last_heartbeat_time: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct NodeInfo {
    /// Changes on every boot of the machine.
    #[serde(rename = "bootID")]
    pub boot_id: String,
    #[serde(rename = "kubeletVersion")]
    pub kubelet_version: String,
    #[serde(rename = "osImage")]
    pub os_image: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct NodeAddress {
    #[serde(rename = "type")]
    pub kind: String,
    pub address: String,
}

/// One line of a watch stream.
#[derive(Debug, Clone, Deserialize)]
pub struct WatchEvent {
    /// ADDED, MODIFIED, DELETED, BOOKMARK or ERROR.
    #[serde(rename = "type")]
    pub kind: String,
    pub object: serde_json::Value,
}

/// The `Status` object of an API error.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct Status {
    pub message: String,
    pub reason: String,
    pub code: u16,
    pub details: StatusDetails,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct StatusDetails {
    pub name: String,
    pub kind: String,
    pub causes: Vec<StatusCause>,
    pub retry_after_seconds: u32,
}

/// One cause of a `Status` (its `type` is sent as `reason`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct StatusCause {
    pub reason: String,
    pub message: String,
    pub field: String,
}

/// `GET /version`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct VersionInfo {
    pub git_version: String,
}

impl Node {
    pub fn condition(&self, kind: &str) -> Option<&Condition> {
        self.status.conditions.iter().find(|c| c.kind == kind)
    }

    pub fn ready(&self) -> Option<&Condition> {
        self.condition("Ready")
    }

    pub fn is_ready(&self) -> bool {
        self.ready().is_some_and(|c| c.status == "True")
    }

    pub fn name(&self) -> &str {
        &self.metadata.name
    }

    /// k3s's `EtcdIsVoter` condition: `Some(true)` for a voting member,
    /// `Some(false)` for a learner, a member being removed or a non-member,
    /// `None` where k3s never set it (no etcd, or an agent).
    pub fn etcd_voter(&self) -> Option<bool> {
        self.condition(ETCD_VOTER_CONDITION)
            .map(|c| c.status == "True")
    }

    /// Runs the control plane (k3s labels every server so).
    pub fn is_server(&self) -> bool {
        let l = &self.metadata.labels;
        [CONTROL_PLANE_LABEL, MASTER_LABEL, ETCD_LABEL]
            .iter()
            .any(|k| l.get(*k).is_some_and(|v| v == "true"))
    }

    /// Holds an embedded etcd member (`node-role.kubernetes.io/etcd`).
    pub fn is_etcd(&self) -> bool {
        self.metadata
            .labels
            .get(ETCD_LABEL)
            .is_some_and(|v| v == "true")
    }

    /// Removal of its etcd member was asked for (`etcd.k3s.cattle.io/remove`).
    pub fn removal_requested(&self) -> bool {
        self.metadata
            .annotation(ETCD_REMOVE_ANNOTATION)
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    }

    /// The etcd member k3s removed for this node, once it has.
    pub fn removed_member(&self) -> Option<&str> {
        self.metadata
            .annotation(ETCD_REMOVED_NAME_ANNOTATION)
            .filter(|v| !v.is_empty())
    }

    /// The etcd member name (`<node>-<8 hex>`) k3s recorded for this node.
    pub fn member_name(&self) -> Option<&str> {
        self.metadata
            .annotation(ETCD_NODE_NAME_ANNOTATION)
            .filter(|v| !v.is_empty())
    }

    /// The image instance imgbuild recorded after this node's last flash.
    pub fn instance_id(&self) -> Option<&str> {
        self.metadata
            .annotation(INSTANCE_ID_ANNOTATION)
            .filter(|v| !v.is_empty())
    }

    /// Roles from `node-role.kubernetes.io/<role>` labels, as kubectl shows them.
    pub fn roles(&self) -> Vec<String> {
        self.metadata
            .labels
            .keys()
            .filter_map(|k| k.strip_prefix("node-role.kubernetes.io/"))
            .filter(|r| !r.is_empty())
            .map(str::to_string)
            .collect()
    }
}

/// The labels k3s puts on every server (k3s `pkg/server/server.go`,
/// `setNodeLabelsAndAnnotations`; `master` only on older releases).
pub const CONTROL_PLANE_LABEL: &str = "node-role.kubernetes.io/control-plane";
pub const MASTER_LABEL: &str = "node-role.kubernetes.io/master";
/// Servers with embedded etcd (k3s `pkg/etcd/etcd.go` `EtcdRoleLabel`).
pub const ETCD_LABEL: &str = "node-role.kubernetes.io/etcd";
/// The Node condition k3s keeps for each etcd server (k3s `pkg/etcd/etcd.go`
/// `etcdStatusType`: True/MemberNotLearner for a voter; False with
/// MemberIsLearner, NotAMember or Unhealthy otherwise).
pub const ETCD_VOTER_CONDITION: &str = "EtcdIsVoter";
/// Annotations of k3s's etcd member controller (k3s
/// `pkg/etcd/member_controller.go`): set `remove` to "true" and the leader
/// removes the member named by `node-name`/`node-address`, then records it in
/// `removed-node-name` and drops the other two.
pub const ETCD_REMOVE_ANNOTATION: &str = "etcd.k3s.cattle.io/remove";
pub const ETCD_REMOVED_NAME_ANNOTATION: &str = "etcd.k3s.cattle.io/removed-node-name";
pub const ETCD_NODE_NAME_ANNOTATION: &str = "etcd.k3s.cattle.io/node-name";
pub const ETCD_NODE_ADDRESS_ANNOTATION: &str = "etcd.k3s.cattle.io/node-address";
/// imgbuild's own record, written through the API once a flashed node has
/// booted: the cloud-init instance ID of the image it runs. (k3s applies
/// `node-label` only at a Node's first registration, so a baked label would
/// keep claiming the first image forever.)
pub const INSTANCE_ID_ANNOTATION: &str = "imgbuild.dev/instance-id";

/// Unix seconds of an RFC 3339 time as the API writes it
/// (`2024-04-25T10:00:00Z`, optionally with fractions or an offset).
pub fn parse_time(s: &str) -> Option<u64> {
    let s = s.trim();
    let (date, rest) = s.split_once(['T', 't'])?;
    let mut d = date.splitn(3, '-');
    let y: i64 = d.next()?.parse().ok()?;
    let mo: i64 = d.next()?.parse().ok()?;
    let da: i64 = d.next()?.parse().ok()?;
    let (clock, offset) = if let Some(c) = rest.strip_suffix(['Z', 'z']) {
        (c, 0i64)
    } else {
        let i = rest.rfind(['+', '-'])?;
        let (c, o) = rest.split_at(i);
        let sign = if o.starts_with('-') { -1 } else { 1 };
        let (oh, om) = o[1..].split_once(':')?;
        (
            c,
            sign * (oh.parse::<i64>().ok()? * 3600 + om.parse::<i64>().ok()? * 60),
        )
    };
    let clock = clock.split('.').next()?;
    let mut c = clock.splitn(3, ':');
    let h: i64 = c.next()?.parse().ok()?;
    let mi: i64 = c.next()?.parse().ok()?;
    let se: i64 = c.next()?.parse().ok()?;
    if !(1..=12).contains(&mo) || !(1..=31).contains(&da) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    // Days from the civil date (the inverse of util::civil_from_days).
    let yy = if mo <= 2 { y - 1 } else { y };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + da - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let t = days * 86_400 + h * 3600 + mi * 60 + se - offset;
    u64::try_from(t).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        assert_eq!(parse_time("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_time("2024-04-25T00:00:00Z"), Some(1_714_003_200));
        assert_eq!(
            parse_time("2024-04-25T02:00:00.5+02:00"),
            Some(1_714_003_200)
        );
        assert_eq!(parse_time("2024-02-29T12:00:00Z"), Some(1_709_208_000));
        for bad in ["", "2024-04-25", "2024-13-01T00:00:00Z", "yesterday"] {
            assert_eq!(parse_time(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_node_decodes_with_unknown_and_missing_fields() {
        let n: Node = serde_json::from_str(
            r#"{"kind":"Node","metadata":{"name":"node02","labels":{"node-role.kubernetes.io/control-plane":"true","node-role.kubernetes.io/etcd":"true"}},
                "spec":{"podCIDR":"10.42.1.0/24"},
                "status":{"conditions":[{"type":"Ready","status":"False","reason":"KubeletNotReady","message":"cni not ready"}],
                          "nodeInfo":{"bootID":"b1","kubeletVersion":"v1.32.5+k3s1"}}}"#,
        )
        .unwrap();
        assert!(!n.is_ready());
        assert_eq!(
            n.ready().unwrap().reason.as_deref(),
            Some("KubeletNotReady")
        );
        assert_eq!(n.roles(), ["control-plane", "etcd"]);
        assert_eq!(n.status.node_info.boot_id, "b1");
        let empty: Node = serde_json::from_str("{}").unwrap();
        assert!(empty.ready().is_none());
    }
}
