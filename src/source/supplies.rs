//! Everything the plans of a build's nodes need from outside the profiles,
//! gathered once per command: the k3s air-gap assets per architecture, the
//! air-gapped container images per architecture, the bootstrap charts, and
//! the bootstrap set's own files. `plan` reads only what is gathered here;
//! nothing after this stage downloads.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::chart::FetchedChart;
use super::k3s::K3sAssets;
use super::oci::{PulledImage, RegistryAuth};
use super::{Cache, FetchOptions};
use crate::config::bootstrap::LocalFiles;
use crate::config::images::ImageRef;
use crate::config::manifest::{Arch, Manifests};
use crate::config::profile::{Install, Node, ProfileSet};

/// What plans are made from besides profiles, manifests and overlays.
#[derive(Debug, Default)]
pub struct Supplies {
    /// The bootstrap manifests and values files (read even for previews:
    /// their digests are known without a download).
    pub bootstrap: LocalFiles,
    /// `None` for a preview (`render`, `check`, sealing): nothing was
    /// fetched, and the files that need a download are planned as pending.
    pub fetched: Option<Fetched>,
}

/// What was fetched (or found in the cache) for a set of nodes.
#[derive(Debug, Default)]
pub struct Fetched {
    pub k3s: BTreeMap<Arch, K3sAssets>,
    /// Image archives by the reference as written and the architecture.
    pub images: BTreeMap<(String, Arch), PulledImage>,
    /// Chart archives by the chart entry's name, with their bytes.
    pub charts: BTreeMap<String, (FetchedChart, Vec<u8>)>,
    /// What is in the cache, by what it is (`k3s VERSION ARCH`,
    /// `image REF (ARCH)`, `chart NAME VERSION`), for `imgbuild fetch`.
    pub listing: Vec<(String, PathBuf)>,
}

/// Which nodes to gather for, and from where.
pub struct Request<'a> {
    pub profiles: &'a ProfileSet,
    pub manifests: &'a Manifests,
    pub nodes: &'a [&'a Node],
    /// Base URL of k3s releases (the resolved mirror).
    pub k3s_mirror: &'a str,
    /// Registry credentials file, if any.
    pub registry_auth: Option<&'a Path>,
}

impl Supplies {
    /// The bootstrap set's files only: for plans that are previews.
    pub fn preview(profiles: &ProfileSet) -> Result<Supplies> {
        Ok(Supplies {
            bootstrap: local_files(profiles)?,
            fetched: None,
        })
    }

    /// Fetches what `req.nodes` need into `cache` (or finds it there).
    pub fn gather(req: &Request, cache: &Cache, opts: &FetchOptions) -> Result<Supplies> {
        let mut fetched = Fetched::default();
        let archs = archs_of(req)?;
        let k3s = &req.profiles.cluster.k3s;
        if k3s.install == Install::Airgap {
            for &arch in archs.values() {
                if fetched.k3s.contains_key(&arch) {
                    continue;
                }
                let a = super::k3s::ensure_assets(&k3s.version, arch, req.k3s_mirror, cache, opts)?;
                fetched.listing.push((
                    format!("k3s {} {}", k3s.version, arch.as_str()),
                    a.binary.clone(),
                ));
                fetched.k3s.insert(arch, a);
            }
        }
        fetched.pull_images(req, &archs, cache, opts)?;
        fetched.fetch_charts(req, cache, opts)?;
        Ok(Supplies {
            bootstrap: local_files(req.profiles)?,
            fetched: Some(fetched),
        })
    }
}

fn local_files(profiles: &ProfileSet) -> Result<LocalFiles> {
    match &profiles.cluster.bootstrap {
        Some(b) => b.read_local(&profiles.dir),
        None => Ok(LocalFiles::default()),
    }
}

/// Each node's architecture, from its board's manifest.
fn archs_of<'a>(req: &Request<'a>) -> Result<BTreeMap<&'a str, Arch>> {
    req.nodes
        .iter()
        .map(|n| {
            req.manifests
                .get(&n.board)
                .map(|m| (n.name.as_str(), m.arch))
                .ok_or_else(|| anyhow::anyhow!("no firmware manifest for board {:?}", n.board))
        })
        .collect()
}

impl Fetched {
    fn pull_images(
        &mut self,
        req: &Request,
        archs: &BTreeMap<&str, Arch>,
        cache: &Cache,
        opts: &FetchOptions,
    ) -> Result<()> {
        let mut creds: Option<RegistryAuth> = None;
        for node in req.nodes {
            let arch = archs[node.name.as_str()];
            for r in req.profiles.images_for(node) {
                let key = (r.clone(), arch);
                if self.images.contains_key(&key) {
                    continue;
                }
                if creds.is_none()
                    && let Some(p) = req.registry_auth
                {
                    creds = Some(
                        RegistryAuth::load(p)
                            .context("reading the registry credentials (IMGBUILD_REGISTRY_AUTH)")?,
                    );
                }
                let image = ImageRef::parse(&r).map_err(|e| anyhow::anyhow!("{e}"))?;
                tracing::info!("pulling {} for {}", image.original, arch.as_str());
                let pulled = super::oci::ensure_image(&image, arch, cache, opts, creds.as_ref())
                    .with_context(|| {
                        format!("air-gapped image {} for node {}", image.original, node.name)
                    })?;
                self.listing.push((
                    format!("image {} ({})", image.original, arch.as_str()),
                    pulled.archive.clone(),
                ));
                self.images.insert(key, pulled);
            }
        }
        Ok(())
    }

    /// The bootstrap charts, when one of the nodes creates the cluster.
    fn fetch_charts(&mut self, req: &Request, cache: &Cache, opts: &FetchOptions) -> Result<()> {
        let Some(b) = &req.profiles.cluster.bootstrap else {
            return Ok(());
        };
        if !req.nodes.iter().any(|n| n.k3s.cluster_init) {
            return Ok(());
        }
        for c in &b.charts {
            let f = super::chart::ensure_chart(c, cache, opts)?;
            self.listing
                .push((format!("chart {} {}", c.chart, c.version), f.path.clone()));
            let archive =
                std::fs::read(&f.path).with_context(|| format!("reading {}", f.path.display()))?;
            self.charts.insert(c.name.clone(), (f, archive));
        }
        Ok(())
    }
}
