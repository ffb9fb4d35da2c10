//! Downloads to a partial file with sha256 computed while streaming, resuming
//! with HTTP Range after an interruption and retrying network errors and 5xx
//! with capped backoff. `file://` URLs and plain paths take the same path.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

use super::follow::Growing;
use crate::io::Sha256Digest;
use crate::io::progress::Progress;

#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error("{url}: HTTP {status}{hint}")]
    Status {
        url: String,
        status: u16,
        hint: &'static str,
    },
    #[error("{url}: gave up after {attempts} attempt(s): {last}")]
    GaveUp {
        url: String,
        attempts: u32,
        last: String,
    },
    #[error(
        "{url}: sha256 mismatch: expected {expected}, got {actual}; the partial download was deleted"
    )]
    Mismatch {
        url: String,
        expected: Sha256Digest,
        actual: Sha256Digest,
    },
    #[error("{path}: {source}")]
    Local { path: PathBuf, source: io::Error },
    #[error("{0}")]
    Client(String),
    #[error(
        "{url}: the server's TLS certificate is not trusted ({detail}); imgbuild checks it against the system's CA store, or the bundle that SSL_CERT_FILE or SSL_CERT_DIR names"
    )]
    Untrusted { url: String, detail: String },
    #[error("{url}: {detail}")]
    Redirect { url: String, detail: String },
    #[error("{url}: larger than {limit} bytes; not a checksum file")]
    TooLarge { url: String, limit: u64 },
}

/// How hard to try, and how long to wait for a silent server.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub first_delay: Duration,
    pub max_delay: Duration,
    /// The longest a request may go without a byte from the server (the
    /// answer's head, then each read of its body): past it the attempt is a
    /// transient failure, retried as a broken connection is.
    pub idle_timeout: Duration,
}

/// [`RetryPolicy::idle_timeout`] unless a test says otherwise: release
/// servers, registries and their CDNs send something within seconds.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 6,
            first_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(15),
            idle_timeout: IDLE_TIMEOUT,
        }
    }
}

/// Why a read of a response body failed, for people: a read that timed out
/// is the idle timeout, anything else the connection breaking.
pub(super) fn read_failure(e: &io::Error, done: u64, idle: Duration) -> String {
    // The blocking client reports a read past its timeout as an io::Error
    // wrapping a reqwest::Error that says it timed out.
    let timed_out = e.kind() == io::ErrorKind::TimedOut
        || e.get_ref()
            .and_then(|inner| inner.downcast_ref::<reqwest::Error>())
            .is_some_and(reqwest::Error::is_timeout);
    if timed_out {
        format!(
            "no data for {} s after {done} bytes (the idle timeout)",
            idle.as_secs_f64()
        )
    } else {
        format!(
            "the connection broke after {done} bytes: {}",
            crate::util::error_chain(e)
        )
    }
}

/// The connect timeout of every download and registry request.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Redirects followed before giving up (GitHub needs one: release asset to
/// its storage host).
const MAX_REDIRECTS: usize = 10;

