//! Acquisition: download, verify, cache and unpack a board's stock image and
//! the k3s release assets. Never looks inside an image.

pub mod cache;
pub mod chart;
pub mod download;
pub mod follow;
pub mod k3s;
pub mod oci;
mod packed;
pub mod qcow2;
pub mod supplies;
pub mod unpack;
mod xz;

use std::path::PathBuf;

use anyhow::{Context, Result, anyhow, bail};

use crate::config::manifest::Manifest;
use crate::io::Sha256Digest;
pub use cache::Cache;
pub use download::RetryPolicy;

#[derive(Debug, Clone)]
pub struct FetchOptions {
    pub offline: bool,
    pub retry: RetryPolicy,
}

/// File name at the end of a URL.
fn basename(url: &str) -> &str {
    url.trim_end_matches('/').rsplit('/').next().unwrap_or(url)
}

/// The digest the download must have: the pinned one, else from the checksum file.
pub fn expected_digest(
    manifest: &Manifest,
    cache: &Cache,
    opts: &FetchOptions,
) -> Result<Sha256Digest> {
    if let Some(pinned) = &manifest.source.sha256 {
        return Sha256Digest::parse(pinned).ok_or_else(|| {
            anyhow!(
                "manifest {}: source.sha256 is not 64 hex digits",
                manifest.board
            )
        });
    }
    let sums_url = manifest.source.checksums_url.as_deref().ok_or_else(|| {
        anyhow!(
            "manifest {}: needs source.sha256 or source.checksums_url",
            manifest.board
        )
    })?;
    if opts.offline {
        return cache.remembered_digest(&manifest.source.url).ok_or_else(|| {
            anyhow!(
                "--offline: the {} image has no pinned sha256 and its checksum file was never fetched; run `imgbuild fetch {}` once with network access",
                manifest.board,
                manifest.board
            )
        });
    }
    let list = download::fetch_text(sums_url, opts.retry)
        .with_context(|| format!("fetching the checksum file for {}", manifest.board))?;
    let name = basename(&manifest.source.url);
    let digest = crate::io::sums::find_digest(&list, name)
        .ok_or_else(|| anyhow!("{sums_url}: no line for {name}"))?;
    cache.remember_digest(&manifest.source.url, &digest)?;
    Ok(digest)
}

