//! A fake k3s API server on loopback for the tests: HTTPS with a serving
//! certificate signed by the cluster's server CA from a secrets directory (or
//! by another CA, to be refused), client certificates checked against the
//! cluster's client CA, RBAC as the baked manifest grants it (the node reader
//! may only read nodes; system:masters may do anything), and per-node scripts
//! that say what `GET /api/v1/nodes/NAME` and the watch show at each poll.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// What a node looks like at poll N (`None`: no such Node).
pub type Script = Box<dyn Fn(u32) -> Option<Value> + Send>;

#[derive(Default)]
pub struct State {
    pub scripts: BTreeMap<String, Script>,
    /// Polls (GETs and watch ticks) per node so far.
    pub polls: BTreeMap<String, u32>,
    /// `CN METHOD PATH` of every request that reached HTTP.
    pub requests: Vec<String>,
    /// TCP connections accepted.
    pub connections: u32,
    /// Answer /readyz with 500 (etcd not ready).
    pub not_ready: bool,
    /// Answer every request with 401 (a cluster with another client CA).
    pub reject_clients: bool,
    /// Accept connections and never answer (no TLS handshake either).
    pub hang: bool,
    /// The baked RBAC was not applied: the node reader may read nothing.
    pub no_rbac: bool,
    held: Vec<TcpStream>,
}

pub struct FakeApi {
    pub port: u16,
    pub state: Arc<Mutex<State>>,
}

/// Which CA signs the serving certificate.
pub enum Signer<'a> {
    /// The cluster's server CA in this secrets directory.
    Cluster(&'a Path),
    /// A CA the cluster has never seen.
    Other,
}

fn provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn serving_cert(signer: &Signer) -> (Vec<u8>, Vec<u8>) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params =
        rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "k3s");
    let cert = match signer {
        Signer::Cluster(secrets) => {
            let tls = secrets.join("cluster/tls");
            let ca_pem = std::fs::read_to_string(tls.join("server-ca.crt")).unwrap();
            let ca_key = rcgen::KeyPair::from_pem(
                &std::fs::read_to_string(tls.join("server-ca.key")).unwrap(),
            )
            .unwrap();
            let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_pem, ca_key).unwrap();
            params.signed_by(&key, &issuer).unwrap()
        }
        Signer::Other => {
            let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
            let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            ca.distinguished_name
                .push(rcgen::DnType::CommonName, "k3s-server-ca@1");
            let issuer = rcgen::Issuer::new(ca, ca_key);
            params.signed_by(&key, &issuer).unwrap()
        }
    };
    (cert.der().to_vec(), key.serialize_der())
}

impl FakeApi {
    /// Serves on 127.0.0.1; client certificates must come from the client CA
    /// in `client_ca_from` (the secrets directory).
    pub fn start(signer: Signer, client_ca_from: &Path) -> FakeApi {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        provider();
        let (cert, key) = serving_cert(&signer);
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(
                CertificateDer::from_pem_file(client_ca_from.join("cluster/tls/client-ca.crt"))
                    .unwrap(),
            )
            .unwrap();
        let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
            .allow_unauthenticated()
            .build()
            .unwrap();
        let config = Arc::new(
            rustls::ServerConfig::builder()
                .with_client_cert_verifier(verifier)
                .with_single_cert(
                    vec![CertificateDer::from(cert)],
                    PrivateKeyDer::try_from(key).unwrap(),
                )
                .unwrap(),
        );
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State::default()));
        let st = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let mut s = st.lock().unwrap();
                s.connections += 1;
                if s.hang {
                    // Keep the socket open and silent.
                    s.held.push(conn);
                    continue;
                }
                drop(s);
                let (cfg, st) = (config.clone(), st.clone());
                std::thread::spawn(move || {
                    let _ = serve(conn, cfg, &st);
                });
            }
        });
        FakeApi { port, state }
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    pub fn script(&self, node: &str, script: Script) {
        self.state
            .lock()
            .unwrap()
            .scripts
            .insert(node.to_string(), script);
    }

    pub fn requests(&self) -> Vec<String> {
        self.state.lock().unwrap().requests.clone()
    }
}

pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A Node as k3s serves it, with the Ready condition given.
pub fn node(name: &str, ready: &str, reason: &str, message: &str, boot: &str, since: u64) -> Value {
    let t = imgbuild::secrets::client::rfc3339(since);
    json!({
        "kind": "Node", "apiVersion": "v1",
        "metadata": {"name": name, "resourceVersion": "1",
                     "labels": {"kubernetes.io/hostname": name, "node-role.kubernetes.io/control-plane": "true",
                                "node-role.kubernetes.io/etcd": "true"}},
        "spec": {"podCIDR": "10.42.0.0/24"},
        "status": {
            "conditions": [
                {"type": "MemoryPressure", "status": "False", "reason": "KubeletHasSufficientMemory"},
                {"type": "Ready", "status": ready, "reason": reason, "message": message,
                 "lastHeartbeatTime": t, "lastTransitionTime": t}
            ],
            "nodeInfo": {"bootID": boot, "kubeletVersion": "v1.32.5+k3s1", "osImage": "Ubuntu 24.04.2 LTS"}
        }
    })
}

/// Not registered for `n` polls, then NotReady once, then Ready with `boot`.
pub fn ready_after(name: &str, n: u32, boot: &str) -> Script {
    let (name, boot) = (name.to_string(), boot.to_string());
    let since = now();
    Box::new(move |poll| {
        if poll < n {
            None
        } else if poll == n {
            Some(node(
                &name,
                "False",
                "KubeletNotReady",
                "container runtime network not ready",
                &boot,
                since,
            ))
        } else {
            Some(node(
                &name,
                "True",
                "KubeletReady",
                "kubelet is posting ready status",
                &boot,
                now(),
            ))
        }
    })
}

/// Ready with `boot` since now.
pub fn ready(name: &str, boot: &str) -> Script {
    let (name, boot) = (name.to_string(), boot.to_string());
    let since = now();
    Box::new(move |_| {
        Some(node(
            &name,
            "True",
            "KubeletReady",
            "kubelet is posting ready status",
            &boot,
            since,
        ))
    })
}

pub fn never_registers() -> Script {
    Box::new(|_| None)
}

pub fn stuck_not_ready(name: &str, reason: &str, message: &str) -> Script {
    let (name, reason, message) = (name.to_string(), reason.to_string(), message.to_string());
    let since = now();
    Box::new(move |_| Some(node(&name, "False", &reason, &message, "boot-new", since)))
}

/// Ready, but with `boot` and Ready since long before any flash.
pub fn stale(name: &str, boot: &str) -> Script {
    let (name, boot) = (name.to_string(), boot.to_string());
    Box::new(move |_| {
        Some(node(
            &name,
            "True",
            "KubeletReady",
            "kubelet is posting ready status",
            &boot,
            1_700_000_000,
        ))
    })
}

fn client_cn(conn: &rustls::ServerConnection) -> Option<(String, Option<String>)> {
    let cert = conn.peer_certificates()?.first()?.clone();
    let (_, x) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let cn = x
        .subject()
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    let o = x
        .subject()
        .iter_organization()
        .next()
        .and_then(|o| o.as_str().ok())
        .map(str::to_string);
    Some((cn, o))
}

fn status(code: u16, reason: &str, message: &str) -> (u16, String) {
    (
        code,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message,
               "reason": reason, "code": code})
        .to_string(),
    )
}

fn advance(state: &Mutex<State>, name: &str) -> Option<Value> {
    let mut st = state.lock().unwrap();
    let n = *st.polls.get(name).unwrap_or(&0);
    st.polls.insert(name.to_string(), n + 1);
    st.scripts.get(name).and_then(|s| s(n))
}

