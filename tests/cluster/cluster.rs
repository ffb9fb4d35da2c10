//! Cluster identity and k3s: the example cluster baked on fixtures, checked
//! with openssl, sha256sum, ext4-view and cloud-init; secrets kept, private
//! and never printed.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::support::http;
use crate::support::mirror::{K3S_VERSION, env};
use crate::support::project::{Project, base, board_of, repo_overrides};
use crate::support::{bytes::*, fixtures::*, harness::*};

/// Bakes `target` (verbose) from the fixture of its board; returns (image, stdout+stderr).
fn bake(p: &Project, target: &str, extra: &[&str]) -> (PathBuf, String) {
    let out = p.join(target);
    let r = p
        .imgbuild(["-v", "--base"])
        .arg(base(&board_of(&out)))
        .args(extra)
        .arg(&out)
        .ok();
    (out, r.text)
}

fn root_fs(layout: &Layout, image: &Path, index: u32, work: &Path) -> (ext4_view::Ext4, PathBuf) {
    let part = fsck_ext4(layout, image, index, work);
    (ext4_view::Ext4::load_from_path(&part).unwrap(), part)
}

fn mode(fs: &ext4_view::Ext4, path: &str) -> u32 {
    (fs.metadata(path).unwrap().mode() & 0o7777) as u32
}

