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
