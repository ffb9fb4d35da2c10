//! Kubernetes' version-skew policy for a rolling re-flash, as a pure
//! function (kubernetes.io "Version Skew Policy"; Talos and kubeadm upgrade
//! in the same order): servers (API servers) first, one minor version at a
//! time, API servers never more than one minor apart; a kubelet never newer
//! than any API server and at most three minors older; no minor downgrade.
//! `check_rollout` walks the deploy in the order it will run, servers then
//! agents, and refuses at the first step that breaks a rule.

use std::fmt;

/// `major.minor.patch` of a Kubernetes version (`v1.32.5+k3s1`, `v1.32.5`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KubeVersion {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

impl KubeVersion {
    /// Parses what `kubeletVersion` and `gitVersion` hold: an optional `v`,
    /// three numbers, then anything from `-` or `+` on (pre-release, k3s).
    pub fn parse(s: &str) -> Option<KubeVersion> {
        let s = s.trim();
        let s = s.strip_prefix('v').unwrap_or(s);
        let core = s.split(['-', '+']).next()?;
        let mut parts = core.split('.');
        let mut num = || -> Option<u32> {
            let t = parts.next()?;
            (!t.is_empty() && t.len() <= 9 && t.bytes().all(|b| b.is_ascii_digit()))
                .then(|| t.parse().ok())
                .flatten()
        };
        let v = KubeVersion {
            major: num()?,
            minor: num()?,
            patch: num()?,
        };
        parts.next().is_none().then_some(v)
    }

    /// `v1.32`, the unit the policy counts in.
    pub fn minor_text(&self) -> String {
        format!("v{}.{}", self.major, self.minor)
    }
}

impl fmt::Display for KubeVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}.{}.{}", self.major, self.minor, self.patch)
    }
}

impl From<&crate::config::k3s::Version> for KubeVersion {
    fn from(v: &crate::config::k3s::Version) -> KubeVersion {
        KubeVersion {
            major: v.major,
            minor: v.minor,
            patch: v.patch,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Runs an API server (and a kubelet).
    Server,
    /// Runs only a kubelet.
    Agent,
}

/// A node of the cluster as it runs now.
#[derive(Debug, Clone)]
pub struct Member {
    pub name: String,
    pub role: Role,
    pub version: KubeVersion,
}

/// A node the deploy will flash, and the version its image brings.
#[derive(Debug, Clone)]
pub struct Change {
    pub name: String,
    pub role: Role,
    pub to: KubeVersion,
}

/// Why a rollout would break the skew policy; each says what to do instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SkewRefusal {
    #[error(
        "{node} runs {from} and its image has {to}: imgbuild does not change the major version"
    )]
    Major {
        node: String,
        from: KubeVersion,
        to: KubeVersion,
    },
    #[error("{node} runs {} and its image has {}: Kubernetes does not support going back a minor version; build with a k3s {} release", from.minor_text(), to.minor_text(), from.minor_text())]
    Downgrade {
        node: String,
        from: KubeVersion,
        to: KubeVersion,
    },
    #[error("server {node} runs {} and its image has {}: servers move one minor version at a time; deploy a {} image to every server first", from.minor_text(), to.minor_text(), next_minor(from))]
    SkipsMinor {
        node: String,
        from: KubeVersion,
        to: KubeVersion,
    },
    #[error("server {node} would run {} while server {other} runs {}: API servers may be at most one minor version apart; bring {other} up first", to.minor_text(), other_version.minor_text())]
    ServersApart {
        node: String,
        to: KubeVersion,
        other: String,
        other_version: KubeVersion,
    },
    #[error("agent {node} would run {} while server {server} runs {}: a kubelet may never be newer than an API server; upgrade the servers first (deploy them before the agents)", version.minor_text(), server_version.minor_text())]
    AgentAhead {
        node: String,
        version: KubeVersion,
        server: String,
        server_version: KubeVersion,
    },
    #[error("server {server} would run {} while agent {node} runs {}: a kubelet may be at most three minor versions older than the API server; upgrade {node} first", server_version.minor_text(), version.minor_text())]
    AgentTooOld {
        node: String,
        version: KubeVersion,
        server: String,
        server_version: KubeVersion,
    },
}

