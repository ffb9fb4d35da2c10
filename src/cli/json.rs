//! The `--json` documents: view types the CLI owns, converted from what the
//! commands return. Library types are never serialised directly, so their
//! fields can change without changing what scripts read; every field here
//! is documented in docs/json.md and keeps its name and type.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use imgbuild::artifact::Format;
use imgbuild::artifact::statement::ResourceDescriptor;
use imgbuild::bake::shrink::{Method, ShrinkReport};
use imgbuild::commands::build::BakeReport;
use imgbuild::commands::cache::{CacheListing, Cleaned, Listed};
use imgbuild::commands::check::CheckReport;
use imgbuild::commands::fetch::Fetched;
use imgbuild::commands::import::ImportReport;
use imgbuild::commands::init::InitReport;
use imgbuild::commands::kubeconfig::KubeconfigResult;
use imgbuild::commands::overlays::Sourced;
use imgbuild::commands::render::Rendered;
use imgbuild::commands::seal::SealReport;
use imgbuild::commands::status::{ClusterStatus, NodeRow};
use imgbuild::commands::verify::VerifyReport;
use imgbuild::commands::wait::{NodeOutcome, WaitReport};
use imgbuild::config::ansible::Note;
use imgbuild::config::layered::Origin;
use imgbuild::deliver::turing_pi::Status;
use imgbuild::deliver::{Outcome, Report};
use imgbuild::fs::FsProbe;
use imgbuild::io::sparse::CopyMethod;
use imgbuild::kube::wait::NodeState;
use imgbuild::plan::Added;
use imgbuild::plan::{FileRecord, Provenance, RenderedFile};
use imgbuild::readback::diff::{Entry as DiffEntry, FileChange, FsDiff, ImageDiff};
use imgbuild::readback::inspect::{Inspection, PartitionInfo, RootGrowth, SeedInfo};
use imgbuild::source::cache::EntryKind;

/// `build --json`: one per output.
#[derive(Serialize)]
pub struct Bake<'a> {
    output: &'a Path,
    sha256: Option<&'a str>,
    compression: &'static str,
    node: &'a str,
    board: &'a str,
    instance_id: &'a str,
    copy: &'static str,
    unsealed: bool,
    flash_bytes: u64,
    shrink: Option<Shrink<'a>>,
    files: Vec<File<'a>>,
}

impl<'a> From<&'a BakeReport> for Bake<'a> {
    fn from(r: &'a BakeReport) -> Self {
        Bake {
            output: &r.output,
            sha256: r.sha256.as_deref(),
            compression: compression(r.compression),
            node: &r.node,
            board: &r.board,
            instance_id: &r.instance_id,
            copy: match r.copy {
                CopyMethod::Reflink => "reflink",
                CopyMethod::Sparse => "sparse",
            },
            unsealed: r.unsealed,
            flash_bytes: r.flash_bytes,
            shrink: r.shrink.as_ref().map(Shrink::from),
            files: files(&r.files),
        }
    }
}

pub fn bakes(reports: &[BakeReport]) -> Vec<Bake<'_>> {
    reports.iter().map(Bake::from).collect()
}

fn compression(f: Format) -> &'static str {
    match f {
        Format::Raw => "none",
        Format::Xz => "xz",
        Format::Zstd => "zstd",
        Format::Iso => "iso",
    }
}

#[derive(Serialize)]
pub struct Shrink<'a> {
    shrunk: bool,
    reason: Option<&'a str>,
    stock_bytes: u64,
    image_bytes: u64,
    root_stock_bytes: u64,
    root_bytes: u64,
    root_used_bytes: u64,
    headroom_bytes: u64,
    method: Option<&'static str>,
}

impl<'a> From<&'a ShrinkReport> for Shrink<'a> {
    fn from(s: &'a ShrinkReport) -> Self {
        Shrink {
            shrunk: s.shrunk,
            reason: s.reason.as_deref(),
            stock_bytes: s.stock_bytes,
            image_bytes: s.image_bytes,
            root_stock_bytes: s.root_stock_bytes,
            root_bytes: s.root_bytes,
            root_used_bytes: s.root_used_bytes,
            headroom_bytes: s.headroom_bytes,
            method: s.method.map(|m| match m {
                Method::InPlace => "in-place",
                Method::Copy => "copy",
            }),
        }
    }
}

