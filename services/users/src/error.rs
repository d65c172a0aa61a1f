//! The one error type of the users service and its mapping onto gRPC statuses.

use messenger_common::error::ServiceError;

/// Everything that can go wrong in the users service.
#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    /// A request or event field is malformed; nothing was changed.
    #[error("invalid {field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },
    #[error("no profile for user {0}")]
    ProfileNotFound(String),
    #[error("no profile with nickname {0:?}")]
    NicknameNotFound(String),
    #[error("nickname {0:?} is already taken")]
    NicknameTaken(String),
    /// Every deterministic nickname candidate for a registration is taken (see the README).
    #[error("no free nickname for user {user_id} (requested {requested:?})")]
    NoFreeNickname { user_id: String, requested: String },
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database migration: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("cache: {0}")]
    Cache(#[from] redis::RedisError),
    #[error("cache entry could not be (de)serialized: {0}")]
    CacheEncoding(#[from] serde_json::Error),
    #[error("configuration: {0}")]
    Config(#[from] messenger_common::config::ConfigError),
    /// The shared runtime failed (connecting, migrating, serving, Kafka).
    #[error(transparent)]
    Runtime(#[from] messenger_common::Error),
}

impl UsersError {
    pub(crate) fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            field,
            reason: reason.into(),
        }
    }
}

impl From<messenger_common::ids::InvalidValue> for UsersError {
    fn from(error: messenger_common::ids::InvalidValue) -> Self {
        Self::invalid(error.field, error.reason)
    }
}

impl From<UsersError> for ServiceError {
    fn from(error: UsersError) -> Self {
        match error {
            UsersError::InvalidArgument { .. } => ServiceError::InvalidArgument(error.to_string()),
            UsersError::ProfileNotFound(_) | UsersError::NicknameNotFound(_) => {
                ServiceError::NotFound(error.to_string())
            }
            UsersError::NicknameTaken(_) => ServiceError::AlreadyExists(error.to_string()),
            UsersError::Database(e) => ServiceError::from(e),
            UsersError::Cache(e) => ServiceError::from(e),
            other => ServiceError::internal(other),
        }
    }
}

impl From<UsersError> for tonic::Status {
    fn from(error: UsersError) -> Self {
        ServiceError::from(error).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn domain_errors_map_to_the_grpc_codes_clients_see() {
        let cases = [
            (
                UsersError::invalid("bio", "too long"),
                Code::InvalidArgument,
            ),
            (UsersError::ProfileNotFound("u".into()), Code::NotFound),
            (UsersError::NicknameNotFound("n".into()), Code::NotFound),
            (UsersError::NicknameTaken("n".into()), Code::AlreadyExists),
            (
                UsersError::Database(sqlx::Error::PoolTimedOut),
                Code::Unavailable,
            ),
            (
                UsersError::NoFreeNickname {
                    user_id: "u".into(),
                    requested: "n".into(),
                },
                Code::Internal,
            ),
        ];
        for (error, code) in cases {
            let shown = error.to_string();
            let status = tonic::Status::from(error);
            assert_eq!(status.code(), code, "{shown}");
        }
    }

    #[test]
    fn invalid_argument_messages_name_the_field() {
        let status = tonic::Status::from(UsersError::invalid("avatar_url", "must have a host"));
        assert!(
            status.message().contains("avatar_url"),
            "{}",
            status.message()
        );
    }
}
