//! What a build adds to a node's plan beyond the overlays and k3s: the
//! cluster's bootstrap manifests and embedded Helm charts (cluster-init
//! server only) and the air-gapped container images (each node, for its
//! architecture), each recorded with its digest in the provenance statement.

use std::collections::BTreeMap;

use anyhow::{Context, Result};

use super::Workspace;
use crate::artifact::statement::ResourceDescriptor;
use crate::config::bootstrap::file_path;
use crate::config::profile::Node;
use crate::plan::PlannedFile;
use crate::plan::bootstrap::ChartInput;
use crate::source::{Cache, FetchOptions};

#[derive(Debug, Default)]
pub struct Additions {
    /// Files for the cluster-init server.
    pub cluster_init: Vec<PlannedFile>,
    /// Their sources, for the provenance statement.
    pub cluster_init_deps: Vec<ResourceDescriptor>,
    /// Image archives (and their provenance) by node name.
    pub images: BTreeMap<String, (Vec<PlannedFile>, Vec<ResourceDescriptor>)>,
    /// What is in the cache for them, by what it is (`chart NAME VERSION`,
    /// `image REF (ARCH)`), for `imgbuild fetch` to report.
    pub fetched: Vec<(String, std::path::PathBuf)>,
}

/// The images `node` gets: `cluster.images`, its own `images`, and on
/// servers of an air-gapped cluster with a VIP, kube-vip's.
pub fn images_for(profiles: &crate::config::profile::ProfileSet, node: &Node) -> Vec<String> {
    use crate::config::profile::{Install, Role};
    let cluster = &profiles.cluster;
    let mut out: Vec<String> = Vec::new();
    let vip = cluster
        .vip
        .as_ref()
        .filter(|_| node.k3s.role == Role::Server && cluster.k3s.install == Install::Airgap)
        .and_then(|_| crate::plan::kube_vip::values(profiles))
        .map(|v| v.image);
    for r in cluster
        .images
        .iter()
        .chain(&node.images)
        .cloned()
        .chain(vip)
    {
        if !out.contains(&r) {
            out.push(r);
        }
    }
    out
}

/// One file a build adds to a node, as planned from the profiles alone
/// (nothing downloaded): for `render` and `check`.
#[derive(Debug, Clone)]
pub struct Added {
    /// Absolute path in the root file system.
    pub path: String,
    /// `bootstrap manifest`, `helm chart` or `container image`.
    pub kind: &'static str,
    /// Which: the manifest's file name, `NAME (CHART VERSION)`, `REF (ARCH)`.
    pub what: String,
    /// Where it is fetched from (charts and images).
    pub uri: Option<String>,
    /// The manifest's, chart archive's or image index's sha256.
    pub sha256: String,
}

/// What a build adds to `node` beyond its rendered files: the bootstrap
/// manifests and HelmChart files (cluster-init server) and the image
/// archives, with their digests from the profiles (reads only local files).
pub fn planned(ws: &Workspace, node: &Node) -> Result<Vec<Added>> {
    use crate::config::images::ImageRef;
    use crate::plan::bootstrap::AUTO_DEPLOY;
    let profiles = &ws.profiles;
    let mut out = Vec::new();
    if node.k3s.cluster_init
        && let Some(b) = &profiles.cluster.bootstrap
    {
        for name in &b.manifests {
            let path = file_path(&profiles.dir, name);
            let text = crate::config::read::read_text(&path, &profiles.dir)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            out.push(Added {
                path: format!("{AUTO_DEPLOY}/imgbuild-bootstrap-{name}"),
                kind: "bootstrap manifest",
                what: name.clone(),
                uri: None,
                sha256: hex::encode(<sha2::Sha256 as sha2::Digest>::digest(text.as_bytes())),
            });
        }
        for c in &b.charts {
            out.push(Added {
                path: format!("{AUTO_DEPLOY}/imgbuild-chart-{}.yaml", c.name),
                kind: "helm chart",
                what: format!("{} ({} {})", c.name, c.chart, c.version),
                uri: Some(c.archive_url()),
                sha256: c.sha256.clone(),
            });
        }
    }
    let arch = ws
        .manifests
        .get(&node.board)
        .map(|m| m.arch)
        .ok_or_else(|| anyhow::anyhow!("no firmware manifest for board {:?}", node.board))?;
    for r in images_for(profiles, node) {
        let image = ImageRef::parse(&r).map_err(|e| anyhow::anyhow!("{e}"))?;
        out.push(Added {
            path: format!(
                "/var/lib/rancher/k3s/agent/images/{}",
                crate::source::oci::archive_file_name(&image)
            ),
            kind: "container image",
            what: format!("{} ({})", image.original, arch.as_str()),
            uri: Some(format!("oci://{}/{}", image.registry, image.repository)),
            sha256: image.digest.to_string(),
        });
    }
    Ok(out)
}

