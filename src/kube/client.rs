//! A small Kubernetes API client over HTTPS (reqwest + rustls): the server's
//! certificate must chain to the cluster's own server CA (the only trusted
//! root, never the system store, never "insecure") and name the host asked
//! for; the client authenticates with a certificate from the cluster's client
//! CA. Errors are typed so that callers can tell an unreachable API from a
//! certificate that does not match.

use std::io::BufRead;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::de::DeserializeOwned;

use super::node::{Node, Status, VersionInfo, WatchEvent};
use crate::secrets::client::ClientCert;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    /// Nothing answered (refused, no route, DNS, connection dropped).
    #[error("{url}: no answer ({detail})")]
    Unreachable { url: String, detail: String },
    #[error("{url}: no answer within {}s", after.as_secs_f32())]
    Timeout { url: String, after: Duration },
    /// The server's certificate does not chain to the cluster's server CA, or
    /// does not name the host; nothing was sent.
    #[error("{url}: the server's certificate is not the cluster's ({detail})")]
    ServerCertificate { url: String, detail: String },
    /// 401: the API does not accept certificates from this client CA.
    #[error("{url}: the API rejected imgbuild's client certificate (HTTP 401)")]
    ClientRejected { url: String },
    #[error("{url}: forbidden (HTTP 403): {message}")]
    Forbidden { url: String, message: String },
    #[error("{url}: HTTP {status}: {message}")]
    Http {
        url: String,
        status: u16,
        message: String,
    },
    #[error("{url}: unexpected answer: {detail}")]
    Decode { url: String, detail: String },
}

impl ApiError {
    /// A certificate problem on either side (it will not fix itself by waiting
    /// unless the server at that address is replaced).
    pub fn is_certificate(&self) -> bool {
        matches!(
            self,
            ApiError::ServerCertificate { .. } | ApiError::ClientRejected { .. }
        )
    }
}

/// How to reach and authenticate to the API.
#[derive(Clone)]
pub struct ApiConfig {
    /// `https://host:6443`, no trailing slash.
    pub url: String,
    /// The cluster's server CA (PEM): the only root trusted.
    pub server_ca_pem: String,
    pub client: ClientCert,
    /// Longest a single request may take (watches add their own duration).
    pub request_timeout: Duration,
}

pub struct Api {
    url: String,
    http: reqwest::blocking::Client,
    request_timeout: Duration,
}

/// `/readyz` answered: ready, or not with the failing checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    Ready,
    NotReady(String),
}

fn tls_config(cfg: &ApiConfig) -> anyhow::Result<rustls::ClientConfig> {
    use anyhow::Context;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    let mut n = 0;
    for der in CertificateDer::pem_slice_iter(cfg.server_ca_pem.as_bytes()) {
        roots
            .add(der.context("cluster/tls/server-ca.crt: not a PEM certificate")?)
            .context("cluster/tls/server-ca.crt: not a usable CA certificate")?;
        n += 1;
    }
    if n == 0 {
        anyhow::bail!("cluster/tls/server-ca.crt holds no certificate");
    }
    let chain = CertificateDer::pem_slice_iter(cfg.client.cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .context("the minted client certificate")?;
    let key = PrivateKeyDer::from_pem_slice(cfg.client.key_pem.as_bytes())
        .map_err(|_| anyhow::anyhow!("the minted client key is not PEM"))?;
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)?)
}

