//! A fake Turing Pi BMC on loopback that behaves like bmcd 2.3.x, for the
//! tests: HTTPS with a generated self-signed certificate, bmcd's login, ban
//! and token rules, its enveloped and bare answers with their real status
//! codes, and its flash state machine (start, 10 s upload window, USB stage,
//! sha256, CRC read-back, cancel).
//!
//! Each behaviour cites the bmcd source it follows: `bmcd/src/...` at tag
//! v2.3.7 (commit 52f4880) unless a tag is named; framework behaviour is
//! actix-web 4.9 / actix-http 3.9. Durations bmcd hard-codes (the 10 s upload
//! window, the 60 s ban, the 3 h token life, the ~1.2 s USB stage) are knobs
//! here so that tests run fast.
//!
//! Deliberate differences: bmcd skips authentication for loopback peers
//! (authentication_service.rs:74-86); the fake does not, so that it behaves
//! like a BMC on the network. Requests it does not model (Basic auth, chunked
//! request bodies, `local`/URL flashing, firmware upgrades) are recorded as
//! faults, which fail the test when the fake is dropped, as does a panic in
//! any of its threads. Its scratch directory lives under the cargo target
//! directory and is removed on drop.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What `about` reports, by daemon version (legacy.rs:212-243 from v2.3.5;
/// src/api/legacy.rs:211-242 at v2.3.4 and before).
#[derive(Debug, Clone)]
pub struct Daemon {
    /// bmcd's own version (`CARGO_PKG_VERSION`).
    pub bmcd: String,
    /// The firmware's version (`/etc/os-release` `VERSION`, legacy.rs:212-243).
    /// A stand-in that, like the real ones (BMC-Firmware's `git describe`
    /// tags such as v2.1.0, or a Buildroot version), is not bmcd's version.
    pub firmware: String,
}

impl Daemon {
    pub fn new(bmcd: &str) -> Daemon {
        Daemon {
            bmcd: bmcd.into(),
            firmware: "2.1.0".into(),
        }
    }

    fn at_least(&self, want: (u32, u32, u32)) -> bool {
        let n: Vec<u32> = self
            .bmcd
            .split('.')
            .map(|p| p.parse().unwrap_or(0))
            .collect();
        (
            n.first().copied().unwrap_or(0),
            n.get(1).copied().unwrap_or(0),
            n.get(2).copied().unwrap_or(0),
        ) >= want
    }
}

/// How the fake answers one `type` of `/api/bmc?opt=..` instead of normally.
#[derive(Debug, Clone)]
pub enum Fault {
    /// An enveloped error with this status, as bmcd's `api_entry` sends them
    /// (into_legacy_response.rs:134-138).
    Enveloped(u16, String),
    /// A 200 whose body is `size` bytes long, declared in Content-Length or
    /// sent chunked (`None`); a hostile or broken BMC.
    Huge(Option<u64>),
}

/// bmcd's `StreamingState` (streaming_data_service.rs:248-254).
#[derive(Debug, Clone, PartialEq)]
pub enum Flash {
    Ready,
    Transferring {
        id: u32,
        process_name: String,
        size: u64,
        cancelled: bool,
        bytes_written: u64,
    },
    Done {
        secs: u64,
        nanos: u32,
        size: u64,
    },
    Error(String),
}

impl Flash {
    /// serde's externally tagged form, as bmcd sends it.
    pub fn json(&self) -> String {
        match self {
            Flash::Ready => "\"Ready\"".into(),
            Flash::Transferring {
                id,
                process_name,
                size,
                cancelled,
                bytes_written,
            } => serde_json::json!({"Transferring": {"id": id, "process_name": process_name,
                "size": size, "cancelled": cancelled, "bytes_written": bytes_written}})
            .to_string(),
            Flash::Done { secs, nanos, size } => {
                serde_json::json!({"Done": [{"secs": secs, "nanos": nanos}, size]}).to_string()
            }
            Flash::Error(m) => serde_json::json!({ "Error": m }).to_string(),
        }
    }

    fn name(&self) -> &'static str {
        match self {
            Flash::Ready => "Ready",
            Flash::Transferring { .. } => "Transferring",
            Flash::Done { .. } => "Done",
            Flash::Error(_) => "Error",
        }
    }
}

/// The transfer behind a `Transferring` state (transfer_context.rs:24-35).
#[derive(Debug, Clone)]
pub struct Transfer {
    pub id: u32,
    pub slot: u8,
    pub size: u64,
    pub sha256: Option<String>,
    pub crc: bool,
    /// An upload took the data sender (legacy.rs:659).
    pub sender_taken: bool,
    pub cancelled: bool,
    /// The worker is past the USB stage and reads the upload.
    pub device_ready: bool,
}

#[derive(Debug, Default)]
struct BanEntry {
    attempts: u32,
    until: Option<Instant>,
}

