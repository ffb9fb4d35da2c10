//! Delivery: putting a finished image on a node. One loop serves every kind
//! of destination: it skips what a resumable run already delivered, asks for
//! confirmation, shows progress, records what is done and stops at the first
//! failure with a summary. A destination (the Turing Pi BMC today) only says
//! what it is and writes the bytes.

pub mod state;
pub mod turing_pi;
pub mod usb;

use std::path::PathBuf;

use crate::io::Sha256Digest;
use crate::io::progress::Progress;
pub use state::DeployState;

/// What a destination is doing, for progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Writing,
    Verifying,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Writing => "writing",
            Phase::Verifying => "verifying",
        }
    }
}

/// Somewhere an image can be written for a node.
pub trait Destination {
    /// Short, for reports: `tp1/slot 2`.
    fn name(&self) -> String;
    /// For the confirmation question: `slot 2 of Turing Pi tp1 (bmc.local)`.
    fn describe(&self) -> String;
    /// What a successful write did, for the log.
    fn finished(&self) -> String {
        format!("flashed {} and powered it on", self.name())
    }
    /// Writes `image` (whose sha256 is `sha256`) and makes the node start from
    /// it; `progress` gets (phase, done, total) as the work goes on.
    fn write(
        &mut self,
        image: &std::path::Path,
        sha256: &Sha256Digest,
        progress: &mut dyn FnMut(Phase, u64, u64),
    ) -> anyhow::Result<()>;
}

/// One image for one node.
pub struct Job {
    pub node: String,
    pub image: PathBuf,
    pub sha256: Sha256Digest,
    pub destination: Box<dyn Destination>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Flashed,
    /// Already delivered with this image by an earlier run.
    Skipped,
    Failed,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(match self {
            Outcome::Flashed => "flashed",
            Outcome::Skipped => "skipped",
            Outcome::Failed => "failed",
        })
    }
}

#[derive(Debug, Clone)]
pub struct Report {
    pub node: String,
    pub destination: String,
    pub image: PathBuf,
    pub sha256: Sha256Digest,
    pub result: Outcome,
    pub error: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum DeliverError {
    /// No terminal to ask on and no `--yes`.
    #[error("{0}: refusing to flash without confirmation; run on a terminal or pass --yes")]
    NoConfirmation(String),
    #[error("not confirmed; nothing was flashed")]
    Declined,
    #[error("{message}\n{summary}; run the same command again to continue from {node}")]
    Failed {
        message: String,
        summary: String,
        node: String,
    },
    #[error(transparent)]
    State(anyhow::Error),
}

/// Asks before erasing anything unless `yes`.
#[derive(Debug, Clone, Copy)]
pub struct Confirm {
    pub yes: bool,
}

impl Confirm {
    pub fn ask(&self, question: &str) -> Result<(), DeliverError> {
        use std::io::{BufRead, IsTerminal, Write};
        if self.yes {
            return Ok(());
        }
        if !std::io::stdin().is_terminal() {
            return Err(DeliverError::NoConfirmation(question.to_string()));
        }
        eprint!("{question} [y/N] ");
        let _ = std::io::stderr().flush();
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line).ok();
        if matches!(line.trim(), "y" | "Y" | "yes") {
            Ok(())
        } else {
            Err(DeliverError::Declined)
        }
    }
}

/// Delivers each job in order, one at a time. With `state`, jobs already
/// delivered with the same image are skipped and each success is recorded.
pub fn deliver_all(
    jobs: Vec<Job>,
    confirm: Confirm,
    mut state: Option<&mut DeployState>,
) -> Result<Vec<Report>, DeliverError> {
    let mut reports = Vec::new();
    for mut job in jobs {
        let mut report = Report {
            node: job.node.clone(),
            destination: job.destination.name(),
            image: job.image.clone(),
            sha256: job.sha256,
            result: Outcome::Flashed,
            error: None,
        };
        if state
            .as_deref()
            .is_some_and(|s| s.is_done(&job.node, &job.sha256))
        {
            report.result = Outcome::Skipped;
            tracing::info!("{}: already flashed with this image; skipping", job.node);
            reports.push(report);
            continue;
        }
        confirm.ask(&format!(
            "Flash {} ({}) onto {}, erasing everything on it?",
            job.node,
            job.image.display(),
            job.destination.describe()
        ))?;
        let mut progress: Option<(Phase, Progress)> = None;
        let result = job
            .destination
            .write(&job.image, &job.sha256, &mut |phase, done, total| {
                if progress.as_ref().is_none_or(|(p, _)| *p != phase) {
                    if let Some((_, p)) = progress.take() {
                        p.finish();
                    }
                    let label = format!("{} {}", job.node, phase.as_str());
                    progress = Some((phase, Progress::new(&label, Some(total))));
                }
                if let Some((_, p)) = progress.as_mut() {
                    p.set_position(done);
                }
            });
        if let Some((_, p)) = progress.take() {
            p.finish();
        }
        match result {
            Ok(()) => {
                tracing::info!("{}: {}", job.node, job.destination.finished());
                if let Some(s) = state.as_deref_mut() {
                    s.record(&job.node, &job.sha256)
                        .map_err(DeliverError::State)?;
                }
                reports.push(report);
            }
            Err(e) => {
                let message = format!("{e:#}");
                report.result = Outcome::Failed;
                report.error = Some(message.clone());
                reports.push(report);
                let summary = reports
                    .iter()
                    .map(|r| format!("{} {}", r.node, r.result))
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(DeliverError::Failed {
                    message,
                    summary,
                    node: job.node,
                });
            }
        }
    }
    Ok(reports)
}
