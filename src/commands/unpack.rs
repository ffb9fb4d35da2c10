//! `imgbuild unpack IN OUT`: unpack an image file by its content.

use std::path::Path;

use anyhow::{Context, anyhow};

use super::{CommandError, Result};
use crate::source::unpack::{Format, UnpackError};

/// Unpacks `input` by content into a new sparse raw file `output` of at most
/// `max_size` bytes.
pub fn unpack(input: &Path, output: &Path, max_size: u64) -> Result<(Format, u64)> {
    if output.exists() {
        return Err(CommandError::usage(format!(
            "{} exists; not overwriting it",
            output.display()
        )));
    }
    let src = std::fs::File::open(input).with_context(|| format!("opening {}", input.display()))?;
    let dir = crate::artifact::parent_dir(output);
    let temp = tempfile::Builder::new()
        .prefix(".imgbuild-unpack-")
        .tempfile_in(&dir)
        .with_context(|| format!("cannot write in {}", dir.display()))?;
    let _cleanup = crate::util::cleanup::register(temp.path());
    let r = crate::source::unpack::unpack(&src, temp.as_file(), "unpack", max_size).map_err(
        |e| match e {
            UnpackError::TooLarge { .. } => {
                anyhow!(
                    "{}: {e}; raise it with --max-size if that is expected",
                    input.display()
                )
            }
            e => anyhow!("{}: {e}", input.display()),
        },
    )?;
    // Unpacking goes by content; a file named as packed that unpacked as
    // raw has a damaged header (its bytes were copied as they are).
    let name = input
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    r.0.check_named(name)
        .map_err(|e| CommandError::Failed(anyhow!("{}: {e}", input.display())))?;
    crate::source::cache::commit(temp, output)?;
    Ok(r)
}
