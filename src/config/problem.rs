//! Problems found in configuration files: the file, the field and why, so
//! every message tells the user exactly what to change.

use std::path::{Path, PathBuf};

/// One problem in the profiles: the file, the field (dotted path) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    pub field: String,
    pub reason: String,
}

impl Problem {
    pub fn file(file: &Path, reason: String) -> Self {
        Problem {
            file: file.to_owned(),
            field: String::new(),
            reason,
        }
    }
    pub fn field(file: &Path, field: &str, reason: String) -> Self {
        Problem {
            file: file.to_owned(),
            field: field.to_owned(),
            reason,
        }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}: {}", self.file.display(), self.reason)
        } else {
            write!(
                f,
                "{}: {}: {}",
                self.file.display(),
                self.field,
                self.reason
            )
        }
    }
}
