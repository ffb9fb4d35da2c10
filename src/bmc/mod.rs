//! Turing Pi 2 BMC (firmware 2.x, bmcd) client: typed requests and responses
//! over HTTPS with the BMC's self-signed certificate pinned by its SHA-256.
//!
//! Unlike the `tpi` CLI, verification stays on: the first connection records
//! the certificate's fingerprint (trust on first use, shown to the user), and
//! a later change is an error unless `--insecure` is given explicitly.

mod tls;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use serde::Deserialize;

pub use tls::Pin;

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
        crate::tls::install_provider();
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
        let mut s = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(inner) = src {
            s.push_str(&format!(": {inner}"));
            src = inner.source();
        }
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

/// The BMC password: from a file, `IMGBUILD_BMC_PASSWORD`, or a prompt on a
/// terminal; never from a command-line argument.
pub fn password(file: Option<&Path>, host: &str) -> Result<String> {
    if let Some(f) = file {
        let s = std::fs::read_to_string(f)
            .with_context(|| format!("reading the BMC password from {}", f.display()))?;
        return Ok(s.trim_end_matches(['\n', '\r']).to_string());
    }
    if let Ok(p) = std::env::var("IMGBUILD_BMC_PASSWORD") {
        return Ok(p);
    }
    prompt_password(&format!("password for the BMC at {host}: "))
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