/// Makes sure the board's unpacked stock image is in the cache and returns its path.
///
/// A download is unpacked while it arrives (the unpacker follows the partial
/// file) into a temporary image that becomes the cache entry only when the
/// whole download has the expected sha256; a wrong digest deletes both. A
/// download that has to start over midway (the server cannot resume) is
/// unpacked in a second pass once complete; one resumed from an interrupted
/// run is still unpacked in the same pass (its first part is read from disk).
pub fn ensure_base(manifest: &Manifest, cache: &Cache, opts: &FetchOptions) -> Result<PathBuf> {
    let key = expected_digest(manifest, cache, opts)?;
    let image = cache.image_path(&key);
    if image.is_file() {
        return Ok(image);
    }
    let _lock = cache.lock(&key)?;
    if image.is_file() {
        return Ok(image); // Another run finished it while we waited.
    }
    let download = cache.download_path(&key);
    let max_size = manifest
        .source
        .max_size
        .map_or(unpack::DEFAULT_MAX_SIZE, |s| s.0);
    let temp = cache.temp_in("images", &key)?;
    let _cleanup = crate::util::cleanup::register(temp.path());
    let unpacked = if download.is_file() {
        None
    } else {
        if opts.offline {
            bail!(
                "--offline: the {} stock image ({}) is not in the cache {}; run `imgbuild fetch {}` with network access first",
                manifest.board,
                basename(&manifest.source.url),
                cache.root.display(),
                manifest.board
            );
        }
        let partial = cache.partial_path(&key)?;
        let follow = follow::Growing::open(&partial)
            .with_context(|| format!("opening {}", partial.display()))?;
        tracing::info!("downloading {}", manifest.source.url);
        let (fetched, unpacked) = std::thread::scope(|s| {
            let unpacker = s.spawn(|| unpack::unpack_from(&follow, temp.as_file(), None, max_size));
            let fetched = download::download(
                &manifest.source.url,
                &partial,
                opts.retry,
                &format!("{} download", manifest.board),
                Some(&follow),
            );
            match &fetched {
                Ok(actual) if *actual == key => {
                    if !follow.restarted() {
                        let len = std::fs::metadata(&partial).map_or(0, |m| m.len());
                        follow.complete(len);
                    }
                }
                _ => follow.abandon(),
            }
            let unpacked = unpacker
                .join()
                .unwrap_or_else(|_| Err(std::io::Error::other("the unpacker panicked").into()));
            (fetched, unpacked)
        });
        let actual = fetched.inspect_err(|_| {
            // Keep a partial download to resume, but not an empty file.
            if std::fs::metadata(&partial).is_ok_and(|m| m.len() == 0) {
                let _ = std::fs::remove_file(&partial);
            }
        })?;
        if actual != key {
            let _ = std::fs::remove_file(&partial);
            return Err(download::DownloadError::Mismatch {
                url: manifest.source.url.clone(),
                expected: key,
                actual,
            }
            .into());
        }
        std::fs::create_dir_all(download.parent().unwrap())?;
        std::fs::rename(&partial, &download)
            .with_context(|| format!("moving the download to {}", download.display()))?;
        // Started over midway: what was unpacked along is not this file.
        (!follow.restarted()).then_some(unpacked)
    };
    let unpacked = match unpacked {
        Some(r) => r,
        None => {
            let src = std::fs::File::open(&download)
                .with_context(|| format!("opening {}", download.display()))?;
            temp.as_file().set_len(0)?;
            unpack::unpack(
                &src,
                temp.as_file(),
                &format!("{} unpack", manifest.board),
                max_size,
            )
        }
    };
    let (format, size) = unpacked
        .map_err(|e| match e {
            unpack::UnpackError::TooLarge { .. } => anyhow!(
                "{}: {e}; if the image really is that large, raise source.max_size in the {} manifest",
                download.display(),
                manifest.board
            ),
            e => anyhow!("{}: {e}", download.display()),
        })
        .with_context(|| format!("unpacking the {} stock image", manifest.board))?;
    format
        .check_named(basename(&manifest.source.url))
        .map_err(|e| anyhow!("{}: {e}", download.display()))?;
    cache::commit(temp, &image)?;
    tracing::info!(
        "unpacked {} ({format:?}) to {} ({} MB)",
        manifest.board,
        image.display(),
        size / 1_000_000
    );
    // The raw image is what bakes read; the compressed download is no longer needed.
    std::fs::remove_file(&download).ok();
    Ok(image)
}

/// Makes sure the file at `url` with sha256 `digest` is in the cache (as is,
/// not unpacked) and returns its path.
pub fn ensure_asset(
    url: &str,
    digest: &Sha256Digest,
    cache: &Cache,
    opts: &FetchOptions,
    label: &str,
) -> Result<PathBuf> {
    cache.fill_asset(digest, |partial| -> Result<()> {
        if opts.offline {
            bail!(
                "--offline: {url} is not in the cache {}",
                cache.root.display()
            );
        }
        tracing::info!("downloading {url}");
        let actual = download::download(url, partial, opts.retry, label, None)?;
        if actual != *digest {
            let _ = std::fs::remove_file(partial);
            return Err(download::DownloadError::Mismatch {
                url: url.to_string(),
                expected: *digest,
                actual,
            }
            .into());
        }
        Ok(())
    })
}

/// Makes sure the board's installer ISO (manifest `installer`) is in the
/// cache, verified, and returns its path: kept as downloaded, like k3s assets.
pub fn ensure_installer(
    manifest: &Manifest,
    cache: &Cache,
    opts: &FetchOptions,
) -> Result<PathBuf> {
    let installer = manifest.installer.as_ref().ok_or_else(|| {
        anyhow!(
            "board {} has no `installer` in its firmware manifest ({}): .iso targets need the vendor installer ISO's url and sha256",
            manifest.board,
            manifest.origin
        )
    })?;
    let digest = Sha256Digest::parse(&installer.sha256).ok_or_else(|| {
        anyhow!(
            "manifest {}: installer.sha256 is not 64 hex digits",
            manifest.board
        )
    })?;
    ensure_asset(
        &installer.url,
        &digest,
        cache,
        opts,
        &format!("{} installer download", manifest.board),
    )
}
