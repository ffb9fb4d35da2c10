//! The Turing Pi 2 / 2.5 BMC as a delivery destination: one connection
//! routine (password, certificate pin, trust on first use) used by flashing
//! and by `bmc status`, and a slot as a [`Destination`].

mod client;
mod pin;
pub mod response;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};

pub use client::{Bmc, Credentials, DEFAULT_TIMEOUT, FlashOptions, PasswordSource, Status, Trust};
pub use response::FlashState;

use super::{Destination, Phase};
use crate::io::Sha256Digest;

/// How to reach and trust the BMCs.
#[derive(Debug, Clone)]
pub struct BmcSettings {
    pub user: String,
    pub password: PasswordSource,
    /// Where certificate pins live (`<dir>/<board>.sha256`); `None` trusts
    /// any certificate (explicit `--insecure`).
    pub pin_dir: Option<PathBuf>,
    /// Connect and read timeout of each call; the flash gives up after
    /// twice this without progress.
    pub timeout: Duration,
}

/// Logs in to the BMC of board `board` at `host`, pinning its certificate on
/// first use.
pub fn connect(settings: &BmcSettings, board: &str, host: &str) -> Result<Bmc> {
    let trust = match &settings.pin_dir {
        None => Trust::Insecure,
        Some(dir) => Trust::PinFile(dir.join(format!("{board}.sha256"))),
    };
    let creds = Credentials {
        user: settings.user.clone(),
        password: settings.password.password(host)?,
    };
    let bmc = Bmc::connect(host, creds, &trust, settings.timeout)
        .with_context(|| format!("Turing Pi board {board}"))?;
    if bmc.newly_pinned {
        tracing::warn!(
            "{host}: first connection; pinned its certificate sha256 {} (compare it with the BMC's if you can)",
            bmc.fingerprint.as_deref().unwrap_or("?")
        );
    }
    Ok(bmc)
}

/// A module slot (1-4) of a Turing Pi board.
pub struct Slot {
    pub board: String,
    pub host: String,
    pub slot: u8,
    pub settings: BmcSettings,
    pub skip_crc: bool,
}

impl Destination for Slot {
    fn name(&self) -> String {
        format!("{}/slot {}", self.board, self.slot)
    }

    fn describe(&self) -> String {
        format!(
            "slot {} of Turing Pi {} ({})",
            self.slot, self.board, self.host
        )
    }

    fn write(
        &mut self,
        image: &Path,
        sha256: &Sha256Digest,
        progress: &mut dyn FnMut(Phase, u64, u64),
    ) -> Result<()> {
        let mut bmc = connect(&self.settings, &self.board, &self.host)?;
        let opts = FlashOptions {
            skip_crc: self.skip_crc,
            sha256: Some(sha256.to_string()),
        };
        bmc.flash(self.slot, image, &opts, |phase, done, total| {
            progress(phase, done, total)
        })
    }
}
