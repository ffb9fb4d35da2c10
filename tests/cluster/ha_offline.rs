//! Air-gapped builds of the HA example: `imgbuild fetch` fetches what the
//! builds of a board's nodes need (stock image, k3s, bootstrap charts,
//! container images) so that `--offline` builds work afterwards with no
//! request to the registry or the chart server; registry downloads retry
//! transient failures like release downloads do; `cache list|clean` know
//! image archives, blobs and charts; `render` and `check` show what a build
//! adds.

use std::path::{Path, PathBuf};

use crate::support::chart::{PLAIN_TEMPLATE, chart_tgz, sha256_hex};
use crate::support::http;
use crate::support::mirror::K3S_VERSION;
use crate::support::project::Project;
use crate::support::registry::{Registry, ServedImage};
use crate::support::{fixtures::*, harness::*};

/// The HA example (`docs/examples/ha`) with a cm4 manifest whose stock
/// image is the test fixture (a file:// URL).
fn ha_with_local_cm4() -> Project {
    let ws = Project::ha();
    let fx = fixtures();
    let mut v: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(ws.override_manifest("cm4")).unwrap())
            .unwrap();
    let mut source = serde_yaml_ng::Mapping::new();
    source.insert(
        "url".into(),
        format!("file://{}", fx.cm4.path.display()).into(),
    );
    source.insert("sha256".into(), sha256sum(&fx.cm4.path).into());
    v["source"] = source.into();
    ws.write(
        "firmware-manifests/cm4.yaml",
        serde_yaml_ng::to_string(&v).unwrap(),
    );
    ws
}

/// The HA example with kube-vip and an app image from the fake registry, and
/// a bootstrap manifest and chart (served by `charts`).
struct Served {
    reg: Registry,
    kv: ServedImage,
    app: ServedImage,
    charts: http::Server,
    chart_digest: String,
}

fn serve(ws: &Project) -> Served {
    let reg = Registry::start();
    let kv = reg.serve_image("kube-vip/kube-vip", false);
    let app = reg.serve_image("team/app", false);
    ws.edit(
        "profiles/cluster.yaml",
        "  vip:\n",
        &format!("  vip:\n    image: {}\n", kv.reference),
    );
    let tgz = chart_tgz(ws.path(), PLAIN_TEMPLATE);
    let chart_digest = sha256_hex(&tgz);
    let charts = http::Server::start(Default::default());
    charts.put("/charts/demo-0.1.0.tgz", tgz);
    let m = ws.profiles().join("manifests");
    std::fs::create_dir_all(&m).unwrap();
    std::fs::write(
        m.join("gitops.yaml"),
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: gitops\n",
    )
    .unwrap();
    ws.edit(
        "profiles/cluster.yaml",
        "\ndefaults:",
        &format!(
            "  images: [\"{}\"]\n  bootstrap:\n    manifests: [gitops.yaml]\n    charts:\n      - name: demo\n        repo: http://127.0.0.1:{}/charts\n        chart: demo\n        version: 0.1.0\n        sha256: {chart_digest}\n        namespace: demo\n\ndefaults:",
            app.reference, charts.port
        ),
    );
    Served {
        reg,
        kv,
        app,
        charts,
        chart_digest,
    }
}

