//! The binary's output: `print!`, `println!` and `eprintln!` replaced by
//! versions that end quietly when standard output is closed. Declared before
//! `cli` in main.rs, so the macros apply there too.

/// Writes to standard output. When it was closed early (`imgbuild inspect
/// --json IMG | head`), ends quietly the way other Unix tools do: by the
/// default action of SIGPIPE, with no message and no panic.
pub fn write_stdout(args: std::fmt::Arguments) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let result = out.write_fmt(args).and_then(|()| out.flush());
    if let Err(e) = result {
        // main decides how the process ends (quietly for a closed pipe).
        crate::stdout_failed(e)
    }
}

/// Writes to standard error, ignoring a closed one (nothing else can be told).
pub fn write_stderr(args: std::fmt::Arguments) {
    use std::io::Write;
    let _ = std::io::stderr().lock().write_fmt(args);
}

macro_rules! print {
    ($($arg:tt)*) => { $crate::output::write_stdout(format_args!($($arg)*)) };
}

macro_rules! println {
    () => { $crate::output::write_stdout(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::output::write_stdout(format_args!("{}\n", format_args!($($arg)*))) };
}

macro_rules! eprintln {
    ($($arg:tt)*) => { $crate::output::write_stderr(format_args!("{}\n", format_args!($($arg)*))) };
}
