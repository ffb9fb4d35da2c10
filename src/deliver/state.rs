//! The deploy state file: which image each node was last delivered with, so a
//! failed or interrupted deploy continues where it stopped, and when, so that
//! waiting for the cluster can tell a node that came back from the flash from
//! a stale Node object of its previous life.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::io::Sha256Digest;

pub const STATE_FILE: &str = ".deploy-state.json";

/// What the cluster said about a node just before it was flashed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Before {
    /// The API answered and had no Node of that name.
    NotRegistered,
    /// The Node's `status.nodeInfo.bootID`: a new boot changes it.
    BootId(String),
}

/// One node's last delivery.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    /// sha256 (hex) of the image delivered.
    pub sha256: String,
    /// Unix seconds when the flash finished (the node was powered on then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flashed_at: Option<u64>,
    /// The image's cloud-init instance ID, to compare with what a build would make now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    /// The node as the API saw it before the flash; `None` when unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<Before>,
}

/// Entries as earlier versions wrote them (node -> digest) or as now.
#[derive(Deserialize)]
#[serde(untagged)]
enum Stored {
    Digest(String),
    Delivery(Delivery),
}

#[derive(Debug)]
pub struct DeployState {
    path: PathBuf,
    done: BTreeMap<String, Delivery>,
    /// Facts gathered before a node's flash, recorded with it when it succeeds.
    pending: BTreeMap<String, Delivery>,
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl DeployState {
    /// The state in `dir` (empty when there is none or it is unreadable).
    pub fn load(dir: &Path) -> DeployState {
        let path = dir.join(STATE_FILE);
        use crate::util::prescan;
        let stored: BTreeMap<String, Stored> = prescan::read_file(&path, prescan::CONFIG)
            .map_err(|e| {
                if let prescan::ReadError::Limit(e) = e {
                    tracing::warn!("{e}; starting without it");
                }
            })
            .ok()
            .filter(|t| {
                let what = path.display().to_string();
                prescan::json(&what, t, prescan::CONFIG)
                    .map_err(|e| tracing::warn!("{e}; starting without it"))
                    .is_ok()
            })
            .and_then(|t| serde_json::from_slice(&t).ok())
            .unwrap_or_default();
        let done = stored
            .into_iter()
            .map(|(node, s)| {
                let d = match s {
                    Stored::Digest(sha256) => Delivery {
                        sha256,
                        ..Default::default()
                    },
                    Stored::Delivery(d) => d,
                };
                (node, d)
            })
            .collect();
        DeployState {
            path,
            done,
            pending: BTreeMap::new(),
        }
    }

    pub fn is_done(&self, node: &str, sha256: &Sha256Digest) -> bool {
        self.delivered(node) == Some(&sha256.to_string())
    }

    /// The digest `node` was last delivered with.
    pub fn delivered(&self, node: &str) -> Option<&str> {
        self.done.get(node).map(|d| d.sha256.as_str())
    }

    /// Everything recorded about `node`'s last delivery.
    pub fn delivery(&self, node: &str) -> Option<&Delivery> {
        self.done.get(node)
    }

    /// Remembers facts about `node` from before its flash; they are recorded
    /// with the flash when it succeeds.
    pub fn prepare(&mut self, node: &str, instance_id: Option<String>, before: Option<Before>) {
        self.pending.insert(
            node.to_string(),
            Delivery {
                instance_id,
                before,
                ..Default::default()
            },
        );
    }

    /// Forgets `node`'s last delivery (in memory; the file follows at the
    /// next record): it is to be flashed again whatever it was flashed with.
    pub fn forget(&mut self, node: &str) {
        self.done.remove(node);
    }

    pub fn record(&mut self, node: &str, sha256: &Sha256Digest) -> Result<()> {
        let mut d = self.pending.remove(node).unwrap_or_default();
        d.sha256 = sha256.to_string();
        d.flashed_at = Some(now());
        self.done.insert(node.to_string(), d);
        let text = serde_json::to_string_pretty(&self.done)?;
        std::fs::write(&self.path, text).with_context(|| format!("writing {}", self.path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_old_format_and_records_the_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let sha = "ab".repeat(32);
        std::fs::write(
            dir.path().join(STATE_FILE),
            format!(r#"{{"node01": "{sha}"}}"#),
        )
        .unwrap();
        let mut s = DeployState::load(dir.path());
        assert_eq!(s.delivered("node01"), Some(sha.as_str()));
        s.prepare(
            "node02",
            Some("iid".into()),
            Some(Before::BootId("b1".into())),
        );
        let digest = Sha256Digest::parse(&"cd".repeat(32)).unwrap();
        s.record("node02", &digest).unwrap();
        let again = DeployState::load(dir.path());
        let d = again.delivery("node02").unwrap();
        assert_eq!(d.before, Some(Before::BootId("b1".into())));
        assert_eq!(d.instance_id.as_deref(), Some("iid"));
        assert!(d.flashed_at.is_some_and(|t| t > 1_700_000_000));
        assert!(again.is_done("node02", &digest));
        assert_eq!(again.delivered("node01"), Some(sha.as_str()));
    }
}
