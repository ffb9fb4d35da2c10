//! Turns what was typed (flags) and the environment into the plain settings
//! the commands take. The only place that reads environment variables
//! (besides clap's `env =` flags, declared in `args`).

use std::ffi::OsString;
use std::path::PathBuf;

use imgbuild::commands::bmc::BmcOptions;
use imgbuild::commands::build::{Bases, BuildSettings, Sealing};
use imgbuild::commands::flash::FlashSettings;
use imgbuild::commands::{CommandError, FetchSettings, Paths};
use imgbuild::deliver::turing_pi::PasswordSource;
use imgbuild::plan::DEFAULT_BUILD_TIME;
use imgbuild::source::RetryPolicy;

use super::args::{
    AnsibleArgs, BmcArgs, BuildArgs, DeployArgs, FlashArgs, FlashNodeArgs, GlobalArgs,
    KubeconfigArgs, OutputFormat, SealArgs, SecretsArgs, StatusArgs, TokenRole, UsbArgs, WaitArgs,
    WaitCommandArgs,
};
use imgbuild::artifact::Format;
use imgbuild::commands::Workspace;
use imgbuild::commands::flash::{DeploySettings, FlashNode};
use imgbuild::commands::import::ImportSettings;
use imgbuild::commands::init::{InitSettings, KeySource};
use imgbuild::commands::kubeconfig::KubeconfigSettings;
use imgbuild::commands::rollout::RolloutSettings;
use imgbuild::commands::seal::SealSettings;
use imgbuild::commands::secrets::{SecretsSettings, Show};
use imgbuild::commands::usb::UsbSettings;
use imgbuild::commands::wait::WaitSettings;
use imgbuild::config::profile::Role;
use imgbuild::deliver::usb::SystemPaths;
use imgbuild::kube::drain::DrainOptions;

/// The environment variables imgbuild reads, read once at start.
#[derive(Debug, Default)]
pub struct Environment {
    /// `CI`: progress as plain lines; raw outputs hashed into `SHA256SUMS`.
    pub ci: bool,
    /// `IMGBUILD_LOG`: a tracing filter.
    pub log: Option<String>,
    pub xdg_cache_home: Option<OsString>,
    pub home: Option<OsString>,
    /// `IMGBUILD_K3S_MIRROR`: overrides the profiles' k3s mirror.
    pub k3s_mirror: Option<String>,
    pub registry_auth: Option<String>,
    /// `IMGBUILD_BMC_PASSWORD`.
    pub bmc_password: Option<String>,
    /// `SOURCE_DATE_EPOCH`: the build time stamped on written files.
    pub source_date_epoch: Option<String>,
    /// `IMGBUILD_SYSFS_ROOT`, `IMGBUILD_MOUNTINFO`: where `usb` reads the
    /// disks and mounts from (tests point them at fake trees). Read only
    /// when [`TEST_HOOKS`] is on.
    pub sysfs_root: Option<PathBuf>,
    pub mountinfo: Option<PathBuf>,
}

/// Whether this build honours the test hooks: the `test-hooks` feature,
/// which only the tests' build has (the package's dev-dependency on itself
/// turns it on; `cargo install` and release builds never build
/// dev-dependencies). A fake sysfs tree whose device numbers match a real
/// disk would pass every safety check of `usb`, so the shipped binary must
/// not read one.
pub const TEST_HOOKS: bool = cfg!(feature = "test-hooks");