#[test]
fn fetch_then_offline_build_needs_no_network_and_without_fetch_names_what_is_missing() {
    let ws = ha_with_local_cm4();
    let s = serve(&ws);
    let r = ws.imgbuild(["fetch", "cm4"]).run();
    assert_eq!(r.code, 0, "{}", r.text);
    for want in [
        "cm4: ".to_string(),
        format!("k3s {K3S_VERSION} arm64: "),
        "chart demo 0.1.0: ".to_string(),
        format!("image {} (arm64): ", s.app.reference),
        format!("image {} (arm64): ", s.kv.reference),
    ] {
        assert!(r.text.contains(&want), "{want:?} in\n{}", r.text);
    }
    assert_eq!(s.charts.gets("/charts/demo-0.1.0.tgz").len(), 1);
    let registry_before = s.reg.log().len();
    let charts_before = s.charts.requests().len();

    // --json (offline: all of it is in the cache now): the same, by board and
    // by what each extra is, each path in the cache.
    let r = ws.imgbuild(["--offline", "fetch", "cm4", "--json"]).run();
    assert_eq!(r.code, 0, "{}", r.text);
    let v: serde_json::Value = serde_json::Deserializer::from_str(&r.text)
        .into_iter()
        .next()
        .unwrap()
        .unwrap();
    let boards = v["boards"].as_array().unwrap();
    assert_eq!(boards.len(), 1, "{v:#}");
    assert_eq!(boards[0]["board"], "cm4");
    let mut whats: Vec<&str> = Vec::new();
    for e in boards.iter().chain(v["extras"].as_array().unwrap()) {
        let path = Path::new(e["path"].as_str().unwrap());
        assert!(path.starts_with(ws.cache()) && path.exists(), "{e}");
        whats.extend(e["what"].as_str());
    }
    let k3s = format!("k3s {K3S_VERSION} arm64");
    let app = format!("image {} (arm64)", s.app.reference);
    let kv = format!("image {} (arm64)", s.kv.reference);
    for want in [k3s.as_str(), "chart demo 0.1.0", app.as_str(), kv.as_str()] {
        assert!(whats.contains(&want), "{want:?} in {v:#}");
    }
    assert_eq!(s.reg.log().len(), registry_before);

    // Offline, from the cache alone (the stock image too: no --base).
    let out = ws.path().join("node01.cm4.img");
    let r = ws
        .imgbuild(["--offline", "--sums", out.to_str().unwrap()])
        .run();
    assert_eq!(r.code, 0, "{}", r.text);
    assert_eq!(s.reg.log().len(), registry_before, "{:?}", s.reg.log());
    assert_eq!(s.charts.requests().len(), charts_before);
    let st: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(format!("{}.intoto.json", out.display()))
            .unwrap()
            .trim(),
    )
    .unwrap();
    let deps = st["predicate"]["buildDefinition"]["resolvedDependencies"].to_string();
    for want in [
        s.chart_digest.as_str(),
        s.app.index_digest.as_str(),
        s.kv.index_digest.as_str(),
    ] {
        assert!(deps.contains(want), "{want} in {deps}");
    }
    // What `render` plans (offline, from the profiles) is what the build
    // baked: the same paths, read back with ext4-view after `e2fsck -fn`.
    let r = ws
        .imgbuild(["--offline", "render", "node01", "--json"])
        .run();
    assert_eq!(r.code, 0, "{}", r.text);
    let json_start = r.text.find('[').unwrap();
    let entries: serde_json::Value = serde_json::Deserializer::from_str(&r.text[json_start..])
        .into_iter()
        .next()
        .unwrap()
        .unwrap();
    let mut planned: Vec<String> = entries
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e.get("added_by_build").is_some())
        .map(|e| e["path"].as_str().unwrap().to_string())
        .collect();
    planned.sort();
    let work = ws.path().join("read");
    std::fs::create_dir(&work).unwrap();
    let fx = fixtures();
    let fs = ext4_view::Ext4::load_from_path(fsck_ext4(&fx.cm4, &out, 2, &work)).unwrap();
    let mut baked = Vec::new();
    for dir in [
        "/var/lib/rancher/k3s/server/manifests",
        "/var/lib/rancher/k3s/agent/images",
    ] {
        for e in fs.read_dir(dir).unwrap() {
            let name = e.unwrap().file_name().as_str().unwrap().to_string();
            let from_additions = name.starts_with("imgbuild-bootstrap-")
                || name.starts_with("imgbuild-chart-")
                || dir.ends_with("/images") && name.starts_with("imgbuild-");
            if from_additions {
                baked.push(format!("{dir}/{name}"));
            }
        }
    }
    baked.sort();
    assert_eq!(planned, baked);
    assert_eq!(planned.len(), 4, "{planned:?}");
    std::fs::remove_dir_all(&work).unwrap();

    // A second fetch finds everything in the cache.
    let r = ws.imgbuild(["fetch", "cm4"]).run();
    assert_eq!(r.code, 0, "{}", r.text);
    assert_eq!(s.reg.log().len(), registry_before);
    assert_eq!(s.charts.requests().len(), charts_before);

    // Without the image archive: refused offline, naming it and `fetch`.
    let oci = ws.cache().join("oci");
    let aside = ws.path().join("oci-aside");
    std::fs::rename(&oci, &aside).unwrap();
    let again = ws.path().join("again/node01.cm4.img");
    let r = ws.imgbuild(["--offline", again.to_str().unwrap()]).run();
    assert_ne!(r.code, 0, "{}", r.text);
    for want in [
        format!(
            "--offline: the image {} (arm64) is not in the cache",
            s.app.reference
        ),
        "run `imgbuild fetch`".to_string(),
    ] {
        assert!(r.text.contains(&want), "{want:?} in\n{}", r.text);
    }
    assert!(!again.exists());
    std::fs::rename(&aside, &oci).unwrap();

    // Without the chart: the same, naming the chart.
    std::fs::remove_file(ws.cache().join("assets").join(&s.chart_digest)).unwrap();
    let r = ws.imgbuild(["--offline", again.to_str().unwrap()]).run();
    assert_ne!(r.code, 0, "{}", r.text);
    for want in [
        "--offline: chart demo (demo 0.1.0, http://127.0.0.1:",
        "is not in the cache",
        "run `imgbuild fetch`",
    ] {
        assert!(r.text.contains(want), "{want:?} in\n{}", r.text);
    }
    assert!(!again.exists());
    assert_eq!(s.reg.log().len(), registry_before);
    assert_eq!(s.charts.requests().len(), charts_before);
}

