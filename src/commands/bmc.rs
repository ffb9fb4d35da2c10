//! `imgbuild bmc status`: every selected Turing Pi board's BMC.

use super::{CommandError, Paths, Result, Workspace};
use crate::deliver::turing_pi::{self, BmcSettings, Status};

/// How to reach the BMCs, as the user asked.
#[derive(Debug, Clone)]
pub struct BmcOptions {
    /// Only this board (a name from cluster.turing_pi_boards).
    pub board: Option<String>,
    pub user: String,
    pub password: turing_pi::PasswordSource,
    /// Trust any certificate instead of pinning it.
    pub insecure: bool,
    /// Connect and read timeout of each BMC call.
    pub timeout: std::time::Duration,
}

impl BmcOptions {
    /// Settings for the client; pins live with the other cluster secrets.
    pub(super) fn settings(&self, ws: &Workspace) -> Result<BmcSettings> {
        let pin_dir = if self.insecure {
            None
        } else {
            // Creates the secrets directory (0700) before a pin is written there.
            ws.secrets()?;
            Some(ws.paths.secrets.join("bmc"))
        };
        Ok(BmcSettings {
            user: self.user.clone(),
            password: self.password.clone(),
            pin_dir,
            timeout: self.timeout,
        })
    }
}

/// Status of each selected Turing Pi board's BMC, pinning certificates on first use.
pub fn status(paths: &Paths, options: &BmcOptions) -> Result<Vec<Status>> {
    let ws = Workspace::load(paths)?;
    let boards: Vec<_> = ws
        .profiles
        .cluster
        .turing_pi_boards
        .iter()
        .filter(|b| options.board.as_ref().is_none_or(|n| *n == b.name))
        .collect();
    if boards.is_empty() {
        return Err(CommandError::usage(format!(
            "no Turing Pi board {}in cluster.turing_pi_boards",
            options
                .board
                .as_ref()
                .map(|b| format!("named {b:?} "))
                .unwrap_or_default()
        )));
    }
    let mut out = Vec::new();
    for b in boards {
        let settings = options.settings(&ws)?;
        let mut bmc = turing_pi::connect(&settings, &b.name, &b.bmc)?;
        out.push(
            bmc.status()
                .map_err(|e| e.context(format!("Turing Pi board {}", b.name)))?,
        );
    }
    Ok(out)
}