fn next_minor(v: &KubeVersion) -> String {
    format!("v{}.{}", v.major, v.minor + 1)
}

/// Checks flashing `changes` into a cluster that runs `current`, in the
/// order the rolling deploy takes (the servers of `changes` in their order,
/// then the agents), each step against the state the previous ones left.
/// Returns that order (node names). Nodes not in `current` join as new.
pub fn check_rollout(current: &[Member], changes: &[Change]) -> Result<Vec<String>, SkewRefusal> {
    let mut state: Vec<Member> = current.to_vec();
    let order: Vec<&Change> = changes
        .iter()
        .filter(|c| c.role == Role::Server)
        .chain(changes.iter().filter(|c| c.role == Role::Agent))
        .collect();
    for c in &order {
        match state.iter_mut().find(|m| m.name == c.name) {
            Some(m) => {
                step(m, c)?;
                m.version = c.to;
                m.role = c.role;
            }
            None => state.push(Member {
                name: c.name.clone(),
                role: c.role,
                version: c.to,
            }),
        }
        invariants(&state, &c.name)?;
    }
    Ok(order.iter().map(|c| c.name.clone()).collect())
}

/// The rules for one node's own move.
fn step(m: &Member, c: &Change) -> Result<(), SkewRefusal> {
    let (from, to, node) = (m.version, c.to, c.name.clone());
    if from.major != to.major {
        return Err(SkewRefusal::Major { node, from, to });
    }
    if to.minor < from.minor {
        return Err(SkewRefusal::Downgrade { node, from, to });
    }
    if c.role == Role::Server && to.minor > from.minor + 1 {
        return Err(SkewRefusal::SkipsMinor { node, from, to });
    }
    Ok(())
}