/// The HTTP client of downloads: its `timeout` is, for a blocking client,
/// the limit on each wait for the server (the response head, then every
/// read of the body), not on the whole transfer: an idle timeout.
fn client(idle: Duration) -> Result<reqwest::blocking::Client, DownloadError> {
    crate::util::tls::install_provider();
    // Follow redirects (release assets live elsewhere), but never from https
    // to http: a checksum file fetched in clear could be swapped, and the
    // digest it names would then vouch for anything.
    let redirects = reqwest::redirect::Policy::custom(|attempt| {
        let downgrade = attempt.url().scheme() == "http"
            && attempt.previous().iter().any(|u| u.scheme() == "https");
        if downgrade {
            let to = attempt.url().to_string();
            attempt.error(format!(
                "refusing a redirect from https to plain http ({to})"
            ))
        } else if attempt.previous().len() > MAX_REDIRECTS {
            attempt.error(format!("more than {MAX_REDIRECTS} redirects"))
        } else {
            attempt.follow()
        }
    });
    reqwest::blocking::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(idle)
        .redirect(redirects)
        .user_agent(concat!("imgbuild/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| DownloadError::Client(format!("cannot set up the HTTP client: {e}")))
}

/// A local path for `file://` URLs and plain paths; `None` for http(s).
pub fn local_path(url: &str) -> Option<PathBuf> {
    if let Some(p) = url.strip_prefix("file://") {
        return Some(PathBuf::from(p));
    }
    if url.starts_with("http://") || url.starts_with("https://") {
        return None;
    }
    Some(PathBuf::from(url))
}

enum Attempt<T> {
    Done(T),
    /// Worth another try; the message says why.
    Retry(String),
}

/// Runs `once` until it is done, fails for good, or `policy` runs out.
fn retrying<T>(
    url: &str,
    policy: RetryPolicy,
    mut once: impl FnMut() -> Result<Attempt<T>, DownloadError>,
) -> Result<T, DownloadError> {
    let mut delay = policy.first_delay;
    let mut last = String::new();
    for attempt in 1..=policy.attempts.max(1) {
        if attempt > 1 {
            tracing::warn!(
                "{url}: {last}; retrying in {:.1} s (attempt {attempt} of {})",
                delay.as_secs_f64(),
                policy.attempts
            );
            std::thread::sleep(delay);
            delay = (delay * 2).min(policy.max_delay);
        }
        match once()? {
            Attempt::Done(t) => return Ok(t),
            Attempt::Retry(why) => last = why,
        }
    }
    Err(DownloadError::GaveUp {
        url: url.to_string(),
        attempts: policy.attempts.max(1),
        last,
    })
}

/// The sha256 of the partial file, computed as it is written: bytes
/// appended are hashed on the way, and bytes on disk the hash has not seen
/// (a partial file from an interrupted run) are read once when needed, so a
/// download costs no second pass over the file.
struct RunningHash {
    sha: Sha256,
    /// Bytes of the file hashed so far.
    pos: u64,
}

impl RunningHash {
    fn new() -> Self {
        RunningHash {
            sha: Sha256::new(),
            pos: 0,
        }
    }

    /// Makes the hash cover exactly the first `len` bytes of `file`.
    fn catch_up(&mut self, file: &File, len: u64) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        if self.pos > len {
            *self = RunningHash::new();
        }
        let mut buf = vec![0u8; (len - self.pos).min(1 << 20) as usize];
        while self.pos < len {
            let k = ((len - self.pos) as usize).min(buf.len());
            file.read_exact_at(&mut buf[..k], self.pos)?;
            self.sha.update(&buf[..k]);
            self.pos += k as u64;
        }
        Ok(())
    }

    /// `data` was written at `at`.
    fn wrote(&mut self, file: &File, at: u64, data: &[u8]) -> io::Result<()> {
        if self.pos != at {
            self.catch_up(file, at)?;
        }
        self.sha.update(data);
        self.pos += data.len() as u64;
        Ok(())
    }
}

/// Downloads `url` into `partial` (appending to what is there when the server
/// can resume) and returns the sha256 of the complete file. With `follow`,
/// reports the file's growth to it (an unpacker reading along) and says when
/// the download starts over.
pub fn download(
    url: &str,
    partial: &Path,
    policy: RetryPolicy,
    label: &str,
    follow: Option<&Growing>,
) -> Result<Sha256Digest, DownloadError> {
    let local = |source| DownloadError::Local {
        path: partial.to_owned(),
        source,
    };
    let mut hash = RunningHash::new();
    if let Some(src) = local_path(url) {
        let mut input = File::open(&src).map_err(|source| DownloadError::Local {
            path: src.clone(),
            source,
        })?;
        let total = input.metadata().ok().map(|m| m.len());
        if let Some(g) = follow
            && std::fs::metadata(partial).is_ok_and(|m| m.len() > 0)
        {
            g.restart();
        }
        let mut out = OpenOptions::new()
            .create(true)
            .read(true)
            .write(true)
            .truncate(true)
            .open(partial)
            .map_err(local)?;
        let mut progress = Progress::new(label, total);
        let mut buf = vec![0u8; 1 << 20];
        let mut done = 0u64;
        loop {
            let n = input
                .read(&mut buf)
                .map_err(|source| DownloadError::Local {
                    path: src.clone(),
                    source,
                })?;
            if n == 0 {
                break;
            }
            out.write_all(&buf[..n]).map_err(local)?;
            hash.wrote(&out, done, &buf[..n]).map_err(local)?;
            done += n as u64;
            if let Some(g) = follow {
                g.grew(done);
            }
            progress.inc(n as u64);
        }
        out.sync_all().map_err(local)?;
        progress.finish();
        return Ok(Sha256Digest::of(hash.sha));
    }

    let client = client(policy.idle_timeout)?;
    retrying(url, policy, || {
        try_once(
            &client,
            url,
            partial,
            label,
            &mut hash,
            follow,
            policy.idle_timeout,
        )
    })?;
    let file = File::open(partial).map_err(local)?;
    let len = file.metadata().map_err(local)?.len();
    hash.catch_up(&file, len).map_err(local)?;
    Ok(Sha256Digest::of(hash.sha))
}

/// `first` and `total` of a `Content-Range: bytes first-last/total` (or `*/total`).
fn content_range(resp: &reqwest::blocking::Response) -> (Option<u64>, Option<u64>) {
    let Some(v) = resp
        .headers()
        .get(reqwest::header::CONTENT_RANGE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().strip_prefix("bytes "))
    else {
        return (None, None);
    };
    let (range, total) = v.split_once('/').unwrap_or((v, "*"));
    let first = range.split('-').next().and_then(|n| n.trim().parse().ok());
    (first, total.trim().parse().ok())
}

fn try_once(
    client: &reqwest::blocking::Client,
    url: &str,
    partial: &Path,
    label: &str,
    hash: &mut RunningHash,
    follow: Option<&Growing>,
    idle: Duration,
) -> Result<Attempt<()>, DownloadError> {
    let local = |source| DownloadError::Local {
        path: partial.to_owned(),
        source,
    };
    // Whatever throws away bytes already written tells the follower first.
    let restart = || {
        if let Some(g) = follow {
            g.restart();
        }
    };
    let have = std::fs::metadata(partial).map(|m| m.len()).unwrap_or(0);
    let mut req = client.get(url);
    if have > 0 {
        req = req.header(reqwest::header::RANGE, format!("bytes={have}-"));
    }
    let mut resp = match req.send() {
        Ok(r) => r,
        Err(e) => return permanent(url, &e).map(|()| Attempt::Retry(describe(&e, idle))),
    };
    // Offset in the file of the body's first byte.
    let first = match body_offset(&resp, url, partial, have, &restart)? {
        ControlFlow::Continue(first) => first,
        ControlFlow::Break(attempt) => return Ok(attempt),
    };
    let append = first > 0;
    if !append && have > 0 {
        restart();
    }
    let expected = resp.content_length().map(|n| first + n);
    // Readable too: the running hash may need to read what is already there.
    let mut out = OpenOptions::new()
        .create(true)
        .read(true)
        .write(true)
        .append(append)
        .truncate(!append)
        .open(partial)
        .map_err(local)?;
    // Body bytes before `have` are already in the file.
    let mut skip = if append { have - first } else { 0 };
    let mut done = if append { have } else { 0 };
    let mut progress = Progress::new(label, expected);
    progress.set_position(done);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match resp.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                out.sync_all().map_err(local)?;
                return Ok(Attempt::Retry(read_failure(&e, done, idle)));
            }
        };
        let dropped = skip.min(n as u64) as usize;
        skip -= dropped as u64;
        out.write_all(&buf[dropped..n]).map_err(local)?;
        hash.wrote(&out, done, &buf[dropped..n]).map_err(local)?;
        done += (n - dropped) as u64;
        if let Some(g) = follow {
            g.grew(done);
        }
        progress.set_position(done);
    }
    out.sync_all().map_err(local)?;
    if let Some(exp) = expected
        && done < exp
    {
        return Ok(Attempt::Retry(format!(
            "the server sent {done} of {exp} bytes"
        )));
    }
    progress.finish();
    Ok(Attempt::Done(()))
}

