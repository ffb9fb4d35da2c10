//! Firmware manifests: what a board's stock image is and where its parts are.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::Problem;
use super::layered::{self, DirFile, LayeredFile, Origin};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Board name, as used in profiles and target names; must equal the file stem.
    pub board: String,
    pub description: String,
    /// Debian architecture of the image.
    pub arch: Arch,
    /// Whether this board is a compute module that sits in a Turing Pi slot.
    #[serde(default)]
    pub turing_pi_module: bool,
    /// What /etc/os-release of the stock image says.
    pub os: OsRelease,
    pub source: Source,
    /// The vendor installer ISO a bare-metal `<node>.<board>.iso` is
    /// remastered from (x86 NUCs: Ubuntu's live-server ISO).
    #[serde(default)]
    pub installer: Option<InstallerSource>,
    pub partition_table: TableKind,
    /// Partitions by role (`seed`, `boot`, `root`, ...); overlays target roles.
    pub partitions: BTreeMap<String, PartitionSpec>,
    /// Where the NoCloud seed files go.
    pub seed: Placement,
    /// The kernel command line file, when k3s needs arguments appended.
    #[serde(default)]
    pub kernel_cmdline: Option<KernelCmdline>,
    /// Where this manifest comes from (built in, or an override directory).
    #[serde(skip)]
    pub origin: Origin,
    /// Whether the root partition is the last one on the disk, so a baked
    /// image can end right after a shrunk root (checked against the table).
    #[serde(default)]
    pub root_is_last: bool,
    /// Shrinking defaults for this board's images.
    #[serde(default)]
    pub shrink: Option<ShrinkDefaults>,
    /// What the stock image makes of the board's wired Ethernet, so that a
    /// profile's `network.match` that can never apply is refused.
    #[serde(default)]
    pub ethernet: Option<EthernetFacts>,
}

/// The wired interfaces of a board as its stock image sees them. Each list
/// is optional; an empty one means "not known", so anything is accepted.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EthernetFacts {
    /// Kernel drivers of the wired interfaces (netplan `match.driver`).
    #[serde(default)]
    pub drivers: Vec<String>,
    /// Names (fnmatch patterns) the image gives them (netplan `match.name`).
    #[serde(default)]
    pub names: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ShrinkDefaults {
    /// Free space (MiB) left in the root for the first boot before it grows.
    pub headroom_mib: Option<u32>,
}

/// A Debian architecture name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Arch {
    Arm64,
    Amd64,
    Armhf,
}

impl Arch {
    pub fn as_str(self) -> &'static str {
        match self {
            Arch::Arm64 => "arm64",
            Arch::Amd64 => "amd64",
            Arch::Armhf => "armhf",
        }
    }

    /// The architecture an ELF `e_machine` value denotes, if one of ours.
    pub fn from_elf_machine(machine: u16) -> Option<Arch> {
        match machine {
            183 => Some(Arch::Arm64),
            62 => Some(Arch::Amd64),
            40 => Some(Arch::Armhf),
            _ => None,
        }
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// The kind of partition table a stock image has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TableKind {
    Gpt,
    Mbr,
}

impl std::fmt::Display for TableKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TableKind::Gpt => "GPT",
            TableKind::Mbr => "MBR (DOS)",
        })
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OsRelease {
    pub id: String,
    pub version_id: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    pub url: String,
    /// sha256 of the file at `url`.
    #[serde(default)]
    pub sha256: Option<String>,
    /// A checksum file (`SHA256SUMS` or `<file>.sha256`) to use when no digest is pinned.
    #[serde(default)]
    pub checksums_url: Option<String>,
    /// The most the unpacked image may be (default 64 GiB): a download that
    /// unpacks to more is refused, not written until the disk is full.
    #[serde(default)]
    pub max_size: Option<ByteSize>,
}

/// A file kept as downloaded (not unpacked), pinned by its sha256.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct InstallerSource {
    pub url: String,
    pub sha256: String,
}

/// A size in bytes, written as a number of bytes or with a binary unit
/// (`16GiB`, `512 MiB`, `8G`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct ByteSize(pub u64);

