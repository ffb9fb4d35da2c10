//! k3s releases: version arithmetic and the air-gap assets (binary and image
//! tarball) for an architecture, verified against the release's sha256sum file.

use std::path::PathBuf;

use anyhow::{Context, Result, anyhow};

use crate::fetch::{self, Cache, FetchOptions};
use crate::io::Sha256Digest;

pub const DEFAULT_MIRROR: &str = "https://github.com/k3s-io/k3s/releases/download";

/// `v1.32.5+k3s1` -> (1, 32, 5).
pub fn parse_version(v: &str) -> Option<(u32, u32, u32)> {
    let core = v.strip_prefix('v')?.split('+').next()?;
    let mut it = core.split('.').map(|n| n.parse::<u32>().ok());
    Some((it.next()??, it.next()??, it.next()??))
}

/// Release asset names for a Debian architecture: (binary, images, sums).
pub fn asset_names(arch: &str) -> Result<(String, String, String)> {
    let bin = match arch {
        "amd64" => "k3s".to_string(),
        "arm64" => "k3s-arm64".to_string(),
        "armhf" => "k3s-armhf".to_string(),
        other => return Err(anyhow!("k3s publishes no binary for architecture {other}")),
    };
    Ok((
        bin,
        format!("k3s-airgap-images-{arch}.tar.zst"),
        format!("sha256sum-{arch}.txt"),
    ))
}

/// The release base URL: `IMGBUILD_K3S_MIRROR`, else the profile's `k3s.mirror`, else GitHub.
pub fn mirror(profile: Option<&str>) -> String {
    std::env::var("IMGBUILD_K3S_MIRROR")
        .ok()
        .filter(|v| !v.is_empty())
        .or_else(|| profile.map(str::to_string))
        .unwrap_or_else(|| DEFAULT_MIRROR.to_string())
        .trim_end_matches('/')
        .to_string()
}

fn asset_url(mirror: &str, version: &str, asset: &str) -> String {
    // Release tags contain '+', which must be escaped in a URL path.
    format!("{mirror}/{}/{asset}", version.replace('+', "%2B"))
}

#[derive(Debug, Clone)]
pub struct Assets {
    pub binary: PathBuf,
    pub images: PathBuf,
    pub images_name: String,
}

/// Makes sure the k3s binary and air-gap images for `arch` are in the cache.
pub fn ensure_assets(
    version: &str,
    arch: &str,
    mirror: &str,
    cache: &Cache,
    opts: &FetchOptions,
) -> Result<Assets> {
    let (bin, images, sums) = asset_names(arch)?;
    let sums_url = asset_url(mirror, version, &sums);
    let bin_url = asset_url(mirror, version, &bin);
    let images_url = asset_url(mirror, version, &images);
    let digests = match (
        cache.remembered_digest(&bin_url),
        cache.remembered_digest(&images_url),
    ) {
        (Some(a), Some(b)) => (a, b),
        _ if opts.offline => {
            return Err(anyhow!(
                "--offline: k3s {version} for {arch} is not in the cache; run a build once with network access (or set IMGBUILD_K3S_MIRROR to a local mirror)"
            ));
        }
        _ => {
            let list = fetch::download::fetch_text(&sums_url, opts.retry)
                .with_context(|| format!("fetching the k3s {version} checksums"))?;
            let find = |name: &str| -> Result<Sha256Digest> {
                fetch::download::find_digest(&list, name)
                    .ok_or_else(|| anyhow!("{sums_url}: no line for {name}"))
            };
            let (a, b) = (find(&bin)?, find(&images)?);
            cache.remember_digest(&bin_url, &a)?;
            cache.remember_digest(&images_url, &b)?;
            (a, b)
        }
    };
    let binary = fetch::ensure_asset(&bin_url, &digests.0, cache, opts, &format!("k3s {arch}"))?;
    let images_path = fetch::ensure_asset(
        &images_url,
        &digests.1,
        cache,
        opts,
        &format!("k3s images {arch}"),
    )?;
    Ok(Assets {
        binary,
        images: images_path,
        images_name: images,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_and_urls() {
        assert_eq!(parse_version("v1.32.5+k3s1"), Some((1, 32, 5)));
        assert_eq!(parse_version("1.32.5"), None);
        assert_eq!(
            asset_url("https://x/y", "v1.32.5+k3s1", "k3s-arm64"),
            "https://x/y/v1.32.5%2Bk3s1/k3s-arm64"
        );
        assert_eq!(
            asset_names("arm64").unwrap().1,
            "k3s-airgap-images-arm64.tar.zst"
        );
    }
}
