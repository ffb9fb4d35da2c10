//! The deploy state file: which image each node was last delivered with, so a
//! failed or interrupted deploy continues where it stopped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::io::Sha256Digest;

pub const STATE_FILE: &str = ".deploy-state.json";

#[derive(Debug)]
pub struct DeployState {
    path: PathBuf,
    /// Node name -> sha256 (hex) of the image delivered.
    done: BTreeMap<String, String>,
}

impl DeployState {
    /// The state in `dir` (empty when there is none or it is unreadable).
    pub fn load(dir: &Path) -> DeployState {
        let path = dir.join(STATE_FILE);
        let done = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        DeployState { path, done }
    }

    pub fn is_done(&self, node: &str, sha256: &Sha256Digest) -> bool {
        self.done.get(node) == Some(&sha256.to_string())
    }

    /// The digest `node` was last delivered with.
    pub fn delivered(&self, node: &str) -> Option<&str> {
        self.done.get(node).map(String::as_str)
    }

    pub fn record(&mut self, node: &str, sha256: &Sha256Digest) -> Result<()> {
        self.done.insert(node.to_string(), sha256.to_string());
        let text = serde_json::to_string_pretty(&self.done)?;
        std::fs::write(&self.path, text).with_context(|| format!("writing {}", self.path.display()))
    }
}
