//! Scratch space under cargo's target directory (`target/tmp`), never in
//! `/tmp`, and always removed: per-test directories are `TempDir`s dropped at
//! the end of the test; the one directory shared by a test process (fixtures
//! built once) is removed when the process exits, and one left by a process
//! that was killed is removed by the next run.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

fn root() -> PathBuf {
    let r = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(&r).unwrap();
    r
}

/// A fresh directory for one test, removed when dropped.
pub fn dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("scratch-")
        .tempdir_in(root())
        .unwrap()
}

static SHARED: OnceLock<PathBuf> = OnceLock::new();

extern "C" fn remove_shared() {
    if let Some(p) = SHARED.get() {
        let _ = std::fs::remove_dir_all(p);
    }
}

/// A directory shared by every test of this process, removed at exit.
pub fn shared() -> &'static Path {
    SHARED.get_or_init(|| {
        let prefix = "shared-";
        // Directories of earlier processes that were killed before their exit.
        for e in std::fs::read_dir(root()).unwrap().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name
                .strip_prefix(prefix)
                .and_then(|p| p.parse::<u32>().ok())
                && !Path::new(&format!("/proc/{pid}")).exists()
            {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
        let p = root().join(format!("{prefix}{}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        // SAFETY: registers a plain function to run at exit.
        unsafe { libc::atexit(remove_shared) };
        p
    })
}
