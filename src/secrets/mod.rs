//! Cluster secrets: created on first use, then kept and never regenerated.
//!
//! ```text
//! <secrets>/cluster/token             server join password
//! <secrets>/cluster/agent-token       agent join password
//! <secrets>/cluster/tls/...           the k3s custom CA set (server/tls layout)
//! <secrets>/cluster/initialized       marker: a cluster-init image was built
//! <secrets>/cluster/established       marker: the cluster was seen up (flash refuses blind server flashes after)
//! <secrets>/nodes/<node>/ssh_host_ed25519_key(.pub)
//! <secrets>/nodes/<node>/node-password
//! ```
//! The directory is 0700 and every file 0600; a group- or world-readable
//! directory is refused. Values never reach logs or errors.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

mod sealing;
mod validate;

pub mod client;

/// The CA files k3s keeps when they exist before its first start, relative to server/tls.
pub const CA_FILES: &[(&str, &str)] = &[
    ("server-ca", "k3s-server-ca"),
    ("client-ca", "k3s-client-ca"),
    ("request-header-ca", "k3s-request-header-ca"),
    ("etcd/peer-ca", "etcd-peer-ca"),
    ("etcd/server-ca", "etcd-server-ca"),
];
pub const SERVICE_KEY: &str = "service.key";

/// The day new CAs are valid from (y, m, d): before any clock a module may
/// start with (systemd's own build time, the image's clock-epoch).
pub const CA_NOT_BEFORE: (i32, u8, u8) = (2020, 1, 1);

/// Where secrets live; `None` for ephemeral secrets that are never written (check).
#[derive(Debug, Clone)]
pub struct Secrets {
    dir: Option<PathBuf>,
}

#[derive(Clone, serde::Serialize)]
pub struct ClusterSecrets {
    #[serde(skip)]
    pub server_password: String,
    #[serde(skip)]
    pub agent_password: String,
    /// (path relative to server/tls, contents)
    #[serde(skip)]
    pub tls: Vec<(String, String)>,
    /// sha256 of server-ca.crt's bytes, as in the secure token.
    pub ca_hash: String,
}

impl std::fmt::Debug for ClusterSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClusterSecrets {{ ca_hash: {}, .. }}", self.ca_hash)
    }
}

impl ClusterSecrets {
    /// `K10<ca hash>::server:<password>`: lets joiners verify the server CA.
    pub fn server_token(&self) -> String {
        format!("K10{}::server:{}", self.ca_hash, self.server_password)
    }
    /// The agent-only token in the same secure form.
    pub fn agent_token(&self) -> String {
        format!("K10{}::node:{}", self.ca_hash, self.agent_password)
    }
}

#[derive(Clone)]
pub struct NodeSecrets {
    pub ssh_private: String,
    pub ssh_public: String,
    pub ssh_fingerprint: String,
    pub node_password: String,
}

impl std::fmt::Debug for NodeSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "NodeSecrets {{ ssh_fingerprint: {}, .. }}",
            self.ssh_fingerprint
        )
    }
}

fn random_hex(bytes: usize) -> Result<String> {
    use ring::rand::SecureRandom;
    let mut b = vec![0u8; bytes];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| anyhow::anyhow!("the system random number generator failed"))?;
    Ok(hex::encode(b))
}

