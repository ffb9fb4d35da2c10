//! Container images for air-gapped nodes, pulled over the OCI distribution
//! API with the project's blocking HTTP client (rustls with the process's
//! one crypto provider, system proxies): anonymous bearer tokens from the
//! registry's `WWW-Authenticate` challenge, or credentials from a Docker
//! `config.json`-style file; the node's architecture picked from a
//! multi-arch index; every manifest and blob checked against its digest and
//! cached by digest; one OCI image layout tar per image and architecture,
//! which containerd (and so k3s, from `agent/images/`) imports.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::{Cache, FetchOptions};
use crate::config::images::ImageRef;
use crate::config::manifest::Arch;
use crate::io::Sha256Digest;

const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Manifests and token answers are small; anything bigger is not one.
const MAX_DOCUMENT: u64 = crate::util::prescan::REGISTRY_DOCUMENT.max_bytes;

#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("{url}: HTTP {status}{hint}")]
    Status {
        url: String,
        status: u16,
        hint: String,
    },
    #[error("{what}: sha256 mismatch: expected {expected}, got {actual}; nothing was cached")]
    Mismatch {
        what: String,
        expected: Sha256Digest,
        actual: Sha256Digest,
    },
    #[error("{image}: no linux/{arch} image in its index (it has: {available})")]
    NoPlatform {
        image: String,
        arch: &'static str,
        available: String,
    },
    #[error("{what}: {detail}")]
    Format { what: String, detail: String },
    /// Refused by the size or nesting cap before any parser saw it.
    #[error(transparent)]
    Limit(#[from] crate::util::prescan::PrescanError),
    /// A transport failure; `transient` ones (connection refused or
    /// broken, timeouts) are retried, others (an untrusted certificate, a
    /// refused redirect) are not.
    #[error("{url}: {detail}")]
    Http {
        url: String,
        detail: String,
        transient: bool,
    },
    #[error("{url}: gave up after {attempts} attempt(s): {last}")]
    GaveUp {
        url: String,
        attempts: u32,
        last: String,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> OciError + '_ {
    move |source| OciError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Registry credentials by host, from a file in Docker's `config.json`
/// format (`{"auths": {"ghcr.io": {"auth": base64("user:password")}}}` or
/// `username`/`password`). [`std::fmt::Debug`] never shows them.
#[derive(Clone, Default)]
pub struct RegistryAuth {
    by_host: BTreeMap<String, (String, String)>,
}

impl std::fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RegistryAuth {{ hosts: {:?} }}", self.by_host.keys())
    }
}

impl RegistryAuth {
    pub fn load(path: &Path) -> anyhow::Result<RegistryAuth> {
        #[derive(Deserialize)]
        struct Config {
            #[serde(default)]
            auths: BTreeMap<String, Entry>,
        }
        #[derive(Deserialize)]
        struct Entry {
            auth: Option<String>,
            username: Option<String>,
            password: Option<String>,
        }
        let bad = |why: &str| anyhow::anyhow!("{}: {why}", path.display());
        use crate::util::prescan::{self, ReadError};
        let text = prescan::read_file(path, prescan::CONFIG).map_err(|e| match e {
            ReadError::Io { source, .. } => bad(&format!("cannot read: {source}")),
            ReadError::Limit(e) => anyhow::anyhow!(e),
        })?;
        prescan::json(&path.display().to_string(), &text, prescan::CONFIG)?;
        // Never echo the parser's message: it could quote a password.
        let cfg: Config = serde_json::from_slice(&text)
            .map_err(|_| bad("not a registry credentials file (JSON with an \"auths\" map)"))?;
        let mut by_host = BTreeMap::new();
        for (host, e) in cfg.auths {
            let pair = match (e.auth, e.username, e.password) {
                (Some(a), _, _) => {
                    use base64::Engine;
                    let raw = base64::engine::general_purpose::STANDARD
                        .decode(a.trim())
                        .ok()
                        .and_then(|b| String::from_utf8(b).ok())
                        .ok_or_else(|| {
                            bad(&format!("auths.{host}.auth is not base64 of user:password"))
                        })?;
                    let (u, p) = raw.split_once(':').ok_or_else(|| {
                        bad(&format!("auths.{host}.auth is not base64 of user:password"))
                    })?;
                    (u.to_string(), p.to_string())
                }
                (None, Some(u), Some(p)) => (u, p),
                _ => {
                    return Err(bad(&format!(
                        "auths.{host}: needs auth, or username and password"
                    )));
                }
            };
            let host = host
                .trim_start_matches("https://")
                .trim_start_matches("http://")
                .trim_end_matches('/')
                .to_string();
            by_host.insert(host, pair);
        }
        Ok(RegistryAuth { by_host })
    }

