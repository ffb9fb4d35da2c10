//! A fake OCI registry on 127.0.0.1 that follows the distribution spec's
//! pull side: `GET /v2/<name>/manifests/<digest>` and `/blobs/<digest>`
//! answer 401 with a `WWW-Authenticate: Bearer realm=...,service=...,scope=...`
//! challenge until the request carries the token that `GET /token` hands
//! out (anonymously, or for `private/` repositories only with Basic
//! credentials); unknown paths are 404. Images are built here from real
//! gzip'd tar layers, with an index for arm64 and amd64.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

pub const USER: &str = "robot";
pub const PASSWORD: &str = "s3cret-registry-password";

#[derive(Default)]
struct State {
    /// path -> (content type, body)
    content: BTreeMap<String, (String, Vec<u8>)>,
    log: Vec<String>,
    /// path -> (status, how many more requests get it) for authorised requests.
    faults: BTreeMap<String, (u16, u32)>,
    /// Token realm announced in challenges instead of this registry's own.
    realm: Option<String>,
}

pub struct Registry {
    pub port: u16,
    state: Arc<Mutex<State>>,
}

pub fn sha(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

fn basic_ok(header: Option<&str>) -> bool {
    use base64::Engine;
    let want = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
    header == Some(format!("Basic {want}").as_str())
}

impl Registry {
    pub fn start() -> Registry {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State::default()));
        let s = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                let s = s.clone();
                std::thread::spawn(move || {
                    let _ = serve(conn, port, &s);
                });
            }
        });
        Registry { port, state }
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn put(&self, path: &str, content_type: &str, body: Vec<u8>) {
        self.state
            .lock()
            .unwrap()
            .content
            .insert(path.to_string(), (content_type.to_string(), body));
    }

    /// Answers the next `times` authorised requests for `path` with `status`.
    /// Announces `realm` as the token endpoint (e.g. a plain-http one elsewhere).
    pub fn set_realm(&self, realm: &str) {
        self.state.lock().unwrap().realm = Some(realm.to_string());
    }

    pub fn fail(&self, path: &str, status: u16, times: u32) {
        self.state
            .lock()
            .unwrap()
            .faults
            .insert(path.to_string(), (status, times));
    }

    /// Request lines served so far (`GET /v2/...`), token requests included.
    pub fn log(&self) -> Vec<String> {
        self.state.lock().unwrap().log.clone()
    }

    /// Builds and serves a two-architecture image in `repo`; returns the
    /// index digest and per-architecture (manifest digest, layer bytes).
    /// With `corrupt_arm64_layer`, the arm64 layer is served with one byte
    /// changed (its digest stays the one the manifest names).
    pub fn serve_image(&self, repo: &str, corrupt_arm64_layer: bool) -> ServedImage {
        let mut entries = Vec::new();
        let mut per_arch = BTreeMap::new();
        for arch in ["arm64", "amd64"] {
            let layer = layer_tgz(&format!("{repo} {arch}"));
            let layer_digest = sha(&layer);
            let config = serde_json::to_vec(&serde_json::json!({
                "architecture": arch,
                "os": "linux",
                "config": {"Cmd": ["/bin/true"]},
                "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{}", sha(&gunzip(&layer)))]}
            }))
            .unwrap();
            let manifest = serde_json::to_vec(&serde_json::json!({
                "schemaVersion": 2,
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                           "digest": format!("sha256:{}", sha(&config)), "size": config.len()},
                "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                            "digest": format!("sha256:{layer_digest}"), "size": layer.len()}]
            }))
            .unwrap();
            let md = sha(&manifest);
            let mut served_layer = layer.clone();
            if corrupt_arm64_layer && arch == "arm64" {
                let last = served_layer.len() - 1;
                served_layer[last] ^= 0xff;
            }
            self.put(
                &format!("/v2/{repo}/blobs/sha256:{layer_digest}"),
                "application/octet-stream",
                served_layer,
            );
            self.put(
                &format!("/v2/{repo}/blobs/sha256:{}", sha(&config)),
                "application/octet-stream",
                config,
            );
            self.put(
                &format!("/v2/{repo}/manifests/sha256:{md}"),
                "application/vnd.oci.image.manifest.v1+json",
                manifest.clone(),
            );
            entries.push(serde_json::json!({
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": format!("sha256:{md}"),
                "size": manifest.len(),
                "platform": {"os": "linux", "architecture": arch}
            }));
            per_arch.insert(arch.to_string(), (md, layer_digest));
        }
        let index = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": entries
        }))
        .unwrap();
        let index_digest = sha(&index);
        self.put(
            &format!("/v2/{repo}/manifests/sha256:{index_digest}"),
            "application/vnd.oci.image.index.v1+json",
            index,
        );
        ServedImage {
            reference: format!("{}/{repo}:1.0@sha256:{index_digest}", self.host()),
            index_digest,
            per_arch,
        }
    }
}

