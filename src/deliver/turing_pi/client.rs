//! Turing Pi 2 BMC (firmware 2.x, bmcd) client: typed requests and responses
//! over HTTPS with the BMC's self-signed certificate pinned by its SHA-256.
//!
//! Unlike the `tpi` CLI, verification stays on: the first connection records
//! the certificate's fingerprint (trust on first use, shown to the user), and
//! a later change is an error unless `--insecure` is given explicitly.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};

use super::pin::{self as tls, Pin};
use super::response::{self, DaemonVersion, FlashState, MAX_BODY};
use crate::deliver::Phase;

/// Connect and per-call read timeout unless `--bmc-timeout` says otherwise;
/// the flash gives up after twice this without progress.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

/// How to treat the BMC's certificate.
#[derive(Debug, Clone)]
pub enum Trust {
    /// Pin stored in this file; recorded on first use.
    PinFile(PathBuf),
    /// No verification at all (explicit `--insecure`).
    Insecure,
}

pub struct Bmc {
    host: String,
    http: reqwest::blocking::Client,
    creds: Credentials,
    token: Option<String>,
    timeout: Duration,
    /// The certificate fingerprint seen on this connection.
    pub fingerprint: Option<String>,
    /// Set when the fingerprint was recorded now (first use).
    pub newly_pinned: bool,
}

#[derive(Debug, Clone)]
pub struct Status {
    pub host: String,
    pub fingerprint: Option<String>,
    pub about: BTreeMap<String, serde_json::Value>,
    /// Power of slots 1-4 (as stored by the BMC).
    pub power: BTreeMap<u8, bool>,
    pub info: serde_json::Value,
}

/// One answer of the BMC, read whole but never more than [`MAX_BODY`].
struct Answer {
    status: u16,
    location: Option<String>,
    auth_token: Option<String>,
    body: String,
}

/// Why no answer could be read.
enum Failure {
    Http(reqwest::Error),
    Read(std::io::Error),
    TooLarge,
    Slow,
}