impl Api {
    pub fn new(cfg: &ApiConfig) -> anyhow::Result<Api> {
        crate::util::tls::install_provider();
        let http = reqwest::blocking::Client::builder()
            .tls_backend_preconfigured(tls_config(cfg)?)
            .connect_timeout(cfg.request_timeout.min(Duration::from_secs(10)))
            .timeout(None)
            // The API is on the cluster's own network: no proxy in between.
            .no_proxy()
            .user_agent(concat!("imgbuild/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Api {
            url: cfg.url.trim_end_matches('/').to_string(),
            http,
            request_timeout: cfg.request_timeout,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    fn classify(&self, e: reqwest::Error, timeout: Duration) -> ApiError {
        let url = self.url.clone();
        let chain = crate::util::error_chain(&e);
        if chain.contains("invalid peer certificate") || chain.contains("InvalidCertificate") {
            let detail = if chain.contains("UnknownIssuer") || chain.contains("BadSignature") {
                "not signed by the cluster's server CA".to_string()
            } else if chain.contains("NotValidForName") {
                "it does not name this host".to_string()
            } else if chain.contains("Expired") || chain.contains("NotValidYet") {
                "outside its validity (check the clocks)".to_string()
            } else {
                chain.rsplit(": ").next().unwrap_or(&chain).to_string()
            };
            return ApiError::ServerCertificate { url, detail };
        }
        if e.is_timeout() {
            return ApiError::Timeout {
                url,
                after: timeout,
            };
        }
        let detail = chain.rsplit(": ").next().unwrap_or(&chain).to_string();
        ApiError::Unreachable { url, detail }
    }

    fn send(&self, path: &str, timeout: Duration) -> Result<reqwest::blocking::Response, ApiError> {
        let timeout = timeout
            .min(self.request_timeout)
            .max(Duration::from_millis(100));
        self.http
            .get(format!("{}{path}", self.url))
            .timeout(timeout)
            .header("Accept", "application/json")
            .send()
            .map_err(|e| self.classify(e, timeout))
    }

    fn error_for(&self, status: u16, body: &str) -> ApiError {
        let url = self.url.clone();
        let message = serde_json::from_str::<Status>(body)
            .ok()
            .map(|s| s.message)
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| body.trim().chars().take(300).collect());
        match status {
            401 => ApiError::ClientRejected { url },
            403 => ApiError::Forbidden { url, message },
            _ => ApiError::Http {
                url,
                status,
                message,
            },
        }
    }

    /// GET `path` as JSON; `None` for 404.
    fn get_json<T: DeserializeOwned>(
        &self,
        path: &str,
        timeout: Duration,
    ) -> Result<Option<T>, ApiError> {
        let resp = self.send(path, timeout)?;
        let status = resp.status().as_u16();
        let body = resp.text().map_err(|e| self.classify(e, timeout))?;
        match status {
            200 => serde_json::from_str(&body)
                .map(Some)
                .map_err(|e| ApiError::Decode {
                    url: format!("{}{path}", self.url),
                    detail: e.to_string(),
                }),
            404 => Ok(None),
            s => Err(self.error_for(s, &body)),
        }
    }

    /// `GET /readyz?verbose`: 200 is ready; 500 lists the failing checks.
    pub fn readyz(&self, timeout: Duration) -> Result<Health, ApiError> {
        let resp = self.send("/readyz?verbose", timeout)?;
        let status = resp.status().as_u16();
        let body = resp.text().map_err(|e| self.classify(e, timeout))?;
        match status {
            200 => Ok(Health::Ready),
            500 | 503 => Ok(Health::NotReady(
                body.lines()
                    .filter(|l| l.starts_with("[-]"))
                    .map(|l| l.trim_start_matches("[-]").trim())
                    .collect::<Vec<_>>()
                    .join(", "),
            )),
            s => Err(self.error_for(s, &body)),
        }
    }

    /// `GET /version`: the server's Kubernetes (k3s) version.
    pub fn version(&self, timeout: Duration) -> Result<String, ApiError> {
        Ok(self
            .get_json::<VersionInfo>("/version", timeout)?
            .map(|v| v.git_version)
            .unwrap_or_default())
    }

    /// `GET /api/v1/nodes/NAME`; `None` when no such Node exists.
    pub fn node(&self, name: &str, timeout: Duration) -> Result<Option<Node>, ApiError> {
        self.get_json(&format!("/api/v1/nodes/{name}"), timeout)
    }

    /// Watches every Node for up to `duration`, calling `event` with each
    /// changed or added Node; stops early when it returns `true`. Returns
    /// whether it was stopped that way.
    pub fn watch_nodes(
        &self,
        duration: Duration,
        mut event: impl FnMut(&Node) -> bool,
    ) -> Result<bool, ApiError> {
        let secs = duration.as_secs().max(1);
        let path = format!("/api/v1/nodes?watch=true&timeoutSeconds={secs}");
        // The request may last as long as the watch, plus time to connect.
        let limit = Duration::from_secs(secs) + self.request_timeout;
        let resp = self
            .http
            .get(format!("{}{path}", self.url))
            .timeout(limit)
            .send()
            .map_err(|e| self.classify(e, limit))?;
        let status = resp.status().as_u16();
        if status != 200 {
            let body = resp.text().unwrap_or_default();
            return Err(self.error_for(status, &body));
        }
        for line in std::io::BufReader::new(resp).lines() {
            let line = match line {
                Ok(l) => l,
                // A timeout here ends the watch like its natural end would.
                Err(e)
                    if e.kind() == std::io::ErrorKind::TimedOut
                        || e.to_string().contains("timed out") =>
                {
                    break;
                }
                Err(e) => {
                    return Err(ApiError::Unreachable {
                        url: self.url.clone(),
                        detail: format!("the watch broke off: {e}"),
                    });
                }
            };
            if line.trim().is_empty() {
                continue;
            }
            let ev: WatchEvent = serde_json::from_str(&line).map_err(|e| ApiError::Decode {
                url: format!("{}{path}", self.url),
                detail: e.to_string(),
            })?;
            match ev.kind.as_str() {
                "ADDED" | "MODIFIED" => {
                    if let Ok(node) = serde_json::from_value::<Node>(ev.object)
                        && event(&node)
                    {
                        return Ok(true);
                    }
                }
                "ERROR" => {
                    let s: Status = serde_json::from_value(ev.object).unwrap_or_default();
                    // 410 Gone: the watch is too old; the caller starts another.
                    if s.code == 410 {
                        break;
                    }
                    return Err(self.error_for(s.code, &s.message));
                }
                _ => {}
            }
        }
        Ok(false)
    }
}
