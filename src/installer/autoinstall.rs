//! The `autoinstall.yaml` of a node's bare-metal installer (subiquity,
//! version 1): which disk to wipe, the network, SSH, the node's cloud-init
//! user-data for the installed system, and the late commands that unpack the
//! node's root payload into it.

use serde_yaml_ng::{Mapping, Value};

use crate::config::profile::{Cluster, Node};
use crate::io::Sha256Digest;
use crate::plan::Removal;

/// Where the install medium is mounted while subiquity runs.
pub const CDROM: &str = "/cdrom";
/// The payload's path on the ISO.
pub const PAYLOAD_PATH: &str = "/imgbuild/root.tar";
/// Where subiquity looks for the configuration on the medium.
pub const AUTOINSTALL_PATH: &str = "/autoinstall.yaml";
/// The secret files an unsealed installer lacks, added when it is sealed.
pub const SECRETS_PATH: &str = "/imgbuild/secrets.tar";

/// The early command of an unsealed installer: it stops before any disk is
/// touched, since the node it would install could not join the cluster.
const UNSEALED_GUARD: &str = "echo 'imgbuild: this installer is unsealed (it lacks the cluster secrets); write it with `imgbuild usb`, which seals it' >&2; exit 1";

/// What goes into a node's autoinstall configuration.
pub struct Inputs<'a> {
    pub cluster: &'a Cluster,
    pub node: &'a Node,
    /// The node's rendered NoCloud `user-data` (`#cloud-config`).
    pub user_data: &'a [u8],
    /// The node's rendered `network-config` (netplan v2).
    pub network_config: Option<&'a [u8]>,
    pub payload_sha256: Sha256Digest,
    /// Stock files the bake would delete (e.g. host keys the installer makes).
    pub removals: &'a [Removal],
    /// Built without the secrets: refuses to install until sealed.
    pub unsealed: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("{what}: {detail}")]
pub struct AutoinstallError {
    what: String,
    detail: String,
}

fn key(k: &str) -> Value {
    Value::String(k.to_string())
}

/// Quotes `s` for a POSIX shell.
fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn parse_yaml(what: &str, bytes: &[u8]) -> Result<Value, AutoinstallError> {
    use crate::util::prescan;
    prescan::yaml(what, bytes, prescan::CONFIG).map_err(|e| AutoinstallError {
        what: what.to_string(),
        detail: e.to_string(),
    })?;
    serde_yaml_ng::from_slice(bytes).map_err(|e| AutoinstallError {
        what: what.to_string(),
        detail: format!("not YAML: {e}"),
    })
}

fn sha_check(sha256: &Sha256Digest, path: &str) -> String {
    format!(
        "echo {} | sha256sum -c -",
        shell_quote(&format!("{sha256}  {path}"))
    )
}

fn untar(path: &str) -> String {
    format!(
        "tar -x -p --numeric-owner --same-owner -f {} -C /target",
        shell_quote(path)
    )
}