/// What the server's answer means for the partial file of `have` bytes:
/// the offset in the file of the body's first byte, or the end of this
/// attempt (the file is complete, must start over, or the server failed).
fn body_offset(
    resp: &reqwest::blocking::Response,
    url: &str,
    partial: &Path,
    have: u64,
    restart: &dyn Fn(),
) -> Result<ControlFlow<Attempt<()>, u64>, DownloadError> {
    let local = |source| DownloadError::Local {
        path: partial.to_owned(),
        source,
    };
    let status = resp.status().as_u16();
    let first = match status {
        206 if have > 0 => match content_range(resp).0 {
            // A cache may serve from an earlier block boundary: skip what we have.
            Some(first) if first <= have => first,
            other => {
                // A gap (or no range at all): what we have cannot be continued.
                restart();
                std::fs::remove_file(partial).map_err(local)?;
                return Ok(ControlFlow::Break(Attempt::Retry(format!(
                    "the server answered a range starting at {} instead of {have}; starting over",
                    other.map_or("an unknown offset".to_string(), |n| n.to_string())
                ))));
            }
        },
        200 => 0,
        416 if have > 0 => match content_range(resp).1 {
            // Nothing left to send: the file is complete (the digest will tell).
            Some(total) if total == have => return Ok(ControlFlow::Break(Attempt::Done(()))),
            None => return Ok(ControlFlow::Break(Attempt::Done(()))),
            Some(total) => {
                // Longer than the file itself: not a prefix of it, so useless.
                restart();
                std::fs::remove_file(partial).map_err(local)?;
                return Ok(ControlFlow::Break(Attempt::Retry(format!(
                    "the partial download ({have} bytes) is longer than the file on the server ({total} bytes); starting over"
                ))));
            }
        },
        s if s >= 500 || s == 408 || s == 429 => {
            return Ok(ControlFlow::Break(Attempt::Retry(format!("HTTP {s}"))));
        }
        s => {
            return Err(DownloadError::Status {
                url: url.to_string(),
                status: s,
                hint: match s {
                    404 => " (not found: check the manifest's URL)",
                    401 | 403 => " (access denied)",
                    300..=399 => " (a redirect without a usable Location)",
                    _ => "",
                },
            });
        }
    };
    Ok(ControlFlow::Continue(first))
}

