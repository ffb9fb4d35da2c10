//! Turing Pi 2 BMC (firmware 2.x, bmcd) client: typed requests and responses
//! over HTTPS with the BMC's self-signed certificate pinned by its SHA-256.
//!
//! Unlike the `tpi` CLI, verification stays on: the first connection records
//! the certificate's fingerprint (trust on first use, shown to the user), and
//! a later change is an error unless `--insecure` is given explicitly.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde::Deserialize;

use super::pin::{self as tls, Pin};
use crate::deliver::Phase;

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
    /// The certificate fingerprint seen on this connection.
    pub fingerprint: Option<String>,
    /// Set when the fingerprint was recorded now (first use).
    pub newly_pinned: bool,
}

/// The `{"response":[{"result": ...}]}` envelope of `/api/bmc` answers.
#[derive(Debug, Deserialize)]
struct Envelope<T> {
    response: Vec<Item<T>>,
}

#[derive(Debug, Deserialize)]
struct Item<T> {
    result: T,
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

impl Bmc {
    pub fn connect(host: &str, creds: Credentials, trust: &Trust) -> Result<Bmc> {
        crate::util::tls::install_provider();
        let (pin, pin_file) = match trust {
            Trust::Insecure => (Pin::Insecure, None),
            Trust::PinFile(f) => match std::fs::read_to_string(f) {
                Ok(s) => (Pin::Expect(s.trim().to_string()), Some(f.clone())),
                Err(_) => (Pin::FirstUse, Some(f.clone())),
            },
        };
        let (config, seen) = tls::client_config(pin.clone())?;
        let http = reqwest::blocking::Client::builder()
            .tls_backend_preconfigured(config)
            .connect_timeout(Duration::from_secs(10))
            .timeout(None)
            .user_agent(concat!("imgbuild/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("setting up the HTTPS client")?;
        let mut bmc = Bmc {
            host: host.to_string(),
            http,
            creds,
            token: None,
            fingerprint: None,
            newly_pinned: false,
        };
        bmc.login()?;
        bmc.fingerprint = seen.lock().unwrap().clone();
        if let (Pin::FirstUse, Some(f), Some(fp)) = (&pin, &pin_file, &bmc.fingerprint) {
            if let Some(dir) = f.parent() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
            std::fs::write(f, format!("{fp}\n"))
                .with_context(|| format!("writing {}", f.display()))?;
            bmc.newly_pinned = true;
        }
        Ok(bmc)
    }

    fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.host)
    }

    fn describe(&self, e: reqwest::Error) -> anyhow::Error {
        let s = crate::util::error_chain(&e);
        if s.contains("certificate changed") {
            return anyhow!(
                "{}: the BMC's certificate changed since it was pinned; if the BMC was re-installed, delete the pin file and connect again (or pass --insecure once)",
                self.host
            );
        }
        anyhow!("{}: {s}", self.host)
    }

    /// POST /api/bmc/authenticate; never retries a rejected password (5 failures ban the client).
    fn login(&mut self) -> Result<()> {
        let body =
            serde_json::json!({"username": self.creds.user, "password": self.creds.password});
        let resp = self
            .http
            .post(self.url("/api/bmc/authenticate"))
            .header("Content-Type", "application/json")
            .body(body.to_string())
            .send()
            .map_err(|e| self.describe(e))?;
        let status = resp.status().as_u16();
        let text = resp.text().unwrap_or_default();
        match status {
            200 => {}
            401 | 403 => bail!(
                "{}: the BMC rejected user {:?} (HTTP {status}); check the password. imgbuild does not retry: five failures ban this machine for a while",
                self.host,
                self.creds.user
            ),
            s => bail!("{}: login failed with HTTP {s}: {}", self.host, text.trim()),
        }
        #[derive(Deserialize)]
        struct Token {
            id: String,
        }
        let t: Token = serde_json::from_str(&text)
            .map_err(|e| anyhow!("{}: unexpected login answer ({e})", self.host))?;
        self.token = Some(t.id);
        Ok(())
    }

