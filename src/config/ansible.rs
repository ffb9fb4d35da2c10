//! The reference Ansible project's inventory (`hosts.yml` or INI) and
//! `group_vars/all.yml`, read and mapped to imgbuild profile keys. Pure:
//! text in, profile YAML and a note per inventory key out. Every key either
//! maps to a profile key or is reported as not carried over, with why.

use std::collections::BTreeMap;

use serde_yaml_ng::{Mapping, Value};

/// One inventory key and what became of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// `host node02`, `group tp1_nodes`, `group_vars` ...
    pub scope: String,
    pub key: String,
    /// `Some(profile key)` when carried over.
    pub to: Option<String>,
    /// Why it is not carried over, or how it maps.
    pub why: String,
}

/// An inventory: groups with their hosts (and host variables), child groups and vars.
#[derive(Debug, Default)]
pub struct Inventory {
    pub groups: BTreeMap<String, Group>,
}

#[derive(Debug, Default)]
pub struct Group {
    pub hosts: BTreeMap<String, Mapping>,
    pub children: Vec<String>,
    pub vars: Mapping,
}

#[derive(Debug, thiserror::Error)]
pub enum AnsibleError {
    #[error("line {line}: {reason}")]
    Ini { line: usize, reason: String },
    #[error("not an Ansible YAML inventory: {0}")]
    Yaml(String),
    #[error("{0}")]
    Layout(String),
    /// Refused by the size or nesting cap before any parser saw it.
    #[error(transparent)]
    Limit(#[from] crate::util::prescan::PrescanError),
    /// An INI value refused by the cap before it was parsed as YAML.
    #[error("line {line}: {source}")]
    ValueLimit {
        line: usize,
        source: crate::util::prescan::PrescanError,
    },
}

/// Parses a YAML (`all: children: ...`) or INI inventory, told apart by
/// content, within the size cap of configuration files (and each YAML text
/// within the nesting cap) before any of it is parsed.
pub fn parse_inventory(text: &str) -> Result<Inventory, AnsibleError> {
    use crate::util::prescan;
    prescan::size("the inventory", text.len() as u64, prescan::CONFIG)?;
    let first = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with(';'));
    match first {
        Some(l) if l.starts_with('[') => parse_ini(text),
        _ => parse_yaml(text),
    }
}

fn parse_yaml(text: &str) -> Result<Inventory, AnsibleError> {
    use crate::util::prescan;
    prescan::yaml("the inventory", text.as_bytes(), prescan::CONFIG)?;
    let v: Value = serde_yaml_ng::from_str(text).map_err(|e| AnsibleError::Yaml(e.to_string()))?;
    let top = v
        .as_mapping()
        .ok_or_else(|| AnsibleError::Yaml("the top level must be a map of groups".into()))?;
    let mut inv = Inventory::default();
    for (name, g) in top {
        yaml_group(&mut inv, &key_str(name)?, g)?;
    }
    Ok(inv)
}

fn key_str(v: &Value) -> Result<String, AnsibleError> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        _ => Err(AnsibleError::Yaml(format!("{v:?} is not a name"))),
    }
}

fn yaml_group(inv: &mut Inventory, name: &str, g: &Value) -> Result<(), AnsibleError> {
    let mut group = Group::default();
    if let Some(m) = g.as_mapping() {
        for (k, v) in m {
            match key_str(k)?.as_str() {
                "hosts" => {
                    for (h, vars) in v.as_mapping().into_iter().flatten() {
                        let vars = vars.as_mapping().cloned().unwrap_or_default();
                        group.hosts.insert(key_str(h)?, vars);
                    }
                }
                "vars" => group.vars = v.as_mapping().cloned().unwrap_or_default(),
                "children" => {
                    for (c, cg) in v.as_mapping().into_iter().flatten() {
                        let c = key_str(c)?;
                        group.children.push(c.clone());
                        yaml_group(inv, &c, cg)?;
                    }
                }
                other => {
                    return Err(AnsibleError::Yaml(format!(
                        "group {name}: unexpected key {other:?} (expected hosts, vars or children)"
                    )));
                }
            }
        }
    }
    let entry = inv.groups.entry(name.to_string()).or_default();
    entry.hosts.extend(group.hosts);
    entry.children.extend(group.children);
    entry.vars.extend(group.vars);
    Ok(())
}

