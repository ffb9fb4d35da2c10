//! Container image references for air-gapped nodes (`cluster.images`, a
//! node's `images`). Every reference must be pinned by digest
//! (`name[:tag]@sha256:<hex>`): a tag alone is refused, because a tag can
//! move and an image baked from it could not be rebuilt bit for bit or
//! checked against the provenance.

use crate::io::Sha256Digest;

/// Docker Hub's registry host, for references that name no registry.
pub const DOCKER_HUB: &str = "registry-1.docker.io";

/// A parsed, digest-pinned reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// As written in the profile (what pods refer to).
    pub original: String,
    /// Registry host (and port).
    pub registry: String,
    /// Repository path in the registry (`library/` added for Docker Hub).
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Sha256Digest,
}

/// A registry host as a reference names it: a DNS name (labels of letters,
/// digits and '-'), an IPv4 address or a bracketed IPv6 one, and an
/// optional port.
fn host_ok(registry: &str) -> bool {
    let host = match registry.rsplit_once(':') {
        Some((h, port))
            if !port.is_empty() && port.len() <= 5 && port.bytes().all(|b| b.is_ascii_digit()) =>
        {
            h
        }
        _ => registry,
    };
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return v6.parse::<std::net::Ipv6Addr>().is_ok();
    }
    !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

impl ImageRef {
    pub fn parse(s: &str) -> Result<ImageRef, String> {
        let shown = crate::config::read::sanitize_field(s);
        let (name, digest) = match s.split_once('@') {
            Some((n, d)) => (n, d),
            None => {
                return Err(format!(
                    "{shown:?} has no digest: pin it as name:tag@sha256:<64 hex digits> (`skopeo inspect docker://{shown}` or `crane digest {shown}` prints it); a tag alone can move, so imgbuild refuses it"
                ));
            }
        };
        let digest = digest
            .strip_prefix("sha256:")
            .and_then(Sha256Digest::parse)
            .ok_or_else(|| {
                format!("{shown:?}: the digest must be sha256: followed by 64 hex digits")
            })?;
        // A tag follows the last ':' after the last '/' (a ':' before it is a port).
        let slash = name.rfind('/').map_or(0, |i| i + 1);
        let (path, tag) = match name[slash..].rfind(':') {
            Some(i) => (&name[..slash + i], Some(name[slash + i + 1..].to_string())),
            None => (name, None),
        };
        let (registry, repository) = match path.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_string(), rest.to_string())
            }
            _ if path.contains('/') => (DOCKER_HUB.to_string(), path.to_string()),
            _ => (DOCKER_HUB.to_string(), format!("library/{path}")),
        };
        let component_ok = |c: &str| {
            !c.is_empty()
                && c.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
                && c.as_bytes()[0].is_ascii_alphanumeric()
        };
        if !repository.split('/').all(component_ok) || repository.len() > 255 {
            return Err(format!(
                "{shown:?}: the repository name may hold only lower-case letters, digits and . _ - between slashes"
            ));
        }
        if !host_ok(&registry) {
            return Err(format!("{shown:?}: {registry:?} is not a registry host"));
        }
        if let Some(t) = &tag {
            let ok = !t.is_empty()
                && t.len() <= 128
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
            if !ok {
                return Err(format!("{shown:?}: {t:?} is not a tag"));
            }
        }
        Ok(ImageRef {
            original: s.to_string(),
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// Loopback registries are reached over plain HTTP, as containerd and
    /// Docker do by default; every other registry over HTTPS.
    pub fn base_url(&self) -> String {
        let host = self
            .registry
            .rsplit_once(':')
            .filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()))
            .map_or(self.registry.as_str(), |(h, _)| h);
        let loopback = host == "localhost" || host.starts_with("127.") || host == "[::1]";
        let scheme = if loopback { "http" } else { "https" };
        format!("{scheme}://{}", self.registry)
    }

    pub fn registry_name(&self) -> &str {
        if self.registry == DOCKER_HUB {
            "docker.io"
        } else {
            &self.registry
        }
    }

    /// The full reference with Docker Hub's implicit parts spelt out.
    pub fn containerd_name(&self) -> String {
        let tag = self
            .tag
            .as_ref()
            .map(|t| format!(":{t}"))
            .unwrap_or_default();
        format!(
            "{}/{}{tag}@sha256:{}",
            self.registry_name(),
            self.repository,
            self.digest
        )
    }

    /// The name an imported archive stores the image under: the tag when
    /// there is one (containerd also indexes it by its digest), else the
    /// digest reference.
    pub fn stored_name(&self) -> String {
        match &self.tag {
            Some(t) => format!("{}/{}:{t}", self.registry_name(), self.repository),
            None => format!(
                "{}/{}@sha256:{}",
                self.registry_name(),
                self.repository,
                self.digest
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references() {
        let d = "a".repeat(64);
        let r = ImageRef::parse(&format!("nginx:1.27@sha256:{d}")).unwrap();
        assert_eq!(
            (r.registry.as_str(), r.repository.as_str(), r.tag.as_deref()),
            (DOCKER_HUB, "library/nginx", Some("1.27"))
        );
        assert_eq!(
            r.containerd_name(),
            format!("docker.io/library/nginx:1.27@sha256:{d}")
        );
        let r = ImageRef::parse(&format!("127.0.0.1:5000/team/app@sha256:{d}")).unwrap();
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.base_url(), "http://127.0.0.1:5000");
        assert_eq!(r.tag, None);
        let r = ImageRef::parse(&format!("ghcr.io/kube-vip/kube-vip:v1.2.1@sha256:{d}")).unwrap();
        assert_eq!(r.base_url(), "https://ghcr.io");
        assert!(
            ImageRef::parse("nginx:1.27")
                .unwrap_err()
                .contains("has no digest")
        );
        assert!(ImageRef::parse("nginx@sha256:abc").is_err());
        assert!(ImageRef::parse(&format!("Nginx@sha256:{d}")).is_err());
    }
}
