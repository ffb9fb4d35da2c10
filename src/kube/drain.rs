//! Draining a node as `kubectl drain` does (kubectl `pkg/drain/filters.go`
//! and `drain.go`): list the node's pods by `spec.nodeName`; run the filters
//! in kubectl's order (DaemonSet-managed pods are left alone, as with
//! `--ignore-daemonsets`; mirror pods are skipped; pods with emptyDir data or
//! without a controller are refused unless allowed); evict the rest through
//! the Eviction API, retrying every pod a PodDisruptionBudget holds (429)
//! until the timeout; then wait until every evicted pod is gone (deleted, or
//! replaced by a pod of another UID). The node is not cordoned here: cordon
//! it first (`AdminApi::cordon`), so evicted pods do not come back to it.

use std::time::{Duration, Instant};

use super::admin::{AdminApi, Eviction};
use super::client::ApiError;
use super::pod::Pod;

#[derive(Debug, Clone, Copy)]
pub struct DrainOptions {
    /// Evict pods with emptyDir volumes (their data is lost), as
    /// `--delete-emptydir-data`.
    pub delete_emptydir_data: bool,
    /// Evict pods that no controller will recreate, as `--force`.
    pub force: bool,
    /// The whole drain, evictions and waiting for the pods to go.
    pub timeout: Duration,
    /// Between evictions a PodDisruptionBudget refused (kubectl: 5 s).
    pub retry_interval: Duration,
    /// Between checks whether evicted pods are gone (kubectl: 1 s).
    pub poll_interval: Duration,
}

impl Default for DrainOptions {
    fn default() -> DrainOptions {
        DrainOptions {
            delete_emptydir_data: false,
            force: false,
            timeout: Duration::from_secs(300),
            retry_interval: Duration::from_secs(5),
            poll_interval: Duration::from_secs(1),
        }
    }
}

