//! Profile and manifest validation through `imgbuild check`: every problem is
//! listed with its file, field and what is expected.

use crate::support::fixtures::cloud_init_schema;
use crate::support::harness::*;
use crate::support::project::{Project, repo_overrides};

/// The shipped profiles with `edits` (file, contents; empty removes the
/// file) applied, checked against the repository's manifests and overlays.
fn check_with(edits: &[(&str, &str)]) -> (i32, String, Project) {
    let p = Project::example();
    for (file, body) in edits {
        let rel = format!("profiles/{file}");
        if body.is_empty() {
            p.remove(&rel);
        } else {
            p.write(&rel, body);
        }
    }
    let r = p.imgbuild(["check"]).args(repo_overrides()).run();
    (r.code, r.text, p)
}

#[test]
fn the_shipped_profiles_are_valid() {
    let (code, out, _d) = check_with(&[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("6 node(s)"), "{out}");
}

#[test]
fn every_problem_is_listed_with_file_and_field() {
    let (code, out, _d) = check_with(&[
        (
            "nodes/node02.yaml",
            "board: rk1\nturing_pi: {board: tp1, slot: 2}\ncolour: blue\n",
        ),
        (
            "nodes/node03.yaml",
            "board: rk1\nhostname: Node_03\nturing_pi: {board: tp1, slot: 2}\n",
        ),
        (
            "nodes/node04.yaml",
            "board: rk1\nturing_pi: {board: tp1, slot: 4}\nnetwork:\n  dhcp: false\n  address: 10.0.0.5/24\n  gateway: 192.168.1.1\n",
        ),
        ("nodes/ws03.yaml", "board: pi5\n"),
        (
            "nodes/nuc2.yaml",
            "board: nuc\nhostname: node01\nk3s: {role: server, cluster_init: true, labels: {node-role.kubernetes.io/worker: \"true\"}, taints: [\"x=y:Sometimes\"]}\nnetwork: {dhcp: false, address: 192.168.1.101/33}\n",
        ),
        ("nodes/bad.yaml", "board: [rk1\n"),
    ]);
    assert_eq!(code, 3, "{out}");
    let expect = [
        ("node02.yaml", "colour", "unknown field `colour`"),
        (
            "node03.yaml",
            "hostname",
            "may contain only lower-case letters",
        ),
        (
            "node04.yaml",
            "network.gateway",
            "192.168.1.1 is outside the subnet of the node's address 10.0.0.5/24",
        ),
        (
            "ws03.yaml",
            "board",
            "\"pi5\" has no firmware manifest; expected one of: cm4, nuc, rk1",
        ),
        (
            "nuc2.yaml",
            "network.address",
            "prefix \"33\" must be a number from 0 to 32",
        ),
        (
            "nuc2.yaml",
            "k3s.labels.node-role.kubernetes.io/worker",
            "may not set labels under node-role.kubernetes.io",
        ),
        (
            "nuc2.yaml",
            "k3s.taints[0]",
            "must be NoSchedule, PreferNoSchedule or NoExecute",
        ),
        ("bad.yaml", "", "not valid YAML"),
    ];
    for (file, field, reason) in expect {
        let line = out
            .lines()
            .find(|l| l.contains(file) && l.contains(reason))
            .unwrap_or_else(|| panic!("no problem for {file} {field}: {reason}\n{out}"));
        if !field.is_empty() {
            assert!(
                line.contains(&format!(": {field}: ")),
                "field {field} not named in {line}"
            );
        }
    }
}

/// A network match the board's image can never satisfy (issue: first boot
/// left without network) is refused, naming what would apply.
#[test]
fn network_matches_that_never_apply_are_refused() {
    let node = |board: &str, slot: u8, m: &str| {
        let tp = if board == "nuc" {
            String::new()
        } else {
            format!("turing_pi: {{board: tp1, slot: {slot}}}\n")
        };
        format!(
            "board: {board}\n{tp}network:\n  dhcp: false\n  match: {m}\n  address: 192.168.1.1{slot}/24\n  gateway: 192.168.1.1\n"
        )
    };
    let (code, out, _d) = check_with(&[
        // CM4's stock image names its port eth0: en* never matches it.
        ("nodes/node01.yaml", &node("cm4", 1, "{name: \"en*\"}")),
        // The CM4's Ethernet is GENET, not a Realtek.
        ("nodes/node02.yaml", &node("cm4", 2, "{driver: r8169}")),
        // Multicast and all-zero addresses belong to no interface.
        (
            "nodes/node03.yaml",
            &node("rk1", 3, "{mac: \"01:00:5e:00:00:01\"}"),
        ),
        (
            "nodes/node04.yaml",
            &node("rk1", 4, "{mac: \"00:00:00:00:00:00\"}"),
        ),
        // Predictable names on the NUC cloud image: eth1 never appears.
        ("nodes/nuc2.yaml", &node("nuc", 5, "{name: eth1}")),
        ("nodes/ws03.yaml", &node("nuc", 6, "{driver: \"r8169 x\"}")),
    ]);
    assert_eq!(code, 3, "{out}");
    for (file, field, reason) in [
        (
            "node01.yaml",
            "network.match.name",
            "\"en*\" never applies on cm4: its image names the wired interface eth0",
        ),
        (
            "node02.yaml",
            "network.match.driver",
            "\"r8169\" never applies on cm4: its wired Ethernet uses the bcmgenet driver",
        ),
        ("node03.yaml", "network.match.mac", "is a multicast address"),
        ("node04.yaml", "network.match.mac", "is all zeros"),
        (
            "nuc2.yaml",
            "network.match.name",
            "\"eth1\" never applies on nuc: its image names the wired interface en*",
        ),
        (
            "ws03.yaml",
            "network.match.driver",
            "is not a kernel driver name or glob",
        ),
    ] {
        let line = out
            .lines()
            .find(|l| l.contains(file) && l.contains(reason))
            .unwrap_or_else(|| panic!("no problem for {file}: {reason}\n{out}"));
        assert!(
            line.contains(&format!(": {field}: ")),
            "field {field} not named in {line}"
        );
    }

    // The same boards accept matches that can apply: by driver on CM4, a
    // pattern covering eth0 or en* on RK1, a unicast MAC, a PCI name on NUC.
    let (code, out, _d) = check_with(&[
        (
            "nodes/node01.yaml",
            &(node("cm4", 1, "{driver: \"bcm*\"}") + "k3s: {role: server, cluster_init: true}\n"),
        ),
        (
            "nodes/node02.yaml",
            &node("cm4", 2, "{name: \"eth?\", driver: bcmgenet}"),
        ),
        ("nodes/node03.yaml", &node("rk1", 3, "{name: \"e*\"}")),
        (
            "nodes/node04.yaml",
            &node("rk1", 4, "{mac: \"02:00:5e:00:00:01\"}"),
        ),
        ("nodes/nuc2.yaml", &node("nuc", 5, "{name: enp3s0}")),
        ("nodes/ws03.yaml", &node("nuc", 6, "{driver: igc}")),
    ]);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn duplicates_across_nodes_are_found() {
    let (code, out, _d) = check_with(&[
        (
            "nodes/node03.yaml",
            "board: rk1\nhostname: node02\nturing_pi: {board: tp1, slot: 3}\n",
        ),
        (
            "nodes/node04.yaml",
            "board: rk1\nturing_pi: {board: tp1, slot: 4}\nnetwork: {dhcp: false, address: 192.168.1.102/24, gateway: 192.168.1.1}\n",
        ),
        (
            "nodes/nuc2.yaml",
            "board: nuc\nk3s: {role: server, cluster_init: true}\n",
        ),
    ]);
    assert_eq!(code, 3, "{out}");
    assert!(
        out.contains("hostname: \"node02\" is also the hostname of"),
        "{out}"
    );
    assert!(
        out.contains("network.address: 192.168.1.102 is also used by"),
        "{out}"
    );
    assert!(
        out.contains("k3s.cluster_init: only one server may initialise the cluster"),
        "{out}"
    );
}

#[test]
fn a_field_from_the_defaults_names_the_cluster_file() {
    let cluster = std::fs::read_to_string(repo().join("profiles/cluster.yaml"))
        .unwrap()
        .replace(
            "  packages: [nfs-common, open-iscsi]",
            "  packages: [\"Bad Package\"]",
        );
    let (code, out, _d) = check_with(&[("cluster.yaml", &cluster)]);
    assert_eq!(code, 3, "{out}");
    assert!(
        out.contains("cluster.yaml: packages[0]: \"Bad Package\" is not a Debian package name"),
        "{out}"
    );
}

#[test]
fn missing_or_broken_files_are_named() {
    let (code, out, _d) = check_with(&[("cluster.yaml", "")]);
    assert_eq!(code, 3, "{out}");
    assert!(
        out.contains("cluster.yaml does not exist") && out.contains("hint: run `imgbuild init`"),
        "{out}"
    );
    let (code, out, _d) = check_with(&[("cluster.yaml", "cluster:\n  name: x\n")]);
    assert_eq!(code, 3, "{out}");
    assert!(
        out.contains("cluster.yaml: cluster: missing field `server`"),
        "{out}"
    );
    let out = Project::empty()
        .imgbuild([
            "check",
            "--profiles",
            "nowhere",
            "--manifests",
            repo().join("firmware-manifests").to_str().unwrap(),
        ])
        .expect_exit(3);
    // One line that says what is missing, one hint that says what to do.
    assert_eq!(
        out.text.trim_end(),
        "error: no profiles: nowhere/cluster.yaml does not exist\n\
         hint: run `imgbuild init` here to write them, or point --profiles (or IMGBUILD_PROFILES) at your cluster's profile directory",
        "{}",
        out.text
    );
}

#[test]
fn a_hostile_key_comment_stays_one_yaml_value() {
    // A double-quoted YAML string in the profile, so the hostile text reaches the template whole.
    let cluster = std::fs::read_to_string(repo().join("profiles/cluster.yaml")).unwrap().replace(
        "- ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEqfAkq5sKqoPzq3y9gWRYeFMZ3xH5P7dWm8vLqGf1bA admin@laptop",
        "- \"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEqfAkq5sKqoPzq3y9gWRYeFMZ3xH5P7dWm8vLqGf1bA x\\\" }]\\t #: {runcmd: [reboot]} '\"",
    );
    assert!(cluster.contains("runcmd"));
    let dir = Project::example();
    dir.write("profiles/cluster.yaml", &cluster);
    let files = dir.rendered("node02");
    let ud = files.iter().find(|f| f.path == "/user-data").unwrap();
    let v: serde_yaml_ng::Value = serde_yaml_ng::from_slice(&ud.contents).unwrap();
    let key = v["users"][0]["ssh_authorized_keys"][0].as_str().unwrap();
    assert!(key.ends_with("x\" }]\t #: {runcmd: [reboot]} '"), "{key}");
    assert!(v.get("runcmd").is_none());
    cloud_init_schema(&ud.contents, dir.path());
}

#[test]
fn bad_manifests_are_named() {
    let dir = Project::example();
    for board in ["cm4", "nuc", "rk1"] {
        dir.override_manifest(board);
    }
    let m = dir.manifests();
    dir.edit(
        "firmware-manifests/rk1.yaml",
        "sha256: 8858",
        "sha256: zz58",
    )
    .edit(
        "firmware-manifests/rk1.yaml",
        "partition: cidata",
        "partition: nope",
    )
    .write("firmware-manifests/cm4.yaml", "board: cm4\nwhat: 1\n");
    let t = dir
        .imgbuild(["check", "--manifests", m.to_str().unwrap()])
        .expect_exit(3)
        .text;
    assert!(
        t.contains("rk1.yaml: source.sha256: expected 64 hex digits"),
        "{t}"
    );
    assert!(
        t.contains("rk1.yaml: seed.partition: \"nope\" is not a role"),
        "{t}"
    );
    assert!(
        t.contains("cm4.yaml") && t.contains("unknown field `what`"),
        "{t}"
    );
}