/// A file written into an image (build, seal, inspect's provenance).
#[derive(Serialize)]
pub struct File<'a> {
    partition: &'a str,
    path: &'a str,
    mode: u32,
    size: u64,
}

fn files(records: &[FileRecord]) -> Vec<File<'_>> {
    records
        .iter()
        .map(|f| File {
            partition: &f.partition,
            path: &f.path,
            mode: f.mode,
            size: f.size,
        })
        .collect()
}

/// `seal --json`.
#[derive(Serialize)]
pub struct Seal<'a> {
    input: &'a Path,
    output: &'a Path,
    sha256: &'a str,
    node: &'a str,
    board: &'a str,
    instance_id: &'a str,
    files: Vec<File<'a>>,
}

impl<'a> From<&'a SealReport> for Seal<'a> {
    fn from(r: &'a SealReport) -> Self {
        Seal {
            input: &r.input,
            output: &r.output,
            sha256: &r.sha256,
            node: &r.node,
            board: &r.board,
            instance_id: &r.instance_id,
            files: files(&r.files),
        }
    }
}

/// `verify --json`.
#[derive(Serialize)]
pub struct Verify<'a> {
    artifact: &'a Path,
    sha256: &'a str,
    sums_checked: bool,
    statement_checked: bool,
    /// The statement's external parameters, as recorded (JSON values).
    parameters: &'a BTreeMap<String, serde_json::Value>,
    built_from: Vec<Resource<'a>>,
    builder: &'a BTreeMap<String, String>,
}

impl<'a> From<&'a VerifyReport> for Verify<'a> {
    fn from(r: &'a VerifyReport) -> Self {
        Verify {
            artifact: &r.artifact,
            sha256: &r.sha256,
            sums_checked: r.sums_checked,
            statement_checked: r.statement_checked,
            parameters: &r.parameters,
            built_from: r.built_from.iter().map(Resource::from).collect(),
            builder: &r.builder,
        }
    }
}

/// An in-toto resource descriptor, as the statement has it.
#[derive(Serialize)]
pub struct Resource<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    uri: Option<&'a str>,
    digest: &'a BTreeMap<String, String>,
}

impl<'a> From<&'a ResourceDescriptor> for Resource<'a> {
    fn from(d: &'a ResourceDescriptor) -> Self {
        Resource {
            name: d.name.as_deref(),
            uri: d.uri.as_deref(),
            digest: &d.digest,
        }
    }
}

/// `deploy --json`, `usb --json`: one per node.
#[derive(Serialize)]
pub struct Delivered<'a> {
    node: &'a str,
    destination: &'a str,
    image: &'a Path,
    sha256: String,
    result: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
}

impl<'a> From<&'a Report> for Delivered<'a> {
    fn from(r: &'a Report) -> Self {
        Delivered {
            node: &r.node,
            destination: &r.destination,
            image: &r.image,
            sha256: r.sha256.to_string(),
            result: match r.result {
                Outcome::Flashed => "flashed",
                Outcome::Skipped => "skipped",
                Outcome::Failed => "failed",
            },
            error: r.error.as_deref(),
        }
    }
}

pub fn delivered(reports: &[Report]) -> Vec<Delivered<'_>> {
    reports.iter().map(Delivered::from).collect()
}

/// `bmc status --json`: one per BMC.
#[derive(Serialize)]
pub struct Bmc<'a> {
    host: &'a str,
    fingerprint: Option<&'a str>,
    /// The BMC's `about` answer, as it sent it.
    about: &'a BTreeMap<String, serde_json::Value>,
    /// Slot number (as a string key) to powered on.
    power: &'a BTreeMap<u8, bool>,
    /// The BMC's `info` answer, as it sent it.
    info: &'a serde_json::Value,
}

impl<'a> From<&'a Status> for Bmc<'a> {
    fn from(s: &'a Status) -> Self {
        Bmc {
            host: &s.host,
            fingerprint: s.fingerprint.as_deref(),
            about: &s.about,
            power: &s.power,
            info: &s.info,
        }
    }
}

