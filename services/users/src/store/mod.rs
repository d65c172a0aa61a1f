//! Profile storage: the [`ProfileStore`] trait, its PostgreSQL implementation
//! ([`PgProfileStore`]) and an in-memory one ([`InMemoryProfileStore`]) for the dev mode and
//! fast tests. Both pass the same contract suite (`tests/profile_store_contract.rs`).

mod memory;
mod postgres;

pub use memory::InMemoryProfileStore;
pub use postgres::PgProfileStore;

use async_trait::async_trait;
use uuid::Uuid;

use crate::domain::{Profile, ProfileUpdate, Registration, RegistrationOutcome, SearchQuery};
use crate::error::UsersError;

/// Name under which processed registration events are recorded. Fixed, unlike the Kafka
/// consumer group: a new group re-reads the topic, and the records keep that harmless.
pub const CONSUMER_NAME: &str = "users";

/// A profile after an update, with the nickname it had before (so caches can drop it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpdatedProfile {
    pub profile: Profile,
    pub previous_nickname: String,
}

/// Where profiles live. Every method is atomic; nicknames are unique.
#[async_trait]
pub trait ProfileStore: Send + Sync + 'static {
    /// Creates the profile of a registration exactly once: records the event id as processed
    /// in the same transaction, does nothing for an event id seen before or for a user id that
    /// already has a profile, and takes the first free nickname of
    /// [`crate::domain::registration_nickname_candidates`].
    async fn create_from_registration(
        &self,
        registration: &Registration,
    ) -> Result<RegistrationOutcome, UsersError>;

    async fn get(&self, user_id: Uuid) -> Result<Option<Profile>, UsersError>;

    /// The profiles of `user_ids` that exist, in no particular order.
    async fn get_many(&self, user_ids: &[Uuid]) -> Result<Vec<Profile>, UsersError>;

    /// `nickname` is lower-case (a [`crate::domain::Nickname`]).
    async fn get_by_nickname(&self, nickname: &str) -> Result<Option<Profile>, UsersError>;

    /// Applies a non-empty update and bumps `version`/`updated_at`.
    /// `ProfileNotFound` for an unknown user, `NicknameTaken` when another profile has the
    /// nickname (also when a concurrent update took it first); nothing changes on error.
    async fn update(
        &self,
        user_id: Uuid,
        update: &ProfileUpdate,
    ) -> Result<UpdatedProfile, UsersError>;

    /// Up to `limit` profiles whose nickname starts with `query.prefix` and sorts after
    /// `query.after`, in nickname (byte) order.
    async fn search(&self, query: &SearchQuery, limit: usize) -> Result<Vec<Profile>, UsersError>;
}
