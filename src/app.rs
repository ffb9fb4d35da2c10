//! The commands, as library functions taking resolved settings (no clap here).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Result, anyhow, bail};

use crate::bake::{self, BakeInputs, BakeReport, Target};
use crate::manifest::{self, Manifest};
use crate::profile::{self, ProfileSet};

/// Exit statuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Ok = 0,
    Failure = 1,
    Usage = 2,
    Invalid = 3,
}

/// An error with the exit status it should produce.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// Profiles or manifests are invalid.
    #[error(transparent)]
    Invalid(anyhow::Error),
    /// The command line asked for something impossible.
    #[error(transparent)]
    Usage(anyhow::Error),
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

impl AppError {
    pub fn exit(&self) -> Exit {
        match self {
            AppError::Invalid(_) => Exit::Invalid,
            AppError::Usage(_) => Exit::Usage,
            AppError::Failed(_) => Exit::Failure,
        }
    }
    pub fn inner(&self) -> &anyhow::Error {
        match self {
            AppError::Invalid(e) | AppError::Usage(e) | AppError::Failed(e) => e,
        }
    }
}

/// Where profiles, manifests and overlays live.
#[derive(Debug, Clone)]
pub struct Paths {
    pub profiles: PathBuf,
    pub manifests: PathBuf,
    pub overlays: PathBuf,
}

impl Paths {
    /// Manifests and overlays default to the folders beside the profile
    /// directory when they exist there, else to the current directory's.
    pub fn resolve(
        profiles: PathBuf,
        manifests: Option<PathBuf>,
        overlays: Option<PathBuf>,
    ) -> Self {
        let beside = |name: &str| -> PathBuf {
            let parent = profiles
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            let candidate = parent.join(name);
            if candidate.is_dir() {
                candidate
            } else {
                PathBuf::from(name)
            }
        };
        Paths {
            manifests: manifests.unwrap_or_else(|| beside("firmware-manifests")),
            overlays: overlays.unwrap_or_else(|| beside("overlays")),
            profiles,
        }
    }
}

/// Loads manifests and profiles; any problem is an [`AppError::Invalid`].
pub fn load(paths: &Paths) -> Result<(ProfileSet, BTreeMap<String, Manifest>), AppError> {
    let manifests =
        manifest::load_all(&paths.manifests).map_err(|e| AppError::Invalid(e.into()))?;
    let boards = manifest::board_infos(&manifests);
    let profiles =
        profile::load(&paths.profiles, &boards).map_err(|e| AppError::Invalid(e.into()))?;
    Ok((profiles, manifests))
}

/// What `check` found valid.
#[derive(Debug, serde::Serialize)]
pub struct CheckReport {
    pub cluster: String,
    pub nodes: Vec<String>,
    pub boards: Vec<String>,
}

pub fn check(paths: &Paths) -> Result<CheckReport, AppError> {
    let (profiles, manifests) = load(paths)?;
    // Render every node too: template errors are profile-set errors.
    let inputs = BakeInputs {
        profiles: &profiles,
        manifests: &manifests,
        overlays: &paths.overlays,
        build_time: bake::build_time()?,
    };
    let mut problems = Vec::new();
    for node in &profiles.nodes {
        if let Err(e) = bake::render_node(&inputs, node) {
            problems.push(format!("  - node {}: {e:#}", node.name));
        }
    }
    if !problems.is_empty() {
        return Err(AppError::Invalid(anyhow!(
            "{} node(s) fail to render:\n{}",
            problems.len(),
            problems.join("\n")
        )));
    }
    Ok(CheckReport {
        cluster: profiles.cluster.name.clone(),
        nodes: profiles
            .nodes
            .iter()
            .map(|n| format!("{}.{}", n.name, n.board))
            .collect(),
        boards: manifests.keys().cloned().collect(),
    })
}

