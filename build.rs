//! Records the commit imgbuild is built from, for the provenance statements
//! it writes beside artifacts (`unknown` outside a git checkout).

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
}