#[test]
fn fetch_refuses_profiles_that_do_not_load() {
    let ws = ha_with_local_cm4();
    ws.edit("profiles/nodes/node02.yaml", "role: server", "role: boss");
    let r = ws.imgbuild(["fetch", "cm4"]).run();
    assert_eq!(r.code, 3, "{}", r.text);
    assert!(r.text.contains("node02.yaml"), "{}", r.text);
    assert!(r.text.contains("boss"), "{}", r.text);
    assert!(!ws.cache().join("images").exists());
}

#[test]
fn registry_downloads_retry_5xx_with_backoff_but_not_4xx() {
    let ws = ha_with_local_cm4();
    let s = serve(&ws);
    let (_, layer) = &s.app.per_arch["arm64"];
    let blob = format!("/v2/team/app/blobs/sha256:{layer}");
    let gets = || {
        s.reg
            .log()
            .iter()
            .filter(|l| **l == format!("GET {blob}"))
            .count()
    };
    let cached = ws.cache().join("assets").join(layer);

    // One 503: retried after a pause, and the blob lands verified.
    s.reg.fail(&blob, 503, 1);
    let r = ws.imgbuild(["fetch", "cm4"]).run();
    assert_eq!(r.code, 0, "{}", r.text);
    assert!(
        r.text.contains("HTTP 503") && r.text.contains("retrying in 0.5 s (attempt 2 of 6)"),
        "{}",
        r.text
    );
    assert_eq!(gets(), 2);
    let sum = String::from_utf8(sh(&format!("sha256sum {}", q(&cached))).stdout).unwrap();
    assert_eq!(&sum[..64], layer.as_str());

    // Always 503: gives up after --retries attempts, nothing cached.
    std::fs::remove_dir_all(ws.cache().join("oci")).unwrap();
    std::fs::remove_file(&cached).unwrap();
    s.reg.fail(&blob, 503, 100);
    let r = ws.imgbuild(["--retries", "2", "fetch", "cm4"]).run();
    assert_ne!(r.code, 0, "{}", r.text);
    assert!(
        r.text
            .contains(&format!("{blob}: gave up after 2 attempt(s): HTTP 503")),
        "{}",
        r.text
    );
    assert_eq!(gets(), 4);
    assert!(!cached.exists());

    // A 4xx is an answer: no retry.
    s.reg.fail(&blob, 403, 100);
    let r = ws.imgbuild(["fetch", "cm4"]).run();
    assert_ne!(r.code, 0, "{}", r.text);
    assert!(r.text.contains("HTTP 403"), "{}", r.text);
    assert!(!r.text.contains("retrying"), "{}", r.text);
    assert_eq!(gets(), 5);
    assert!(!cached.exists());
    let partial: Vec<_> = std::fs::read_dir(ws.cache().join("partial"))
        .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(partial.is_empty(), "{partial:?}");
}

