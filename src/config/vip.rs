//! `cluster.vip`: a virtual IP for the control plane, held by kube-vip on the
//! servers (ARP, leader election), optionally also serving `LoadBalancer`
//! Services from a range. The keys (`profile::Vip`) and the refusals at load
//! belong to the profiles, which check them against the nodes; this module
//! holds what a valid VIP means further on: the interface kube-vip is given
//! (`plan::kube_vip` turns it into template values) and the risks
//! `imgbuild check` warns about.

use std::path::Path;

use crate::config::Problem;
use crate::config::profile::Node;
pub use crate::config::profile::{AddrRange, Vip};

fn is_glob(name: &str) -> bool {
    name.bytes().any(|b| b"*?[".contains(&b))
}

impl Vip {
    /// The interface kube-vip is told to use on every server, if any.
    pub fn interface_for(&self, nodes: &[Node]) -> Option<String> {
        if let Some(i) = &self.interface {
            return Some(i.clone());
        }
        let mut names = servers(nodes).map(|n| n.network.match_name.clone());
        let first = names.next()??;
        (!is_glob(&first) && names.all(|n| n.as_deref() == Some(first.as_str()))).then_some(first)
    }
}

fn servers(nodes: &[Node]) -> impl Iterator<Item = &Node> {
    nodes.iter().filter(|n| n.is_server())
}

/// Valid but risky: what `imgbuild check` warns about.
pub fn warnings(vip: &Vip, cluster_file: &Path, nodes: &[Node]) -> Vec<Problem> {
    let mut out = Vec::new();
    let count = servers(nodes).count();
    if count < 3 || count.is_multiple_of(2) {
        let tolerate = count.saturating_sub(1) / 2;
        out.push(Problem::field(
            cluster_file,
            "cluster.vip",
            format!(
                "{count} server(s): embedded etcd needs a majority of the servers up, so this control plane tolerates the loss of {tolerate} server(s){}; use an odd number, 3 or more (3 tolerates 1, 5 tolerate 2)",
                if tolerate == 0 { " (none)" } else { "" }
            ),
        ));
    }
    for n in servers(nodes).filter(|n| n.network.address.is_none()) {
        out.push(Problem::field(
            &n.file,
            "network.address",
            format!(
                "server {} takes its address from DHCP, so imgbuild cannot check that the VIP {} is in its subnet; give it a static address",
                n.name, vip.address
            ),
        ));
    }
    out
}
