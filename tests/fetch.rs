//! Download, verify, cache and unpack against a loopback HTTP(S) server that
//! behaves like release servers do (support/http.rs), with fixtures
//! compressed by the real tools (xz, gzip, zstd, qemu-img); the fake itself
//! is checked against curl. Scratch lives under target/tmp and is removed.

mod support {
    pub mod bytes;
    pub mod fixtures;
    pub mod harness;
    pub mod http;
    pub mod mirror;
}

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use imgbuild::config::manifest::Manifest;
use imgbuild::source::{self as fetch, Cache, FetchOptions, RetryPolicy};
use support::http::{ClosedPort, Faults, RangeStart, Server};
use support::{bytes::*, fixtures::*, harness::*, mirror::*};

const RK1_URL: &str = "https://github.com/Joshua-Riek/ubuntu-rockchip/releases/download/v2.4.0/ubuntu-24.04-preinstalled-server-arm64-turing-rk1.img.xz";
const RK1_SHA: &str = "88584d5797bac01efd3bb1063935ce9f00947e4d4aa0c671d0a39ec8db6ca8f7";

struct Raw {
    dir: PathBuf,
    raw: PathBuf,
    sha: String,
}

/// A raw image with data, long zero runs and an unaligned tail (64 MiB
/// apparent, 4 MiB of it random: cheap to make and to compress).
fn raw() -> &'static Raw {
    static R: OnceLock<Raw> = OnceLock::new();
    R.get_or_init(|| {
        let dir = shared_scratch().join("raw");
        std::fs::create_dir_all(&dir).unwrap();
        let raw = dir.join("disk.raw");
        sh(&format!(
            "truncate -s $((64*1024*1024 + 1536)) {r}; head -c 1M /dev/urandom | dd of={r} conv=notrunc status=none; \
             head -c 3M /dev/urandom | dd of={r} bs=1M seek=40 conv=notrunc status=none; printf tail | dd of={r} bs=1 seek=$((64*1024*1024 + 1000)) conv=notrunc status=none",
            r = q(&raw)
        ));
        let sha = sha_of(&raw);
        Raw { dir, raw, sha }
    })
}

/// The raw image compressed with a real tool; returns the file.
fn packed(kind: &str) -> PathBuf {
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let r = raw();
    let out = r.dir.join(format!("disk.{kind}"));
    if !out.exists() {
        let tmp = r.dir.join(format!("disk.{kind}.tmp"));
        let cmd = match kind {
            "multi.xz" => format!("xz -T2 --block-size=1MiB -c {} > {}", q(&r.raw), q(&tmp)),
            "single.xz" => format!("xz -T1 -c {} > {}", q(&r.raw), q(&tmp)),
            // Two streams (as `cat a.xz b.xz` makes), the first in blocks with
            // sizes (decoded in parallel), the second one block without (in order),
            // with stream padding between them.
            "multi-stream.xz" => format!(
                "{{ head -c 40M {r} | xz -T2 --block-size=1MiB -c; printf '\\0\\0\\0\\0'; tail -c +$((40*1024*1024 + 1)) {r} | xz -T1 -c; }} > {t}",
                r = q(&r.raw),
                t = q(&tmp)
            ),
            "gz" => format!("gzip -c {} > {}", q(&r.raw), q(&tmp)),
            // Two gzip members back to back (as `cat a.gz b.gz` makes): one file.
            "multi.gz" => format!(
                "{{ head -c 40M {r} | gzip -c; tail -c +$((40*1024*1024 + 1)) {r} | gzip -c; }} > {t}",
                r = q(&r.raw),
                t = q(&tmp)
            ),
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
        .replace(RK1_URL, url)
        .replace(RK1_SHA, sha256);
    serde_yaml_ng::from_str(&text).unwrap()
}

fn quick() -> FetchOptions {
    FetchOptions {
        offline: false,
        retry: RetryPolicy {
            attempts: 4,
            first_delay: Duration::from_millis(20),
            max_delay: Duration::from_millis(100),
            idle_timeout: fetch::download::IDLE_TIMEOUT,
        },
    }
}

fn cache_at(dir: &Path) -> Cache {
    Cache {
        root: dir.to_owned(),
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

/// Every regular file under `dir`, relative, sorted.
fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(base: &Path, d: &Path, out: &mut Vec<String>) {
        let Ok(rd) = std::fs::read_dir(d) else { return };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(base, &p, out);
            } else {
                out.push(p.strip_prefix(base).unwrap().display().to_string());
            }
        }
    }
    walk(dir, dir, &mut out);
    out.sort();
    out
}

fn no_entries(cache: &Path, dir: &str) {
    let left = files_under(&cache.join(dir));
    assert!(left.is_empty(), "{dir} in the cache is not empty: {left:?}");
}

fn err_of<T: std::fmt::Debug>(r: anyhow::Result<T>) -> String {
    format!("{:#}", r.unwrap_err())
}

// ---------------------------------------------------------------------------
// The fake against a real client: curl says what a release server says.

#[test]
fn the_fake_server_answers_curl_like_a_release_server() {
    let with = Server::start(Faults {
        ranges: true,
        ..Default::default()
    });
    let without = Server::start(Faults::default());
    let body: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    for s in [&with, &without] {
        s.put("/f", body.clone());
    }
    let head = |url: &str| sh(&format!("curl -sfI {url}")).stdout;
    let h = String::from_utf8(head(&with.url("/f"))).unwrap();
    assert!(h.contains("Accept-Ranges: bytes"), "{h}");
    assert!(h.contains("Content-Length: 200000"), "{h}");
    let h = String::from_utf8(head(&without.url("/f"))).unwrap();
    assert!(!h.to_lowercase().contains("accept-ranges"), "{h}");
    // A range: 206 with the rest; without range support the whole file.
    let d = scratch();
    let got = d.path().join("got");
    let code = |url: &str| {
        let out = sh(&format!(
            "curl -s -o {} -w '%{{http_code}}' -r 150000- {url}",
            q(&got)
        ));
        String::from_utf8(out.stdout).unwrap()
    };
    assert_eq!(code(&with.url("/f")), "206");
    assert_eq!(std::fs::read(&got).unwrap(), &body[150_000..]);
    assert_eq!(code(&without.url("/f")), "200");
    assert_eq!(std::fs::read(&got).unwrap(), body);
    // Past the end: 416 with the length.
    let h = String::from_utf8(
        sh(&format!(
            "curl -s -D - -o /dev/null -r 999999- {}",
            with.url("/f")
        ))
        .stdout,
    )
    .unwrap();
    assert!(
        h.starts_with("HTTP/1.1 416") && h.contains("Content-Range: bytes */200000"),
        "{h}"
    );
    // Chunked, and a redirect to another host and path, followed by curl -L.
    let chunked = Server::start(Faults {
        chunked: true,
        ..Default::default()
    });
    chunked.put("/objects/1?sig=abc", body.clone());
    with.redirect(
        "/release/f",
        302,
        &chunked.url_by_name("/objects/1?sig=abc"),
    );
    let out = sh(&format!(
        "curl -sfL -D - -o {} {}",
        q(&got),
        with.url("/release/f")
    ));
    let h = String::from_utf8(out.stdout).unwrap();
    assert!(
        h.contains("302 Found") && h.to_lowercase().contains("transfer-encoding: chunked"),
        "{h}"
    );
    assert_eq!(std::fs::read(&got).unwrap(), body);
    assert_eq!(
        chunked.requests()[0].host.as_deref(),
        Some(&*format!("localhost:{}", chunked.port))
    );
}

#[test]
fn the_fake_https_server_is_trusted_only_through_its_ca() {
    let s = Server::start_tls(Faults::default());
    s.put("/f", b"hello".to_vec());
    let d = scratch();
    let ca = d.path().join("ca.pem");
    std::fs::write(&ca, s.ca_pem.as_ref().unwrap()).unwrap();
    let out = sh(&format!("curl -sf --cacert {} {}", q(&ca), s.url("/f")));
    assert_eq!(out.stdout, b"hello");
    let out = sh(&format!(
        "curl -sf --cacert {} {}",
        q(&ca),
        s.url_by_name("/f")
    ));
    assert_eq!(out.stdout, b"hello");
    // openssl agrees that the chain is the CA's (an oracle outside rustls).
    let (code, text) = sh_status(&format!(
        "openssl s_client -connect 127.0.0.1:{} -CAfile {} -verify_return_error </dev/null",
        s.port,
        q(&ca)
    ));
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("Verify return code: 0 (ok)"), "{text}");
    let (code, _) = sh_status(&format!("curl -sf {}", s.url("/f")));
    assert_ne!(code, 0, "curl trusted a certificate from an unknown CA");
    // The server thread records the failed handshake after curl has gone.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while s.handshake_failures().is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!s.handshake_failures().is_empty());
}

