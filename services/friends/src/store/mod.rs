//! The friendship store: the source of truth for who asked whom and who is friends.
//!
//! One row per unordered pair of users (see [`crate::domain::Friendship`]). A change locks
//! the pair, lets [`crate::domain::decide`] apply the rules, and writes the new row and its
//! event together, so no change is published without happening or happens unpublished.

mod memory;
mod postgres;

pub use memory::InMemoryFriendshipStore;
pub use postgres::PostgresFriendshipStore;

use std::collections::HashSet;

use async_trait::async_trait;

use crate::domain::{Direction, Friendship, ListCursor, Outcome, PairCommand, UserId};
use crate::error::FriendsError;

/// Storage of friendships; see the module docs.
#[async_trait]
pub trait FriendshipStore: Send + Sync + 'static {
    /// Applies `command` to its pair atomically: under a lock on the pair, decides with
    /// [`crate::domain::decide`]; a new request must also pass
    /// [`crate::domain::admit_request`] under the store's [`crate::domain::RequestRules`],
    /// counting the addressee's pending requests under a lock on them, so concurrent
    /// senders cannot exceed the cap. Then writes the row and publishes the decision's
    /// event (on `topics::FRIENDS_EVENTS`, keyed by the pair) as one change. A refusal
    /// changes nothing.
    async fn apply(&self, command: PairCommand) -> Result<Outcome, FriendsError>;

    /// Up to `limit` of `user`'s friendships (accepted rows), oldest first, starting after
    /// `after` (see [`crate::domain::friends_page`], which the in-memory store uses).
    async fn friends_page(
        &self,
        user: UserId,
        after: Option<ListCursor>,
        limit: usize,
    ) -> Result<Vec<Friendship>, FriendsError>;

    /// Up to `limit` pending requests to or from `user`, newest first, starting after
    /// `after` (see [`crate::domain::pending_page`]).
    async fn pending_page(
        &self,
        user: UserId,
        direction: Direction,
        after: Option<ListCursor>,
        limit: usize,
    ) -> Result<Vec<Friendship>, FriendsError>;

    /// Which of `others` are friends of `user`.
    async fn friends_among(
        &self,
        user: UserId,
        others: &[UserId],
    ) -> Result<HashSet<UserId>, FriendsError>;

    /// The row of the pair `a`–`b`, in whatever state, if there is one.
    async fn pair(&self, a: UserId, b: UserId) -> Result<Option<Friendship>, FriendsError>;
}