/// A request that failed before its answer, for people.
fn describe(e: &reqwest::Error, idle: Duration) -> String {
    if e.is_timeout() {
        format!(
            "no answer within {} s (the idle timeout)",
            idle.as_secs_f64()
        )
    } else {
        crate::util::error_chain(e)
    }
}

/// Errors no retry can fix: an untrusted certificate, a refused redirect.
fn permanent(url: &str, e: &reqwest::Error) -> Result<(), DownloadError> {
    if e.is_redirect() {
        return Err(DownloadError::Redirect {
            url: url.to_string(),
            detail: crate::util::error_chain(e),
        });
    }
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = src {
        if let Some(rustls::Error::InvalidCertificate(why)) = err.downcast_ref::<rustls::Error>() {
            return Err(DownloadError::Untrusted {
                url: url.to_string(),
                detail: format!("{why:?}"),
            });
        }
        // io::Error hides the error it wraps from source() (and hyper-rustls
        // wraps rustls' io::Error in another): look inside.
        src = match err.downcast_ref::<io::Error>().and_then(|io| io.get_ref()) {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => err.source(),
        };
    }
    Ok(())
}

/// The most a checksum file may hold; Ubuntu's SHA256SUMS is a few kB.
pub const MAX_TEXT: u64 = 16 << 20;

/// Fetches a small text file (a checksum list) whole, into memory.
pub fn fetch_text(url: &str, policy: RetryPolicy) -> Result<String, DownloadError> {
    let too_large = || DownloadError::TooLarge {
        url: url.to_string(),
        limit: MAX_TEXT,
    };
    let bytes = if let Some(path) = local_path(url) {
        let f = File::open(&path).map_err(|source| DownloadError::Local {
            path: path.clone(),
            source,
        })?;
        let mut v = Vec::new();
        f.take(MAX_TEXT + 1)
            .read_to_end(&mut v)
            .map_err(|source| DownloadError::Local { path, source })?;
        v
    } else {
        let client = client(policy.idle_timeout)?;
        retrying(url, policy, || {
            let resp = match client.get(url).send() {
                Ok(r) => r,
                Err(e) => {
                    return permanent(url, &e)
                        .map(|()| Attempt::Retry(describe(&e, policy.idle_timeout)));
                }
            };
            match resp.status().as_u16() {
                200 => {}
                s if s >= 500 || s == 408 || s == 429 => {
                    return Ok(Attempt::Retry(format!("HTTP {s}")));
                }
                s => {
                    return Err(DownloadError::Status {
                        url: url.to_string(),
                        status: s,
                        hint: if s == 404 {
                            " (not found: check the manifest's checksums_url)"
                        } else {
                            ""
                        },
                    });
                }
            }
            if resp.content_length().is_some_and(|n| n > MAX_TEXT) {
                return Err(too_large());
            }
            let mut v = Vec::new();
            match resp.take(MAX_TEXT + 1).read_to_end(&mut v) {
                Ok(_) => Ok(Attempt::Done(v)),
                Err(e) => Ok(Attempt::Retry(read_failure(
                    &e,
                    v.len() as u64,
                    policy.idle_timeout,
                ))),
            }
        })?
    };
    if bytes.len() as u64 > MAX_TEXT {
        return Err(too_large());
    }
    String::from_utf8(bytes).map_err(|_| DownloadError::Client(format!("{url}: not a text file")))
}
