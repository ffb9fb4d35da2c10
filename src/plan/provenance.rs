//! What imgbuild records inside an image about how it was made; written by a
//! bake, read back by `inspect`.

use serde::{Deserialize, Serialize};

/// The file name of the record, in the seed directory.
pub const PROVENANCE_FILE: &str = "imgbuild.json";

/// Fields are in alphabetical order, so the record reads the same as the
/// sorted JSON object earlier versions wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provenance {
    /// sha256 of the stock image download the manifest pins, when pinned.
    pub base_sha256: Option<String>,
    pub board: String,
    /// Unix seconds stamped on every written file.
    pub build_time: u64,
    pub cluster: String,
    /// The files the overlays placed (not the k3s payload or edits of stock files).
    pub files: Vec<FileRecord>,
    /// The imgbuild version that made the image.
    pub imgbuild: String,
    pub instance_id: String,
    pub node: String,
    pub profile_digest: String,
    /// Built without the secrets directory: the files that depend on it are
    /// missing until the image is sealed. (Absent in records of older versions.)
    #[serde(default)]
    pub unsealed: bool,
    /// A server re-made at flash time to join the running cluster through
    /// this API URL instead of founding it (absent otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub joined: Option<String>,
}

/// One file written into an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    /// The partition's role in the board manifest.
    pub partition: String,
    pub path: String,
    pub mode: u32,
    pub size: u64,
}

/// Why a provenance record read back could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ProvenanceError {
    /// Refused by the size or nesting cap before any parser saw it.
    #[error(transparent)]
    Limit(#[from] crate::util::prescan::PrescanError),
    #[error("{what} is not a provenance record imgbuild wrote")]
    Format { what: String },
}

impl Provenance {
    /// Reads a record back (from an image or an installer): within the
    /// size and nesting caps, then parsed; `what` names it in errors.
    pub fn read(what: &str, bytes: &[u8]) -> Result<Provenance, ProvenanceError> {
        use crate::util::prescan;
        prescan::json(what, bytes, prescan::PROVENANCE)?;
        serde_json::from_slice(bytes).map_err(|_| ProvenanceError::Format {
            what: what.to_string(),
        })
    }
}
