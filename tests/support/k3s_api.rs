//! A fake k3s API server on loopback for the tests: HTTPS with a serving
//! certificate signed by the cluster's server CA from a secrets directory (or
//! by another CA, to be refused), client certificates checked against the
//! cluster's client CA, RBAC as the baked manifest grants it (the node reader
//! may only get, list and watch nodes; system:masters may do anything).
//!
//! Nodes come from two places: per-node scripts that say what
//! `GET /api/v1/nodes/NAME` and the watch show at each poll, and a stateful
//! store (`cluster::Cluster`: Nodes, Pods, PodDisruptionBudgets, k3s's etcd
//! member controller, evictions, and what booting a flashed image does,
//! decided from the image itself by `image::read`). A script wins over the
//! store for its node; PATCHes of a scripted node are kept and applied, in
//! order, over what its script shows. Hostile modes (huge bodies, huge watch lines, a watch
//! that never ends) test the client's caps and timeouts.
#![allow(dead_code)]

#[path = "k3s_api/cluster.rs"]
pub mod cluster;
#[path = "k3s_api/image.rs"]
pub mod image;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

pub use cluster::{Outcome, Pdb};

/// The stateful fake under the name the re-flash tests use.
pub type FakeCluster = FakeApi;

type Tls = rustls::StreamOwned<rustls::ServerConnection, TcpStream>;

/// What a node looks like at poll N (`None`: no such Node).
pub type Script = Box<dyn Fn(u32) -> Option<Value> + Send>;

#[derive(Default)]
pub struct State {
    pub scripts: BTreeMap<String, Script>,
    /// Polls (GETs and watch ticks) per node so far.
    pub polls: BTreeMap<String, u32>,
    /// PATCHes of scripted nodes (body, strategic), in order.
    pub script_patches: BTreeMap<String, Vec<(Value, bool)>>,
    /// `CN METHOD PATH` of every request that reached HTTP (a PATCH or POST
    /// followed by its body), and `- FLASH NODE` when `on_flash` saw the
    /// BMC finish flashing NODE: one timeline.
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
    /// The stateful store (nodes without a script live here).
    pub cluster: cluster::Cluster,
    /// `GET /api/v1/nodes/NAME` answers a valid Node padded to this many
    /// bytes, chunked (false) or with its Content-Length (true).
    pub huge_node: Option<(usize, bool)>,
    /// The watch sends one event line of this many bytes first.
    pub huge_watch_line: Option<usize>,
    /// The node list holds one item of this many bytes.
    pub huge_list_item: Option<usize>,
    /// The watch ignores its timeoutSeconds: it trickles a newline every
    /// 500 ms for a minute, or until the client goes.
    pub stall_watch: bool,
    held: Vec<TcpStream>,
    /// The FakeApi was dropped: helper threads stop.
    stopped: bool,
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

    /// Works on the store (settled first).
    pub fn with<T>(&self, f: impl FnOnce(&mut cluster::Cluster) -> T) -> T {
        let mut st = self.state.lock().unwrap();
        st.cluster.settle();
        f(&mut st.cluster)
    }

    /// A Ready server (etcd member, voter) in the store.
    pub fn add_server(&self, name: &str) {
        self.with(|c| c.add_node(name, true));
    }

    /// A Ready agent in the store.
    pub fn add_agent(&self, name: &str) {
        self.with(|c| c.add_node(name, false));
    }

    pub fn add_pod(&self, pod: Value) {
        let key = (
            pod["metadata"]["namespace"].as_str().unwrap().to_string(),
            pod["metadata"]["name"].as_str().unwrap().to_string(),
        );
        self.with(|c| c.pods.insert(key, pod));
    }

    /// A PodDisruptionBudget over the pods labelled `app=<app>` in `ns` that
    /// refuses `refusals` evictions (`u32::MAX`: all) before it allows one.
    pub fn add_pdb(&self, ns: &str, name: &str, app: &str, refusals: u32) {
        self.with(|c| {
            c.pdbs.push(Pdb {
                namespace: ns.into(),
                name: name.into(),
                selector: [("app".to_string(), app.to_string())].into(),
                refusals,
                desired_healthy: 2,
                current_healthy: 2,
            })
        });
    }