/// INI values: `true`/`1`/numbers typed as YAML would, quotes removed.
fn ini_value(v: &str, line: usize) -> Result<Value, AnsibleError> {
    use crate::util::prescan;
    let unq = v
        .strip_prefix('"')
        .and_then(|r| r.strip_suffix('"'))
        .or_else(|| v.strip_prefix('\'').and_then(|r| r.strip_suffix('\'')));
    Ok(match unq {
        Some(s) => Value::String(s.to_string()),
        None => {
            prescan::yaml("the value", v.as_bytes(), prescan::CONFIG)
                .map_err(|source| AnsibleError::ValueLimit { line, source })?;
            serde_yaml_ng::from_str(v).unwrap_or_else(|_| Value::String(v.to_string()))
        }
    })
}

fn ini_pairs(words: &[&str], line: usize) -> Result<Mapping, AnsibleError> {
    let mut m = Mapping::new();
    for w in words {
        let (k, v) = w.split_once('=').ok_or_else(|| AnsibleError::Ini {
            line,
            reason: format!("{w:?} must be key=value"),
        })?;
        m.insert(Value::String(k.to_string()), ini_value(v, line)?);
    }
    Ok(m)
}

fn parse_ini(text: &str) -> Result<Inventory, AnsibleError> {
    let mut inv = Inventory::default();
    let mut section: Option<(String, &str)> = None;
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let l = raw.trim();
        if l.is_empty() || l.starts_with('#') || l.starts_with(';') {
            continue;
        }
        if let Some(h) = l.strip_prefix('[') {
            let h = h.strip_suffix(']').ok_or_else(|| AnsibleError::Ini {
                line,
                reason: format!("{l:?}: a section header ends with ]"),
            })?;
            let (name, kind) = match h.split_once(':') {
                Some((n, k @ ("vars" | "children"))) => (n, k),
                Some((_, k)) => {
                    return Err(AnsibleError::Ini {
                        line,
                        reason: format!("unknown section kind {k:?} (expected :vars or :children)"),
                    });
                }
                None => (h, "hosts"),
            };
            inv.groups.entry(name.to_string()).or_default();
            section = Some((name.to_string(), kind));
            continue;
        }
        let Some((group, kind)) = &section else {
            return Err(AnsibleError::Ini {
                line,
                reason: "a host line before any [group] header".into(),
            });
        };
        // Shell-like words; values with spaces need quotes, which Ansible allows.
        let words = split_words(l);
        let words: Vec<&str> = words.iter().map(String::as_str).collect();
        let g = inv.groups.get_mut(group).expect("inserted with its header");
        match *kind {
            "hosts" => {
                let vars = ini_pairs(&words[1..], line)?;
                g.hosts.insert(words[0].to_string(), vars);
            }
            "children" => g.children.push(words[0].to_string()),
            _ => {
                let (k, v) = l.split_once('=').ok_or_else(|| AnsibleError::Ini {
                    line,
                    reason: format!("{l:?} must be key=value"),
                })?;
                g.vars.insert(
                    Value::String(k.trim().to_string()),
                    ini_value(v.trim(), line)?,
                );
            }
        }
    }
    Ok(inv)
}

fn split_words(l: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote = None;
    for c in l.chars() {
        match (quote, c) {
            (None, '"' | '\'') => {
                quote = Some(c);
                cur.push(c);
            }
            (Some(q), c) if c == q => {
                quote = None;
                cur.push(c);
            }
            (None, c) if c.is_whitespace() => {
                if !cur.is_empty() {
                    out.push(std::mem::take(&mut cur));
                }
            }
            (_, c) => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// What the import produces: profile YAML and the notes.
#[derive(Debug)]
pub struct Imported {
    pub cluster: Mapping,
    /// Node name -> its node file's keys.
    pub nodes: BTreeMap<String, Mapping>,
    pub notes: Vec<Note>,
}

/// What the inventory does not say, given by the user or defaulted.
pub struct ImportChoices {
    pub name: String,
    pub admin_user: Option<String>,
    pub ssh_keys: Vec<String>,
}

fn s(v: &str) -> Value {
    Value::String(v.to_string())
}

fn as_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Bool(b) => *b,
        Value::String(s) => matches!(s.to_lowercase().as_str(), "true" | "yes" | "1" | "on"),
        Value::Number(n) => n.as_u64() == Some(1),
        _ => false,
    }
}

fn map_at<'a>(m: &'a mut Mapping, key: &str) -> &'a mut Mapping {
    let e = m
        .entry(s(key))
        .or_insert_with(|| Value::Mapping(Mapping::new()));
    if !e.is_mapping() {
        *e = Value::Mapping(Mapping::new());
    }
    e.as_mapping_mut().expect("made a mapping")
}

