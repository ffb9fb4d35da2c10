// The output macros first: they replace std's printing macros in `cli`.
#[macro_use]
mod output;
mod cli;

use std::process::ExitCode;

use clap::Parser;

use cli::settings::Environment;

fn main() -> ExitCode {
    let parsed = match cli::args::Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            let usage = imgbuild::commands::Exit::Usage as u8;
            return ExitCode::from(if e.use_stderr() { usage } else { 0 });
        }
    };
    // First, before any thread exists: it also removes the BMC password from
    // the environment (see `Environment::read`).
    let env = Environment::read();
    init_logging(
        parsed.global.verbose,
        parsed.global.quiet,
        env.log.as_deref(),
    );
    imgbuild::io::progress::set_plain(env.ci);
    watch_signals();
    match cli::run(parsed, &env) {
        Ok(cli::Outcome::Success) => ExitCode::SUCCESS,
        // Like diff(1): 1 means "different", not a failure worth a message.
        Ok(cli::Outcome::Differ) => ExitCode::from(imgbuild::commands::Exit::Failure as u8),
        Err(e) => {
            cli::report::error(&e);
            ExitCode::from(e.exit() as u8)
        }
    }
}

/// Standard output failed mid-command. When it was closed early
/// (`imgbuild inspect --json IMG | head`), ends quietly the way other Unix
/// tools do: by the default action of SIGPIPE, with no message and no panic,
/// after removing unfinished files; any other error is said, with exit
/// status 1.
fn stdout_failed(e: std::io::Error) -> ! {
    if e.kind() != std::io::ErrorKind::BrokenPipe {
        output::write_stderr(format_args!("error: writing to standard output: {e}\n"));
        std::process::exit(imgbuild::commands::Exit::Failure as i32);
    }
    imgbuild::util::cleanup::remove_all();
    // SAFETY: restoring the default disposition and raising a signal are
    // plain system calls; the default action ends the process.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        libc::raise(libc::SIGPIPE);
    }
    std::process::exit(128 + libc::SIGPIPE)
}

/// On Ctrl-C or SIGTERM: delete the half-written files, then exit 130.
fn watch_signals() {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM]) else {
        return;
    };
    std::thread::spawn(move || {
        if let Some(sig) = signals.forever().next() {
            imgbuild::util::cleanup::run_interrupt_hook();
            let n = imgbuild::util::cleanup::remove_all();
            eprintln!("interrupted (signal {sig}); removed {n} unfinished file(s)");
            for note in imgbuild::util::cleanup::notes() {
                eprintln!("{note}");
            }
            std::process::exit(130);
        }
    });
}

fn init_logging(verbose: u8, quiet: bool, filter: Option<&str>) {
    let level = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "info",
        (false, 1) => "debug",
        _ => "trace",
    };
    let filter = filter
        .and_then(|f| tracing_subscriber::EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| tracing_subscriber::EnvFilter::new(format!("imgbuild={level}")));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .without_time()
        .init();
}