/// Reads `resp` into an [`Answer`], refusing a body over [`MAX_BODY`] and one
/// that trickles in for longer than `limit`.
fn read_answer(
    resp: reqwest::Result<reqwest::blocking::Response>,
    limit: Duration,
) -> Result<Answer, Failure> {
    let mut resp = resp.map_err(Failure::Http)?;
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let (location, auth_token) = (header("location"), header("x-auth-token"));
    let status = resp.status().as_u16();
    if resp.content_length().is_some_and(|n| n > MAX_BODY) {
        return Err(Failure::TooLarge);
    }
    let deadline = Instant::now() + limit;
    let mut body = Vec::new();
    let mut buf = [0u8; 16 << 10];
    loop {
        let n = resp.read(&mut buf).map_err(Failure::Read)?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&buf[..n]);
        if body.len() as u64 > MAX_BODY {
            return Err(Failure::TooLarge);
        }
        if Instant::now() > deadline {
            return Err(Failure::Slow);
        }
    }
    Ok(Answer {
        status,
        location,
        auth_token,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

impl Bmc {
    pub fn connect(
        host: &str,
        creds: Credentials,
        trust: &Trust,
        timeout: Duration,
    ) -> Result<Bmc> {
        crate::util::tls::install_provider();
        let (pin, pin_file) = match trust {
            Trust::Insecure => (Pin::Insecure, None),
            Trust::PinFile(f) => match std::fs::read_to_string(f) {
                Ok(s) => (Pin::Expect(s.trim().to_string()), Some(f.clone())),
                Err(_) => (Pin::FirstUse, Some(f.clone())),
            },
        };
        let (config, seen) = tls::client_config(pin.clone())?;
        let timeout = timeout.max(Duration::from_millis(100));
        let http = reqwest::blocking::Client::builder()
            .tls_backend_preconfigured(config)
            .connect_timeout(timeout)
            // Per call (headers, then each read of the body); the upload sets its own.
            .timeout(timeout)
            // A redirect would carry the password on to wherever it points
            // (bmcd's own port-80 server redirects everything, main.rs:126-133).
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("imgbuild/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("setting up the HTTPS client")?;
        let mut bmc = Bmc {
            host: host.to_string(),
            http,
            creds,
            token: None,
            timeout,
            fingerprint: None,
            newly_pinned: false,
        };
        bmc.login()?;
        bmc.fingerprint = seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let (Pin::FirstUse, Some(f), Some(fp)) = (&pin, &pin_file, &bmc.fingerprint) {
            tls::save(f, fp).with_context(|| format!("writing {}", f.display()))?;
            bmc.newly_pinned = true;
        }
        Ok(bmc)
    }

    fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.host)
    }

    /// A failure to get an answer to `what`, as the user should read it.
    fn failure(&self, f: Failure, what: &str) -> anyhow::Error {
        let t = self.timeout.as_secs_f64();
        let slow = || {
            anyhow!(
                "{}: no answer to {what} within {t} s: check that the BMC is up and reachable (allow it longer with --bmc-timeout SECONDS)",
                self.host
            )
        };
        match f {
            Failure::Http(e) if e.is_timeout() => slow(),
            Failure::Http(e) => {
                let s = crate::util::error_chain(&e);
                if s.contains("certificate changed") {
                    return anyhow!(
                        "{}: the BMC's certificate changed since it was pinned; if the BMC was re-installed, delete the pin file and connect again (or pass --insecure once)",
                        self.host
                    );
                }
                anyhow!("{}: {what} failed: {s}", self.host)
            }
            Failure::Read(e) if e.kind() == std::io::ErrorKind::TimedOut => slow(),
            Failure::Read(e) => anyhow!(
                "{}: reading the answer to {what}: {}",
                self.host,
                crate::util::error_chain(&e)
            ),
            Failure::Slow => anyhow!(
                "{}: the answer to {what} took longer than {t} s to arrive; refusing it",
                self.host
            ),
            Failure::TooLarge => anyhow!(
                "{}: the answer to {what} is larger than {} KiB, far beyond any real BMC answer; refusing it (is something else listening at this address?)",
                self.host,
                MAX_BODY >> 10
            ),
        }
    }

    /// Sends `req` and reads its answer; a redirect is an error.
    fn send(&self, req: reqwest::blocking::RequestBuilder, what: &str) -> Result<Answer> {
        let a = read_answer(req.send(), self.timeout * 2).map_err(|f| self.failure(f, what))?;
        if (300..400).contains(&a.status) {
            bail!(
                "{}: the BMC answered {what} with a redirect (HTTP {}) to {}; imgbuild follows no redirects, so the password is not sent on: put the BMC's own address in cluster.turing_pi_boards",
                self.host,
                a.status,
                response::sanitize(a.location.as_deref().unwrap_or("nowhere"), 200)
            );
        }
        Ok(a)
    }

    /// The BMC's message in `body`, with our session token (bmcd echoes it in
    /// "token ... is not registered") blanked out.
    fn message(&self, body: &str) -> String {
        let m = response::error_message(body);
        match &self.token {
            Some(t) if !t.is_empty() => m.replace(t.as_str(), "<session token>"),
            _ => m,
        }
    }

    fn banned(&self, wait: &str) -> anyhow::Error {
        anyhow!(
            "{}: the BMC blocks this machine for {wait} after repeated failed logins; wait that long, check the password (imgbuild never retries it), then run again",
            self.host
        )
    }

    /// POST /api/bmc/authenticate; never retries a rejected password (five
    /// failures ban this machine: ban_patrol.rs:49-86).
    fn login(&mut self) -> Result<()> {
        let body =
            serde_json::json!({"username": self.creds.user, "password": self.creds.password});
        let req = self
            .http
            .post(self.url("/api/bmc/authenticate"))
            .header("Content-Type", "application/json")
            .body(body.to_string());
        let a = self.send(req, "the login")?;
        let msg = response::error_message(&a.body);
        match a.status {
            200 => {}
            401 | 403 => {
                if let Some(wait) = response::ban(&msg) {
                    return Err(self.banned(&wait));
                }
                bail!(
                    "{}: the BMC rejected user {:?} (HTTP {}: {msg}); check the password. imgbuild does not retry: five failures ban this machine for a while",
                    self.host,
                    self.creds.user,
                    a.status
                )
            }
            s => bail!("{}: login failed: {msg} (HTTP {s})", self.host),
        }
        let token = response::login_token(a.auth_token.as_deref(), &a.body)
            .map_err(|e| anyhow!("{}: {e}", self.host))?;
        self.token = Some(token);
        Ok(())
    }

    /// GET /api/bmc?<query> with one re-login on 401; returns the body.
    /// `what` names the call for messages.
    fn get(&mut self, query: &str, what: &str) -> Result<String> {
        let mut renewed = false;
        loop {
            let req = self
                .http
                .get(self.url(&format!("/api/bmc?{query}")))
                .bearer_auth(self.token.as_deref().unwrap_or(""));
            let a = self.send(req, what)?;
            let msg = self.message(&a.body);
            match a.status {
                200 => return Ok(a.body),
                401 => {
                    if let Some(wait) = response::ban(&msg) {
                        return Err(self.banned(&wait));
                    }
                    if renewed {
                        bail!(
                            "{}: the BMC refused the session again right after a new login ({msg}) while {what}",
                            self.host
                        );
                    }
                    // Expired (3 h after last use, authentication_context.rs:93-102) or forgotten.
                    tracing::debug!(
                        "{}: session not accepted ({msg}); logging in again",
                        self.host
                    );
                    self.login()?;
                    renewed = true;
                }
                s => bail!("{}: {what} failed: {msg} (HTTP {s})", self.host),
            }
        }
    }

    fn get_result(&mut self, query: &str, what: &str) -> Result<serde_json::Value> {
        let text = self.get(query, what)?;
        response::envelope_result(&text).map_err(|e| anyhow!("{}: {e} ({what})", self.host))
    }

    pub fn about(&mut self) -> Result<BTreeMap<String, serde_json::Value>> {
        let r = self.get_result("opt=get&type=about", "reading the BMC's versions")?;
        response::about(r).map_err(|e| anyhow!("{}: {e}", self.host))
    }

    /// Stored power state of slots 1-4.
    pub fn power(&mut self) -> Result<BTreeMap<u8, bool>> {
        let r = self.get_result("opt=get&type=power", "reading the power of the slots")?;
        response::power(&r).map_err(|e| anyhow!("{}: {e}", self.host))
    }

    pub fn info(&mut self) -> Result<serde_json::Value> {
        self.get_result(
            "opt=get&type=info",
            "reading the BMC's addresses and storage",
        )
    }

    /// Powers slot 1-4 on or off.
    pub fn set_power(&mut self, slot: u8, on: bool) -> Result<()> {
        check_slot(slot)?;
        let what = format!("powering slot {slot} {}", if on { "on" } else { "off" });
        self.get(
            &format!("opt=set&type=power&node{slot}={}", u8::from(on)),
            &what,
        )
        .map(|_| ())
    }

    pub fn status(&mut self) -> Result<Status> {
        Ok(Status {
            host: self.host.clone(),
            fingerprint: self.fingerprint.clone(),
            about: self.about()?,
            power: self.power()?,
            info: self.info()?,
        })
    }
}

fn check_slot(slot: u8) -> Result<()> {
    if !(1..=4).contains(&slot) {
        bail!("slot {slot} does not exist; a Turing Pi has slots 1 to 4");
    }
    Ok(())
}

/// Where the BMC password comes from; never a command-line argument.
#[derive(Clone)]
pub enum PasswordSource {
    /// A file holding it (trailing newline ignored).
    File(PathBuf),
    /// Given by the environment (`IMGBUILD_BMC_PASSWORD`).
    Given(String),
    /// Asked for on the terminal, without echo.
    Prompt,
}

impl std::fmt::Debug for PasswordSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PasswordSource::File(p) => write!(f, "File({})", p.display()),
            PasswordSource::Given(_) => f.write_str("Given(..)"),
            PasswordSource::Prompt => f.write_str("Prompt"),
        }
    }
}

