//! Checks across the whole profile set: cluster fields, names, slots and
//! addresses used twice, the cluster-init server, reachability.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::Path;

use super::rules::*;
use crate::config::Problem;
use crate::config::profile::model::*;

pub(in crate::config::profile) fn cross_checks(
    cluster: &Cluster,
    cluster_file: &Path,
    nodes: &[Node],
    problems: &mut Vec<Problem>,
) {
    let cf = cluster_file;
    names_and_time_zone(cluster, cf, problems);
    admin(cluster, cf, problems);
    turing_pi_boards(cluster, cf, problems);
    let version = k3s_settings(cluster, cf, problems);
    nothing_twice(nodes, problems);
    servers_and_reach(cluster, cf, nodes, problems);
    nvidia_runtime(cluster, version, nodes, problems);
}

/// `cluster.name`, `server`, `domain` and `timezone`.
fn names_and_time_zone(cluster: &Cluster, cf: &Path, problems: &mut Vec<Problem>) {
    if let Some(e) = dns_name_error(&cluster.name) {
        problems.push(Problem::field(cf, "cluster.name", e));
    }
    if let Some(e) = host_error(&cluster.server) {
        problems.push(Problem::field(cf, "cluster.server", e));
    }
    if let Some(d) = &cluster.domain
        && let Some(e) = dns_name_error(d)
    {
        problems.push(Problem::field(cf, "cluster.domain", e));
    }
    let tz_ok = !cluster.timezone.is_empty()
        && cluster
            .timezone
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/_+-".contains(&b));
    if !tz_ok {
        problems.push(Problem::field(
            cf,
            "cluster.timezone",
            format!(
                "{:?} is not a time zone name like Europe/Berlin",
                cluster.timezone
            ),
        ));
    }
}

/// `cluster.admin`: a login name, and a way to log in (keys or a password hash).
fn admin(cluster: &Cluster, cf: &Path, problems: &mut Vec<Problem>) {
    let user = &cluster.admin.user;
    let user_ok = !user.is_empty()
        && user.len() <= 32
        && user.as_bytes()[0].is_ascii_lowercase()
        && user
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_".contains(&b));
    if !user_ok || user == "root" {
        problems.push(Problem::field(
            cf,
            "cluster.admin.user",
            format!("{user:?} must be a lower-case login name (not root)"),
        ));
    }
    if cluster.admin.ssh_authorized_keys.is_empty() && cluster.admin.password_hash.is_none() {
        problems.push(Problem::field(
            cf,
            "cluster.admin.ssh_authorized_keys",
            "empty and no password_hash: nobody could log in".into(),
        ));
    }
    for (i, key) in cluster.admin.ssh_authorized_keys.iter().enumerate() {
        let kind = key.split_whitespace().next().unwrap_or("");
        let ok =
            (kind.starts_with("ssh-") || kind.starts_with("ecdsa-") || kind.starts_with("sk-"))
                && key.split_whitespace().count() >= 2;
        if let Some(e) = text_error(key) {
            problems.push(Problem::field(
                cf,
                &format!("cluster.admin.ssh_authorized_keys[{i}]"),
                e,
            ));
        } else if !ok {
            problems.push(Problem::field(
                cf,
                &format!("cluster.admin.ssh_authorized_keys[{i}]"),
                "expected one OpenSSH public key line like `ssh-ed25519 AAAA... comment`".into(),
            ));
        }
    }
    if let Some(h) = &cluster.admin.password_hash {
        // crypt(3) hashes use only this alphabet (the `$`-separated fields
        // of SHA-crypt, yescrypt and bcrypt).
        let ok = ["$6$", "$5$", "$y$", "$2b$"]
            .iter()
            .any(|p| h.starts_with(p))
            && h.len() <= 512
            && h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"$./=,-".contains(&b));
        if !ok {
            problems.push(Problem::field(
                cf,
                "cluster.admin.password_hash",
                "expected a crypt(3) hash such as the output of `mkpasswd -m sha-512` ($6$...), never a plain password".into(),
            ));
        }
    }
}

/// `cluster.turing_pi_boards`: names (each once) and BMC hosts.
fn turing_pi_boards(cluster: &Cluster, cf: &Path, problems: &mut Vec<Problem>) {
    let mut tp_names = HashMap::new();
    for (i, b) in cluster.turing_pi_boards.iter().enumerate() {
        if let Some(e) = hostname_error(&b.name) {
            problems.push(Problem::field(
                cf,
                &format!("cluster.turing_pi_boards[{i}].name"),
                e,
            ));
        }
        // A BMC may be given as host:port (HTTPS is on 443 by default).
        let bmc_host = match b.bmc.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') && p.parse::<u16>().is_ok() => h,
            _ => b.bmc.as_str(),
        };
        if let Some(e) = host_error(bmc_host) {
            problems.push(Problem::field(
                cf,
                &format!("cluster.turing_pi_boards[{i}].bmc"),
                e,
            ));
        }
        if tp_names.insert(b.name.clone(), i).is_some() {
            problems.push(Problem::field(
                cf,
                &format!("cluster.turing_pi_boards[{i}].name"),
                format!("{:?} is defined twice", b.name),
            ));
        }
    }
}

