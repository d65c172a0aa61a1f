//! Who exists: the [`UserDirectory`] seam, answered by the users service over gRPC
//! ([`GrpcUserDirectory`]) or in process ([`InMemoryUsers`]). Chat asks it only to
//! explain a refused `CreateChat`: a participant nobody has registered is `NOT_FOUND`
//! ("no such user"), not "not your friend". A chat that is allowed costs no users call.

use std::collections::HashSet;
use std::sync::RwLock;
use std::time::Duration;

use async_trait::async_trait;
use messenger_common::grpc::PeerError;
use messenger_proto::v1::GetUserProfileRequest;
use messenger_proto::v1::users_service_client::UsersServiceClient;
use tonic::transport::Channel;

use crate::domain::UserId;
use crate::error::ChatError;

/// Answers "which of these ids belong to nobody?".
#[async_trait]
pub trait UserDirectory: Send + Sync + 'static {
    /// The subset of `ids` that have no user (empty: all exist).
    async fn unknown(&self, ids: &[UserId]) -> Result<Vec<UserId>, ChatError>;
}

/// Asks the users service (`UsersService.GetUserProfile`), one read per id, each bounded
/// by the configured timeout or what is left of the caller's deadline.
#[derive(Clone)]
pub struct GrpcUserDirectory {
    client: UsersServiceClient<Channel>,
    timeout: Duration,
}

impl GrpcUserDirectory {
    /// `channel` should connect lazily (see `messenger_common::grpc::connect_channel`).
    pub fn new(channel: Channel, timeout: Duration) -> Self {
        Self {
            client: UsersServiceClient::new(channel),
            timeout,
        }
    }
}

#[async_trait]
impl UserDirectory for GrpcUserDirectory {
    async fn unknown(&self, ids: &[UserId]) -> Result<Vec<UserId>, ChatError> {
        let mut unknown = Vec::new();
        for id in ids {
            let (request, timeout) = messenger_common::grpc::peer_request(
                GetUserProfileRequest {
                    user_id: id.to_string(),
                },
                self.timeout,
            );
            let mut client = self.client.clone();
            let call = client.get_user_profile(request);
            match messenger_common::grpc::call_peer("users", timeout, call).await {
                Ok(_) => {}
                Err(PeerError::NotFound { .. }) => unknown.push(*id),
                Err(error) => return Err(error.into()),
            }
        }
        Ok(unknown)
    }
}

/// Users kept in process memory: either everyone (a single-process run without a user
/// registry) or only the ids registered.
pub struct InMemoryUsers {
    registered: Option<RwLock<HashSet<UserId>>>,
}

impl InMemoryUsers {
    /// Every id counts as a user.
    pub fn everyone() -> Self {
        Self { registered: None }
    }

    /// Only ids passed to [`InMemoryUsers::register`] are users.
    pub fn registry() -> Self {
        Self {
            registered: Some(RwLock::default()),
        }
    }

    /// Adds `id` to a registry (no effect on [`InMemoryUsers::everyone`]).
    pub fn register(&self, id: UserId) {
        if let Some(registered) = &self.registered {
            registered
                .write()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .insert(id);
        }
    }
}

#[async_trait]
impl UserDirectory for InMemoryUsers {
    async fn unknown(&self, ids: &[UserId]) -> Result<Vec<UserId>, ChatError> {
        let Some(registered) = &self.registered else {
            return Ok(Vec::new());
        };
        let registered = registered
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        Ok(ids
            .iter()
            .copied()
            .filter(|id| !registered.contains(id))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn in_memory_users_know_everyone_or_only_the_registered() {
        let (known, stranger) = (UserId::new_random(), UserId::new_random());
        let everyone = InMemoryUsers::everyone();
        assert!(
            everyone
                .unknown(&[known, stranger])
                .await
                .unwrap()
                .is_empty()
        );
        let registry = InMemoryUsers::registry();
        registry.register(known);
        assert_eq!(
            registry.unknown(&[known, stranger]).await.unwrap(),
            vec![stranger]
        );
    }
}