fn yaml(fs: &ext4_view::Ext4, path: &str) -> serde_yaml_ng::Value {
    serde_yaml_ng::from_slice(&fs.read(path).unwrap()).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The k3s server/agent flags these configs may use (from the k3s CLI reference).
const K3S_KEYS: &[&str] = &[
    "server",
    "token-file",
    "agent-token-file",
    "cluster-init",
    "disable",
    "tls-san",
    "node-name",
    "node-ip",
    "node-label",
    "node-label+",
    "node-taint",
    "node-taint+",
    "flannel-iface",
    "kubelet-arg",
    "kubelet-arg+",
    "default-runtime",
    "write-kubeconfig-mode",
];

fn assert_known_keys(v: &serde_yaml_ng::Value, what: &str) {
    for k in v.as_mapping().unwrap().keys() {
        let k = k.as_str().unwrap();
        assert!(
            K3S_KEYS.contains(&k),
            "{what} uses {k}, which k3s does not document"
        );
    }
}

#[test]
fn the_example_cluster_bakes_into_nodes_that_join_securely() {
    let fx = fixtures();
    let e = env();
    let w = Project::example();
    let (server_img, _) = bake(&w, "node01.cm4.img", &[]);
    let (agent_img, _) = bake(&w, "node02.rk1.img", &[]);
    let (gpu_img, _) = bake(&w, "ws03.nuc.img", &[]);

    // --- the cluster-init server (CM4) ---
    let sw = w.path().join("server");
    std::fs::create_dir(&sw).unwrap();
    let (fs, server_part) = root_fs(&fx.cm4, &server_img, 2, &sw);
    let tls = "/var/lib/rancher/k3s/server/tls";
    let mut pems = BTreeMap::new();
    for name in [
        "server-ca",
        "client-ca",
        "request-header-ca",
        "etcd/peer-ca",
        "etcd/server-ca",
    ] {
        let crt = fs.read(format!("{tls}/{name}.crt").as_str()).unwrap();
        let key_path = format!("{tls}/{name}.key");
        assert_eq!(mode(&fs, &key_path), 0o600, "{key_path}");
        let f = sw.join(name.replace('/', "-"));
        std::fs::write(&f, &crt).unwrap();
        let (code, out) = sh_status(&format!("openssl verify -CAfile {f} {f}", f = q(&f)));
        assert_eq!(code, 0, "{name}: {out}");
        // The key belongs to the certificate.
        let kf = sw.join(format!("{}.key", name.replace('/', "-")));
        std::fs::write(&kf, fs.read(key_path.as_str()).unwrap()).unwrap();
        let a = sh(&format!("openssl x509 -in {} -noout -pubkey", q(&f))).stdout;
        let b = sh(&format!("openssl pkey -in {} -pubout", q(&kf))).stdout;
        assert_eq!(a, b, "{name}: key does not match the certificate");
        let text =
            String::from_utf8(sh(&format!("openssl x509 -in {} -noout -text", q(&f))).stdout)
                .unwrap();
        assert!(text.contains("CA:TRUE"), "{name} is not a CA");
        pems.insert(name, crt);
    }
    assert_eq!(mode(&fs, &format!("{tls}/service.key")), 0o600);
    let server_ca = sw.join("server-ca");
    let hash = sha256sum(&server_ca);
    let cfg = yaml(&fs, "/etc/rancher/k3s/config.yaml");
    assert_eq!(mode(&fs, "/etc/rancher/k3s/config.yaml"), 0o600);
    assert_known_keys(&cfg, "server config.yaml");
    assert_eq!(cfg["cluster-init"].as_bool(), Some(true));
    // The tokens are in 0600 files of their own, so config.yaml holds no secret.
    assert_eq!(cfg["token-file"].as_str(), Some("/etc/rancher/k3s/token"));
    assert_eq!(
        cfg["agent-token-file"].as_str(),
        Some("/etc/rancher/k3s/agent-token")
    );
    let read_token = |path: &str| {
        assert_eq!(mode(&fs, path), 0o600, "{path}");
        String::from_utf8(fs.read(path).unwrap()).unwrap()
    };
    let token = read_token("/etc/rancher/k3s/token");
    assert!(
        token.starts_with(&format!("K10{hash}::server:")) && !token.contains('\n'),
        "the token does not pin server-ca.crt: {token:?}"
    );
    let agent_token = read_token("/etc/rancher/k3s/agent-token");
    assert!(
        agent_token.starts_with(&format!("K10{hash}::node:")) && !agent_token.contains('\n'),
        "{agent_token:?}"
    );
    let agent_token = agent_token.as_str();
    let sans: Vec<&str> = cfg["tls-san"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        sans.contains(&"192.168.1.101") && sans.contains(&"node01"),
        "{sans:?}"
    );
    assert_eq!(cfg["disable"][0].as_str(), Some("traefik"));
    assert_eq!(
        cfg["node-taint"][0].as_str(),
        Some("node-role.kubernetes.io/control-plane:NoSchedule")
    );
    let node_cfg = yaml(&fs, "/etc/rancher/k3s/config.yaml.d/10-node.yaml");
    assert_known_keys(&node_cfg, "10-node.yaml");
    assert_eq!(node_cfg["node-name"].as_str(), Some("node01"));
    // Air-gapped k3s for arm64, with its unit enabled.
    assert_eq!(fs.read("/usr/local/bin/k3s").unwrap(), e.k3s_arm64);
    assert_eq!(mode(&fs, "/usr/local/bin/k3s"), 0o755);
    assert!(
        fs.exists("/var/lib/rancher/k3s/agent/images/k3s-airgap-images-arm64.tar.zst")
            .unwrap()
    );
    let unit = String::from_utf8(fs.read("/etc/systemd/system/k3s.service").unwrap()).unwrap();
    assert!(
        unit.contains("ExecStart=/usr/local/bin/k3s server") && unit.contains("Type=notify"),
        "{unit}"
    );
    assert_eq!(mode(&fs, "/etc/systemd/system/k3s.service.env"), 0o600);
    let link = fs
        .read_link("/etc/systemd/system/multi-user.target.wants/k3s.service")
        .unwrap();
    assert_eq!(
        AsRef::<[u8]>::as_ref(&link),
        b"/etc/systemd/system/k3s.service"
    );
    assert!(!fs.exists("/etc/systemd/system/k3s-agent.service").unwrap());
    let kubectl = fs.read_link("/usr/local/bin/kubectl").unwrap();
    assert_eq!(AsRef::<[u8]>::as_ref(&kubectl), b"k3s");
    // Stable identity.
    assert_eq!(mode(&fs, "/etc/rancher/node/password"), 0o600);
    assert_eq!(mode(&fs, "/etc/ssh/ssh_host_ed25519_key"), 0o600);
    assert_eq!(fs.read("/etc/machine-id").unwrap(), b"");
    let key = sw.join("hostkey");
    std::fs::write(&key, fs.read("/etc/ssh/ssh_host_ed25519_key").unwrap()).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let derived = String::from_utf8(sh(&format!("ssh-keygen -y -f {}", q(&key))).stdout).unwrap();
    let baked_pub =
        String::from_utf8(fs.read("/etc/ssh/ssh_host_ed25519_key.pub").unwrap()).unwrap();
    assert!(
        baked_pub.starts_with(derived.trim()),
        "public key does not match the private key"
    );
    // One comment, not `root@node01 root@node01`.
    assert_eq!(
        baked_pub.split_whitespace().collect::<Vec<_>>()[2..],
        ["root@node01"],
        "{baked_pub:?}"
    );
    // The stock image's host keys are gone (no two nodes share one); sshd's
    // own configuration stays.
    let mut ssh: Vec<String> = fs
        .read_dir("/etc/ssh")
        .unwrap()
        .map(|e| e.unwrap().file_name().as_str().unwrap().to_string())
        .filter(|n| n != "." && n != "..")
        .collect();
    ssh.sort();
    assert_eq!(
        ssh,
        [
            "ssh_host_ed25519_key",
            "ssh_host_ed25519_key.pub",
            "sshd_config"
        ]
    );
    // The clock never starts before the build (systemd honours this mtime).
    let stat = String::from_utf8(
        sh(&format!(
            "debugfs -R 'stat /usr/lib/clock-epoch' {} 2>/dev/null",
            q(&server_part)
        ))
        .stdout,
    )
    .unwrap();
    assert!(
        stat.contains(&format!("mtime: {:#x}", imgbuild::plan::DEFAULT_BUILD_TIME)),
        "{stat}"
    );
    // The CAs are valid from well before any build day, so a node that boots
    // with an old clock still accepts them.
    let start = String::from_utf8(
        sh(&format!(
            "openssl x509 -in {} -noout -startdate",
            q(&server_ca)
        ))
        .stdout,
    )
    .unwrap();
    assert_eq!(start.trim(), "notBefore=Jan  1 00:00:00 2020 GMT");
    // k3s starts after cloud-init set the hostname and after time sync.
    let unit = String::from_utf8(fs.read("/etc/systemd/system/k3s.service").unwrap()).unwrap();
    assert!(
        unit.lines().any(|l| l.starts_with("After=")
            && l.contains("cloud-init.service")
            && l.contains("time-sync.target")),
        "{unit}"
    );
    // The cluster has an NVIDIA node: the RuntimeClass and the device plugin
    // are auto-deployed from the cluster-init server, and validate.
    let nvidia = fs
        .read("/var/lib/rancher/k3s/server/manifests/imgbuild-nvidia.yaml")
        .unwrap();
    let tool = std::path::PathBuf::from(python().trim_matches('\''))
        .parent()
        .unwrap()
        .join("kubernetes-validate");
    let file = sw.join("nvidia.yaml");
    std::fs::write(&file, &nvidia).unwrap();
    let out = text(&sh(&format!(
        "{} --strict -k 1.32.0 {}",
        q(&tool),
        q(&file)
    )));
    for r in ["runtimeclass/nvidia", "daemonset/nvidia-device-plugin"] {
        assert!(out.contains(&format!("passed for resource {r}")), "{out}");
    }

    // --- an agent (RK1) ---
    let aw = w.path().join("agent");
    std::fs::create_dir(&aw).unwrap();
    let (fs, _) = root_fs(&fx.rk1, &agent_img, 2, &aw);
    let cfg = yaml(&fs, "/etc/rancher/k3s/config.yaml");
    assert_known_keys(&cfg, "agent config.yaml");
    assert_eq!(cfg["server"].as_str(), Some("https://192.168.1.101:6443"));
    assert_eq!(cfg["token-file"].as_str(), Some("/etc/rancher/k3s/token"));
    assert_eq!(
        fs.read("/etc/rancher/k3s/token").unwrap(),
        agent_token.as_bytes(),
        "the agent must use the agent token"
    );
    let node_cfg = yaml(&fs, "/etc/rancher/k3s/config.yaml.d/10-node.yaml");
    assert_eq!(node_cfg["node-label+"][0].as_str(), Some("node-type=rk1"));
    assert!(
        !fs.exists(tls).unwrap(),
        "CA material must stay on the cluster-init server"
    );
    assert!(fs.exists("/etc/systemd/system/k3s-agent.service").unwrap());
    assert!(!fs.exists("/etc/systemd/system/k3s.service").unwrap());

    // --- the NVIDIA workstation (NUC) ---
    let gw = w.path().join("gpu");
    std::fs::create_dir(&gw).unwrap();
    let (fs, _) = root_fs(&fx.nuc, &gpu_img, 1, &gw);
    assert_eq!(fs.read("/usr/local/bin/k3s").unwrap(), e.k3s_amd64);
    let nv = yaml(&fs, "/etc/rancher/k3s/config.yaml.d/20-nvidia.yaml");
    assert_known_keys(&nv, "20-nvidia.yaml");
    // Not the default runtime: containerd 2.0 refuses a default it has no
    // definition for, and the toolkit only arrives at first boot.
    assert!(nv.get("default-runtime").is_none(), "{nv:?}");
    assert_eq!(
        nv["node-label+"][0].as_str(),
        Some("nvidia.com/gpu.present=true")
    );
    let node_cfg = yaml(&fs, "/etc/rancher/k3s/config.yaml.d/10-node.yaml");
    assert_eq!(
        node_cfg["node-taint+"][0].as_str(),
        Some("workstation=true:NoSchedule")
    );
    let swap = yaml(
        &fs,
        "/var/lib/rancher/k3s/agent/etc/kubelet.conf.d/10-imgbuild-swap.conf",
    );
    assert_eq!(
        swap["memorySwap"]["swapBehavior"].as_str(),
        Some("LimitedSwap")
    );
    assert_eq!(swap["failSwapOn"].as_bool(), Some(false));
    let ud = fs.read("/var/lib/cloud/seed/nocloud/user-data").unwrap();
    cloud_init_schema(&ud, &gw);
    let ud: serde_yaml_ng::Value = serde_yaml_ng::from_slice(&ud).unwrap();
    assert!(ud["runcmd"].as_sequence().unwrap().len() >= 3);
    assert_eq!(ud["power_state"]["mode"].as_str(), Some("reboot"));
    assert_eq!(ud["ssh_deletekeys"].as_bool(), Some(false));
    // Private keys never go to the seed.
    assert!(
        !String::from_utf8_lossy(&fs.read("/var/lib/cloud/seed/nocloud/user-data").unwrap())
            .contains("PRIVATE KEY")
    );
}

fn file_hashes(dir: &Path) -> BTreeMap<String, (String, u32)> {
    let mut out = BTreeMap::new();
    let list = sh(&format!("cd {} && find . -type f | sort", q(dir))).stdout;
    for rel in String::from_utf8(list).unwrap().lines() {
        let p = dir.join(rel);
        let m = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        out.insert(
            rel.to_string(),
            (hash_range(&p, 0, std::fs::metadata(&p).unwrap().len()), m),
        );
    }
    out
}

#[test]
fn secrets_are_kept_private_reused_and_never_printed() {
    let fx = fixtures();
    let w = Project::example();
    // A secrets directory of its own: what exists does not depend on which
    // other tests ran first.
    let own = w.secrets();
    let sd = own.to_str().unwrap();
    let (_, log1) = bake(&w, "node01.cm4.img", &["--secrets", sd]);
    let before = file_hashes(&own);
    assert!(before.len() >= 13, "{before:?}");
    for (rel, (_, m)) in &before {
        assert_eq!(*m, 0o600, "{rel} is not 0600");
    }
    assert_eq!(
        std::fs::metadata(&own).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let (_, log2) = bake(&w, "node01.cm4.img", &["--format", "img", "--secrets", sd]);
    // Rebuilding the cluster-init server warns that, flashed by other means
    // onto a running cluster, it would start a new one.
    assert!(
        log2.contains("this image starts a new cluster") && log2.contains("imgbuild flash"),
        "{log2}"
    );
    let after = file_hashes(&own);
    for (rel, v) in &before {
        assert_eq!(after.get(rel), Some(v), "{rel} changed on a second build");
    }
    // Host key fingerprint: the baked key is the kept one.
    let hosts = w
        .imgbuild(["secrets", "--known-hosts", "--secrets", sd])
        .run()
        .text;
    let pubkey =
        std::fs::read_to_string(own.join("nodes/node01/ssh_host_ed25519_key.pub")).unwrap();
    let key_b64 = pubkey.split_whitespace().nth(1).unwrap();
    assert!(
        hosts.lines().any(
            |l| l.starts_with("node01,node01.home.arpa,192.168.1.101 ssh-ed25519 ")
                && l.contains(key_b64)
        ),
        "{hosts}"
    );

    // No secret value in any output of any command (except the explicit print).
    let secrets: Vec<String> = [
        "cluster/token",
        "cluster/agent-token",
        "nodes/node01/node-password",
    ]
    .iter()
    .map(|r| {
        std::fs::read_to_string(own.join(r))
            .unwrap()
            .trim()
            .to_string()
    })
    .chain(
        [
            "cluster/tls/server-ca.key",
            "cluster/tls/service.key",
            "nodes/node01/ssh_host_ed25519_key",
        ]
        .iter()
        .map(|r| {
            let pem = std::fs::read_to_string(own.join(r)).unwrap();
            pem.lines().nth(1).unwrap().to_string()
        }),
    )
    .collect();
    let mut outputs = vec![log1, log2];
    for args in [
        vec!["check", "--secrets", sd],
        vec!["render", "node01", "--secrets", sd],
        vec!["render", "node01", "--json", "--secrets", sd],
        vec!["secrets", "--secrets", sd],
        vec!["cache", "list"],
    ] {
        outputs.push(w.imgbuild(&args).ok().text);
    }
    let img = w.join("node01.cm4.img");
    for args in [
        vec!["inspect", img.to_str().unwrap()],
        vec!["inspect", "--json", img.to_str().unwrap()],
    ] {
        // A scan of a crashed command's output would prove nothing.
        let r = w.imgbuild(&args).ok();
        assert!(r.text.contains("node01"), "{args:?}: {}", r.text);
        outputs.push(r.text);
    }
    // Failures must not leak either: a bad base after secrets are loaded.
    let failed = w
        .imgbuild([
            "--secrets",
            sd,
            "--base",
            fx.rk1.path.to_str().unwrap(),
            "x/node01.cm4.img",
        ])
        .expect_exit(1);
    assert!(
        failed.text.contains("not a usable cm4 base image"),
        "{}",
        failed.text
    );
    outputs.push(failed.text);
    for s in &secrets {
        assert!(s.len() >= 16, "secret value too short to scan for: {s:?}");
    }
    for out in &outputs {
        for s in &secrets {
            assert!(
                !out.contains(s.as_str()),
                "a secret value appeared in output:\n{out}"
            );
        }
    }
    let inv = w.imgbuild(["secrets", "--secrets", sd]).ok().text;
    assert!(
        inv.contains("cluster/tls/server-ca.key") && inv.contains("never shown"),
        "{inv}"
    );
    // The token is printed only when asked for.
    let tok = w
        .imgbuild(["secrets", "--print-token", "server", "--secrets", sd])
        .ok()
        .stdout;
    assert!(
        tok.trim().starts_with("K10") && tok.contains(&secrets[0]),
        "{tok}"
    );
    // The agent token: the node form with the agent password, not the server's.
    let agent = w
        .imgbuild(["secrets", "--print-token", "agent", "--secrets", sd])
        .ok()
        .stdout;
    let ca_hash = tok.trim()[3..].split("::").next().unwrap().to_string();
    assert_eq!(
        agent.trim(),
        format!("K10{ca_hash}::node:{}", secrets[1]),
        "agent token"
    );
}

#[test]
fn a_readable_secrets_directory_is_refused() {
    let fx = fixtures();
    let w = Project::example();
    let dir = w.mkdir("open-secrets");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let r = w
        .imgbuild([
            "--secrets",
            dir.to_str().unwrap(),
            "--base",
            fx.rk1.path.to_str().unwrap(),
            "node02.rk1.img",
        ])
        .expect_exit(1);
    assert!(
        r.text.contains("readable by others (mode 0755)") && r.text.contains("chmod 700"),
        "{}",
        r.text
    );
    assert!(
        std::fs::read_dir(&dir).unwrap().next().is_none(),
        "wrote into a readable secrets directory"
    );
}

#[test]
fn a_k3s_mirror_with_a_wrong_digest_is_refused() {
    let fx = fixtures();
    let w = Project::example();
    let mirror = http::Server::start(http::Faults::default());
    let tag = K3S_VERSION.replace('+', "%2B");
    mirror.put(&format!("/{tag}/k3s-arm64"), b"tampered".to_vec());
    mirror.put(
        &format!("/{tag}/k3s-airgap-images-arm64.tar.zst"),
        b"x".to_vec(),
    );
    mirror.put(
        &format!("/{tag}/sha256sum-arm64.txt"),
        format!(
            "{}  k3s-arm64\n{}  k3s-airgap-images-arm64.tar.zst\n",
            "1".repeat(64),
            "2".repeat(64)
        )
        .into_bytes(),
    );
    let t = w
        .imgbuild(["--base", fx.rk1.path.to_str().unwrap(), "--retries", "1"])
        .arg(w.join("node02.rk1.img"))
        .env(
            "IMGBUILD_K3S_MIRROR",
            format!("http://127.0.0.1:{}", mirror.port),
        )
        .expect_exit(1)
        .text;
    assert!(
        t.contains("sha256 mismatch") && t.contains(&"1".repeat(64)),
        "{t}"
    );
    assert!(!w.join("node02.rk1.img").exists());
}

#[test]
fn preflight_checks_catch_clusters_that_cannot_form() {
    let check = |edits: &[(&str, &str)]| {
        let p = Project::example();
        for (f, body) in edits {
            p.write(&format!("profiles/{f}"), body);
        }
        let out = p.imgbuild(["check"]).args(repo_overrides()).run();
        (out.code, out.text)
    };
    let (code, t) = check(&[(
        "nodes/node01.yaml",
        "board: cm4\nturing_pi: {board: tp1, slot: 1}\nk3s: {role: server}\n",
    )]);
    assert_eq!(code, 3, "{t}");
    assert!(
        t.contains("exactly one server must create the cluster"),
        "{t}"
    );
    let (_, t) = check(&[(
        "nodes/node03.yaml",
        "board: rk1\nturing_pi: {board: tp1, slot: 3}\nnetwork: {dhcp: false, address: 10.9.0.3/24}\n",
    )]);
    assert!(
        t.contains(
            "node03.yaml: network.gateway: missing: 10.9.0.3/24 shares no subnet with a server"
        ),
        "{t}"
    );
    let cluster = std::fs::read_to_string(repo().join("profiles/cluster.yaml")).unwrap();
    let (_, t) = check(&[(
        "cluster.yaml",
        &cluster.replace("server: 192.168.1.101", "server: 192.168.1.103"),
    )]);
    assert!(
        t.contains("192.168.1.103 is the address of agent node03"),
        "{t}"
    );
    let (_, t) = check(&[(
        "cluster.yaml",
        &cluster.replace("v1.32.5+k3s1", "v1.28.9+k3s1"),
    )]);
    assert!(
        t.contains("ws03.yaml: nvidia: needs k3s v1.29 or later"),
        "{t}"
    );
}
