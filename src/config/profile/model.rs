//! Profile data types: what the YAML files may say, and the resolved node.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `cluster.yaml` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterFile {
    pub cluster: Cluster,
    /// Node keys applied to every node; checked when merged into each node.
    #[serde(default)]
    pub defaults: Option<serde_yaml_ng::Value>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    /// Cluster name, used in instance IDs and reports.
    pub name: String,
    /// Host name or address the cluster's API is reached at (first server or a VIP).
    pub server: String,
    /// DNS search domain; nodes get `<hostname>.<domain>` as FQDN.
    #[serde(default)]
    pub domain: Option<String>,
    #[serde(default = "default_timezone")]
    pub timezone: String,
    /// DNS servers for nodes with a static address.
    #[serde(default)]
    pub dns: Vec<IpAddr>,
    pub admin: Admin,
    /// Turing Pi boards: a name and the BMC's host each.
    #[serde(default)]
    pub turing_pi_boards: Vec<TuringPiBoard>,
    #[serde(default)]
    pub k3s: K3sCluster,
    /// A virtual IP for the control plane (kube-vip); see [`Vip`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vip: Option<Vip>,
    /// Manifests and Helm charts the cluster-init server applies at its
    /// first start; see `config::bootstrap`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap: Option<crate::config::bootstrap::Bootstrap>,
    /// Container images every node gets as archives k3s imports at start,
    /// each pinned by digest; see `config::images`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<String>,
}

fn default_timezone() -> String {
    "Etc/UTC".into()
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Admin {
    pub user: String,
    pub ssh_authorized_keys: Vec<String>,
    /// A crypt(3) hash (`$6$...` or `$y$...`); without it password login is locked.
    #[serde(default)]
    pub password_hash: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TuringPiBoard {
    pub name: String,
    pub bmc: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct K3sCluster {
    /// Pinned k3s release, e.g. `v1.31.4+k3s1`.
    #[serde(default = "default_k3s_version")]
    pub version: String,
    /// Packaged components to disable on servers.
    #[serde(default = "default_disable")]
    pub disable: Vec<String>,
    /// How k3s gets onto a node: `airgap` (baked in, the default), `online`
    /// (install.sh at first boot, needs the internet) or `none`.
    #[serde(default)]
    pub install: Install,
    /// Base URL under which `<version>/<asset>` of the k3s releases is found
    /// (`IMGBUILD_K3S_MIRROR` overrides it).
    #[serde(default)]
    pub mirror: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Install {
    #[default]
    Airgap,
    Online,
    None,
}

impl Install {
    pub fn as_str(self) -> &'static str {
        match self {
            Install::Airgap => "airgap",
            Install::Online => "online",
            Install::None => "none",
        }
    }
}

impl Default for K3sCluster {
    fn default() -> Self {
        K3sCluster {
            version: default_k3s_version(),
            disable: default_disable(),
            install: Install::default(),
            mirror: None,
        }
    }
}

fn default_k3s_version() -> String {
    "v1.32.5+k3s1".into()
}

fn default_disable() -> Vec<String> {
    vec!["traefik".into()]
}

/// A node file (or the defaults merged with it) as written: every key optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSpec {
    pub hostname: Option<String>,
    pub board: Option<String>,
    pub turing_pi: Option<SlotSpec>,
    pub k3s: Option<K3sNodeSpec>,
    pub network: Option<NetworkSpec>,
    pub nvidia: Option<bool>,
    pub swap: Option<SwapSpec>,
    pub packages: Option<Vec<String>>,
    pub shrink: Option<ShrinkSpec>,
    pub storage: Option<Vec<DataDiskSpec>>,
    /// Container images for this node besides `cluster.images`.
    pub images: Option<Vec<String>>,
    /// How the bare-metal installer (`<node>.<board>.iso`) installs the node.
    pub install: Option<InstallSpec>,
}

/// A data disk: formatted on first boot only when blank, then mounted.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataDiskSpec {
    pub device: Option<String>,
    pub mount: Option<String>,
    pub fs: Option<String>,
    pub label: Option<String>,
    pub options: Option<Vec<String>>,
}

/// The `install` key of a node: which disk the unattended installer wipes
/// and what it does when done.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct InstallSpec {
    pub disk: Option<DiskMatch>,
    /// `poweroff` (default) or `reboot` after the installation.
    pub shutdown: Option<String>,
}

/// The disk to install to, as subiquity's `storage.layout.match` selects it:
/// every key given must match (serial, model and path take shell globs);
/// `size` is `largest` or `smallest`. None given: the largest disk.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DiskMatch {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<String>,
}

