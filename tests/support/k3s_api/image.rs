//! What k3s would start with on a flashed image, read from the image itself
//! with e2fsprogs' `debugfs` on `image?offset=N` of each partition (found with
//! `sfdisk -J`), and pyfatfs (tests/fixtures/fat.py) for a FAT seed (mtools
//! misreads the RK1's CIDATA volume: FAT32 by its BPB, with fewer clusters
//! than FAT32's minimum, it finds no files there): the merged k3s configuration
//! (/etc/rancher/k3s/config.yaml, then config.yaml.d/*.yaml in name order;
//! later files win and `key+:` appends, as k3s `pkg/configfilearg` reads
//! them) and whether cloud-init mounts a data disk over k3s's datastore.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use serde_yaml_ng::Value;

/// What the flashed image tells about the node's k3s.
#[derive(Debug, Clone, Default)]
pub struct ImageFacts {
    /// Takes a server-only key (cluster-init, agent-token, tls-san, ...).
    pub server: bool,
    pub cluster_init: bool,
    /// The `server:` URL (a joining server or an agent).
    pub server_url: Option<String>,
    pub node_name: Option<String>,
    /// `node-label` entries (applied at a Node's first registration only).
    pub labels: BTreeMap<String, String>,
    /// cloud-init mounts a data disk at or above /var/lib/rancher/k3s/server/db.
    pub data_kept: bool,
    /// The configuration files read, in order.
    pub files: Vec<String>,
}

const SERVER_KEYS: &[&str] = &[
    "cluster-init",
    "agent-token",
    "agent-token-file",
    "tls-san",
    "disable",
    "write-kubeconfig-mode",
    "cluster-reset",
    "datastore-endpoint",
];

/// Byte offset and length of the image's partitions ((0, 0) when it has no
/// table).
fn partitions(image: &Path) -> Vec<(u64, u64)> {
    let out = Command::new("sfdisk")
        .arg("-J")
        .arg(image)
        .output()
        .unwrap();
    let parsed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    let table = &parsed["partitiontable"];
    let sector = table["sectorsize"].as_u64().unwrap_or(512);
    let parts: Vec<(u64, u64)> = table["partitions"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| Some((p["start"].as_u64()? * sector, p["size"].as_u64()? * sector)))
                .collect()
        })
        .unwrap_or_default();
    if parts.is_empty() {
        vec![(0, 0)]
    } else {
        parts
    }
}

/// `/user-data` from the FAT file system at `offset` (`length` bytes) of
/// `image`, if it is one and holds it.
fn fat_user_data(image: &Path, offset: u64, length: u64) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(image).ok()?;
    f.seek(SeekFrom::Start(offset)).ok()?;
    let mut part = Vec::new();
    f.take(length).read_to_end(&mut part).ok()?;
    // The boot sector's signature and a FAT file system type string.
    let fat = part.len() > 512
        && part[510..512] == [0x55, 0xaa]
        && (part[54..59] == *b"FAT12" || part[54..59] == *b"FAT16" || part[82..87] == *b"FAT32");
    if !fat {
        return None;
    }
    let tmp = tempfile::NamedTempFile::new_in(crate::support::harness::scratch_root()).ok()?;
    std::fs::write(tmp.path(), &part).ok()?;
    let out = Command::new(crate::support::harness::python().trim_matches('\''))
        .arg(crate::support::harness::repo().join("tests/fixtures/fat.py"))
        .arg("cat")
        .arg(tmp.path())
        .arg("/user-data")
        .output()
        .ok()?;
    (out.status.success() && !out.stdout.is_empty())
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn debugfs(image: &Path, offset: u64, request: &str) -> Option<String> {
    let out = Command::new("debugfs")
        .arg("-R")
        .arg(request)
        .arg(format!("{}?offset={offset}", image.display()))
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    (out.status.success() && !text.is_empty()).then_some(text)
}