// ---------------------------------------------------------------------------
// Unpacking and the cache, in-process.

#[test]
fn every_format_unpacks_to_the_same_sparse_raw() {
    for kind in [
        "multi.xz",
        "single.xz",
        "multi-stream.xz",
        "gz",
        "multi.gz",
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
        let cache_dir = scratch();
        let cache = cache_at(cache_dir.path());
        let m = manifest_for(&format!("file://{}", src.display()), &sha_of(&src));
        let image =
            fetch::ensure_base(&m, &cache, &quick()).unwrap_or_else(|e| panic!("{kind}: {e:#}"));
        assert_sparse_copy_of_raw(&image);
        // The download is gone once unpacked; nothing half-done remains.
        no_entries(cache_dir.path(), "downloads");
        no_entries(cache_dir.path(), "partial");
        assert_eq!(
            files_under(&cache_dir.path().join("images")),
            vec![format!("{}.img", sha_of(&src))],
            "{kind}"
        );
    }
    // qemu-img agrees with our qcow2 reader.
    let d = scratch();
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
    let cache_dir = scratch();
    let cache = cache_at(cache_dir.path());
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
    assert_eq!(server.requests().len(), 1, "--offline went to the network");
    // --offline with an empty cache says what to do.
    let empty = scratch();
    let e = err_of(fetch::ensure_base(&m, &cache_at(empty.path()), &offline));
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
    let cache_dir = scratch();
    let m = manifest_for(&server.url("/img.xz"), &sha_of(&xz));
    let image = fetch::ensure_base(
        &m,
        &cache_at(cache_dir.path()),
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
    assert!(reqs[..3].iter().all(|r| r.range.is_none()), "{reqs:?}");
    assert_eq!(reqs[3].range.as_deref(), Some("bytes=100000-"), "{reqs:?}");
}

#[test]
fn chunked_bodies_download_and_a_cut_chunked_body_resumes() {
    let xz = packed("single.xz");
    let server = Server::start(Faults {
        ranges: true,
        chunked: true,
        cut_after: Some((300_000, 1)),
        ..Default::default()
    });
    server.put("/img.xz", std::fs::read(&xz).unwrap());
    let cache_dir = scratch();
    let m = manifest_for(&server.url("/img.xz"), &sha_of(&xz));
    // No Content-Length: only the missing last chunk tells the body is cut.
    let image = fetch::ensure_base(&m, &cache_at(cache_dir.path()), &quick()).unwrap();
    assert_sparse_copy_of_raw(&image);
    let reqs = server.gets("/img.xz");
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    // The chunk boundary (64 KiB) is where the cut body ended.
    let resumed = reqs[1].range.as_deref().unwrap_or("");
    let at: u64 = resumed
        .strip_prefix("bytes=")
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("second request has no Range: {reqs:?}"));
    assert!(at > 0 && at <= 300_000, "{reqs:?}");
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
    let cache_dir = scratch();
    let m = manifest_for(&server.url("/img.xz"), &sha_of(&xz));
    let image = fetch::ensure_base(&m, &cache_at(cache_dir.path()), &quick()).unwrap();
    assert_sparse_copy_of_raw(&image);
    let reqs = server.gets("/img.xz");
    assert_eq!(reqs.len(), 3, "{reqs:?}");
    // The client asked to resume; the server ignored it and sent it all (200).
    assert_eq!(reqs[1].range.as_deref(), Some("bytes=50000-"), "{reqs:?}");
}

#[test]
fn a_206_that_starts_early_is_trimmed_and_one_that_starts_late_starts_over() {
    let xz = packed("single.xz");
    let body = std::fs::read(&xz).unwrap();
    // A cache that serves whole 64 KiB blocks: 100000 is answered from 65536.
    let early = Server::start(Faults {
        ranges: true,
        cut_after: Some((100_000, 1)),
        range_start: Some(RangeStart::AlignDown(65_536)),
        ..Default::default()
    });
    early.put("/img.xz", body.clone());
    let cache_dir = scratch();
    let m = manifest_for(&early.url("/img.xz"), &sha_of(&xz));
    let image = fetch::ensure_base(&m, &cache_at(cache_dir.path()), &quick()).unwrap();
    assert_sparse_copy_of_raw(&image);
    let reqs = early.gets("/img.xz");
    // Resumed in one go: the overlap was skipped, nothing downloaded twice.
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    assert_eq!(reqs[1].range.as_deref(), Some("bytes=100000-"));

    // A server that skips ahead: appending would leave a hole, so start over.
    let late = Server::start(Faults {
        ranges: true,
        cut_after: Some((100_000, 1)),
        range_start: Some(RangeStart::Ahead(1000)),
        ..Default::default()
    });
    late.put("/img.xz", body);
    let cache_dir = scratch();
    let m = manifest_for(&late.url("/img.xz"), &sha_of(&xz));
    let image = fetch::ensure_base(&m, &cache_at(cache_dir.path()), &quick()).unwrap();
    assert_sparse_copy_of_raw(&image);
    let reqs = late.gets("/img.xz");
    assert_eq!(reqs.len(), 3, "{reqs:?}");
    assert_eq!(reqs[1].range.as_deref(), Some("bytes=100000-"));
    assert_eq!(reqs[2].range, None, "{reqs:?}");
}

