//! Cache of the pages of each user's lists: a *view* names one page of one list (the
//! friend list or a request list, with its cursor and size), and its entry holds the rows
//! of that page.
//!
//! The cache is never the source of truth: callers fall back to the store when it fails.
//! To keep a slow reader from putting back a list that a concurrent change just
//! invalidated, every user has a *generation* counter: a reader notes the generation before
//! reading the store and stores its result under it; a change bumps the generation of both
//! users after its commit; an entry whose generation is not the current one is a miss.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use messenger_common::redis::LazyConnection;
use redis::aio::ConnectionManager;
use serde::{Deserialize, Serialize};

use crate::domain::{Friendship, UserId};
use crate::error::FriendsError;

/// The view of one page of one of a user's lists (`list`: `friends`, `incoming` or
/// `outgoing`), read `limit` rows at a time from `cursor`.
pub fn page_view(list: &str, limit: usize, cursor: &str) -> String {
    format!("{list}:{limit}:{cursor}")
}

/// What a cache lookup found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CacheLookup {
    /// The user's current generation; pass it to [`RelationshipCache::store`] with what
    /// the store returned for a miss.
    pub generation: u64,
    /// The cached rows, if there is a fresh entry.
    pub rows: Option<Vec<Friendship>>,
}

/// Cache of the pages of each user's lists; see the module docs.
#[async_trait]
pub trait RelationshipCache: Send + Sync + 'static {
    /// The cached rows of `user`'s `view`, and the generation to store a fresh read under.
    async fn lookup(&self, user: UserId, view: &str) -> Result<CacheLookup, FriendsError>;

    /// Caches `rows` as `user`'s `view`, read from the store after a lookup returned
    /// `generation`.
    async fn store(
        &self,
        user: UserId,
        view: &str,
        generation: u64,
        rows: &[Friendship],
    ) -> Result<(), FriendsError>;

    /// Makes every cached view of `users` stale (called after each change, for both sides).
    async fn invalidate(&self, users: &[UserId]) -> Result<(), FriendsError>;
}

#[derive(Serialize, Deserialize)]
struct CachedEntry {
    generation: u64,
    rows: Vec<Friendship>,
}

/// The cache in Redis: `<prefix>rel:<user>:<view>` holds a JSON entry with a TTL,
/// `<prefix>gen:<user>` the user's generation. Invalidation bumps the generation, which
/// makes every view of the user stale at once; stale entries then expire with their TTL.
/// The generation key expires too (after two entry TTLs, renewed by every entry write), so
/// idle users leave nothing behind; it always outlives the entries written under it, so it
/// never goes back to an old value while an old entry still exists.
///
/// Built with [`RedisRelationshipCache::connect_lazily`], it connects on first use and
/// retries on later calls while Redis is unreachable, so the service starts and serves
/// from the database without Redis.
#[derive(Clone)]
pub struct RedisRelationshipCache {
    connection: LazyConnection,
    prefix: String,
    ttl: Duration,
}

impl RedisRelationshipCache {
    /// A cache on `connection`, every key starting with `prefix` (plus `:` if it does not
    /// end with one), entries living `ttl`.
    pub fn new(connection: ConnectionManager, prefix: impl Into<String>, ttl: Duration) -> Self {
        RedisRelationshipCache {
            connection: LazyConnection::connected(connection),
            prefix: key_prefix(prefix.into()),
            ttl,
        }
    }

    /// A cache that connects to `url` on first use (and again on later calls until that
    /// succeeds). Fails only for a malformed URL.
    pub fn connect_lazily(
        url: impl Into<messenger_common::redis::RedisConfig>,
        prefix: impl Into<String>,
        ttl: Duration,
    ) -> Result<Self, messenger_common::Error> {
        Ok(RedisRelationshipCache {
            connection: LazyConnection::new(url)?,
            prefix: key_prefix(prefix.into()),
            ttl,
        })
    }

    async fn connection(&self) -> Result<ConnectionManager, FriendsError> {
        self.connection
            .get()
            .await
            .map_err(|error| FriendsError::Unavailable(format!("redis: {error}")))
    }

    fn entry_ttl_secs(&self) -> u64 {
        self.ttl.as_secs().max(1)
    }

    fn generation_ttl_secs(&self) -> i64 {
        i64::try_from(self.entry_ttl_secs().saturating_mul(2)).unwrap_or(i64::MAX)
    }

    fn entry_key(&self, user: UserId, view: &str) -> String {
        format!("{}rel:{user}:{view}", self.prefix)
    }

    fn generation_key(&self, user: UserId) -> String {
        format!("{}gen:{user}", self.prefix)
    }
}

