//! `imgbuild kubeconfig`: an admin kubeconfig minted offline from the
//! cluster's CA set, no SSH to a server needed. Prints only the path.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::anyhow;

use super::{CommandError, Paths, Result, Workspace, wait::api_url};
use crate::kube::kubeconfig::{self, Entry};
use crate::secrets::client::{ADMIN_GROUP, ADMIN_USER, validity_of};

#[derive(Debug, Clone)]
pub struct KubeconfigSettings {
    /// `-o FILE`.
    pub output: Option<PathBuf>,
    /// `--merge`: the file to merge into (`-o FILE`, else ~/.kube/config).
    pub merge_into: Option<PathBuf>,
    pub force: bool,
    pub validity: Duration,
    pub server: Option<String>,
}

#[derive(Debug, Clone)]
pub struct KubeconfigResult {
    pub path: PathBuf,
    /// False when a still-valid file was reused.
    pub minted: bool,
    /// With `--merge`: the current context before (it is now the cluster's).
    pub previous_context: Option<String>,
}

/// The default file: the secrets directory holds the CA that makes it, so it
/// is the one place already private enough for its key.
pub fn default_path(ws: &Workspace) -> PathBuf {
    ws.paths
        .secrets
        .join("kubeconfig")
        .join(format!("{}.yaml", ws.profiles.cluster.name))
}

pub fn kubeconfig(paths: &Paths, settings: &KubeconfigSettings) -> Result<KubeconfigResult> {
    let ws = &Workspace::load(paths)?;
    let secrets = ws.secrets()?;
    let cluster = &ws.profiles.cluster.name;
    let server = api_url(ws, settings.server.as_deref());
    let server_ca = secrets.existing_tls("server-ca.crt")?;
    let user = format!("{ADMIN_USER}@{cluster}");
    let now = SystemTime::now();

    let default = default_path(ws);
    let target = settings
        .merge_into
        .clone()
        .or_else(|| settings.output.clone())
        .unwrap_or_else(|| default.clone());
    if settings.merge_into.is_none() && settings.output.is_none() {
        // Our own file: reuse it while it is for this cluster and has at
        // least half the asked-for validity left, so `$(imgbuild kubeconfig)`
        // can be used in every command line.
        if let Ok(Some(existing)) = kubeconfig::read(&target)
            && let Some((cert, srv, ca)) = kubeconfig::embedded(&existing, cluster)
            && srv == server
            && ca == server_ca
            && secrets.issued_by_client_ca(&cert)
            && let Ok((_, until)) = validity_of(&cert)
        {
            let now_s = now
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            if until > now_s + settings.validity.as_secs() / 2 {
                return Ok(KubeconfigResult {
                    path: target,
                    minted: false,
                    previous_context: None,
                });
            }
        }
    } else if settings.merge_into.is_none() && target.exists() && !settings.force {
        return Err(CommandError::Usage(anyhow!(
            "{} exists; pass --force to replace it, or --merge to add the cluster to it",
            target.display()
        )));
    }
    let client = secrets.mint_client(ADMIN_USER, Some(ADMIN_GROUP), settings.validity, now)?;
    let entry = Entry {
        name: cluster,
        user: &user,
        server: &server,
        server_ca_pem: &server_ca,
        client: &client,
    };
    let mut previous_context = None;
    let config = match &settings.merge_into {
        Some(path) => match kubeconfig::read(path)? {
            Some(mut existing) => {
                previous_context = kubeconfig::merge(&mut existing, &entry, path)?;
                existing
            }
            None => kubeconfig::single(&entry),
        },
        None => kubeconfig::single(&entry),
    };
    kubeconfig::write(&target, &config)?;
    tracing::info!(
        "{}: admin credentials for cluster {cluster} ({} as user {ADMIN_USER}, group {ADMIN_GROUP}), valid until {}; keep this file private",
        target.display(),
        server,
        crate::secrets::client::rfc3339(client.not_after)
    );
    Ok(KubeconfigResult {
        path: target,
        minted: true,
        previous_context: previous_context.filter(|p| p != cluster),
    })
}
