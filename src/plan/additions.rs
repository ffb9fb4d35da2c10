//! The files a node gets beyond its overlays, decided here and nowhere
//! else: the k3s air-gap payload, the air-gapped container images (each
//! node, for its architecture) and the bootstrap manifests and embedded Helm
//! charts (cluster-init server only). Each carries its [`Origin`], which
//! `render`/`check` list and the provenance statement records. In a preview
//! (nothing fetched) the files that need a download are [`Unfetched`].

use super::bootstrap::{AUTO_DEPLOY, ChartInput};
use super::{Content, FileKind, Owner, PlannedFile};
use crate::config::images::ImageRef;
use crate::config::manifest::Arch;
use crate::config::profile::{Install, Node, ProfileSet};
use crate::source::supplies::Supplies;

/// Where k3s imports air-gap image archives from at start.
pub const AGENT_IMAGES: &str = "/var/lib/rancher/k3s/agent/images";

/// What a file beyond the overlays is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OriginKind {
    K3s,
    BootstrapManifest,
    HelmChart,
    ContainerImage,
}

impl OriginKind {
    pub fn label(self) -> &'static str {
        match self {
            OriginKind::K3s => "k3s",
            OriginKind::BootstrapManifest => "bootstrap manifest",
            OriginKind::HelmChart => "helm chart",
            OriginKind::ContainerImage => "container image",
        }
    }
}

/// Where a file beyond the overlays comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub kind: OriginKind,
    /// Which: the manifest's file name, `NAME (CHART VERSION)`, `REF (ARCH)`,
    /// the k3s asset's name.
    pub what: String,
    /// Where it is fetched from (charts, images, k3s).
    pub uri: Option<String>,
    /// The manifest's, chart archive's, image index's or asset's sha256.
    pub sha256: String,
    /// Its name in the provenance statement's resolved dependencies.
    pub dependency: String,
}

/// A file a build adds once its source is fetched (previews only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unfetched {
    pub path: String,
    pub owner: Owner,
    pub origin: Origin,
}

/// One entry of the provenance statement's resolved dependencies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dependency {
    pub name: String,
    pub uri: Option<String>,
    /// Empty when the input is not pinned.
    pub sha256: String,
}

impl From<&Origin> for Dependency {
    fn from(o: &Origin) -> Self {
        Dependency {
            name: o.dependency.clone(),
            uri: o.uri.clone(),
            sha256: o.sha256.clone(),
        }
    }
}

const ROOT_OWNED: Owner = Owner {
    mode: 0o644,
    uid: 0,
    gid: 0,
};

/// The files of one node beyond its overlays: placed ones with content, and
/// (in a preview) the ones still to fetch.
#[derive(Debug, Default)]
pub(super) struct Extra {
    pub files: Vec<PlannedFile>,
    pub unfetched: Vec<Unfetched>,
}

impl Extra {
    fn add(&mut self, path: String, owner: Owner, origin: Origin, content: Option<Content>) {
        match content {
            Some(c) => self.files.push(PlannedFile {
                partition: "root".into(),
                path,
                owner,
                kind: FileKind::Regular(c),
                secret: false,
                origin: Some(origin),
            }),
            None => self.unfetched.push(Unfetched {
                path,
                owner,
                origin,
            }),
        }
    }
}

/// Everything `node` gets beyond its overlays, in the order a bake writes it.
pub(super) fn extra_files(
    profiles: &ProfileSet,
    node: &Node,
    arch: Arch,
    supplies: &Supplies,
) -> anyhow::Result<Extra> {
    let mut out = Extra::default();
    k3s_payload(profiles, arch, supplies, &mut out)?;
    if node.k3s.cluster_init {
        bootstrap(profiles, supplies, &mut out)?;
    }
    images(profiles, node, arch, supplies, &mut out)?;
    Ok(out)
}