/// The rules between nodes, after `moved` has moved.
fn invariants(state: &[Member], moved: &str) -> Result<(), SkewRefusal> {
    let servers: Vec<&Member> = state.iter().filter(|m| m.role == Role::Server).collect();
    let (Some(oldest), Some(newest)) = (
        servers.iter().min_by_key(|m| m.version.minor),
        servers.iter().max_by_key(|m| m.version.minor),
    ) else {
        return Ok(());
    };
    if newest.version.minor > oldest.version.minor + 1 {
        let (node, other) = if newest.name == moved {
            (newest, oldest)
        } else {
            (oldest, newest)
        };
        return Err(SkewRefusal::ServersApart {
            node: node.name.clone(),
            to: node.version,
            other: other.name.clone(),
            other_version: other.version,
        });
    }
    for a in state.iter().filter(|m| m.role == Role::Agent) {
        if a.version.minor > oldest.version.minor {
            return Err(SkewRefusal::AgentAhead {
                node: a.name.clone(),
                version: a.version,
                server: oldest.name.clone(),
                server_version: oldest.version,
            });
        }
        if newest.version.minor > a.version.minor + 3 {
            return Err(SkewRefusal::AgentTooOld {
                node: a.name.clone(),
                version: a.version,
                server: newest.name.clone(),
                server_version: newest.version,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> KubeVersion {
        KubeVersion::parse(s).unwrap()
    }
    fn m(name: &str, role: Role, ver: &str) -> Member {
        Member {
            name: name.into(),
            role,
            version: v(ver),
        }
    }
    fn c(name: &str, role: Role, ver: &str) -> Change {
        Change {
            name: name.into(),
            role,
            to: v(ver),
        }
    }
    use Role::{Agent, Server};

    #[test]
    fn versions_parse() {
        assert_eq!(
            v("v1.32.5+k3s1"),
            KubeVersion {
                major: 1,
                minor: 32,
                patch: 5
            }
        );
        assert_eq!(v("1.31.0-rc.1+k3s2").minor, 31);
        for bad in ["", "v1.32", "v1.32.x", "v1.32.5.1", "1..2", "vv1.2.3"] {
            assert!(KubeVersion::parse(bad).is_none(), "{bad}");
        }
        let cfg = crate::config::k3s::Version::parse("v1.33.1+k3s1").unwrap();
        assert_eq!(KubeVersion::from(&cfg), v("v1.33.1"));
    }

    fn ha(server: &str, agent: &str) -> Vec<Member> {
        vec![
            m("s1", Server, server),
            m("s2", Server, server),
            m("s3", Server, server),
            m("a1", Agent, agent),
        ]
    }

    #[test]
    fn one_minor_servers_first_passes_in_order() {
        let order = check_rollout(
            &ha("v1.31.9", "v1.31.9"),
            &[
                c("a1", Agent, "v1.32.5"),
                c("s1", Server, "v1.32.5"),
                c("s2", Server, "v1.32.5"),
                c("s3", Server, "v1.32.5"),
            ],
        )
        .unwrap();
        assert_eq!(order, ["s1", "s2", "s3", "a1"]);
        // Patch releases and same versions are no change at all.
        assert!(check_rollout(&ha("v1.32.1", "v1.32.1"), &[c("s1", Server, "v1.32.5")]).is_ok());
        // A new node joins at the servers' version.
        assert!(check_rollout(&ha("v1.32.1", "v1.32.1"), &[c("a9", Agent, "v1.32.5")]).is_ok());
    }

    #[test]
    fn refusals_say_why() {
        let e =
            check_rollout(&ha("v1.30.2", "v1.30.2"), &[c("s1", Server, "v1.32.5")]).unwrap_err();
        assert!(matches!(e, SkewRefusal::SkipsMinor { .. }));
        assert!(
            e.to_string()
                .contains("deploy a v1.31 image to every server first"),
            "{e}"
        );

        let e = check_rollout(&ha("v1.32.5", "v1.32.5"), &[c("a1", Agent, "v1.33.1")]).unwrap_err();
        assert!(matches!(e, SkewRefusal::AgentAhead { .. }), "{e}");
        assert!(e.to_string().contains("upgrade the servers first"), "{e}");

        // Only one server upgraded: an agent may not follow it past the others.
        let e = check_rollout(
            &ha("v1.32.5", "v1.32.5"),
            &[c("s1", Server, "v1.33.1"), c("a1", Agent, "v1.33.1")],
        )
        .unwrap_err();
        assert_eq!(
            e,
            SkewRefusal::AgentAhead {
                node: "a1".into(),
                version: v("v1.33.1"),
                server: "s2".into(),
                server_version: v("v1.32.5"),
            }
        );

        let e =
            check_rollout(&ha("v1.32.5", "v1.32.5"), &[c("s1", Server, "v1.31.9")]).unwrap_err();
        assert!(matches!(e, SkewRefusal::Downgrade { .. }));
        assert!(e.to_string().contains("going back a minor version"), "{e}");

        let e = check_rollout(&ha("v1.32.5", "v1.32.5"), &[c("s1", Server, "v2.0.0")]).unwrap_err();
        assert!(matches!(e, SkewRefusal::Major { .. }));

        // Servers already one apart: moving the newest again leaves two apart.
        let mixed = vec![
            m("s1", Server, "v1.32.5"),
            m("s2", Server, "v1.31.9"),
            m("a1", Agent, "v1.31.9"),
        ];
        let e = check_rollout(&mixed, &[c("s1", Server, "v1.33.0")]).unwrap_err();
        assert!(
            matches!(e, SkewRefusal::ServersApart { ref node, .. } if node == "s1"),
            "{e}"
        );

        // Agents more than three minors behind the newest server.
        let old = vec![m("s1", Server, "v1.32.5"), m("a1", Agent, "v1.29.3")];
        let e = check_rollout(&old, &[c("s1", Server, "v1.33.1")]).unwrap_err();
        assert!(matches!(e, SkewRefusal::AgentTooOld { .. }), "{e}");
        assert!(e.to_string().contains("upgrade a1 first"), "{e}");
        // Bringing the agent along first (agents may jump minors) is not
        // possible either: it would be newer than the server.
        assert!(
            check_rollout(
                &old,
                &[c("a1", Agent, "v1.32.5"), c("s1", Server, "v1.33.1")]
            )
            .is_err()
        );
        assert!(check_rollout(&old, &[c("a1", Agent, "v1.32.5")]).is_ok());
    }
}
