//! `imgbuild init [DIR]`: a new cluster's profiles (`profiles/cluster.yaml`
//! and one file per node) plus a `.gitignore` for `secrets/` and `dist/`,
//! from settings the CLI gathered (flags, or answers on a terminal). Never
//! overwrites a file; what it assumed is part of its report; the result is
//! checked like `imgbuild check` before it returns.

use std::path::{Path, PathBuf};

use anyhow::anyhow;

use super::{CommandError, Paths, Result};
use crate::config::manifest::Manifests;

/// A node to create.
#[derive(Debug, Clone)]
pub struct InitNode {
    pub name: String,
    pub board: String,
    /// Turing Pi slot (1-4) for compute modules.
    pub slot: Option<u8>,
}

/// Where the admin's SSH public key comes from.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// Given on the command line (a key line or a file).
    Given(Vec<String>),
    /// The first `*.pub` in this directory (`~/.ssh`), if any.
    Search(Option<PathBuf>),
}

#[derive(Debug, Clone)]
pub struct InitSettings {
    pub dir: PathBuf,
    pub name: Option<String>,
    pub server: Option<String>,
    pub domain: Option<String>,
    pub admin_user: Option<String>,
    pub ssh_keys: KeySource,
    pub bmc: Option<String>,
    pub nodes: Vec<InitNode>,
}

#[derive(Debug)]
pub struct InitReport {
    pub written: Vec<PathBuf>,
    /// Defaults taken for what was not given, one sentence each.
    pub assumed: Vec<String>,
    pub check: super::check::CheckReport,
}

const GITIGNORE_LINES: [&str; 2] = ["/secrets/", "/dist/"];

pub fn init(s: &InitSettings, build_time: u64) -> Result<InitReport> {
    let mut assumed = Vec::new();
    let name = take(&mut assumed, &s.name, "homelab", "cluster name (--name)");
    let domain = take(
        &mut assumed,
        &s.domain,
        "home.arpa",
        "DNS domain (--domain)",
    );
    let user = take(
        &mut assumed,
        &s.admin_user,
        "admin",
        "admin user (--admin-user)",
    );
    let nodes = nodes_or_default(&s.nodes, &mut assumed);
    let server = take(
        &mut assumed,
        &s.server,
        &format!("{}.{domain}", nodes[0].name),
        "cluster API address (--server; nodes use DHCP, so your DNS must resolve it)",
    );
    let keys = match &s.ssh_keys {
        KeySource::Given(k) => k.clone(),
        KeySource::Search(dir) => {
            let (key, file) = first_public_key(dir.as_deref())?;
            assumed.push(format!("admin SSH key (--ssh-key): {}", file.display()));
            vec![key]
        }
    };

    // Boards: the manifests in use (built-in unless overridden).
    let paths = Paths::resolve(s.dir.join("profiles"), None, None);
    let manifests = super::load_manifests(&paths)?;
    let uses_turing_pi = check_boards(&manifests, &nodes)?;
    let bmc = uses_turing_pi.then(|| {
        take(
            &mut assumed,
            &s.bmc,
            "turingpi.local",
            "Turing Pi BMC host (--bmc)",
        )
    });
    let cluster = ClusterAnswers {
        name,
        server,
        domain,
        user,
        keys,
        bmc,
    };
    let mut files = vec![(PathBuf::from(CLUSTER_PATH), cluster.yaml())];
    for (i, n) in nodes.iter().enumerate() {
        let path = node_file(&n.name).map_err(CommandError::usage)?;
        files.push((path, node_yaml(n, i == 0)));
    }
    let (written, check) = write_checked(
        &s.dir,
        &files,
        build_time,
        "remove it or run init in another directory",
    )?;
    Ok(InitReport {
        written,
        assumed,
        check,
    })
}

/// `v`, or `default` noted among the assumptions as `what: default`.
fn take(assumed: &mut Vec<String>, v: &Option<String>, default: &str, what: &str) -> String {
    v.clone().unwrap_or_else(|| {
        assumed.push(format!("{what}: {default}"));
        default.to_string()
    })
}

/// The nodes given, or four RK1s in one Turing Pi (noted as assumed).
fn nodes_or_default(given: &[InitNode], assumed: &mut Vec<String>) -> Vec<InitNode> {
    if !given.is_empty() {
        return given.to_vec();
    }
    assumed.push(
        "nodes (--node NAME=BOARD[@SLOT]): node01..node04, RK1s in slots 1-4 of one Turing Pi; node01 is the server".into(),
    );
    (1..=4)
        .map(|i| InitNode {
            name: format!("node{i:02}"),
            board: "rk1".into(),
            slot: Some(i),
        })
        .collect()
}

