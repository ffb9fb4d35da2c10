//! The values templates see, as one typed structure.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::config::k3s::Version;
use crate::config::manifest::{Arch, Manifest};
use crate::config::profile::{Cluster, Install, Node, ProfileSet, Role};
use crate::secrets::{ClusterSecrets, NodeSecrets};

#[derive(Debug, Clone, Serialize)]
pub struct TemplateContext<'a> {
    pub cluster: &'a Cluster,
    pub node: &'a Node,
    pub board: BoardValues<'a>,
    pub imgbuild: ToolValues,
    pub build: BuildValues,
    pub is_server: bool,
    pub k3s: K3sValues,
    pub secrets: SecretValues,
    /// The control plane's virtual IP (kube-vip), when `cluster.vip` is set.
    pub vip: Option<super::kube_vip::VipValues>,
    /// Set only while `meta-data` is rendered (it is a digest of the other files).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BoardValues<'a> {
    pub name: &'a str,
    pub arch: Arch,
    pub description: &'a str,
}

#[derive(Debug, Clone, Serialize)]
pub struct ToolValues {
    pub version: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct BuildValues {
    pub time: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct K3sValues {
    pub version: String,
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
    pub install: Install,
    pub server_url: String,
    pub tls_san: Vec<String>,
    pub has_agents: bool,
    /// Some node has an NVIDIA GPU (the cluster needs the RuntimeClass and
    /// the device plugin).
    pub has_nvidia: bool,
    /// Packaged components servers disable: `cluster.k3s.disable`, plus
    /// servicelb when kube-vip serves `LoadBalancer` Services.
    pub disable: Vec<String>,
    /// `k3s` or `k3s-agent`.
    pub unit: &'static str,
    /// `server` or `agent`.
    pub exec: Role,
    /// The user imgbuild's short-lived certificates for `wait` and `status`
    /// name; the baked RBAC lets it only read nodes.
    pub node_reader: &'static str,
}

/// Secret values; [`std::fmt::Debug`] never shows them.
#[derive(Clone, Serialize)]
pub struct SecretValues {
    pub server_token: String,
    pub agent_token: String,
    pub ca_hash: String,
    /// Files of the k3s CA set by their path relative to server/tls.
    pub tls: BTreeMap<String, String>,
    pub node_password: String,
    pub ssh_private: String,
    pub ssh_public: String,
}

impl std::fmt::Debug for SecretValues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretValues {{ ca_hash: {}, .. }}", self.ca_hash)
    }
}

impl SecretValues {
    pub fn new(cluster: &ClusterSecrets, node: &NodeSecrets) -> Self {
        SecretValues {
            server_token: cluster.server_token(),
            agent_token: cluster.agent_token(),
            ca_hash: cluster.ca_hash.clone(),
            tls: cluster.tls.iter().cloned().collect(),
            node_password: node.node_password.clone(),
            ssh_private: node.ssh_private.clone(),
            ssh_public: node.ssh_public.clone(),
        }
    }

    /// Stand-ins for every secret, all different for different `tag`s: files
    /// rendered under two of them differ exactly when they use a secret.
    pub fn placeholder(tag: &str) -> Self {
        let v = |name: &str| format!("imgbuild-placeholder-{tag}-{name}");
        let mut tls = BTreeMap::new();
        for (name, _) in crate::secrets::CA_FILES {
            tls.insert(format!("{name}.crt"), v(&format!("{name}.crt")));
            tls.insert(format!("{name}.key"), v(&format!("{name}.key")));
        }
        tls.insert(
            crate::secrets::SERVICE_KEY.to_string(),
            v(crate::secrets::SERVICE_KEY),
        );
        SecretValues {
            server_token: v("server-token"),
            agent_token: v("agent-token"),
            ca_hash: v("ca-hash"),
            tls,
            node_password: v("node-password"),
            ssh_private: v("ssh-private"),
            ssh_public: v("ssh-public"),
        }
    }

    /// Every value that must not leave the secrets directory unsealed:
    /// tokens, passwords and private keys (public certificates are not).
    pub fn private_values(&self) -> Vec<&str> {
        let mut v = vec![
            self.server_token.as_str(),
            self.agent_token.as_str(),
            self.node_password.as_str(),
            self.ssh_private.as_str(),
        ];
        v.extend(
            self.tls
                .iter()
                .filter(|(name, _)| name.ends_with(".key"))
                .map(|(_, value)| value.as_str()),
        );
        v.retain(|s| !s.trim().is_empty());
        v
    }
}

fn bracket_ipv6(host: &str) -> String {
    if host.parse::<std::net::Ipv6Addr>().is_ok() {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

impl<'a> TemplateContext<'a> {
    pub fn new(
        profiles: &'a ProfileSet,
        node: &'a Node,
        manifest: &'a Manifest,
        build_time: u64,
        secrets: SecretValues,
    ) -> anyhow::Result<Self> {
        let cluster = &profiles.cluster;
        let version = Version::parse(&cluster.k3s.version).ok_or_else(|| {
            anyhow::anyhow!(
                "cluster.k3s.version {:?} is not like v1.32.5+k3s1",
                cluster.k3s.version
            )
        })?;
        let vip = super::kube_vip::values(profiles);
        let mut tls_san = vec![cluster.server.clone()];
        // Agents and joining servers reach the API at the VIP: every
        // server's certificate must name it.
        if let Some(v) = &vip
            && !tls_san.contains(&v.address)
        {
            tls_san.push(v.address.clone());
        }
        let mut disable = cluster.k3s.disable.clone();
        if vip.as_ref().is_some_and(|v| v.services_range.is_some())
            && !disable.iter().any(|d| d == "servicelb")
        {
            disable.push("servicelb".into());
        }
        let server_host = vip
            .as_ref()
            .map(|v| v.address.clone())
            .unwrap_or_else(|| cluster.server.clone());
        for name in [
            Some(node.hostname.clone()),
            node.fqdn.clone(),
            node.network.address.map(|a| a.addr.to_string()),
            node.k3s.node_ip.map(|i| i.to_string()),
        ]
        .into_iter()
        .flatten()
        {
            if !tls_san.contains(&name) {
                tls_san.push(name);
            }
        }
        let role = node.k3s.role;
        Ok(TemplateContext {
            cluster,
            node,
            board: BoardValues {
                name: &manifest.board,
                arch: manifest.arch,
                description: &manifest.description,
            },
            imgbuild: ToolValues {
                version: env!("CARGO_PKG_VERSION"),
            },
            build: BuildValues { time: build_time },
            is_server: role == Role::Server,
            k3s: K3sValues {
                // The parsed version, printed back: exactly v<maj>.<min>.<patch>+k3s<n>.
                version: version.to_string(),
                major: version.major,
                minor: version.minor,
                patch: version.patch,
                install: cluster.k3s.install,
                server_url: format!("https://{}:6443", bracket_ipv6(&server_host)),
                tls_san,
                disable,
                has_agents: profiles.nodes.iter().any(|n| n.k3s.role == Role::Agent),
                has_nvidia: profiles.nodes.iter().any(|n| n.nvidia),
                unit: match role {
                    Role::Server => "k3s",
                    Role::Agent => "k3s-agent",
                },
                exec: role,
                node_reader: crate::secrets::client::NODE_READER_USER,
            },
            secrets,
            vip,
            instance_id: None,
        })
    }
}
