//! A fake Turing Pi BMC (firmware 2.x, bmcd) on loopback for the tests: HTTPS
//! with a generated self-signed certificate, bearer-token login, and the
//! enveloped `/api/bmc?opt=...&type=...` answers as REFERENCE §4 describes.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

#[derive(Debug, Default)]
pub struct State {
    pub password: String,
    pub tokens: Vec<String>,
    pub logins: u32,
    pub failed_logins: u32,
    /// Invalidate every token after this many authorised requests.
    pub expire_after: Option<u32>,
    pub authorised_requests: u32,
    pub power: BTreeMap<u8, bool>,
    pub log: Vec<String>,
    /// Where each slot's module contents land (`slot<N>.img`).
    pub slots_dir: PathBuf,
    pub next_handle: u32,
    /// (handle, slot, length, sha256, started)
    pub pending: Option<(u32, u8, u64, Option<String>, std::time::Instant)>,
    /// The bare-JSON flash state.
    pub flash: String,
    /// Slots whose CRC read-back fails.
    pub crc_error_slots: Vec<u8>,
    /// Slots whose flash start fails (HTTP 500, as when no module answers).
    pub missing_slots: Vec<u8>,
    /// Report a flash in progress.
    pub busy: bool,
    /// Slots flashed, in order.
    pub flashed: Vec<u8>,
    /// Drop the connection after this many uploaded bytes.
    pub drop_upload_after: Option<u64>,
}

pub struct FakeBmc {
    pub port: u16,
    pub cert_sha256: String,
    pub state: Arc<Mutex<State>>,
}

impl FakeBmc {
    pub fn start(password: &str) -> FakeBmc {
        rustls_provider();
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
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let slots_dir = tempfile::tempdir().unwrap().keep();
        let state = Arc::new(Mutex::new(State {
            password: password.to_string(),
            power: (1..=4).map(|s| (s, false)).collect(),
            slots_dir,
            flash: "\"Ready\"".into(),
            ..Default::default()
        }));
        let st = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let (cfg, st) = (config.clone(), st.clone());
                std::thread::spawn(move || {
                    let _ = serve(conn, cfg, &st);
                });
            }
        });
        FakeBmc {
            port,
            cert_sha256,
            state,
        }
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

fn rustls_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn serve(
    tcp: TcpStream,
    config: Arc<rustls::ServerConfig>,
    state: &Arc<Mutex<State>>,
) -> std::io::Result<()> {
    let conn = rustls::ServerConnection::new(config).map_err(std::io::Error::other)?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    loop {
        // One request per iteration (keep-alive).
        let mut reader = BufReader::new(&mut tls);
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut parts = line.split_whitespace();
        let (method, target) = (
            parts.next().unwrap_or("").to_string(),
            parts.next().unwrap_or("").to_string(),
        );
        let mut headers = BTreeMap::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h)? == 0 || h == "\r\n" {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        let len: usize = headers
            .get("content-length")
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let (status, ctype, resp) = if method == "POST" && target.starts_with("/api/bmc/upload/") {
            upload(&mut reader, &target, &headers, len as u64, state)?
        } else {
            let mut body = vec![0u8; len];
            reader.read_exact(&mut body)?;
            route(&method, &target, &headers, &body, state)
        };
        drop(reader);
        let head = format!(
            "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\r\n",
            resp.len()
        );
        tls.write_all(head.as_bytes())?;
        tls.write_all(resp.as_bytes())?;
        tls.flush()?;
    }
}

fn ok(result: serde_json::Value) -> (String, &'static str, String) {
    (
        "200 OK".into(),
        "application/json",
        serde_json::json!({"response": [{"result": result}]}).to_string(),
    )
}