fn serve(
    tcp: TcpStream,
    config: Arc<rustls::ServerConfig>,
    state: &Arc<Mutex<State>>,
) -> std::io::Result<()> {
    let conn = rustls::ServerConnection::new(config).map_err(std::io::Error::other)?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    loop {
        let mut reader = BufReader::new(&mut tls);
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h)? == 0 || h == "\r\n" {
                break;
            }
        }
        drop(reader);
        let mut parts = line.split_whitespace();
        let (method, target) = (
            parts.next().unwrap_or("").to_string(),
            parts.next().unwrap_or("").to_string(),
        );
        let who = client_cn(&tls.conn);
        let (path, query) = target.split_once('?').unwrap_or((&target, ""));
        let (reject, not_ready, no_rbac) = {
            let mut st = state.lock().unwrap();
            st.requests.push(format!(
                "{} {method} {target}",
                who.as_ref().map(|w| w.0.as_str()).unwrap_or("-")
            ));
            (st.reject_clients, st.not_ready, st.no_rbac)
        };
        let masters = who.as_ref().and_then(|w| w.1.as_deref()) == Some("system:masters");
        let reader_user =
            !no_rbac && who.as_ref().map(|w| w.0.as_str()) == Some("imgbuild:node-reader");
        let (code, body) = if reject || who.is_none() && path.starts_with("/api") {
            status(401, "Unauthorized", "Unauthorized")
        } else if path == "/ping" {
            (200, "pong".into())
        } else if path == "/readyz" {
            if not_ready {
                (
                    500,
                    "[+]ping ok\n[-]etcd failed: reason withheld\nreadyz check failed".into(),
                )
            } else {
                (200, "ok".into())
            }
        } else if path == "/version" {
            (
                200,
                json!({"major": "1", "minor": "32", "gitVersion": "v1.32.5+k3s1"}).to_string(),
            )
        } else if !(masters || reader_user) || !path.starts_with("/api/v1/nodes") || method != "GET"
        {
            let user = who.map(|w| w.0).unwrap_or_default();
            status(
                403,
                "Forbidden",
                &format!("User \"{user}\" cannot {method} {path}"),
            )
        } else if let Some(name) = path.strip_prefix("/api/v1/nodes/") {
            match advance(state, name) {
                Some(n) => (200, n.to_string()),
                None => status(404, "NotFound", &format!("nodes \"{name}\" not found")),
            }
        } else if query.contains("watch=true") {
            let secs: u64 = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("timeoutSeconds="))
                .and_then(|v| v.parse().ok())
                .unwrap_or(5);
            watch(&mut tls, state, Duration::from_secs(secs))?;
            continue;
        } else {
            (200, json!({"kind": "NodeList", "items": []}).to_string())
        };
        let reason = match code {
            200 => "OK",
            401 => "Unauthorized",
            403 => "Forbidden",
            404 => "Not Found",
            _ => "Internal Server Error",
        };
        let head = format!(
            "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        tls.write_all(head.as_bytes())?;
        tls.write_all(body.as_bytes())?;
        tls.flush()?;
    }
}

/// A chunked watch stream: every 50 ms each scripted node is polled and sent
/// when it changed, until the watch's time is up.
fn watch(
    tls: &mut rustls::StreamOwned<rustls::ServerConnection, TcpStream>,
    state: &Mutex<State>,
    limit: Duration,
) -> std::io::Result<()> {
    tls.write_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
    )?;
    tls.flush()?;
    let start = Instant::now();
    let mut sent: BTreeMap<String, String> = BTreeMap::new();
    while start.elapsed() < limit {
        let names: Vec<String> = state.lock().unwrap().scripts.keys().cloned().collect();
        for name in names {
            let Some(obj) = advance(state, &name) else {
                continue;
            };
            let text = obj.to_string();
            if sent.get(&name) == Some(&text) {
                continue;
            }
            let kind = if sent.contains_key(&name) {
                "MODIFIED"
            } else {
                "ADDED"
            };
            let line = format!("{}\n", json!({"type": kind, "object": obj}));
            write!(tls, "{:x}\r\n{line}\r\n", line.len())?;
            tls.flush()?;
            sent.insert(name, text);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    tls.write_all(b"0\r\n\r\n")?;
    tls.flush()
}
