//! `imgbuild import ansible INVENTORY [--group-vars FILE] [-o DIR]`: profiles
//! from the reference Ansible project's inventory (`config::ansible` maps the
//! keys), written like `init` writes them (never over a file) and checked.

use std::path::{Path, PathBuf};

use anyhow::anyhow;

use super::init::KeySource;
use super::{CommandError, Result};
use crate::config::ansible::{self, ImportChoices, Note};

pub struct ImportSettings {
    pub inventory: PathBuf,
    pub group_vars: Option<PathBuf>,
    pub out_dir: PathBuf,
    pub name: Option<String>,
    pub admin_user: Option<String>,
    pub ssh_keys: KeySource,
}

#[derive(Debug)]
pub struct ImportReport {
    pub written: Vec<PathBuf>,
    pub notes: Vec<Note>,
    pub assumed: Vec<String>,
    pub check: super::check::CheckReport,
}

/// Reads an inventory or group_vars file, within the size cap of
/// configuration files.
fn read(path: &Path) -> Result<String> {
    use crate::util::prescan::{self, ReadError};
    let bytes = prescan::read_file(path, prescan::CONFIG).map_err(|e| match e {
        ReadError::Limit(e) => CommandError::Invalid(e.into()),
        e => CommandError::Failed(e.into()),
    })?;
    String::from_utf8(bytes)
        .map_err(|_| CommandError::Invalid(anyhow!("{}: is not UTF-8 text", path.display())))
}

/// A path for a one-line comment: quoted, control and line-breaking
/// characters escaped.
fn quoted(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

/// The node file of inventory host `name`, refused before anything is
/// written when the name is not one `check` accepts.
fn node_path(name: &str, inventory: &Path) -> Result<PathBuf> {
    super::init::node_file(name).map_err(|e| {
        CommandError::Invalid(anyhow!(
            "{}: host {e}; rename the host in the inventory",
            inventory.display()
        ))
    })
}

pub fn import_ansible(s: &ImportSettings, build_time: u64) -> Result<ImportReport> {
    let invalid = |path: &Path, e: ansible::AnsibleError| {
        CommandError::Invalid(anyhow!("{}: {e}", path.display()))
    };
    let inv =
        ansible::parse_inventory(&read(&s.inventory)?).map_err(|e| invalid(&s.inventory, e))?;
    // group_vars/all.yml: given, or beside the inventory as Ansible finds it.
    let gv_path = s.group_vars.clone().or_else(|| {
        let p = s
            .inventory
            .parent()
            .unwrap_or(Path::new("."))
            .join("group_vars/all.yml");
        p.is_file().then_some(p)
    });
    let group_vars = match &gv_path {
        Some(p) => {
            let text = read(p)?;
            let what = p.display().to_string();
            crate::util::prescan::yaml(&what, text.as_bytes(), crate::util::prescan::CONFIG)
                .map_err(|e| CommandError::Invalid(e.into()))?;
            let v: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text)
                .map_err(|e| CommandError::Invalid(anyhow!("{}: {e}", p.display())))?;
            match v {
                serde_yaml_ng::Value::Mapping(m) => m,
                serde_yaml_ng::Value::Null => Default::default(),
                _ => {
                    return Err(CommandError::Invalid(anyhow!(
                        "{}: expected a map of variables",
                        p.display()
                    )));
                }
            }
        }
        None => Default::default(),
    };
    let mut assumed = Vec::new();
    let name = s.name.clone().unwrap_or_else(|| {
        assumed.push("cluster name (--name): homelab".to_string());
        "homelab".into()
    });
    let ssh_keys = match &s.ssh_keys {
        KeySource::Given(k) => k.clone(),
        KeySource::Search(dir) => {
            let (key, file) = super::init::first_public_key(dir.as_deref())?;
            assumed.push(format!("admin SSH key (--ssh-key): {}", file.display()));
            vec![key]
        }
    };
    let choices = ImportChoices {
        name,
        admin_user: s.admin_user.clone(),
        ssh_keys,
    };
    let source = match &gv_path {
        Some(p) => format!("{} and {}", quoted(&s.inventory), quoted(p)),
        None => quoted(&s.inventory),
    };
    let imported =
        ansible::import(&inv, &group_vars, &choices).map_err(|e| invalid(&s.inventory, e))?;

    let yaml = |m: &serde_yaml_ng::Mapping| {
        serde_yaml_ng::to_string(m).map_err(|e| CommandError::Failed(e.into()))
    };
    let mut cluster_doc = serde_yaml_ng::Mapping::new();
    cluster_doc.insert("cluster".into(), imported.cluster.clone().into());
    let mut defaults = serde_yaml_ng::Mapping::new();
    let mut k3s = serde_yaml_ng::Mapping::new();
    k3s.insert("role".into(), "agent".into());
    defaults.insert("k3s".into(), k3s.into());
    let mut net = serde_yaml_ng::Mapping::new();
    net.insert("dhcp".into(), true.into());
    defaults.insert("network".into(), net.into());
    cluster_doc.insert("defaults".into(), defaults.into());
    // Quoted with escapes: a path may hold a newline, which would end the
    // comment and start YAML keys in every file.
    let header = format!("# Imported by `imgbuild import ansible` from {source}.\n");
    let mut files = vec![(
        PathBuf::from(super::init::CLUSTER_PATH),
        format!("{header}{}", yaml(&cluster_doc)?),
    )];
    for (node, m) in &imported.nodes {
        files.push((
            node_path(node, &s.inventory)?,
            format!("{header}{}", yaml(m)?),
        ));
    }
    let (written, check) = super::init::write_checked(
        &s.out_dir,
        &files,
        build_time,
        "import into another directory with -o DIR",
    )?;
    Ok(ImportReport {
        written,
        notes: imported.notes,
        assumed,
        check,
    })
}
