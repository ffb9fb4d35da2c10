//! What a build adds to a node's plan beyond the overlays and k3s: the
//! cluster's bootstrap manifests and embedded Helm charts (cluster-init
//! server only), each recorded with its digest in the provenance statement.

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
}

impl Additions {
    /// Fetches and renders what `nodes` need (nothing when none creates the cluster).
    pub fn prepare(
        ws: &Workspace,
        nodes: &[&Node],
        cache: &Cache,
        opts: &FetchOptions,
    ) -> Result<Additions> {
        let mut out = Additions::default();
        let profiles = &ws.profiles;
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

    /// The files and provenance entries for `node`.
    pub fn for_node(&self, node: &Node) -> (Vec<PlannedFile>, Vec<ResourceDescriptor>) {
        if node.k3s.cluster_init {
            (self.cluster_init.clone(), self.cluster_init_deps.clone())
        } else {
            (Vec::new(), Vec::new())
        }
    }
}
