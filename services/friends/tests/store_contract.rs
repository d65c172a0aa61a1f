//! One contract suite for both friendship stores: PostgreSQL (events through the outbox,
//! relayed here to an in-memory bus) and in memory (events straight to the bus).

use std::sync::Arc;
use std::time::Duration;

use messenger_common::Shutdown;
use messenger_common::events::{BusMessage, InMemoryEventBus};
use messenger_common::outbox::OutboxRelay;
use messenger_common::testing::TestDatabase;
use messenger_friends::domain::{FriendshipStatus, Outcome, PairAction, PairCommand, UserId};
use messenger_friends::error::FriendsError;
use messenger_friends::store::{FriendshipStore, InMemoryFriendshipStore, PostgresFriendshipStore};
use messenger_proto::topics;
use messenger_proto::v1::event::Payload;
use messenger_proto::v1::{
    FriendRemoved, FriendRequestAccepted, FriendRequestRejected, FriendRequestSent,
};
use tokio::sync::mpsc::UnboundedReceiver;

/// A store under test and the events it published.
struct Subject {
    store: Arc<dyn FriendshipStore>,
    events: UnboundedReceiver<BusMessage>,
    // Keeps the database (and the relay) alive for the test.
    _guard: Option<(TestDatabase, Shutdown)>,
}

impl Drop for Subject {
    fn drop(&mut self) {
        if let Some((_, shutdown)) = &self._guard {
            shutdown.trigger();
        }
    }
}

async fn in_memory() -> Subject {
    let bus = InMemoryEventBus::new();
    let events = bus.subscribe(topics::FRIENDS_EVENTS);
    Subject {
        store: Arc::new(InMemoryFriendshipStore::new(Arc::new(bus))),
        events,
        _guard: None,
    }
}

async fn postgres() -> Subject {
    let database = TestDatabase::create_migrated(&messenger_friends::MIGRATOR).await;
    let bus = InMemoryEventBus::new();
    let events = bus.subscribe(topics::FRIENDS_EVENTS);
    let shutdown = Shutdown::new();
    let relay = OutboxRelay::new(
        database.pool().clone(),
        Arc::new(bus),
        &[topics::FRIENDS_EVENTS],
    )
    .with_poll_interval(Duration::from_millis(100));
    tokio::spawn(relay.run(shutdown.clone()));
    Subject {
        store: Arc::new(PostgresFriendshipStore::new(database.pool().clone())),
        events,
        _guard: Some((database, shutdown)),
    }
}

fn command(actor: UserId, other: UserId, action: PairAction) -> PairCommand {
    PairCommand::new(actor, other, action).unwrap()
}

impl Subject {
    async fn apply(
        &self,
        actor: UserId,
        other: UserId,
        action: PairAction,
    ) -> Result<Outcome, FriendsError> {
        self.store.apply(command(actor, other, action)).await
    }

    /// The next published event, which must come within 10 s.
    async fn next_event(&mut self) -> BusMessage {
        tokio::time::timeout(Duration::from_secs(10), self.events.recv())
            .await
            .expect("an event is published within 10s")
            .expect("the bus is open")
    }

    async fn expect_event(&mut self, key: UserId, payload: Payload) {
        let message = self.next_event().await;
        assert_eq!(
            message.key,
            key.to_string(),
            "events are keyed by the acting user"
        );
        assert_eq!(message.event.payload, Some(payload));
        assert!(!message.event.event_id.is_empty());
    }

    async fn status(&self, a: UserId, b: UserId) -> Option<(UserId, FriendshipStatus)> {
        self.store
            .pair(a, b)
            .await
            .unwrap()
            .map(|row| (row.requester, row.status))
    }
}

fn sent(from: UserId, to: UserId) -> Payload {
    Payload::FriendRequestSent(FriendRequestSent {
        from_user_id: from.to_string(),
        to_user_id: to.to_string(),
        ..Default::default()
    })
}

fn accepted(from: UserId, to: UserId) -> Payload {
    Payload::FriendRequestAccepted(FriendRequestAccepted {
        from_user_id: from.to_string(),
        to_user_id: to.to_string(),
        ..Default::default()
    })
}

fn rejected(from: UserId, to: UserId) -> Payload {
    Payload::FriendRequestRejected(FriendRequestRejected {
        from_user_id: from.to_string(),
        to_user_id: to.to_string(),
    })
}

fn removed(user: UserId, friend: UserId) -> Payload {
    Payload::FriendRemoved(FriendRemoved {
        user_id: user.to_string(),
        friend_user_id: friend.to_string(),
    })
}

fn ids() -> (UserId, UserId, UserId) {
    (
        UserId::new_random(),
        UserId::new_random(),
        UserId::new_random(),
    )
}

