//! Turning merged node specs into nodes, and the checks across the whole set.

mod cluster;
mod rules;
mod storage;
mod vip;

pub(super) use cluster::cross_checks;
use rules::*;
pub use rules::{hostname_error, label_key_error};
pub(super) use vip::vip_checks;

use std::net::IpAddr;

use super::Origin;
use super::model::*;
use crate::config::Problem;
use crate::config::manifest::{BoardInfo, EthernetFacts};

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
    let hostname = hostname(&mut cx, stem, spec.hostname);
    let (board, board_info) = board(&mut cx, spec.board, boards);
    let turing_pi = turing_pi_slot(&mut cx, cluster, spec.turing_pi, board_info);
    let k3s = k3s_node(&mut cx, spec.k3s.unwrap_or_default());
    let network = network(
        &mut cx,
        spec.network.unwrap_or_default(),
        &board,
        board_info,
        cluster,
    );
    let swap = swap(&mut cx, spec.swap.unwrap_or_default());
    let packages = packages(&mut cx, spec.packages.unwrap_or_default());
    let images = images(&mut cx, spec.images.unwrap_or_default());
    let shrink_headroom_mib = spec.shrink.and_then(|s| s.headroom_mib);
    if shrink_headroom_mib == Some(0) {
        cx.bad(
            "shrink.headroom_mib",
            "0 leaves the first boot no room; give at least 1 (MiB)",
        );
    }
    let storage = storage::storage(&mut cx, spec.storage.unwrap_or_default(), board_info);
    let install = install_target(spec.install.unwrap_or_default(), &storage, &mut cx);
    let ok = cx.ok;
    ok.then(|| Node {
        name: stem.to_string(),
        fqdn: cluster.domain.as_ref().map(|d| format!("{hostname}.{d}")),
        hostname,
        board,
        turing_pi,
        k3s,
        network,
        nvidia: spec.nvidia.unwrap_or(false),
        swap,
        packages,
        images,
        shrink_headroom_mib,
        storage,
        install,
        file: origin.node_file.to_owned(),
    })
}

/// The node's name comes from its file name; `hostname` may override the
/// host name it gets. Both must be valid host names.
fn hostname(cx: &mut Ctx, stem: &str, hostname: Option<String>) -> String {
    if let Some(e) = hostname_error(stem) {
        cx.problems.push(Problem::file(
            cx.origin.node_file,
            format!("the file name gives the node name, and {e}"),
        ));
        cx.ok = false;
    }
    let hostname = hostname.unwrap_or_else(|| stem.to_string());
    if let Some(e) = hostname_error(&hostname) {
        cx.bad("hostname", e);
    }
    hostname
}

