//! `imgbuild seal IMAGE`: add a node's secrets to an image built `--unsealed`
//! (a CI artifact, raw or compressed), writing a new image; the artifact is
//! never modified. `flash` and `deploy` seal this way on their way to a node.

use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow, bail};

use super::{CommandError, Result, Workspace};
use crate::artifact::{Format, PendingOutput, Target, sums};
use crate::config::profile::Node;
use crate::image::PartitionTable;
use crate::io::Sha256Digest;
use crate::plan::{self, FileRecord, PlanInputs, Provenance};
use crate::secrets::Secrets;
use crate::source::unpack;

#[derive(Debug, Clone)]
pub struct SealSettings {
    /// The sealed image to write [default: <out_dir>/<node>.<board>.img].
    pub output: Option<PathBuf>,
    pub out_dir: PathBuf,
    /// Refuse an image that is not for this node.
    pub node: Option<String>,
    pub build_time: u64,
}

#[derive(Debug)]
pub struct SealReport {
    pub input: PathBuf,
    pub output: PathBuf,
    pub sha256: String,
    pub node: String,
    pub board: String,
    pub instance_id: String,
    /// The files sealing wrote (secrets and the provenance record).
    pub files: Vec<FileRecord>,
}

/// The image given to `seal` already holds its node's secrets.
#[derive(Debug, thiserror::Error)]
#[error("{}: already sealed (built with the secrets of node {node})", image.display())]
pub struct AlreadySealed {
    pub image: PathBuf,
    pub node: String,
}

/// What an artifact says about itself: its provenance record, read from the
/// image (raw or compressed).
fn provenance_of(ws: &Workspace, raw: &Path) -> anyhow::Result<Option<Provenance>> {
    let dirs: Vec<String> = ws.manifests.values().map(|m| m.seed.dir.clone()).collect();
    Ok(crate::artifact::inspect::inspect(raw, &dirs)?.provenance)
}

/// Whether `image` must be sealed (or unpacked) before it can be flashed.
pub fn needs_sealing(ws: &Workspace, image: &Path) -> anyhow::Result<bool> {
    if compression(image)? != unpack::Format::Raw {
        return Ok(true);
    }
    // An image whose table or seed cannot be read is flashed as it is: the
    // BMC writes any bytes, and only images imgbuild built can be unsealed.
    Ok(provenance_of(ws, image)
        .ok()
        .flatten()
        .is_some_and(|p| p.unsealed))
}

fn compression(image: &Path) -> anyhow::Result<unpack::Format> {
    use std::io::Read;
    let mut head = [0u8; 8];
    let mut f =
        std::fs::File::open(image).with_context(|| format!("opening {}", image.display()))?;
    let n = f.read(&mut head)?;
    Ok(unpack::Format::sniff(&head[..n]))
}

/// Checks the artifact against the digests recorded beside it, if any.
fn check_recorded_digest(image: &Path) -> anyhow::Result<()> {
    let recorded = sums::recorded(image);
    let statement = crate::artifact::statement::recorded_subject(image)?;
    if recorded.is_none() && statement.is_none() {
        tracing::warn!(
            "{}: no SHA256SUMS line or provenance statement beside it; cannot check that it was not modified \
             (build it with --unsealed or --sums to have them)",
            image.display()
        );
        return Ok(());
    }
    let f = std::fs::File::open(image).with_context(|| format!("opening {}", image.display()))?;
    let actual = crate::io::sha256_sparse(&f)?;
    for (what, want) in [
        ("SHA256SUMS", recorded),
        ("its provenance statement", statement),
    ] {
        if let Some(want) = want
            && want != actual
        {
            bail!(
                "{}: sha256 {actual} differs from {want} recorded in {what}: the artifact was modified after it was built; refusing to seal it",
                image.display()
            );
        }
    }
    Ok(())
}

