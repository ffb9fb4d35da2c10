//! CI artifacts: unsealed images carry no secret, sealing equals a sealed
//! build file for file, bytes are reproducible, artifacts verify against
//! their provenance, and bad inputs are refused with nothing written.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::support::project::{Project, bases, repo_overrides};
use crate::support::{bytes::*, fixtures::*, harness::*};

/// Builds `targets` with `extra` flags from every board's fixture base.
fn build(w: &Project, extra: &[&str], targets: &[&Path]) {
    w.imgbuild(bases()).args(extra).args(targets).ok();
}

/// Every secret value in `secrets`: tokens, node passwords, and one line of
/// each private key (PEM/OpenSSH bodies are base64 lines).
fn secret_values(secrets: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut walk = vec![secrets.to_owned()];
    while let Some(d) = walk.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk.push(p);
                continue;
            }
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            let body = std::fs::read_to_string(&p).unwrap();
            if name == "token" || name == "agent-token" || name == "node-password" {
                out.push(body.trim().to_string());
            } else if name.ends_with(".key") || name == "ssh_host_ed25519_key" {
                // Every base64 line of the key, so no part of it may appear.
                out.extend(
                    body.lines()
                        .filter(|l| !l.starts_with("-----") && l.len() >= 32)
                        .map(str::to_string),
                );
            }
        }
    }
    assert!(out.len() >= 10, "{out:?}");
    out
}

#[test]
fn unsealed_images_hold_no_secret_anywhere_in_their_bytes() {
    let w = Project::example();
    let secrets = w.secrets();
    // The cluster's secrets exist (an operator made them), but an unsealed
    // build must neither read nor change them.
    w.imgbuild(["secrets", "--generate"]).ok();
    let before = sh(&format!(
        "cd {} && find . -type f | sort | xargs sha256sum",
        q(&secrets)
    ))
    .stdout;
    let out = w.join("dist");
    w.imgbuild(["--all", "--unsealed", "--out-dir", out.to_str().unwrap()])
        .args(bases())
        .ok();
    let after = sh(&format!(
        "cd {} && find . -type f | sort | xargs sha256sum",
        q(&secrets)
    ))
    .stdout;
    assert_eq!(before, after, "an unsealed build touched the secrets");

    let needles = w.path().join("needles");
    std::fs::write(&needles, secret_values(&secrets).join("\n") + "\n").unwrap();
    let mut images = 0;
    for e in std::fs::read_dir(&out).unwrap() {
        let img = e.unwrap().path();
        if !img.to_string_lossy().ends_with(".img") {
            continue;
        }
        images += 1;
        // Every byte of the image, freed blocks and holes included.
        let (code, found) = sh_status(&format!("grep -a -o -F -f {} {}", q(&needles), q(&img)));
        assert_eq!(
            code,
            1,
            "{} holds secret values: {}",
            img.display(),
            found.chars().take(200).collect::<String>()
        );
        let r = w
            .imgbuild(["inspect", "--json", img.to_str().unwrap()])
            .ok();
        let (t, v) = (&r.text, r.json());
        assert_eq!(v["provenance"]["unsealed"], true, "{t}");
    }
    assert_eq!(images, 6);
}

/// Every file of an ext4 partition image: path -> (mode, uid, gid, content sha256 or link).
fn ext4_tree(part: &Path) -> BTreeMap<String, String> {
    use sha2::{Digest, Sha256};
    let fs = ext4_view::Ext4::load_from_path(part).unwrap();
    let mut out = BTreeMap::new();
    let mut dirs = vec!["/".to_string()];
    while let Some(d) = dirs.pop() {
        for e in fs.read_dir(d.as_str()).unwrap() {
            let e = e.unwrap();
            let name = e.file_name().as_str().unwrap().to_string();
            if name == "." || name == ".." || name == "lost+found" {
                continue;
            }
            let path = format!("{}/{name}", d.trim_end_matches('/'));
            let m = fs.symlink_metadata(path.as_str()).unwrap();
            let what = if m.is_dir() {
                dirs.push(path.clone());
                "dir".to_string()
            } else if m.is_symlink() {
                let t = fs.read_link(path.as_str()).unwrap();
                format!("-> {}", String::from_utf8_lossy(AsRef::<[u8]>::as_ref(&t)))
            } else {
                hex::encode(Sha256::digest(fs.read(path.as_str()).unwrap()))
            };
            out.insert(
                path,
                format!("{:o} {}:{} {what}", m.mode(), m.uid(), m.gid()),
            );
        }
    }
    out
}

