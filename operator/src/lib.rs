//! Kubernetes operator for the messenger platform: the `MessengerApp` custom resource, pure
//! builders of its children, pure status computation, and the controller that applies them.

pub mod admin;
pub mod analysis;
pub mod builders;
pub mod cli;
pub mod component;
pub mod controller;
pub mod crd;
pub mod error;
#[doc(hidden)]
pub mod fake_api;
pub mod httproute;
pub mod leader;
pub mod metrics;
pub mod prometheus;
pub mod rollout;
pub mod scrape;
pub mod simulate;
pub mod status;
pub mod validate;

pub use error::{Error, Result};

use kube::CustomResourceExt;

/// The CRD as YAML, exactly what `messenger-operator crd` prints and `crds/` holds.
pub fn crd_yaml() -> Result<String> {
    canonical_yaml(&crd::MessengerApp::crd())
}

/// YAML with every mapping's keys sorted. Serialized maps otherwise follow serde_json's map
/// type, whose order depends on whether any crate in the build enables its
/// `preserve_order` feature — so the same CRD would print differently per build.
pub fn canonical_yaml<T: serde::Serialize>(value: &T) -> Result<String> {
    let json = serde_json::to_value(value).map_err(|source| Error::Serialize {
        what: "a manifest",
        source,
    })?;
    Ok(serde_yaml::to_string(&sorted(json))?)
}

/// `value` with every object's keys sorted (a canonical form to hash).
pub(crate) fn sorted_json(value: serde_json::Value) -> serde_json::Value {
    sorted(value)
}

fn sorted(value: serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(map) => {
            let mut entries: Vec<_> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            serde_json::Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect())
        }
        serde_json::Value::Array(items) => {
            serde_json::Value::Array(items.into_iter().map(sorted).collect())
        }
        other => other,
    }
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