/// Each change writes its row and its event; refusals write neither (the next event seen
/// is the next successful change's).
async fn changes_write_rows_and_events(mut subject: Subject) {
    use PairAction::*;
    let (a, b, _) = ids();
    assert_eq!(
        subject.apply(a, b, SendRequest).await.unwrap(),
        Outcome::Requested
    );
    subject.expect_event(a, sent(a, b)).await;
    assert_eq!(
        subject.status(b, a).await,
        Some((a, FriendshipStatus::Requested))
    );
    let pending = subject.store.pair(a, b).await.unwrap().unwrap();

    assert!(matches!(
        subject.apply(a, b, SendRequest).await,
        Err(FriendsError::RequestAlreadyPending)
    ));
    assert!(matches!(
        subject.apply(a, b, AcceptRequest).await,
        Err(FriendsError::NotTheAddressee)
    ));
    assert!(matches!(
        subject.apply(a, b, Remove).await,
        Err(FriendsError::NotFriends)
    ));
    assert_eq!(
        subject.store.pair(a, b).await.unwrap(),
        Some(pending),
        "refusals change nothing"
    );

    assert_eq!(
        subject.apply(b, a, RejectRequest).await.unwrap(),
        Outcome::Rejected
    );
    subject.expect_event(b, rejected(a, b)).await;
    assert_eq!(
        subject.status(a, b).await,
        Some((a, FriendshipStatus::Rejected))
    );

    // Sent again, by the other side this time, and answered by asking back.
    assert_eq!(
        subject.apply(b, a, SendRequest).await.unwrap(),
        Outcome::Requested
    );
    subject.expect_event(b, sent(b, a)).await;
    assert_eq!(
        subject.apply(a, b, SendRequest).await.unwrap(),
        Outcome::Accepted
    );
    subject.expect_event(a, accepted(b, a)).await;
    assert_eq!(
        subject.status(a, b).await,
        Some((b, FriendshipStatus::Accepted))
    );

    assert!(matches!(
        subject.apply(b, a, SendRequest).await,
        Err(FriendsError::AlreadyFriends)
    ));
    assert_eq!(subject.apply(a, b, Remove).await.unwrap(), Outcome::Removed);
    subject.expect_event(a, removed(a, b)).await;
    assert_eq!(subject.status(a, b).await, None);
    assert!(matches!(
        subject.apply(b, a, Remove).await,
        Err(FriendsError::NotFriends)
    ));

    // The accept path by the addressee.
    assert_eq!(
        subject.apply(b, a, SendRequest).await.unwrap(),
        Outcome::Requested
    );
    subject.expect_event(b, sent(b, a)).await;
    assert_eq!(
        subject.apply(a, b, AcceptRequest).await.unwrap(),
        Outcome::Accepted
    );
    subject.expect_event(a, accepted(b, a)).await;
}

/// `relationships_of` returns pending and accepted rows on both sides, not rejected ones.
async fn relationships_are_symmetric(subject: Subject) {
    use PairAction::*;
    let (a, b, c) = ids();
    let d = UserId::new_random();
    subject.apply(a, b, SendRequest).await.unwrap();
    subject.apply(b, a, AcceptRequest).await.unwrap();
    subject.apply(c, a, SendRequest).await.unwrap();
    subject.apply(d, a, SendRequest).await.unwrap();
    subject.apply(a, d, RejectRequest).await.unwrap();

    let mut of_a: Vec<(UserId, UserId, FriendshipStatus)> = subject
        .store
        .relationships_of(a)
        .await
        .unwrap()
        .into_iter()
        .map(|row| (row.requester, row.addressee, row.status))
        .collect();
    of_a.sort();
    let mut expected = vec![
        (a, b, FriendshipStatus::Accepted),
        (c, a, FriendshipStatus::Requested),
    ];
    expected.sort();
    assert_eq!(of_a, expected);
    let of_b = subject.store.relationships_of(b).await.unwrap();
    assert_eq!(of_b.len(), 1);
    assert_eq!(of_b[0].status, FriendshipStatus::Accepted);
    assert!(subject.store.relationships_of(d).await.unwrap().is_empty());
    let row = subject.store.pair(a, b).await.unwrap().unwrap();
    assert!(row.updated_at >= row.created_at);
}

/// Many pairs asking each other at the same moment each end as one friendship; many
/// identical requests at once end as one pending request.
async fn concurrent_requests_end_consistently(subject: Subject) {
    let store = subject.store.clone();
    let pairs: Vec<(UserId, UserId)> = (0..40)
        .map(|_| (UserId::new_random(), UserId::new_random()))
        .collect();
    let mut tasks = Vec::new();
    for (a, b) in &pairs {
        for (actor, other) in [(*a, *b), (*b, *a)] {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                store
                    .apply(command(actor, other, PairAction::SendRequest))
                    .await
            }));
        }
    }
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.unwrap().expect("crossing requests never fail"));
    }
    for (index, (a, b)) in pairs.iter().enumerate() {
        let mut pair = [outcomes[2 * index], outcomes[2 * index + 1]];
        pair.sort_by_key(|outcome| *outcome as u8);
        assert_eq!(
            pair,
            [Outcome::Requested, Outcome::Accepted],
            "pair {index}"
        );
        let row = store.pair(*a, *b).await.unwrap().unwrap();
        assert_eq!(row.status, FriendshipStatus::Accepted);
        assert_eq!(store.relationships_of(*a).await.unwrap().len(), 1);
    }

    let (a, b, _) = ids();
    let duplicates: Vec<_> = (0..10)
        .map(|_| {
            let store = store.clone();
            tokio::spawn(async move { store.apply(command(a, b, PairAction::SendRequest)).await })
        })
        .collect();
    let mut successes = 0;
    for task in duplicates {
        match task.await.unwrap() {
            Ok(outcome) => {
                assert_eq!(outcome, Outcome::Requested);
                successes += 1;
            }
            Err(FriendsError::RequestAlreadyPending) => {}
            Err(other) => panic!("unexpected error {other:?}"),
        }
    }
    assert_eq!(successes, 1);
    assert_eq!(
        subject.status(a, b).await,
        Some((a, FriendshipStatus::Requested))
    );
}

macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod in_memory_store {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() { super::$name(super::in_memory().await).await })*
        }
        mod postgres_store {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn $name() { super::$name(super::postgres().await).await })*
        }
    };
}

contract!(
    changes_write_rows_and_events,
    relationships_are_symmetric,
    concurrent_requests_end_consistently,
);
