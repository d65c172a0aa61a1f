//! The crate's one error type.

/// Everything that can go wrong in the operator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("kubeconfig: {0}")]
    Kubeconfig(#[from] kube::config::KubeconfigError),
    #[error("{kind} has no namespace")]
    MissingNamespace { kind: &'static str },
    #[error("serializing {what}: {source}")]
    Serialize {
        what: &'static str,
        source: serde_json::Error,
    },
    #[error("rendering the CRD as YAML: {0}")]
    Yaml(#[from] serde_yaml::Error),
    #[error("admin server: {0}")]
    Io(#[from] std::io::Error),
    #[error("leader election: {0}")]
    LeaderElection(String),
    #[error(
        "{what} changed since it was read (resourceVersion {seen}, now {current}); deciding again"
    )]
    Stale {
        what: String,
        seen: String,
        current: String,
    },
    #[error("prometheus: {0}")]
    Prometheus(String),
}

impl Error {
    /// Short label for the errors metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(_)) => "api",
            Error::Kube(_) => "client",
            Error::Kubeconfig(_) => "kubeconfig",
            Error::MissingNamespace { .. } => "missing_namespace",
            Error::Serialize { .. } | Error::Yaml(_) => "serialize",
            Error::Io(_) => "io",
            Error::LeaderElection(_) => "leader_election",
            Error::Stale { .. } => "stale",
            Error::Prometheus(_) => "prometheus",
        }
    }

    /// The API server refused the object itself (schema/validation): retrying the same
    /// spec cannot succeed, so wait for a change instead.
    pub fn is_rejection(&self) -> bool {
        matches!(self, Error::Kube(kube::Error::Api(status)) if status.code == 400 || status.code == 422)
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
