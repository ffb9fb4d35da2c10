//! The bare-metal installer stage, a peer of `bake`: a node's complete
//! [`NodePlan`](crate::plan::NodePlan) becomes an unattended installer, the
//! board's vendor installer ISO remastered with xorriso (`iso`: boot records
//! replayed, GRUB's `autoinstall` edit, the node's files as a tar) with
//! subiquity's `autoinstall.yaml` (`autoinstall`). Knows no profiles beyond
//! what autoinstall needs from the node; writes only the paths it is given.

pub mod autoinstall;
pub mod iso;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};

use self::autoinstall::{AUTOINSTALL_PATH, PAYLOAD_PATH, SECRETS_PATH};
use crate::config::manifest::Manifest;
use crate::config::profile::{Cluster, Node};
use crate::plan::{Content, FileKind, NodePlan, PlannedFile, Provenance};

/// The provenance record's path on an installer ISO.
pub const PROVENANCE_PATH: &str = "/imgbuild/provenance.json";

/// What an installer is made for.
pub struct Recipe<'a> {
    pub plan: &'a NodePlan,
    pub manifest: &'a Manifest,
    pub cluster: &'a Cluster,
    pub node: &'a Node,
    pub build_time: u64,
}

/// Writes `output`: the stock installer `stock` remastered to install
/// `recipe.plan` unattended: every file of the plan in the payload tar
/// (the same files a bake of the node writes), `autoinstall.yaml`, the
/// provenance record and GRUB set to start the installer with
/// `autoinstall`. `stage` is a private directory for the mapped files.
pub fn remaster(recipe: &Recipe, stock: &Path, output: &Path, stage: &Path) -> Result<()> {
    let plan = recipe.plan;
    plan.require_complete()?;
    iso::check_iso9660(stock)?;
    let present = iso::list_files(stock, "/")?;
    if !present.iter().any(|p| p == iso::GRUB_CONFIGS[0]) {
        bail!(
            "{}: has no {}; the installer ISO must boot through GRUB like Ubuntu's live-server ISO",
            stock.display(),
            iso::GRUB_CONFIGS[0]
        );
    }
    let mut maps = Vec::new();
    let root_files: Vec<&PlannedFile> = plan.files.iter().collect();
    let payload_path = stage.join("root.tar");
    let payload_file = crate::util::create_private(&payload_path, b"")
        .with_context(|| format!("creating {}", payload_path.display()))?;
    let payload_sha256 =
        iso::write_payload(&root_files, &payload_file, &payload_path, recipe.build_time)?;
    drop(payload_file);
    maps.push((payload_path, PAYLOAD_PATH.to_string()));

    let yaml = autoinstall_yaml(recipe, payload_sha256)?;
    let yaml_path = stage.join("autoinstall.yaml");
    crate::util::create_private(&yaml_path, yaml.as_bytes())
        .with_context(|| format!("writing {}", yaml_path.display()))?;
    maps.push((yaml_path, AUTOINSTALL_PATH.to_string()));
    // The provenance record, readable without unpacking the payload: `usb`
    // reads it to tell an unsealed installer and whom it is for.
    maps.push(provenance_map(&plan.provenance, stage)?);
    maps.extend(grub_maps(stock, &present, stage)?);
    tracing::info!(node = %plan.node, "remastering {}", stock.display());
    Ok(iso::remaster(stock, output, &maps)?)
}

fn autoinstall_yaml(recipe: &Recipe, payload_sha256: crate::io::Sha256Digest) -> Result<String> {
    let plan = recipe.plan;
    let seed_file = |name: &str| -> Option<&[u8]> {
        let path = recipe.manifest.seed.path_of(name);
        plan.files.iter().find_map(|f| match &f.kind {
            FileKind::Regular(Content::Bytes(b)) if f.path == path => Some(b.as_slice()),
            _ => None,
        })
    };
    let user_data = seed_file("/user-data")
        .ok_or_else(|| anyhow!("node {}: the plan has no seed user-data", plan.node))?;
    autoinstall::render(&autoinstall::Inputs {
        cluster: recipe.cluster,
        node: recipe.node,
        user_data,
        network_config: seed_file("/network-config"),
        payload_sha256,
        removals: &plan.removals,
        unsealed: plan.provenance.unsealed,
    })
    .with_context(|| format!("writing the autoinstall configuration of {}", plan.node))
}

fn provenance_map(provenance: &Provenance, stage: &Path) -> Result<(PathBuf, String)> {
    let path = stage.join("provenance.json");
    crate::util::create_private(&path, &serde_json::to_vec_pretty(provenance)?)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok((path, PROVENANCE_PATH.to_string()))
}

