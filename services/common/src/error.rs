//! Errors: [`ServiceError`], the one error type a gRPC handler returns (mapped once to
//! `tonic::Status`), and [`Error`], what the infrastructure helpers of this crate
//! (connectors, servers, migrations) fail with at start-up.

use crate::config::ConfigError;
use crate::events::PublishError;

/// What an RPC handler fails with. Services keep their own domain error enum and
/// convert it into this one; `From<ServiceError> for tonic::Status` is the single place
/// where errors become gRPC codes.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The request is malformed or violates a rule (→ `INVALID_ARGUMENT`).
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The addressed entity does not exist (→ `NOT_FOUND`).
    #[error("not found: {0}")]
    NotFound(String),
    /// The entity to create exists already (→ `ALREADY_EXISTS`).
    #[error("already exists: {0}")]
    AlreadyExists(String),
    /// The caller is known but may not do this (→ `PERMISSION_DENIED`).
    #[error("permission denied: {0}")]
    PermissionDenied(String),
    /// The caller is not authenticated (→ `UNAUTHENTICATED`).
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// A quota or rate limit is exhausted (→ `RESOURCE_EXHAUSTED`).
    #[error("resource exhausted: {0}")]
    ResourceExhausted(String),
    /// The system is not in the state the operation needs (→ `FAILED_PRECONDITION`).
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    /// A dependency is down; the caller may retry (→ `UNAVAILABLE`).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// A deadline passed before the work finished (→ `DEADLINE_EXCEEDED`).
    #[error("deadline exceeded: {0}")]
    DeadlineExceeded(String),
    /// A bug or unexpected failure. The cause is logged, never sent to the caller
    /// (→ `INTERNAL` with a generic message).
    #[error("internal error: {0:#}")]
    Internal(anyhow::Error),
}

impl ServiceError {
    /// Wraps any error as [`ServiceError::Internal`].
    pub fn internal(error: impl Into<anyhow::Error>) -> Self {
        Self::Internal(error.into())
    }

    /// The gRPC code this error maps to.
    pub fn code(&self) -> tonic::Code {
        match self {
            Self::InvalidArgument(_) => tonic::Code::InvalidArgument,
            Self::NotFound(_) => tonic::Code::NotFound,
            Self::AlreadyExists(_) => tonic::Code::AlreadyExists,
            Self::PermissionDenied(_) => tonic::Code::PermissionDenied,
            Self::Unauthenticated(_) => tonic::Code::Unauthenticated,
            Self::ResourceExhausted(_) => tonic::Code::ResourceExhausted,
            Self::FailedPrecondition(_) => tonic::Code::FailedPrecondition,
            Self::Unavailable(_) => tonic::Code::Unavailable,
            Self::DeadlineExceeded(_) => tonic::Code::DeadlineExceeded,
            Self::Internal(_) => tonic::Code::Internal,
        }
    }
}

/// Message sent to callers instead of the cause of an internal error.
pub const INTERNAL_MESSAGE: &str = "internal error";

impl From<ServiceError> for tonic::Status {
    fn from(error: ServiceError) -> Self {
        let code = error.code();
        match error {
            ServiceError::Internal(cause) => {
                // The cause may hold SQL, hostnames or user data: log it, don't leak it.
                tracing::error!(error = format!("{cause:#}"), "internal error");
                tonic::Status::new(code, INTERNAL_MESSAGE)
            }
            ServiceError::InvalidArgument(m)
            | ServiceError::NotFound(m)
            | ServiceError::AlreadyExists(m)
            | ServiceError::PermissionDenied(m)
            | ServiceError::Unauthenticated(m)
            | ServiceError::ResourceExhausted(m)
            | ServiceError::FailedPrecondition(m)
            | ServiceError::Unavailable(m)
            | ServiceError::DeadlineExceeded(m) => tonic::Status::new(code, m),
        }
    }
}

impl From<anyhow::Error> for ServiceError {
    fn from(error: anyhow::Error) -> Self {
        Self::Internal(error)
    }
}

impl From<tonic::Status> for ServiceError {
    /// A failed call to a peer service. Client-side codes (bad argument, not found, ...)
    /// pass through with their message; cancellations and timeouts become `Unavailable` /
    /// `DeadlineExceeded`; anything else is internal.
    fn from(status: tonic::Status) -> Self {
        use tonic::Code;
        let message = status.message().to_owned();
        match status.code() {
            Code::InvalidArgument | Code::OutOfRange => Self::InvalidArgument(message),
            Code::NotFound => Self::NotFound(message),
            Code::AlreadyExists => Self::AlreadyExists(message),
            Code::PermissionDenied => Self::PermissionDenied(message),
            Code::Unauthenticated => Self::Unauthenticated(message),
            Code::ResourceExhausted => Self::ResourceExhausted(message),
            Code::FailedPrecondition | Code::Aborted => Self::FailedPrecondition(message),
            Code::Unavailable | Code::Cancelled => {
                Self::Unavailable(format!("a dependency is unavailable: {message}"))
            }
            Code::DeadlineExceeded => Self::DeadlineExceeded(message),
            _ => Self::Internal(anyhow::anyhow!("peer call failed: {status}")),
        }
    }
}

impl From<sqlx::Error> for ServiceError {
    /// Connection trouble becomes `Unavailable` (retryable); everything else is a bug or
    /// an unexpected state and becomes `Internal`. Map `RowNotFound` and constraint
    /// violations to domain errors in the service before this conversion.
    fn from(error: sqlx::Error) -> Self {
        match &error {
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => {
                tracing::warn!(error = %error, "database unavailable");
                Self::Unavailable("database unavailable".into())
            }
            _ => Self::Internal(anyhow::Error::new(error).context("database query failed")),
        }
    }
}