/// Every node's board has a manifest, and compute modules (only they) have
/// a slot; whether any node sits in a Turing Pi.
fn check_boards(manifests: &Manifests, nodes: &[InitNode]) -> Result<bool> {
    let mut uses_turing_pi = false;
    for n in nodes {
        let Some(m) = manifests.get(&n.board) else {
            return Err(CommandError::usage(format!(
                "node {}: no board {:?} (boards: {})",
                n.name,
                n.board,
                manifests.keys().cloned().collect::<Vec<_>>().join(", ")
            )));
        };
        match (m.turing_pi_module, n.slot) {
            (true, None) => {
                return Err(CommandError::usage(format!(
                    "node {}: a {} sits in a Turing Pi slot; write {}={}@SLOT (1-4)",
                    n.name, n.board, n.name, n.board
                )));
            }
            (false, Some(_)) => {
                return Err(CommandError::usage(format!(
                    "node {}: a {} is not a Turing Pi module; leave out @SLOT",
                    n.name, n.board
                )));
            }
            (true, Some(_)) => uses_turing_pi = true,
            (false, None) => {}
        }
    }
    Ok(uses_turing_pi)
}

/// What `cluster.yaml` says, given or assumed.
struct ClusterAnswers {
    name: String,
    server: String,
    domain: String,
    user: String,
    keys: Vec<String>,
    bmc: Option<String>,
}

/// A YAML string (JSON's quoting is valid YAML).
fn q(v: &str) -> String {
    serde_json::to_string(v).expect("strings serialise")
}

impl ClusterAnswers {
    fn yaml(&self) -> String {
        let mut cluster = format!(
            "# Cluster-wide settings, written by `imgbuild init`; see docs/profiles.md for every key.\n\
             cluster:\n  name: {}\n  # Where the cluster's API is reached: the first server, a VIP or a DNS name.\n  \
             server: {}\n  domain: {}\n  admin:\n    user: {}\n    ssh_authorized_keys:\n",
            q(&self.name),
            q(&self.server),
            q(&self.domain),
            q(&self.user)
        );
        for k in &self.keys {
            cluster.push_str(&format!("      - {}\n", q(k.trim())));
        }
        if let Some(b) = &self.bmc {
            cluster.push_str(&format!(
                "  turing_pi_boards:\n    - name: tp1\n      bmc: {}\n",
                q(b)
            ));
        }
        cluster.push_str(
            "\n# Node keys every node starts from; a node file overrides them.\ndefaults:\n  k3s:\n    role: agent\n  network:\n    dhcp: true\n",
        );
        cluster
    }
}

/// A node file; the first node is the server that creates the cluster.
fn node_yaml(n: &InitNode, first: bool) -> String {
    let mut text = format!("board: {}\n", q(&n.board));
    if let Some(slot) = n.slot {
        text.push_str(&format!("turing_pi: {{board: tp1, slot: {slot}}}\n"));
    }
    if first {
        text.push_str("k3s:\n  role: server\n  cluster_init: true\n");
    }
    text
}

/// Where a new profile set's cluster file goes, relative to its directory.
pub(super) const CLUSTER_PATH: &str = "profiles/cluster.yaml";

/// Where the node `name`'s file goes, relative to the new profile set's
/// directory; refused unless `name` is a node name `check` accepts (an
/// RFC 1123 label), so that no name can make a path outside `nodes/`.
pub fn node_file(name: &str) -> std::result::Result<PathBuf, String> {
    if crate::config::profile::hostname_error(name).is_some() {
        return Err(format!(
            "{:?} is not a node name: node files and host names are named after it, so it must be \
             1 to 63 lower-case letters, digits and '-', not starting or ending with '-' (RFC 1123)",
            crate::config::read::sanitize_field(name)
        ));
    }
    Ok(PathBuf::from(format!("profiles/nodes/{name}.yaml")))
}