/// Puts `bytes` where a download of `digest` resumes from.
fn seed_partial(cache: &Path, digest: &str, bytes: &[u8]) -> PathBuf {
    let p = cache.join("partial").join(format!("{digest}.part"));
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn a_partial_file_is_resumed_kept_when_complete_and_dropped_when_too_long() {
    let xz = packed("single.xz");
    let body = std::fs::read(&xz).unwrap();
    let sha = sha_of(&xz);
    let server = Server::start(Faults {
        ranges: true,
        ..Default::default()
    });
    server.put("/img.xz", body.clone());
    let m = manifest_for(&server.url("/img.xz"), &sha);
    let get = |cache: &Path| {
        let before = server.gets("/img.xz").len();
        let image =
            fetch::ensure_base(&m, &cache_at(cache), &quick()).unwrap_or_else(|e| panic!("{e:#}"));
        assert_sparse_copy_of_raw(&image);
        no_entries(cache, "partial");
        server.gets("/img.xz")[before..].to_vec()
    };
    // A prefix: resumed where it ends.
    let c = scratch();
    seed_partial(c.path(), &sha, &body[..123_456]);
    let reqs = get(c.path());
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    assert_eq!(reqs[0].range.as_deref(), Some("bytes=123456-"));
    // The whole file: 416 with its length, nothing to fetch, the digest holds.
    let c = scratch();
    seed_partial(c.path(), &sha, &body);
    let reqs = get(c.path());
    assert_eq!(reqs.len(), 1, "{reqs:?}");
    assert_eq!(reqs[0].range, Some(format!("bytes={}-", body.len())));
    // Longer than the file (a stale or damaged partial): 416 says the real
    // length, so the partial cannot be a prefix; it is dropped and the file
    // fetched again instead of failing on the digest.
    let c = scratch();
    let mut long = body.clone();
    long.extend_from_slice(b"stale bytes beyond the end");
    seed_partial(c.path(), &sha, &long);
    let reqs = get(c.path());
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    assert_eq!(reqs[0].range, Some(format!("bytes={}-", long.len())));
    assert_eq!(reqs[1].range, None);
}

#[test]
fn redirects_to_another_host_are_followed_and_the_digest_still_decides() {
    let xz = packed("single.xz");
    let body = std::fs::read(&xz).unwrap();
    // GitHub: the release URL answers 302 to a signed URL on another host.
    let github = Server::start(Faults::default());
    let storage = Server::start(Faults {
        ranges: true,
        cut_after: Some((200_000, 1)),
        ..Default::default()
    });
    storage.put("/objects/42?sig=1", body.clone());
    github.redirect(
        "/releases/download/v2.4.0/rk1.img.xz",
        302,
        &storage.url_by_name("/objects/42?sig=1"),
    );
    let cache_dir = scratch();
    let m = manifest_for(
        &github.url("/releases/download/v2.4.0/rk1.img.xz"),
        &sha_of(&xz),
    );
    let image = fetch::ensure_base(&m, &cache_at(cache_dir.path()), &quick()).unwrap();
    assert_sparse_copy_of_raw(&image);
    // The cut download resumed through the redirect: the Range header went
    // along to the storage host, and each attempt asked GitHub again.
    let asked = github.requests();
    assert_eq!(asked.len(), 2, "{asked:?}");
    assert_eq!(asked[1].range.as_deref(), Some("bytes=200000-"));
    let served = storage.requests();
    assert_eq!(served.len(), 2, "{served:?}");
    assert_eq!(served[1].range.as_deref(), Some("bytes=200000-"));
    assert!(
        served
            .iter()
            .all(|r| r.host.as_deref() == Some(&*format!("localhost:{}", storage.port)))
    );

    // A redirect to the wrong file: the pinned digest refuses it.
    let evil = Server::start(Faults::default());
    evil.put("/x", b"not the image".to_vec());
    let github = Server::start(Faults::default());
    github.redirect("/rk1.img.xz", 302, &evil.url("/x"));
    let cache_dir = scratch();
    let m = manifest_for(&github.url("/rk1.img.xz"), &sha_of(&xz));
    let e = err_of(fetch::ensure_base(
        &m,
        &cache_at(cache_dir.path()),
        &quick(),
    ));
    assert!(
        e.contains("sha256 mismatch") && e.contains(&github.url("/rk1.img.xz")),
        "{e}"
    );
    assert!(
        files_under(cache_dir.path())
            .iter()
            .all(|f| f.starts_with("locks/"))
    );

    // A redirect loop ends with a clear error, without retries.
    let looping = Server::start(Faults::default());
    looping.redirect("/a", 302, &looping.url("/b"));
    looping.redirect("/b", 307, &looping.url("/a"));
    let m = manifest_for(&looping.url("/a"), &sha_of(&xz));
    let e = err_of(fetch::ensure_base(
        &m,
        &cache_at(cache_dir.path()),
        &quick(),
    ));
    assert!(e.contains("more than 10 redirects"), "{e}");
    assert!(!e.contains("gave up"), "a redirect loop was retried: {e}");
    assert_eq!(looping.requests().len(), 11);
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
    let cache_dir = scratch();
    let m = manifest_for(&server.url("/img.xz"), &sha_of(&xz));
    // Every response claims 1000 bytes more than it sends: the short body is
    // retried with Range, the server has nothing more (416), and the digest
    // proves the file complete.
    let image = fetch::ensure_base(&m, &cache_at(cache_dir.path()), &quick()).unwrap();
    assert_sparse_copy_of_raw(&image);
    let reqs = server.requests();
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    assert_eq!(
        reqs[1].range,
        Some(format!("bytes={}-", std::fs::metadata(&xz).unwrap().len())),
        "{reqs:?}"
    );
    // A server that always sends a short body with no Range support never
    // completes: the run gives up and leaves no cache entry.
    let liar = Server::start(Faults {
        ranges: false,
        cut_after: Some((10_000, 100)),
        ..Default::default()
    });
    liar.put("/img.xz", std::fs::read(&xz).unwrap());
    let m = manifest_for(&liar.url("/img.xz"), &sha_of(&xz));
    let cache_dir = scratch();
    let e = err_of(fetch::ensure_base(
        &m,
        &cache_at(cache_dir.path()),
        &quick(),
    ));
    assert!(e.contains("gave up after 4 attempt(s)"), "{e}");
    assert!(e.contains("the connection broke after 10000 bytes"), "{e}");
    assert_eq!(liar.gets("/img.xz").len(), 4);
    no_entries(cache_dir.path(), "images");
    no_entries(cache_dir.path(), "downloads");
}

#[test]
fn http_errors_and_unreachable_hosts_are_reported() {
    let server = Server::start(Faults::default());
    let cache_dir = scratch();
    let cache = cache_at(cache_dir.path());
    let m = manifest_for(&server.url("/missing.img.xz"), &raw().sha);
    let e = err_of(fetch::ensure_base(&m, &cache, &quick()));
    assert!(
        e.contains("HTTP 404")
            && e.contains("/missing.img.xz")
            && e.contains("check the manifest's URL"),
        "{e}"
    );
    assert_eq!(server.requests().len(), 1, "a 404 is not retried");

    // A port held but not listening refuses connections, and nobody else
    // can take it while the test runs.
    let closed = ClosedPort::new();
    let m = manifest_for(
        &format!("http://127.0.0.1:{}/x.img.xz", closed.port),
        &raw().sha,
    );
    let e = err_of(fetch::ensure_base(&m, &cache, &quick()));
    assert!(e.contains("gave up after 4 attempt(s)"), "{e}");
    assert!(e.to_lowercase().contains("connect"), "{e}");
    no_entries(cache_dir.path(), "images");
    no_entries(cache_dir.path(), "partial");
}

#[test]
fn a_digest_mismatch_deletes_the_partial_and_names_both_digests() {
    let xz = packed("single.xz");
    let server = Server::start(Faults::default());
    server.put("/img.xz", std::fs::read(&xz).unwrap());
    let cache_dir = scratch();
    let wrong = "0".repeat(64);
    let m = manifest_for(&server.url("/img.xz"), &wrong);
    let e = err_of(fetch::ensure_base(
        &m,
        &cache_at(cache_dir.path()),
        &quick(),
    ));
    assert!(e.contains(&format!("expected {wrong}")), "{e}");
    assert!(e.contains(&format!("got {}", sha_of(&xz))), "{e}");
    no_entries(cache_dir.path(), "partial");
    no_entries(cache_dir.path(), "downloads");
    no_entries(cache_dir.path(), "images");
}

#[test]
fn a_download_is_unpacked_while_it_arrives_into_the_same_bytes() {
    let xz = packed("multi.xz");
    let body = std::fs::read(&xz).unwrap();
    // The body stops halfway until released: by then the first blocks
    // (1 MiB of random data) must already be unpacked in the cache.
    let server = Server::start(Faults {
        ranges: true,
        hold_after: Some(body.len() as u64 / 2),
        ..Default::default()
    });
    server.put("/rk1.img.xz", body);
    let cache_dir = scratch();
    let m = manifest_for(&server.url("/rk1.img.xz"), &sha_of(&xz));
    let image = std::thread::scope(|s| {
        let fetching = s.spawn(|| fetch::ensure_base(&m, &cache_at(cache_dir.path()), &quick()));
        wait_for("unpacked data while the download is held", || {
            std::fs::read_dir(cache_dir.path().join("images"))
                .into_iter()
                .flatten()
                .flatten()
                .any(|e| e.metadata().is_ok_and(|m| m.blocks() > 0))
        });
        assert_eq!(server.holding(), 1, "the download is not held");
        server.release();
        fetching.join().unwrap()
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
    assert_sparse_copy_of_raw(&image);
    for dir in ["partial", "downloads"] {
        no_entries(cache_dir.path(), dir);
    }
    assert_eq!(files_under(&cache_dir.path().join("images")).len(), 1);
}

#[test]
fn a_corrupted_download_leaves_no_image_even_when_it_unpacks() {
    let xz = packed("multi.xz");
    let good = std::fs::read(&xz).unwrap();
    // A flipped byte (the decoder fails midway) and another valid xz file
    // (it unpacks fine, to other bytes): both are refused by the digest,
    // and neither leaves anything in the cache.
    let mut flipped = good.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x55;
    let d = scratch();
    let other = d.path().join("other.xz");
    sh(&format!(
        "head -c 3M /dev/urandom | xz -T2 --block-size=1MiB -c > {}",
        q(&other)
    ));
    let other = std::fs::read(&other).unwrap();
    for (name, body) in [("flipped", flipped), ("another file", other)] {
        let server = Server::start(Faults {
            ranges: true,
            ..Default::default()
        });
        let actual = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&body));
        server.put("/rk1.img.xz", body);
        let cache_dir = scratch();
        let m = manifest_for(&server.url("/rk1.img.xz"), &sha_of(&xz));
        let e = err_of(fetch::ensure_base(
            &m,
            &cache_at(cache_dir.path()),
            &quick(),
        ));
        assert!(
            e.contains("sha256 mismatch")
                && e.contains(&format!("expected {}", sha_of(&xz)))
                && e.contains(&format!("got {actual}"))
                && e.contains("the partial download was deleted"),
            "{name}: {e}"
        );
        for dir in ["images", "partial", "downloads"] {
            no_entries(cache_dir.path(), dir);
        }
    }
}

fn corrupt_case(name: &str, bytes: &[u8], expect: &str) {
    let d = scratch();
    let f = d.path().join(name);
    std::fs::write(&f, bytes).unwrap();
    let cache_dir = d.path().join("cache");
    let m = manifest_for(&format!("file://{}", f.display()), &sha_of(&f));
    let e = err_of(fetch::ensure_base(&m, &cache_at(&cache_dir), &quick()));
    assert!(e.contains(expect), "{name}: {e}");
    assert!(e.contains("unpacking the rk1 stock image"), "{name}: {e}");
    no_entries(&cache_dir, "images");
}

#[test]
fn corrupt_truncated_and_padded_streams_are_refused() {
    let xz = std::fs::read(packed("multi.xz")).unwrap();
    let mut flipped = xz.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0xFF;
    corrupt_case("flipped.xz", &flipped, "corrupt Xz data");
    corrupt_case("truncated.xz", &xz[..xz.len() - 100], "corrupt Xz data");
    let mut garbage = xz.clone();
    garbage.extend_from_slice(b"garbage!");
    corrupt_case("trailing.xz", &garbage, "trailing data after the xz stream");
    // Stream padding is legal.
    let mut padded = xz.clone();
    padded.extend_from_slice(&[0; 8]);
    let d = scratch();
    let f = d.path().join("padded.xz");
    std::fs::write(&f, &padded).unwrap();
    let m = manifest_for(&format!("file://{}", f.display()), &sha_of(&f));
    let image = fetch::ensure_base(&m, &cache_at(&d.path().join("c")), &quick()).unwrap();
    assert_sparse_copy_of_raw(&image);

    // A damaged check field (xz -t agrees: "Compressed data is corrupt").
    let d = scratch();
    let small = d.path().join("small.xz");
    sh(&format!(
        "printf 'hello world, hello world' | xz -T2 -c > {}",
        q(&small)
    ));
    let mut bad_check = std::fs::read(&small).unwrap();
    // One block: ... check (8) | index (8) | footer (12).
    let at = bad_check.len() - 28;
    bad_check[at] ^= 1;
    std::fs::write(&small, &bad_check).unwrap();
    let (code, _) = sh_status(&format!("xz -t {}", q(&small)));
    assert_ne!(code, 0, "xz -t accepts the damaged check");
    corrupt_case(
        "bad-check.xz",
        &bad_check,
        "a block's CRC64 does not match its data",
    );

    let gz = std::fs::read(packed("gz")).unwrap();
    corrupt_case("truncated.gz", &gz[..gz.len() / 2], "corrupt Gzip data");
    let mut gzg = gz.clone();
    gzg.extend_from_slice(b"xx");
    corrupt_case("trailing.gz", &gzg, "trailing data after the gzip stream");
    let zst = std::fs::read(packed("zst")).unwrap();
    corrupt_case("truncated.zst", &zst[..zst.len() / 2], "corrupt Zstd data");
    let qc = std::fs::read(packed("qcow2")).unwrap();
    let mut bad_l1 = qc.clone();
    bad_l1[40..48].copy_from_slice(&u64::MAX.to_be_bytes());
    corrupt_case("bad-l1.qcow2", &bad_l1, "corrupt qcow2 image");
    corrupt_case("truncated.qcow2", &qc[..qc.len() / 2], "qcow2");
}

#[test]
fn a_file_cut_inside_its_magic_number_is_refused_not_taken_as_raw() {
    let zst = std::fs::read(packed("zst")).unwrap();
    let qc = std::fs::read(packed("qcow2")).unwrap();
    let xz = std::fs::read(packed("single.xz")).unwrap();
    let gz = std::fs::read(packed("gz")).unwrap();
    for (name, whole, magic_len, format) in [
        ("xz", &xz, 6, "Xz"),
        ("gz", &gz, 2, "Gzip"),
        ("zst", &zst, 4, "Zstd"),
        ("qcow2", &qc, 4, "Qcow2"),
    ] {
        for n in 1..magic_len {
            corrupt_case(
                &format!("cut{n}.{name}"),
                &whole[..n],
                &format!(
                    "truncated: the whole file is {n} byte(s), the start of a {format} header"
                ),
            );
        }
        // Cut just after the magic: the decoder's turn, still refused.
        corrupt_case(
            &format!("cut{magic_len}.{name}"),
            &whole[..magic_len],
            name_of(format),
        );
    }
    corrupt_case("empty.img", b"", "the file is empty");
}

fn name_of(format: &str) -> &str {
    match format {
        "Qcow2" => "qcow2",
        f => f,
    }
}

#[test]
fn a_decompression_bomb_stops_at_the_manifest_limit_and_leaves_nothing() {
    let d = scratch();
    // 256 MiB of zeros in a few kB of zstd; the manifest allows 16 MiB.
    let bomb = d.path().join("bomb.zst");
    sh(&format!(
        "head -c 256M /dev/zero | zstd -q -c > {}",
        q(&bomb)
    ));
    assert!(std::fs::metadata(&bomb).unwrap().len() < 100_000);
    let mut m = manifest_for(&format!("file://{}", bomb.display()), &sha_of(&bomb));
    m.source.max_size = Some("16MiB".parse().unwrap());
    let cache_dir = d.path().join("cache");
    let e = err_of(fetch::ensure_base(&m, &cache_at(&cache_dir), &quick()));
    assert!(
        e.contains("the unpacked image would exceed the limit of 16 MiB")
            && e.contains("raise source.max_size in the rk1 manifest"),
        "{e}"
    );
    no_entries(&cache_dir, "images");
    // The same bomb within the limit unpacks.
    m.source.max_size = Some("256MiB".parse().unwrap());
    let image = fetch::ensure_base(&m, &cache_at(&cache_dir), &quick()).unwrap();
    assert_eq!(std::fs::metadata(&image).unwrap().len(), 256 << 20);
    // Manifests check the field.
    let yaml = std::fs::read_to_string(repo().join("firmware-manifests/rk1.yaml"))
        .unwrap()
        .replace(
            &format!("  sha256: {RK1_SHA}"),
            &format!("  sha256: {RK1_SHA}\n  max_size: lots"),
        );
    let e = serde_yaml_ng::from_str::<Manifest>(&yaml)
        .unwrap_err()
        .to_string();
    assert!(e.contains("\"lots\" is not a size"), "{e}");
}

#[test]
fn a_full_disk_while_unpacking_leaves_no_entry() {
    let mnt = scratch();
    let (code, out) = sh_status(&format!(
        "mount -t tmpfs -o size=8m tmpfs {}",
        q(mnt.path())
    ));
    if code != 0 {
        eprintln!("SKIPPED: cannot mount a small tmpfs here ({})", out.trim());
        return;
    }
    let src = packed("single.xz");
    let m = manifest_for(&format!("file://{}", src.display()), &sha_of(&src));
    let result = fetch::ensure_base(&m, &cache_at(&mnt.path().join("cache")), &quick());
    let images = files_under(&mnt.path().join("cache/images"));
    sh(&format!("umount {}", q(mnt.path())));
    let e = err_of(result);
    assert!(e.contains("No space left on device"), "{e}");
    assert!(images.is_empty(), "left in the cache: {images:?}");
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
    let cache_dir = scratch();
    let cache = cache_at(cache_dir.path());
    let image = fetch::ensure_base(&m, &cache, &quick()).unwrap();
    assert_sparse_copy_of_raw(&image);
    // Offline later: the digest learnt from the checksum file is remembered.
    let before = server.requests().len();
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
    assert_eq!(server.requests().len(), before);
    // A "checksum file" the size of an image is refused without reading it all.
    server.put("/HUGE", vec![b'a'; 17 << 20]);
    m.source.checksums_url = Some(server.url("/HUGE"));
    let e = err_of(fetch::ensure_base(
        &m,
        &cache_at(&cache_dir.path().join("2")),
        &quick(),
    ));
    assert!(
        e.contains("larger than 16777216 bytes; not a checksum file"),
        "{e}"
    );
}

// ---------------------------------------------------------------------------
// Through the binary.

/// imgbuild with nothing inherited that could change where it writes or
/// what it trusts; HOME and TMPDIR inside `dir`.
fn cmd(dir: &Path) -> Command {
    let mut c = Command::new(bin());
    std::fs::create_dir_all(dir.join("home")).unwrap();
    std::fs::create_dir_all(dir.join("tmp")).unwrap();
    c.current_dir(dir);
    for v in [
        "IMGBUILD_CACHE_DIR",
        "IMGBUILD_PROFILES",
        "IMGBUILD_SECRETS",
        "IMGBUILD_K3S_MIRROR",
        "IMGBUILD_LOG",
        "XDG_CACHE_HOME",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "SOURCE_DATE_EPOCH",
        "CI",
    ] {
        c.env_remove(v);
    }
    c.env("HOME", dir.join("home"))
        .env("TMPDIR", dir.join("tmp"));
    c
}

/// Runs imgbuild to the end and checks it left nothing in its TMPDIR.
fn run(mut c: Command, dir: &Path) -> Output {
    let out = c.output().expect("imgbuild runs");
    let left = files_under(&dir.join("tmp"));
    assert!(left.is_empty(), "imgbuild left temporary files: {left:?}");
    out
}

fn expect(out: &Output, code: i32, needle: &str) -> String {
    let t = text(out);
    assert_eq!(out.status.code(), Some(code), "{t}");
    assert!(t.contains(needle), "expected {needle:?} in:\n{t}");
    t
}

/// Writes `<dir>/manifests/<board>.yaml` from the repository's manifest with
/// `url` and `sha256` (and `max_size`) as its source.
fn write_manifest(
    dir: &Path,
    board: &str,
    url: &str,
    sha256: &str,
    max_size: Option<&str>,
) -> PathBuf {
    let mut v: serde_yaml_ng::Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(repo().join(format!("firmware-manifests/{board}.yaml"))).unwrap(),
    )
    .unwrap();
    let mut source = serde_yaml_ng::Mapping::new();
    source.insert("url".into(), url.into());
    source.insert("sha256".into(), sha256.into());
    if let Some(m) = max_size {
        source.insert("max_size".into(), m.into());
    }
    v["source"] = source.into();
    let d = dir.join("manifests");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(
        d.join(format!("{board}.yaml")),
        serde_yaml_ng::to_string(&v).unwrap(),
    )
    .unwrap();
    d
}

