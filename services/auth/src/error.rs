//! The one error type of the auth crate, and its mapping to gRPC status codes.

use std::time::Duration;

use messenger_common::ServiceError;

use crate::domain::ValidationError;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    #[error("an account with this email already exists")]
    EmailTaken,
    /// Wrong email and wrong password on purpose share this one message.
    #[error("invalid email or password")]
    InvalidCredentials,
    #[error("invalid, expired or revoked access token")]
    InvalidToken,
    #[error("access_token is required")]
    MissingToken,
    #[error(
        "too many failed login attempts; retry in {}s",
        whole_seconds_up(*retry_after)
    )]
    TooManyAttempts { retry_after: Duration },
    #[error("no OAuth provider named {0:?} is configured")]
    UnknownProvider(String),
    /// The flow the callback belongs to is missing, used, expired or does not match.
    #[error("{0}")]
    OAuthFlow(String),
    /// The provider or its ID token says no: the user cancelled, or the token failed
    /// validation (signature, issuer, audience, expiry, nonce).
    #[error("{0}")]
    OAuthDenied(String),
    /// The provider cannot be reached or answers nonsense.
    #[error("{0}")]
    ProviderFailed(String),
    #[error("an account with this email already exists: sign in to it and link {0} from there")]
    EmailBelongsToAccount(String),
    #[error("this {0} identity is already linked to an account")]
    IdentityTaken(String),
    #[error("a {0} identity is already linked to this account; unlink it first")]
    ProviderAlreadyLinked(String),
    #[error("the account does not exist")]
    AccountNotFound,
    #[error("{0} is not linked to this account")]
    NotLinked(String),
    #[error("{0} is this account's only way to sign in; link another provider before unlinking it")]
    LastSignInMethod(String),
    #[error(
        "too many registrations from this address; retry in {}s",
        whole_seconds_up(*retry_after)
    )]
    TooManyRegistrations { retry_after: Duration },
    #[error("password hashing failed: {0}")]
    PasswordHash(String),
    #[error("operating system randomness failed: {0}")]
    Randomness(String),
    #[error("background task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("redis error: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("stored data is corrupt: {0}")]
    CorruptData(String),
    #[error("event publishing failed: {0}")]
    Publish(String),
}

/// Response metadata on `RESOURCE_EXHAUSTED`: whole seconds until a login (or a
/// registration) may be tried.
pub const RETRY_AFTER_METADATA: &str = "retry-after";

/// Seconds to wait, rounded up so a client that waits that long is let in (at least 1).
fn whole_seconds_up(duration: Duration) -> u128 {
    duration.as_millis().div_ceil(1000).max(1)
}

impl From<AuthError> for ServiceError {
    fn from(error: AuthError) -> Self {
        match error {
            AuthError::Invalid(e) => Self::InvalidArgument(e.to_string()),
            AuthError::MissingToken => Self::InvalidArgument(error.to_string()),
            AuthError::EmailTaken => Self::AlreadyExists(error.to_string()),
            AuthError::InvalidCredentials | AuthError::InvalidToken => {
                Self::Unauthenticated(error.to_string())
            }
            AuthError::TooManyAttempts { .. } | AuthError::TooManyRegistrations { .. } => {
                Self::ResourceExhausted(error.to_string())
            }
            AuthError::UnknownProvider(_)
            | AuthError::AccountNotFound
            | AuthError::NotLinked(_) => Self::NotFound(error.to_string()),
            AuthError::OAuthFlow(_) => Self::InvalidArgument(error.to_string()),
            AuthError::OAuthDenied(_) => Self::Unauthenticated(error.to_string()),
            AuthError::ProviderFailed(_) | AuthError::LastSignInMethod(_) => {
                Self::FailedPrecondition(error.to_string())
            }
            AuthError::EmailBelongsToAccount(_)
            | AuthError::IdentityTaken(_)
            | AuthError::ProviderAlreadyLinked(_) => Self::AlreadyExists(error.to_string()),
            AuthError::Database(e) => e.into(),
            AuthError::Redis(e) => e.into(),
            other @ (AuthError::PasswordHash(_)
            | AuthError::Randomness(_)
            | AuthError::Task(_)
            | AuthError::CorruptData(_)
            | AuthError::Publish(_)) => Self::internal(other),
        }
    }
}

impl From<AuthError> for tonic::Status {
    fn from(error: AuthError) -> Self {
        match error {
            AuthError::TooManyAttempts { retry_after }
            | AuthError::TooManyRegistrations { retry_after } => {
                let mut status: tonic::Status = ServiceError::from(error).into();
                // Machine-readable twin of the message, for the gateway's Retry-After.
                if let Ok(value) = whole_seconds_up(retry_after).to_string().parse() {
                    status.metadata_mut().insert(RETRY_AFTER_METADATA, value);
                }
                status
            }
            other => ServiceError::from(other).into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn each_error_maps_to_the_grpc_code_a_client_expects() {
        let cases = [
            (
                AuthError::Invalid(ValidationError::Email("must contain exactly one @")),
                Code::InvalidArgument,
                "email: must contain exactly one @",
            ),
            (
                AuthError::MissingToken,
                Code::InvalidArgument,
                "access_token is required",
            ),
            (
                AuthError::EmailTaken,
                Code::AlreadyExists,
                "an account with this email already exists",
            ),
            (
                AuthError::InvalidCredentials,
                Code::Unauthenticated,
                "invalid email or password",
            ),
            (
                AuthError::InvalidToken,
                Code::Unauthenticated,
                "invalid, expired or revoked access token",
            ),
            (
                AuthError::TooManyAttempts {
                    retry_after: Duration::from_millis(90_500),
                },
                Code::ResourceExhausted,
                "too many failed login attempts; retry in 91s",
            ),
            (
                AuthError::UnknownProvider("nope".into()),
                Code::NotFound,
                "no OAuth provider named \"nope\" is configured",
            ),
            (
                AuthError::EmailBelongsToAccount("corp".into()),
                Code::AlreadyExists,
                "an account with this email already exists: sign in to it and link corp from there",
            ),
            (
                AuthError::LastSignInMethod("corp".into()),
                Code::FailedPrecondition,
                "corp is this account's only way to sign in; link another provider before unlinking it",
            ),
            (
                AuthError::TooManyRegistrations {
                    retry_after: Duration::from_secs(120),
                },
                Code::ResourceExhausted,
                "too many registrations from this address; retry in 120s",
            ),
            (
                AuthError::PasswordHash("bad salt".into()),
                Code::Internal,
                "internal error",
            ),
        ];
        for (error, code, message) in cases {
            let status = tonic::Status::from(error);
            assert_eq!(status.code(), code);
            assert_eq!(status.message(), message);
        }
    }

    #[test]
    fn rate_limited_status_carries_retry_after_metadata() {
        let status = tonic::Status::from(AuthError::TooManyAttempts {
            retry_after: Duration::from_secs(42),
        });
        let value = status.metadata().get(RETRY_AFTER_METADATA).unwrap();
        assert_eq!(value.to_str().unwrap(), "42");
    }

    #[test]
    fn a_retry_hint_under_a_second_still_says_one_second() {
        let status = tonic::Status::from(AuthError::TooManyAttempts {
            retry_after: Duration::from_millis(10),
        });
        assert!(status.message().ends_with("retry in 1s"));
    }
}
