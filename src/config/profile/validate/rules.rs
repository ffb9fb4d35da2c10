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

/// One position of an fnmatch(3) pattern, as netplan uses for interface
/// names and drivers.
#[derive(Debug, Clone)]
enum GlobAtom {
    Any,
    Star,
    /// A set of bytes (a literal is a set of one); `negated` for `[!...]`.
    Set {
        bytes: Vec<u8>,
        negated: bool,
    },
}

impl GlobAtom {
    fn single_char(&self) -> bool {
        !matches!(self, GlobAtom::Star)
    }
}

fn glob_atoms(pattern: &str) -> Vec<GlobAtom> {
    let p = pattern.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < p.len() {
        match p[i] {
            b'*' => out.push(GlobAtom::Star),
            b'?' => out.push(GlobAtom::Any),
            b'[' => {
                // A bracket expression; without a closing `]` fnmatch takes
                // `[` literally.
                let mut j = i + 1;
                let negated = matches!(p.get(j), Some(b'!' | b'^'));
                if negated {
                    j += 1;
                }
                let start = j;
                if p.get(j) == Some(&b']') {
                    j += 1;
                }
                while j < p.len() && p[j] != b']' {
                    j += 1;
                }
                if j >= p.len() {
                    out.push(GlobAtom::Set {
                        bytes: vec![b'['],
                        negated: false,
                    });
                } else {
                    let body = &p[start..j];
                    let mut bytes = Vec::new();
                    let mut k = 0;
                    while k < body.len() {
                        if k + 2 < body.len() && body[k + 1] == b'-' {
                            bytes.extend(body[k]..=body[k + 2]);
                            k += 3;
                        } else {
                            bytes.push(body[k]);
                            k += 1;
                        }
                    }
                    out.push(GlobAtom::Set { bytes, negated });
                    i = j;
                }
            }
            b => out.push(GlobAtom::Set {
                bytes: vec![b],
                negated: false,
            }),
        }
        i += 1;
    }
    out
}

fn atoms_overlap(a: &GlobAtom, b: &GlobAtom) -> bool {
    use GlobAtom::*;
    match (a, b) {
        (Any, _) | (_, Any) => true,
        (
            Set {
                bytes: x,
                negated: nx,
            },
            Set {
                bytes: y,
                negated: ny,
            },
        ) => match (nx, ny) {
            (false, false) => x.iter().any(|c| y.contains(c)),
            (false, true) => x.iter().any(|c| !y.contains(c)),
            (true, false) => y.iter().any(|c| !x.contains(c)),
            // Two negated sets exclude at most 2 * 256 bytes between them
            // only when they cover everything; in practice always overlap.
            (true, true) => (0..=255u8).any(|c| !x.contains(&c) && !y.contains(&c)),
        },
        (Star, _) | (_, Star) => true,
    }
}

/// Whether some string matches both fnmatch patterns (`*`, `?`, `[...]`):
/// how a network match is checked against the interface names or drivers a
/// board's image is known to have.
pub fn globs_intersect(a: &str, b: &str) -> bool {
    let (a, b) = (glob_atoms(a), glob_atoms(b));
    // reach[i][j]: the first i atoms of `a` and the first j of `b` can match
    // the same string.
    let mut reach = vec![vec![false; b.len() + 1]; a.len() + 1];
    reach[0][0] = true;
    for i in 0..=a.len() {
        for j in 0..=b.len() {
            if !reach[i][j] {
                continue;
            }
            // A star matches the empty string.
            if i < a.len() && matches!(a[i], GlobAtom::Star) {
                reach[i + 1][j] = true;
            }
            if j < b.len() && matches!(b[j], GlobAtom::Star) {
                reach[i][j + 1] = true;
            }
            if i < a.len() && j < b.len() {
                match (a[i].single_char(), b[j].single_char()) {
                    (true, true) if atoms_overlap(&a[i], &b[j]) => reach[i + 1][j + 1] = true,
                    // A star consumes the other side's character and stays.
                    (false, true) => reach[i][j + 1] = true,
                    (true, false) => reach[i + 1][j] = true,
                    (false, false) => {
                        reach[i + 1][j] = true;
                        reach[i][j + 1] = true;
                    }
                    _ => {}
                }
            }
        }
    }
    reach[a.len()][b.len()]
}

