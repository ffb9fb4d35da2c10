//! `cluster.bootstrap`: what the cluster-init server applies at its first
//! start: plain manifests (files under `<profiles>/manifests/`) and Helm
//! charts pinned by version and sha256, embedded as k3s `HelmChart`
//! resources so nothing is downloaded at boot. This module owns the profile
//! keys and their checks; `source::chart` fetches, `plan::bootstrap` renders.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::Problem;

/// Where bootstrap files live, inside the profile directory.
pub const MANIFESTS_DIR: &str = "manifests";

#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Bootstrap {
    /// File names under `<profiles>/manifests/`, applied as they are.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub manifests: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub charts: Vec<Chart>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Chart {
    /// The HelmChart resource's name (and Helm release name).
    pub name: String,
    /// The chart repository's URL.
    pub repo: String,
    /// The chart's name in the repository.
    pub chart: String,
    /// Pinned chart version.
    pub version: String,
    /// sha256 of the chart archive (`.tgz`), as `sha256sum` prints it.
    pub sha256: String,
    /// The archive's URL when it is not `<repo>/<chart>-<version>.tgz`
    /// (e.g. charts published as GitHub release assets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Namespace the release goes into (created if missing).
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// A values file under `<profiles>/manifests/`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<String>,
}

fn default_namespace() -> String {
    "default".into()
}

impl Chart {
    /// Where the chart archive is downloaded from.
    pub fn archive_url(&self) -> String {
        match &self.url {
            Some(u) => u.clone(),
            None => format!(
                "{}/{}-{}.tgz",
                self.repo.trim_end_matches('/'),
                self.chart,
                self.version
            ),
        }
    }
}

/// The bootstrap set's own files, read once from the profile directory:
/// the plain manifests as (name, text) in profile order, and the charts'
/// values files by name.
#[derive(Debug, Clone, Default)]
pub struct LocalFiles {
    pub manifests: Vec<(String, String)>,
    pub values: std::collections::BTreeMap<String, String>,
}

impl Bootstrap {
    /// Reads the manifests and values files this set names (inside the
    /// profile directory, bounded, as every configuration file is read).
    pub fn read_local(&self, profiles_dir: &Path) -> anyhow::Result<LocalFiles> {
        let read = |name: &str| -> anyhow::Result<String> {
            let path = file_path(profiles_dir, name);
            crate::config::read::read_text(&path, profiles_dir)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
        };
        let mut out = LocalFiles::default();
        for name in &self.manifests {
            out.manifests.push((name.clone(), read(name)?));
        }
        for name in self.charts.iter().filter_map(|c| c.values.as_ref()) {
            if !out.values.contains_key(name) {
                out.values.insert(name.clone(), read(name)?);
            }
        }
        Ok(out)
    }
}

/// A file of the bootstrap set, by its name under `<profiles>/manifests/`.
pub fn file_path(profiles_dir: &Path, name: &str) -> PathBuf {
    profiles_dir.join(MANIFESTS_DIR).join(name)
}

fn url_error(u: &str) -> Option<String> {
    let ok = (u.starts_with("https://") || u.starts_with("http://"))
        && u.len() <= 2048
        && u.bytes()
            .all(|b| b.is_ascii_graphic() && !b"\"'`<>\\{}|^".contains(&b));
    (!ok).then(|| "expected an http:// or https:// URL of printable characters".into())
}

/// A Kubernetes object name (RFC 1123 label).
fn name_error(n: &str) -> Option<String> {
    let ok = !n.is_empty()
        && n.len() <= 53
        && n.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !n.starts_with('-')
        && !n.ends_with('-');
    (!ok).then(|| {
        format!(
            "{:?} must be 1 to 53 lower-case letters, digits and '-' (a Helm release and Kubernetes name)",
            crate::config::read::sanitize_field(n)
        )
    })
}

/// A file name under `manifests/`: no directories, nothing hidden.
fn file_name_error(n: &str) -> Option<String> {
    let ok = !n.is_empty()
        && n.len() <= 100
        && !n.starts_with('.')
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
    (!ok).then(|| {
        format!(
            "{:?} must be a file name in {MANIFESTS_DIR}/ (letters, digits, '-', '_', '.'; no directories)",
            crate::config::read::sanitize_field(n)
        )
    })
}

