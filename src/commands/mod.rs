//! The commands, one file per verb, as library functions taking resolved
//! settings (no clap, no environment here). This is the only layer that
//! sequences the stages: load the workspace once, plan, fetch, bake, write
//! artifacts, deliver.

pub mod bmc;
pub mod build;
pub mod cache;
pub mod check;
pub mod diff;
pub mod fetch;
pub mod flash;
pub mod import;
pub mod init;
pub mod inspect;
pub mod iso;
pub mod kubeconfig;
pub mod overlays;
pub mod render;
pub mod rollout;
pub mod seal;
pub mod secrets;
pub mod status;
pub mod unpack;
pub mod usb;
pub mod verify;
pub mod wait;
pub mod written;

use std::path::{Path, PathBuf};

use anyhow::anyhow;

use crate::config::manifest::{self, Manifests};
use crate::config::profile::{self, Node, ProfileSet};
use crate::plan::overlay_source::OverlaySet;
use crate::plan::{NodePlan, PlanInputs, SecretValues};
use crate::secrets::Secrets;
use crate::source::supplies::{self, Supplies};
use crate::source::{Cache, FetchOptions, RetryPolicy};

/// Exit statuses besides success (0) and interruption (130).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Failure = 1,
    Usage = 2,
    Invalid = 3,
}

/// An error with the exit status it should produce.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// Profiles or manifests are invalid.
    #[error(transparent)]
    Invalid(anyhow::Error),
    /// The command line asked for something impossible.
    #[error(transparent)]
    Usage(anyhow::Error),
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

impl CommandError {
    pub fn exit(&self) -> Exit {
        match self {
            CommandError::Invalid(_) => Exit::Invalid,
            CommandError::Usage(_) => Exit::Usage,
            CommandError::Failed(_) => Exit::Failure,
        }
    }

    pub fn inner(&self) -> &anyhow::Error {
        match self {
            CommandError::Invalid(e) | CommandError::Usage(e) | CommandError::Failed(e) => e,
        }
    }

    fn usage(message: String) -> Self {
        CommandError::Usage(anyhow!(message))
    }
}

impl From<crate::deliver::DeliverError> for CommandError {
    fn from(e: crate::deliver::DeliverError) -> Self {
        match e {
            crate::deliver::DeliverError::NoConfirmation(_) => CommandError::Usage(e.into()),
            e => CommandError::Failed(e.into()),
        }
    }
}

pub type Result<T, E = CommandError> = std::result::Result<T, E>;

/// Where profiles, manifests, overlays and secrets live.
#[derive(Debug, Clone)]
pub struct Paths {
    pub profiles: PathBuf,
    /// A directory of manifests laid over the built-in ones, if any.
    pub manifests: Option<PathBuf>,
    /// A directory of overlay files laid over the built-in ones, if any.
    pub overlays: Option<PathBuf>,
    pub secrets: PathBuf,
    /// Whether the built-in manifests and overlays are the bottom layer
    /// (`--no-builtin` turns them off: only the directories count).
    pub builtin: bool,
}

impl Paths {
    /// Override directories for manifests and overlays default to the
    /// folders of those names beside the profile directory when they exist
    /// (else only the built-in ones apply); secrets default to `secrets`
    /// beside the profile directory.
    pub fn resolve(
        profiles: PathBuf,
        manifests: Option<PathBuf>,
        overlays: Option<PathBuf>,
    ) -> Self {
        Self::resolve_with_secrets(profiles, manifests, overlays, None)
    }

    pub fn resolve_with_secrets(
        profiles: PathBuf,
        manifests: Option<PathBuf>,
        overlays: Option<PathBuf>,
        secrets: Option<PathBuf>,
    ) -> Self {
        let parent = profiles
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .to_owned();
        let beside = |name: &str| -> Option<PathBuf> {
            let candidate = parent.join(name);
            candidate.is_dir().then_some(candidate)
        };
        Paths {
            manifests: manifests.or_else(|| beside("firmware-manifests")),
            overlays: overlays.or_else(|| beside("overlays")),
            secrets: secrets.unwrap_or_else(|| parent.join("secrets")),
            profiles,
            builtin: true,
        }
    }
}

