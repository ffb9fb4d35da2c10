//! Checks of single values: names, labels, taints, addresses, packages.

use std::net::IpAddr;

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

pub(super) fn dns_name_error(name: &str) -> Option<String> {
    if name.len() > 253 {
        return Some("longer than 253 characters".into());
    }
    name.split('.').find_map(hostname_error)
}

pub(super) fn host_error(host: &str) -> Option<String> {
    if host.parse::<IpAddr>().is_ok() {
        return None;
    }
    dns_name_error(host).map(|e| format!("{host:?} is neither an IP address nor a DNS name: {e}"))
}

pub(super) fn mac_ok(mac: &str) -> bool {
    let parts: Vec<&str> = mac.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

pub(super) fn iface_ok(name: &str) -> bool {
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

pub(super) fn label_value_error(value: &str) -> Option<String> {
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

pub(super) fn taint_error(taint: &str) -> Option<String> {
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

/// Free text that ends up in rendered files (key comments): one line of
/// printable characters (and tabs). C0 and C1 controls and DEL make
/// cloud-init reject the whole user-data; U+2028/2029 and U+0085 are line
/// breaks to YAML.
pub(super) fn text_error(s: &str) -> Option<String> {
    let bad = s.chars().find(|&c| {
        (c.is_control() && c != '\t')
            || matches!(
                c,
                '\u{2028}' | '\u{2029}' | '\u{feff}' | '\u{fffe}' | '\u{ffff}'
            )
    })?;
    Some(format!(
        "contains the control character U+{:04X}; only printable text on one line is allowed",
        bad as u32
    ))
}

/// k3s packaged component names (`--disable`): coredns, servicelb, traefik, ...
pub(super) fn k3s_component_ok(c: &str) -> bool {
    !c.is_empty()
        && c.len() <= 63
        && c.as_bytes()[0].is_ascii_lowercase()
        && c.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// A mirror base URL: http(s), printable ASCII without spaces or quotes.
pub(super) fn url_error(u: &str) -> Option<String> {
    let ok = (u.starts_with("https://") || u.starts_with("http://"))
        && u.len() <= 2048
        && u.bytes()
            .all(|b| b.is_ascii_graphic() && !b"\"'`<>\\{}|^".contains(&b));
    (!ok).then(|| {
        "expected an http:// or https:// URL of printable characters (no spaces or quotes)"
            .to_string()
    })
}

pub(super) fn package_ok(p: &str) -> bool {
    p.len() >= 2
        && p.as_bytes()[0].is_ascii_alphanumeric()
        && p.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"+-.:=~".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::profile::IpNet;

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
