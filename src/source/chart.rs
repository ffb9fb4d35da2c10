//! Helm chart archives for `cluster.bootstrap`: fetched once, verified
//! against the pinned sha256 and kept in the digest-keyed cache like any
//! other asset (a mismatch is refused and nothing is cached).

use std::path::PathBuf;

use anyhow::{Result, anyhow};

use super::{Cache, FetchOptions};
use crate::config::bootstrap::Chart;
use crate::io::Sha256Digest;

/// A chart archive in the cache, with where it came from.
#[derive(Debug, Clone)]
pub struct FetchedChart {
    pub chart: Chart,
    pub url: String,
    pub sha256: Sha256Digest,
    pub path: PathBuf,
}

pub fn ensure_chart(chart: &Chart, cache: &Cache, opts: &FetchOptions) -> Result<FetchedChart> {
    let digest = Sha256Digest::parse(&chart.sha256).ok_or_else(|| {
        anyhow!(
            "chart {}: sha256 {:?} is not 64 hex digits",
            chart.name,
            chart.sha256
        )
    })?;
    let url = chart.archive_url();
    // Named here: the generic message would give the URL alone.
    if opts.offline && !cache.asset_path(&digest).is_file() {
        return Err(anyhow!(
            "--offline: chart {} ({} {}, {url}) is not in the cache {}; run `imgbuild fetch` for the cluster-init server's board (or `imgbuild fetch --all`) with network access first",
            chart.name,
            chart.chart,
            chart.version,
            cache.root.display()
        ));
    }
    let path = super::ensure_asset(&url, &digest, cache, opts, &format!("chart {}", chart.name))
        .map_err(|e| {
            anyhow!(
                "chart {} ({} {}): {e:#}",
                chart.name,
                chart.chart,
                chart.version
            )
        })?;
    Ok(FetchedChart {
        chart: chart.clone(),
        url,
        sha256: digest,
        path,
    })
}