#[derive(Debug)]
pub struct State {
    // ---- knobs ----
    pub user: String,
    pub password: String,
    pub daemon: Daemon,
    /// First ban length; doubles with each later failure (ban_patrol.rs:19-20, 49-86).
    pub ban_base: Duration,
    /// Failures before the ban (default_config.yaml:16-27: 5).
    pub max_attempts: u32,
    /// Token life after its last use (default_config.yaml: 10800 s).
    pub token_ttl: Duration,
    /// Once, after this many authorised calls, let the token in use expire.
    pub expire_token_after: Option<u32>,
    /// Once, after this many authorised calls, forget every token (a
    /// restarted daemon: tokens live in memory only).
    pub forget_tokens_after: Option<u32>,
    /// The upload window after a flash start (streaming_data_service.rs:76: 10 s).
    pub send_window: Duration,
    /// The worker's USB stage before it reads data (bmc_application.rs:357-380: ~1.2 s).
    pub usb_delay: Duration,
    /// Slots with no module: the USB stage fails (usb_boot.rs:65-97).
    pub missing_slots: Vec<u8>,
    /// Slots whose CRC read-back differs (upgrade_worker.rs:147-152).
    pub crc_error_slots: Vec<u8>,
    /// Read-back steps and the pause between them.
    pub crc_steps: u64,
    pub crc_step_delay: Duration,
    /// Upload throughput cap, bytes per second.
    pub upload_rate: Option<u64>,
    /// A pause before the upload handler takes the sender (a slow network).
    pub upload_delay: Duration,
    /// Drop the connection after this many uploaded bytes (a network fault).
    pub drop_upload_after: Option<u64>,
    /// Stop reading the upload after this many bytes, connection kept open
    /// (a BMC that hangs), until the transfer is cancelled.
    pub stall_upload_after: Option<u64>,
    /// Read requests but never answer.
    pub silent: bool,
    /// Answer every request with 308 to this base URL (bmcd's port-80 server,
    /// main.rs:126-133, or something in between).
    pub redirect_to: Option<String>,
    /// Answer `type=<key>` of `/api/bmc?opt=..` with a fault.
    pub faults: BTreeMap<String, Fault>,
    /// After a complete upload: the daemon restarts (state back to Ready).
    pub restart_after_upload: bool,
    /// After a complete upload: another client starts a flash.
    pub other_start_after_upload: bool,
    /// After a complete upload: the worker hangs (state stays Transferring).
    pub hang_after_upload: bool,

    // ---- what happened ----
    /// Every request, `METHOD target` (no headers: no secrets).
    pub log: Vec<String>,
    pub logins: u32,
    pub failed_logins: u32,
    pub power: BTreeMap<u8, bool>,
    pub flash: Flash,
    pub transfer: Option<Transfer>,
    /// Slots flashed to Done, in order.
    pub flashed: Vec<u8>,
    /// Slots whose flash ran the CRC read-back.
    pub verified: Vec<u8>,
    /// Where each slot's module contents land (`slot<N>.img`).
    pub slots_dir: PathBuf,
    /// Things the fake could not model or that broke inside it: the test fails.
    pub faults_seen: Vec<String>,
    /// Connections the client closed or reset (not faults).
    pub disconnects: u32,

    tokens: HashMap<String, Instant>,
    authorised: u32,
    bans: HashMap<IpAddr, BanEntry>,
}

pub struct FakeBmc {
    pub port: u16,
    pub cert_sha256: String,
    pub state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
    /// Removed on drop.
    _dir: tempfile::TempDir,
}

/// Locks the state even after a panic elsewhere (that panic is reported).
pub fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

fn random_u32() -> u32 {
    use rand_core::RngCore;
    rand_core::OsRng.next_u32()
}

/// bmcd's session id: 64 alphanumerics (authentication_context.rs:182-196).
fn random_token() -> String {
    const CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    (0..64)
        .map(|_| CHARS[random_u32() as usize % CHARS.len()] as char)
        .collect()
}

/// humantime's `format_duration` as bmcd prints bans and expiries: every
/// non-zero unit down to nanoseconds, e.g. "59s 999ms 998us 100ns".
pub fn humantime(d: Duration) -> String {
    let secs = d.as_secs();
    let nanos = d.subsec_nanos() as u64;
    let parts = [
        (secs / 86_400, "d"),
        (secs / 3600 % 24, "h"),
        (secs / 60 % 60, "m"),
        (secs % 60, "s"),
        (nanos / 1_000_000, "ms"),
        (nanos / 1000 % 1000, "us"),
        (nanos % 1000, "ns"),
    ];
    let s: Vec<String> = parts
        .iter()
        .filter(|(n, _)| *n > 0)
        .map(|(n, u)| format!("{n}{u}"))
        .collect();
    if s.is_empty() {
        "0s".into()
    } else {
        s.join(" ")
    }
}

