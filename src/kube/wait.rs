//! Waiting until nodes have joined and are Ready: poll each Node, then watch
//! for changes until the next round, with a line per node whenever its state
//! changes. A Node counts as up only when Ready is True and it booted after
//! the flash recorded in the deploy state, so the stale Node object of a
//! re-flashed machine is not taken for the new one.

use std::time::{Duration, Instant};

use super::client::{Api, ApiError, Health};
use super::node::{Node, parse_time};
use crate::deliver::state::{Before, Delivery};

/// A node to wait for.
#[derive(Debug, Clone)]
pub struct Target {
    /// The profile's node name (for people).
    pub name: String,
    /// Its Kubernetes node name (the hostname).
    pub node_name: String,
    /// Its last flash, from the deploy state.
    pub flash: Option<Delivery>,
}

/// Where a node is on its way from flashed to Ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeState {
    /// The API has not been reached yet.
    Unknown,
    NotRegistered,
    /// Registered, but not Ready (or Ready only in a Node object from before the flash).
    NotReady {
        status: String,
        reason: String,
        message: String,
        /// The Node object has not been updated since before the flash.
        before_flash: bool,
    },
    /// Ready True, but the Node object is from before the flash.
    Stale {
        detail: String,
    },
    Ready {
        version: String,
        /// Known to have booted after the flash (false: no flash recorded).
        after_flash: bool,
    },
}

impl NodeState {
    pub fn is_ready(&self) -> bool {
        matches!(self, NodeState::Ready { .. })
    }

    /// One line for progress: `registered, NotReady (KubeletNotReady: ...)`.
    pub fn describe(&self) -> String {
        match self {
            NodeState::Unknown => "waiting for the API".into(),
            NodeState::NotRegistered => "API reachable, node not registered yet".into(),
            NodeState::NotReady {
                status,
                reason,
                message,
                before_flash,
            } => format!(
                "registered, Ready={status}{}{}",
                condition_detail(reason, message),
                if *before_flash {
                    " (this Node object is from before the flash)"
                } else {
                    ""
                }
            ),
            NodeState::Stale { detail } => {
                format!("registered, but its Ready Node object is from before the flash ({detail})")
            }
            NodeState::Ready {
                version,
                after_flash,
            } => format!(
                "Ready ({}{})",
                if version.is_empty() {
                    "version unknown"
                } else {
                    version
                },
                if *after_flash {
                    ", booted after the flash"
                } else {
                    ", no flash recorded"
                }
            ),
        }
    }
}

fn condition_detail(reason: &str, message: &str) -> String {
    match (reason.is_empty(), message.is_empty()) {
        (true, true) => String::new(),
        (false, true) => format!(" ({reason})"),
        (true, false) => format!(" ({message})"),
        (false, false) => format!(" ({reason}: {message})"),
    }
}

/// Whether `node` booted after `flash`: by its boot ID when the one from
/// before the flash is known, else by when Ready last changed. `None`: no way
/// to tell.
fn booted_after(node: &Node, flash: &Delivery) -> Option<(bool, String)> {
    let boot = &node.status.node_info.boot_id;
    match &flash.before {
        Some(Before::BootId(old)) if !boot.is_empty() => {
            return Some((boot != old, format!("bootID {boot} unchanged")));
        }
        // The API had no such Node before the flash: this one is new.
        Some(Before::NotRegistered) => return Some((true, String::new())),
        _ => {}
    }
    let at = flash.flashed_at?;
    let changed = node
        .ready()?
        .last_transition_time
        .as_deref()
        .and_then(parse_time)?;
    Some((
        changed >= at,
        format!(
            "Ready since {}, the flash finished at {}",
            crate::secrets::client::rfc3339(changed),
            crate::secrets::client::rfc3339(at)
        ),
    ))
}

/// The state of a target given its Node (if any) and its last flash.
pub fn classify(node: Option<&Node>, flash: Option<&Delivery>) -> NodeState {
    let Some(node) = node else {
        return NodeState::NotRegistered;
    };
    let after = flash.and_then(|f| booted_after(node, f));
    let ready = node.ready();
    if node.is_ready() {
        return match after {
            Some((false, detail)) => NodeState::Stale { detail },
            Some((true, _)) => NodeState::Ready {
                version: node.status.node_info.kubelet_version.clone(),
                after_flash: true,
            },
            None => NodeState::Ready {
                version: node.status.node_info.kubelet_version.clone(),
                after_flash: false,
            },
        };
    }
    NodeState::NotReady {
        status: ready
            .map(|c| c.status.clone())
            .unwrap_or_else(|| "unset".into()),
        reason: ready.and_then(|c| c.reason.clone()).unwrap_or_default(),
        message: ready.and_then(|c| c.message.clone()).unwrap_or_default(),
        before_flash: matches!(after, Some((false, _))),
    }
}