/// What the filters decided for one pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Evict,
    /// Evict, with a warning (its data or its only copy goes).
    EvictWarn(&'static str),
    /// Leave it on the node.
    Skip(&'static str),
    /// The drain may not go on while it is there.
    Refuse(&'static str),
}

const DAEMON_SET: &str = "DaemonSet-managed";
const MIRROR: &str = "mirror pod of a static pod";
const LOCAL_STORAGE: &str = "it has emptyDir data (allow with the option to delete emptyDir data)";
const LOCAL_STORAGE_WARN: &str = "its emptyDir data is deleted";
const UNMANAGED: &str = "no controller will recreate it (allow with the option to force)";
const UNMANAGED_WARN: &str = "no controller will recreate it";

/// DaemonSet pods stay: the DaemonSet controller ignores unschedulable and
/// would recreate them at once (kubectl evicts only finished ones).
fn daemon_set_filter(pod: &Pod, _: &DrainOptions) -> Verdict {
    match pod.metadata.controller() {
        Some(c) if c.kind == "DaemonSet" && !pod.finished() => Verdict::Skip(DAEMON_SET),
        _ => Verdict::Evict,
    }
}

/// The API's copy of a static pod cannot be evicted; the kubelet owns it.
fn mirror_pod_filter(pod: &Pod, _: &DrainOptions) -> Verdict {
    if pod.is_mirror() {
        Verdict::Skip(MIRROR)
    } else {
        Verdict::Evict
    }
}

fn local_storage_filter(pod: &Pod, opts: &DrainOptions) -> Verdict {
    if !pod.has_local_storage() || pod.finished() {
        Verdict::Evict
    } else if opts.delete_emptydir_data {
        Verdict::EvictWarn(LOCAL_STORAGE_WARN)
    } else {
        Verdict::Refuse(LOCAL_STORAGE)
    }
}

fn unreplicated_filter(pod: &Pod, opts: &DrainOptions) -> Verdict {
    if pod.finished() || pod.metadata.controller().is_some() {
        Verdict::Evict
    } else if opts.force {
        Verdict::EvictWarn(UNMANAGED_WARN)
    } else {
        Verdict::Refuse(UNMANAGED)
    }
}

/// The filters in kubectl's order: the first that does not say Evict
/// decides (a warning is kept unless a later filter skips or refuses).
pub fn verdict(pod: &Pod, opts: &DrainOptions) -> Verdict {
    let filters: [fn(&Pod, &DrainOptions) -> Verdict; 4] = [
        daemon_set_filter,
        mirror_pod_filter,
        local_storage_filter,
        unreplicated_filter,
    ];
    let mut result = Verdict::Evict;
    for f in filters {
        match f(pod, opts) {
            Verdict::Evict => {}
            w @ Verdict::EvictWarn(_) => result = w,
            other => return other,
        }
    }
    result
}

/// What a drain did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DrainReport {
    /// `namespace/name` of each pod evicted (and gone).
    pub evicted: Vec<String>,
    /// Pods left on the node, and why.
    pub skipped: Vec<(String, String)>,
    /// Pods evicted with a warning, and the warning.
    pub warnings: Vec<(String, String)>,
}

/// A pod a PodDisruptionBudget kept on the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    pub pod: String,
    pub budget: Option<String>,
    pub message: String,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum DrainError {
    /// The filters refused pods; nothing was evicted.
    #[error("cannot drain {node}: {}", list(pods))]
    Refused {
        node: String,
        pods: Vec<(String, String)>,
    },
    /// PodDisruptionBudgets still refused evictions at the timeout.
    #[error("cannot drain {node}: after {} a PodDisruptionBudget still refuses to let {} go ({}); scale the workload up or relax the budget, then run again", crate::util::duration::format_duration(*waited), held.iter().map(|h| h.pod.as_str()).collect::<Vec<_>>().join(", "), held.iter().map(describe_held).collect::<Vec<_>>().join("; "))]
    Budget {
        node: String,
        held: Vec<Held>,
        waited: Duration,
    },
    /// Evicted pods were still there at the timeout.
    #[error("cannot drain {node}: evicted pods still there after {}: {}", crate::util::duration::format_duration(*waited), pods.join(", "))]
    NotGone {
        node: String,
        pods: Vec<String>,
        waited: Duration,
    },
    #[error(transparent)]
    Api(#[from] ApiError),
}

impl DrainError {
    /// The budgets that held pods (for a `--json` report).
    pub fn budgets(&self) -> Vec<String> {
        match self {
            DrainError::Budget { held, .. } => {
                held.iter().filter_map(|h| h.budget.clone()).collect()
            }
            _ => Vec::new(),
        }
    }
}

fn list(pods: &[(String, String)]) -> String {
    pods.iter()
        .map(|(p, why)| format!("{p}: {why}"))
        .collect::<Vec<_>>()
        .join("; ")
}

fn describe_held(h: &Held) -> String {
    match &h.budget {
        Some(b) => format!("PodDisruptionBudget {b}: {}", h.message),
        None => h.message.clone(),
    }
}

/// Drains `node` (see the module comment). Refused pods stop it before any
/// eviction; a budget that still refuses at the timeout stops it with the
/// budget named.
pub fn drain(admin: &AdminApi, node: &str, opts: &DrainOptions) -> Result<DrainReport, DrainError> {
    let start = Instant::now();
    let deadline = start + opts.timeout;
    let pods = admin.pods_on(node, request_time(deadline))?;
    let mut report = DrainReport::default();
    let mut refused = Vec::new();
    let mut pending = Vec::new();
    for pod in pods {
        match verdict(&pod, opts) {
            Verdict::Evict => pending.push(pod),
            Verdict::EvictWarn(w) => {
                report.warnings.push((pod.key(), w.to_string()));
                pending.push(pod);
            }
            Verdict::Skip(why) => report.skipped.push((pod.key(), why.to_string())),
            Verdict::Refuse(why) => refused.push((pod.key(), why.to_string())),
        }
    }
    if !refused.is_empty() {
        return Err(DrainError::Refused {
            node: node.to_string(),
            pods: refused,
        });
    }
    for (pod, why) in &report.warnings {
        tracing::warn!("{node}: evicting {pod}: {why}");
    }
    tracing::info!(
        "{node}: draining {} pod(s), leaving {} ({})",
        pending.len(),
        report.skipped.len(),
        if report.skipped.is_empty() {
            "none".to_string()
        } else {
            "DaemonSet and mirror pods".to_string()
        }
    );
    let evicted = evict_all(admin, node, pending, opts, start, deadline)?;
    wait_gone(admin, node, &evicted, opts, start, deadline)?;
    report.evicted = evicted.iter().map(Pod::key).collect();
    tracing::info!("{node}: drained ({} pod(s) evicted)", report.evicted.len());
    Ok(report)
}

/// One request's time: what is left of the drain, but at least 5 s, so
/// that the round at the timeout is still asked and answered.
fn request_time(deadline: Instant) -> Duration {
    deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_secs(5))
}

/// Evicts every pod, going round again for those a budget holds, every
/// `retry_interval`, until `deadline`.
fn evict_all(
    admin: &AdminApi,
    node: &str,
    mut pending: Vec<Pod>,
    opts: &DrainOptions,
    start: Instant,
    deadline: Instant,
) -> Result<Vec<Pod>, DrainError> {
    let mut evicted = Vec::new();
    let mut last: std::collections::BTreeMap<String, String> = Default::default();
    loop {
        let mut held = Vec::new();
        for pod in pending {
            match admin.evict(&pod, request_time(deadline))? {
                Eviction::Accepted => {
                    tracing::info!("{node}: evicting {}", pod.key());
                    evicted.push(pod);
                }
                Eviction::Gone => evicted.push(pod),
                Eviction::Blocked { budget, message } => {
                    let h = Held {
                        pod: pod.key(),
                        budget,
                        message,
                    };
                    let text = describe_held(&h);
                    if last.get(&h.pod) != Some(&text) {
                        tracing::info!(
                            "{node}: {} held by {text}; trying again every {}",
                            h.pod,
                            crate::util::duration::format_duration(opts.retry_interval)
                        );
                        last.insert(h.pod.clone(), text);
                    }
                    held.push((pod, h));
                }
            }
        }
        if held.is_empty() {
            return Ok(evicted);
        }
        // Like kubectl, go round again until the timeout; the last round
        // comes at the timeout itself (a timeout shorter than the interval
        // still gets a second try).
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(DrainError::Budget {
                node: node.to_string(),
                held: held.into_iter().map(|(_, h)| h).collect(),
                waited: start.elapsed(),
            });
        }
        std::thread::sleep(opts.retry_interval.min(left));
        pending = held.into_iter().map(|(p, _)| p).collect();
    }
}

