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
use crate::plan::{FileRecord, Provenance};
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

/// Whether `image` must be sealed (or unpacked) before it can be flashed.
pub fn needs_sealing(ws: &Workspace, image: &Path) -> anyhow::Result<bool> {
    let art = ws.open_artifact(image)?;
    Ok(!art.is_raw() || art.is_unsealed())
}

/// Unpacks the compressed `input` into `out` (a new file).
fn unpack_to(input: &Path, out: &Path) -> anyhow::Result<()> {
    let dst = std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let src = std::fs::File::open(input).with_context(|| format!("opening {}", input.display()))?;
    unpack::unpack(&src, &dst, "unpack", unpack::DEFAULT_MAX_SIZE)
        .map_err(|e| anyhow!("{}: {e}", input.display()))?;
    Ok(())
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
    // The raw image to read from: the input itself, or the input unpacked
    // into a private directory beside it.
    let probe_dir = tempfile::Builder::new()
        .prefix(".imgbuild-seal-")
        .tempdir_in(crate::artifact::parent_dir(input))
        .or_else(|_| tempfile::tempdir())
        .context("creating a temporary directory")?;
    let _probe_cleanup = crate::util::cleanup::register_dir(probe_dir.path());
    let mut art = ws.open_artifact(input)?;
    if !art.is_raw() {
        let unpacked = probe_dir.path().join("unpacked.img");
        unpack_to(input, &unpacked)?;
        art = ws.open_artifact(&unpacked)?;
    }
    let prov = art.provenance.clone().ok_or_else(|| {
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
    let node = node_of(ws, &prov, input, settings.node.as_deref())?;
    check_matches(ws, node, &prov, input, settings.build_time)?;
    let secrets = secrets_for(ws, node)?;
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
    let edit = Edit {
        raw: &art.path,
        output: &output,
        format: out_format,
        build_time: settings.build_time,
        join: None,
        built_instance: &prov.instance_id,
    };
    let report = seal_raw(ws, &secrets, node, &edit)?;
    Ok(SealReport {
        input: input.to_owned(),
        ..report
    })
}

/// The node an image was built for, which must be `want` when given.
fn node_of<'w>(
    ws: &'w Workspace,
    prov: &Provenance,
    input: &Path,
    want: Option<&str>,
) -> Result<&'w Node> {
    if let Some(want) = want
        && want != prov.node
    {
        return Err(CommandError::usage(format!(
            "{}: built for node {}, not {want}",
            input.display(),
            prov.node
        )));
    }
    ws.node(&prov.node)
}

/// The secrets directory, which must already hold what `node` needs:
/// sealing never creates secrets.
fn secrets_for(ws: &Workspace, node: &Node) -> Result<Secrets> {
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
    Ok(secrets)
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

/// One write of a sealed copy: from which raw image, to where, and whether
/// the server is re-made to join a running cluster.
struct Edit<'a> {
    raw: &'a Path,
    output: &'a Path,
    format: Format,
    build_time: u64,
    /// The API URL a server joins through instead of founding the cluster.
    join: Option<&'a str>,
    /// The instance ID the raw image's provenance record names (read once,
    /// by the caller's `Artifact::open`).
    built_instance: &'a str,
}

/// Writes `edit.raw` plus the node's secrets and sealed provenance (and, when
/// joining, the server's joining k3s config without the CA set) to
/// `edit.output`; the raw image is only read.
fn seal_raw(ws: &Workspace, secrets: &Secrets, node: &Node, edit: &Edit) -> Result<SealReport> {
    let manifest = &ws.manifests[&node.board];
    let supplies = crate::source::supplies::Supplies::preview(&ws.profiles)?;
    let mut inputs = ws.plan_inputs(edit.build_time);
    inputs.join = edit.join.map(str::to_string);
    let values = super::secret_values(secrets, node, edit.build_time)?;
    let plan = crate::plan::plan_node(&inputs, node, Some(values), &supplies)?;
    if edit.built_instance != plan.instance_id {
        return Err(CommandError::Failed(anyhow!(
            "{}: built as instance {}, but the current profiles and overlays give {}; rebuild it",
            edit.raw.display(),
            edit.built_instance,
            plan.instance_id
        )));
    }
    let only = plan.seal_only();
    if edit.join.is_none() {
        super::warn_cluster_init(secrets, node)?;
    }
    let pending = PendingOutput::from_base(edit.raw, edit.output)?;
    let table = PartitionTable::read(pending.path(), Some(manifest.partition_table))
        .map_err(anyhow::Error::from)?;
    let image = pending.open()?;
    crate::bake::apply(
        &only,
        manifest,
        &table,
        pending.path(),
        &image,
        edit.build_time,
    )?;
    drop(image);
    // A sealed image is hashed (and the digest cached on it): the input was
    // read whole to check it anyway, and `flash` needs the digest next.
    let (output, digest): (PathBuf, Option<Sha256Digest>) = pending.finish(edit.format, true)?;
    let digest = digest.context("the sealed image was not hashed")?;
    Ok(SealReport {
        input: edit.raw.to_owned(),
        output,
        sha256: digest.to_string(),
        node: node.name.clone(),
        board: node.board.clone(),
        instance_id: plan.instance_id.clone(),
        files: only.files.iter().map(|f| f.record()).collect(),
    })
}

/// The raw, sealed image to flash for `image`: the image itself when it is
/// raw, sealed and nothing is to change; else it is unpacked, sealed and (a
/// server that must join a running cluster: `join` is the API URL) re-made
/// to join, into a new file in `dir` (which the caller removes after
/// flashing). The artifact itself is never modified.
pub fn flashable(
    ws: &Workspace,
    node: &Node,
    image: &Path,
    dir: &Path,
    build_time: u64,
    join: Option<&str>,
) -> Result<PathBuf> {
    let art = ws.open_artifact(image)?;
    if art.is_raw() && !art.is_unsealed() && join.is_none() {
        return Ok(image.to_owned());
    }
    let raw = if art.is_raw() {
        art
    } else {
        let unpacked = dir.join(format!("{}.{}.unpacked.img", node.name, node.board));
        unpack_to(image, &unpacked)?;
        ws.open_artifact(&unpacked)?
    };
    let out = dir.join(format!("{}.{}.img", node.name, node.board));
    let prov = match (&raw.provenance, join) {
        (Some(p), Some(_)) => p.clone(),
        (Some(p), None) if p.unsealed => p.clone(),
        // Sealed and compressed: unpacking was all it needed.
        (_, None) => return Ok(raw.path),
        (None, Some(_)) => {
            return Err(CommandError::Failed(anyhow!(
                "{}: not an image imgbuild built (no provenance record in its seed), so it cannot be made to join the running cluster; rebuild it",
                image.display()
            )));
        }
    };
    let node = node_of(ws, &prov, image, Some(&node.name))?;
    let build_time = if prov.unsealed {
        check_recorded_digest(image)?;
        check_matches(ws, node, &prov, image, build_time)?;
        build_time
    } else {
        prov.build_time
    };
    let secrets = secrets_for(ws, node)?;
    let edit = Edit {
        raw: &raw.path,
        output: &out,
        format: Format::Raw,
        build_time,
        join,
        built_instance: &prov.instance_id,
    };
    let report = seal_raw(ws, &secrets, node, &edit)?;
    if raw.path != image {
        std::fs::remove_file(&raw.path).ok();
    }
    Ok(report.output)
}
