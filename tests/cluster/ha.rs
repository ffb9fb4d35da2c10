//! HA and GitOps: the three-server VIP example (`docs/examples/ha`), its
//! pre-flight refusals and warnings, kube-vip's manifest checked with
//! kubernetes-validate, and the tls-san and server URL read back from baked
//! images with ext4-view after `e2fsck -fn`.

use std::path::{Path, PathBuf};

use crate::support::chart::{GREETING_TEMPLATE, chart_tgz, sha256_hex};
use crate::support::project::Project;
use crate::support::registry::{Registry, ServedImage};
use crate::support::{fixtures::*, harness::*};

/// A fake registry serving kube-vip, which the servers' `cluster.vip.image` then names
/// (air-gapped servers get kube-vip's image baked in).
fn with_registry(ws: &Project) -> (Registry, ServedImage) {
    let reg = Registry::start();
    let kv = reg.serve_image("kube-vip/kube-vip", false);
    ws.edit(
        "profiles/cluster.yaml",
        "  vip:\n",
        &format!("  vip:\n    image: {}\n", kv.reference),
    );
    (reg, kv)
}

/// A file of `node`'s rendered image, as text.
fn rendered(ws: &Project, node: &str, path: &str) -> Option<String> {
    ws.rendered(node)
        .into_iter()
        .find(|f| f.path == path)
        .map(|f| String::from_utf8(f.contents).unwrap())
}

const KUBE_VIP: &str = "/var/lib/rancher/k3s/server/manifests/imgbuild-kube-vip.yaml";

fn docs(yaml: &str) -> Vec<serde_yaml_ng::Value> {
    serde_yaml_ng::Deserializer::from_str(yaml)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|v: &serde_yaml_ng::Value| !v.is_null())
        .collect()
}

fn kubernetes_validate() -> PathBuf {
    PathBuf::from(python().trim_matches('\''))
        .parent()
        .unwrap()
        .join("kubernetes-validate")
}

/// Runs kubernetes-validate (strict, the schemas of Kubernetes 1.32, the
/// minor of the example's k3s v1.32.5+k3s1) on `yaml`.
fn validate(yaml: &str, work: &Path) -> (i32, String) {
    let file = work.join("manifest.yaml");
    std::fs::write(&file, yaml).unwrap();
    sh_status(&format!(
        "{} --strict -k 1.32.0 {}",
        q(&kubernetes_validate()),
        q(&file)
    ))
}

#[test]
fn the_ha_example_checks_clean_and_warns_about_etcd_quorum_otherwise() {
    let ws = Project::ha();
    let r = ws.imgbuild(["check"]).run();
    assert_eq!(r.code, 0, "{}", r.text);
    assert!(!r.text.contains("WARN"), "{}", r.text);
    assert!(r.text.contains("4 node(s)"), "{}", r.text);

    // Two servers: valid, but etcd then tolerates no failure.
    ws.edit("profiles/nodes/node03.yaml", "role: server", "role: agent");
    let r = ws.imgbuild(["check"]).run();
    assert_eq!(r.code, 0, "{}", r.text);
    assert!(
        r.text
            .contains("cluster.vip: 2 server(s): embedded etcd needs a majority")
            && r.text.contains("tolerates the loss of 0 server(s) (none)"),
        "{}",
        r.text
    );
    // Four servers: even, tolerates one, like three.
    ws.edit("profiles/nodes/node03.yaml", "role: agent", "role: server")
        .edit("profiles/nodes/node04.yaml", "role: agent", "role: server");
    let r = ws.imgbuild(["check"]).run();
    assert_eq!(r.code, 0, "{}", r.text);
    assert!(
        r.text.contains("4 server(s)")
            && r.text.contains("tolerates the loss of 1 server(s)")
            && r.text.contains("use an odd number"),
        "{}",
        r.text
    );
    // One server on DHCP: the subnet check cannot be done; said so.
    ws.edit(
        "profiles/nodes/node02.yaml",
        "  address: 192.168.1.102/24\n",
        "  dhcp: true\n",
    );
    let r = ws.imgbuild(["check"]).run();
    assert_eq!(r.code, 0, "{}", r.text);
    assert!(
        r.text
            .contains("node02.yaml: network.address: server node02 takes its address from DHCP"),
        "{}",
        r.text
    );
}