/// Writes a new profile set: `files` (relative to `dir`) go into a staging
/// directory beside their destination, are `check`ed there, and are moved
/// into place only when the check passes; `.gitignore` is updated last. On
/// any failure (an existing file, a failed check, an interrupt) nothing is
/// left. `retry` says what to do about files that exist.
pub(super) fn write_checked(
    dir: &Path,
    files: &[(PathBuf, String)],
    build_time: u64,
    retry: &str,
) -> Result<(Vec<PathBuf>, super::check::CheckReport)> {
    use std::path::Component;
    for (rel, _) in files {
        // Defence in depth: every caller builds these from checked names.
        if !rel.components().all(|c| matches!(c, Component::Normal(_))) {
            return Err(CommandError::Failed(anyhow!(
                "{}: not a plain relative path",
                rel.display()
            )));
        }
    }
    let mut existing: Vec<String> = files
        .iter()
        .map(|(p, _)| dir.join(p))
        .filter(|p| p.symlink_metadata().is_ok())
        .map(|p| p.display().to_string())
        .collect();
    if existing.is_empty() {
        // Other node files would join the new set unchecked.
        existing = other_node_files(&dir.join("profiles/nodes"));
    }
    if !existing.is_empty() {
        return Err(CommandError::usage(format!(
            "refusing to overwrite {}; {retry}",
            super::shorten(&existing)
        )));
    }
    let stage = Stage::new(dir)?;
    for (rel, text) in files {
        write_new(&stage.path().join(rel), text)?;
    }
    let beside = |name: &str| Some(dir.join(name)).filter(|p| p.is_dir());
    let paths = Paths::resolve(
        stage.path().join("profiles"),
        beside("firmware-manifests"),
        beside("overlays"),
    );
    let mut check = super::check::check(&paths, build_time).map_err(|e| match e {
        CommandError::Invalid(e) => CommandError::Invalid(anyhow!(
            "{}; nothing was written",
            stage.unstaged(&format!("{e:#}"))
        )),
        e => e,
    })?;
    for w in &mut check.warnings {
        *w = stage.unstaged(w);
    }
    stage.place()?;
    let mut written: Vec<PathBuf> = files.iter().map(|(p, _)| dir.join(p)).collect();
    if let Some(p) = gitignore(dir)? {
        written.push(p);
    }
    Ok((written, check))
}

/// `*.yaml`/`*.yml` files already in a `nodes/` directory.
fn other_node_files(nodes: &Path) -> Vec<String> {
    let mut found: Vec<String> = std::fs::read_dir(nodes)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
                .map(|p| p.display().to_string())
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

/// A staging directory for a new profile set bound for `dest`: inside
/// `dest` when it exists, else in its nearest existing ancestor (the same
/// file system, so moving into place is a rename). Removed on drop and on
/// interrupt.
struct Stage {
    dir: tempfile::TempDir,
    dest: PathBuf,
    _cleanup: crate::util::cleanup::Registered,
}

impl Stage {
    fn new(dest: &Path) -> Result<Stage> {
        use std::os::unix::fs::PermissionsExt;
        let anchor = dest
            .ancestors()
            .map(|a| {
                if a.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    a
                }
            })
            .find(|a| a.is_dir())
            .unwrap_or(Path::new("."));
        let dir = tempfile::Builder::new()
            .prefix(".imgbuild-new-")
            // As create_dir_all would make it: the umask decides.
            .permissions(std::fs::Permissions::from_mode(0o777))
            .tempdir_in(anchor)
            .map_err(io_err(anchor))?;
        let cleanup = crate::util::cleanup::register_dir(dir.path());
        Ok(Stage {
            dir,
            dest: dest.to_owned(),
            _cleanup: cleanup,
        })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `text` (a message naming staged files) naming their destinations.
    fn unstaged(&self, text: &str) -> String {
        text.replace(
            &self.path().display().to_string(),
            &self.dest.display().to_string(),
        )
    }

    /// Moves what was staged into place, never over an existing file; on a
    /// failure, removes what it had moved.
    fn place(&self) -> Result<()> {
        if !self.dest.exists() {
            if let Some(parent) = self.dest.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent).map_err(io_err(parent))?;
            }
            return rename_new(self.path(), &self.dest).map_err(io_err(&self.dest));
        }
        let mut placed = Vec::new();
        let moved = move_into(self.path(), &self.dest, &mut placed);
        if moved.is_err() {
            for p in placed.iter().rev() {
                let _ = std::fs::remove_dir_all(p).or_else(|_| std::fs::remove_file(p));
            }
        }
        moved
    }
}

/// Moves each entry of `from` to the same name in `to`: whole when `to` has
/// no such entry, entry by entry into a directory that exists.
fn move_into(from: &Path, to: &Path, placed: &mut Vec<PathBuf>) -> Result<()> {
    for e in std::fs::read_dir(from).map_err(io_err(from))? {
        let e = e.map_err(io_err(from))?;
        let (src, dst) = (e.path(), to.join(e.file_name()));
        if dst.is_dir() && src.is_dir() {
            move_into(&src, &dst, placed)?;
        } else {
            rename_new(&src, &dst).map_err(io_err(&dst))?;
            placed.push(dst);
        }
    }
    Ok(())
}

