//! `imgbuild dist/<node>.<board>.iso`: a node's unattended bare-metal
//! installer, remastered from the board's vendor installer ISO (the manifest's
//! `installer`) through the same `build` path as images and from the same
//! complete plan: this file sequences the output, staging and statement;
//! `installer` does the remastering.

use std::path::Path;

use anyhow::{Context, anyhow, bail};

use super::Workspace;
use super::written::{BakeReport, write_statement};
use crate::artifact::{Format, PendingOutput, Target};
use crate::config::profile::Node;
use crate::installer::{self, Recipe};
use crate::plan::{NodePlan, Provenance};

/// Refuses what an `.iso` target cannot be, before anything is fetched.
pub(super) fn check_target(ws: &Workspace, target: &Target, node: &Node) -> super::Result<()> {
    let usage = |m: String| super::CommandError::Usage(anyhow!(m));
    match ws.manifests.get(&node.board) {
        Some(m) if m.installer.is_none() => Err(usage(format!(
            "{}: board {} has no `installer` in its firmware manifest ({}), so it has no .iso target; build {}.{}.img instead",
            target.path.display(),
            node.board,
            m.origin,
            node.name,
            node.board
        ))),
        _ => {
            // The installer wipes the disk `install.disk` matches, by default
            // the largest one, which on a node with data disks is often one
            // of them: such a node must name its system disk.
            let d = &node.install.disk;
            if !node.storage.is_empty()
                && d.serial.is_none()
                && d.model.is_none()
                && d.path.is_none()
            {
                return Err(super::CommandError::Invalid(anyhow!(
                    "{}: install.disk: node {} has data disks (`storage`); name the disk the installer wipes \
                     with `install.disk` (`serial`, `model` or `path`), or the largest disk, which may be a data disk, is wiped",
                    node.file.display(),
                    node.name
                )));
            }
            Ok(())
        }
    }
}

/// Builds `target` (an `.iso`) for `plan`'s node from the stock installer `stock`.
pub(super) fn build_iso(
    ws: &Workspace,
    plan: &NodePlan,
    node: &Node,
    target: &Target,
    stock: &Path,
) -> anyhow::Result<BakeReport> {
    let manifest = &ws.manifests[&node.board];
    let out_dir = crate::artifact::parent_dir(&target.path);
    if !out_dir.is_dir() {
        // An installer holds the node's secrets: a new output directory is private.
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&out_dir)
            .with_context(|| format!("creating the output directory {}", out_dir.display()))?;
    }
    let pending = PendingOutput::empty(&target.path)?;
    // Staging for the files mapped into the ISO: beside the output (private,
    // removed on failure or interrupt), never in /tmp.
    let stage = tempfile::Builder::new()
        .prefix(".imgbuild-iso-")
        .tempdir_in(&out_dir)
        .with_context(|| format!("creating a directory in {}", out_dir.display()))?;
    let stage_cleanup = crate::util::cleanup::register_dir(stage.path());
    let recipe = Recipe {
        plan,
        manifest,
        cluster: &ws.profiles.cluster,
        node,
        build_time: plan.provenance.build_time,
    };
    installer::remaster(&recipe, stock, pending.path(), stage.path())?;
    // Removed while still registered: an interrupt now still removes it.
    stage
        .close()
        .with_context(|| format!("removing the staging directory in {}", out_dir.display()))?;
    drop(stage_cleanup);
    let flash_bytes = std::fs::metadata(pending.path())
        .with_context(|| format!("reading the size of {}", pending.path().display()))?
        .len();
    let copy = pending.method;
    // An installer is always hashed: `usb` checks the stick against it.
    let (output, digest) = pending.finish(Format::Iso, true)?;
    let digest = digest.context("the installer was not hashed")?;
    // The stock input of an installer is the installer ISO.
    let stock_dep = manifest
        .installer
        .as_ref()
        .map(|inst| crate::plan::Dependency {
            name: "stock installer".into(),
            uri: Some(inst.url.clone()),
            sha256: inst.sha256.clone(),
        });
    write_statement(&output, &digest, plan, Format::Iso, stock_dep)?;
    Ok(BakeReport {
        output,
        sha256: Some(digest.to_string()),
        compression: Format::Iso,
        node: node.name.clone(),
        board: node.board.clone(),
        unsealed: plan.provenance.unsealed,
        instance_id: plan.instance_id.clone(),
        copy,
        flash_bytes,
        shrink: None,
        files: plan.files.iter().map(|f| f.record()).collect(),
    })
}

/// The provenance record of an installer ISO imgbuild built; `dir` holds
/// the extracted copy briefly.
pub fn provenance_of(iso: &Path, dir: &Path) -> anyhow::Result<Provenance> {
    installer::provenance_of(iso, dir)
}

/// Writes `output`: the unsealed installer `iso` (built for `node`, whose
/// record is `prov`) with the node's secret files and sealed provenance
/// added as a second archive that the installer unpacks after the first.
/// `iso` itself is only read.
pub fn seal_iso(
    ws: &Workspace,
    node: &Node,
    iso: &Path,
    prov: &Provenance,
    output: &Path,
    stage: &Path,
) -> anyhow::Result<()> {
    if prov.node != node.name || prov.board != node.board {
        bail!(
            "{}: an installer for {} ({}), not {} ({})",
            iso.display(),
            prov.node,
            prov.board,
            node.name,
            node.board
        );
    }
    let secrets = ws.secrets()?;
    let supplies = crate::source::supplies::Supplies::preview(&ws.profiles)?;
    let plan = ws.plan(node, Some(&secrets), &supplies, prov.build_time)?;
    if plan.instance_id != prov.instance_id {
        bail!(
            "{}: built as instance {}, but the current profiles and overlays give {}; rebuild it",
            iso.display(),
            prov.instance_id,
            plan.instance_id
        );
    }
    super::warn_cluster_init(&secrets, node)?;
    installer::seal(iso, &plan.seal_only(), output, stage)
}