fn fat_tree(part: &Path) -> BTreeMap<String, String> {
    let out = sh(&format!(
        "{} {} dump {}",
        python(),
        q(&repo().join("tests/fixtures/fat.py")),
        q(part)
    ))
    .stdout;
    serde_json::from_slice(&out).unwrap()
}

/// Every file system's tree of `image` in the layout `layout`.
fn trees(layout: &Layout, image: &Path, work: &Path) -> BTreeMap<u32, BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for &(index, start, len) in &layout.parts {
        let part = work.join(format!("p{index}"));
        extract(image, start, len, &part);
        let fat = sh_status(&format!("fsck.fat -n {}", q(&part))).0 == 0;
        let ext = sh_status(&format!("e2fsck -fn {}", q(&part))).0 == 0;
        if ext {
            out.insert(index, ext4_tree(&part));
        } else if fat {
            out.insert(index, fat_tree(&part));
        }
        std::fs::remove_file(&part).unwrap();
    }
    out
}

#[test]
fn sealing_an_unsealed_image_equals_a_sealed_build_file_for_file() {
    let fx = fixtures();
    let w = Project::example();
    w.imgbuild(["secrets", "--generate"]).ok();
    for (node, layout) in [
        ("node01.cm4", &fx.cm4),
        ("node02.rk1", &fx.rk1),
        ("nuc2.nuc", &fx.nuc),
    ] {
        let dir = w.mkdir(node);
        let direct = dir.join("direct").join(format!("{node}.img"));
        build(&w, &[], &[&direct]);
        let unsealed = dir.join("ci").join(format!("{node}.img.zst"));
        build(&w, &["--unsealed"], &[&unsealed]);
        let sealed = dir.join(format!("{node}.sealed.img"));
        let report = w
            .imgbuild([
                "seal",
                "--json",
                unsealed.to_str().unwrap(),
                "-o",
                sealed.to_str().unwrap(),
            ])
            .cwd(&dir)
            .json();
        assert!(
            report["files"].as_array().unwrap().iter().any(|f| f["path"]
                .as_str()
                .unwrap()
                .ends_with("ssh_host_ed25519_key")),
            "{report}"
        );
        let work = dir.join("work");
        std::fs::create_dir(&work).unwrap();
        let a = trees(layout, &direct, &work);
        let b = trees(layout, &sealed, &work);
        assert!(!a.is_empty());
        for (index, tree) in &a {
            let other = &b[index];
            for (path, v) in tree {
                assert_eq!(other.get(path), Some(v), "{node} p{index} {path}");
            }
            assert_eq!(
                tree.len(),
                other.len(),
                "{node} p{index}: extra files after sealing"
            );
        }
        // Both pass their checkers; the artifact was not modified.
        for &(index, start, len) in &layout.parts {
            let part = work.join("check");
            extract(&sealed, start, len, &part);
            let (fat, ext) = (
                sh_status(&format!("fsck.fat -n {}", q(&part))).0,
                sh_status(&format!("e2fsck -fn {}", q(&part))).0,
            );
            assert!(
                fat == 0 || ext == 0 || index == 14,
                "{node} p{index} fails its checker"
            );
        }
        w.imgbuild(["verify", unsealed.to_str().unwrap()])
            .cwd(&dir)
            .ok();
    }
}

#[test]
fn unsealed_bytes_are_reproducible_across_directories_umask_locale_and_time_zone() {
    let fx = fixtures();
    let p = Project::example();
    let mut digests = Vec::new();
    for (i, (umask, tz, lang)) in [(0o022, "UTC", "C"), (0o077, "Asia/Kolkata", "de_DE.UTF-8")]
        .into_iter()
        .enumerate()
    {
        // Another working and output directory each time, the same profiles.
        let w = p.mkdir(format!("run-{i}"));
        let out = w.join("some/where").join("node02.rk1.img");
        p.imgbuild([
            "--base",
            fx.rk1.path.to_str().unwrap(),
            "--unsealed",
            out.to_str().unwrap(),
        ])
        .cwd(&w)
        .umask(umask)
        .env("TZ", tz)
        .env("LANG", lang)
        .env("LC_ALL", lang)
        .env("IMGBUILD_SECRETS", w.join("never-read"))
        .ok();
        assert!(
            !w.join("never-read").exists(),
            "an unsealed build made a secrets dir"
        );
        let len = std::fs::metadata(&out).unwrap().len();
        let statement = std::fs::read(format!("{}.intoto.json", out.display())).unwrap();
        digests.push((hash_range(&out, 0, len), statement));
    }
    assert_eq!(digests[0].0, digests[1].0, "image bytes differ");
    assert_eq!(digests[0].1, digests[1].1, "provenance statements differ");
}

