//! A small Kubernetes API client over HTTPS (reqwest + rustls): the server's
//! certificate must chain to the cluster's own server CA (the only trusted
//! root, never the system store, never "insecure") and name the host asked
//! for; the client authenticates with a certificate from the cluster's client
//! CA. Errors are typed so that callers can tell an unreachable API from a
//! certificate that does not match.
//!
//! Nothing the API sends is trusted to be small: every body is read through a
//! cap (`MAX_OBJECT_BYTES` per object, `MAX_WATCH_LINE_BYTES` per watch
//! event, `MAX_LIST_BYTES` per list, decoded as it streams in), and a watch
//! never outlasts its `timeoutSeconds` plus `WATCH_MARGIN`, nor the caller's
//! deadline.

use std::io::{BufRead, Read};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::Method;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::de::DeserializeOwned;

use super::list::{self, List};
use super::node::{Node, Status, VersionInfo};
use crate::secrets::client::ClientCert;

/// The most read of one object (a Node, a Pod, a Status): far above any real
/// Node (tens of KiB), far below what would hurt.
pub const MAX_OBJECT_BYTES: u64 = 4 << 20;
/// The most read of one watch line: one object and its event envelope.
pub const MAX_WATCH_LINE_BYTES: u64 = MAX_OBJECT_BYTES + (64 << 10);
/// The most read of one list (decoded as it arrives, never held as bytes);
/// each item is held to `MAX_OBJECT_BYTES` as well.
pub const MAX_LIST_BYTES: u64 = 64 << 20;
/// The most read of an error body or `/readyz`.
const MAX_SMALL_BYTES: u64 = 64 << 10;
/// How long past its `timeoutSeconds` a watch may stay open: the API ends a
/// watch at that time, so a longer silence is a stalled peer.
pub const WATCH_MARGIN: Duration = Duration::from_secs(5);

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
    /// A name that cannot be a Kubernetes object's; nothing was sent.
    #[error("{name:?} is not a Kubernetes object name (letters, digits, '-', '.', at most 253)")]
    InvalidName { name: String },
    /// A body over one of the caps above; reading stopped at the cap.
    #[error("{url}: {what} is larger than {}, the most imgbuild reads of it; reading stopped there", size(*limit))]
    TooLarge {
        url: String,
        what: String,
        limit: u64,
    },
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

    /// The HTTP status of an answer that was an API error.
    pub fn status(&self) -> Option<u16> {
        match self {
            ApiError::ClientRejected { .. } => Some(401),
            ApiError::Forbidden { .. } => Some(403),
            ApiError::Http { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// `4 MiB`, `64 KiB`, `100 bytes`.
pub(crate) fn size(n: u64) -> String {
    if n >= 1 << 20 && n.is_multiple_of(1 << 20) {
        format!("{} MiB", n >> 20)
    } else if n >= 1 << 10 && n.is_multiple_of(1 << 10) {
        format!("{} KiB", n >> 10)
    } else {
        format!("{n} bytes")
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

/// How a PATCH body is to be read (the `Content-Type` of the request).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchKind {
    /// RFC 7386: maps merge, `null` deletes a key, lists replace.
    Merge,
    /// Kubernetes' strategic merge: lists with a merge key merge by it.
    Strategic,
}

impl PatchKind {
    fn content_type(self) -> &'static str {
        match self {
            PatchKind::Merge => "application/merge-patch+json",
            PatchKind::Strategic => "application/strategic-merge-patch+json",
        }
    }
}

/// One change a watch reported.
#[derive(Debug, Clone)]
pub enum Change<T> {
    /// ADDED or MODIFIED: the object as it is now.
    Upsert(T),
    Deleted(T),
}

/// A raw answer: status and a body read within its cap.
pub(crate) struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
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

/// A read that ended because its time ran out: an io error of that kind,
/// or one that wraps a reqwest timeout (a body read says only "request or
/// response body error" on top).
fn is_timeout(e: &std::io::Error) -> bool {
    if e.kind() == std::io::ErrorKind::TimedOut || e.to_string().contains("timed out") {
        return true;
    }
    let mut next: Option<&(dyn std::error::Error + 'static)> = e
        .get_ref()
        .map(|inner| inner as &(dyn std::error::Error + 'static));
    while let Some(err) = next {
        if err
            .downcast_ref::<reqwest::Error>()
            .is_some_and(reqwest::Error::is_timeout)
            || err
                .downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut)
            || err.to_string().contains("timed out")
        {
            return true;
        }
        next = err.source();
    }
    false
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

    /// A read of a body failed: a timeout or a broken connection.
    fn classify_io(&self, e: &std::io::Error, timeout: Duration) -> ApiError {
        if is_timeout(e) {
            ApiError::Timeout {
                url: self.url.clone(),
                after: timeout,
            }
        } else {
            ApiError::Unreachable {
                url: self.url.clone(),
                detail: format!("the answer broke off: {e}"),
            }
        }
    }

    /// Sends one request; `timeout` covers connecting and the whole body.
    fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<(&'static str, Vec<u8>)>,
        timeout: Duration,
    ) -> Result<reqwest::blocking::Response, ApiError> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.url))
            .timeout(timeout)
            .header("Accept", "application/json");
        if let Some((content_type, bytes)) = body {
            req = req.header("Content-Type", content_type).body(bytes);
        }
        req.send().map_err(|e| self.classify(e, timeout))
    }

    /// A single request's time: what is left of `timeout`, never more than
    /// the configured request timeout, never less than 100 ms.
    fn clamp(&self, timeout: Duration) -> Duration {
        timeout
            .min(self.request_timeout)
            .max(Duration::from_millis(100))
    }

    /// Reads a whole body, refusing one over `limit` (by its declared length
    /// before reading anything, else at the cap).
    fn read_capped(
        &self,
        resp: reqwest::blocking::Response,
        limit: u64,
        what: &str,
        path: &str,
        timeout: Duration,
    ) -> Result<Vec<u8>, ApiError> {
        let too_large = || ApiError::TooLarge {
            url: format!("{}{path}", self.url),
            what: what.to_string(),
            limit,
        };
        if resp.content_length().is_some_and(|n| n > limit) {
            return Err(too_large());
        }
        let mut body = Vec::new();
        resp.take(limit + 1)
            .read_to_end(&mut body)
            .map_err(|e| self.classify_io(&e, timeout))?;
        if body.len() as u64 > limit {
            return Err(too_large());
        }
        Ok(body)
    }

    fn error_for(&self, status: u16, body: &[u8]) -> ApiError {
        let url = self.url.clone();
        let message = serde_json::from_slice::<Status>(body)
            .ok()
            .map(|s| s.message)
            .filter(|m| !m.is_empty())
            .unwrap_or_else(|| {
                String::from_utf8_lossy(body)
                    .trim()
                    .chars()
                    .take(300)
                    .collect()
            });
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

    /// One request whose answer is one object (or an error `Status`), read
    /// within `MAX_OBJECT_BYTES`.
    pub(crate) fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<(&'static str, Vec<u8>)>,
        timeout: Duration,
    ) -> Result<Answer, ApiError> {
        let timeout = self.clamp(timeout);
        let resp = self.send(method, path, body, timeout)?;
        let status = resp.status().as_u16();
        let limit = if status < 300 {
            MAX_OBJECT_BYTES
        } else {
            MAX_SMALL_BYTES
        };
        let what = if status < 300 {
            "the answer"
        } else {
            "the error answer"
        };
        let body = self.read_capped(resp, limit, what, path, timeout)?;
        Ok(Answer { status, body })
    }

    fn decode<T: DeserializeOwned>(&self, path: &str, body: &[u8]) -> Result<T, ApiError> {
        serde_json::from_slice(body).map_err(|e| ApiError::Decode {
            url: format!("{}{path}", self.url),
            detail: e.to_string(),
        })
    }

    /// GET `path` as one JSON object; `None` for 404.
    pub(crate) fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        timeout: Duration,
    ) -> Result<Option<T>, ApiError> {
        let a = self.call(Method::GET, path, None, timeout)?;
        match a.status {
            200 => self.decode(path, &a.body).map(Some),
            404 => Ok(None),
            s => Err(self.error_for(s, &a.body)),
        }
    }

    /// PATCH `path` with `patch`; the object as the API stored it.
    pub(crate) fn patch<T: DeserializeOwned>(
        &self,
        path: &str,
        patch: &serde_json::Value,
        kind: PatchKind,
        timeout: Duration,
    ) -> Result<T, ApiError> {
        let body = serde_json::to_vec(patch).map_err(|e| ApiError::Decode {
            url: format!("{}{path}", self.url),
            detail: format!("the patch does not encode: {e}"),
        })?;
        let a = self.call(
            Method::PATCH,
            path,
            Some((kind.content_type(), body)),
            timeout,
        )?;
        match a.status {
            200 | 201 => self.decode(path, &a.body),
            s => Err(self.error_for(s, &a.body)),
        }
    }

    /// POST a JSON body; the raw answer, for callers that read the status.
    pub(crate) fn post(
        &self,
        path: &str,
        body: &serde_json::Value,
        timeout: Duration,
    ) -> Result<Answer, ApiError> {
        let bytes = serde_json::to_vec(body).map_err(|e| ApiError::Decode {
            url: format!("{}{path}", self.url),
            detail: format!("the request does not encode: {e}"),
        })?;
        let a = self.call(
            Method::POST,
            path,
            Some(("application/json", bytes)),
            timeout,
        )?;
        if a.status == 401 || a.status == 403 {
            return Err(self.error_for(a.status, &a.body));
        }
        Ok(a)
    }

    /// The API error for an answer a caller did not expect.
    pub(crate) fn unexpected(&self, a: &Answer) -> ApiError {
        self.error_for(a.status, &a.body)
    }

    /// GET a list, decoded as it streams in: at most `MAX_LIST_BYTES` read,
    /// each item at most `MAX_OBJECT_BYTES`.
    pub(crate) fn list<T: DeserializeOwned>(
        &self,
        path: &str,
        timeout: Duration,
    ) -> Result<List<T>, ApiError> {
        let timeout = self.clamp(timeout);
        let resp = self.send(Method::GET, path, None, timeout)?;
        let status = resp.status().as_u16();
        if status != 200 {
            let body =
                self.read_capped(resp, MAX_SMALL_BYTES, "the error answer", path, timeout)?;
            return Err(self.error_for(status, &body));
        }
        let url = format!("{}{path}", self.url);
        list::decode(resp, MAX_LIST_BYTES, MAX_OBJECT_BYTES).map_err(|e| match e {
            list::Error::ListTooLarge => ApiError::TooLarge {
                url,
                what: "the list".into(),
                limit: MAX_LIST_BYTES,
            },
            list::Error::ItemTooLarge => ApiError::TooLarge {
                url,
                what: "an item of the list".into(),
                limit: MAX_OBJECT_BYTES,
            },
            list::Error::Io(e) => self.classify_io(&e, timeout),
            list::Error::Json(detail) => ApiError::Decode { url, detail },
        })
    }

    /// `GET /readyz?verbose`: 200 is ready; 500 lists the failing checks.
    pub fn readyz(&self, timeout: Duration) -> Result<Health, ApiError> {
        let timeout = self.clamp(timeout);
        let path = "/readyz?verbose";
        let resp = self.send(Method::GET, path, None, timeout)?;
        let status = resp.status().as_u16();
        let body = self.read_capped(resp, MAX_SMALL_BYTES, "the answer", path, timeout)?;
        let body = String::from_utf8_lossy(&body);
        match status {
            200 => Ok(Health::Ready),
            500 | 503 => Ok(Health::NotReady(
                body.lines()
                    .filter(|l| l.starts_with("[-]"))
                    .map(|l| l.trim_start_matches("[-]").trim())
                    .collect::<Vec<_>>()
                    .join(", "),
            )),
            s => Err(self.error_for(s, body.as_bytes())),
        }
    }

    /// `GET /version`: the server's Kubernetes (k3s) version.
    pub fn version(&self, timeout: Duration) -> Result<String, ApiError> {
        Ok(self
            .get::<VersionInfo>("/version", timeout)?
            .map(|v| v.git_version)
            .unwrap_or_default())
    }

    /// `GET /api/v1/nodes/NAME`; `None` when no such Node exists.
    pub fn node(&self, name: &str, timeout: Duration) -> Result<Option<Node>, ApiError> {
        self.get(&format!("/api/v1/nodes/{}", path_segment(name)?), timeout)
    }

    /// `GET /api/v1/nodes`: every Node.
    pub fn nodes(&self, timeout: Duration) -> Result<Vec<Node>, ApiError> {
        Ok(self.list("/api/v1/nodes", timeout)?.items)
    }

    /// Watches every Node for up to `duration` (never past `deadline`),
    /// calling `event` with each changed or added Node; stops early when it
    /// returns `true`. Returns whether it was stopped that way.
    pub fn watch_nodes(
        &self,
        duration: Duration,
        deadline: Instant,
        mut event: impl FnMut(&Node) -> bool,
    ) -> Result<bool, ApiError> {
        self.watch::<Node>(
            "/api/v1/nodes?watch=true",
            duration,
            deadline,
            |c| match c {
                Change::Upsert(n) => event(&n),
                Change::Deleted(_) => false,
            },
        )
    }

    /// Watches `path` (which has `watch=true` and no `timeoutSeconds`) for up
    /// to `duration`, and never past `deadline`: the request lasts at most
    /// `timeoutSeconds + WATCH_MARGIN`, so a peer that keeps the stream open
    /// (or trickles bytes) past its own timeout cannot hold the caller.
    /// Events are read a line at a time within `MAX_WATCH_LINE_BYTES`. Returns
    /// whether `event` stopped it by returning `true`.
    pub(crate) fn watch<T: DeserializeOwned>(
        &self,
        path: &str,
        duration: Duration,
        deadline: Instant,
        mut event: impl FnMut(Change<T>) -> bool,
    ) -> Result<bool, ApiError> {
        let secs = duration.as_secs().max(1);
        let path = format!("{path}&timeoutSeconds={secs}");
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        let limit = (Duration::from_secs(secs) + WATCH_MARGIN)
            .min(left)
            .max(Duration::from_millis(100));
        let resp = self.send(Method::GET, &path, None, limit)?;
        let status = resp.status().as_u16();
        if status != 200 {
            let body = self.read_capped(resp, MAX_SMALL_BYTES, "the error answer", &path, limit)?;
            return Err(self.error_for(status, &body));
        }
        let mut reader = std::io::BufReader::new(resp);
        let mut line = Vec::new();
        loop {
            match read_line_capped(&mut reader, &mut line, MAX_WATCH_LINE_BYTES) {
                Ok(false) => return Ok(false),
                Ok(true) => {}
                // A timeout here ends the watch like its natural end would.
                Err(LineError::Io(e)) if is_timeout(&e) => return Ok(false),
                Err(LineError::Io(e)) => {
                    return Err(ApiError::Unreachable {
                        url: self.url.clone(),
                        detail: format!("the watch broke off: {e}"),
                    });
                }
                Err(LineError::TooLong) => {
                    return Err(ApiError::TooLarge {
                        url: format!("{}{path}", self.url),
                        what: "a watch event".into(),
                        limit: MAX_WATCH_LINE_BYTES,
                    });
                }
            }
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            if self.watch_line(&path, &line, &mut event)? {
                return Ok(true);
            }
        }
    }

    /// One event line: `Some(true)` when `event` asked to stop.
    fn watch_line<T: DeserializeOwned>(
        &self,
        path: &str,
        line: &[u8],
        event: &mut impl FnMut(Change<T>) -> bool,
    ) -> Result<bool, ApiError> {
        let ev: super::node::WatchEvent = self.decode(path, line)?;
        match ev.kind.as_str() {
            "ADDED" | "MODIFIED" => Ok(serde_json::from_value::<T>(ev.object)
                .map(|o| event(Change::Upsert(o)))
                .unwrap_or(false)),
            "DELETED" => Ok(serde_json::from_value::<T>(ev.object)
                .map(|o| event(Change::Deleted(o)))
                .unwrap_or(false)),
            "ERROR" => {
                let s: Status = serde_json::from_value(ev.object).unwrap_or_default();
                // 410 Gone: the watch is too old; the caller starts another.
                if s.code == 410 {
                    return Ok(false);
                }
                Err(self.error_for(s.code, s.message.as_bytes()))
            }
            _ => Ok(false),
        }
    }
}

enum LineError {
    Io(std::io::Error),
    TooLong,
}

/// Reads one `\n`-terminated line into `line` (without the newline), holding
/// at most `cap` bytes; `false` at the end of the stream.
fn read_line_capped(r: &mut impl BufRead, line: &mut Vec<u8>, cap: u64) -> Result<bool, LineError> {
    line.clear();
    loop {
        let buf = r.fill_buf().map_err(LineError::Io)?;
        if buf.is_empty() {
            return Ok(!line.is_empty());
        }
        let (take, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i, true),
            None => (buf.len(), false),
        };
        if (line.len() + take) as u64 > cap {
            return Err(LineError::TooLong);
        }
        line.extend_from_slice(&buf[..take]);
        r.consume(if done { take + 1 } else { take });
        if done {
            return Ok(true);
        }
    }
}

/// A Kubernetes object name as one URL path segment. Names are DNS labels or
/// subdomains; anything else (a `/`, `..`, a space) is refused rather than
/// sent, so a name can never reach another path.
pub(crate) fn path_segment(name: &str) -> Result<&str, ApiError> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
    if ok {
        Ok(name)
    } else {
        Err(ApiError::InvalidName {
            name: name.chars().take(80).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_capped() {
        let data = b"{\"a\":1}\n\n{\"b\":2}";
        let mut r = std::io::BufReader::with_capacity(3, &data[..]);
        let mut line = Vec::new();
        assert!(matches!(read_line_capped(&mut r, &mut line, 100), Ok(true)));
        assert_eq!(line, b"{\"a\":1}");
        assert!(matches!(read_line_capped(&mut r, &mut line, 100), Ok(true)));
        assert!(line.is_empty());
        assert!(matches!(read_line_capped(&mut r, &mut line, 100), Ok(true)));
        assert_eq!(line, b"{\"b\":2}");
        assert!(matches!(
            read_line_capped(&mut r, &mut line, 100),
            Ok(false)
        ));
        let long = vec![b'x'; 1000];
        let mut r = std::io::BufReader::with_capacity(64, &long[..]);
        assert!(matches!(
            read_line_capped(&mut r, &mut line, 999),
            Err(LineError::TooLong)
        ));
        assert!(line.len() <= 999);
    }

    #[test]
    fn sizes_and_segments() {
        assert_eq!(size(4 << 20), "4 MiB");
        assert_eq!(size(64 << 10), "64 KiB");
        assert_eq!(size(100), "100 bytes");
        assert_eq!(path_segment("node01").unwrap(), "node01");
        for bad in ["", ".", "..", "a/b", "x y", "n%2F"] {
            assert!(path_segment(bad).is_err(), "{bad:?}");
        }
    }
}