/// GRUB's configurations with `autoinstall` added, and casper's media check
/// without the lines of the files replaced.
fn grub_maps(stock: &Path, present: &[String], stage: &Path) -> Result<Vec<(PathBuf, String)>> {
    let mut maps = Vec::new();
    let mut replaced = Vec::new();
    for (i, cfg) in iso::GRUB_CONFIGS.iter().enumerate() {
        if !present.iter().any(|p| p == cfg) {
            continue;
        }
        let host = stage.join(format!("grub-{i}.cfg"));
        iso::extract(stock, cfg, &host)?;
        let text = std::fs::read_to_string(&host)
            .with_context(|| format!("reading {cfg} of {}", stock.display()))?;
        let (edited, entries) = iso::enable_autoinstall(&text);
        if entries == 0 && i == 0 {
            bail!(
                "{}: {cfg} has no `linux` menu entry to start the installer with `autoinstall`",
                stock.display()
            );
        }
        std::fs::write(&host, edited).with_context(|| format!("writing {}", host.display()))?;
        maps.push((host, cfg.to_string()));
        replaced.push(*cfg);
    }
    if present.iter().any(|p| p == "/md5sum.txt") {
        let host = stage.join("md5sum.txt");
        iso::extract(stock, "/md5sum.txt", &host)?;
        let text = std::fs::read_to_string(&host)
            .with_context(|| format!("reading /md5sum.txt of {}", stock.display()))?;
        std::fs::write(&host, iso::drop_md5_lines(&text, &replaced))
            .with_context(|| format!("writing {}", host.display()))?;
        maps.push((host, "/md5sum.txt".to_string()));
    }
    Ok(maps)
}

/// The provenance record of an installer imgbuild built; `dir` holds the
/// extracted copy briefly.
pub fn provenance_of(iso: &Path, dir: &Path) -> Result<Provenance> {
    iso::check_iso9660(iso)?;
    let host = dir.join("provenance.json");
    iso::extract(iso, PROVENANCE_PATH, &host).map_err(|e| {
        anyhow!(
            "{}: not an installer imgbuild built (no {PROVENANCE_PATH}): {e}",
            iso.display()
        )
    })?;
    let text = crate::util::prescan::read_file(&host, crate::util::prescan::PROVENANCE);
    std::fs::remove_file(&host).ok();
    let text = text.with_context(|| format!("reading {PROVENANCE_PATH} of {}", iso.display()))?;
    Provenance::read(PROVENANCE_PATH, &text).with_context(|| format!("{}", iso.display()))
}

/// Writes `output`: the unsealed installer `iso` with `only` (a sealed
/// plan's secret files and sealed provenance record) added as a second
/// archive that the installer unpacks after the first. `iso` is only read.
pub fn seal(iso: &Path, only: &NodePlan, output: &Path, stage: &Path) -> Result<()> {
    let build_time = only.provenance.build_time;
    let tar_path = stage.join("secrets.tar");
    let tar = crate::util::create_private(&tar_path, b"")
        .with_context(|| format!("creating {}", tar_path.display()))?;
    let files: Vec<&PlannedFile> = only.files.iter().collect();
    let sha = iso::write_payload(&files, &tar, &tar_path, build_time)?;
    drop(tar);
    let yaml_path = stage.join("autoinstall.yaml");
    iso::extract(iso, AUTOINSTALL_PATH, &yaml_path)?;
    let yaml = crate::util::prescan::read_file(&yaml_path, crate::util::prescan::CONFIG);
    std::fs::remove_file(&yaml_path).ok();
    let yaml = String::from_utf8(
        yaml.with_context(|| format!("reading {AUTOINSTALL_PATH} of {}", iso.display()))?,
    )
    .map_err(|_| anyhow!("{AUTOINSTALL_PATH} of {} is not UTF-8 text", iso.display()))?;
    let sealed = autoinstall::seal(&yaml, &sha)
        .with_context(|| format!("sealing {AUTOINSTALL_PATH} of {}", iso.display()))?;
    crate::util::create_private(&yaml_path, sealed.as_bytes())
        .with_context(|| format!("writing {}", yaml_path.display()))?;
    let prov = provenance_map(&only.provenance, stage)?;
    Ok(iso::remaster(
        iso,
        output,
        &[
            (tar_path, SECRETS_PATH.to_string()),
            (yaml_path, AUTOINSTALL_PATH.to_string()),
            prov,
        ],
    )?)
}