#[test]
fn verify_checks_the_artifact_and_tells_what_it_was_built_from() {
    let fx = fixtures();
    let w = Project::example();
    let out = w.join("node03.rk1.img.xz");
    build(&w, &["--unsealed"], &[&out]);
    let v = w
        .imgbuild(["verify", "--json", out.to_str().unwrap()])
        .json();
    assert_eq!(v["sums_checked"], true);
    assert_eq!(v["statement_checked"], true);
    assert_eq!(v["parameters"]["node"], "node03");
    assert_eq!(v["parameters"]["unsealed"], true);
    let deps = v["built_from"].as_array().unwrap();
    let names: Vec<&str> = deps.iter().map(|d| d["name"].as_str().unwrap()).collect();
    assert_eq!(
        names,
        [
            "stock image",
            "k3s binary",
            "k3s air-gap images",
            "overlays",
            "profiles"
        ]
    );
    assert_eq!(
        deps[0]["digest"]["sha256"],
        "88584d5797bac01efd3bb1063935ce9f00947e4d4aa0c671d0a39ec8db6ca8f7"
    );
    assert!(
        deps[1]["uri"]
            .as_str()
            .unwrap()
            .ends_with("/v1.32.5%2Bk3s1/k3s-arm64")
    );
    // The statement is an in-toto v1 Statement with a SLSA v1 predicate.
    let st: serde_json::Value =
        serde_json::from_slice(&std::fs::read(format!("{}.intoto.json", out.display())).unwrap())
            .unwrap();
    assert_eq!(st["_type"], "https://in-toto.io/Statement/v1");
    assert_eq!(st["predicateType"], "https://slsa.dev/provenance/v1");
    assert_eq!(st["subject"][0]["name"], "node03.rk1.img.xz");
    assert_eq!(st["subject"][0]["digest"]["sha256"], v["sha256"]);

    // One flipped byte is caught, by verify and by seal.
    let f = std::fs::OpenOptions::new().write(true).open(&out).unwrap();
    use std::os::unix::fs::FileExt;
    let mut b = [0u8; 1];
    std::fs::File::open(&out)
        .unwrap()
        .read_exact_at(&mut b, 1000)
        .unwrap();
    f.write_all_at(&[b[0] ^ 0x01], 1000).unwrap();
    let r = w.imgbuild(["verify", out.to_str().unwrap()]).expect_exit(1);
    assert!(
        r.text.contains("differs from") && r.text.contains("modified"),
        "{}",
        r.text
    );
    let sealed = w.join("s.img");
    let r = w
        .imgbuild([
            "seal",
            out.to_str().unwrap(),
            "-o",
            sealed.to_str().unwrap(),
        ])
        .expect_exit(1);
    assert!(r.text.contains("modified after it was built"), "{}", r.text);
    assert!(!sealed.exists());
    let _ = fx;
}

