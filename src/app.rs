//! The commands, as library functions taking resolved settings (no clap here).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};

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
    /// Cluster secrets (default: `secrets` beside the profile directory).
    pub secrets: PathBuf,
}

impl Paths {
    /// Manifests and overlays default to the folders beside the profile
    /// directory when they exist there, else to the current directory's;
    /// secrets default to `secrets` beside the profile directory.
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
        let beside = |name: &str| -> PathBuf {
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
            secrets: secrets.unwrap_or_else(|| parent.join("secrets")),
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
    // Template checks use throwaway secrets: checking creates no state.
    let secrets = crate::secrets::Secrets::ephemeral();
    let no_assets = BTreeMap::new();
    let inputs = BakeInputs {
        profiles: &profiles,
        manifests: &manifests,
        overlays: &paths.overlays,
        build_time: bake::build_time()?,
        secrets: &secrets,
        k3s_assets: &no_assets,
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

#[derive(Debug, Clone)]
pub struct BuildSettings {
    pub targets: Vec<PathBuf>,
    pub all: bool,
    pub out_dir: PathBuf,
    /// Output format for `--all`.
    pub all_compression: crate::output::Compression,
    /// `(board, file)`; a `None` board applies to every target.
    pub bases: Vec<(Option<String>, PathBuf)>,
    pub fetch: FetchSettings,
}

/// Where the cache is and how to reach the network.
#[derive(Debug, Clone)]
pub struct FetchSettings {
    pub cache_dir: Option<PathBuf>,
    pub offline: bool,
    pub retry: crate::fetch::RetryPolicy,
}

impl FetchSettings {
    fn options(&self) -> crate::fetch::FetchOptions {
        crate::fetch::FetchOptions {
            offline: self.offline,
            retry: self.retry,
        }
    }
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

/// A `--base` given for the board, if any.
fn given_base(bases: &[(Option<String>, PathBuf)], board: &str) -> Result<Option<PathBuf>> {
    let found = bases
        .iter()
        .find(|(b, _)| b.as_deref() == Some(board))
        .or_else(|| bases.iter().find(|(b, _)| b.is_none()));
    match found {
        Some((_, f)) if !f.is_file() => bail!("--base {}: no such file", f.display()),
        Some((_, f)) => Ok(Some(f.clone())),
        None => Ok(None),
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
                path: settings.out_dir.join(format!(
                    "{}.{}.{}",
                    n.name,
                    n.board,
                    settings.all_compression.extension()
                )),
                compression: settings.all_compression,
            });
        }
    }
    // Check every target and given base before building or downloading anything.
    let mut jobs = Vec::new();
    for t in &targets {
        let node = bake::resolve_target(&profiles, t).map_err(AppError::Usage)?;
        jobs.push((
            t,
            node.board.clone(),
            given_base(&settings.bases, &node.board)?,
        ));
    }
    let cache = crate::fetch::Cache::locate(settings.fetch.cache_dir.clone())?;
    let mut fetched: BTreeMap<String, PathBuf> = BTreeMap::new();
    let mut resolved = Vec::new();
    for (t, board, given) in jobs {
        let base = match given {
            Some(b) => b,
            None => match fetched.get(&board) {
                Some(b) => b.clone(),
                None => {
                    let b = crate::fetch::ensure_base(
                        &manifests[&board],
                        &cache,
                        &settings.fetch.options(),
                    )?;
                    fetched.insert(board.clone(), b.clone());
                    b
                }
            },
        };
        resolved.push((t, base));
    }
    let jobs = resolved;
    let secrets = crate::secrets::Secrets::open(&paths.secrets)?;
    let mut k3s_assets = BTreeMap::new();
    if profiles.cluster.k3s.install == crate::profile::Install::Airgap {
        let mirror = crate::k3s::mirror(profiles.cluster.k3s.mirror.as_deref());
        for (t, _) in &jobs {
            let arch = manifests[&t.board].arch.clone();
            if let std::collections::btree_map::Entry::Vacant(slot) = k3s_assets.entry(arch) {
                let a = crate::k3s::ensure_assets(
                    &profiles.cluster.k3s.version,
                    slot.key(),
                    &mirror,
                    &cache,
                    &settings.fetch.options(),
                )?;
                slot.insert(a);
            }
        }
    }
    let inputs = BakeInputs {
        profiles: &profiles,
        manifests: &manifests,
        overlays: &paths.overlays,
        build_time: bake::build_time()?,
        secrets: &secrets,
        k3s_assets: &k3s_assets,
    };
    let mut reports = Vec::new();
    for (t, base) in jobs {
        let node = bake::resolve_target(&profiles, t).map_err(AppError::Usage)?;
        if node.k3s.cluster_init
            && let Some(first) = secrets.mark_initialized(&node.name)?
        {
            tracing::warn!(
                "{} initialises the cluster (k3s.cluster_init: true) and a cluster-init image (for {first}) was built before: \
                 flashing it onto the first server of a running cluster starts a new, empty cluster. To re-flash that node, \
                 set k3s.cluster_init: false on it so it joins the other servers",
                node.name
            );
        }
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
    let secrets = crate::secrets::Secrets::open(&paths.secrets)?;
    let no_assets = BTreeMap::new();
    let inputs = BakeInputs {
        profiles: &profiles,
        manifests: &manifests,
        overlays: &paths.overlays,
        build_time: bake::build_time()?,
        secrets: &secrets,
        k3s_assets: &no_assets,
    };
    Ok(bake::render_node(&inputs, n)?.0)
}

/// Downloads and unpacks the stock images of `boards` (every board with `all`).
pub fn fetch(
    paths: &Paths,
    boards: &[String],
    all: bool,
    settings: &FetchSettings,
) -> Result<Vec<(String, PathBuf)>, AppError> {
    let manifests =
        manifest::load_all(&paths.manifests).map_err(|e| AppError::Invalid(e.into()))?;
    let wanted: Vec<String> = if all {
        manifests.keys().cloned().collect()
    } else {
        boards.to_vec()
    };
    if wanted.is_empty() {
        return Err(AppError::Usage(anyhow!(
            "name the boards to fetch ({}), or use --all",
            manifests.keys().cloned().collect::<Vec<_>>().join(", ")
        )));
    }
    for b in &wanted {
        if !manifests.contains_key(b) {
            return Err(AppError::Usage(anyhow!(
                "no firmware manifest for board {b:?} in {} (boards: {})",
                paths.manifests.display(),
                manifests.keys().cloned().collect::<Vec<_>>().join(", ")
            )));
        }
    }
    let cache = crate::fetch::Cache::locate(settings.cache_dir.clone())?;
    let mut out = Vec::new();
    for b in wanted {
        let p = crate::fetch::ensure_base(&manifests[&b], &cache, &settings.options())?;
        out.push((b, p));
    }
    Ok(out)
}

/// A cache entry with the board whose manifest refers to it, when known.
#[derive(Debug, serde::Serialize)]
pub struct CacheListing {
    pub root: PathBuf,
    pub entries: Vec<(crate::fetch::cache::Entry, Option<String>)>,
}

fn board_keys(paths: &Paths, cache: &crate::fetch::Cache) -> BTreeMap<String, String> {
    let mut keys = BTreeMap::new();
    if let Ok(manifests) = manifest::load_all(&paths.manifests) {
        for m in manifests.values() {
            let key = m.source.sha256.clone().or_else(|| {
                cache
                    .remembered_digest(&m.source.url)
                    .map(|d| d.to_string())
            });
            if let Some(k) = key {
                keys.insert(k, m.board.clone());
            }
        }
    }
    keys
}

pub fn cache_list(paths: &Paths, settings: &FetchSettings) -> Result<CacheListing, AppError> {
    let cache = crate::fetch::Cache::locate(settings.cache_dir.clone())?;
    let keys = board_keys(paths, &cache);
    let entries = cache
        .entries()?
        .into_iter()
        .map(|e| {
            let owner = match e.kind {
                crate::fetch::cache::EntryKind::Asset => Some("k3s".to_string()),
                _ => keys.get(&e.key.to_string()).cloned(),
            };
            (e, owner)
        })
        .collect();
    Ok(CacheListing {
        root: cache.root,
        entries,
    })
}

/// Removes cache entries no current manifest refers to, and unfinished
/// downloads (every entry, k3s assets included, with `all`); returns what was removed.
pub fn cache_clean(
    paths: &Paths,
    settings: &FetchSettings,
    all: bool,
) -> Result<Vec<PathBuf>, AppError> {
    let listing = cache_list(paths, settings)?;
    let cache = crate::fetch::Cache::locate(settings.cache_dir.clone())?;
    let mut removed = Vec::new();
    for (e, board) in listing.entries {
        let unfinished = e.kind == crate::fetch::cache::EntryKind::Partial;
        if all || board.is_none() || unfinished {
            let _lock = cache.lock(&e.key.to_string())?;
            std::fs::remove_file(&e.path)
                .with_context(|| format!("removing {}", e.path.display()))?;
            removed.push(e.path);
        }
    }
    Ok(removed)
}

/// Unpacks `input` by content into a new sparse raw file `output`.
pub fn unpack(
    input: &Path,
    output: &Path,
) -> Result<(crate::fetch::unpack::Format, u64), AppError> {
    if output.exists() {
        return Err(AppError::Usage(anyhow!(
            "{} exists; not overwriting it",
            output.display()
        )));
    }
    let src = std::fs::File::open(input).with_context(|| format!("opening {}", input.display()))?;
    let dir = match output.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
        _ => PathBuf::from("."),
    };
    let temp = tempfile::Builder::new()
        .prefix(".imgbuild-unpack-")
        .tempfile_in(&dir)
        .with_context(|| format!("cannot write in {}", dir.display()))?;
    let r = crate::fetch::unpack::unpack(&src, temp.as_file(), "unpack")
        .map_err(|e| anyhow!("{}: {e}", input.display()))?;
    crate::fetch::cache::commit(temp, output)?;
    Ok(r)
}

/// What the secrets directory holds, never the values.
pub fn secrets_inventory(paths: &Paths) -> Result<Vec<(String, &'static str)>, AppError> {
    if !paths.secrets.exists() {
        return Ok(Vec::new());
    }
    Ok(crate::secrets::Secrets::open(&paths.secrets)?.inventory()?)
}

/// The secure join token for `server` or `agent` nodes (printed only on request).
pub fn join_token(paths: &Paths, role: &str) -> Result<String, AppError> {
    let secrets = crate::secrets::Secrets::open(&paths.secrets)?;
    let c = secrets.cluster(bake::build_time()?)?;
    Ok(if role == "server" {
        c.server_token()
    } else {
        c.agent_token()
    })
}

/// A known_hosts file for every node: hostname, FQDN and static address.
pub fn known_hosts(paths: &Paths) -> Result<String, AppError> {
    let (profiles, _) = load(paths)?;
    let secrets = crate::secrets::Secrets::open(&paths.secrets)?;
    let mut out = String::new();
    for n in &profiles.nodes {
        let s = secrets.node(&n.name, &n.hostname)?;
        let mut names = vec![n.hostname.clone()];
        names.extend(n.fqdn.clone());
        names.extend(n.network.address.map(|a| a.addr.to_string()));
        names.extend(n.k3s.node_ip.map(|a| a.to_string()));
        names.dedup();
        out.push_str(&crate::secrets::known_hosts_line(&names, &s.ssh_public));
        out.push('\n');
    }
    Ok(out)
}

/// How to reach the BMCs.
#[derive(Debug, Clone)]
pub struct BmcSettings {
    pub board: Option<String>,
    pub user: String,
    pub password_file: Option<PathBuf>,
    pub insecure: bool,
}

/// Status of each selected Turing Pi board's BMC, pinning certificates on first use.
pub fn bmc_status(
    paths: &Paths,
    settings: &BmcSettings,
) -> Result<Vec<crate::bmc::Status>, AppError> {
    let (profiles, _) = load(paths)?;
    let boards: Vec<_> = profiles
        .cluster
        .turing_pi_boards
        .iter()
        .filter(|b| settings.board.as_ref().is_none_or(|n| *n == b.name))
        .collect();
    if boards.is_empty() {
        return Err(AppError::Usage(anyhow!(
            "no Turing Pi board {}in cluster.turing_pi_boards",
            settings
                .board
                .as_ref()
                .map(|b| format!("named {b:?} "))
                .unwrap_or_default()
        )));
    }
    let mut out = Vec::new();
    for b in boards {
        let trust = if settings.insecure {
            crate::bmc::Trust::Insecure
        } else {
            // The pin lives with the other cluster secrets.
            crate::secrets::Secrets::open(&paths.secrets)?;
            crate::bmc::Trust::PinFile(paths.secrets.join("bmc").join(format!("{}.sha256", b.name)))
        };
        let password = crate::bmc::password(settings.password_file.as_deref(), &b.bmc)?;
        let creds = crate::bmc::Credentials {
            user: settings.user.clone(),
            password,
        };
        let mut bmc = crate::bmc::Bmc::connect(&b.bmc, creds, &trust)
            .with_context(|| format!("Turing Pi board {}", b.name))?;
        if bmc.newly_pinned {
            tracing::warn!(
                "{}: first connection; pinned its certificate sha256 {} (compare it with the BMC's if you can)",
                b.bmc,
                bmc.fingerprint.as_deref().unwrap_or("?")
            );
        }
        out.push(
            bmc.status()
                .with_context(|| format!("Turing Pi board {}", b.name))?,
        );
    }
    Ok(out)
}

#[derive(Debug, Clone)]
pub struct FlashSettings {
    pub bmc: BmcSettings,
    pub yes: bool,
    pub skip_crc: bool,
    pub out_dir: PathBuf,
    pub build: BuildSettings,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct FlashReport {
    pub node: String,
    pub board: String,
    pub slot: u8,
    pub image: PathBuf,
    pub sha256: String,
    /// `flashed`, `skipped` (already flashed with this image) or `failed`.
    pub result: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// sha256 of an image: from SHA256SUMS beside it when present, else computed.
fn image_sha256(image: &Path) -> Result<String> {
    let name = image
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let sums = image
        .parent()
        .unwrap_or(Path::new("."))
        .join(crate::output::SUMS_FILE);
    if let Some(d) = std::fs::read_to_string(&sums)
        .ok()
        .and_then(|t| crate::fetch::download::find_digest(&t, &name))
    {
        return Ok(d.to_string());
    }
    let f = std::fs::File::open(image).with_context(|| format!("opening {}", image.display()))?;
    Ok(crate::io::sha256_sparse(&f)?.to_string())
}

fn confirm(question: &str, yes: bool) -> Result<(), AppError> {
    use std::io::{BufRead, IsTerminal, Write};
    if yes {
        return Ok(());
    }
    if !std::io::stdin().is_terminal() {
        return Err(AppError::Usage(anyhow!(
            "{question}: refusing to flash without confirmation; run on a terminal or pass --yes"
        )));
    }
    eprint!("{question} [y/N] ");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).ok();
    if matches!(line.trim(), "y" | "Y" | "yes") {
        Ok(())
    } else {
        Err(AppError::Failed(anyhow!(
            "not confirmed; nothing was flashed"
        )))
    }
}

fn connect_board(
    paths: &Paths,
    s: &BmcSettings,
    board: &str,
    host: &str,
) -> Result<crate::bmc::Bmc, AppError> {
    let trust = if s.insecure {
        crate::bmc::Trust::Insecure
    } else {
        crate::secrets::Secrets::open(&paths.secrets)?;
        crate::bmc::Trust::PinFile(paths.secrets.join("bmc").join(format!("{board}.sha256")))
    };
    let password = crate::bmc::password(s.password_file.as_deref(), host)?;
    let creds = crate::bmc::Credentials {
        user: s.user.clone(),
        password,
    };
    let bmc = crate::bmc::Bmc::connect(host, creds, &trust)
        .with_context(|| format!("Turing Pi board {board}"))?;
    if bmc.newly_pinned {
        tracing::warn!(
            "{host}: first connection; pinned its certificate sha256 {}",
            bmc.fingerprint.as_deref().unwrap_or("?")
        );
    }
    Ok(bmc)
}

/// Flashes each named node (Turing Pi modules only) in slot order, one at a
/// time; builds a node's image when it is missing. With `state`, nodes already
/// flashed with the same image are skipped and progress is recorded there.
pub fn flash_nodes(
    paths: &Paths,
    nodes: &[String],
    images: &BTreeMap<String, PathBuf>,
    settings: &FlashSettings,
    state: Option<&Path>,
) -> Result<Vec<FlashReport>, AppError> {
    let (profiles, _) = load(paths)?;
    let mut chosen = Vec::new();
    for name in nodes {
        let n = profiles.node(name).ok_or_else(|| {
            AppError::Usage(anyhow!("no node {name:?} in {}", profiles.dir.display()))
        })?;
        let slot = n.turing_pi.clone().ok_or_else(|| {
            AppError::Usage(anyhow!(
                "node {name} is a {} board, not in a Turing Pi slot",
                n.board
            ))
        })?;
        chosen.push((n.clone(), slot));
    }
    chosen.sort_by(|a, b| (&a.1.board, a.1.slot).cmp(&(&b.1.board, b.1.slot)));
    let mut done: BTreeMap<String, String> = state
        .and_then(|p| std::fs::read_to_string(p).ok())
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    let mut reports = Vec::new();
    for (node, slot) in chosen {
        let image = match images.get(&node.name) {
            Some(p) => p.clone(),
            None => {
                let p = settings
                    .out_dir
                    .join(format!("{}.{}.img", node.name, node.board));
                if !p.is_file() {
                    tracing::info!("{} does not exist; building it", p.display());
                    let mut b = settings.build.clone();
                    b.targets = vec![p.clone()];
                    b.all = false;
                    build(paths, &b)?;
                }
                p
            }
        };
        let sha = image_sha256(&image)?;
        let mut report = FlashReport {
            node: node.name.clone(),
            board: slot.board.clone(),
            slot: slot.slot,
            image: image.clone(),
            sha256: sha.clone(),
            result: "flashed".into(),
            error: None,
        };
        if done.get(&node.name) == Some(&sha) {
            report.result = "skipped".into();
            tracing::info!("{}: already flashed with this image; skipping", node.name);
            reports.push(report);
            continue;
        }
        confirm(
            &format!(
                "Flash {} ({}) onto slot {} of Turing Pi {} ({}), erasing the module?",
                node.name,
                image.display(),
                slot.slot,
                slot.board,
                slot.bmc
            ),
            settings.yes,
        )?;
        let result = (|| -> Result<(), AppError> {
            let mut bmc = connect_board(paths, &settings.bmc, &slot.board, &slot.bmc)?;
            let opts = crate::bmc::FlashOptions {
                skip_crc: settings.skip_crc,
                sha256: Some(sha.clone()),
            };
            let mut progress: Option<(String, crate::progress::Progress)> = None;
            bmc.flash(slot.slot, &image, &opts, |phase, done, total| {
                if progress.as_ref().is_none_or(|(p, _)| p != phase) {
                    if let Some((_, p)) = progress.take() {
                        p.finish();
                    }
                    progress = Some((
                        phase.to_string(),
                        crate::progress::Progress::new(
                            &format!("{} {phase}", node.name),
                            Some(total),
                        ),
                    ));
                }
                if let Some((_, p)) = progress.as_mut() {
                    p.set_position(done);
                }
            })?;
            if let Some((_, p)) = progress.take() {
                p.finish();
            }
            tracing::info!(
                "{}: flashed slot {} and powered it on",
                node.name,
                slot.slot
            );
            Ok(())
        })();
        match result {
            Ok(()) => {
                done.insert(node.name.clone(), sha);
                if let Some(p) = state {
                    std::fs::write(
                        p,
                        serde_json::to_string_pretty(&done).map_err(anyhow::Error::from)?,
                    )
                    .with_context(|| format!("writing {}", p.display()))?;
                }
                reports.push(report);
            }
            Err(e) => {
                report.result = "failed".into();
                report.error = Some(format!("{:#}", e.inner()));
                reports.push(report);
                let summary = reports
                    .iter()
                    .map(|r| format!("{} {}", r.node, r.result))
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(AppError::Failed(anyhow!(
                    "{:#}\n{summary}; run the same command again to continue from {}",
                    e.inner(),
                    node.name
                )));
            }
        }
    }
    Ok(reports)
}

/// Every Turing Pi node of the profiles (or `only`), for deploy.
pub fn deploy_nodes(paths: &Paths, only: &[String]) -> Result<Vec<String>, AppError> {
    let (profiles, _) = load(paths)?;
    Ok(profiles
        .nodes
        .iter()
        .filter(|n| n.turing_pi.is_some())
        .filter(|n| only.is_empty() || only.contains(&n.name))
        .map(|n| n.name.clone())
        .collect())
}