/// `--no-builtin --manifests <dir>/manifests --cache-dir <dir>/cache` plus
/// `args` (only the test's manifests: the built-in ones point at the internet).
fn with_cache(dir: &Path, args: &[&str]) -> Command {
    let mut c = cmd(dir);
    c.arg("--no-builtin")
        .arg("--manifests")
        .arg(dir.join("manifests"))
        .arg("--cache-dir")
        .arg(dir.join("cache"))
        .args(args);
    c
}

#[test]
fn unpack_command_writes_a_sparse_raw_and_refuses_bad_input() {
    let d = scratch();
    let dir = d.path();
    let out_img = dir.join("out.img");
    let mut c = cmd(dir);
    c.arg("unpack").arg(packed("multi.xz")).arg(&out_img);
    let t = expect(&run(c, dir), 0, "out.img: Xz, 67110400 bytes");
    assert_sparse_copy_of_raw(&out_img);
    // Never overwrites.
    let mut c = cmd(dir);
    c.arg("unpack").arg(packed("gz")).arg(&out_img);
    expect(&run(c, dir), 2, "exists; not overwriting it");
    assert_sparse_copy_of_raw(&out_img);
    let _ = t;

    // Cut inside the magic, a bomb past --max-size, a qcow2 that declares
    // 100 TiB against the default 64 GiB: refused, nothing left behind.
    let cut = dir.join("cut.zst");
    std::fs::write(&cut, &std::fs::read(packed("zst")).unwrap()[..3]).unwrap();
    let bomb = dir.join("bomb.zst");
    sh(&format!(
        "head -c 64M /dev/zero | zstd -q -c > {}",
        q(&bomb)
    ));
    let huge = dir.join("huge.qcow2");
    sh(&format!("qemu-img create -q -f qcow2 {} 100T", q(&huge)));
    // An xz file whose magic was damaged (the fuzz finding): by content it
    // is raw, but its name says xz, so it is refused, not copied as raw.
    let damaged = dir.join("damaged.img.xz");
    let mut bytes = std::fs::read(packed("multi.xz")).unwrap();
    bytes[1] ^= 0xff;
    std::fs::write(&damaged, &bytes).unwrap();
    let outs = dir.join("outs");
    std::fs::create_dir_all(&outs).unwrap();
    for (input, extra, code, needle) in [
        (
            &cut,
            None,
            1,
            "truncated: the whole file is 3 byte(s), the start of a Zstd header",
        ),
        (
            &bomb,
            Some("8MiB"),
            1,
            "exceed the limit of 8 MiB (the decompressed stream is longer); raise it with --max-size",
        ),
        (
            &huge,
            None,
            1,
            "exceed the limit of 64 GiB (the qcow2 header declares a 100 TiB disk)",
        ),
        (&bomb, Some("lots"), 2, "\"lots\" is not a size"),
        (
            &damaged,
            None,
            1,
            "its name says Xz but it does not start like Xz data",
        ),
        (&dir.join("missing.xz"), None, 1, "opening"),
    ] {
        let mut c = cmd(dir);
        c.arg("unpack").arg(input).arg(outs.join("x.img"));
        if let Some(m) = extra {
            c.args(["--max-size", m]);
        }
        expect(&run(c, dir), code, needle);
        let left = files_under(&outs);
        assert!(left.is_empty(), "{}: left {left:?}", input.display());
    }
    // Within --max-size the bomb is just a (sparse) image.
    let mut c = cmd(dir);
    c.arg("unpack")
        .arg(&bomb)
        .arg(outs.join("x.img"))
        .args(["--max-size", "64M"]);
    expect(&run(c, dir), 0, "Zstd, 67108864 bytes");
}

