//! One contract suite for both relationship caches: Redis (unique key prefix per test) and
//! in memory.

use std::sync::Arc;
use std::time::Duration;

use messenger_common::testing;
use messenger_friends::cache::{
    InMemoryRelationshipCache, RedisRelationshipCache, RelationshipCache,
};
use messenger_friends::domain::{Friendship, FriendshipStatus, UserId, now};

async fn in_memory(ttl: Duration) -> Arc<dyn RelationshipCache> {
    Arc::new(InMemoryRelationshipCache::new(ttl))
}

async fn redis(ttl: Duration) -> Arc<dyn RelationshipCache> {
    let connection = messenger_common::redis::connect(testing::redis_url())
        .await
        .unwrap_or_else(|e| panic!("TEST_REDIS_URL ({}) unreachable: {e}", testing::redis_url()));
    Arc::new(RedisRelationshipCache::new(
        connection,
        testing::unique_prefix(),
        ttl,
    ))
}

/// The view most cases cache.
const VIEW: &str = "friends:50:";

fn rows(a: UserId, b: UserId) -> Vec<Friendship> {
    let at = now();
    vec![Friendship {
        requester: a,
        addressee: b,
        status: FriendshipStatus::Accepted,
        created_at: at,
        updated_at: at,
    }]
}

/// A stored read is returned until the user is invalidated.
async fn stores_until_invalidated(cache: Arc<dyn RelationshipCache>) {
    let (a, b) = (UserId::new_random(), UserId::new_random());
    let first = cache.lookup(a, VIEW).await.unwrap();
    assert_eq!(first.rows, None);
    let stored = rows(a, b);
    cache
        .store(a, VIEW, first.generation, &stored)
        .await
        .unwrap();
    let hit = cache.lookup(a, VIEW).await.unwrap();
    assert_eq!(hit.rows, Some(stored));
    assert_eq!(hit.generation, first.generation);

    cache.invalidate(&[a, b]).await.unwrap();
    let after = cache.lookup(a, VIEW).await.unwrap();
    assert_eq!(after.rows, None);
    assert_ne!(after.generation, first.generation);
}

/// A read that started before an invalidation cannot put its stale result back.
async fn stale_reads_are_not_served(cache: Arc<dyn RelationshipCache>) {
    let (a, b) = (UserId::new_random(), UserId::new_random());
    let before_change = cache.lookup(a, VIEW).await.unwrap();
    cache.invalidate(&[a]).await.unwrap();
    cache
        .store(a, VIEW, before_change.generation, &rows(a, b))
        .await
        .unwrap();
    assert_eq!(cache.lookup(a, VIEW).await.unwrap().rows, None);
}

/// Invalidating one user leaves others cached.
async fn invalidation_is_per_user(cache: Arc<dyn RelationshipCache>) {
    let (a, b, c) = (
        UserId::new_random(),
        UserId::new_random(),
        UserId::new_random(),
    );
    for user in [a, c] {
        let lookup = cache.lookup(user, VIEW).await.unwrap();
        cache
            .store(user, VIEW, lookup.generation, &rows(user, b))
            .await
            .unwrap();
    }
    cache.invalidate(&[a, b]).await.unwrap();
    assert_eq!(cache.lookup(a, VIEW).await.unwrap().rows, None);
    assert!(cache.lookup(c, VIEW).await.unwrap().rows.is_some());
}

/// Each view of a user is its own entry, and an invalidation makes all of them stale.
async fn views_are_separate_and_invalidated_together(cache: Arc<dyn RelationshipCache>) {
    let (a, b, c) = (
        UserId::new_random(),
        UserId::new_random(),
        UserId::new_random(),
    );
    let generation = cache.lookup(a, VIEW).await.unwrap().generation;
    let (friends, incoming) = (rows(a, b), rows(c, a));
    cache.store(a, VIEW, generation, &friends).await.unwrap();
    cache
        .store(a, "incoming:2:", generation, &incoming)
        .await
        .unwrap();
    assert_eq!(cache.lookup(a, VIEW).await.unwrap().rows, Some(friends));
    assert_eq!(
        cache.lookup(a, "incoming:2:").await.unwrap().rows,
        Some(incoming)
    );
    assert_eq!(cache.lookup(a, "incoming:50:").await.unwrap().rows, None);
    cache.invalidate(&[a]).await.unwrap();
    for view in [VIEW, "incoming:2:"] {
        assert_eq!(cache.lookup(a, view).await.unwrap().rows, None, "{view}");
    }
}

/// Entries expire after the TTL.
async fn entries_expire(cache: Arc<dyn RelationshipCache>) {
    let (a, b) = (UserId::new_random(), UserId::new_random());
    let lookup = cache.lookup(a, VIEW).await.unwrap();
    cache
        .store(a, VIEW, lookup.generation, &rows(a, b))
        .await
        .unwrap();
    assert!(cache.lookup(a, VIEW).await.unwrap().rows.is_some());
    tokio::time::sleep(Duration::from_millis(2100)).await;
    assert_eq!(cache.lookup(a, VIEW).await.unwrap().rows, None);
}

macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod in_memory_cache {
            $(#[tokio::test]
            async fn $name() { super::$name(super::in_memory(std::time::Duration::from_secs(1)).await).await })*
        }
        mod redis_cache {
            $(#[tokio::test]
            async fn $name() { super::$name(super::redis(std::time::Duration::from_secs(1)).await).await })*
        }
    };
}

contract!(
    stores_until_invalidated,
    stale_reads_are_not_served,
    invalidation_is_per_user,
    views_are_separate_and_invalidated_together,
    entries_expire,
);

/// Generation keys expire (idle users leave nothing in Redis) but outlive the entries
/// written under them, so an expired generation can never make an old entry current.
#[tokio::test]
async fn redis_generation_keys_expire_after_the_entries_written_under_them() {
    let connection = messenger_common::redis::connect(testing::redis_url())
        .await
        .unwrap_or_else(|e| panic!("TEST_REDIS_URL ({}) unreachable: {e}", testing::redis_url()));
    let prefix = testing::unique_prefix();
    let ttl = Duration::from_secs(60);
    let cache = RedisRelationshipCache::new(connection.clone(), prefix.clone(), ttl);
    let (a, b) = (UserId::new_random(), UserId::new_random());
    cache.invalidate(&[a]).await.unwrap();
    let generation = cache.lookup(a, VIEW).await.unwrap().generation;
    cache.store(a, VIEW, generation, &rows(a, b)).await.unwrap();

    let ttl_of = |key: String| {
        let mut connection = connection.clone();
        async move {
            redis::cmd("TTL")
                .arg(key)
                .query_async::<i64>(&mut connection)
                .await
                .unwrap()
        }
    };
    let entry_ttl = ttl_of(format!("{prefix}rel:{a}:{VIEW}")).await;
    let generation_ttl = ttl_of(format!("{prefix}gen:{a}")).await;
    assert!((1..=60).contains(&entry_ttl), "entry TTL {entry_ttl}");
    assert!(
        generation_ttl > entry_ttl && generation_ttl <= 120,
        "generation TTL {generation_ttl} must exceed the entry's {entry_ttl}"
    );
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut connection.clone())
        .await
        .unwrap();
    for key in keys {
        assert!(ttl_of(key.clone()).await > 0, "{key} has no expiry");
    }
}
