// Output helpers first: the macros below replace std's `print!`,
// `println!` and `eprintln!` in this file and in `cli`, which is declared
// after them.

/// Writes to standard output. When it was closed early (`imgbuild inspect
/// --json IMG | head`), ends quietly the way other Unix tools do: by the
/// default action of SIGPIPE, with no message and no panic.
fn write_stdout(args: std::fmt::Arguments) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let result = out.write_fmt(args).and_then(|()| out.flush());
    match result {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => stdout_closed(),
        Err(e) => {
            write_stderr(format_args!("error: writing to standard output: {e}\n"));
            std::process::exit(imgbuild::commands::Exit::Failure as i32);
        }
    }
}

fn stdout_closed() -> ! {
    imgbuild::util::cleanup::remove_all();
    // SAFETY: restoring the default disposition and raising a signal are
    // plain system calls; the default action ends the process.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        libc::raise(libc::SIGPIPE);
    }
    std::process::exit(128 + libc::SIGPIPE)
}

/// Writes to standard error, ignoring a closed one (nothing else can be told).
fn write_stderr(args: std::fmt::Arguments) {
    use std::io::Write;
    let _ = std::io::stderr().lock().write_fmt(args);
}

macro_rules! print {
    ($($arg:tt)*) => { $crate::write_stdout(format_args!($($arg)*)) };
}

macro_rules! println {
    () => { $crate::write_stdout(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::write_stdout(format_args!("{}\n", format_args!($($arg)*))) };
}

macro_rules! eprintln {
    ($($arg:tt)*) => { $crate::write_stderr(format_args!("{}\n", format_args!($($arg)*))) };
}

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
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            cli::report::error(&e);
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
            imgbuild::util::cleanup::run_interrupt_hook();
            let n = imgbuild::util::cleanup::remove_all();
            eprintln!("interrupted (signal {sig}); removed {n} unfinished file(s)");
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
