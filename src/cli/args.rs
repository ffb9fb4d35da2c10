//! Command-line definitions (clap types) only.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

fn duration(s: &str) -> Result<Duration, String> {
    imgbuild::util::duration::parse_duration(s)
}

const AFTER_HELP: &str = "\
Examples:
  imgbuild --base ubuntu-rk1.img dist/node02.rk1.img   bake node02 from a local stock image
  imgbuild --all --base rk1=rk1.img --base cm4=cm4.img bake every node into dist/
  imgbuild check                                       validate profiles and manifests
  imgbuild dist/node02.rk1.img.xz                      download the stock image if needed, bake, compress
  imgbuild fetch rk1 cm4                               download and unpack ahead of time
  imgbuild inspect dist/node02.rk1.img                 show what an image holds

Exit status: 0 success, 1 failure, 2 usage error, 3 invalid profiles or manifests,
130 interrupted.";

/// Build pre-baked Ubuntu images for the nodes of a k3s cluster on Turing Pi
/// boards (RK1, CM4) and x86 NUCs.
///
/// A target is an output file named <node>.<board>.img; its node's profile,
/// the board's firmware manifest and the overlays decide what goes into it.
#[derive(Debug, Parser)]
#[command(name = "imgbuild", version, after_help = AFTER_HELP)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,

    #[command(flatten)]
    pub build: BuildArgs,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Profile directory (cluster.yaml and nodes/*.yaml).
    #[arg(
        long,
        global = true,
        value_name = "DIR",
        env = "IMGBUILD_PROFILES",
        default_value = "profiles"
    )]
    pub profiles: PathBuf,

    /// Firmware manifests overriding the built-in ones file by file (same
    /// file name wins; other files add boards) [default: firmware-manifests
    /// beside the profile directory, when it exists].
    #[arg(long, global = true, value_name = "DIR", env = "IMGBUILD_MANIFESTS")]
    pub manifests: Option<PathBuf>,

    /// Overlay files overriding the built-in ones file by file (same relative
    /// path wins) [default: overlays beside the profile directory, when it
    /// exists]. `imgbuild overlays export DIR` writes the built-in ones out.
    #[arg(long, global = true, value_name = "DIR", env = "IMGBUILD_OVERLAYS")]
    pub overlays: Option<PathBuf>,

    /// Use only the --manifests and --overlays directories, not the
    /// manifests and overlays built into imgbuild.
    #[arg(long, global = true)]
    pub no_builtin: bool,

    /// Cluster secrets directory (tokens, CA, host keys) [default: secrets
    /// beside the profile directory]. Created with mode 0700 on first use.
    #[arg(long, global = true, value_name = "DIR", env = "IMGBUILD_SECRETS")]
    pub secrets: Option<PathBuf>,

    /// More log output (-v: debug, -vv: trace).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Only errors.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,

    /// Image cache [default: $XDG_CACHE_HOME/imgbuild, else ~/.cache/imgbuild].
    #[arg(long, global = true, value_name = "DIR", env = "IMGBUILD_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,

    /// Use only the cache; fail if a stock image is not there.
    #[arg(long, global = true)]
    pub offline: bool,

    /// Download attempts before giving up (network errors and HTTP 5xx are retried).
    #[arg(long, global = true, value_name = "N", default_value_t = 6)]
    pub retries: u32,
}

/// `--format` values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    #[default]
    #[value(name = "img")]
    Img,
    #[value(name = "img.xz")]
    ImgXz,
    #[value(name = "img.zst")]
    ImgZst,
}

/// `--print-token` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TokenRole {
    Server,
    Agent,
}

#[derive(Debug, Args, Default)]
pub struct BuildArgs {
    /// Output images to build, each named <node>.<board>.img (e.g. dist/node02.rk1.img).
    #[arg(value_name = "TARGET")]
    pub targets: Vec<PathBuf>,

    /// Build every node of the profiles into --out-dir.
    #[arg(long)]
    pub all: bool,

    /// Directory for --all outputs.
    #[arg(long, value_name = "DIR", default_value = "dist")]
    pub out_dir: PathBuf,

    /// Output format for --all: img (sparse raw), img.xz or img.zst.
    #[arg(long, value_name = "EXT", default_value = "img")]
    pub format: OutputFormat,

    /// Local raw stock image to start from: FILE for every target, or
    /// BOARD=FILE for one board (repeat for several boards). It is only read.
    /// Without it, the board's image is downloaded, verified and unpacked into
    /// the cache (once).
    #[arg(long, value_name = "[BOARD=]FILE")]
    pub base: Vec<String>,

    /// Print a JSON report of what was built.
    #[arg(long)]
    pub json: bool,

    /// Build without the cluster's secrets (tokens, CA set, host and node
    /// keys): the image is safe to publish, e.g. as a CI artifact, and is
    /// sealed on its way to the node (`seal`, `flash`, `deploy`). The secrets
    /// directory is not read.
    #[arg(long, conflicts_with = "sealed")]
    pub unsealed: bool,

    /// Bake the secrets (the default). Needed explicitly when CI is set in the
    /// environment, so that no CI job publishes a cluster's secrets by accident.
    #[arg(long)]
    pub sealed: bool,

    /// Keep the stock image size. By default a raw output is shrunk to what
    /// its root file system uses plus headroom (it grows back to the whole
    /// device on first boot), so a flash sends fewer bytes.
    #[arg(long)]
    pub no_shrink: bool,

    /// Record the sha256 in SHA256SUMS and write the provenance statement
    /// (<image>.intoto.json) for raw outputs too. Compressed outputs always
    /// get both (hashed while compressing); a raw one is otherwise not hashed
    /// at bake time (`flash` computes its digest when it needs it). On by
    /// default with --unsealed and when CI is set.
    #[arg(long)]
    pub sums: bool,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Directory to create the profiles in.
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    /// Cluster name [default: homelab].
    #[arg(long)]
    pub name: Option<String>,
    /// Address or DNS name of the cluster's API [default: <first node>.<domain>].
    #[arg(long)]
    pub server: Option<String>,
    /// DNS domain of the nodes [default: home.arpa].
    #[arg(long)]
    pub domain: Option<String>,
    /// Admin user created on every node [default: admin].
    #[arg(long)]
    pub admin_user: Option<String>,
    /// The admin's SSH public key: a file or the key line (repeatable)
    /// [default: the first ~/.ssh/*.pub].
    #[arg(long, value_name = "FILE|KEY")]
    pub ssh_key: Vec<String>,
    /// Turing Pi BMC host [default: turingpi.local].
    #[arg(long)]
    pub bmc: Option<String>,
    /// A node as NAME=BOARD[@SLOT], e.g. node01=rk1@1 or nuc1=nuc (repeatable;
    /// the first is the server) [default: node01..node04=rk1@1..4].
    #[arg(long = "node", value_name = "NAME=BOARD[@SLOT]", value_parser = imgbuild::commands::init::parse_node)]
    pub nodes: Vec<imgbuild::commands::init::InitNode>,
    /// Never ask, even on a terminal.
    #[arg(long)]
    pub no_input: bool,
    /// Print a JSON report of the files written, the defaults assumed and
    /// the check (questions on a terminal still go to stderr).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum ImportCommand {
    /// The reference Ansible project's inventory (hosts.yml or INI, with
    /// group_vars/all.yml): every key is mapped or listed as not carried over.
    Ansible(AnsibleArgs),
}

#[derive(Debug, Subcommand)]
pub enum OverlaysCommand {
    /// Write the built-in overlays into DIR to edit them (only the files
    /// you change need to stay there); refuses to overwrite without --force.
    Export {
        /// Where to write them, e.g. `overlays` beside the profiles.
        dir: PathBuf,
        /// Overwrite files that exist.
        #[arg(long)]
        force: bool,
    },
    /// List every overlay file and where it comes from.
    List {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build images (the same as giving targets without a command).
    Build(BuildArgs),
    /// Validate all profiles and manifests; lists every problem, and where
    /// each manifest and overridden overlay file comes from.
    Check {
        /// Print a JSON report of what was checked (warnings included).
        #[arg(long)]
        json: bool,
    },
    /// The overlay files built into imgbuild.
    #[command(subcommand)]
    Overlays(OverlaysCommand),
    /// Print a shell completion script (node names complete from the
    /// profiles in bash and zsh). See docs/install.md, "Shell completions".
    Completions {
        /// bash, zsh, fish, powershell or elvish.
        shell: clap_complete::Shell,
    },
    /// Print the man page (imgbuild.1), or write one per command into --out-dir.
    Man {
        /// Write imgbuild.1 and imgbuild-<command>.1 here instead.
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
    },
    /// Start a cluster's profiles in DIR: profiles/cluster.yaml, a file per
    /// node and a .gitignore for secrets/ and dist/. Asks on a terminal;
    /// otherwise uses the flags and defaults, and says what it assumed.
    /// Never overwrites a file.
    Init(InitArgs),
    /// What differs between two images: the partition table, then per file
    /// system the added, removed and changed files (mode, owner, size,
    /// sha256; secret files only as changed). Exit 0 when equal, 1 when not.
    /// With one image: compare it with the stock image it was built from
    /// (named by its provenance record, read from the cache).
    Diff {
        a: PathBuf,
        b: Option<PathBuf>,
        /// Print a JSON report (the exit status still tells equal or not).
        #[arg(long)]
        json: bool,
    },
    /// Convert another tool's inventory into profiles.
    #[command(subcommand)]
    Import(ImportCommand),
    /// Show an image's partitions, file systems, cloud-init seed and provenance.
    Inspect {
        /// The image file.
        image: PathBuf,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Download, verify and unpack boards' stock images into the cache ahead of time.
    Fetch {
        /// Boards to fetch (rk1, cm4, nuc, ...).
        boards: Vec<String>,
        /// Every board with a manifest.
        #[arg(long)]
        all: bool,
        /// Print a JSON report of what is in the cache now.
        #[arg(long)]
        json: bool,
    },
    /// Unpack an image file by its content (xz, gzip, zstd, qcow2 or raw) into a sparse raw image.
    Unpack {
        /// The compressed or qcow2 image.
        input: PathBuf,
        /// The raw image to write (not overwritten if it exists).
        output: PathBuf,
        /// Refuse to write more than this (e.g. 8GiB); guards against decompression bombs.
        #[arg(long, value_name = "SIZE", default_value = "64GiB")]
        max_size: imgbuild::config::manifest::ByteSize,
    },
    /// Show which cluster secrets exist (never their values), or print the
    /// join token or a known_hosts file on request.
    Secrets(SecretsArgs),
    /// Add the node's secrets to an image built --unsealed (raw, .img.xz or
    /// .img.zst, e.g. a CI artifact), writing a new image; the input is never
    /// modified. The secrets directory must already hold the cluster's secrets.
    Seal(SealArgs),
    /// Check an artifact against SHA256SUMS and its provenance statement
    /// (<artifact>.intoto.json) beside it, and show what it was built from.
    Verify {
        /// The artifact (image, .img.xz or .img.zst).
        image: PathBuf,
        /// Print a JSON report.
        #[arg(long)]
        json: bool,
    },
    /// Write a NUC node's unattended installer (<out-dir>/<node>.<board>.iso,
    /// built first when missing) to a USB stick: only a whole removable or
    /// USB-attached disk that is not mounted; asks first (--yes for scripts),
    /// then writes, syncs and verifies the read-back's sha256.
    Usb(UsbArgs),
    /// Flash a node's image onto its Turing Pi slot through the BMC and power it on
    /// (the image is built first when missing).
    Flash(FlashNodeArgs),
    /// Flash every Turing Pi node in slot order, one at a time; a failed run
    /// continues where it stopped when run again.
    Deploy(DeployArgs),
    /// Write an admin kubeconfig for the cluster, minted offline from its CA
    /// (no SSH to a server); prints only its path.
    Kubeconfig(KubeconfigArgs),
    /// Wait until nodes (every node when none are named) have joined the
    /// cluster and are Ready, booted after their last flash; on timeout, say
    /// per node what is wrong and what to try.
    Wait(WaitCommandArgs),
    /// One table of every node: slot, image flashed (and whether a build now
    /// differs), reachable, registered, Ready, k3s version, roles; and the API's health.
    Status(StatusArgs),
    /// Talk to the Turing Pi BMCs named in the profiles.
    #[command(subcommand)]
    Bmc(BmcCommand),
    /// Show or clean the image cache.
    #[command(subcommand)]
    Cache(CacheCommand),
    /// Show the files a node's image would get, without an image.
    Render {
        /// Node name (the profile's file stem).
        node: String,
        /// Also print each file's contents (secrets are shown: keep it off shared logs).
        #[arg(long)]
        contents: bool,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// List cached images and downloads, with the board each belongs to.
    List {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Remove entries that no current manifest refers to (all with --all).
    Clean {
        #[arg(long)]
        all: bool,
        /// Print a JSON report of what was removed and what was in use.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct BmcArgs {
    /// Only this Turing Pi board (a name from cluster.turing_pi_boards).
    #[arg(long, value_name = "NAME")]
    pub board: Option<String>,
    /// BMC user.
    #[arg(long, value_name = "USER", default_value = "root")]
    pub bmc_user: String,
    /// File holding the BMC password (else IMGBUILD_BMC_PASSWORD, else a prompt).
    #[arg(long, value_name = "FILE")]
    pub bmc_password_file: Option<PathBuf>,
    /// Do not verify the BMC's certificate at all (it is otherwise pinned on first use).
    #[arg(long)]
    pub insecure: bool,
    /// Seconds to wait for the BMC to connect and answer each call; a flash
    /// gives up after twice this without progress.
    #[arg(long, value_name = "SECONDS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub bmc_timeout: u64,
}

#[derive(Debug, Subcommand)]
pub enum BmcCommand {
    /// Model, firmware and daemon versions, power of every slot, SD card space.
    Status {
        #[command(flatten)]
        bmc: BmcArgs,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct FlashArgs {
    #[command(flatten)]
    pub bmc: BmcArgs,
    /// Do not ask for confirmation before erasing a module.
    #[arg(long)]
    pub yes: bool,
    /// Skip the BMC's CRC read-back of the written image.
    #[arg(long)]
    pub skip_crc: bool,
    /// Where images are found and built.
    #[arg(long, value_name = "DIR", default_value = "dist")]
    pub out_dir: PathBuf,
    /// Base images for builds, as for the build command.
    #[arg(long, value_name = "[BOARD=]FILE")]
    pub base: Vec<String>,
    /// Re-flash nodes that are Ready and already run their image's instance,
    /// and (deploy) nodes an earlier run already flashed with the same image
    /// (they are skipped otherwise).
    #[arg(long)]
    pub force: bool,
    /// The cluster was up before but its API does not answer: flash its
    /// servers anyway and start a new, empty cluster.
    #[arg(long)]
    pub new_cluster: bool,
    /// Re-flash the cluster's only server although its datastore (every API
    /// object) is lost; asks for confirmation.
    #[arg(long)]
    pub reset_cluster: bool,
    /// Drain: evict pods with emptyDir volumes too (their data is deleted),
    /// as kubectl drain --delete-emptydir-data.
    #[arg(long)]
    pub delete_emptydir_data: bool,
    /// Drain: evict pods no controller recreates, as kubectl drain --force.
    #[arg(long)]
    pub drain_unmanaged: bool,
    /// Drain: give up when pods are still there after this long (e.g. a
    /// PodDisruptionBudget that never allows the eviction).
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = duration)]
    pub drain_timeout: Duration,
}

#[derive(Debug, Args)]
pub struct ApiArgs {
    /// The Kubernetes API's URL [default: https://<cluster.server>:6443]. Its
    /// certificate must still come from the cluster's server CA.
    #[arg(long, value_name = "URL")]
    pub server: Option<String>,
}

#[derive(Debug, Args)]
pub struct WaitArgs {
    /// How long to wait for every node to be Ready.
    #[arg(long, value_name = "DURATION", default_value = "15m", value_parser = duration)]
    pub timeout: Duration,
    /// How often to poll the API between watches (deploy: also how often a
    /// drain asks again for an eviction a PodDisruptionBudget refused).
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = duration)]
    pub interval: Duration,
    #[command(flatten)]
    pub api: ApiArgs,
}

#[derive(Debug, Args)]
pub struct SealArgs {
    /// The unsealed image.
    pub image: PathBuf,
    /// The sealed image to write [default: <out-dir>/<node>.<board>.img].
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Directory for the default output.
    #[arg(long, value_name = "DIR", default_value = "dist")]
    pub out_dir: PathBuf,
    /// Refuse the image unless it was built for this node.
    #[arg(long, value_name = "NODE")]
    pub node: Option<String>,
    /// Print a JSON report.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct UsbArgs {
    /// Node name.
    pub node: String,
    /// The stick's whole-disk device, e.g. /dev/sdb or /dev/disk/by-id/usb-...
    #[arg(long, value_name = "PATH")]
    pub device: PathBuf,
    /// Write this ISO instead of <out-dir>/<node>.<board>.iso.
    #[arg(long, value_name = "FILE")]
    pub iso: Option<PathBuf>,
    /// Do not ask for confirmation before erasing the stick.
    #[arg(long)]
    pub yes: bool,
    /// Where the ISO is found and built.
    #[arg(long, value_name = "DIR", default_value = "dist")]
    pub out_dir: PathBuf,
    /// Print a JSON report.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct FlashNodeArgs {
    /// Node name.
    pub node: String,
    /// Image to flash [default: <out-dir>/<node>.<board>.img, built if missing].
    #[arg(long, value_name = "FILE")]
    pub image: Option<PathBuf>,
    #[command(flatten)]
    pub flash: FlashArgs,
    #[command(flatten)]
    pub api: ApiArgs,
    /// In a running cluster: how long the node may take to be Ready again
    /// (and a voting etcd member, for a server).
    #[arg(long, value_name = "DURATION", default_value = "20m", value_parser = duration)]
    pub timeout: Duration,
}

#[derive(Debug, Args)]
pub struct DeployArgs {
    /// Only these nodes (comma-separated).
    #[arg(long, value_delimiter = ',', value_name = "NODES")]
    pub nodes: Vec<String>,
    /// Print a JSON report.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub flash: FlashArgs,
    /// Then wait until every deployed node has joined and is Ready (see
    /// `wait`). In a running cluster each node is waited for before the next
    /// is flashed anyway, within --timeout.
    #[arg(long)]
    pub wait: bool,
    #[command(flatten)]
    pub wait_args: WaitArgs,
}

#[derive(Debug, Args)]
pub struct KubeconfigArgs {
    /// Write it here (refused if the file exists, unless --force)
    /// [default: kubeconfig/<cluster>.yaml in the secrets directory, reused while valid].
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Merge the cluster into an existing kubeconfig (-o FILE, else
    /// ~/.kube/config), keeping its other contexts; makes it the current context.
    #[arg(long)]
    pub merge: bool,
    /// Replace an existing -o FILE.
    #[arg(long)]
    pub force: bool,
    /// How long the client certificate is valid (e.g. 12h, 7d, 30d).
    #[arg(long, value_name = "DURATION", default_value = "7d", value_parser = duration)]
    pub validity: Duration,
    #[command(flatten)]
    pub api: ApiArgs,
    /// Print a JSON report (path, whether minted now, the previous context)
    /// instead of the path alone.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct WaitCommandArgs {
    /// Node names [default: every node].
    pub nodes: Vec<String>,
    #[command(flatten)]
    pub wait: WaitArgs,
    /// Where the deploy state is (the images' directory).
    #[arg(long, value_name = "DIR", default_value = "dist")]
    pub out_dir: PathBuf,
    /// Print a JSON report.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Longest each check may take.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = duration)]
    pub timeout: Duration,
    /// Where the deploy state is (the images' directory).
    #[arg(long, value_name = "DIR", default_value = "dist")]
    pub out_dir: PathBuf,
    #[command(flatten)]
    pub api: ApiArgs,
    /// Machine-readable output.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct SecretsArgs {
    /// Print the secure join token for `server` or `agent` nodes.
    #[arg(long, value_name = "ROLE")]
    pub print_token: Option<TokenRole>,
    /// Print a known_hosts file with every node's SSH host key.
    #[arg(long)]
    pub known_hosts: bool,
    /// Create every missing secret of the cluster and its nodes now
    /// (otherwise the first sealed build does), e.g. before sealing CI artifacts.
    #[arg(long)]
    pub generate: bool,
}

#[derive(Debug, Args)]
pub struct AnsibleArgs {
    /// The inventory file (YAML or INI).
    pub inventory: PathBuf,
    /// group_vars/all.yml [default: group_vars/all.yml beside the inventory, if any].
    #[arg(long, value_name = "FILE")]
    pub group_vars: Option<PathBuf>,
    /// Where to write profiles/ and .gitignore.
    #[arg(short = 'o', long = "output", value_name = "DIR", default_value = ".")]
    pub out_dir: PathBuf,
    /// Cluster name [default: homelab].
    #[arg(long)]
    pub name: Option<String>,
    /// Admin user when group_vars has no ansible_account [default: admin].
    #[arg(long)]
    pub admin_user: Option<String>,
    /// The admin's SSH public key: a file or the key line (repeatable)
    /// [default: the first ~/.ssh/*.pub].
    #[arg(long, value_name = "FILE|KEY")]
    pub ssh_key: Vec<String>,
    /// Print a JSON report: files written, each key's mapping, the check.
    #[arg(long)]
    pub json: bool,
}
