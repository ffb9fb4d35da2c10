//! One crypto provider for the whole binary: rustls with ring.

/// Installs ring as rustls' process-wide provider (idempotent).
pub fn install_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
