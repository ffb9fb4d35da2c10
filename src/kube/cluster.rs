//! What the cluster looks like from its Nodes (`ClusterView`): servers and
//! agents, etcd members and voters, versions, cordons, members being removed;
//! and the quorum rule for taking one etcd member out (`check_quorum`),
//! after Talos's `ValidateForUpgrade` (siderolabs/talos
//! `internal/pkg/etcd/etcd.go`): refuse a single member, refuse exactly two,
//! and refuse while any member is not healthy.

use std::time::Duration;

use serde::Serialize;

use super::client::{Api, ApiError};
use super::node::Node;
use super::skew::{KubeVersion, Member, Role};

/// One Node, summarised.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeSummary {
    pub name: String,
    pub server: bool,
    /// Holds an embedded etcd member (label `node-role.kubernetes.io/etcd`).
    pub etcd: bool,
    pub ready: bool,
    /// `Ready=<status> (<reason>: <message>)` when not Ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_ready: Option<String>,
    /// `EtcdIsVoter`: None where k3s never set it.
    pub voter: Option<bool>,
    /// The reason/message of `EtcdIsVoter` when it is not True.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub voter_detail: Option<String>,
    pub removal: Removal,
    pub unschedulable: bool,
    pub kubelet_version: String,
    pub boot_id: String,
    /// What imgbuild recorded after the last flash (`imgbuild.dev/instance-id`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    /// Its first `InternalIP` address, if it reports one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub internal_ip: Option<String>,
}

/// Where a node's etcd member is in k3s's removal (member controller).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum Removal {
    None,
    /// `etcd.k3s.cattle.io/remove: "true"`, not yet done.
    Requested,
    /// Done: `etcd.k3s.cattle.io/removed-node-name` names the old member.
    Removed {
        member: String,
    },
}

impl NodeSummary {
    pub fn of(n: &Node) -> NodeSummary {
        let ready = n.ready();
        let voter = n.condition(super::node::ETCD_VOTER_CONDITION);
        let removal = match (n.removed_member(), n.removal_requested()) {
            (Some(m), _) => Removal::Removed {
                member: m.to_string(),
            },
            (None, true) => Removal::Requested,
            (None, false) => Removal::None,
        };
        NodeSummary {
            name: n.metadata.name.clone(),
            server: n.is_server(),
            etcd: n.is_etcd(),
            ready: n.is_ready(),
            not_ready: (!n.is_ready()).then(|| match ready {
                None => "no Ready condition yet".to_string(),
                Some(c) => detail("Ready", c),
            }),
            voter: n.etcd_voter(),
            voter_detail: voter
                .filter(|c| c.status != "True")
                .map(|c| detail("EtcdIsVoter", c)),
            removal,
            unschedulable: n.spec.unschedulable,
            kubelet_version: n.status.node_info.kubelet_version.clone(),
            boot_id: n.status.node_info.boot_id.clone(),
            instance_id: n.instance_id().map(str::to_string),
            internal_ip: n
                .status
                .addresses
                .iter()
                .find(|a| a.kind == "InternalIP")
                .map(|a| a.address.clone()),
        }
    }

    pub fn version(&self) -> Option<KubeVersion> {
        KubeVersion::parse(&self.kubelet_version)
    }

    /// A voting etcd member that is Ready and not being removed.
    pub fn healthy_voter(&self) -> bool {
        self.etcd && self.ready && self.voter == Some(true) && self.removal == Removal::None
    }
}

fn detail(kind: &str, c: &super::node::Condition) -> String {
    let reason = c.reason.as_deref().unwrap_or("");
    let message = c.message.as_deref().unwrap_or("");
    match (reason.is_empty(), message.is_empty()) {
        (true, true) => format!("{kind}={}", c.status),
        (false, true) => format!("{kind}={} ({reason})", c.status),
        (true, false) => format!("{kind}={} ({message})", c.status),
        (false, false) => format!("{kind}={} ({reason}: {message})", c.status),
    }
}

/// Every Node of the cluster, summarised, in the API's order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ClusterView {
    pub nodes: Vec<NodeSummary>,
}

impl ClusterView {
    pub fn of(nodes: &[Node]) -> ClusterView {
        ClusterView {
            nodes: nodes.iter().map(NodeSummary::of).collect(),
        }
    }

    /// Lists the Nodes and summarises them.
    pub fn fetch(api: &Api, timeout: Duration) -> Result<ClusterView, ApiError> {
        Ok(ClusterView::of(&api.nodes(timeout)?))
    }

    pub fn get(&self, name: &str) -> Option<&NodeSummary> {
        self.nodes.iter().find(|n| n.name == name)
    }

    pub fn servers(&self) -> impl Iterator<Item = &NodeSummary> {
        self.nodes.iter().filter(|n| n.server)
    }

