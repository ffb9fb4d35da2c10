//! The Kubernetes layer that re-flashing a running cluster stands on
//! (`imgbuild::kube`: admin API, drain, etcd membership, quorum, skew, the
//! client's caps), against the stateful fake k3s API over TLS with the
//! cluster's own CA. What a flash does is decided by the fake from the
//! image's ext4 (read with debugfs), as k3s would decide it.

mod support {
    pub mod harness;
    pub mod k3s_api;
}

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use imgbuild::kube::drain::{DrainOptions, drain};
use imgbuild::kube::etcd::{remove_member, wait_voter};
use imgbuild::kube::skew::{Change, KubeVersion, Role, SkewRefusal, check_rollout};
use imgbuild::kube::{
    AdminApi, Api, ApiConfig, ApiError, ClusterView, DrainError, EtcdError, PatchKind, QuorumOk,
    QuorumRefusal,
};
use imgbuild::secrets::Secrets;
use imgbuild::secrets::client::{ADMIN_GROUP, ADMIN_USER, NODE_READER_USER};
use serde_json::json;
use support::harness::{q, scratch};
use support::k3s_api::cluster::pod;
use support::k3s_api::{FakeCluster, Outcome, Signer};

/// A secrets directory with the cluster's CA set, and a fake API serving
/// with its server CA.
struct Env {
    dir: tempfile::TempDir,
    fake: FakeCluster,
}

impl Env {
    fn new() -> Env {
        let dir = scratch();
        let secrets = dir.path().join("secrets");
        Secrets::open(&secrets)
            .unwrap()
            .cluster(1_714_003_200)
            .unwrap();
        let fake = FakeCluster::start(Signer::Cluster(&secrets), &secrets);
        fake.with(|c| {
            c.member_delay = Duration::from_millis(150);
            c.boot_delay = Duration::from_millis(200);
            c.pod_grace = Duration::from_millis(150);
        });
        Env { dir, fake }
    }

    fn config(&self, user: &str, group: Option<&str>) -> ApiConfig {
        let s = Secrets::open(&self.dir.path().join("secrets")).unwrap();
        ApiConfig {
            url: self.fake.url(),
            server_ca_pem: s.existing_tls("server-ca.crt").unwrap(),
            client: s
                .mint_client(user, group, Duration::from_secs(3600), SystemTime::now())
                .unwrap(),
            request_timeout: Duration::from_secs(5),
        }
    }

    fn admin(&self) -> AdminApi {
        AdminApi::new(&self.config(ADMIN_USER, Some(ADMIN_GROUP))).unwrap()
    }

    fn reader(&self) -> Api {
        Api::new(&self.config(NODE_READER_USER, None)).unwrap()
    }

    fn view(&self) -> ClusterView {
        ClusterView::fetch(&self.reader(), Duration::from_secs(5)).unwrap()
    }

    /// An image whose root holds this k3s configuration (and a FAT seed
    /// whose user-data mounts `mount`, when given).
    fn image(&self, name: &str, config: &str, node_yaml: &str, mount: Option<&str>) -> PathBuf {
        build_image(self.dir.path(), name, config, node_yaml, mount)
    }
}

const T: Duration = Duration::from_secs(10);
const TICK: Duration = Duration::from_millis(100);

/// A GPT disk image like a baked one: p1 a FAT seed (CIDATA), p2 an ext4
/// root made by mkfs.ext4 from a tree holding the k3s configuration.
fn build_image(
    dir: &Path,
    name: &str,
    config: &str,
    node_yaml: &str,
    mount: Option<&str>,
) -> PathBuf {
    let work = dir.join(format!("{name}-work"));
    let tree = work.join("root");
    std::fs::create_dir_all(tree.join("etc/rancher/k3s/config.yaml.d")).unwrap();
    std::fs::write(tree.join("etc/rancher/k3s/config.yaml"), config).unwrap();
    std::fs::write(
        tree.join("etc/rancher/k3s/config.yaml.d/10-node.yaml"),
        node_yaml,
    )
    .unwrap();
    let user_data = match mount {
        Some(m) => {
            format!("#cloud-config\nmounts:\n  - [LABEL=data, {m}, ext4, defaults, \"0\", \"2\"]\n")
        }
        None => "#cloud-config\n".to_string(),
    };
    std::fs::write(work.join("user-data"), user_data).unwrap();
    let img = dir.join(format!("{name}.img"));
    let script = format!(
        "set -e; cd {w}; truncate -s 8M seed.fat; mkfs.vfat -n CIDATA seed.fat >/dev/null; \
         MTOOLS_SKIP_CHECK=1 mcopy -i seed.fat user-data ::/user-data; \
         truncate -s 24M root.ext4; mkfs.ext4 -q -F -L writable -d root root.ext4; \
         rm -f {i}; truncate -s 40M {i}; sgdisk -n 1:2048:+8M -n 2:0:0 {i} >/dev/null; \
         dd if=seed.fat of={i} bs=512 seek=2048 conv=notrunc status=none; \
         dd if=root.ext4 of={i} bs=512 seek=18432 conv=notrunc status=none",
        w = q(&work),
        i = q(&img)
    );
    let out = Command::new("sh").arg("-c").arg(&script).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    img
}

