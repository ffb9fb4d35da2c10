//! A small HTTP/1.1 server on loopback for the download tests, modelled on
//! what release servers do (GitHub release assets, Ubuntu's cloud-images,
//! CDNs in front of them):
//! - GET and HEAD; keep-alive; `Content-Length` or `Transfer-Encoding: chunked`;
//! - `Range: bytes=N-` answered 206 with `Content-Range` (RFC 9110 §14.4),
//!   or 416 with `Content-Range: bytes */LEN` past the end (§15.5.17), and
//!   `Accept-Ranges: bytes` only when ranges are on (§14.3: a server without
//!   range support omits it or says `none`);
//! - redirects (GitHub answers a release-asset URL with 302 to another host
//!   and path, objects.githubusercontent.com);
//! - HTTPS with a certificate from a test CA ([`Server::start_tls`]);
//! - switches for faults: 500s, cut or overstated bodies, a 206 that starts
//!   elsewhere than asked, a body held half-sent until the test releases it,
//!   a server that accepts a request and never answers, one that sends a
//!   body a byte at a time with pauses between.
//!
//! Anything the server itself gets wrong (a handler panic, a request it cannot
//! parse, an I/O error other than the client going away) is recorded and fails
//! the test when the server is dropped.
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// Where a 206 starts when the server does not honour the requested offset.
#[derive(Debug, Clone, Copy)]
pub enum RangeStart {
    /// At the offset rounded down to a multiple of this (caches that serve
    /// whole blocks); the client must skip what it already has.
    AlignDown(u64),
    /// This many bytes after the offset (a broken server); the client must
    /// not append across the gap.
    Ahead(u64),
}

#[derive(Debug, Default, Clone)]
pub struct Faults {
    /// Answer 206 to `Range: bytes=N-` and advertise `Accept-Ranges: bytes`.
    pub ranges: bool,
    /// Answer this many requests with 500 first.
    pub fail_first: u32,
    /// Close the connection after this many body bytes, for this many responses.
    pub cut_after: Option<(u64, u32)>,
    /// Announce this many extra bytes in Content-Length, then close (every response).
    pub overstate: Option<u64>,
    /// Send bodies chunked, without Content-Length.
    pub chunked: bool,
    /// 206 responses start here instead of at the requested offset.
    pub range_start: Option<RangeStart>,
    /// Stop every GET body after this many bytes until [`Server::release`].
    pub hold_after: Option<u64>,
    /// Read this many requests and send nothing back, not even a status
    /// line, until the client goes away or the server stops.
    pub stall_first: u32,
    /// Send this many bodies one byte at a time, pausing this long after
    /// each byte (a server that trickles).
    pub trickle: Option<(Duration, u32)>,
}

#[derive(Debug, Clone)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub host: Option<String>,
    pub range: Option<String>,
}

#[derive(Default)]
struct Shared {
    files: Mutex<HashMap<String, Arc<Vec<u8>>>>,
    /// path -> (status, Location)
    redirects: Mutex<HashMap<String, (u16, String)>>,
    /// Failures of the fake itself; non-empty fails the test on drop.
    errors: Mutex<Vec<String>>,
    /// TLS handshakes the client broke off (an untrusted certificate).
    handshake_failures: Mutex<Vec<String>>,
    /// Responses the client stopped reading (it went away mid-body).
    disconnects: Mutex<u32>,
    gate_open: Mutex<bool>,
    gate: Condvar,
    /// Bytes of held bodies sent so far (for tests that wait for a holder).
    held: Mutex<u32>,
    /// Requests answered with silence ([`Faults::stall_first`]).
    stalled: Mutex<u32>,
    stopping: AtomicBool,
}

pub struct Server {
    pub port: u16,
    pub faults: Arc<Mutex<Faults>>,
    pub log: Arc<Mutex<Vec<Request>>>,
    shared: Arc<Shared>,
    scheme: &'static str,
    /// PEM of the CA that issued the server's certificate (HTTPS only).
    pub ca_pem: Option<String>,
    accept: Option<JoinHandle<()>>,
    handlers: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

impl Server {
    pub fn start(faults: Faults) -> Server {
        Self::start_with(faults, None)
    }