/// `IMGBUILD_SYSFS_ROOT` and `IMGBUILD_MOUNTINFO` from `var`, when
/// `honoured`; nothing otherwise.
fn test_hooks(
    honoured: bool,
    var: impl Fn(&str) -> Option<OsString>,
) -> (Option<PathBuf>, Option<PathBuf>) {
    if !honoured {
        return (None, None);
    }
    let path = |k: &str| var(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    (path("IMGBUILD_SYSFS_ROOT"), path("IMGBUILD_MOUNTINFO"))
}

impl Environment {
    /// Reads the environment once, and takes `IMGBUILD_BMC_PASSWORD` out of
    /// it so that no child process (debugfs, ...) inherits the password.
    /// Call it at start, before any thread is spawned.
    pub fn read() -> Environment {
        let var = |k: &str| std::env::var(k).ok();
        let bmc_password = var("IMGBUILD_BMC_PASSWORD");
        if std::env::var_os("IMGBUILD_BMC_PASSWORD").is_some() {
            // SAFETY: main calls this before it spawns any thread (the signal
            // watcher, progress bars and the HTTP client's runtime all come
            // later), so nothing can read the environment concurrently.
            unsafe { std::env::remove_var("IMGBUILD_BMC_PASSWORD") };
        }
        let non_empty = |k: &str| var(k).filter(|v| !v.is_empty());
        let (sysfs_root, mountinfo) = test_hooks(TEST_HOOKS, |k| std::env::var_os(k));
        Environment {
            ci: std::env::var_os("CI").is_some(),
            log: var("IMGBUILD_LOG"),
            // The XDG base directory spec: a relative path is invalid and ignored.
            xdg_cache_home: std::env::var_os("XDG_CACHE_HOME")
                .filter(|v| std::path::Path::new(v).is_absolute()),
            home: std::env::var_os("HOME"),
            k3s_mirror: non_empty("IMGBUILD_K3S_MIRROR"),
            registry_auth: non_empty("IMGBUILD_REGISTRY_AUTH"),
            bmc_password,
            source_date_epoch: var("SOURCE_DATE_EPOCH"),
            sysfs_root,
            mountinfo,
        }
    }
}

/// Settings every command may need.
pub struct Common {
    pub paths: Paths,
    pub fetch: FetchSettings,
    pub build_time: u64,
}

impl Common {
    pub fn resolve(g: GlobalArgs, env: &Environment) -> Result<Common, CommandError> {
        let cache_dir = g
            .cache_dir
            .or_else(|| {
                env.xdg_cache_home
                    .as_ref()
                    .map(|d| PathBuf::from(d).join("imgbuild"))
            })
            .or_else(|| {
                env.home
                    .as_ref()
                    .map(|h| PathBuf::from(h).join(".cache/imgbuild"))
            });
        let build_time = match &env.source_date_epoch {
            Some(v) => v.trim().parse().map_err(|_| {
                CommandError::Failed(anyhow::anyhow!(
                    "SOURCE_DATE_EPOCH={v:?} is not a number of seconds since 1970"
                ))
            })?,
            None => DEFAULT_BUILD_TIME,
        };
        let mut paths = Paths::resolve_with_secrets(g.profiles, g.manifests, g.overlays, g.secrets);
        paths.builtin = !g.no_builtin;
        Ok(Common {
            paths,
            fetch: FetchSettings {
                cache_dir,
                offline: g.offline,
                retry: RetryPolicy {
                    attempts: g.retries.max(1),
                    ..Default::default()
                },
                k3s_mirror: env.k3s_mirror.clone(),
                registry_auth: env.registry_auth.clone().map(PathBuf::from),
            },
            build_time,
        })
    }

    pub fn build(&self, b: &BuildArgs, env: &Environment) -> Result<BuildSettings, CommandError> {
        let sealing = match (b.unsealed, b.sealed) {
            (true, _) => Sealing::Unsealed,
            (false, true) => Sealing::Sealed,
            (false, false) if env.ci => {
                return Err(CommandError::Usage(anyhow::anyhow!(
                    "CI is set: a build that bakes the cluster's secrets (join tokens, CA keys, host keys) \
                     needs --sealed, because CI artifacts are readable by everyone who can read the builds. \
                     Build --unsealed instead and seal on delivery (`imgbuild deploy` does it), or pass \
                     --sealed if this runner and its artifacts are private"
                )));
            }
            (false, false) => Sealing::Sealed,
        };
        Ok(BuildSettings {
            sealing,
            targets: b.targets.clone(),
            all: b.all,
            out_dir: b.out_dir.clone(),
            all_format: match b.format {
                OutputFormat::Img => Format::Raw,
                OutputFormat::ImgXz => Format::Xz,
                OutputFormat::ImgZst => Format::Zstd,
            },
            bases: Bases::parse(&b.base)?,
            fetch: self.fetch.clone(),
            build_time: self.build_time,
            shrink: !b.no_shrink,
            // CI artifacts are checked against their records.
            sums: b.sums || env.ci,
        })
    }

    /// The profiles, manifests and overlays, loaded and validated.
    pub fn workspace(&self) -> Result<Workspace, CommandError> {
        Workspace::load(&self.paths)
    }

    pub fn seal(&self, a: &SealArgs) -> SealSettings {
        SealSettings {
            output: a.output.clone(),
            out_dir: a.out_dir.clone(),
            node: a.node.clone(),
            build_time: self.build_time,
        }
    }

    pub fn secrets(&self, a: &SecretsArgs) -> SecretsSettings {
        let show = match (a.print_token, a.known_hosts) {
            (Some(TokenRole::Server), _) => Show::Token(Role::Server),
            (Some(TokenRole::Agent), _) => Show::Token(Role::Agent),
            (None, true) => Show::KnownHosts,
            (None, false) => Show::Inventory,
        };
        SecretsSettings {
            generate: a.generate,
            show,
            build_time: self.build_time,
        }
    }

    pub fn usb(&self, a: &UsbArgs, env: &Environment) -> UsbSettings {
        let defaults = SystemPaths::default();
        let out_dir = a.out_dir.clone();
        UsbSettings {
            device: a.device.clone(),
            iso: a.iso.clone(),
            yes: a.yes,
            system: SystemPaths {
                sysfs: env.sysfs_root.clone().unwrap_or(defaults.sysfs),
                mountinfo: env.mountinfo.clone().unwrap_or(defaults.mountinfo),
            },
            build: BuildSettings {
                targets: Vec::new(),
                all: false,
                out_dir,
                all_format: Format::Iso,
                bases: Bases::default(),
                fetch: self.fetch.clone(),
                build_time: self.build_time,
                // Writing a stick is the operator's own act: what it builds is sealed.
                sealing: Sealing::Sealed,
                shrink: false,
                sums: false,
            },
        }
    }

    pub fn flash(&self, f: &FlashArgs, env: &Environment) -> Result<FlashSettings, CommandError> {
        Ok(FlashSettings {
            wait: None,
            rollout: RolloutSettings {
                force: f.force,
                new_cluster: f.new_cluster,
                reset_cluster: f.reset_cluster,
                drain: DrainOptions {
                    delete_emptydir_data: f.delete_emptydir_data,
                    force: f.drain_unmanaged,
                    timeout: f.drain_timeout,
                    ..DrainOptions::default()
                },
                ..RolloutSettings::default()
            },
            bmc: bmc_options(&f.bmc, env),
            yes: f.yes,
            skip_crc: f.skip_crc,
            build: BuildSettings {
                targets: Vec::new(),
                all: false,
                out_dir: f.out_dir.clone(),
                all_format: Format::Raw,
                bases: Bases::parse(&f.base)?,
                fetch: self.fetch.clone(),
                build_time: self.build_time,
                // Flashing is the operator's own act: what it builds is sealed.
                sealing: Sealing::Sealed,
                // A flash sends every byte: send the shrunk image.
                shrink: true,
                // The flash computes the digest it sends, once, as it needs it.
                sums: false,
            },
        })
    }

    pub fn flash_node(
        &self,
        a: &FlashNodeArgs,
        env: &Environment,
    ) -> Result<FlashNode, CommandError> {
        let mut flash = self.flash(&a.flash, env)?;
        flash.rollout.server = a.api.server.clone();
        flash.rollout.node_timeout = a.timeout;
        Ok(FlashNode {
            node: a.node.clone(),
            image: a.image.clone(),
            flash,
        })
    }

    /// `deploy`: the flash settings, with the wait's when `--wait` is given.
    pub fn deploy(
        &self,
        a: &DeployArgs,
        env: &Environment,
    ) -> Result<DeploySettings, CommandError> {
        let mut flash = self.flash(&a.flash, env)?;
        flash.rollout.server = a.wait_args.api.server.clone();
        let interval = a
            .wait_args
            .interval
            .max(std::time::Duration::from_millis(50));
        flash.rollout.interval = interval;
        flash.rollout.node_timeout = a.wait_args.timeout;
        // kubectl drain's pace (5 s, 1 s) unless polling is asked to be faster.
        flash.rollout.drain.retry_interval = interval;
        flash.rollout.drain.poll_interval = interval.min(std::time::Duration::from_secs(1));
        flash.wait = a.wait.then(|| wait(&a.wait_args, &a.flash.out_dir));
        Ok(DeploySettings {
            nodes: a.nodes.clone(),
            flash,
        })
    }

    pub fn import(
        &self,
        a: AnsibleArgs,
        env: &Environment,
    ) -> Result<ImportSettings, CommandError> {
        Ok(ImportSettings {
            ssh_keys: key_source(&a.ssh_key, env)?,
            inventory: a.inventory,
            group_vars: a.group_vars,
            out_dir: a.out_dir,
            name: a.name,
            admin_user: a.admin_user,
        })
    }
}

/// `wait`'s settings.
pub fn wait_command(a: &WaitCommandArgs) -> WaitSettings {
    wait(&a.wait, &a.out_dir)
}

/// `status` asks each probe once, within `--timeout`.
pub fn status(a: &StatusArgs) -> WaitSettings {
    WaitSettings {
        timeout: a.timeout,
        interval: a.timeout,
        server: a.api.server.clone(),
        out_dir: a.out_dir.clone(),
    }
}

pub fn wait(w: &WaitArgs, out_dir: &std::path::Path) -> WaitSettings {
    WaitSettings {
        timeout: w.timeout,
        interval: w.interval.max(std::time::Duration::from_millis(50)),
        server: w.api.server.clone(),
        out_dir: out_dir.to_owned(),
    }
}

/// `--merge` goes into `-o FILE`, else `~/.kube/config` (kubectl's default file).
pub fn kubeconfig(
    a: &KubeconfigArgs,
    env: &Environment,
) -> Result<KubeconfigSettings, CommandError> {
    let (output, merge) = (a.output.clone(), a.merge);
    let merge_into = match (merge, &output) {
        (false, _) => None,
        (true, Some(o)) => Some(o.clone()),
        (true, None) => Some(
            env.home
                .as_ref()
                .map(|h| PathBuf::from(h).join(".kube/config"))
                .ok_or_else(|| {
                    CommandError::Usage(anyhow::anyhow!(
                        "--merge needs HOME (for ~/.kube/config) or -o FILE"
                    ))
                })?,
        ),
    };
    Ok(KubeconfigSettings {
        output: if merge { None } else { output },
        merge_into,
        force: a.force,
        validity: a.validity,
        server: a.api.server.clone(),
    })
}

pub fn bmc_options(b: &BmcArgs, env: &Environment) -> BmcOptions {
    BmcOptions {
        board: b.board.clone(),
        user: b.bmc_user.clone(),
        password: match (&b.bmc_password_file, &env.bmc_password) {
            (Some(f), _) => PasswordSource::File(f.clone()),
            (None, Some(p)) => PasswordSource::Given(p.clone()),
            (None, None) => PasswordSource::Prompt,
        },
        insecure: b.insecure,
        timeout: std::time::Duration::from_secs(b.bmc_timeout),
    }
}

/// `init`'s settings: the flags, with `~/.ssh` as where to look for a key,
/// and on a terminal the answers to what the flags left out.
pub fn init(a: super::args::InitArgs, env: &Environment) -> Result<InitSettings, CommandError> {
    let ssh_keys = key_source(&a.ssh_key, env)?;
    let mut s = InitSettings {
        dir: a.dir,
        name: a.name,
        server: a.server,
        domain: a.domain,
        admin_user: a.admin_user,
        ssh_keys,
        bmc: a.bmc,
        nodes: a.nodes,
    };
    if !a.no_input && std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        super::prompt::ask(&mut s)?;
    }
    Ok(s)
}