#[derive(Debug, Clone, Copy)]
pub struct WaitOptions {
    pub timeout: Duration,
    /// How often to poll (and how long each watch lasts).
    pub interval: Duration,
    /// How often to repeat a "still waiting" line.
    pub heartbeat: Duration,
}

/// How the wait ended.
#[derive(Debug, Clone)]
pub struct WaitResult {
    pub states: Vec<NodeState>,
    /// The API's last error, when its last answer was one.
    pub api_error: Option<ApiError>,
    /// Whether the API answered at all.
    pub api_reached: bool,
    pub elapsed: Duration,
}

impl WaitResult {
    pub fn all_ready(&self) -> bool {
        self.states.iter().all(NodeState::is_ready)
    }
}

struct Tracker<'a> {
    targets: &'a [Target],
    states: Vec<NodeState>,
}

impl Tracker<'_> {
    fn set(&mut self, i: usize, state: NodeState) {
        if self.states[i] != state {
            tracing::info!("{}: {}", self.targets[i].name, state.describe());
            self.states[i] = state;
        }
    }

    fn observe(&mut self, node: &Node) {
        if let Some(i) = self
            .targets
            .iter()
            .position(|t| t.node_name == node.metadata.name)
        {
            let s = classify(Some(node), self.targets[i].flash.as_ref());
            self.set(i, s);
        }
    }

    fn all_ready(&self) -> bool {
        self.states.iter().all(NodeState::is_ready)
    }

    fn pending(&self) -> String {
        self.targets
            .iter()
            .zip(&self.states)
            .filter(|(_, s)| !s.is_ready())
            .map(|(t, s)| format!("{} {}", t.name, s.describe()))
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// Waits until every target is up or `opts.timeout` passes.
pub fn wait(api: &Api, targets: &[Target], opts: &WaitOptions) -> WaitResult {
    let start = Instant::now();
    let deadline = start + opts.timeout;
    let mut t = Tracker {
        targets,
        states: vec![NodeState::Unknown; targets.len()],
    };
    let mut api_error: Option<ApiError> = None;
    let mut api_reached = false;
    let mut api_health: Option<Health> = None;
    let mut heartbeat = start;
    let url = api.url().to_string();
    while !t.all_ready() {
        let round = Instant::now();
        let remaining = deadline.saturating_duration_since(round);
        if remaining.is_zero() {
            break;
        }
        match api.readyz(remaining) {
            Err(e) => {
                if api_error.as_ref().map(ToString::to_string) != Some(e.to_string()) {
                    tracing::info!("API: {e}; trying again every {:?}", opts.interval);
                }
                api_error = Some(e);
            }
            Ok(health) => {
                if !api_reached || api_error.is_some() || api_health.as_ref() != Some(&health) {
                    match &health {
                        Health::Ready => tracing::info!("API {url}: reachable and ready"),
                        Health::NotReady(why) => {
                            tracing::info!("API {url}: reachable, not ready yet ({why})")
                        }
                    }
                }
                api_reached = true;
                api_error = None;
                api_health = Some(health);
                for (i, target) in targets.iter().enumerate() {
                    if t.states[i].is_ready() {
                        continue;
                    }
                    let left = deadline.saturating_duration_since(Instant::now());
                    match api.node(&target.node_name, left) {
                        Ok(node) => t.set(i, classify(node.as_ref(), target.flash.as_ref())),
                        Err(e) => {
                            tracing::info!("API: {e}");
                            api_error = Some(e);
                            break;
                        }
                    }
                }
                if t.all_ready() {
                    break;
                }
                if api_error.is_none() {
                    // Changes arrive as they happen until the next round is due.
                    let left = deadline.saturating_duration_since(Instant::now());
                    let span = opts.interval.min(left);
                    if !span.is_zero() {
                        match api.watch_nodes(span, deadline, |node| {
                            t.observe(node);
                            t.all_ready()
                        }) {
                            Ok(true) => break,
                            Ok(false) => {}
                            // Polling alone still works (a watch may be refused or cut).
                            Err(e) => tracing::debug!("watch: {e}"),
                        }
                    }
                }
            }
        }
        if heartbeat.elapsed() >= opts.heartbeat && !t.all_ready() {
            heartbeat = Instant::now();
            tracing::info!(
                "still waiting ({} of {}): {}",
                crate::util::duration::format_duration(start.elapsed()),
                crate::util::duration::format_duration(opts.timeout),
                t.pending()
            );
        }
        let next = (round + opts.interval).min(deadline);
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        }
    }
    WaitResult {
        states: t.states,
        api_error,
        api_reached,
        elapsed: start.elapsed(),
    }
}

/// How `until_node` ended without its condition holding.
#[derive(Debug, Clone)]
pub enum UntilError {
    /// The deadline passed; the Node as last seen, and the API's last error.
    TimedOut {
        last: Option<Box<Node>>,
        api_error: Option<ApiError>,
    },
    /// An error waiting will not fix (certificates, 401/403, a bad name).
    Api(ApiError),
}