impl Additions {
    /// Fetches and renders what `nodes` need (nothing when none creates the cluster).
    pub fn prepare(
        ws: &Workspace,
        nodes: &[&Node],
        cache: &Cache,
        opts: &FetchOptions,
        auth: Option<&std::path::Path>,
    ) -> Result<Additions> {
        let mut out = Additions::default();
        let profiles = &ws.profiles;
        out.pull_images(ws, nodes, cache, opts, auth)?;
        let Some(b) = &profiles.cluster.bootstrap else {
            return Ok(out);
        };
        if !nodes.iter().any(|n| n.k3s.cluster_init) {
            return Ok(out);
        }
        let read = |name: &str| -> Result<String> {
            let path = file_path(&profiles.dir, name);
            crate::config::read::read_text(&path, &profiles.dir)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
        };
        let mut manifests = Vec::new();
        for name in &b.manifests {
            let text = read(name)?;
            out.cluster_init_deps.push(ResourceDescriptor::sha256(
                Some(&format!("bootstrap manifest {name}")),
                None,
                &hex::encode(<sha2::Sha256 as sha2::Digest>::digest(text.as_bytes())),
            ));
            manifests.push((name.clone(), text));
        }
        let mut fetched = Vec::new();
        for c in &b.charts {
            let f = crate::source::chart::ensure_chart(c, cache, opts)?;
            out.fetched
                .push((format!("chart {} {}", c.chart, c.version), f.path.clone()));
            let archive =
                std::fs::read(&f.path).with_context(|| format!("reading {}", f.path.display()))?;
            let values = c.values.as_deref().map(read).transpose()?;
            out.cluster_init_deps.push(ResourceDescriptor::sha256(
                Some(&format!("helm chart {} {}", c.chart, c.version)),
                Some(&f.url),
                &f.sha256.to_string(),
            ));
            fetched.push((c, archive, values));
        }
        let charts: Vec<ChartInput> = fetched
            .iter()
            .map(|(c, archive, values)| ChartInput {
                chart: c,
                archive,
                values: values.as_deref(),
            })
            .collect();
        out.cluster_init = crate::plan::bootstrap::files(&manifests, &charts)?;
        Ok(out)
    }

    fn pull_images(
        &mut self,
        ws: &Workspace,
        nodes: &[&Node],
        cache: &Cache,
        opts: &FetchOptions,
        auth: Option<&std::path::Path>,
    ) -> Result<()> {
        use crate::config::images::ImageRef;
        use crate::source::oci::{RegistryAuth, ensure_image};
        let mut creds: Option<RegistryAuth> = None;
        if let Some(p) = auth {
            creds = Some(
                RegistryAuth::load(p)
                    .context("reading the registry credentials (IMGBUILD_REGISTRY_AUTH)")?,
            );
        }
        let mut pulled = BTreeMap::new();
        for node in nodes {
            let arch = ws
                .manifests
                .get(&node.board)
                .map(|m| m.arch)
                .ok_or_else(|| {
                    anyhow::anyhow!("no firmware manifest for board {:?}", node.board)
                })?;
            let (files, deps) = self.images.entry(node.name.clone()).or_default();
            for r in images_for(&ws.profiles, node) {
                let image = ImageRef::parse(&r).map_err(|e| anyhow::anyhow!("{e}"))?;
                let key = (image.original.clone(), arch);
                let p = match pulled.get(&key) {
                    Some(p) => p,
                    None => {
                        tracing::info!("pulling {} for {}", image.original, arch.as_str());
                        let p = ensure_image(&image, arch, cache, opts, creds.as_ref())
                            .with_context(|| {
                                format!(
                                    "air-gapped image {} for node {}",
                                    image.original, node.name
                                )
                            })?;
                        self.fetched.push((
                            format!("image {} ({})", image.original, arch.as_str()),
                            p.archive.clone(),
                        ));
                        pulled.entry(key).or_insert(p)
                    }
                };
                files.push(PlannedFile {
                    partition: "root".into(),
                    path: format!("/var/lib/rancher/k3s/agent/images/{}", p.file_name()),
                    owner: crate::plan::Owner {
                        mode: 0o644,
                        uid: 0,
                        gid: 0,
                    },
                    kind: crate::plan::FileKind::Regular(crate::plan::Content::HostFile(
                        p.archive.clone(),
                    )),
                    secret: false,
                });
                deps.push(ResourceDescriptor::sha256(
                    Some(&format!(
                        "container image {} ({})",
                        image.original,
                        arch.as_str()
                    )),
                    Some(&format!("oci://{}/{}", image.registry, image.repository)),
                    &image.digest.to_string(),
                ));
            }
        }
        Ok(())
    }

    /// The files and provenance entries for `node`.
    pub fn for_node(&self, node: &Node) -> (Vec<PlannedFile>, Vec<ResourceDescriptor>) {
        let (mut files, mut deps) = if node.k3s.cluster_init {
            (self.cluster_init.clone(), self.cluster_init_deps.clone())
        } else {
            (Vec::new(), Vec::new())
        };
        if let Some((f, d)) = self.images.get(&node.name) {
            files.extend(f.iter().cloned());
            deps.extend(d.iter().cloned());
        }
        (files, deps)
    }
}
