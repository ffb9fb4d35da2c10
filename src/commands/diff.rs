//! `imgbuild diff A B`: what differs between two images.

use std::path::Path;

use super::{CommandError, Result};
use crate::artifact::diff::{self, ImageDiff};

pub fn diff(a: &Path, b: &Path) -> Result<ImageDiff> {
    diff::diff(a, b).map_err(CommandError::Failed)
}
