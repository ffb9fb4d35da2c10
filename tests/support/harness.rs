//! The one harness every test binary shares: where the repository and the
//! binary are, running shell commands and imgbuild, reading their output.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The Python the tests' helper scripts run with: the virtual environment
/// `tests/setup-python.sh` makes (test packages never go into the system Python).
pub fn python() -> String {
    let venv = std::env::var_os("IMGBUILD_TEST_VENV")
        .map(|v| repo().join(v))
        .unwrap_or_else(|| repo().join("target/test-venv"));
    let py = venv.join("bin/python3");
    assert!(
        py.is_file(),
        "{} is missing: run `bash tests/setup-python.sh` first",
        py.display()
    );
    q(&py)
}

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_imgbuild"))
}

/// Runs a shell command and panics with its output when it fails.
pub fn sh(cmd: &str) -> Output {
    let out = Command::new("bash")
        .arg("-ec")
        .arg(cmd)
        .output()
        .expect("bash runs");
    assert!(
        out.status.success(),
        "command failed: {cmd}\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs a shell command and returns (exit code, stdout+stderr).
pub fn sh_status(cmd: &str) -> (i32, String) {
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!("{cmd} 2>&1"))
        .output()
        .expect("bash runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

pub fn q(p: &Path) -> String {
    format!("'{}'", p.display())
}
