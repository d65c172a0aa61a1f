//! Logging: one `tracing` subscriber per process, filtered by `RUST_LOG` (default `info`),
//! written as human-readable text or JSON lines ([`LogFormat`]).

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber. Calling it again (as tests do) keeps the first one.
pub fn init(service_name: &str, format: LogFormat) {
    init_with_default(service_name, format, "info");
}

/// [`init`] with another filter when `RUST_LOG` is unset (`messenger dev` keeps its
/// terminal for its own messages: `warn`).
pub fn init_with_default(service_name: &str, format: LogFormat, default_filter: &str) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    let installed = match format {
        LogFormat::Text => builder.try_init().is_ok(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init()
            .is_ok(),
    };
    if installed {
        tracing::info!(
            service = service_name,
            version = env!("CARGO_PKG_VERSION"),
            "starting"
        );
    }
}