pub fn seal(ws: &Workspace, input: &Path, settings: &SealSettings) -> Result<SealReport> {
    check_recorded_digest(input)?;
    let format = compression(input)?;
    // The raw image to read from: the input itself, or the input unpacked
    // straight into the pending output.
    let probe_dir = tempfile::Builder::new()
        .prefix(".imgbuild-seal-")
        .tempdir_in(crate::artifact::parent_dir(input))
        .or_else(|_| tempfile::tempdir())
        .context("creating a temporary directory")?;
    let _probe_cleanup = crate::util::cleanup::register_dir(probe_dir.path());
    let unpacked;
    let raw: &Path = if format == unpack::Format::Raw {
        input
    } else {
        unpacked = probe_dir.path().join("unpacked.img");
        let out = std::fs::File::create(&unpacked)
            .with_context(|| format!("creating {}", unpacked.display()))?;
        let src =
            std::fs::File::open(input).with_context(|| format!("opening {}", input.display()))?;
        unpack::unpack(&src, &out, "unpack", unpack::DEFAULT_MAX_SIZE)
            .map_err(|e| anyhow!("{}: {e}", input.display()))?;
        &unpacked
    };
    let prov = provenance_of(ws, raw)?.ok_or_else(|| {
        CommandError::usage(format!(
            "{}: not an image imgbuild built (no provenance record in its seed)",
            input.display()
        ))
    })?;
    if !prov.unsealed {
        return Err(CommandError::Usage(
            AlreadySealed {
                image: input.to_owned(),
                node: prov.node,
            }
            .into(),
        ));
    }
    if let Some(want) = &settings.node
        && *want != prov.node
    {
        return Err(CommandError::usage(format!(
            "{}: built for node {}, not {want}",
            input.display(),
            prov.node
        )));
    }
    let node = ws.node(&prov.node)?;
    check_matches(ws, node, &prov, input, settings.build_time)?;
    let secrets = Secrets::open_existing(&ws.paths.secrets)?;
    let missing = secrets.missing_for(&node.name);
    if !missing.is_empty() {
        return Err(CommandError::Failed(anyhow!(
            "{}: the secrets directory lacks what node {} needs: {}; sealing never creates secrets",
            ws.paths.secrets.display(),
            node.name,
            missing.join(", ")
        )));
    }
    let output = settings.output.clone().unwrap_or_else(|| {
        Target::in_dir(&settings.out_dir, &node.name, &node.board, Format::Raw).path
    });
    let out_format = Format::from_name(
        &output
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
    )
    .map_or(Format::Raw, |(_, f)| f);
    if output.exists() && std::fs::canonicalize(&output).ok() == std::fs::canonicalize(input).ok() {
        return Err(CommandError::usage(format!(
            "{}: sealing writes a new image; give another output with -o",
            output.display()
        )));
    }
    let report = seal_raw(
        ws,
        &secrets,
        node,
        raw,
        &output,
        out_format,
        settings.build_time,
    )?;
    Ok(SealReport {
        input: input.to_owned(),
        ..report
    })
}

/// Refuses an image built from other profiles or another base than a direct
/// build would use now.
fn check_matches(
    ws: &Workspace,
    node: &Node,
    prov: &Provenance,
    input: &Path,
    build_time: u64,
) -> Result<()> {
    let manifest = &ws.manifests[&node.board];
    let mismatch = |what: &str, built: &str, now: &str| {
        CommandError::Failed(anyhow!(
            "{}: built with {what} {built}, but the current inputs give {now}; rebuild it (or seal with the inputs it was built from)",
            input.display()
        ))
    };
    if prov.board != node.board {
        return Err(mismatch("board", &prov.board, &node.board));
    }
    if prov.base_sha256 != manifest.source.sha256 {
        return Err(mismatch(
            "the base image",
            prov.base_sha256.as_deref().unwrap_or("(unpinned)"),
            manifest.source.sha256.as_deref().unwrap_or("(unpinned)"),
        ));
    }
    let digest = crate::config::profile::profile_digest(&ws.profiles.cluster, node);
    if prov.profile_digest != digest {
        return Err(mismatch("profile digest", &prov.profile_digest, &digest));
    }
    if prov.build_time != build_time {
        return Err(mismatch(
            "build time",
            &prov.build_time.to_string(),
            &build_time.to_string(),
        ));
    }
    Ok(())
}

