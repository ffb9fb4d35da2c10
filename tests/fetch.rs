//! Download, verify, cache and unpack against a loopback HTTP server, with
//! fixtures compressed by the real tools (xz, gzip, zstd, qemu-img).

mod support {
    pub mod bytes;
    pub mod fixtures;
    pub mod harness;
    pub mod http;
    pub mod mirror;
}

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use imgbuild::config::manifest::Manifest;
use imgbuild::source::{self as fetch, Cache, FetchOptions, RetryPolicy};
use support::http::{Faults, Server};
use support::{bytes::*, fixtures::*, harness::*, mirror::*};

struct Raw {
    dir: tempfile::TempDir,
    raw: PathBuf,
    sha: String,
}

/// A raw image with data, long zero runs and an unaligned tail.
fn raw() -> &'static Raw {
    static R: OnceLock<Raw> = OnceLock::new();
    R.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let raw = dir.path().join("disk.raw");
        sh(&format!(
            "truncate -s $((64*1024*1024 + 1536)) {r}; head -c 1M /dev/urandom | dd of={r} conv=notrunc status=none; \
             head -c 3M /dev/urandom | dd of={r} bs=1M seek=40 conv=notrunc status=none; printf tail | dd of={r} bs=1 seek=$((64*1024*1024 + 1000)) conv=notrunc status=none",
            r = q(&raw)
        ));
        let sha = hash_range(&raw, 0, std::fs::metadata(&raw).unwrap().len());
        Raw { dir, raw, sha }
    })
}

/// The raw image compressed with a real tool; returns the file.
fn packed(kind: &str) -> PathBuf {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let r = raw();
    let out = r.dir.path().join(format!("disk.{kind}"));
    if !out.exists() {
        let tmp = r.dir.path().join(format!("disk.{kind}.tmp"));
        let cmd = match kind {
            "multi.xz" => format!("xz -T2 --block-size=1MiB -c {} > {}", q(&r.raw), q(&tmp)),
            "single.xz" => format!("xz -T1 -c {} > {}", q(&r.raw), q(&tmp)),
            "gz" => format!("gzip -c {} > {}", q(&r.raw), q(&tmp)),
            "zst" => format!("zstd -q -c {} > {}", q(&r.raw), q(&tmp)),
            "qcow2" => format!(
                "qemu-img convert -c -f raw -O qcow2 {} {}",
                q(&r.raw),
                q(&tmp)
            ),
            "qcow2-plain" => format!(
                "qemu-img convert -f raw -O qcow2 -o compat=0.10 {} {}",
                q(&r.raw),
                q(&tmp)
            ),
            other => panic!("{other}"),
        };
        sh(&cmd);
        std::fs::rename(&tmp, &out).unwrap();
    }
    out
}

fn sha_of(p: &Path) -> String {
    hash_range(p, 0, std::fs::metadata(p).unwrap().len())
}

fn manifest_for(url: &str, sha256: &str) -> Manifest {
    let text = std::fs::read_to_string(repo().join("firmware-manifests/rk1.yaml"))
        .unwrap()
        .replace(
            "https://github.com/Joshua-Riek/ubuntu-rockchip/releases/download/v2.4.0/ubuntu-24.04-preinstalled-server-arm64-turing-rk1.img.xz",
            url,
        )
        .replace("88584d5797bac01efd3bb1063935ce9f00947e4d4aa0c671d0a39ec8db6ca8f7", sha256);
    serde_yaml_ng::from_str(&text).unwrap()
}

fn quick() -> FetchOptions {
    FetchOptions {
        offline: false,
        retry: RetryPolicy {
            attempts: 4,
            first_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(100),
        },
    }
}

fn assert_sparse_copy_of_raw(p: &Path) {
    assert_eq!(
        sha_of(p),
        raw().sha,
        "{} differs from the original raw image",
        p.display()
    );
    let m = std::fs::metadata(p).unwrap();
    assert!(
        m.blocks() * 512 < m.len() / 2,
        "{} is not sparse: {} of {} bytes allocated",
        p.display(),
        m.blocks() * 512,
        m.len()
    );
}

fn no_entries(cache: &Path, dir: &str) {
    let n = std::fs::read_dir(cache.join(dir))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(n, 0, "{dir} in the cache is not empty");
}

