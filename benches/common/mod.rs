//! What the Rust benchmarks share: running shell commands and medians.
#![allow(dead_code)]

use std::process::Command;

/// Runs `cmd` with `bash -e`, its output on the terminal; panics if it fails.
pub fn sh(cmd: &str) {
    let st = Command::new("bash").arg("-ec").arg(cmd).status().unwrap();
    assert!(st.success(), "{cmd}");
}

/// Runs `cmd` with `bash -e` and returns its standard output; panics if it fails.
pub fn sh_out(cmd: &str) -> String {
    let out = Command::new("bash").arg("-ec").arg(cmd).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The median (the mean of the middle two for an even count).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}