#[test]
fn fetch_all_fills_the_cache_and_cache_list_json_describes_it() {
    let d = scratch();
    let dir = d.path();
    let server = Server::start(Faults {
        ranges: true,
        ..Default::default()
    });
    let xz = packed("multi.xz");
    let qc = packed("qcow2");
    server.put("/rk1.img.xz", std::fs::read(&xz).unwrap());
    server.put("/noble.img", std::fs::read(&qc).unwrap());
    write_manifest(dir, "rk1", &server.url("/rk1.img.xz"), &sha_of(&xz), None);
    write_manifest(dir, "nuc", &server.url("/noble.img"), &sha_of(&qc), None);
    let t = expect(&run(with_cache(dir, &["fetch", "--all"]), dir), 0, "rk1: ");
    let cache = dir.join("cache");
    for (board, src) in [("rk1", &xz), ("nuc", &qc)] {
        let image = cache.join(format!("images/{}.img", sha_of(src)));
        assert!(t.contains(&format!("{board}: {}", image.display())), "{t}");
        assert_sparse_copy_of_raw(&image);
    }
    assert_eq!(server.requests().len(), 2);
    // Again: nothing to do, nothing downloaded.
    expect(&run(with_cache(dir, &["fetch", "--all"]), dir), 0, "nuc: ");
    assert_eq!(server.requests().len(), 2);
    // --json names the same images, by board; no profiles, so nothing else.
    let out = run(with_cache(dir, &["fetch", "--all", "--json"]), dir);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let boards = v["boards"].as_array().unwrap();
    assert_eq!(boards.len(), 2, "{v:#}");
    for (board, src) in [("rk1", &xz), ("nuc", &qc)] {
        let b = boards
            .iter()
            .find(|b| b["board"] == board)
            .unwrap_or_else(|| panic!("no {board}: {v:#}"));
        let image = cache.join(format!("images/{}.img", sha_of(src)));
        assert_eq!(b["path"], image.display().to_string());
        assert!(image.is_file());
    }
    assert_eq!(v["extras"], serde_json::json!([]));
    assert_eq!(server.requests().len(), 2);

    let out = run(with_cache(dir, &["cache", "list", "--json"]), dir);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["root"], cache.display().to_string());
    let entries = v["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 2, "{v:#}");
    for (board, src) in [("rk1", &xz), ("nuc", &qc)] {
        let e = entries
            .iter()
            .find(|e| e["board"] == board)
            .unwrap_or_else(|| panic!("no {board} entry: {v:#}"));
        assert_eq!(e["kind"], "image");
        assert_eq!(e["key"], sha_of(src));
        let path = PathBuf::from(e["path"].as_str().unwrap());
        let m = std::fs::metadata(&path).unwrap();
        assert_eq!(e["apparent"], m.len());
        assert_eq!(e["allocated"], m.blocks() * 512);
        assert!(e["allocated"].as_u64() < e["apparent"].as_u64());
    }
    // Text listing agrees.
    let out = run(with_cache(dir, &["cache", "list"]), dir);
    let t = expect(&out, 0, &format!("cache: {}", cache.display()));
    assert_eq!(t.matches("image ").count(), 2, "{t}");

    // Failure paths: a board whose image is gone from the server; no boards named.
    write_manifest(dir, "nuc", &server.url("/gone.img"), &"2".repeat(64), None);
    expect(
        &run(with_cache(dir, &["fetch", "--all"]), dir),
        1,
        &format!(
            "{}: HTTP 404 (not found: check the manifest's URL)",
            server.url("/gone.img")
        ),
    );
    expect(
        &run(with_cache(dir, &["fetch"]), dir),
        2,
        "name the boards to fetch (nuc, rk1), or use --all",
    );
    expect(
        &run(with_cache(dir, &["fetch", "pi5"]), dir),
        2,
        "no firmware manifest for board \"pi5\"",
    );
    // No cache directory at all.
    let mut c = cmd(dir);
    c.env_remove("HOME")
        .args(["--manifests"])
        .arg(dir.join("manifests"))
        .args(["cache", "list"]);
    expect(
        &run(c, dir),
        1,
        "no cache directory: set --cache-dir, IMGBUILD_CACHE_DIR or HOME",
    );
}

#[test]
fn cache_clean_removes_what_nothing_refers_to_and_clean_all_empties_the_cache() {
    let d = scratch();
    let dir = d.path();
    let xz = packed("single.xz");
    let sha = sha_of(&xz);
    write_manifest(dir, "rk1", &format!("file://{}", xz.display()), &sha, None);
    expect(&run(with_cache(dir, &["fetch", "rk1"]), dir), 0, "rk1: ");
    let cache = dir.join("cache");
    // What other runs left: an image no manifest names, a dead download's
    // partial, a killed unpack's temporary file, a learnt digest.
    let (other, dead, killed) = ("a".repeat(64), "b".repeat(64), "c".repeat(64));
    std::fs::write(cache.join(format!("images/{other}.img")), b"old").unwrap();
    seed_partial(&cache, &dead, b"half");
    std::fs::write(
        cache.join(format!("images/.incoming-{killed}-Xy12ab")),
        b"unpacking",
    )
    .unwrap();
    std::fs::create_dir_all(cache.join("sums")).unwrap();
    std::fs::write(cache.join("sums/0123"), &sha).unwrap();
    let out = run(with_cache(dir, &["cache", "clean"]), dir);
    let t = expect(&out, 0, "3 entries removed");
    for k in [&other, &dead, &killed] {
        assert!(t.contains(k.as_str()), "{t}");
    }
    assert_eq!(
        files_under(&cache),
        vec![
            format!("images/{sha}.img"),
            format!("locks/{sha}.lock"),
            "sums/0123".to_string(),
        ]
    );
    // Nothing more to do.
    expect(
        &run(with_cache(dir, &["cache", "clean"]), dir),
        0,
        "0 entries removed",
    );
    // --json: what was removed, and what another run holds (its lock taken here).
    let (stale, held) = ("d".repeat(64), "e".repeat(64));
    let (stale, held) = (
        cache.join(format!("images/{stale}.img")),
        (cache.join(format!("images/{held}.img")), held),
    );
    std::fs::write(&stale, b"old").unwrap();
    std::fs::write(&held.0, b"busy").unwrap();
    let lock = Cache::new(cache.clone())
        .try_lock(&held.1)
        .unwrap()
        .unwrap();
    let out = run(with_cache(dir, &["cache", "clean", "--json"]), dir);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v,
        serde_json::json!({
            "removed": [stale.display().to_string()],
            "in_use": [held.0.display().to_string()],
        })
    );
    assert!(!stale.exists() && held.0.exists());
    drop(lock);
    std::fs::remove_file(&held.0).unwrap();
    // --all: nothing at all is left, not even lock files or empty folders.
    expect(
        &run(with_cache(dir, &["cache", "clean", "--all"]), dir),
        0,
        "1 entry removed",
    );
    let left: Vec<_> = std::fs::read_dir(&cache)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert!(left.is_empty(), "{left:?}");
    expect(&run(with_cache(dir, &["cache", "list"]), dir), 0, "(empty)");
}

