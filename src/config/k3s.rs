//! k3s release facts: version numbers and the names of a release's assets.

use std::fmt;

use super::manifest::Arch;

/// Where k3s releases are published; `<mirror>/<version>/<asset>`.
pub const DEFAULT_MIRROR: &str = "https://github.com/k3s-io/k3s/releases/download";

/// A k3s release version, `v<major>.<minor>.<patch>+k3s<n>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Version {
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
    pub k3s: u32,
}

impl Version {
    /// Parses exactly `v1.32.5+k3s1`: nothing before, between or after.
    pub fn parse(s: &str) -> Option<Version> {
        let rest = s.strip_prefix('v')?;
        let (core, k3s) = rest.split_once("+k3s")?;
        let number = |t: &str| -> Option<u32> {
            (!t.is_empty() && t.len() <= 9 && t.bytes().all(|b| b.is_ascii_digit()))
                .then(|| t.parse().ok())
                .flatten()
        };
        let mut parts = core.split('.');
        let v = Version {
            major: number(parts.next()?)?,
            minor: number(parts.next()?)?,
            patch: number(parts.next()?)?,
            k3s: number(k3s)?,
        };
        parts.next().is_none().then_some(v)
    }

    pub fn at_least(&self, major: u32, minor: u32) -> bool {
        (self.major, self.minor) >= (major, minor)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "v{}.{}.{}+k3s{}",
            self.major, self.minor, self.patch, self.k3s
        )
    }
}

/// The names of a release's assets for one architecture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssetNames {
    pub binary: String,
    pub images: String,
    pub sums: String,
}

impl AssetNames {
    pub fn for_arch(arch: Arch) -> AssetNames {
        let a = arch.as_str();
        AssetNames {
            binary: match arch {
                Arch::Amd64 => "k3s".into(),
                other => format!("k3s-{}", other.as_str()),
            },
            images: format!("k3s-airgap-images-{a}.tar.zst"),
            sums: format!("sha256sum-{a}.txt"),
        }
    }
}

/// The URL of `asset` of `version` under `mirror`.
pub fn asset_url(mirror: &str, version: &str, asset: &str) -> String {
    // Release tags contain '+', which must be escaped in a URL path.
    format!(
        "{}/{}/{asset}",
        mirror.trim_end_matches('/'),
        version.replace('+', "%2B")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_and_urls() {
        let v = Version::parse("v1.32.5+k3s1").unwrap();
        assert_eq!((v.major, v.minor, v.patch, v.k3s), (1, 32, 5, 1));
        assert_eq!(v.to_string(), "v1.32.5+k3s1");
        for bad in [
            "1.32.5",
            "v1.32.5",
            "v1.32+k3s1",
            "v1.32.5.1+k3s1",
            "v1.32.5+k3s1$(touch /x)",
            "v1.32.5+k3s1\n[Service]",
            "v1.32.5-rc1+k3s1",
            "v1.32.5+k3s",
            " v1.32.5+k3s1",
        ] {
            assert_eq!(Version::parse(bad), None, "{bad:?}");
        }
        assert_eq!(
            asset_url("https://x/y/", "v1.32.5+k3s1", "k3s-arm64"),
            "https://x/y/v1.32.5%2Bk3s1/k3s-arm64"
        );
        assert_eq!(
            AssetNames::for_arch(Arch::Arm64).images,
            "k3s-airgap-images-arm64.tar.zst"
        );
        assert_eq!(AssetNames::for_arch(Arch::Amd64).binary, "k3s");
        assert_eq!(AssetNames::for_arch(Arch::Armhf).binary, "k3s-armhf");
    }
}
