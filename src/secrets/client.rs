//! Short-lived client certificates for the Kubernetes API, minted offline from
//! the cluster's client CA. The API server accepts any certificate that CA
//! signed and takes the user from its CN and the group from its O, as k3s does
//! for its own admin (CN=system:admin, O=system:masters). Nothing here is
//! written to disk: the caller decides where (if anywhere) a key goes.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};

use super::Secrets;

/// The admin identity `imgbuild kubeconfig` mints: its own name, so audit logs
/// tell it from k3s's `system:admin`, in k3s's admin group.
pub const ADMIN_USER: &str = "imgbuild-admin";
pub const ADMIN_GROUP: &str = "system:masters";
/// The least-privilege user `wait` and `status` use; the cluster-init server's
/// baked RBAC manifest lets it only get, list and watch nodes.
pub const NODE_READER_USER: &str = "imgbuild:node-reader";

/// Allowance for clocks that disagree: the certificate is valid from a little
/// before now, so a server whose clock lags slightly still accepts it.
const CLOCK_SKEW: Duration = Duration::from_secs(300);

/// A client certificate and its private key (PEM). `Debug` never shows the key.
#[derive(Clone)]
pub struct ClientCert {
    pub cert_pem: String,
    pub key_pem: String,
    /// Unix seconds.
    pub not_before: u64,
    pub not_after: u64,
}

impl std::fmt::Debug for ClientCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ClientCert {{ not_before: {}, not_after: {}, .. }}",
            self.not_before, self.not_after
        )
    }
}

/// (not before, not after) of a PEM certificate, in Unix seconds.
pub fn validity_of(pem: &str) -> Result<(u64, u64)> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|e| anyhow!("not a PEM certificate: {e}"))?;
    let cert = p
        .parse_x509()
        .map_err(|e| anyhow!("not an X.509 certificate: {e}"))?;
    let v = cert.validity();
    Ok((
        v.not_before.timestamp().max(0) as u64,
        v.not_after.timestamp().max(0) as u64,
    ))
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn offset(secs: u64) -> Result<time::OffsetDateTime> {
    time::OffsetDateTime::from_unix_timestamp(secs as i64)
        .map_err(|e| anyhow!("time {secs} out of range: {e}"))
}

impl Secrets {
    /// A file of the existing CA set (`server-ca.crt`, ...), never created:
    /// minting credentials for a cluster whose CA does not exist yet is a mistake.
    pub fn existing_tls(&self, name: &str) -> Result<String> {
        let Some(dir) = self.dir() else {
            bail!("no secrets directory");
        };
        let path = dir.join("cluster/tls").join(name);
        match std::fs::read_to_string(&path) {
            Ok(s) => Ok(s),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
                "{}: no cluster CA yet; it is created by the first build (build the cluster-init server's image first), or --secrets names another directory",
                path.display()
            ),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// A client certificate for `user` (CN) in `group` (O), signed by the
    /// cluster's client CA, valid for `validity` from `now` (and a few minutes
    /// before, for clock skew). Refuses a validity beyond the CA's own.
    pub fn mint_client(
        &self,
        user: &str,
        group: Option<&str>,
        validity: Duration,
        now: SystemTime,
    ) -> Result<ClientCert> {
        use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, KeyPair, KeyUsagePurpose};
        if validity.is_zero() {
            bail!("a certificate validity of 0 is useless; give a duration such as 1h or 7d");
        }
        let ca_pem = self.existing_tls("client-ca.crt")?;
        let ca_key = KeyPair::from_pem(&self.existing_tls("client-ca.key")?)
            .map_err(|e| anyhow!("cluster/tls/client-ca.key: not a private key: {e}"))?;
        let (ca_from, ca_until) = validity_of(&ca_pem).context("cluster/tls/client-ca.crt")?;
        let now_s = unix(now);
        let not_before = now_s.saturating_sub(CLOCK_SKEW.as_secs()).max(ca_from);
        let not_after = now_s.saturating_add(validity.as_secs());
        if not_after > ca_until {
            bail!(
                "a validity of {} would outlast the cluster's client CA, which expires at {} (Unix time {ca_until}); ask for less",
                crate::util::duration::format_duration(validity),
                rfc3339(ca_until)
            );
        }
        let issuer = rcgen::Issuer::from_ca_cert_pem(&ca_pem, ca_key)
            .map_err(|e| anyhow!("cluster/tls/client-ca.crt: {e}"))?;
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, user);
        if let Some(g) = group {
            params.distinguished_name.push(DnType::OrganizationName, g);
        }
        params.not_before = offset(not_before)?;
        params.not_after = offset(not_after)?;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.serial_number = Some(random_serial()?);
        let cert = params.signed_by(&key, &issuer)?;
        Ok(ClientCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            not_before,
            not_after,
        })
    }
}

/// 16 random bytes, positive as DER integers must be.
fn random_serial() -> Result<rcgen::SerialNumber> {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .map_err(|_| anyhow!("the system random number generator failed"))?;
    b[0] &= 0x7f;
    b[0] |= 0x01;
    Ok(rcgen::SerialNumber::from_slice(&b))
}

pub use crate::util::rfc3339;

impl Secrets {
    /// Whether `cert_pem` was signed by the cluster's current client CA.
    pub fn issued_by_client_ca(&self, cert_pem: &str) -> bool {
        let Ok(ca_pem) = self.existing_tls("client-ca.crt") else {
            return false;
        };
        let parse = |pem: &str| {
            x509_parser::pem::parse_x509_pem(pem.as_bytes())
                .ok()
                .map(|(_, p)| p)
        };
        let (Some(ca), Some(leaf)) = (parse(&ca_pem), parse(cert_pem)) else {
            return false;
        };
        let (Ok(ca), Ok(leaf)) = (ca.parse_x509(), leaf.parse_x509()) else {
            return false;
        };
        leaf.issuer() == ca.subject() && leaf.verify_signature(Some(ca.public_key())).is_ok()
    }
}