    /// A stored Node as the API would show it now.
    pub fn node_obj(&self, name: &str) -> Option<Value> {
        self.with(|c| c.nodes.get(name).cloned())
    }

    /// The fake BMC (or a test) has put `image` on `node`: the node goes down
    /// and boots it as k3s would (see `cluster::Outcome`). Returns what it
    /// would do if it booted now.
    pub fn flashed(&self, node: &str, image: &Path) -> Outcome {
        let facts = image::read(image);
        self.with(|c| c.flash(node, facts))
    }

    /// Calls `flashed` for every (node, image) that `poll` reports new, every
    /// 50 ms while the fake lives: hook the fake BMC's finished flashes here.
    pub fn on_flash(&self, mut poll: impl FnMut() -> Vec<(String, PathBuf)> + Send + 'static) {
        let state = Arc::downgrade(&self.state);
        std::thread::spawn(move || {
            let mut seen = 0;
            while let Some(st) = state.upgrade() {
                if st.lock().unwrap().stopped {
                    return;
                }
                let all = poll();
                for (node, image) in all.iter().skip(seen) {
                    let facts = image::read(image);
                    let mut st = st.lock().unwrap();
                    st.requests.push(format!("- FLASH {node}"));
                    st.cluster.flash(node, facts);
                }
                seen = seen.max(all.len());
                drop(st);
                std::thread::sleep(Duration::from_millis(50));
            }
        });
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        if let Ok(mut st) = self.state.lock() {
            st.stopped = true;
        }
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

/// The same script for an agent: without the role labels k3s gives
/// servers (`node-role.kubernetes.io/control-plane`, `.../etcd`).
pub fn agent(script: Script) -> Script {
    Box::new(move |poll| {
        let mut n = script(poll)?;
        if let Some(l) = n["metadata"]["labels"].as_object_mut() {
            l.remove("node-role.kubernetes.io/control-plane");
            l.remove("node-role.kubernetes.io/etcd");
        }
        Some(n)
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
        cluster::status(code, reason, message, None).to_string(),
    )
}

fn advance(state: &Mutex<State>, name: &str) -> Option<Value> {
    let mut st = state.lock().unwrap();
    let n = *st.polls.get(name).unwrap_or(&0);
    st.polls.insert(name.to_string(), n + 1);
    scripted(&st, name, n)
}

/// What `name`'s script shows at poll `n`, with the PATCHes sent so far.
fn scripted(st: &State, name: &str, n: u32) -> Option<Value> {
    let mut node = st.scripts.get(name).and_then(|s| s(n))?;
    for (patch, strategic) in st.script_patches.get(name).into_iter().flatten() {
        if *strategic {
            cluster::strategic_patch(&mut node, patch);
        } else {
            cluster::merge_patch(&mut node, patch);
        }
    }
    Some(node)
}

/// One parsed request.
struct Request {
    method: String,
    path: String,
    /// Percent-decoded `key=value` pairs.
    query: BTreeMap<String, String>,
    content_type: String,
    body: Vec<u8>,
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let hex = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex),
            b.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(h), Some(l)) => {
                out.push(h << 4 | l);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads one request (line, headers, a Content-Length body); `None` at EOF.
fn read_request(tls: &mut Tls) -> std::io::Result<Option<(Request, String)>> {
    let mut reader = BufReader::new(tls);
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let (mut length, mut content_type) = (0usize, String::new());
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h == "\r\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            match k.trim().to_ascii_lowercase().as_str() {
                "content-length" => length = v.trim().parse().unwrap_or(0),
                "content-type" => content_type = v.trim().to_string(),
                _ => {}
            }
        }
    }
    let mut body = vec![0u8; length.min(1 << 20)];
    reader.read_exact(&mut body)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("").to_string();
    let (path, q) = target.split_once('?').unwrap_or((&target, ""));
    let query = q
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect();
    let req = Request {
        method,
        path: path.to_string(),
        query,
        content_type,
        body,
    };
    Ok(Some((req, target)))
}