/// A MAC address a network interface can have: unicast and not all zeros
/// (a match on a multicast or zero address never applies).
pub(super) fn mac_error(mac: &str) -> Option<String> {
    if !mac_ok(mac) {
        return Some(format!(
            "{mac:?} is not a MAC address like aa:bb:cc:dd:ee:ff"
        ));
    }
    let first = u8::from_str_radix(&mac[..2], 16).unwrap_or(0);
    if first & 1 == 1 {
        return Some(format!(
            "{mac:?} is a multicast address (lowest bit of the first octet set): no interface has it"
        ));
    }
    if mac.split(':').all(|p| p == "00") {
        return Some(format!("{mac:?} is all zeros: no interface has it"));
    }
    None
}

/// A kernel driver name or fnmatch pattern, as netplan's `match.driver` takes.
pub(super) fn driver_ok(driver: &str) -> bool {
    !driver.is_empty()
        && driver.len() <= 64
        && driver
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_*?[]!".contains(&b))
}

#[cfg(test)]
mod glob_tests {
    use super::globs_intersect;

    #[test]
    fn intersections() {
        for (a, b, want) in [
            ("eth0", "eth0", true),
            ("eth0", "en*", false),
            ("en*", "e*", true),
            ("enp3s0", "en*", true),
            ("eth*", "en*", false),
            ("*0", "eth*", true),
            ("e?h0", "eth?", true),
            ("end[0-1]", "end1", true),
            ("end[!0-1]", "end1", false),
            ("*", "", true),
            ("a*b", "*c", false),
            ("bcmgenet", "bcm*", true),
            ("r8169", "igc", false),
            ("[", "[", true),
        ] {
            assert_eq!(globs_intersect(a, b), want, "{a} vs {b}");
            assert_eq!(globs_intersect(b, a), want, "{b} vs {a}");
        }
    }

    fn fnmatch(pattern: &str, s: &str) -> bool {
        let p = std::ffi::CString::new(pattern).unwrap();
        let s = std::ffi::CString::new(s).unwrap();
        // SAFETY: both are valid NUL-terminated strings for the call.
        unsafe { libc::fnmatch(p.as_ptr(), s.as_ptr(), 0) == 0 }
    }

    /// Every string over {a, b, c} up to `max` long.
    fn strings(max: usize) -> Vec<String> {
        let mut all = vec![String::new()];
        let mut last = vec![String::new()];
        for _ in 0..max {
            last = last
                .iter()
                .flat_map(|s| ["a", "b", "c"].map(|c| format!("{s}{c}")))
                .collect();
            all.extend(last.iter().cloned());
        }
        all
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig {
            cases: 300,
            rng_seed: proptest::test_runner::RngSeed::Fixed(0x6e65_7430),
            failure_persistence: None,
            ..Default::default()
        })]
        /// Checked against the C library's fnmatch(3) on every string a
        /// witness could be (patterns of up to 4 atoms need at most 8 chars).
        #[test]
        fn agrees_with_libc_fnmatch(
            a in proptest::collection::vec(proptest::sample::select(vec!["a", "b", "*", "?", "[ab]", "[!a]", "[b-c]"]), 0..4),
            b in proptest::collection::vec(proptest::sample::select(vec!["a", "c", "*", "?", "[ac]", "[!b]", "[a-b]"]), 0..4),
        ) {
            let (a, b) = (a.concat(), b.concat());
            let witness = strings(8).into_iter().find(|s| fnmatch(&a, s) && fnmatch(&b, s));
            proptest::prop_assert_eq!(globs_intersect(&a, &b), witness.is_some(), "{} vs {}: witness {:?}", a, b, witness);
        }
    }
}
