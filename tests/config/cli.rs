//! Commands and flags end to end through the binary: happy path and one
//! failure each, for those no other test binary covers.

use crate::support::project::{Cmd, Project, repo_overrides};
use crate::support::{fixtures::*, harness::*};

/// `args` against the project's profiles and the repository's manifests and overlays.
fn with_repo_dirs(p: &Project, args: &[&str]) -> Cmd {
    p.imgbuild(args).args(repo_overrides())
}

/// Puts `install: <install>` into the example cluster's k3s settings.
fn k3s_install(p: &Project, install: &str) {
    p.edit(
        "profiles/cluster.yaml",
        "    disable: [traefik]\n",
        &format!("    disable: [traefik]\n    install: {install}\n"),
    );
}

#[test]
fn render_contents_prints_each_file_and_an_unknown_node_is_a_usage_error() {
    let p = Project::example();
    let r = p.imgbuild(["render", "node02", "--contents"]).run();
    let (out, err) = (&r.stdout, &r.stderr);
    assert_eq!(r.code, 0, "{err}");
    // The header line of each file, then its content.
    assert!(
        out.lines()
            .any(|l| l.starts_with("seed  /user-data") && l.contains("from ")),
        "{out}"
    );
    assert!(out.contains("#cloud-config\n"), "{out}");
    assert!(out.contains("hostname: \"node02\""), "{out}");
    let r = p.imgbuild(["render", "node99", "--contents"]).run();
    let err = &r.stderr;
    assert_eq!(r.code, 2, "{err}");
    assert!(
        err.contains("no node \"node99\"") && err.contains("node02"),
        "{err}"
    );
}

#[test]
fn quiet_builds_print_no_log_lines_but_errors_still_show() {
    let fx = fixtures();
    let p = Project::example();
    let out = p.join("node03.rk1.img");
    let build = |quiet: &[&str]| {
        p.imgbuild(quiet)
            .args([
                "--base",
                fx.rk1.path.to_str().unwrap(),
                out.to_str().unwrap(),
            ])
            .run()
    };
    let r = build(&["-q"]);
    let (stdout, stderr) = (&r.stdout, &r.stderr);
    assert_eq!(r.code, 0, "{stderr}");
    assert_eq!(stdout.trim(), out.display().to_string());
    assert_eq!(stderr, "", "-q printed log lines");
    // Without -q the same build logs what it does.
    let r = build(&[]);
    let stderr = &r.stderr;
    assert_eq!(r.code, 0, "{stderr}");
    assert!(stderr.contains("built "), "{stderr}");
    // Errors are not silenced.
    let r = p.imgbuild(["-q", "nonsense.img"]).run();
    let stderr = &r.stderr;
    assert_eq!(r.code, 2);
    assert!(stderr.contains("must be named"), "{stderr}");
}

#[test]
fn all_nodes_compress_as_xz_and_zstd_with_checked_sums() {
    let fx = fixtures();
    let p = Project::example();
    // Two nodes (a CM4 server and an RK1 agent) keep the compression quick.
    for n in ["node03", "node04", "nuc2", "ws03"] {
        p.remove(&format!("profiles/nodes/{n}.yaml"));
    }
    let bases = [
        format!("rk1={}", fx.rk1.path.display()),
        format!("cm4={}", fx.cm4.path.display()),
    ];
    for (format, test) in [("img.xz", "xz -t"), ("img.zst", "zstd -q -t")] {
        let dir = p.join(format);
        let r = with_repo_dirs(
            &p,
            &[
                "--all",
                "--format",
                format,
                "--out-dir",
                dir.to_str().unwrap(),
                "--base",
                &bases[0],
                "--base",
                &bases[1],
            ],
        )
        .run();
        assert_eq!(r.code, 0, "{}", r.stderr);
        let mut names: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "SHA256SUMS".to_string(),
                format!("node01.cm4.{format}"),
                format!("node01.cm4.{format}.intoto.json"),
                format!("node02.rk1.{format}"),
                format!("node02.rk1.{format}.intoto.json"),
            ]
        );
        for n in names.iter().filter(|n| n.ends_with(format)) {
            p.imgbuild(["verify", dir.join(n).to_str().unwrap()]).ok();
            sh(&format!("{test} {}", q(&dir.join(n))));
        }
        let sums = sh(&format!("cd {} && sha256sum -c SHA256SUMS", q(&dir)));
        assert_eq!(
            String::from_utf8(sums.stdout)
                .unwrap()
                .matches(": OK")
                .count(),
            2
        );
    }
    let r = with_repo_dirs(&p, &["--all", "--format", "img.gz"]).run();
    let err = &r.stderr;
    assert_eq!(r.code, 2, "{err}");
    assert!(err.contains("img.xz") && err.contains("img.zst"), "{err}");
}