/// A child's stderr collected as it comes, so a test can wait for a line.
fn spawn_logged(mut c: Command) -> (Child, Arc<Mutex<String>>) {
    let mut child = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = Arc::new(Mutex::new(String::new()));
    let mut err = child.stderr.take().unwrap();
    let l = log.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = err.read(&mut buf) {
            if n == 0 {
                break;
            }
            l.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    (child, log)
}

fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn finish(child: Child, log: &Mutex<String>) -> (i32, String, String) {
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        log.lock().unwrap().clone(),
    )
}

#[test]
fn a_download_interrupted_in_one_run_is_resumed_by_the_next() {
    let d = scratch();
    let dir = d.path();
    let xz = packed("single.xz");
    let sha = sha_of(&xz);
    let server = Server::start(Faults {
        ranges: true,
        hold_after: Some(1_000_000),
        ..Default::default()
    });
    server.put("/rk1.img.xz", std::fs::read(&xz).unwrap());
    write_manifest(dir, "rk1", &server.url("/rk1.img.xz"), &sha, None);
    let partial = dir.join(format!("cache/partial/{sha}.part"));
    let (child, log) = spawn_logged(with_cache(dir, &["fetch", "rk1"]));
    wait_for("the first megabyte on disk", || {
        std::fs::metadata(&partial).is_ok_and(|m| m.len() == 1_000_000)
    });
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let (code, _, err) = finish(child, &log);
    assert_eq!(code, 130, "{err}");
    assert_eq!(
        std::fs::metadata(&partial).unwrap().len(),
        1_000_000,
        "the partial download did not survive"
    );
    assert!(files_under(&dir.join("tmp")).is_empty());

    server.faults.lock().unwrap().hold_after = None;
    server.release();
    let out = run(with_cache(dir, &["fetch", "rk1"]), dir);
    expect(&out, 0, "rk1: ");
    let reqs = server.gets("/rk1.img.xz");
    assert_eq!(reqs.len(), 2, "{reqs:?}");
    assert_eq!(reqs[1].range.as_deref(), Some("bytes=1000000-"), "{reqs:?}");
    assert_sparse_copy_of_raw(&dir.join(format!("cache/images/{sha}.img")));
    no_entries(&dir.join("cache"), "partial");
}

#[test]
fn two_runs_racing_on_one_cache_entry_download_it_once() {
    let d = scratch();
    let dir = d.path();
    let xz = packed("single.xz");
    let sha = sha_of(&xz);
    let server = Server::start(Faults {
        ranges: true,
        hold_after: Some(500_000),
        ..Default::default()
    });
    server.put("/rk1.img.xz", std::fs::read(&xz).unwrap());
    write_manifest(dir, "rk1", &server.url("/rk1.img.xz"), &sha, None);
    let (a, log_a) = spawn_logged(with_cache(dir, &["fetch", "rk1"]));
    let (b, log_b) = spawn_logged(with_cache(dir, &["fetch", "rk1"]));
    let waiting = "waiting for another imgbuild using the cache entry";
    wait_for("one run downloading and the other waiting", || {
        server.holding() == 1
            && (log_a.lock().unwrap().contains(waiting) || log_b.lock().unwrap().contains(waiting))
    });
    // While one downloads, `cache clean` leaves its partial alone.
    let out = run(with_cache(dir, &["cache", "clean"]), dir);
    let t = expect(&out, 0, "0 entries removed");
    assert!(
        t.contains(&format!(
            "skipped {}",
            dir.join(format!("cache/partial/{sha}.part")).display()
        )),
        "{t}"
    );
    server.release();
    let (ca, oa, ea) = finish(a, &log_a);
    let (cb, ob, eb) = finish(b, &log_b);
    assert_eq!((ca, cb), (0, 0), "{ea}\n{eb}");
    let image = dir.join(format!("cache/images/{sha}.img"));
    for o in [&oa, &ob] {
        assert_eq!(o.trim(), format!("rk1: {}", image.display()));
    }
    assert_eq!(server.gets("/rk1.img.xz").len(), 1, "downloaded twice");
    assert_sparse_copy_of_raw(&image);
    assert_eq!(
        files_under(&dir.join("cache")),
        vec![format!("images/{sha}.img"), format!("locks/{sha}.lock")]
    );
}

