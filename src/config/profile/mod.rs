//! Cluster and node profiles: load, merge, validate.
//!
//! `cluster.yaml` holds cluster-wide settings and a `defaults:` map of node
//! keys; `nodes/<name>.yaml` holds one node each. A node file is merged over
//! the defaults: maps merge key by key, lists and scalars replace.

mod model;
mod validate;

use std::path::{Path, PathBuf};

pub use crate::config::Problem;
use crate::config::manifest::BoardInfo;
pub use model::*;
use serde::de::DeserializeOwned;
use serde_yaml_ng::Value;
pub use validate::hostname_error;

pub const CLUSTER_FILE: &str = "cluster.yaml";
pub const NODES_DIR: &str = "nodes";

/// A loaded and validated set of profiles.
#[derive(Debug, Clone)]
pub struct ProfileSet {
    pub dir: PathBuf,
    pub cluster: Cluster,
    pub nodes: Vec<Node>,
}

impl ProfileSet {
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The images `node` gets as air-gap archives: `cluster.images`, its own
    /// `images`, and on servers of an air-gapped cluster with a VIP,
    /// kube-vip's; each once, in that order.
    pub fn images_for(&self, node: &Node) -> Vec<String> {
        let cluster = &self.cluster;
        let vip = cluster
            .vip
            .as_ref()
            .filter(|_| node.k3s.role == Role::Server && cluster.k3s.install == Install::Airgap)
            .map(|v| v.image_ref());
        let mut out: Vec<String> = Vec::new();
        for r in cluster
            .images
            .iter()
            .chain(&node.images)
            .cloned()
            .chain(vip)
        {
            if !out.contains(&r) {
                out.push(r);
            }
        }
        out
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{} problem(s) in the profiles under {}:\n{}", .problems.len(), .dir.display(), list(.problems))]
pub struct ProfileErrors {
    pub dir: PathBuf,
    pub problems: Vec<Problem>,
}

fn list(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(|p| format!("  - {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Loads every profile under `dir`, collecting all problems before failing.
pub fn load(dir: &Path, boards: &[BoardInfo]) -> Result<ProfileSet, ProfileErrors> {
    let mut problems = Vec::new();
    let cluster_path = dir.join(CLUSTER_FILE);
    let fail = |problems| ProfileErrors {
        dir: dir.to_owned(),
        problems,
    };
    let cluster_value = match read_yaml(&cluster_path, dir) {
        Ok(v) => v,
        Err(p) => return Err(fail(vec![p])),
    };
    let cluster: Option<ClusterFile> =
        parse_strict(&cluster_path, cluster_value.clone(), &mut problems);
    let files = node_files(dir, &mut problems).map_err(|p| fail(vec![p]))?;
    let defaults = defaults(&cluster_value);
    let nodes = parse_nodes(&files, dir, &cluster_path, &defaults, &mut problems);

    let Some(cluster) = cluster else {
        return Err(fail(problems));
    };
    let cluster = cluster.cluster;
    let mut resolved = Vec::new();
    for n in nodes {
        let origin = Origin {
            node_file: &n.path,
            cluster_file: &cluster_path,
            own: &n.own,
        };
        if let Some(node) =
            validate::resolve_node(&cluster, &n.stem, n.spec, &origin, boards, &mut problems)
        {
            resolved.push(node);
        }
    }
    check_set(&cluster, dir, &cluster_path, &resolved, &mut problems);
    if problems.is_empty() {
        Ok(ProfileSet {
            dir: dir.to_owned(),
            cluster,
            nodes: resolved,
        })
    } else {
        Err(fail(problems))
    }
}

/// The `defaults:` map of `cluster.yaml` (empty when absent).
fn defaults(cluster_value: &Value) -> Value {
    let defaults = match cluster_value {
        Value::Mapping(m) => m.get("defaults").cloned().unwrap_or(Value::Null),
        _ => Value::Null,
    };
    if defaults.is_null() {
        Value::Mapping(Default::default())
    } else {
        defaults
    }
}

/// The node files (`nodes/*.yaml`, `*.yml`) in name order; an unreadable or
/// empty directory is a problem, one outside the profiles' tree ends loading.
fn node_files(dir: &Path, problems: &mut Vec<Problem>) -> Result<Vec<PathBuf>, Problem> {
    let nodes_dir = dir.join(NODES_DIR);
    if let Err(e) = crate::config::read::check_dir(&nodes_dir, dir)
        && nodes_dir.exists()
    {
        return Err(Problem::file(&nodes_dir, e));
    }
    let mut files: Vec<PathBuf> = match std::fs::read_dir(&nodes_dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
            .collect(),
        Err(e) => {
            problems.push(Problem::file(
                &nodes_dir,
                format!("cannot read the node directory: {e}"),
            ));
            Vec::new()
        }
    };
    files.sort();
    if files.is_empty() && problems.is_empty() {
        problems.push(Problem::file(
            &nodes_dir,
            "no node profiles (*.yaml) found".into(),
        ));
    }
    Ok(files)
}

/// A node file read and merged over the defaults, not yet validated.
struct ParsedNode {
    path: PathBuf,
    stem: String,
    /// The node file's own keys, to tell which file a field came from.
    own: Value,
    spec: NodeSpec,
}

fn parse_nodes(
    files: &[PathBuf],
    dir: &Path,
    cluster_path: &Path,
    defaults: &Value,
    problems: &mut Vec<Problem>,
) -> Vec<ParsedNode> {
    let mut nodes = Vec::new();
    for path in files {
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_string();
        let value = match read_yaml(path, dir) {
            Ok(v) => v,
            Err(p) => {
                problems.push(p);
                continue;
            }
        };
        // Check the node file on its own first, so an unknown key names this file.
        let own: Option<NodeSpec> = parse_strict(path, value.clone(), problems);
        if own.is_none() {
            continue;
        }
        let merged = merge(defaults.clone(), value.clone());
        let Some(spec) = parse_strict::<NodeSpec>(cluster_path, merged, problems) else {
            continue;
        };
        nodes.push(ParsedNode {
            path: path.clone(),
            stem,
            own: value,
            spec,
        });
    }
    nodes
}

/// The checks across the resolved set: cluster fields and nodes against
/// each other, the VIP, the cluster's images and its bootstrap files.
fn check_set(
    cluster: &Cluster,
    dir: &Path,
    cluster_path: &Path,
    resolved: &[Node],
    problems: &mut Vec<Problem>,
) {
    validate::cross_checks(cluster, cluster_path, resolved, problems);
    if let Some(vip) = &cluster.vip {
        validate::vip_checks(vip, &cluster.server, cluster_path, resolved, problems);
    }
    for (i, r) in cluster.images.iter().enumerate() {
        if let Err(e) = crate::config::images::ImageRef::parse(r) {
            problems.push(Problem::field(
                cluster_path,
                &format!("cluster.images[{i}]"),
                e,
            ));
        }
    }
    if let Some(b) = &cluster.bootstrap {
        crate::config::bootstrap::check(b, dir, cluster_path, problems);
    }
}

/// Which file a node's field came from: the node file when it sets it, else the defaults.
pub(crate) struct Origin<'a> {
    pub node_file: &'a Path,
    pub cluster_file: &'a Path,
    pub own: &'a Value,
}

impl Origin<'_> {
    pub fn file_for(&self, field: &str) -> PathBuf {
        let segments: Vec<&str> = field.split('.').collect();
        // Lists replace as a whole when merged, so anything under a list
        // element the node sets (a missing `storage[0].device`, say) is the
        // node file's.
        let in_own_list = (1..segments.len())
            .any(|n| segments[n - 1].ends_with(']') && has_path(self.own, &segments[..n]));
        if in_own_list || has_path(self.own, &segments) {
            self.node_file.to_owned()
        } else {
            self.cluster_file.to_owned()
        }
    }
}

/// Whether `v` has the dotted field path; keys may contain dots themselves
/// (label keys do) and a segment may end in `[index]`.
fn has_path(v: &Value, segments: &[&str]) -> bool {
    if segments.is_empty() {
        return true;
    }
    (1..=segments.len()).any(|n| {
        let joined = segments[..n].join(".");
        let (key, index) = match joined.strip_suffix(']').and_then(|s| s.rsplit_once('[')) {
            Some((k, i)) => (k.to_string(), i.parse::<usize>().ok()),
            None => (joined.clone(), None),
        };
        let Some(child) = v.get(key.as_str()) else {
            return false;
        };
        let child = match index {
            Some(i) => match child.get(i) {
                Some(c) => c,
                None => return false,
            },
            None => child,
        };
        has_path(child, &segments[n..])
    })
}

fn read_yaml(path: &Path, root: &Path) -> Result<Value, Problem> {
    use crate::config::read::{read_text, sanitize};
    let text = read_text(path, root).map_err(|e| Problem::file(path, e))?;
    crate::util::prescan::yaml("the file", text.as_bytes(), crate::util::prescan::CONFIG)
        .map_err(|e| Problem::file(path, e.to_string()))?;
    let value: Value = serde_yaml_ng::from_str(&text).map_err(|e| {
        Problem::file(
            path,
            format!("not valid YAML: {}", sanitize(&e.to_string())),
        )
    })?;
    match value {
        Value::Mapping(_) => Ok(value),
        Value::Null => Err(Problem::file(
            path,
            "is empty; expected a YAML mapping".into(),
        )),
        _ => Err(Problem::file(
            path,
            "expected a YAML mapping at the top level".into(),
        )),
    }
}

fn parse_strict<T: DeserializeOwned>(
    path: &Path,
    value: Value,
    problems: &mut Vec<Problem>,
) -> Option<T> {
    match serde_path_to_error::deserialize::<_, T>(value) {
        Ok(v) => Some(v),
        Err(e) => {
            use crate::config::read::{sanitize, sanitize_field};
            let field = e.path().to_string();
            let field = if field == "." { String::new() } else { field };
            problems.push(Problem::field(
                path,
                &sanitize_field(&field),
                sanitize(&e.into_inner().to_string()),
            ));
            None
        }
    }
}

/// Deep merge: mappings merge recursively, anything else in `over` replaces `base`.
pub fn merge(base: Value, over: Value) -> Value {
    match (base, over) {
        (Value::Mapping(mut b), Value::Mapping(o)) => {
            for (k, v) in o {
                let merged = match b.remove(&k) {
                    Some(old) => merge(old, v),
                    None => v,
                };
                b.insert(k, merged);
            }
            Value::Mapping(b)
        }
        (_, over) => over,
    }
}

/// Stable digest of what a node's image depends on in the profiles.
pub fn profile_digest(cluster: &Cluster, node: &Node) -> String {
    use sha2::{Digest, Sha256};
    let doc = serde_json::json!({ "cluster": cluster, "node": node });
    hex::encode(Sha256::digest(
        serde_json::to_vec(&doc).expect("profiles serialize"),
    ))
}
