//! Overlays + node values -> the files to bake. Pure: reads templates, writes nothing.
//!
//! An overlay tree is `overlays/<feature>/<target>/<path>`, where `<target>` is
//! `seed` (the board's NoCloud seed location) or a partition role from the
//! board's manifest (`root`, `boot`, ...), and `<path>` mirrors the path inside
//! it. Files ending in `.j2` are minijinja templates (the suffix is dropped);
//! others are copied as they are. A template's first line may be
//! `{# imgbuild: mode=0600 uid=0 gid=0 skip_if_empty #}` to set the file's
//! metadata (and leave the file out when it renders to nothing). A file named
//! `<name>.symlink` (or `.symlink.j2`) makes `<name>` a symlink to its content.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use minijinja::Environment;

use super::filters::environment;
pub use super::filters::quote;
use sha2::{Digest, Sha256};

use super::PartitionTarget;
use super::context::TemplateContext;
pub use super::overlay_source::RenderError;
use super::overlay_source::{self, OverlaySet};
use crate::config::layered::Origin;
use crate::config::profile::{Install, Role};

const META_DATA: &str = "/meta-data";

/// One file to bake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedFile {
    /// `seed` or a partition role.
    pub target: PartitionTarget,
    /// Absolute path inside the target, e.g. `/etc/hostname`.
    pub path: String,
    pub contents: Vec<u8>,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// For `<name>.symlink` overlay files: the link target (the file's content).
    pub symlink: Option<String>,
    /// Depends on the secrets directory (renders differently for different
    /// secrets): left out of unsealed images and added when sealing.
    pub secret: bool,
    skip: bool,
    /// The overlay file it came from.
    pub source: PathBuf,
    /// Built in, or which override directory.
    pub origin: Origin,
}

/// Which overlay features apply to a node, lowest precedence first.
pub fn features_for(
    board: &str,
    role: Role,
    cluster_init: bool,
    k3s_install: Install,
    nvidia: bool,
    swap: bool,
    storage: bool,
) -> Vec<String> {
    let mut f = vec![
        "common".to_string(),
        format!("board-{board}"),
        format!("role-{}", role.as_str()),
    ];
    if cluster_init {
        f.push("cluster-init".into());
    }
    f.push(format!("k3s-{}", k3s_install.as_str()));
    if nvidia {
        f.push("nvidia".into());
    }
    if swap {
        f.push("swap".into());
    }
    if storage {
        f.push("storage".into());
    }
    f
}

struct Source {
    target: PartitionTarget,
    path: String,
    /// Where it comes from, for messages (`<built-in>/overlays/...` or a real path).
    file: PathBuf,
    origin: Origin,
    data: Vec<u8>,
    /// Permission bits of the overlay file (its executable bit carries over).
    file_mode: u32,
    template: bool,
}

impl Source {
    fn is_symlink(&self) -> bool {
        let name = self.file.to_string_lossy();
        name.ends_with(".symlink") || name.ends_with(".symlink.j2")
    }
}

/// Collects overlay files of `features` (later features override earlier ones).
fn collect(
    overlays: &OverlaySet,
    features: &[String],
) -> Result<BTreeMap<(PartitionTarget, String), Source>, RenderError> {
    let mut out = BTreeMap::new();
    for feature in features {
        for f in overlays.feature(feature) {
            let rest = &f.rel[feature.len() + 1..];
            let Some((target_dir, rel)) = rest.split_once('/') else {
                return Err(RenderError::Overlay {
                    path: overlay_source::display_path(f),
                    reason:
                        "expected a directory named after its target (`seed`, `root`, `boot`, ...)"
                            .into(),
                });
            };
            let target = PartitionTarget::from_dir_name(target_dir);
            let mut path = format!("/{rel}");
            let template = path.ends_with(".j2");
            if template {
                path.truncate(path.len() - 3);
            }
            if path.ends_with(".symlink") {
                path.truncate(path.len() - ".symlink".len());
            }
            out.insert(
                (target.clone(), path.clone()),
                Source {
                    target,
                    path,
                    file: overlay_source::display_path(f),
                    origin: f.origin.clone(),
                    data: f.data.clone(),
                    file_mode: f.mode,
                    template,
                },
            );
        }
    }
    Ok(out)
}