    /// The same server behind TLS: a certificate for `localhost` and
    /// `127.0.0.1` issued by a fresh CA ([`Server::ca_pem`]) that no system
    /// trusts, so a client reaches it only when told to trust that CA.
    pub fn start_tls(faults: Faults) -> Server {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "imgbuild test CA");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
                .unwrap();
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &issuer).unwrap();
        let key_der = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone(), ca_cert.der().clone()], key_der)
            .unwrap();
        let mut s = Self::start_with(faults, Some(Arc::new(config)));
        s.ca_pem = Some(ca_cert.pem());
        s
    }

    fn start_with(faults: Faults, tls: Option<Arc<rustls::ServerConfig>>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let faults = Arc::new(Mutex::new(faults));
        let log = Arc::new(Mutex::new(Vec::new()));
        let shared = Arc::new(Shared::default());
        let handlers: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let scheme = if tls.is_some() { "https" } else { "http" };
        let (f2, l2, s2, h2) = (
            faults.clone(),
            log.clone(),
            shared.clone(),
            handlers.clone(),
        );
        let accept = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s2.stopping.load(Ordering::SeqCst) {
                    return;
                }
                let conn = match conn {
                    Ok(c) => c,
                    Err(e) => {
                        s2.errors.lock().unwrap().push(format!("accept: {e}"));
                        continue;
                    }
                };
                let (f, l, s, t) = (f2.clone(), l2.clone(), s2.clone(), tls.clone());
                let h = std::thread::spawn(move || {
                    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        connection(conn, t, &f, &l, &s)
                    }));
                    if let Err(p) = r {
                        let msg = p
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_default();
                        s.errors
                            .lock()
                            .unwrap()
                            .push(format!("handler panicked: {msg}"));
                    }
                });
                h2.lock().unwrap().push(h);
            }
        });
        Server {
            port,
            faults,
            log,
            shared,
            scheme,
            ca_pem: None,
            accept: Some(accept),
            handlers,
        }
    }

    pub fn put(&self, path: &str, body: Vec<u8>) {
        self.shared
            .files
            .lock()
            .unwrap()
            .insert(path.to_string(), Arc::new(body));
    }

    /// Answers `path` with `status` (301, 302, 303, 307, 308) and `Location: location`.
    pub fn redirect(&self, path: &str, status: u16, location: &str) {
        self.shared
            .redirects
            .lock()
            .unwrap()
            .insert(path.to_string(), (status, location.to_string()));
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}://127.0.0.1:{}{}", self.scheme, self.port, path)
    }

    /// The same resource under the host name `localhost` (another origin).
    pub fn url_by_name(&self, path: &str) -> String {
        format!("{}://localhost:{}{}", self.scheme, self.port, path)
    }

    pub fn requests(&self) -> Vec<Request> {
        self.log.lock().unwrap().clone()
    }

    /// GET requests for `path`.
    pub fn gets(&self, path: &str) -> Vec<Request> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == "GET" && r.path == path)
            .collect()
    }

    /// Lets held bodies continue ([`Faults::hold_after`]).
    pub fn release(&self) {
        *self.shared.gate_open.lock().unwrap() = true;
        self.shared.gate.notify_all();
    }

    /// How many responses are being held right now.
    pub fn holding(&self) -> u32 {
        *self.shared.held.lock().unwrap()
    }

    /// How many requests were left unanswered ([`Faults::stall_first`]).
    pub fn stalled(&self) -> u32 {
        *self.shared.stalled.lock().unwrap()
    }

    pub fn handshake_failures(&self) -> Vec<String> {
        self.shared.handshake_failures.lock().unwrap().clone()
    }

    pub fn disconnects(&self) -> u32 {
        *self.shared.disconnects.lock().unwrap()
    }
}