#[test]
fn every_format_unpacks_to_the_same_sparse_raw() {
    for kind in [
        "multi.xz",
        "single.xz",
        "gz",
        "zst",
        "qcow2",
        "qcow2-plain",
        "raw",
    ] {
        let src = if kind == "raw" {
            raw().raw.clone()
        } else {
            packed(kind)
        };
        let cache_dir = tempfile::tempdir().unwrap();
        let cache = Cache {
            root: cache_dir.path().to_owned(),
        };
        let m = manifest_for(&format!("file://{}", src.display()), &sha_of(&src));
        let image =
            fetch::ensure_base(&m, &cache, &quick()).unwrap_or_else(|e| panic!("{kind}: {e:#}"));
        assert_sparse_copy_of_raw(&image);
        // The download is gone once unpacked; nothing half-done remains.
        no_entries(cache_dir.path(), "downloads");
        no_entries(cache_dir.path(), "partial");
    }
    // qemu-img agrees with our qcow2 reader.
    let d = tempfile::tempdir().unwrap();
    let back = d.path().join("back.raw");
    sh(&format!(
        "qemu-img convert -f qcow2 -O raw {} {}",
        q(&packed("qcow2")),
        q(&back)
    ));
    assert_eq!(sha_of(&back), raw().sha);
}

#[test]
fn downloads_over_http_once_and_then_from_the_cache() {
    let server = Server::start(Faults {
        ranges: true,
        ..Default::default()
    });
    let xz = packed("multi.xz");
    server.put("/rk1.img.xz", std::fs::read(&xz).unwrap());
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = Cache {
        root: cache_dir.path().to_owned(),
    };
    let m = manifest_for(&server.url("/rk1.img.xz"), &sha_of(&xz));
    let a = fetch::ensure_base(&m, &cache, &quick()).unwrap();
    assert_sparse_copy_of_raw(&a);
    let b = fetch::ensure_base(&m, &cache, &quick()).unwrap();
    assert_eq!(a, b);
    assert_eq!(server.requests().len(), 1, "{:?}", server.requests());
    let offline = FetchOptions {
        offline: true,
        ..quick()
    };
    assert_eq!(fetch::ensure_base(&m, &cache, &offline).unwrap(), a);
    // --offline with an empty cache says what to do.
    let empty = Cache {
        root: tempfile::tempdir().unwrap().path().to_owned(),
    };
    let e = fetch::ensure_base(&m, &empty, &offline)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("--offline") && e.contains("imgbuild fetch rk1"),
        "{e}"
    );
}

#[test]
fn server_errors_are_retried_and_cut_downloads_resume() {
    let xz = packed("single.xz");
    let body = std::fs::read(&xz).unwrap();
    // Two 500s, then a response cut after 100 kB, then the rest by Range.
    let server = Server::start(Faults {
        ranges: true,
        fail_first: 2,
        cut_after: Some((100_000, 1)),
        ..Default::default()
    });
    server.put("/img.xz", body.clone());
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = Cache {
        root: cache_dir.path().to_owned(),
    };
    let m = manifest_for(&server.url("/img.xz"), &sha_of(&xz));
    let image = fetch::ensure_base(
        &m,
        &cache,
        &FetchOptions {
            retry: RetryPolicy {
                attempts: 5,
                ..quick().retry
            },
            ..quick()
        },
    )
    .unwrap();
    assert_sparse_copy_of_raw(&image);
    let reqs = server.requests();
    assert_eq!(reqs.len(), 4, "{reqs:?}");
    assert_eq!(reqs[3].range.as_deref(), Some("bytes=100000-"), "{reqs:?}");
}

#[test]
fn without_range_support_a_cut_download_starts_over() {
    let xz = packed("single.xz");
    let server = Server::start(Faults {
        ranges: false,
        cut_after: Some((50_000, 2)),
        ..Default::default()
    });
    server.put("/img.xz", std::fs::read(&xz).unwrap());
    let cache_dir = tempfile::tempdir().unwrap();
    let m = manifest_for(&server.url("/img.xz"), &sha_of(&xz));
    let image = fetch::ensure_base(
        &m,
        &Cache {
            root: cache_dir.path().to_owned(),
        },
        &quick(),
    )
    .unwrap();
    assert_sparse_copy_of_raw(&image);
    assert_eq!(server.requests().len(), 3);
}