/// Where the cache is and how to reach the network.
#[derive(Debug, Clone)]
pub struct FetchSettings {
    /// `None` when no cache directory could be found (no HOME).
    pub cache_dir: Option<PathBuf>,
    pub offline: bool,
    pub retry: RetryPolicy,
    /// Overrides the profiles' `k3s.mirror` (`IMGBUILD_K3S_MIRROR`).
    pub k3s_mirror: Option<String>,
    /// Registry credentials file for air-gapped images (`IMGBUILD_REGISTRY_AUTH`).
    pub registry_auth: Option<PathBuf>,
}

impl FetchSettings {
    pub fn options(&self) -> FetchOptions {
        FetchOptions {
            offline: self.offline,
            retry: self.retry,
        }
    }

    /// Where k3s releases come from: this setting, else the profiles'
    /// `k3s.mirror`, else GitHub's releases.
    pub fn k3s_mirror_for(&self, profiles: &ProfileSet) -> String {
        self.k3s_mirror
            .clone()
            .or_else(|| profiles.cluster.k3s.mirror.clone())
            .unwrap_or_else(|| crate::config::k3s::DEFAULT_MIRROR.to_string())
    }

    pub fn cache(&self) -> anyhow::Result<Cache> {
        self.cache_dir.clone().map(Cache::new).ok_or_else(|| {
            anyhow!("no cache directory: set --cache-dir, IMGBUILD_CACHE_DIR or HOME")
        })
    }
}

/// The manifests alone (commands that need no profiles).
pub fn load_manifests(paths: &Paths) -> Result<Manifests> {
    manifest::load_layered(paths.manifests.as_deref(), paths.builtin)
        .map_err(|e| CommandError::Invalid(e.into()))
}

/// The overlay files: built-in, with the override directory laid over them.
pub fn load_overlays(paths: &Paths) -> Result<OverlaySet> {
    OverlaySet::load(paths.overlays.as_deref(), paths.builtin)
        .map_err(|e| CommandError::Invalid(e.into()))
}

/// Profiles and manifests, loaded and validated once per command.
pub struct Workspace {
    pub paths: Paths,
    pub profiles: ProfileSet,
    pub manifests: Manifests,
    pub overlays: OverlaySet,
}

impl Workspace {
    /// Loads manifests and profiles; any problem is [`CommandError::Invalid`].
    pub fn load(paths: &Paths) -> Result<Workspace> {
        let cluster_file = paths.profiles.join(profile::CLUSTER_FILE);
        if !cluster_file.exists() {
            return Err(CommandError::Invalid(anyhow!(
                "no profiles: {} does not exist\nhint: run `imgbuild init` here to write them, or point --profiles (or IMGBUILD_PROFILES) at your cluster's profile directory",
                cluster_file.display()
            )));
        }
        let manifests = load_manifests(paths)?;
        let boards = manifest::board_infos(&manifests);
        let profiles =
            profile::load(&paths.profiles, &boards).map_err(|e| CommandError::Invalid(e.into()))?;
        let overlays = load_overlays(paths)?;
        Ok(Workspace {
            paths: paths.clone(),
            profiles,
            manifests,
            overlays,
        })
    }

    /// The node named `name`, or a usage error listing the nodes.
    pub fn node(&self, name: &str) -> Result<&Node> {
        self.profiles.node(name).ok_or_else(|| {
            CommandError::usage(format!(
                "no node {name:?} in {} (nodes: {})",
                self.profiles.dir.display(),
                self.node_names().join(", ")
            ))
        })
    }

