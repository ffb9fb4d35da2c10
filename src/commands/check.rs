//! `imgbuild check`: validate profiles and manifests and render every node.

use anyhow::anyhow;

use super::{CommandError, Paths, Result, Workspace};
use crate::source::supplies::Supplies;

/// What `check` found valid.
#[derive(Debug)]
pub struct CheckReport {
    pub cluster: String,
    pub nodes: Vec<String>,
    pub boards: Vec<String>,
    /// Each board's manifest and where it comes from.
    pub manifests: Vec<super::overlays::Sourced>,
    /// How many overlay files in use are the built-in ones.
    pub overlays_builtin: usize,
    /// The overlay files an override directory provides.
    pub overlays_overridden: Vec<super::overlays::Sourced>,
    /// Valid, but worth knowing: e.g. what an air-gapped node would still
    /// fetch from the internet at first boot.
    pub warnings: Vec<String>,
    /// What builds add to each node beyond its rendered files (bootstrap
    /// manifests, HelmChart files, image archives), from the profiles'
    /// digests: nothing is downloaded.
    pub added: Vec<NodeAdded>,
}

#[derive(Debug)]
pub struct NodeAdded {
    pub node: String,
    pub files: Vec<crate::plan::Added>,
}

/// What an air-gapped (`k3s.install: airgap`) node would still fetch from
/// the network at first boot, by node file and key. Without a network those
/// steps fail (cloud-init carries on; the node still boots and joins).
fn network_needs(ws: &Workspace) -> Vec<String> {
    use crate::config::profile::Install;
    let mut out = Vec::new();
    if ws.profiles.cluster.k3s.install != Install::Airgap {
        return out;
    }
    for n in &ws.profiles.nodes {
        let file = n.file.display();
        if !n.packages.is_empty() {
            out.push(format!(
                "{file}: packages: {} and an apt update are fetched from the internet at first boot",
                n.packages.join(", ")
            ));
        }
        if n.swap.zram.is_some() {
            out.push(format!(
                "{file}: swap.zram: the systemd-zram-generator package is fetched from the internet at first boot"
            ));
        }
        if n.nvidia {
            out.push(format!(
                "{file}: nvidia: the NVIDIA driver, the container toolkit and the device plugin image are fetched from the internet at first boot"
            ));
        }
    }
    out
}

/// The VIP's risks (etcd quorum, subnets imgbuild cannot see).
fn vip_warnings(ws: &Workspace) -> Vec<String> {
    let p = &ws.profiles;
    p.cluster
        .vip
        .as_ref()
        .map(|vip| {
            crate::config::vip::warnings(
                vip,
                &p.dir.join(crate::config::profile::CLUSTER_FILE),
                &p.nodes,
            )
            .iter()
            .map(ToString::to_string)
            .collect()
        })
        .unwrap_or_default()
}

pub fn check(paths: &Paths, build_time: u64) -> Result<CheckReport> {
    let ws = Workspace::load(paths)?;
    // Render every node too: template errors are profile-set errors. Secrets
    // are stand-ins (as in an unsealed build): checking creates no state.
    let mut problems = Vec::new();
    let mut added = Vec::new();
    let supplies = Supplies::preview(&ws.profiles)
        .map_err(|e| CommandError::Invalid(e.context("reading cluster.bootstrap's files")))?;
    for node in &ws.profiles.nodes {
        match ws.plan(node, None, &supplies, build_time) {
            Err(e) => problems.push(format!("  - node {}: {e:#}", node.name)),
            Ok(plan) => {
                let files = plan.added();
                if !files.is_empty() {
                    added.push(NodeAdded {
                        node: node.name.clone(),
                        files,
                    });
                }
            }
        }
    }
    if !problems.is_empty() {
        return Err(CommandError::Invalid(anyhow!(
            "{} node(s) fail to render:\n{}",
            problems.len(),
            problems.join("\n")
        )));
    }
    Ok(CheckReport {
        added,
        cluster: ws.profiles.cluster.name.clone(),
        nodes: ws
            .profiles
            .nodes
            .iter()
            .map(|n| format!("{}.{}", n.name, n.board))
            .collect(),
        boards: ws.manifests.keys().cloned().collect(),
        warnings: network_needs(&ws)
            .into_iter()
            .chain(vip_warnings(&ws))
            .collect(),
        manifests: ws
            .manifests
            .values()
            .map(|m| super::overlays::Sourced {
                name: m.board.clone(),
                origin: m.origin.clone(),
            })
            .collect(),
        overlays_builtin: ws.overlays.files().count() - ws.overlays.overridden().len(),
        overlays_overridden: ws
            .overlays
            .overridden()
            .into_iter()
            .map(|f| super::overlays::Sourced {
                name: f.rel.clone(),
                origin: f.origin.clone(),
            })
            .collect(),
    })
}
