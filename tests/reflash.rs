//! Re-flashing a running cluster, end to end: images baked from the example
//! profiles (`profiles/`: one server; `docs/examples/ha`: three servers
//! behind a VIP) on fixture base images, delivered through the fake BMC, and
//! booted by the stateful fake k3s API, which decides what k3s does from the
//! image the BMC received (its k3s config read back from its ext4 with
//! debugfs). Each test has its own BMC, profiles, secrets and images.

mod support {
    pub mod bmc;
    pub mod bytes;
    pub mod fixtures;
    pub mod harness;
    pub mod http;
    pub mod k3s_api;
    pub mod mirror;
    pub mod registry;
}

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::bmc::FakeBmc;
use support::harness::*;
use support::k3s_api::{FakeApi, Outcome, Signer, cluster::pod, image};

const INSTANCE: &str = "imgbuild.dev/instance-id";
const REMOVE: &str = "etcd.k3s.cattle.io/remove";
const MEMBER: &str = "etcd.k3s.cattle.io/node-name";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    /// `profiles/`: node01 the only server (cluster-init), node02-04 agents.
    Single,
    /// `docs/examples/ha`: node01 (cluster-init), node02 and node03 servers
    /// behind the VIP 192.168.1.100; node04 an agent.
    Ha,
}

/// The Turing Pi nodes of both profile sets: name, board, slot.
const NODES: [(&str, &str, u8); 4] = [
    ("node01", "cm4", 1),
    ("node02", "rk1", 2),
    ("node03", "rk1", 3),
    ("node04", "rk1", 4),
];

/// Base images for both boards, shared by the tests of this binary: small,
/// since every flash sends every byte through the fake BMC.
fn bases() -> &'static (PathBuf, PathBuf) {
    static B: std::sync::OnceLock<(PathBuf, PathBuf)> = std::sync::OnceLock::new();
    B.get_or_init(|| {
        let dir = shared_scratch().join("small");
        std::fs::create_dir_all(&dir).unwrap();
        let rk1 = support::fixtures::build_rk1(&dir, 48);
        let cm4 = support::fixtures::build_cm4(&dir, 96);
        (rk1.path, cm4.path)
    })
}

/// A workspace: profiles pointing at its own fake BMC, its own secrets, and
/// the Turing Pi nodes' images built into `dist/` as they are needed.
struct Ws {
    dir: tempfile::TempDir,
    bmc: FakeBmc,
    kind: Kind,
    /// Serves kube-vip, which HA servers get baked in.
    _registry: Option<support::registry::Registry>,
}

impl Ws {
    fn new(kind: Kind) -> Ws {
        Ws::edited(kind, |_| {})
    }

    /// Like `new`, with the profiles changed by `edit` before the build.
    fn edited(kind: Kind, edit: impl FnOnce(&Path)) -> Ws {
        let dir = scratch();
        let bmc = FakeBmc::start("turing");
        // The CRC read-back is not what these tests are about: keep it short.
        bmc.lock().crc_step_delay = Duration::from_millis(10);
        let src = match kind {
            Kind::Single => repo().join("profiles"),
            Kind::Ha => repo().join("docs/examples/ha"),
        };
        sh(&format!(
            "cp -r {} {}",
            q(&src),
            q(&dir.path().join("profiles"))
        ));
        let registry = (kind == Kind::Ha).then(support::registry::Registry::start);
        let ws = Ws {
            dir,
            bmc,
            kind,
            _registry: None,
        };
        ws.replace(
            "cluster.yaml",
            "bmc: turingpi.home.arpa",
            &format!("bmc: {}", ws.bmc.host()),
        );
        if let Some(reg) = &registry {
            let kv = reg.serve_image("kube-vip/kube-vip", false);
            ws.replace(
                "cluster.yaml",
                "  vip:\n",
                &format!("  vip:\n    image: {}\n", kv.reference),
            );
        }
        let mut ws = ws;
        ws._registry = registry;
        edit(&ws.profiles());
        // The cluster's secrets (CA set included), as a first build makes them.
        let out = ws.run(&["secrets", "--generate"]);
        assert!(out.status.success(), "{}", text(&out));
        ws
    }

