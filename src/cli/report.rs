//! What each command prints: text for people, JSON (`--json`) for scripts.
//! Values only ever go to stdout here; logs and progress go to stderr.

use std::path::{Path, PathBuf};

use imgbuild::commands::build::BakeReport;
use imgbuild::commands::cache::{CacheListing, Cleaned};
use imgbuild::commands::check::CheckReport;
use imgbuild::commands::flash::Deployed;
use imgbuild::commands::kubeconfig::KubeconfigResult;
use imgbuild::commands::overlays::Sourced;
use imgbuild::commands::secrets::Shown;
use imgbuild::commands::status::ClusterStatus;
use imgbuild::commands::wait::WaitReport;
use imgbuild::commands::{CommandError, Result};
use imgbuild::deliver::Report;
use imgbuild::deliver::turing_pi::Status;
use imgbuild::plan::RenderedFile;
use imgbuild::readback::inspect::Inspection;
use imgbuild::source::unpack::Format as PackFormat;

use super::Outcome;
use super::json as view;

fn json<T: serde::Serialize>(v: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(v).map_err(anyhow::Error::from)?;
    println!("{text}");
    Ok(())
}

/// `v` with the members of every object in name order: `render` and
/// `deploy --wait` have always printed theirs so.
fn sorted<V: serde::Serialize>(v: &V) -> Result<serde_json::Value> {
    Ok(serde_json::to_value(v).map_err(anyhow::Error::from)?)
}

