//! `cluster.vip`: a virtual IP for the control plane, held by kube-vip on the
//! servers (ARP, leader election), optionally also serving `LoadBalancer`
//! Services from a range. This module owns the profile keys and the
//! pre-flight checks; `plan::kube_vip` turns them into template values.

use std::net::IpAddr;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::config::Problem;
use crate::config::profile::{IpNet, Node, Role};

/// `cluster.vip` as written.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Vip {
    /// The control plane's virtual address; agents and joining servers use it.
    pub address: IpAddr,
    /// The interface kube-vip announces the address on, the same name on every
    /// server. Without it: the servers' `network.match.name` when they all
    /// share one literal name, else kube-vip's own choice (the interface of the
    /// default route).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<String>,
    /// Addresses for `LoadBalancer` Services (`FIRST-LAST` or a CIDR); turns
    /// on kube-vip's Services mode and turns off k3s's servicelb.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub services_range: Option<String>,
    /// kube-vip's image, pinned by digest (default: the one imgbuild pins),
    /// e.g. from a registry mirror of your own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

/// kube-vip's image, pinned by the digest of its multi-arch index (the
/// reference a node pulls, or imports from an air-gapped archive).
pub const KUBE_VIP_IMAGE: &str = "ghcr.io/kube-vip/kube-vip:v1.2.1@sha256:44035f68040c9eb99103c65f1f9ab9698d93f9f272110825705338ac1926f3d9";

impl Vip {
    /// The image the servers run: the profile's, else the one imgbuild pins.
    pub fn image_ref(&self) -> String {
        self.image
            .clone()
            .unwrap_or_else(|| KUBE_VIP_IMAGE.to_string())
    }
}

/// An inclusive range of addresses of one family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddrRange {
    pub first: IpAddr,
    pub last: IpAddr,
}

impl AddrRange {
    /// `192.168.1.200-192.168.1.220` or `192.168.1.208/28`.
    pub fn parse(s: &str) -> Result<AddrRange, String> {
        let s = s.trim();
        if let Some((a, b)) = s.split_once('-') {
            let ip = |t: &str| {
                t.trim()
                    .parse::<IpAddr>()
                    .map_err(|_| format!("{:?} is not an IP address", t.trim()))
            };
            let (first, last) = (ip(a)?, ip(b)?);
            if first.is_ipv4() != last.is_ipv4() {
                return Err(format!("{s:?} mixes IPv4 and IPv6"));
            }
            if num(first) > num(last) {
                return Err(format!("{s:?} ends before it starts"));
            }
            return Ok(AddrRange { first, last });
        }
        if s.contains('/') {
            let net = IpNet::parse(s)?;
            let bits = if net.addr.is_ipv4() { 32 } else { 128 };
            let host_bits = bits - u32::from(net.prefix);
            let mask = u128::MAX.checked_shl(host_bits).unwrap_or(0);
            let base = num(net.addr) & mask;
            let top = base | !mask & (u128::MAX >> (128 - bits));
            return Ok(AddrRange {
                first: from_num(base, net.addr.is_ipv4()),
                last: from_num(top, net.addr.is_ipv4()),
            });
        }
        Err(format!(
            "{s:?} is not a range: write FIRST-LAST (192.168.1.200-192.168.1.220) or a CIDR (192.168.1.208/28)"
        ))
    }

    pub fn contains(&self, ip: &IpAddr) -> bool {
        ip.is_ipv4() == self.first.is_ipv4()
            && (num(self.first)..=num(self.last)).contains(&num(*ip))
    }
}

impl std::fmt::Display for AddrRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

fn num(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u32::from(a).into(),
        IpAddr::V6(a) => a.into(),
    }
}

fn from_num(n: u128, v4: bool) -> IpAddr {
    if v4 {
        IpAddr::V4(std::net::Ipv4Addr::from(n as u32))
    } else {
        IpAddr::V6(std::net::Ipv6Addr::from(n))
    }
}

fn is_glob(name: &str) -> bool {
    name.bytes().any(|b| b"*?[".contains(&b))
}

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
    nodes.iter().filter(|n| n.k3s.role == Role::Server)
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
pub fn check(
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
    for n in servers(nodes) {
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
                for n in servers(nodes) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        let r = AddrRange::parse("192.168.1.208/28").unwrap();
        assert_eq!(r.to_string(), "192.168.1.208-192.168.1.223");
        let r = AddrRange::parse("10.0.0.5 - 10.0.0.9").unwrap();
        assert!(r.contains(&"10.0.0.9".parse().unwrap()));
        assert!(!r.contains(&"10.0.0.10".parse().unwrap()));
        assert!(AddrRange::parse("10.0.0.9-10.0.0.5").is_err());
        assert!(AddrRange::parse("10.0.0.1-::1").is_err());
        assert!(AddrRange::parse("10.0.0.1").is_err());
        let r = AddrRange::parse("fd00::/126").unwrap();
        assert_eq!(r.to_string(), "fd00::-fd00::3");
    }
}
