//! The parts of Kubernetes objects imgbuild reads, typed. Unknown fields are
//! ignored and missing ones default, so any API version that serves v1 Nodes
//! decodes.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Node {
    pub metadata: ObjectMeta,
    pub status: NodeStatus,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ObjectMeta {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub creation_timestamp: Option<String>,
    pub resource_version: Option<String>,
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