#[test]
fn the_cache_is_found_through_flags_env_and_the_xdg_default() {
    let d = scratch();
    let dir = d.path();
    let xz = packed("single.xz");
    let sha = sha_of(&xz);
    write_manifest(dir, "rk1", &format!("file://{}", xz.display()), &sha, None);
    let home = dir.join("home");
    let root_of = |configure: &dyn Fn(&mut Command)| {
        let mut c = cmd(dir);
        c.arg("--manifests").arg(dir.join("manifests"));
        configure(&mut c);
        c.args(["cache", "list", "--json"]);
        let out = run(c, dir);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        PathBuf::from(v["root"].as_str().unwrap())
    };
    let env_dir = dir.join("env-cache");
    let xdg = dir.join("xdg");
    assert_eq!(
        root_of(&|c| {
            c.env("IMGBUILD_CACHE_DIR", &env_dir)
                .env("XDG_CACHE_HOME", &xdg);
        }),
        env_dir
    );
    assert_eq!(
        root_of(&|c| {
            c.env("IMGBUILD_CACHE_DIR", &env_dir)
                .arg("--cache-dir")
                .arg(dir.join("flag"));
        }),
        dir.join("flag")
    );
    assert_eq!(
        root_of(&|c| {
            c.env("XDG_CACHE_HOME", &xdg);
        }),
        xdg.join("imgbuild")
    );
    assert_eq!(root_of(&|_| {}), home.join(".cache/imgbuild"));
    // An empty or relative XDG_CACHE_HOME is ignored (XDG base directory spec).
    for bad in ["", "relative/cache"] {
        assert_eq!(
            root_of(&|c| {
                c.env("XDG_CACHE_HOME", bad);
            }),
            home.join(".cache/imgbuild"),
            "XDG_CACHE_HOME={bad:?}"
        );
    }
    // And the files really land there.
    for (configure, root) in [
        (
            Box::new(|c: &mut Command| {
                c.env("XDG_CACHE_HOME", &xdg);
            }) as Box<dyn Fn(&mut Command)>,
            xdg.join("imgbuild"),
        ),
        (
            Box::new(|c: &mut Command| {
                c.env("IMGBUILD_CACHE_DIR", &env_dir);
            }),
            env_dir.clone(),
        ),
        (Box::new(|_: &mut Command| {}), home.join(".cache/imgbuild")),
    ] {
        let mut c = cmd(dir);
        c.arg("--manifests").arg(dir.join("manifests"));
        configure(&mut c);
        c.args(["fetch", "rk1"]);
        let image = root.join(format!("images/{sha}.img"));
        expect(&run(c, dir), 0, &format!("rk1: {}", image.display()));
        assert_sparse_copy_of_raw(&image);
    }
}

/// A CA that signed nothing we serve: what a system store without the test CA is.
fn stranger_ca() -> String {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.self_signed(&key).unwrap().pem()
}

#[test]
fn https_downloads_follow_a_release_redirect_and_trust_only_the_ca_store() {
    let d = scratch();
    let dir = d.path();
    let xz = packed("single.xz");
    let sha = sha_of(&xz);
    // GitHub over TLS answering 302 to a storage host (another name, another
    // CA) that sends the asset chunked.
    let github = Server::start_tls(Faults::default());
    let storage = Server::start_tls(Faults {
        ranges: true,
        chunked: true,
        ..Default::default()
    });
    storage.put("/objects/7?sig=2", std::fs::read(&xz).unwrap());
    github.redirect(
        "/releases/download/v2.4.0/rk1.img.xz",
        302,
        &storage.url_by_name("/objects/7?sig=2"),
    );
    write_manifest(
        dir,
        "rk1",
        &github.url("/releases/download/v2.4.0/rk1.img.xz"),
        &sha,
        None,
    );
    let bundle = dir.join("ca-bundle.pem");
    std::fs::write(
        &bundle,
        format!(
            "{}{}",
            github.ca_pem.as_ref().unwrap(),
            storage.ca_pem.as_ref().unwrap()
        ),
    )
    .unwrap();

    // The certificates are not in the CA store: refused at once, not retried.
    let strangers = dir.join("strangers.pem");
    std::fs::write(&strangers, stranger_ca()).unwrap();
    let mut c = with_cache(dir, &["--retries", "3", "fetch", "rk1"]);
    c.env("SSL_CERT_FILE", &strangers);
    expect(
        &run(c, dir),
        1,
        "the server's TLS certificate is not trusted (UnknownIssuer)",
    );
    wait_for("the server to see the refused handshake", || {
        !github.handshake_failures().is_empty()
    });
    assert_eq!(
        github.handshake_failures().len(),
        1,
        "an untrusted certificate was retried"
    );
    assert!(github.requests().is_empty());

    // SSL_CERT_FILE names the CA store (rustls-native-certs reads it in place
    // of the system's, as OpenSSL does): now it downloads.
    let mut c = with_cache(dir, &["fetch", "rk1"]);
    c.env("SSL_CERT_FILE", &bundle);
    let image = dir.join(format!("cache/images/{sha}.img"));
    expect(&run(c, dir), 0, &format!("rk1: {}", image.display()));
    assert_sparse_copy_of_raw(&image);
    assert_eq!(github.requests().len(), 1);
    assert_eq!(storage.requests().len(), 1);

    // A redirect from https to plain http is refused: nothing is asked of
    // the http host, and nothing is retried.
    let plain = Server::start(Faults::default());
    plain.put("/rk1.img.xz", std::fs::read(&xz).unwrap());
    github.redirect("/downgrade", 302, &plain.url("/rk1.img.xz"));
    write_manifest(dir, "rk1", &github.url("/downgrade"), &sha, None);
    let mut c = with_cache(dir, &["--retries", "3", "cache", "clean", "--all"]);
    c.env("SSL_CERT_FILE", &bundle);
    expect(&run(c, dir), 0, "removed");
    let mut c = with_cache(dir, &["--retries", "3", "fetch", "rk1"]);
    c.env("SSL_CERT_FILE", &bundle);
    expect(
        &run(c, dir),
        1,
        "refusing a redirect from https to plain http",
    );
    assert!(plain.requests().is_empty(), "{:?}", plain.requests());
    assert_eq!(github.gets("/downgrade").len(), 1);
}

#[test]
fn bake_without_base_downloads_then_outputs_compress_with_sums() {
    let d = scratch();
    let rk1 = build_rk1(d.path(), 160);
    let xz = d.path().join("rk1.img.xz");
    sh(&format!(
        "xz -T2 --block-size=4MiB -c {} > {}",
        q(&rk1.path),
        q(&xz)
    ));
    let server = Server::start(Faults {
        ranges: true,
        ..Default::default()
    });
    server.put("/v2.4.0/rk1.img.xz", std::fs::read(&xz).unwrap());
    let k3s = Server::start(Faults {
        ranges: true,
        ..Default::default()
    });
    serve_k3s_release(&k3s);
    let manifests = d.path().join("manifests");
    sh(&format!(
        "cp -r {} {}",
        q(&repo().join("firmware-manifests")),
        q(&manifests)
    ));
    let rk1_yaml = std::fs::read_to_string(manifests.join("rk1.yaml"))
        .unwrap()
        .replace(RK1_URL, &server.url("/v2.4.0/rk1.img.xz"))
        .replace(RK1_SHA, &sha_of(&xz));
    std::fs::write(manifests.join("rk1.yaml"), rk1_yaml).unwrap();
    let work = d.path();
    let run_args = |extra: &[&str]| {
        let mut c = cmd(work);
        c.arg("--profiles")
            .arg(repo().join("profiles"))
            .arg("--manifests")
            .arg(&manifests)
            .arg("--cache-dir")
            .arg(work.join("cache"))
            .env("IMGBUILD_SECRETS", work.join("secrets"))
            .env(
                "IMGBUILD_K3S_MIRROR",
                format!("http://127.0.0.1:{}", k3s.port),
            )
            .args(extra);
        run(c, work)
    };
    let out = run_args(&[
        "--sums",
        "dist/node02.rk1.img",
        "dist/node02.rk1.img.xz",
        "dist/node02.rk1.img.zst",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(server.requests().len(), 1, "downloaded more than once");
    let dist = work.join("dist");
    let raw_sha = sha_of(&dist.join("node02.rk1.img"));
    for (tool, name) in [("xz", "node02.rk1.img.xz"), ("zstd", "node02.rk1.img.zst")] {
        let via = String::from_utf8(
            sh(&format!("{tool} -dc {} | sha256sum", q(&dist.join(name)))).stdout,
        )
        .unwrap();
        assert!(
            via.starts_with(&raw_sha),
            "{name} differs from the raw output"
        );
    }
    let check = sh(&format!("cd {} && sha256sum -c SHA256SUMS", q(&dist)));
    let t = String::from_utf8(check.stdout).unwrap();
    assert_eq!(t.matches(": OK").count(), 3, "{t}");
    for name in ["node02.rk1.img", "node02.rk1.img.xz", "node02.rk1.img.zst"] {
        let mode = std::fs::metadata(dist.join(name)).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o600, "{name}");
    }
    let mut names: Vec<String> = std::fs::read_dir(&dist)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "SHA256SUMS",
            "node02.rk1.img",
            "node02.rk1.img.intoto.json",
            "node02.rk1.img.xz",
            "node02.rk1.img.xz.intoto.json",
            "node02.rk1.img.zst",
            "node02.rk1.img.zst.intoto.json"
        ]
    );
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
    let out = run_args(&["--offline", "dist/node03.rk1.img"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out));
    assert_eq!(server.requests().len(), 1);
    let t = expect(&run_args(&["cache", "list"]), 0, "cache: ");
    assert!(
        t.lines().any(|l| l.contains("image") && l.contains("rk1")),
        "{t}"
    );
    assert_eq!(
        t.lines()
            .filter(|l| l.contains("asset") && l.contains("k3s"))
            .count(),
        2,
        "{t}"
    );
    expect(&run_args(&["fetch", "rk1"]), 0, "rk1: ");
    // An unknown board and an offline fetch of an uncached board fail clearly.
    expect(
        &run_args(&["fetch", "pi5"]),
        2,
        "no firmware manifest for board \"pi5\"",
    );
    expect(
        &run_args(&["--offline", "fetch", "cm4"]),
        1,
        "not in the cache",
    );
    // Clean keeps what the manifests refer to, unless --all.
    expect(&run_args(&["cache", "clean"]), 0, "0 entries removed");
    expect(
        &run_args(&["cache", "clean", "--all"]),
        0,
        "3 entries removed",
    );
    assert!(!work.join("cache").exists() || files_under(&work.join("cache")).is_empty());
}