    fn for_registry(&self, registry: &str) -> Option<&(String, String)> {
        let hub = registry == crate::config::images::DOCKER_HUB;
        self.by_host.get(registry).or_else(|| {
            hub.then(|| {
                self.by_host
                    .get("docker.io")
                    .or_else(|| self.by_host.get("index.docker.io/v1"))
            })
            .flatten()
        })
    }
}

/// An image in the cache as an archive for one architecture.
#[derive(Debug, Clone)]
pub struct PulledImage {
    pub reference: ImageRef,
    pub arch: Arch,
    /// The OCI layout tar.
    pub archive: PathBuf,
}

impl PulledImage {
    /// The archive's name in `/var/lib/rancher/k3s/agent/images/`.
    pub fn file_name(&self) -> String {
        archive_file_name(&self.reference)
    }
}

/// The name `image`'s archive gets in `/var/lib/rancher/k3s/agent/images/`
/// (known from the reference alone, so `render` can show it offline).
pub fn archive_file_name(image: &ImageRef) -> String {
    let last = image.repository.rsplit('/').next().unwrap_or("image");
    format!("imgbuild-{last}-{}.tar", &image.digest.to_string()[..12])
}

fn oci_arch(arch: Arch) -> (&'static str, Option<&'static str>) {
    match arch {
        Arch::Arm64 => ("arm64", None),
        Arch::Amd64 => ("amd64", None),
        Arch::Armhf => ("arm", Some("v7")),
    }
}

/// Makes sure `image` for `arch` is in the cache as an archive.
pub fn ensure_image(
    image: &ImageRef,
    arch: Arch,
    cache: &Cache,
    opts: &FetchOptions,
    auth: Option<&RegistryAuth>,
) -> anyhow::Result<PulledImage> {
    let archive = cache
        .root
        .join("oci")
        // The name is in the archive's index.json: two names for one digest
        // are two archives (the blobs are shared in the cache).
        .join(format!(
            "{}-{}-{}.tar",
            image.digest,
            arch.as_str(),
            &hex::encode(Sha256::digest(image.stored_name().as_bytes()))[..12]
        ));
    let done = PulledImage {
        reference: image.clone(),
        arch,
        archive: archive.clone(),
    };
    if archive.is_file() {
        return Ok(done);
    }
    if opts.offline {
        anyhow::bail!(
            "--offline: the image {} ({}) is not in the cache {}; run `imgbuild fetch` for the node's board (or `imgbuild fetch --all`) with network access first",
            image.original,
            arch.as_str(),
            cache.root.display()
        );
    }
    let mut s = Session::new(image, auth, opts.retry)?;
    let what = |d: &Sha256Digest| format!("{} (manifest sha256:{d})", image.original);
    let (top, top_type) = s.manifest(&image.digest, &what(&image.digest))?;
    let mut blobs: Vec<(Sha256Digest, Vec<u8>)> = vec![(image.digest, top.clone())];
    let (manifest, manifest_digest) = if top_type == OCI_INDEX || top_type == DOCKER_LIST {
        let chosen = select_platform(image, arch, &top)?;
        let (m, _) = s.manifest(&chosen, &what(&chosen))?;
        blobs.push((chosen, m.clone()));
        (m, chosen)
    } else {
        (top.clone(), image.digest)
    };
    let mut layer_paths = Vec::new();
    for (digest, size) in parse_manifest(&what(&manifest_digest), &manifest)? {
        let path = s.blob(&digest, size, cache)?;
        layer_paths.push((digest, path));
    }
    let _lock = cache.lock(&manifest_digest)?;
    if archive.is_file() {
        return Ok(done); // Another run wrote it while we waited.
    }
    let temp = cache.temp_in("oci", &manifest_digest)?;
    let _cleanup = crate::util::cleanup::register(temp.path());
    write_layout(
        temp.as_file(),
        image,
        &top_type,
        top.len() as u64,
        &blobs,
        &layer_paths,
    )
    .map_err(io_err(temp.path()))?;
    super::cache::commit(temp, &archive)?;
    Ok(done)
}