/// humansize 2.1's DECIMAL format, as bmcd's "missing {size}": "10 B",
/// "1 kB", "1.02 kB", "18.45 EB" (legacy.rs:674-680).
pub fn humansize(n: u64) -> String {
    const UNITS: [&str; 6] = ["kB", "MB", "GB", "TB", "PB", "EB"];
    if n < 1000 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1000.0;
    let mut unit = 0;
    while v >= 1000.0 && unit < UNITS.len() - 1 {
        v /= 1000.0;
        unit += 1;
    }
    let s = format!("{v:.2}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    format!("{s} {}", UNITS[unit])
}

const REALM: &str = "Access to Baseboard Management Controller";

/// One HTTP answer.
struct Reply {
    status: u16,
    ctype: Option<&'static str>,
    headers: Vec<(String, String)>,
    body: Body,
}

enum Body {
    Bytes(Vec<u8>),
    Huge(Option<u64>),
    Silent,
}

impl Reply {
    fn new(status: u16, ctype: Option<&'static str>, body: &str) -> Reply {
        Reply {
            status,
            ctype,
            headers: Vec::new(),
            body: Body::Bytes(body.as_bytes().to_vec()),
        }
    }

    /// `LegacyResponse` turned into a response directly: the envelope, its
    /// own status, application/json (into_legacy_response.rs:124-148).
    fn envelope(status: u16, result: serde_json::Value) -> Reply {
        let body = serde_json::json!({"response": [{"result": result}]}).to_string();
        Reply::new(status, Some("application/json"), &body)
    }

    /// A `LegacyResult` error returned straight to actix: always 500,
    /// text/plain, the bare message (into_legacy_response.rs:98-111; actix-web
    /// error/response_error.rs:31-49).
    fn plain_500(msg: &str) -> Reply {
        Reply::new(500, Some("text/plain; charset=utf-8"), msg)
    }

    /// `Ok(String)` from a handler: 200 text/plain (actix-http response.rs:306-313).
    fn text_200(body: &str) -> Reply {
        Reply::new(200, Some("text/plain; charset=utf-8"), body)
    }

    /// The `Null` responder: 200, empty, no Content-Type (into_legacy_response.rs:151-160).
    fn null() -> Reply {
        Reply::new(200, None, "")
    }

    fn header(mut self, k: &str, v: String) -> Reply {
        self.headers.push((k.into(), v));
        self
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        _ => "Internal Server Error",
    }
}

/// Why a connection ended early.
enum End {
    /// The client went away (closed, reset, refused the certificate).
    Gone,
    /// Something the fake does not model or a broken request: a test failure.
    Fault(String),
}

impl From<std::io::Error> for End {
    fn from(_: std::io::Error) -> End {
        End::Gone
    }
}

impl FakeBmc {
    pub fn start(password: &str) -> FakeBmc {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let params = rcgen::CertificateParams::new(vec!["turingpi.local".to_string()]).unwrap();
        let cert = params.self_signed(&key).unwrap();
        let cert_der = cert.der().clone();
        let cert_sha256 = {
            use sha2::{Digest, Sha256};
            hex::encode(Sha256::digest(cert_der.as_ref()))
        };
        let key_der = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        let config = Arc::new(
            rustls::ServerConfig::builder()
                .with_no_client_auth()
                .with_single_cert(vec![cert_der], key_der)
                .unwrap(),
        );
        // No fixed port: the kernel picks a free one and it stays ours.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let dir = tempfile::Builder::new()
            .prefix("fake-bmc")
            .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
            .unwrap();
        let state = Arc::new(Mutex::new(State {
            user: "root".into(),
            password: password.to_string(),
            daemon: Daemon::new("2.3.7"),
            ban_base: Duration::from_secs(60),
            max_attempts: 5,
            token_ttl: Duration::from_secs(10_800),
            expire_token_after: None,
            forget_tokens_after: None,
            send_window: Duration::from_secs(10),
            usb_delay: Duration::from_millis(200),
            missing_slots: Vec::new(),
            crc_error_slots: Vec::new(),
            crc_steps: 4,
            crc_step_delay: Duration::from_millis(100),
            upload_rate: None,
            upload_delay: Duration::ZERO,
            drop_upload_after: None,
            stall_upload_after: None,
            silent: false,
            redirect_to: None,
            faults: BTreeMap::new(),
            restart_after_upload: false,
            other_start_after_upload: false,
            hang_after_upload: false,
            log: Vec::new(),
            logins: 0,
            failed_logins: 0,
            power: (1..=4).map(|s| (s, false)).collect(),
            flash: Flash::Ready,
            transfer: None,
            flashed: Vec::new(),
            verified: Vec::new(),
            slots_dir: dir.path().to_path_buf(),
            faults_seen: Vec::new(),
            disconnects: 0,
            tokens: HashMap::new(),
            authorised: 0,
            bans: HashMap::new(),
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, stop2) = (state.clone(), stop.clone());
        let acceptor = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                let (cfg, st, stop3) = (config.clone(), st.clone(), stop2.clone());
                spawn_guarded(&st.clone(), move || serve(conn, cfg, &st, &stop3));
            }
        });
        FakeBmc {
            port,
            cert_sha256,
            state,
            stop,
            acceptor: Some(acceptor),
            _dir: dir,
        }
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    pub fn slot_file(&self, slot: u8) -> PathBuf {
        self.lock().slots_dir.join(format!("slot{slot}.img"))
    }

    /// Another client's flash of `slot`, uploading (its sender taken).
    pub fn begin_other_transfer(&self, slot: u8, size: u64) -> u32 {
        let mut st = self.lock();
        let id = random_u32();
        st.transfer = Some(Transfer {
            id,
            slot,
            size,
            sha256: None,
            crc: true,
            sender_taken: true,
            cancelled: false,
            device_ready: true,
        });
        st.flash = Flash::Transferring {
            id,
            process_name: format!("Node {slot} os install service"),
            size,
            cancelled: false,
            bytes_written: size / 3,
        };
        id
    }
}

impl Drop for FakeBmc {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the acceptor so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
        let faults = std::mem::take(&mut self.lock().faults_seen);
        if !faults.is_empty() && !std::thread::panicking() {
            panic!("the fake BMC saw faults (see tests/support/bmc.rs): {faults:#?}");
        }
    }
}

/// Runs `f` on a thread; a panic in it is recorded as a fault.
fn spawn_guarded(state: &Arc<Mutex<State>>, f: impl FnOnce() + Send + 'static) {
    let st = state.clone();
    std::thread::spawn(move || {
        if let Err(p) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            lock(&st)
                .faults_seen
                .push(format!("a fake BMC thread panicked: {msg}"));
        }
    });
}

fn serve(
    tcp: TcpStream,
    config: Arc<rustls::ServerConfig>,
    state: &Arc<Mutex<State>>,
    stop: &AtomicBool,
) {
    let peer = tcp
        .peer_addr()
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
    // An idle keep-alive connection of a finished client ends here.
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(60)));
    let result = (|| -> Result<(), End> {
        let conn = rustls::ServerConnection::new(config).map_err(|e| End::Fault(e.to_string()))?;
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        loop {
            if !request(&mut tls, peer.ip(), state, stop)? {
                return Ok(());
            }
        }
    })();
    match result {
        Ok(()) => {}
        Err(End::Gone) => lock(state).disconnects += 1,
        Err(End::Fault(f)) => {
            if !stop.load(Ordering::SeqCst) {
                lock(state).faults_seen.push(f)
            }
        }
    }
}

type Tls = rustls::StreamOwned<rustls::ServerConnection, TcpStream>;

