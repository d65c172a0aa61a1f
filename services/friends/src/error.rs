//! The one error type of the friends service, mapped once into
//! `messenger_common::error::ServiceError` (and from there into a gRPC status).

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
            FriendsError::Unavailable(_) => ServiceError::Unavailable(message),
            FriendsError::Database(source) => source.into(),
            FriendsError::Cache(source) => source.into(),
            FriendsError::Internal(_) => ServiceError::Internal(anyhow::anyhow!(message)),
        }
    }
}

impl From<FriendsError> for tonic::Status {
    fn from(error: FriendsError) -> Self {
        ServiceError::from(error).into()
    }
}