/// The k3s binary and image tarball where install.sh would put them, for an
/// air-gapped first start; nothing in a preview (their digests come from
/// the release's checksum file).
fn k3s_payload(
    profiles: &ProfileSet,
    arch: Arch,
    supplies: &Supplies,
    out: &mut Extra,
) -> anyhow::Result<()> {
    if profiles.cluster.k3s.install != Install::Airgap {
        return Ok(());
    }
    let Some(fetched) = &supplies.fetched else {
        return Ok(());
    };
    let k = fetched
        .k3s
        .get(&arch)
        .ok_or_else(|| anyhow::anyhow!("no k3s air-gap assets were fetched for {arch}"))?;
    let version = &profiles.cluster.k3s.version;
    out.add(
        "/usr/local/bin/k3s".into(),
        Owner {
            mode: 0o755,
            ..ROOT_OWNED
        },
        Origin {
            kind: OriginKind::K3s,
            what: format!("k3s {version} {arch}"),
            uri: Some(k.binary_url.clone()),
            sha256: k.binary_sha256.clone(),
            dependency: "k3s binary".into(),
        },
        Some(Content::HostFile(k.binary.clone())),
    );
    out.add(
        format!("{AGENT_IMAGES}/{}", k.images_name),
        ROOT_OWNED,
        Origin {
            kind: OriginKind::K3s,
            what: format!("k3s {version} images {arch}"),
            uri: Some(k.images_url.clone()),
            sha256: k.images_sha256.clone(),
            dependency: "k3s air-gap images".into(),
        },
        Some(Content::HostFile(k.images.clone())),
    );
    Ok(())
}

/// `cluster.bootstrap`: its manifests as they are, its charts as HelmChart
/// resources with the archive embedded (0600: values may hold credentials).
fn bootstrap(profiles: &ProfileSet, supplies: &Supplies, out: &mut Extra) -> anyhow::Result<()> {
    let Some(b) = &profiles.cluster.bootstrap else {
        return Ok(());
    };
    let private = Owner {
        mode: 0o600,
        ..ROOT_OWNED
    };
    for (name, text) in &supplies.bootstrap.manifests {
        let sha256 = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(text.as_bytes()));
        out.add(
            format!("{AUTO_DEPLOY}/imgbuild-bootstrap-{name}"),
            private,
            Origin {
                kind: OriginKind::BootstrapManifest,
                what: name.clone(),
                uri: None,
                sha256,
                dependency: format!("bootstrap manifest {name}"),
            },
            Some(Content::Bytes(text.clone().into_bytes())),
        );
    }
    for c in &b.charts {
        let fetched = supplies.fetched.as_ref().map(|f| {
            f.charts.get(&c.name).ok_or_else(|| {
                anyhow::anyhow!(
                    "chart {} ({} {}) was not fetched",
                    c.name,
                    c.chart,
                    c.version
                )
            })
        });
        let fetched = fetched.transpose()?;
        let (uri, sha256) = match fetched {
            Some((f, _)) => (f.url.clone(), f.sha256.to_string()),
            None => (c.archive_url(), c.sha256.clone()),
        };
        let content = match fetched {
            Some((_, archive)) => {
                let values = c
                    .values
                    .as_ref()
                    .map(|v| {
                        supplies.bootstrap.values.get(v).ok_or_else(|| {
                            anyhow::anyhow!("chart {}: values file {v} was not read", c.name)
                        })
                    })
                    .transpose()?;
                let input = ChartInput {
                    chart: c,
                    archive,
                    values: values.map(String::as_str),
                };
                Some(Content::Bytes(
                    super::bootstrap::helm_chart(&input)?.into_bytes(),
                ))
            }
            None => None,
        };
        out.add(
            format!("{AUTO_DEPLOY}/imgbuild-chart-{}.yaml", c.name),
            private,
            Origin {
                kind: OriginKind::HelmChart,
                what: format!("{} ({} {})", c.name, c.chart, c.version),
                uri: Some(uri),
                sha256,
                dependency: format!("helm chart {} {}", c.chart, c.version),
            },
            content,
        );
    }
    Ok(())
}

/// The node's air-gapped images as OCI archives k3s imports at start.
fn images(
    profiles: &ProfileSet,
    node: &Node,
    arch: Arch,
    supplies: &Supplies,
    out: &mut Extra,
) -> anyhow::Result<()> {
    for r in profiles.images_for(node) {
        let image = ImageRef::parse(&r).map_err(|e| anyhow::anyhow!("{e}"))?;
        let content = match &supplies.fetched {
            Some(f) => {
                let pulled = f.images.get(&(r.clone(), arch)).ok_or_else(|| {
                    anyhow::anyhow!(
                        "the image {r} ({arch}) for node {} was not pulled",
                        node.name
                    )
                })?;
                Some(Content::HostFile(pulled.archive.clone()))
            }
            None => None,
        };
        let what = format!("{} ({})", image.original, arch.as_str());
        out.add(
            format!(
                "{AGENT_IMAGES}/{}",
                crate::source::oci::archive_file_name(&image)
            ),
            ROOT_OWNED,
            Origin {
                kind: OriginKind::ContainerImage,
                dependency: format!("container image {what}"),
                what,
                uri: Some(format!("oci://{}/{}", image.registry, image.repository)),
                sha256: image.digest.to_string(),
            },
            content,
        );
    }
    Ok(())
}