/// Serves one request; false when the client closed the connection.
fn request(
    tls: &mut Tls,
    ip: IpAddr,
    state: &Arc<Mutex<State>>,
    stop: &AtomicBool,
) -> Result<bool, End> {
    let mut reader = BufReader::new(&mut *tls);
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(false);
    }
    let mut parts = line.split_whitespace();
    let (method, target) = match (parts.next(), parts.next()) {
        (Some(m), Some(t)) => (m.to_string(), t.to_string()),
        _ => return Err(End::Fault(format!("bad request line {line:?}"))),
    };
    let mut headers = BTreeMap::new();
    let mut head_len = 0;
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 {
            return Err(End::Gone);
        }
        head_len += h.len();
        if head_len > 64 << 10 {
            return Err(End::Fault("request head over 64 KiB".into()));
        }
        if h == "\r\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    if headers
        .get("transfer-encoding")
        .is_some_and(|t| t.contains("chunked"))
    {
        return Err(End::Fault(format!(
            "{method} {target}: chunked request bodies are not modelled"
        )));
    }
    let len: u64 = headers
        .get("content-length")
        .map(|v| v.parse())
        .transpose()
        .map_err(|_| End::Fault("bad Content-Length".into()))?
        .unwrap_or(0);
    lock(state).log.push(format!("{method} {target}"));
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let early = {
        let st = lock(state);
        if let Some(base) = &st.redirect_to {
            Some(Reply::new(308, None, "").header("Location", format!("{base}{target}")))
        } else if st.silent {
            Some(Reply {
                status: 200,
                ctype: None,
                headers: Vec::new(),
                body: Body::Silent,
            })
        } else {
            None
        }
    };
    let reply = if let Some(r) = early {
        drain(&mut reader, len)?;
        r
    } else if path == "/api/bmc/authenticate" {
        // Any method on exactly this path (authentication_service.rs:101-103).
        let body = read_body(&mut reader, len)?;
        login(&mut lock(state), ip, &body)
    } else if path.starts_with("/api/bmc") {
        let auth = authorise(&mut lock(state), ip, &headers);
        match auth {
            Err(r) => {
                drain(&mut reader, len)?;
                r
            }
            Ok(()) if method == "POST" && path.starts_with("/api/bmc/upload/") => {
                upload(&mut reader, path, &headers, len, state, stop)?
            }
            Ok(()) => {
                let _ = read_body(&mut reader, len)?;
                route(&method, path, query, state)?
            }
        }
    } else {
        drain(&mut reader, len)?;
        return Err(End::Fault(format!("{method} {target}: not a bmcd path")));
    };
    drop(reader);
    respond(tls, reply, stop)?;
    Ok(true)
}

fn read_body(reader: &mut impl Read, len: u64) -> Result<Vec<u8>, End> {
    if len > 1 << 20 {
        return Err(End::Fault(format!("a {len}-byte request body")));
    }
    let mut body = vec![0u8; len as usize];
    reader.read_exact(&mut body)?;
    Ok(body)
}

fn drain(reader: &mut impl Read, len: u64) -> Result<(), End> {
    std::io::copy(&mut reader.take(len), &mut std::io::sink())?;
    Ok(())
}

fn respond(tls: &mut Tls, reply: Reply, stop: &AtomicBool) -> Result<(), End> {
    let mut head = format!("HTTP/1.1 {} {}\r\n", reply.status, reason(reply.status));
    if let Some(c) = reply.ctype {
        head.push_str(&format!("Content-Type: {c}\r\n"));
    }
    for (k, v) in &reply.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    match reply.body {
        Body::Bytes(b) => {
            head.push_str(&format!("Content-Length: {}\r\n\r\n", b.len()));
            tls.write_all(head.as_bytes())?;
            tls.write_all(&b)?;
        }
        Body::Silent => {
            while !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(50));
            }
            return Err(End::Gone);
        }
        Body::Huge(declared) => {
            match declared {
                Some(n) => head.push_str(&format!("Content-Length: {n}\r\n\r\n")),
                None => head.push_str("Transfer-Encoding: chunked\r\n\r\n"),
            }
            tls.write_all(head.as_bytes())?;
            let prefix: &[u8] = br#"{"response":[{"result":""#;
            let chunk = vec![b'a'; 64 << 10];
            // Until the client stops reading (a write fails), at most 16 GiB.
            let total = declared.unwrap_or(16 << 30);
            let mut sent = 0u64;
            while sent < total && !stop.load(Ordering::SeqCst) {
                let data = if sent == 0 { prefix } else { &chunk[..] };
                let data = &data[..data.len().min((total - sent) as usize)];
                if declared.is_none() {
                    tls.write_all(format!("{:x}\r\n", data.len()).as_bytes())?;
                    tls.write_all(data)?;
                    tls.write_all(b"\r\n")?;
                } else {
                    tls.write_all(data)?;
                }
                sent += data.len() as u64;
            }
            return Err(End::Gone);
        }
    }
    tls.flush()?;
    Ok(())
}

/// The ban in force for `ip`, if any (ban_patrol.rs:49-86).
fn banned(st: &State, ip: IpAddr) -> Option<Duration> {
    let until = st.bans.get(&ip)?.until?;
    until.checked_duration_since(Instant::now())
}

/// Counts a failure; from the fifth on, bans for `ban_base * 2^(n-5)` (at
/// most 2^10) and that same request already gets the ban (ban_patrol.rs:49-86).
fn penalise(st: &mut State, ip: IpAddr) -> Option<Duration> {
    let (base, max) = (st.ban_base, st.max_attempts);
    let e = st.bans.entry(ip).or_default();
    e.attempts += 1;
    if e.attempts >= max {
        let until = Instant::now() + base * 2u32.pow((e.attempts - max).min(10));
        e.until = Some(until);
        // The message shows what is left, a little under the full ban.
        return Some(until.saturating_duration_since(Instant::now()));
    }
    None
}

fn ban_message(d: Duration) -> String {
    // authentication_errors.rs:36-38
    format!(
        "Exceeded allowed authentication attempts. Access blocked for {}",
        humantime(d)
    )
}