/// Each refusal: the edit to the example, and what the message must say.
#[test]
fn contradictions_and_unreachable_vips_are_refused_with_file_and_field() {
    let cases: &[(&str, &str, &str, &[&str])] = &[
        (
            "cluster.yaml",
            "server: 192.168.1.100",
            "server: 192.168.1.101",
            &[
                "cluster.yaml: cluster.server: 192.168.1.101 contradicts cluster.vip.address 192.168.1.100",
                "set cluster.server to 192.168.1.100",
            ],
        ),
        (
            "cluster.yaml",
            "address: 192.168.1.100\n",
            "address: 192.168.1.103\n",
            &[
                "cluster.yaml: cluster.vip.address: 192.168.1.103 is the address of node node03",
                "no node uses",
            ],
        ),
        (
            "cluster.yaml",
            "address: 192.168.1.100\n",
            "address: 192.168.2.100\n",
            &[
                "cluster.yaml: cluster.vip.address: 192.168.2.100 is not in server node01's subnet 192.168.1.101/24",
                "ARP",
            ],
        ),
        (
            "cluster.yaml",
            "services_range: 192.168.1.200-192.168.1.220",
            "services_range: 192.168.1.90-192.168.1.99",
            &[], // valid: below the VIP and the nodes
        ),
        (
            "cluster.yaml",
            "services_range: 192.168.1.200-192.168.1.220",
            "services_range: 192.168.1.96/28",
            &[
                "cluster.vip.services_range: 192.168.1.96-192.168.1.111 contains the VIP 192.168.1.100",
                "contains 192.168.1.101, the address of node node01",
            ],
        ),
        (
            "cluster.yaml",
            "services_range: 192.168.1.200-192.168.1.220",
            "services_range: 192.168.1.220-192.168.1.200",
            &["cluster.vip.services_range: \"192.168.1.220-192.168.1.200\" ends before it starts"],
        ),
        (
            "cluster.yaml",
            "services_range: 192.168.1.200-192.168.1.220",
            "services_range: 192.168.1.250-192.168.2.10",
            &["is not inside server node01's subnet 192.168.1.101/24"],
        ),
        (
            "cluster.yaml",
            "# interface: eth0",
            "interface: \"en*\"",
            &[
                "cluster.vip.interface: \"en*\" is not an interface name",
                "no wildcard",
            ],
        ),
        (
            "cluster.yaml",
            "address: 192.168.1.100\n",
            "address: 192.168.1.300\n",
            &["cluster.yaml: cluster.vip.address: invalid IP address syntax"],
        ),
        (
            "cluster.yaml",
            "services_range:",
            "range:",
            &["cluster.yaml: cluster.vip.range: unknown field `range`"],
        ),
    ];
    for (file, from, to, wants) in cases {
        let ws = Project::ha();
        ws.edit(&format!("profiles/{file}"), from, to);
        let r = ws.imgbuild(["check"]).run();
        if wants.is_empty() {
            assert_eq!(r.code, 0, "{to}: {}", r.text);
            continue;
        }
        assert_eq!(r.code, 3, "{to} was accepted: {}", r.text);
        for w in *wants {
            assert!(r.text.contains(w), "{to}: expected {w:?} in:\n{}", r.text);
        }
    }
}

