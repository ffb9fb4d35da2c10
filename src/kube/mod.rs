//! Talking to the running cluster, after delivery: a Kubernetes API client
//! pinned to the cluster's own server CA (`client`), the Node objects it reads
//! (`node`), kubeconfig files (`kubeconfig`) and waiting until nodes are Ready
//! (`wait`). Credentials are client certificates minted offline from the
//! cluster's client CA (`secrets::client`); no kubectl is needed.

pub mod client;
pub mod kubeconfig;
pub mod node;
pub mod wait;

pub use client::{Api, ApiConfig, ApiError, Health};

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