/// The `board`, which must have a firmware manifest; empty when missing.
fn board<'b>(
    cx: &mut Ctx,
    board: Option<String>,
    boards: &'b [BoardInfo],
) -> (String, Option<&'b BoardInfo>) {
    let board = match board {
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
    (board, board_info)
}

/// `turing_pi`: required for a compute module, refused for any other board,
/// and naming one of `cluster.turing_pi_boards` (the only one may go unnamed).
fn turing_pi_slot(
    cx: &mut Ctx,
    cluster: &Cluster,
    spec: Option<SlotSpec>,
    board_info: Option<&BoardInfo>,
) -> Option<Slot> {
    match (spec, board_info) {
        (Some(_), Some(b)) if !b.turing_pi_module => {
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
    }
}

/// `k3s`: the role, labels, taints and the addresses k3s is told to use.
fn k3s_node(cx: &mut Ctx, k: K3sNodeSpec) -> K3sNode {
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
    K3sNode {
        role,
        cluster_init,
        labels,
        taints,
        node_ip,
        flannel_iface: k.flannel_iface,
    }
}

/// `network`: which interface (`match`), and DHCP or a static address with
/// its gateway and DNS servers (the cluster's when the node names none).
fn network(
    cx: &mut Ctx,
    net: NetworkSpec,
    board: &str,
    board_info: Option<&BoardInfo>,
    cluster: &Cluster,
) -> Network {
    let m = net.match_.unwrap_or_default();
    interface_match(cx, &m);
    if let Some(eth) = board_info.map(|b| &b.ethernet) {
        match_applies(cx, &m, board, eth);
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
    Network {
        match_name: m.name,
        match_mac: m.mac,
        match_driver: m.driver,
        dhcp,
        address,
        gateway,
        dns,
    }
}

/// `network.match` on its own: a name (glob) or a MAC, and a driver (glob).
fn interface_match(cx: &mut Ctx, m: &MatchSpec) {
    if let Some(name) = &m.name
        && !iface_ok(name)
    {
        cx.bad(
            "network.match.name",
            format!("{name:?} is not an interface name or glob"),
        );
    }
    if let Some(e) = m.mac.as_deref().and_then(mac_error) {
        cx.bad("network.match.mac", e);
    }
    if m.name.is_some() && m.mac.is_some() {
        cx.bad("network.match", "give either `name` or `mac`, not both");
    }
    if let Some(driver) = &m.driver
        && !driver_ok(driver)
    {
        cx.bad(
            "network.match.driver",
            format!("{driver:?} is not a kernel driver name or glob, like bcmgenet or r81*"),
        );
    }
}

/// A match the board's image can never satisfy leaves the node without
/// its network on first boot: refuse it here, naming what would apply.
fn match_applies(cx: &mut Ctx, m: &MatchSpec, board_name: &str, eth: &EthernetFacts) {
    if let Some(name) = m.name.as_deref().filter(|n| iface_ok(n))
        && !eth.names.is_empty()
        && !eth.names.iter().any(|known| globs_intersect(name, known))
    {
        cx.bad(
            "network.match.name",
            format!(
                "{name:?} never applies on {board_name}: its image names the wired interface {}; \
                 match one of those, or by `driver` ({}) or `mac`",
                eth.names.join(" or "),
                if eth.drivers.is_empty() {
                    "its kernel driver".to_string()
                } else {
                    eth.drivers.join(", ")
                },
            ),
        );
    }
    if let Some(driver) = m.driver.as_deref().filter(|d| driver_ok(d))
        && !eth.drivers.is_empty()
        && !eth
            .drivers
            .iter()
            .any(|known| globs_intersect(driver, known))
    {
        cx.bad(
            "network.match.driver",
            format!(
                "{driver:?} never applies on {board_name}: its wired Ethernet uses the {} driver",
                eth.drivers.join(" or ")
            ),
        );
    }
}

/// `swap`: zram (a share of memory, a kernel compressor), a swap file and
/// the kernel's swappiness.
fn swap(cx: &mut Ctx, sw: SwapSpec) -> Swap {
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
    Swap {
        zram,
        file_mib: sw.file_mib.unwrap_or(0),
        swappiness: sw.swappiness,
    }
}

/// `packages`: Debian package names.
fn packages(cx: &mut Ctx, packages: Vec<String>) -> Vec<String> {
    for (i, p) in packages.iter().enumerate() {
        if !package_ok(p) {
            cx.bad(
                &format!("packages[{i}]"),
                format!("{p:?} is not a Debian package name"),
            );
        }
    }
    packages
}

/// `images`: container image references, each pinned by digest.
fn images(cx: &mut Ctx, images: Vec<String>) -> Vec<String> {
    for (i, r) in images.iter().enumerate() {
        if let Err(e) = crate::config::images::ImageRef::parse(r) {
            cx.bad(&format!("images[{i}]"), e);
        }
    }
    images
}

/// Checks the `install` key: a disk match subiquity understands, and the end
/// action. Values go into the installer's YAML, so control characters are refused.
fn install_target(spec: InstallSpec, storage: &[DataDisk], cx: &mut Ctx) -> InstallTarget {
    let mut disk = spec.disk.unwrap_or_default();
    for (field, value) in [
        ("install.disk.serial", &disk.serial),
        ("install.disk.model", &disk.model),
        ("install.disk.path", &disk.path),
    ] {
        if let Some(v) = value
            && (v.is_empty() || v.chars().any(char::is_control))
        {
            cx.bad(
                field,
                format!("{v:?} must be a non-empty single-line value (shell globs allowed)"),
            );
        }
    }
    if let Some(p) = &disk.path {
        if !p.starts_with("/dev/") {
            cx.bad(
                "install.disk.path",
                format!("{p:?} must be a kernel device path such as /dev/nvme0n1 or /dev/sd*"),
            );
        } else if p.starts_with("/dev/disk/") {
            // subiquity compares `path` with the kernel's name of the disk;
            // a by-id link never matches and the install stops.
            cx.bad(
                "install.disk.path",
                format!(
                    "{p:?} never matches: the installer compares `path` with the kernel's name (/dev/nvme0n1); \
                     match by `serial` (udev's ID_SERIAL, e.g. \"*S64DNX0R123456\") or `model` instead"
                ),
            );
        }
    }
    if let Some(s) = &disk.size
        && s != "largest"
        && s != "smallest"
    {
        cx.bad(
            "install.disk.size",
            format!("{s:?} must be `largest` or `smallest` (the installer matches no other sizes)"),
        );
    }
    // The installer keeps its own boot medium out of a match only when the
    // match has a `size`: without one, `model: SanDisk*` could pick the stick.
    if disk.size.is_none() {
        disk.size = Some("largest".into());
    }
    // The installer must not pick one of the node's data disks (an `.iso`
    // build also requires a node with data disks to name its disk).
    if let Some(p) = &disk.path
        && let Some(d) = storage.iter().find(|d| globs_intersect(p, &d.device))
    {
        cx.bad(
            "install.disk.path",
            format!(
                "{p:?} matches the data disk {:?} (`storage`); the installer would wipe it",
                d.device
            ),
        );
    }
    let shutdown = spec.shutdown.unwrap_or_else(|| "poweroff".into());
    if shutdown != "poweroff" && shutdown != "reboot" {
        cx.bad(
            "install.shutdown",
            format!("{shutdown:?} must be `poweroff` or `reboot`"),
        );
    }
    InstallTarget { disk, shutdown }
}