    pub fn agents(&self) -> impl Iterator<Item = &NodeSummary> {
        self.nodes.iter().filter(|n| !n.server)
    }

    /// Servers with an etcd member (removed or not).
    pub fn etcd_members(&self) -> impl Iterator<Item = &NodeSummary> {
        self.nodes.iter().filter(|n| n.etcd)
    }

    /// Members that vote now: `EtcdIsVoter=True` and not removed.
    pub fn voters(&self) -> impl Iterator<Item = &NodeSummary> {
        self.etcd_members()
            .filter(|n| n.voter == Some(true) && !matches!(n.removal, Removal::Removed { .. }))
    }

    /// Ready voters other than `except`: the servers a re-flashed server can
    /// join through (`server: https://<one of them>:6443`).
    pub fn join_targets(&self, except: &str) -> Vec<&NodeSummary> {
        self.voters()
            .filter(|n| n.name != except && n.ready && n.removal == Removal::None)
            .collect()
    }

    /// What runs where, for `skew::check_rollout` (nodes whose kubelet
    /// version does not parse are left out).
    pub fn members(&self) -> Vec<Member> {
        self.nodes
            .iter()
            .filter_map(|n| {
                Some(Member {
                    name: n.name.clone(),
                    role: if n.server { Role::Server } else { Role::Agent },
                    version: n.version()?,
                })
            })
            .collect()
    }

    /// Whether `node`'s etcd member may be taken out now (see `QuorumRefusal`).
    pub fn check_quorum(&self, node: &str) -> Result<QuorumOk, QuorumRefusal> {
        let Some(target) = self.get(node).filter(|n| n.etcd) else {
            return Ok(QuorumOk::NotAMember);
        };
        let others: Vec<&NodeSummary> = self.etcd_members().filter(|n| n.name != node).collect();
        for o in &others {
            if o.removal != Removal::None {
                return Err(QuorumRefusal::BeingRemoved {
                    node: o.name.clone(),
                });
            }
        }
        if let Removal::Removed { member } = &target.removal {
            // Resuming: its member is out already; the rest must hold.
            healthy(&others)?;
            return Ok(QuorumOk::AlreadyRemoved {
                member: member.clone(),
            });
        }
        match others.len() {
            0 => {
                return Err(QuorumRefusal::SingleMember {
                    node: node.to_string(),
                });
            }
            1 => {
                return Err(QuorumRefusal::TwoMembers {
                    members: vec![node.to_string(), others[0].name.clone()],
                });
            }
            _ => {}
        }
        healthy(&[&[target], &others[..]].concat())?;
        if target.removal == Removal::Requested {
            return Ok(QuorumOk::RemovalUnderWay);
        }
        Ok(QuorumOk::Safe {
            members: others.len() + 1,
        })
    }
}

fn healthy(members: &[&NodeSummary]) -> Result<(), QuorumRefusal> {
    for m in members {
        if !m.ready {
            return Err(QuorumRefusal::NotReady {
                node: m.name.clone(),
                detail: m.not_ready.clone().unwrap_or_default(),
            });
        }
        if m.voter != Some(true) {
            return Err(QuorumRefusal::NotVoter {
                node: m.name.clone(),
                detail: m
                    .voter_detail
                    .clone()
                    .unwrap_or_else(|| "no EtcdIsVoter condition".into()),
            });
        }
    }
    Ok(())
}

/// The quorum allows taking the member out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QuorumOk {
    /// `members` healthy voting members, this one among them.
    Safe { members: usize },
    /// Removal was asked for already (an interrupted run); wait for it.
    RemovalUnderWay,
    /// Its member is out already (an interrupted run): flash it.
    AlreadyRemoved { member: String },
    /// No etcd member on that node (an agent, or not registered): no quorum
    /// question.
    NotAMember,
}