/// POST /api/bmc/authenticate (authentication_service.rs:101-180): 403 with a
/// plain body and no Content-Type on failure, the token in `X-Auth-Token` and
/// the session as the body on success.
fn login(st: &mut State, ip: IpAddr, body: &[u8]) -> Reply {
    // The ban check runs first (authentication_context.rs:111).
    if let Some(d) = banned(st, ip) {
        return Reply::new(403, None, &ban_message(d));
    }
    #[derive(serde::Deserialize)]
    struct Login {
        username: String,
        password: String,
    }
    let creds: Login = match serde_json::from_slice(body) {
        Ok(c) => c,
        // Not penalised (authentication_errors.rs:21-22, context 178).
        Err(e) => {
            return Reply::new(
                403,
                None,
                &format!("error trying to parse credentials: {e}"),
            );
        }
    };
    if creds.username != st.user || creds.password != st.password {
        st.failed_logins += 1;
        if let Some(d) = penalise(st, ip) {
            return Reply::new(403, None, &ban_message(d));
        }
        return Reply::new(403, None, "credentials incorrect");
    }
    // Expired sessions are purged at each login (authentication_context.rs:69-76).
    let ttl = st.token_ttl;
    st.tokens.retain(|_, last| last.elapsed() < ttl);
    st.bans.remove(&ip);
    st.logins += 1;
    let token = random_token();
    st.tokens.insert(token.clone(), Instant::now());
    // `HttpResponse::Ok().body(String)` sets no Content-Type (actix-web builder.rs:291-299).
    let session = serde_json::json!({"id": token, "name": "User Session",
        "description": "User Session", "username": creds.username});
    Reply::new(200, None, &session.to_string()).header("X-Auth-Token", token)
}

/// The middleware on the `/api/bmc` scope (authentication_service.rs:105-194):
/// 401 with a plain body, no Content-Type and a `WWW-Authenticate` challenge.
fn authorise(st: &mut State, ip: IpAddr, headers: &BTreeMap<String, String>) -> Result<(), Reply> {
    let unauthorised = |msg: &str, challenge: String| {
        Reply::new(401, None, msg).header("WWW-Authenticate", challenge)
    };
    let bearer = |msg: &str| {
        format!("Bearer realm=\"{REALM}\" error=\"invalid_token\" error_description=\"{msg}\"")
    };
    if let Some(d) = banned(st, ip) {
        let m = ban_message(d);
        return Err(unauthorised(&m, bearer(&m)));
    }
    let Some(auth) = headers.get("authorization") else {
        return Err(unauthorised(
            "no authorization header provided",
            format!("Basic realm=\"{REALM}\""),
        ));
    };
    let (scheme, value) = auth.split_once(' ').unwrap_or((auth, ""));
    match scheme {
        "Bearer" => {}
        "Basic" => {
            st.faults_seen
                .push("Basic authentication is not modelled (imgbuild uses tokens)".into());
            return Err(unauthorised("Basic is not modelled", String::new()));
        }
        other => {
            // authentication_context.rs:163-165
            return Err(unauthorised(
                &format!("{other} authentication not supported"),
                format!("realm=\"{REALM}\""),
            ));
        }
    }
    let token = value.trim();
    let Some(last) = st.tokens.get(token).copied() else {
        // An unknown token counts toward the ban (authentication_context.rs:85-91).
        let m = match penalise(st, ip) {
            Some(d) => ban_message(d),
            None => format!("token {token} is not registered"),
        };
        return Err(unauthorised(&m, bearer(&m)));
    };
    if last.elapsed() >= st.token_ttl {
        // Removed, not penalised (authentication_context.rs:93-102).
        st.tokens.remove(token);
        let ago = last.elapsed() - st.token_ttl;
        let m = format!("token expired {} ago", humantime(ago));
        return Err(unauthorised(&m, bearer(&m)));
    }
    // Valid for token_ttl after its last use (authentication_context.rs:93-98).
    st.tokens.insert(token.to_string(), Instant::now());
    st.bans.remove(&ip);
    st.authorised += 1;
    if st.expire_token_after == Some(st.authorised) {
        st.expire_token_after = None;
        let ttl = st.token_ttl;
        if let Some(t) = st.tokens.get_mut(token) {
            *t = Instant::now()
                .checked_sub(ttl + Duration::from_secs(1))
                .unwrap_or_else(Instant::now);
        }
    }
    if st.forget_tokens_after == Some(st.authorised) {
        st.forget_tokens_after = None;
        st.tokens.clear();
    }
    Ok(())
}

fn query_map(query: &str) -> BTreeMap<String, String> {
    query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k.to_string(), v.to_string())
        })
        .collect()
}

/// `/api/bmc` routing (legacy.rs:65-106): flash start and state by substring
/// guards on the raw query, everything else through `api_entry`.
fn route(method: &str, path: &str, query: &str, state: &Arc<Mutex<State>>) -> Result<Reply, End> {
    if method == "GET" && path.starts_with("/api/bmc/upload/") && path.ends_with("/cancel") {
        // Any handle, any state (legacy.rs:647-651; streaming_data_service.rs:82-84).
        let mut st = lock(state);
        cancel_all(&mut st);
        return Ok(Reply::null());
    }
    if path != "/api/bmc" {
        return Err(End::Fault(format!("{method} {path}: not modelled")));
    }
    let flash_type = query.contains("type=flash") || query.contains("type=firmware");
    if method == "GET" && query.contains("opt=get") && flash_type {
        // Bare serde JSON, 200 text/plain (legacy.rs:559-561).
        return Ok(Reply::text_200(&lock(state).flash.json()));
    }
    if method == "GET" && query.contains("opt=set") && flash_type {
        return flash_start(&query_map(query), state);
    }
    if method != "GET" {
        return Err(End::Fault(format!(
            "{method} /api/bmc?{query}: not modelled"
        )));
    }
    api_entry(&query_map(query), &mut lock(state))
}