/// The notes of an import, in the order the inventory is walked.
#[derive(Default)]
struct Notes(Vec<Note>);

impl Notes {
    fn add(&mut self, scope: &str, key: &str, to: Option<&str>, why: &str) {
        self.0.push(Note {
            scope: scope.into(),
            key: key.into(),
            to: to.map(str::to_string),
            why: why.into(),
        })
    }
}

/// The nodes found so far: their node file keys and their inventory
/// variables, and the Turing Pi boards.
#[derive(Default)]
struct Found {
    boards: Vec<Value>,
    nodes: BTreeMap<String, Mapping>,
    hosts: BTreeMap<String, Mapping>,
}

/// Maps the reference layout (REFERENCE §5) to profiles.
pub fn import(
    inv: &Inventory,
    group_vars: &Mapping,
    choices: &ImportChoices,
) -> Result<Imported, AnsibleError> {
    let mut notes = Notes::default();
    // group_vars/all.yml, with [all:vars] / all.vars of the inventory under it.
    let mut gv = inv
        .groups
        .get("all")
        .map(|g| g.vars.clone())
        .unwrap_or_default();
    gv.extend(group_vars.clone());
    let var = |k: &str| gv.get(k).and_then(as_text);

    let bmcs = inv.groups.get("turing_pis").ok_or_else(|| {
        AnsibleError::Layout(
            "no `turing_pis` group: this is not the reference layout (turing_pis, <bmc>_nodes, extra_nodes)".into(),
        )
    })?;
    let mut found = Found::default();
    for (bmc, vars) in &bmcs.hosts {
        turing_pi_board(inv, bmc, vars, &mut found, &mut notes)?;
    }
    if let Some(g) = inv.groups.get("extra_nodes") {
        extra_nodes(g, &mut found, &mut notes);
    }
    other_groups(inv, bmcs, &mut notes);
    if found.nodes.is_empty() {
        return Err(AnsibleError::Layout(
            "no nodes: expected hosts in <bmc>_nodes or extra_nodes".into(),
        ));
    }
    let cp = control_plane(var("control_plane"), &mut found.nodes)?;
    let several = found.nodes.len() > 1;
    let domain = var("local_domain");
    let server = found
        .hosts
        .get(&cp)
        .and_then(|h| h.get("ansible_host"))
        .and_then(as_text)
        .unwrap_or_else(|| match &domain {
            Some(d) => format!("{cp}.{d}"),
            None => cp.clone(),
        });
    let cluster = cluster_keys(&var, choices, &server, domain.as_deref(), found.boards);
    group_vars_notes(&gv, &cp, &server, several, &mut notes);
    if choices.admin_user.is_some() && var("ansible_account").is_some() {
        notes.add(
            "flags",
            "--admin-user",
            None,
            "ansible_account wins over --admin-user",
        );
    }
    Ok(Imported {
        cluster,
        nodes: found.nodes,
        notes: notes.0,
    })
}

