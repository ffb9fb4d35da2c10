//! Talking to the running cluster: the admin kubeconfig minted offline, the
//! baked RBAC manifest, `wait` and `status` against a fake k3s API over TLS
//! (serving certificate from the baked server CA), and `deploy --wait`
//! against the fake BMC and the fake API together. Oracles: openssl,
//! kubectl, kubernetes-validate, a YAML parser.

mod support {
    pub mod bmc;
    pub mod harness;
    pub mod k3s_api;
}

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use support::bmc::FakeBmc;
use support::harness::*;
use support::k3s_api::{self as api, FakeApi, Signer};

/// A workspace: a copy of the profiles (BMC at `bmc` when given) and a
/// secrets directory holding the cluster's CA set.
struct Ws {
    dir: tempfile::TempDir,
}

impl Ws {
    fn new(bmc: Option<&str>) -> Ws {
        let dir = scratch();
        sh(&format!(
            "cp -r {} {}",
            q(&repo().join("profiles")),
            q(dir.path())
        ));
        if let Some(host) = bmc {
            let p = dir.path().join("profiles/cluster.yaml");
            let t = std::fs::read_to_string(&p)
                .unwrap()
                .replace("bmc: turingpi.home.arpa", &format!("bmc: {host}"));
            std::fs::write(&p, t).unwrap();
        }
        let ws = Ws { dir };
        // The cluster's secrets (CA set included), as a first build makes them.
        let out = ws.run(&["secrets", "--generate"]);
        assert!(out.status.success(), "{}", text(&out));
        ws
    }
    fn path(&self) -> &Path {
        self.dir.path()
    }
    fn secrets(&self) -> PathBuf {
        self.path().join("secrets")
    }
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = command();
        c.args(args)
            .args(["--profiles", self.path().join("profiles").to_str().unwrap()])
            .args([
                "--manifests",
                repo().join("firmware-manifests").to_str().unwrap(),
            ])
            .args(["--overlays", repo().join("overlays").to_str().unwrap()])
            .current_dir(self.path())
            .env("IMGBUILD_SECRETS", self.secrets())
            .env("HOME", self.path().join("home"))
            .env_remove("CI")
            .env_remove("SOURCE_DATE_EPOCH")
            .env_remove("KUBECONFIG")
            .stdin(std::process::Stdio::null());
        c
    }
    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }
    fn api(&self) -> FakeApi {
        FakeApi::start(Signer::Cluster(&self.secrets()), &self.secrets())
    }
    /// Writes the deploy state file.
    fn state(&self, v: serde_json::Value) {
        std::fs::create_dir_all(self.path().join("dist")).unwrap();
        std::fs::write(self.path().join("dist/.deploy-state.json"), v.to_string()).unwrap();
    }
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn b64(s: &str) -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

/// Cert and key out of a kubeconfig's (only) user, written beside it.
fn extract(cfg: &serde_yaml_ng::Value, dir: &Path) -> (PathBuf, PathBuf) {
    let user = &cfg["users"][0]["user"];
    let (c, k) = (dir.join("client.crt"), dir.join("client.key"));
    std::fs::write(&c, b64(user["client-certificate-data"].as_str().unwrap())).unwrap();
    std::fs::write(&k, b64(user["client-key-data"].as_str().unwrap())).unwrap();
    (c, k)
}