#[test]
fn a_server_that_overstates_its_length_is_caught_by_range_and_digest() {
    let xz = packed("single.xz");
    let server = Server::start(Faults {
        ranges: true,
        overstate: Some(1000),
        ..Default::default()
    });
    server.put("/img.xz", std::fs::read(&xz).unwrap());
    let cache_dir = tempfile::tempdir().unwrap();
    let m = manifest_for(&server.url("/img.xz"), &sha_of(&xz));
    // Every response claims 1000 bytes more than it sends: the short body is
    // retried with Range, the server has nothing more (416), and the digest
    // proves the file complete.
    let image = fetch::ensure_base(
        &m,
        &Cache {
            root: cache_dir.path().to_owned(),
        },
        &quick(),
    )
    .unwrap();
    assert_sparse_copy_of_raw(&image);
    let reqs = server.requests();
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    assert!(reqs[1].range.is_some(), "{reqs:?}");
    // A server that always sends a short body with no Range support never
    // completes: the run gives up and leaves no cache entry.
    let liar = Server::start(Faults {
        ranges: false,
        cut_after: Some((10_000, 100)),
        ..Default::default()
    });
    liar.put("/img.xz", std::fs::read(&xz).unwrap());
    let m = manifest_for(&liar.url("/img.xz"), &sha_of(&xz));
    let cache_dir = tempfile::tempdir().unwrap();
    let e = format!(
        "{:#}",
        fetch::ensure_base(
            &m,
            &Cache {
                root: cache_dir.path().to_owned()
            },
            &quick()
        )
        .unwrap_err()
    );
    assert!(
        e.contains("gave up after 4 attempt(s)") && e.contains("connection broke")
            || e.contains("sent"),
        "{e}"
    );
    no_entries(cache_dir.path(), "images");
    no_entries(cache_dir.path(), "downloads");
}

#[test]
fn http_errors_and_unreachable_hosts_are_reported() {
    let server = Server::start(Faults::default());
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = Cache {
        root: cache_dir.path().to_owned(),
    };
    let m = manifest_for(&server.url("/missing.img.xz"), &raw().sha);
    let e = format!(
        "{:#}",
        fetch::ensure_base(&m, &cache, &quick()).unwrap_err()
    );
    assert!(
        e.contains("HTTP 404") && e.contains("/missing.img.xz"),
        "{e}"
    );
    assert_eq!(server.requests().len(), 1, "a 404 is not retried");

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let m = manifest_for(&format!("http://127.0.0.1:{port}/x.img.xz"), &raw().sha);
    let e = format!(
        "{:#}",
        fetch::ensure_base(&m, &cache, &quick()).unwrap_err()
    );
    assert!(
        e.contains("gave up after 4 attempt(s)") && e.to_lowercase().contains("connect"),
        "{e}"
    );
    no_entries(cache_dir.path(), "images");
}

#[test]
fn a_digest_mismatch_deletes_the_partial_and_names_both_digests() {
    let xz = packed("single.xz");
    let server = Server::start(Faults::default());
    server.put("/img.xz", std::fs::read(&xz).unwrap());
    let cache_dir = tempfile::tempdir().unwrap();
    let wrong = "0".repeat(64);
    let m = manifest_for(&server.url("/img.xz"), &wrong);
    let e = format!(
        "{:#}",
        fetch::ensure_base(
            &m,
            &Cache {
                root: cache_dir.path().to_owned()
            },
            &quick()
        )
        .unwrap_err()
    );
    assert!(
        e.contains(&format!("expected {wrong}")) && e.contains(&format!("got {}", sha_of(&xz))),
        "{e}"
    );
    no_entries(cache_dir.path(), "partial");
    no_entries(cache_dir.path(), "downloads");
    no_entries(cache_dir.path(), "images");
}

fn corrupt_case(name: &str, bytes: Vec<u8>, expect: &str) {
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join(name);
    std::fs::write(&f, &bytes).unwrap();
    let cache_dir = tempfile::tempdir().unwrap();
    let m = manifest_for(&format!("file://{}", f.display()), &sha_of(&f));
    let e = format!(
        "{:#}",
        fetch::ensure_base(
            &m,
            &Cache {
                root: cache_dir.path().to_owned()
            },
            &quick()
        )
        .unwrap_err()
    );
    assert!(e.contains(expect), "{name}: {e}");
    assert!(e.contains("unpacking the rk1 stock image"), "{name}: {e}");
    let images: Vec<_> = std::fs::read_dir(cache_dir.path().join("images"))
        .unwrap()
        .collect();
    assert!(images.is_empty(), "{name}: left {images:?}");
}