fn reason_phrase(code: u16) -> &'static str {
    match code {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        415 => "Unsupported Media Type",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        _ => "Internal Server Error",
    }
}

fn respond(tls: &mut Tls, code: u16, body: &str) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {code} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        reason_phrase(code),
        body.len()
    );
    tls.write_all(head.as_bytes())?;
    tls.write_all(body.as_bytes())?;
    tls.flush()
}

fn chunk(tls: &mut Tls, data: &[u8]) -> std::io::Result<()> {
    write!(tls, "{:x}\r\n", data.len())?;
    tls.write_all(data)?;
    tls.write_all(b"\r\n")
}

/// A Node whose annotation pads it to `size` bytes, written in pieces (never
/// held whole), chunked or with a Content-Length.
fn huge_node(tls: &mut Tls, name: &str, size: usize, declared: bool) -> std::io::Result<()> {
    let pre = format!(
        "{{\"kind\":\"Node\",\"metadata\":{{\"name\":\"{name}\",\"annotations\":{{\"pad\":\""
    );
    let post = "\"}},\"status\":{\"conditions\":[{\"type\":\"Ready\",\"status\":\"True\"}]}}";
    let pad = size.saturating_sub(pre.len() + post.len());
    let block = vec![b'x'; 64 << 10];
    let head = if declared {
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {size}\r\n\r\n"
        )
    } else {
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            .into()
    };
    tls.write_all(head.as_bytes())?;
    let send = |tls: &mut Tls, d: &[u8]| {
        if declared {
            tls.write_all(d)
        } else {
            chunk(tls, d)
        }
    };
    send(tls, pre.as_bytes())?;
    let mut left = pad;
    while left > 0 {
        let n = left.min(block.len());
        send(tls, &block[..n])?;
        left -= n;
    }
    send(tls, post.as_bytes())?;
    if !declared {
        tls.write_all(b"0\r\n\r\n")?;
    }
    tls.flush()
}

/// Stored Nodes plus scripted ones (scripts win), settled first.
fn all_nodes(state: &Mutex<State>) -> Vec<Value> {
    let (scripted, stored): (Vec<String>, BTreeMap<String, Value>) = {
        let mut st = state.lock().unwrap();
        st.cluster.settle();
        (
            st.scripts.keys().cloned().collect(),
            st.cluster.nodes.clone(),
        )
    };
    let mut out: Vec<Value> = stored
        .into_iter()
        .filter(|(n, _)| !scripted.contains(n))
        .map(|(_, v)| v)
        .collect();
    out.extend(scripted.iter().filter_map(|n| advance(state, n)));
    out
}

fn list_body(state: &Mutex<State>, items: Vec<Value>) -> String {
    let rv = state.lock().unwrap().cluster.rv.to_string();
    json!({"kind": "List", "apiVersion": "v1", "metadata": {"resourceVersion": rv}, "items": items})
        .to_string()
}