impl Drop for Server {
    /// Stops accepting, lets held bodies go, waits for every connection to
    /// end, and fails the test if the server itself went wrong.
    fn drop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        self.release();
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(a) = self.accept.take() {
            let _ = a.join();
        }
        for h in std::mem::take(&mut *self.handlers.lock().unwrap()) {
            let _ = h.join();
        }
        let errors = self.shared.errors.lock().unwrap().clone();
        if !std::thread::panicking() {
            assert!(
                errors.is_empty(),
                "the fake HTTP server on port {} failed: {errors:#?}",
                self.port
            );
        }
    }
}

/// A loopback port that refuses connections for as long as it lives: bound
/// but not listening, so no other test can take it in the meantime (a port
/// released and then dialled may already belong to someone else).
pub struct ClosedPort {
    fd: libc::c_int,
    pub port: u16,
}

impl ClosedPort {
    pub fn new() -> ClosedPort {
        // SAFETY: plain socket calls on a descriptor we own.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
            let mut addr: libc::sockaddr_in = std::mem::zeroed();
            addr.sin_family = libc::AF_INET as libc::sa_family_t;
            addr.sin_addr.s_addr = u32::from(std::net::Ipv4Addr::LOCALHOST).to_be();
            let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            let rc = libc::bind(fd, &addr as *const _ as *const libc::sockaddr, len);
            assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
            let mut got: libc::sockaddr_in = std::mem::zeroed();
            let mut glen = len;
            let rc = libc::getsockname(fd, &mut got as *mut _ as *mut libc::sockaddr, &mut glen);
            assert_eq!(rc, 0, "getsockname: {}", std::io::Error::last_os_error());
            ClosedPort {
                fd,
                port: u16::from_be(got.sin_port),
            }
        }
    }
}

impl Default for ClosedPort {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for ClosedPort {
    fn drop(&mut self) {
        // SAFETY: our descriptor, closed once.
        unsafe { libc::close(self.fd) };
    }
}

trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

/// The client went away: not the server's fault.
fn gone(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        BrokenPipe | ConnectionReset | ConnectionAborted | UnexpectedEof | WouldBlock | TimedOut
    )
}

fn connection(
    tcp: TcpStream,
    tls: Option<Arc<rustls::ServerConfig>>,
    faults: &Mutex<Faults>,
    log: &Mutex<Vec<Request>>,
    shared: &Shared,
) {
    if shared.stopping.load(Ordering::SeqCst) {
        return;
    }
    // An idle keep-alive connection ends after this; no test waits so long.
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(30)));
    let _ = tcp.set_nodelay(true);
    let stream: Box<dyn Stream> = match tls {
        None => Box::new(tcp),
        Some(cfg) => {
            let mut conn = rustls::ServerConnection::new(cfg).unwrap();
            let mut tcp = tcp;
            while conn.is_handshaking() {
                if let Err(e) = conn.complete_io(&mut tcp) {
                    shared
                        .handshake_failures
                        .lock()
                        .unwrap()
                        .push(e.to_string());
                    return;
                }
            }
            Box::new(rustls::StreamOwned::new(conn, tcp))
        }
    };
    let mut stream = BufReader::new(stream);
    loop {
        match exchange(&mut stream, faults, log, shared) {
            Ok(true) => continue,
            Ok(false) => return,
            Err(e) if gone(&e) => {
                *shared.disconnects.lock().unwrap() += 1;
                return;
            }
            Err(e) => {
                shared.errors.lock().unwrap().push(format!("i/o: {e}"));
                return;
            }
        }
    }
}

fn status_line(code: u16) -> &'static str {
    match code {
        200 => "200 OK",
        206 => "206 Partial Content",
        301 => "301 Moved Permanently",
        302 => "302 Found",
        303 => "303 See Other",
        307 => "307 Temporary Redirect",
        308 => "308 Permanent Redirect",
        400 => "400 Bad Request",
        404 => "404 Not Found",
        405 => "405 Method Not Allowed",
        416 => "416 Range Not Satisfiable",
        500 => "500 Internal Server Error",
        _ => panic!("no status line for {code}"),
    }
}

