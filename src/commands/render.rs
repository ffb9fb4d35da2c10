//! `imgbuild render NODE`: the files a node's image would get, without an image.

use super::{Paths, Result, Workspace};
use crate::plan::{PlanInputs, RenderedFile};

/// The rendered files and what the build adds besides them (bootstrap
/// manifests, HelmChart files, image archives), planned without a download.
#[derive(Debug)]
pub struct Rendered {
    pub files: Vec<RenderedFile>,
    pub added: Vec<super::additions::Added>,
}

/// The build's additions as `render --json` shows them: entries of the same
/// array as the rendered files, with `added_by_build`.
#[derive(Debug)]
pub struct AddedEntry<'a> {
    pub target: &'static str,
    pub path: &'a str,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub added_by_build: &'a super::additions::Added,
}

impl Rendered {
    pub fn added_entries(&self) -> Vec<AddedEntry<'_>> {
        self.added
            .iter()
            .map(|a| AddedEntry {
                target: "root",
                path: &a.path,
                // As the build writes them: HelmChart and manifests 0600,
                // image archives 0644 (see additions.rs, plan/bootstrap.rs).
                mode: if a.kind == "container image" {
                    0o644
                } else {
                    0o600
                },
                uid: 0,
                gid: 0,
                added_by_build: a,
            })
            .collect()
    }
}

pub fn render(paths: &Paths, node: &str, build_time: u64) -> Result<Vec<RenderedFile>> {
    let ws = Workspace::load(paths)?;
    render_loaded(&ws, node, build_time)
}

fn render_loaded(ws: &Workspace, node: &str, build_time: u64) -> Result<Vec<RenderedFile>> {
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

pub fn render_with_additions(paths: &Paths, node: &str, build_time: u64) -> Result<Rendered> {
    let ws = Workspace::load(paths)?;
    let files = render_loaded(&ws, node, build_time)?;
    let added = super::additions::planned(&ws, ws.node(node)?)?;
    Ok(Rendered { files, added })
}