#[test]
fn kube_vip_runs_on_every_server_and_its_manifest_validates() {
    let ws = Project::ha();
    let manifest = rendered(&ws, "node01", KUBE_VIP).expect("no kube-vip on the first server");
    for server in ["node02", "node03"] {
        assert_eq!(
            rendered(&ws, server, KUBE_VIP).as_deref(),
            Some(manifest.as_str()),
            "{server}: every server applies the same manifest"
        );
    }
    assert!(
        rendered(&ws, "node04", KUBE_VIP).is_none(),
        "an agent got kube-vip"
    );

    let d = docs(&manifest);
    let kinds: Vec<&str> = d.iter().map(|v| v["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "ServiceAccount",
            "ClusterRole",
            "ClusterRoleBinding",
            "ConfigMap",
            "DaemonSet"
        ]
    );
    assert_eq!(d[2]["roleRef"]["name"], d[1]["metadata"]["name"]);
    assert_eq!(d[2]["subjects"][0]["name"], d[0]["metadata"]["name"]);
    let leases = d[1]["rules"]
        .as_sequence()
        .unwrap()
        .iter()
        .any(|r| r["resources"][0].as_str() == Some("leases"));
    assert!(leases, "leader election needs leases");
    assert_eq!(
        d[3]["data"]["range-global"].as_str(),
        Some("192.168.1.200-192.168.1.220")
    );
    let spec = &d[4]["spec"]["template"]["spec"];
    assert_eq!(
        spec["nodeSelector"]["node-role.kubernetes.io/control-plane"].as_str(),
        Some("true")
    );
    assert_eq!(spec["hostNetwork"].as_bool(), Some(true));
    assert_eq!(spec["serviceAccountName"], d[0]["metadata"]["name"]);
    let c = &spec["containers"][0];
    let image = c["image"].as_str().unwrap();
    let digest = image.split_once("@sha256:").map(|(_, d)| d).unwrap_or("");
    assert!(
        digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit()),
        "not pinned by digest: {image}"
    );
    let env: std::collections::BTreeMap<&str, &str> = c["env"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(|e| Some((e["name"].as_str()?, e["value"].as_str()?)))
        .collect();
    for (k, v) in [
        ("vip_arp", "true"),
        ("cp_enable", "true"),
        ("svc_enable", "true"),
        ("vip_leaderelection", "true"),
        ("address", "192.168.1.100"),
        ("vip_subnet", "32"),
        ("port", "6443"),
    ] {
        assert_eq!(env.get(k), Some(&v), "{k}: {env:?}");
    }
    // Servers match different interface names (eth0, en*): kube-vip picks
    // the default route's interface itself.
    assert!(!env.contains_key("vip_interface"), "{env:?}");

    let work = scratch();
    let (rc, out) = validate(&manifest, work.path());
    assert_eq!(rc, 0, "{out}");
    for res in [
        "serviceaccount/kube-vip",
        "clusterrole/system:kube-vip-role",
        "clusterrolebinding/system:kube-vip-binding",
        "configmap/kubevip",
        "daemonset/kube-vip-ds",
    ] {
        assert!(
            out.contains(&format!("passed for resource {res} against version 1.32")),
            "{res}: {out}"
        );
    }
    // The oracle can fail: a misspelt field is refused.
    let (rc, out) = validate(
        &manifest.replace("hostNetwork:", "hostNetwrk:"),
        work.path(),
    );
    assert_ne!(
        rc, 0,
        "kubernetes-validate accepted a broken manifest: {out}"
    );

    // Without a range: no Services, no ConfigMap, servicelb stays.
    ws.edit(
        "profiles/cluster.yaml",
        "services_range: 192.168.1.200-192.168.1.220",
        "interface: eth1",
    );
    let manifest = rendered(&ws, "node02", KUBE_VIP).unwrap();
    assert!(!manifest.contains("kind: ConfigMap"), "{manifest}");
    assert!(manifest.contains("name: svc_enable\n              value: \"false\""));
    assert!(manifest.contains("name: vip_interface\n              value: \"eth1\""));
    let (rc, out) = validate(&manifest, work.path());
    assert_eq!(rc, 0, "{out}");
    let cfg = rendered(&ws, "node02", "/etc/rancher/k3s/config.yaml").unwrap();
    assert!(cfg.contains("disable: [\"traefik\"]\n"), "{cfg}");
}

