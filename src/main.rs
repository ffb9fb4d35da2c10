mod cli;

use std::process::ExitCode;

use clap::Parser;
use imgbuild::app::{self, AppError, BuildSettings, Exit, Paths};

fn main() -> ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { Exit::Usage as u8 } else { 0 });
        }
    };
    init_logging(cli.global.verbose, cli.global.quiet);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {:#}", e.inner());
            ExitCode::from(e.exit() as u8)
        }
    }
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
    let paths = Paths::resolve(g.profiles, g.manifests, g.overlays);
    match cli.command {
        None => build(&paths, cli.build),
        Some(cli::Command::Build(b)) => build(&paths, b),
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

fn build(paths: &Paths, b: cli::BuildArgs) -> Result<(), AppError> {
    let settings = BuildSettings {
        targets: b.targets,
        all: b.all,
        out_dir: b.out_dir,
        bases: app::parse_bases(&b.base)?,
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
