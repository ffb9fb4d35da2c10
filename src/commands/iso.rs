//! `imgbuild dist/<node>.<board>.iso`: a node's unattended bare-metal
//! installer, remastered from the board's vendor installer ISO (the manifest's
//! `installer`) through the same `build` path as images: plan the node, pack
//! its root files, write `autoinstall.yaml`, edit GRUB, remaster with xorriso.

use std::path::Path;

use anyhow::{Context, anyhow, bail};

use super::build::BakeReport;
use crate::artifact::autoinstall::{self, AUTOINSTALL_PATH, PAYLOAD_PATH, SECRETS_PATH};
use crate::artifact::iso;
use crate::artifact::statement::Statement;
use crate::artifact::{Format, PendingOutput, Target};
use crate::config::profile::{Install, Node};
use crate::plan::{self, Content, FileKind, K3sPayload, PlanInputs, Provenance, SecretValues};

/// The provenance record's path on an installer ISO.
pub const PROVENANCE_PATH: &str = "/imgbuild/provenance.json";

/// Refuses what an `.iso` target cannot be, before anything is fetched.
pub(super) fn check_target(
    ws: &super::Workspace,
    target: &Target,
    node: &Node,
) -> super::Result<()> {
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

/// Builds `target` (an `.iso`) for `node` from the stock installer `stock`.
pub(super) fn build_iso(
    inputs: &PlanInputs,
    values: Option<SecretValues>,
    node: &Node,
    target: &Target,
    stock: &Path,
    k3s: Option<&K3sPayload>,
) -> anyhow::Result<BakeReport> {
    let manifest = inputs.manifest(node)?;
    let payload = match (inputs.profiles.cluster.k3s.install, k3s) {
        (Install::Airgap, Some(k)) => plan::Payload::K3s(k),
        (Install::Airgap, None) => {
            bail!("no k3s air-gap assets were fetched for {}", manifest.arch)
        }
        _ => plan::Payload::None,
    };
    // The same plan a bake of the node writes: every root file, the seed,
    // the provenance record and the k3s payload.
    let plan = plan::plan_node(inputs, node, values, payload)?;
    iso::check_iso9660(stock)?;
    let present = iso::list_files(stock, "/")?;
    if !present.iter().any(|p| p == iso::GRUB_CONFIGS[0]) {
        bail!(
            "{}: has no {}; the installer ISO must boot through GRUB like Ubuntu's live-server ISO",
            stock.display(),
            iso::GRUB_CONFIGS[0]
        );
    }

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
    let _stage_cleanup = crate::util::cleanup::register_dir(stage.path());
    let mut maps = Vec::new();

    let root_files: Vec<&plan::PlannedFile> = plan.files.iter().collect();
    let payload_path = stage.path().join("root.tar");
    let payload_file = crate::util::create_private(&payload_path, b"")
        .with_context(|| format!("creating {}", payload_path.display()))?;
    let payload_sha256 =
        iso::write_payload(&root_files, &payload_file, &payload_path, inputs.build_time)?;
    drop(payload_file);
    maps.push((payload_path, PAYLOAD_PATH.to_string()));

    let seed_file = |name: &str| -> Option<&[u8]> {
        let path = manifest.seed.path_of(name);
        plan.files.iter().find_map(|f| match &f.kind {
            FileKind::Regular(Content::Bytes(b)) if f.path == path => Some(b.as_slice()),
            _ => None,
        })
    };
    let user_data = seed_file("/user-data")
        .ok_or_else(|| anyhow!("node {}: the plan has no seed user-data", node.name))?;
    let yaml = autoinstall::render(&autoinstall::Inputs {
        cluster: &inputs.profiles.cluster,
        node,
        user_data,
        network_config: seed_file("/network-config"),
        payload_sha256,
        removals: &plan.removals,
        unsealed: plan.provenance.unsealed,
    })
    .with_context(|| format!("writing the autoinstall configuration of {}", node.name))?;
    let yaml_path = stage.path().join("autoinstall.yaml");
    crate::util::create_private(&yaml_path, yaml.as_bytes())
        .with_context(|| format!("writing {}", yaml_path.display()))?;
    maps.push((yaml_path, AUTOINSTALL_PATH.to_string()));
    // The provenance record, readable without unpacking the payload: `usb`
    // reads it to tell an unsealed installer and whom it is for.
    let prov_path = stage.path().join("provenance.json");
    crate::util::create_private(&prov_path, &serde_json::to_vec_pretty(&plan.provenance)?)
        .with_context(|| format!("writing {}", prov_path.display()))?;
    maps.push((prov_path, PROVENANCE_PATH.to_string()));

    let mut replaced = Vec::new();
    for (i, cfg) in iso::GRUB_CONFIGS.iter().enumerate() {
        if !present.iter().any(|p| p == cfg) {
            continue;
        }
        let host = stage.path().join(format!("grub-{i}.cfg"));
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
        let host = stage.path().join("md5sum.txt");
        iso::extract(stock, "/md5sum.txt", &host)?;
        let text = std::fs::read_to_string(&host)
            .with_context(|| format!("reading /md5sum.txt of {}", stock.display()))?;
        std::fs::write(&host, iso::drop_md5_lines(&text, &replaced))
            .with_context(|| format!("writing {}", host.display()))?;
        maps.push((host, "/md5sum.txt".to_string()));
    }

    tracing::info!(node = %node.name, output = %target.path.display(), "remastering {}", stock.display());
    iso::remaster(stock, pending.path(), &maps)?;
    // Removed while still registered: an interrupt now still removes it.
    stage
        .close()
        .with_context(|| format!("removing the staging directory in {}", out_dir.display()))?;
    drop(_stage_cleanup);
    let flash_bytes = std::fs::metadata(pending.path())
        .with_context(|| format!("reading the size of {}", pending.path().display()))?
        .len();
    let copy = pending.method;
    // An installer is always hashed: `usb` checks the stick against it.
    let (output, digest) = pending.finish(Format::Iso, true)?;
    let digest = digest.context("the installer was not hashed")?;
    super::build::provenance_statement(inputs, node, &plan.provenance, Format::Iso, k3s)
        .and_then(|(params, mut deps)| {
            // The stock input of an installer is the installer ISO.
            if let (Some(first), Some(inst)) = (deps.first_mut(), &manifest.installer) {
                *first = crate::artifact::statement::ResourceDescriptor::sha256(
                    Some("stock installer"),
                    Some(&inst.url),
                    &inst.sha256,
                );
            }
            Statement::new(&output, &digest, params, deps).write(&output)
        })
        .with_context(|| format!("writing the provenance of {}", output.display()))?;
    Ok(BakeReport {
        output,
        sha256: Some(digest.to_string()),
        compression: Format::Iso,
        node: node.name.clone(),
        board: node.board.clone(),
        unsealed: plan.provenance.unsealed,
        instance_id: plan.instance_id,
        copy,
        flash_bytes,
        shrink: None,
        files: plan.files.iter().map(|f| f.record()).collect(),
    })
}

/// The provenance record of an installer ISO imgbuild built; `dir` holds
/// the extracted copy briefly.
pub fn provenance_of(iso: &Path, dir: &Path) -> anyhow::Result<Provenance> {
    iso::check_iso9660(iso)?;
    let host = dir.join("provenance.json");
    iso::extract(iso, PROVENANCE_PATH, &host).map_err(|e| {
        anyhow!(
            "{}: not an installer imgbuild built (no {PROVENANCE_PATH}): {e}",
            iso.display()
        )
    })?;
    let text = std::fs::read(&host).with_context(|| format!("reading {}", host.display()))?;
    std::fs::remove_file(&host).ok();
    serde_json::from_slice(&text).with_context(|| {
        format!(
            "{}: {PROVENANCE_PATH} is not a provenance record",
            iso.display()
        )
    })
}

/// Writes `output`: the unsealed installer `iso` (built for `node`, whose
/// record is `prov`) with the node's secret files and sealed provenance
/// added as a second archive that the installer unpacks after the first.
/// `iso` itself is only read.
pub fn seal_iso(
    ws: &super::Workspace,
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
    let inputs = PlanInputs {
        profiles: &ws.profiles,
        manifests: &ws.manifests,
        overlays: &ws.overlays,
        build_time: prov.build_time,
    };
    let secrets = ws.secrets()?;
    let values = super::build::secret_values(&secrets, node, prov.build_time)?;
    let plan = plan::plan_node(&inputs, node, Some(values), plan::Payload::None)?;
    if plan.instance_id != prov.instance_id {
        bail!(
            "{}: built as instance {}, but the current profiles and overlays give {}; rebuild it",
            iso.display(),
            prov.instance_id,
            plan.instance_id
        );
    }
    let only = plan.seal_only();
    super::build::warn_cluster_init(&secrets, node)?;
    let tar_path = stage.join("secrets.tar");
    let tar = crate::util::create_private(&tar_path, b"")
        .with_context(|| format!("creating {}", tar_path.display()))?;
    let files: Vec<&plan::PlannedFile> = only.files.iter().collect();
    let sha = iso::write_payload(&files, &tar, &tar_path, prov.build_time)?;
    drop(tar);
    let yaml_path = stage.join("autoinstall.yaml");
    iso::extract(iso, AUTOINSTALL_PATH, &yaml_path)?;
    let yaml = std::fs::read_to_string(&yaml_path)
        .with_context(|| format!("reading {AUTOINSTALL_PATH} of {}", iso.display()))?;
    std::fs::remove_file(&yaml_path).ok();
    let sealed = autoinstall::seal(&yaml, &sha)
        .with_context(|| format!("sealing {AUTOINSTALL_PATH} of {}", iso.display()))?;
    crate::util::create_private(&yaml_path, sealed.as_bytes())
        .with_context(|| format!("writing {}", yaml_path.display()))?;
    let prov_path = stage.join("provenance.json");
    crate::util::create_private(&prov_path, &serde_json::to_vec_pretty(&plan.provenance)?)
        .with_context(|| format!("writing {}", prov_path.display()))?;
    iso::remaster(
        iso,
        output,
        &[
            (tar_path, SECRETS_PATH.to_string()),
            (yaml_path, AUTOINSTALL_PATH.to_string()),
            (prov_path, PROVENANCE_PATH.to_string()),
        ],
    )?;
    Ok(())
}
