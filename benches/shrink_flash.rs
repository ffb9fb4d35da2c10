//! `imgbuild flash` of a stock-size and a shrunk image of the same node to the
//! fake BMC (the one the tests use) throttled to the real eMMC rate, in the
//! same run; prints both times and the ratio. The images come from
//! `benches/shrink.sh` (FLASH=1) or any two bakes of node02 (RK1).
//!
//!   cargo bench --bench shrink_flash -- STOCK.img SHRUNK.img [BYTES_PER_S]
//!   (default rate 5000000, the BMC's ~5 MB/s; the fake's CRC read-back is a
//!   fixed 0.5 s, the real one reads everything back at about the same rate)

#[path = "../tests/support/bmc.rs"]
mod bmc;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    if args.len() < 2 {
        // Not an error: `cargo test --all-targets` runs this without arguments.
        eprintln!("usage: cargo bench --bench shrink_flash -- STOCK.img SHRUNK.img [BYTES_PER_S]");
        return;
    }
    let (stock, shrunk) = (PathBuf::from(&args[0]), PathBuf::from(&args[1]));
    let rate: u64 = args
        .get(2)
        .and_then(|r| r.parse().ok())
        .unwrap_or(5_000_000);
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let w = tempfile::Builder::new()
        .prefix("imgbuild-shrink-flash")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let d = w.path();
    let fake = bmc::FakeBmc::start("turing");
    fake.lock().upload_rate = Some(rate);
    let status = Command::new("cp")
        .arg("-r")
        .arg(repo.join("profiles"))
        .arg(d)
        .status()
        .unwrap();
    assert!(status.success());
    let cluster = std::fs::read_to_string(d.join("profiles/cluster.yaml"))
        .unwrap()
        .replace("bmc: turingpi.home.arpa", &format!("bmc: {}", fake.host()));
    std::fs::write(d.join("profiles/cluster.yaml"), cluster).unwrap();
    let bin = env!("CARGO_BIN_EXE_imgbuild");
    let mut times = Vec::new();
    for image in [&stock, &shrunk] {
        let len = std::fs::metadata(image).unwrap().len();
        let t = Instant::now();
        let out = Command::new(bin)
            .args(["flash", "node02", "--yes", "--profiles", "profiles"])
            .arg("--manifests")
            .arg(repo.join("firmware-manifests"))
            .arg("--image")
            .arg(image)
            .current_dir(d)
            .env("IMGBUILD_SECRETS", d.join("secrets"))
            .env("IMGBUILD_BMC_PASSWORD", "turing")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "flash of {} failed: {}",
            image.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let secs = t.elapsed().as_secs_f64();
        let written = std::fs::metadata(fake.slot_file(2)).map_or(0, |m| m.len());
        println!(
            "  {}: {} bytes sent, {written} bytes in the slot, {secs:.1} s",
            image.display(),
            len
        );
        times.push(secs);
    }
    println!(
        "flash at {:.1} MB/s: stock {:.1} s, shrunk {:.1} s, ratio shrunk/stock {:.3}",
        rate as f64 / 1e6,
        times[0],
        times[1],
        times[1] / times[0]
    );
}
