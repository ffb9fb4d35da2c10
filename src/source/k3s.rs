//! The k3s air-gap assets (binary and image tarball) of a release for one
//! architecture, verified against the release's sha256sum file and cached.

use anyhow::{Context, Result, anyhow};

use super::{Cache, FetchOptions, download};
use crate::config::k3s::{AssetNames, asset_url};
use crate::config::manifest::Arch;
use crate::io::Sha256Digest;
use crate::io::sums::find_digest;

/// The k3s binary and air-gap image tarball of a release in the cache, for
/// one architecture, with where they came from.
#[derive(Debug, Clone)]
pub struct K3sAssets {
    pub binary: std::path::PathBuf,
    pub images: std::path::PathBuf,
    /// The tarball's release asset name (kept in the image).
    pub images_name: String,
    pub binary_url: String,
    pub binary_sha256: String,
    pub images_url: String,
    pub images_sha256: String,
}

/// Makes sure the k3s binary and air-gap images of `version` for `arch` are
/// in the cache; `mirror` is the base URL releases are found under.
pub fn ensure_assets(
    version: &str,
    arch: Arch,
    mirror: &str,
    cache: &Cache,
    opts: &FetchOptions,
) -> Result<K3sAssets> {
    let names = AssetNames::for_arch(arch);
    let sums_url = asset_url(mirror, version, &names.sums);
    let bin_url = asset_url(mirror, version, &names.binary);
    let images_url = asset_url(mirror, version, &names.images);
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
            let list = download::fetch_text(&sums_url, opts.retry)
                .with_context(|| format!("fetching the k3s {version} checksums"))?;
            let find = |name: &str| -> Result<Sha256Digest> {
                find_digest(&list, name).ok_or_else(|| anyhow!("{sums_url}: no line for {name}"))
            };
            let (a, b) = (find(&names.binary)?, find(&names.images)?);
            cache.remember_digest(&bin_url, &a)?;
            cache.remember_digest(&images_url, &b)?;
            (a, b)
        }
    };
    let binary = super::ensure_asset(&bin_url, &digests.0, cache, opts, &format!("k3s {arch}"))?;
    let images = super::ensure_asset(
        &images_url,
        &digests.1,
        cache,
        opts,
        &format!("k3s images {arch}"),
    )?;
    Ok(K3sAssets {
        binary,
        images,
        images_name: names.images,
        binary_url: bin_url,
        binary_sha256: digests.0.to_string(),
        images_url,
        images_sha256: digests.1.to_string(),
    })
}
