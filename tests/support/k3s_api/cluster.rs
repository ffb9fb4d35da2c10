//! The stateful part of the fake k3s API: Nodes, Pods and
//! PodDisruptionBudgets in a store with resource versions, and the k3s and
//! Kubernetes behaviours the re-flash code meets, each following its
//! upstream source:
//! - PATCH of Nodes: JSON merge patch (RFC 7386) and strategic merge patch
//!   for the fields imgbuild sends (maps and scalars; `spec.taints` merge by
//!   `key`), as the API server's `pkg/registry/.../node` storage applies them.
//! - The etcd member controller (k3s `pkg/etcd/member_controller.go`
//!   `sync`): `etcd.k3s.cattle.io/remove: "true"` on an etcd Node removes the
//!   member named by `node-name`/`node-address` (after `member_delay`), sets
//!   `removed-node-name` and drops the other two; a Node whose `node-name`
//!   differs from `removed-node-name` gets `removed-node-name` deleted and
//!   `remove` set to "false". `EtcdIsVoter` follows k3s `pkg/etcd/etcd.go`
//!   `setEtcdStatusCondition` (True/MemberNotLearner, False/NotAMember,
//!   False/Unhealthy).
//! - Evictions (Kubernetes `pkg/registry/core/pod/storage/eviction.go`): a
//!   pod one PodDisruptionBudget selects is refused with 429 and a
//!   `DisruptionBudget` cause while the budget allows no disruption (here:
//!   `refusals` times, then it allows); terminal pods go without a check;
//!   otherwise the pod is deleted after `pod_grace`, once its kubelet
//!   confirms (never on a node that is not Ready: it stays Terminating). The
//!   DaemonSet controller recreates an evicted DaemonSet pod on the same node
//!   at once.
//! - A flash (`flash`): what k3s does when the node boots the image (k3s
//!   `pkg/etcd/etcd.go` `Start`, `join`, `newCluster`), see `Outcome`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::image::ImageFacts;

/// What booting a flashed image did, as k3s would.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The node is back: Ready with a new boot ID; a server votes again
    /// (a new member when it joined, its old one when its data was kept).
    Back,
    /// `Start` exits and systemd restarts k3s forever; the Node stays
    /// NotReady with its old boot ID. The text is k3s's error.
    CrashLoop(String),
    /// A `cluster-init` server without data in a live cluster founded a
    /// second one-member cluster; the API now answers from it.
    SecondCluster,
    /// The cluster's only server came back without its data: a new, empty
    /// cluster holding only this node.
    Empty,
    /// The first server of a new cluster.
    Founded,
    /// Nothing to join: no server is up.
    NeverJoins,
}

pub struct Pdb {
    pub namespace: String,
    pub name: String,
    pub selector: BTreeMap<String, String>,
    /// 429s left before it allows a disruption (`u32::MAX`: never allows).
    pub refusals: u32,
    pub desired_healthy: u32,
    pub current_healthy: u32,
}

enum Effect {
    RemoveMember(String),
    Boot(String, ImageFacts, u64),
    DeletePod(String, String, String),
}

pub struct Cluster {
    pub nodes: BTreeMap<String, Value>,
    /// By (namespace, name).
    pub pods: BTreeMap<(String, String), Value>,
    pub pdbs: Vec<Pdb>,
    pub rv: u64,
    /// The Kubernetes version new and re-flashed nodes report.
    pub version: String,
    pub member_delay: Duration,
    pub boot_delay: Duration,
    pub pod_grace: Duration,
    /// Every flashed node that booted, and what k3s did.
    pub flashes: Vec<(String, Outcome)>,
    /// `namespace/name` of every eviction the API accepted.
    pub evicted: Vec<String>,
    /// How many 429s the eviction subresource answered.
    pub refused_evictions: u32,
    due: Vec<(Instant, Effect)>,
    serial: u64,
}

impl Default for Cluster {
    fn default() -> Cluster {
        Cluster {
            nodes: BTreeMap::new(),
            pods: BTreeMap::new(),
            pdbs: Vec::new(),
            rv: 1,
            version: "v1.32.5+k3s1".into(),
            member_delay: Duration::from_millis(200),
            boot_delay: Duration::from_millis(300),
            pod_grace: Duration::from_millis(200),
            flashes: Vec::new(),
            evicted: Vec::new(),
            refused_evictions: 0,
            due: Vec::new(),
            serial: 0,
        }
    }
}