#[test]
fn corrupt_truncated_and_padded_streams_are_refused() {
    let xz = std::fs::read(packed("multi.xz")).unwrap();
    let mut flipped = xz.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0xFF;
    corrupt_case("flipped.xz", flipped, "corrupt Xz data");
    corrupt_case(
        "truncated.xz",
        xz[..xz.len() - 100].to_vec(),
        "corrupt Xz data",
    );
    let mut garbage = xz.clone();
    garbage.extend_from_slice(b"garbage!");
    corrupt_case("trailing.xz", garbage, "trailing data after the xz stream");
    // Stream padding is legal.
    let mut padded = xz.clone();
    padded.extend_from_slice(&[0; 8]);
    let d = tempfile::tempdir().unwrap();
    let f = d.path().join("padded.xz");
    std::fs::write(&f, &padded).unwrap();
    let m = manifest_for(&format!("file://{}", f.display()), &sha_of(&f));
    let image = fetch::ensure_base(
        &m,
        &Cache {
            root: d.path().join("c"),
        },
        &quick(),
    )
    .unwrap();
    assert_sparse_copy_of_raw(&image);

    let gz = std::fs::read(packed("gz")).unwrap();
    corrupt_case(
        "truncated.gz",
        gz[..gz.len() / 2].to_vec(),
        "corrupt Gzip data",
    );
    let mut gzg = gz.clone();
    gzg.extend_from_slice(b"xx");
    corrupt_case("trailing.gz", gzg, "Gzip");
    let zst = std::fs::read(packed("zst")).unwrap();
    corrupt_case(
        "truncated.zst",
        zst[..zst.len() / 2].to_vec(),
        "corrupt Zstd data",
    );
    let qc = std::fs::read(packed("qcow2")).unwrap();
    let mut bad_l1 = qc.clone();
    bad_l1[40..48].copy_from_slice(&u64::MAX.to_be_bytes());
    corrupt_case("bad-l1.qcow2", bad_l1, "corrupt qcow2 image");
    corrupt_case("truncated.qcow2", qc[..qc.len() / 2].to_vec(), "qcow2");
}

#[test]
fn a_full_disk_while_unpacking_leaves_no_entry() {
    let mnt = tempfile::tempdir().unwrap();
    let (code, out) = sh_status(&format!(
        "mount -t tmpfs -o size=8m tmpfs {}",
        q(mnt.path())
    ));
    if code != 0 {
        println!("skipping: cannot mount a small tmpfs here ({})", out.trim());
        return;
    }
    let src = packed("single.xz");
    let m = manifest_for(&format!("file://{}", src.display()), &sha_of(&src));
    let result = fetch::ensure_base(
        &m,
        &Cache {
            root: mnt.path().join("cache"),
        },
        &quick(),
    );
    let listing = sh_status(&format!("find {} -type f", q(mnt.path()))).1;
    sh(&format!("umount {}", q(mnt.path())));
    let e = format!("{:#}", result.unwrap_err());
    assert!(e.contains("No space left on device"), "{e}");
    assert!(
        !listing.contains("/images/") || !listing.contains(".img\n"),
        "{listing}"
    );
    assert!(!listing.contains(".img\n"), "left a cache entry: {listing}");
}

#[test]
fn checksum_files_are_used_when_no_digest_is_pinned() {
    let xz = packed("single.xz");
    let server = Server::start(Faults::default());
    server.put("/noble.img", std::fs::read(&xz).unwrap());
    server.put(
        "/SHA256SUMS",
        format!(
            "{} *noble.img\n{} *other.img\n",
            sha_of(&xz),
            "1".repeat(64)
        )
        .into_bytes(),
    );
    let mut m = manifest_for(&server.url("/noble.img"), &sha_of(&xz));
    m.source.sha256 = None;
    m.source.checksums_url = Some(server.url("/SHA256SUMS"));
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = Cache {
        root: cache_dir.path().to_owned(),
    };
    let image = fetch::ensure_base(&m, &cache, &quick()).unwrap();
    assert_sparse_copy_of_raw(&image);
    // Offline later: the digest learnt from the checksum file is remembered.
    let again = fetch::ensure_base(
        &m,
        &cache,
        &FetchOptions {
            offline: true,
            ..quick()
        },
    )
    .unwrap();
    assert_eq!(again, image);
}

