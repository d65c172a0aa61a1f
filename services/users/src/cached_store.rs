//! [`CachedProfileStore`]: the profile store read through the cache. The store is the source
//! of truth; every cache call is bounded by a timeout and a failing or slow cache only costs
//! a warning and a database read, never an error to the caller.
//!
//! Invalidation: an update writes the new profile through to the cache (its higher version
//! beats any slower reader still holding the old one), drops the old nickname entry and
//! bumps the search generation, so no cached search page is read again. A new profile bumps
//! the search generation too.
//!
//! During a cache outage, lookups and fills pause for a few seconds after each failure, so
//! an outage costs one timeout now and then instead of one per request or event.
//! Invalidations after an update are always attempted; a new profile's search invalidation
//! may be skipped, so the search pages are invalidated once the cache answers again.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use messenger_common::Metrics;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::time::Instant;
use uuid::Uuid;

use crate::cache::ProfileCache;
use crate::domain::{
    Nickname, Profile, ProfileUpdate, Registration, RegistrationOutcome, SearchPage, SearchQuery,
};
use crate::error::UsersError;
use crate::store::ProfileStore;

/// How long skippable cache calls are skipped after a cache call failed or timed out.
pub const CACHE_PAUSE_AFTER_FAILURE: Duration = Duration::from_secs(5);

/// Whether a cache call may be skipped while the cache is paused after a failure.
#[derive(Clone, Copy, PartialEq, Eq)]
enum CacheUse {
    /// Lookups, fills, and the search invalidation after a new profile (which the search
    /// invalidation on recovery makes up for).
    Skippable,
    /// Invalidations after an update: always attempted.
    Required,
}

/// Upper bound of remembered profiles whose cache entry could not be replaced; past it the
/// oldest are forgotten (their entries expire with the TTL anyway).
const MAX_STALE_PROFILES: usize = 10_000;

#[derive(Default)]
struct CacheHealth {
    paused_until: Option<Instant>,
    /// A call failed or was skipped since the last successful search invalidation: cached
    /// search pages may miss a change, so they are invalidated once the cache answers again.
    searches_may_be_stale: bool,
    /// Updated profiles whose new version could not be written to the cache: their old
    /// entries are dropped once the cache answers again.
    stale_profiles: Vec<Uuid>,
}

