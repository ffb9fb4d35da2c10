//! Template values for kube-vip on the servers (`overlays/vip/`): the pinned
//! image, the address and interface, whether it also serves Services.

use serde::Serialize;

use crate::config::profile::ProfileSet;

/// kube-vip's image, pinned by the digest of its multi-arch index (the
/// reference a node pulls, or imports from an air-gapped archive).
pub const KUBE_VIP_IMAGE: &str = "ghcr.io/kube-vip/kube-vip:v1.2.1@sha256:44035f68040c9eb99103c65f1f9ab9698d93f9f272110825705338ac1926f3d9";

#[derive(Debug, Clone, Serialize)]
pub struct VipValues {
    pub address: String,
    /// Prefix length of the announced address (a single host).
    pub cidr: u8,
    /// Empty: kube-vip uses the interface of the default route.
    pub interface: Option<String>,
    /// `FIRST-LAST` of the Services' range, when kube-vip serves them.
    pub services_range: Option<String>,
    pub image: String,
}

/// The values, when the cluster has a VIP.
pub fn values(profiles: &ProfileSet) -> Option<VipValues> {
    let vip = profiles.cluster.vip.as_ref()?;
    Some(VipValues {
        address: vip.address.to_string(),
        cidr: if vip.address.is_ipv4() { 32 } else { 128 },
        interface: vip.interface_for(&profiles.nodes),
        services_range: vip
            .services_range
            .as_deref()
            .and_then(|r| crate::config::vip::AddrRange::parse(r).ok())
            .map(|r| r.to_string()),
        image: vip
            .image
            .clone()
            .unwrap_or_else(|| KUBE_VIP_IMAGE.to_string()),
    })
}