    /// Builds `node`'s image unless it is there (`deploy` and `flash` build
    /// what they need themselves).
    fn build(&self, node: &str) {
        let image = self.image(node);
        if !image.is_file() {
            let out = self.run(&["build", image.to_str().unwrap()]);
            assert!(out.status.success(), "{}", text(&out));
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
    fn profiles(&self) -> PathBuf {
        self.path().join("profiles")
    }
    fn secrets(&self) -> PathBuf {
        self.path().join("secrets")
    }
    fn image(&self, node: &str) -> PathBuf {
        let (_, board, _) = NODES.iter().find(|(n, _, _)| *n == node).unwrap();
        self.path().join(format!("dist/{node}.{board}.img"))
    }

    /// Replaces `from` (which must be there) by `to` in a profile file.
    fn replace(&self, file: &str, from: &str, to: &str) {
        let p = self.profiles().join(file);
        let t = std::fs::read_to_string(&p).unwrap();
        assert!(t.contains(from), "{file} has no {from:?}");
        std::fs::write(&p, t.replacen(from, to, 1)).unwrap();
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let e = support::mirror::env();
        let mut c = command();
        c.args(args)
            .args(["--profiles", self.profiles().to_str().unwrap()]);
        if ["build", "deploy", "flash"].contains(&args[0]) {
            let (rk1, cm4) = bases();
            c.arg(format!("--base=rk1={}", rk1.display()))
                .arg(format!("--base=cm4={}", cm4.display()));
        }
        c.current_dir(self.path())
            .env("IMGBUILD_SECRETS", self.secrets())
            .env("IMGBUILD_CACHE_DIR", e.cache())
            .env("IMGBUILD_K3S_MIRROR", e.mirror_url())
            .env("IMGBUILD_BMC_PASSWORD", "turing")
            .env("HOME", self.path().join("home"))
            .env_remove("KUBECONFIG")
            .stdin(std::process::Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().unwrap()
    }

    /// `deploy --yes` against `api` with short intervals, plus `extra`.
    fn deploy(&self, api: &str, extra: &[&str]) -> Output {
        let mut a = vec![
            "deploy",
            "--yes",
            "--skip-crc",
            "--server",
            api,
            "--interval",
            "200ms",
        ];
        if !extra.contains(&"--timeout") {
            a.extend(["--timeout", "20s"]);
        }
        a.extend_from_slice(extra);
        self.run(&a)
    }

    /// `flash NODE --yes` against `api`, plus `extra`.
    fn flash(&self, node: &str, api: &str, extra: &[&str]) -> Output {
        let mut a = vec![
            "flash",
            node,
            "--yes",
            "--skip-crc",
            "--server",
            api,
            "--timeout",
            "20s",
        ];
        a.extend_from_slice(extra);
        self.run(&a)
    }

    /// The fake API, serving with the cluster's CA, holding the cluster the
    /// profiles describe (every node Ready, servers voting etcd members), and
    /// booting whatever the fake BMC finishes flashing.
    fn api(&self) -> FakeApi {
        let fake = FakeApi::start(Signer::Cluster(&self.secrets()), &self.secrets());
        for (name, _, slot) in NODES {
            let server = slot == 1 || (self.kind == Kind::Ha && slot <= 3);
            if server {
                fake.add_server(name);
            } else {
                fake.add_agent(name);
            }
        }
        let st = self.bmc.state.clone();
        let slots = self.bmc.lock().slots_dir.clone();
        fake.on_flash(move || {
            support::bmc::lock(&st)
                .flashed
                .iter()
                .map(|s| {
                    let (name, _, _) = NODES.iter().find(|(_, _, n)| n == s).unwrap();
                    (name.to_string(), slots.join(format!("slot{s}.img")))
                })
                .collect()
        });
        fake
    }

    /// Slots the fake BMC flashed, in order.
    fn flashed(&self) -> Vec<u8> {
        self.bmc.lock().flashed.clone()
    }

    /// What `imgbuild inspect --json` says of `image`.
    fn inspect(&self, image: &Path) -> Value {
        let out = self.run(&["inspect", "--json", image.to_str().unwrap()]);
        assert!(out.status.success(), "{}", text(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// The instance ID of `node`'s built image.
    fn instance(&self, node: &str) -> String {
        self.build(node);
        self.inspect(&self.image(node))["provenance"]["instance_id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Records on each Node the instance of its built image, as a completed
    /// deploy leaves them.
    fn record_instances(&self, fake: &FakeApi) {
        for (name, _, _) in NODES {
            let id = self.instance(name);
            fake.with(|c| {
                c.edit_node(name, |n| {
                    n["metadata"]["annotations"][INSTANCE] = id.into();
                })
            });
        }
    }
}

fn sha256(p: &Path) -> String {
    let (code, out) = sh_status(&format!("sha256sum {}", q(p)));
    assert_eq!(code, 0, "{out}");
    out.split_whitespace().next().unwrap().to_string()
}

/// The first index at or after `from` of a request containing `needle`.
fn pos_from(reqs: &[String], from: usize, needle: &str) -> usize {
    reqs.iter()
        .skip(from)
        .position(|r| r.contains(needle))
        .map(|i| i + from)
        .unwrap_or_else(|| panic!("no {needle:?} after #{from} in {reqs:#?}"))
}

fn pos(reqs: &[String], needle: &str) -> usize {
    pos_from(reqs, 0, needle)
}

fn patch(node: &str, body: Value) -> String {
    format!("PATCH /api/v1/nodes/{node} {body}")
}

fn cordon(node: &str) -> String {
    patch(node, json!({"spec": {"unschedulable": true}}))
}

fn uncordon(node: &str) -> String {
    patch(node, json!({"spec": {"unschedulable": null}}))
}

fn remove(node: &str) -> String {
    patch(node, json!({"metadata": {"annotations": {REMOVE: "true"}}}))
}

fn annotation(fake: &FakeApi, node: &str, key: &str) -> Option<String> {
    fake.node_obj(node)?["metadata"]["annotations"][key]
        .as_str()
        .map(str::to_string)
}

fn cordoned(fake: &FakeApi, node: &str) -> bool {
    fake.node_obj(node).unwrap()["spec"]["unschedulable"] == true
}

fn voter(fake: &FakeApi, node: &str) -> bool {
    fake.node_obj(node).unwrap()["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["type"] == "EtcdIsVoter" && c["status"] == "True")
}

fn flashes(fake: &FakeApi) -> Vec<(String, Outcome)> {
    fake.with(|c| c.flashes.clone())
}

fn expect(out: &Output, code: i32) -> String {
    let t = text(out);
    assert_eq!(out.status.code(), Some(code), "{t}");
    t
}

/// A loopback URL nothing listens on.
fn closed_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    format!("https://127.0.0.1:{port}")
}

/// Byte offsets of an image's partitions, from `sfdisk -J`.
fn partitions(image: &Path) -> Vec<u64> {
    let out = sh(&format!("sfdisk -J {}", q(image)));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let sector = v["partitiontable"]["sectorsize"].as_u64().unwrap_or(512);
    v["partitiontable"]["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["start"].as_u64().unwrap() * sector)
        .collect()
}

/// `debugfs -R REQUEST` on the image's root file system (the partition
/// holding /etc/rancher/k3s): (exit code, stdout+stderr).
fn debugfs(image: &Path, request: &str) -> (i32, String) {
    let root = partitions(image)
        .into_iter()
        .find(|o| {
            sh_status(&format!(
                "debugfs -R 'stat /etc/rancher/k3s/config.yaml' {}?offset={o}",
                q(image)
            ))
            .1
            .contains("Inode:")
        })
        .expect("no partition holds /etc/rancher/k3s/config.yaml");
    sh_status(&format!(
        "debugfs -R '{request}' {}?offset={root}",
        q(image)
    ))
}

// ---- the only server ----

#[test]
fn the_only_server_is_refused_and_nothing_is_flashed() {
    let ws = Ws::new(Kind::Single);
    let fake = ws.api();
    for out in [
        ws.deploy(&fake.url(), &[]),
        ws.flash("node01", &fake.url(), &[]),
    ] {
        let t = expect(&out, 1);
        assert!(
            t.contains("refusing to flash node01: it is the cluster's only server")
                && t.contains("every object of cluster homelab is lost: 4 node(s) registered")
                && t.contains("a `storage:` entry mounted at /var/lib/rancher in ")
                && t.contains("pass --reset-cluster"),
            "{t}"
        );
    }
    assert!(ws.flashed().is_empty());
    let reqs = fake.requests();
    assert!(
        reqs.iter()
            .all(|r| r.contains(" GET ") && !r.contains("/pods")),
        "{reqs:#?}"
    );
    assert!(!cordoned(&fake, "node01"));
}

#[test]
fn reset_cluster_reflashes_the_only_server_into_an_empty_cluster() {
    let ws = Ws::new(Kind::Single);
    let fake = ws.api();
    // Without --yes (and no terminal to ask on) nothing happens; the
    // question names what would be lost.
    let url = fake.url();
    let out = ws.run(&[
        "deploy",
        "--server",
        &url,
        "--reset-cluster",
        "--nodes",
        "node01",
    ]);
    let t = expect(&out, 2);
    assert!(
        t.contains("node01 is the only server of cluster homelab: re-flashing it deletes the cluster's datastore (every API object; 4 node(s) registered)")
            && t.contains("anyway?")
            && t.contains("pass --yes"),
        "{t}"
    );
    assert!(ws.flashed().is_empty());
    assert!(!cordoned(&fake, "node01"));
    let out = ws.deploy(&url, &["--reset-cluster", "--nodes", "node01,node02"]);
    let t = expect(&out, 0);
    assert_eq!(ws.flashed(), [1, 2], "{t}");
    let f = flashes(&fake);
    assert_eq!(f[0], ("node01".to_string(), Outcome::Empty), "{f:?}");
    // node02's Node went with the old datastore; its flash registers it
    // anew in the new cluster.
    assert_eq!(f[1], ("node02".to_string(), Outcome::Back), "{f:?}");
    assert!(fake.node_obj("node03").is_none());
    assert_eq!(
        annotation(&fake, "node01", INSTANCE),
        Some(ws.instance("node01"))
    );
    assert!(!cordoned(&fake, "node01") && !cordoned(&fake, "node02"));
}

// ---- HA servers ----

#[test]
fn an_ha_server_leaves_etcd_then_is_flashed_and_votes_again() {
    let ws = Ws::new(Kind::Ha);
    let fake = ws.api();
    let member = annotation(&fake, "node02", MEMBER).unwrap();
    let out = ws.deploy(&fake.url(), &["--nodes", "node02"]);
    let t = expect(&out, 0);
    assert_eq!(ws.flashed(), [2], "{t}");
    assert_eq!(flashes(&fake), [("node02".to_string(), Outcome::Back)]);
    // In this order: preflight, cordon, drain, member removal (and its
    // completion), the flash, the wait, uncordon, the instance.
    let reqs = fake.requests();
    let ready = pos(&reqs, "GET /readyz");
    let listed = ready
        + reqs[ready..]
            .iter()
            .position(|r| r.ends_with("GET /api/v1/nodes"))
            .unwrap();
    let cordon = pos_from(&reqs, listed, &cordon("node02"));
    let pods = pos_from(
        &reqs,
        cordon,
        "GET /api/v1/pods?fieldSelector=spec.nodeName%3Dnode02",
    );
    let removal = pos_from(&reqs, pods, &remove("node02"));
    let removed = pos_from(&reqs, removal, "GET /api/v1/nodes/node02");
    let flash = pos_from(&reqs, removed, "- FLASH node02");
    let waited = pos_from(&reqs, flash, "/api/v1/nodes/node02");
    let uncordon = pos_from(&reqs, waited, &uncordon("node02"));
    let recorded = pos_from(&reqs, uncordon, INSTANCE);
    assert!(recorded > uncordon);
    // k3s's member controller took the old member out; the server came back
    // as a new, voting member and the controller cleared the removal.
    let n = fake.node_obj("node02").unwrap();
    assert!(voter(&fake, "node02"), "{n:#}");
    assert_ne!(annotation(&fake, "node02", MEMBER), Some(member));
    assert_eq!(
        annotation(&fake, "node02", REMOVE).as_deref(),
        Some("false")
    );
    assert!(n["metadata"]["annotations"]["etcd.k3s.cattle.io/removed-node-name"].is_null());
    assert!(!cordoned(&fake, "node02"));
    assert_eq!(
        annotation(&fake, "node02", INSTANCE),
        Some(ws.instance("node02"))
    );
    // The others were never touched.
    assert!(
        !reqs
            .iter()
            .any(|r| r.contains(" PATCH /api/v1/nodes/node01"))
    );
    assert!(t.contains("node02: etcd member"), "{t}");
}

#[test]
fn an_ha_server_is_refused_with_two_voters() {
    let ws = Ws::new(Kind::Ha);
    let fake = ws.api();
    // node03 is gone: two voters left.
    fake.with(|c| c.nodes.remove("node03"));
    for out in [
        ws.deploy(&fake.url(), &[]),
        ws.flash("node02", &fake.url(), &[]),
    ] {
        let t = expect(&out, 1);
        assert!(
            t.contains("refusing to flash server node0")
                && t.contains("exactly 2 etcd members (node0")
                && t.contains("add a third server first"),
            "{t}"
        );
    }
    assert!(ws.flashed().is_empty());
    assert!(!fake.requests().iter().any(|r| r.contains(" PATCH ")));
}

#[test]
fn the_cluster_init_server_is_reflashed_as_a_joiner() {
    let ws = Ws::new(Kind::Ha);
    let fake = ws.api();
    ws.build("node01");
    let artifact = ws.image("node01");
    let before = sha256(&artifact);
    // As built, it founds a cluster.
    let built = image::read(&artifact);
    assert!(
        built.cluster_init && built.server_url.is_none(),
        "{built:?}"
    );
    let (_, tls) = debugfs(&artifact, "ls -p /var/lib/rancher/k3s/server/tls");
    assert!(tls.contains("/server-ca.crt/"), "{tls}");

    let out = ws.deploy(&fake.url(), &["--nodes", "node01"]);
    let t = expect(&out, 0);
    assert_eq!(ws.flashed(), [1], "{t}");
    // What the BMC received joins through the VIP and carries no CA set; the
    // auto-deploy manifests stay (k3s deletes what a removed file made).
    let got = ws.bmc.slot_file(1);
    let facts = image::read(&got);
    assert!(!facts.cluster_init, "{facts:?}");
    assert_eq!(
        facts.server_url.as_deref(),
        Some("https://192.168.1.100:6443")
    );
    let (_, config) = debugfs(&got, "cat /etc/rancher/k3s/config.yaml");
    assert!(
        config.contains("server: https://192.168.1.100:6443")
            || config.contains("server: \"https://192.168.1.100:6443\""),
        "{config}"
    );
    assert!(!config.contains("cluster-init"), "{config}");
    let (_, tls) = debugfs(&got, "ls -p /var/lib/rancher/k3s/server/tls");
    assert!(!tls.contains(".crt/") && !tls.contains(".key/"), "{tls}");
    let (_, manifests) = debugfs(&got, "ls -p /var/lib/rancher/k3s/server/manifests");
    assert!(manifests.contains("imgbuild-kube-vip.yaml"), "{manifests}");
    // Its provenance says so; the artifact itself is unchanged.
    let p = &ws.inspect(&got)["provenance"];
    assert_eq!(p["joined"], "https://192.168.1.100:6443", "{p:#}");
    assert_eq!(p["instance_id"], ws.instance("node01").as_str());
    assert_eq!(sha256(&artifact), before);
    // k3s joined it (not a second cluster) and it votes again.
    assert_eq!(flashes(&fake), [("node01".to_string(), Outcome::Back)]);
    assert!(voter(&fake, "node01"));
    assert_eq!(fake.with(|c| c.nodes.len()), 4);
}

#[test]
fn without_a_vip_a_server_joins_through_another_voter_never_itself() {
    // cluster.server is node01 itself, as without a VIP it usually is.
    let ws = Ws::edited(Kind::Ha, |p| {
        let f = p.join("cluster.yaml");
        let t = std::fs::read_to_string(&f).unwrap();
        let start = t.find("  vip:\n").unwrap();
        let end = start + t[start..].find("services_range:").unwrap();
        let end = end + t[end..].find('\n').unwrap() + 1;
        let t = format!("{}{}", &t[..start], &t[end..]).replacen(
            "server: 192.168.1.100",
            "server: 192.168.1.101",
            1,
        );
        std::fs::write(&f, t).unwrap();
    });
    let fake = ws.api();
    for (n, i) in [("node01", 101), ("node02", 102), ("node03", 103)] {
        fake.with(|c| {
            c.edit_node(n, |v| {
                v["status"]["addresses"][0]["address"] = format!("192.168.1.{i}").into();
            })
        });
    }
    expect(&ws.deploy(&fake.url(), &["--nodes", "node01"]), 0);
    let facts = image::read(&ws.bmc.slot_file(1));
    assert!(!facts.cluster_init, "{facts:?}");
    assert_eq!(
        facts.server_url.as_deref(),
        Some("https://192.168.1.102:6443")
    );
    assert_eq!(flashes(&fake), [("node01".to_string(), Outcome::Back)]);
    assert!(voter(&fake, "node01"));
}

/// Adds a data disk mounted at `mount` to `node`'s profile.
fn data_disk(profiles: &Path, node: &str, mount: &str) {
    let f = profiles.join(format!("nodes/{node}.yaml"));
    let mut t = std::fs::read_to_string(&f).unwrap();
    t.push_str(&format!(
        "storage:\n  - device: /dev/disk/by-id/nvme-Samsung_SSD_980_1TB_S64DNX0R123456\n    mount: {mount}\n"
    ));
    std::fs::write(&f, t).unwrap();
}

#[test]
fn a_server_with_its_data_on_a_data_disk_keeps_its_member() {
    let ws = Ws::edited(Kind::Ha, |p| {
        data_disk(p, "node02", "/var/lib/rancher");
        // A disk under k3s's data directory that does not hold etcd.
        data_disk(p, "node03", "/var/lib/rancher/k3s/storage");
    });
    let fake = ws.api();
    let member = annotation(&fake, "node02", MEMBER).unwrap();
    let out = ws.deploy(&fake.url(), &["--nodes", "node02,node03"]);
    let t = expect(&out, 0);
    assert_eq!(ws.flashed(), [2, 3], "{t}");
    // node02: no removal; k3s starts on its kept data as the same member (a
    // removed member's data would crash-loop: "not a member of the etcd
    // cluster"). node03's etcd was on the wiped root: its member went first.
    let reqs = fake.requests();
    assert!(
        !reqs.iter().any(|r| r.contains(&remove("node02"))),
        "{reqs:#?}"
    );
    assert!(
        reqs.iter().any(|r| r.contains(&remove("node03"))),
        "{reqs:#?}"
    );
    assert_eq!(
        flashes(&fake),
        [
            ("node02".to_string(), Outcome::Back),
            ("node03".to_string(), Outcome::Back)
        ]
    );
    assert_eq!(annotation(&fake, "node02", MEMBER), Some(member));
    assert!(voter(&fake, "node02") && voter(&fake, "node03"));
}

#[test]
fn the_only_server_with_its_data_on_a_data_disk_is_flashed() {
    let ws = Ws::edited(Kind::Single, |p| data_disk(p, "node01", "/var/lib/rancher"));
    let fake = ws.api();
    let t = expect(&ws.deploy(&fake.url(), &["--nodes", "node01"]), 0);
    assert_eq!(ws.flashed(), [1], "{t}");
    // Its datastore came back with it: the cluster kept every node.
    assert_eq!(flashes(&fake), [("node01".to_string(), Outcome::Back)]);
    assert_eq!(fake.with(|c| c.nodes.len()), 4);
    assert!(voter(&fake, "node01"));
}

// ---- drain ----

#[test]
fn a_drain_retries_a_budget_then_gives_up_naming_it() {
    let ws = Ws::new(Kind::Single);
    let fake = ws.api();
    fake.add_pod(pod("default", "web", "node02", Some("ReplicaSet")));
    fake.add_pdb("default", "web-pdb", "web", u32::MAX);
    let out = ws.deploy(&fake.url(), &["--nodes", "node02", "--drain-timeout", "2s"]);
    let t = expect(&out, 1);
    assert!(
        t.contains("PodDisruptionBudget web-pdb")
            && t.contains("default/web")
            && t.contains("node02 is left cordoned")
            && t.contains("kubectl uncordon node02"),
        "{t}"
    );
    let refused = fake.with(|c| c.refused_evictions);
    assert!(refused >= 3, "retried only {refused} time(s): {t}");
    assert!(ws.flashed().is_empty());
    assert!(cordoned(&fake, "node02"));

    // The budget lets it go after two more refusals: the same command goes on.
    fake.with(|c| c.pdbs[0].refusals = 2);
    let out = ws.deploy(
        &fake.url(),
        &["--nodes", "node02", "--drain-timeout", "10s"],
    );
    let t = expect(&out, 0);
    assert_eq!(ws.flashed(), [2], "{t}");
    assert_eq!(fake.with(|c| c.evicted.clone()), ["default/web"]);
    assert!(!cordoned(&fake, "node02"));
}

#[test]
fn daemonset_and_mirror_pods_are_left_alone() {
    let ws = Ws::new(Kind::Single);
    let fake = ws.api();
    fake.add_pod(pod("kube-system", "svclb-web", "node03", Some("DaemonSet")));
    let mut mirror = pod("kube-system", "static-web", "node03", Some("Node"));
    mirror["metadata"]["annotations"]["kubernetes.io/config.mirror"] = "abc".into();
    fake.add_pod(mirror);
    fake.add_pod(pod("default", "web", "node03", Some("ReplicaSet")));
    // A pod on another node is not this drain's business.
    fake.add_pod(pod("default", "other", "node04", Some("ReplicaSet")));
    let ds_uid = fake
        .with(|c| c.pods[&("kube-system".into(), "svclb-web".into())]["metadata"]["uid"].clone());
    let out = ws.deploy(&fake.url(), &["--nodes", "node03"]);
    let t = expect(&out, 0);
    assert_eq!(ws.flashed(), [3], "{t}");
    assert_eq!(fake.with(|c| c.evicted.clone()), ["default/web"]);
    let reqs = fake.requests();
    assert_eq!(
        reqs.iter().filter(|r| r.contains("/eviction")).count(),
        1,
        "{reqs:#?}"
    );
    fake.with(|c| {
        // The DaemonSet pod stayed until the reboot, which restarted it.
        let ds = &c.pods[&("kube-system".into(), "svclb-web".into())];
        assert_ne!(ds["metadata"]["uid"], ds_uid);
        assert!(
            c.pods
                .contains_key(&("kube-system".into(), "static-web".into()))
        );
        assert!(c.pods.contains_key(&("default".into(), "other".into())));
        assert!(!c.pods.contains_key(&("default".into(), "web".into())));
    });
    assert!(!cordoned(&fake, "node03"));
}

#[test]
fn an_unmanaged_pod_stops_the_drain_unless_allowed() {
    let ws = Ws::new(Kind::Single);
    let fake = ws.api();
    fake.add_pod(pod("default", "debug", "node04", None));
    let out = ws.deploy(&fake.url(), &["--nodes", "node04"]);
    let t = expect(&out, 1);
    assert!(
        t.contains("default/debug: no controller will recreate it")
            && t.contains("node04 is left cordoned"),
        "{t}"
    );
    assert!(ws.flashed().is_empty());
    assert!(fake.with(|c| c.evicted.is_empty()));
    let out = ws.deploy(&fake.url(), &["--nodes", "node04", "--drain-unmanaged"]);
    expect(&out, 0);
    assert_eq!(fake.with(|c| c.evicted.clone()), ["default/debug"]);
    assert!(!cordoned(&fake, "node04"));
}

#[test]
fn an_interrupted_drain_resumes_and_uncordons_at_the_end() {
    let ws = Ws::new(Kind::Single);
    let fake = ws.api();
    fake.add_pod(pod("default", "web", "node02", Some("ReplicaSet")));
    fake.add_pdb("default", "web-pdb", "web", u32::MAX);
    let url = fake.url();
    let child = ws
        .cmd(&[
            "deploy",
            "--yes",
            "--skip-crc",
            "--server",
            &url,
            "--interval",
            "200ms",
            "--drain-timeout",
            "60s",
            "--nodes",
            "node02",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while fake.with(|c| c.refused_evictions) < 2 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no eviction seen"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Ctrl-C in the middle of the drain.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    let t = expect(&out, 130);
    assert!(t.contains("node02 is left cordoned"), "{t}");
    assert!(ws.flashed().is_empty());
    assert!(cordoned(&fake, "node02"));
    let leftovers: Vec<String> = std::fs::read_dir(ws.path().join("dist"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".imgbuild-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // The budget allows it now; the same command continues with node02
    // (the node01 refusal aside: only the agents are deployed).
    fake.with(|c| c.pdbs[0].refusals = 0);
    let out = ws.deploy(&url, &["--nodes", "node02,node03,node04"]);
    let t = expect(&out, 0);
    assert_eq!(ws.flashed(), [2, 3, 4], "{t}");
    for n in ["node02", "node03", "node04"] {
        assert!(!cordoned(&fake, n), "{n}");
    }
}

#[test]
fn an_agent_that_is_down_is_flashed_without_a_drain() {
    let ws = Ws::new(Kind::Single);
    let fake = ws.api();
    fake.add_pod(pod("default", "web", "node03", Some("ReplicaSet")));
    fake.with(|c| {
        c.edit_node("node03", |n| {
            n["status"]["conditions"][0]["status"] = "Unknown".into();
            n["status"]["conditions"][0]["reason"] = "NodeStatusUnknown".into();
        })
    });
    let out = ws.deploy(&fake.url(), &["--nodes", "node03", "--drain-timeout", "2s"]);
    let t = expect(&out, 0);
    assert!(
        t.contains("node03: not Ready, so its pods cannot be evicted"),
        "{t}"
    );
    assert_eq!(ws.flashed(), [3]);
    assert!(!fake.requests().iter().any(|r| r.contains("/eviction")));
    assert!(!cordoned(&fake, "node03"));
    assert_eq!(
        annotation(&fake, "node03", INSTANCE),
        Some(ws.instance("node03"))
    );
}

#[test]
fn a_node_flashed_by_a_run_that_stopped_is_finished_not_flashed_again() {
    let ws = Ws::new(Kind::Single);
    let fake = ws.api();
    // It boots slower than this deploy waits.
    fake.with(|c| c.boot_delay = Duration::from_secs(3));
    let out = ws.deploy(&fake.url(), &["--nodes", "node02", "--timeout", "1s"]);
    let t = expect(&out, 1);
    assert!(
        t.contains("node02 was flashed but did not come back")
            && t.contains("node02 is left cordoned"),
        "{t}"
    );
    assert_eq!(ws.flashed(), [2]);
    assert!(cordoned(&fake, "node02"));
    // The same command again: the image is on it already; it is waited
    // for, uncordoned and recorded, not flashed again.
    let out = ws.deploy(&fake.url(), &["--nodes", "node02"]);
    let t = expect(&out, 0);
    assert!(
        t.contains("node02: already flashed with this image by an earlier run"),
        "{t}"
    );
    assert_eq!(ws.flashed(), [2]);
    assert!(!cordoned(&fake, "node02"));
    assert_eq!(
        annotation(&fake, "node02", INSTANCE),
        Some(ws.instance("node02"))
    );
}

// ---- skips, --force, skew ----

#[test]
fn a_node_at_its_instance_is_skipped_unless_forced() {
    let ws = Ws::new(Kind::Single);
    let fake = ws.api();
    ws.record_instances(&fake);
    let out = ws.flash("node02", &fake.url(), &[]);
    let t = expect(&out, 0);
    assert!(
        t.contains(&format!(
            "node02: Ready and already runs instance {} (--force re-flashes it); skipping",
            ws.instance("node02")
        )),
        "{t}"
    );
    // deploy from a fresh clone (no local state): every node is skipped,
    // node01 too (a skip needs no refusal).
    let out = ws.deploy(&fake.url(), &[]);
    expect(&out, 0);
    assert!(ws.flashed().is_empty());
    assert!(!fake.requests().iter().any(|r| r.contains(" PATCH ")));

    // An old instance: re-flashed, and the new one recorded.
    fake.with(|c| {
        c.edit_node("node03", |n| {
            n["metadata"]["annotations"][INSTANCE] = "homelab-node03-older".into();
        })
    });
    let out = ws.deploy(&fake.url(), &["--nodes", "node02,node03"]);
    expect(&out, 0);
    assert_eq!(ws.flashed(), [3]);
    assert_eq!(
        annotation(&fake, "node03", INSTANCE),
        Some(ws.instance("node03"))
    );

    let out = ws.flash("node02", &fake.url(), &["--force"]);
    expect(&out, 0);
    assert_eq!(ws.flashed(), [3, 2]);
    // deploy --force as well, whatever the local state says.
    let out = ws.deploy(&fake.url(), &["--nodes", "node02,node03", "--force"]);
    expect(&out, 0);
    assert_eq!(ws.flashed(), [3, 2, 2, 3]);
}

#[test]
fn version_skew_is_refused_before_anything_is_flashed() {
    let ws = Ws::new(Kind::Single);
    let fake = ws.api();
    let set = |node: &str, v: &str| {
        fake.with(|c| {
            c.edit_node(node, |n| {
                n["status"]["nodeInfo"]["kubeletVersion"] = v.into();
            })
        })
    };
    // Servers two minors behind the image: one minor at a time.
    for (n, _, _) in NODES {
        set(n, "v1.30.4+k3s1");
    }
    let t = expect(&ws.deploy(&fake.url(), &["--reset-cluster"]), 1);
    assert!(
        t.contains("refusing the deploy: server node01 runs v1.30 and its image has v1.32")
            && t.contains("deploy a v1.31 image to every server first"),
        "{t}"
    );
    // Agents before the servers: a kubelet newer than its API server.
    for (n, _, _) in NODES {
        set(n, "v1.31.9+k3s1");
    }
    let t = expect(&ws.deploy(&fake.url(), &["--nodes", "node02"]), 1);
    assert!(
        t.contains("agent node02 would run v1.32 while server node01 runs v1.31")
            && t.contains("upgrade the servers first"),
        "{t}"
    );
    // A downgrade.
    for (n, _, _) in NODES {
        set(n, "v1.33.1+k3s1");
    }
    let t = expect(&ws.deploy(&fake.url(), &["--nodes", "node02"]), 1);
    assert!(
        t.contains("does not support going back a minor version"),
        "{t}"
    );
    assert!(ws.flashed().is_empty());
    assert!(!fake.requests().iter().any(|r| r.contains(" PATCH ")));
}

// ---- the API down ----

#[test]
fn servers_are_refused_while_the_api_of_a_cluster_seen_up_is_down() {
    let ws = Ws::new(Kind::Single);
    let down = closed_url();
    // Day one: nothing from these secrets was ever up; the flash goes ahead.
    let t = expect(&ws.deploy(&down, &["--nodes", "node01"]), 0);
    assert!(t.contains("none was seen up before: a new cluster"), "{t}");
    assert_eq!(ws.flashed(), [1]);
    // Its flash completed: from now on the cluster is known to have been up.
    let marker = std::fs::read_to_string(ws.secrets().join("cluster/established")).unwrap();
    assert!(marker.contains("server node01 flashed"), "{marker}");

    let t = expect(&ws.flash("node01", &down, &[]), 1);
    assert!(
        t.contains(
            "refusing to flash server node01: the cluster was up before (server node01 flashed"
        ) && t.contains("does not answer now")
            && t.contains("restore from a snapshot")
            && t.contains("--new-cluster"),
        "{t}"
    );
    assert_eq!(ws.flashed(), [1]);
    // Agents can be flashed either way.
    expect(&ws.flash("node02", &down, &[]), 0);
    assert_eq!(ws.flashed(), [1, 2]);
    // The user starts over.
    expect(&ws.flash("node01", &down, &["--new-cluster"]), 0);
    assert_eq!(ws.flashed(), [1, 2, 1]);
}

#[test]
fn a_server_seen_ready_marks_the_cluster_up() {
    let ws = Ws::new(Kind::Single);
    let fake = ws.api();
    let out = ws.run(&["wait", "node01", "--server", &fake.url(), "--timeout", "5s"]);
    expect(&out, 0);
    assert!(ws.secrets().join("cluster/established").is_file());
    drop(fake);
    let t = expect(&ws.deploy(&closed_url(), &[]), 1);
    assert!(t.contains("a server seen Ready"), "{t}");
    assert!(ws.flashed().is_empty());
}

// ---- the whole rolling deploy ----

#[test]
fn a_rolling_deploy_of_an_ha_cluster_keeps_quorum_and_a_second_one_flashes_nothing() {
    let ws = Ws::new(Kind::Ha);
    let fake = ws.api();
    // An upgrade: the cluster runs v1.31, the images bring v1.32.
    for (n, _, _) in NODES {
        fake.with(|c| {
            c.edit_node(n, |v| {
                v["status"]["nodeInfo"]["kubeletVersion"] = "v1.31.9+k3s1".into();
            })
        });
    }
    fake.add_pod(pod("default", "web", "node04", Some("ReplicaSet")));
    let out = ws.deploy(&fake.url(), &["--wait", "--json"]);
    let t = expect(&out, 0);
    assert_eq!(ws.flashed(), [1, 2, 3, 4], "{t}");
    let outcomes: Vec<Outcome> = flashes(&fake).into_iter().map(|(_, o)| o).collect();
    assert_eq!(outcomes, vec![Outcome::Back; 4], "{t}");
    // One server at a time: the next server's removal only once the previous
    // one is back and recorded; the agent after every server.
    let reqs = fake.requests();
    let mut at = 0;
    for n in ["node01", "node02", "node03"] {
        at = pos_from(&reqs, at, &remove(n));
        at = pos_from(&reqs, at, &format!("- FLASH {n}"));
        at = pos_from(&reqs, at, &uncordon(n));
        at = pos_from(
            &reqs,
            at,
            &format!("PATCH /api/v1/nodes/{n} {{\"metadata\":{{\"annotations\":{{\"{INSTANCE}\""),
        );
    }
    pos_from(&reqs, at, &cordon("node04"));
    for (n, _, _) in NODES {
        assert_eq!(annotation(&fake, n, INSTANCE), Some(ws.instance(n)));
        assert!(!cordoned(&fake, n));
        let v = fake.node_obj(n).unwrap();
        assert_eq!(v["status"]["nodeInfo"]["kubeletVersion"], "v1.32.5+k3s1");
    }
    let j: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["wait"]["ready"], 4, "{j:#}");

    // Right after: nothing to do.
    let out = ws.deploy(&fake.url(), &["--wait", "--json"]);
    let t = expect(&out, 0);
    assert_eq!(ws.flashed(), [1, 2, 3, 4], "{t}");
    let j: Value = serde_json::from_slice(&out.stdout).unwrap();
    let results: Vec<&str> = j["deploy"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["result"].as_str().unwrap())
        .collect();
    assert_eq!(results, ["skipped"; 4], "{j:#}");
    // From a fresh clone too (no local state): the cluster says so.
    std::fs::remove_file(ws.path().join("dist/.deploy-state.json")).unwrap();
    let before = fake.requests().len();
    let t = expect(&ws.deploy(&fake.url(), &[]), 0);
    assert_eq!(ws.flashed(), [1, 2, 3, 4], "{t}");
    assert!(
        !fake.requests()[before..]
            .iter()
            .any(|r| r.contains(" PATCH ")),
        "{t}"
    );
}