/// A host of `turing_pis`: a Turing Pi board (its BMC), and the nodes of its
/// `<bmc>_nodes` group.
fn turing_pi_board(
    inv: &Inventory,
    bmc: &str,
    vars: &Mapping,
    found: &mut Found,
    notes: &mut Notes,
) -> Result<(), AnsibleError> {
    let scope = format!("turing_pis host {bmc}");
    let host = vars
        .get("ansible_host")
        .and_then(as_text)
        .unwrap_or(bmc.to_string());
    let mut b = Mapping::new();
    b.insert(s("name"), s(bmc));
    b.insert(s("bmc"), s(&host));
    found.boards.push(Value::Mapping(b));
    for (k, _) in vars {
        let k = as_text(k).unwrap_or_default();
        match k.as_str() {
            "ansible_host" => notes.add(
                &scope,
                &k,
                Some("cluster.turing_pi_boards[].bmc"),
                "the BMC's address",
            ),
            _ => notes.add(
                &scope,
                &k,
                None,
                "a BMC host variable imgbuild has no use for (it talks to bmcd's HTTPS API, not over SSH)",
            ),
        }
    }
    notes.add(
        &scope,
        "(host name)",
        Some("cluster.turing_pi_boards[].name"),
        "the board's name; nodes of <name>_nodes sit in it",
    );
    let group = format!("{bmc}_nodes");
    let Some(g) = inv.groups.get(&group) else {
        notes.add(
            &scope,
            &group,
            None,
            "no such group: this BMC has no nodes in the inventory",
        );
        return Ok(());
    };
    for (name, vars) in &g.hosts {
        let scope = format!("{group} host {name}");
        let n = board_node(bmc, &scope, vars, notes)?;
        found.nodes.insert(name.clone(), n);
        found.hosts.insert(name.clone(), vars.clone());
    }
    Ok(())
}

/// A host of `<bmc>_nodes`: a module (`type`) in a slot (`slot_num`) of the
/// board `bmc`.
fn board_node(
    bmc: &str,
    scope: &str,
    vars: &Mapping,
    notes: &mut Notes,
) -> Result<Mapping, AnsibleError> {
    let mut n = Mapping::new();
    let board = match vars.get("type").and_then(as_text).as_deref() {
        Some("rk1") => "rk1",
        Some("pi4") | Some("cm4") => "cm4",
        Some(other) => {
            return Err(AnsibleError::Layout(format!(
                "{scope}: type {other:?} is not rk1 or pi4"
            )));
        }
        None => {
            return Err(AnsibleError::Layout(format!(
                "{scope}: no `type` (rk1 or pi4)"
            )));
        }
    };
    n.insert(s("board"), s(board));
    let slot = vars
        .get("slot_num")
        .and_then(as_text)
        .and_then(|v| v.parse::<u8>().ok())
        .filter(|v| (1..=4).contains(v))
        .ok_or_else(|| AnsibleError::Layout(format!("{scope}: `slot_num` must be 1, 2, 3 or 4")))?;
    let mut tp = Mapping::new();
    tp.insert(s("board"), s(bmc));
    tp.insert(s("slot"), Value::Number(slot.into()));
    n.insert(s("turing_pi"), Value::Mapping(tp));
    if board == "rk1" {
        // The Ansible flow labels RK1 nodes so; so does the example profile.
        map_at(map_at(&mut n, "k3s"), "labels").insert(s("node-type"), s("rk1"));
    }
    for (k, _) in vars {
        let k = as_text(k).unwrap_or_default();
        match k.as_str() {
            "type" => notes.add(
                scope,
                &k,
                Some("board"),
                &format!(
                    "{board} (pi4 is the CM4 module); RK1 nodes also get the label node-type=rk1, as the playbook set"
                ),
            ),
            "slot_num" => notes.add(scope, &k, Some("turing_pi.slot"), "the same slot"),
            "root_dev" => notes.add(
                scope,
                &k,
                None,
                "moving the root file system to NVMe is not done by imgbuild: the image boots and runs from the module's own eMMC, which the BMC flashes. To put k3s's data on the NVMe disk, add `storage: [{device: /dev/nvme0n1, mount: /var/lib/rancher}]` to the node (formatted on first boot only when blank: a disk still holding the old root is left alone until you wipe it)",
            ),
            _ => other_host_key(notes, scope, &k),
        }
    }
    Ok(n)
}

/// The hosts of `extra_nodes`: x86 machines, some with a GPU, some
/// workstations kept free of workloads.
fn extra_nodes(g: &Group, found: &mut Found, notes: &mut Notes) {
    for (name, vars) in &g.hosts {
        let scope = format!("extra_nodes host {name}");
        let mut n = Mapping::new();
        n.insert(s("board"), s("nuc"));
        notes.add(
            &scope,
            "(group extra_nodes)",
            Some("board"),
            "nuc: extra nodes are taken to be x86 machines booting the Ubuntu cloud image; change `board:` otherwise",
        );
        for (k, v) in vars {
            let k = as_text(k).unwrap_or_default();
            extra_node_key(&mut n, &scope, &k, v, notes);
        }
        found.nodes.insert(name.clone(), n);
        found.hosts.insert(name.clone(), vars.clone());
    }
}

