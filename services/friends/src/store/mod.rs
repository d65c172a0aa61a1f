//! The friendship store: the source of truth for who asked whom and who is friends.
//!
//! One row per unordered pair of users (see [`crate::domain::Friendship`]). A change locks
//! the pair, lets [`crate::domain::decide`] apply the rules, and writes the new row and its
//! event together, so no change is published without happening or happens unpublished.

mod memory;
mod postgres;

pub use memory::InMemoryFriendshipStore;
pub use postgres::PostgresFriendshipStore;

use async_trait::async_trait;

use crate::domain::{Friendship, Outcome, PairCommand, UserId};
use crate::error::FriendsError;

/// Storage of friendships; see the module docs.
#[async_trait]
pub trait FriendshipStore: Send + Sync + 'static {
    /// Applies `command` to its pair atomically: under a lock on the pair, decides with
    /// [`crate::domain::decide`], writes the row and publishes the decision's event (on
    /// `topics::FRIENDS_EVENTS`, keyed by the pair) as one change. A refusal changes nothing.
    async fn apply(&self, command: PairCommand) -> Result<Outcome, FriendsError>;

    /// The pending and accepted rows `user` is part of (rejected ones are history).
    async fn relationships_of(&self, user: UserId) -> Result<Vec<Friendship>, FriendsError>;

    /// The row of the pair `a`–`b`, in whatever state, if there is one.
    async fn pair(&self, a: UserId, b: UserId) -> Result<Option<Friendship>, FriendsError>;
}