#[test]
fn baked_servers_name_the_vip_and_joiners_and_agents_use_it() {
    let fx = fixtures();
    let ws = Project::ha();
    let _registry = with_registry(&ws);
    let w = ws.path();
    let bake = |target: &str, base: &Path| {
        let out = w.join(target);
        let r = ws
            .imgbuild(["--base", base.to_str().unwrap(), out.to_str().unwrap()])
            .run();
        assert_eq!(r.code, 0, "{}", r.text);
        out
    };
    let read = |layout: &Layout, img: &Path, index: u32, sub: &str| {
        let work = w.join(sub);
        std::fs::create_dir(&work).unwrap();
        let part = fsck_ext4(layout, img, index, &work);
        ext4_view::Ext4::load_from_path(&part).unwrap()
    };
    let yaml = |fs: &ext4_view::Ext4, path: &str| -> serde_yaml_ng::Value {
        serde_yaml_ng::from_slice(&fs.read(path).unwrap()).unwrap()
    };
    let sans = |v: &serde_yaml_ng::Value| -> Vec<String> {
        v["tls-san"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect()
    };

    let first = bake("node01.cm4.img", &fx.cm4.path);
    let fs = read(&fx.cm4, &first, 2, "first");
    let cfg = yaml(&fs, "/etc/rancher/k3s/config.yaml");
    assert_eq!(cfg["cluster-init"].as_bool(), Some(true));
    assert!(sans(&cfg).contains(&"192.168.1.100".to_string()), "{cfg:?}");
    assert_eq!(cfg["disable"][1].as_str(), Some("servicelb"));
    assert!(fs.exists(KUBE_VIP).unwrap());

    let joiner = bake("node02.rk1.img", &fx.rk1.path);
    let fs = read(&fx.rk1, &joiner, 2, "joiner");
    let cfg = yaml(&fs, "/etc/rancher/k3s/config.yaml");
    assert_eq!(cfg["server"].as_str(), Some("https://192.168.1.100:6443"));
    assert!(cfg["cluster-init"].is_null());
    let s = sans(&cfg);
    assert!(s.contains(&"192.168.1.100".to_string()) && s.contains(&"192.168.1.102".to_string()));
    assert!(fs.exists(KUBE_VIP).unwrap());

    let agent = bake("node04.rk1.img", &fx.rk1.path);
    let fs = read(&fx.rk1, &agent, 2, "agent");
    let cfg = yaml(&fs, "/etc/rancher/k3s/config.yaml");
    assert_eq!(cfg["server"].as_str(), Some("https://192.168.1.100:6443"));
    assert!(!fs.exists(KUBE_VIP).unwrap());
}

const NAMESPACE_MANIFEST: &str = "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: gitops\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: hello\n  namespace: gitops\ndata:\n  from: imgbuild\n";

/// Adds a bootstrap block with one manifest and one chart to the example.
fn with_bootstrap(ws: &Project, repo_url: &str, sha256: &str) {
    let m = ws.profiles().join("manifests");
    std::fs::create_dir_all(&m).unwrap();
    std::fs::write(m.join("gitops.yaml"), NAMESPACE_MANIFEST).unwrap();
    std::fs::write(
        m.join("demo-values.yaml"),
        "greeting: hello from the profile\n",
    )
    .unwrap();
    let p = ws.profiles().join("cluster.yaml");
    let mut t = std::fs::read_to_string(&p).unwrap();
    let defaults = t.find("\ndefaults:").unwrap() + 1;
    t.insert_str(
        defaults,
        &format!(
            "  bootstrap:\n    manifests: [gitops.yaml]\n    charts:\n      - name: demo\n        repo: {repo_url}\n        chart: demo\n        version: 0.1.0\n        sha256: {sha256}\n        namespace: demo\n        values: demo-values.yaml\n"
        ),
    );
    std::fs::write(&p, t).unwrap();
}

#[test]
fn bootstrap_charts_are_embedded_byte_for_byte_and_recorded() {
    let fx = fixtures();
    let ws = Project::ha();
    let _registry = with_registry(&ws);
    let w = ws.path();
    let tgz = chart_tgz(w, GREETING_TEMPLATE);
    let digest = sha256_hex(&tgz);
    let server = crate::support::http::Server::start(Default::default());
    server.put("/charts/demo-0.1.0.tgz", tgz.clone());
    with_bootstrap(
        &ws,
        &format!("http://127.0.0.1:{}/charts", server.port),
        &digest,
    );
    let r = ws.imgbuild(["check"]).run();
    assert_eq!(r.code, 0, "{}", r.text);

    let cache = w.join("cache");
    let out = w.join("node01.cm4.img");
    let r = ws
        .imgbuild([
            "--cache-dir",
            cache.to_str().unwrap(),
            "--base",
            fx.cm4.path.to_str().unwrap(),
            // The provenance statement is read below.
            "--sums",
            out.to_str().unwrap(),
        ])
        .run();
    assert_eq!(r.code, 0, "{}", r.text);
    assert_eq!(server.gets("/charts/demo-0.1.0.tgz").len(), 1);
    assert_eq!(
        std::fs::read(cache.join("assets").join(&digest)).unwrap(),
        tgz
    );

    let work = w.join("read");
    std::fs::create_dir(&work).unwrap();
    let part = fsck_ext4(&fx.cm4, &out, 2, &work);
    let fs = ext4_view::Ext4::load_from_path(&part).unwrap();
    let manifests = "/var/lib/rancher/k3s/server/manifests";
    let plain = fs
        .read(format!("{manifests}/imgbuild-bootstrap-gitops.yaml").as_str())
        .unwrap();
    assert_eq!(plain, NAMESPACE_MANIFEST.as_bytes());
    let (rc, o) = validate(NAMESPACE_MANIFEST, &work);
    assert_eq!(rc, 0, "{o}");
    assert!(o.contains("passed for resource namespace/gitops"), "{o}");

    let hc: serde_yaml_ng::Value = serde_yaml_ng::from_slice(
        &fs.read(format!("{manifests}/imgbuild-chart-demo.yaml").as_str())
            .unwrap(),
    )
    .unwrap();
    assert_eq!(hc["apiVersion"].as_str(), Some("helm.cattle.io/v1"));
    assert_eq!(hc["kind"].as_str(), Some("HelmChart"));
    assert_eq!(hc["metadata"]["namespace"].as_str(), Some("kube-system"));
    assert_eq!(hc["spec"]["targetNamespace"].as_str(), Some("demo"));
    assert_eq!(
        hc["spec"]["valuesContent"].as_str(),
        Some("greeting: hello from the profile\n")
    );
    // The embedded archive: decoded by base64(1), same digest, and tar reads it.
    let b64 = work.join("content.b64");
    std::fs::write(&b64, hc["spec"]["chartContent"].as_str().unwrap()).unwrap();
    let decoded = work.join("decoded.tgz");
    sh(&format!("base64 -d {} > {}", q(&b64), q(&decoded)));
    let sum = String::from_utf8(sh(&format!("sha256sum {}", q(&decoded))).stdout).unwrap();
    assert_eq!(&sum[..64], digest);
    let list = String::from_utf8(sh(&format!("tar -tzf {}", q(&decoded))).stdout).unwrap();
    assert!(list.contains("demo/Chart.yaml"), "{list}");
    assert!(
        !fs.exists("/var/lib/rancher/k3s/server/manifests/imgbuild-chart-demo.yaml.j2")
            .unwrap()
    );

    // Provenance: the chart's URL and digest, and the manifest's digest.
    let statement = std::fs::read_to_string(format!("{}.intoto.json", out.display())).unwrap();
    let st: serde_json::Value = serde_json::from_str(statement.trim()).unwrap();
    let deps = st["predicate"]["buildDefinition"]["resolvedDependencies"]
        .as_array()
        .unwrap();
    let chart = deps
        .iter()
        .find(|d| d["name"] == "helm chart demo 0.1.0")
        .expect("the chart in resolvedDependencies");
    assert_eq!(chart["digest"]["sha256"].as_str(), Some(digest.as_str()));
    assert!(
        chart["uri"]
            .as_str()
            .unwrap()
            .ends_with("/charts/demo-0.1.0.tgz")
    );
    let m = deps
        .iter()
        .find(|d| d["name"] == "bootstrap manifest gitops.yaml")
        .unwrap();
    assert_eq!(
        m["digest"]["sha256"].as_str(),
        Some(sha256_hex(NAMESPACE_MANIFEST.as_bytes()).as_str())
    );

    // Agents and joining servers get none of it.
    let agent = w.join("node04.rk1.img");
    let r = ws
        .imgbuild([
            "--cache-dir",
            cache.to_str().unwrap(),
            "--base",
            fx.rk1.path.to_str().unwrap(),
            agent.to_str().unwrap(),
        ])
        .run();
    assert_eq!(r.code, 0, "{}", r.text);
    let work = w.join("read-agent");
    std::fs::create_dir(&work).unwrap();
    let part = fsck_ext4(&fx.rk1, &agent, 2, &work);
    let fs = ext4_view::Ext4::load_from_path(&part).unwrap();
    assert!(
        !fs.exists(format!("{manifests}/imgbuild-chart-demo.yaml").as_str())
            .unwrap()
    );
}

#[test]
fn a_chart_with_the_wrong_digest_is_refused_and_not_cached() {
    let fx = fixtures();
    let ws = Project::ha();
    let _registry = with_registry(&ws);
    let w = ws.path();
    let tgz = chart_tgz(w, GREETING_TEMPLATE);
    let pinned = sha256_hex(b"some other archive");
    let server = crate::support::http::Server::start(Default::default());
    server.put("/charts/demo-0.1.0.tgz", tgz.clone());
    with_bootstrap(
        &ws,
        &format!("http://127.0.0.1:{}/charts/", server.port),
        &pinned,
    );
    let cache = w.join("cache");
    let out = w.join("node01.cm4.img");
    let r = ws
        .imgbuild([
            "--cache-dir",
            cache.to_str().unwrap(),
            "--base",
            fx.cm4.path.to_str().unwrap(),
            out.to_str().unwrap(),
        ])
        .run();
    assert_ne!(r.code, 0, "{}", r.text);
    assert!(
        r.text.contains("chart demo (demo 0.1.0)")
            && r.text.contains(&format!(
                "sha256 mismatch: expected {pinned}, got {}",
                sha256_hex(&tgz)
            )),
        "{}",
        r.text
    );
    assert!(!out.exists());
    // Neither digest is cached (the k3s assets are), and no partial is left.
    assert!(!cache.join("assets").join(&pinned).exists());
    assert!(!cache.join("assets").join(sha256_hex(&tgz)).exists());
    let partial: Vec<_> = std::fs::read_dir(cache.join("partial"))
        .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(partial.is_empty(), "{partial:?}");
}

#[test]
fn bootstrap_mistakes_are_refused_with_file_and_field() {
    let ws = Project::ha();
    with_bootstrap(&ws, "http://127.0.0.1:9/charts", &"ab".repeat(32));
    let cases: &[(&str, &str, &str)] = &[
        (
            "manifests: [gitops.yaml]",
            "manifests: [missing.yaml]",
            "cluster.bootstrap.manifests[0]: ",
        ),
        (
            "manifests: [gitops.yaml]",
            "manifests: [../cluster.yaml]",
            "cluster.bootstrap.manifests[0]: \"../cluster.yaml\" must be a file name in manifests/",
        ),
        (
            "sha256: abab",
            "sha256: zzab",
            "cluster.bootstrap.charts[0].sha256: expected the chart archive's sha256, 64 hex digits",
        ),
        (
            "version: 0.1.0",
            "version: \">=0.1\"",
            "cluster.bootstrap.charts[0].version: expected a pinned chart version",
        ),
        (
            "name: demo\n",
            "name: Demo\n",
            "cluster.bootstrap.charts[0].name: \"Demo\" must be 1 to 53 lower-case",
        ),
        (
            "repo: http://",
            "repo: ftp://",
            "cluster.bootstrap.charts[0].repo: expected an http:// or https:// URL",
        ),
    ];
    let file = ws.profiles().join("cluster.yaml");
    let original = std::fs::read_to_string(&file).unwrap();
    for (from, to, want) in cases {
        assert!(original.contains(from), "{from}");
        std::fs::write(&file, original.replacen(from, to, 1)).unwrap();
        let r = ws.imgbuild(["check"]).run();
        assert_eq!(r.code, 3, "{to}: {}", r.text);
        assert!(
            r.text.contains(want),
            "{to}: expected {want:?} in\n{}",
            r.text
        );
    }
    // A manifest that is not Kubernetes objects.
    std::fs::write(&file, &original).unwrap();
    std::fs::write(ws.profiles().join("manifests/gitops.yaml"), "just: data\n").unwrap();
    let r = ws.imgbuild(["check"]).run();
    assert_eq!(r.code, 3, "{}", r.text);
    assert!(
        r.text
            .contains("gitops.yaml: document 1 has no apiVersion and kind"),
        "{}",
        r.text
    );
}

#[test]
fn the_commented_argocd_bootstrap_is_valid_once_uncommented() {
    let ws = Project::ha();
    let p = ws.profiles().join("cluster.yaml");
    let t = std::fs::read_to_string(&p).unwrap();
    let mut inside = false;
    let mut out = String::new();
    for line in t.lines() {
        if line == "  # bootstrap:" {
            inside = true;
        } else if inside && !line.starts_with("  #") {
            inside = false;
        }
        let line = if inside {
            format!("  {}", &line[4..])
        } else {
            line.to_string()
        };
        out.push_str(&line);
        out.push('\n');
    }
    let digest = "0".repeat(64);
    let out = out
        .replace("<64 hex digits of argo-cd-7.7.0.tgz>", &digest)
        .replace("<64 hex digits of argocd-apps-2.0.2.tgz>", &digest);
    assert!(out.contains("\n  bootstrap:\n    manifests: []"), "{out}");
    std::fs::write(&p, out).unwrap();
    let r = ws.imgbuild(["check"]).run();
    assert_eq!(r.code, 0, "{}", r.text);
    // The check read the values files: break one and it is refused.
    std::fs::write(
        ws.profiles().join("manifests/argocd-apps-values.yaml"),
        "applications: [unclosed\n",
    )
    .unwrap();
    let r = ws.imgbuild(["check"]).run();
    assert_eq!(r.code, 3, "{}", r.text);
    assert!(
        r.text.contains("cluster.bootstrap.charts[1].values: ")
            && r.text.contains("argocd-apps-values.yaml: not valid YAML"),
        "{}",
        r.text
    );
}

fn oci_read(archive: &Path, arch: &str) -> serde_json::Value {
    let out = sh(&format!(
        "{} {} {} {arch}",
        python(),
        q(&repo().join("tests/fixtures/oci_layout.py")),
        q(archive)
    ));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The archive baked at `/var/lib/rancher/k3s/agent/images/<name>`, copied out.
fn baked_archive(fs: &ext4_view::Ext4, name_prefix: &str, out: &Path) -> Option<PathBuf> {
    let dir = "/var/lib/rancher/k3s/agent/images";
    let entry = fs
        .read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().as_str().unwrap().to_string())
        .find(|n| n.starts_with(name_prefix))?;
    std::fs::write(out, fs.read(format!("{dir}/{entry}").as_str()).unwrap()).unwrap();
    Some(out.to_path_buf())
}

#[test]
fn air_gapped_images_land_in_the_nodes_architecture_and_read_back() {
    let fx = fixtures();
    let ws = Project::ha();
    let (reg, kv) = with_registry(&ws);
    let app = reg.serve_image("team/app", false);
    ws.edit(
        "profiles/cluster.yaml",
        "\ndefaults:",
        &format!("  images: [\"{}\"]\n\ndefaults:", app.reference),
    );
    std::fs::write(
        ws.profiles().join("nodes/nuc5.yaml"),
        "board: nuc\nk3s: {role: agent}\nnetwork:\n  match: {name: \"en*\"}\n  address: 192.168.1.105/24\n",
    )
    .unwrap();
    let w = ws.path();
    let cache = w.join("cache");
    let bake = |target: &str, base: &Path| {
        let out = w.join(target);
        let r = ws
            .imgbuild([
                "--cache-dir",
                cache.to_str().unwrap(),
                "--base",
                base.to_str().unwrap(),
                // The provenance statement is read below.
                "--sums",
                out.to_str().unwrap(),
            ])
            .run();
        assert_eq!(r.code, 0, "{}", r.text);
        out
    };
    // An arm64 server: the app and kube-vip, both arm64.
    let server = bake("node01.cm4.img", &fx.cm4.path);
    let work = w.join("server");
    std::fs::create_dir(&work).unwrap();
    let fs = ext4_view::Ext4::load_from_path(fsck_ext4(&fx.cm4, &server, 2, &work)).unwrap();
    let a = baked_archive(&fs, "imgbuild-app-", &work.join("app.tar")).expect("app archive");
    let got = oci_read(&a, "arm64");
    assert_eq!(got["architecture"], "arm64");
    assert_eq!(got["name"], format!("{}/team/app:1.0", reg.host()));
    // Also by digest: pods ask for `repo:tag@sha256:...`, which containerd
    // looks up by the digest name.
    let digest = &app.index_digest;
    assert_eq!(
        got["names"],
        serde_json::json!([
            format!("{}/team/app:1.0", reg.host()),
            format!("{}/team/app@sha256:{digest}", reg.host())
        ])
    );
    let names: Vec<String> = fs
        .read_dir("/var/lib/rancher/k3s/agent/images")
        .unwrap()
        .map(|e| e.unwrap().file_name().as_str().unwrap().to_string())
        .collect();
    let k = baked_archive(&fs, "imgbuild-kube-vip-", &work.join("kv.tar"))
        .unwrap_or_else(|| panic!("{names:?}"));
    assert_eq!(oci_read(&k, "arm64")["architecture"], "arm64");
    // The reader can fail: a blob changed inside the archive is caught.
    let mut bytes = std::fs::read(&a).unwrap();
    let at = bytes.len() - 1024 - 600;
    bytes[at] ^= 0x55;
    let broken = work.join("broken.tar");
    std::fs::write(&broken, bytes).unwrap();
    let (rc, o) = sh_status(&format!(
        "{} {} {} arm64",
        python(),
        q(&repo().join("tests/fixtures/oci_layout.py")),
        q(&broken)
    ));
    assert_ne!(rc, 0, "the layout reader accepted a damaged blob: {o}");
    // Only the arm64 blobs were fetched.
    let log = reg.log();
    let (_, amd_layer) = &app.per_arch["amd64"];
    assert!(
        !log.iter().any(|l| l.contains(amd_layer.as_str())),
        "{log:?}"
    );
    // Anonymous token auth was used (a token request per repository).
    assert!(
        log.iter()
            .any(|l| l.starts_with("GET /token?") && l.contains("team%2Fapp")),
        "{log:?}"
    );
    // Recorded in the provenance.
    let st: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{}.intoto.json", server.display())).unwrap(),
    )
    .unwrap();
    let deps = st["predicate"]["buildDefinition"]["resolvedDependencies"]
        .as_array()
        .unwrap();
    for (image, digest) in [(&app, &app.index_digest), (&kv, &kv.index_digest)] {
        let d = deps
            .iter()
            .find(|d| d["name"] == format!("container image {} (arm64)", image.reference))
            .unwrap_or_else(|| panic!("{deps:?}"));
        assert_eq!(d["digest"]["sha256"].as_str(), Some(digest.as_str()));
    }

    // An amd64 agent: the app for amd64, no kube-vip.
    let agent = bake("nuc5.nuc.img", &fx.nuc.path);
    let work = w.join("agent");
    std::fs::create_dir(&work).unwrap();
    let fs = ext4_view::Ext4::load_from_path(fsck_ext4(&fx.nuc, &agent, 1, &work)).unwrap();
    let a = baked_archive(&fs, "imgbuild-app-", &work.join("app.tar")).unwrap();
    assert_eq!(oci_read(&a, "amd64")["architecture"], "amd64");
    assert!(baked_archive(&fs, "imgbuild-kube-vip-", &work.join("kv.tar")).is_none());

    // A second build comes from the cache: no blob is fetched again.
    let before = reg.log().len();
    bake("again/node01.cm4.img", &fx.cm4.path);
    assert_eq!(reg.log().len(), before, "{:?}", &reg.log()[before..]);
}

