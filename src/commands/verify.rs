//! `imgbuild verify ARTIFACT`: checks an artifact against the digests recorded
//! beside it (`SHA256SUMS`, the provenance statement) and tells what it was
//! built from.

use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow};

use super::{CommandError, Result};
use crate::artifact::statement::ResourceDescriptor;
use crate::artifact::{statement, sums};

#[derive(Debug)]
pub struct VerifyReport {
    pub artifact: PathBuf,
    pub sha256: String,
    /// Whether `SHA256SUMS` beside it has a (matching) line.
    pub sums_checked: bool,
    /// Whether a (matching) provenance statement is beside it.
    pub statement_checked: bool,
    pub parameters: std::collections::BTreeMap<String, serde_json::Value>,
    pub built_from: Vec<ResourceDescriptor>,
    pub builder: std::collections::BTreeMap<String, String>,
}

pub fn verify(artifact: &Path) -> Result<VerifyReport> {
    let f =
        std::fs::File::open(artifact).with_context(|| format!("opening {}", artifact.display()))?;
    let actual =
        crate::io::sha256_sparse(&f).with_context(|| format!("hashing {}", artifact.display()))?;
    let recorded = sums::recorded(artifact);
    let st = statement::read(artifact)?;
    if recorded.is_none() && st.is_none() {
        return Err(CommandError::Failed(anyhow!(
            "{}: neither SHA256SUMS nor {} beside it records a digest; nothing to verify against \
             (a raw image is hashed at bake time only with --sums or --unsealed: rebuild it with one of them)",
            artifact.display(),
            statement::path_for(artifact).display()
        )));
    }
    if let Some(want) = recorded
        && want != actual
    {
        return Err(CommandError::Failed(anyhow!(
            "{}: sha256 {actual} differs from {want} in SHA256SUMS: the file is damaged or was modified",
            artifact.display()
        )));
    }
    let mut report = VerifyReport {
        artifact: artifact.to_owned(),
        sha256: actual.to_string(),
        sums_checked: recorded.is_some(),
        statement_checked: false,
        parameters: Default::default(),
        built_from: Vec::new(),
        builder: Default::default(),
    };
    if let Some(st) = st {
        let want = st.subject_digest().ok_or_else(|| {
            anyhow!(
                "{}: the statement names no sha256 subject",
                statement::path_for(artifact).display()
            )
        })?;
        if want != actual {
            return Err(CommandError::Failed(anyhow!(
                "{}: sha256 {actual} differs from {want} in its provenance statement: the file is damaged or was modified",
                artifact.display()
            )));
        }
        report.statement_checked = true;
        report.parameters = st.predicate.build_definition.external_parameters;
        report.built_from = st.predicate.build_definition.resolved_dependencies;
        report.builder = st.predicate.run_details.builder.version;
    }
    Ok(report)
}