pub fn bmcs(all: &[Status]) -> Vec<Bmc<'_>> {
    all.iter().map(Bmc::from).collect()
}

/// `cache list --json`.
#[derive(Serialize)]
pub struct CacheList<'a> {
    root: &'a Path,
    entries: Vec<CacheEntry<'a>>,
}

#[derive(Serialize)]
pub struct CacheEntry<'a> {
    kind: &'static str,
    key: String,
    path: &'a Path,
    apparent: u64,
    allocated: u64,
    board: Option<&'a str>,
    used_by: Option<&'a str>,
}

impl<'a> From<&'a CacheListing> for CacheList<'a> {
    fn from(l: &'a CacheListing) -> Self {
        CacheList {
            root: &l.root,
            entries: l.entries.iter().map(CacheEntry::from).collect(),
        }
    }
}

impl<'a> From<&'a Listed> for CacheEntry<'a> {
    fn from(l: &'a Listed) -> Self {
        let e = &l.entry;
        CacheEntry {
            kind: match e.kind {
                EntryKind::Image => "image",
                EntryKind::Asset => "asset",
                EntryKind::Download => "download",
                EntryKind::Partial => "partial",
                EntryKind::Incoming => "incoming",
                EntryKind::Oci => "oci",
            },
            key: e.key.to_string(),
            path: &e.path,
            apparent: e.apparent,
            allocated: e.allocated,
            board: l.board.as_deref(),
            used_by: l.used_by.as_deref(),
        }
    }
}

/// `cache clean --json`.
#[derive(Serialize)]
pub struct CacheClean<'a> {
    removed: &'a [std::path::PathBuf],
    in_use: &'a [std::path::PathBuf],
}

impl<'a> From<&'a Cleaned> for CacheClean<'a> {
    fn from(c: &'a Cleaned) -> Self {
        CacheClean {
            removed: &c.removed,
            in_use: &c.in_use,
        }
    }
}

/// `fetch --json`.
#[derive(Serialize)]
pub struct Fetch<'a> {
    boards: Vec<FetchedBoard<'a>>,
    extras: Vec<FetchedExtra<'a>>,
}

#[derive(Serialize)]
pub struct FetchedBoard<'a> {
    board: &'a str,
    path: &'a Path,
}

#[derive(Serialize)]
pub struct FetchedExtra<'a> {
    what: &'a str,
    path: &'a Path,
}

impl<'a> From<&'a Fetched> for Fetch<'a> {
    fn from(f: &'a Fetched) -> Self {
        Fetch {
            boards: f
                .boards
                .iter()
                .map(|(board, path)| FetchedBoard { board, path })
                .collect(),
            extras: f
                .extras
                .iter()
                .map(|(what, path)| FetchedExtra { what, path })
                .collect(),
        }
    }
}

/// `kubeconfig --json`.
#[derive(Serialize)]
pub struct Kubeconfig<'a> {
    path: &'a Path,
    minted: bool,
    previous_context: Option<&'a str>,
}

impl<'a> From<&'a KubeconfigResult> for Kubeconfig<'a> {
    fn from(r: &'a KubeconfigResult) -> Self {
        Kubeconfig {
            path: &r.path,
            minted: r.minted,
            previous_context: r.previous_context.as_deref(),
        }
    }
}

/// A file and where it comes from (`overlays list --json`, `check`).
#[derive(Serialize)]
pub struct Source<'a> {
    name: &'a str,
    origin: OriginView<'a>,
}

/// `"built_in"`, or `{"dir": PATH}` for an override directory.
#[derive(Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OriginView<'a> {
    BuiltIn,
    Dir(&'a Path),
}

impl<'a> From<&'a Origin> for OriginView<'a> {
    fn from(o: &'a Origin) -> Self {
        match o {
            Origin::BuiltIn => OriginView::BuiltIn,
            Origin::Dir(d) => OriginView::Dir(d),
        }
    }
}

