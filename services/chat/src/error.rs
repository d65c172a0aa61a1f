//! The one error type of the chat service, mapped once into
//! `messenger_common::error::ServiceError` (and from there into a gRPC status).

use messenger_common::error::ServiceError;

use crate::domain::UserId;

/// Everything that can go wrong in the chat service.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    /// A request field is missing or malformed; the message names the field.
    #[error("{0}")]
    InvalidArgument(String),
    /// No chat has this id.
    #[error("chat not found")]
    ChatNotFound,
    /// The caller is not a participant of the chat.
    #[error("you are not a participant of this chat")]
    NotParticipant,
    /// Some of the people named are not the creator's friends. Only their ids are named:
    /// nothing else about them leaves the service.
    #[error("you can only open a chat with your friends; not your friends: {}", join_ids(.0))]
    NotFriends(Vec<UserId>),
    /// Some of the people named are nobody: no user has these ids.
    #[error("no user with id {}", join_ids(.0))]
    UnknownUsers(Vec<UserId>),
    /// A peer (the friends service) or a backing store is unreachable or too slow.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// Bad configuration at start-up; names the variable.
    #[error(transparent)]
    Config(#[from] messenger_common::ConfigError),
    /// Start-up or serving infrastructure failed (listeners, connectors, servers).
    #[error(transparent)]
    Runtime(#[from] messenger_common::Error),
    /// Anything else that is our fault, not the caller's.
    #[error("internal error: {0:#}")]
    Internal(anyhow::Error),
}

impl ChatError {
    pub fn internal(error: impl Into<anyhow::Error>) -> Self {
        Self::Internal(error.into())
    }
}

fn join_ids(ids: &[UserId]) -> String {
    ids.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

impl From<mongodb::error::Error> for ChatError {
    /// Network trouble and server selection timeouts are retryable (`Unavailable`);
    /// anything else is unexpected.
    fn from(error: mongodb::error::Error) -> Self {
        use mongodb::error::ErrorKind;
        match *error.kind {
            ErrorKind::Io(_)
            | ErrorKind::ServerSelection { .. }
            | ErrorKind::ConnectionPoolCleared { .. } => {
                tracing::warn!(error = %error, "mongodb unavailable");
                Self::Unavailable("chat store unavailable".into())
            }
            _ => Self::Internal(anyhow::Error::new(error).context("mongodb operation failed")),
        }
    }
}

/// A peer that is down or slow makes chat unavailable; any other failed call to a peer is
/// chat's own problem, never the caller's (logged as internal).
impl From<messenger_common::grpc::PeerError> for ChatError {
    fn from(error: messenger_common::grpc::PeerError) -> Self {
        use messenger_common::grpc::PeerError;
        match error {
            PeerError::Unavailable { .. } => {
                tracing::warn!(%error, "a peer service is unavailable");
                Self::Unavailable(error.to_string())
            }
            PeerError::NotFound { .. } | PeerError::Failed { .. } => {
                Self::internal(anyhow::anyhow!(error))
            }
        }
    }
}

/// A request field that breaks the shared rule of its identifier.
impl From<messenger_common::ids::InvalidValue> for ChatError {
    fn from(error: messenger_common::ids::InvalidValue) -> Self {
        Self::InvalidArgument(error.to_string())
    }
}

impl From<ChatError> for ServiceError {
    fn from(error: ChatError) -> Self {
        let message = error.to_string();
        match error {
            ChatError::InvalidArgument(_) => ServiceError::InvalidArgument(message),
            ChatError::ChatNotFound | ChatError::UnknownUsers(_) => ServiceError::NotFound(message),
            ChatError::NotParticipant | ChatError::NotFriends(_) => {
                ServiceError::PermissionDenied(message)
            }
            ChatError::Unavailable(_) => ServiceError::Unavailable(message),
            ChatError::Internal(source) => ServiceError::Internal(source),
            ChatError::Config(_) | ChatError::Runtime(_) => {
                ServiceError::internal(anyhow::anyhow!(message))
            }
        }
    }
}

impl From<ChatError> for tonic::Status {
    fn from(error: ChatError) -> Self {
        ServiceError::from(error).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_the_grpc_codes_callers_expect() {
        let stranger = UserId::new_random();
        let cases = [
            (
                ChatError::InvalidArgument("limit".into()),
                tonic::Code::InvalidArgument,
            ),
            (ChatError::ChatNotFound, tonic::Code::NotFound),
            (
                ChatError::UnknownUsers(vec![stranger]),
                tonic::Code::NotFound,
            ),
            (ChatError::NotParticipant, tonic::Code::PermissionDenied),
            (
                ChatError::NotFriends(vec![stranger]),
                tonic::Code::PermissionDenied,
            ),
            (
                ChatError::Unavailable("friends".into()),
                tonic::Code::Unavailable,
            ),
            (
                ChatError::internal(anyhow::anyhow!("boom")),
                tonic::Code::Internal,
            ),
        ];
        for (error, code) in cases {
            assert_eq!(tonic::Status::from(error).code(), code);
        }
    }

    #[test]
    fn not_friends_names_only_the_ids() {
        let (a, b) = (UserId::new_random(), UserId::new_random());
        let status = tonic::Status::from(ChatError::NotFriends(vec![a, b]));
        assert!(
            status.message().contains(&a.to_string()) && status.message().contains(&b.to_string())
        );
    }
}
