//! Downloads to a partial file with sha256 computed while streaming, resuming
//! with HTTP Range after an interruption and retrying network errors and 5xx
//! with capped backoff. `file://` URLs and plain paths take the same path.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::io::HashingWriter;
use crate::io::Sha256Digest;
use crate::io::hash::sha256_reader;
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
}

/// How hard to try.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub first_delay: Duration,
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 6,
            first_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(15),
        }
    }
}

fn client() -> Result<reqwest::blocking::Client, DownloadError> {
    crate::util::tls::install_provider();
    reqwest::blocking::Client::builder()
        .connect_timeout(Duration::from_secs(30))
        .timeout(None)
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

enum Attempt {
    Done,
    /// Worth another try; the message says why.
    Retry(String),
}

/// Downloads `url` into `partial` (appending to what is there when the server
/// can resume) and returns the sha256 of the complete file.
pub fn download(
    url: &str,
    partial: &Path,
    policy: RetryPolicy,
    label: &str,
) -> Result<Sha256Digest, DownloadError> {
    let local = |source| DownloadError::Local {
        path: partial.to_owned(),
        source,
    };
    if let Some(src) = local_path(url) {
        let mut input = File::open(&src).map_err(|source| DownloadError::Local {
            path: src.clone(),
            source,
        })?;
        let total = input.metadata().ok().map(|m| m.len());
        let mut out = HashingWriter::new(File::create(partial).map_err(local)?);
        let mut progress = Progress::new(label, total);
        let mut buf = vec![0u8; 1 << 20];
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
            progress.inc(n as u64);
        }
        let (file, digest) = out.finish();
        file.sync_all().map_err(local)?;
        progress.finish();
        return Ok(digest);
    }

    let client = client()?;
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
        match try_once(&client, url, partial, label)? {
            Attempt::Done => return hash_file(partial).map_err(local),
            Attempt::Retry(why) => last = why,
        }
    }
    Err(DownloadError::GaveUp {
        url: url.to_string(),
        attempts: policy.attempts.max(1),
        last,
    })
}

fn hash_file(path: &Path) -> io::Result<Sha256Digest> {
    sha256_reader(File::open(path)?)
}

fn try_once(
    client: &reqwest::blocking::Client,
    url: &str,
    partial: &Path,
    label: &str,
) -> Result<Attempt, DownloadError> {
    let local = |source| DownloadError::Local {
        path: partial.to_owned(),
        source,
    };
    let have = std::fs::metadata(partial).map(|m| m.len()).unwrap_or(0);
    let mut req = client.get(url);
    if have > 0 {
        req = req.header(reqwest::header::RANGE, format!("bytes={have}-"));
    }
    let mut resp = match req.send() {
        Ok(r) => r,
        Err(e) => return Ok(Attempt::Retry(describe(&e))),
    };
    let status = resp.status().as_u16();
    let append = match status {
        206 if have > 0 => {
            let start = resp
                .headers()
                .get(reqwest::header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("bytes "))
                .and_then(|v| v.split('-').next())
                .and_then(|v| v.parse::<u64>().ok());
            if start != Some(have) {
                // A range we did not ask for: start over.
                std::fs::remove_file(partial).map_err(local)?;
                return Ok(Attempt::Retry(format!(
                    "the server answered a different range ({start:?})"
                )));
            }
            true
        }
        200 => false,
        416 if have > 0 => return Ok(Attempt::Done),
        s if s >= 500 || s == 408 || s == 429 => return Ok(Attempt::Retry(format!("HTTP {s}"))),
        s => {
            return Err(DownloadError::Status {
                url: url.to_string(),
                status: s,
                hint: match s {
                    404 => " (not found: check the manifest's URL)",
                    401 | 403 => " (access denied)",
                    _ => "",
                },
            });
        }
    };
    let expected = resp
        .content_length()
        .map(|n| if append { n + have } else { n });
    let mut out = OpenOptions::new()
        .create(true)
        .write(true)
        .append(append)
        .truncate(!append)
        .open(partial)
        .map_err(local)?;
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
                return Ok(Attempt::Retry(format!(
                    "the connection broke after {done} bytes: {e}"
                )));
            }
        };
        out.write_all(&buf[..n]).map_err(local)?;
        done += n as u64;
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
    Ok(Attempt::Done)
}

fn describe(e: &reqwest::Error) -> String {
    crate::util::error_chain(e)
}

/// Fetches a small text file (a checksum list) whole.
pub fn fetch_text(url: &str, policy: RetryPolicy) -> Result<String, DownloadError> {
    let tmp = tempfile::NamedTempFile::new().map_err(|source| DownloadError::Local {
        path: std::env::temp_dir(),
        source,
    })?;
    // Never resume a stale file: start from empty.
    download(url, tmp.path(), policy, "checksums")?;
    std::fs::read_to_string(tmp.path()).map_err(|source| DownloadError::Local {
        path: tmp.path().to_owned(),
        source,
    })
}