impl<'a> From<&'a Sourced> for Source<'a> {
    fn from(s: &'a Sourced) -> Self {
        Source {
            name: &s.name,
            origin: (&s.origin).into(),
        }
    }
}

pub fn sources(all: &[Sourced]) -> Vec<Source<'_>> {
    all.iter().map(Source::from).collect()
}

/// `check --json`, and the `check` member of `init` and `import`.
#[derive(Serialize)]
pub struct Check<'a> {
    cluster: &'a str,
    nodes: &'a [String],
    boards: &'a [String],
    manifests: Vec<Source<'a>>,
    overlays_builtin: usize,
    overlays_overridden: Vec<Source<'a>>,
    warnings: &'a [String],
    added: Vec<NodeAdded<'a>>,
}

#[derive(Serialize)]
pub struct NodeAdded<'a> {
    node: &'a str,
    files: Vec<AddedFile<'a>>,
}

/// A file a build adds beyond the rendered ones (`check`, `render`).
#[derive(Serialize)]
pub struct AddedFile<'a> {
    path: &'a str,
    kind: &'a str,
    what: &'a str,
    uri: Option<&'a str>,
    sha256: &'a str,
}

impl<'a> From<&'a Added> for AddedFile<'a> {
    fn from(a: &'a Added) -> Self {
        AddedFile {
            path: &a.path,
            kind: a.kind,
            what: &a.what,
            uri: a.uri.as_deref(),
            sha256: &a.sha256,
        }
    }
}

impl<'a> From<&'a CheckReport> for Check<'a> {
    fn from(r: &'a CheckReport) -> Self {
        Check {
            cluster: &r.cluster,
            nodes: &r.nodes,
            boards: &r.boards,
            manifests: sources(&r.manifests),
            overlays_builtin: r.overlays_builtin,
            overlays_overridden: sources(&r.overlays_overridden),
            warnings: &r.warnings,
            added: r
                .added
                .iter()
                .map(|n| NodeAdded {
                    node: &n.node,
                    files: n.files.iter().map(AddedFile::from).collect(),
                })
                .collect(),
        }
    }
}

/// `init --json`.
#[derive(Serialize)]
pub struct Init<'a> {
    written: &'a [std::path::PathBuf],
    assumed: &'a [String],
    check: Check<'a>,
}

impl<'a> From<&'a InitReport> for Init<'a> {
    fn from(r: &'a InitReport) -> Self {
        Init {
            written: &r.written,
            assumed: &r.assumed,
            check: (&r.check).into(),
        }
    }
}

/// `import ansible --json`.
#[derive(Serialize)]
pub struct Import<'a> {
    written: &'a [std::path::PathBuf],
    notes: Vec<ImportNote<'a>>,
    assumed: &'a [String],
    check: Check<'a>,
}

#[derive(Serialize)]
pub struct ImportNote<'a> {
    scope: &'a str,
    key: &'a str,
    to: Option<&'a str>,
    why: &'a str,
}

impl<'a> From<&'a Note> for ImportNote<'a> {
    fn from(n: &'a Note) -> Self {
        ImportNote {
            scope: &n.scope,
            key: &n.key,
            to: n.to.as_deref(),
            why: &n.why,
        }
    }
}

impl<'a> From<&'a ImportReport> for Import<'a> {
    fn from(r: &'a ImportReport) -> Self {
        Import {
            written: &r.written,
            notes: r.notes.iter().map(ImportNote::from).collect(),
            assumed: &r.assumed,
            check: (&r.check).into(),
        }
    }
}

/// `render --json`: one array, the rendered files then the build's additions.
#[derive(Serialize)]
#[serde(untagged)]
pub enum RenderEntry<'a> {
    File(RenderFile<'a>),
    Added(RenderAdded<'a>),
}

#[derive(Serialize)]
pub struct RenderFile<'a> {
    target: &'a str,
    path: &'a str,
    mode: u32,
    uid: u32,
    gid: u32,
    symlink: Option<&'a str>,
    secret: bool,
    source: &'a Path,
    origin: OriginView<'a>,
}

