//! The one error type of the friends service, mapped once into
//! `messenger_common::error::ServiceError` (and from there into a gRPC status).

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use messenger_common::error::ServiceError;

/// Everything that can go wrong in the friends service.
#[derive(Debug, thiserror::Error)]
pub enum FriendsError {
    /// A request field is missing or malformed.
    #[error("{0}")]
    InvalidArgument(String),
    /// The user named themselves where another person is required.
    #[error("you cannot do this with yourself")]
    SelfReference,
    /// No profile has this nickname.
    #[error("no user has the nickname {0:?}")]
    UnknownNickname(String),
    /// The actor already sent a request that is still pending.
    #[error("a friend request to this user is already pending")]
    RequestAlreadyPending,
    /// The two users are already friends.
    #[error("you are already friends")]
    AlreadyFriends,
    /// There is no pending request from the other user to the actor.
    #[error("no pending friend request from this user")]
    NoPendingRequest,
    /// A pending request exists, but the actor sent it: only its addressee may answer it.
    #[error("only the addressee of a friend request can accept or reject it")]
    NotTheAddressee,
    /// The two users are not friends.
    #[error("you are not friends")]
    NotFriends,
    /// The addressee already has as many pending requests as anyone may have.
    #[error(
        "this user already has {max} friend requests waiting for an answer; try again once they have answered some"
    )]
    TooManyPendingRequests { max: u32 },
    /// The addressee rejected the actor's last request too recently to be asked again.
    #[error(
        "this user declined your last friend request; you can ask again after {}",
        until.to_rfc3339_opts(SecondsFormat::Secs, true)
    )]
    RequestCooldown {
        until: DateTime<Utc>,
        retry_after: Duration,
    },
    /// A peer (the users service) or a backing store is unreachable or too slow.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The database failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The cache failed (callers fall back to the database; never shown to a client).
    #[error("cache error: {0}")]
    Cache(#[from] redis::RedisError),
    /// Anything else that is our fault, not the caller's.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<FriendsError> for ServiceError {
    fn from(error: FriendsError) -> Self {
        let message = error.to_string();
        match error {
            FriendsError::InvalidArgument(_) | FriendsError::SelfReference => {
                ServiceError::InvalidArgument(message)
            }
            FriendsError::UnknownNickname(_)
            | FriendsError::NoPendingRequest
            | FriendsError::NotFriends => ServiceError::NotFound(message),
            FriendsError::RequestAlreadyPending | FriendsError::AlreadyFriends => {
                ServiceError::AlreadyExists(message)
            }
            FriendsError::NotTheAddressee => ServiceError::PermissionDenied(message),
            FriendsError::TooManyPendingRequests { .. } => {
                ServiceError::FailedPrecondition(message)
            }
            FriendsError::RequestCooldown { .. } => ServiceError::ResourceExhausted(message),
            FriendsError::Unavailable(_) => ServiceError::Unavailable(message),
            FriendsError::Database(source) => source.into(),
            FriendsError::Cache(source) => source.into(),
            FriendsError::Internal(_) => ServiceError::Internal(anyhow::anyhow!(message)),
        }
    }
}

/// Response metadata on `RESOURCE_EXHAUSTED`: whole seconds until the request may be
/// sent again (the gateway's `Retry-After`).
pub const RETRY_AFTER_METADATA: &str = "retry-after";

impl From<FriendsError> for tonic::Status {
    fn from(error: FriendsError) -> Self {
        let retry_after = match &error {
            FriendsError::RequestCooldown { retry_after, .. } => Some(*retry_after),
            _ => None,
        };
        let mut status: tonic::Status = ServiceError::from(error).into();
        if let Some(wait) = retry_after
            && let Ok(value) = wait.as_millis().div_ceil(1000).max(1).to_string().parse()
        {
            status.metadata_mut().insert(RETRY_AFTER_METADATA, value);
        }
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn request_limits_map_to_codes_the_gateway_turns_into_4xx() {
        let full = tonic::Status::from(FriendsError::TooManyPendingRequests { max: 100 });
        assert_eq!(full.code(), Code::FailedPrecondition);
        assert!(
            full.message().contains("100 friend requests"),
            "{}",
            full.message()
        );
        assert!(full.metadata().get(RETRY_AFTER_METADATA).is_none());

        let until = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let cooldown = tonic::Status::from(FriendsError::RequestCooldown {
            until,
            retry_after: Duration::from_millis(86_399_500),
        });
        assert_eq!(cooldown.code(), Code::ResourceExhausted);
        assert_eq!(
            cooldown.message(),
            "this user declined your last friend request; you can ask again after 2027-01-15T08:00:00Z"
        );
        assert_eq!(
            cooldown.metadata().get(RETRY_AFTER_METADATA).unwrap(),
            "86400"
        );
    }
}
