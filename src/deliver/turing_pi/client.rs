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

#[derive(Debug, Clone, serde::Serialize)]
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

#[derive(Debug, Clone, Default)]
pub struct FlashOptions {
    /// Skip the BMC's CRC read-back (only when the user asks).
    pub skip_crc: bool,
    /// sha256 of the image, sent when the daemon checks it (>= 2.3.0).
    pub sha256: Option<String>,
}

/// The slowest upload and read-back rate allowed before the flash as a whole
/// is given up (a backstop; stalls are caught sooner by `--bmc-timeout`).
const MIN_RATE: u64 = 256 << 10;

/// Counts the bytes the upload has taken from the image.
struct Counting<R> {
    inner: R,
    taken: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.taken.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

impl Bmc {
    pub fn flash_state(&mut self) -> Result<FlashState> {
        let text = self.get("opt=get&type=flash", "reading the flash state")?;
        FlashState::parse(&text).map_err(|e| anyhow!("{}: {e}", self.host))
    }

    /// How long the BMC may show no progress before imgbuild gives up.
    fn stall_limit(&self) -> Duration {
        self.timeout * 2
    }

    /// Writes `image` to the module in `slot` (1-4), waits through the CRC
    /// read-back, and powers the slot on. `report` gets progress lines.
    pub fn flash(
        &mut self,
        slot: u8,
        image: &Path,
        opts: &FlashOptions,
        mut report: impl FnMut(Phase, u64, u64),
    ) -> Result<()> {
        check_slot(slot)?;
        // bmcd has no busy check: a new start silently cancels a running
        // flash (streaming_data_service.rs:48-80), so imgbuild checks first.
        if let FlashState::Transferring { .. } = self.flash_state()? {
            bail!(
                "{}: the BMC is already flashing a module; wait for it to finish (starting another would cancel it)",
                self.host
            );
        }
        let len = std::fs::metadata(image)
            .with_context(|| format!("reading {}", image.display()))?
            .len();
        let name = image
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "image.img".into());
        let daemon = DaemonVersion::from_about(&self.about()?);
        let mut query = format!(
            "opt=set&type=flash&file={}&length={len}&node={}",
            url_escape(&name),
            slot - 1
        );
        if daemon.checks_sha256() {
            if let Some(sha) = &opts.sha256 {
                query.push_str(&format!("&sha256={}", url_escape(sha)));
            }
        } else {
            tracing::warn!(
                "{}: the BMC's daemon (bmcd {:?}) predates 2.3.0: it does not check the image's sha256{}; the upload is verified by its CRC read-back only",
                self.host,
                daemon.text,
                if opts.skip_crc {
                    " and ignores --skip-crc"
                } else {
                    ""
                }
            );
        }
        if opts.skip_crc {
            query.push_str("&skip_crc");
        }
        let started = self.get(&query, &format!("starting the flash of slot {slot}"))?;
        let handle = response::flash_handle(&started).map_err(|e| anyhow!("{}: {e}", self.host))?;
        let cancel_url = self.url(&format!("/api/bmc/upload/{handle}/cancel"));
        let _cancel = CancelOnInterrupt::new(self.http.clone(), cancel_url, self.token.clone());
        // Upload at once: bmcd's timer fails the transfer with "Send timeout"
        // 10 s after the start (streaming_data_service.rs:76, 86-98).
        if let Err(reason) = self.upload(handle, image, &name, len, &mut report) {
            return Err(self.why_upload_failed(slot, handle, reason));
        }
        self.follow(slot, handle, len, &mut report)?;
        // After any flash bmcd leaves the node off (upgrade_worker.rs:102-108).
        self.set_power(slot, true)
    }

    /// POST /api/bmc/upload/<handle>, streaming the image; the BMC writes as
    /// it receives. Fails when the BMC does not take data for the stall limit.
    fn upload(
        &mut self,
        handle: u32,
        image: &Path,
        name: &str,
        len: u64,
        report: &mut impl FnMut(Phase, u64, u64),
    ) -> Result<()> {
        let file =
            std::fs::File::open(image).with_context(|| format!("opening {}", image.display()))?;
        let taken = Arc::new(AtomicU64::new(0));
        let reader = Counting {
            inner: file,
            taken: taken.clone(),
        };
        let part = reqwest::blocking::multipart::Part::reader_with_length(reader, len)
            .file_name(name.to_string())
            .mime_str("application/octet-stream")?;
        let form = reqwest::blocking::multipart::Form::new().part("file", part);
        let backstop = self.timeout * 4 + Duration::from_secs(len / MIN_RATE);
        let req = self
            .http
            .post(self.url(&format!("/api/bmc/upload/{handle}")))
            .bearer_auth(self.token.as_deref().unwrap_or(""))
            .timeout(backstop)
            .multipart(form);
        let read_limit = self.timeout * 2;
        let (tx, rx) = std::sync::mpsc::channel();
        // Not scoped: if the BMC stalls, the request is left to its backstop
        // timeout while imgbuild reports and moves on.
        std::thread::spawn(move || {
            let _ = tx.send(read_answer(req.send(), read_limit));
        });
        let mut progress = (0u64, 0u64);
        let mut last_change = Instant::now();
        let answer = loop {
            match rx.recv_timeout(Duration::from_millis(300)) {
                Ok(a) => break a,
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    bail!("{}: the upload ended without an answer", self.host)
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            }
            let mut written = progress.1;
            if let Ok(FlashState::Transferring {
                id,
                written: w,
                size,
            }) = self.flash_state()
                && id.is_none_or(|i| i == handle)
            {
                report(Phase::Writing, w, size.max(len));
                written = w;
            }
            let now = (taken.load(Ordering::Relaxed), written);
            if now != progress {
                progress = now;
                last_change = Instant::now();
            } else if last_change.elapsed() > self.stall_limit() {
                bail!(
                    "the upload made no progress for {} s ({} of {len} bytes sent)",
                    self.stall_limit().as_secs(),
                    now.0
                );
            }
        };
        let a = answer.map_err(|f| {
            // Our own fault first: the image changed while it was being sent.
            let sent = taken.load(Ordering::Relaxed);
            match std::fs::metadata(image).map(|m| m.len()) {
                Ok(now) if now != len => anyhow!(
                    "{} changed size while it was being sent ({len} bytes at the start, {now} now, {sent} sent): is something else writing it?",
                    image.display()
                ),
                _ => self.failure(f, "the upload"),
            }
        })?;
        if a.status != 200 {
            bail!("{} (HTTP {})", self.message(&a.body), a.status);
        }
        Ok(())
    }