#[derive(Deserialize)]
struct Descriptor {
    digest: String,
    size: u64,
    #[serde(default)]
    platform: Option<Platform>,
}

#[derive(Deserialize)]
struct Platform {
    os: String,
    architecture: String,
    #[serde(default)]
    variant: Option<String>,
}

#[derive(Deserialize)]
struct ImageManifest {
    config: Descriptor,
    layers: Vec<Descriptor>,
}

/// A descriptor's digest, exactly as the OCI image spec writes one
/// (`sha256:` and 64 lower-case hex digits, nothing around them).
fn parse_digest(s: &str, what: &str) -> Result<Sha256Digest, OciError> {
    s.strip_prefix("sha256:")
        .filter(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .and_then(Sha256Digest::parse)
        .ok_or_else(|| OciError::Format {
            what: what.to_string(),
            detail: format!(
                "digest {:?} is not sha256:<64 lower-case hex digits>",
                crate::config::read::sanitize_field(s)
            ),
        })
}

/// The blobs an image manifest names, config first, each with its size;
/// `what` names the manifest in errors.
pub fn parse_manifest(what: &str, manifest: &[u8]) -> Result<Vec<(Sha256Digest, u64)>, OciError> {
    document(what, manifest)?;
    let parsed: ImageManifest = serde_json::from_slice(manifest).map_err(|e| OciError::Format {
        what: what.to_string(),
        detail: format!("not an image manifest: {e}"),
    })?;
    std::iter::once(&parsed.config)
        .chain(parsed.layers.iter())
        .map(|d| Ok((parse_digest(&d.digest, what)?, d.size)))
        .collect()
}

/// The manifest of `index` (an OCI index or Docker manifest list) for
/// linux/`arch`.
pub fn select_platform(
    image: &ImageRef,
    arch: Arch,
    index: &[u8],
) -> Result<Sha256Digest, OciError> {
    #[derive(Deserialize)]
    struct Index {
        manifests: Vec<Descriptor>,
    }
    let what = format!("{} (index)", image.original);
    document(&what, index)?;
    let idx: Index = serde_json::from_slice(index).map_err(|e| OciError::Format {
        what: what.clone(),
        detail: format!("not an image index: {e}"),
    })?;
    let (want, variant) = oci_arch(arch);
    let found = idx.manifests.iter().find(|m| {
        m.platform.as_ref().is_some_and(|p| {
            p.os == "linux"
                && p.architecture == want
                && (variant.is_none() || p.variant.as_deref() == variant)
        })
    });
    match found {
        Some(m) => parse_digest(&m.digest, &what),
        None => Err(OciError::NoPlatform {
            image: image.original.clone(),
            arch: arch.as_str(),
            available: idx
                .manifests
                .iter()
                .filter_map(|m| m.platform.as_ref())
                .map(|p| format!("{}/{}", p.os, p.architecture))
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

/// One registry conversation: the client and the bearer token once issued.
struct Session<'a> {
    client: reqwest::blocking::Client,
    image: &'a ImageRef,
    base: String,
    creds: Option<&'a (String, String)>,
    token: Option<String>,
    retry: super::RetryPolicy,
}

/// Whether another attempt may succeed: the release downloads' rule (5xx,
/// 408 and 429, and transport failures that are not a refused certificate
/// or redirect); other 4xx are answers, not accidents.
fn retryable(e: &OciError) -> bool {
    match e {
        OciError::Status { status, .. } => *status >= 500 || *status == 408 || *status == 429,
        OciError::Http { transient, .. } => *transient,
        _ => false,
    }
}

/// Whether a request error is worth retrying (see [`retryable`]).
fn transient(e: &reqwest::Error) -> bool {
    if e.is_redirect() || e.is_builder() {
        return false;
    }
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = src {
        if let Some(rustls::Error::InvalidCertificate(_)) = err.downcast_ref::<rustls::Error>() {
            return false;
        }
        // io::Error hides what it wraps from source(): look inside.
        src = match err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => err.source(),
        };
    }
    true
}

impl<'a> Session<'a> {
    fn new(
        image: &'a ImageRef,
        auth: Option<&'a RegistryAuth>,
        retry: super::RetryPolicy,
    ) -> Result<Session<'a>, OciError> {
        crate::util::tls::install_provider();
        let base = image.base_url();
        // Blobs are often redirected to storage hosts; never to plain http
        // from https. reqwest drops the Authorization header on another host.
        let redirects = reqwest::redirect::Policy::custom(|attempt| {
            let downgrade = attempt.url().scheme() == "http"
                && attempt.previous().iter().any(|u| u.scheme() == "https");
            if downgrade {
                attempt.error("refusing a redirect from https to plain http")
            } else if attempt.previous().len() > 10 {
                attempt.error("more than 10 redirects")
            } else {
                attempt.follow()
            }
        });
        // A blocking client's `timeout` bounds each wait for the registry
        // (the answer's head, then every read of a body): an idle timeout.
        let client = reqwest::blocking::Client::builder()
            .connect_timeout(super::download::CONNECT_TIMEOUT)
            .timeout(retry.idle_timeout)
            .redirect(redirects)
            .user_agent(concat!("imgbuild/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| OciError::Http {
                url: base.clone(),
                detail: format!("cannot set up the HTTP client: {e}"),
                transient: false,
            })?;
        Ok(Session {
            client,
            image,
            creds: auth.and_then(|a| a.for_registry(&image.registry)),
            base,
            token: None,
            retry,
        })
    }

    fn send(
        &self,
        url: &str,
        accept: Option<&str>,
    ) -> Result<reqwest::blocking::Response, OciError> {
        let mut req = self.client.get(url);
        if let Some(a) = accept {
            req = req.header(reqwest::header::ACCEPT, a);
        }
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        } else if let Some((u, p)) = self.creds {
            req = req.basic_auth(u, Some(p));
        }
        req.send().map_err(|e| self.http_error(url, &e))
    }

    /// A request that failed before its answer, the idle timeout named.
    fn http_error(&self, url: &str, e: &reqwest::Error) -> OciError {
        OciError::Http {
            url: url.to_string(),
            detail: if e.is_timeout() {
                format!(
                    "no answer within {} s (the idle timeout)",
                    self.retry.idle_timeout.as_secs_f64()
                )
            } else {
                crate::util::error_chain(e)
            },
            transient: transient(e),
        }
    }

    /// GET with the token dance: on a 401 with a Bearer challenge, fetch a
    /// token (anonymously, or with the credentials) and try once more.
    fn get(
        &mut self,
        url: &str,
        accept: Option<&str>,
    ) -> Result<reqwest::blocking::Response, OciError> {
        let resp = self.send(url, accept)?;
        if resp.status() != reqwest::StatusCode::UNAUTHORIZED || self.token.is_some() {
            return self.check(url, resp);
        }
        let challenge = resp
            .headers()
            .get(reqwest::header::WWW_AUTHENTICATE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let Some(params) = challenge
            .strip_prefix("Bearer ")
            .or_else(|| challenge.strip_prefix("bearer "))
        else {
            return self.check(url, resp);
        };
        self.token = Some(self.fetch_token(url, &parse_challenge(params))?);
        let resp = self.send(url, accept)?;
        self.check(url, resp)
    }

    fn check(
        &self,
        url: &str,
        resp: reqwest::blocking::Response,
    ) -> Result<reqwest::blocking::Response, OciError> {
        let status = resp.status().as_u16();
        if resp.status().is_success() {
            return Ok(resp);
        }
        let hint = match status {
            401 | 403 if self.creds.is_none() => format!(
                " ({} needs credentials: name a Docker config.json-style file with IMGBUILD_REGISTRY_AUTH)",
                self.image.registry
            ),
            401 | 403 => format!(
                " (the credentials for {} were refused)",
                self.image.registry
            ),
            404 => format!(" ({} has no such manifest or blob)", self.image.original),
            _ => String::new(),
        };
        Err(OciError::Status {
            url: url.to_string(),
            status,
            hint,
        })
    }

    fn fetch_token(&self, url: &str, c: &BTreeMap<String, String>) -> Result<String, OciError> {
        let realm = c.get("realm").ok_or_else(|| OciError::Format {
            what: url.to_string(),
            detail: "the registry's Bearer challenge names no realm".into(),
        })?;
        if !(realm.starts_with("https://") || realm.starts_with("http://")) {
            return Err(OciError::Format {
                what: url.to_string(),
                detail: "the registry's token realm is not an http(s) URL".into(),
            });
        }
        // Credentials (and tokens) travel over TLS only; plain http is for a
        // registry on this machine, as with the registry itself.
        if realm.starts_with("http://") && !is_loopback_url(realm) {
            return Err(OciError::Format {
                what: url.to_string(),
                detail: format!(
                    "the registry's token realm {realm} is plain http; imgbuild asks for tokens over https only"
                ),
            });
        }
        let mut query = Vec::new();
        if let Some(s) = c.get("service") {
            query.push(("service", s.clone()));
        }
        query.push((
            "scope",
            c.get("scope")
                .cloned()
                .unwrap_or_else(|| format!("repository:{}:pull", self.image.repository)),
        ));
        let mut u = reqwest::Url::parse(realm).map_err(|_| OciError::Format {
            what: url.to_string(),
            detail: "the registry's token realm is not a URL".into(),
        })?;
        u.query_pairs_mut()
            .extend_pairs(query.iter().map(|(k, v)| (*k, v.as_str())));
        let mut req = self.client.get(u);
        if let Some((u, p)) = self.creds {
            req = req.basic_auth(u, Some(p));
        }
        let resp = req.send().map_err(|e| self.http_error(realm, &e))?;
        let resp = self.check(realm, resp)?;
        #[derive(Deserialize)]
        struct Token {
            token: Option<String>,
            access_token: Option<String>,
        }
        let body = read_bounded(resp, realm, self.retry.idle_timeout)?;
        document(realm, &body)?;
        let t: Token = serde_json::from_slice(&body).map_err(|_| OciError::Format {
            what: realm.clone(),
            detail: "the token answer is not JSON with a token".into(),
        })?;
        t.token
            .or(t.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| OciError::Format {
                what: realm.clone(),
                detail: "the token answer holds no token".into(),
            })
    }

    /// Runs `once` until it succeeds, fails for good, or the retry policy
    /// runs out, with the release downloads' capped exponential backoff.
    fn retrying<T>(
        &mut self,
        url: &str,
        mut once: impl FnMut(&mut Self) -> Result<T, OciError>,
    ) -> Result<T, OciError> {
        let policy = self.retry;
        let attempts = policy.attempts.max(1);
        let mut delay = policy.first_delay;
        let mut attempt = 1;
        loop {
            match once(self) {
                Err(e) if retryable(&e) && attempt < attempts => {
                    tracing::warn!(
                        "{e}; retrying in {:.1} s (attempt {} of {attempts})",
                        delay.as_secs_f64(),
                        attempt + 1
                    );
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(policy.max_delay);
                    attempt += 1;
                }
                Err(e) if retryable(&e) && attempts > 1 => {
                    return Err(OciError::GaveUp {
                        url: url.to_string(),
                        attempts,
                        last: match e {
                            OciError::Status { status, .. } => format!("HTTP {status}"),
                            e => e.to_string(),
                        },
                    });
                }
                other => return other,
            }
        }
    }

    /// A manifest or index by digest, checked; with its media type.
    fn manifest(
        &mut self,
        digest: &Sha256Digest,
        what: &str,
    ) -> Result<(Vec<u8>, String), OciError> {
        let url = format!(
            "{}/v2/{}/manifests/sha256:{digest}",
            self.base, self.image.repository
        );
        self.retrying(&url, |s| s.manifest_once(&url, digest, what))
    }

    fn manifest_once(
        &mut self,
        url: &str,
        digest: &Sha256Digest,
        what: &str,
    ) -> Result<(Vec<u8>, String), OciError> {
        let accept = [OCI_INDEX, DOCKER_LIST, OCI_MANIFEST, DOCKER_MANIFEST].join(", ");
        let resp = self.get(url, Some(&accept))?;
        let header_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.split(';').next().unwrap_or("").trim().to_string());
        let body = read_bounded(resp, url, self.retry.idle_timeout)?;
        let actual = Sha256Digest(Sha256::digest(&body).into());
        if actual != *digest {
            return Err(OciError::Mismatch {
                what: what.to_string(),
                expected: *digest,
                actual,
            });
        }
        document(what, &body)?;
        #[derive(Deserialize)]
        struct Typed {
            #[serde(rename = "mediaType")]
            media_type: Option<String>,
            manifests: Option<serde_json::Value>,
        }
        let typed: Typed = serde_json::from_slice(&body).map_err(|e| OciError::Format {
            what: what.to_string(),
            detail: format!("not JSON: {e}"),
        })?;
        let media = typed.media_type.or(header_type).unwrap_or_else(|| {
            if typed.manifests.is_some() {
                OCI_INDEX.into()
            } else {
                OCI_MANIFEST.into()
            }
        });
        Ok((body, media))
    }

    /// A blob in the cache, downloaded and checked when missing; a blob whose
    /// bytes do not match its digest (or size) is deleted, never cached.
    fn blob(&mut self, digest: &Sha256Digest, size: u64, cache: &Cache) -> anyhow::Result<PathBuf> {
        let url = format!(
            "{}/v2/{}/blobs/sha256:{digest}",
            self.base, self.image.repository
        );
        cache.fill_asset(digest, |partial| {
            let fetched = self.retrying(&url.clone(), |s| {
                let resp = s.get(&url, None)?;
                let mut f = File::create(partial).map_err(io_err(partial))?;
                let mut hasher = Sha256::new();
                let mut reader = resp.take(size.saturating_add(1));
                let mut buf = vec![0u8; 1 << 16];
                let mut n_total = 0u64;
                loop {
                    let n = reader.read(&mut buf).map_err(|e| OciError::Http {
                        url: url.clone(),
                        detail: super::download::read_failure(&e, n_total, s.retry.idle_timeout),
                        transient: true,
                    })?;
                    if n == 0 {
                        break;
                    }
                    n_total += n as u64;
                    hasher.update(&buf[..n]);
                    f.write_all(&buf[..n]).map_err(io_err(partial))?;
                }
                f.sync_all().map_err(io_err(partial))?;
                let actual = Sha256Digest::of(hasher);
                let what = format!("{} blob sha256:{digest}", s.image.original);
                if actual != *digest {
                    return Err(OciError::Mismatch {
                        what,
                        expected: *digest,
                        actual,
                    });
                }
                if n_total != size {
                    return Err(OciError::Format {
                        what,
                        detail: format!(
                            "{n_total} bytes where the manifest says {size}; nothing was cached"
                        ),
                    });
                }
                Ok(())
            });
            // Blobs are fetched whole each time: a failed one is no partial
            // worth keeping (and one that failed its digest is not cached).
            if fetched.is_err() {
                let _ = std::fs::remove_file(partial);
            }
            fetched
        })
    }
}

/// The size and nesting caps, before a registry document is parsed.
fn document(what: &str, body: &[u8]) -> Result<(), OciError> {
    use crate::util::prescan;
    Ok(prescan::json(what, body, prescan::REGISTRY_DOCUMENT)?)
}

fn read_bounded(
    resp: reqwest::blocking::Response,
    url: &str,
    idle: Duration,
) -> Result<Vec<u8>, OciError> {
    let mut body = Vec::new();
    resp.take(MAX_DOCUMENT + 1)
        .read_to_end(&mut body)
        .map_err(|e| OciError::Http {
            url: url.to_string(),
            detail: super::download::read_failure(&e, body.len() as u64, idle),
            transient: true,
        })?;
    if body.len() as u64 > MAX_DOCUMENT {
        return Err(OciError::Format {
            what: url.to_string(),
            detail: format!("larger than {MAX_DOCUMENT} bytes; not a manifest"),
        });
    }
    Ok(body)
}

/// `realm="...",service="...",scope="..."` as a map.
fn parse_challenge(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = s.trim();
    while let Some((k, v)) = rest.split_once('=') {
        let k = k.trim().trim_start_matches(',').trim().to_ascii_lowercase();
        let v = v.trim_start();
        let (value, after) = if let Some(q) = v.strip_prefix('"') {
            match q.find('"') {
                Some(end) => (&q[..end], &q[end + 1..]),
                None => (q, ""),
            }
        } else {
            match v.find(',') {
                Some(end) => (&v[..end], &v[end..]),
                None => (v, ""),
            }
        };
        out.insert(k, value.to_string());
        rest = after.trim_start_matches(',').trim();
    }
    out
}

/// Whether `url` points at this machine (`localhost`, 127.0.0.0/8, ::1).
fn is_loopback_url(url: &str) -> bool {
    let Some(host) = reqwest::Url::parse(url)
        .ok()
        .and_then(|u| u.host_str().map(str::to_string))
    else {
        return false;
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|a| a.is_loopback())
}

/// Writes the OCI image layout as a tar: `oci-layout`, `index.json` naming
/// the pinned digest (so the image is found by the reference pods use), and
/// every blob the node needs under `blobs/sha256/`. An index keeps the other
/// architectures' entries; containerd's import skips their missing blobs.
fn write_layout(
    out: &File,
    image: &ImageRef,
    top_type: &str,
    top_size: u64,
    docs: &[(Sha256Digest, Vec<u8>)],
    blobs: &[(Sha256Digest, PathBuf)],
) -> std::io::Result<()> {
    let mut w = std::io::BufWriter::new(out);
    // A tagged image is stored under its tag and under its digest: a pod
    // asking for `repo:tag@sha256:...` is looked up by the digest name, and
    // k3s before late 2025 adds no digest name on import.
    let digest_name = format!(
        "{}/{}@sha256:{}",
        image.registry_name(),
        image.repository,
        image.digest
    );
    let mut names = vec![(image.stored_name(), image.tag.clone())];
    if image.tag.is_some() {
        names.push((digest_name, None));
    }
    let entries: Vec<serde_json::Value> = names
        .into_iter()
        .map(|(name, tag)| {
            serde_json::json!({
                "mediaType": top_type,
                "digest": format!("sha256:{}", image.digest),
                "size": top_size,
                "annotations": {
                    "io.containerd.image.name": name,
                    "org.opencontainers.image.ref.name": tag.unwrap_or_else(|| format!("sha256:{}", image.digest)),
                }
            })
        })
        .collect();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": entries,
    });
    tar_entry(&mut w, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    tar_entry(&mut w, "index.json", &serde_json::to_vec(&index)?)?;
    let mut seen = std::collections::BTreeSet::new();
    for (d, bytes) in docs {
        if seen.insert(*d) {
            tar_entry(&mut w, &format!("blobs/sha256/{d}"), bytes)?;
        }
    }
    for (d, path) in blobs {
        if seen.insert(*d) {
            let mut f = File::open(path)?;
            let len = f.metadata()?.len();
            tar_header(&mut w, &format!("blobs/sha256/{d}"), len)?;
            let copied = std::io::copy(&mut f, &mut w)?;
            if copied != len {
                return Err(std::io::Error::other(format!(
                    "{} changed while it was archived",
                    path.display()
                )));
            }
            pad(&mut w, len)?;
        }
    }
    w.write_all(&[0u8; 1024])?;
    w.flush()
}