impl CacheHealth {
    fn needs_repair(&self) -> bool {
        self.searches_may_be_stale || !self.stale_profiles.is_empty()
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheCallLabels {
    operation: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheLookupLabels {
    kind: String,
    result: String,
}

/// Cache counters: calls by operation and outcome (`ok`, `failed`, `skipped`) and lookups
/// by kind (`profile`, `nickname`, `search`) and result (`hit`, `miss`).
#[derive(Clone, Default)]
pub struct CacheMetrics {
    calls: Family<CacheCallLabels, Counter>,
    lookups: Family<CacheLookupLabels, Counter>,
}

impl CacheMetrics {
    /// Counters registered in `metrics` as `users_cache_calls` and `users_cache_lookups`.
    pub fn register(metrics: &Metrics) -> Self {
        let cache_metrics = Self::default();
        metrics.register(
            "users_cache_calls",
            "Profile cache calls, by operation and outcome (ok|failed|skipped)",
            cache_metrics.calls.clone(),
        );
        metrics.register(
            "users_cache_lookups",
            "Profile cache lookups, by kind (profile|nickname|search) and result (hit|miss)",
            cache_metrics.lookups.clone(),
        );
        cache_metrics
    }

    fn call(&self, operation: &str, outcome: &str) {
        self.calls
            .get_or_create(&CacheCallLabels {
                operation: operation.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    fn lookup(&self, kind: &str, hit: bool) {
        self.lookups
            .get_or_create(&CacheLookupLabels {
                kind: kind.to_owned(),
                result: if hit { "hit" } else { "miss" }.to_owned(),
            })
            .inc();
    }
}

pub struct CachedProfileStore {
    metrics: CacheMetrics,
    store: Arc<dyn ProfileStore>,
    cache: Arc<dyn ProfileCache>,
    cache_timeout: Duration,
    pause_after_failure: Duration,
    health: Mutex<CacheHealth>,
}

impl CachedProfileStore {
    pub fn new(
        store: Arc<dyn ProfileStore>,
        cache: Arc<dyn ProfileCache>,
        cache_timeout: Duration,
    ) -> Self {
        Self {
            metrics: CacheMetrics::default(),
            store,
            cache,
            cache_timeout,
            pause_after_failure: CACHE_PAUSE_AFTER_FAILURE,
            health: Mutex::new(CacheHealth::default()),
        }
    }

    /// Counts cache calls and lookups in `metrics` (unregistered counters otherwise).
    pub fn with_metrics(mut self, metrics: CacheMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Overrides [`CACHE_PAUSE_AFTER_FAILURE`] (tests use a short one).
    pub fn with_pause_after_failure(mut self, pause: Duration) -> Self {
        self.pause_after_failure = pause;
        self
    }

    fn health(&self) -> std::sync::MutexGuard<'_, CacheHealth> {
        // Plain flags cannot be left half-written: a poisoned lock is still valid.
        self.health
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs a cache call; `None` when it was skipped, failed or timed out (failures are
    /// logged as warnings and pause skippable calls).
    async fn cache_op<T>(
        &self,
        kind: CacheUse,
        operation: &'static str,
        call: impl Future<Output = Result<T, UsersError>>,
    ) -> Option<T> {
        let needs_repair = {
            let mut health = self.health();
            let paused = health
                .paused_until
                .is_some_and(|until| Instant::now() < until);
            if paused && kind == CacheUse::Skippable {
                health.searches_may_be_stale = true;
                self.metrics.call(operation, "skipped");
                return None;
            }
            health.needs_repair()
        };
        // First call after an outage: repair BEFORE anything is read, so nothing cached
        // before a failed or skipped invalidation is served.
        if needs_repair && !self.repair().await {
            return None;
        }
        match self.bounded(call).await {
            Ok(value) => {
                self.metrics.call(operation, "ok");
                Some(value)
            }
            Err(failure) => {
                self.cache_failed(operation, &failure);
                None
            }
        }
    }

    /// Drops what may have gone stale while the cache was failing; `false` if the cache
    /// failed again.
    async fn repair(&self) -> bool {
        let stale_profiles = std::mem::take(&mut self.health().stale_profiles);
        for (done, user_id) in stale_profiles.iter().enumerate() {
            if let Err(failure) = self.bounded(self.cache.forget_profile(*user_id)).await {
                self.health()
                    .stale_profiles
                    .extend_from_slice(&stale_profiles[done..]);
                self.cache_failed("drop stale profiles after an outage", &failure);
                return false;
            }
        }
        if let Err(failure) = self.bounded(self.cache.invalidate_searches()).await {
            self.cache_failed("invalidate searches after an outage", &failure);
            return false;
        }
        let mut health = self.health();
        health.searches_may_be_stale = false;
        health.paused_until = None;
        tracing::info!(
            dropped_profiles = stale_profiles.len(),
            "cache answers again; stale entries dropped and search pages invalidated"
        );
        true
    }

    /// The call's result, or why it failed (its error, or no answer within the timeout).
    async fn bounded<T>(
        &self,
        call: impl Future<Output = Result<T, UsersError>>,
    ) -> Result<T, String> {
        match tokio::time::timeout(self.cache_timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err(format!("no answer within {:?}", self.cache_timeout)),
        }
    }

    fn cache_failed(&self, operation: &'static str, failure: &str) {
        self.metrics.call(operation, "failed");
        tracing::warn!(operation, error = %failure, pause = ?self.pause_after_failure, "cache failed; using the database");
        let mut health = self.health();
        health.paused_until = Some(Instant::now() + self.pause_after_failure);
        health.searches_may_be_stale = true;
    }

    pub async fn get(&self, user_id: Uuid) -> Result<Profile, UsersError> {
        let cached = self
            .cache_op(
                CacheUse::Skippable,
                "get profile",
                self.cache.get_profile(user_id),
            )
            .await;
        if let Some(cached) = cached {
            self.metrics.lookup("profile", cached.is_some());
            if let Some(profile) = cached {
                return Ok(profile);
            }
        }
        let profile = self
            .store
            .get(user_id)
            .await?
            .ok_or_else(|| UsersError::ProfileNotFound(user_id.to_string()))?;
        self.cache_op(
            CacheUse::Skippable,
            "put profile",
            self.cache.put_profile(&profile),
        )
        .await;
        Ok(profile)
    }

    /// The profiles of `user_ids` that exist, straight from the store: one indexed query
    /// for the whole batch costs less than a cache round trip per id.
    pub async fn get_many(&self, user_ids: &[Uuid]) -> Result<Vec<Profile>, UsersError> {
        if user_ids.is_empty() {
            return Ok(Vec::new());
        }
        self.store.get_many(user_ids).await
    }

    pub async fn get_by_nickname(&self, nickname: &Nickname) -> Result<Profile, UsersError> {
        let cached_user_id = self
            .cache_op(
                CacheUse::Skippable,
                "get nickname",
                self.cache.get_user_id_by_nickname(nickname.as_str()),
            )
            .await;
        if let Some(cached_user_id) = cached_user_id {
            let cached_profile = match cached_user_id {
                Some(user_id) => self
                    .cache_op(
                        CacheUse::Skippable,
                        "get profile",
                        self.cache.get_profile(user_id),
                    )
                    .await
                    .flatten(),
                None => None,
            }
            // The nickname entry may predate a rename; only a matching profile is a hit.
            .filter(|profile| profile.nickname == nickname.as_str());
            self.metrics.lookup("nickname", cached_profile.is_some());
            if let Some(profile) = cached_profile {
                return Ok(profile);
            }
        }
        let profile = self
            .store
            .get_by_nickname(nickname.as_str())
            .await?
            .ok_or_else(|| UsersError::NicknameNotFound(nickname.to_string()))?;
        self.cache_op(
            CacheUse::Skippable,
            "put profile",
            self.cache.put_profile(&profile),
        )
        .await;
        Ok(profile)
    }

    /// Applies the update (an empty one just returns the profile) and invalidates the cache.
    pub async fn update(
        &self,
        user_id: Uuid,
        update: &ProfileUpdate,
    ) -> Result<Profile, UsersError> {
        if update.is_empty() {
            return self.get(user_id).await;
        }
        let updated = self.store.update(user_id, update).await?;
        let profile = updated.profile;
        // Writing the new version through (rather than deleting) also defeats slow readers.
        if self
            .cache_op(
                CacheUse::Required,
                "put updated profile",
                self.cache.put_profile(&profile),
            )
            .await
            .is_none()
        {
            let mut health = self.health();
            if health.stale_profiles.len() >= MAX_STALE_PROFILES {
                health.stale_profiles.remove(0);
            }
            health.stale_profiles.push(profile.user_id);
        }
        if updated.previous_nickname != profile.nickname {
            self.cache_op(
                CacheUse::Required,
                "forget nickname",
                self.cache.forget_nickname(&updated.previous_nickname),
            )
            .await;
        }
        // Search pages carry whole profiles, so any change makes them stale.
        self.cache_op(
            CacheUse::Required,
            "invalidate searches",
            self.cache.invalidate_searches(),
        )
        .await;
        Ok(profile)
    }

    pub async fn search(&self, query: &SearchQuery) -> Result<SearchPage, UsersError> {
        let generation = self
            .cache_op(
                CacheUse::Skippable,
                "search generation",
                self.cache.search_generation(),
            )
            .await;
        if let Some(generation) = generation
            && let Some(cached) = self
                .cache_op(
                    CacheUse::Skippable,
                    "get search page",
                    self.cache.get_search_page(generation, query),
                )
                .await
        {
            self.metrics.lookup("search", cached.is_some());
            if let Some(page) = cached {
                return Ok(page);
            }
        }
        let rows = self
            .store
            .search(query, query.page_size as usize + 1)
            .await?;
        let page = query.page_from_rows(rows);
        if let Some(generation) = generation {
            self.cache_op(
                CacheUse::Skippable,
                "put search page",
                self.cache.put_search_page(generation, query, &page),
            )
            .await;
        }
        Ok(page)
    }

    /// Creates the profile of a registration (exactly once, see [`ProfileStore`]).
    pub async fn register(
        &self,
        registration: &Registration,
    ) -> Result<RegistrationOutcome, UsersError> {
        let outcome = self.store.create_from_registration(registration).await?;
        if matches!(outcome, RegistrationOutcome::Created(_)) {
            self.cache_op(
                CacheUse::Skippable,
                "invalidate searches",
                self.cache.invalidate_searches(),
            )
            .await;
        }
        Ok(outcome)
    }
}
