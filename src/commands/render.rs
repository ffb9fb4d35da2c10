//! `imgbuild render NODE`: the files a node's image would get, without an image.

use super::{Paths, Result, Workspace};
use crate::plan::{Added, NodePlan, RenderedFile};
use crate::source::supplies::Supplies;

/// The rendered files and what the build adds besides them (bootstrap
/// manifests, HelmChart files, image archives), planned without a download.
#[derive(Debug)]
pub struct Rendered {
    pub files: Vec<RenderedFile>,
    pub added: Vec<Added>,
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
    pub added_by_build: &'a Added,
}

impl Rendered {
    pub fn added_entries(&self) -> Vec<AddedEntry<'_>> {
        self.added
            .iter()
            .map(|a| AddedEntry {
                target: "root",
                path: &a.path,
                mode: a.owner.mode,
                uid: a.owner.uid,
                gid: a.owner.gid,
                added_by_build: a,
            })
            .collect()
    }
}

pub fn render(paths: &Paths, node: &str, build_time: u64) -> Result<Vec<RenderedFile>> {
    Ok(render_with_additions(paths, node, build_time)?.files)
}

/// The node's plan as a preview: nothing is downloaded, and nothing is
/// written. Without a secrets directory the secret values are placeholders
/// (a preview must not create the cluster's secrets).
fn preview(ws: &Workspace, node: &str, build_time: u64) -> Result<NodePlan> {
    let n = ws.node(node)?;
    let existing = if ws.paths.secrets.exists() {
        Some(crate::secrets::Secrets::open_existing(&ws.paths.secrets)?)
    } else {
        None
    };
    let missing = existing.as_ref().map_or_else(
        || vec!["the directory".to_string()],
        |s| s.missing_for(&n.name),
    );
    let secrets = if missing.is_empty() {
        existing
    } else {
        tracing::warn!(
            "{} lacks {}: tokens, keys and passwords are shown as placeholders (the first sealed build, or `imgbuild secrets --generate`, creates them)",
            ws.paths.secrets.display(),
            missing.join(", ")
        );
        None
    };
    let supplies = Supplies::preview(&ws.profiles)?;
    Ok(ws.plan(n, secrets.as_ref(), &supplies, build_time)?)
}

pub fn render_with_additions(paths: &Paths, node: &str, build_time: u64) -> Result<Rendered> {
    let ws = Workspace::load(paths)?;
    let plan = preview(&ws, node, build_time)?;
    Ok(Rendered {
        added: plan.added(),
        files: plan.rendered,
    })
}
