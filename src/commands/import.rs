//! `imgbuild import ansible INVENTORY [--group-vars FILE] [-o DIR]`: profiles
//! from the reference Ansible project's inventory (`config::ansible` maps the
//! keys), written like `init` writes them (never over a file) and checked.

use std::path::{Path, PathBuf};

use anyhow::anyhow;

use super::init::KeySource;
use super::{CommandError, Paths, Result};
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

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path)
        .map_err(|e| CommandError::Failed(anyhow!("{}: {e}", path.display())))
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
            let v: serde_yaml_ng::Value = serde_yaml_ng::from_str(&read(p)?)
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
    let source = gv_path
        .as_ref()
        .map(|p| format!("{} and {}", s.inventory.display(), p.display()))
        .unwrap_or_else(|| s.inventory.display().to_string());
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
    let header = format!("# Imported by `imgbuild import ansible` from {source}.\n");
    let mut files = vec![(
        PathBuf::from("profiles/cluster.yaml"),
        format!("{header}{}", yaml(&cluster_doc)?),
    )];
    for (node, m) in &imported.nodes {
        files.push((
            PathBuf::from(format!("profiles/nodes/{node}.yaml")),
            format!("{header}{}", yaml(m)?),
        ));
    }
    let existing: Vec<String> = files
        .iter()
        .map(|(p, _)| s.out_dir.join(p))
        .filter(|p| p.symlink_metadata().is_ok())
        .map(|p| p.display().to_string())
        .collect();
    if !existing.is_empty() {
        return Err(CommandError::usage(format!(
            "refusing to overwrite {}; import into another directory with -o DIR",
            super::shorten(&existing)
        )));
    }
    let mut written = Vec::new();
    for (rel, text) in &files {
        let p = s.out_dir.join(rel);
        super::init::write_new(&p, text)?;
        written.push(p);
    }
    if let Some(p) = super::init::gitignore(&s.out_dir)? {
        written.push(p);
    }
    let paths = Paths::resolve(s.out_dir.join("profiles"), None, None);
    let check = super::check::check(&paths, build_time)?;
    Ok(ImportReport {
        written,
        notes: imported.notes,
        assumed,
        check,
    })
}