#[test]
fn source_date_epoch_stamps_written_files_and_a_bad_one_is_refused() {
    let fx = fixtures();
    let p = Project::example();
    let out = p.join("node04.rk1.img");
    let run_with = |epoch: &str| {
        p.imgbuild([
            "--base",
            fx.rk1.path.to_str().unwrap(),
            out.to_str().unwrap(),
        ])
        .env("SOURCE_DATE_EPOCH", epoch)
    };
    run_with("1700000000").ok();
    let root = fsck_ext4(&fx.rk1, &out, 2, p.path());
    let stat = String::from_utf8(
        sh(&format!(
            "debugfs -R 'stat /etc/rancher/k3s/config.yaml' {} 2>/dev/null",
            q(&root)
        ))
        .stdout,
    )
    .unwrap();
    // 1700000000 = 0x6553f100
    assert!(stat.contains("mtime: 0x6553f100"), "{stat}");
    let r = run_with("yesterday").expect_exit(1);
    assert!(
        r.text.contains("SOURCE_DATE_EPOCH=\"yesterday\""),
        "{}",
        r.text
    );
}

#[test]
fn k3s_install_online_and_none_bake_no_air_gap_payload() {
    for (install, expect_runcmd) in [("online", true), ("none", false)] {
        let p = Project::example();
        k3s_install(&p, install);
        let r = with_repo_dirs(&p, &["render", "node02", "--json"]).run();
        assert_eq!(r.code, 0, "{install}: {}", r.stderr);
        let files = r.json();
        let paths: Vec<&str> = files
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f["path"].as_str().unwrap())
            .collect();
        assert!(
            !paths
                .iter()
                .any(|p| p.contains("k3s-agent.service") || p.ends_with("/kubectl")),
            "{install}: air-gap files rendered: {paths:?}"
        );
        let r = with_repo_dirs(&p, &["render", "node02", "--contents"]).run();
        let out = &r.stdout;
        assert_eq!(r.code, 0, "{install}: {}", r.stderr);
        assert_eq!(
            out.contains("https://get.k3s.io"),
            expect_runcmd,
            "{install}: {out}"
        );
        // `check` accepts both.
        let r = with_repo_dirs(&p, &["check"]).run();
        assert_eq!(r.code, 0, "{install}: {}", r.stderr);
    }
    // Anything else is a profile error naming the file and field.
    let p = Project::example();
    k3s_install(&p, "sometimes");
    let r = with_repo_dirs(&p, &["check"]).run();
    let err = &r.stderr;
    assert_eq!(r.code, 3, "{err}");
    assert!(
        err.contains("cluster.yaml") && err.contains("install") && err.contains("airgap"),
        "{err}"
    );
}

#[test]
fn check_warns_what_an_air_gapped_node_still_fetches_at_first_boot() {
    let p = Project::example();
    let r = p.imgbuild(["check"]).run();
    let (out, err) = (&r.stdout, &r.stderr);
    assert_eq!(r.code, 0, "{err}");
    assert!(out.contains("profiles OK"), "{out}");
    for (node, key) in [
        ("ws03.yaml", "nvidia: the NVIDIA driver"),
        ("ws03.yaml", "swap.zram: the systemd-zram-generator package"),
        ("node02.yaml", "packages: nfs-common, open-iscsi"),
    ] {
        assert!(
            err.lines().any(|l| l.contains(node) && l.contains(key)),
            "no warning for {node} {key}:\n{err}"
        );
    }
    // With k3s installed online the node needs the internet anyway: no warnings.
    let p = Project::example();
    k3s_install(&p, "online");
    let r = with_repo_dirs(&p, &["check"]).run();
    let err = &r.stderr;
    assert_eq!(r.code, 0, "{err}");
    assert!(!err.contains("fetched from the internet"), "{err}");
}