/// `api_entry` (legacy.rs:150-196): enveloped answers with real statuses.
fn api_entry(q: &BTreeMap<String, String>, st: &mut State) -> Result<Reply, End> {
    let Some(opt) = q.get("opt").filter(|o| *o == "get" || *o == "set") else {
        return Ok(Reply::envelope(400, "Missing `opt` parameter".into()));
    };
    let Some(ty) = q.get("type") else {
        return Ok(Reply::envelope(400, "Missing `type` parameter".into()));
    };
    match st.faults.get(ty) {
        Some(Fault::Enveloped(status, msg)) => {
            return Ok(Reply::envelope(*status, msg.as_str().into()));
        }
        Some(Fault::Huge(declared)) => {
            return Ok(Reply {
                status: 200,
                ctype: Some("application/json"),
                headers: Vec::new(),
                body: Body::Huge(*declared),
            });
        }
        None => {}
    }
    Ok(match (opt.as_str(), ty.as_str()) {
        ("get", "about") => about(st),
        ("get", "info") => Reply::envelope(
            200,
            // legacy.rs:245-254; bmc_info.rs:35-40, 78-105
            serde_json::json!({
                "ip": [{"device": "eth0", "ip": "192.168.1.10", "mac": "02:00:00:00:00:01"}],
                "storage": [
                    {"name": "BMC", "total_bytes": 210_000_000u64, "bytes_free": 150_000_000u64},
                    {"name": "SD card", "total_bytes": 31_000_000_000u64, "bytes_free": 12_345_000_000u64}
                ],
            }),
        ),
        ("get", "power") => {
            // Strings "0"/"1" (legacy.rs:410-432).
            let m: serde_json::Map<String, serde_json::Value> = st
                .power
                .iter()
                .map(|(s, on)| (format!("node{s}"), (if *on { "1" } else { "0" }).into()))
                .collect();
            Reply::envelope(200, serde_json::json!([m]))
        }
        ("set", "power") => set_power(q, st),
        ("get" | "set", "other" | "usb" | "reset" | "reboot" | "uart" | "cooling" | "sdcard") => {
            return Err(End::Fault(format!("opt={opt}&type={ty}: not modelled")));
        }
        // legacy.rs:192-196
        (_, t) => Reply::envelope(400, format!("Invalid `type` parameter {t}").into()),
    })
}

fn about(st: &State) -> Reply {
    let d = &st.daemon;
    let mut m = serde_json::json!({
        "board_model": "Turing Pi 2 (v2.5)",
        "board_revision": "2.5.2",
        "hostname": "turingpi",
        // "1.2" in v2.3.0 (src/api/legacy.rs:62 @e36f6dc), "1.1" from v2.3.1 (legacy.rs:63)
        "api": if d.bmcd == "2.3.0" { "1.2" } else { "1.1" },
        "buildtime": "2025-02-23 10:00:00-00:00",
        "buildroot": "Buildroot 2024.05.1",
    });
    if d.at_least((2, 3, 5)) {
        // legacy.rs:212-243: firmware version plus bmcd's own.
        m["version"] = d.firmware.clone().into();
        m["bmcd_version"] = d.bmcd.clone().into();
    } else {
        // v2.3.4 src/api/legacy.rs:211-242: bmcd's version plus the firmware's.
        m["version"] = d.bmcd.clone().into();
        m["build_version"] = d.firmware.clone().into();
    }
    Reply::envelope(200, m)
}

/// `opt=set&type=power&nodeN=0|1` (legacy.rs:384-407): 1-based keys.
fn set_power(q: &BTreeMap<String, String>, st: &mut State) -> Reply {
    let mut changes = Vec::new();
    for n in 1..=4u8 {
        match q.get(&format!("node{n}")).map(String::as_str) {
            None => {}
            Some("0") => changes.push((n, false)),
            Some("1") => changes.push((n, true)),
            Some(x) => {
                return Reply::envelope(
                    400,
                    format!("Invalid value `{x}` for parameter `node{n}`").into(),
                );
            }
        }
    }
    if changes.is_empty() {
        // ensure!(mask != 0), bmc_application.rs:222, through into_legacy_response.rs:77-84
        return Reply::envelope(
            500,
            "Failed to set power state: Condition failed: `mask != 0`".into(),
        );
    }
    for (n, on) in changes {
        st.power.insert(n, on);
    }
    Reply::envelope(200, "ok".into())
}

/// `node=` is 0-based (hal.rs:50-70; api.rs:21-41).
fn node_param(q: &BTreeMap<String, String>) -> Result<u8, String> {
    let n = q.get("node").ok_or("Missing `node` parameter")?;
    let n: u64 = n.parse().map_err(|_| "Parameter `node` is not a number")?;
    if n > 3 {
        return Err("Parameter `node` is out of range 0..3 of node IDs".into());
    }
    Ok(n as u8 + 1)
}

/// The flash start (legacy.rs:563-627). Errors are 500 text/plain whatever
/// status bmcd coded (fact: `LegacyResult` straight to actix). No busy check:
/// a new start replaces and cancels the running transfer
/// (streaming_data_service.rs:48-80; transfer_context.rs:61-65).
fn flash_start(q: &BTreeMap<String, String>, state: &Arc<Mutex<State>>) -> Result<Reply, End> {
    if q.get("type").map(String::as_str) == Some("firmware") {
        return Err(End::Fault("firmware upgrades are not modelled".into()));
    }
    let slot = match node_param(q) {
        Ok(s) => s,
        Err(m) => return Ok(Reply::plain_500(&m)),
    };
    if q.contains_key("local") {
        return Err(End::Fault("`local` flashing is not modelled".into()));
    }
    if q.get("file").is_none_or(|f| f.is_empty()) {
        return Ok(Reply::plain_500("Invalid `file` query parameter"));
    }
    if q.get("file").is_some_and(|f| f.starts_with("http")) {
        return Err(End::Fault("flashing from a URL is not modelled".into()));
    }
    let Some(length) = q.get("length") else {
        return Ok(Reply::plain_500("Invalid `length` query parameter"));
    };
    let Ok(size) = length.parse::<u64>() else {
        return Ok(Reply::plain_500("`length` parameter is not a number"));
    };
    let mut st = lock(state);
    // Daemons before 2.3.0 ignore keys they do not know (v2.0.5 src/api/legacy.rs:537-561).
    let modern = st.daemon.at_least((2, 3, 0));
    let sha256 = match q.get("sha256").filter(|_| modern) {
        Some(h) => match hex::decode(h) {
            Ok(_) => Some(h.to_ascii_lowercase()),
            Err(e) => {
                return Ok(Reply::plain_500(&format!(
                    "`sha256` parameter contains invalid hex values: {e}"
                )));
            }
        },
        None => None,
    };
    let crc = !(modern && q.contains_key("skip_crc"));
    let id = begin(&mut st, slot, size, sha256, crc);
    let (window, usb_delay) = (st.send_window, st.usb_delay);
    drop(st);
    // The upload window: after it, any transfer whose sender was not taken
    // fails, whichever start armed the timer (streaming_data_service.rs:86-98).
    let st2 = state.clone();
    spawn_guarded(state, move || {
        std::thread::sleep(window);
        let mut st = lock(&st2);
        let waiting = matches!(st.flash, Flash::Transferring { .. })
            && st.transfer.as_ref().is_some_and(|t| !t.sender_taken);
        if waiting {
            st.flash = Flash::Error("Send timeout".into());
            if let Some(t) = st.transfer.as_mut() {
                t.cancelled = true;
            }
        }
    });
    // The worker's USB stage (upgrade_worker.rs:76; bmc_application.rs:357-380):
    // power off, USB to the BMC, power on, look for the device.
    let st3 = state.clone();
    spawn_guarded(state, move || {
        std::thread::sleep(usb_delay);
        let mut st = lock(&st3);
        if !current(&st, id) {
            return;
        }
        st.power.insert(slot, true);
        if st.missing_slots.contains(&slot) {
            // usb_boot.rs:110-113; the early `?` leaves the node on (upgrade_worker.rs:76).
            fail(
                &mut st,
                id,
                "Compute module's USB interface not found or supported",
            );
            return;
        }
        if let Some(t) = st.transfer.as_mut() {
            t.device_ready = true;
        }
    });
    // `{"handle":N}` as a bare 200 text/plain (legacy.rs:592-594).
    Ok(Reply::text_200(
        &serde_json::json!({ "handle": id }).to_string(),
    ))
}