impl std::str::FromStr for ByteSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bad =
            || format!("{s:?} is not a size: expected e.g. 8GiB, 512MiB or a number of bytes");
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num.parse().map_err(|_| bad())?;
        let shift = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 0,
            "k" | "kib" => 10,
            "m" | "mib" => 20,
            "g" | "gib" => 30,
            "t" | "tib" => 40,
            _ => return Err(bad()),
        };
        let bytes = n.checked_mul(1 << shift).ok_or_else(bad)?;
        if bytes == 0 {
            return Err(format!("{s:?}: a size must be more than zero"));
        }
        Ok(ByteSize(bytes))
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = ByteSize;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a size such as 8GiB, 512MiB or a number of bytes")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ByteSize, E> {
                format!("{v}").parse().map_err(E::custom)
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ByteSize, E> {
                format!("{v}").parse().map_err(E::custom)
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ByteSize, E> {
                v.parse().map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FsKind {
    Vfat,
    Ext4,
}

impl FsKind {
    pub fn name(self) -> &'static str {
        match self {
            FsKind::Vfat => "vfat",
            FsKind::Ext4 => "ext4",
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionSpec {
    /// 1-based partition number.
    pub index: u32,
    pub fs: FsKind,
    /// File-system label the stock image carries (checked, case-insensitively for vfat).
    pub label: String,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Placement {
    /// A role from `partitions`.
    pub partition: String,
    /// Directory inside that partition.
    pub dir: String,
}

impl Placement {
    /// The path of `file` (`/meta-data`, ...) inside the seed's partition.
    pub fn path_of(&self, file: &str) -> String {
        format!("{}{file}", self.dir.trim_end_matches('/'))
    }
}

/// Every board's manifest, by board name.
pub type Manifests = BTreeMap<String, Manifest>;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KernelCmdline {
    pub partition: String,
    pub path: String,
    /// Arguments to append when absent.
    pub append: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("{} problem(s) in the firmware manifests ({}):\n{}", .problems.len(), .source_desc,
    .problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
pub struct ManifestErrors {
    /// Built-in, an override directory, or both.
    pub source_desc: String,
    pub problems: Vec<Problem>,
}

/// Loads `<dir>/*.yaml`, one manifest per board, and nothing built in.
pub fn load_all(dir: &Path) -> Result<Manifests, ManifestErrors> {
    load_layered(Some(dir), false)
}

/// The built-in manifests (unless `builtin` is false) with `<dir>/*.yaml`
/// laid over them: a file of the same name replaces a built-in board, other
/// files add boards.
pub fn load_layered(dir: Option<&Path>, builtin: bool) -> Result<Manifests, ManifestErrors> {
    let source_desc = match (dir, builtin) {
        (Some(d), true) => format!("built-in, overridden by {}", d.display()),
        (Some(d), false) => d.display().to_string(),
        (None, _) => "built-in".to_string(),
    };
    let err = |problems| ManifestErrors {
        source_desc: source_desc.clone(),
        problems,
    };
    let listed = match dir {
        Some(d) => Some((d, list_yaml(d).map_err(|p| err(vec![p]))?)),
        None => None,
    };
    let files = layered::layer(layered::builtin::MANIFESTS, builtin, listed, |rel| {
        rel.to_string()
    })
    .map_err(|e| {
        err(vec![Problem::file(
            &e.path,
            format!("cannot read: {}", e.source),
        )])
    })?;
    let mut problems = Vec::new();
    let mut out = BTreeMap::new();
    for f in files.values() {
        if !f.rel.ends_with(".yaml") && !f.rel.ends_with(".yml") {
            continue;
        }
        match load_one(f) {
            Ok(m) => {
                out.insert(m.board.clone(), m);
            }
            Err(mut p) => problems.append(&mut p),
        }
    }
    if out.is_empty() && problems.is_empty() {
        problems.push(Problem::file(
            dir.unwrap_or(Path::new("<built-in>")),
            "no firmware manifests (*.yaml) found".into(),
        ));
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(err(problems))
    }
}

/// The `*.yaml` files of a manifest directory (not recursive).
fn list_yaml(dir: &Path) -> Result<Vec<DirFile>, Problem> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| Problem::file(dir, format!("cannot read the manifest directory: {e}")))?;
    let mut files: Vec<DirFile> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
        .filter_map(|p| {
            let rel = p.file_name()?.to_str()?.to_string();
            // Same rules as for profiles: inside the directory, a regular
            // file of bounded size (hostile symlinks are not followed out).
            if let Err(e) = crate::config::read::read_text(&p, dir) {
                tracing::warn!("{}: {e}; ignored", p.display());
                return None;
            }
            Some(DirFile { rel, path: p })
        })
        .collect();
    files.sort_by(|a, b| a.rel.cmp(&b.rel));
    Ok(files)
}

fn load_one(file: &LayeredFile) -> Result<Manifest, Vec<Problem>> {
    use crate::config::read::{sanitize, sanitize_field};
    let shown = file.display_path("firmware-manifests");
    let path = shown.as_path();
    let text = std::str::from_utf8(&file.data)
        .map_err(|_| vec![Problem::file(path, "not UTF-8 text".into())])?;
    crate::util::prescan::yaml("the file", text.as_bytes(), crate::util::prescan::CONFIG)
        .map_err(|e| vec![Problem::file(path, e.to_string())])?;
    let de = serde_yaml_ng::Deserializer::from_str(text);
    let mut m: Manifest = serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        vec![Problem::field(
            path,
            &sanitize_field(if field == "." { "" } else { &field }),
            sanitize(&e.into_inner().to_string()),
        )]
    })?;
    m.origin = file.origin.clone();
    let mut problems = Vec::new();
    let stem = path
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or_default();
    if m.board != stem {
        problems.push(Problem::field(
            path,
            "board",
            format!("{:?} must equal the file name {stem:?}", m.board),
        ));
    }
    if let Some(d) = &m.source.sha256
        && (d.len() != 64 || !d.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        problems.push(Problem::field(
            path,
            "source.sha256",
            "expected 64 hex digits".into(),
        ));
    }
    if m.source.sha256.is_none() && m.source.checksums_url.is_none() {
        problems.push(Problem::field(
            path,
            "source",
            "needs `sha256` or `checksums_url`".into(),
        ));
    }
    let role_ok = |role: &str| m.partitions.contains_key(role);
    if !role_ok(&m.seed.partition) {
        problems.push(Problem::field(
            path,
            "seed.partition",
            format!("{:?} is not a role in `partitions`", m.seed.partition),
        ));
    }
    if !role_ok("root") {
        problems.push(Problem::field(
            path,
            "partitions",
            "needs a `root` partition".into(),
        ));
    }
    if let Some(k) = &m.kernel_cmdline {
        match m.partitions.get(&k.partition) {
            Some(p) if p.fs == FsKind::Vfat => {}
            Some(_) => problems.push(Problem::field(
                path,
                "kernel_cmdline.partition",
                "must be a vfat partition".into(),
            )),
            None => problems.push(Problem::field(
                path,
                "kernel_cmdline.partition",
                format!("{:?} is not a role in `partitions`", k.partition),
            )),
        }
    }
    if let Some(i) = &m.installer
        && (i.sha256.len() != 64 || !i.sha256.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        problems.push(Problem::field(
            path,
            "installer.sha256",
            format!("{:?} is not 64 hex digits", i.sha256),
        ));
    }
    if m.shrink.as_ref().and_then(|s| s.headroom_mib) == Some(0) {
        problems.push(Problem::field(
            path,
            "shrink.headroom_mib",
            "0 leaves the first boot no room; give at least 1 (MiB)".into(),
        ));
    }
    let mut seen = BTreeMap::new();
    for (role, p) in &m.partitions {
        if let Some(other) = seen.insert(p.index, role) {
            problems.push(Problem::field(
                path,
                &format!("partitions.{role}.index"),
                format!("{} is also the index of {other}", p.index),
            ));
        }
    }
    if problems.is_empty() {
        Ok(m)
    } else {
        Err(problems)
    }
}

/// Facts about a board that validation needs, taken from its firmware manifest.
#[derive(Debug, Clone)]
pub struct BoardInfo {
    pub name: String,
    /// A compute module that sits in a Turing Pi slot.
    pub turing_pi_module: bool,
    /// The board's wired Ethernet as its image sees it.
    pub ethernet: EthernetFacts,
    /// File system labels of the image's partitions (a data disk may not reuse one).
    pub partition_labels: Vec<String>,
}

pub fn board_infos(manifests: &Manifests) -> Vec<BoardInfo> {
    manifests
        .values()
        .map(|m| BoardInfo {
            name: m.board.clone(),
            turing_pi_module: m.turing_pi_module,
            ethernet: m.ethernet.clone().unwrap_or_default(),
            partition_labels: m.partitions.values().map(|p| p.label.clone()).collect(),
        })
        .collect()
}
