//! Provenance beside each artifact: an in-toto Statement (v1) with a SLSA
//! Provenance (v1) predicate, `<artifact>.intoto.json`. It names the artifact
//! by digest and everything it was built from (stock image, k3s release
//! assets, overlays, profiles, imgbuild itself). Signing it is left to the
//! user's CI (e.g. `cosign attest-blob`). Its bytes depend only on the inputs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::io::Sha256Digest;

pub const SUFFIX: &str = ".intoto.json";
pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
pub const PREDICATE_TYPE: &str = "https://slsa.dev/provenance/v1";
/// What kind of build this is (a URI, as SLSA asks).
pub const BUILD_TYPE: &str = "urn:imgbuild:node-image:v1";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Statement {
    #[serde(rename = "_type")]
    pub type_: String,
    pub subject: Vec<ResourceDescriptor>,
    #[serde(rename = "predicateType")]
    pub predicate_type: String,
    pub predicate: SlsaProvenance,
}

/// An in-toto ResourceDescriptor (only the fields imgbuild uses).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceDescriptor {
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub uri: Option<String>,
    pub digest: BTreeMap<String, String>,
}

impl ResourceDescriptor {
    pub fn sha256(name: Option<&str>, uri: Option<&str>, digest: &str) -> Self {
        ResourceDescriptor {
            name: name.map(str::to_string),
            uri: uri.map(str::to_string),
            digest: BTreeMap::from([("sha256".to_string(), digest.to_string())]),
        }
    }
}

impl From<&crate::plan::Dependency> for ResourceDescriptor {
    /// An unpinned input (empty sha256) gets an empty digest set.
    fn from(d: &crate::plan::Dependency) -> Self {
        let mut r = ResourceDescriptor::sha256(Some(&d.name), d.uri.as_deref(), &d.sha256);
        if d.sha256.is_empty() {
            r.digest.clear();
        }
        r
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SlsaProvenance {
    pub build_definition: BuildDefinition,
    pub run_details: RunDetails,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BuildDefinition {
    pub build_type: String,
    /// What the user asked for: node, board, format, sealed or not, build time.
    pub external_parameters: BTreeMap<String, serde_json::Value>,
    pub resolved_dependencies: Vec<ResourceDescriptor>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunDetails {
    pub builder: Builder,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Builder {
    pub id: String,
    pub version: BTreeMap<String, String>,
}

/// The statement's path beside `artifact`.
pub fn path_for(artifact: &Path) -> PathBuf {
    let mut name = artifact.as_os_str().to_owned();
    name.push(SUFFIX);
    PathBuf::from(name)
}

impl Statement {
    pub fn new(
        artifact: &Path,
        digest: &Sha256Digest,
        parameters: BTreeMap<String, serde_json::Value>,
        dependencies: Vec<ResourceDescriptor>,
    ) -> Statement {
        let name = artifact
            .file_name()
            .map(|n| n.to_string_lossy().into_owned());
        Statement {
            type_: STATEMENT_TYPE.into(),
            subject: vec![ResourceDescriptor::sha256(
                name.as_deref(),
                None,
                &digest.to_string(),
            )],
            predicate_type: PREDICATE_TYPE.into(),
            predicate: SlsaProvenance {
                build_definition: BuildDefinition {
                    build_type: BUILD_TYPE.into(),
                    external_parameters: parameters,
                    resolved_dependencies: dependencies,
                },
                run_details: RunDetails {
                    builder: Builder {
                        id: "urn:imgbuild".into(),
                        version: BTreeMap::from([
                            (
                                "imgbuild".to_string(),
                                env!("CARGO_PKG_VERSION").to_string(),
                            ),
                            ("commit".to_string(), env!("IMGBUILD_COMMIT").to_string()),
                        ]),
                    },
                },
            },
        }
    }

    /// Writes the statement beside `artifact` (atomically).
    pub fn write(&self, artifact: &Path) -> Result<PathBuf> {
        let path = path_for(artifact);
        let dir = super::parent_dir(&path);
        let mut tmp = tempfile::NamedTempFile::new_in(&dir)
            .with_context(|| format!("writing {}", path.display()))?;
        serde_json::to_writer_pretty(&mut tmp, self)?;
        std::io::Write::write_all(&mut tmp, b"\n")?;
        tmp.persist(&path)
            .map_err(|e| e.error)
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }

    /// The sha256 the statement records for its (single) subject.
    pub fn subject_digest(&self) -> Option<Sha256Digest> {
        self.subject
            .first()
            .and_then(|s| s.digest.get("sha256"))
            .and_then(|d| Sha256Digest::parse(d))
    }
}

/// The statement beside `artifact`, if there is one.
pub fn read(artifact: &Path) -> Result<Option<Statement>> {
    let path = path_for(artifact);
    use crate::util::prescan;
    let text = match prescan::read_file(&path, prescan::PROVENANCE) {
        Ok(t) => t,
        Err(e) if e.not_found() => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    prescan::json(&path.display().to_string(), &text, prescan::PROVENANCE)?;
    let st: Statement = serde_json::from_slice(&text)
        .with_context(|| format!("{}: not an in-toto statement", path.display()))?;
    if st.type_ != STATEMENT_TYPE || st.predicate_type != PREDICATE_TYPE {
        bail!(
            "{}: expected an in-toto Statement v1 with a SLSA Provenance v1 predicate",
            path.display()
        );
    }
    Ok(Some(st))
}

/// The digest the statement beside `artifact` records, if there is one.
pub fn recorded_subject(artifact: &Path) -> Result<Option<Sha256Digest>> {
    Ok(read(artifact)?.and_then(|s| s.subject_digest()))
}