/// Merges one k3s config file into `into` (later wins; `key+` appends).
fn merge_config(into: &mut BTreeMap<String, Value>, text: &str, file: &str) {
    let doc: Value = serde_yaml_ng::from_str(text).unwrap_or_else(|e| panic!("{file}: {e}"));
    let Some(map) = doc.as_mapping() else {
        return;
    };
    for (k, v) in map {
        let key = k.as_str().unwrap_or_default();
        if let Some(base) = key.strip_suffix('+') {
            let mut list = match into.remove(base) {
                Some(Value::Sequence(s)) => s,
                Some(Value::Null) | None => Vec::new(),
                Some(other) => vec![other],
            };
            match v {
                Value::Sequence(s) => list.extend(s.iter().cloned()),
                other => list.push(other.clone()),
            }
            into.insert(base.to_string(), Value::Sequence(list));
        } else {
            into.insert(key.to_string(), v.clone());
        }
    }
}

fn truthy(v: Option<&Value>) -> bool {
    match v {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => s == "true",
        _ => false,
    }
}

/// Whether a user-data document mounts something over k3s's etcd data.
fn mounts_datastore(user_data: &str) -> bool {
    let Ok(doc) = serde_yaml_ng::from_str::<Value>(user_data) else {
        return false;
    };
    let db = "/var/lib/rancher/k3s/server/db";
    doc["mounts"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|m| m.as_sequence()?.get(1)?.as_str().map(str::to_string))
        .any(|m| {
            let m = m.trim_end_matches('/');
            !m.is_empty() && (db == m || db.starts_with(&format!("{m}/")))
        })
}

/// Reads the facts of `image`; panics (the test fails) when it has no k3s
/// configuration at all.
pub fn read(image: &Path) -> ImageFacts {
    let parts = partitions(image);
    let conf = "/etc/rancher/k3s/config.yaml";
    let root = parts
        .iter()
        .map(|&(o, _)| o)
        .find(|&o| debugfs(image, o, &format!("cat {conf}")).is_some())
        .unwrap_or_else(|| panic!("{}: no partition holds {conf}", image.display()));
    let mut merged = BTreeMap::new();
    let mut facts = ImageFacts::default();
    merge_config(
        &mut merged,
        &debugfs(image, root, &format!("cat {conf}")).unwrap(),
        conf,
    );
    facts.files.push(conf.to_string());
    let dir = "/etc/rancher/k3s/config.yaml.d";
    let mut names: Vec<String> = debugfs(image, root, &format!("ls -p {dir}"))
        .unwrap_or_default()
        .lines()
        // `/inode/mode/uid/gid/name/size/`
        .filter_map(|l| l.split('/').nth(5).map(str::to_string))
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    names.sort();
    for n in names {
        let path = format!("{dir}/{n}");
        if let Some(text) = debugfs(image, root, &format!("cat {path}")) {
            merge_config(&mut merged, &text, &path);
            facts.files.push(path);
        }
    }
    facts.server = SERVER_KEYS.iter().any(|k| merged.contains_key(*k));
    facts.cluster_init = truthy(merged.get("cluster-init"));
    facts.server_url = merged
        .get("server")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    facts.node_name = merged
        .get("node-name")
        .and_then(Value::as_str)
        .map(str::to_string);
    for l in merged
        .get("node-label")
        .and_then(Value::as_sequence)
        .into_iter()
        .flatten()
    {
        if let Some((k, v)) = l.as_str().and_then(|s| s.split_once('=')) {
            facts.labels.insert(k.to_string(), v.to_string());
        }
    }
    let seed = debugfs(image, root, "cat /var/lib/cloud/seed/nocloud/user-data").or_else(|| {
        parts
            .iter()
            .filter(|&&(o, _)| o != root)
            .find_map(|&(o, len)| fat_user_data(image, o, len))
    });
    facts.data_kept = seed.as_deref().is_some_and(mounts_datastore);
    facts
}

#[test]
fn mounts_over_the_datastore_are_found() {
    assert!(mounts_datastore(
        "#cloud-config\nmounts:\n  - [LABEL=data, /var/lib/rancher, ext4, defaults, \"0\", \"2\"]\n"
    ));
    assert!(mounts_datastore("mounts:\n  - [LABEL=d, /var/, ext4]\n"));
    assert!(!mounts_datastore(
        "mounts:\n  - [LABEL=d, /var/lib/longhorn, ext4]\n"
    ));
    assert!(!mounts_datastore(
        "mounts:\n  - [LABEL=d, /var/lib/ranch, ext4]\n"
    ));
    assert!(!mounts_datastore("packages: [x]\n"));
}