/// The configuration of an unsealed installer, sealed: the guard removed,
/// and late commands that check and unpack the secrets archive (sha256
/// `secrets_sha256`) after the root payload, so its files win.
pub fn seal(yaml: &str, secrets_sha256: &Sha256Digest) -> Result<String, AutoinstallError> {
    let bad = |detail: &str| AutoinstallError {
        what: "autoinstall.yaml".into(),
        detail: detail.to_string(),
    };
    let mut v = parse_yaml("autoinstall.yaml", yaml.as_bytes())?;
    let root = v.as_mapping_mut().ok_or_else(|| bad("is not a mapping"))?;
    match root.get("early-commands").and_then(Value::as_sequence) {
        Some(cmds) if cmds.len() == 1 && cmds[0].as_str() == Some(UNSEALED_GUARD) => {
            root.remove("early-commands");
        }
        _ => {
            return Err(bad(
                "is not the configuration of an unsealed imgbuild installer",
            ));
        }
    }
    let late = root
        .get_mut("late-commands")
        .and_then(Value::as_sequence_mut)
        .ok_or_else(|| bad("has no late-commands"))?;
    let path = format!("{CDROM}{SECRETS_PATH}");
    late.push(Value::String(sha_check(secrets_sha256, &path)));
    late.push(Value::String(untar(&path)));
    let header: String = yaml
        .lines()
        .take_while(|l| l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    let text = serde_yaml_ng::to_string(&v).map_err(|e| bad(&e.to_string()))?;
    Ok(format!("{header}{text}"))
}

/// The configuration as YAML text.
pub fn render(i: &Inputs) -> Result<String, AutoinstallError> {
    let mut root = Mapping::new();
    root.insert(key("version"), Value::Number(1.into()));
    if i.unsealed {
        root.insert(
            key("early-commands"),
            Value::Sequence(vec![key(UNSEALED_GUARD)]),
        );
    }

    // Storage: the whole selected disk, the installer's default (direct)
    // layout; `match` is subiquity's disk selector.
    let disk = serde_yaml_ng::to_value(&i.node.install.disk).map_err(|e| AutoinstallError {
        what: "install.disk".into(),
        detail: e.to_string(),
    })?;
    let mut layout = Mapping::new();
    layout.insert(key("name"), key("direct"));
    layout.insert(key("match"), disk);
    let mut storage = Mapping::new();
    storage.insert(key("layout"), Value::Mapping(layout));
    root.insert(key("storage"), Value::Mapping(storage));

    if let Some(net) = i.network_config {
        let mut net = parse_yaml("network-config", net)?;
        // Accept both `network: {version: 2, ...}` and the bare v2 mapping.
        if let Some(inner) = net.get("network").cloned() {
            net = inner;
        }
        root.insert(key("network"), net);
    }

    let mut ssh = Mapping::new();
    ssh.insert(key("install-server"), Value::Bool(true));
    ssh.insert(key("allow-pw"), Value::Bool(false));
    ssh.insert(
        key("authorized-keys"),
        Value::Sequence(
            i.cluster
                .admin
                .ssh_authorized_keys
                .iter()
                .map(|k| key(k))
                .collect(),
        ),
    );
    root.insert(key("ssh"), Value::Mapping(ssh));

    // The installed system's cloud-init gets the node's user-data (users,
    // keys, hostname, host key handling) as the baked seed has it. It also
    // creates the admin user, so no `identity` section (subiquity takes one
    // or the other; both would create the user twice).
    let user_data = parse_yaml("user-data", i.user_data)?;
    if !user_data.is_mapping() {
        return Err(AutoinstallError {
            what: "user-data".into(),
            detail: "is not a mapping (#cloud-config)".into(),
        });
    }
    root.insert(key("user-data"), user_data);

    let payload = format!("{CDROM}{PAYLOAD_PATH}");
    let mut late = vec![sha_check(&i.payload_sha256, &payload)];
    for r in i.removals.iter().filter(|r| r.partition == "root") {
        let dir = r.dir.trim_end_matches('/');
        late.push(format!(
            "rm -f -- /target{}/{}*",
            shell_quote(dir),
            shell_quote(&r.prefix)
        ));
    }
    late.push(untar(&payload));
    root.insert(
        key("late-commands"),
        Value::Sequence(late.into_iter().map(Value::String).collect()),
    );
    root.insert(key("shutdown"), key(&i.node.install.shutdown));

    let text = serde_yaml_ng::to_string(&Value::Mapping(root)).map_err(|e| AutoinstallError {
        what: "autoinstall.yaml".into(),
        detail: e.to_string(),
    })?;
    Ok(format!(
        "# Written by imgbuild {} for node {}: installs unattended, wiping the disk `storage.layout.match` selects.\n{text}",
        env!("CARGO_PKG_VERSION"),
        i.node.name
    ))
}

#[cfg(test)]
mod tests {
    use super::shell_quote;

    #[test]
    fn quotes() {
        assert_eq!(shell_quote("a'b"), "'a'\\''b'");
    }
}
