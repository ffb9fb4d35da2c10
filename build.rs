//! Records the commit imgbuild is built from, for the provenance statements
//! it writes beside artifacts (`unknown` outside a git checkout), and compiles
//! the shipped `firmware-manifests/` and `overlays/` into the binary (a table
//! of relative path, bytes and mode), so that imgbuild works from any
//! directory; `config::builtin` includes the table.

use std::fmt::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let commit = std::env::var("IMGBUILD_BUILD_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| {
            let out = Command::new("git")
                .args(["rev-parse", "HEAD"])
                .output()
                .ok()?;
            let c = String::from_utf8(out.stdout).ok()?.trim().to_string();
            (out.status.success() && c.len() == 40).then_some(c)
        })
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=IMGBUILD_COMMIT={commit}");
    println!("cargo:rerun-if-env-changed=IMGBUILD_BUILD_COMMIT");
    // A new commit moves HEAD or the branch it names.
    for path in [".git/HEAD", ".git/refs/heads", ".git/packed-refs"] {
        if std::path::Path::new(path).exists() {
            println!("cargo:rerun-if-changed={path}");
        }
    }

    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let mut table = String::new();
    for (name, dir) in [
        ("MANIFESTS", "firmware-manifests"),
        ("OVERLAYS", "overlays"),
    ] {
        let base = root.join(dir);
        // Cargo scans a directory given here recursively for changes.
        println!("cargo:rerun-if-changed={}", base.display());
        let mut files = Vec::new();
        walk(&base, &mut files);
        files.sort();
        writeln!(table, "pub static {name}: &[BuiltinFile] = &[").unwrap();
        for f in files {
            let rel = f.strip_prefix(&base).expect("under base");
            let rel = rel
                .to_str()
                .unwrap_or_else(|| panic!("{}: file names must be UTF-8", f.display()));
            let mode = std::fs::metadata(&f)
                .expect("readable")
                .permissions()
                .mode()
                & 0o777;
            writeln!(
                table,
                "    BuiltinFile {{ path: {rel:?}, data: include_bytes!({:?}), mode: 0o{mode:o} }},",
                f.display().to_string()
            )
            .unwrap();
        }
        writeln!(table, "];").unwrap();
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("set by cargo")).join("builtin.rs");
    std::fs::write(out, table).expect("OUT_DIR is writable");
}

/// Regular files under `dir` (symlinks followed, as the shipped tree has none
/// that matter and a packaged copy may dereference them).
fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd {
        let p = e.expect("readable directory").path();
        if p.is_dir() {
            walk(&p, out);
        } else if p.is_file() {
            out.push(p);
        }
    }
}