/// File metadata from a template's header line.
struct Header {
    mode: u32,
    uid: u32,
    gid: u32,
    skip_if_empty: bool,
}

fn parse_header(
    file: &Path,
    text: &str,
    default_mode: u32,
) -> Result<(Header, usize), RenderError> {
    let mut h = Header {
        mode: default_mode,
        uid: 0,
        gid: 0,
        skip_if_empty: false,
    };
    let first = text.lines().next().unwrap_or("");
    let trimmed = first.trim();
    let Some(body) = trimmed
        .strip_prefix("{# imgbuild:")
        .and_then(|r| r.strip_suffix("#}"))
    else {
        return Ok((h, 0));
    };
    let bad = |reason: String| RenderError::Overlay {
        path: file.to_owned(),
        reason,
    };
    for kv in body.split_whitespace() {
        if kv == "skip_if_empty" {
            h.skip_if_empty = true;
            continue;
        }
        let (k, v) = kv
            .split_once('=')
            .ok_or_else(|| bad(format!("header entry {kv:?} must be key=value")))?;
        match k {
            "mode" => {
                h.mode = u32::from_str_radix(v, 8)
                    .ok()
                    .filter(|m| *m <= 0o7777)
                    .ok_or_else(|| bad(format!("mode {v:?} must be octal like 0644")))?
            }
            "uid" => {
                h.uid = v
                    .parse()
                    .map_err(|_| bad(format!("uid {v:?} must be a number")))?
            }
            "gid" => {
                h.gid = v
                    .parse()
                    .map_err(|_| bad(format!("gid {v:?} must be a number")))?
            }
            _ => {
                return Err(bad(format!(
                    "unknown header key {k:?}; expected mode, uid or gid"
                )));
            }
        }
    }
    let skip = first.len() + usize::from(text.len() > first.len());
    Ok((h, skip))
}

/// Renders every overlay file of `features` for `context`.
///
/// Each file is also rendered under the two `probes` (the same values with
/// two different sets of placeholder secrets): a file that comes out
/// differently depends on the secrets and is flagged `secret`.
///
/// `meta-data` in the seed is rendered last with `instance_id` set: a digest of
/// every file that does not depend on secrets and of `identity` (what else the
/// image depends on, such as the base image digest), so changed content gives
/// a new instance, and sealed and unsealed images of a node share it.
pub fn render(
    overlays: &OverlaySet,
    features: &[String],
    context: &TemplateContext,
    probes: [&TemplateContext; 2],
    node_name: &str,
    identity: Identity,
) -> Result<(Vec<RenderedFile>, String), RenderError> {
    let sources = collect(overlays, features)?;
    let env = environment();
    let mut files = Vec::new();
    let mut deferred = Vec::new();
    for src in sources.into_values() {
        if src.target == PartitionTarget::Seed && src.path == META_DATA {
            deferred.push(src);
            continue;
        }
        let Some(mut file) = render_one(&env, &src, context)? else {
            continue;
        };
        let [a, b] = probes.map(|p| render_one(&env, &src, p));
        let (a, b) = (a?, b?);
        file.secret = a.map(|f| (f.contents, f.symlink)) != b.map(|f| (f.contents, f.symlink));
        files.push(file);
    }
    let public: Vec<RenderedFile> = files.iter().filter(|f| !f.secret).cloned().collect();
    let instance_id = match identity {
        Identity::Derive(identity) => instance_id(node_name, identity, &public),
        Identity::Fixed(id) => id.to_string(),
    };
    let mut ctx = context.clone();
    ctx.instance_id = Some(instance_id.clone());
    for src in deferred {
        files.extend(render_one(&env, &src, &ctx)?);
    }
    files.sort_by(|a, b| (&a.target, &a.path).cmp(&(&b.target, &b.path)));
    Ok((files, instance_id))
}

