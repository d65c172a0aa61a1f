//! Kubernetes operator for the messenger platform: the `MessengerApp` custom resource, pure
//! builders of its children, pure status computation, and the controller that applies them.

pub mod admin;
pub mod builders;
pub mod component;
pub mod controller;
pub mod crd;
pub mod error;
#[doc(hidden)]
pub mod fake_api;
pub mod httproute;
pub mod leader;
pub mod metrics;
pub mod status;
pub mod validate;

pub use error::{Error, Result};

use kube::CustomResourceExt;

/// The CRD as YAML, exactly what `messenger-operator crd` prints and `crds/` holds.
pub fn crd_yaml() -> Result<String> {
    Ok(serde_yaml::to_string(&crd::MessengerApp::crd())?)
}

#[cfg(test)]
mod tests {
    /// `crds/` is what users install; it must be exactly what this build generates.
    #[test]
    fn committed_crd_matches_generated() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../crds/messengerapps.messenger.dev.yaml"
        );
        let committed = std::fs::read_to_string(path).unwrap_or_default();
        let generated = super::crd_yaml().unwrap();
        assert!(
            committed == generated,
            "{path} is stale; regenerate it with `cargo run -p messenger-operator -- crd > crds/messengerapps.messenger.dev.yaml`"
        );
    }
}