/// Writes `raw` plus the node's secrets and sealed provenance to `output`.
fn seal_raw(
    ws: &Workspace,
    secrets: &Secrets,
    node: &Node,
    raw: &Path,
    output: &Path,
    format: Format,
    build_time: u64,
) -> Result<SealReport> {
    let manifest = &ws.manifests[&node.board];
    let inputs = PlanInputs {
        profiles: &ws.profiles,
        manifests: &ws.manifests,
        overlays: &ws.overlays,
        build_time,
    };
    let values = super::build::secret_values(secrets, node, build_time)?;
    let plan = plan::plan_node(&inputs, node, Some(values), plan::Payload::None)?;
    let built = provenance_of(ws, raw)?.map(|p| p.instance_id);
    if built.as_deref() != Some(plan.instance_id.as_str()) {
        return Err(CommandError::Failed(anyhow!(
            "{}: built as instance {}, but the current profiles and overlays give {}; rebuild it",
            raw.display(),
            built.as_deref().unwrap_or("(none)"),
            plan.instance_id
        )));
    }
    let only = plan.seal_only();
    super::build::warn_cluster_init(secrets, node)?;
    let pending = PendingOutput::from_base(raw, output)?;
    let table = PartitionTable::read(pending.path(), Some(manifest.partition_table))
        .map_err(anyhow::Error::from)?;
    let image = pending.open()?;
    crate::bake::apply(&only, manifest, &table, pending.path(), &image, build_time)?;
    drop(image);
    // A sealed image is hashed (and the digest cached on it): the input was
    // read whole to check it anyway, and `flash` needs the digest next.
    let (output, digest): (PathBuf, Option<Sha256Digest>) = pending.finish(format, true)?;
    let digest = digest.context("the sealed image was not hashed")?;
    Ok(SealReport {
        input: raw.to_owned(),
        output,
        sha256: digest.to_string(),
        node: node.name.clone(),
        board: node.board.clone(),
        instance_id: plan.instance_id.clone(),
        files: only.files.iter().map(|f| f.record()).collect(),
    })
}

/// The raw, sealed image to flash for `image`: the image itself when it is
/// raw and sealed; else it is unpacked and/or sealed into a new file in `dir`
/// (which the caller removes after flashing).
pub fn flashable(
    ws: &Workspace,
    node: &Node,
    image: &Path,
    dir: &Path,
    build_time: u64,
) -> Result<PathBuf> {
    let compressed = compression(image)? != unpack::Format::Raw;
    let unsealed = !compressed && needs_sealing(ws, image)?;
    if !compressed && !unsealed {
        return Ok(image.to_owned());
    }
    let out = dir.join(format!("{}.{}.img", node.name, node.board));
    let settings = SealSettings {
        output: Some(out.clone()),
        out_dir: dir.to_owned(),
        node: Some(node.name.clone()),
        build_time,
    };
    match seal(ws, image, &settings) {
        Ok(r) => Ok(r.output),
        // A compressed image that is already sealed only needs unpacking.
        Err(CommandError::Usage(e))
            if compressed && e.downcast_ref::<AlreadySealed>().is_some() =>
        {
            let pending = PendingOutput::empty(&out)?;
            let src = std::fs::File::open(image)
                .with_context(|| format!("opening {}", image.display()))?;
            let dst = pending.open()?;
            unpack::unpack(&src, &dst, "unpack", unpack::DEFAULT_MAX_SIZE)
                .map_err(|e| anyhow!("{}: {e}", image.display()))?;
            drop(dst);
            Ok(pending.commit()?)
        }
        Err(e) => Err(e),
    }
}
