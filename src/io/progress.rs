//! Progress for long work: an indicatif bar on a terminal, plain periodic log
//! lines otherwise (CI logs stay line-oriented).

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

static PLAIN: AtomicBool = AtomicBool::new(false);

/// Plain log lines even on a terminal (set once from the settings, e.g. in CI).
pub fn set_plain(plain: bool) {
    PLAIN.store(plain, Ordering::Relaxed);
}

pub struct Progress {
    bar: Option<ProgressBar>,
    label: String,
    total: Option<u64>,
    done: u64,
    started: Instant,
    last_line: Instant,
}

impl Progress {
    /// `total` in bytes when known.
    pub fn new(label: &str, total: Option<u64>) -> Self {
        let bar = (std::io::stderr().is_terminal() && !PLAIN.load(Ordering::Relaxed)).then(|| {
            let bar = match total {
                Some(t) => ProgressBar::new(t),
                None => ProgressBar::new_spinner(),
            };
            let style = if total.is_some() {
                "{msg:>12} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}"
            } else {
                "{msg:>12} {spinner} {bytes} {bytes_per_sec}"
            };
            bar.set_style(
                ProgressStyle::with_template(style)
                    .unwrap()
                    .progress_chars("=> "),
            );
            bar.set_message(label.to_string());
            bar
        });
        Progress {
            bar,
            label: label.to_string(),
            total,
            done: 0,
            started: Instant::now(),
            last_line: Instant::now(),
        }
    }

    pub fn set_position(&mut self, pos: u64) {
        self.done = pos;
        self.tick();
    }

    pub fn inc(&mut self, n: u64) {
        self.done += n;
        self.tick();
    }

    fn tick(&mut self) {
        if let Some(bar) = &self.bar {
            bar.set_position(self.done);
        } else if self.last_line.elapsed() >= Duration::from_secs(10) {
            self.last_line = Instant::now();
            tracing::info!("{}", self.line());
        }
    }

    fn line(&self) -> String {
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let rate = self.done as f64 / secs / 1e6;
        match self.total {
            Some(t) if t > 0 => format!(
                "{}: {} of {} MB ({:.0}%), {rate:.1} MB/s",
                self.label,
                self.done / 1_000_000,
                t / 1_000_000,
                self.done as f64 * 100.0 / t as f64
            ),
            _ => format!(
                "{}: {} MB, {rate:.1} MB/s",
                self.label,
                self.done / 1_000_000
            ),
        }
    }

    pub fn finish(self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        tracing::info!(
            "{} done: {} MB in {:.1} s",
            self.label,
            self.done / 1_000_000,
            self.started.elapsed().as_secs_f64()
        );
    }
}
