//! `imgbuild render NODE`: the files a node's image would get, without an image.

use super::{Paths, Result, Workspace};
use crate::plan::{PlanInputs, RenderedFile};

pub fn render(paths: &Paths, node: &str, build_time: u64) -> Result<Vec<RenderedFile>> {
    let ws = Workspace::load(paths)?;
    let n = ws.node(node)?;
    let secrets = ws.secrets()?;
    let inputs = PlanInputs {
        profiles: &ws.profiles,
        manifests: &ws.manifests,
        overlays: &ws.overlays,
        build_time,
    };
    let values = super::build::secret_values(&secrets, n, build_time)?;
    Ok(crate::plan::render_node(&inputs, n, Some(values))?.0)
}