/// The API's answer to a request that needs no streaming.
fn route(state: &Mutex<State>, req: &Request, masters: bool) -> (u16, String) {
    let (m, path) = (req.method.as_str(), req.path.as_str());
    if let Some(name) = path.strip_prefix("/api/v1/nodes/") {
        if m == "GET" {
            let scripted = state.lock().unwrap().scripts.contains_key(name);
            let node = if scripted {
                advance(state, name)
            } else {
                let mut st = state.lock().unwrap();
                st.cluster.settle();
                st.cluster.nodes.get(name).cloned()
            };
            return match node {
                Some(n) => (200, n.to_string()),
                None => status(404, "NotFound", &format!("nodes \"{name}\" not found")),
            };
        }
        if m != "PATCH" {
            return status(
                405,
                "MethodNotAllowed",
                &format!("{m} is not supported on nodes"),
            );
        }
        let strategic = match req.content_type.as_str() {
            "application/merge-patch+json" => false,
            "application/strategic-merge-patch+json" => true,
            other => {
                return status(
                    415,
                    "UnsupportedMediaType",
                    &format!(
                        "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json (got {other:?})"
                    ),
                );
            }
        };
        let Ok(patch) = serde_json::from_slice::<Value>(&req.body) else {
            return status(400, "BadRequest", "the patch is not JSON");
        };
        let mut st = state.lock().unwrap();
        if st.scripts.contains_key(name) {
            let n = *st.polls.get(name).unwrap_or(&0);
            if scripted(&st, name, n).is_none() {
                return status(404, "NotFound", &format!("nodes \"{name}\" not found"));
            }
            st.script_patches
                .entry(name.to_string())
                .or_default()
                .push((patch, strategic));
            return (200, scripted(&st, name, n).unwrap().to_string());
        }
        st.cluster.settle();
        return match st.cluster.patch_node(name, &patch, strategic) {
            Some(n) => (200, n.to_string()),
            None => status(404, "NotFound", &format!("nodes \"{name}\" not found")),
        };
    }
    if path == "/api/v1/nodes" && m == "GET" {
        let huge = state.lock().unwrap().huge_list_item;
        if let Some(size) = huge {
            let pad = "x".repeat(size);
            let item = json!({"metadata": {"name": "big", "annotations": {"pad": pad}}});
            return (200, list_body(state, vec![item]));
        }
        return (200, list_body(state, all_nodes(state)));
    }
    if !masters {
        unreachable!("RBAC is checked before routing");
    }
    if path == "/api/v1/pods" && m == "GET" {
        let on = req
            .query
            .get("fieldSelector")
            .and_then(|f| f.strip_prefix("spec.nodeName="))
            .map(str::to_string);
        let items: Vec<Value> = {
            let mut st = state.lock().unwrap();
            st.cluster.settle();
            st.cluster
                .pods
                .values()
                .filter(|p| on.as_deref().is_none_or(|n| p["spec"]["nodeName"] == n))
                .cloned()
                .collect()
        };
        return (200, list_body(state, items));
    }
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    if let ["api", "v1", "namespaces", ns, "pods", name, ref rest @ ..] = parts[..] {
        let mut st = state.lock().unwrap();
        st.cluster.settle();
        return match (m, rest) {
            ("GET", []) => match st.cluster.pods.get(&(ns.to_string(), name.to_string())) {
                Some(p) => (200, p.to_string()),
                None => status(404, "NotFound", &format!("pods \"{name}\" not found")),
            },
            ("POST", ["eviction"]) => {
                let ev: Value = serde_json::from_slice(&req.body).unwrap_or_default();
                if ev["kind"] != "Eviction" || ev["apiVersion"] != "policy/v1" {
                    return status(400, "BadRequest", "not a policy/v1 Eviction object");
                }
                if ev["metadata"]["name"] != name {
                    return status(
                        400,
                        "BadRequest",
                        "name in URL does not match name in Eviction object",
                    );
                }
                let (code, body) = st.cluster.evict(ns, name);
                (code, body.to_string())
            }
            _ => status(405, "MethodNotAllowed", &format!("{m} {path}")),
        };
    }
    status(
        404,
        "NotFound",
        "the server could not find the requested resource",
    )
}

