//! Checks of secrets read back from the secrets directory, before they are
//! baked: a token or password with a control character, or a CA key that
//! does not parse, used to give an image that failed at boot. Messages name
//! the file and how to make a good one; never the value.

use std::path::Path;

use anyhow::{Result, bail};

/// How to replace a token or password that fails its check.
const NEW_TOKEN: &str = "remove the file and run `imgbuild secrets --generate` to make a new one \
    (nodes already flashed with the old one must then be flashed again)";
const NEW_NODE_PASSWORD: &str = "remove the file and run `imgbuild secrets --generate` to make a \
    new one (if the node already joined the cluster, `kubectl delete node` it first: k3s refuses \
    a known node with a new password)";

/// Token and password characters: what k3s's generated ones and base64 use,
/// nothing that YAML, a shell or k3s's `K10<hash>::server:<password>` form
/// would read differently.
fn token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || "-._~+/=".contains(c)
}

/// Why `value` is not a usable token or password, if it is not.
fn token_problem(value: &str) -> Option<String> {
    let n = value.chars().count();
    if !(16..=256).contains(&n) {
        return Some(format!("it is {n} characters long"));
    }
    let (at, c) = value.chars().enumerate().find(|(_, c)| !token_char(*c))?;
    let what = if c.is_control() {
        "a control character"
    } else if c.is_whitespace() {
        "a space"
    } else {
        "another character"
    };
    Some(format!("it holds {what} at position {}", at + 1))
}

/// A join token (`cluster/token`, `cluster/agent-token`) as read from `path`.
pub(super) fn token(path: &Path, value: &str) -> Result<()> {
    check_token(path, value, "a k3s join token", NEW_TOKEN)
}

/// A node password (`nodes/<node>/node-password`) as read from `path`.
pub(super) fn node_password(path: &Path, value: &str) -> Result<()> {
    check_token(path, value, "a k3s node password", NEW_NODE_PASSWORD)
}

fn check_token(path: &Path, value: &str, what: &str, fix: &str) -> Result<()> {
    if let Some(why) = token_problem(value) {
        bail!(
            "{}: not {what}: it must be 16 to 256 letters, digits or - . _ ~ + / = (imgbuild makes 32 hex digits), and {why}; {fix}",
            path.display()
        );
    }
    Ok(())
}

/// A PKCS#8 PEM private key, as rcgen (and so the client CA's minting) reads it.
fn private_key(path: &Path, pem: &str, fix: &str) -> Result<rcgen::KeyPair> {
    rcgen::KeyPair::from_pem(pem).map_err(|_| {
        let hint = if pem.contains("BEGIN EC PRIVATE KEY") || pem.contains("BEGIN RSA PRIVATE KEY")
        {
            " (it is in the older SEC1/PKCS#1 form: convert it with `openssl pkcs8 -topk8 -nocrypt -in FILE`)"
        } else {
            ""
        };
        anyhow::anyhow!(
            "{}: not a PEM private key (PKCS#8, BEGIN PRIVATE KEY){hint}; {fix}",
            path.display()
        )
    })
}

/// The k3s CA set read from `tls` (name relative to it, contents): every
/// certificate a PEM CA certificate, every key a PEM private key, and each
/// CA's key the one its certificate was issued for. `fix` says how to get a
/// good set.
pub(super) fn ca_set(tls: &Path, set: &[(String, String)], fix: &str) -> Result<()> {
    let get = |name: &str| set.iter().find(|(n, _)| n == name).map(|(_, v)| v);
    for (name, _) in super::CA_FILES {
        let (crt_name, key_name) = (format!("{name}.crt"), format!("{name}.key"));
        let (Some(crt), Some(key)) = (get(&crt_name), get(&key_name)) else {
            continue;
        };
        let (crt_path, key_path) = (tls.join(&crt_name), tls.join(&key_name));
        let (_, pem) = x509_parser::pem::parse_x509_pem(crt.as_bytes())
            .map_err(|_| anyhow::anyhow!("{}: not a PEM certificate; {fix}", crt_path.display()))?;
        let cert = pem.parse_x509().map_err(|_| {
            anyhow::anyhow!("{}: not an X.509 certificate; {fix}", crt_path.display())
        })?;
        if !cert.is_ca() {
            bail!("{}: not a CA certificate; {fix}", crt_path.display());
        }
        let pair = private_key(&key_path, key, fix)?;
        if pair.public_key_raw() != cert.public_key().subject_public_key.data.as_ref() {
            bail!(
                "{}: not the key of {} (the two belong to different CAs); {fix}",
                key_path.display(),
                crt_path.display()
            );
        }
    }
    if let Some(key) = get(super::SERVICE_KEY) {
        private_key(&tls.join(super::SERVICE_KEY), key, fix)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens() {
        assert!(token_problem(&"ab".repeat(16)).is_none());
        assert!(token_problem("K10abc+/=_-.~xyz0123").is_none());
        assert_eq!(
            token_problem(&format!("{}\u{7}", "a".repeat(20))).unwrap(),
            "it holds a control character at position 21"
        );
        assert_eq!(token_problem("short").unwrap(), "it is 5 characters long");
        assert!(
            token_problem(&format!("{} b", "a".repeat(20)))
                .unwrap()
                .contains("a space")
        );
        assert!(token_problem(&format!("{}:b", "a".repeat(20))).is_some());
    }
}