const INIT: &str = "cluster-init: true\ntoken-file: /etc/rancher/k3s/token\nagent-token-file: /etc/rancher/k3s/agent-token\ntls-san: [192.168.1.100]\n";
const JOIN: &str = "server: https://192.168.1.100:6443\ntoken-file: /etc/rancher/k3s/token\nagent-token-file: /etc/rancher/k3s/agent-token\ntls-san: [192.168.1.100]\n";
const AGENT: &str = "server: https://192.168.1.100:6443\ntoken-file: /etc/rancher/k3s/token\n";

fn node_yaml(name: &str) -> String {
    format!("node-name: {name}\nnode-label+:\n  - \"node-type=rk1\"\n")
}

fn annotation(node: &serde_json::Value, key: &str) -> Option<String> {
    node["metadata"]["annotations"][key]
        .as_str()
        .map(str::to_string)
}

fn condition(node: &serde_json::Value, kind: &str) -> String {
    node["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == kind)
        .map(|c| c["status"].as_str().unwrap().to_string())
        .unwrap_or_default()
}

/// Waits (briefly) until the fake has booted every flashed node.
fn settle(env: &Env, flashes: usize) {
    let start = Instant::now();
    while env.fake.with(|c| c.flashes.len()) < flashes {
        assert!(start.elapsed() < T, "the flashed node never booted");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn cordon_annotate_and_patch_need_the_admin() {
    let env = Env::new();
    env.fake.add_server("s1");
    let admin = env.admin();
    let n = admin.cordon("s1", T).unwrap();
    assert!(n.spec.unschedulable);
    assert_eq!(
        env.fake.node_obj("s1").unwrap()["spec"]["unschedulable"],
        true
    );
    admin.record_instance("s1", "i-20240425-abc", T).unwrap();
    assert_eq!(
        env.reader().node("s1", T).unwrap().unwrap().instance_id(),
        Some("i-20240425-abc")
    );
    let n = admin.uncordon("s1", T).unwrap();
    assert!(!n.spec.unschedulable);
    assert!(
        env.fake.node_obj("s1").unwrap()["spec"]
            .get("unschedulable")
            .is_none()
    );
    admin
        .annotate("s1", "imgbuild.dev/instance-id", None, T)
        .unwrap();
    assert!(
        annotation(
            &env.fake.node_obj("s1").unwrap(),
            "imgbuild.dev/instance-id"
        )
        .is_none()
    );
    // Strategic merge: taints merge by key.
    for t in ["a", "b", "a"] {
        admin
            .patch_node(
                "s1",
                &json!({"spec": {"taints": [{"key": t, "effect": "NoSchedule"}]}}),
                PatchKind::Strategic,
                T,
            )
            .unwrap();
    }
    let taints: Vec<String> = env.fake.node_obj("s1").unwrap()["spec"]["taints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["key"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(taints, ["b", "a"]);
    let reqs = env.fake.requests();
    assert!(
        reqs.iter()
            .any(|r| r.starts_with("imgbuild-admin PATCH /api/v1/nodes/s1")),
        "{reqs:#?}"
    );
    // No such node; a name that is no name is never sent.
    assert!(matches!(
        admin.cordon("nope", T),
        Err(ApiError::Http { status: 404, .. })
    ));
    assert!(matches!(
        admin.cordon("../x", T),
        Err(ApiError::InvalidName { .. })
    ));

    // The node reader cannot become an AdminApi.
    let e = AdminApi::new(&env.config(NODE_READER_USER, None))
        .err()
        .unwrap();
    assert!(e.to_string().contains("system:masters"), "{e}");
}

/// A worker node with the pods kubectl drain meets.
fn workload(env: &Env) {
    env.fake.add_server("s1");
    env.fake.add_agent("a1");
    env.fake
        .add_pod(pod("default", "web-1", "a1", Some("ReplicaSet")));
    env.fake
        .add_pod(pod("default", "web-2", "s1", Some("ReplicaSet")));
    env.fake
        .add_pod(pod("kube-system", "svclb-traefik", "a1", Some("DaemonSet")));
    let mut mirror = pod("kube-system", "static-web-a1", "a1", None);
    mirror["metadata"]["annotations"]["kubernetes.io/config.mirror"] = "abc123".into();
    env.fake.add_pod(mirror);
    let mut done = pod("default", "backup-28591", "a1", None);
    done["status"]["phase"] = "Succeeded".into();
    env.fake.add_pod(done);
}

fn fast(timeout: Duration) -> DrainOptions {
    DrainOptions {
        timeout,
        retry_interval: Duration::from_millis(100),
        poll_interval: Duration::from_millis(50),
        ..DrainOptions::default()
    }
}

#[test]
fn drain_evicts_but_leaves_daemonset_and_mirror_pods() {
    let env = Env::new();
    workload(&env);
    let admin = env.admin();
    admin.cordon("a1", T).unwrap();
    let ds_uid = env.fake.with(|c| {
        c.pods[&("kube-system".into(), "svclb-traefik".into())]["metadata"]["uid"].clone()
    });
    let report = drain(&admin, "a1", &fast(T)).unwrap();
    assert_eq!(report.evicted, ["default/backup-28591", "default/web-1"]);
    let skipped: Vec<&str> = report.skipped.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(
        skipped,
        ["kube-system/static-web-a1", "kube-system/svclb-traefik"]
    );
    // Evicted pods are gone; the others are as they were (same UID) and
    // were never asked to go; web-2 on another node was not touched.
    env.fake.with(|c| {
        assert!(!c.pods.contains_key(&("default".into(), "web-1".into())));
        assert_eq!(
            c.pods[&("kube-system".into(), "svclb-traefik".into())]["metadata"]["uid"],
            ds_uid
        );
        assert!(c.pods.contains_key(&("default".into(), "web-2".into())));
        assert_eq!(c.evicted, ["default/backup-28591", "default/web-1"]);
    });
    let reqs = env.fake.requests();
    assert!(
        reqs.iter()
            .any(|r| r == "imgbuild-admin GET /api/v1/pods?fieldSelector=spec.nodeName%3Da1"),
        "{reqs:#?}"
    );
    let evictions: Vec<&String> = reqs.iter().filter(|r| r.contains("/eviction")).collect();
    assert_eq!(evictions.len(), 2, "{evictions:#?}");
    assert!(
        evictions
            .iter()
            .all(|r| !r.contains("svclb") && !r.contains("static-web"))
    );
}

#[test]
fn drain_refuses_emptydir_and_bare_pods_unless_allowed() {
    let env = Env::new();
    workload(&env);
    let mut cache = pod("default", "cache-1", "a1", Some("ReplicaSet"));
    cache["spec"]["volumes"] = json!([{"name": "scratch", "emptyDir": {}}]);
    env.fake.add_pod(cache);
    env.fake.add_pod(pod("default", "debug-shell", "a1", None));
    let admin = env.admin();
    let e = drain(&admin, "a1", &fast(T)).unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, DrainError::Refused { .. }), "{e}");
    assert!(
        text.contains("default/cache-1: it has emptyDir data"),
        "{text}"
    );
    assert!(
        text.contains("default/debug-shell: no controller will recreate it"),
        "{text}"
    );
    assert!(
        !env.fake.requests().iter().any(|r| r.contains("/eviction")),
        "evicted although refused"
    );
    let opts = DrainOptions {
        delete_emptydir_data: true,
        force: true,
        ..fast(T)
    };
    let report = drain(&admin, "a1", &opts).unwrap();
    assert_eq!(report.warnings.len(), 2, "{report:?}");
    assert!(report.evicted.contains(&"default/cache-1".to_string()));
}

#[test]
fn a_budget_is_retried_then_named_when_it_never_allows() {
    let env = Env::new();
    workload(&env);
    env.fake.add_pdb("default", "web-pdb", "web-1", 3);
    let admin = env.admin();
    let t0 = Instant::now();
    let report = drain(&admin, "a1", &fast(T)).unwrap();
    assert!(report.evicted.contains(&"default/web-1".to_string()));
    assert_eq!(env.fake.with(|c| c.refused_evictions), 3);
    assert!(
        t0.elapsed() >= Duration::from_millis(300),
        "no pause between retries"
    );

    let env = Env::new();
    workload(&env);
    env.fake.add_pdb("default", "web-pdb", "web-1", u32::MAX);
    let admin = env.admin();
    let t0 = Instant::now();
    let e = drain(&admin, "a1", &fast(Duration::from_secs(1))).unwrap_err();
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    let text = e.to_string();
    assert!(matches!(e, DrainError::Budget { .. }), "{text}");
    assert_eq!(e.budgets(), ["web-pdb"]);
    assert!(
        text.contains("default/web-1")
            && text.contains("PodDisruptionBudget web-pdb: The disruption budget web-pdb needs 2 healthy pods and has 2 currently"),
        "{text}"
    );
    assert!(env.fake.with(|c| c.refused_evictions) >= 3);
    // The pod the budget holds is still there.
    assert!(
        env.fake
            .with(|c| c.pods.contains_key(&("default".into(), "web-1".into())))
    );
}

fn ha(env: &Env) {
    for s in ["s1", "s2", "s3"] {
        env.fake.add_server(s);
    }
    env.fake.add_agent("a1");
}

#[test]
fn quorum_refuses_two_voters_one_member_and_unhealthy_members() {
    let env = Env::new();
    env.fake.add_server("s1");
    env.fake.add_agent("a1");
    let e = env.view().check_quorum("s1").unwrap_err();
    assert!(matches!(e, QuorumRefusal::SingleMember { .. }), "{e}");
    assert!(e.to_string().contains("every object is lost"), "{e}");

    env.fake.add_server("s2");
    let v = env.view();
    assert_eq!(v.voters().count(), 2);
    let e = v.check_quorum("s2").unwrap_err();
    assert_eq!(
        e,
        QuorumRefusal::TwoMembers {
            members: vec!["s2".into(), "s1".into()]
        }
    );
    assert!(
        e.to_string().contains("exactly 2 etcd members (s2, s1)"),
        "{e}"
    );
    assert_eq!(v.check_quorum("a1"), Ok(QuorumOk::NotAMember));

    env.fake.add_server("s3");
    assert_eq!(
        env.view().check_quorum("s2"),
        Ok(QuorumOk::Safe { members: 3 })
    );
    // A learner, then a member that is down.
    env.fake.with(|c| {
        c.edit_node("s3", |n| {
            n["status"]["conditions"][1] = json!({"type": "EtcdIsVoter", "status": "False",
                "reason": "MemberIsLearner", "message": "Node has not been promoted to voting member of the etcd cluster"});
        })
    });
    let e = env.view().check_quorum("s2").unwrap_err();
    assert!(
        matches!(e, QuorumRefusal::NotVoter { ref node, .. } if node == "s3"),
        "{e}"
    );
    assert!(e.to_string().contains("MemberIsLearner"), "{e}");
    env.fake.with(|c| {
        c.edit_node("s3", |n| {
            n["status"]["conditions"][1]["status"] = "True".into();
            n["status"]["conditions"][0] = json!({"type": "Ready", "status": "Unknown",
                "reason": "NodeStatusUnknown", "message": "Kubelet stopped posting node status."});
        })
    });
    let e = env.view().check_quorum("s2").unwrap_err();
    assert!(
        matches!(e, QuorumRefusal::NotReady { ref node, .. } if node == "s3"),
        "{e}"
    );
}

#[test]
fn a_removed_member_rejoins_and_votes_again() {
    let env = Env::new();
    ha(&env);
    let admin = env.admin();
    let before = env.fake.node_obj("s2").unwrap();
    let member = annotation(&before, "etcd.k3s.cattle.io/node-name").unwrap();
    let boot = before["status"]["nodeInfo"]["bootID"]
        .as_str()
        .unwrap()
        .to_string();
    assert_eq!(
        env.view().check_quorum("s2"),
        Ok(QuorumOk::Safe { members: 3 })
    );
    let removed = remove_member(&admin, "s2", T, TICK).unwrap();
    assert_eq!(removed, member);
    let n = env.fake.node_obj("s2").unwrap();
    assert_eq!(
        annotation(&n, "etcd.k3s.cattle.io/removed-node-name"),
        Some(member.clone())
    );
    assert_eq!(annotation(&n, "etcd.k3s.cattle.io/node-name"), None);
    assert_eq!(condition(&n, "EtcdIsVoter"), "False");
    // Asking again is answered from the Node; s2 counts as removed now.
    assert_eq!(remove_member(&admin, "s2", T, TICK).unwrap(), member);
    assert!(matches!(
        env.view().check_quorum("s1"),
        Err(QuorumRefusal::BeingRemoved { ref node }) if node == "s2"
    ));
    assert_eq!(
        env.view().check_quorum("s2"),
        Ok(QuorumOk::AlreadyRemoved {
            member: member.clone()
        })
    );
    // The re-flashed server joins (its image has `server:`): a new member
    // that votes; k3s's controller clears the removal annotations.
    let img = env.image("s2-join", JOIN, &node_yaml("s2"), None);
    assert_eq!(env.fake.flashed("s2", &img), Outcome::Back);
    let n = wait_voter(&env.reader(), "s2", Some(&boot), T, TICK).unwrap();
    assert_ne!(n.status.node_info.boot_id, boot);
    let n = env.fake.node_obj("s2").unwrap();
    let new_member = annotation(&n, "etcd.k3s.cattle.io/node-name").unwrap();
    assert!(
        new_member.starts_with("s2-") && new_member != member,
        "{new_member}"
    );
    assert_eq!(annotation(&n, "etcd.k3s.cattle.io/removed-node-name"), None);
    assert_eq!(
        annotation(&n, "etcd.k3s.cattle.io/remove").as_deref(),
        Some("false")
    );
    assert_eq!(
        env.view().check_quorum("s1"),
        Ok(QuorumOk::Safe { members: 3 })
    );
    // The order the API saw: the removal PATCH before the voter was awaited.
    let reqs = env.fake.requests();
    let patch = reqs
        .iter()
        .position(|r| r.starts_with("imgbuild-admin PATCH /api/v1/nodes/s2"))
        .unwrap();
    assert!(
        reqs[..patch]
            .iter()
            .any(|r| r.contains("GET /api/v1/nodes/s2"))
    );
    assert!(
        reqs[patch..]
            .iter()
            .any(|r| r.starts_with("imgbuild:node-reader GET /api/v1/nodes/s2"))
    );
}

#[test]
fn flashing_a_server_that_was_not_removed_crash_loops() {
    let env = Env::new();
    ha(&env);
    let boot = env.fake.node_obj("s2").unwrap()["status"]["nodeInfo"]["bootID"].clone();
    let img = env.image("s2-join", JOIN, &node_yaml("s2"), None);
    let out = env.fake.flashed("s2", &img);
    assert!(
        matches!(out, Outcome::CrashLoop(ref why) if why.contains("duplicate node name found")),
        "{out:?}"
    );
    let e = wait_voter(
        &env.reader(),
        "s2",
        boot.as_str(),
        Duration::from_secs(1),
        TICK,
    )
    .unwrap_err();
    assert!(matches!(e, EtcdError::Timeout { .. }), "{e}");
    assert!(
        e.to_string().contains("Ready=Unknown (NodeStatusUnknown)"),
        "{e}"
    );
    let n = env.fake.node_obj("s2").unwrap();
    assert_eq!(
        n["status"]["nodeInfo"]["bootID"], boot,
        "a crash-looping k3s posts no status"
    );
    assert_eq!(condition(&n, "EtcdIsVoter"), "False");
}

#[test]
fn a_founding_image_on_a_live_cluster_starts_a_second_one() {
    let env = Env::new();
    ha(&env);
    env.fake
        .add_pod(pod("default", "web-1", "a1", Some("ReplicaSet")));
    let img = env.image("s1-init", INIT, &node_yaml("s1"), None);
    assert_eq!(env.fake.flashed("s1", &img), Outcome::SecondCluster);
    settle(&env, 1);
    let v = env.view();
    assert_eq!(v.nodes.len(), 1, "{v:?}");
    assert_eq!(v.nodes[0].name, "s1");
    // Labels from the image's node-label apply: the Node is new.
    let n = env.reader().node("s1", T).unwrap().unwrap();
    assert_eq!(
        n.metadata.labels.get("node-type").map(String::as_str),
        Some("rk1")
    );
    assert!(env.fake.with(|c| c.pods.is_empty()));
}

#[test]
fn the_only_server_without_its_data_comes_back_empty() {
    let env = Env::new();
    env.fake.add_server("s1");
    env.fake.add_agent("a1");
    env.fake
        .add_pod(pod("default", "web-1", "a1", Some("ReplicaSet")));
    env.admin().record_instance("s1", "i-before", T).unwrap();
    let img = env.image("s1-init", INIT, &node_yaml("s1"), None);
    assert_eq!(env.fake.flashed("s1", &img), Outcome::Empty);
    settle(&env, 1);
    let v = env.view();
    assert_eq!(
        v.nodes.iter().map(|n| n.name.as_str()).collect::<Vec<_>>(),
        ["s1"]
    );
    assert!(
        v.nodes[0].instance_id.is_none(),
        "annotations survived a new cluster"
    );

    // With /var/lib/rancher on a data disk the datastore stays.
    let env = Env::new();
    env.fake.add_server("s1");
    env.fake.add_agent("a1");
    let member = annotation(
        &env.fake.node_obj("s1").unwrap(),
        "etcd.k3s.cattle.io/node-name",
    );
    let img = env.image("s1-data", INIT, &node_yaml("s1"), Some("/var/lib/rancher"));
    assert_eq!(env.fake.flashed("s1", &img), Outcome::Back);
    settle(&env, 1);
    assert_eq!(env.view().nodes.len(), 2);
    assert_eq!(
        annotation(
            &env.fake.node_obj("s1").unwrap(),
            "etcd.k3s.cattle.io/node-name"
        ),
        member,
        "kept data: the same member"
    );
}

#[test]
fn a_server_with_kept_data_cannot_come_back_after_removal() {
    let env = Env::new();
    ha(&env);
    let admin = env.admin();
    remove_member(&admin, "s3", T, TICK).unwrap();
    let img = env.image("s3-data", JOIN, &node_yaml("s3"), Some("/var/lib/rancher"));
    let out = env.fake.flashed("s3", &img);
    assert!(
        matches!(out, Outcome::CrashLoop(ref why) if why.contains("not a member")),
        "{out:?}"
    );
}

#[test]
fn an_agent_comes_back_with_a_new_boot_id_and_keeps_its_node() {
    let env = Env::new();
    ha(&env);
    let admin = env.admin();
    admin.cordon("a1", T).unwrap();
    let boot = env.fake.node_obj("a1").unwrap()["status"]["nodeInfo"]["bootID"]
        .as_str()
        .unwrap()
        .to_string();
    let img = env.image("a1", AGENT, &node_yaml("a1"), None);
    assert_eq!(env.fake.flashed("a1", &img), Outcome::Back);
    let reader = env.reader();
    let n = imgbuild::kube::wait::until_node(&reader, "a1", Instant::now() + T, TICK, |n| {
        n.is_some_and(|n| n.is_ready() && n.status.node_info.boot_id != boot)
    })
    .unwrap();
    // The Node object is the old one: still cordoned, labels from before
    // (node-label applies at first registration only).
    assert!(n.spec.unschedulable);
    assert!(!n.metadata.labels.contains_key("node-type"));
    assert_eq!(n.etcd_voter(), None);
}

#[test]
fn skew_is_checked_against_what_the_cluster_runs() {
    let env = Env::new();
    ha(&env);
    env.fake.with(|c| {
        for s in ["s1", "s2", "s3", "a1"] {
            c.edit_node(s, |n| {
                n["status"]["nodeInfo"]["kubeletVersion"] = "v1.31.9+k3s1".into()
            });
        }
    });
    let members = env.view().members();
    assert_eq!(members.len(), 4);
    let v = |s: &str| KubeVersion::parse(s).unwrap();
    let all = |to: &str| -> Vec<Change> {
        [
            ("s1", Role::Server),
            ("s2", Role::Server),
            ("s3", Role::Server),
            ("a1", Role::Agent),
        ]
        .iter()
        .map(|(n, r)| Change {
            name: n.to_string(),
            role: *r,
            to: v(to),
        })
        .collect()
    };
    assert_eq!(
        check_rollout(&members, &all("v1.32.5")).unwrap(),
        ["s1", "s2", "s3", "a1"]
    );
    let e = check_rollout(&members, &all("v1.33.1")).unwrap_err();
    assert!(
        matches!(e, SkewRefusal::SkipsMinor { ref node, .. } if node == "s1"),
        "{e}"
    );
    let agent_only = [Change {
        name: "a1".into(),
        role: Role::Agent,
        to: v("v1.32.5"),
    }];
    let e = check_rollout(&members, &agent_only).unwrap_err();
    assert!(matches!(e, SkewRefusal::AgentAhead { .. }), "{e}");
    assert!(e.to_string().contains("upgrade the servers first"), "{e}");
}

#[test]
fn bodies_over_their_caps_are_refused_as_they_stream() {
    let env = Env::new();
    let reader = env.reader();
    // A Node of 1 MiB is fine; one of 16 MiB is not, chunked or declared.
    env.fake.state.lock().unwrap().huge_node = Some((1 << 20, false));
    assert!(reader.node("s1", T).unwrap().is_some());
    for declared in [false, true] {
        env.fake.state.lock().unwrap().huge_node = Some((16 << 20, declared));
        let e = reader.node("s1", T).unwrap_err();
        assert!(
            matches!(e, ApiError::TooLarge { limit, .. } if limit == 4 << 20),
            "{e}"
        );
        assert!(
            e.to_string()
                .contains("the answer is larger than 4 MiB, the most imgbuild reads of it"),
            "{e}"
        );
    }
    env.fake.state.lock().unwrap().huge_node = None;
    env.fake.state.lock().unwrap().huge_list_item = Some(5 << 20);
    let e = reader.nodes(T).unwrap_err();
    assert!(
        e.to_string()
            .contains("an item of the list is larger than 4 MiB"),
        "{e}"
    );
    env.fake.state.lock().unwrap().huge_watch_line = Some(6 << 20);
    let e = reader
        .watch_nodes(Duration::from_secs(2), Instant::now() + T, |_| true)
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("a watch event is larger than 4160 KiB"),
        "{e}"
    );
}

#[test]
fn a_watch_that_never_ends_is_cut_at_its_timeout_or_the_deadline() {
    let env = Env::new();
    let reader = env.reader();
    env.fake.state.lock().unwrap().stall_watch = true;
    // timeoutSeconds=1 plus the margin, although bytes keep coming.
    let t0 = Instant::now();
    assert!(
        !reader
            .watch_nodes(Duration::from_secs(1), t0 + T * 3, |_| true)
            .unwrap()
    );
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(8),
        "{took:?}"
    );
    // The caller's deadline comes first.
    let t0 = Instant::now();
    assert!(
        !reader
            .watch_nodes(
                Duration::from_secs(30),
                t0 + Duration::from_millis(1500),
                |_| true
            )
            .unwrap()
    );
    let took = t0.elapsed();
    assert!(took < Duration::from_millis(2500), "{took:?}");
}

