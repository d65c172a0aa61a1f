//! Redis [`ProfileCache`]. Keys (all under the configured prefix):
//! `profile:<user id>` → `<version>|<profile JSON>`, `nickname:<nickname>` → user id,
//! `search:<generation>:<page size>:<prefix>:<cursor>` → page JSON, all expiring after the
//! TTL; and `search:generation` → counter, expiring a day (or two TTLs) after the last
//! invalidation.

use std::time::Duration;

use async_trait::async_trait;
use messenger_common::redis::LazyConnection;
use redis::AsyncCommands;
use redis::aio::ConnectionManager;
use uuid::Uuid;

use super::{ProfileCache, search_page_key};
use crate::domain::{Profile, SearchPage, SearchQuery};
use crate::error::UsersError;

/// Sets the profile and nickname entries unless the cached profile has a higher version.
/// KEYS: profile key, nickname key. ARGV: version, profile JSON, TTL ms, user id.
const PUT_PROFILE_SCRIPT: &str = r"
local current = redis.call('GET', KEYS[1])
if current then
  local cached_version = tonumber(string.match(current, '^(%d+)|'))
  if cached_version and cached_version > tonumber(ARGV[1]) then return 0 end
end
redis.call('SET', KEYS[1], ARGV[1] .. '|' .. ARGV[2], 'PX', ARGV[3])
redis.call('SET', KEYS[2], ARGV[4], 'PX', ARGV[3])
return 1
";

/// Shortest lifetime of the search generation counter (one day).
const GENERATION_MIN_TTL_MS: u64 = 24 * 60 * 60 * 1000;

/// Profiles and search pages in Redis.
pub struct RedisProfileCache {
    /// Connected lazily by the service: the first cache call connects (and retries on
    /// later calls while Redis is down), so the service starts and serves without Redis.
    connection: LazyConnection,
    key_prefix: String,
    ttl: Duration,
    put_profile_script: redis::Script,
}

impl RedisProfileCache {
    /// A cache over an open connection.
    pub fn new(
        connection: ConnectionManager,
        key_prefix: impl Into<String>,
        ttl: Duration,
    ) -> Self {
        Self {
            connection: LazyConnection::connected(connection),
            key_prefix: key_prefix.into(),
            ttl,
            put_profile_script: redis::Script::new(PUT_PROFILE_SCRIPT),
        }
    }

    /// A cache that connects to `url` on first use; until Redis answers every call fails
    /// (and the caller falls back to the database). Fails only for a malformed URL.
    pub fn connect_lazily(
        url: impl Into<messenger_common::redis::RedisConfig>,
        key_prefix: impl Into<String>,
        ttl: Duration,
    ) -> Result<Self, UsersError> {
        Ok(Self {
            connection: LazyConnection::new(url)?,
            key_prefix: key_prefix.into(),
            ttl,
            put_profile_script: redis::Script::new(PUT_PROFILE_SCRIPT),
        })
    }

    async fn connection(&self) -> Result<ConnectionManager, UsersError> {
        Ok(self.connection.get().await?)
    }

    fn ttl_ms(&self) -> u64 {
        u64::try_from(self.ttl.as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
    }

    fn profile_key(&self, user_id: Uuid) -> String {
        format!("{}profile:{user_id}", self.key_prefix)
    }

    fn nickname_key(&self, nickname: &str) -> String {
        format!("{}nickname:{nickname}", self.key_prefix)
    }

    fn generation_key(&self) -> String {
        format!("{}search:generation", self.key_prefix)
    }

    fn search_key(&self, generation: u64, query: &SearchQuery) -> String {
        format!(
            "{}search:{generation}:{}",
            self.key_prefix,
            search_page_key(query)
        )
    }
}

#[async_trait]
impl ProfileCache for RedisProfileCache {
    async fn get_profile(&self, user_id: Uuid) -> Result<Option<Profile>, UsersError> {
        let mut conn = self.connection().await?;
        let value: Option<String> = conn.get(self.profile_key(user_id)).await?;
        let Some(value) = value else { return Ok(None) };
        let Some((_version, json)) = value.split_once('|') else {
            return Ok(None);
        };
        Ok(Some(serde_json::from_str(json)?))
    }

    async fn put_profile(&self, profile: &Profile) -> Result<(), UsersError> {
        let json = serde_json::to_string(profile)?;
        let mut conn = self.connection().await?;
        let _stored: i64 = self
            .put_profile_script
            .key(self.profile_key(profile.user_id))
            .key(self.nickname_key(&profile.nickname))
            .arg(profile.version)
            .arg(json)
            .arg(self.ttl_ms())
            .arg(profile.user_id.to_string())
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }

    async fn get_user_id_by_nickname(&self, nickname: &str) -> Result<Option<Uuid>, UsersError> {
        let mut conn = self.connection().await?;
        let value: Option<String> = conn.get(self.nickname_key(nickname)).await?;
        // An unparsable entry is treated as a miss; the database answers instead.
        Ok(value.and_then(|id| Uuid::parse_str(&id).ok()))
    }

    async fn forget_nickname(&self, nickname: &str) -> Result<(), UsersError> {
        let mut conn = self.connection().await?;
        let _removed: u64 = conn.del(self.nickname_key(nickname)).await?;
        Ok(())
    }

    async fn forget_profile(&self, user_id: Uuid) -> Result<(), UsersError> {
        let mut conn = self.connection().await?;
        let _removed: u64 = conn.del(self.profile_key(user_id)).await?;
        Ok(())
    }

    async fn search_generation(&self) -> Result<u64, UsersError> {
        let mut conn = self.connection().await?;
        let generation: Option<u64> = conn.get(self.generation_key()).await?;
        Ok(generation.unwrap_or(0))
    }

    async fn get_search_page(
        &self,
        generation: u64,
        query: &SearchQuery,
    ) -> Result<Option<SearchPage>, UsersError> {
        let mut conn = self.connection().await?;
        let value: Option<String> = conn.get(self.search_key(generation, query)).await?;
        value
            .map(|json| serde_json::from_str(&json))
            .transpose()
            .map_err(UsersError::from)
    }

    async fn put_search_page(
        &self,
        generation: u64,
        query: &SearchQuery,
        page: &SearchPage,
    ) -> Result<(), UsersError> {
        let json = serde_json::to_string(page)?;
        let mut conn = self.connection().await?;
        let () = conn
            .pset_ex(self.search_key(generation, query), json, self.ttl_ms())
            .await?;
        Ok(())
    }

    async fn invalidate_searches(&self) -> Result<(), UsersError> {
        let mut conn = self.connection().await?;
        let key = self.generation_key();
        // The counter outlives every page by far (so a reset to 0 after its expiry cannot
        // reach a live page of an old generation 0) yet does not stay in Redis forever.
        let counter_ttl_ms = self.ttl_ms().saturating_mul(2).max(GENERATION_MIN_TTL_MS);
        let () = redis::pipe()
            .atomic()
            .incr(&key, 1)
            .ignore()
            .pexpire(&key, i64::try_from(counter_ttl_ms).unwrap_or(i64::MAX))
            .ignore()
            .query_async(&mut conn)
            .await?;
        Ok(())
    }
}