fn condition(kind: &str, status: &str, reason: &str, message: &str) -> Value {
    let t = imgbuild::secrets::client::rfc3339(super::now());
    json!({"type": kind, "status": status, "reason": reason, "message": message,
           "lastHeartbeatTime": t, "lastTransitionTime": t})
}

fn set_condition(node: &mut Value, c: Value) {
    let list = node["status"]["conditions"].as_array_mut().unwrap();
    match list.iter_mut().find(|x| x["type"] == c["type"]) {
        Some(x) => *x = c,
        None => list.push(c),
    }
}

/// RFC 7386: objects merge, `null` deletes, anything else replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Some(p) = patch.as_object() else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let t = target.as_object_mut().unwrap();
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

/// Strategic merge as far as imgbuild uses it: a merge patch, except that
/// `spec.taints` (patch strategy merge, key `key`) merges by key.
pub fn strategic_patch(target: &mut Value, patch: &Value) {
    let mut patch = patch.clone();
    if let Some(taints) = patch["spec"]
        .as_object_mut()
        .and_then(|s| s.remove("taints"))
    {
        let mut have: Vec<Value> = target["spec"]["taints"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for t in taints.as_array().cloned().unwrap_or_default() {
            have.retain(|h| h["key"] != t["key"]);
            if t.get("$patch").and_then(Value::as_str) != Some("delete") {
                have.push(t);
            }
        }
        target["spec"]["taints"] = Value::Array(have);
    }
    merge_patch(target, &patch);
}

impl Cluster {
    fn bump(&mut self) -> String {
        self.rv += 1;
        self.rv.to_string()
    }

    fn hex8(&mut self) -> String {
        self.serial += 1;
        format!("{:08x}", 0x5eed_0000u64 + self.serial * 7919)
    }

    /// A Node as k3s registers it: Ready, the role labels k3s sets
    /// (`pkg/server/server.go`), and for a server the etcd annotations and a
    /// voting `EtcdIsVoter`.
    pub fn new_node(
        &mut self,
        name: &str,
        server: bool,
        labels: &BTreeMap<String, String>,
        boot: &str,
    ) -> Value {
        let mut l = json!({"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"});
        for (k, v) in labels {
            l[k] = v.clone().into();
        }
        let mut annotations = json!({"k3s.io/hostname": name});
        let mut conditions = vec![condition(
            "Ready",
            "True",
            "KubeletReady",
            "kubelet is posting ready status",
        )];
        if server {
            l["node-role.kubernetes.io/control-plane"] = "true".into();
            l["node-role.kubernetes.io/etcd"] = "true".into();
            annotations["etcd.k3s.cattle.io/node-name"] = format!("{name}-{}", self.hex8()).into();
            annotations["etcd.k3s.cattle.io/node-address"] = "127.0.0.1".into();
            conditions.push(condition(
                "EtcdIsVoter",
                "True",
                "MemberNotLearner",
                "Node is a voting member of the etcd cluster",
            ));
        }
        let rv = self.bump();
        json!({
            "kind": "Node", "apiVersion": "v1",
            "metadata": {"name": name, "uid": format!("uid-{name}-{rv}"), "resourceVersion": rv,
                         "creationTimestamp": imgbuild::secrets::client::rfc3339(super::now()),
                         "labels": l, "annotations": annotations},
            "spec": {"podCIDR": "10.42.0.0/24"},
            "status": {"conditions": conditions,
                       "nodeInfo": {"bootID": boot, "kubeletVersion": self.version, "osImage": "Ubuntu 24.04.2 LTS"},
                       "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}]}
        })
    }

    pub fn add_node(&mut self, name: &str, server: bool) {
        let boot = format!("boot-{name}-0");
        let n = self.new_node(name, server, &BTreeMap::new(), &boot);
        self.nodes.insert(name.to_string(), n);
    }

    /// Changes a stored Node (a new resource version).
    pub fn edit_node(&mut self, name: &str, f: impl FnOnce(&mut Value)) {
        let rv = self.bump();
        let n = self.nodes.get_mut(name).expect("no such node");
        f(n);
        n["metadata"]["resourceVersion"] = rv.into();
    }

    pub fn patch_node(&mut self, name: &str, patch: &Value, strategic: bool) -> Option<Value> {
        let rv = self.bump();
        let n = self.nodes.get_mut(name)?;
        if strategic {
            strategic_patch(n, patch);
        } else {
            merge_patch(n, patch);
        }
        n["metadata"]["resourceVersion"] = rv.into();
        self.member_controller(name);
        self.nodes.get(name).cloned()
    }

    /// k3s `member_controller.go` `sync` for one Node.
    fn member_controller(&mut self, name: &str) {
        let Some(n) = self.nodes.get(name) else {
            return;
        };
        if n["metadata"]["labels"]["node-role.kubernetes.io/etcd"] != "true" {
            return;
        }
        let a = &n["metadata"]["annotations"];
        let Some(remove) = a["etcd.k3s.cattle.io/remove"]
            .as_str()
            .map(str::to_lowercase)
        else {
            return;
        };
        if let Some(removed) = a["etcd.k3s.cattle.io/removed-node-name"].as_str() {
            if let Some(current) = a["etcd.k3s.cattle.io/node-name"].as_str()
                && current != removed
            {
                self.edit_node(name, |n| {
                    let a = n["metadata"]["annotations"].as_object_mut().unwrap();
                    a.remove("etcd.k3s.cattle.io/removed-node-name");
                    a.insert("etcd.k3s.cattle.io/remove".into(), "false".into());
                });
            }
            return;
        }
        let named = a["etcd.k3s.cattle.io/node-name"].is_string()
            && a["etcd.k3s.cattle.io/node-address"].is_string();
        if remove == "true"
            && named
            && !self
                .due
                .iter()
                .any(|(_, e)| matches!(e, Effect::RemoveMember(x) if x == name))
        {
            self.due.push((
                Instant::now() + self.member_delay,
                Effect::RemoveMember(name.to_string()),
            ));
        }
    }

    fn remove_member(&mut self, name: &str) {
        if !self.nodes.contains_key(name) {
            return;
        }
        self.edit_node(name, |n| {
            let a = n["metadata"]["annotations"].as_object_mut().unwrap();
            if let Some(member) = a.remove("etcd.k3s.cattle.io/node-name") {
                a.insert("etcd.k3s.cattle.io/removed-node-name".into(), member);
            }
            a.remove("etcd.k3s.cattle.io/node-address");
            set_condition(
                n,
                condition(
                    "EtcdIsVoter",
                    "False",
                    "NotAMember",
                    "Node is not a member of the etcd cluster",
                ),
            );
        });
    }

    /// Applies what has become due (member removals, boots, pod deletions).
    pub fn settle(&mut self) {
        let now = Instant::now();
        let (ready, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.due)
            .into_iter()
            .partition(|(t, _)| *t <= now);
        self.due = later;
        for (_, e) in ready {
            match e {
                Effect::RemoveMember(n) => self.remove_member(&n),
                Effect::Boot(n, facts, boots) => self.boot(&n, &facts, boots),
                Effect::DeletePod(ns, name, uid) => {
                    if self
                        .pods
                        .get(&(ns.clone(), name.clone()))
                        .is_some_and(|p| p["metadata"]["uid"] == uid.as_str())
                    {
                        self.pods.remove(&(ns, name));
                        self.rv += 1;
                    }
                }
            }
        }
    }

    fn is_live_server(n: &Value) -> bool {
        n["metadata"]["labels"]["node-role.kubernetes.io/etcd"] == "true"
            && n["status"]["conditions"].as_array().is_some_and(|c| {
                c.iter()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
    }

    /// The node was flashed with an image whose facts are `facts`: it goes
    /// down now and boots after `boot_delay` (then `flashes` records what k3s
    /// did). Returns what k3s would do if it booted now.
    pub fn flash(&mut self, node: &str, facts: ImageFacts) -> Outcome {
        let name = facts.node_name.clone().unwrap_or_else(|| node.to_string());
        let outcome = self.decide(&name, &facts);
        if self.nodes.contains_key(&name) {
            self.edit_node(&name, |n| {
                set_condition(
                    n,
                    condition(
                        "Ready",
                        "Unknown",
                        "NodeStatusUnknown",
                        "Kubelet stopped posting node status.",
                    ),
                );
            });
        }
        self.serial += 1;
        let boots = self.serial;
        self.due.push((
            Instant::now() + self.boot_delay,
            Effect::Boot(name, facts, boots),
        ));
        outcome
    }

    /// What k3s does with this image on this node, given the store now.
    fn decide(&self, name: &str, f: &ImageFacts) -> Outcome {
        let existing = self.nodes.get(name);
        let others_live = self
            .nodes
            .iter()
            .any(|(n, v)| n != name && Self::is_live_server(v));
        let removed = existing.is_some_and(|n| {
            n["metadata"]["annotations"]["etcd.k3s.cattle.io/removed-node-name"].is_string()
        });
        let was_member = existing
            .is_some_and(|n| n["metadata"]["labels"]["node-role.kubernetes.io/etcd"] == "true");
        if !f.server {
            return if others_live {
                Outcome::Back
            } else {
                Outcome::NeverJoins
            };
        }
        if f.data_kept && was_member {
            // Existing data: cluster-init and server are ignored (k3s
            // `Start`: "Starting etcd for existing cluster member").
            return if removed {
                Outcome::CrashLoop("this server is a not a member of the etcd cluster".into())
            } else {
                Outcome::Back
            };
        }
        if f.cluster_init || f.server_url.is_none() {
            // No data and nothing to join: `newCluster`.
            return if others_live {
                Outcome::SecondCluster
            } else if existing.is_some() {
                Outcome::Empty
            } else {
                Outcome::Founded
            };
        }
        if !others_live {
            return Outcome::NeverJoins;
        }
        if was_member && !removed {
            return Outcome::CrashLoop(format!(
                "etcd cluster join failed: duplicate node name found, please use a unique name for this node ({name})"
            ));
        }
        Outcome::Back
    }

    /// The node boots: applies its flash's outcome.
    fn boot(&mut self, name: &str, f: &ImageFacts, boots: u64) {
        let outcome = self.decide(name, f);
        self.flashes.push((name.to_string(), outcome.clone()));
        let boot = format!("boot-{name}-{boots}");
        match outcome {
            Outcome::CrashLoop(_) => {
                if self.nodes.contains_key(name) {
                    self.edit_node(name, |n| {
                        set_condition(
                            n,
                            condition("EtcdIsVoter", "False", "Unhealthy", "Node is unhealthy"),
                        );
                    });
                }
            }
            Outcome::NeverJoins => {}
            Outcome::SecondCluster | Outcome::Empty | Outcome::Founded => {
                // A new datastore: nothing of the old cluster is in it.
                self.nodes.clear();
                self.pods.clear();
                self.pdbs.clear();
                let n = self.new_node(name, true, &f.labels, &boot);
                self.nodes.insert(name.to_string(), n);
            }
            Outcome::Back => self.come_back(name, f, &boot),
        }
        self.restart_pods(name);
    }

    fn come_back(&mut self, name: &str, f: &ImageFacts, boot: &str) {
        if !self.nodes.contains_key(name) {
            let n = self.new_node(name, f.server, &f.labels, boot);
            self.nodes.insert(name.to_string(), n);
            return;
        }
        let member = f.server.then(|| format!("{name}-{}", self.hex8()));
        let version = self.version.clone();
        let kept = f.data_kept;
        self.edit_node(name, |n| {
            n["status"]["nodeInfo"]["bootID"] = boot.into();
            n["status"]["nodeInfo"]["kubeletVersion"] = version.into();
            set_condition(
                n,
                condition(
                    "Ready",
                    "True",
                    "KubeletReady",
                    "kubelet is posting ready status",
                ),
            );
            if let Some(member) = member {
                let a = n["metadata"]["annotations"].as_object_mut().unwrap();
                // Kept data: the same member; joined: a new one.
                if !(kept && a.contains_key("etcd.k3s.cattle.io/node-name")) {
                    a.insert("etcd.k3s.cattle.io/node-name".into(), member.into());
                }
                a.insert("etcd.k3s.cattle.io/node-address".into(), "127.0.0.1".into());
                set_condition(
                    n,
                    condition(
                        "EtcdIsVoter",
                        "True",
                        "MemberNotLearner",
                        "Node is a voting member of the etcd cluster",
                    ),
                );
            }
        });
        self.member_controller(name);
    }

    /// After a reboot: DaemonSet and mirror pods are recreated, the rest is gone.
    fn restart_pods(&mut self, node: &str) {
        let keys: Vec<(String, String)> = self
            .pods
            .iter()
            .filter(|(_, p)| p["spec"]["nodeName"] == node)
            .map(|(k, _)| k.clone())
            .collect();
        for k in keys {
            let rv = self.bump();
            let p = self.pods.get_mut(&k).unwrap();
            let ds = p["metadata"]["ownerReferences"][0]["kind"] == "DaemonSet";
            let mirror = p["metadata"]["annotations"]["kubernetes.io/config.mirror"].is_string();
            if ds || mirror {
                p["metadata"]["uid"] = format!("uid-{}-{rv}", k.1).into();
            } else {
                self.pods.remove(&k);
            }
        }
    }

    /// POST .../pods/NAME/eviction: (HTTP status, body).
    pub fn evict(&mut self, ns: &str, name: &str) -> (u16, Value) {
        let key = (ns.to_string(), name.to_string());
        let Some(pod) = self.pods.get(&key).cloned() else {
            return (
                404,
                status(404, "NotFound", &format!("pods \"{name}\" not found"), None),
            );
        };
        let phase = pod["status"]["phase"].as_str().unwrap_or("");
        let terminal = matches!(phase, "Succeeded" | "Failed" | "Pending")
            || pod["metadata"]["deletionTimestamp"].is_string();
        if !terminal {
            let labels = &pod["metadata"]["labels"];
            let matching: Vec<usize> = (0..self.pdbs.len())
                .filter(|&i| {
                    let p = &self.pdbs[i];
                    p.namespace == ns
                        && !p.selector.is_empty()
                        && p.selector.iter().all(|(k, v)| labels[k] == v.as_str())
                })
                .collect();
            if matching.len() > 1 {
                return (
                    500,
                    status(
                        500,
                        "InternalError",
                        "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.",
                        None,
                    ),
                );
            }
            if let Some(&i) = matching.first() {
                let p = &mut self.pdbs[i];
                if p.refusals > 0 {
                    if p.refusals != u32::MAX {
                        p.refusals -= 1;
                    }
                    self.refused_evictions += 1;
                    let cause = format!(
                        "The disruption budget {} needs {} healthy pods and has {} currently",
                        p.name, p.desired_healthy, p.current_healthy
                    );
                    return (
                        429,
                        status(
                            429,
                            "TooManyRequests",
                            "Cannot evict pod as it would violate the pod's disruption budget.",
                            Some(
                                json!({"causes": [{"reason": "DisruptionBudget", "message": cause}]}),
                            ),
                        ),
                    );
                }
            }
        }
        self.evicted.push(format!("{ns}/{name}"));
        let uid = pod["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if pod["metadata"]["ownerReferences"][0]["kind"] == "DaemonSet" {
            // The DaemonSet controller puts it back at once (it tolerates
            // unschedulable): the same name here, a new UID.
            let rv = self.bump();
            self.pods.get_mut(&key).unwrap()["metadata"]["uid"] = format!("uid-{name}-{rv}").into();
        } else {
            self.bump();
            self.pods.get_mut(&key).unwrap()["metadata"]["deletionTimestamp"] =
                imgbuild::secrets::client::rfc3339(super::now()).into();
            // A graceful deletion ends when the node's kubelet confirms the
            // pod stopped; on a node that is not Ready nothing does, and the
            // pod stays Terminating.
            let node_ready = pod["spec"]["nodeName"]
                .as_str()
                .and_then(|n| self.nodes.get(n))
                .is_some_and(|n| {
                    n["status"]["conditions"].as_array().is_some_and(|c| {
                        c.iter()
                            .any(|c| c["type"] == "Ready" && c["status"] == "True")
                    })
                });
            if node_ready {
                self.due.push((
                    Instant::now() + self.pod_grace,
                    Effect::DeletePod(ns.into(), name.into(), uid),
                ));
            }
        }
        (
            201,
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}),
        )
    }
}

/// A `Status` object as the API sends it.
pub fn status(code: u16, reason: &str, message: &str, details: Option<Value>) -> Value {
    let mut s = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                       "message": message, "reason": reason, "code": code});
    if let Some(d) = details {
        s["details"] = d;
    }
    s
}

/// A pod bound to `node`, controlled by a `owner` (a kind) when given.
pub fn pod(ns: &str, name: &str, node: &str, owner: Option<&str>) -> Value {
    let mut p = json!({
        "kind": "Pod", "apiVersion": "v1",
        "metadata": {"name": name, "namespace": ns, "uid": format!("uid-{name}-0"),
                     "labels": {"app": name}, "annotations": {}},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10"}]},
        "status": {"phase": "Running"}
    });
    if let Some(kind) = owner {
        p["metadata"]["ownerReferences"] = json!([{"apiVersion": "apps/v1", "kind": kind, "name": format!("{name}-owner"), "uid": "owner-uid", "controller": true}]);
    }
    p
}