/// Why an etcd member may not be taken out now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuorumRefusal {
    #[error(
        "{node} is the cluster's only etcd member: re-flashing it without its data starts an empty cluster (every object is lost)"
    )]
    SingleMember { node: String },
    #[error("the cluster has exactly 2 etcd members ({}): with one of them out, the other alone cannot keep quorum, so any hiccup stops the cluster (Talos refuses upgrades of 2-member clusters for the same reason); add a third server first", members.join(", "))]
    TwoMembers { members: Vec<String> },
    #[error(
        "etcd member {node} is not Ready ({detail}): every member must be Ready before one is taken out"
    )]
    NotReady { node: String, detail: String },
    #[error(
        "{node} is not a voting etcd member ({detail}): every member must vote before one is taken out; wait until k3s promotes it"
    )]
    NotVoter { node: String, detail: String },
    #[error(
        "the etcd member of {node} is being removed or was removed (etcd.k3s.cattle.io/remove): finish that server first (flash it and wait until it votes again)"
    )]
    BeingRemoved { node: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn node(name: &str, etcd: bool, ready: bool, voter: Option<&str>) -> Node {
        let mut conditions = vec![serde_json::json!({"type": "Ready",
            "status": if ready { "True" } else { "False" }, "reason": "KubeletNotReady", "message": "PLEG"})];
        if let Some(v) = voter {
            conditions.push(serde_json::json!({"type": "EtcdIsVoter", "status": v,
                "reason": if v == "True" { "MemberNotLearner" } else { "MemberIsLearner" }}));
        }
        let mut labels = serde_json::json!({"kubernetes.io/hostname": name});
        if etcd {
            labels["node-role.kubernetes.io/control-plane"] = "true".into();
            labels["node-role.kubernetes.io/etcd"] = "true".into();
        }
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": labels,
                         "annotations": {"etcd.k3s.cattle.io/node-name": format!("{name}-0a1b2c3d")}},
            "status": {"conditions": conditions, "nodeInfo": {"kubeletVersion": "v1.32.5+k3s1", "bootID": "b"}}
        }))
        .unwrap()
    }

    fn view(nodes: Vec<Node>) -> ClusterView {
        ClusterView::of(&nodes)
    }

    #[test]
    fn the_view_counts_servers_voters_and_agents() {
        let v = view(vec![
            node("s1", true, true, Some("True")),
            node("s2", true, true, Some("False")),
            node("a1", false, true, None),
        ]);
        assert_eq!(v.servers().count(), 2);
        assert_eq!(
            v.agents().map(|n| n.name.as_str()).collect::<Vec<_>>(),
            ["a1"]
        );
        assert_eq!(v.voters().count(), 1);
        assert_eq!(
            v.get("s2").unwrap().voter_detail.as_deref(),
            Some("EtcdIsVoter=False (MemberIsLearner)")
        );
        assert_eq!(v.join_targets("s1").len(), 0);
        assert_eq!(v.join_targets("s2")[0].name, "s1");
        assert_eq!(v.members().len(), 3);
    }

    #[test]
    fn quorum_rules() {
        let three = || {
            vec![
                node("s1", true, true, Some("True")),
                node("s2", true, true, Some("True")),
                node("s3", true, true, Some("True")),
                node("a1", false, true, None),
            ]
        };
        assert_eq!(
            view(three()).check_quorum("s2"),
            Ok(QuorumOk::Safe { members: 3 })
        );
        assert_eq!(view(three()).check_quorum("a1"), Ok(QuorumOk::NotAMember));
        assert_eq!(
            view(three()).check_quorum("nobody"),
            Ok(QuorumOk::NotAMember)
        );

        let one = view(vec![node("s1", true, true, Some("True"))]);
        let e = one.check_quorum("s1").unwrap_err();
        assert!(matches!(e, QuorumRefusal::SingleMember { .. }));
        assert!(e.to_string().contains("only etcd member"), "{e}");

        let two = view(vec![
            node("s1", true, true, Some("True")),
            node("s2", true, true, Some("True")),
        ]);
        let e = two.check_quorum("s1").unwrap_err();
        assert_eq!(
            e,
            QuorumRefusal::TwoMembers {
                members: vec!["s1".into(), "s2".into()]
            }
        );
        assert!(
            e.to_string().contains("exactly 2 etcd members (s1, s2)"),
            "{e}"
        );

        let mut n = three();
        n[2] = node("s3", true, false, Some("True"));
        let e = view(n).check_quorum("s1").unwrap_err();
        assert!(
            matches!(e, QuorumRefusal::NotReady { ref node, .. } if node == "s3"),
            "{e}"
        );
        assert!(e.to_string().contains("KubeletNotReady: PLEG"), "{e}");

        let mut n = three();
        n[1] = node("s2", true, true, Some("False"));
        let e = view(n).check_quorum("s1").unwrap_err();
        assert!(
            matches!(e, QuorumRefusal::NotVoter { ref node, .. } if node == "s2"),
            "{e}"
        );

        let mut n = three();
        n[2].metadata
            .annotations
            .insert("etcd.k3s.cattle.io/remove".into(), "true".into());
        let e = view(n).check_quorum("s1").unwrap_err();
        assert!(
            matches!(e, QuorumRefusal::BeingRemoved { ref node } if node == "s3"),
            "{e}"
        );

        // Resuming after the removal of the target itself.
        let mut n = three();
        n[0].metadata
            .annotations
            .insert("etcd.k3s.cattle.io/remove".into(), "true".into());
        assert_eq!(
            view(n.clone()).check_quorum("s1"),
            Ok(QuorumOk::RemovalUnderWay)
        );
        n[0].metadata.annotations.insert(
            "etcd.k3s.cattle.io/removed-node-name".into(),
            "s1-0a1b2c3d".into(),
        );
        assert_eq!(
            view(n).check_quorum("s1"),
            Ok(QuorumOk::AlreadyRemoved {
                member: "s1-0a1b2c3d".into()
            })
        );
    }
}