/// A new transfer replacing any other; returns its handle, a random u32
/// (streaming_data_service.rs:56-57).
fn begin(st: &mut State, slot: u8, size: u64, sha256: Option<String>, crc: bool) -> u32 {
    if let Some(old) = st.transfer.as_mut() {
        old.cancelled = true;
    }
    let id = random_u32();
    st.transfer = Some(Transfer {
        id,
        slot,
        size,
        sha256,
        crc,
        sender_taken: false,
        cancelled: false,
        device_ready: false,
    });
    st.flash = Flash::Transferring {
        id,
        process_name: format!("Node {slot} os install service"),
        size,
        cancelled: false,
        bytes_written: 0,
    };
    id
}

/// Whether transfer `id` is the running one and not cancelled: only then may
/// its worker write the state (streaming_data_service.rs:144-158).
fn current(st: &State, id: u32) -> bool {
    matches!(st.flash, Flash::Transferring { .. })
        && st
            .transfer
            .as_ref()
            .is_some_and(|t| t.id == id && !t.cancelled)
}

fn fail(st: &mut State, id: u32, msg: &str) {
    if current(st, id) {
        st.flash = Flash::Error(msg.into());
    }
}

fn set_written(st: &mut State, id: u32, n: u64) {
    if current(st, id)
        && let Flash::Transferring { bytes_written, .. } = &mut st.flash
    {
        *bytes_written = n;
    }
}

/// `cancel_all` (streaming_data_service.rs:82-84).
fn cancel_all(st: &mut State) {
    if let Some(t) = st.transfer.as_mut() {
        t.cancelled = true;
    }
    st.flash = Flash::Error("cancelled by user".into());
}

