//! In-memory friendship store for `messenger dev` and fast tests. Events go straight to an
//! [`EventPublisher`] (normally the in-process `InMemoryEventBus`) before the row changes,
//! under the store's lock, so a failed publish changes nothing and events keep their order.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use messenger_common::events::{EventPublisher, new_event};
use messenger_proto::topics;
use tokio::sync::Mutex;

use super::FriendshipStore;
use crate::domain::{
    self, Direction, Friendship, FriendshipStatus, ListCursor, Outcome, PairCommand, PairWrite,
    RequestRules, UserId, pair_key,
};
use crate::error::FriendsError;

/// Rows keyed by [`pair_key`]; keeps nothing across restarts.
pub struct InMemoryFriendshipStore {
    rows: Mutex<HashMap<(UserId, UserId), Friendship>>,
    events: Arc<dyn EventPublisher>,
    rules: RequestRules,
}

impl InMemoryFriendshipStore {
    /// An empty store publishing its events to `events`, with the default request rules.
    pub fn new(events: Arc<dyn EventPublisher>) -> Self {
        InMemoryFriendshipStore {
            rows: Mutex::new(HashMap::new()),
            events,
            rules: RequestRules::default(),
        }
    }

    /// The same store admitting new requests under `rules`.
    #[must_use]
    pub fn with_rules(mut self, rules: RequestRules) -> Self {
        self.rules = rules;
        self
    }
}

#[async_trait]
impl FriendshipStore for InMemoryFriendshipStore {
    async fn apply(&self, command: PairCommand) -> Result<Outcome, FriendsError> {
        let key = pair_key(command.actor(), command.other());
        let mut rows = self.rows.lock().await;
        let now = domain::now();
        let current = rows.get(&key);
        let decision = domain::decide(&command, current, now)?;
        // The whole map is locked: the count cannot change before the write.
        let pending_to_other = rows
            .values()
            .filter(|row| {
                row.addressee == command.other() && row.status == FriendshipStatus::Requested
            })
            .count();
        domain::admit_request(
            &command,
            &decision,
            current,
            &self.rules,
            u32::try_from(pending_to_other).unwrap_or(u32::MAX),
            now,
        )?;
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

    async fn friends_page(
        &self,
        user: UserId,
        after: Option<ListCursor>,
        limit: usize,
    ) -> Result<Vec<Friendship>, FriendsError> {
        let rows = self.rows.lock().await;
        Ok(domain::friends_page(
            user,
            rows.values(),
            after.as_ref(),
            limit,
        ))
    }

    async fn pending_page(
        &self,
        user: UserId,
        direction: Direction,
        after: Option<ListCursor>,
        limit: usize,
    ) -> Result<Vec<Friendship>, FriendsError> {
        let rows = self.rows.lock().await;
        Ok(domain::pending_page(
            user,
            direction,
            rows.values(),
            after.as_ref(),
            limit,
        ))
    }

    async fn friends_among(
        &self,
        user: UserId,
        others: &[UserId],
    ) -> Result<HashSet<UserId>, FriendsError> {
        let rows = self.rows.lock().await;
        Ok(others
            .iter()
            .copied()
            .filter(|other| {
                *other != user
                    && rows
                        .get(&pair_key(user, *other))
                        .is_some_and(|row| row.status == FriendshipStatus::Accepted)
            })
            .collect())
    }

    async fn pair(&self, a: UserId, b: UserId) -> Result<Option<Friendship>, FriendsError> {
        Ok(self.rows.lock().await.get(&pair_key(a, b)).cloned())
    }
}
