//! Upload to a fake BMC on loopback (the one the tests use): `imgbuild flash`
//! against `curl -F file=@image` to the same upload endpoint, same run; and
//! imgbuild's peak RSS. Prints medians and the ratio.
//!
//!   cargo bench --bench upload [-- SIZE_MIB [ROUNDS]]

#[path = "../tests/support/bmc.rs"]
mod bmc;

mod common;

use common::{median, sh_out};
use std::path::Path;
use std::process::Command;
use std::time::Instant;

// Children are reaped with wait4 (to read their peak RSS), which clippy cannot see.
#[allow(clippy::zombie_processes)]
fn main() {
    let args: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let size_mib = args.first().copied().unwrap_or(1024);
    let rounds = args.get(1).copied().unwrap_or(3) as usize;
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    // Scratch under the cargo target directory, removed at the end.
    let w = tempfile::Builder::new()
        .prefix("imgbuild-upload")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .unwrap();
    let d = w.path();
    let fake = bmc::FakeBmc::start("turing");
    sh_out(&format!(
        "cp -r {}/profiles {}/",
        repo.display(),
        d.display()
    ));
    let cluster = std::fs::read_to_string(d.join("profiles/cluster.yaml"))
        .unwrap()
        .replace("bmc: turingpi.home.arpa", &format!("bmc: {}", fake.host()));
    std::fs::write(d.join("profiles/cluster.yaml"), cluster).unwrap();
    std::fs::create_dir_all(d.join("dist")).unwrap();
    let image = d.join("dist/node02.rk1.img");
    sh_out(&format!(
        "head -c {size_mib}M /dev/urandom > {}",
        image.display()
    ));
    // A SHA256SUMS line, as a bake leaves, so flash does not re-hash the image.
    sh_out(&format!(
        "cd {}/dist && sha256sum node02.rk1.img > SHA256SUMS",
        d.display()
    ));
    let bin = env!("CARGO_BIN_EXE_imgbuild");
    let (mut ours, mut theirs, mut rss) = (Vec::new(), Vec::new(), 0i64);
    for _ in 0..rounds {
        let t = Instant::now();
        let child = Command::new(bin)
            .args(["flash", "node02", "--yes", "--profiles", "profiles"])
            .arg("--manifests")
            .arg(repo.join("firmware-manifests"))
            .current_dir(d)
            .env("IMGBUILD_SECRETS", d.join("secrets"))
            .env("IMGBUILD_BMC_PASSWORD", "turing")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut status = 0;
        // SAFETY: wait4 on our own child to read its rusage.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
        assert_eq!(status, 0, "imgbuild flash failed");
        ours.push(t.elapsed().as_secs_f64());
        rss = rss.max(usage.ru_maxrss / 1024);

        // curl: log in and start a flash with its own requests, time only the upload.
        let host = fake.host();
        // bmcd returns the session token in X-Auth-Token (authentication_service.rs:167-180).
        let token = sh_out(&format!(
            "curl -sk -D - -o /dev/null -X POST -d '{{\"username\":\"root\",\"password\":\"turing\"}}' https://{host}/api/bmc/authenticate | sed -n 's/^X-Auth-Token: //p'"
        ));
        let token = token.trim();
        let len = std::fs::metadata(&image).unwrap().len();
        let handle = sh_out(&format!(
            "curl -sk -H 'Authorization: Bearer {token}' 'https://{host}/api/bmc?opt=set&type=flash&file=node02.rk1.img&length={len}&node=1' | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"handle\"])'"
        ));
        let t = Instant::now();
        sh_out(&format!(
            "curl -sk -o /dev/null -H 'Authorization: Bearer {token}' -F file=@{} https://{host}/api/bmc/upload/{}",
            image.display(),
            handle.trim()
        ));
        theirs.push(t.elapsed().as_secs_f64());
        // Let the fake's read-back (5 steps of 100 ms) end before the next round.
        while !fake.lock().flash.json().contains("Done") {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
    let (o, c) = (median(ours.clone()), median(theirs.clone()));
    println!("upload of {size_mib} MiB to a fake BMC on loopback (TLS), {rounds} rounds, medians:");
    println!(
        "  imgbuild flash (login, start, upload, CRC wait ~0.5 s, power on): {o:.2} s = {:.0} MB/s  {ours:.2?}",
        size_mib as f64 * 1.048576 / o
    );
    println!(
        "  curl -F file=@image (upload only): {c:.2} s = {:.0} MB/s  {theirs:.2?}",
        size_mib as f64 * 1.048576 / c
    );
    println!(
        "  ratio imgbuild/curl: {:.2}   peak RSS of imgbuild flash: {rss} MiB",
        o / c
    );
}