#[test]
fn render_and_check_list_what_the_build_adds_without_downloading() {
    let ws = ha_with_local_cm4();
    let s = serve(&ws);
    let manifest_sum = String::from_utf8(
        sh(&format!(
            "sha256sum {}",
            q(&ws.profiles().join("manifests/gitops.yaml"))
        ))
        .stdout,
    )
    .unwrap();
    let auto = "/var/lib/rancher/k3s/server/manifests";
    let images = "/var/lib/rancher/k3s/agent/images";
    let app = format!("imgbuild-app-{}.tar", &s.app.index_digest[..12]);
    let kv = format!("imgbuild-kube-vip-{}.tar", &s.kv.index_digest[..12]);

    // The cluster-init server: the manifest, the chart and both images, with
    // their digests; offline, with an empty cache.
    let r = ws.imgbuild(["--offline", "render", "node01"]).run();
    assert_eq!(r.code, 0, "{}", r.text);
    let line = |path: &str| {
        r.text
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(path))
            .unwrap_or_else(|| panic!("{path} in\n{}", r.text))
            .to_string()
    };
    let l = line(&format!("{auto}/imgbuild-bootstrap-gitops.yaml"));
    assert!(
        l.contains("from bootstrap manifest gitops.yaml")
            && l.contains(&format!("sha256:{}", &manifest_sum[..64])),
        "{l}"
    );
    let l = line(&format!("{auto}/imgbuild-chart-demo.yaml"));
    assert!(
        l.contains("from helm chart demo (demo 0.1.0)")
            && l.contains(&format!(
                "/charts/demo-0.1.0.tgz> sha256:{}",
                s.chart_digest
            )),
        "{l}"
    );
    let l = line(&format!("{images}/{app}"));
    assert!(
        l.contains(&format!("from container image {} (arm64)", s.app.reference))
            && l.contains(&format!("sha256:{}", s.app.index_digest)),
        "{l}"
    );
    line(&format!("{images}/{kv}"));
    assert!(s.reg.log().is_empty(), "{:?}", s.reg.log());
    assert!(s.charts.requests().is_empty());
    assert!(!ws.cache().join("oci").exists() && !ws.cache().join("assets").exists());

    // An agent: only the app image, for its own architecture.
    let r = ws.imgbuild(["--offline", "render", "node04"]).run();
    assert_eq!(r.code, 0, "{}", r.text);
    assert!(r.text.contains(&format!("{images}/{app}")), "{}", r.text);
    assert!(
        !r.text.contains("imgbuild-chart-") && !r.text.contains(&kv),
        "{}",
        r.text
    );

    // `check` lists the same per node.
    let r = ws.imgbuild(["--offline", "check"]).run();
    assert_eq!(r.code, 0, "{}", r.text);
    let has = |node: &str, path: &str| {
        r.text.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 2 && f[0] == node && f[1] == path
        })
    };
    assert!(r.text.contains("added by builds"), "{}", r.text);
    assert!(
        has("node01", &format!("{auto}/imgbuild-chart-demo.yaml")),
        "{}",
        r.text
    );
    assert!(has("node01", &format!("{images}/{kv}")), "{}", r.text);
    assert!(has("node04", &format!("{images}/{app}")), "{}", r.text);
    assert!(
        r.text.contains("container image") && r.text.contains("(arm64)"),
        "{}",
        r.text
    );
    assert!(
        !has("node04", &format!("{auto}/imgbuild-chart-demo.yaml")),
        "{}",
        r.text
    );
    assert!(
        !has("node02", &format!("{auto}/imgbuild-chart-demo.yaml")),
        "{}",
        r.text
    );
    assert!(s.reg.log().is_empty());
    assert!(s.charts.requests().is_empty());
}