impl Secrets {
    /// Opens (creating with mode 0700 when missing) the secrets directory.
    pub fn open(dir: &Path) -> Result<Secrets> {
        match std::fs::metadata(dir) {
            Ok(m) => {
                if !m.is_dir() {
                    bail!("{}: the secrets path is not a directory", dir.display());
                }
                let mode = m.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    bail!(
                        "{}: the secrets directory is readable by others (mode {mode:04o}); run `chmod 700 {}`",
                        dir.display(),
                        dir.display()
                    );
                }
            }
            Err(_) => {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(dir)
                    .with_context(|| format!("creating the secrets directory {}", dir.display()))?;
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
                tracing::info!(
                    "created the secrets directory {} (keep it out of version control)",
                    dir.display()
                );
            }
        }
        Ok(Secrets {
            dir: Some(dir.to_owned()),
        })
    }

    /// Secrets that exist only in memory (for validating templates).
    pub fn ephemeral() -> Secrets {
        Secrets { dir: None }
    }

    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// Serialises creation between concurrent imgbuild runs (flock on the directory).
    fn lock(&self) -> Result<Option<std::fs::File>> {
        use std::os::fd::AsRawFd;
        let Some(dir) = &self.dir else {
            return Ok(None);
        };
        let f = std::fs::File::open(dir).with_context(|| format!("opening {}", dir.display()))?;
        // SAFETY: flock on an open descriptor; released when the file is dropped.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("locking {}", dir.display()));
        }
        Ok(Some(f))
    }

    /// Reads `rel`, or creates it with `make()` (mode 0600, never overwriting).
    fn get_or_create(&self, rel: &str, make: impl FnOnce() -> Result<String>) -> Result<String> {
        let Some(dir) = &self.dir else {
            return make();
        };
        let path = dir.join(rel);
        match std::fs::read_to_string(&path) {
            Ok(s) => {
                let mode = std::fs::metadata(&path)?.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    bail!(
                        "{}: a secret file readable by others (mode {mode:04o}); run `chmod 600 {}`",
                        path.display(),
                        path.display()
                    );
                }
                return Ok(s);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        }
        let value = make()?;
        if let Some(parent) = path.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        // Write a complete private file, then publish it under its name with a
        // hard link, which fails if the name exists: readers never see a
        // partial secret, and a secret is never replaced.
        let parent = path.parent().expect("a secret path has a parent");
        // Callers hold the directory lock: a `.new-` file here is from a dead run.
        remove_stale(parent, ".new-");
        let mut tmp = tempfile::Builder::new()
            .prefix(".new-")
            .permissions(std::fs::Permissions::from_mode(0o600))
            .tempfile_in(parent)
            .with_context(|| format!("creating a file in {}", parent.display()))?;
        let _cleanup = crate::util::cleanup::register(tmp.path());
        tmp.write_all(value.as_bytes())?;
        tmp.as_file().sync_all()?;
        match std::fs::hard_link(tmp.path(), &path) {
            Ok(()) => {}
            // Another imgbuild created it since we looked: theirs is the secret.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return std::fs::read_to_string(&path)
                    .with_context(|| format!("reading {}", path.display()));
            }
            Err(e) => return Err(e).with_context(|| format!("creating {}", path.display())),
        }
        Ok(value)
    }

    /// Where `rel` is (or would be) kept, for messages.
    fn path_of(&self, rel: &str) -> PathBuf {
        self.dir.as_deref().unwrap_or(Path::new("")).join(rel)
    }

    pub fn cluster(&self, build_time: u64) -> Result<ClusterSecrets> {
        let _lock = self.lock()?;
        let token = |rel: &str| -> Result<String> {
            let value = self.get_or_create(rel, || random_hex(16))?;
            let value = value.trim();
            validate::token(&self.path_of(rel), value)?;
            Ok(value.to_string())
        };
        let server_password = token("cluster/token")?;
        let agent_password = token("cluster/agent-token")?;
        let tls = self.ca_set(build_time)?;
        let server_ca = &tls
            .iter()
            .find(|(n, _)| n == "server-ca.crt")
            .expect("the CA set has server-ca.crt")
            .1;
        let ca_hash = hex::encode(Sha256::digest(server_ca.as_bytes()));
        Ok(ClusterSecrets {
            server_password,
            agent_password,
            tls,
            ca_hash,
        })
    }

    /// The k3s CA set, (path relative to server/tls, contents), created on
    /// first use. It is published as a whole: written into a private
    /// temporary directory and renamed to `cluster/tls`, so a run killed
    /// halfway leaves no set at all rather than part of one.
    fn ca_set(&self, build_time: u64) -> Result<Vec<(String, String)>> {
        let names: Vec<String> = CA_FILES
            .iter()
            .flat_map(|(n, _)| [format!("{n}.crt"), format!("{n}.key")])
            .chain([SERVICE_KEY.to_string()])
            .collect();
        let Some(dir) = &self.dir else {
            return make_ca_set(build_time);
        };
        let cluster = dir.join("cluster");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&cluster)
            .with_context(|| format!("creating {}", cluster.display()))?;
        remove_stale(&cluster, ".tls-new-");
        let tls = cluster.join("tls");
        if tls.exists() {
            let mut found = Vec::new();
            let mut missing = Vec::new();
            for n in &names {
                match read_secret(&tls.join(n))? {
                    Some(v) => found.push((n.clone(), v)),
                    None => missing.push(n.as_str()),
                }
            }
            if missing.is_empty() {
                let fix = if cluster.join("initialized").exists() {
                    "restore the CA set from a backup (a cluster-init image was built with it: a new set means a new cluster)".to_string()
                } else {
                    format!(
                        "no image was built with it yet: remove {} and run `imgbuild secrets --generate` to make a new set",
                        tls.display()
                    )
                };
                validate::ca_set(&tls, &found, &fix)?;
                return Ok(found);
            }
            // An incomplete set comes from an interrupted first run of an
            // older imgbuild: no build could use it (every build needs the
            // whole set). Keep it aside and make a new one, unless a
            // cluster-init image was recorded.
            if cluster.join("initialized").exists() {
                bail!(
                    "{}: the k3s CA set is incomplete ({} missing) and a cluster-init image was already built with it; restore the missing files from a backup (or delete {} to start a new cluster)",
                    tls.display(),
                    missing.join(", "),
                    cluster.display()
                );
            }
            let aside = cluster.join(format!(
                "tls.incomplete-{}",
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs())
            ));
            std::fs::rename(&tls, &aside)
                .with_context(|| format!("moving the incomplete {} aside", tls.display()))?;
            tracing::warn!(
                "{} was incomplete ({} missing) and no image used it: moved it to {} and made a new CA set",
                tls.display(),
                missing.join(", "),
                aside.display()
            );
        }
        let set = make_ca_set(build_time)?;
        let staging = tempfile::Builder::new()
            .prefix(".tls-new-")
            .permissions(std::fs::Permissions::from_mode(0o700))
            .tempdir_in(&cluster)
            .with_context(|| format!("creating a directory in {}", cluster.display()))?;
        let _cleanup = crate::util::cleanup::register_dir(staging.path());
        for (name, value) in &set {
            let path = staging.path().join(name);
            if let Some(parent) = path.parent() {
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o700)
                    .create(parent)?;
            }
            crate::util::create_private(&path, value.as_bytes())
                .and_then(|f| f.sync_all())
                .with_context(|| format!("writing {}", path.display()))?;
        }
        std::fs::File::open(staging.path())?.sync_all()?;
        let staged = staging.keep();
        if let Err(e) = std::fs::rename(&staged, &tls) {
            let _ = std::fs::remove_dir_all(&staged);
            return Err(e).with_context(|| format!("publishing {}", tls.display()));
        }
        std::fs::File::open(&cluster)?.sync_all()?;
        Ok(set)
    }

    pub fn node(&self, node: &str, hostname: &str) -> Result<NodeSecrets> {
        // The name becomes a directory here: only names `check` accepts.
        if crate::config::profile::hostname_error(node).is_some() {
            bail!(
                "{:?} is not a node name; node secrets are kept only for node names (RFC 1123 labels)",
                crate::config::read::sanitize_field(node)
            );
        }
        let _lock = self.lock()?;
        let key_rel = format!("nodes/{node}/ssh_host_ed25519_key");
        let private = self.get_or_create(&key_rel, || {
            let mut key =
                ssh_key::PrivateKey::random(&mut rand_core::OsRng, ssh_key::Algorithm::Ed25519)
                    .map_err(|e| anyhow::anyhow!("generating an SSH host key: {e}"))?;
            key.set_comment(format!("root@{hostname}"));
            Ok(key
                .to_openssh(ssh_key::LineEnding::LF)
                .map_err(|e| anyhow::anyhow!("encoding an SSH host key: {e}"))?
                .to_string())
        })?;
        let parsed = ssh_key::PrivateKey::from_openssh(&private)
            .with_context(|| format!("{key_rel}: not an OpenSSH private key"))?;
        let public = parsed
            .public_key()
            .to_openssh()
            .map_err(|e| anyhow::anyhow!("{key_rel}: {e}"))?;
        // The OpenSSH form already ends with the key's comment; add one only
        // to a key stored without it.
        let public = if parsed.comment().is_empty() {
            format!("{public} root@{hostname}")
        } else {
            public.to_string()
        };
        let fingerprint = parsed
            .public_key()
            .fingerprint(ssh_key::HashAlg::Sha256)
            .to_string();
        let pub_rel = format!("{key_rel}.pub");
        self.get_or_create(&pub_rel, || Ok(format!("{public}\n")))?;
        let password_rel = format!("nodes/{node}/node-password");
        let node_password = self
            .get_or_create(&password_rel, || random_hex(16))?
            .trim()
            .to_string();
        validate::node_password(&self.path_of(&password_rel), &node_password)?;
        Ok(NodeSecrets {
            ssh_private: private,
            ssh_public: public,
            ssh_fingerprint: fingerprint,
            node_password,
        })
    }

    /// Records that the cluster-init server's image was built; returns whether
    /// one had been built before (re-flashing it would start a new cluster).
    pub fn mark_initialized(&self, node: &str) -> Result<Option<String>> {
        let Some(dir) = &self.dir else {
            return Ok(None);
        };
        let _lock = self.lock()?;
        let path = dir.join("cluster/initialized");
        let before = std::fs::read_to_string(&path).ok();
        if before.is_none() {
            self.get_or_create("cluster/initialized", || Ok(format!("{node}\n")))?;
        }
        Ok(before.map(|s| s.trim().to_string()))
    }

    /// Records that a cluster made from these secrets has been up (a server
    /// was seen Ready, or a server's flash completed); kept once written.
    pub fn mark_established(&self, how: &str) -> Result<()> {
        let Some(dir) = &self.dir else {
            return Ok(());
        };
        let _lock = self.lock()?;
        if !dir.join("cluster/established").exists() {
            let when = crate::util::rfc3339(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0),
            );
            self.get_or_create("cluster/established", || Ok(format!("{how} at {when}\n")))?;
        }
        Ok(())
    }

    /// When and how the cluster was first seen up, if ever.
    pub fn established(&self) -> Option<String> {
        let dir = self.dir.as_ref()?;
        std::fs::read_to_string(dir.join("cluster/established"))
            .ok()
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
    }

    /// What exists, as (relative path, description); never the values.
    pub fn inventory(&self) -> Result<Vec<(String, &'static str)>> {
        let Some(dir) = &self.dir else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        walk(dir, dir, &mut out)?;
        out.sort();
        Ok(out
            .into_iter()
            .map(|rel| {
                let what = describe(&rel);
                (rel, what)
            })
            .collect())
    }
}

