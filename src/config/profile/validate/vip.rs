//! `cluster.vip` against the resolved nodes: what would make the VIP
//! unreachable or the cluster address ambiguous.

use std::net::IpAddr;
use std::path::Path;

use crate::config::Problem;
use crate::config::profile::model::{AddrRange, Node, Vip};

/// A Linux interface name kube-vip can be given: 1-15 characters, no glob.
fn interface_error(name: &str) -> Option<String> {
    let ok = !name.is_empty()
        && name.len() <= 15
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    (!ok).then(|| {
        format!(
            "{:?} is not an interface name (1 to 15 letters, digits, '-', '_' or '.', no wildcard): kube-vip needs the exact name, the same on every server",
            crate::config::read::sanitize_field(name)
        )
    })
}

/// Every address a node is known by in the profiles.
fn node_addresses(n: &Node) -> impl Iterator<Item = IpAddr> + '_ {
    n.network
        .address
        .map(|a| a.addr)
        .into_iter()
        .chain(n.k3s.node_ip)
}

/// Refusals: what would make the VIP unreachable or the cluster address
/// ambiguous. Each names the file and field to change.
pub(in crate::config::profile) fn vip_checks(
    vip: &Vip,
    server: &str,
    cluster_file: &Path,
    nodes: &[Node],
    problems: &mut Vec<Problem>,
) {
    let cf = cluster_file;
    let addr = vip.address;
    if let Ok(ip) = server.parse::<IpAddr>()
        && ip != addr
    {
        problems.push(Problem::field(
            cf,
            "cluster.server",
            format!(
                "{ip} contradicts cluster.vip.address {addr}: agents and joining servers use the VIP, so set cluster.server to {addr} (or a DNS name that resolves to it)"
            ),
        ));
    }
    for n in nodes {
        if node_addresses(n).any(|ip| ip == addr) {
            problems.push(Problem::field(
                cf,
                "cluster.vip.address",
                format!(
                    "{addr} is the address of node {} ({}); the VIP must be a free address that no node uses",
                    n.name,
                    n.file.display()
                ),
            ));
        }
    }
    for n in nodes.iter().filter(|n| n.is_server()) {
        if let Some(net) = n.network.address
            && !net.contains(&addr)
        {
            problems.push(Problem::field(
                cf,
                "cluster.vip.address",
                format!(
                    "{addr} is not in server {}'s subnet {net} ({}): kube-vip announces the VIP with ARP, which reaches only the servers' own subnet",
                    n.name,
                    n.file.display()
                ),
            ));
        }
    }
    if let Some(i) = &vip.interface
        && let Some(e) = interface_error(i)
    {
        problems.push(Problem::field(cf, "cluster.vip.interface", e));
    }
    if let Some(i) = &vip.image
        && let Err(e) = crate::config::images::ImageRef::parse(i)
    {
        problems.push(Problem::field(cf, "cluster.vip.image", e));
    }
    if let Some(r) = &vip.services_range {
        match AddrRange::parse(r) {
            Err(e) => problems.push(Problem::field(cf, "cluster.vip.services_range", e)),
            Ok(range) => {
                let field = "cluster.vip.services_range";
                if range.contains(&addr) {
                    problems.push(Problem::field(
                        cf,
                        field,
                        format!("{range} contains the VIP {addr}; keep the control plane's address out of the Services' range"),
                    ));
                }
                for n in nodes {
                    if let Some(ip) = node_addresses(n).find(|ip| range.contains(ip)) {
                        problems.push(Problem::field(
                            cf,
                            field,
                            format!(
                                "{range} contains {ip}, the address of node {} ({})",
                                n.name,
                                n.file.display()
                            ),
                        ));
                    }
                }
                for n in nodes.iter().filter(|n| n.is_server()) {
                    if let Some(net) = n.network.address
                        && !(net.contains(&range.first) && net.contains(&range.last))
                    {
                        problems.push(Problem::field(
                            cf,
                            field,
                            format!(
                                "{range} is not inside server {}'s subnet {net}: ARP reaches only that subnet",
                                n.name
                            ),
                        ));
                    }
                }
            }
        }
    }
}
