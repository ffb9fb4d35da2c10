use std::path::Path;

use anyhow::{Result, bail};

use super::{CA_FILES, SERVICE_KEY, Secrets};

/// Sealing adds secrets to an image built without them; it must use the
/// cluster's existing secrets, never create new ones (new ones would make a
/// second cluster identity).
impl Secrets {
    /// Opens an existing secrets directory; a missing one is an error.
    pub fn open_existing(dir: &Path) -> Result<Secrets> {
        if !dir.is_dir() {
            bail!(
                "{}: no secrets directory; sealing uses the cluster's existing secrets and never creates them (a build without --unsealed, or `imgbuild secrets --generate`, creates them)",
                dir.display()
            );
        }
        Secrets::open(dir)
    }

    /// The secret files `node` needs that do not exist (relative paths).
    pub fn missing_for(&self, node: &str) -> Vec<String> {
        let Some(dir) = &self.dir else {
            return Vec::new();
        };
        let mut needed = vec![
            "cluster/token".to_string(),
            "cluster/agent-token".to_string(),
            format!("cluster/tls/{SERVICE_KEY}"),
            format!("nodes/{node}/ssh_host_ed25519_key"),
            format!("nodes/{node}/node-password"),
        ];
        for (name, _) in CA_FILES {
            needed.push(format!("cluster/tls/{name}.crt"));
            needed.push(format!("cluster/tls/{name}.key"));
        }
        needed.retain(|rel| !dir.join(rel).is_file());
        needed
    }
}