/// `prefix` ending in `:` (added if missing), so `app:friends` gives `app:friends:rel:<id>`.
fn key_prefix(mut prefix: String) -> String {
    if !prefix.is_empty() && !prefix.ends_with(':') {
        prefix.push(':');
    }
    prefix
}

#[async_trait]
impl RelationshipCache for RedisRelationshipCache {
    async fn lookup(&self, user: UserId, view: &str) -> Result<CacheLookup, FriendsError> {
        let mut connection = self.connection().await?;
        let (generation, entry): (Option<u64>, Option<String>) = redis::pipe()
            .get(self.generation_key(user))
            .get(self.entry_key(user, view))
            .query_async(&mut connection)
            .await?;
        let generation = generation.unwrap_or(0);
        // An entry we cannot parse (written by another version) is just a miss.
        let rows = entry
            .and_then(|json| serde_json::from_str::<CachedEntry>(&json).ok())
            .filter(|entry| entry.generation == generation)
            .map(|entry| entry.rows);
        Ok(CacheLookup { generation, rows })
    }

    async fn store(
        &self,
        user: UserId,
        view: &str,
        generation: u64,
        rows: &[Friendship],
    ) -> Result<(), FriendsError> {
        let json = serde_json::to_string(&CachedEntry {
            generation,
            rows: rows.to_vec(),
        })
        .map_err(|error| FriendsError::Internal(format!("encoding cache entry: {error}")))?;
        let mut connection = self.connection().await?;
        // EXPIRE does nothing to a missing generation key (generation 0).
        let _: () = redis::pipe()
            .set_ex(self.entry_key(user, view), json, self.entry_ttl_secs())
            .ignore()
            .expire(self.generation_key(user), self.generation_ttl_secs())
            .ignore()
            .query_async(&mut connection)
            .await?;
        Ok(())
    }

    async fn invalidate(&self, users: &[UserId]) -> Result<(), FriendsError> {
        let mut pipe = redis::pipe();
        for user in users {
            pipe.incr(self.generation_key(*user), 1).ignore();
            pipe.expire(self.generation_key(*user), self.generation_ttl_secs())
                .ignore();
        }
        let mut connection = self.connection().await?;
        let _: () = pipe.query_async(&mut connection).await?;
        Ok(())
    }
}

#[derive(Default)]
struct InMemoryCacheState {
    generations: HashMap<UserId, u64>,
    entries: HashMap<(UserId, String), (u64, Instant, Vec<Friendship>)>,
}

/// Beyond this many entries, a store first drops the expired ones.
const IN_MEMORY_PRUNE_AT: usize = 10_000;

/// The cache in process memory, with the same generation and TTL rules.
pub struct InMemoryRelationshipCache {
    state: Mutex<InMemoryCacheState>,
    ttl: Duration,
}

impl InMemoryRelationshipCache {
    /// An empty cache whose entries live `ttl`.
    pub fn new(ttl: Duration) -> Self {
        InMemoryRelationshipCache {
            state: Mutex::new(InMemoryCacheState::default()),
            ttl,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, InMemoryCacheState> {
        // The state stays consistent even if a holder panicked: every update is one insert.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[async_trait]
impl RelationshipCache for InMemoryRelationshipCache {
    async fn lookup(&self, user: UserId, view: &str) -> Result<CacheLookup, FriendsError> {
        let state = self.state();
        let generation = state.generations.get(&user).copied().unwrap_or(0);
        let rows = state
            .entries
            .get(&(user, view.to_owned()))
            .filter(|(entry_generation, expires, _)| {
                *entry_generation == generation && *expires > Instant::now()
            })
            .map(|(_, _, rows)| rows.clone());
        Ok(CacheLookup { generation, rows })
    }

    async fn store(
        &self,
        user: UserId,
        view: &str,
        generation: u64,
        rows: &[Friendship],
    ) -> Result<(), FriendsError> {
        let now = Instant::now();
        let mut state = self.state();
        if state.entries.len() >= IN_MEMORY_PRUNE_AT {
            state.entries.retain(|_, (_, expires, _)| *expires > now);
        }
        state.entries.insert(
            (user, view.to_owned()),
            (generation, now + self.ttl, rows.to_vec()),
        );
        Ok(())
    }

    async fn invalidate(&self, users: &[UserId]) -> Result<(), FriendsError> {
        let mut state = self.state();
        for user in users {
            *state.generations.entry(*user).or_insert(0) += 1;
        }
        state.entries.retain(|(user, _), _| !users.contains(user));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::key_prefix;

    #[test]
    fn key_prefixes_end_with_a_separator() {
        assert_eq!(key_prefix("app:friends".into()), "app:friends:");
        assert_eq!(key_prefix("friends:".into()), "friends:");
        assert_eq!(key_prefix(String::new()), "");
    }
}