impl<'a> From<&'a RenderedFile> for RenderFile<'a> {
    fn from(f: &'a RenderedFile) -> Self {
        RenderFile {
            target: f.target.as_str(),
            path: &f.path,
            mode: f.mode,
            uid: f.uid,
            gid: f.gid,
            symlink: f.symlink.as_deref(),
            secret: f.secret,
            source: &f.source,
            origin: (&f.origin).into(),
        }
    }
}

#[derive(Serialize)]
pub struct RenderAdded<'a> {
    target: &'static str,
    path: &'a str,
    mode: u32,
    uid: u32,
    gid: u32,
    added_by_build: AddedFile<'a>,
}

pub fn rendered(r: &Rendered) -> Vec<RenderEntry<'_>> {
    let files = r.files.iter().map(|f| RenderEntry::File(f.into()));
    let added = r.added_entries().into_iter().map(|e| {
        RenderEntry::Added(RenderAdded {
            target: e.target,
            path: e.path,
            mode: e.mode,
            uid: e.uid,
            gid: e.gid,
            added_by_build: e.added_by_build.into(),
        })
    });
    files.chain(added).collect()
}

/// `inspect --json`.
#[derive(Serialize)]
pub struct Inspect<'a> {
    image: &'a str,
    size: u64,
    table: &'a str,
    partitions: Vec<Partition<'a>>,
    seed: Option<Seed<'a>>,
    provenance: Option<ProvenanceView<'a>>,
    flash_bytes: u64,
    root: Option<Root>,
}

impl<'a> From<&'a Inspection> for Inspect<'a> {
    fn from(i: &'a Inspection) -> Self {
        Inspect {
            image: &i.image,
            size: i.size,
            table: &i.table,
            partitions: i.partitions.iter().map(Partition::from).collect(),
            seed: i.seed.as_ref().map(Seed::from),
            provenance: i.provenance.as_ref().map(ProvenanceView::from),
            flash_bytes: i.flash_bytes,
            root: i.root.as_ref().map(Root::from),
        }
    }
}

/// A partition and its file system (`inspect`, `diff`).
#[derive(Serialize)]
pub struct Partition<'a> {
    index: u32,
    start: u64,
    size: u64,
    type_id: &'a str,
    fs: Fs<'a>,
}

impl<'a> From<&'a PartitionInfo> for Partition<'a> {
    fn from(p: &'a PartitionInfo) -> Self {
        Partition {
            index: p.index,
            start: p.start,
            size: p.size,
            type_id: &p.type_id,
            fs: (&p.fs).into(),
        }
    }
}

/// `{"kind": "vfat"|"ext4", "label": ...}` or `{"kind": "unknown"}`.
#[derive(Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Fs<'a> {
    Vfat { label: &'a str },
    Ext4 { label: &'a str },
    Unknown,
}

impl<'a> From<&'a FsProbe> for Fs<'a> {
    fn from(f: &'a FsProbe) -> Self {
        match f {
            FsProbe::Vfat { label } => Fs::Vfat { label },
            FsProbe::Ext4 { label } => Fs::Ext4 { label },
            FsProbe::Unknown => Fs::Unknown,
        }
    }
}

#[derive(Serialize)]
pub struct Seed<'a> {
    partition: u32,
    dir: &'a str,
    files: Vec<SeedFile<'a>>,
    instance_id: Option<&'a str>,
}

#[derive(Serialize)]
pub struct SeedFile<'a> {
    name: &'a str,
    size: u64,
}

impl<'a> From<&'a SeedInfo> for Seed<'a> {
    fn from(s: &'a SeedInfo) -> Self {
        Seed {
            partition: s.partition,
            dir: &s.dir,
            files: s
                .files
                .iter()
                .map(|f| SeedFile {
                    name: &f.name,
                    size: f.size,
                })
                .collect(),
            instance_id: s.instance_id.as_deref(),
        }
    }
}

/// The provenance record found in an image, field for field.
#[derive(Serialize)]
pub struct ProvenanceView<'a> {
    base_sha256: Option<&'a str>,
    board: &'a str,
    build_time: u64,
    cluster: &'a str,
    files: Vec<File<'a>>,
    imgbuild: &'a str,
    instance_id: &'a str,
    node: &'a str,
    profile_digest: &'a str,
    unsealed: bool,
    /// A server's image re-made at flash time to join the running cluster
    /// through this API URL (absent otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    joined: Option<&'a str>,
}

