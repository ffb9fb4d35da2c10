//! Turns what was typed (flags) and the environment into the plain settings
//! the commands take. The only place that reads environment variables
//! (besides clap's `env =` flags, declared in `args`).

use std::ffi::OsString;
use std::path::PathBuf;

use imgbuild::commands::bmc::BmcOptions;
use imgbuild::commands::build::{Bases, BuildSettings};
use imgbuild::commands::flash::FlashSettings;
use imgbuild::commands::{CommandError, FetchSettings, Paths};
use imgbuild::deliver::turing_pi::PasswordSource;
use imgbuild::plan::DEFAULT_BUILD_TIME;
use imgbuild::source::RetryPolicy;

use super::args::{BmcArgs, BuildArgs, FlashArgs, GlobalArgs, OutputFormat};
use imgbuild::artifact::Format;

/// The environment variables imgbuild reads, read once at start.
#[derive(Debug, Default)]
pub struct Environment {
    /// `CI`: progress as plain lines.
    pub ci: bool,
    /// `IMGBUILD_LOG`: a tracing filter.
    pub log: Option<String>,
    pub xdg_cache_home: Option<OsString>,
    pub home: Option<OsString>,
    /// `IMGBUILD_K3S_MIRROR`: overrides the profiles' k3s mirror.
    pub k3s_mirror: Option<String>,
    /// `IMGBUILD_BMC_PASSWORD`.
    pub bmc_password: Option<String>,
    /// `SOURCE_DATE_EPOCH`: the build time stamped on written files.
    pub source_date_epoch: Option<String>,
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
        Environment {
            ci: std::env::var_os("CI").is_some(),
            log: var("IMGBUILD_LOG"),
            xdg_cache_home: std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()),
            home: std::env::var_os("HOME"),
            k3s_mirror: non_empty("IMGBUILD_K3S_MIRROR"),
            bmc_password,
            source_date_epoch: var("SOURCE_DATE_EPOCH"),
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
        Ok(Common {
            paths: Paths::resolve_with_secrets(g.profiles, g.manifests, g.overlays, g.secrets),
            fetch: FetchSettings {
                cache_dir,
                offline: g.offline,
                retry: RetryPolicy {
                    attempts: g.retries.max(1),
                    ..Default::default()
                },
                k3s_mirror: env.k3s_mirror.clone(),
            },
            build_time,
        })
    }

    pub fn build(&self, b: &BuildArgs) -> Result<BuildSettings, CommandError> {
        Ok(BuildSettings {
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
        })
    }

    pub fn flash(&self, f: &FlashArgs, env: &Environment) -> Result<FlashSettings, CommandError> {
        Ok(FlashSettings {
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
            },
        })
    }
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
