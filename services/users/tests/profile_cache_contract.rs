//! One contract for `ProfileCache`, run against the in-memory cache and Redis (a unique
//! key prefix per test).

use std::sync::Arc;
use std::time::Duration;

use chrono::{SubsecRound, Utc};
use messenger_common::testing::{redis_url, unique_prefix};
use messenger_users::cache::{InMemoryProfileCache, ProfileCache, RedisProfileCache};
use messenger_users::domain::{Profile, SearchPage, SearchQuery};
use uuid::Uuid;

const TTL: Duration = Duration::from_secs(60);
const SHORT_TTL: Duration = Duration::from_millis(300);

fn profile(nickname: &str, version: i64) -> Profile {
    let now = Utc::now().trunc_subsecs(6);
    Profile {
        user_id: Uuid::now_v7(),
        nickname: nickname.to_owned(),
        bio: format!("bio v{version}"),
        avatar_url: String::new(),
        version,
        created_at: now,
        updated_at: now,
    }
}

fn page(nicknames: &[&str]) -> SearchPage {
    SearchPage {
        profiles: nicknames.iter().map(|n| profile(n, 1)).collect(),
        next_page_token: Some("token".into()),
    }
}

async fn profiles_are_found_by_id_and_nickname(cache: Arc<dyn ProfileCache>) {
    let alice = profile("alice", 1);
    assert_eq!(cache.get_profile(alice.user_id).await.unwrap(), None);
    assert_eq!(cache.get_user_id_by_nickname("alice").await.unwrap(), None);
    cache.put_profile(&alice).await.unwrap();
    assert_eq!(
        cache.get_profile(alice.user_id).await.unwrap(),
        Some(alice.clone())
    );
    assert_eq!(
        cache.get_user_id_by_nickname("alice").await.unwrap(),
        Some(alice.user_id)
    );
    cache.forget_nickname("alice").await.unwrap();
    assert_eq!(cache.get_user_id_by_nickname("alice").await.unwrap(), None);
    assert_eq!(
        cache.get_profile(alice.user_id).await.unwrap(),
        Some(alice),
        "id entry kept"
    );
}

async fn an_older_version_never_replaces_a_newer_one(cache: Arc<dyn ProfileCache>) {
    let v1 = profile("bob", 1);
    let v2 = Profile {
        nickname: "bobby".into(),
        bio: "bio v2".into(),
        version: 2,
        ..v1.clone()
    };
    cache.put_profile(&v2).await.unwrap();
    cache.put_profile(&v1).await.unwrap();
    assert_eq!(
        cache.get_profile(v1.user_id).await.unwrap(),
        Some(v2.clone())
    );
    assert_eq!(
        cache.get_user_id_by_nickname("bob").await.unwrap(),
        None,
        "a stale write must not restore the old nickname entry"
    );
    let v3 = Profile {
        bio: "bio v3".into(),
        version: 3,
        ..v2.clone()
    };
    cache.put_profile(&v3).await.unwrap();
    assert_eq!(cache.get_profile(v1.user_id).await.unwrap(), Some(v3));
}

async fn search_pages_live_under_a_generation(cache: Arc<dyn ProfileCache>) {
    let query = SearchQuery::parse("al", 2, "").unwrap();
    let other_size = SearchQuery::parse("al", 3, "").unwrap();
    let generation = cache.search_generation().await.unwrap();
    assert_eq!(
        cache.get_search_page(generation, &query).await.unwrap(),
        None
    );
    let cached = page(&["alice", "alina"]);
    cache
        .put_search_page(generation, &query, &cached)
        .await
        .unwrap();
    assert_eq!(
        cache.get_search_page(generation, &query).await.unwrap(),
        Some(cached.clone())
    );
    assert_eq!(
        cache
            .get_search_page(generation, &other_size)
            .await
            .unwrap(),
        None
    );

    cache.invalidate_searches().await.unwrap();
    let next = cache.search_generation().await.unwrap();
    assert_ne!(next, generation);
    assert_eq!(cache.get_search_page(next, &query).await.unwrap(), None);
    // A page computed before the invalidation is stored under the old generation: unread.
    cache
        .put_search_page(generation, &query, &cached)
        .await
        .unwrap();
    assert_eq!(cache.get_search_page(next, &query).await.unwrap(), None);
}

async fn entries_expire_after_the_ttl(cache: Arc<dyn ProfileCache>) {
    let carol = profile("carol", 1);
    let query = SearchQuery::parse("ca", 5, "").unwrap();
    cache.put_profile(&carol).await.unwrap();
    let generation = cache.search_generation().await.unwrap();
    cache
        .put_search_page(generation, &query, &page(&["carol"]))
        .await
        .unwrap();
    assert!(cache.get_profile(carol.user_id).await.unwrap().is_some());
    tokio::time::sleep(SHORT_TTL * 2).await;
    assert_eq!(cache.get_profile(carol.user_id).await.unwrap(), None);
    assert_eq!(cache.get_user_id_by_nickname("carol").await.unwrap(), None);
    assert_eq!(
        cache.get_search_page(generation, &query).await.unwrap(),
        None
    );
}

async fn redis_cache(ttl: Duration) -> Arc<dyn ProfileCache> {
    let url = redis_url();
    let connection = messenger_common::redis::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("TEST_REDIS_URL {url} is not reachable: {e}"));
    Arc::new(RedisProfileCache::new(connection, unique_prefix(), ttl))
}

macro_rules! contract {
    ($($test:ident: $ttl:expr),* $(,)?) => {
        mod in_memory {
            use super::*;
            $(
                #[tokio::test]
                async fn $test() {
                    super::$test(Arc::new(InMemoryProfileCache::new($ttl))).await;
                }
            )*
        }

        mod redis {
            use super::*;
            $(
                #[tokio::test]
                async fn $test() {
                    super::$test(redis_cache($ttl).await).await;
                }
            )*
        }
    };
}

contract!(
    profiles_are_found_by_id_and_nickname: TTL,
    an_older_version_never_replaces_a_newer_one: TTL,
    search_pages_live_under_a_generation: TTL,
    entries_expire_after_the_ttl: SHORT_TTL,
);

#[tokio::test]
async fn a_lazily_connected_cache_fails_while_redis_is_unreachable() {
    // Port 1 on localhost refuses connections: every call errors quickly, none panics.
    let cache =
        RedisProfileCache::connect_lazily("redis://127.0.0.1:1", unique_prefix(), TTL).unwrap();
    assert!(cache.get_profile(Uuid::now_v7()).await.is_err());
    assert!(cache.put_profile(&profile("dave", 1)).await.is_err());
    assert!(cache.search_generation().await.is_err());
}