impl<'a> From<&'a Provenance> for ProvenanceView<'a> {
    fn from(p: &'a Provenance) -> Self {
        ProvenanceView {
            base_sha256: p.base_sha256.as_deref(),
            board: &p.board,
            build_time: p.build_time,
            cluster: &p.cluster,
            files: files(&p.files),
            imgbuild: &p.imgbuild,
            instance_id: &p.instance_id,
            node: &p.node,
            profile_digest: &p.profile_digest,
            unsealed: p.unsealed,
            joined: p.joined.as_deref(),
        }
    }
}

#[derive(Serialize)]
pub struct Root {
    partition: u32,
    partition_bytes: u64,
    fs_bytes: u64,
    fs_used_bytes: u64,
    grows_to: &'static str,
}

impl From<&RootGrowth> for Root {
    fn from(r: &RootGrowth) -> Self {
        Root {
            partition: r.partition,
            partition_bytes: r.partition_bytes,
            fs_bytes: r.fs_bytes,
            fs_used_bytes: r.fs_used_bytes,
            grows_to: r.grows_to,
        }
    }
}

/// `diff --json`.
#[derive(Serialize)]
pub struct Diff<'a> {
    a: &'a str,
    b: &'a str,
    table_a: &'a str,
    table_b: &'a str,
    /// Pairs `[a, b]`; `null` where the partition is absent.
    partitions: Vec<(Option<Partition<'a>>, Option<Partition<'a>>)>,
    file_systems: Vec<DiffFs<'a>>,
    equal: bool,
}

impl<'a> From<&'a ImageDiff> for Diff<'a> {
    fn from(d: &'a ImageDiff) -> Self {
        Diff {
            a: &d.a,
            b: &d.b,
            table_a: &d.table_a,
            table_b: &d.table_b,
            partitions: d
                .partitions
                .iter()
                .map(|(a, b)| (a.as_ref().map(Into::into), b.as_ref().map(Into::into)))
                .collect(),
            file_systems: d.file_systems.iter().map(DiffFs::from).collect(),
            equal: d.equal,
        }
    }
}

#[derive(Serialize)]
pub struct DiffFs<'a> {
    partition: u32,
    fs: &'a str,
    changes: Vec<Change<'a>>,
}

impl<'a> From<&'a FsDiff> for DiffFs<'a> {
    fn from(f: &'a FsDiff) -> Self {
        DiffFs {
            partition: f.partition,
            fs: &f.fs,
            changes: f.changes.iter().map(Change::from).collect(),
        }
    }
}

#[derive(Serialize)]
pub struct Change<'a> {
    path: &'a str,
    change: &'static str,
    secret: bool,
    before: Option<DiffFile<'a>>,
    after: Option<DiffFile<'a>>,
}

impl<'a> From<&'a FileChange> for Change<'a> {
    fn from(c: &'a FileChange) -> Self {
        Change {
            path: &c.path,
            change: c.change,
            secret: c.secret,
            before: c.before.as_ref().map(DiffFile::from),
            after: c.after.as_ref().map(DiffFile::from),
        }
    }
}

#[derive(Serialize)]
pub struct DiffFile<'a> {
    kind: &'static str,
    mode: Option<u32>,
    uid: Option<u32>,
    gid: Option<u32>,
    size: Option<u64>,
    sha256: Option<&'a str>,
}

impl<'a> From<&'a DiffEntry> for DiffFile<'a> {
    fn from(e: &'a DiffEntry) -> Self {
        DiffFile {
            kind: e.kind,
            mode: e.mode,
            uid: e.uid,
            gid: e.gid,
            size: e.size,
            sha256: e.sha256.as_deref(),
        }
    }
}

/// `wait --json`, and the `wait` member of `deploy --wait --json`.
#[derive(Serialize)]
pub struct Wait<'a> {
    api: &'a str,
    ready: usize,
    total: usize,
    elapsed_secs: u64,
    timeout_secs: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    api_error: Option<&'a str>,
    nodes: Vec<WaitNode<'a>>,
}