/// `cluster.k3s`: disabled components, the mirror and the release, which
/// later checks compare against (`None` when it does not parse).
fn k3s_settings(
    cluster: &Cluster,
    cf: &Path,
    problems: &mut Vec<Problem>,
) -> Option<crate::config::k3s::Version> {
    for (i, c) in cluster.k3s.disable.iter().enumerate() {
        if !k3s_component_ok(c) {
            problems.push(Problem::field(
                cf,
                &format!("cluster.k3s.disable[{i}]"),
                format!(
                    "{:?} is not a k3s packaged component name (lower-case letters, digits and '-', like traefik or servicelb)",
                    crate::config::read::sanitize_field(c)
                ),
            ));
        }
    }
    if let Some(m) = &cluster.k3s.mirror
        && let Some(e) = url_error(m)
    {
        problems.push(Problem::field(cf, "cluster.k3s.mirror", e));
    }
    let v = &cluster.k3s.version;
    let version = crate::config::k3s::Version::parse(v);
    if version.is_none() {
        problems.push(Problem::field(
            cf,
            "cluster.k3s.version",
            format!("{v:?} is not a k3s release like v1.31.4+k3s1"),
        ));
    }
    version
}

/// Host names, Turing Pi slots and addresses that two nodes claim.
fn nothing_twice(nodes: &[Node], problems: &mut Vec<Problem>) {
    let mut hostnames: BTreeMap<&str, &Node> = BTreeMap::new();
    let mut slots: BTreeMap<(String, u8), &Node> = BTreeMap::new();
    let mut addresses: BTreeMap<IpAddr, &Node> = BTreeMap::new();
    for n in nodes {
        if let Some(other) = hostnames.insert(&n.hostname, n) {
            problems.push(Problem::field(
                &n.file,
                "hostname",
                format!(
                    "{:?} is also the hostname of {}",
                    n.hostname,
                    other.file.display()
                ),
            ));
        }
        if let Some(s) = &n.turing_pi
            && let Some(other) = slots.insert((s.board.clone(), s.slot), n)
        {
            problems.push(Problem::field(
                &n.file,
                "turing_pi.slot",
                format!(
                    "slot {} of board {:?} is also taken by {}",
                    s.slot,
                    s.board,
                    other.file.display()
                ),
            ));
        }
        let ips = n
            .network
            .address
            .map(|a| a.addr)
            .into_iter()
            .chain(n.k3s.node_ip);
        let mut own = Vec::new();
        for ip in ips {
            if own.contains(&ip) {
                continue;
            }
            own.push(ip);
            if let Some(other) = addresses.insert(ip, n) {
                problems.push(Problem::field(
                    &n.file,
                    "network.address",
                    format!("{ip} is also used by {}", other.file.display()),
                ));
            }
        }
    }
}

/// One cluster-init server, at least one server, and a cluster address and
/// agent subnets that reach a server.
fn servers_and_reach(cluster: &Cluster, cf: &Path, nodes: &[Node], problems: &mut Vec<Problem>) {
    let inits: Vec<&Node> = nodes.iter().filter(|n| n.k3s.cluster_init).collect();
    if inits.len() > 1 {
        for n in &inits[1..] {
            problems.push(Problem::field(
                &n.file,
                "k3s.cluster_init",
                format!(
                    "only one server may initialise the cluster; {} already does",
                    inits[0].file.display()
                ),
            ));
        }
    }
    let servers: Vec<&Node> = nodes
        .iter()
        .filter(|n| n.k3s.role == Role::Server)
        .collect();
    if !nodes.is_empty() && servers.is_empty() {
        problems.push(Problem::file(
            cf,
            "no node has `k3s.role: server`; the cluster needs one".into(),
        ));
    }
    if !servers.is_empty() && inits.is_empty() {
        problems.push(Problem::file(
            cf,
            "no server has `k3s.cluster_init: true`; exactly one server must create the cluster"
                .into(),
        ));
    }
    // The cluster address must reach a server, not an agent.
    if let Ok(ip) = cluster.server.parse::<IpAddr>() {
        for n in nodes.iter().filter(|n| n.k3s.role == Role::Agent) {
            if n.network.address.map(|a| a.addr) == Some(ip) || n.k3s.node_ip == Some(ip) {
                problems.push(Problem::field(
                    cf,
                    "cluster.server",
                    format!(
                        "{ip} is the address of agent {}, but it must reach a server",
                        n.name
                    ),
                ));
            }
        }
    }
    // An agent with a static address and no gateway must share a subnet with a server.
    let server_ips: Vec<IpAddr> = servers
        .iter()
        .filter_map(|s| s.network.address.map(|a| a.addr))
        .chain(cluster.server.parse::<IpAddr>().ok())
        .collect();
    for n in nodes.iter().filter(|n| n.k3s.role == Role::Agent) {
        if let (Some(a), None) = (n.network.address, n.network.gateway)
            && !server_ips.iter().any(|ip| a.contains(ip))
        {
            problems.push(Problem::field(
                &n.file,
                "network.gateway",
                format!("missing: {a} shares no subnet with a server, so this agent needs a gateway to reach the cluster"),
            ));
        }
    }
}

/// default-runtime (used for NVIDIA nodes) exists since k3s v1.29.0.
fn nvidia_runtime(
    cluster: &Cluster,
    version: Option<crate::config::k3s::Version>,
    nodes: &[Node],
    problems: &mut Vec<Problem>,
) {
    if let Some(v) = version
        && !v.at_least(1, 29)
    {
        for n in nodes.iter().filter(|n| n.nvidia) {
            problems.push(Problem::field(
                &n.file,
                "nvidia",
                format!(
                    "needs k3s v1.29 or later (cluster.k3s.version is {})",
                    cluster.k3s.version
                ),
            ));
        }
    }
}