impl PasswordSource {
    /// The password for the BMC at `host`.
    pub fn password(&self, host: &str) -> Result<String> {
        match self {
            PasswordSource::File(f) => {
                let s = std::fs::read_to_string(f)
                    .with_context(|| format!("reading the BMC password from {}", f.display()))?;
                Ok(s.trim_end_matches(['\n', '\r']).to_string())
            }
            PasswordSource::Given(p) => Ok(p.clone()),
            PasswordSource::Prompt => prompt_password(&format!("password for the BMC at {host}: ")),
        }
    }
}

fn prompt_password(prompt: &str) -> Result<String> {
    use std::io::{BufRead, IsTerminal, Write};
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty");
    let Ok(mut tty) = tty else {
        bail!("no BMC password: give --bmc-password-file FILE or set IMGBUILD_BMC_PASSWORD");
    };
    if !tty.is_terminal() {
        bail!("no BMC password: give --bmc-password-file FILE or set IMGBUILD_BMC_PASSWORD");
    }
    use std::os::fd::AsRawFd;
    let fd = tty.as_raw_fd();
    // SAFETY: termios calls on an open terminal descriptor; echo is restored below.
    let mut old: libc::termios = unsafe { std::mem::zeroed() };
    unsafe { libc::tcgetattr(fd, &mut old) };
    let mut quiet = old;
    quiet.c_lflag &= !libc::ECHO;
    unsafe { libc::tcsetattr(fd, libc::TCSANOW, &quiet) };
    let _ = write!(tty, "{prompt}");
    let _ = tty.flush();
    let mut line = String::new();
    let r = std::io::BufReader::new(&tty).read_line(&mut line);
    unsafe { libc::tcsetattr(fd, libc::TCSANOW, &old) };
    let _ = writeln!(tty);
    r.context("reading the password")?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}

mod flash;
pub use flash::FlashOptions;