/// How a baked image is shrunk before it is written out (see `bake::shrink`).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ShrinkSpec {
    /// Free space (MiB) left in the root file system for the first boot
    /// before it grows to the whole device.
    pub headroom_mib: Option<u32>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlotSpec {
    pub board: Option<String>,
    pub slot: Option<u8>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct K3sNodeSpec {
    pub role: Option<Role>,
    pub cluster_init: Option<bool>,
    pub labels: Option<BTreeMap<String, String>>,
    pub taints: Option<Vec<String>>,
    pub node_ip: Option<String>,
    pub flannel_iface: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkSpec {
    #[serde(rename = "match")]
    pub match_: Option<MatchSpec>,
    pub dhcp: Option<bool>,
    pub address: Option<String>,
    pub gateway: Option<String>,
    pub dns: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchSpec {
    pub name: Option<String>,
    pub mac: Option<String>,
    pub driver: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwapSpec {
    pub zram: Option<ZramSpec>,
    pub file_mib: Option<u32>,
    pub swappiness: Option<u8>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ZramSpec {
    pub percent: Option<u8>,
    pub algorithm: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Server,
    Agent,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Server => "server",
            Role::Agent => "agent",
        }
    }
}

/// A node after merging and validation.
#[derive(Debug, Clone, Serialize)]
pub struct Node {
    /// Profile name: the node file's stem; also the target name (`<name>.<board>.img`).
    pub name: String,
    pub hostname: String,
    pub fqdn: Option<String>,
    pub board: String,
    pub turing_pi: Option<Slot>,
    pub k3s: K3sNode,
    pub network: Network,
    pub nvidia: bool,
    pub swap: Swap,
    pub packages: Vec<String>,
    /// Container images baked for this node besides `cluster.images`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<String>,
    /// Headroom left in the root when the image is shrunk (MiB); `None` is
    /// the board's or the built-in default.
    pub shrink_headroom_mib: Option<u32>,
    /// Data disks, in profile order.
    pub storage: Vec<DataDisk>,
    /// The unattended installer's disk and end action (`.iso` targets).
    pub install: InstallTarget,
    #[serde(skip)]
    pub file: PathBuf,
}

impl Node {
    pub fn is_server(&self) -> bool {
        self.k3s.role == Role::Server
    }
}

/// A validated data disk (see `DataDiskSpec`).
#[derive(Debug, Clone, Serialize)]
pub struct DataDisk {
    /// The whole disk: `/dev/disk/by-id/...`, `/dev/nvme0n1`, `/dev/sdb`.
    pub device: String,
    pub mount: String,
    /// `ext4` or `xfs`.
    pub fs: String,
    /// File system label: how the disk is mounted (`LABEL=`) and recognised
    /// as already formatted on later boots.
    pub label: String,
    /// Mount options; always includes `nofail` so a missing disk never stops the boot.
    pub options: String,
    /// Whether it holds k3s's data directory (/var/lib/rancher or below):
    /// then k3s must not start without it.
    pub k3s_data: bool,
}

/// A node's validated `install` key.
#[derive(Debug, Clone, Serialize)]
pub struct InstallTarget {
    /// Never empty: `{size: largest}` when the profile names no disk.
    pub disk: DiskMatch,
    /// `poweroff` or `reboot`.
    pub shutdown: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Slot {
    pub board: String,
    pub bmc: String,
    /// 1-4 as printed on the board.
    pub slot: u8,
}

#[derive(Debug, Clone, Serialize)]
pub struct K3sNode {
    pub role: Role,
    pub cluster_init: bool,
    pub labels: BTreeMap<String, String>,
    pub taints: Vec<String>,
    pub node_ip: Option<IpAddr>,
    pub flannel_iface: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Network {
    /// netplan match: interface name (glob) or MAC address, optionally
    /// narrowed (or replaced) by the kernel driver (glob).
    pub match_name: Option<String>,
    pub match_mac: Option<String>,
    pub match_driver: Option<String>,
    pub dhcp: bool,
    pub address: Option<IpNet>,
    pub gateway: Option<IpAddr>,
    pub dns: Vec<IpAddr>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Swap {
    pub zram: Option<Zram>,
    pub file_mib: u32,
    pub swappiness: Option<u8>,
}

impl Swap {
    pub fn enabled(&self) -> bool {
        self.zram.is_some() || self.file_mib > 0
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Zram {
    pub percent: u8,
    pub algorithm: String,
}

/// An address with its prefix length, as `192.168.1.10/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl IpNet {
    pub fn parse(s: &str) -> Result<Self, String> {
        let (a, p) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} needs a prefix length, like 192.168.1.10/24"))?;
        let addr: IpAddr = a
            .parse()
            .map_err(|_| format!("{a:?} is not an IP address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix: u8 = p
            .parse()
            .ok()
            .filter(|&n| n <= max)
            .ok_or_else(|| format!("prefix {p:?} must be a number from 0 to {max}"))?;
        Ok(IpNet { addr, prefix })
    }

    pub fn contains(&self, ip: &IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(a), IpAddr::V4(b)) => {
                let mask = u32::MAX.checked_shl(32 - self.prefix as u32).unwrap_or(0);
                u32::from(a) & mask == u32::from(*b) & mask
            }
            (IpAddr::V6(a), IpAddr::V6(b)) => {
                let mask = u128::MAX.checked_shl(128 - self.prefix as u32).unwrap_or(0);
                u128::from(a) & mask == u128::from(*b) & mask
            }
            _ => false,
        }
    }
}

impl std::fmt::Display for IpNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

impl Serialize for IpNet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

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
