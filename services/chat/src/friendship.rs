//! Who may open a chat with whom: the [`FriendshipChecker`] seam, answered by the friends
//! service over gRPC ([`GrpcFriendshipChecker`]) or from an in-process set of pairs
//! ([`InMemoryFriendships`], for tests and single-process runs).

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use messenger_proto::v1::CheckFriendshipRequest;
use messenger_proto::v1::friends_service_client::FriendsServiceClient;
use tonic::transport::Channel;

use crate::domain::UserId;
use crate::error::ChatError;

/// Answers "which of these people are not this user's friends?".
#[async_trait]
pub trait FriendshipChecker: Send + Sync + 'static {
    /// The subset of `others` who are not friends of `user` (empty: all are friends).
    async fn not_friends(&self, user: UserId, others: &[UserId]) -> Result<Vec<UserId>, ChatError>;
}

/// Asks the friends service (`FriendsService.CheckFriendship`), each call bounded by a
/// deadline that is also sent to the server (`grpc-timeout`): the configured timeout, or
/// less when the RPC being served must be answered sooner
/// (`messenger_common::grpc::outbound_timeout`). The call is a read, so a caller may
/// retry it.
#[derive(Clone)]
pub struct GrpcFriendshipChecker {
    client: FriendsServiceClient<Channel>,
    timeout: Duration,
}

impl GrpcFriendshipChecker {
    /// `channel` should connect lazily (see `messenger_common::grpc::connect_channel`) so
    /// the chat service starts while the friends service is still coming up.
    pub fn new(channel: Channel, timeout: Duration) -> Self {
        Self {
            client: FriendsServiceClient::new(channel),
            timeout,
        }
    }
}

#[async_trait]
impl FriendshipChecker for GrpcFriendshipChecker {
    async fn not_friends(&self, user: UserId, others: &[UserId]) -> Result<Vec<UserId>, ChatError> {
        let (request, timeout) = messenger_common::grpc::peer_request(
            CheckFriendshipRequest {
                user_id: user.to_string(),
                other_user_ids: others.iter().map(ToString::to_string).collect(),
            },
            self.timeout,
        );
        let mut client = self.client.clone();
        let response =
            messenger_common::grpc::call_peer("friends", timeout, client.check_friendship(request))
                .await
                .map_err(ChatError::from)?;
        response
            .not_friends
            .iter()
            .map(|id| {
                UserId::parse("not_friends", id).map_err(|_| {
                    ChatError::internal(anyhow::anyhow!(
                        "the friends service answered a non-UUID user id {id:?}"
                    ))
                })
            })
            .collect()
    }
}

/// Friendships kept in process memory.
#[derive(Default)]
pub struct InMemoryFriendships {
    pairs: Mutex<HashSet<(UserId, UserId)>>,
}

impl InMemoryFriendships {
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes `a` and `b` friends (both ways).
    pub fn befriend(&self, a: UserId, b: UserId) {
        self.pairs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(ordered(a, b));
    }

    /// Ends the friendship of `a` and `b`.
    pub fn unfriend(&self, a: UserId, b: UserId) {
        self.pairs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(&ordered(a, b));
    }
}

fn ordered(a: UserId, b: UserId) -> (UserId, UserId) {
    if a <= b { (a, b) } else { (b, a) }
}

#[async_trait]
impl FriendshipChecker for InMemoryFriendships {
    async fn not_friends(&self, user: UserId, others: &[UserId]) -> Result<Vec<UserId>, ChatError> {
        let pairs = self
            .pairs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        Ok(others
            .iter()
            .copied()
            .filter(|other| !pairs.contains(&ordered(user, *other)))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn in_memory_friendship_is_symmetric_and_revocable() {
        let friends = InMemoryFriendships::new();
        let (a, b, c) = (
            UserId::new_random(),
            UserId::new_random(),
            UserId::new_random(),
        );
        friends.befriend(a, b);
        assert_eq!(friends.not_friends(a, &[b, c]).await.unwrap(), vec![c]);
        assert_eq!(friends.not_friends(b, &[a]).await.unwrap(), vec![]);
        friends.unfriend(b, a);
        assert_eq!(friends.not_friends(a, &[b]).await.unwrap(), vec![b]);
    }

    #[tokio::test]
    async fn an_unreachable_friends_service_is_unavailable_within_the_deadline() {
        // Port 9 (discard) on loopback: nothing listens, the connection is refused.
        let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:9").connect_lazy();
        let checker = GrpcFriendshipChecker::new(channel, Duration::from_millis(500));
        let started = std::time::Instant::now();
        let result = checker
            .not_friends(UserId::new_random(), &[UserId::new_random()])
            .await;
        assert!(
            matches!(result, Err(ChatError::Unavailable(_))),
            "{result:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