/// One variable of an `extra_nodes` host, into the node's keys `n`.
fn extra_node_key(n: &mut Mapping, scope: &str, k: &str, v: &Value, notes: &mut Notes) {
    match k {
        "nvidia_gpu_node" => {
            if truthy(v) {
                n.insert(s("nvidia"), Value::Bool(true));
            }
            notes.add(
                scope,
                k,
                Some("nvidia"),
                "the GPU runtime and the nvidia.com/gpu.present=true label",
            );
        }
        "workstation" => {
            if truthy(v) {
                let k3s = map_at(n, "k3s");
                map_at(k3s, "labels").insert(s("node-role"), s("workstation"));
                k3s.insert(
                    s("taints"),
                    Value::Sequence(vec![s("workstation=true:NoSchedule")]),
                );
            }
            notes.add(
                scope,
                k,
                Some("k3s.labels.node-role, k3s.taints"),
                "label node-role=workstation and taint workstation=true:NoSchedule, as the playbook set",
            );
        }
        "node_ip" => {
            if let Some(ip) = as_text(v) {
                map_at(n, "k3s").insert(s("node_ip"), s(&ip));
            }
            notes.add(scope, k, Some("k3s.node_ip"), "the same");
        }
        "flannel_iface" => {
            if let Some(i) = as_text(v) {
                map_at(n, "k3s").insert(s("flannel_iface"), s(&i));
            }
            notes.add(scope, k, Some("k3s.flannel_iface"), "the same");
        }
        _ => other_host_key(notes, scope, k),
    }
}

/// Groups outside the reference layout, and group variables other than
/// all's: not imported, each noted.
fn other_groups(inv: &Inventory, bmcs: &Group, notes: &mut Notes) {
    for (gname, g) in &inv.groups {
        let known = gname == "all"
            || gname == "turing_pis"
            || gname == "extra_nodes"
            || gname
                .strip_suffix("_nodes")
                .is_some_and(|b| bmcs.hosts.contains_key(b));
        if !known && !g.hosts.is_empty() {
            notes.add(
                &format!("group {gname}"),
                "(hosts)",
                None,
                "not a group of the reference layout: its hosts are not imported",
            );
        }
        if gname != "all" {
            for (k, _) in &g.vars {
                notes.add(
                    &format!("group {gname} vars"),
                    &as_text(k).unwrap_or_default(),
                    None,
                    "group variables other than all's are not part of the reference layout",
                );
            }
        }
    }
}

/// `control_plane`: the server that creates the cluster. With other nodes
/// beside it, it is tainted against workloads, as the playbook did.
fn control_plane(
    cp: Option<String>,
    nodes: &mut BTreeMap<String, Mapping>,
) -> Result<String, AnsibleError> {
    let cp = cp.ok_or_else(|| {
        AnsibleError::Layout(
            "group_vars: no `control_plane` (the node that runs the k3s server)".into(),
        )
    })?;
    if !nodes.contains_key(&cp) {
        return Err(AnsibleError::Layout(format!(
            "group_vars: control_plane {cp:?} is not a node of the inventory ({})",
            nodes.keys().cloned().collect::<Vec<_>>().join(", ")
        )));
    }
    let several = nodes.len() > 1;
    let k3s = map_at(nodes.get_mut(&cp).expect("checked"), "k3s");
    k3s.insert(s("role"), s("server"));
    k3s.insert(s("cluster_init"), Value::Bool(true));
    if several {
        let taints = k3s
            .entry(s("taints"))
            .or_insert_with(|| Value::Sequence(Vec::new()));
        if let Value::Sequence(t) = taints {
            t.push(s("node-role.kubernetes.io/control-plane=true:NoSchedule"));
        }
    }
    Ok(cp)
}