#[test]
fn bake_without_base_downloads_then_outputs_compress_with_sums() {
    let fx = fixtures();
    let d = tempfile::tempdir().unwrap();
    let xz = d.path().join("rk1.img.xz");
    sh(&format!(
        "xz -T2 --block-size=4MiB -c {} > {}",
        q(&fx.rk1.path),
        q(&xz)
    ));
    let server = Server::start(Faults {
        ranges: true,
        ..Default::default()
    });
    server.put("/v2.4.0/rk1.img.xz", std::fs::read(&xz).unwrap());
    let manifests = d.path().join("manifests");
    sh(&format!(
        "cp -r {} {}",
        q(&repo().join("firmware-manifests")),
        q(&manifests)
    ));
    let rk1 = std::fs::read_to_string(manifests.join("rk1.yaml"))
        .unwrap()
        .replace(
            "https://github.com/Joshua-Riek/ubuntu-rockchip/releases/download/v2.4.0/ubuntu-24.04-preinstalled-server-arm64-turing-rk1.img.xz",
            &server.url("/v2.4.0/rk1.img.xz"),
        )
        .replace("88584d5797bac01efd3bb1063935ce9f00947e4d4aa0c671d0a39ec8db6ca8f7", &sha_of(&xz));
    std::fs::write(manifests.join("rk1.yaml"), rk1).unwrap();
    let cache = d.path().join("cache");
    let common: Vec<String> = vec![
        "--profiles".into(),
        repo().join("profiles").display().to_string(),
        "--manifests".into(),
        manifests.display().to_string(),
        "--cache-dir".into(),
        cache.display().to_string(),
    ];
    let run = |extra: &[&str]| {
        let mut args: Vec<&str> = common.iter().map(String::as_str).collect();
        args.extend_from_slice(extra);
        imgbuild(d.path(), &args)
    };
    let out = run(&[
        "dist/node02.rk1.img",
        "dist/node02.rk1.img.xz",
        "dist/node02.rk1.img.zst",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(server.requests().len(), 1, "downloaded more than once");
    let dist = d.path().join("dist");
    let raw_sha = sha_of(&dist.join("node02.rk1.img"));
    let via_xz = String::from_utf8(
        sh(&format!(
            "xz -dc {} | sha256sum",
            q(&dist.join("node02.rk1.img.xz"))
        ))
        .stdout,
    )
    .unwrap();
    let via_zst = String::from_utf8(
        sh(&format!(
            "zstd -dc {} | sha256sum",
            q(&dist.join("node02.rk1.img.zst"))
        ))
        .stdout,
    )
    .unwrap();
    assert!(
        via_xz.starts_with(&raw_sha),
        "xz output differs from the raw output"
    );
    assert!(
        via_zst.starts_with(&raw_sha),
        "zstd output differs from the raw output"
    );
    let check = sh(&format!("cd {} && sha256sum -c SHA256SUMS", q(&dist)));
    let t = String::from_utf8(check.stdout).unwrap();
    assert_eq!(t.matches(": OK").count(), 3, "{t}");
    for name in ["node02.rk1.img", "node02.rk1.img.xz", "node02.rk1.img.zst"] {
        let mode = std::fs::metadata(dist.join(name)).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600, "{name}");
    }
    let leftovers: Vec<String> = std::fs::read_dir(&dist)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    // The xz output is multi-block, so it decompresses in parallel.
    let info =
        String::from_utf8(sh(&format!("xz -lv {}", q(&dist.join("node02.rk1.img.xz")))).stdout)
            .unwrap();
    let blocks: u64 = info
        .lines()
        .find(|l| l.trim_start().starts_with("Blocks:"))
        .unwrap()
        .split(':')
        .nth(1)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(blocks > 1, "{info}");

    // Offline from the warm cache works; cache list names the board.
    let out = run(&["--offline", "dist/node03.rk1.img"]);
    assert!(out.status.success(), "{}", text(&out));
    let list = run(&["cache", "list"]);
    let t = text(&list);
    assert!(t.contains("image") && t.contains("rk1"), "{t}");
    let out = run(&["fetch", "rk1"]);
    assert!(
        out.status.success() && text(&out).contains("rk1: "),
        "{}",
        text(&out)
    );
    // An unknown board and an offline fetch of an uncached board fail clearly.
    let out = run(&["fetch", "pi5"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let out = run(&["--offline", "fetch", "cm4"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out).contains("not in the cache"), "{}", text(&out));
    // Clean keeps what the manifests refer to, unless --all.
    let out = run(&["cache", "clean"]);
    assert!(text(&out).contains("0 entries removed"), "{}", text(&out));
    let out = run(&["cache", "clean", "--all"]);
    assert!(text(&out).contains("3 entries removed"), "{}", text(&out));
}