#[test]
fn kubeconfig_is_minted_offline_from_the_client_ca() {
    // No CA yet: refused, nothing minted.
    let empty = scratch();
    let out = command()
        .args([
            "kubeconfig",
            "--profiles",
            repo().join("profiles").to_str().unwrap(),
        ])
        .env("IMGBUILD_SECRETS", empty.path().join("s"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("no cluster CA yet"), "{}", text(&out));

    let ws = Ws::new(None);
    let out = ws.run(&["kubeconfig"]);
    assert!(out.status.success(), "{}", text(&out));
    let path = PathBuf::from(stdout(&out).trim());
    assert_eq!(stdout(&out).lines().count(), 1, "prints only the path");
    assert_eq!(path, ws.secrets().join("kubeconfig/homelab.yaml"));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let cfg: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(cfg["apiVersion"].as_str(), Some("v1"));
    assert_eq!(cfg["kind"].as_str(), Some("Config"));
    assert_eq!(cfg["current-context"].as_str(), Some("homelab"));
    assert_eq!(cfg["contexts"][0]["name"].as_str(), Some("homelab"));
    assert_eq!(
        cfg["contexts"][0]["context"]["cluster"].as_str(),
        Some("homelab")
    );
    let user = cfg["contexts"][0]["context"]["user"].as_str().unwrap();
    assert_eq!(cfg["users"][0]["name"].as_str(), Some(user));
    assert_eq!(
        cfg["clusters"][0]["cluster"]["server"].as_str(),
        Some("https://192.168.1.101:6443")
    );
    let ca = b64(cfg["clusters"][0]["cluster"]["certificate-authority-data"]
        .as_str()
        .unwrap());
    assert_eq!(
        ca,
        std::fs::read(ws.secrets().join("cluster/tls/server-ca.crt")).unwrap()
    );
    let (crt, key) = extract(&cfg, ws.path());
    let tls = ws.secrets().join("cluster/tls");
    // openssl is the oracle: chain, subject, purpose, validity, key pair.
    let v = sh(&format!(
        "openssl verify -purpose sslclient -CAfile {} {}",
        q(&tls.join("client-ca.crt")),
        q(&crt)
    ));
    assert!(stdout(&v).contains(": OK"), "{}", text(&v));
    let (rc, _) = sh_status(&format!(
        "openssl verify -CAfile {} {}",
        q(&tls.join("server-ca.crt")),
        q(&crt)
    ));
    assert_ne!(
        rc, 0,
        "the client certificate verified against the server CA"
    );
    let subj = stdout(&sh(&format!(
        "openssl x509 -in {} -noout -subject -nameopt RFC2253",
        q(&crt)
    )));
    assert_eq!(subj.trim(), "subject=O=system:masters,CN=imgbuild-admin");
    // Seven days by default: not expiring within 6d23h, expiring within 7d1h.
    sh(&format!(
        "openssl x509 -in {} -noout -checkend 601200",
        q(&crt)
    ));
    let (rc, _) = sh_status(&format!(
        "openssl x509 -in {} -noout -checkend 608400",
        q(&crt)
    ));
    assert_eq!(rc, 1, "valid for longer than 7 days");
    let a = stdout(&sh(&format!("openssl x509 -in {} -noout -pubkey", q(&crt))));
    let b = stdout(&sh(&format!("openssl pkey -in {} -pubout", q(&key))));
    assert_eq!(a, b, "the key does not belong to the certificate");
    let key_text = std::fs::read_to_string(&key).unwrap();
    assert!(
        !text(&out).contains(key_text.lines().nth(1).unwrap()),
        "the key was printed"
    );

    // kubectl reads it (the Debian package kubernetes-client in CI).
    if sh_status("command -v kubectl").0 == 0 {
        let v = sh(&format!(
            "KUBECONFIG={} kubectl config view --minify --raw -o jsonpath='{{.contexts[0].name}} {{.clusters[0].cluster.server}} {{.users[0].user.client-certificate-data}}'",
            q(&path)
        ));
        let got = stdout(&v);
        let mut parts = got.split_whitespace();
        assert_eq!(parts.next(), Some("homelab"));
        assert_eq!(parts.next(), Some("https://192.168.1.101:6443"));
        assert_eq!(
            b64(parts.next().unwrap()),
            std::fs::read(&crt).unwrap(),
            "kubectl sees another certificate"
        );
    } else {
        eprintln!(
            "kubectl not installed (Debian package kubernetes-client): kubectl config view skipped"
        );
    }

    // Run again: the still-valid file is reused, not re-minted (and --json says so).
    let before = std::fs::read(&path).unwrap();
    let out = ws.run(&["kubeconfig", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v,
        serde_json::json!({"path": path.display().to_string(), "minted": false, "previous_context": null})
    );
    assert_eq!(
        std::fs::read(&path).unwrap(),
        before,
        "re-minted a valid kubeconfig"
    );
    // Asking for longer than half of what is left mints a new one.
    let out = ws.run(&["kubeconfig", "--validity", "30d", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["minted"], true, "{v:#}");
    assert_eq!(v["path"], path.display().to_string());
    assert_ne!(std::fs::read(&path).unwrap(), before);

    // -o FILE: refused over an existing file unless --force; --validity honoured.
    let file = ws.path().join("admin.yaml");
    std::fs::write(&file, "keep me").unwrap();
    let out = ws.run(&["kubeconfig", "-o", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("--force"), "{}", text(&out));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
    let out = ws.run(&[
        "kubeconfig",
        "-o",
        file.to_str().unwrap(),
        "--force",
        "--validity",
        "1h",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let cfg: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let (crt, _) = extract(&cfg, ws.path());
    sh(&format!(
        "openssl x509 -in {} -noout -checkend 3000",
        q(&crt)
    ));
    let (rc, _) = sh_status(&format!(
        "openssl x509 -in {} -noout -checkend 3700",
        q(&crt)
    ));
    assert_eq!(rc, 1, "--validity 1h not honoured");

    // Bad validities.
    let out = ws.run(&["kubeconfig", "--validity", "7x"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).contains("not a duration like"), "{}", text(&out));
    let out = ws.run(&["kubeconfig", "-o", "x.yaml", "--validity", "4000d"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("would outlast the cluster's client CA"),
        "{}",
        text(&out)
    );
    assert!(!ws.path().join("x.yaml").exists());
}

#[test]
fn merge_keeps_the_other_contexts() {
    let ws = Ws::new(None);
    let kube = ws.path().join("home/.kube");
    std::fs::create_dir_all(&kube).unwrap();
    std::fs::write(
        kube.join("config"),
        "apiVersion: v1\nkind: Config\nclusters:\n- name: work\n  cluster: {server: 'https://work:6443'}\n\
         users:\n- name: me\n  user: {token: abc}\ncontexts:\n- name: work\n  context: {cluster: work, user: me}\n\
         current-context: work\n",
    )
    .unwrap();
    // The first merge says which context was current; the second, none (it was ours).
    let out = ws.run(&["kubeconfig", "--merge", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v,
        serde_json::json!({
            "path": kube.join("config").display().to_string(),
            "minted": true,
            "previous_context": "work",
        })
    );
    let out = ws.run(&["kubeconfig", "--merge"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(PathBuf::from(stdout(&out).trim()), kube.join("config"));
    let cfg: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(kube.join("config")).unwrap()).unwrap();
    let names = |k: &str| -> Vec<String> {
        cfg[k]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|v| v["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        names("contexts"),
        ["work", "homelab"],
        "merged twice must not duplicate"
    );
    assert_eq!(names("clusters"), ["work", "homelab"]);
    assert_eq!(names("users"), ["me", "imgbuild-admin@homelab"]);
    assert_eq!(cfg["users"][0]["user"]["token"].as_str(), Some("abc"));
    assert_eq!(cfg["current-context"].as_str(), Some("homelab"));
    if sh_status("command -v kubectl").0 == 0 {
        let v = sh(&format!(
            "KUBECONFIG={} kubectl config get-contexts -o name",
            q(&kube.join("config"))
        ));
        assert_eq!(
            stdout(&v).split_whitespace().collect::<Vec<_>>(),
            ["homelab", "work"]
        );
    }
    // A file that is not a kubeconfig is not overwritten.
    std::fs::write(kube.join("config"), "- just\n- a list\n").unwrap();
    let out = ws.run(&["kubeconfig", "--merge"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("not a kubeconfig"), "{}", text(&out));
}

/// A file of `node`'s rendered image as `render --contents` prints it: a
/// header line per file (`<target> <path> <mode> <uid>:<gid> <size> bytes
/// from <overlay>`), then the contents.
fn rendered(ws: &Ws, node: &str, path: &str) -> Option<String> {
    let out = ws.run(&["render", node, "--contents"]);
    assert!(out.status.success(), "{}", text(&out));
    let o = stdout(&out);
    let header = |l: &str| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.len() >= 7
            && f[1].starts_with('/')
            && f[3].contains(':')
            && f[5] == "bytes"
            && f[6] == "from"
    };
    let mut lines = o.lines();
    lines.find(|l| header(l) && l.split_whitespace().nth(1) == Some(path))?;
    let body: Vec<&str> = lines.take_while(|l| !header(l)).collect();
    Some(body.join("\n"))
}

/// The cluster-init server's RBAC manifest, rendered.
fn rbac_manifest(ws: &Ws, node: &str) -> Option<String> {
    rendered(
        ws,
        node,
        "/var/lib/rancher/k3s/server/manifests/imgbuild-node-reader.yaml",
    )
}

#[test]
fn the_baked_rbac_lets_the_reader_only_read_nodes_and_validates() {
    let ws = Ws::new(None);
    let manifest =
        rbac_manifest(&ws, "node01").expect("no RBAC manifest on the cluster-init server");
    assert!(
        rbac_manifest(&ws, "node02").is_none(),
        "an agent got the RBAC manifest"
    );
    let docs: Vec<serde_yaml_ng::Value> = serde_yaml_ng::Deserializer::from_str(&manifest)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect();
    assert_eq!(docs.len(), 2);
    assert_eq!(docs[0]["kind"].as_str(), Some("ClusterRole"));
    let rules = docs[0]["rules"].as_sequence().unwrap();
    assert_eq!(rules.len(), 1);
    let strs = |v: &serde_yaml_ng::Value| -> Vec<String> {
        v.as_sequence()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(strs(&rules[0]["apiGroups"]), [""]);
    assert_eq!(strs(&rules[0]["resources"]), ["nodes"]);
    assert_eq!(strs(&rules[0]["verbs"]), ["get", "list", "watch"]);
    assert_eq!(docs[1]["kind"].as_str(), Some("ClusterRoleBinding"));
    assert_eq!(docs[1]["roleRef"]["name"], docs[0]["metadata"]["name"]);
    let subjects = docs[1]["subjects"].as_sequence().unwrap();
    assert_eq!(subjects.len(), 1);
    assert_eq!(subjects[0]["kind"].as_str(), Some("User"));
    assert_eq!(subjects[0]["name"].as_str(), Some("imgbuild:node-reader"));

    // kubernetes-validate against the bundled schemas of the cluster's
    // Kubernetes minor (k3s v1.32.5+k3s1), strict: unknown fields fail.
    let tool = PathBuf::from(python().trim_matches('\''))
        .parent()
        .unwrap()
        .join("kubernetes-validate");
    let scratch = scratch();
    let file = scratch.path().join("rbac.yaml");
    std::fs::write(&file, &manifest).unwrap();
    let out = sh(&format!("{} --strict -k 1.32.0 {}", q(&tool), q(&file)));
    for kind in ["clusterrole", "clusterrolebinding"] {
        assert!(
            text(&out).contains(&format!(
                "passed for resource {kind}/imgbuild:node-reader against version 1.32"
            )),
            "{}",
            text(&out)
        );
    }
    // The oracle can fail: a misspelt field is refused.
    std::fs::write(&file, manifest.replace("verbs:", "verb:")).unwrap();
    let (rc, o) = sh_status(&format!("{} --strict -k 1.32.0 {}", q(&tool), q(&file)));
    assert_ne!(rc, 0, "kubernetes-validate accepted a broken manifest: {o}");
}

fn wait(ws: &Ws, fake: &FakeApi, args: &[&str]) -> (Output, Duration) {
    let mut a = vec!["wait", "--server", fake.url().leak(), "--interval", "200ms"];
    a.extend_from_slice(args);
    let t = Instant::now();
    let out = ws.run(&a);
    (out, t.elapsed())
}

#[test]
fn wait_follows_each_node_until_ready() {
    let ws = Ws::new(None);
    let fake = ws.api();
    fake.script("node02", api::ready_after("node02", 3, "b2"));
    fake.script("node03", api::ready_after("node03", 0, "b3"));
    let (out, _) = wait(&ws, &fake, &["node02", "node03", "--timeout", "30s"]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(stdout(&out).contains("2 of 2 nodes Ready"), "{t}");
    // A line per node as it progresses.
    let lines: Vec<&str> = t.lines().filter(|l| l.contains("node02:")).collect();
    let pos = |needle: &str| {
        lines
            .iter()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with {needle:?} in {lines:#?}"))
    };
    assert!(
        pos("API reachable, node not registered yet")
            < pos("registered, Ready=False (KubeletNotReady")
    );
    assert!(pos("KubeletNotReady") < pos("Ready (v1.32.5+k3s1"));
    assert!(
        t.contains("API https://127.0.0.1:") && t.contains("reachable and ready"),
        "{t}"
    );
    // Only the node reader was used, and only to read nodes; the watch too.
    let reqs = fake.requests();
    assert!(
        reqs.iter()
            .all(|r| r.starts_with("imgbuild:node-reader GET ")),
        "{reqs:#?}"
    );
    assert!(
        reqs.iter().any(|r| r.contains("/api/v1/nodes/node02")),
        "{reqs:#?}"
    );
    assert!(
        reqs.iter().any(|r| r.contains("/api/v1/nodes?watch=true")),
        "{reqs:#?}"
    );

    // In CI (no terminal) the same lines appear.
    let fake = ws.api();
    fake.script("node02", api::ready_after("node02", 1, "b2"));
    let out = ws
        .cmd(&[
            "wait",
            "node02",
            "--server",
            &fake.url(),
            "--interval",
            "200ms",
            "--timeout",
            "30s",
        ])
        .env("CI", "true")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("node02: Ready (v1.32.5+k3s1, no flash recorded)"),
        "{}",
        text(&out)
    );
}

#[test]
fn on_timeout_each_node_gets_a_diagnosis() {
    let ws = Ws::new(None);
    let fake = ws.api();
    fake.script("node01", api::ready_after("node01", 0, "b1"));
    fake.script("node02", api::never_registers());
    fake.script(
        "node03",
        api::stuck_not_ready(
            "node03",
            "KubeletNotReady",
            "container runtime network not ready: cni plugin not initialized",
        ),
    );
    // node04 was flashed a minute ago, but its Node still has the boot ID from before.
    fake.script("node04", api::stale("node04", "boot-old"));
    ws.state(serde_json::json!({
        "node04": {"sha256": "ab".repeat(32), "flashed_at": api::now() - 60, "before": {"boot_id": "boot-old"}}
    }));
    let (out, took) = wait(
        &ws,
        &fake,
        &["node01", "node02", "node03", "node04", "--timeout", "3s"],
    );
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(took < Duration::from_secs(8), "took {took:?}");
    let o = stdout(&out);
    assert!(o.contains("1 of 4 nodes Ready"), "{t}");
    let line = |node: &str| -> String {
        o.lines()
            .find(|l| l.starts_with(node))
            .unwrap_or_else(|| panic!("no {node} line: {o}"))
            .to_string()
    };
    assert!(line("node01").contains("Ready (v1.32.5+k3s1"), "{o}");
    assert!(
        line("node02").contains("never registered: the API has no node named node02"),
        "{o}"
    );
    assert!(
        line("node03").contains("registered but not Ready")
            && line("node03").contains(
                "KubeletNotReady: container runtime network not ready: cni plugin not initialized"
            ),
        "{o}"
    );
    assert!(
        line("node04").contains("not back since the flash")
            && line("node04").contains("bootID boot-old unchanged"),
        "{o}"
    );
    // What to try: the serial console through the BMC and ssh with the pinned host key.
    assert!(
        o.contains("microcom -s 115200 /dev/ttyS1")
            && o.contains("tpi --host turingpi.home.arpa uart --node 2 get"),
        "{o}"
    );
    assert!(
        o.contains("UserKnownHostsFile=<(imgbuild secrets --known-hosts) admin@192.168.1.102"),
        "{o}"
    );
    assert!(o.contains("journalctl -b -u k3s-agent"), "{o}");
    assert!(t.contains("error: 1 of 4 nodes Ready after 3s"), "{t}");

    // The same as JSON.
    let fake = ws.api();
    fake.script("node02", api::never_registers());
    let (out, _) = wait(&ws, &fake, &["node02", "--timeout", "1s", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["ready"], 0);
    assert_eq!(j["nodes"][0]["state"], "not_registered");
    assert!(j["nodes"][0]["next"].as_array().unwrap().len() >= 2, "{j}");
}

#[test]
fn a_server_certificate_from_another_ca_is_refused_before_any_request() {
    let ws = Ws::new(None);
    let fake = FakeApi::start(Signer::Other, &ws.secrets());
    fake.script("node02", api::ready_after("node02", 0, "b2"));
    let (out, _) = wait(&ws, &fake, &["node02", "--timeout", "2s"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.contains("certificate mismatch") && t.contains("not signed by the cluster's server CA"),
        "{t}"
    );
    assert!(t.contains("was not created from the CA in"), "{t}");
    assert!(
        fake.state.lock().unwrap().connections > 0,
        "never connected"
    );
    assert!(
        fake.requests().is_empty(),
        "sent requests to an unverified server: {:?}",
        fake.requests()
    );
    let out = ws.run(&["status", "--server", &fake.url(), "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        j["health"]
            .as_str()
            .unwrap()
            .starts_with("certificate mismatch"),
        "{j}"
    );
    assert!(fake.requests().is_empty());
}

#[test]
fn a_rejected_client_certificate_and_missing_rbac_are_diagnosed() {
    let ws = Ws::new(None);
    let fake = ws.api();
    fake.state.lock().unwrap().reject_clients = true;
    let (out, _) = wait(&ws, &fake, &["node02", "--timeout", "1s"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.contains("certificate mismatch") && t.contains("client-ca.crt"),
        "{t}"
    );

    let fake = ws.api();
    fake.state.lock().unwrap().no_rbac = true;
    fake.script("node02", api::ready_after("node02", 0, "b2"));
    let (out, _) = wait(&ws, &fake, &["node02", "--timeout", "1s"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.contains("refused to show nodes to imgbuild:node-reader")
            && t.contains("imgbuild-node-reader.yaml"),
        "{t}"
    );
}

#[test]
fn an_api_that_hangs_or_is_down_times_out() {
    let ws = Ws::new(None);
    let fake = ws.api();
    fake.state.lock().unwrap().hang = true;
    let (out, took) = wait(&ws, &fake, &["node02", "--timeout", "2s"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    println!("wait --timeout 2s against a hanging API took {took:?}");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert!(
        t.contains("API unreachable") && t.contains("no answer within"),
        "{t}"
    );
    assert!(t.contains("the API is served by node01"), "{t}");
    // Nothing listens at all.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("https://127.0.0.1:{}", closed.local_addr().unwrap().port());
    drop(closed);
    let out = ws.run(&["wait", "node02", "--server", &url, "--timeout", "1s"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("API unreachable") && text(&out).contains("no answer ("),
        "{}",
        text(&out)
    );
    // status still prints the table with the API down.
    let t0 = Instant::now();
    let out = ws.run(&["status", "--server", &fake.url(), "--timeout", "1s"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        t0.elapsed() < Duration::from_secs(6),
        "status took {:?}",
        t0.elapsed()
    );
    let o = stdout(&out);
    assert!(o.contains("unreachable") && o.contains("node04"), "{o}");
}

#[test]
fn wait_honours_its_timeout_while_a_watch_is_held_open() {
    let ws = Ws::new(None);
    let fake = ws.api();
    fake.script(
        "node02",
        api::stuck_not_ready("node02", "KubeletNotReady", "PLEG is not healthy"),
    );
    // The watch outlives its timeoutSeconds, trickling newlines.
    fake.state.lock().unwrap().stall_watch = true;
    let t = Instant::now();
    let out = ws.run(&[
        "wait",
        "node02",
        "--server",
        &fake.url(),
        "--timeout",
        "3s",
        "--interval",
        "10s",
    ]);
    let took = t.elapsed();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    println!("wait --timeout 3s with a watch held open took {took:?}");
    assert!(took < Duration::from_millis(4500), "took {took:?}");
}

#[test]
fn an_oversized_node_is_refused_with_its_cap_named() {
    let ws = Ws::new(None);
    let fake = ws.api();
    // A valid, Ready Node of 16 MiB, sent chunked.
    fake.state.lock().unwrap().huge_node = Some((16 << 20, false));
    let (out, _) = wait(&ws, &fake, &["node02", "--timeout", "2s"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.contains("is larger than 4 MiB, the most imgbuild reads of it"),
        "{t}"
    );
}

/// The instance ID a build of `node` would give now (from its rendered meta-data).
fn current_instance_id(ws: &Ws, node: &str) -> String {
    let meta = rendered(ws, node, "/meta-data").expect("no meta-data");
    meta.lines()
        .find_map(|l| l.strip_prefix("instance-id:"))
        .unwrap()
        .trim()
        .trim_matches('"')
        .to_string()
}

#[test]
fn status_shows_every_node_and_the_api() {
    let ws = Ws::new(None);
    let fake = ws.api();
    fake.script("node01", api::ready("node01", "b1"));
    fake.script(
        "node02",
        api::stuck_not_ready("node02", "KubeletNotReady", "PLEG is not healthy"),
    );
    let iid = current_instance_id(&ws, "node01");
    ws.state(serde_json::json!({
        "node01": {"sha256": "ab".repeat(32), "flashed_at": 1_714_003_200u64, "instance_id": iid},
        "node02": {"sha256": "cd".repeat(32), "flashed_at": 1_714_003_200u64, "instance_id": "an-older-build"},
    }));
    let out = ws.run(&["status", "--server", &fake.url(), "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["health"], "ready");
    assert_eq!(j["api_version"], "v1.32.5+k3s1");
    let row = |n: &str| {
        j["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["node"] == n)
            .unwrap()
            .clone()
    };
    assert_eq!(j["nodes"].as_array().unwrap().len(), 6);
    let n1 = row("node01");
    assert_eq!(
        (n1["registered"].clone(), n1["ready"].clone()),
        (true.into(), "True".into())
    );
    assert_eq!(n1["version"], "v1.32.5+k3s1");
    assert_eq!(n1["roles"], serde_json::json!(["control-plane", "etcd"]));
    assert_eq!(n1["slot"], "tp1/1");
    assert_eq!(n1["stale"], false);
    let n2 = row("node02");
    assert_eq!(n2["ready"], "False");
    assert_eq!(n2["stale"], true);
    let n3 = row("node03");
    assert_eq!(n3["registered"], false);
    assert_eq!(n3["flashed_sha256"], serde_json::Value::Null);
    assert_eq!(row("ws03")["slot"], serde_json::Value::Null);
    // The table.
    fake.state.lock().unwrap().not_ready = true;
    let out = ws.run(&["status", "--server", &fake.url()]);
    let o = stdout(&out);
    assert!(o.contains("not ready: etcd failed"), "{o}");
    let l1 = o.lines().find(|l| l.starts_with("node01")).unwrap();
    assert!(
        l1.contains("abababababab") && l1.contains("same") && l1.contains("control-plane,etcd"),
        "{o}"
    );
    assert!(
        o.lines()
            .find(|l| l.starts_with("node02"))
            .unwrap()
            .contains("stale"),
        "{o}"
    );
}

/// Stand-in images for the Turing Pi nodes in `dir/dist`, distinct per node.
fn images(dir: &Path, tag: u8) {
    let dist = dir.join("dist");
    std::fs::create_dir_all(&dist).unwrap();
    for (i, name) in [
        "node01.cm4.img",
        "node02.rk1.img",
        "node03.rk1.img",
        "node04.rk1.img",
    ]
    .iter()
    .enumerate()
    {
        let mut body = vec![0u8; 1 << 20];
        body[..64].copy_from_slice(&[i as u8 + tag; 64]);
        std::fs::write(dist.join(name), body).unwrap();
    }
}

/// A node that is Ready with `old` until its slot has been flashed, then
/// registers again after a boot: NotReady for one poll, Ready with a new boot ID.
fn comes_back(bmc: &FakeBmc, name: &str, slot: u8, old: &str, new: &str) -> api::Script {
    let st = bmc.state.clone();
    let (name, old, new) = (name.to_string(), old.to_string(), new.to_string());
    let seen = std::sync::Mutex::new(None::<u32>);
    Box::new(move |poll| {
        let flashed = st.lock().unwrap().flashed.contains(&slot);
        if !flashed {
            return Some(api::node(
                &name,
                "True",
                "KubeletReady",
                "",
                &old,
                1_700_000_000,
            ));
        }
        let first = *seen.lock().unwrap().get_or_insert(poll);
        if poll == first {
            Some(api::node(
                &name,
                "False",
                "KubeletNotReady",
                "PLEG is not healthy",
                &new,
                api::now(),
            ))
        } else {
            Some(api::node(
                &name,
                "True",
                "KubeletReady",
                "",
                &new,
                api::now(),
            ))
        }
    })
}

#[test]
fn deploy_wait_flashes_then_waits_for_every_node() {
    let bmc = FakeBmc::start("turing");
    let ws = Ws::new(Some(&bmc.host()));
    let fake = ws.api();
    // As the profiles say: node01 the only server, node02-04 agents.
    for (i, n) in ["node01", "node02", "node03", "node04"].iter().enumerate() {
        let script = comes_back(&bmc, n, i as u8 + 1, "boot-old", &format!("boot-new-{n}"));
        fake.script(n, if i == 0 { script } else { api::agent(script) });
    }
    images(ws.path(), 1);
    let deploy = |extra: &[&str]| {
        let url = fake.url();
        let mut a = vec![
            "deploy",
            "--yes",
            "--wait",
            "--server",
            &url,
            "--interval",
            "200ms",
        ];
        a.extend_from_slice(extra);
        ws.cmd(&a)
            .env("IMGBUILD_BMC_PASSWORD", "turing")
            .output()
            .unwrap()
    };
    // The cluster runs: re-flashing its only server would empty its
    // datastore, so nothing is flashed without --reset-cluster.
    let out = deploy(&["--timeout", "30s"]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.contains("refusing to flash node01: it is the cluster's only server")
            && t.contains("--reset-cluster")
            && t.contains("a `storage:` entry mounted at /var/lib/rancher"),
        "{t}"
    );
    assert!(bmc.state.lock().unwrap().flashed.is_empty());
    assert!(
        !fake.requests().iter().any(|r| r.contains(" PATCH ")),
        "{:#?}",
        fake.requests()
    );

    let out = deploy(&["--timeout", "30s", "--reset-cluster"]);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(stdout(&out).contains("4 of 4 nodes Ready"), "{t}");
    assert_eq!(bmc.state.lock().unwrap().flashed, [1, 2, 3, 4]);
    assert!(
        t.contains("node04: Ready (v1.32.5+k3s1, booted after the flash)"),
        "{t}"
    );
    // The boot IDs from before the flash were recorded with each flash.
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(ws.path().join("dist/.deploy-state.json")).unwrap(),
    )
    .unwrap();
    for n in ["node01", "node02", "node03", "node04"] {
        assert_eq!(state[n]["before"]["boot_id"], "boot-old", "{state}");
        assert!(state[n]["flashed_at"].as_u64().unwrap() > 1_700_000_000);
    }
    // Each node was cordoned before its flash and uncordoned once back.
    let reqs = fake.requests();
    for n in ["node01", "node02", "node03", "node04"] {
        let patches: Vec<&String> = reqs
            .iter()
            .filter(|r| r.contains(&format!(" PATCH /api/v1/nodes/{n} ")))
            .collect();
        assert_eq!(patches.len(), 2, "{reqs:#?}");
        assert!(
            patches[0].ends_with(r#"{"spec":{"unschedulable":true}}"#),
            "{reqs:#?}"
        );
        assert!(
            patches[1].ends_with(r#"{"spec":{"unschedulable":null}}"#),
            "{reqs:#?}"
        );
    }

    // node04 is re-flashed but never comes back: its old Node (the boot ID
    // from just before this flash) is not taken for the new one.
    std::fs::write(ws.path().join("dist/node04.rk1.img"), vec![9u8; 1 << 20]).unwrap();
    fake.script("node04", api::stale("node04", "boot-new-node04"));
    let out = deploy(&["--timeout", "2s", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let results: Vec<&str> = j["deploy"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["result"].as_str().unwrap())
        .collect();
    assert_eq!(results, ["skipped", "skipped", "skipped", "flashed"]);
    assert!(
        text(&out).contains("node04 is left cordoned"),
        "{}",
        text(&out)
    );
    assert_eq!(j["wait"]["ready"], 3);
    let n4 = &j["wait"]["nodes"][3];
    assert_eq!(n4["state"], "stale", "{j}");
    assert!(
        n4["problem"]
            .as_str()
            .unwrap()
            .contains("bootID boot-new-node04 unchanged"),
        "{j}"
    );
    let slots = bmc.state.lock().unwrap().slots_dir.clone();
    std::fs::remove_dir_all(slots).unwrap();
}