#[test]
fn the_flash_hook_follows_what_a_bmc_received() {
    let env = Env::new();
    ha(&env);
    let admin = env.admin();
    let boot = env.fake.node_obj("a1").unwrap()["status"]["nodeInfo"]["bootID"]
        .as_str()
        .unwrap()
        .to_string();
    // Stands in for the fake BMC's finished flashes (slot images).
    let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(String, PathBuf)>::new()));
    let r = received.clone();
    env.fake.on_flash(move || r.lock().unwrap().clone());
    remove_member(&admin, "s3", T, TICK).unwrap();
    let img = env.image("s3", JOIN, &node_yaml("s3"), None);
    received.lock().unwrap().push(("s3".into(), img));
    wait_voter(&env.reader(), "s3", None, T, TICK).unwrap();
    let img = env.image("a1", AGENT, &node_yaml("a1"), None);
    received.lock().unwrap().push(("a1".into(), img));
    settle(&env, 2);
    assert_eq!(
        env.fake.with(|c| c.flashes.clone()),
        [
            ("s3".to_string(), Outcome::Back),
            ("a1".to_string(), Outcome::Back)
        ]
    );
    assert_ne!(
        env.fake.node_obj("a1").unwrap()["status"]["nodeInfo"]["bootID"],
        boot.as_str()
    );
}
