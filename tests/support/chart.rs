//! Helm chart archives for bootstrap tests, made with the real `tar`.

#![allow(dead_code)]

use std::path::Path;

use super::harness::{q, sh};

/// A ConfigMap template with a value from the chart's values.
pub const GREETING_TEMPLATE: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: demo\ndata:\n  greeting: {{ .Values.greeting | quote }}\n";

/// A plain ConfigMap template.
pub const PLAIN_TEMPLATE: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: demo\n";

/// The chart `demo` 0.1.0 (Chart.yaml and `template` as templates/cm.yaml)
/// as a .tgz; the work files under `work` are removed again.
pub fn chart_tgz(work: &Path, template: &str) -> Vec<u8> {
    let src = work.join("chart-src");
    let dir = src.join("demo");
    std::fs::create_dir_all(dir.join("templates")).unwrap();
    std::fs::write(
        dir.join("Chart.yaml"),
        "apiVersion: v2\nname: demo\nversion: 0.1.0\n",
    )
    .unwrap();
    std::fs::write(dir.join("templates/cm.yaml"), template).unwrap();
    let tgz = work.join("demo-0.1.0.tgz");
    sh(&format!("tar -C {} -czf {} demo", q(&src), q(&tgz)));
    let b = std::fs::read(&tgz).unwrap();
    std::fs::remove_dir_all(&src).unwrap();
    std::fs::remove_file(tgz).unwrap();
    b
}

/// sha256 of `b` as `sha256sum` prints it.
pub fn sha256_hex(b: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(b))
}