fn route(
    method: &str,
    target: &str,
    headers: &BTreeMap<String, String>,
    body: &[u8],
    state: &Mutex<State>,
) -> (String, &'static str, String) {
    let mut st = state.lock().unwrap();
    st.log.push(format!("{method} {target}"));
    if st.busy && target.contains("type=flash") && target.contains("opt=get") {
        return ("200 OK".into(), "application/json", r#"{"Transferring":{"id":7,"process_name":"flashing","size":100,"cancelled":false,"bytes_written":10}}"#.into());
    }
    if method == "POST" && target == "/api/bmc/authenticate" {
        let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
        if v["username"] == "root" && v["password"] == st.password.as_str() {
            st.logins += 1;
            let token = format!("token-{}", st.logins);
            st.tokens.push(token.clone());
            st.authorised_requests = 0;
            return (
                "200 OK".into(),
                "application/json",
                serde_json::json!({"id": token, "ip": "127.0.0.1"}).to_string(),
            );
        }
        st.failed_logins += 1;
        return (
            "401 Unauthorized".into(),
            "text/plain",
            "Incorrect credentials".into(),
        );
    }
    if method == "GET" && target.starts_with("/api/bmc/upload/") && target.ends_with("/cancel") {
        st.flash = serde_json::json!({"Error": "cancelled"}).to_string();
        return ("200 OK".into(), "text/plain", String::new());
    }
    let Some(query) = target.strip_prefix("/api/bmc?") else {
        return ("404 Not Found".into(), "text/plain", "not found".into());
    };
    let token = headers
        .get("authorization")
        .and_then(|a| a.strip_prefix("Bearer "))
        .unwrap_or("");
    if !st.tokens.iter().any(|t| t == token) {
        return (
            "401 Unauthorized".into(),
            "text/plain",
            "Unauthorized".into(),
        );
    }
    st.authorised_requests += 1;
    if let Some(n) = st.expire_after
        && st.authorised_requests > n
    {
        st.tokens.clear();
        return (
            "401 Unauthorized".into(),
            "text/plain",
            "Unauthorized".into(),
        );
    }
    let q: BTreeMap<&str, &str> = query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .collect();
    match (q.get("opt").copied(), q.get("type").copied()) {
        (Some("get"), Some("about")) => ok(serde_json::json!({
            "api": "1.1", "version": "2.3.4", "buildroot": "Buildroot 2024.05", "board_model": "Turing Pi 2.5",
        })),
        (Some("get"), Some("power")) => {
            let m: serde_json::Map<String, serde_json::Value> = st
                .power
                .iter()
                .map(|(s, on)| {
                    (
                        format!("node{s}"),
                        serde_json::Value::String(if *on { "1" } else { "0" }.into()),
                    )
                })
                .collect();
            ok(serde_json::json!([m]))
        }
        (Some("set"), Some("power")) => {
            for (k, v) in &q {
                if let Some(slot) = k.strip_prefix("node").and_then(|n| n.parse::<u8>().ok()) {
                    st.power.insert(slot, *v == "1");
                }
            }
            ok(serde_json::json!("ok"))
        }
        (Some("get"), Some("flash")) => ("200 OK".into(), "application/json", st.flash.clone()),
        (Some("set"), Some("flash")) => {
            let node: u8 = q.get("node").and_then(|n| n.parse().ok()).unwrap_or(9);
            if node > 3 {
                return (
                    "500 Internal Server Error".into(),
                    "text/plain",
                    "invalid node".into(),
                );
            }
            let slot = node + 1;
            if st.missing_slots.contains(&slot) {
                return (
                    "500 Internal Server Error".into(),
                    "text/plain",
                    format!("could not find a module in node {slot}"),
                );
            }
            let length: u64 = q.get("length").and_then(|n| n.parse().ok()).unwrap_or(0);
            st.next_handle += 1;
            let h = st.next_handle;
            st.pending = Some((
                h,
                slot,
                length,
                q.get("sha256").map(|s| s.to_string()),
                std::time::Instant::now(),
            ));
            st.power.insert(slot, false);
            (
                "200 OK".into(),
                "application/json",
                serde_json::json!({"handle": h}).to_string(),
            )
        }
        (Some("get"), Some("info")) => ok(serde_json::json!({
            "ip": [{"device": "eth0", "ip": "127.0.0.1", "mac": "02:00:00:00:00:01"}],
            "storage": [{"name": "microSD", "total_bytes": 31_000_000_000u64, "bytes_free": 12_345_000_000u64}],
        })),
        _ => (
            "500 Internal Server Error".into(),
            "text/plain",
            format!("unsupported request {query}"),
        ),
    }
}

/// POST /api/bmc/upload/<handle>: one multipart part, streamed into the slot's
/// file; lasts as long as the write. Then the CRC read-back runs.
fn upload(
    reader: &mut impl BufRead,
    target: &str,
    headers: &BTreeMap<String, String>,
    len: u64,
    state: &Arc<Mutex<State>>,
) -> std::io::Result<(String, &'static str, String)> {
    use sha2::{Digest, Sha256};
    let fail = |code: &str, msg: String| Ok((code.to_string(), "text/plain", msg));
    let handle: u32 = target
        .trim_start_matches("/api/bmc/upload/")
        .parse()
        .unwrap_or(0);
    let token_ok = {
        let st = state.lock().unwrap();
        let token = headers
            .get("authorization")
            .and_then(|a| a.strip_prefix("Bearer "))
            .unwrap_or("");
        st.tokens.iter().any(|t| t == token)
    };
    let pending = state.lock().unwrap().pending.take();
    let boundary = headers
        .get("content-type")
        .and_then(|c| c.split("boundary=").nth(1))
        .map(|b| b.trim_matches('"').to_string())
        .unwrap_or_default();
    // Read the part's headers.
    let mut consumed = 0u64;
    let mut line = String::new();
    loop {
        line.clear();
        consumed += reader.read_line(&mut line)? as u64;
        if line == "\r\n" || line.is_empty() {
            break;
        }
    }
    let suffix = format!("\r\n--{boundary}--\r\n").len() as u64;
    let data_len = len.saturating_sub(consumed + suffix);
    let sink = |n: u64, r: &mut dyn Read| -> std::io::Result<()> {
        std::io::copy(&mut r.take(n), &mut std::io::sink()).map(|_| ())
    };
    let Some((h, slot, expected, sha, started)) = pending.filter(|p| p.0 == handle) else {
        sink(len - consumed, reader)?;
        return fail("400 Bad Request", "no such transfer".into());
    };
    if !token_ok {
        sink(len - consumed, reader)?;
        return fail("401 Unauthorized", "Unauthorized".into());
    }
    if started.elapsed() > std::time::Duration::from_secs(10) {
        sink(len - consumed, reader)?;
        return fail("500 Internal Server Error", "Send timeout".into());
    }
    let path = state
        .lock()
        .unwrap()
        .slots_dir
        .join(format!("slot{slot}.img"));
    let out = std::fs::File::create(&path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut written = 0u64;
    while written < data_len {
        let n = reader.read(&mut buf[..((data_len - written) as usize).min(1 << 20)])?;
        if n == 0 {
            break;
        }
        // The slot file stays sparse: zero chunks become holes.
        if buf[..n].iter().any(|&b| b != 0) {
            use std::os::unix::fs::FileExt;
            out.write_all_at(&buf[..n], written)?;
        }
        hasher.update(&buf[..n]);
        written += n as u64;
        let drop_after = state.lock().unwrap().drop_upload_after;
        if let Some(limit) = drop_after
            && written >= limit
        {
            state.lock().unwrap().flash =
                serde_json::json!({"Error": "upload interrupted"}).to_string();
            return Err(std::io::Error::other(
                "dropping the connection (test fault)",
            ));
        }
        state.lock().unwrap().flash = serde_json::json!({"Transferring": {"id": h, "process_name": "flashing", "size": expected, "cancelled": false, "bytes_written": written}}).to_string();
    }
    out.set_len(written)?;
    sink(len.saturating_sub(consumed + written), reader)?;
    if written < expected {
        state.lock().unwrap().flash =
            serde_json::json!({"Error": format!("missing {} bytes", expected - written)})
                .to_string();
        return fail(
            "500 Internal Server Error",
            format!("missing {} bytes", expected - written),
        );
    }
    let actual = hex::encode(hasher.finalize());
    if let Some(want) = sha
        && want != actual
    {
        state.lock().unwrap().flash = serde_json::json!({"Error": "sha256 mismatch"}).to_string();
        return fail(
            "500 Internal Server Error",
            format!("sha256 mismatch: expected {want}, got {actual}"),
        );
    }
    // CRC read-back in the background: bytes_written restarts from 0.
    let st = state.clone();
    std::thread::spawn(move || {
        for step in 0..=4u64 {
            st.lock().unwrap().flash = serde_json::json!({"Transferring": {"id": h, "process_name": "verifying", "size": expected, "cancelled": false, "bytes_written": expected * step / 4}}).to_string();
            std::thread::sleep(std::time::Duration::from_millis(150));
        }
        let mut s = st.lock().unwrap();
        if s.crc_error_slots.contains(&slot) {
            s.flash = serde_json::json!({"Error": "crc error"}).to_string();
        } else {
            s.flash = serde_json::json!({"Done": [{"secs": 1, "nanos": 0}, expected]}).to_string();
            s.flashed.push(slot);
        }
    });
    Ok(("200 OK".into(), "text/plain", String::new()))
}