    /// Explains a failed upload. bmcd's answer is often generic ("cannot
    /// execute command in current state", legacy.rs:653-683) or missing (a
    /// dropped connection): the flash state tells the real reason.
    fn why_upload_failed(&mut self, slot: u8, handle: u32, reason: anyhow::Error) -> anyhow::Error {
        let deadline = Instant::now() + Duration::from_secs(3).min(self.timeout * 2);
        let state = loop {
            match self.flash_state() {
                Ok(FlashState::Transferring { id, .. })
                    if id.is_none_or(|i| i == handle) && Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(200));
                }
                other => break other,
            }
        };
        let reason = format!("{reason:#}");
        match state {
            Ok(FlashState::Error(msg)) => anyhow!(
                "{}: flashing slot {slot} failed: {} (the upload was answered: {reason})",
                self.host,
                response::explain_flash_error(slot, &msg)
            ),
            Ok(FlashState::Transferring {
                id: Some(other), ..
            }) if other != handle => self.replaced(slot),
            Ok(FlashState::Transferring { .. }) => {
                // Still waiting for our bytes: release the BMC.
                let _ = self.cancel(handle);
                anyhow!(
                    "{}: the upload to slot {slot} failed ({reason}); cancelled the transfer on the BMC. The module is not usable until it is flashed again",
                    self.host
                )
            }
            _ => anyhow!(
                "{}: the upload to slot {slot} failed ({reason}); the module is not usable until it is flashed again",
                self.host
            ),
        }
    }

    fn cancel(&mut self, handle: u32) -> Result<()> {
        let req = self
            .http
            .get(self.url(&format!("/api/bmc/upload/{handle}/cancel")))
            .bearer_auth(self.token.as_deref().unwrap_or(""));
        self.send(req, "cancelling the transfer").map(|_| ())
    }

    fn replaced(&self, slot: u8) -> anyhow::Error {
        anyhow!(
            "{}: another flash was started on the BMC while slot {slot} was being flashed, which cancelled it (bmcd runs one flash at a time); flash slot {slot} again when the other one is done",
            self.host
        )
    }

    /// Follows the write and the CRC read-back until Done, with deadlines.
    fn follow(
        &mut self,
        slot: u8,
        handle: u32,
        len: u64,
        report: &mut impl FnMut(Phase, u64, u64),
    ) -> Result<()> {
        let backstop = Instant::now() + self.timeout * 4 + Duration::from_secs(2 * len / MIN_RATE);
        let mut last_change = Instant::now();
        let mut seen: Option<FlashState> = None;
        let mut last = u64::MAX;
        let mut verifying = false;
        loop {
            let state = self.flash_state()?;
            if seen.as_ref() != Some(&state) {
                seen = Some(state.clone());
                last_change = Instant::now();
            }
            match state {
                FlashState::Done => return Ok(()),
                FlashState::Error(e) => bail!(
                    "{}: flashing slot {slot} failed: {}",
                    self.host,
                    response::explain_flash_error(slot, &e)
                ),
                // Ready is the state before any transfer since the daemon
                // started (streaming_data_service.rs:44): it restarted.
                FlashState::Ready => bail!(
                    "{}: the BMC's daemon restarted while flashing slot {slot} (its state went back to Ready); the module is not usable until it is flashed again",
                    self.host
                ),
                FlashState::Transferring {
                    id: Some(other), ..
                } if other != handle => {
                    return Err(self.replaced(slot));
                }
                FlashState::Transferring { written, size, .. } => {
                    if written < last && last != u64::MAX {
                        verifying = true;
                    }
                    last = written;
                    let phase = if verifying {
                        Phase::Verifying
                    } else {
                        Phase::Writing
                    };
                    report(phase, written, size.max(len));
                }
            }
            if last_change.elapsed() > self.stall_limit() || Instant::now() > backstop {
                bail!(
                    "{}: the BMC reported no progress flashing slot {slot} for {} s (stuck at {} bytes); check it in its web interface before flashing again (allow longer with --bmc-timeout SECONDS)",
                    self.host,
                    last_change.elapsed().as_secs(),
                    if last == u64::MAX { 0 } else { last }
                );
            }
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

fn url_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// While alive, an interrupt (Ctrl-C) cancels the upload on the BMC first.
struct CancelOnInterrupt;

impl CancelOnInterrupt {
    fn new(http: reqwest::blocking::Client, url: String, token: Option<String>) -> Self {
        crate::util::cleanup::on_interrupt(Box::new(move || {
            let _ = http
                .get(&url)
                .bearer_auth(token.as_deref().unwrap_or(""))
                .timeout(Duration::from_secs(5))
                .send();
        }));
        CancelOnInterrupt
    }
}

impl Drop for CancelOnInterrupt {
    fn drop(&mut self) {
        crate::util::cleanup::clear_interrupt_hook();
    }
}
