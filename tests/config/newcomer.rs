//! A new user's first steps, away from the repository: `init` in an empty
//! directory, `check` and a bake with only the manifests and overlays built
//! into the binary, local overrides file by file, `overlays export`.

use std::path::{Path, PathBuf};

use crate::support::project::{Project, Run};
use crate::support::{fixtures::*, harness::*};

/// imgbuild in `cwd` with HOME = `home`, nothing from the repository: no
/// --manifests/--overlays/--secrets and no profiles but those found from
/// `cwd`, so only built-ins and what is beside the profiles count (imgbuild
/// never looks further up than that).
fn run_in(w: &Project, cwd: &Path, home: &Path, args: &[&str]) -> Run {
    w.imgbuild(args)
        .cwd(cwd)
        .env("HOME", home)
        .env_remove("XDG_CACHE_HOME")
        .env_remove("IMGBUILD_PROFILES")
        .env_remove("IMGBUILD_SECRETS")
        .run()
}

/// A HOME with an SSH key made by ssh-keygen; returns (home, public key line).
fn home_with_key(dir: &Path) -> (PathBuf, String) {
    let home = dir.join("home");
    std::fs::create_dir_all(home.join(".ssh")).unwrap();
    sh(&format!(
        "ssh-keygen -q -t ed25519 -N '' -C newcomer@test -f {}",
        q(&home.join(".ssh/id_ed25519"))
    ));
    let key = std::fs::read_to_string(home.join(".ssh/id_ed25519.pub")).unwrap();
    (home, key.trim().to_string())
}

/// Every file of the ext4 partition `index` of `image` that `paths` names.
fn root_files(image: &Path, paths: &[String], work: &Path) -> Vec<(String, Vec<u8>)> {
    let part = fsck_ext4(&fixtures().rk1, image, 2, work);
    let fs = ext4_view::Ext4::load_from_path(&part).unwrap();
    let out = paths
        .iter()
        .map(|p| (p.clone(), fs.read(p.as_str()).unwrap_or_default()))
        .collect();
    std::fs::remove_file(part).unwrap();
    out
}

#[test]
fn init_check_and_bake_in_an_empty_directory_use_the_built_in_defaults() {
    let w = Project::empty();
    let (home, key) = home_with_key(w.path());
    let proj = w.path().join("cluster");
    let o = run_in(
        &w,
        w.path(),
        &home,
        &[
            "init",
            "cluster",
            "--node",
            "node01=rk1@1",
            "--node",
            "node02=rk1@2",
        ],
    );
    let out = o.text;
    assert_eq!(o.code, 0, "{out}");
    // It says what it assumed, including which key it took.
    assert!(out.contains("assumed"), "{out}");
    assert!(out.contains("id_ed25519.pub"), "{out}");
    assert!(out.contains("turingpi.local"), "{out}");
    let cluster = std::fs::read_to_string(proj.join("profiles/cluster.yaml")).unwrap();
    assert!(cluster.contains(&key), "{cluster}");
    let ignore = std::fs::read_to_string(proj.join(".gitignore")).unwrap();
    assert!(ignore.lines().any(|l| l == "/secrets/") && ignore.lines().any(|l| l == "/dist/"));
    // git itself agrees that secrets/ and dist/ are ignored.
    sh(&format!(
        "cd {} && git init -q . && mkdir -p secrets dist && touch secrets/x dist/y && git check-ignore -q secrets/x && git check-ignore -q dist/y && rm -rf .git secrets dist",
        q(&proj)
    ));
    assert!(!proj.join("firmware-manifests").exists() && !proj.join("overlays").exists());

    let o = run_in(&w, &proj, &home, &["check"]);
    let out = o.text;
    assert_eq!(o.code, 0, "{out}");
    assert!(out.contains("rk1 (built-in)"), "{out}");
    assert!(out.contains("no overrides"), "{out}");

    // A bake from a fixture base with built-in manifests and overlays only.
    let base = format!("rk1={}", fixtures().rk1.path.display());
    let o = run_in(&w, &proj, &home, &["--base", &base, "dist/node02.rk1.img"]);
    assert_eq!(o.code, 0, "{}", o.text);
    let render = run_in(&w, &proj, &home, &["render", "node02", "--json"]);
    assert_eq!(render.code, 0, "{}", render.text);
    let listed = render.json();
    let files = listed.as_array().unwrap();
    assert!(files.iter().all(|f| f["origin"] == "built_in"), "{listed}");
    let root_paths: Vec<String> = files
        .iter()
        .filter(|f| f["target"] == "root" && f["symlink"].is_null())
        .map(|f| f["path"].as_str().unwrap().to_string())
        .collect();
    let before = root_files(&proj.join("dist/node02.rk1.img"), &root_paths, w.path());

    // One local override replaces exactly that file.
    let over = "common/root/etc/rancher/k3s/config.yaml.d/10-node.yaml.j2";
    let local = proj.join("overlays").join(over);
    std::fs::create_dir_all(local.parent().unwrap()).unwrap();
    std::fs::write(&local, "# local override for {{ node.name }}\n").unwrap();
    let o = run_in(&w, &proj, &home, &["check"]);
    let out = o.text;
    assert_eq!(o.code, 0, "{out}");
    assert!(out.contains("1 overridden") && out.contains(over), "{out}");
    let o = run_in(&w, &proj, &home, &["render", "node02"]);
    let out = o.text;
    let line = out
        .lines()
        .find(|l| l.contains("/etc/rancher/k3s/config.yaml.d/10-node.yaml"))
        .unwrap();
    assert!(line.contains(&format!("from ./overlays/{over}")), "{line}");
    assert_eq!(
        out.lines().filter(|l| l.contains("<built-in>")).count(),
        out.lines().count() - 1,
        "{out}"
    );
    let o = run_in(&w, &proj, &home, &["--base", &base, "dist2/node02.rk1.img"]);
    assert_eq!(o.code, 0, "{}", o.text);
    let after = root_files(&proj.join("dist2/node02.rk1.img"), &root_paths, w.path());
    let changed: Vec<&str> = before
        .iter()
        .zip(&after)
        .filter(|(a, b)| a.1 != b.1)
        .map(|(a, _)| a.0.as_str())
        .collect();
    assert_eq!(changed, ["/etc/rancher/k3s/config.yaml.d/10-node.yaml"]);
    let (_, content) = after
        .iter()
        .find(|(p, _)| p == "/etc/rancher/k3s/config.yaml.d/10-node.yaml")
        .unwrap();
    assert_eq!(content, b"# local override for node02\n");
}