/// `--ssh-key` values, or where to look for one (`~/.ssh`).
pub fn key_source(given: &[String], env: &Environment) -> Result<KeySource, CommandError> {
    Ok(if given.is_empty() {
        KeySource::Search(env.home.as_ref().map(|h| PathBuf::from(h).join(".ssh")))
    } else {
        KeySource::Given(
            given
                .iter()
                .map(|k| imgbuild::commands::init::read_key_arg(k))
                .collect::<Result<_, _>>()?,
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hooks_set(k: &str) -> Option<OsString> {
        match k {
            "IMGBUILD_SYSFS_ROOT" => Some("/fake/sys".into()),
            "IMGBUILD_MOUNTINFO" => Some("/fake/mountinfo".into()),
            _ => None,
        }
    }

    #[test]
    fn the_test_hooks_are_read_only_when_the_build_honours_them() {
        // The shipped build (feature off): set or not, they are not read.
        assert_eq!(test_hooks(false, hooks_set), (None, None));
        // The tests' build reads them, and an empty value is no value.
        assert_eq!(
            test_hooks(true, hooks_set),
            (
                Some(PathBuf::from("/fake/sys")),
                Some(PathBuf::from("/fake/mountinfo"))
            )
        );
        assert_eq!(test_hooks(true, |_| Some("".into())), (None, None));
        // This test binary is built as the integration tests' binary is:
        // with the feature, through the dev-dependency.
        const { assert!(TEST_HOOKS) };
    }
}