    /// GET /api/bmc?<query> with one re-login on 401; returns the body.
    fn get(&mut self, query: &str) -> Result<String> {
        for attempt in 0..2 {
            let resp = self
                .http
                .get(self.url(&format!("/api/bmc?{query}")))
                .bearer_auth(self.token.as_deref().unwrap_or(""))
                .send()
                .map_err(|e| self.describe(e))?;
            let status = resp.status().as_u16();
            let text = resp.text().unwrap_or_default();
            match status {
                200 => return Ok(text),
                401 if attempt == 0 => self.login()?,
                s => bail!(
                    "{}: `{query}` failed with HTTP {s}: {}",
                    self.host,
                    text.trim()
                ),
            }
        }
        unreachable!()
    }

    fn get_result<T: serde::de::DeserializeOwned>(&mut self, query: &str) -> Result<T> {
        let text = self.get(query)?;
        let env: Envelope<T> = serde_json::from_str(&text)
            .map_err(|e| anyhow!("{}: unexpected answer to `{query}`: {e}", self.host))?;
        env.response
            .into_iter()
            .next()
            .map(|i| i.result)
            .ok_or_else(|| anyhow!("{}: empty answer to `{query}`", self.host))
    }

    pub fn about(&mut self) -> Result<BTreeMap<String, serde_json::Value>> {
        self.get_result("opt=get&type=about")
    }

    /// Stored power state of slots 1-4.
    pub fn power(&mut self) -> Result<BTreeMap<u8, bool>> {
        let list: Vec<BTreeMap<String, serde_json::Value>> =
            self.get_result("opt=get&type=power")?;
        let mut out = BTreeMap::new();
        for m in list {
            for (k, v) in m {
                let Some(slot) = k.strip_prefix("node").and_then(|n| n.parse::<u8>().ok()) else {
                    continue;
                };
                let on = match &v {
                    serde_json::Value::String(s) => s == "1",
                    serde_json::Value::Number(n) => n.as_u64() == Some(1),
                    serde_json::Value::Bool(b) => *b,
                    _ => false,
                };
                out.insert(slot, on);
            }
        }
        Ok(out)
    }

    pub fn info(&mut self) -> Result<serde_json::Value> {
        self.get_result("opt=get&type=info")
    }