#[test]
fn init_refuses_to_overwrite_and_explains_what_it_lacks() {
    let w = Project::empty();
    let (home, _) = home_with_key(w.path());
    let o = run_in(&w, w.path(), &home, &["init", "a"]);
    assert_eq!(o.code, 0, "{}", o.text);
    let before = std::fs::read(w.path().join("a/profiles/cluster.yaml")).unwrap();
    let o = run_in(&w, w.path(), &home, &["init", "a", "--name", "other"]);
    assert_eq!(o.code, 2, "{}", o.text);
    assert!(o.text.contains("refusing to overwrite"), "{}", o.text);
    assert_eq!(
        std::fs::read(w.path().join("a/profiles/cluster.yaml")).unwrap(),
        before
    );

    // No key anywhere.
    let empty = w.path().join("empty-home");
    std::fs::create_dir_all(&empty).unwrap();
    let o = run_in(&w, w.path(), &empty, &["init", "b"]);
    assert_eq!(o.code, 2);
    assert!(o.text.contains("ssh-keygen"), "{}", o.text);
    assert!(!w.path().join("b/profiles").exists());
    // A private key is refused by name, its content never echoed.
    let priv_key = home.join(".ssh/id_ed25519");
    let o = run_in(
        &w,
        w.path(),
        &home,
        &["init", "b", "--ssh-key", priv_key.to_str().unwrap()],
    );
    assert_eq!(o.code, 2);
    assert!(o.text.contains("is a private key"), "{}", o.text);
    assert!(!o.text.contains("PRIVATE KEY"), "{}", o.text);
    // Bad node specs.
    for (spec, msg) in [
        ("node01", "expected NAME=BOARD[@SLOT]"),
        ("node01=rk1@7", "the slot must be 1, 2, 3 or 4"),
        ("node01=rk1", "sits in a Turing Pi slot"),
        ("nuc1=nuc@1", "is not a Turing Pi module"),
        ("x=pi5@1", "no board \"pi5\""),
    ] {
        let o = run_in(&w, w.path(), &home, &["init", "c", "--node", spec]);
        assert_eq!(o.code, 2, "{spec}: {}", o.text);
        assert!(o.text.contains(msg), "{spec}: {}", o.text);
    }
    // A mixed cluster with a NUC and flags for everything: nothing assumed but the defaults' absence.
    let o = run_in(
        &w,
        w.path(),
        &home,
        &[
            "init",
            "d",
            "--name",
            "lab",
            "--server",
            "10.0.0.5",
            "--domain",
            "lab.example",
            "--admin-user",
            "ops",
            "--bmc",
            "10.0.0.2",
            "--node",
            "cp=cm4@1",
            "--node",
            "gpu=nuc",
            "--ssh-key",
            home.join(".ssh/id_ed25519.pub").to_str().unwrap(),
        ],
    );
    assert_eq!(o.code, 0, "{}", o.text);
    assert!(!o.text.contains("assumed"), "{}", o.text);
    assert!(o.text.contains("cp.cm4, gpu.nuc"), "{}", o.text);
}