/// Reads a secret file; `None` when it does not exist. A file readable by
/// others is refused.
fn read_secret(path: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(s) => {
            let mode = std::fs::metadata(path)?.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                bail!(
                    "{}: a secret file readable by others (mode {mode:04o}); run `chmod 600 {}`",
                    path.display(),
                    path.display()
                );
            }
            Ok(Some(s))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Removes what runs killed while creating secrets left in `dir` (names
/// starting with `prefix`). Called with the secrets directory locked, so no
/// live run is writing them.
fn remove_stale(dir: &Path, prefix: &str) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        if !e.file_name().to_string_lossy().starts_with(prefix) {
            continue;
        }
        let p = e.path();
        let _ = match std::fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(&p),
            Ok(_) => std::fs::remove_file(&p),
            Err(_) => continue,
        };
    }
}

/// A complete k3s CA set made in memory: each CA's certificate and key,
/// and the service-account key.
fn make_ca_set(build_time: u64) -> Result<Vec<(String, String)>> {
    let mut set = Vec::new();
    for (name, cn) in CA_FILES {
        let (crt, key) = make_ca(cn, build_time)?;
        set.push((format!("{name}.crt"), crt));
        set.push((format!("{name}.key"), key));
    }
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    set.push((SERVICE_KEY.to_string(), key.serialize_pem()));
    Ok(set)
}

fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<()> {
    for e in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let e = e?;
        let p = e.path();
        if p.is_dir() {
            walk(root, &p, out)?;
        } else {
            out.push(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
        }
    }
    Ok(())
}

fn describe(rel: &str) -> &'static str {
    match rel {
        "cluster/token" => "server join token (password part)",
        "cluster/agent-token" => "agent join token (password part)",
        "cluster/initialized" => "marker: the cluster-init server's image was built",
        "cluster/established" => "marker: a cluster made from these secrets was up",
        r if r.starts_with("cluster/tls/") && r.ends_with(".crt") => "k3s CA certificate",
        r if r.starts_with("cluster/tls/") && r.ends_with(".key") => {
            "k3s CA / service-account private key"
        }
        r if r.ends_with("ssh_host_ed25519_key") => "node SSH host private key",
        r if r.ends_with("ssh_host_ed25519_key.pub") => "node SSH host public key",
        r if r.ends_with("node-password") => "k3s node password",
        r if r.starts_with("kubeconfig/") => "admin kubeconfig (imgbuild kubeconfig; short-lived)",
        _ => "other",
    }
}

/// A self-signed ECDSA P-256 CA valid for ten years from the build day, named as k3s names its own.
fn make_ca(cn_prefix: &str, build_time: u64) -> Result<(String, String)> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyUsagePurpose};
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(build_time);
    params
        .distinguished_name
        .push(DnType::CommonName, format!("{cn_prefix}@{now}"));
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::CrlSign,
    ];
    // Valid from a fixed day well in the past, not from the build day: a
    // module without a battery-backed clock (CM4) may boot with an older
    // time, and k3s copies the CA's start into every certificate it issues.
    params.not_before = rcgen::date_time_ymd(CA_NOT_BEFORE.0, CA_NOT_BEFORE.1, CA_NOT_BEFORE.2);
    let (y, m, d) = crate::util::civil_from_days((now / 86_400) as i64);
    params.not_after = rcgen::date_time_ymd(y as i32 + 10, m as u8, d.min(28) as u8);
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A `known_hosts` line for a node.
pub fn known_hosts_line(names: &[String], public: &str) -> String {
    let key: Vec<&str> = public.split_whitespace().take(2).collect();
    format!("{} {}", names.join(","), key.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_secrets_are_kept_only_under_node_names() {
        let dir = tempfile::tempdir().unwrap();
        let secrets = Secrets::open(&dir.path().join("s")).unwrap();
        for bad in ["../x", "a/b", "", ".", "x\0y"] {
            let e = secrets.node(bad, "h").unwrap_err().to_string();
            assert!(e.contains("is not a node name"), "{bad:?}: {e}");
        }
        assert!(!dir.path().join("x").exists() && !dir.path().join("s/nodes").exists());
    }

    #[test]
    fn concurrent_first_use_agrees_on_one_set_of_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("s");
        let hashes: Vec<(String, String, String)> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        // Separate handles, as separate processes would have.
                        let secrets = Secrets::open(&root).unwrap();
                        let c = secrets.cluster(0).unwrap();
                        let n = secrets.node("node01", "node01").unwrap();
                        secrets.mark_initialized("node01").unwrap();
                        (c.ca_hash, c.server_password, n.ssh_fingerprint)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert!(hashes.windows(2).all(|w| w[0] == w[1]), "{hashes:?}");
        let again = Secrets::open(&root).unwrap();
        assert_eq!(again.cluster(0).unwrap().ca_hash, hashes[0].0);
        for (rel, _) in again.inventory().unwrap() {
            let mode = std::fs::metadata(root.join(&rel))
                .unwrap()
                .permissions()
                .mode()
                & 0o777;
            assert_eq!(mode, 0o600, "{rel}");
            assert!(!rel.contains(".new-"), "left a temporary file {rel}");
        }
    }
}