/// Whether an API error may go away by itself (the API restarting, a server
/// being flashed behind a VIP).
fn transient(e: &ApiError) -> bool {
    matches!(
        e,
        ApiError::Unreachable { .. }
            | ApiError::Timeout { .. }
            | ApiError::Http { .. }
            | ApiError::Decode { .. }
    )
}

/// Follows one Node (GET, then a watch on it until the next round) until
/// `done` holds for it or `deadline` passes; `done` also sees `None` while
/// there is no such Node (to report it), but only a Node ends the wait. API
/// errors that may pass are retried every `interval`; others end it.
pub fn until_node(
    api: &Api,
    name: &str,
    deadline: Instant,
    interval: Duration,
    mut done: impl FnMut(Option<&Node>) -> bool,
) -> Result<Node, UntilError> {
    let mut last: Option<Box<Node>> = None;
    let mut api_error: Option<ApiError> = None;
    let path = format!(
        "/api/v1/nodes?watch=true&fieldSelector=metadata.name%3D{}",
        super::client::path_segment(name).map_err(UntilError::Api)?
    );
    loop {
        let round = Instant::now();
        let left = deadline.saturating_duration_since(round);
        if left.is_zero() {
            return Err(UntilError::TimedOut { last, api_error });
        }
        match api.node(name, left) {
            Ok(node) => {
                api_error = None;
                if done(node.as_ref())
                    && let Some(n) = node
                {
                    return Ok(n);
                }
                last = node.map(Box::new);
                let span = interval.min(deadline.saturating_duration_since(Instant::now()));
                let mut hit = None;
                let watched = api.watch::<Node>(&path, span, deadline, |c| match c {
                    super::client::Change::Upsert(n) if n.metadata.name == name => {
                        let ok = done(Some(&n));
                        if ok {
                            hit = Some(n);
                        } else {
                            last = Some(Box::new(n));
                        }
                        ok
                    }
                    _ => false,
                });
                if let Some(n) = hit {
                    return Ok(n);
                }
                if let Err(e) = watched {
                    tracing::debug!("watch: {e}");
                }
            }
            Err(e) if transient(&e) => {
                if api_error.as_ref().map(ToString::to_string) != Some(e.to_string()) {
                    tracing::info!(
                        "API: {e}; trying again every {}",
                        crate::util::duration::format_duration(interval)
                    );
                }
                api_error = Some(e);
            }
            Err(e) => return Err(UntilError::Api(e)),
        }
        let next = (round + interval).min(deadline);
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(ready: &str, boot: &str, since: &str) -> Node {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "n"},
            "status": {
                "conditions": [{"type": "Ready", "status": ready, "reason": "KubeletReady",
                                "message": "", "lastTransitionTime": since}],
                "nodeInfo": {"bootID": boot, "kubeletVersion": "v1.32.5+k3s1"}
            }
        }))
        .unwrap()
    }

    fn flash(before: Option<Before>) -> Delivery {
        Delivery {
            sha256: String::new(),
            flashed_at: Some(1_714_003_200),
            instance_id: None,
            before,
        }
    }

    #[test]
    fn up_means_ready_and_booted_after_the_flash() {
        let old = Some(Before::BootId("b1".into()));
        // Same boot ID as before the flash: stale, however recent Ready looks.
        assert!(matches!(
            classify(
                Some(&node("True", "b1", "2030-01-01T00:00:00Z")),
                Some(&flash(old.clone()))
            ),
            NodeState::Stale { .. }
        ));
        assert!(
            classify(
                Some(&node("True", "b2", "2020-01-01T00:00:00Z")),
                Some(&flash(old))
            )
            .is_ready()
        );
        // Boot ID unknown: Ready must have changed after the flash.
        assert!(matches!(
            classify(
                Some(&node("True", "b1", "2024-04-24T23:59:59Z")),
                Some(&flash(None))
            ),
            NodeState::Stale { .. }
        ));
        assert!(
            classify(
                Some(&node("True", "b1", "2024-04-25T00:00:01Z")),
                Some(&flash(None))
            )
            .is_ready()
        );
        // Not registered before the flash: any Ready Node is the new one.
        assert!(
            classify(
                Some(&node("True", "b1", "2000-01-01T00:00:00Z")),
                Some(&flash(Some(Before::NotRegistered)))
            )
            .is_ready()
        );
        // No flash recorded: Ready is enough.
        assert_eq!(
            classify(Some(&node("True", "b1", "2000-01-01T00:00:00Z")), None),
            NodeState::Ready {
                version: "v1.32.5+k3s1".into(),
                after_flash: false
            }
        );
        assert_eq!(classify(None, None), NodeState::NotRegistered);
        assert!(matches!(
            classify(
                Some(&node("Unknown", "b1", "2000-01-01T00:00:00Z")),
                Some(&flash(Some(Before::BootId("b1".into()))))
            ),
            NodeState::NotReady {
                before_flash: true,
                ..
            }
        ));
    }
}
