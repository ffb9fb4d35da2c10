//! Turning merged node specs into nodes, and the checks across the whole set.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::Path;

use super::Origin;
use super::model::*;
use crate::config::Problem;

struct Ctx<'a, 'o> {
    origin: &'a Origin<'o>,
    problems: &'a mut Vec<Problem>,
    ok: bool,
}

impl Ctx<'_, '_> {
    fn bad(&mut self, field: &str, reason: impl Into<String>) {
        self.ok = false;
        self.problems.push(Problem::field(
            &self.origin.file_for(field),
            field,
            reason.into(),
        ));
    }
}

/// RFC 1123 label, lower case (Kubernetes node names must be lower case).
pub fn hostname_error(name: &str) -> Option<String> {
    if name.is_empty() || name.len() > 63 {
        return Some(format!("{name:?} must be 1 to 63 characters"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Some(format!(
            "{name:?} may contain only lower-case letters, digits and '-' (RFC 1123)"
        ));
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Some(format!(
            "{name:?} must not start or end with '-' (RFC 1123)"
        ));
    }
    None
}

fn dns_name_error(name: &str) -> Option<String> {
    if name.len() > 253 {
        return Some("longer than 253 characters".into());
    }
    name.split('.').find_map(hostname_error)
}

fn host_error(host: &str) -> Option<String> {
    if host.parse::<IpAddr>().is_ok() {
        return None;
    }
    dns_name_error(host).map(|e| format!("{host:?} is neither an IP address nor a DNS name: {e}"))
}

fn mac_ok(mac: &str) -> bool {
    let parts: Vec<&str> = mac.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn iface_ok(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.*?".contains(&b))
}

/// Label keys a kubelet may not set on its own node (NodeRestriction).
pub fn label_key_error(key: &str) -> Option<String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric();
    if !name_ok {
        return Some(format!("{key:?} is not a valid label key"));
    }
    if let Some(p) = prefix {
        if let Some(e) = dns_name_error(p) {
            return Some(format!("{key:?} has an invalid prefix: {e}"));
        }
        let restricted = p == "kubernetes.io"
            || p.ends_with(".kubernetes.io")
            || p == "k8s.io"
            || p.ends_with(".k8s.io");
        const ALLOWED_KEYS: &[&str] = &[
            "kubernetes.io/hostname",
            "kubernetes.io/arch",
            "kubernetes.io/os",
            "beta.kubernetes.io/instance-type",
            "node.kubernetes.io/instance-type",
            "failure-domain.beta.kubernetes.io/region",
            "failure-domain.beta.kubernetes.io/zone",
            "topology.kubernetes.io/region",
            "topology.kubernetes.io/zone",
        ];
        let allowed = ALLOWED_KEYS.contains(&key)
            || p == "kubelet.kubernetes.io"
            || p.ends_with(".kubelet.kubernetes.io")
            || p == "node.kubernetes.io"
            || p.ends_with(".node.kubernetes.io");
        if restricted && !allowed {
            return Some(format!(
                "{key:?}: a node may not set labels under {p} on itself, and k3s fails to start with it; use another prefix"
            ));
        }
    }
    None
}

fn label_value_error(value: &str) -> Option<String> {
    if value.is_empty() {
        return None;
    }
    let ok = value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && value.as_bytes()[0].is_ascii_alphanumeric()
        && value.as_bytes()[value.len() - 1].is_ascii_alphanumeric();
    (!ok).then(|| format!("{value:?} is not a valid label value (63 characters of [A-Za-z0-9-_.], alphanumeric at both ends)"))
}

fn taint_error(taint: &str) -> Option<String> {
    let Some((kv, effect)) = taint.rsplit_once(':') else {
        return Some(format!("{taint:?} must be key[=value]:Effect"));
    };
    if !["NoSchedule", "PreferNoSchedule", "NoExecute"].contains(&effect) {
        return Some(format!(
            "{taint:?}: effect {effect:?} must be NoSchedule, PreferNoSchedule or NoExecute"
        ));
    }
    let (key, value) = kv.split_once('=').unwrap_or((kv, ""));
    label_key_error(key)
        .filter(|e| !e.contains("may not set"))
        .or_else(|| label_value_error(value))
}

fn package_ok(p: &str) -> bool {
    p.len() >= 2
        && p.as_bytes()[0].is_ascii_alphanumeric()
        && p.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.:=~".contains(&b))
}

pub(super) fn resolve_node(
    cluster: &Cluster,
    stem: &str,
    spec: NodeSpec,
    origin: &Origin,
    boards: &[BoardInfo],
    problems: &mut Vec<Problem>,
) -> Option<Node> {
    let mut cx = Ctx {
        origin,
        problems,
        ok: true,
    };
    if let Some(e) = hostname_error(stem) {
        cx.problems.push(Problem::file(
            origin.node_file,
            format!("the file name gives the node name, and {e}"),
        ));
        cx.ok = false;
    }
    let hostname = spec.hostname.unwrap_or_else(|| stem.to_string());
    if let Some(e) = hostname_error(&hostname) {
        cx.bad("hostname", e);
    }
    let board = match spec.board {
        Some(b) => b,
        None => {
            let known: Vec<&str> = boards.iter().map(|b| b.name.as_str()).collect();
            cx.bad(
                "board",
                format!("missing; expected one of: {}", known.join(", ")),
            );
            String::new()
        }
    };
    let board_info = boards.iter().find(|b| b.name == board);
    if !board.is_empty() && board_info.is_none() {
        let known: Vec<&str> = boards.iter().map(|b| b.name.as_str()).collect();
        cx.bad(
            "board",
            format!(
                "{board:?} has no firmware manifest; expected one of: {}",
                known.join(", ")
            ),
        );
    }

    let turing_pi = match (spec.turing_pi, board_info) {
        (Some(s), Some(b)) if !b.turing_pi_module => {
            let _ = s;
            cx.bad(
                "turing_pi",
                format!("board {:?} does not sit in a Turing Pi slot", b.name),
            );
            None
        }
        (None, Some(b)) if b.turing_pi_module => {
            cx.bad(
                "turing_pi",
                format!(
                    "missing; a {} module needs `turing_pi: {{board: <name>, slot: 1-4}}`",
                    b.name
                ),
            );
            None
        }
        (Some(s), _) => {
            let slot = match s.slot {
                Some(n @ 1..=4) => n,
                Some(n) => {
                    cx.bad(
                        "turing_pi.slot",
                        format!("{n} is not a slot; expected 1 to 4"),
                    );
                    0
                }
                None => {
                    cx.bad("turing_pi.slot", "missing; expected 1 to 4");
                    0
                }
            };
            let names: Vec<&str> = cluster
                .turing_pi_boards
                .iter()
                .map(|b| b.name.as_str())
                .collect();
            let tp = match (&s.board, cluster.turing_pi_boards.len()) {
                (Some(name), _) => cluster.turing_pi_boards.iter().find(|b| &b.name == name),
                (None, 1) => cluster.turing_pi_boards.first(),
                (None, _) => None,
            };
            match tp {
                Some(tp) => Some(Slot {
                    board: tp.name.clone(),
                    bmc: tp.bmc.clone(),
                    slot,
                }),
                None => {
                    cx.bad(
                        "turing_pi.board",
                        format!(
                            "{} is not among cluster.turing_pi_boards ({})",
                            s.board
                                .as_deref()
                                .map_or("(not given)".into(), |b| format!("{b:?}")),
                            if names.is_empty() {
                                "none defined".into()
                            } else {
                                names.join(", ")
                            }
                        ),
                    );
                    None
                }
            }
        }
        (None, _) => None,
    };

    let k = spec.k3s.unwrap_or_default();
    let role = k.role.unwrap_or(Role::Agent);
    let cluster_init = k.cluster_init.unwrap_or(false);
    if cluster_init && role != Role::Server {
        cx.bad(
            "k3s.cluster_init",
            "only a server can initialise the cluster; set `k3s.role: server`",
        );
    }
    let labels = k.labels.unwrap_or_default();
    for (key, value) in &labels {
        if let Some(e) = label_key_error(key).or_else(|| label_value_error(value)) {
            cx.bad(&format!("k3s.labels.{key}"), e);
        }
    }
    let taints = k.taints.unwrap_or_default();
    for (i, t) in taints.iter().enumerate() {
        if let Some(e) = taint_error(t) {
            cx.bad(&format!("k3s.taints[{i}]"), e);
        }
    }
    let node_ip = k.node_ip.and_then(|s| match s.parse::<IpAddr>() {
        Ok(ip) => Some(ip),
        Err(_) => {
            cx.bad("k3s.node_ip", format!("{s:?} is not an IP address"));
            None
        }
    });
    if let Some(i) = &k.flannel_iface
        && (!iface_ok(i) || i.contains(['*', '?']))
    {
        cx.bad(
            "k3s.flannel_iface",
            format!("{i:?} is not an interface name"),
        );
    }

    let net = spec.network.unwrap_or_default();
    let m = net.match_.unwrap_or_default();
    if let Some(name) = &m.name
        && !iface_ok(name)
    {
        cx.bad(
            "network.match.name",
            format!("{name:?} is not an interface name or glob"),
        );
    }
    if let Some(mac) = &m.mac
        && !mac_ok(mac)
    {
        cx.bad(
            "network.match.mac",
            format!("{mac:?} is not a MAC address like aa:bb:cc:dd:ee:ff"),
        );
    }
    if m.name.is_some() && m.mac.is_some() {
        cx.bad("network.match", "give either `name` or `mac`, not both");
    }
    let address = net.address.as_deref().and_then(|a| match IpNet::parse(a) {
        Ok(n) => Some(n),
        Err(e) => {
            cx.bad("network.address", e);
            None
        }
    });
    let dhcp = net.dhcp.unwrap_or(net.address.is_none());
    if dhcp && net.address.is_some() {
        cx.bad(
            "network.dhcp",
            "true together with a static `address`; choose one",
        );
    }
    if !dhcp && net.address.is_none() {
        cx.bad(
            "network.address",
            "missing; without DHCP a static address/prefix is needed",
        );
    }
    let gateway = net
        .gateway
        .as_deref()
        .and_then(|g| match g.parse::<IpAddr>() {
            Ok(ip) => Some(ip),
            Err(_) => {
                cx.bad("network.gateway", format!("{g:?} is not an IP address"));
                None
            }
        });
    if let (Some(a), Some(g)) = (&address, &gateway)
        && !a.contains(g)
    {
        cx.bad(
            "network.gateway",
            format!("{g} is outside the subnet of the node's address {a}"),
        );
    }
    let mut dns = Vec::new();
    for (i, d) in net.dns.unwrap_or_default().iter().enumerate() {
        match d.parse::<IpAddr>() {
            Ok(ip) => dns.push(ip),
            Err(_) => cx.bad(
                &format!("network.dns[{i}]"),
                format!("{d:?} is not an IP address"),
            ),
        }
    }
    if dns.is_empty() {
        dns = cluster.dns.clone();
    }

    let sw = spec.swap.unwrap_or_default();
    let zram = sw.zram.map(|z| {
        let percent = z.percent.unwrap_or(50);
        if !(1..=100).contains(&percent) {
            cx.bad(
                "swap.zram.percent",
                format!("{percent} must be from 1 to 100"),
            );
        }
        let algorithm = z.algorithm.unwrap_or_else(|| "zstd".into());
        if !["zstd", "lz4", "lzo", "lzo-rle", "lz4hc", "842"].contains(&algorithm.as_str()) {
            cx.bad(
                "swap.zram.algorithm",
                format!("{algorithm:?} must be one of zstd, lz4, lz4hc, lzo, lzo-rle, 842"),
            );
        }
        Zram { percent, algorithm }
    });
    if let Some(s) = sw.swappiness
        && s > 200
    {
        cx.bad("swap.swappiness", format!("{s} must be from 0 to 200"));
    }
    let packages = spec.packages.unwrap_or_default();
    for (i, p) in packages.iter().enumerate() {
        if !package_ok(p) {
            cx.bad(
                &format!("packages[{i}]"),
                format!("{p:?} is not a Debian package name"),
            );
        }
    }

    let ok = cx.ok;
    ok.then(|| Node {
        name: stem.to_string(),
        fqdn: cluster.domain.as_ref().map(|d| format!("{hostname}.{d}")),
        hostname,
        board,
        turing_pi,
        k3s: K3sNode {
            role,
            cluster_init,
            labels,
            taints,
            node_ip,
            flannel_iface: k.flannel_iface,
        },
        network: Network {
            match_name: m.name,
            match_mac: m.mac,
            dhcp,
            address,
            gateway,
            dns,
        },
        nvidia: spec.nvidia.unwrap_or(false),
        swap: Swap {
            zram,
            file_mib: sw.file_mib.unwrap_or(0),
            swappiness: sw.swappiness,
        },
        packages,
        file: origin.node_file.to_owned(),
    })
}

pub(super) fn cross_checks(
    cluster: &Cluster,
    cluster_file: &Path,
    nodes: &[Node],
    _boards: &[BoardInfo],
    problems: &mut Vec<Problem>,
) {
    let cf = cluster_file;
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
                && key.split_whitespace().count() >= 2
                && !key.contains('\n');
        if !ok {
            problems.push(Problem::field(
                cf,
                &format!("cluster.admin.ssh_authorized_keys[{i}]"),
                "expected one OpenSSH public key line like `ssh-ed25519 AAAA... comment`".into(),
            ));
        }
    }
    if let Some(h) = &cluster.admin.password_hash {
        let ok = ["$6$", "$5$", "$y$", "$2b$"]
            .iter()
            .any(|p| h.starts_with(p))
            && !h.contains(char::is_whitespace);
        if !ok {
            problems.push(Problem::field(
                cf,
                "cluster.admin.password_hash",
                "expected a crypt(3) hash such as the output of `mkpasswd -m sha-512` ($6$...), never a plain password".into(),
            ));
        }
    }
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
    let v = &cluster.k3s.version;
    let version = crate::config::k3s::Version::parse(v);
    if version.is_none() {
        problems.push(Problem::field(
            cf,
            "cluster.k3s.version",
            format!("{v:?} is not a k3s release like v1.31.4+k3s1"),
        ));
    }

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
    // default-runtime (used for NVIDIA nodes) exists since k3s v1.29.0.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames() {
        assert!(hostname_error("node02").is_none());
        assert!(hostname_error("Node02").is_some());
        assert!(hostname_error("-a").is_some());
        assert!(hostname_error("a b").is_some());
        assert!(hostname_error(&"a".repeat(64)).is_some());
    }

    #[test]
    fn labels() {
        assert!(label_key_error("node-type").is_none());
        assert!(label_key_error("nvidia.com/gpu.present").is_none());
        assert!(label_key_error("node-role.kubernetes.io/worker").is_some());
        assert!(label_key_error("foo.k8s.io/x").is_some());
        assert!(label_key_error("node.kubernetes.io/instance-type").is_none());
        assert!(taint_error("workstation=true:NoSchedule").is_none());
        assert!(taint_error("workstation=true:Never").is_some());
        assert!(taint_error("node-role.kubernetes.io/control-plane:NoSchedule").is_none());
    }

    #[test]
    fn subnets() {
        let n = IpNet::parse("192.168.1.10/24").unwrap();
        assert!(n.contains(&"192.168.1.1".parse().unwrap()));
        assert!(!n.contains(&"192.168.2.1".parse().unwrap()));
        assert!(IpNet::parse("192.168.1.10").is_err());
        assert!(IpNet::parse("192.168.1.10/33").is_err());
        let z = IpNet::parse("10.0.0.1/0").unwrap();
        assert!(z.contains(&"1.2.3.4".parse().unwrap()));
    }
}