/// Renames `from` to `to`, failing if `to` exists (never replacing it).
fn rename_new(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::other("a path with a NUL byte"))
    };
    let (f, t) = (c(from)?, c(to)?);
    // SAFETY: two NUL-terminated paths that outlive the call.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            f.as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if r == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    // File systems without RENAME_NOREPLACE: check, then rename.
    if matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS)) {
        if to.symlink_metadata().is_ok() {
            return Err(std::io::ErrorKind::AlreadyExists.into());
        }
        return std::fs::rename(from, to);
    }
    Err(e)
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CommandError + '_ {
    move |e| CommandError::Failed(anyhow!("{}: {e}", path.display()))
}

/// Writes a new file (creating its directories): only ever inside a stage.
fn write_new(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).map_err(io_err(d))?;
    }
    // create_new: a file that appeared since the check is not overwritten either.
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(io_err(path))?;
    f.write_all(text.as_bytes()).map_err(io_err(path))
}

/// Adds the lines that keep secrets and outputs out of Git to `.gitignore`
/// (creating it, or appending what it lacks); `Some` when it changed it.
pub(super) fn gitignore(dir: &Path) -> Result<Option<PathBuf>> {
    let path = dir.join(".gitignore");
    let old = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(io_err(&path)(e)),
    };
    let have = |l: &str| {
        old.lines()
            .any(|x| x.trim() == l || x.trim() == l.trim_start_matches('/'))
    };
    let missing: Vec<&str> = GITIGNORE_LINES.into_iter().filter(|l| !have(l)).collect();
    if missing.is_empty() {
        return Ok(None);
    }
    let mut text = old.clone();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str("# The cluster's identity (tokens, CA keys, host keys): never commit it.\n");
    for l in missing {
        text.push_str(l);
        text.push('\n');
    }
    std::fs::write(&path, text).map_err(io_err(&path))?;
    Ok(Some(path))
}

/// The first `*.pub` (by name) in `dir`, read as one key line.
pub(super) fn first_public_key(dir: Option<&Path>) -> Result<(String, PathBuf)> {
    let none = || {
        CommandError::usage(
            "no SSH public key found in ~/.ssh; pass --ssh-key FILE (or the key itself), \
             or create one with `ssh-keygen -t ed25519`"
                .to_string(),
        )
    };
    let dir = dir.ok_or_else(none)?;
    let mut pubs: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "pub") && p.is_file())
                .collect()
        })
        .unwrap_or_default();
    pubs.sort();
    let file = pubs.into_iter().next().ok_or_else(none)?;
    let key = read_key(&file)?;
    Ok((key, file))
}

/// A key given as `--ssh-key`: a file holding one, or the key line itself.
pub fn read_key_arg(arg: &str) -> Result<String> {
    if arg.starts_with("ssh-") || arg.starts_with("ecdsa-") || arg.starts_with("sk-") {
        return Ok(arg.trim().to_string());
    }
    read_key(Path::new(arg))
}

fn read_key(file: &Path) -> Result<String> {
    let text = std::fs::read_to_string(file).map_err(io_err(file))?;
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .ok_or_else(|| {
            CommandError::usage(format!("{}: holds no SSH public key", file.display()))
        })?;
    if line.contains("PRIVATE KEY") {
        return Err(CommandError::usage(format!(
            "{}: is a private key; give the public one (.pub)",
            file.display()
        )));
    }
    Ok(line.to_string())
}

/// Parses `NAME=BOARD[@SLOT]`.
pub fn parse_node(s: &str) -> std::result::Result<InitNode, String> {
    let (name, rest) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected NAME=BOARD[@SLOT], e.g. node01=rk1@1"))?;
    let (board, slot) = match rest.split_once('@') {
        Some((b, slot)) => {
            let n: u8 = slot
                .parse()
                .ok()
                .filter(|n| (1..=4).contains(n))
                .ok_or_else(|| format!("{s:?}: the slot must be 1, 2, 3 or 4"))?;
            (b, Some(n))
        }
        None => (rest, None),
    };
    let ok = |v: &str| {
        !v.is_empty()
            && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !v.starts_with('-')
    };
    if !ok(name) || !ok(board) {
        return Err(format!(
            "{s:?}: node and board names are letters, digits and '-'"
        ));
    }
    Ok(InitNode {
        name: name.to_lowercase(),
        board: board.to_string(),
        slot,
    })
}
