//! `imgbuild secrets`: what exists (never values), a join token or known_hosts on request.

use super::{Paths, Result, Workspace};
use crate::config::profile::Role;
use crate::secrets::{Secrets, known_hosts_line};

/// What the secrets directory holds, never the values.
pub fn inventory(paths: &Paths) -> Result<Vec<(String, &'static str)>> {
    if !paths.secrets.exists() {
        return Ok(Vec::new());
    }
    Ok(Secrets::open(&paths.secrets)?.inventory()?)
}

/// Creates every missing secret of the cluster and of each node (never
/// replacing one that exists).
pub fn generate(paths: &Paths, build_time: u64) -> Result<()> {
    let ws = Workspace::load(paths)?;
    let secrets = ws.secrets()?;
    secrets.cluster(build_time)?;
    for n in &ws.profiles.nodes {
        secrets.node(&n.name, &n.hostname)?;
    }
    Ok(())
}

/// The secure join token for `server` or `agent` nodes (printed only on request).
pub fn join_token(paths: &Paths, role: Role, build_time: u64) -> Result<String> {
    let c = Secrets::open(&paths.secrets)?.cluster(build_time)?;
    Ok(match role {
        Role::Server => c.server_token(),
        Role::Agent => c.agent_token(),
    })
}

/// A known_hosts file for every node: hostname, FQDN and static address.
pub fn known_hosts(paths: &Paths) -> Result<String> {
    let ws = Workspace::load(paths)?;
    let secrets = ws.secrets()?;
    let mut out = String::new();
    for n in &ws.profiles.nodes {
        let s = secrets.node(&n.name, &n.hostname)?;
        let mut names = vec![n.hostname.clone()];
        names.extend(n.fqdn.clone());
        names.extend(n.network.address.map(|a| a.addr.to_string()));
        names.extend(n.k3s.node_ip.map(|a| a.to_string()));
        names.dedup();
        out.push_str(&known_hosts_line(&names, &s.ssh_public));
        out.push('\n');
    }
    Ok(out)
}

/// What `imgbuild secrets` is asked to show.
#[derive(Debug, Clone, Copy)]
pub enum Show {
    /// The join token for nodes of this role.
    Token(Role),
    KnownHosts,
    /// Which secrets exist (the default).
    Inventory,
}

#[derive(Debug, Clone, Copy)]
pub struct SecretsSettings {
    /// Create every missing secret first (`--generate`).
    pub generate: bool,
    pub show: Show,
    pub build_time: u64,
}

/// What `imgbuild secrets` shows.
#[derive(Debug)]
pub enum Shown {
    Token(String),
    KnownHosts(String),
    Inventory {
        dir: std::path::PathBuf,
        entries: Vec<(String, &'static str)>,
    },
}

/// Generates the missing secrets when asked, then gives what `s` asks for.
pub fn secrets(paths: &Paths, s: &SecretsSettings) -> Result<Shown> {
    if s.generate {
        generate(paths, s.build_time)?;
    }
    Ok(match s.show {
        Show::Token(role) => Shown::Token(join_token(paths, role, s.build_time)?),
        Show::KnownHosts => Shown::KnownHosts(known_hosts(paths)?),
        Show::Inventory => Shown::Inventory {
            dir: paths.secrets.clone(),
            entries: inventory(paths)?,
        },
    })
}