pub struct ServedImage {
    /// `127.0.0.1:PORT/<repo>:1.0@sha256:<index digest>`
    pub reference: String,
    pub index_digest: String,
    /// arch -> (manifest digest, layer digest)
    pub per_arch: BTreeMap<String, (String, String)>,
}

/// A gzip'd tar layer holding `/etc/imgbuild-arch` with the arch's name.
fn layer_tgz(arch: &str) -> Vec<u8> {
    use flate2::{Compression, write::GzEncoder};
    let body = arch.as_bytes();
    let mut tar = Vec::new();
    let mut h = [0u8; 512];
    let name = b"etc/imgbuild-arch";
    h[..name.len()].copy_from_slice(name);
    h[100..107].copy_from_slice(b"0000644");
    h[108..115].copy_from_slice(b"0000000");
    h[116..123].copy_from_slice(b"0000000");
    h[124..135].copy_from_slice(format!("{:011o}", body.len()).as_bytes());
    h[136..147].copy_from_slice(b"00000000000");
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    tar.extend_from_slice(&h);
    tar.extend_from_slice(body);
    tar.resize(tar.len() + (512 - body.len() % 512) % 512, 0);
    tar.extend_from_slice(&[0u8; 1024]);
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    gz.write_all(&tar).unwrap();
    gz.finish().unwrap()
}

fn gunzip(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(b)
        .read_to_end(&mut out)
        .unwrap();
    out
}

fn respond(c: &mut TcpStream, status: &str, headers: &[(&str, String)], body: &[u8]) {
    let mut head = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let _ = c.write_all(head.as_bytes());
    let _ = c.write_all(body);
}

fn serve(mut c: TcpStream, port: u16, state: &Mutex<State>) -> std::io::Result<()> {
    let mut r = BufReader::new(c.try_clone()?);
    let mut line = String::new();
    r.read_line(&mut line)?;
    let mut auth = None;
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':')
            && k.eq_ignore_ascii_case("authorization")
        {
            auth = Some(v.trim().to_string());
        }
    }
    let target = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    state.lock().unwrap().log.push(format!("GET {target}"));
    if let Some(q) = target.strip_prefix("/token?") {
        let scope = q
            .split('&')
            .find_map(|kv| kv.strip_prefix("scope="))
            .unwrap_or("")
            .replace("%3A", ":")
            .replace("%2F", "/");
        let repo = scope
            .strip_prefix("repository:")
            .and_then(|s| s.strip_suffix(":pull"))
            .unwrap_or("");
        if repo.starts_with("private/") && !basic_ok(auth.as_deref()) {
            respond(
                &mut c,
                "401 Unauthorized",
                &[],
                b"{\"errors\":[{\"code\":\"UNAUTHORIZED\"}]}",
            );
            return Ok(());
        }
        let body =
            serde_json::to_vec(&serde_json::json!({"token": format!("tok-{repo}")})).unwrap();
        respond(
            &mut c,
            "200 OK",
            &[("Content-Type", "application/json".into())],
            &body,
        );
        return Ok(());
    }
    let Some(rest) = target.strip_prefix("/v2/") else {
        respond(&mut c, "404 Not Found", &[], b"");
        return Ok(());
    };
    let repo = rest
        .rsplit_once("/manifests/")
        .or_else(|| rest.rsplit_once("/blobs/"))
        .map(|(r, _)| r)
        .unwrap_or("");
    if auth.as_deref() != Some(format!("Bearer tok-{repo}").as_str()) {
        let realm = state
            .lock()
            .unwrap()
            .realm
            .clone()
            .unwrap_or_else(|| format!("http://127.0.0.1:{port}/token"));
        let challenge = format!(
            "Bearer realm=\"{realm}\",service=\"fake-registry\",scope=\"repository:{repo}:pull\""
        );
        respond(
            &mut c,
            "401 Unauthorized",
            &[("WWW-Authenticate", challenge)],
            b"{\"errors\":[{\"code\":\"UNAUTHORIZED\"}]}",
        );
        return Ok(());
    }
    let fault = {
        let mut st = state.lock().unwrap();
        match st.faults.get_mut(&target) {
            Some((status, n)) if *n > 0 => {
                *n -= 1;
                Some(*status)
            }
            _ => None,
        }
    };
    if let Some(status) = fault {
        respond(
            &mut c,
            &format!("{status} Injected"),
            &[],
            b"{\"errors\":[{\"code\":\"INJECTED\"}]}",
        );
        return Ok(());
    }
    let found = state.lock().unwrap().content.get(&target).cloned();
    match found {
        Some((ct, body)) => respond(&mut c, "200 OK", &[("Content-Type", ct)], &body),
        None => respond(
            &mut c,
            "404 Not Found",
            &[],
            b"{\"errors\":[{\"code\":\"MANIFEST_UNKNOWN\"}]}",
        ),
    }
    Ok(())
}