    /// Powers slot 1-4 on or off.
    pub fn set_power(&mut self, slot: u8, on: bool) -> Result<()> {
        check_slot(slot)?;
        self.get(&format!("opt=set&type=power&node{slot}={}", u8::from(on)))
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

/// The BMC's flash state (`opt=get&type=flash`, bare JSON).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlashState {
    Ready,
    Transferring { written: u64, size: u64 },
    Done,
    Error(String),
}

impl FlashState {
    fn parse(text: &str) -> Result<FlashState> {
        let v: serde_json::Value = serde_json::from_str(text)
            .map_err(|e| anyhow!("unexpected flash state {text:?}: {e}"))?;
        if v.as_str() == Some("Ready") {
            return Ok(FlashState::Ready);
        }
        if let Some(t) = v.get("Transferring") {
            return Ok(FlashState::Transferring {
                written: t.get("bytes_written").and_then(|b| b.as_u64()).unwrap_or(0),
                size: t.get("size").and_then(|b| b.as_u64()).unwrap_or(0),
            });
        }
        if v.get("Done").is_some() {
            return Ok(FlashState::Done);
        }
        if let Some(e) = v.get("Error") {
            return Ok(FlashState::Error(
                e.as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| e.to_string()),
            ));
        }
        bail!("unexpected flash state {text:?}")
    }
}

#[derive(Debug, Clone, Default)]
pub struct FlashOptions {
    /// Skip the BMC's CRC read-back (only when the user asks).
    pub skip_crc: bool,
    /// sha256 of the image, sent when the daemon checks it (>= 2.3.0).
    pub sha256: Option<String>,
}

fn daemon_at_least(version: &str, want: (u64, u64, u64)) -> bool {
    let nums: Vec<u64> = version
        .trim_start_matches('v')
        .split(['.', '-', '+'])
        .take(3)
        .map(|n| n.parse().unwrap_or(0))
        .collect();
    let v = (
        nums.first().copied().unwrap_or(0),
        nums.get(1).copied().unwrap_or(0),
        nums.get(2).copied().unwrap_or(0),
    );
    v >= want
}

impl Bmc {
    pub fn flash_state(&mut self) -> Result<FlashState> {
        FlashState::parse(&self.get("opt=get&type=flash")?)
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
        let version = self
            .about()?
            .get("version")
            .and_then(|v| v.as_str())
            .unwrap_or("0")
            .to_string();
        let mut query = format!(
            "opt=set&type=flash&file={}&length={len}&node={}",
            url_escape(&name),
            slot - 1
        );
        if let Some(sha) = &opts.sha256
            && daemon_at_least(&version, (2, 3, 0))
        {
            query.push_str(&format!("&sha256={sha}"));
        }
        if opts.skip_crc {
            query.push_str("&skip_crc");
        }
        let started = self.get(&query)?;
        #[derive(Deserialize)]
        struct Handle {
            handle: u32,
        }
        let handle = serde_json::from_str::<Handle>(&started)
            .map_err(|_| {
                anyhow!(
                    "{}: the BMC did not start the flash: {}",
                    self.host,
                    started.trim()
                )
            })?
            .handle;
        // Upload at once (the BMC waits 10 s for it), streaming from the file.
        let file =
            std::fs::File::open(image).with_context(|| format!("opening {}", image.display()))?;
        let part = reqwest::blocking::multipart::Part::reader_with_length(file, len)
            .file_name(name.clone())
            .mime_str("application/octet-stream")?;
        let form = reqwest::blocking::multipart::Form::new().part("file", part);
        let req = self
            .http
            .post(self.url(&format!("/api/bmc/upload/{handle}")))
            .bearer_auth(self.token.as_deref().unwrap_or(""))
            .multipart(form);
        let cancel_url = self.url(&format!("/api/bmc/upload/{handle}/cancel"));
        let _cancel = CancelOnInterrupt::new(self.http.clone(), cancel_url, self.token.clone());
        let upload = std::thread::scope(|s| -> Result<()> {
            let worker = s.spawn(move || req.send());
            // Poll while the upload runs; the BMC writes as it receives.
            while !worker.is_finished() {
                std::thread::sleep(Duration::from_millis(300));
                if let Ok(FlashState::Transferring { written, size }) = self.flash_state() {
                    report(Phase::Writing, written, size.max(len));
                }
            }
            let resp = worker
                .join()
                .map_err(|_| anyhow!("the upload thread panicked"))?
                .map_err(|e| self.describe(e))?;
            let status = resp.status().as_u16();
            let text = resp.text().unwrap_or_default();
            if status != 200 {
                bail!(
                    "{}: the upload failed (HTTP {status}): {}; the module is not usable until flashed again",
                    self.host,
                    text.trim()
                );
            }
            Ok(())
        });
        upload?;
        // CRC read-back: bytes_written restarts from 0 until Done.
        let mut last = u64::MAX;
        let mut verifying = false;
        loop {
            match self.flash_state()? {
                FlashState::Done => break,
                FlashState::Error(e) => bail!(
                    "{}: flashing slot {slot} failed: {e}; if it says USB, power-cycle the board and try again",
                    self.host
                ),
                FlashState::Transferring { written, size } => {
                    if written < last && last != u64::MAX {
                        verifying = true;
                    }
                    last = written;
                    report(
                        if verifying {
                            Phase::Verifying
                        } else {
                            Phase::Writing
                        },
                        written,
                        size.max(len),
                    );
                }
                FlashState::Ready => break,
            }
            std::thread::sleep(Duration::from_millis(300));
        }
        // After any flash the node is left off.
        self.set_power(slot, true)
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
