//! Commands and flags end to end through the binary: happy path and one
//! failure each, for those no other test binary covers.

mod support {
    pub mod bytes;
    pub mod fixtures;
    pub mod harness;
    pub mod http;
    pub mod mirror;
}

use std::path::{Path, PathBuf};

use support::{fixtures::*, harness::*, mirror::*};

fn profiles() -> PathBuf {
    repo().join("profiles")
}

/// A copy of the example profiles with `cluster.yaml` edited by `edit`.
fn edited_profiles(dir: &Path, edit: impl FnOnce(String) -> String) -> PathBuf {
    sh(&format!("cp -r {} {}", q(&profiles()), q(dir)));
    let cluster = dir.join("profiles/cluster.yaml");
    let text = std::fs::read_to_string(&cluster).unwrap();
    std::fs::write(&cluster, edit(text)).unwrap();
    dir.join("profiles")
}

fn run(cwd: &Path, args: &[&str]) -> (i32, String, String) {
    let out = imgbuild(cwd, args);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn with_manifests(args: &[&str], profiles: &Path) -> Vec<String> {
    let mut v: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    v.extend([
        "--profiles".into(),
        profiles.display().to_string(),
        "--manifests".into(),
        repo().join("firmware-manifests").display().to_string(),
        "--overlays".into(),
        repo().join("overlays").display().to_string(),
    ]);
    v
}

fn args_ref(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn render_contents_prints_each_file_and_an_unknown_node_is_a_usage_error() {
    let w = scratch();
    let p = profiles();
    let (code, out, err) = run(
        w.path(),
        &[
            "render",
            "node02",
            "--contents",
            "--profiles",
            p.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{err}");
    // The header line of each file, then its content.
    assert!(
        out.lines()
            .any(|l| l.starts_with("seed  /user-data") && l.contains("from ")),
        "{out}"
    );
    assert!(out.contains("#cloud-config\n"), "{out}");
    assert!(out.contains("hostname: \"node02\""), "{out}");
    let (code, _, err) = run(
        w.path(),
        &[
            "render",
            "node99",
            "--contents",
            "--profiles",
            p.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("no node \"node99\"") && err.contains("node02"),
        "{err}"
    );
}

#[test]
fn quiet_builds_print_no_log_lines_but_errors_still_show() {
    let fx = fixtures();
    let w = scratch();
    let p = profiles();
    let out = w.path().join("node03.rk1.img");
    let (code, stdout, stderr) = run(
        w.path(),
        &[
            "-q",
            "--profiles",
            p.to_str().unwrap(),
            "--base",
            fx.rk1.path.to_str().unwrap(),
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout.trim(), out.display().to_string());
    assert_eq!(stderr, "", "-q printed log lines");
    // Without -q the same build logs what it does.
    let (code, _, stderr) = run(
        w.path(),
        &[
            "--profiles",
            p.to_str().unwrap(),
            "--base",
            fx.rk1.path.to_str().unwrap(),
            out.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("built "), "{stderr}");
    // Errors are not silenced.
    let (code, _, stderr) = run(
        w.path(),
        &["-q", "--profiles", p.to_str().unwrap(), "nonsense.img"],
    );
    assert_eq!(code, 2);
    assert!(stderr.contains("must be named"), "{stderr}");
}

#[test]
fn all_nodes_compress_as_xz_and_zstd_with_checked_sums() {
    let fx = fixtures();
    let w = scratch();
    // Two nodes (a CM4 server and an RK1 agent) keep the compression quick.
    let p = edited_profiles(w.path(), |t| t);
    for n in ["node03", "node04", "nuc2", "ws03"] {
        std::fs::remove_file(p.join(format!("nodes/{n}.yaml"))).unwrap();
    }
    let bases = [
        format!("rk1={}", fx.rk1.path.display()),
        format!("cm4={}", fx.cm4.path.display()),
    ];
    for (format, test) in [("img.xz", "xz -t"), ("img.zst", "zstd -q -t")] {
        let dir = w.path().join(format);
        let (code, _, err) = run(
            w.path(),
            &args_ref(&with_manifests(
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
                &p,
            )),
        );
        assert_eq!(code, 0, "{err}");
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
            let v = imgbuild(w.path(), &["verify", dir.join(n).to_str().unwrap()]);
            assert!(v.status.success(), "{}", text(&v));
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
    let (code, _, err) = run(
        w.path(),
        &args_ref(&with_manifests(&["--all", "--format", "img.gz"], &p)),
    );
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("img.xz") && err.contains("img.zst"), "{err}");
}

#[test]
fn source_date_epoch_stamps_written_files_and_a_bad_one_is_refused() {
    let fx = fixtures();
    let w = scratch();
    let p = profiles();
    let out = w.path().join("node04.rk1.img");
    let e = env();
    let run_with = |epoch: &str| {
        command()
            .args([
                "--profiles",
                p.to_str().unwrap(),
                "--base",
                fx.rk1.path.to_str().unwrap(),
                out.to_str().unwrap(),
            ])
            .current_dir(w.path())
            .env("SOURCE_DATE_EPOCH", epoch)
            .env("IMGBUILD_SECRETS", e.secrets())
            .env("IMGBUILD_CACHE_DIR", e.cache())
            .env("IMGBUILD_K3S_MIRROR", e.mirror_url())
            .output()
            .unwrap()
    };
    let r = run_with("1700000000");
    assert!(r.status.success(), "{}", text(&r));
    let root = fsck_ext4(&fx.rk1, &out, 2, w.path());
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
    let r = run_with("yesterday");
    assert_eq!(r.status.code(), Some(1), "{}", text(&r));
    assert!(
        text(&r).contains("SOURCE_DATE_EPOCH=\"yesterday\""),
        "{}",
        text(&r)
    );
}

#[test]
fn k3s_install_online_and_none_bake_no_air_gap_payload() {
    let w = scratch();
    for (install, expect_runcmd) in [("online", true), ("none", false)] {
        let dir = w.path().join(install);
        std::fs::create_dir(&dir).unwrap();
        let p = edited_profiles(&dir, |t| {
            t.replace(
                "    disable: [traefik]\n",
                &format!("    disable: [traefik]\n    install: {install}\n"),
            )
        });
        let args = with_manifests(&["render", "node02", "--json"], &p);
        let (code, out, err) = run(&dir, &args_ref(&args));
        assert_eq!(code, 0, "{install}: {err}");
        let files: serde_json::Value = serde_json::from_str(&out).unwrap();
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
        let args = with_manifests(&["render", "node02", "--contents"], &p);
        let (code, out, err) = run(&dir, &args_ref(&args));
        assert_eq!(code, 0, "{install}: {err}");
        assert_eq!(
            out.contains("https://get.k3s.io"),
            expect_runcmd,
            "{install}: {out}"
        );
        // `check` accepts both.
        let args = with_manifests(&["check"], &p);
        let (code, _, err) = run(&dir, &args_ref(&args));
        assert_eq!(code, 0, "{install}: {err}");
    }
    // Anything else is a profile error naming the file and field.
    let dir = w.path().join("bad");
    std::fs::create_dir(&dir).unwrap();
    let p = edited_profiles(&dir, |t| {
        t.replace(
            "    disable: [traefik]\n",
            "    disable: [traefik]\n    install: sometimes\n",
        )
    });
    let args = with_manifests(&["check"], &p);
    let (code, _, err) = run(&dir, &args_ref(&args));
    assert_eq!(code, 3, "{err}");
    assert!(
        err.contains("cluster.yaml") && err.contains("install") && err.contains("airgap"),
        "{err}"
    );
}

#[test]
fn check_warns_what_an_air_gapped_node_still_fetches_at_first_boot() {
    let w = scratch();
    let p = profiles();
    let (code, out, err) = run(w.path(), &["check", "--profiles", p.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
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
    let dir = w.path().join("online");
    std::fs::create_dir(&dir).unwrap();
    let p = edited_profiles(&dir, |t| {
        t.replace(
            "    disable: [traefik]\n",
            "    disable: [traefik]\n    install: online\n",
        )
    });
    let args = with_manifests(&["check"], &p);
    let (code, _, err) = run(&dir, &args_ref(&args));
    assert_eq!(code, 0, "{err}");
    assert!(!err.contains("fetched from the internet"), "{err}");
}

#[test]
fn check_json_reports_the_profiles_and_what_builds_add() {
    let w = scratch();
    let (chart_sha, image_sha) = ("c".repeat(64), "d".repeat(64));
    let image = format!("registry.example.org/team/app:1.0@sha256:{image_sha}");
    let p = edited_profiles(w.path(), |t| {
        t.replace(
            "    disable: [traefik]\n",
            &format!(
                "    disable: [traefik]\n  images: [\"{image}\"]\n  bootstrap:\n    manifests: [gitops.yaml]\n    charts:\n      - name: demo\n        repo: https://charts.example.org/stable\n        chart: demo\n        version: 0.1.0\n        sha256: {chart_sha}\n        namespace: demo\n"
            ),
        )
    });
    let manifest = p.join("manifests/gitops.yaml");
    std::fs::create_dir_all(manifest.parent().unwrap()).unwrap();
    std::fs::write(
        &manifest,
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: gitops\n",
    )
    .unwrap();
    let manifest_sha = String::from_utf8(sh(&format!("sha256sum {}", q(&manifest))).stdout)
        .unwrap()[..64]
        .to_string();

    let args = with_manifests(&["check", "--json"], &p);
    let (code, out, err) = run(w.path(), &args_ref(&args));
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).expect("stdout is one JSON document");
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