impl From<::redis::RedisError> for ServiceError {
    /// Connection refusals, timeouts and dropped connections become `Unavailable`.
    fn from(error: ::redis::RedisError) -> Self {
        if error.is_io_error()
            || error.is_timeout()
            || error.is_connection_dropped()
            || error.is_connection_refusal()
        {
            tracing::warn!(error = %error, "redis unavailable");
            Self::Unavailable("cache unavailable".into())
        } else {
            Self::Internal(anyhow::Error::new(error).context("redis command failed"))
        }
    }
}

impl From<PublishError> for ServiceError {
    fn from(error: PublishError) -> Self {
        tracing::warn!(error = %error, "event publishing failed");
        Self::Unavailable("event bus unavailable".into())
    }
}

/// Failures of the infrastructure helpers (connect, migrate, serve) — what a service's
/// `main` reports before exiting.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad configuration; names the variable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A PostgreSQL connection or query failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// Applying migrations failed.
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Redis failed.
    #[error("redis: {0}")]
    Redis(#[from] ::redis::RedisError),
    /// Kafka failed.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// Publishing an event failed.
    #[error(transparent)]
    Publish(#[from] PublishError),
    /// The gRPC transport failed (bind, serve, bad endpoint).
    #[error("grpc transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// Socket or file IO failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    /// Anything else, with a message saying what.
    #[error("{0}")]
    Other(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_maps_to_its_grpc_code_and_keeps_its_message() {
        let cases = [
            (
                ServiceError::InvalidArgument("bad email".into()),
                tonic::Code::InvalidArgument,
            ),
            (
                ServiceError::NotFound("no user".into()),
                tonic::Code::NotFound,
            ),
            (
                ServiceError::AlreadyExists("taken".into()),
                tonic::Code::AlreadyExists,
            ),
            (
                ServiceError::PermissionDenied("not yours".into()),
                tonic::Code::PermissionDenied,
            ),
            (
                ServiceError::Unauthenticated("no token".into()),
                tonic::Code::Unauthenticated,
            ),
            (
                ServiceError::ResourceExhausted("slow down".into()),
                tonic::Code::ResourceExhausted,
            ),
            (
                ServiceError::FailedPrecondition("not friends".into()),
                tonic::Code::FailedPrecondition,
            ),
            (
                ServiceError::Unavailable("db down".into()),
                tonic::Code::Unavailable,
            ),
            (
                ServiceError::DeadlineExceeded("too slow".into()),
                tonic::Code::DeadlineExceeded,
            ),
        ];
        for (error, code) in cases {
            let expected_message = match &error {
                ServiceError::InvalidArgument(m)
                | ServiceError::NotFound(m)
                | ServiceError::AlreadyExists(m)
                | ServiceError::PermissionDenied(m)
                | ServiceError::Unauthenticated(m)
                | ServiceError::ResourceExhausted(m)
                | ServiceError::FailedPrecondition(m)
                | ServiceError::Unavailable(m)
                | ServiceError::DeadlineExceeded(m) => m.clone(),
                ServiceError::Internal(_) => unreachable!(),
            };
            let status = tonic::Status::from(error);
            assert_eq!(status.code(), code);
            assert_eq!(status.message(), expected_message);
        }
    }

    #[test]
    fn internal_error_hides_its_cause_from_the_caller() {
        let error = ServiceError::internal(anyhow::anyhow!("password=hunter2 at 10.0.0.5"));
        let status = tonic::Status::from(error);
        assert_eq!(status.code(), tonic::Code::Internal);
        assert_eq!(status.message(), INTERNAL_MESSAGE);
        assert!(!status.message().contains("hunter2"));
    }

    #[test]
    fn peer_statuses_keep_client_codes_and_hide_internal_ones() {
        let cases = [
            (tonic::Status::not_found("no user"), tonic::Code::NotFound),
            (
                tonic::Status::invalid_argument("bad"),
                tonic::Code::InvalidArgument,
            ),
            (tonic::Status::unavailable("down"), tonic::Code::Unavailable),
            (
                tonic::Status::cancelled("timeout"),
                tonic::Code::Unavailable,
            ),
            (
                tonic::Status::deadline_exceeded("slow"),
                tonic::Code::DeadlineExceeded,
            ),
            (tonic::Status::internal("boom"), tonic::Code::Internal),
            (tonic::Status::unknown("?"), tonic::Code::Internal),
        ];
        for (status, code) in cases {
            assert_eq!(
                ServiceError::from(status.clone()).code(),
                code,
                "{status:?}"
            );
        }
        let hidden =
            tonic::Status::from(ServiceError::from(tonic::Status::internal("peer secret")));
        assert_eq!(hidden.message(), INTERNAL_MESSAGE);
    }

    #[test]
    fn database_errors_become_unavailable_or_internal() {
        assert_eq!(
            ServiceError::from(sqlx::Error::PoolTimedOut).code(),
            tonic::Code::Unavailable
        );
        let io = sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert_eq!(ServiceError::from(io).code(), tonic::Code::Unavailable);
        assert_eq!(
            ServiceError::from(sqlx::Error::RowNotFound).code(),
            tonic::Code::Internal
        );
        let status = tonic::Status::from(ServiceError::from(sqlx::Error::ColumnNotFound(
            "secret_col".into(),
        )));
        assert!(!status.message().contains("secret_col"));
    }

    #[test]
    fn redis_connection_errors_become_unavailable() {
        let refused =
            ::redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert_eq!(ServiceError::from(refused).code(), tonic::Code::Unavailable);
        let type_error =
            ::redis::RedisError::from((::redis::ErrorKind::UnexpectedReturnType, "not an int"));
        assert_eq!(ServiceError::from(type_error).code(), tonic::Code::Internal);
    }
}