/// The `cluster:` keys: name, server, domain, admin, boards, k3s release.
fn cluster_keys(
    var: &dyn Fn(&str) -> Option<String>,
    choices: &ImportChoices,
    server: &str,
    domain: Option<&str>,
    boards: Vec<Value>,
) -> Mapping {
    let mut cluster = Mapping::new();
    cluster.insert(s("name"), s(&choices.name));
    cluster.insert(s("server"), s(server));
    if let Some(d) = domain {
        cluster.insert(s("domain"), s(d));
    }
    let mut admin = Mapping::new();
    let user = var("ansible_account")
        .or(choices.admin_user.clone())
        .unwrap_or_else(|| "admin".into());
    admin.insert(s("user"), s(&user));
    admin.insert(
        s("ssh_authorized_keys"),
        Value::Sequence(choices.ssh_keys.iter().map(|k| s(k)).collect()),
    );
    cluster.insert(s("admin"), Value::Mapping(admin));
    if !boards.is_empty() {
        cluster.insert(s("turing_pi_boards"), Value::Sequence(boards));
    }
    if let Some(v) = var("k3s_version") {
        map_at(&mut cluster, "k3s").insert(s("version"), s(&v));
    }
    cluster
}

/// What became of each key of `group_vars` (with all's inventory vars).
fn group_vars_notes(gv: &Mapping, cp: &str, server: &str, several: bool, notes: &mut Notes) {
    for (k, _) in gv {
        let k = as_text(k).unwrap_or_default();
        let scope = "group_vars";
        match k.as_str() {
            "control_plane" => notes.add(
                scope,
                &k,
                Some("k3s.role: server, k3s.cluster_init: true (its node file); cluster.server"),
                &format!(
                    "{cp} creates the cluster; cluster.server is {server}{}",
                    if several {
                        "; tainted NoSchedule for workloads, as the playbook did with more than one node"
                    } else {
                        ""
                    }
                ),
            ),
            "local_domain" => notes.add(scope, &k, Some("cluster.domain"), "the same"),
            "cluster_domain" => notes.add(
                scope,
                &k,
                None,
                "the ingress domain: imgbuild does not configure ingress (traefik is disabled, as in the playbook); set it where you deploy your ingress controller",
            ),
            "k3s_version" => notes.add(
                scope,
                &k,
                Some("cluster.k3s.version"),
                "the same (imgbuild bakes that release in, air-gapped)",
            ),
            "ansible_account" => notes.add(
                scope,
                &k,
                Some("cluster.admin.user"),
                "the admin user created on every node (its SSH key: --ssh-key or ~/.ssh/*.pub)",
            ),
            _ if k.starts_with("ansible_") => notes.add(
                scope,
                &k,
                None,
                "Ansible connection setting: imgbuild does not log in to nodes",
            ),
            _ => notes.add(scope, &k, None, "not part of the reference layout"),
        }
    }
}

fn other_host_key(notes: &mut Notes, scope: &str, k: &str) {
    match k {
        "ansible_host" => notes.add(
            scope,
            k,
            None,
            "the address Ansible reached the node at; nodes keep DHCP as before (pin one with `network:` in the node file)",
        ),
        _ if k.starts_with("ansible_") => notes.add(
            scope,
            k,
            None,
            "Ansible connection setting: imgbuild does not log in to nodes",
        ),
        _ => notes.add(scope, k, None, "not part of the reference layout"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ini_and_yaml_inventories_parse_alike() {
        let yaml = "all:\n  children:\n    turing_pis:\n      hosts:\n        tp1: {ansible_host: bmc.lan}\n    tp1_nodes:\n      hosts:\n        n1: {slot_num: 1, type: rk1}\n";
        let ini = "[turing_pis]\ntp1 ansible_host=bmc.lan\n\n[tp1_nodes]\nn1 slot_num=1 type=rk1\n";
        let (a, b) = (
            parse_inventory(yaml).unwrap(),
            parse_inventory(ini).unwrap(),
        );
        for inv in [&a, &b] {
            assert_eq!(
                inv.groups["tp1_nodes"].hosts["n1"]
                    .get("slot_num")
                    .and_then(as_text)
                    .as_deref(),
                Some("1")
            );
            assert_eq!(
                inv.groups["turing_pis"].hosts["tp1"]
                    .get("ansible_host")
                    .and_then(as_text)
                    .as_deref(),
                Some("bmc.lan")
            );
        }
        let e = parse_inventory("[tp1_nodes]\nn1 slot_num\n").unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
    }
}