#[test]
fn cache_list_and_clean_know_image_archives_blobs_and_charts() {
    let ws = ha_with_local_cm4();
    let s = serve(&ws);
    let r = ws.imgbuild(["fetch", "cm4"]).run();
    assert_eq!(r.code, 0, "{}", r.text);
    let cache = ws.cache();
    let list = || {
        let r = ws.imgbuild(["cache", "list", "--json"]).run();
        assert_eq!(r.code, 0, "{}", r.text);
        let v: serde_json::Value = serde_json::from_str(&r.text[r.text.find('{').unwrap()..])
            .unwrap_or_else(|e| panic!("{e}: {}", r.text));
        v["entries"].as_array().unwrap().clone()
    };
    let entries = list();
    let find = |entries: &[serde_json::Value], key: &str| {
        entries
            .iter()
            .find(|e| e["key"] == key)
            .unwrap_or_else(|| panic!("no {key} in {entries:#?}"))
            .clone()
    };
    // Every entry's size is the file's.
    for e in &entries {
        let m = std::fs::metadata(e["path"].as_str().unwrap()).unwrap();
        assert_eq!(e["apparent"], m.len(), "{e}");
    }
    let app = find(&entries, &s.app.index_digest);
    assert_eq!(app["kind"], "oci");
    assert_eq!(app["used_by"], format!("image {}", s.app.reference));
    let app_archive = PathBuf::from(app["path"].as_str().unwrap());
    assert!(app_archive.starts_with(cache.join("oci")));
    let kv = find(&entries, &s.kv.index_digest);
    let kv_archive = PathBuf::from(kv["path"].as_str().unwrap());
    let chart = find(&entries, &s.chart_digest);
    assert_eq!(chart["kind"], "asset");
    assert_eq!(chart["used_by"], "chart demo (demo 0.1.0)");
    let (_, app_layer) = &s.app.per_arch["arm64"];
    let (_, kv_layer) = &s.kv.per_arch["arm64"];
    assert_eq!(
        find(&entries, app_layer)["used_by"],
        format!("blob of {}", s.app.reference)
    );
    assert_eq!(
        find(&entries, kv_layer)["used_by"],
        format!("blob of {}", s.kv.reference)
    );
    let k3s: Vec<_> = entries.iter().filter(|e| e["board"] == "k3s").collect();
    assert_eq!(k3s.len(), 2, "{entries:#?}");
    // The text listing shows them too, with readable sizes.
    let r = ws.imgbuild(["cache", "list"]).run();
    let line = r
        .text
        .lines()
        .find(|l| l.trim_start().starts_with("oci ") && l.contains(&s.app.index_digest))
        .unwrap_or_else(|| panic!("{}", r.text));
    assert!(
        line.contains(" kB ") && line.ends_with(&format!("image {}", s.app.reference)),
        "{line}"
    );

    // Profiles that cannot be read: nothing of theirs is unreferenced.
    let hidden = ws.path().join("profiles-hidden");
    std::fs::rename(ws.profiles(), &hidden).unwrap();
    let r = ws.imgbuild(["cache", "clean"]).run();
    assert_eq!(r.code, 0, "{}", r.text);
    assert!(r.text.contains("0 entries removed"), "{}", r.text);
    std::fs::rename(&hidden, ws.profiles()).unwrap();

    // The app and the chart leave the profiles: clean removes the app's
    // archive and blobs and the chart archive, nothing else.
    let p = ws.profiles().join("cluster.yaml");
    let t = std::fs::read_to_string(&p).unwrap();
    let (from, to) = (
        t.find("  images: ").unwrap(),
        t.find("\ndefaults:").unwrap(),
    );
    std::fs::write(&p, format!("{}{}", &t[..from], &t[to + 1..])).unwrap();
    let before: Vec<PathBuf> = entries
        .iter()
        .map(|e| PathBuf::from(e["path"].as_str().unwrap()))
        .collect();
    let r = ws.imgbuild(["cache", "clean"]).run();
    assert_eq!(r.code, 0, "{}", r.text);
    let gone: Vec<PathBuf> = before.iter().filter(|p| !p.exists()).cloned().collect();
    let app_blobs: Vec<PathBuf> = entries
        .iter()
        .filter(|e| e["used_by"] == format!("blob of {}", s.app.reference))
        .map(|e| PathBuf::from(e["path"].as_str().unwrap()))
        .collect();
    assert_eq!(app_blobs.len(), 2, "config and layer: {entries:#?}");
    let mut want = vec![
        app_archive.clone(),
        cache.join("assets").join(&s.chart_digest),
    ];
    want.extend(app_blobs);
    want.sort();
    let mut gone_sorted = gone.clone();
    gone_sorted.sort();
    assert_eq!(gone_sorted, want, "{}", r.text);
    assert!(r.text.contains("4 entries removed"), "{}", r.text);
    assert!(kv_archive.is_file());
    assert!(cache.join("assets").join(kv_layer).is_file());
    // The kube-vip archive still reads back whole (its blobs are all there).
    let out = sh(&format!(
        "{} {} {} arm64",
        python(),
        q(&repo().join("tests/fixtures/oci_layout.py")),
        q(&kv_archive)
    ));
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(got["architecture"], "arm64");

    // A damaged archive is unusable: clean removes it and the blobs only it held.
    let len = std::fs::metadata(&kv_archive).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&kv_archive)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let r = ws.imgbuild(["cache", "clean"]).run();
    assert_eq!(r.code, 0, "{}", r.text);
    assert!(
        r.text
            .contains("truncated; not an image archive imgbuild wrote"),
        "{}",
        r.text
    );
    assert!(r.text.contains("3 entries removed"), "{}", r.text);
    assert!(!kv_archive.exists());
    assert!(!cache.join("assets").join(kv_layer).exists());
    let entries = list();
    assert_eq!(
        entries.iter().filter(|e| e["board"] == "k3s").count(),
        2,
        "{entries:#?}"
    );
    assert!(entries.iter().any(|e| e["board"] == "cm4"), "{entries:#?}");

    // --all: nothing is left.
    let r = ws.imgbuild(["cache", "clean", "--all"]).run();
    assert_eq!(r.code, 0, "{}", r.text);
    let left: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "{left:?}");
}
