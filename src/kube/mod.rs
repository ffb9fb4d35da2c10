//! Talking to the running cluster, after delivery: a Kubernetes API client
//! pinned to the cluster's own server CA, with every body capped (`client`,
//! `list`), the objects it reads (`node`, `pod`), kubeconfig files
//! (`kubeconfig`) and waiting until nodes are Ready (`wait`). Credentials are
//! client certificates minted offline from the cluster's client CA
//! (`secrets::client`); no kubectl is needed.
//!
//! For re-flashing a running cluster: `cluster` summarises it (servers, etcd
//! voters, agents, versions) and holds the quorum rule; `skew` the version
//! skew policy; `admin` (admin identity only) cordons, annotates and evicts;
//! `drain` follows kubectl drain; `etcd` removes a server's member and waits
//! until it votes again. Progress goes through `tracing`, never stdout.

pub mod admin;
pub mod client;
pub mod cluster;
pub mod drain;
pub mod etcd;
pub mod kubeconfig;
pub mod list;
pub mod node;
pub mod pod;
pub mod skew;
pub mod wait;

pub use admin::{AdminApi, Eviction};
pub use client::{Api, ApiConfig, ApiError, Health, PatchKind};
pub use cluster::{ClusterView, NodeSummary, QuorumOk, QuorumRefusal, Removal};
pub use drain::{DrainError, DrainOptions, DrainReport};
pub use etcd::EtcdError;
pub use skew::{KubeVersion, SkewRefusal};

/// The API server's port on every k3s server.
pub const API_PORT: u16 = 6443;

/// `https://<server>:6443`, with an IPv6 address in brackets.
pub fn api_url(server: &str) -> String {
    let host = if server.parse::<std::net::Ipv6Addr>().is_ok() {
        format!("[{server}]")
    } else {
        server.to_string()
    };
    format!("https://{host}:{API_PORT}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn urls() {
        assert_eq!(
            super::api_url("192.168.1.101"),
            "https://192.168.1.101:6443"
        );
        assert_eq!(super::api_url("fd00::1"), "https://[fd00::1]:6443");
        assert_eq!(
            super::api_url("k8s.home.arpa"),
            "https://k8s.home.arpa:6443"
        );
    }
}