/// What an image archive in the cache holds: the name its `index.json`
/// gives the image and the digests of its blobs (read from the tar headers,
/// skipping the data).
#[derive(Debug, Default)]
pub struct ArchiveContents {
    pub name: Option<String>,
    pub blobs: Vec<Sha256Digest>,
}

pub fn archive_contents(path: &Path) -> Result<ArchiveContents, OciError> {
    use std::io::{Seek, SeekFrom};
    let mut f = File::open(path).map_err(io_err(path))?;
    let mut out = ArchiveContents::default();
    let bad = |detail: &str| OciError::Format {
        what: path.display().to_string(),
        detail: format!("{detail}; not an image archive imgbuild wrote (remove it)"),
    };
    loop {
        let mut h = [0u8; 512];
        f.read_exact(&mut h).map_err(|_| bad("truncated"))?;
        if h.iter().all(|&b| b == 0) {
            return Ok(out);
        }
        let name_end = h[..100].iter().position(|&b| b == 0).unwrap_or(100);
        let name = std::str::from_utf8(&h[..name_end]).map_err(|_| bad("a bad entry name"))?;
        let size = std::str::from_utf8(&h[124..135])
            .ok()
            .and_then(|s| u64::from_str_radix(s.trim_matches(|c| c == '\0' || c == ' '), 8).ok())
            .ok_or_else(|| bad("a bad entry size"))?;
        if name == "index.json" && size <= MAX_DOCUMENT {
            let mut body = vec![0u8; size as usize];
            f.read_exact(&mut body).map_err(|_| bad("truncated"))?;
            crate::util::prescan::json(
                "index.json",
                &body,
                crate::util::prescan::REGISTRY_DOCUMENT,
            )
            .map_err(|e| bad(&e.to_string()))?;
            let v: serde_json::Value =
                serde_json::from_slice(&body).map_err(|_| bad("index.json is not JSON"))?;
            out.name = v["manifests"][0]["annotations"]["io.containerd.image.name"]
                .as_str()
                .map(str::to_string);
            f.seek(SeekFrom::Current(((512 - size % 512) % 512) as i64))
                .map_err(io_err(path))?;
            continue;
        }
        if let Some(d) = name.strip_prefix("blobs/sha256/") {
            out.blobs
                .push(Sha256Digest::parse(d).ok_or_else(|| bad("a blob name is not a digest"))?);
        }
        f.seek(SeekFrom::Current(size.div_ceil(512) as i64 * 512))
            .map_err(io_err(path))?;
    }
}

