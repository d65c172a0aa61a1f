//! HTTP clients for the tests.

/// A reqwest client builder, once the process has a crypto provider: in a workspace build
/// reqwest has rustls without one (auth's OAuth calls bring it) and panics when a client
/// is built before anything installed it (`messenger_common::tls`).
pub fn client() -> reqwest::ClientBuilder {
    messenger_common::tls::install_crypto_provider();
    reqwest::Client::builder()
}