/// A complete small response with a body; the connection stays open.
fn simple(
    out: &mut dyn Write,
    code: u16,
    extra: &str,
    body: &str,
    head: bool,
) -> std::io::Result<bool> {
    let mut r = format!(
        "HTTP/1.1 {}\r\nContent-Length: {}\r\nContent-Type: text/plain\r\n{extra}\r\n",
        status_line(code),
        body.len()
    );
    if !head {
        r.push_str(body);
    }
    out.write_all(r.as_bytes())?;
    out.flush()?;
    Ok(true)
}

/// Serves one request; `Ok(false)` when the connection is to end.
fn exchange(
    conn: &mut BufReader<Box<dyn Stream>>,
    faults: &Mutex<Faults>,
    log: &Mutex<Vec<Request>>,
    shared: &Shared,
) -> std::io::Result<bool> {
    let mut line = String::new();
    if conn.read_line(&mut line)? == 0 {
        return Ok(false); // The client closed an idle connection.
    }
    let mut parts = line.split_whitespace();
    let (method, path, version) = (
        parts.next().unwrap_or("").to_string(),
        parts.next().unwrap_or("").to_string(),
        parts.next().unwrap_or("").to_string(),
    );
    let mut range = None;
    let mut host = None;
    let mut close = false;
    let mut body_len = 0u64;
    loop {
        let mut h = String::new();
        if conn.read_line(&mut h)? == 0 {
            return Ok(false);
        }
        if h == "\r\n" || h == "\n" {
            break;
        }
        let Some((k, v)) = h.split_once(':') else {
            shared
                .errors
                .lock()
                .unwrap()
                .push(format!("malformed header line {h:?}"));
            return Ok(false);
        };
        let v = v.trim().to_string();
        match k.to_ascii_lowercase().as_str() {
            "range" => range = Some(v),
            "host" => host = Some(v),
            "connection" => close = v.eq_ignore_ascii_case("close"),
            "content-length" => body_len = v.parse().unwrap_or(0),
            _ => {}
        }
    }
    log.lock().unwrap().push(Request {
        method: method.clone(),
        path: path.clone(),
        host,
        range: range.clone(),
    });
    let out: &mut dyn Write = conn.get_mut();
    if version != "HTTP/1.1" || path.is_empty() {
        shared
            .errors
            .lock()
            .unwrap()
            .push(format!("malformed request line {line:?}"));
        simple(out, 400, "Connection: close\r\n", "bad request\n", false)?;
        return Ok(false);
    }
    let head = method == "HEAD";
    if method != "GET" && !head {
        // A download client has no business sending anything else.
        shared
            .errors
            .lock()
            .unwrap()
            .push(format!("unexpected {method} {path}"));
        let _ = body_len;
        simple(
            out,
            405,
            "Allow: GET, HEAD\r\nConnection: close\r\n",
            "",
            false,
        )?;
        return Ok(false);
    }
    if let Some((code, location)) = shared.redirects.lock().unwrap().get(&path).cloned() {
        return simple(
            out,
            code,
            &format!("Location: {location}\r\n"),
            "redirecting\n",
            head,
        )
        .map(|k| k && !close);
    }
    let mut f = faults.lock().unwrap();
    if f.fail_first > 0 {
        f.fail_first -= 1;
        return simple(out, 500, "", "oops\n", head).map(|k| k && !close);
    }
    if f.stall_first > 0 {
        f.stall_first -= 1;
        drop(f);
        *shared.stalled.lock().unwrap() += 1;
        while !shared.stopping.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(20));
        }
        return Ok(false);
    }
    let Some(body) = shared.files.lock().unwrap().get(&path).cloned() else {
        drop(f);
        return simple(out, 404, "", "not found\n", head).map(|k| k && !close);
    };
    let total = body.len() as u64;
    // RFC 9110 §14.2: a server that does not support ranges ignores the header.
    let asked = match (&range, f.ranges) {
        (Some(r), true) => match r
            .strip_prefix("bytes=")
            .and_then(|r| r.strip_suffix('-'))
            .and_then(|n| n.parse::<u64>().ok())
        {
            Some(n) => Some(n),
            None => {
                shared
                    .errors
                    .lock()
                    .unwrap()
                    .push(format!("unexpected range form {r:?}"));
                return Ok(false);
            }
        },
        _ => None,
    };
    let accept_ranges = if f.ranges {
        "Accept-Ranges: bytes\r\n"
    } else {
        ""
    };
    if let Some(s) = asked
        && s >= total
    {
        drop(f);
        return simple(
            out,
            416,
            &format!("Content-Range: bytes */{total}\r\n{accept_ranges}"),
            "",
            head,
        )
        .map(|k| k && !close);
    }
    let from = match (asked, f.range_start) {
        (Some(s), Some(RangeStart::AlignDown(a))) => s - s % a,
        (Some(s), Some(RangeStart::Ahead(n))) => (s + n).min(total - 1),
        (Some(s), None) => s,
        (None, _) => 0,
    };
    let cut = if head {
        None
    } else {
        match &mut f.cut_after {
            Some((n, times)) if *times > 0 => {
                *times -= 1;
                Some(*n)
            }
            _ => None,
        }
    };
    let overstate = f.overstate.unwrap_or(0);
    let chunked = f.chunked;
    let hold = if head { None } else { f.hold_after };
    let trickle = match &mut f.trickle {
        Some((pause, times)) if *times > 0 && !head => {
            *times -= 1;
            Some(*pause)
        }
        _ => None,
    };
    drop(f);

    let len = total - from;
    let mut h = format!(
        "HTTP/1.1 {}\r\nContent-Type: application/octet-stream\r\n{accept_ranges}",
        status_line(if asked.is_some() { 206 } else { 200 })
    );
    if chunked {
        h.push_str("Transfer-Encoding: chunked\r\n");
    } else {
        h.push_str(&format!("Content-Length: {}\r\n", len + overstate));
    }
    if asked.is_some() {
        h.push_str(&format!(
            "Content-Range: bytes {from}-{}/{total}\r\n",
            total - 1
        ));
    }
    h.push_str("\r\n");
    out.write_all(h.as_bytes())?;
    if head {
        out.flush()?;
        return Ok(!close);
    }
    let end = match cut {
        Some(n) => (from + n).min(total),
        None => total,
    };
    if let Some(pause) = trickle {
        // One byte, a pause, the next: until the client gives up.
        for byte in body[from as usize..end as usize].chunks(1) {
            write_body(out, byte, chunked)?;
            out.flush()?;
            let until = std::time::Instant::now() + pause;
            while std::time::Instant::now() < until {
                if shared.stopping.load(Ordering::SeqCst) {
                    return Ok(false);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
    let mut sent = 0u64;
    let rest = if trickle.is_some() {
        &body[end as usize..end as usize]
    } else {
        &body[from as usize..end as usize]
    };
    for chunk in rest.chunks(64 * 1024) {
        let mut chunk = chunk;
        if let Some(n) = hold
            && sent < n
            && sent + chunk.len() as u64 >= n
        {
            let first = (n - sent) as usize;
            write_body(out, &chunk[..first], chunked)?;
            sent += first as u64;
            chunk = &chunk[first..];
            out.flush()?;
            wait_at_gate(shared);
        }
        if !chunk.is_empty() {
            write_body(out, chunk, chunked)?;
            sent += chunk.len() as u64;
        }
    }
    if cut.is_some() || overstate > 0 {
        // End by closing early: a chunked body without its last chunk, or
        // fewer bytes than Content-Length said.
        out.flush()?;
        return Ok(false);
    }
    if chunked {
        out.write_all(b"0\r\n\r\n")?;
    }
    out.flush()?;
    Ok(!close)
}

fn write_body(out: &mut dyn Write, data: &[u8], chunked: bool) -> std::io::Result<()> {
    if chunked {
        out.write_all(format!("{:x}\r\n", data.len()).as_bytes())?;
        out.write_all(data)?;
        out.write_all(b"\r\n")
    } else {
        out.write_all(data)
    }
}

fn wait_at_gate(shared: &Shared) {
    *shared.held.lock().unwrap() += 1;
    let mut open = shared.gate_open.lock().unwrap();
    while !*open && !shared.stopping.load(Ordering::SeqCst) {
        open = shared.gate.wait(open).unwrap();
    }
    drop(open);
    *shared.held.lock().unwrap() -= 1;
}
