//! In-memory friendship store for `messenger dev` and fast tests. Events go straight to an
//! [`EventPublisher`] (normally the in-process `InMemoryEventBus`) before the row changes,
//! under the store's lock, so a failed publish changes nothing and events keep their order.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use messenger_common::events::{EventPublisher, new_event};
use messenger_proto::topics;
use tokio::sync::Mutex;

use super::FriendshipStore;
use crate::domain::{self, Friendship, Outcome, PairCommand, PairWrite, UserId, pair_key};
use crate::error::FriendsError;

/// Rows keyed by [`pair_key`]; keeps nothing across restarts.
pub struct InMemoryFriendshipStore {
    rows: Mutex<HashMap<(UserId, UserId), Friendship>>,
    events: Arc<dyn EventPublisher>,
}

impl InMemoryFriendshipStore {
    /// An empty store publishing its events to `events`.
    pub fn new(events: Arc<dyn EventPublisher>) -> Self {
        InMemoryFriendshipStore {
            rows: Mutex::new(HashMap::new()),
            events,
        }
    }
}

#[async_trait]
impl FriendshipStore for InMemoryFriendshipStore {
    async fn apply(&self, command: PairCommand) -> Result<Outcome, FriendsError> {
        let key = pair_key(command.actor(), command.other());
        let mut rows = self.rows.lock().await;
        let decision = domain::decide(&command, rows.get(&key), domain::now())?;
        let event = new_event(decision.event);
        self.events
            .publish(
                topics::FRIENDS_EVENTS,
                &domain::event_key(command.actor(), command.other()),
                &event,
            )
            .await
            .map_err(|error| FriendsError::Unavailable(format!("event bus: {error}")))?;
        match decision.write {
            PairWrite::Insert(row) | PairWrite::Update(row) => {
                rows.insert(key, row);
            }
            PairWrite::Delete => {
                rows.remove(&key);
            }
        }
        Ok(decision.outcome)
    }

    async fn relationships_of(&self, user: UserId) -> Result<Vec<Friendship>, FriendsError> {
        let rows = self.rows.lock().await;
        Ok(rows
            .values()
            .filter(|row| row.involves(user) && row.status != domain::FriendshipStatus::Rejected)
            .cloned()
            .collect())
    }

    async fn pair(&self, a: UserId, b: UserId) -> Result<Option<Friendship>, FriendsError> {
        Ok(self.rows.lock().await.get(&pair_key(a, b)).cloned())
    }
}