/// Waits until each evicted pod is gone or replaced (another UID).
fn wait_gone(
    admin: &AdminApi,
    node: &str,
    evicted: &[Pod],
    opts: &DrainOptions,
    start: Instant,
    deadline: Instant,
) -> Result<(), DrainError> {
    let mut waiting: Vec<&Pod> = evicted.iter().collect();
    loop {
        let mut still = Vec::new();
        for pod in waiting {
            match admin.pod(
                &pod.metadata.namespace,
                &pod.metadata.name,
                request_time(deadline),
            )? {
                Some(p) if p.metadata.uid == pod.metadata.uid => still.push(pod),
                _ => {}
            }
        }
        if still.is_empty() {
            return Ok(());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(DrainError::NotGone {
                node: node.to_string(),
                pods: still.iter().map(|p| p.key()).collect(),
                waited: start.elapsed(),
            });
        }
        std::thread::sleep(opts.poll_interval.min(left));
        waiting = still;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    fn owned(kind: &str) -> serde_json::Value {
        serde_json::json!([{"kind": kind, "name": "x", "uid": "u", "controller": true}])
    }

    #[test]
    fn filters_follow_kubectl() {
        let o = DrainOptions::default();
        let ds = pod(
            serde_json::json!({"metadata": {"name": "flannel", "ownerReferences": owned("DaemonSet")},
                                        "status": {"phase": "Running"}}),
        );
        assert_eq!(verdict(&ds, &o), Verdict::Skip(DAEMON_SET));
        let ds_done = pod(
            serde_json::json!({"metadata": {"ownerReferences": owned("DaemonSet")},
                                             "status": {"phase": "Succeeded"}}),
        );
        assert_eq!(verdict(&ds_done, &o), Verdict::Evict);
        let mirror = pod(
            serde_json::json!({"metadata": {"annotations": {"kubernetes.io/config.mirror": "abc"}}}),
        );
        assert_eq!(verdict(&mirror, &o), Verdict::Skip(MIRROR));
        let rs = pod(
            serde_json::json!({"metadata": {"ownerReferences": owned("ReplicaSet")}, "status": {"phase": "Running"}}),
        );
        assert_eq!(verdict(&rs, &o), Verdict::Evict);
        let bare =
            pod(serde_json::json!({"metadata": {"name": "debug"}, "status": {"phase": "Running"}}));
        assert_eq!(verdict(&bare, &o), Verdict::Refuse(UNMANAGED));
        let forced = DrainOptions { force: true, ..o };
        assert_eq!(verdict(&bare, &forced), Verdict::EvictWarn(UNMANAGED_WARN));
        let cache = pod(
            serde_json::json!({"metadata": {"ownerReferences": owned("ReplicaSet")},
                                           "spec": {"volumes": [{"name": "c", "emptyDir": {}}]},
                                           "status": {"phase": "Running"}}),
        );
        assert_eq!(verdict(&cache, &o), Verdict::Refuse(LOCAL_STORAGE));
        let del = DrainOptions {
            delete_emptydir_data: true,
            ..o
        };
        assert_eq!(
            verdict(&cache, &del),
            Verdict::EvictWarn(LOCAL_STORAGE_WARN)
        );
        // A controller-less pod with emptyDir: the later refusal wins over
        // the earlier warning.
        let both = pod(
            serde_json::json!({"spec": {"volumes": [{"name": "c", "emptyDir": {}}]},
                                          "status": {"phase": "Running"}}),
        );
        assert_eq!(verdict(&both, &del), Verdict::Refuse(UNMANAGED));
        // Finished pods go whatever they are.
        let done = pod(
            serde_json::json!({"spec": {"volumes": [{"name": "c", "emptyDir": {}}]},
                                          "status": {"phase": "Failed"}}),
        );
        assert_eq!(verdict(&done, &o), Verdict::Evict);
    }
}
