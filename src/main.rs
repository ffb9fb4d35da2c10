mod cli;

use std::process::ExitCode;

use clap::Parser;
use imgbuild::app::{self, AppError, BuildSettings, Exit, FetchSettings, Paths};

fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { Exit::Usage as u8 } else { 0 });
        }
    };
    init_logging(cli.global.verbose, cli.global.quiet);
    watch_signals();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {:#}", e.inner());
            ExitCode::from(e.exit() as u8)
        }
    }
}

/// On Ctrl-C or SIGTERM: delete the half-written files, then exit 130.
fn watch_signals() {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM]) else {
        return;
    };
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            imgbuild::cleanup::run_interrupt_hook();
            let n = imgbuild::cleanup::remove_all();
            eprintln!("interrupted (signal {sig}); removed {n} unfinished file(s)");
            std::process::exit(130);
        }
    });
}

fn init_logging(verbose: u8, quiet: bool) {
    let level = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "info",
        (false, 1) => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("IMGBUILD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("imgbuild={level}")));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .without_time()
        .init();
}

fn print_json<T: serde::Serialize>(v: &T) -> Result<(), AppError> {
    println!(
        "{}",
        serde_json::to_string_pretty(v).map_err(anyhow::Error::from)?
    );
    Ok(())
}

fn run(cli: cli::Cli) -> Result<(), AppError> {
    let g = cli.global;
    let fetch = FetchSettings {
        cache_dir: g.cache_dir,
        offline: g.offline,
        retry: imgbuild::fetch::RetryPolicy {
            attempts: g.retries.max(1),
            ..Default::default()
        },
    };
    let paths = Paths::resolve_with_secrets(g.profiles, g.manifests, g.overlays, g.secrets);
    match cli.command {
        None => build(&paths, cli.build, fetch),
        Some(cli::Command::Build(b)) => build(&paths, b, fetch),
        Some(cli::Command::Fetch { boards, all }) => {
            for (board, path) in app::fetch(&paths, &boards, all, &fetch)? {
                println!("{board}: {}", path.display());
            }
            Ok(())
        }
        Some(cli::Command::Secrets {
            print_token,
            known_hosts,
        }) => {
            match (print_token, known_hosts) {
                (Some(role), _) => println!("{}", app::join_token(&paths, &role)?),
                (None, true) => print!("{}", app::known_hosts(&paths)?),
                (None, false) => {
                    let inv = app::secrets_inventory(&paths)?;
                    println!(
                        "secrets: {} (values are never shown)",
                        paths.secrets.display()
                    );
                    for (rel, what) in &inv {
                        println!("  {rel:<48} {what}");
                    }
                    if inv.is_empty() {
                        println!("  (none yet: they are created by the first build)");
                    }
                }
            }
            Ok(())
        }
        Some(cli::Command::Flash { node, image, flash }) => {
            let settings = flash_settings(flash, fetch)?;
            let images = image.map(|i| (node.clone(), i)).into_iter().collect();
            app::flash_nodes(&paths, &[node], &images, &settings, None)?;
            Ok(())
        }
        Some(cli::Command::Deploy { nodes, json, flash }) => {
            let settings = flash_settings(flash, fetch)?;
            let names = app::deploy_nodes(&paths, &nodes)?;
            std::fs::create_dir_all(&settings.out_dir).map_err(anyhow::Error::from)?;
            let state = settings.out_dir.join(".deploy-state.json");
            let reports =
                app::flash_nodes(&paths, &names, &Default::default(), &settings, Some(&state))?;
            if json {
                return print_json(&reports);
            }
            for r in &reports {
                println!(
                    "{:<8} {}/slot {}  {}  {}",
                    r.result,
                    r.board,
                    r.slot,
                    r.node,
                    r.image.display()
                );
            }
            Ok(())
        }
        Some(cli::Command::Bmc(cli::BmcCommand::Status { bmc, json })) => {
            let settings = app::BmcSettings {
                board: bmc.board,
                user: bmc.bmc_user,
                password_file: bmc.bmc_password_file,
                insecure: bmc.insecure,
            };
            let all = app::bmc_status(&paths, &settings)?;
            if json {
                return print_json(&all);
            }
            for st in &all {
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
            Ok(())
        }
        Some(cli::Command::Unpack { input, output }) => {
            let (format, size) = app::unpack(&input, &output)?;
            println!("{}: {format:?}, {size} bytes", output.display());
            Ok(())
        }
        Some(cli::Command::Cache(cli::CacheCommand::List { json })) => {
            let l = app::cache_list(&paths, &fetch)?;
            if json {
                return print_json(&l);
            }
            println!("cache: {}", l.root.display());
            for (e, board) in &l.entries {
                println!(
                    "  {:<8} {:<5} {:>10} MB ({:>6} MB on disk)  {}",
                    format!("{:?}", e.kind).to_lowercase(),
                    board.as_deref().unwrap_or("-"),
                    e.apparent / 1_000_000,
                    e.allocated / 1_000_000,
                    e.key
                );
            }
            if l.entries.is_empty() {
                println!("  (empty)");
            }
            Ok(())
        }
        Some(cli::Command::Cache(cli::CacheCommand::Clean { all })) => {
            let removed = app::cache_clean(&paths, &fetch, all)?;
            for p in &removed {
                println!("removed {}", p.display());
            }
            println!(
                "{} entr{} removed",
                removed.len(),
                if removed.len() == 1 { "y" } else { "ies" }
            );
            Ok(())
        }
        Some(cli::Command::Check) => {
            let r = app::check(&paths)?;
            println!(
                "profiles OK: cluster {}, {} node(s): {}",
                r.cluster,
                r.nodes.len(),
                r.nodes.join(", ")
            );
            Ok(())
        }
        Some(cli::Command::Inspect { image, json }) => {
            let i = imgbuild::inspect::inspect(&image).map_err(AppError::Failed)?;
            if json {
                print_json(&i)
            } else {
                print!("{}", imgbuild::inspect::render_text(&i));
                Ok(())
            }
        }
        Some(cli::Command::Render {
            node,
            contents,
            json,
        }) => {
            let files = app::render(&paths, &node)?;
            if json {
                return print_json(&files);
            }
            for f in &files {
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
            Ok(())
        }
    }
}

fn build(paths: &Paths, b: cli::BuildArgs, fetch: FetchSettings) -> Result<(), AppError> {
    let all_compression = imgbuild::output::Compression::from_name(&format!("x.{}", b.format))
        .map(|(_, c)| c)
        .unwrap_or(imgbuild::output::Compression::None);
    let settings = BuildSettings {
        targets: b.targets,
        all: b.all,
        out_dir: b.out_dir,
        all_compression,
        bases: app::parse_bases(&b.base)?,
        fetch,
    };
    let reports = app::build(paths, &settings)?;
    if b.json {
        print_json(&reports)?;
    } else {
        for r in &reports {
            println!("{}", r.output.display());
        }
    }
    Ok(())
}

fn flash_settings(f: cli::FlashArgs, fetch: FetchSettings) -> Result<app::FlashSettings, AppError> {
    Ok(app::FlashSettings {
        bmc: app::BmcSettings {
            board: f.bmc.board,
            user: f.bmc.bmc_user,
            password_file: f.bmc.bmc_password_file,
            insecure: f.bmc.insecure,
        },
        yes: f.yes,
        skip_crc: f.skip_crc,
        out_dir: f.out_dir.clone(),
        build: BuildSettings {
            targets: Vec::new(),
            all: false,
            out_dir: f.out_dir,
            all_compression: imgbuild::output::Compression::None,
            bases: app::parse_bases(&f.base)?,
            fetch,
        },
    })
}
