//! The cache is never the source of truth: when it fails or hangs, every read and change
//! still works from the store (the service only logs a warning).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use messenger_common::events::InMemoryEventBus;
use messenger_friends::cache::{
    CacheLookup, InMemoryRelationshipCache, RelationshipCache, page_view,
};
use messenger_friends::directory::InMemoryUserDirectory;
use messenger_friends::domain::{Direction, Friendship, Outcome, PairAction, UserId};
use messenger_friends::error::FriendsError;
use messenger_friends::service::FriendsService;
use messenger_friends::store::InMemoryFriendshipStore;

/// A cache whose every call fails (Redis down) or never answers (Redis hung).
struct FailingCache {
    hang: bool,
}

impl FailingCache {
    async fn fail<T>(&self) -> Result<T, FriendsError> {
        if self.hang {
            tokio::time::sleep(Duration::from_secs(3600)).await;
        }
        Err(FriendsError::Unavailable("cache down".into()))
    }
}

#[async_trait]
impl RelationshipCache for FailingCache {
    async fn lookup(&self, _: UserId, _: &str) -> Result<CacheLookup, FriendsError> {
        self.fail().await
    }

    async fn store(
        &self,
        _: UserId,
        _: &str,
        _: u64,
        _: &[Friendship],
    ) -> Result<(), FriendsError> {
        self.fail().await
    }

    async fn invalidate(&self, _: &[UserId]) -> Result<(), FriendsError> {
        self.fail().await
    }
}

async fn works_without_the_cache(hang: bool) {
    let directory = Arc::new(InMemoryUserDirectory::new());
    let (alice, bob) = (UserId::new_random(), UserId::new_random());
    directory.insert(alice, "alice");
    directory.insert(bob, "bob");
    let service = FriendsService::new(
        Arc::new(InMemoryFriendshipStore::new(Arc::new(
            InMemoryEventBus::new(),
        ))),
        Arc::new(FailingCache { hang }),
        directory,
        Duration::from_millis(100),
    );
    let started = Instant::now();

    assert_eq!(
        service
            .change(alice, "bob", PairAction::SendRequest)
            .await
            .unwrap(),
        Outcome::Requested
    );
    let incoming = service
        .pending(bob, Direction::Incoming, 0, "")
        .await
        .unwrap()
        .requests;
    assert_eq!(incoming.len(), 1);
    assert_eq!(
        (
            incoming[0].from_nickname.as_str(),
            incoming[0].to_nickname.as_str()
        ),
        ("alice", "bob")
    );
    assert_eq!(
        service
            .change(bob, "alice", PairAction::AcceptRequest)
            .await
            .unwrap(),
        Outcome::Accepted
    );
    let friends = service.friends(alice, 0, "").await.unwrap().friends;
    assert_eq!(friends.len(), 1);
    assert_eq!(
        (friends[0].entry.user_id, friends[0].nickname.as_str()),
        (bob, "bob")
    );
    assert!(service.not_friends(bob, &[alice]).await.unwrap().is_empty());

    assert!(
        started.elapsed() < Duration::from_secs(5),
        "a hung cache is skipped after its timeout"
    );
}

#[tokio::test]
async fn a_failing_cache_falls_back_to_the_store() {
    works_without_the_cache(false).await;
}

#[tokio::test]
async fn a_hung_cache_is_skipped_after_its_timeout() {
    works_without_the_cache(true).await;
}

/// The in-memory cache, except that invalidations fail while `fail_invalidations` is set
/// (Redis unreachable from this replica for a moment, its data intact).
struct FlakyCache {
    inner: InMemoryRelationshipCache,
    fail_invalidations: AtomicBool,
}

#[async_trait]
impl RelationshipCache for FlakyCache {
    async fn lookup(&self, user: UserId, view: &str) -> Result<CacheLookup, FriendsError> {
        self.inner.lookup(user, view).await
    }

    async fn store(
        &self,
        user: UserId,
        view: &str,
        generation: u64,
        rows: &[Friendship],
    ) -> Result<(), FriendsError> {
        self.inner.store(user, view, generation, rows).await
    }

    async fn invalidate(&self, users: &[UserId]) -> Result<(), FriendsError> {
        if self.fail_invalidations.load(Ordering::SeqCst) {
            return Err(FriendsError::Unavailable("cache unreachable".into()));
        }
        self.inner.invalidate(users).await
    }
}

#[tokio::test]
async fn a_failed_invalidation_never_lets_a_stale_list_be_served() {
    let directory = Arc::new(InMemoryUserDirectory::new());
    let (alice, bob) = (UserId::new_random(), UserId::new_random());
    directory.insert(alice, "alice");
    directory.insert(bob, "bob");
    let cache = Arc::new(FlakyCache {
        inner: InMemoryRelationshipCache::new(Duration::from_secs(300)),
        fail_invalidations: AtomicBool::new(false),
    });
    let service = FriendsService::new(
        Arc::new(InMemoryFriendshipStore::new(Arc::new(
            InMemoryEventBus::new(),
        ))),
        cache.clone(),
        directory,
        Duration::from_millis(100),
    );
    service
        .change(alice, "bob", PairAction::SendRequest)
        .await
        .unwrap();
    assert!(
        service
            .friends(alice, 0, "")
            .await
            .unwrap()
            .friends
            .is_empty()
    ); // cached: no friends

    cache.fail_invalidations.store(true, Ordering::SeqCst);
    service
        .change(bob, "alice", PairAction::AcceptRequest)
        .await
        .unwrap();
    // The stale entry is still in the cache, but is not served.
    assert_eq!(
        service.friends(alice, 0, "").await.unwrap().friends.len(),
        1
    );

    cache.fail_invalidations.store(false, Ordering::SeqCst);
    assert_eq!(
        service.friends(alice, 0, "").await.unwrap().friends.len(),
        1
    );
    assert!(
        cache
            .inner
            .lookup(alice, &page_view("friends", 50, ""))
            .await
            .unwrap()
            .rows
            .is_some_and(|rows| rows.len() == 1),
        "once the owed invalidation went through, the fresh list is cached again"
    );
}
