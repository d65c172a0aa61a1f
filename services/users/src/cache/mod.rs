//! Profile cache: the [`ProfileCache`] trait, its Redis implementation ([`RedisProfileCache`])
//! and an in-memory one ([`InMemoryProfileCache`]). Both pass the same contract suite
//! (`tests/profile_cache_contract.rs`). The cache is never the source of truth: see
//! [`crate::cached_store::CachedProfileStore`] for how it is read, filled and invalidated.

mod memory;
mod redis;

pub use memory::InMemoryProfileCache;
pub use redis::RedisProfileCache;

use async_trait::async_trait;
use uuid::Uuid;

use crate::domain::{Profile, SearchPage, SearchQuery};
use crate::error::UsersError;

/// Cached profiles (by id), nickname → user id entries, and search pages. Every entry
/// expires after the cache's TTL.
#[async_trait]
pub trait ProfileCache: Send + Sync + 'static {
    async fn get_profile(&self, user_id: Uuid) -> Result<Option<Profile>, UsersError>;

    /// Stores the profile under its id and its nickname under the id — unless the cache
    /// already holds a higher `version` of it, so a slow reader cannot overwrite a newer
    /// profile with the one it read before an update.
    async fn put_profile(&self, profile: &Profile) -> Result<(), UsersError>;

    /// The user id a nickname pointed to when cached. May be stale after a rename: callers
    /// check the nickname of the profile it leads to.
    async fn get_user_id_by_nickname(&self, nickname: &str) -> Result<Option<Uuid>, UsersError>;

    async fn forget_nickname(&self, nickname: &str) -> Result<(), UsersError>;

    /// Drops the profile entry (when writing a newer version through was not possible).
    async fn forget_profile(&self, user_id: Uuid) -> Result<(), UsersError>;

    /// The current search generation; pages are stored and read under it.
    async fn search_generation(&self) -> Result<u64, UsersError>;

    async fn get_search_page(
        &self,
        generation: u64,
        query: &SearchQuery,
    ) -> Result<Option<SearchPage>, UsersError>;

    /// Stores a page under the generation read BEFORE the database query, so a page
    /// computed from data older than an invalidation lands under a generation nobody reads.
    async fn put_search_page(
        &self,
        generation: u64,
        query: &SearchQuery,
        page: &SearchPage,
    ) -> Result<(), UsersError>;

    /// Makes every cached search page unreachable (a profile was created or renamed).
    async fn invalidate_searches(&self) -> Result<(), UsersError>;
}

/// The key part identifying a search page; prefix and cursor use only nickname characters,
/// so `:` separates unambiguously.
pub(crate) fn search_page_key(query: &SearchQuery) -> String {
    format!(
        "{}:{}:{}",
        query.page_size,
        query.prefix,
        query.after.as_deref().unwrap_or("")
    )
}