impl<'a> From<&'a WaitReport> for Wait<'a> {
    fn from(r: &'a WaitReport) -> Self {
        Wait {
            api: &r.api,
            ready: r.ready,
            total: r.total,
            elapsed_secs: r.elapsed_secs,
            timeout_secs: r.timeout_secs,
            api_error: r.api_error.as_deref(),
            nodes: r.nodes.iter().map(WaitNode::from).collect(),
        }
    }
}

#[derive(Serialize)]
pub struct WaitNode<'a> {
    node: &'a str,
    kube_name: &'a str,
    #[serde(flatten)]
    state: State<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    problem: Option<&'a str>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    next: &'a [String],
}

impl<'a> From<&'a NodeOutcome> for WaitNode<'a> {
    fn from(n: &'a NodeOutcome) -> Self {
        WaitNode {
            node: &n.node,
            kube_name: &n.kube_name,
            state: (&n.state).into(),
            problem: n.problem.as_deref(),
            next: &n.next,
        }
    }
}

/// A node's state: `"state"` names it, the other members belong to it.
#[derive(Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum State<'a> {
    Unknown,
    NotRegistered,
    NotReady {
        status: &'a str,
        reason: &'a str,
        message: &'a str,
        before_flash: bool,
    },
    Stale {
        detail: &'a str,
    },
    Ready {
        version: &'a str,
        after_flash: bool,
    },
}

impl<'a> From<&'a NodeState> for State<'a> {
    fn from(s: &'a NodeState) -> Self {
        match s {
            NodeState::Unknown => State::Unknown,
            NodeState::NotRegistered => State::NotRegistered,
            NodeState::NotReady {
                status,
                reason,
                message,
                before_flash,
            } => State::NotReady {
                status,
                reason,
                message,
                before_flash: *before_flash,
            },
            NodeState::Stale { detail } => State::Stale { detail },
            NodeState::Ready {
                version,
                after_flash,
            } => State::Ready {
                version,
                after_flash: *after_flash,
            },
        }
    }
}

/// `deploy --wait --json`.
#[derive(Serialize)]
pub struct DeployWait<'a> {
    deploy: Vec<Delivered<'a>>,
    wait: Wait<'a>,
}

impl<'a> DeployWait<'a> {
    pub fn new(reports: &'a [Report], waited: &'a WaitReport) -> Self {
        DeployWait {
            deploy: delivered(reports),
            wait: waited.into(),
        }
    }
}

/// `status --json`.
#[derive(Serialize)]
pub struct ClusterView<'a> {
    cluster: &'a str,
    api: &'a str,
    health: &'a str,
    api_version: Option<&'a str>,
    nodes: Vec<Row<'a>>,
}

#[derive(Serialize)]
pub struct Row<'a> {
    node: &'a str,
    board: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    slot: Option<&'a str>,
    flashed_sha256: Option<&'a str>,
    flashed_at: Option<u64>,
    stale: Option<bool>,
    reachable: bool,
    registered: Option<bool>,
    ready: Option<&'a str>,
    version: Option<&'a str>,
    roles: &'a [String],
}

impl<'a> From<&'a NodeRow> for Row<'a> {
    fn from(n: &'a NodeRow) -> Self {
        Row {
            node: &n.node,
            board: &n.board,
            slot: n.slot.as_deref(),
            flashed_sha256: n.flashed_sha256.as_deref(),
            flashed_at: n.flashed_at,
            stale: n.stale,
            reachable: n.reachable,
            registered: n.registered,
            ready: n.ready.as_deref(),
            version: n.version.as_deref(),
            roles: &n.roles,
        }
    }
}

impl<'a> From<&'a ClusterStatus> for ClusterView<'a> {
    fn from(s: &'a ClusterStatus) -> Self {
        ClusterView {
            cluster: &s.cluster,
            api: &s.api,
            health: &s.health,
            api_version: s.api_version.as_deref(),
            nodes: s.nodes.iter().map(Row::from).collect(),
        }
    }
}