/// Prints `v` as JSON (its view, see `json.rs`) when asked, else as `text`
/// renders it.
fn either<'a, T: ?Sized, V: serde::Serialize>(
    as_json: bool,
    v: &'a T,
    view: impl FnOnce(&'a T) -> V,
    text: impl FnOnce(&'a T),
) -> Result<()> {
    if as_json {
        json(&view(v))
    } else {
        text(v);
        Ok(())
    }
}

pub fn built(as_json: bool, reports: &[BakeReport]) -> Result<()> {
    either(as_json, reports, view::bakes, |rs| {
        for r in rs {
            println!("{}", r.output.display());
        }
    })
}

pub fn sealed(as_json: bool, r: &imgbuild::commands::seal::SealReport) -> Result<()> {
    either(as_json, r, view::Seal::from, |r| {
        println!("{}", r.output.display());
    })
}

pub fn verified(as_json: bool, r: &imgbuild::commands::verify::VerifyReport) -> Result<()> {
    either(as_json, r, view::Verify::from, |r| {
        let checked: Vec<&str> = [
            (r.sums_checked, "SHA256SUMS"),
            (r.statement_checked, "provenance statement"),
        ]
        .iter()
        .filter(|(ok, _)| *ok)
        .map(|(_, what)| *what)
        .collect();
        println!(
            "{}: OK (sha256 {} matches {})",
            r.artifact.display(),
            r.sha256,
            checked.join(" and ")
        );
        for (k, v) in &r.parameters {
            println!("  {k:<12} {v}");
        }
        if !r.built_from.is_empty() {
            println!("  built from:");
        }
        for d in &r.built_from {
            println!(
                "    {:<20} {} {}",
                d.name.as_deref().unwrap_or("-"),
                d.uri.as_deref().unwrap_or(""),
                d.digest
                    .get("sha256")
                    .map(|s| format!("sha256:{s}"))
                    .unwrap_or_default()
            );
        }
        for (k, v) in &r.builder {
            println!("  {k:<12} {v}");
        }
    })
}

pub fn fetched(as_json: bool, fetched: &imgbuild::commands::fetch::Fetched) -> Result<()> {
    either(as_json, fetched, view::Fetch::from, |f| {
        for (board, path) in f.boards.iter().chain(&f.extras) {
            println!("{board}: {}", path.display());
        }
    })
}

pub fn secrets(shown: &Shown) -> Result<()> {
    match shown {
        Shown::Token(t) => println!("{t}"),
        Shown::KnownHosts(k) => print!("{k}"),
        Shown::Inventory { dir, entries } => secrets_inventory(dir, entries),
    }
    Ok(())
}

fn secrets_inventory(dir: &Path, inventory: &[(String, &'static str)]) {
    println!("secrets: {} (values are never shown)", dir.display());
    for (rel, what) in inventory {
        println!("  {rel:<48} {what}");
    }
    if inventory.is_empty() {
        println!("  (none yet: they are created by the first build)");
    }
}

pub fn delivered(as_json: bool, reports: &[Report]) -> Result<()> {
    either(as_json, reports, view::delivered, |rs| {
        for r in rs {
            println!(
                "{:<8} {}  {}  {}",
                r.result,
                r.destination,
                r.node,
                r.image.display()
            );
        }
    })
}

pub fn bmc_status(as_json: bool, all: &[Status]) -> Result<()> {
    either(as_json, all, view::bmcs, |all| {
        for st in all {
            println!(
                "BMC {} (certificate sha256 {})",
                st.host,
                st.fingerprint.as_deref().unwrap_or("not verified")
            );
            for (k, v) in &st.about {
                println!(
                    "  {k:<14} {}",
                    v.as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| v.to_string())
                );
            }
            let power: Vec<String> = st
                .power
                .iter()
                .map(|(s, on)| format!("slot {s}: {}", if *on { "on" } else { "off" }))
                .collect();
            println!("  power          {}", power.join(", "));
            // Shown as the BMC reports it (addresses and storage, the SD card's free space among it).
            if let Some(info) = st.info.as_object() {
                for (k, v) in info {
                    println!("  {k:<14} {v}");
                }
            }
        }
    })
}

pub fn unpacked(output: &Path, (format, size): (PackFormat, u64)) -> Result<()> {
    println!("{}: {format:?}, {size} bytes", output.display());
    Ok(())
}

pub fn cache_listing(as_json: bool, l: &CacheListing) -> Result<()> {
    either(as_json, l, view::CacheList::from, |l| {
        println!("cache: {}", l.root.display());
        for listed in &l.entries {
            let e = &listed.entry;
            println!(
                "  {:<8} {:<5} {:>10} ({:>10} on disk)  {}{}",
                format!("{:?}", e.kind).to_lowercase(),
                listed.board.as_deref().unwrap_or("-"),
                size(e.apparent),
                size(e.allocated),
                e.key,
                listed
                    .used_by
                    .as_deref()
                    .map(|u| format!("  {u}"))
                    .unwrap_or_default()
            );
        }
        if l.entries.is_empty() {
            println!("  (empty)");
        }
    })
}

/// A size for people: bytes, kB or MB (decimal, as `cache list` always showed MB).
fn size(n: u64) -> String {
    match n {
        0..1_000 => format!("{n} B"),
        1_000..1_000_000 => format!("{:.1} kB", n as f64 / 1e3),
        _ => format!("{} MB", n / 1_000_000),
    }
}

pub fn cache_cleaned(as_json: bool, c: &Cleaned) -> Result<()> {
    either(as_json, c, view::CacheClean::from, |c| {
        for p in &c.removed {
            println!("removed {}", p.display());
        }
        for p in &c.in_use {
            println!("skipped {} (in use by another imgbuild)", p.display());
        }
        println!(
            "{} entr{} removed",
            c.removed.len(),
            if c.removed.len() == 1 { "y" } else { "ies" }
        );
    })
}

/// Warnings go to stderr in either mode (and are in the JSON document too).
pub fn checked(as_json: bool, r: &CheckReport) -> Result<()> {
    check_warnings(r);
    either(as_json, r, view::Check::from, checked_text)
}

fn check_warnings(r: &CheckReport) {
    for w in &r.warnings {
        tracing::warn!("{w}");
    }
}

fn checked_text(r: &CheckReport) {
    println!(
        "profiles OK: cluster {}, {} node(s): {}",
        r.cluster,
        r.nodes.len(),
        r.nodes.join(", ")
    );
    let manifests: Vec<String> = r
        .manifests
        .iter()
        .map(|m| format!("{} ({})", m.name, m.origin))
        .collect();
    println!("manifests: {}", manifests.join(", "));
    print!("overlays: {} built-in file(s)", r.overlays_builtin);
    if r.overlays_overridden.is_empty() {
        println!(", no overrides");
    } else {
        println!(", {} overridden:", r.overlays_overridden.len());
        for o in &r.overlays_overridden {
            println!("  {}  from {}", o.name, o.origin);
        }
    }
    if !r.added.is_empty() {
        println!("added by builds (fetched by the build or `imgbuild fetch`):");
    }
    for n in &r.added {
        for a in &n.files {
            println!(
                "  {:<8} {:<64} {} {} sha256:{}",
                n.node, a.path, a.kind, a.what, a.sha256
            );
        }
    }
}

pub fn overlay_list(as_json: bool, files: &[Sourced]) -> Result<()> {
    either(as_json, files, view::sources, |files| {
        for f in files {
            println!("{:<72} {}", f.name, f.origin);
        }
    })
}

pub fn exported(dir: &Path, files: &[PathBuf]) -> Result<()> {
    println!(
        "wrote {} overlay file(s) to {}; keep only the ones you change (the others stay built in)",
        files.len(),
        dir.display()
    );
    Ok(())
}

pub fn rendered(
    as_json: bool,
    contents: bool,
    r: &imgbuild::commands::render::Rendered,
) -> Result<()> {
    if as_json {
        return json(&sorted(&view::rendered(r))?);
    }
    rendered_files(contents, &r.files);
    // Same columns; the size and contents exist only once the build has
    // fetched the chart or image.
    for (a, e) in r.added.iter().zip(r.added_entries()) {
        println!(
            "{:<5} {:<48} {:04o} {}:{} {:>7} bytes  from {} {}{} sha256:{}",
            e.target,
            a.path,
            e.mode,
            e.uid,
            e.gid,
            "-",
            a.kind,
            a.what,
            a.uri
                .as_deref()
                .map(|u| format!(" <{u}>"))
                .unwrap_or_default(),
            a.sha256
        );
        if contents {
            println!("(added by the build)");
        }
    }
    Ok(())
}

fn rendered_files(contents: bool, files: &[RenderedFile]) {
    {
        for f in files.iter() {
            println!(
                "{:<5} {:<48} {:04o} {}:{} {:>7} bytes  from {}",
                f.target,
                f.path,
                f.mode,
                f.uid,
                f.gid,
                f.contents.len(),
                f.source.display()
            );
            if contents {
                println!("{}", String::from_utf8_lossy(&f.contents));
            }
        }
    }
}

pub fn inspection(as_json: bool, i: &Inspection) -> Result<()> {
    either(as_json, i, view::Inspect::from, |i| {
        print!("{}", inspection_text(i))
    })
}

fn inspection_text(i: &Inspection) -> String {
    let mut s = String::new();
    s.push_str(&format!(
        "{}: {} bytes, {} partition table\n",
        i.image, i.size, i.table
    ));
    s.push_str(&format!(
        "a flash sends {} bytes ({} MiB)\n",
        i.flash_bytes,
        i.flash_bytes.div_ceil(1 << 20)
    ));
    if let Some(r) = &i.root {
        s.push_str(&format!(
            "root on p{}: file system {} MiB ({} MiB used) in a {} MiB partition; the first boot grows both to {}\n",
            r.partition,
            r.fs_bytes >> 20,
            r.fs_used_bytes >> 20,
            r.partition_bytes >> 20,
            r.grows_to
        ));
    }
    for p in &i.partitions {
        s.push_str(&format!(
            "  p{:<2} start {:>12}  size {:>12}  type {:<38} {}{}\n",
            p.index,
            p.start,
            p.size,
            p.type_id,
            p.fs.kind_name(),
            p.fs.label().map(|l| format!(" {l:?}")).unwrap_or_default()
        ));
    }
    match &i.seed {
        Some(seed) => {
            s.push_str(&format!(
                "cloud-init seed on p{} in {}:\n",
                seed.partition, seed.dir
            ));
            for f in &seed.files {
                s.push_str(&format!("  {:<16} {:>8} bytes\n", f.name, f.size));
            }
            if let Some(iid) = &seed.instance_id {
                s.push_str(&format!("  instance-id: {iid}\n"));
            }
        }
        None => s.push_str("no cloud-init seed found\n"),
    }
    match &i.provenance {
        Some(p) => {
            s.push_str(&format!(
                "built by imgbuild {} for node {} ({} board) of cluster {}\n  profile digest {}\n",
                p.imgbuild, p.node, p.board, p.cluster, p.profile_digest
            ));
            if let Some(url) = &p.joined {
                s.push_str(&format!(
                    "  re-made at flash time to join the running cluster through {url} (not founding it)\n"
                ));
            }
            s.push_str(&format!("  {} file(s) baked:\n", p.files.len()));
            for f in &p.files {
                s.push_str(&format!(
                    "    {:<6} {} ({} bytes)\n",
                    f.partition, f.path, f.size
                ));
            }
        }
        None => s.push_str("stock image (not produced by imgbuild)\n"),
    }
    s
}

/// The error line a failed command ends with.
pub fn error(e: &CommandError) {
    let inner = e.inner();
    // A hint added as the outermost context goes after the error it is for.
    let top = inner.to_string();
    match top.strip_prefix("hint: ") {
        Some(hint) if inner.chain().nth(1).is_some() => {
            let cause: Vec<String> = inner.chain().skip(1).map(|c| c.to_string()).collect();
            eprintln!("error: {}\nhint: {hint}", cause.join(": "));
        }
        _ => eprintln!("error: {inner:#}"),
    }
}

pub fn kubeconfig(as_json: bool, r: &KubeconfigResult) -> Result<()> {
    if let Some(prev) = &r.previous_context {
        tracing::info!(
            "the current context was {prev}; switch back with kubectl config use-context {prev}"
        );
    }
    either(as_json, r, view::Kubeconfig::from, |r| {
        println!("{}", r.path.display())
    })
}

fn wait_text(r: &WaitReport) {
    let width = r.nodes.iter().map(|n| n.node.len()).max().unwrap_or(4);
    for n in &r.nodes {
        match &n.problem {
            None => println!("{:<width$}  {}", n.node, n.state.describe()),
            Some(p) => {
                println!("{:<width$}  {p}", n.node);
                for hint in &n.next {
                    println!("{:<width$}    try: {hint}", "");
                }
            }
        }
    }
    println!(
        "{} of {} node{} Ready ({})",
        r.ready,
        r.total,
        if r.total == 1 { "" } else { "s" },
        imgbuild::util::duration::format_duration(std::time::Duration::from_secs(r.elapsed_secs))
    );
}

/// The outcome of a wait; an error (exit 1) when a node is not up.
pub fn waited(as_json: bool, r: &WaitReport) -> Result<()> {
    either(as_json, r, view::Wait::from, wait_text)?;
    wait_verdict(r)
}

fn wait_verdict(r: &WaitReport) -> Result<()> {
    if r.all_ready() {
        return Ok(());
    }
    Err(CommandError::Failed(anyhow::anyhow!(
        "{} of {} nodes Ready after {}; the diagnosis above says what to try",
        r.ready,
        r.total,
        imgbuild::util::duration::format_duration(std::time::Duration::from_secs(r.timeout_secs))
    )))
}

/// `deploy --wait`, before the wait: the deploy lines in text mode (JSON
/// waits for the one document at the end).
pub fn deploying(as_json: bool, reports: &[Report]) -> Result<()> {
    if as_json {
        return Ok(());
    }
    delivered(false, reports)
}

/// `deploy`: its lines, or with `--wait` (the deploy lines printed already
/// in text mode) the wait's, and in JSON both reports in one document.
pub fn deployed(as_json: bool, d: &Deployed) -> Result<()> {
    let Some(r) = &d.waited else {
        return delivered(as_json, &d.delivered);
    };
    if as_json {
        json(&sorted(&view::DeployWait::new(&d.delivered, r))?)?;
    } else {
        wait_text(r);
    }
    wait_verdict(r)
}

pub fn status(as_json: bool, s: &ClusterStatus) -> Result<()> {
    either(as_json, s, view::ClusterView::from, |s| {
        println!(
            "cluster {}: API {} {}{}",
            s.cluster,
            s.api,
            s.health,
            s.api_version
                .as_deref()
                .map(|v| format!(" ({v})"))
                .unwrap_or_default()
        );
        println!(
            "{:<10} {:<5} {:<7} {:<14} {:<6} {:<9} {:<10} {:<7} {:<14} ROLES",
            "NODE",
            "BOARD",
            "SLOT",
            "FLASHED",
            "IMAGE",
            "REACHABLE",
            "REGISTERED",
            "READY",
            "VERSION"
        );
        let yn = |b: Option<bool>| match b {
            Some(true) => "yes",
            Some(false) => "no",
            None => "?",
        };
        for n in &s.nodes {
            println!(
                "{:<10} {:<5} {:<7} {:<14} {:<6} {:<9} {:<10} {:<7} {:<14} {}",
                n.node,
                n.board,
                n.slot.as_deref().unwrap_or("-"),
                n.flashed_sha256
                    .as_deref()
                    .map(|d| d.get(..12).unwrap_or(d))
                    .unwrap_or("never"),
                match n.stale {
                    Some(true) => "stale",
                    Some(false) => "same",
                    None => "?",
                },
                yn(Some(n.reachable)),
                yn(n.registered),
                n.ready.as_deref().unwrap_or("?"),
                n.version.as_deref().unwrap_or("-"),
                if n.roles.is_empty() {
                    "<none>".to_string()
                } else {
                    n.roles.join(",")
                }
            );
        }
    })
}

pub fn initialised(as_json: bool, r: &imgbuild::commands::init::InitReport) -> Result<()> {
    if as_json {
        check_warnings(&r.check);
        return json(&view::Init::from(r));
    }
    for p in &r.written {
        println!("wrote {}", p.display());
    }
    if !r.assumed.is_empty() {
        println!("assumed (change the files, or pass the flag):");
        for a in &r.assumed {
            println!("  {a}");
        }
    }
    checked(false, &r.check)?;
    println!("next: imgbuild check, then imgbuild --all (see docs/getting-started.md)");
    Ok(())
}

pub fn imported(as_json: bool, r: &imgbuild::commands::import::ImportReport) -> Result<()> {
    either(as_json, r, view::Import::from, |r| {
        for p in &r.written {
            println!("wrote {}", p.display());
        }
        println!("carried over:");
        for n in r.notes.iter().filter(|n| n.to.is_some()) {
            println!(
                "  {}: {} -> {}: {}",
                n.scope,
                n.key,
                n.to.as_deref().unwrap_or_default(),
                n.why
            );
        }
        let dropped: Vec<_> = r.notes.iter().filter(|n| n.to.is_none()).collect();
        if !dropped.is_empty() {
            println!("not carried over:");
            for n in dropped {
                println!("  {}: {}: {}", n.scope, n.key, n.why);
            }
        }
        if !r.assumed.is_empty() {
            println!("assumed (change the files, or pass the flag):");
            for a in &r.assumed {
                println!("  {a}");
            }
        }
        check_warnings(&r.check);
        checked_text(&r.check);
    })
}

/// The images' differences; [`Outcome::Differ`] when there are any.
pub fn diffed(as_json: bool, d: &imgbuild::readback::diff::ImageDiff) -> Result<Outcome> {
    use imgbuild::readback::diff::Entry;
    let show = |e: &Entry| {
        let mut s = e.kind.to_string();
        if let Some(m) = e.mode {
            s.push_str(&format!(" {m:04o}"));
        }
        if let (Some(u), Some(g)) = (e.uid, e.gid) {
            s.push_str(&format!(" {u}:{g}"));
        }
        if let Some(n) = e.size {
            s.push_str(&format!(" {n} bytes"));
        }
        if let Some(h) = &e.sha256 {
            s.push_str(&format!(" sha256:{}", &h[..16]));
        }
        s
    };
    either(as_json, d, view::Diff::from, |d| {
        if d.table_a != d.table_b {
            println!("partition table: {} -> {}", d.table_a, d.table_b);
        }
        for (a, b) in &d.partitions {
            let p = |x: &Option<imgbuild::readback::diff::PartSummary>| match x {
                Some(p) => format!(
                    "start {} size {} type {} {} {}",
                    p.start,
                    p.size,
                    p.type_id,
                    p.fs.kind_name(),
                    p.fs.label().unwrap_or("")
                ),
                None => "absent".into(),
            };
            let i = a.as_ref().or(b.as_ref()).map(|p| p.index).unwrap_or(0);
            println!("p{i}: {} -> {}", p(a), p(b));
        }
        if d.partitions.is_empty() && d.table_a == d.table_b {
            println!("partition table: same ({})", d.table_a);
        }
        for f in &d.file_systems {
            let count = |c: &str| f.changes.iter().filter(|x| x.change == c).count();
            println!(
                "p{} ({}): {} added, {} removed, {} changed",
                f.partition,
                f.fs,
                count("added"),
                count("removed"),
                count("changed")
            );
            for c in &f.changes {
                let sign = match c.change {
                    "added" => "+",
                    "removed" => "-",
                    _ => "~",
                };
                let detail = match (c.secret, &c.before, &c.after) {
                    (true, _, _) => "(secret: content not shown)".to_string(),
                    (false, None, Some(e)) | (false, Some(e), None) => show(e),
                    (false, Some(x), Some(y)) => format!("{} -> {}", show(x), show(y)),
                    (false, None, None) => String::new(),
                };
                println!("  {sign} {}  {detail}", c.path);
            }
        }
        println!(
            "{}",
            if d.equal {
                "images are equal"
            } else {
                "images differ"
            }
        );
    })?;
    Ok(if d.equal {
        Outcome::Success
    } else {
        Outcome::Differ
    })
}
