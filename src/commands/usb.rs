//! `imgbuild usb NODE --device PATH [--yes]`: the node's installer ISO
//! (reused from the output directory, built there when missing) written to
//! a USB stick through the delivery loop, after the stick checks of
//! `deliver::usb`.

use std::path::PathBuf;

use anyhow::{Context, anyhow};

use super::build::{BuildSettings, build_targets};
use super::{CommandError, Result, Workspace};
use crate::artifact::{Format, Target};
use crate::deliver::usb::{self, SystemPaths, UsbStick};
use crate::deliver::{Confirm, Job, Report, deliver_all};

#[derive(Debug, Clone)]
pub struct UsbSettings {
    pub device: PathBuf,
    /// A given ISO instead of `<out-dir>/<node>.<board>.iso`.
    pub iso: Option<PathBuf>,
    pub yes: bool,
    pub system: SystemPaths,
    /// How a missing ISO is built (sealed, into `out_dir`).
    pub build: BuildSettings,
}

pub fn usb(ws: &Workspace, node: &str, settings: &UsbSettings) -> Result<Vec<Report>> {
    let n = ws.node(node)?;
    // The device is checked before anything is built: a wrong --device
    // fails in a second, not after a remaster.
    let stick = usb::probe(&settings.device, &settings.system)
        .map_err(|e| CommandError::Usage(anyhow!(e)))?;
    // Mounted, root and held disks are refused before anything is built too
    // (the size once the ISO is known; all checked again right before writing).
    usb::check_free(&stick, 0, &settings.system).map_err(|e| CommandError::Usage(anyhow!(e)))?;
    let iso = match &settings.iso {
        Some(p) => p.clone(),
        None => {
            let t = Target::in_dir(&settings.build.out_dir, &n.name, &n.board, Format::Iso);
            if !t.path.is_file() {
                tracing::info!("{} does not exist; building it", t.path.display());
                build_targets(ws, std::slice::from_ref(&t), &settings.build)?;
            }
            t.path
        }
    };
    // An unsealed installer (a published artifact) is sealed on its way to
    // the stick, into a private directory beside the outputs; the artifact
    // itself is never modified.
    let out_dir = &settings.build.out_dir;
    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let temp = tempfile::Builder::new()
        .prefix(".imgbuild-usb-")
        .tempdir_in(out_dir)
        .with_context(|| format!("creating a directory in {}", out_dir.display()))?;
    let _temp_cleanup = crate::util::cleanup::register_dir(temp.path());
    let mut prov = super::iso::provenance_of(&iso, temp.path())?;
    let digest = crate::config::profile::profile_digest(&ws.profiles.cluster, n);
    if prov.profile_digest != digest {
        if settings.iso.is_some() {
            tracing::warn!(
                "{} was built from other profiles than the current ones of {} (profile digest {} now {})",
                iso.display(),
                n.name,
                prov.profile_digest,
                digest
            );
        } else {
            // A reused installer must be what a build would make now.
            tracing::info!(
                "{} was built from other profiles; rebuilding it",
                iso.display()
            );
            let t = Target::in_dir(&settings.build.out_dir, &n.name, &n.board, Format::Iso);
            build_targets(ws, std::slice::from_ref(&t), &settings.build)?;
            prov = super::iso::provenance_of(&iso, temp.path())?;
        }
    }
    let iso = if prov.unsealed {
        let sealed = temp.path().join(format!("{}.{}.iso", n.name, n.board));
        tracing::info!("{} is unsealed; sealing it for the stick", iso.display());
        super::iso::seal_iso(ws, n, &iso, &prov, &sealed, temp.path())?;
        sealed
    } else {
        iso
    };
    let file = std::fs::File::open(&iso).with_context(|| format!("opening {}", iso.display()))?;
    let need = file
        .metadata()
        .with_context(|| format!("reading {}", iso.display()))?
        .len();
    crate::installer::iso::check_iso9660(&iso).map_err(anyhow::Error::from)?;
    // Building and sealing take a while: probe again, so the confirmation
    // shows the disk as it is now, and refuse one that changed.
    let now = usb::probe(&settings.device, &settings.system)
        .map_err(|e| CommandError::Usage(anyhow!(e)))?;
    if !stick.same_disk(&now) {
        return Err(CommandError::Usage(anyhow!(usb::UsbError::Changed {
            path: settings.device.clone(),
            was: stick.describe(),
            now: now.describe(),
        })));
    }
    let stick = now;
    usb::check_free(&stick, need, &settings.system).map_err(|e| CommandError::Usage(anyhow!(e)))?;
    let sha256 =
        crate::io::sha256_sparse(&file).with_context(|| format!("hashing {}", iso.display()))?;
    let job = Job {
        node: n.name.clone(),
        image: iso,
        sha256,
        destination: Box::new(UsbStick {
            stick,
            system: settings.system.clone(),
        }),
    };
    Ok(deliver_all(vec![job], Confirm { yes: settings.yes }, None)?)
}