#[test]
fn corrupt_blobs_missing_manifests_and_refused_credentials_fail_clearly() {
    let fx = fixtures();
    let ws = Project::ha();
    let (reg, _) = with_registry(&ws);
    let bad = reg.serve_image("bad/app", true);
    let private = reg.serve_image("private/app", false);
    let w = ws.path();
    let cache = w.join("cache");
    let base = fx.cm4.path.to_str().unwrap().to_string();
    let out = w.join("node01.cm4.img");
    let images = |list: &str| {
        let p = ws.profiles().join("cluster.yaml");
        let t = std::fs::read_to_string(&p).unwrap();
        let t = match t.find("  images: ") {
            Some(i) => {
                let end = i + t[i..].find('\n').unwrap() + 1;
                format!("{}{}", &t[..i], &t[end..])
            }
            None => t,
        };
        std::fs::write(
            &p,
            t.replacen(
                "\ndefaults:",
                &format!("  images: [{list}]\n\ndefaults:"),
                1,
            ),
        )
        .unwrap();
    };
    let bake = |envs: &[(&str, &Path)]| {
        ws.imgbuild([
            "--cache-dir",
            cache.to_str().unwrap(),
            "--base",
            &base,
            out.to_str().unwrap(),
        ])
        .envs(envs.iter().map(|(k, v)| (*k, *v)))
        .run()
    };

    // A blob whose bytes do not match its digest: refused, not cached.
    images(&format!("\"{}\"", bad.reference));
    let r = bake(&[]);
    let (_, layer) = &bad.per_arch["arm64"];
    assert_ne!(r.code, 0, "{}", r.text);
    assert!(
        r.text.contains(&format!(
            "{} blob sha256:{layer}: sha256 mismatch: expected {layer}",
            bad.reference
        )) && r.text.contains("nothing was cached"),
        "{}",
        r.text
    );
    assert!(!cache.join("assets").join(layer).exists());
    assert!(!out.exists());

    // A digest the registry does not have: 404, named.
    let missing = format!("{}/team/none@sha256:{}", reg.host(), "1".repeat(64));
    images(&format!("\"{missing}\""));
    let r = bake(&[]);
    assert_ne!(r.code, 0, "{}", r.text);
    assert!(
        r.text.contains("HTTP 404")
            && r.text
                .contains(&format!("({missing} has no such manifest or blob)")),
        "{}",
        r.text
    );

    // A private repository: 401 without credentials, with a pointer.
    images(&format!("\"{}\"", private.reference));
    let r = bake(&[]);
    assert_ne!(r.code, 0, "{}", r.text);
    assert!(
        r.text.contains("HTTP 401") && r.text.contains("needs credentials: name a Docker config.json-style file with IMGBUILD_REGISTRY_AUTH"),
        "{}",
        r.text
    );
    // With a credentials file: pulled; the password is never printed.
    let creds = w.join("auth.json");
    use base64::Engine;
    let token = base64::engine::general_purpose::STANDARD.encode(format!(
        "{}:{}",
        crate::support::registry::USER,
        crate::support::registry::PASSWORD
    ));
    std::fs::write(
        &creds,
        serde_json::json!({"auths": {reg.host(): {"auth": token}}}).to_string(),
    )
    .unwrap();
    let r = bake(&[("IMGBUILD_REGISTRY_AUTH", &creds)]);
    assert_eq!(r.code, 0, "{}", r.text);
    assert!(!r.text.contains(crate::support::registry::PASSWORD));
    // A wrong password: refused, still never printed.
    let wrong = base64::engine::general_purpose::STANDARD.encode("robot:not-it");
    std::fs::write(
        &creds,
        serde_json::json!({"auths": {reg.host(): {"auth": wrong}}}).to_string(),
    )
    .unwrap();
    std::fs::remove_dir_all(cache.join("oci")).unwrap();
    let r = bake(&[("IMGBUILD_REGISTRY_AUTH", &creds)]);
    assert_ne!(r.code, 0, "{}", r.text);
    assert!(
        r.text.contains("HTTP 401") && r.text.contains("credentials for"),
        "{}",
        r.text
    );
    assert!(!r.text.contains("not-it"), "{}", r.text);

    // A token endpoint over plain http elsewhere: credentials are never sent.
    reg.set_realm("http://registry.invalid/token");
    let r = bake(&[("IMGBUILD_REGISTRY_AUTH", &creds)]);
    assert_ne!(r.code, 0, "{}", r.text);
    assert!(
        r.text
            .contains("token realm http://registry.invalid/token is plain http"),
        "{}",
        r.text
    );
}

#[test]
fn image_references_without_a_digest_are_refused() {
    let ws = Project::ha();
    ws.edit(
        "profiles/cluster.yaml",
        "\ndefaults:",
        "  images: [\"nginx:1.27\"]\n\ndefaults:",
    );
    ws.edit(
        "profiles/nodes/node04.yaml",
        "board: rk1",
        "images: [\"ghcr.io/x/y@sha256:abc\"]\nboard: rk1",
    );
    let r = ws.imgbuild(["check"]).run();
    assert_eq!(r.code, 3, "{}", r.text);
    for want in [
        "cluster.yaml: cluster.images[0]: \"nginx:1.27\" has no digest: pin it as name:tag@sha256:",
        "a tag alone can move, so imgbuild refuses it",
        "node04.yaml: images[0]: \"ghcr.io/x/y@sha256:abc\": the digest must be sha256: followed by 64 hex digits",
    ] {
        assert!(r.text.contains(want), "{want:?} in\n{}", r.text);
    }
}
