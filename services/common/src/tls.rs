//! The process's TLS crypto provider.

/// Makes ring the process's rustls crypto provider (every TLS user here is built on ring).
/// reqwest, built with `rustls-no-provider` for auth's calls to OAuth providers, reads only
/// the process default and panics when a client is built before anything installed one, so
/// every process calls this before it makes an HTTP client. A provider already installed
/// stays.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
