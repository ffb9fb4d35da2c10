//! What a build writes besides the output itself, shared by images
//! (`build`) and installers (`iso`): the report of one output and its
//! provenance statement from the plan.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;

use crate::artifact::Format;
use crate::artifact::statement::{ResourceDescriptor, Statement};
use crate::io::{CopyMethod, Sha256Digest};
use crate::plan::{Dependency, FileRecord, NodePlan};

#[derive(Debug)]
pub struct BakeReport {
    pub output: PathBuf,
    /// `None` for a raw output baked without `--sums`: it was not hashed
    /// (`flash` computes the digest when it needs it).
    pub sha256: Option<String>,
    pub compression: Format,
    pub node: String,
    pub board: String,
    pub instance_id: String,
    pub copy: CopyMethod,
    /// Built without the cluster's secrets (to be sealed on delivery).
    pub unsealed: bool,
    /// Bytes of the raw image: what a flash sends.
    pub flash_bytes: u64,
    /// What shrinking did (absent with `--no-shrink`).
    pub shrink: Option<crate::bake::shrink::ShrinkReport>,
    pub files: Vec<FileRecord>,
}

/// Writes the provenance statement of `output`: the build parameters, the
/// stock input, then the plan's dependencies.
pub fn write_statement(
    output: &std::path::Path,
    digest: &Sha256Digest,
    plan: &NodePlan,
    format: Format,
    stock: Option<Dependency>,
) -> anyhow::Result<()> {
    let (params, deps) = statement_inputs(plan, format, stock);
    Statement::new(output, digest, params, deps)
        .write(output)
        .with_context(|| format!("writing the provenance of {}", output.display()))?;
    Ok(())
}

/// The build parameters and resolved dependencies of a node's artifact.
pub fn statement_inputs(
    plan: &NodePlan,
    format: Format,
    stock: Option<Dependency>,
) -> (BTreeMap<String, serde_json::Value>, Vec<ResourceDescriptor>) {
    let p = &plan.provenance;
    let params = BTreeMap::from([
        ("node".to_string(), serde_json::json!(p.node)),
        ("board".to_string(), serde_json::json!(p.board)),
        ("format".to_string(), serde_json::json!(format.extension())),
        ("unsealed".to_string(), serde_json::json!(p.unsealed)),
        ("buildTime".to_string(), serde_json::json!(p.build_time)),
        ("instanceId".to_string(), serde_json::json!(p.instance_id)),
    ]);
    let deps = stock
        .iter()
        .chain(&plan.dependencies)
        .map(ResourceDescriptor::from)
        .collect();
    (params, deps)
}