#[test]
fn init_json_reports_the_files_written_what_it_assumed_and_the_check() {
    let w = Project::empty();
    let (home, _) = home_with_key(w.path());
    let o = run_in(
        &w,
        w.path(),
        &home,
        &[
            "init", "j", "--json", "--name", "lab", "--node", "cp=rk1@1", "--node", "gpu=nuc",
        ],
    );
    assert_eq!(o.code, 0, "{}", o.text);
    let v = o.json();
    // Written: exactly the files now in the directory.
    let mut written: Vec<String> = v["written"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect();
    written.sort();
    let found = sh(&format!("cd {} && find j -type f | sort", q(w.path())));
    let found: Vec<String> = String::from_utf8(found.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(written, found);
    assert!(
        written.contains(&"j/profiles/cluster.yaml".to_string()),
        "{v:#}"
    );
    // Assumed: what no flag gave, the key file among it.
    let assumed: Vec<&str> = v["assumed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let key = home.join(".ssh/id_ed25519.pub");
    assert!(
        assumed.contains(&format!("admin SSH key (--ssh-key): {}", key.display()).as_str()),
        "{assumed:?}"
    );
    assert!(
        assumed.contains(&"DNS domain (--domain): home.arpa"),
        "{assumed:?}"
    );
    assert!(
        !assumed
            .iter()
            .any(|a| a.contains("--name") || a.contains("--node")),
        "{assumed:?}"
    );
    // The check of what was written, as `check --json` reports it.
    let check = &v["check"];
    assert_eq!(check["cluster"], "lab");
    assert_eq!(check["nodes"], serde_json::json!(["cp.rk1", "gpu.nuc"]));
    assert!(
        check["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["origin"] == "built_in"),
        "{check:#}"
    );
    assert_eq!(check["overlays_overridden"], serde_json::json!([]));
    let o2 = run_in(&w, &w.path().join("j"), &home, &["check", "--json"]);
    assert_eq!(o2.code, 0, "{}", o2.text);
    let again = o2.json();
    assert_eq!(&again, check);
    assert!(check["overlays_builtin"].as_u64().unwrap() > 0);
}

#[test]
fn overlays_export_writes_the_shipped_tree_and_bad_overrides_are_named() {
    let w = Project::empty();
    let (home, _) = home_with_key(w.path());
    let out_dir = w.path().join("exported");
    let o = run_in(
        &w,
        w.path(),
        &home,
        &["overlays", "export", out_dir.to_str().unwrap()],
    );
    assert_eq!(o.code, 0, "{}", o.text);
    // Byte for byte (and mode for mode) the repository's overlays.
    sh(&format!(
        "diff -r {} {}",
        q(&repo().join("overlays")),
        q(&out_dir)
    ));
    let modes = |d: &Path| {
        String::from_utf8(
            sh(&format!(
                "cd {} && find . -type f -printf '%P %m\\n' | sort",
                q(d)
            ))
            .stdout,
        )
        .unwrap()
    };
    assert_eq!(modes(&repo().join("overlays")), modes(&out_dir));
    let o = run_in(
        &w,
        w.path(),
        &home,
        &["overlays", "export", out_dir.to_str().unwrap()],
    );
    assert_eq!(o.code, 2);
    assert!(o.text.contains("--force"), "{}", o.text);

    // An exported copy used as the override directory changes nothing.
    let o = run_in(&w, w.path(), &home, &["init", "p"]);
    assert_eq!(o.code, 0, "{}", o.text);
    let profiles = w.path().join("p/profiles");
    let p = profiles.to_str().unwrap();
    let builtin = run_in(&w, w.path(), &home, &["render", "node01", "--profiles", p]);
    let with_copy = run_in(
        &w,
        w.path(),
        &home,
        &[
            "render",
            "node01",
            "--profiles",
            p,
            "--overlays",
            out_dir.to_str().unwrap(),
        ],
    );
    assert_eq!(with_copy.code, 0, "{}", with_copy.text);
    let strip = |o: &Run| -> Vec<String> {
        o.stdout
            .lines()
            .map(|l| l.split("  from ").next().unwrap().to_string())
            .collect()
    };
    assert_eq!(strip(&builtin), strip(&with_copy));

    // A file directly under a feature directory.
    let bad = w.path().join("bad-overlays/common");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(bad.join("stray.j2"), "x").unwrap();
    let o = run_in(
        &w,
        w.path(),
        &home,
        &[
            "check",
            "--profiles",
            p,
            "--overlays",
            bad.parent().unwrap().to_str().unwrap(),
        ],
    );
    assert_eq!(o.code, 3, "{}", o.text);
    assert!(
        o.text.contains("bad-overlays/common/stray.j2"),
        "{}",
        o.text
    );
    assert!(
        o.text
            .contains("expected a directory named after its target"),
        "{}",
        o.text
    );
    // A missing override directory given by flag.
    let o = run_in(
        &w,
        w.path(),
        &home,
        &["check", "--profiles", p, "--overlays", "nowhere"],
    );
    assert_eq!(o.code, 3, "{}", o.text);
    assert!(
        o.text
            .contains("nowhere: the overlays directory does not exist"),
        "{}",
        o.text
    );
    // --no-builtin with no manifest directory has no boards at all.
    let o = run_in(
        &w,
        w.path(),
        &home,
        &["check", "--profiles", p, "--no-builtin"],
    );
    assert_eq!(o.code, 3, "{}", o.text);
    assert!(o.text.contains("no firmware manifests"), "{}", o.text);
    // A broken local manifest is named by its file, and replaces the built-in one.
    let m = w.path().join("p/firmware-manifests");
    std::fs::create_dir_all(&m).unwrap();
    std::fs::write(m.join("rk1.yaml"), "board: rk1\n").unwrap();
    let o = run_in(&w, w.path(), &home, &["check", "--profiles", p]);
    assert_eq!(o.code, 3, "{}", o.text);
    assert!(o.text.contains("firmware-manifests/rk1.yaml"), "{}", o.text);
    assert!(o.text.contains("built-in, overridden by"), "{}", o.text);
}

#[test]
fn bash_completion_offers_the_commands_and_the_profiles_node_names() {
    let w = Project::empty();
    let (home, _) = home_with_key(w.path());
    let o = run_in(
        &w,
        w.path(),
        &home,
        &["init", "--node", "cp=rk1@1", "--node", "gpu=nuc"],
    );
    assert_eq!(o.code, 0, "{}", o.text);
    let o = run_in(&w, w.path(), &home, &["completions", "bash"]);
    assert_eq!(o.code, 0, "{}", o.text);
    let script = w.path().join("imgbuild.bash");
    std::fs::write(&script, &o.stdout).unwrap();
    // Real bash completes as it would on Tab: COMP_WORDS/COMP_CWORD, then the function.
    let complete = |words: &str| -> String {
        let out = sh(&format!(
            "cd {} && source {} && COMP_WORDS=({words}) && COMP_CWORD=$((${{#COMP_WORDS[@]}} - 1)) && \
             $(complete -p imgbuild | sed 's/.*-F \\([^ ]*\\).*/\\1/') imgbuild \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\" && \
             printf '%s\\n' \"${{COMPREPLY[@]}}\"",
            q(w.path()),
            q(&script)
        ));
        String::from_utf8(out.stdout).unwrap()
    };
    let top = complete("imgbuild ''");
    for cmd in [
        "init",
        "check",
        "render",
        "flash",
        "completions",
        "man",
        "overlays",
    ] {
        assert!(top.lines().any(|l| l == cmd), "{cmd} missing:\n{top}");
    }
    assert_eq!(complete("imgbuild ini").trim(), "init");
    let nodes = complete("imgbuild render ''");
    assert_eq!(nodes.lines().collect::<Vec<_>>(), ["cp", "gpu"]);
    assert_eq!(complete("imgbuild flash g").trim(), "gpu");
    // Options still complete after a node command.
    assert!(complete("imgbuild render --con").contains("--contents"));

    // zsh parses its script (when zsh is installed).
    let o = run_in(&w, w.path(), &home, &["completions", "zsh"]);
    assert_eq!(o.code, 0);
    let zsh = w.path().join("_imgbuild");
    std::fs::write(&zsh, &o.stdout).unwrap();
    if sh_status("command -v zsh").0 == 0 {
        sh(&format!("zsh -n {}", q(&zsh)));
    } else {
        skipped("zsh -n on the zsh completion", "zsh is not installed");
    }
    for shell in ["fish", "powershell"] {
        let o = run_in(&w, w.path(), &home, &["completions", shell]);
        assert_eq!(o.code, 0);
        assert!(o.stdout.contains("imgbuild"));
    }
    let o = run_in(&w, w.path(), &home, &["completions", "tcsh"]);
    assert_eq!(o.code, 2);
    assert!(o.text.contains("possible values"), "{}", o.text);
}

#[test]
fn the_man_page_renders_with_groff_without_warnings() {
    let w = Project::empty();
    let home = w.path();
    let o = run_in(&w, w.path(), home, &["man"]);
    assert_eq!(o.code, 0, "{}", o.text);
    let page = w.path().join("imgbuild.1");
    std::fs::write(&page, &o.stdout).unwrap();
    // groff with every warning enabled, as `man -l` would format it.
    let out = sh(&format!("groff -man -Tutf8 -ww -z {} 2>&1", q(&page)));
    assert!(
        out.stdout.is_empty(),
        "groff warns:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let shown =
        String::from_utf8(sh(&format!("groff -man -Tutf8 -P-cbou {}", q(&page))).stdout).unwrap();
    for word in [
        "NAME",
        "imgbuild",
        "SUBCOMMANDS",
        "init",
        "completions",
        "--overlays",
        "--no-builtin",
    ] {
        assert!(shown.contains(word), "{word} missing:\n{shown}");
    }
    let dir = w.path().join("man1");
    let o = run_in(
        &w,
        w.path(),
        home,
        &["man", "--out-dir", dir.to_str().unwrap()],
    );
    assert_eq!(o.code, 0, "{}", o.text);
    for f in [
        "imgbuild.1",
        "imgbuild-init.1",
        "imgbuild-overlays-export.1",
    ] {
        assert!(dir.join(f).is_file(), "{f} not written");
    }
}

const HOSTS_YML: &str = "\
all:
  children:
    turing_pis:
      hosts:
        tp1:
          ansible_host: turingpi.home.arpa
    tp1_nodes:
      hosts:
        node01: {slot_num: 1, type: pi4, ansible_host: 192.168.1.101}
        node02: {slot_num: 2, type: rk1}
        node03: {slot_num: 3, type: rk1, root_dev: /dev/nvme0n1}
    extra_nodes:
      hosts:
        nuc2: {node_ip: 192.168.1.120, flannel_iface: enp3s0}
        ws03: {nvidia_gpu_node: true, workstation: true}
";

const HOSTS_INI: &str = "\
# The same inventory in Ansible's INI form.
[turing_pis]
tp1 ansible_host=turingpi.home.arpa

[tp1_nodes]
node01 slot_num=1 type=pi4 ansible_host=192.168.1.101
node02 slot_num=2 type=rk1
node03 slot_num=3 type=rk1 root_dev=/dev/nvme0n1

[extra_nodes]
nuc2 node_ip=192.168.1.120 flannel_iface=enp3s0
ws03 nvidia_gpu_node=True workstation=true
";

const GROUP_VARS: &str = "\
control_plane: node01
local_domain: home.arpa
cluster_domain: apps.home.arpa
k3s_version: v1.32.5+k3s1
ansible_account: admin
";

/// A YAML text without the top-level `keys` (and their indented lines).
fn without(text: &str, keys: &[&str]) -> String {
    let mut out = String::new();
    let mut skipping = false;
    for l in text.lines() {
        let top = !l.starts_with(' ') && !l.starts_with('#') && !l.is_empty();
        let nested_key = l.trim_start();
        if top {
            skipping = keys.iter().any(|k| l.starts_with(&format!("{k}:")));
        } else if keys.iter().any(|k| {
            k.contains('.') && {
                let leaf = k.rsplit('.').next().unwrap();
                nested_key.starts_with(&format!("{leaf}:"))
            }
        }) {
            continue;
        }
        if !skipping {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

#[test]
fn import_ansible_maps_every_key_and_renders_like_the_hand_written_profiles() {
    let w = Project::empty();
    let home = w.path().join("home");
    std::fs::create_dir_all(&home).unwrap();
    let ans = w.path().join("ansible");
    std::fs::create_dir_all(ans.join("group_vars")).unwrap();
    std::fs::write(ans.join("hosts.yml"), HOSTS_YML).unwrap();
    std::fs::write(ans.join("hosts.ini"), HOSTS_INI).unwrap();
    std::fs::write(ans.join("group_vars/all.yml"), GROUP_VARS).unwrap();
    // The example profiles' admin key, so that the cluster files can agree.
    let example = std::fs::read_to_string(repo().join("profiles/cluster.yaml")).unwrap();
    let key = example
        .lines()
        .find_map(|l| l.trim().strip_prefix("- ssh-ed25519 "))
        .map(|k| format!("ssh-ed25519 {k}"))
        .unwrap();
    let import = |inv: &str, out: &str| {
        let o = run_in(
            &w,
            &ans,
            &home,
            &[
                "import",
                "ansible",
                inv,
                "-o",
                out,
                "--ssh-key",
                &key,
                "--name",
                "homelab",
                "--json",
            ],
        );
        assert_eq!(o.code, 0, "{}", o.text);
        o.json()
    };
    let from_yaml = import("hosts.yml", "yaml");
    let from_ini = import("hosts.ini", "ini");
    // Every key of the inventory and group_vars is accounted for.
    let notes = from_yaml["notes"].as_array().unwrap();
    let noted = |k: &str| notes.iter().any(|n| n["key"] == k);
    for k in [
        "ansible_host",
        "slot_num",
        "type",
        "root_dev",
        "node_ip",
        "flannel_iface",
        "nvidia_gpu_node",
        "workstation",
        "control_plane",
        "local_domain",
        "cluster_domain",
        "k3s_version",
        "ansible_account",
    ] {
        assert!(noted(k), "{k} not in the notes: {notes:#?}");
    }
    let dropped: Vec<&str> = notes
        .iter()
        .filter(|n| n["to"].is_null())
        .map(|n| n["key"].as_str().unwrap())
        .collect();
    assert!(
        dropped.contains(&"root_dev") && dropped.contains(&"cluster_domain"),
        "{dropped:?}"
    );
    assert!(notes.iter().all(|n| !n["why"].as_str().unwrap().is_empty()));
    assert_eq!(from_yaml["notes"], from_ini["notes"]);
    // YAML and INI give the same profiles (but for the header naming the source).
    for f in [
        "cluster.yaml",
        "nodes/node01.yaml",
        "nodes/node02.yaml",
        "nodes/ws03.yaml",
        "nodes/nuc2.yaml",
    ] {
        let read = |d: &str| {
            let t = std::fs::read_to_string(ans.join(d).join("profiles").join(f)).unwrap();
            t.lines().skip(1).collect::<Vec<_>>().join("\n")
        };
        assert_eq!(read("yaml"), read("ini"), "{f}");
    }

    // The hand-written examples, less what an inventory cannot say (static
    // addresses, swap, time zone, DNS servers, extra packages).
    let hand = w.path().join("hand/profiles");
    std::fs::create_dir_all(hand.join("nodes")).unwrap();
    std::fs::write(
        hand.join("cluster.yaml"),
        without(
            &example,
            &["cluster.timezone", "cluster.dns", "defaults.packages"],
        ),
    )
    .unwrap();
    for n in ["node01", "node02", "node03", "nuc2", "ws03"] {
        let t = std::fs::read_to_string(repo().join(format!("profiles/nodes/{n}.yaml"))).unwrap();
        std::fs::write(
            hand.join(format!("nodes/{n}.yaml")),
            without(&t, &["network", "swap"]),
        )
        .unwrap();
    }
    let render = |profiles: &Path, node: &str| {
        w.imgbuild(["render", node, "--contents", "--profiles"])
            .arg(profiles)
            .ok()
            .stdout
    };
    for node in ["node02", "node03", "nuc2", "ws03"] {
        let imported = render(&ans.join("yaml/profiles"), node);
        assert_eq!(imported, render(&hand, node), "{node} renders differently");
        assert!(imported.contains("#cloud-config"));
    }
    // The control plane differs only by the taint the playbook added.
    let cp = render(&ans.join("yaml/profiles"), "node01");
    assert!(
        cp.contains("node-role.kubernetes.io/control-plane=true:NoSchedule"),
        "{cp}"
    );

    // Refuses to overwrite, and bad inventories are named with the reason.
    let o = run_in(
        &w,
        &ans,
        &home,
        &[
            "import",
            "ansible",
            "hosts.yml",
            "-o",
            "yaml",
            "--ssh-key",
            &key,
        ],
    );
    assert_eq!(o.code, 2);
    assert!(o.text.contains("refusing to overwrite"), "{}", o.text);
    for (name, inv, gv, msg) in [
        (
            "no-bmcs.yml",
            "all:\n  children:\n    extra_nodes:\n      hosts:\n        a: {}\n",
            GROUP_VARS,
            "no `turing_pis` group",
        ),
        (
            "bad.ini",
            "[turing_pis]\ntp1\n[tp1_nodes]\nn1 slot_num\n",
            GROUP_VARS,
            "bad.ini: line 4: \"slot_num\" must be key=value",
        ),
        (
            "slot.ini",
            "[turing_pis]\ntp1\n[tp1_nodes]\nn1 slot_num=9 type=rk1\n",
            GROUP_VARS,
            "`slot_num` must be 1, 2, 3 or 4",
        ),
        (
            "type.ini",
            "[turing_pis]\ntp1\n[tp1_nodes]\nn1 slot_num=1 type=pi5\n",
            GROUP_VARS,
            "type \"pi5\" is not rk1 or pi4",
        ),
        (
            "cp.ini",
            "[turing_pis]\ntp1\n[tp1_nodes]\nn1 slot_num=1 type=rk1\n",
            "local_domain: x\n",
            "no `control_plane`",
        ),
        (
            "cp2.ini",
            "[turing_pis]\ntp1\n[tp1_nodes]\nn1 slot_num=1 type=rk1\n",
            "control_plane: n9\n",
            "control_plane \"n9\" is not a node",
        ),
    ] {
        std::fs::write(ans.join(name), inv).unwrap();
        std::fs::write(ans.join("gv.yml"), gv).unwrap();
        let o = run_in(
            &w,
            &ans,
            &home,
            &[
                "import",
                "ansible",
                name,
                "--group-vars",
                "gv.yml",
                "-o",
                "never",
                "--ssh-key",
                &key,
            ],
        );
        assert_eq!(o.code, 3, "{name}: {}", o.text);
        assert!(o.text.contains(msg), "{name}: {}", o.text);
        assert!(!ans.join("never").exists(), "{name} wrote files");
    }
}

#[test]
fn diff_shows_what_a_label_changed_and_what_a_bake_added_to_its_base() {
    let w = Project::empty();
    let base = fixtures().rk1.path.clone();
    let mut images = Vec::new();
    for (dir, label) in [("p1", "rk1"), ("p2", "rk1-b")] {
        let d = w.path().join(dir);
        sh(&format!(
            "mkdir -p {0} && cp -r {1} {0}/",
            q(&d),
            q(&repo().join("profiles"))
        ));
        let node = d.join("profiles/nodes/node02.yaml");
        let t = std::fs::read_to_string(&node).unwrap();
        std::fs::write(
            &node,
            t.replace("node-type: rk1", &format!("node-type: {label}")),
        )
        .unwrap();
        let out = d.join("node02.rk1.img");
        w.imgbuild(["--profiles", d.join("profiles").to_str().unwrap()])
            .arg("--base")
            .arg(&base)
            .arg(&out)
            .ok();
        images.push(out);
    }
    let diff = |a: &Path, b: &Path| {
        w.imgbuild(["diff", a.to_str().unwrap(), b.to_str().unwrap(), "--json"])
            .run()
    };
    // The same image: equal, exit 0.
    let o = diff(&images[0], &images[0]);
    assert_eq!(o.code, 0, "{}", o.text);
    let o = w
        .imgbuild([
            "diff",
            images[0].to_str().unwrap(),
            images[0].to_str().unwrap(),
        ])
        .run();
    assert!(o.text.contains("images are equal"), "{}", o.text);

    // One label: that file, plus the seed's instance ID and provenance record,
    // which change with any content by design.
    let o = diff(&images[0], &images[1]);
    assert_eq!(o.code, 1, "{}", o.text);
    let d = o.json();
    assert_eq!(d["partitions"], serde_json::json!([]));
    let changed: Vec<(u64, String, String)> = d["file_systems"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|f| {
            f["changes"].as_array().unwrap().iter().map(move |c| {
                (
                    f["partition"].as_u64().unwrap(),
                    c["path"].as_str().unwrap().to_string(),
                    c["change"].as_str().unwrap().to_string(),
                )
            })
        })
        .collect();
    let prov = "/imgbuild.json".to_string();
    assert_eq!(
        changed,
        [
            (1, prov.clone(), "changed".to_string()),
            (1, "/meta-data".to_string(), "changed".to_string()),
            (
                2,
                "/etc/rancher/k3s/config.yaml.d/10-node.yaml".to_string(),
                "changed".to_string()
            ),
        ],
        "{d:#}"
    );
    let label_change = &d["file_systems"][1]["changes"][0];
    assert_ne!(
        label_change["before"]["sha256"],
        label_change["after"]["sha256"]
    );
    assert_eq!(label_change["after"]["mode"], 0o600);

    // Against the stock base: every file the plan placed, secrets without content.
    let o = diff(&base, &images[0]);
    assert_eq!(o.code, 1, "{}", o.text);
    let d = o.json();
    let root = d["file_systems"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["partition"] == 2)
        .unwrap()["changes"]
        .as_array()
        .unwrap()
        .clone();
    let rendered = w
        .render("node02")
        .args(["--profiles", w.join("p1/profiles").to_str().unwrap()])
        .run()
        .json();
    for f in rendered
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["target"] == "root")
    {
        let path = f["path"].as_str().unwrap();
        let c = root
            .iter()
            .find(|c| c["path"] == path)
            .unwrap_or_else(|| panic!("{path} not in the diff"));
        // The plan flags what depends on the secrets directory; of that,
        // everything but public keys and certificates is confidential.
        let public = path.ends_with(".pub") || path.ends_with(".crt");
        if f["secret"] == true && !public {
            assert_eq!(c["secret"], true, "{path}");
            assert!(
                c["after"].is_null() && c["before"].is_null(),
                "{path} shows content: {c}"
            );
        } else if c["secret"] == false {
            assert_eq!(c["after"]["mode"], f["mode"], "{path}");
        }
    }
    assert!(
        root.iter()
            .any(|c| c["path"] == "/usr/local/bin/k3s" && c["change"] == "added")
    );
    // The text form never prints a secret file's digest.
    let t = w
        .imgbuild(["diff", base.to_str().unwrap(), images[0].to_str().unwrap()])
        .run()
        .stdout;
    let token = t
        .lines()
        .find(|l| l.contains("/etc/rancher/k3s/token"))
        .unwrap();
    assert!(
        token.contains("secret") && !token.contains("sha256"),
        "{token}"
    );
    // A missing image is an error, not "different".
    let o = w
        .imgbuild(["diff", "nope.img", images[0].to_str().unwrap()])
        .run();
    assert_eq!(o.code, 1);
    assert!(o.text.contains("nope.img"), "{}", o.text);
}

#[test]
fn diff_of_one_image_compares_with_the_cached_stock_image_its_record_names() {
    let w = Project::example();
    let d = w.path();
    // A local rk1 manifest (overriding the built-in one) pinning an xz of the fixture.
    let xz = d.join("rk1.img.xz");
    sh(&format!(
        "xz -T0 -0 -c {} > {}",
        q(&fixtures().rk1.path),
        q(&xz)
    ));
    let sha = sha256sum(&xz);
    let builtin = std::fs::read_to_string(w.override_manifest("rk1")).unwrap();
    let url_line = builtin
        .lines()
        .find(|l| l.trim_start().starts_with("url:"))
        .unwrap();
    let sha_line = builtin
        .lines()
        .find(|l| l.trim_start().starts_with("sha256:"))
        .unwrap();
    w.edit(
        "firmware-manifests/rk1.yaml",
        url_line,
        &format!("  url: file://{}", xz.display()),
    )
    .edit(
        "firmware-manifests/rk1.yaml",
        sha_line,
        &format!("  sha256: {sha}"),
    );
    let o = w.imgbuild(["check"]).run();
    assert!(
        o.text
            .contains(&format!("rk1 ({})", w.manifests().display())),
        "{}",
        o.text
    );
    let out = d.join("node02.rk1.img");
    w.imgbuild([&out]).ok();
    let o = w
        .imgbuild(["diff", out.to_str().unwrap(), "--json"])
        .expect_exit(1);
    let v = o.json();
    assert!(v["a"].as_str().unwrap().contains(&sha), "{}", v["a"]);
    let root = v["file_systems"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["partition"] == 2)
        .unwrap();
    assert!(
        root["changes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["path"] == "/usr/local/bin/k3s" && c["change"] == "added")
    );
    // A stock image has no record to name its base.
    let o = w
        .imgbuild(["diff", fixtures().rk1.path.to_str().unwrap()])
        .expect_exit(2);
    assert!(
        o.text.contains("no imgbuild provenance record"),
        "{}",
        o.text
    );
    // Not in this cache: says what to run.
    let o = w
        .imgbuild(["diff", out.to_str().unwrap()])
        .env("IMGBUILD_CACHE_DIR", d.join("empty-cache"))
        .expect_exit(1);
    assert!(
        o.text.contains("is not in the cache") && o.text.contains("imgbuild fetch rk1"),
        "{}",
        o.text
    );
}

#[test]
fn init_asks_on_a_terminal() {
    let w = Project::empty();
    let (home, _) = home_with_key(w.path());
    // A real pseudo-terminal (Python's pty), answering each question as it comes.
    let script = format!(
        r#"
import os, pty, sys
pid, fd = pty.fork()
if pid == 0:
    os.chdir({cwd:?})
    os.environ["HOME"] = {home:?}
    os.execv({bin:?}, [{bin:?}, "init", "t"])
answers = [b"lab", b"", b"cp=rk1@9 w1=nuc", b"cp=rk1@1 w1=nuc", b"10.0.0.9", b"", b"", b""]
out = b""
while True:
    try:
        chunk = os.read(fd, 4096)
    except OSError:
        break
    if not chunk:
        break
    out += chunk
    while answers and out.rstrip().endswith(b":"):
        os.write(fd, answers.pop(0) + b"\n")
        out += b"\n"
        break
_, status = os.waitpid(pid, 0)
sys.stdout.write(out.decode(errors="replace"))
sys.exit(os.waitstatus_to_exitcode(status))
"#,
        cwd = w.path().display().to_string(),
        home = home.display().to_string(),
        bin = bin().display().to_string(),
    );
    let py = w.path().join("answer_init.py");
    std::fs::write(&py, script).unwrap();
    let o = Run::from(
        &std::process::Command::new("python3")
            .arg(&py)
            .output()
            .unwrap(),
    );
    let out = o.text;
    assert_eq!(o.code, 0, "{out}");
    assert!(out.contains("Cluster name [homelab]:"), "{out}");
    // A bad answer is explained and asked again.
    assert!(out.contains("the slot must be 1, 2, 3 or 4"), "{out}");
    let cluster = std::fs::read_to_string(w.path().join("t/profiles/cluster.yaml")).unwrap();
    assert!(
        cluster.contains("name: \"lab\"") && cluster.contains("server: \"10.0.0.9\""),
        "{cluster}"
    );
    assert!(w.path().join("t/profiles/nodes/w1.yaml").is_file());
    assert!(out.contains("DNS domain (--domain): home.arpa"), "{out}");
}

/// `rust-version` tells the truth: it is at least every locked dependency's
/// own `rust_version` (as `cargo metadata` reports them), and the README
/// names the same version.
#[test]
fn rust_version_covers_every_locked_dependency_and_the_readme_says_it() {
    let ours = env!("CARGO_PKG_RUST_VERSION");
    // "1.88" and "1.88.0" are the same version.
    let parse = |v: &str| -> Vec<u64> {
        let mut n: Vec<u64> = v.split('.').map(|x| x.parse().unwrap()).collect();
        n.resize(3, 0);
        n
    };
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let o = Run::from(
        &std::process::Command::new(cargo)
            .args(["metadata", "--format-version", "1", "--locked"])
            .current_dir(repo())
            .output()
            .unwrap(),
    );
    assert_eq!(o.code, 0, "{}", o.text);
    let meta = o.json();
    let mut needs: Vec<(Vec<u64>, String)> = meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| {
            let v = p["rust_version"].as_str()?;
            let (name, version) = (p["name"].as_str()?, p["version"].as_str()?);
            Some((parse(v), format!("{name} {version} needs {v}")))
        })
        .collect();
    needs.sort();
    let (highest, who) = needs.last().expect("dependencies declare rust_version");
    assert!(
        parse(ours) >= *highest,
        "Cargo.toml rust-version {ours} is too low: {who}"
    );
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    assert!(
        readme.contains(&format!("Rust {ours} or later")),
        "README.md does not say \"Rust {ours} or later\""
    );
}

/// A bare node name or a misspelt verb given where a target goes: the error
/// stays one line, and a hint line says what was probably meant.
#[test]
fn a_node_name_or_a_misspelt_verb_gets_a_did_you_mean() {
    let w = Project::empty();
    let home = w.path().join("home");
    let profiles = repo().join("profiles");
    let p = profiles.to_str().unwrap();
    let out = run_in(&w, w.path(), &home, &["--profiles", p, "node02"]);
    assert_eq!(out.code, 2, "{}", out.text);
    assert_eq!(
        out.stderr.trim_end(),
        "error: node02: the target must be named <node>.<board>.img (or .img.xz, .img.zst, or .iso for a bare-metal installer), like node02.rk1.img\n\
         hint: did you mean `imgbuild dist/node02.rk1.img` (node node02 is a rk1 board)?",
        "{}",
        out.text
    );
    let out = run_in(&w, w.path(), &home, &["--profiles", p, "chek"]);
    assert_eq!(out.code, 2, "{}", out.text);
    assert!(
        out.stderr
            .ends_with("hint: did you mean `imgbuild check`?\n"),
        "{}",
        out.text
    );
    // Neither a node nor close to a verb: no hint.
    let out = run_in(&w, w.path(), &home, &["--profiles", p, "zzzzzz"]);
    assert_eq!(out.code, 2, "{}", out.text);
    assert!(!out.text.contains("hint:"), "{}", out.text);
}

/// The first command on the first screen, in an empty directory, says what
/// to run first.
#[test]
fn no_profiles_suggests_init() {
    let w = Project::empty();
    let home = w.path().join("home");
    let out = run_in(&w, w.path(), &home, &["dist/node02.rk1.img"]);
    assert_eq!(out.code, 3, "{}", out.text);
    let t = &out.stderr;
    assert!(
        t.contains("no profiles: profiles/cluster.yaml does not exist"),
        "{t}"
    );
    assert!(t.contains("hint: run `imgbuild init`"), "{t}");
    assert!(t.trim_end().lines().count() <= 2, "{t}");
    assert!(!w.path().join("dist").exists());
}

/// A stock image that cannot be downloaded: the error, then one hint line
/// naming the ways on without network.
#[test]
fn a_failed_stock_download_says_what_to_do_next() {
    let w = Project::empty();
    let home = w.path().join("home");
    let m = w.path().join("manifests");
    std::fs::create_dir_all(&m).unwrap();
    let builtin = std::fs::read_to_string(repo().join("firmware-manifests/rk1.yaml")).unwrap();
    let url = builtin
        .lines()
        .find_map(|l| l.trim().strip_prefix("url: "))
        .unwrap()
        .to_string();
    // Port 1 on loopback: the connection is refused at once.
    std::fs::write(
        m.join("rk1.yaml"),
        builtin.replacen(&url, "http://127.0.0.1:1/ubuntu-rk1.img.xz", 1),
    )
    .unwrap();
    let p = repo().join("profiles");
    let out = run_in(
        &w,
        w.path(),
        &home,
        &[
            "--profiles",
            p.to_str().unwrap(),
            "--manifests",
            m.to_str().unwrap(),
            "--retries",
            "1",
            "dist/node02.rk1.img",
        ],
    );
    assert_eq!(out.code, 1, "{}", out.text);
    let t = &out.stderr;
    let last: Vec<&str> = t.trim_end().lines().rev().take(2).collect();
    assert!(last[1].starts_with("error: "), "{t}");
    assert!(last[1].contains("127.0.0.1:1"), "{t}");
    assert_eq!(
        last[0],
        "hint: without network, give the stock image with --base rk1=FILE, or run `imgbuild fetch rk1` where there is network and build with --offline",
        "{t}"
    );
    assert!(!w.path().join("dist/node02.rk1.img").exists());
}
