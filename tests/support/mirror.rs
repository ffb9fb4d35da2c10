//! Per-test-binary state for bakes: a secrets directory, a cache and a
//! stand-in k3s release served on loopback, and running imgbuild with them.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;

use super::harness::{command, shared_scratch};
use super::http;

pub const K3S_VERSION: &str = "v1.32.5+k3s1";

/// Per-test-binary state: a secrets dir, a cache and a loopback k3s release mirror.
pub struct Env {
    pub dir: PathBuf,
    pub mirror: http::Server,
    pub k3s_arm64: Vec<u8>,
    pub k3s_amd64: Vec<u8>,
}

impl Env {
    pub fn secrets(&self) -> PathBuf {
        self.dir.join("secrets")
    }
    pub fn cache(&self) -> PathBuf {
        self.dir.join("cache")
    }
    pub fn mirror_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.mirror.port)
    }
}

pub fn env() -> &'static Env {
    static E: OnceLock<Env> = OnceLock::new();
    E.get_or_init(|| {
        let dir = shared_scratch();
        let mirror = http::Server::start(http::Faults {
            ranges: true,
            ..Default::default()
        });
        let (k3s_arm64, k3s_amd64) = serve_k3s_release(&mirror);
        Env {
            dir,
            mirror,
            k3s_amd64,
            k3s_arm64,
        }
    })
}

/// Puts a stand-in k3s release (binaries, air-gap image tarballs,
/// `sha256sum-<arch>.txt`) on `mirror`; returns the arm64 and amd64 binaries.
pub fn serve_k3s_release(mirror: &http::Server) -> (Vec<u8>, Vec<u8>) {
    use sha2::{Digest, Sha256};
    let tag = K3S_VERSION.replace('+', "%2B");
    let mut assets = Vec::new();
    for (arch, bin) in [("arm64", "k3s-arm64"), ("amd64", "k3s")] {
        let binary = format!("#!/bin/sh\n# stand-in for the k3s {arch} binary\n").into_bytes();
        let images = images_stand_in(arch);
        let images_name = format!("k3s-airgap-images-{arch}.tar.zst");
        let sums = format!(
            "{}  {bin}\n{}  {images_name}\n{}  k3s-images.txt\n",
            hex::encode(Sha256::digest(&binary)),
            hex::encode(Sha256::digest(&images)),
            "0".repeat(64)
        );
        mirror.put(&format!("/{tag}/{bin}"), binary.clone());
        mirror.put(&format!("/{tag}/{images_name}"), images);
        mirror.put(&format!("/{tag}/sha256sum-{arch}.txt"), sums.into_bytes());
        assets.push(binary);
    }
    let amd64 = assets.pop().unwrap();
    (assets.pop().unwrap(), amd64)
}

/// The stand-in air-gap image tarball for `arch`: 2 MiB and 123 bytes of
/// incompressible, reproducible bytes, large enough that a bake writes it
/// straight into its blocks (not through debugfs), ending mid-block.
pub fn images_stand_in(arch: &str) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    let mut out = Vec::with_capacity((2 << 20) + 123);
    let mut block = Sha256::digest(format!("k3s-airgap-images-{arch}"));
    while out.len() < (2 << 20) + 123 {
        out.extend_from_slice(&block);
        block = Sha256::digest(block);
    }
    out.truncate((2 << 20) + 123);
    out
}

/// Runs imgbuild with `args` in `cwd`, with this test binary's secrets, cache and k3s mirror.
pub fn imgbuild(cwd: &Path, args: &[&str]) -> Output {
    let e = env();
    command()
        .args(args)
        .current_dir(cwd)
        .env_remove("IMGBUILD_PROFILES")
        .env_remove("SOURCE_DATE_EPOCH")
        .env("IMGBUILD_SECRETS", e.secrets())
        .env("IMGBUILD_CACHE_DIR", e.cache())
        .env("IMGBUILD_K3S_MIRROR", e.mirror_url())
        .output()
        .expect("imgbuild runs")
}

/// The exit status and combined output of one imgbuild run.
pub struct Run {
    pub code: i32,
    pub text: String,
}

/// imgbuild with the example profiles and `args`, in `cwd`.
pub fn run_example(cwd: &Path, args: &[&str]) -> Run {
    let profiles = super::harness::repo().join("profiles");
    let mut all = vec!["--profiles", profiles.to_str().unwrap()];
    all.extend_from_slice(args);
    let out = imgbuild(cwd, &all);
    Run {
        code: out.status.code().unwrap_or(-1),
        text: super::harness::text(&out),
    }
}