#[test]
fn bad_seal_inputs_are_refused_and_nothing_is_written() {
    let w = Project::example();
    let secrets = w.secrets();
    let unsealed = w.join("ci/node04.rk1.img");
    build(&w, &["--unsealed"], &[&unsealed]);
    let out = w.join("out.img");
    let seal = |profiles: &Path, image: &Path, extra: &[&str]| {
        w.imgbuild(["seal", "--profiles", profiles.to_str().unwrap()])
            .args(repo_overrides())
            .arg(image)
            .args(extra)
            .args(["-o", out.to_str().unwrap()])
            .run()
    };
    // No secrets yet: sealing never creates them.
    let r = seal(&w.profiles(), &unsealed, &[]);
    assert_eq!(r.code, 1, "{}", r.text);
    assert!(r.text.contains("never creates"), "{}", r.text);
    assert!(!secrets.exists() && !out.exists());
    // Secrets of the cluster but none for this node.
    std::fs::create_dir(&secrets).unwrap();
    std::fs::set_permissions(
        &secrets,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    w.imgbuild(["secrets", "--print-token", "server"]).ok();
    let r = seal(&w.profiles(), &unsealed, &[]);
    assert_eq!(r.code, 1, "{}", r.text);
    assert!(
        r.text.contains("lacks") && r.text.contains("nodes/node04/ssh_host_ed25519_key"),
        "{}",
        r.text
    );
    assert!(!out.exists());
    w.imgbuild(["secrets", "--generate"]).ok();
    // For another node.
    let r = seal(&w.profiles(), &unsealed, &["--node", "node03"]);
    assert_eq!(r.code, 2, "{}", r.text);
    assert!(
        r.text.contains("built for node node04, not node03"),
        "{}",
        r.text
    );
    // Built from other profiles (a label changed since).
    let other = w.mkdir("other");
    sh(&format!(
        "cp -r {} {}",
        q(&repo().join("profiles")),
        q(&other)
    ));
    let n4 = other.join("profiles/nodes/node04.yaml");
    let t = std::fs::read_to_string(&n4).unwrap();
    std::fs::write(&n4, t.replace("node-type: rk1", "node-type: rk1-b")).unwrap();
    let r = seal(&other.join("profiles"), &unsealed, &[]);
    assert_eq!(r.code, 1, "{}", r.text);
    assert!(r.text.contains("profile digest"), "{}", r.text);
    assert!(!out.exists());
    // Sealed already.
    let r = seal(&w.profiles(), &unsealed, &[]);
    assert_eq!(r.code, 0, "{}", r.text);
    let again = w.join("again.img");
    let r = w
        .imgbuild(["seal", out.to_str().unwrap(), "-o", again.to_str().unwrap()])
        .expect_exit(2);
    assert!(r.text.contains("already sealed"), "{}", r.text);
    assert!(!again.exists());
    // Not an imgbuild image at all.
    let r = w
        .imgbuild([
            "seal",
            fixtures().rk1.path.to_str().unwrap(),
            "-o",
            again.to_str().unwrap(),
        ])
        .expect_exit(2);
    assert!(r.text.contains("no provenance record"), "{}", r.text);
    // No partial files anywhere.
    let left = sh(&format!(
        "find {} -name '*.partial' -o -name '.imgbuild-seal-*'",
        q(w.path())
    ))
    .stdout;
    assert!(left.is_empty(), "{}", String::from_utf8_lossy(&left));
}

#[test]
fn in_ci_a_build_that_bakes_secrets_needs_an_explicit_flag() {
    let fx = fixtures();
    let w = Project::example();
    let out: PathBuf = w.join("node02.rk1.img");
    let ci = |extra: &[&str]| {
        w.imgbuild(["--base", fx.rk1.path.to_str().unwrap()])
            .args(extra)
            .arg(&out)
            .env("CI", "true")
    };
    let r = ci(&[]).expect_exit(2);
    assert!(
        r.text.contains("--unsealed") && r.text.contains("--sealed"),
        "{}",
        r.text
    );
    assert!(!out.exists() && !w.secrets().exists());
    ci(&["--unsealed"]).ok();
    assert!(!w.secrets().exists());
    ci(&["--sealed"]).ok();
    assert!(w.secrets().exists());
}

#[test]
fn flashing_a_ci_artifact_seals_it_on_the_way_and_leaves_it_untouched() {
    let fx = fixtures();
    let w = Project::example();
    let bmc = crate::support::bmc::FakeBmc::start("turing");
    // Profiles whose Turing Pi board is the fake BMC; the artifact is built
    // from the same profiles, as CI would from the operator's repository.
    w.edit(
        "profiles/cluster.yaml",
        "bmc: turingpi.home.arpa",
        &format!("bmc: {}", bmc.host()),
    );
    let artifact = w.join("ci/node02.rk1.img.zst");
    let run_bmc = |args: &[&str]| {
        w.imgbuild(args)
            .args(repo_overrides())
            .env("IMGBUILD_BMC_PASSWORD", "turing")
            .ok()
    };
    run_bmc(&[
        "--unsealed",
        "--base",
        fx.rk1.path.to_str().unwrap(),
        artifact.to_str().unwrap(),
    ]);
    run_bmc(&["secrets", "--generate"]);
    let before = sha_file(&artifact);
    run_bmc(&[
        "flash",
        "node02",
        "--yes",
        "--image",
        artifact.to_str().unwrap(),
    ]);
    assert_eq!(sha_file(&artifact), before, "the artifact was modified");
    // What reached the slot is exactly the sealed image.
    let sealed = w.join("sealed/node02.rk1.img");
    run_bmc(&[
        "seal",
        artifact.to_str().unwrap(),
        "-o",
        sealed.to_str().unwrap(),
    ]);
    let slot = bmc.state.lock().unwrap().slots_dir.join("slot2.img");
    assert_eq!(
        sha_file(&slot),
        sha_file(&sealed),
        "the slot holds other bytes"
    );
    let root = fsck_ext4(&fx.rk1, &slot, 2, w.path());
    let fs = ext4_view::Ext4::load_from_path(&root).unwrap();
    assert!(fs.exists("/etc/ssh/ssh_host_ed25519_key").unwrap());
    assert!(fs.exists("/etc/rancher/k3s/token").unwrap());
    // Nothing temporary is left beside the outputs.
    let left = sh(&format!("find {} -name '.imgbuild-*'", q(w.path()))).stdout;
    assert!(left.is_empty(), "{}", String::from_utf8_lossy(&left));
}

fn sha_file(p: &Path) -> String {
    hash_range(p, 0, std::fs::metadata(p).unwrap().len())
}

/// The example CI workflows are valid YAML, and the commands they run work
/// as written (with local stock images standing in for the downloads).
#[test]
fn the_ci_workflow_commands_build_and_verify_unsealed_artifacts() {
    let gh: serde_yaml_ng::Value = serde_yaml_ng::from_slice(
        &std::fs::read(repo().join("docs/ci/github-actions.yml")).unwrap(),
    )
    .unwrap();
    let gl: serde_yaml_ng::Value =
        serde_yaml_ng::from_slice(&std::fs::read(repo().join("docs/ci/gitlab-ci.yml")).unwrap())
            .unwrap();
    let steps = gh["jobs"]["images"]["steps"].as_sequence().unwrap();
    let run_of = |name: &str| -> String {
        steps
            .iter()
            .find(|s| s["name"].as_str() == Some(name))
            .and_then(|s| s["run"].as_str())
            .unwrap_or_else(|| panic!("no step {name:?}"))
            .trim()
            .to_string()
    };
    let build = run_of("Build every node, unsealed");
    let verify = run_of("Verify what was built");
    let script: Vec<&str> = gl["images"]["script"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap())
        .collect();
    assert!(
        script.contains(&build.as_str()),
        "GitLab builds differently"
    );
    assert!(
        script.contains(&verify.as_str()),
        "GitLab verifies differently"
    );
    let upload = steps
        .iter()
        .find(|s| {
            s["uses"]
                .as_str()
                .is_some_and(|u| u.starts_with("actions/upload-artifact"))
        })
        .unwrap();
    let paths = upload["with"]["path"].as_str().unwrap();
    assert!(!paths.contains("secrets"), "{paths}");

    // Run them in a checkout-like directory (two nodes keep xz quick).
    let w = Project::example();
    for d in ["firmware-manifests", "overlays"] {
        sh(&format!("cp -r {} {}", q(&repo().join(d)), q(w.path())));
    }
    for n in ["node03", "node04", "nuc2", "ws03"] {
        w.remove(&format!("profiles/nodes/{n}.yaml"));
    }
    let mirror = crate::support::mirror::env().mirror_url();
    let b = bases().join(" ");
    let shell = |cmd: &str| {
        let path = format!(
            "{}:{}",
            bin().parent().unwrap().display(),
            std::env::var("PATH").unwrap()
        );
        let out = std::process::Command::new("bash")
            .arg("-ec")
            .arg(cmd)
            .current_dir(w.path())
            .env("PATH", path)
            .env("CI", "true")
            .env("SOURCE_DATE_EPOCH", "1714003200")
            .env("IMGBUILD_CACHE_DIR", w.cache())
            .env("IMGBUILD_K3S_MIRROR", &mirror)
            .env_remove("IMGBUILD_SECRETS")
            .output()
            .unwrap();
        assert!(out.status.success(), "{cmd}: {}", text(&out));
    };
    shell(&format!("{build} {b}"));
    shell(&verify);
    assert!(
        !w.secrets().exists(),
        "the CI build made a secrets directory"
    );
    let n = std::fs::read_dir(w.join("dist"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".img.xz")
        })
        .count();
    assert_eq!(n, 2);
}