/// Where a rendering's instance ID comes from.
#[derive(Debug, Clone, Copy)]
pub enum Identity<'a> {
    /// Derived from this identity string and the public files rendered.
    Derive(&'a str),
    /// Given: a variant of a node's files (a server re-flashed to join)
    /// keeps the instance ID of the node as profiled.
    Fixed(&'a str),
}

/// Renders one overlay file; `None` when a `skip_if_empty` template renders to nothing.
fn render_one(
    env: &Environment,
    src: &Source,
    context: &TemplateContext,
) -> Result<Option<RenderedFile>, RenderError> {
    let mut f = render_contents(env, src, context)?;
    if f.skip {
        return Ok(None);
    }
    if src.is_symlink() {
        let target = String::from_utf8(std::mem::take(&mut f.contents))
            .ok()
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty() && !t.contains('\n'))
            .ok_or_else(|| RenderError::Overlay {
                path: src.file.clone(),
                reason: "a .symlink file must hold the link target on one line".into(),
            })?;
        f.symlink = Some(target);
        f.mode = 0o777;
    }
    Ok(Some(f))
}

fn render_contents(
    env: &Environment,
    src: &Source,
    context: &TemplateContext,
) -> Result<RenderedFile, RenderError> {
    let raw = src.data.clone();
    let exec = src.file_mode & 0o111 != 0;
    let default_mode = if exec { 0o755 } else { 0o644 };
    if !src.template {
        return Ok(RenderedFile {
            target: src.target.clone(),
            path: src.path.clone(),
            contents: raw,
            mode: default_mode,
            uid: 0,
            gid: 0,
            symlink: None,
            secret: false,
            skip: false,
            source: src.file.clone(),
            origin: src.origin.clone(),
        });
    }
    let text = String::from_utf8(raw).map_err(|_| RenderError::Overlay {
        path: src.file.clone(),
        reason: "a .j2 template must be UTF-8 text".into(),
    })?;
    let (header, skip) = parse_header(&src.file, &text, default_mode)?;
    let name = src.file.to_string_lossy();
    let out = env
        .render_named_str(&name, &text[skip..], minijinja::value::Serde(context))
        .map_err(|e| RenderError::Template {
            path: src.file.clone(),
            detail: describe(&e),
        })?;
    Ok(RenderedFile {
        target: src.target.clone(),
        path: src.path.clone(),
        skip: header.skip_if_empty && out.trim().is_empty(),
        contents: out.into_bytes(),
        mode: header.mode,
        uid: header.uid,
        gid: header.gid,
        symlink: None,
        secret: false,
        source: src.file.clone(),
        origin: src.origin.clone(),
    })
}

fn describe(e: &minijinja::Error) -> String {
    let s = crate::util::error_chain(e);
    match e.line() {
        Some(line) => format!("line {}: {s}", line + 1),
        None => s,
    }
}

fn instance_id(node: &str, identity: &str, files: &[RenderedFile]) -> String {
    let mut h = Sha256::new();
    h.update(identity.as_bytes());
    h.update([0]);
    for f in files {
        h.update(f.target.as_str().as_bytes());
        h.update([0]);
        h.update(f.path.as_bytes());
        h.update([0]);
        h.update(format!("{:o}:{}:{}", f.mode, f.uid, f.gid).as_bytes());
        h.update((f.contents.len() as u64).to_le_bytes());
        h.update(&f.contents);
    }
    format!("iid-{node}-{}", &hex::encode(h.finalize())[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_filter_quotes_hostile_strings() {
        use minijinja::Value;
        let out = super::super::filters::yaml_filter(Value::from("evil\nruncmd: [rm -rf /] # \"'"))
            .unwrap();
        assert!(!out.contains('\n'));
        let back: String = serde_yaml_ng::from_str(&out).unwrap();
        assert_eq!(back, "evil\nruncmd: [rm -rf /] # \"'");
    }

    #[test]
    fn header_parsing() {
        let (h, skip) = parse_header(
            Path::new("x"),
            "{# imgbuild: mode=0600 uid=1000 #}\nbody",
            0o644,
        )
        .unwrap();
        assert_eq!((h.mode, h.uid, h.gid, skip), (0o600, 1000, 0, 35));
        let (h, skip) = parse_header(Path::new("x"), "plain\n", 0o644).unwrap();
        assert_eq!((h.mode, skip), (0o644, 0));
        assert!(parse_header(Path::new("x"), "{# imgbuild: color=red #}\n", 0o644).is_err());
    }
}
