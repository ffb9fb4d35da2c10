//! A fake Turing Pi BMC (firmware 2.x, bmcd) on loopback for the tests: HTTPS
//! with a generated self-signed certificate, bearer-token login, and the
//! enveloped `/api/bmc?opt=...&type=...` answers as REFERENCE §4 describes.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
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
        let state = Arc::new(Mutex::new(State {
            password: password.to_string(),
            power: (1..=4).map(|s| (s, false)).collect(),
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
    state: &Mutex<State>,
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
        let mut body = vec![0u8; len];
        reader.read_exact(&mut body)?;
        drop(reader);
        let (status, ctype, resp) = route(&method, &target, &headers, &body, state);
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