/// Checks the keys and that every named file is readable YAML inside the
/// profile directory (each document of a manifest with apiVersion and kind).
pub fn check(b: &Bootstrap, profiles_dir: &Path, cluster_file: &Path, problems: &mut Vec<Problem>) {
    let cf = cluster_file;
    let read_yaml = |name: &str, field: &str, problems: &mut Vec<Problem>, manifest: bool| {
        let path = file_path(profiles_dir, name);
        let text = match crate::config::read::read_text(&path, profiles_dir) {
            Ok(t) => t,
            Err(e) => {
                problems.push(Problem::field(
                    cf,
                    field,
                    format!("{}: {e}", path.display()),
                ));
                return;
            }
        };
        let what = path.display().to_string();
        if let Err(e) =
            crate::util::prescan::yaml(&what, text.as_bytes(), crate::util::prescan::CONFIG)
        {
            problems.push(Problem::field(cf, field, e.to_string()));
            return;
        }
        for (i, doc) in serde_yaml_ng::Deserializer::from_str(&text).enumerate() {
            let v = match <serde_yaml_ng::Value as Deserialize>::deserialize(doc) {
                Ok(v) => v,
                Err(e) => {
                    problems.push(Problem::field(
                        cf,
                        field,
                        format!(
                            "{}: not valid YAML: {}",
                            path.display(),
                            crate::config::read::sanitize(&e.to_string())
                        ),
                    ));
                    return;
                }
            };
            if manifest
                && !v.is_null()
                && (v.get("apiVersion").and_then(|v| v.as_str()).is_none()
                    || v.get("kind").and_then(|v| v.as_str()).is_none())
            {
                problems.push(Problem::field(
                    cf,
                    field,
                    format!(
                        "{}: document {} has no apiVersion and kind; expected Kubernetes objects",
                        path.display(),
                        i + 1
                    ),
                ));
            }
        }
    };
    for (i, m) in b.manifests.iter().enumerate() {
        let field = format!("cluster.bootstrap.manifests[{i}]");
        match file_name_error(m) {
            Some(e) => problems.push(Problem::field(cf, &field, e)),
            None => read_yaml(m, &field, problems, true),
        }
    }
    let mut names = std::collections::BTreeSet::new();
    for (i, c) in b.charts.iter().enumerate() {
        let f = |k: &str| format!("cluster.bootstrap.charts[{i}].{k}");
        if let Some(e) = name_error(&c.name) {
            problems.push(Problem::field(cf, &f("name"), e));
        } else if !names.insert(c.name.clone()) {
            problems.push(Problem::field(
                cf,
                &f("name"),
                format!("{:?} is used by two charts", c.name),
            ));
        }
        if let Some(e) = name_error(&c.namespace) {
            problems.push(Problem::field(cf, &f("namespace"), e));
        }
        if let Some(e) = url_error(&c.repo) {
            problems.push(Problem::field(cf, &f("repo"), e));
        }
        if let Some(u) = &c.url
            && let Some(e) = url_error(u)
        {
            problems.push(Problem::field(cf, &f("url"), e));
        }
        let word = |s: &str| {
            !s.is_empty()
                && s.len() <= 100
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.+".contains(&b))
        };
        if !word(&c.chart) {
            problems.push(Problem::field(
                cf,
                &f("chart"),
                "expected a chart name (letters, digits, '-', '_', '.')".into(),
            ));
        }
        if !word(&c.version) {
            problems.push(Problem::field(
                cf,
                &f("version"),
                "expected a pinned chart version like 7.7.0 (no ranges)".into(),
            ));
        }
        if crate::io::Sha256Digest::parse(&c.sha256).is_none() {
            problems.push(Problem::field(
                cf,
                &f("sha256"),
                "expected the chart archive's sha256, 64 hex digits (`sha256sum chart.tgz`)".into(),
            ));
        }
        if let Some(v) = &c.values {
            match file_name_error(v) {
                Some(e) => problems.push(Problem::field(cf, &f("values"), e)),
                None => read_yaml(v, &f("values"), problems, false),
            }
        }
    }
}