#[test]
fn check_json_reports_the_profiles_and_what_builds_add() {
    let w = Project::example();
    let (chart_sha, image_sha) = ("c".repeat(64), "d".repeat(64));
    let image = format!("registry.example.org/team/app:1.0@sha256:{image_sha}");
    w.edit(
        "profiles/cluster.yaml",
        "    disable: [traefik]\n",
        &format!(
            "    disable: [traefik]\n  images: [\"{image}\"]\n  bootstrap:\n    manifests: [gitops.yaml]\n    charts:\n      - name: demo\n        repo: https://charts.example.org/stable\n        chart: demo\n        version: 0.1.0\n        sha256: {chart_sha}\n        namespace: demo\n"
        ),
    );
    let p = w.profiles();
    w.write(
        "profiles/manifests/gitops.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: gitops\n",
    );
    let manifest_sha = sha256sum(&p.join("manifests/gitops.yaml"));

    let r = with_repo_dirs(&w, &["check", "--json"]).run();
    let err = &r.stderr;
    assert_eq!(r.code, 0, "{err}");
    let v = r.json();
    assert_eq!(v["cluster"], "homelab");
    // Every node file, as <name>.<board>.
    let mut nodes: Vec<String> = std::fs::read_dir(p.join("nodes"))
        .unwrap()
        .flatten()
        .map(|e| {
            let y: serde_yaml_ng::Value =
                serde_yaml_ng::from_str(&std::fs::read_to_string(e.path()).unwrap()).unwrap();
            let stem = e.path().file_stem().unwrap().to_str().unwrap().to_string();
            format!("{stem}.{}", y["board"].as_str().unwrap())
        })
        .collect();
    nodes.sort();
    let mut got: Vec<String> = v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap().to_string())
        .collect();
    got.sort();
    assert_eq!(got, nodes);
    // The manifests and overlays come from the directories given.
    let manifests = repo().join("firmware-manifests");
    assert_eq!(v["boards"], serde_json::json!(["cm4", "nuc", "rk1"]));
    for m in v["manifests"].as_array().unwrap() {
        assert!(
            manifests
                .join(format!("{}.yaml", m["name"].as_str().unwrap()))
                .is_file()
        );
        assert_eq!(m["origin"]["dir"], manifests.display().to_string(), "{m}");
    }
    let overlay_files = sh(&format!(
        "find {} -type f | wc -l",
        q(&repo().join("overlays"))
    ));
    let overlay_files: u64 = String::from_utf8(overlay_files.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let overridden = v["overlays_overridden"].as_array().unwrap();
    assert_eq!(
        v["overlays_builtin"].as_u64().unwrap() + overridden.len() as u64,
        overlay_files
    );
    for o in overridden {
        assert!(
            repo()
                .join("overlays")
                .join(o["name"].as_str().unwrap())
                .is_file(),
            "{o}"
        );
    }
    // The same warnings as on stderr, one per WARN line.
    let warned: Vec<&str> = err
        .lines()
        .filter_map(|l| l.split_once("WARN ").map(|(_, w)| w))
        .collect();
    assert!(!warned.is_empty(), "{err}");
    assert_eq!(v["warnings"], serde_json::json!(warned));
    // What builds add: the image on every node, the bootstrap files on the
    // cluster-init server (node01) only.
    let added = v["added"].as_array().unwrap();
    assert_eq!(added.len(), nodes.len(), "{v:#}");
    for n in added {
        let files = n["files"].as_array().unwrap();
        let images: Vec<_> = files
            .iter()
            .filter(|f| f["kind"] == "container image")
            .collect();
        assert_eq!(images.len(), 1, "{n}");
        assert_eq!(images[0]["sha256"], image_sha);
        assert!(
            images[0]["path"]
                .as_str()
                .unwrap()
                .starts_with("/var/lib/rancher/k3s/agent/images/"),
            "{n}"
        );
        let others: Vec<_> = files
            .iter()
            .filter(|f| f["kind"] != "container image")
            .collect();
        if n["node"] != "node01" {
            assert!(others.is_empty(), "{n}");
            continue;
        }
        let dir = "/var/lib/rancher/k3s/server/manifests";
        assert_eq!(
            serde_json::json!(others),
            serde_json::json!([
                {
                    "path": format!("{dir}/imgbuild-bootstrap-gitops.yaml"),
                    "kind": "bootstrap manifest",
                    "what": "gitops.yaml",
                    "uri": null,
                    "sha256": manifest_sha,
                },
                {
                    "path": format!("{dir}/imgbuild-chart-demo.yaml"),
                    "kind": "helm chart",
                    "what": "demo (demo 0.1.0)",
                    "uri": "https://charts.example.org/stable/demo-0.1.0.tgz",
                    "sha256": chart_sha,
                },
            ])
        );
    }
}
