//! One contract suite for both friendship stores: PostgreSQL (events through the outbox,
//! relayed here to an in-memory bus) and in memory (events straight to the bus).

use std::sync::Arc;
use std::time::Duration;

use messenger_common::Shutdown;
use messenger_common::events::{BusMessage, InMemoryEventBus};
use messenger_common::outbox::OutboxRelay;
use messenger_common::testing::TestDatabase;
use messenger_friends::domain::{
    Direction, Friendship, FriendshipStatus, ListCursor, Outcome, PairAction, PairCommand,
    RequestRules, UserId, event_key,
};
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

/// The rules every store under test admits new requests by.
const RULES: RequestRules = RequestRules {
    max_pending_incoming: 5,
    rejection_cooldown: Duration::from_secs(3600),
};

async fn in_memory() -> Subject {
    let bus = InMemoryEventBus::new();
    let events = bus.subscribe(topics::FRIENDS_EVENTS);
    Subject {
        store: Arc::new(InMemoryFriendshipStore::new(Arc::new(bus)).with_rules(RULES)),
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
        store: Arc::new(PostgresFriendshipStore::new(database.pool().clone()).with_rules(RULES)),
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

    /// The next event is `payload`, keyed by the pair it is about (either order).
    async fn expect_event(&mut self, pair: (UserId, UserId), payload: Payload) {
        let message = self.next_event().await;
        assert_eq!(
            message.key,
            event_key(pair.0, pair.1),
            "events are keyed by the pair of users"
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
    subject.expect_event((a, b), sent(a, b)).await;
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
    subject.expect_event((a, b), rejected(a, b)).await;
    assert_eq!(
        subject.status(a, b).await,
        Some((a, FriendshipStatus::Rejected))
    );

    // Sent again, by the other side this time, and answered by asking back.
    assert_eq!(
        subject.apply(b, a, SendRequest).await.unwrap(),
        Outcome::Requested
    );
    subject.expect_event((a, b), sent(b, a)).await;
    assert_eq!(
        subject.apply(a, b, SendRequest).await.unwrap(),
        Outcome::Accepted
    );
    subject.expect_event((a, b), accepted(b, a)).await;
    assert_eq!(
        subject.status(a, b).await,
        Some((b, FriendshipStatus::Accepted))
    );

    assert!(matches!(
        subject.apply(b, a, SendRequest).await,
        Err(FriendsError::AlreadyFriends)
    ));
    assert_eq!(subject.apply(a, b, Remove).await.unwrap(), Outcome::Removed);
    subject.expect_event((a, b), removed(a, b)).await;
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
    subject.expect_event((a, b), sent(b, a)).await;
    assert_eq!(
        subject.apply(a, b, AcceptRequest).await.unwrap(),
        Outcome::Accepted
    );
    subject.expect_event((a, b), accepted(b, a)).await;
}

/// The other person of each row of a page, as `user` sees it.
fn others(user: UserId, rows: &[Friendship]) -> Vec<UserId> {
    rows.iter().map(|row| row.other_than(user)).collect()
}

/// Every page of one of `user`'s lists, `limit` at a time, each starting after the last.
async fn walk(
    user: UserId,
    limit: usize,
    page: impl Fn(Option<ListCursor>, usize) -> futures::future::BoxFuture<'static, Vec<Friendship>>,
    cursor_after: fn(UserId, &Friendship) -> ListCursor,
) -> Vec<Vec<UserId>> {
    let (mut pages, mut after) = (Vec::new(), None);
    loop {
        let rows = page(after, limit).await;
        assert!(rows.len() <= limit);
        let Some(last) = rows.last() else {
            return pages;
        };
        after = Some(cursor_after(user, last));
        pages.push(others(user, &rows));
    }
}

/// Lists come in pages, each entry once, on both sides of each pair; rejected rows and
/// other people's rows are not listed.
async fn lists_come_in_pages_in_order(subject: Subject) {
    use PairAction::*;
    let me = UserId::new_random();
    let mut friends = Vec::new();
    for n in 0..5 {
        let other = UserId::new_random();
        // Friends on both sides of the pair: I asked some, they asked others.
        if n % 2 == 0 {
            subject.apply(me, other, SendRequest).await.unwrap();
            subject.apply(other, me, AcceptRequest).await.unwrap();
        } else {
            subject.apply(other, me, SendRequest).await.unwrap();
            subject.apply(me, other, AcceptRequest).await.unwrap();
        }
        friends.push(other);
    }
    let (mut incoming, mut outgoing) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        let other = UserId::new_random();
        subject.apply(other, me, SendRequest).await.unwrap();
        incoming.push(other);
        let other = UserId::new_random();
        subject.apply(me, other, SendRequest).await.unwrap();
        outgoing.push(other);
    }
    let rejected = UserId::new_random();
    subject.apply(rejected, me, SendRequest).await.unwrap();
    subject.apply(me, rejected, RejectRequest).await.unwrap();
    // Someone else's friendship and request.
    let (x, y, _) = ids();
    subject.apply(x, y, SendRequest).await.unwrap();

    let store = subject.store.clone();
    let friend_pages = walk(
        me,
        2,
        |after, limit| {
            let store = store.clone();
            Box::pin(async move { store.friends_page(me, after, limit).await.unwrap() })
        },
        ListCursor::after_friend,
    )
    .await;
    // Oldest friendship first (ties, within one microsecond, by the friend's id).
    let mut expected = Vec::new();
    for friend in &friends {
        let row = store.pair(me, *friend).await.unwrap().unwrap();
        expected.push((row.updated_at, *friend));
    }
    expected.sort();
    let expected: Vec<UserId> = expected.into_iter().map(|(_, id)| id).collect();
    assert_eq!(
        friend_pages,
        vec![
            expected[0..2].to_vec(),
            expected[2..4].to_vec(),
            expected[4..].to_vec()
        ]
    );
    let page = store.friends_page(me, None, 10).await.unwrap();
    assert!(
        page.iter()
            .all(|row| row.status == FriendshipStatus::Accepted)
    );
    assert_eq!(
        others(
            friends[1],
            &store.friends_page(friends[1], None, 10).await.unwrap()
        ),
        vec![me]
    );

    for (direction, sent) in [
        (Direction::Incoming, &incoming),
        (Direction::Outgoing, &outgoing),
    ] {
        let pages = walk(
            me,
            2,
            |after, limit| {
                let store = store.clone();
                Box::pin(async move {
                    store
                        .pending_page(me, direction, after, limit)
                        .await
                        .unwrap()
                })
            },
            ListCursor::after_request,
        )
        .await;
        // Newest first (ties by the other person's id, descending).
        let mut newest_first = Vec::new();
        for other in sent.iter() {
            let row = store.pair(me, *other).await.unwrap().unwrap();
            newest_first.push((row.created_at, *other));
        }
        newest_first.sort();
        let newest_first: Vec<UserId> = newest_first.into_iter().rev().map(|(_, id)| id).collect();
        assert_eq!(
            pages,
            vec![newest_first[0..2].to_vec(), newest_first[2..].to_vec()],
            "{direction:?}"
        );
    }
    let their_incoming = store
        .pending_page(outgoing[0], Direction::Incoming, None, 10)
        .await
        .unwrap();
    assert_eq!(others(outgoing[0], &their_incoming), vec![me]);
    let row = subject.store.pair(me, friends[0]).await.unwrap().unwrap();
    assert!(row.updated_at >= row.created_at);
}

/// `friends_among` names exactly the friends among the ids asked about.
async fn friends_among_names_only_friends(subject: Subject) {
    use PairAction::*;
    let (a, b, c) = ids();
    let d = UserId::new_random();
    subject.apply(a, b, SendRequest).await.unwrap();
    subject.apply(b, a, AcceptRequest).await.unwrap();
    subject.apply(c, a, SendRequest).await.unwrap();
    let found = subject
        .store
        .friends_among(a, &[b, c, d, a, b])
        .await
        .unwrap();
    assert_eq!(found, [b].into());
    assert_eq!(
        subject.store.friends_among(b, &[a]).await.unwrap(),
        [a].into()
    );
    assert!(
        subject
            .store
            .friends_among(d, &[a, b])
            .await
            .unwrap()
            .is_empty()
    );
}

/// Nobody gets more than `max_pending_incoming` requests waiting, even from senders racing
/// each other; answering one makes room. Asking back someone who asked you is no new
/// request and always goes through.
async fn pending_requests_are_capped_per_addressee(subject: Subject) {
    let popular = UserId::new_random();
    let senders: Vec<UserId> = (0..12).map(|_| UserId::new_random()).collect();
    let racers: Vec<_> = senders
        .iter()
        .map(|sender| {
            let (store, sender) = (subject.store.clone(), *sender);
            tokio::spawn(async move {
                store
                    .apply(command(sender, popular, PairAction::SendRequest))
                    .await
            })
        })
        .collect();
    let (mut admitted, mut refused) = (Vec::new(), 0);
    for (racer, sender) in racers.into_iter().zip(&senders) {
        match racer.await.unwrap() {
            Ok(Outcome::Requested) => admitted.push(*sender),
            Err(FriendsError::TooManyPendingRequests { max: 5 }) => refused += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!((admitted.len(), refused), (5, 7));
    let pending = subject
        .store
        .pending_page(popular, Direction::Incoming, None, 100)
        .await
        .unwrap();
    assert_eq!(pending.len(), 5);
    let late = *senders.iter().find(|s| !admitted.contains(s)).unwrap();
    assert_eq!(
        subject.status(late, popular).await,
        None,
        "a refusal writes nothing"
    );

    // The popular one asks someone who is waiting on them: that accepts, it is no request.
    subject
        .apply(popular, admitted[0], PairAction::SendRequest)
        .await
        .unwrap();
    // A rejection makes room for the one who was refused.
    subject
        .apply(popular, admitted[1], PairAction::RejectRequest)
        .await
        .unwrap();
    subject
        .apply(popular, admitted[2], PairAction::RejectRequest)
        .await
        .unwrap();
    assert_eq!(
        subject
            .apply(late, popular, PairAction::SendRequest)
            .await
            .unwrap(),
        Outcome::Requested
    );
}

/// Whoever was turned down waits out the cooldown before asking the same person again;
/// the one who said no may ask at once.
async fn a_rejected_sender_waits_out_the_cooldown(subject: Subject) {
    use PairAction::*;
    let (a, b, _) = ids();
    subject.apply(a, b, SendRequest).await.unwrap();
    subject.apply(b, a, RejectRequest).await.unwrap();
    let rejected_at = subject.store.pair(a, b).await.unwrap().unwrap().updated_at;
    match subject.apply(a, b, SendRequest).await {
        Err(FriendsError::RequestCooldown { until, retry_after }) => {
            assert_eq!(until, rejected_at + chrono::Duration::hours(1));
            assert!(retry_after <= RULES.rejection_cooldown, "{retry_after:?}");
            assert!(retry_after > Duration::from_secs(3500), "{retry_after:?}");
        }
        other => panic!("expected a cooldown, got {other:?}"),
    }
    assert_eq!(
        subject.status(a, b).await,
        Some((a, FriendshipStatus::Rejected))
    );
    assert_eq!(
        subject.apply(b, a, SendRequest).await.unwrap(),
        Outcome::Requested
    );
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
        assert_eq!(store.friends_page(*a, None, 10).await.unwrap().len(), 1);
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
    lists_come_in_pages_in_order,
    friends_among_names_only_friends,
    pending_requests_are_capped_per_addressee,
    a_rejected_sender_waits_out_the_cooldown,
    concurrent_requests_end_consistently,
);