fn tar_entry(w: &mut impl Write, name: &str, data: &[u8]) -> std::io::Result<()> {
    tar_header(w, name, data.len() as u64)?;
    w.write_all(data)?;
    pad(w, data.len() as u64)
}

fn pad(w: &mut impl Write, len: u64) -> std::io::Result<()> {
    let rem = (512 - len % 512) % 512;
    w.write_all(&vec![0u8; rem as usize])
}

/// A ustar header for a regular file (names here are under 100 bytes).
fn tar_header(w: &mut impl Write, name: &str, size: u64) -> std::io::Result<()> {
    if name.len() >= 100 || size >= 8 << 30 {
        return Err(std::io::Error::other(format!(
            "{name}: too long a name or too large for the archive"
        )));
    }
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    let octal = |h: &mut [u8], at: usize, width: usize, v: u64| {
        let s = format!("{v:0w$o}", w = width - 1);
        h[at..at + width - 1].copy_from_slice(s.as_bytes());
    };
    octal(&mut h, 100, 8, 0o644);
    octal(&mut h, 108, 8, 0);
    octal(&mut h, 116, 8, 0);
    octal(&mut h, 124, 12, size);
    octal(&mut h, 136, 12, 0);
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    w.write_all(&h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_names_are_plain_file_names() {
        // The repository's last component names the archive in the image:
        // whatever a reference that parses holds, it is one plain name.
        for r in [
            "nginx:1.27",
            "ghcr.io/a/b/c-d_e.f:v1",
            "localhost:5000/x",
            "registry.example/very/deep/path/name",
        ] {
            let image = ImageRef::parse(&format!("{r}@sha256:{}", "0".repeat(64))).unwrap();
            let name = archive_file_name(&image);
            assert!(
                crate::util::names::fat_name_error(&name).is_none(),
                "{name}"
            );
            assert!(
                crate::util::names::debugfs_path_error(&format!("/{name}")).is_none(),
                "{name}"
            );
            assert!(
                name.starts_with("imgbuild-") && name.ends_with(".tar"),
                "{name}"
            );
        }
        for bad in ["../x", "a/../b", "a//b", ".hidden/x", "A/b"] {
            assert!(
                ImageRef::parse(&format!("{bad}@sha256:{}", "0".repeat(64))).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn challenges() {
        let c = parse_challenge(
            r#"realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull""#,
        );
        assert_eq!(c["realm"], "https://auth.example/token");
        assert_eq!(c["service"], "registry.example");
        assert_eq!(c["scope"], "repository:a/b:pull");
    }
}
