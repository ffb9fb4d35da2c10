//! Kubeconfig files: one cluster, one user with an embedded client
//! certificate, one context, all named after the cluster (k3s's own k3s.yaml
//! has the same shape, named `default`); merged into an existing file by name,
//! keeping everything else in it. Files are written 0600, atomically.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine;
use serde_yaml_ng::{Mapping, Value};

use crate::secrets::client::ClientCert;

/// What goes into a kubeconfig.
pub struct Entry<'a> {
    /// Cluster and context name (the cluster's name).
    pub name: &'a str,
    /// User entry name.
    pub user: &'a str,
    pub server: &'a str,
    pub server_ca_pem: &'a str,
    pub client: &'a ClientCert,
}

fn b64(s: &str) -> Value {
    Value::String(base64::engine::general_purpose::STANDARD.encode(s.as_bytes()))
}

fn map(pairs: Vec<(&str, Value)>) -> Value {
    let mut m = Mapping::new();
    for (k, v) in pairs {
        m.insert(Value::String(k.to_string()), v);
    }
    Value::Mapping(m)
}

fn named(name: &str, key: &str, body: Value) -> Value {
    map(vec![("name", Value::String(name.into())), (key, body)])
}

/// A kubeconfig holding only `e`, as the current context.
pub fn single(e: &Entry) -> Value {
    let (cluster, user, context) = items(e);
    map(vec![
        ("apiVersion", Value::String("v1".into())),
        ("kind", Value::String("Config".into())),
        ("clusters", Value::Sequence(vec![cluster])),
        ("users", Value::Sequence(vec![user])),
        ("contexts", Value::Sequence(vec![context])),
        ("current-context", Value::String(e.name.into())),
        ("preferences", Value::Mapping(Mapping::new())),
    ])
}

fn items(e: &Entry) -> (Value, Value, Value) {
    (
        named(
            e.name,
            "cluster",
            map(vec![
                ("server", Value::String(e.server.into())),
                ("certificate-authority-data", b64(e.server_ca_pem)),
            ]),
        ),
        named(
            e.user,
            "user",
            map(vec![
                ("client-certificate-data", b64(&e.client.cert_pem)),
                ("client-key-data", b64(&e.client.key_pem)),
            ]),
        ),
        named(
            e.name,
            "context",
            map(vec![
                ("cluster", Value::String(e.name.into())),
                ("user", Value::String(e.user.into())),
            ]),
        ),
    )
}

/// `existing` with `e`'s cluster, user and context replacing entries of the
/// same names (others are kept) and `e` as the current context. Returns the
/// previous current context.
pub fn merge(existing: &mut Value, e: &Entry, file: &Path) -> Result<Option<String>> {
    let Value::Mapping(top) = existing else {
        bail!(
            "{}: not a kubeconfig (expected a YAML mapping with clusters, users and contexts)",
            file.display()
        );
    };
    let (cluster, user, context) = items(e);
    for (key, item, name) in [
        ("clusters", cluster, e.name),
        ("users", user, e.user),
        ("contexts", context, e.name),
    ] {
        let list = top
            .entry(Value::String(key.into()))
            .or_insert_with(|| Value::Sequence(Vec::new()));
        if list.is_null() {
            *list = Value::Sequence(Vec::new());
        }
        let Value::Sequence(list) = list else {
            bail!("{}: `{key}` is not a list", file.display());
        };
        list.retain(|v| v.get("name").and_then(Value::as_str) != Some(name));
        list.push(item);
    }
    for (k, v) in [("apiVersion", "v1"), ("kind", "Config")] {
        top.entry(Value::String(k.into()))
            .or_insert_with(|| Value::String(v.into()));
    }
    let previous = top
        .insert(
            Value::String("current-context".into()),
            Value::String(e.name.into()),
        )
        .and_then(|v| v.as_str().map(str::to_string))
        .filter(|s| !s.is_empty());
    Ok(previous)
}

/// Reads a kubeconfig (`None` when the file does not exist).
pub fn read(path: &Path) -> Result<Option<Value>> {
    match std::fs::read_to_string(path) {
        Ok(t) if t.trim().is_empty() => Ok(Some(Value::Mapping(Mapping::new()))),
        Ok(t) => serde_yaml_ng::from_str(&t)
            .map(Some)
            .with_context(|| format!("{}: not valid YAML", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// The client certificate (PEM) and server of context `name`, when the file
/// has them embedded.
pub fn embedded(config: &Value, name: &str) -> Option<(String, String, String)> {
    let find = |key: &str, n: &str| -> Option<Value> {
        config
            .get(key)?
            .as_sequence()?
            .iter()
            .find(|v| v.get("name").and_then(Value::as_str) == Some(n))
            .cloned()
    };
    let ctx = find("contexts", name)?;
    let ctx = ctx.get("context")?;
    let cluster = find("clusters", ctx.get("cluster")?.as_str()?)?;
    let user = find("users", ctx.get("user")?.as_str()?)?;
    let decode = |v: &Value| -> Option<String> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(v.as_str()?)
            .ok()?;
        String::from_utf8(bytes).ok()
    };
    Some((
        decode(user.get("user")?.get("client-certificate-data")?)?,
        cluster.get("cluster")?.get("server")?.as_str()?.to_string(),
        decode(cluster.get("cluster")?.get("certificate-authority-data")?)?,
    ))
}

/// Writes `config` to `path` with mode 0600: a private temporary file in the
/// same directory, renamed over the old one, so no reader ever sees half a file
/// and the key is never readable by others, not even for a moment.
pub fn write(path: &Path, config: &Value) -> Result<()> {
    let text = serde_yaml_ng::to_string(config)?;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    // A directory made here holds keys: private from the start.
    std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".kubeconfig-")
        .permissions(std::fs::Permissions::from_mode(0o600))
        .tempfile_in(dir)
        .with_context(|| format!("creating a file in {}", dir.display()))?;
    tmp.write_all(text.as_bytes())?;
    tmp.as_file().sync_all()?;
    tmp.persist(path)
        .map_err(|e| anyhow!("writing {}: {}", path.display(), e.error))?;
    Ok(())
}