    pub fn node_names(&self) -> Vec<&str> {
        self.profiles
            .nodes
            .iter()
            .map(|n| n.name.as_str())
            .collect()
    }

    /// The secrets directory, created (0700) when missing.
    pub fn secrets(&self) -> Result<Secrets> {
        Ok(Secrets::open(&self.paths.secrets)?)
    }

    /// An artifact's packing and provenance record, read once.
    pub fn open_artifact(&self, path: &Path) -> anyhow::Result<crate::readback::Artifact> {
        crate::readback::Artifact::open(path, &self.seed_dirs())
    }

    /// The boards' seed directories, where an image's provenance record is.
    pub fn seed_dirs(&self) -> Vec<String> {
        self.manifests
            .values()
            .map(|m| m.seed.dir.clone())
            .collect()
    }

    /// What planning reads besides a node, its secrets and the supplies.
    pub fn plan_inputs(&self, build_time: u64) -> PlanInputs<'_> {
        PlanInputs {
            profiles: &self.profiles,
            manifests: &self.manifests,
            overlays: &self.overlays,
            build_time,
            join: None,
        }
    }

    /// The one complete plan of `node`: sealed with `secrets`, unsealed
    /// without; a preview when `supplies` fetched nothing.
    pub fn plan(
        &self,
        node: &Node,
        secrets: Option<&Secrets>,
        supplies: &Supplies,
        build_time: u64,
    ) -> anyhow::Result<NodePlan> {
        let values = secrets
            .map(|s| secret_values(s, node, build_time))
            .transpose()?;
        crate::plan::plan_node(&self.plan_inputs(build_time), node, values, supplies)
    }

    /// Fetches (or finds in the cache) what the plans of `nodes` need.
    pub fn gather(&self, nodes: &[&Node], fetch: &FetchSettings) -> anyhow::Result<Supplies> {
        let mirror = fetch.k3s_mirror_for(&self.profiles);
        let request = supplies::Request {
            profiles: &self.profiles,
            manifests: &self.manifests,
            nodes,
            k3s_mirror: &mirror,
            registry_auth: fetch.registry_auth.as_deref(),
        };
        Supplies::gather(&request, &fetch.cache()?, &fetch.options()).map_err(|e| {
            if fetch.offline {
                e
            } else {
                e.context(
                    "hint: run `imgbuild fetch --all` where there is network, then build with --offline; \
                     k3s can also come from a local copy of its release (IMGBUILD_K3S_MIRROR or cluster.k3s.mirror), \
                     or install at first boot (cluster.k3s.install: online)",
                )
            }
        })
    }
}

/// Warns when a cluster-init image is built again: flashed onto the first
/// server of a running cluster it would start a new, empty cluster.
pub(crate) fn warn_cluster_init(secrets: &Secrets, node: &Node) -> anyhow::Result<()> {
    if node.k3s.cluster_init
        && let Some(first) = secrets.mark_initialized(&node.name)?
    {
        tracing::warn!(
            "{} initialises the cluster (k3s.cluster_init: true) and a cluster-init image (for {first}) was built before. \
             Flash it with `imgbuild flash`/`deploy`: they ask the running cluster first and make a server of a running \
             cluster join it instead of starting a new, empty one. Flashed by other means onto the first server of a \
             running cluster, this image starts a new cluster",
            node.name
        );
    }
    Ok(())
}

/// The secret values a node's files are rendered with.
fn secret_values(secrets: &Secrets, node: &Node, build_time: u64) -> anyhow::Result<SecretValues> {
    Ok(SecretValues::new(
        &secrets.cluster(build_time)?,
        &secrets.node(&node.name, &node.hostname)?,
    ))
}

/// The first few of a list of paths for a message, and how many more.
fn shorten(items: &[String]) -> String {
    const SHOWN: usize = 4;
    let mut s = items
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > SHOWN {
        s.push_str(&format!(" and {} more", items.len() - SHOWN));
    }
    s
}