/// POST /api/bmc/upload/<handle> (legacy.rs:653-693): errors are 500
/// text/plain; success is an empty 200. The fake reads the rest of the body
/// before answering an error, so the client gets the answer (bmcd may close
/// the connection instead; the client must cope with both).
fn upload(
    reader: &mut impl BufRead,
    path: &str,
    headers: &BTreeMap<String, String>,
    len: u64,
    state: &Arc<Mutex<State>>,
    stop: &AtomicBool,
) -> Result<Reply, End> {
    use sha2::{Digest, Sha256};
    let Ok(handle) = path.trim_start_matches("/api/bmc/upload/").parse::<u32>() else {
        // actix `Path<u32>` error -> 404 (actix-web types/path.rs:95).
        drain(reader, len)?;
        return Ok(Reply::new(404, None, ""));
    };
    let delay = lock(state).upload_delay;
    std::thread::sleep(delay);
    // take_sender first (legacy.rs:659; streaming_data_service.rs:179-193).
    let taken = {
        let mut guard = lock(state);
        let st = &mut *guard;
        match (&st.flash, st.transfer.as_mut()) {
            (Flash::Transferring { .. }, Some(t)) if t.id != handle => {
                Err("unauthorized request for handle".to_string())
            }
            (Flash::Transferring { .. }, Some(t)) if t.sender_taken => Err(
                "cannot transfer bytes to worker. This is either because the transfer happens locally, or is already ongoing."
                    .to_string(),
            ),
            (Flash::Transferring { .. }, Some(t)) => {
                t.sender_taken = true;
                Ok(t.clone())
            }
            (f, _) => Err(format!(
                "cannot execute command in current state. current={}, expected=Transferring",
                f.name()
            )),
        }
    };
    let transfer = match taken {
        Ok(t) => t,
        Err(m) => {
            drain(reader, len)?;
            return Ok(Reply::plain_500(&m));
        }
    };
    let id = transfer.id;
    // The first multipart field, whatever its name (legacy.rs:660-662).
    let Some(boundary) = headers
        .get("content-type")
        .and_then(|c| c.split("boundary=").nth(1))
        .map(|b| b.trim_matches('"').to_string())
    else {
        drain(reader, len)?;
        lock(state)
            .faults_seen
            .push("an upload without a multipart boundary".into());
        return Ok(Reply::plain_500("Multipart form invalid"));
    };
    let mut consumed = 0u64;
    let mut line = String::new();
    let mut first = true;
    loop {
        line.clear();
        let n = reader.read_line(&mut line)?;
        if n == 0 {
            return Err(End::Gone);
        }
        consumed += n as u64;
        if first && line.trim_end() != format!("--{boundary}") {
            return Err(End::Fault(format!("multipart body starts with {line:?}")));
        }
        first = false;
        if line == "\r\n" {
            break;
        }
    }
    let suffix = format!("\r\n--{boundary}--\r\n");
    let data_len = len
        .checked_sub(consumed + suffix.len() as u64)
        .ok_or_else(|| End::Fault("multipart body shorter than its headers".into()))?;
    // The worker reads only after its USB stage; until then the upload waits
    // (the channel of 16 chunks fills, legacy.rs:626).
    loop {
        let st = lock(state);
        if !current(&st, id) {
            // Worker gone: its error (e.g. USB not found), else "transfer canceled"
            // (legacy.rs:667-669, 687-693).
            let msg = match &st.flash {
                Flash::Error(m) => m.clone(),
                _ => "transfer canceled".into(),
            };
            drop(st);
            drain(reader, len - consumed)?;
            return Ok(Reply::plain_500(&msg));
        }
        if st.transfer.as_ref().is_some_and(|t| t.device_ready) {
            break;
        }
        drop(st);
        if stop.load(Ordering::SeqCst) {
            return Err(End::Gone);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let path = lock(state)
        .slots_dir
        .join(format!("slot{}.img", transfer.slot));
    let out =
        std::fs::File::create(&path).map_err(|e| End::Fault(format!("{}: {e}", path.display())))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 << 10];
    let mut received = 0u64;
    let started = Instant::now();
    let (rate, drop_after, stall_after) = {
        let st = lock(state);
        (st.upload_rate, st.drop_upload_after, st.stall_upload_after)
    };
    while received < data_len {
        let want = ((data_len - received) as usize).min(buf.len());
        let n = reader.read(&mut buf[..want])?;
        if n == 0 {
            // The client went away mid-upload: the stream errors, cancel_all
            // (legacy.rs:674-680).
            cancel_all(&mut lock(state));
            return Err(End::Gone);
        }
        // The slot file stays sparse: zero chunks become holes.
        if buf[..n].iter().any(|&b| b != 0) {
            use std::os::unix::fs::FileExt;
            out.write_all_at(&buf[..n], received)
                .map_err(|e| End::Fault(format!("{}: {e}", path.display())))?;
        }
        hasher.update(&buf[..n]);
        received += n as u64;
        {
            let mut st = lock(state);
            if !current(&st, id) {
                // Cancelled or replaced while uploading (legacy.rs:687-693).
                drop(st);
                drain(reader, data_len - received + suffix.len() as u64)?;
                return Ok(Reply::plain_500("transfer canceled"));
            }
            set_written(&mut st, id, received.min(transfer.size));
        }
        if drop_after.is_some_and(|limit| received >= limit) {
            cancel_all(&mut lock(state));
            return Err(End::Gone);
        }
        if stall_after.is_some_and(|limit| received >= limit) {
            while current(&lock(state), id) && !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(20));
            }
            return Err(End::Gone);
        }
        if let Some(rate) = rate {
            let due = Duration::from_secs_f64(received as f64 / rate as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
    out.set_len(received)
        .map_err(|e| End::Fault(format!("{}: {e}", path.display())))?;
    let mut tail = vec![0u8; suffix.len()];
    reader.read_exact(&mut tail)?;
    if tail != suffix.as_bytes() {
        return Err(End::Fault(format!(
            "multipart body ends with {:?}",
            String::from_utf8_lossy(&tail)
        )));
    }
    if received != transfer.size {
        // cancel_all, then "missing {humansize}", u64 wrapping (legacy.rs:674-680).
        cancel_all(&mut lock(state));
        return Ok(Reply::plain_500(&format!(
            "missing {}",
            humansize(transfer.size.wrapping_sub(received))
        )));
    }
    let got = hex::encode(hasher.finalize());
    let st2 = state.clone();
    spawn_guarded(state, move || finish(&st2, transfer, got));
    Ok(Reply::null())
}

/// The worker after the last byte: sha256 (checked when the channel closes,
/// after the upload's 200, io.rs:88-96), then the CRC read-back, then Done;
/// the node is left off either way (upgrade_worker.rs:102-108).
fn finish(state: &Arc<Mutex<State>>, t: Transfer, got: String) {
    let id = t.id;
    {
        let mut st = lock(state);
        if st.restart_after_upload {
            // A restarted daemon starts in Ready (streaming_data_service.rs:44).
            st.flash = Flash::Ready;
            st.transfer = None;
            st.tokens.clear();
            return;
        }
        if st.other_start_after_upload {
            let size = t.size;
            begin(&mut st, t.slot % 4 + 1, size, None, true);
            return;
        }
        if let Some(want) = &t.sha256
            && *want != got
        {
            // io.rs:49-58
            fail(
                &mut st,
                id,
                &format!("sha256 checksum failed. Expected: {want}, got: {got}"),
            );
            st.power.insert(t.slot, false);
            return;
        }
        if st.hang_after_upload {
            return;
        }
    }
    if t.crc {
        // The read-back restarts bytes_written from 0 (upgrade_worker.rs:85-89).
        let (steps, delay) = {
            let st = lock(state);
            (st.crc_steps.max(1), st.crc_step_delay)
        };
        for step in 0..=steps {
            let mut st = lock(state);
            if !current(&st, id) {
                return;
            }
            set_written(&mut st, id, t.size * step / steps);
            drop(st);
            std::thread::sleep(delay);
        }
        let mut st = lock(state);
        st.verified.push(t.slot);
        if st.crc_error_slots.contains(&t.slot) {
            // upgrade_worker.rs:147-152, decimal CRC-64 values.
            let expected = u64::from_str_radix(&got[..16], 16).unwrap_or(1);
            fail(
                &mut st,
                id,
                &format!(
                    "crc error. expected {expected}, calculated {}",
                    expected ^ 0x5a5a
                ),
            );
            st.power.insert(t.slot, false);
            return;
        }
    }
    let mut st = lock(state);
    if current(&st, id) {
        st.flash = Flash::Done {
            secs: 1,
            nanos: 500_000_000,
            size: t.size,
        };
        st.flashed.push(t.slot);
    }
    st.power.insert(t.slot, false);
}