#[derive(Debug, Clone, Default)]
pub struct BuildSettings {
    pub targets: Vec<PathBuf>,
    pub all: bool,
    pub out_dir: PathBuf,
    /// `(board, file)`; a `None` board applies to every target.
    pub bases: Vec<(Option<String>, PathBuf)>,
}

/// Parses `--base` values: `FILE` or `BOARD=FILE`.
pub fn parse_bases(values: &[String]) -> Result<Vec<(Option<String>, PathBuf)>, AppError> {
    let mut out: Vec<(Option<String>, PathBuf)> = Vec::new();
    for v in values {
        let (board, file) = match v.split_once('=') {
            Some((b, f)) if !b.is_empty() && !b.contains('/') => {
                (Some(b.to_string()), PathBuf::from(f))
            }
            _ => (None, PathBuf::from(v)),
        };
        if out.iter().any(|(b, _)| *b == board) {
            return Err(AppError::Usage(anyhow!(
                "--base given twice for {}",
                board.map_or("all boards".into(), |b| format!("board {b}"))
            )));
        }
        out.push((board, file));
    }
    Ok(out)
}

fn base_for(
    bases: &[(Option<String>, PathBuf)],
    board: &str,
    manifest: &Manifest,
) -> Result<PathBuf> {
    let found = bases
        .iter()
        .find(|(b, _)| b.as_deref() == Some(board))
        .or_else(|| bases.iter().find(|(b, _)| b.is_none()));
    match found {
        Some((_, f)) => {
            if !f.is_file() {
                bail!("--base {}: no such file", f.display());
            }
            Ok(f.clone())
        }
        None => bail!(
            "no base image for board {board}: give --base {board}=FILE with the unpacked stock image ({})",
            manifest.source.url
        ),
    }
}

/// Builds every requested target; stops at the first failure.
pub fn build(paths: &Paths, settings: &BuildSettings) -> Result<Vec<BakeReport>, AppError> {
    let mut targets = Vec::new();
    for t in &settings.targets {
        targets.push(Target::parse(t).map_err(AppError::Usage)?);
    }
    if targets.is_empty() && !settings.all {
        return Err(AppError::Usage(anyhow!(
            "nothing to build: name targets like dist/node02.rk1.img, or use --all"
        )));
    }
    let (profiles, manifests) = load(paths)?;
    if settings.all {
        for n in &profiles.nodes {
            targets.push(Target {
                node: n.name.clone(),
                board: n.board.clone(),
                path: settings.out_dir.join(format!("{}.{}.img", n.name, n.board)),
            });
        }
    }
    // Check every target and base before building any.
    let mut jobs = Vec::new();
    for t in &targets {
        let node = bake::resolve_target(&profiles, t).map_err(AppError::Usage)?;
        let base = base_for(&settings.bases, &node.board, &manifests[&node.board])?;
        jobs.push((t, base));
    }
    let inputs = BakeInputs {
        profiles: &profiles,
        manifests: &manifests,
        overlays: &paths.overlays,
        build_time: bake::build_time()?,
    };
    let mut reports = Vec::new();
    for (t, base) in jobs {
        let r = bake::bake(&inputs, t, &base)?;
        tracing::info!(
            "built {} ({}, instance {})",
            r.output.display(),
            r.copy,
            r.instance_id
        );
        reports.push(r);
    }
    Ok(reports)
}

/// The files a node's image would get.
pub fn render(paths: &Paths, node: &str) -> Result<Vec<crate::render::RenderedFile>, AppError> {
    let (profiles, manifests) = load(paths)?;
    let n = profiles.node(node).ok_or_else(|| {
        AppError::Usage(anyhow!(
            "no node {node:?} in {} (nodes: {})",
            profiles.dir.display(),
            profiles
                .nodes
                .iter()
                .map(|n| n.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })?;
    let inputs = BakeInputs {
        profiles: &profiles,
        manifests: &manifests,
        overlays: &paths.overlays,
        build_time: bake::build_time()?,
    };
    Ok(bake::render_node(&inputs, n)?.0)
}
