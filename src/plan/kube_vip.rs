//! Template values for kube-vip on the servers (`overlays/vip/`): the pinned
//! image, the address and interface, whether it also serves Services.

use serde::Serialize;

use crate::config::profile::ProfileSet;

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
        image: vip.image_ref(),
    })
}
