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

/// Where tests put scratch files: the cargo target directory, never /tmp.
pub fn scratch_root() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(&root).unwrap();
    root
}

/// A scratch directory for one test, removed when dropped.
pub fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("imgbuild-test-")
        .tempdir_in(scratch_root())
        .unwrap()
}

static SHARED: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();

extern "C" fn remove_shared_scratch() {
    if let Some(p) = SHARED.get() {
        let _ = std::fs::remove_dir_all(p);
    }
}

/// A directory shared by every test of this process (statics are never
/// dropped), removed when the process exits; one left by a process that was
/// killed is removed by the next run.
pub fn shared_scratch() -> PathBuf {
    SHARED
        .get_or_init(|| {
            let prefix = "shared-";
            for e in std::fs::read_dir(scratch_root()).unwrap().flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(pid) = name
                    .strip_prefix(prefix)
                    .and_then(|p| p.parse::<u32>().ok())
                    && !Path::new(&format!("/proc/{pid}")).exists()
                {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
            let p = scratch_root().join(format!("{prefix}{}", std::process::id()));
            std::fs::create_dir_all(&p).unwrap();
            // SAFETY: registers a plain function with no captured state.
            unsafe { libc::atexit(remove_shared_scratch) };
            p
        })
        .clone()
}

/// Says on stderr, past the test harness's output capture, that a check was
/// skipped and why.
pub fn skipped(what: &str, why: &str) {
    note(&format!("SKIPPED: {what}: {why}"));
}

/// Whether checks that need privileges must run rather than be skipped: in
/// CI (which runs as root) or whenever we are root.
pub fn must_run_privileged_checks() -> bool {
    std::env::var_os("CI").is_some() || unsafe { libc::geteuid() } == 0
}

/// The proptest configuration every property test uses: a fixed seed (so a
/// CI failure reproduces), printed, and `default_cases` cases. For a long run:
/// `IMGBUILD_PROPTEST_CASES=2000 IMGBUILD_PROPTEST_SEED=<n>|random cargo test --release`.
pub fn proptest_config(default_cases: u32) -> proptest::test_runner::Config {
    use proptest::test_runner::{Config, RngSeed};
    let cases = std::env::var("IMGBUILD_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_cases);
    let seed = match std::env::var("IMGBUILD_PROPTEST_SEED").ok().as_deref() {
        Some("random") => {
            use std::hash::{BuildHasher, RandomState};
            RandomState::new().hash_one(std::time::SystemTime::now())
        }
        Some(v) => v
            .parse()
            .expect("IMGBUILD_PROPTEST_SEED is a number or `random`"),
        None => 0x1a6b_0117,
    };
    note(&format!(
        "property test: {cases} cases, seed {seed} (IMGBUILD_PROPTEST_SEED={seed} repeats it)"
    ));
    Config {
        cases,
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: None,
        ..Config::default()
    }
}

fn note(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_imgbuild"))
}

/// The imgbuild binary as a command, in a clean environment: none of the
/// variables imgbuild reads leak in from the developer's shell or from CI
/// (where CI=true makes sealed builds need --sealed).
pub fn command() -> Command {
    let mut c = Command::new(bin());
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        if k.starts_with("IMGBUILD_") && k != "IMGBUILD_TEST_VENV" {
            c.env_remove(&k);
        }
    }
    c.env_remove("CI").env_remove("SOURCE_DATE_EPOCH");
    c
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

/// The digest `sha256sum` computes for `path` (an independent check of the
/// digests imgbuild records).
pub fn sha256sum(path: &Path) -> String {
    let out = sh(&format!("sha256sum {}", q(path)));
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
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