// Idle timeouts (issue 25): a server that accepts the connection and then
// stalls, or sends a byte every few seconds, hung a bake forever and the
// retries never started. A wait for the server longer than the policy's
// idle timeout is now a transient failure.

/// The quick policy with an idle timeout short enough for a test.
fn impatient(attempts: u32) -> RetryPolicy {
    RetryPolicy {
        attempts,
        idle_timeout: Duration::from_millis(800),
        ..quick().retry
    }
}

/// Runs `f` on a thread and fails the test when it has not returned within
/// `limit`: without an idle timeout these calls never return.
fn within<T: Send + 'static>(limit: Duration, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(limit).unwrap_or_else(|_| {
        panic!("no answer within {limit:?}: the client hangs on a silent server")
    })
}

fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

fn sha_hex(b: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(b))
}

#[test]
fn a_server_that_accepts_and_never_answers_is_retried_after_the_idle_timeout() {
    let server = Server::start(Faults {
        stall_first: 1,
        ..Default::default()
    });
    let body = payload(200_000);
    server.put("/asset", body.clone());
    server.put(
        "/SHA256SUMS",
        format!("{}  asset\n", sha_hex(&body)).into_bytes(),
    );
    let dir = scratch();
    let (url, partial) = (server.url("/asset"), dir.path().join("asset.part"));
    let got = within(Duration::from_secs(30), move || {
        fetch::download::download(&url, &partial, impatient(3), "asset", None)
    });
    assert_eq!(got.unwrap().to_string(), sha_hex(&body));
    assert_eq!(server.stalled(), 1);
    assert_eq!(server.gets("/asset").len(), 2);
    // A checksum file is fetched the same way.
    server.faults.lock().unwrap().stall_first = 1;
    let url = server.url("/SHA256SUMS");
    let text = within(Duration::from_secs(30), move || {
        fetch::download::fetch_text(&url, impatient(3))
    });
    assert!(text.unwrap().contains("asset"));
    assert_eq!(server.stalled(), 2);
}

#[test]
fn a_server_that_trickles_is_given_up_on_and_the_download_resumes() {
    // One byte, then nothing for two seconds: past the idle timeout.
    let server = Server::start(Faults {
        ranges: true,
        trickle: Some((Duration::from_secs(2), 1)),
        ..Default::default()
    });
    let body = payload(300_000);
    server.put("/asset", body.clone());
    let dir = scratch();
    let (url, partial) = (server.url("/asset"), dir.path().join("asset.part"));
    let got = within(Duration::from_secs(30), move || {
        fetch::download::download(&url, &partial, impatient(3), "asset", None)
    });
    assert_eq!(got.unwrap().to_string(), sha_hex(&body));
    let gets = server.gets("/asset");
    assert_eq!(gets.len(), 2, "{gets:?}");
    // The retry resumed after the byte that arrived.
    assert_eq!(gets[1].range.as_deref(), Some("bytes=1-"));

    // A server that always trickles: the retries run out (each resuming
    // after the byte before), and the message names the idle timeout.
    server.faults.lock().unwrap().trickle = Some((Duration::from_secs(2), 10));
    let dir = scratch();
    let (url, partial) = (server.url("/asset"), dir.path().join("asset.part"));
    let e = within(Duration::from_secs(30), move || {
        fetch::download::download(&url, &partial, impatient(2), "asset", None)
    })
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("gave up after 2 attempt(s)")
            && e.contains("no data for 0.8 s after 2 bytes (the idle timeout)"),
        "{e}"
    );
}

/// A one-layer arm64 image served by the plain HTTP fake as a registry
/// would serve it (`/v2/<repo>/manifests/sha256:..`, `/blobs/sha256:..`),
/// with its `manifest` given or made; returns the pinned reference.
fn serve_oci(
    server: &Server,
    repo: &str,
    layer: &[u8],
    served_layer: &[u8],
    manifest: Option<Vec<u8>>,
) -> imgbuild::config::images::ImageRef {
    let config =
        br#"{"architecture":"arm64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let manifest = manifest.unwrap_or_else(|| {
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": format!("sha256:{}", sha_hex(config)), "size": config.len()},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                        "digest": format!("sha256:{}", sha_hex(layer)), "size": layer.len()}]
        }))
        .unwrap()
    });
    let md = sha_hex(&manifest);
    server.put(&format!("/v2/{repo}/manifests/sha256:{md}"), manifest);
    server.put(
        &format!("/v2/{repo}/blobs/sha256:{}", sha_hex(config)),
        config.to_vec(),
    );
    server.put(
        &format!("/v2/{repo}/blobs/sha256:{}", sha_hex(layer)),
        served_layer.to_vec(),
    );
    imgbuild::config::images::ImageRef::parse(&format!(
        "127.0.0.1:{}/{repo}@sha256:{md}",
        server.port
    ))
    .unwrap()
}

fn pull(
    image: imgbuild::config::images::ImageRef,
    cache: &Path,
    attempts: u32,
) -> anyhow::Result<PathBuf> {
    let cache = cache_at(cache);
    within(Duration::from_secs(60), move || {
        let opts = FetchOptions {
            offline: false,
            retry: impatient(attempts),
        };
        fetch::oci::ensure_image(
            &image,
            imgbuild::config::manifest::Arch::Arm64,
            &cache,
            &opts,
            None,
        )
        .map(|p| p.archive)
    })
}

#[test]
fn a_registry_that_stalls_is_retried_after_the_idle_timeout() {
    let server = Server::start(Faults {
        stall_first: 1,
        ..Default::default()
    });
    let layer = payload(50_000);
    let image = serve_oci(&server, "demo/app", &layer, &layer, None);
    let dir = scratch();
    let archive = pull(image, dir.path(), 3).unwrap();
    assert!(archive.is_file());
    assert_eq!(server.stalled(), 1);
    // And one that trickles its first answer.
    server.faults.lock().unwrap().trickle = Some((Duration::from_secs(2), 1));
    let layer = payload(60_000);
    let image = serve_oci(&server, "demo/other", &layer, &layer, None);
    let archive = pull(image, &dir.path().join("c2"), 3).unwrap();
    assert!(archive.is_file());
}

#[test]
fn a_blob_that_fails_its_digest_leaves_nothing_in_the_cache() {
    // The error said "nothing was cached" while the blob stayed in
    // cache/partial/ (one case left 300 MB).
    let server = Server::start(Faults::default());
    let layer = payload(80_000);
    let mut bad = layer.clone();
    bad[40_000] ^= 0xff;
    let image = serve_oci(&server, "demo/app", &layer, &bad, None);
    let dir = scratch();
    let e = format!("{:#}", pull(image, dir.path(), 1).unwrap_err());
    assert!(
        e.contains("sha256 mismatch") && e.contains("nothing was cached"),
        "{e}"
    );
    let left = files_under(&dir.path().join("partial"));
    assert!(left.is_empty(), "left in cache/partial: {left:?}");
    assert!(!dir.path().join("assets").join(sha_hex(&layer)).exists());
}

#[test]
fn a_registry_document_nested_past_the_cap_is_refused_before_it_is_parsed() {
    // Manifests, indexes and token answers go through the nesting pre-scan;
    // the digest pins this one, so only the cap can refuse it.
    let server = Server::start(Faults::default());
    let deep = format!("{{\"manifests\": {}", "[".repeat(50_000)).into_bytes();
    let image = serve_oci(&server, "demo/deep", b"x", b"x", Some(deep));
    let dir = scratch();
    let e = format!("{:#}", pull(image, dir.path(), 1).unwrap_err());
    assert!(
        e.contains("nests collections more than 64 deep (line 1, column 78)"),
        "{e}"
    );
}