fn serve(
    tcp: TcpStream,
    config: Arc<rustls::ServerConfig>,
    state: &Arc<Mutex<State>>,
) -> std::io::Result<()> {
    let conn = rustls::ServerConnection::new(config).map_err(std::io::Error::other)?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    while let Some((req, target)) = read_request(&mut tls)? {
        let who = client_cn(&tls.conn);
        let (reject, not_ready, no_rbac, version) = {
            let mut st = state.lock().unwrap();
            let body = if req.body.is_empty() {
                String::new()
            } else {
                format!(" {}", String::from_utf8_lossy(&req.body))
            };
            st.requests.push(format!(
                "{} {} {target}{body}",
                who.as_ref().map(|w| w.0.as_str()).unwrap_or("-"),
                req.method
            ));
            (
                st.reject_clients,
                st.not_ready,
                st.no_rbac,
                st.cluster.version.clone(),
            )
        };
        let path = req.path.as_str();
        let huge = state.lock().unwrap().huge_node;
        let masters = who.as_ref().and_then(|w| w.1.as_deref()) == Some("system:masters");
        let reader_user =
            !no_rbac && who.as_ref().map(|w| w.0.as_str()) == Some("imgbuild:node-reader");
        // The baked ClusterRole: get, list and watch on nodes, nothing else.
        let reader_may = reader_user
            && req.method == "GET"
            && (path == "/api/v1/nodes" || path.starts_with("/api/v1/nodes/"));
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
            let minor = version.split('.').nth(1).unwrap_or("32").to_string();
            (
                200,
                json!({"major": "1", "minor": minor, "gitVersion": version}).to_string(),
            )
        } else if !(masters || reader_may) {
            let user = who.map(|w| w.0).unwrap_or_default();
            status(
                403,
                "Forbidden",
                &format!("User \"{user}\" cannot {} {path}", req.method),
            )
        } else if path == "/api/v1/nodes" && req.query.get("watch").is_some_and(|w| w == "true") {
            let secs: u64 = req
                .query
                .get("timeoutSeconds")
                .and_then(|v| v.parse().ok())
                .unwrap_or(5);
            let only = req
                .query
                .get("fieldSelector")
                .and_then(|f| f.strip_prefix("metadata.name="))
                .map(str::to_string);
            watch(&mut tls, state, Duration::from_secs(secs), only.as_deref())?;
            continue;
        } else if let (Some(name), Some((size, declared))) =
            (path.strip_prefix("/api/v1/nodes/"), huge)
        {
            huge_node(&mut tls, name, size, declared)?;
            continue;
        } else {
            route(state, &req, masters)
        };
        respond(&mut tls, code, &body)?;
    }
    Ok(())
}

/// A chunked watch stream: every 50 ms each node (scripted nodes are polled)
/// is sent when it changed, and a stored node that went is sent DELETED,
/// until the watch's time is up.
fn watch(
    tls: &mut Tls,
    state: &Mutex<State>,
    limit: Duration,
    only: Option<&str>,
) -> std::io::Result<()> {
    tls.write_all(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
    )?;
    tls.flush()?;
    let (huge, stall) = {
        let st = state.lock().unwrap();
        (st.huge_watch_line, st.stall_watch)
    };
    if let Some(size) = huge {
        let obj = json!({"metadata": {"name": "big", "annotations": {"pad": "x".repeat(size)}}});
        chunk(
            tls,
            format!("{}\n", json!({"type": "ADDED", "object": obj})).as_bytes(),
        )?;
        tls.flush()?;
    }
    if stall {
        // Past its own timeout, a byte now and then: never the end.
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(500));
            chunk(tls, b"\n")?;
            tls.flush()?;
        }
        return Ok(());
    }
    let start = Instant::now();
    let mut sent: BTreeMap<String, (String, Value)> = BTreeMap::new();
    while start.elapsed() < limit {
        let now: BTreeMap<String, Value> = all_nodes(state)
            .into_iter()
            .filter_map(|n| Some((n["metadata"]["name"].as_str()?.to_string(), n)))
            .filter(|(n, _)| only.is_none_or(|o| o == n))
            .collect();
        for (name, obj) in &now {
            let text = obj.to_string();
            if sent.get(name).is_some_and(|(t, _)| *t == text) {
                continue;
            }
            let kind = if sent.contains_key(name) {
                "MODIFIED"
            } else {
                "ADDED"
            };
            chunk(
                tls,
                format!("{}\n", json!({"type": kind, "object": obj})).as_bytes(),
            )?;
            tls.flush()?;
            sent.insert(name.clone(), (text, obj.clone()));
        }
        let gone: Vec<String> = sent
            .keys()
            .filter(|n| !now.contains_key(*n))
            .cloned()
            .collect();
        let stored: Vec<String> = state
            .lock()
            .unwrap()
            .cluster
            .nodes
            .keys()
            .cloned()
            .collect();
        for name in gone {
            // A scripted node that shows None is "not registered yet", not deleted.
            let (_, obj) = sent.remove(&name).unwrap();
            if !stored.contains(&name) && !state.lock().unwrap().scripts.contains_key(&name) {
                chunk(
                    tls,
                    format!("{}\n", json!({"type": "DELETED", "object": obj})).as_bytes(),
                )?;
                tls.flush()?;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    tls.write_all(b"0\r\n\r\n")?;
    tls.flush()
}
