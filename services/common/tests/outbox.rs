//! The transactional outbox: only committed events are relayed, in order, exactly as
//! written; events written while Kafka is down are delivered once it is back.

use std::sync::Arc;
use std::time::Duration;

use messenger_common::Shutdown;
use messenger_common::events::{
    Event, EventPublisher, InMemoryEventBus, KafkaPublisher, Payload, new_event,
};
use messenger_common::kafka;
use messenger_common::outbox::{self, OutboxRelay};
use messenger_common::testing::{
    TansuBroker, TestDatabase, free_port, kafka_brokers, read_events, unique_name, wait_for_event,
    wait_until,
};
use messenger_proto::v1::FriendRequestSent;

fn friend_request(from: &str, to: &str) -> Event {
    new_event(Payload::FriendRequestSent(FriendRequestSent {
        from_user_id: from.into(),
        to_user_id: to.into(),
        ..Default::default()
    }))
}

async fn enqueue_committed(pool: &sqlx::PgPool, topic: &str, key: &str, events: &[Event]) {
    let mut tx = pool.begin().await.unwrap();
    for event in events {
        outbox::enqueue(&mut tx, topic, key, event).await.unwrap();
    }
    tx.commit().await.unwrap();
}

#[tokio::test]
async fn a_rolled_back_transaction_leaves_nothing_to_relay() {
    let database = TestDatabase::create_with_common_migrations().await;
    let bus = InMemoryEventBus::new();
    let mut received = bus.subscribe("friends");

    let mut tx = database.pool().begin().await.unwrap();
    outbox::enqueue(&mut tx, "friends", "u1", &friend_request("u1", "u2"))
        .await
        .unwrap();
    tx.rollback().await.unwrap();

    assert_eq!(outbox::pending_count(database.pool()).await.unwrap(), 0);
    let relay = OutboxRelay::new(database.pool().clone(), Arc::new(bus.clone()), &["friends"]);
    assert_eq!(relay.relay_pending().await.unwrap(), 0);
    assert!(received.try_recv().is_err(), "nothing was published");
}

#[tokio::test]
async fn committed_events_reach_the_bus_once_each_and_in_order_even_with_two_relays() {
    let database = TestDatabase::create_with_common_migrations().await;
    let bus = InMemoryEventBus::new();
    let mut received = bus.subscribe("friends");
    let shutdown = Shutdown::new();
    // Two replicas relaying the same outbox: the advisory lock keeps one at a time.
    let relays: Vec<_> = (0..2)
        .map(|_| {
            let relay =
                OutboxRelay::new(database.pool().clone(), Arc::new(bus.clone()), &["friends"])
                    .with_poll_interval(Duration::from_millis(50));
            tokio::spawn(relay.run(shutdown.clone()))
        })
        .collect();

    let events: Vec<Event> = (0..40)
        .map(|i| friend_request("u1", &format!("u{i}")))
        .collect();
    for chunk in events.chunks(3) {
        enqueue_committed(database.pool(), "friends", "u1", chunk).await;
    }
    let mut ids = Vec::new();
    while ids.len() < events.len() {
        let message = tokio::time::timeout(Duration::from_secs(10), received.recv())
            .await
            .expect("all events relayed within 10s")
            .unwrap();
        assert_eq!(message.key, "u1");
        ids.push(message.event.event_id);
    }
    let expected: Vec<String> = events.iter().map(|e| e.event_id.clone()).collect();
    assert_eq!(ids, expected, "delivered once each, in commit order");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(received.try_recv().is_err(), "no duplicates");
    assert!(
        wait_until(Duration::from_secs(5), || async {
            outbox::pending_count(database.pool()).await.unwrap() == 0
        })
        .await,
        "all rows marked sent"
    );

    shutdown.trigger();
    for relay in relays {
        tokio::time::timeout(Duration::from_secs(5), relay)
            .await
            .expect("relay stops on shutdown")
            .unwrap();
    }
}

#[tokio::test]
async fn committed_events_are_delivered_to_kafka_in_order() {
    let brokers = kafka_brokers();
    let topic = unique_name("test.outbox");
    kafka::ensure_topics(&brokers, &[&topic])
        .await
        .unwrap_or_else(|e| panic!("TEST_KAFKA_BROKERS={brokers} unreachable: {e}"));
    let database = TestDatabase::create_with_common_migrations().await;
    let publisher = KafkaPublisher::connect(&brokers).unwrap();
    let shutdown = Shutdown::new();
    let relay = tokio::spawn(
        OutboxRelay::new(database.pool().clone(), Arc::new(publisher), &[&topic])
            .run(shutdown.clone()),
    );

    let events: Vec<Event> = (0..5)
        .map(|i| friend_request("alice", &format!("b{i}")))
        .collect();
    enqueue_committed(database.pool(), &topic, "alice", &events[..2]).await;
    enqueue_committed(database.pool(), &topic, "alice", &events[2..]).await;

    let received = read_events(&brokers, &topic, events.len(), Duration::from_secs(30)).await;
    let ids: Vec<&str> = received.iter().map(|r| r.event.event_id.as_str()).collect();
    let expected: Vec<&str> = events.iter().map(|e| e.event_id.as_str()).collect();
    assert_eq!(ids, expected);
    assert!(received.iter().all(|r| r.key == "alice"));
    assert_eq!(received[0].event, events[0], "the event arrives unchanged");
    assert!(
        wait_until(Duration::from_secs(5), || async {
            outbox::pending_count(database.pool()).await.unwrap() == 0
        })
        .await,
        "rows are marked sent"
    );
    shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(5), relay)
        .await
        .expect("relay stops on shutdown")
        .unwrap();
}

#[tokio::test]
async fn an_event_written_while_the_broker_is_down_is_delivered_once_it_is_back() {
    let port = free_port();
    let mut broker = TansuBroker::stopped(port);
    let brokers = broker.brokers();
    let topic = unique_name("test.outage");
    let database = TestDatabase::create_with_common_migrations().await;
    let publisher = KafkaPublisher::connect(&brokers).unwrap();
    let shutdown = Shutdown::new();
    let relay = tokio::spawn(
        OutboxRelay::new(database.pool().clone(), Arc::new(publisher), &[&topic])
            .with_poll_interval(Duration::from_millis(200))
            .with_max_backoff(Duration::from_secs(1))
            .run(shutdown.clone()),
    );

    let event = friend_request("carol", "dave");
    enqueue_committed(
        database.pool(),
        &topic,
        "carol",
        std::slice::from_ref(&event),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        outbox::pending_count(database.pool()).await.unwrap(),
        1,
        "the event waits in the outbox while the broker is down"
    );

    broker.restart();
    kafka::ensure_topics(&brokers, &[&topic]).await.unwrap();
    let delivered = wait_for_event(
        &brokers,
        &topic,
        |e| e.event_id == event.event_id,
        Duration::from_secs(60),
    )
    .await
    .expect("the event arrives after the broker is back");
    assert_eq!(delivered.event, event);
    assert_eq!(delivered.key, "carol");
    assert!(
        wait_until(Duration::from_secs(20), || async {
            outbox::pending_count(database.pool()).await.unwrap() == 0
        })
        .await,
        "the row is marked sent"
    );

    shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(5), relay)
        .await
        .expect("relay stops on shutdown")
        .unwrap();
}

#[tokio::test]
async fn the_relay_stops_on_shutdown_even_while_the_broker_is_down() {
    let database = TestDatabase::create_with_common_migrations().await;
    let dead = format!("127.0.0.1:{}", free_port());
    let publisher: Arc<dyn EventPublisher> = Arc::new(KafkaPublisher::connect(&dead).unwrap());
    enqueue_committed(database.pool(), "t", "k", &[friend_request("a", "b")]).await;
    let shutdown = Shutdown::new();
    let relay = tokio::spawn(
        OutboxRelay::new(database.pool().clone(), publisher, &["t"]).run(shutdown.clone()),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    shutdown.trigger();
    // Well below the relay's 30 s maximum backoff, generous for a loaded machine.
    tokio::time::timeout(Duration::from_secs(10), relay)
        .await
        .expect("relay stops promptly")
        .unwrap();
    assert_eq!(
        outbox::pending_count(database.pool()).await.unwrap(),
        1,
        "still pending, not lost"
    );
}

#[tokio::test]
async fn a_commit_wakes_the_relay_without_waiting_for_the_poll() {
    let database = TestDatabase::create_with_common_migrations().await;
    let bus = InMemoryEventBus::new();
    let mut received = bus.subscribe("friends");
    let shutdown = Shutdown::new();
    let relay = tokio::spawn(
        OutboxRelay::new(database.pool().clone(), Arc::new(bus.clone()), &["friends"])
            .with_poll_interval(Duration::from_secs(600))
            .run(shutdown.clone()),
    );
    // Let the relay finish its first (empty) round and start waiting.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let event = friend_request("erin", "frank");
    enqueue_committed(
        database.pool(),
        "friends",
        "erin",
        std::slice::from_ref(&event),
    )
    .await;
    let message = tokio::time::timeout(Duration::from_secs(15), received.recv())
        .await
        .expect("NOTIFY wakes the relay long before the 10-minute poll")
        .unwrap();
    assert_eq!(message.event, event);

    shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(5), relay)
        .await
        .expect("relay stops on shutdown")
        .unwrap();
}

/// Fails the first `failures` publishes, then delivers to the bus.
struct FlakyPublisher {
    bus: InMemoryEventBus,
    failures: std::sync::atomic::AtomicUsize,
}

#[messenger_common::async_trait]
impl EventPublisher for FlakyPublisher {
    async fn publish(
        &self,
        topic: &str,
        key: &str,
        event: &Event,
    ) -> Result<(), messenger_common::PublishError> {
        use std::sync::atomic::Ordering;
        if self
            .failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(messenger_common::PublishError::Closed);
        }
        self.bus.publish(topic, key, event).await
    }
}

#[tokio::test]
async fn a_failing_publish_is_retried_in_place_and_keeps_the_order() {
    let database = TestDatabase::create_with_common_migrations().await;
    let bus = InMemoryEventBus::new();
    let mut received = bus.subscribe("friends");
    let publisher = Arc::new(FlakyPublisher {
        bus: bus.clone(),
        failures: 3.into(),
    });
    let events = [friend_request("g", "h"), friend_request("g", "i")];
    enqueue_committed(database.pool(), "friends", "g", &events).await;

    let shutdown = Shutdown::new();
    let metrics = messenger_common::Metrics::new();
    let relay = tokio::spawn(
        OutboxRelay::new(database.pool().clone(), publisher, &["friends"])
            .with_max_backoff(Duration::from_millis(200))
            .with_metrics(&metrics)
            .run(shutdown.clone()),
    );
    for expected in &events {
        let message = tokio::time::timeout(Duration::from_secs(5), received.recv())
            .await
            .expect("delivered after the failures")
            .unwrap();
        assert_eq!(&message.event, expected, "the failed event goes first");
    }
    // The relay marks rows after publishing: wait for its commit.
    assert!(
        wait_until(Duration::from_secs(5), || async {
            outbox::pending_count(database.pool()).await.unwrap() == 0
        })
        .await
    );
    let (attempts, last_error): (i32, Option<String>) =
        sqlx::query_as("SELECT attempts, last_error FROM messenger_outbox WHERE event_id = $1")
            .bind(&events[0].event_id)
            .fetch_one(database.pool())
            .await
            .unwrap();
    assert_eq!(attempts, 4, "three failures, then success");
    assert_eq!(last_error, None, "cleared on success");
    let text = metrics.render();
    assert!(
        text.contains(r#"events_published_total{topic="friends",outcome="error"} 3"#),
        "{text}"
    );
    assert!(
        text.contains(r#"events_published_total{topic="friends",outcome="ok"} 2"#),
        "{text}"
    );

    shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(5), relay)
        .await
        .expect("relay stops on shutdown")
        .unwrap();
}

#[tokio::test]
async fn the_relay_recovers_when_a_running_broker_goes_down_and_comes_back() {
    let mut broker = TansuBroker::start(free_port());
    let brokers = broker.brokers();
    let topic = unique_name("test.restart");
    kafka::ensure_topics(&brokers, &[&topic]).await.unwrap();
    let database = TestDatabase::create_with_common_migrations().await;
    let shutdown = Shutdown::new();
    let relay = tokio::spawn(
        OutboxRelay::new(
            database.pool().clone(),
            Arc::new(KafkaPublisher::connect(&brokers).unwrap()),
            &[&topic],
        )
        .with_poll_interval(Duration::from_millis(200))
        .with_max_backoff(Duration::from_secs(1))
        .run(shutdown.clone()),
    );

    let before = friend_request("ivan", "judy");
    enqueue_committed(
        database.pool(),
        &topic,
        "ivan",
        std::slice::from_ref(&before),
    )
    .await;
    wait_for_event(
        &brokers,
        &topic,
        |e| e.event_id == before.event_id,
        Duration::from_secs(30),
    )
    .await
    .expect("delivered while the broker is up");

    broker.stop();
    let during = friend_request("ivan", "mallory");
    enqueue_committed(
        database.pool(),
        &topic,
        "ivan",
        std::slice::from_ref(&during),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(outbox::pending_count(database.pool()).await.unwrap(), 1);

    broker.restart(); // with its data, as a real Kafka comes back
    let delivered = wait_for_event(
        &brokers,
        &topic,
        |e| e.event_id == during.event_id,
        Duration::from_secs(90),
    )
    .await
    .expect("the event written during the outage arrives");
    assert_eq!(delivered.event, during);

    shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(5), relay)
        .await
        .expect("relay stops on shutdown")
        .unwrap();
}

#[tokio::test]
async fn a_service_started_while_kafka_was_down_creates_its_topic_once_kafka_is_up() {
    let mut broker = TansuBroker::stopped(free_port());
    let brokers = broker.brokers();
    let topic = unique_name("test.late-topic");
    let database = TestDatabase::create_with_common_migrations().await;
    let shutdown = Shutdown::new();
    let relay = tokio::spawn(
        OutboxRelay::new(
            database.pool().clone(),
            Arc::new(KafkaPublisher::connect(&brokers).unwrap()),
            &[&topic],
        )
        .with_poll_interval(Duration::from_millis(200))
        .with_max_backoff(Duration::from_secs(1))
        .run(shutdown.clone()),
    );
    let event = friend_request("oscar", "peggy");
    enqueue_committed(
        database.pool(),
        &topic,
        "oscar",
        std::slice::from_ref(&event),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(outbox::pending_count(database.pool()).await.unwrap(), 1);

    broker.restart(); // nobody creates the topic by hand
    let delivered = wait_for_event(
        &brokers,
        &topic,
        |e| e.event_id == event.event_id,
        Duration::from_secs(90),
    )
    .await
    .expect("the publisher created the topic and delivered the event");
    assert_eq!(delivered.event, event);

    shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(5), relay)
        .await
        .expect("relay stops on shutdown")
        .unwrap();
}

#[tokio::test]
async fn the_backlog_shows_in_the_metrics_while_publishing_fails() {
    let database = TestDatabase::create_with_common_migrations().await;
    let publisher = Arc::new(FlakyPublisher {
        bus: InMemoryEventBus::new(),
        failures: usize::MAX.into(),
    });
    let events = [friend_request("k", "l"), friend_request("k", "m")];
    enqueue_committed(database.pool(), "friends", "k", &events).await;
    let metrics = messenger_common::Metrics::new();
    let shutdown = Shutdown::new();
    let relay = tokio::spawn(
        OutboxRelay::new(database.pool().clone(), publisher, &["friends"])
            .with_max_backoff(Duration::from_millis(100))
            .with_metrics(&metrics)
            .run(shutdown.clone()),
    );
    assert!(
        wait_until(Duration::from_secs(5), || async {
            metrics.render().contains("outbox_pending_events 2")
        })
        .await,
        "{}",
        metrics.render()
    );
    shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(5), relay)
        .await
        .expect("relay stops on shutdown")
        .unwrap();
    assert_eq!(
        outbox::pending_count(database.pool()).await.unwrap(),
        2,
        "nothing lost"
    );
}

#[tokio::test]
async fn sent_rows_older_than_the_retention_are_purged() {
    let database = TestDatabase::create_with_common_migrations().await;
    let old = friend_request("n", "o");
    let recent = friend_request("n", "p");
    enqueue_committed(
        database.pool(),
        "friends",
        "n",
        &[old.clone(), recent.clone()],
    )
    .await;
    sqlx::query(
        "UPDATE messenger_outbox SET sent_at = now() - CASE WHEN event_id = $1 \
         THEN interval '2 days' ELSE interval '1 hour' END",
    )
    .bind(&old.event_id)
    .execute(database.pool())
    .await
    .unwrap();

    let shutdown = Shutdown::new();
    let relay = tokio::spawn(
        OutboxRelay::new(
            database.pool().clone(),
            Arc::new(InMemoryEventBus::new()),
            &["friends"],
        )
        .with_retention(Duration::from_secs(24 * 3600))
        .run(shutdown.clone()),
    );
    let remaining = || async {
        sqlx::query_scalar::<_, String>("SELECT event_id FROM messenger_outbox")
            .fetch_all(database.pool())
            .await
            .unwrap()
    };
    assert!(
        wait_until(Duration::from_secs(5), || async {
            remaining().await.len() == 1
        })
        .await,
        "the old row is purged"
    );
    assert_eq!(
        remaining().await,
        vec![recent.event_id.clone()],
        "recent rows are kept"
    );
    shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(5), relay)
        .await
        .expect("relay stops on shutdown")
        .unwrap();
}

#[tokio::test]
async fn events_of_one_key_are_published_in_commit_order_even_when_their_ids_were_taken_the_other_way()
 {
    // Two writers of one key: the first takes its id, the second takes a higher one and
    // would commit first. Publishing by id order would then put the second change's event
    // after the first's although it happened before.
    let database = TestDatabase::create_with_common_migrations().await;
    let bus = InMemoryEventBus::new();
    let mut received = bus.subscribe("friends");
    let first = friend_request("k", "first");
    let second = friend_request("k", "second");

    let mut earlier = database.pool().begin().await.unwrap();
    outbox::enqueue(&mut earlier, "friends", "k", &first)
        .await
        .unwrap();
    let later = tokio::spawn({
        let (pool, second) = (database.pool().clone(), second.clone());
        async move { enqueue_committed(&pool, "friends", "k", &[second]).await }
    });
    // Give the second writer every chance to commit before the first.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let commit_order = if later.is_finished() {
        [&second, &first]
    } else {
        [&first, &second]
    };
    earlier.commit().await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), later)
        .await
        .expect("the second writer commits once the first has")
        .unwrap();

    let relay = OutboxRelay::new(database.pool().clone(), Arc::new(bus.clone()), &["friends"]);
    assert_eq!(relay.relay_pending().await.unwrap(), 2);
    let published = [
        received.try_recv().unwrap().event,
        received.try_recv().unwrap().event,
    ];
    assert_eq!(
        [&published[0], &published[1]],
        commit_order,
        "published in the order the changes committed"
    );
    assert_eq!(
        commit_order,
        [&first, &second],
        "a second writer of the same key waits for the first to commit"
    );
}

#[tokio::test]
async fn writers_of_different_keys_do_not_wait_for_each_other() {
    let database = TestDatabase::create_with_common_migrations().await;
    let mut holding = database.pool().begin().await.unwrap();
    outbox::enqueue(&mut holding, "friends", "a", &friend_request("a", "b"))
        .await
        .unwrap();
    tokio::time::timeout(
        Duration::from_secs(10),
        enqueue_committed(database.pool(), "friends", "c", &[friend_request("c", "d")]),
    )
    .await
    .expect("another key commits while the first transaction is still open");
    holding.rollback().await.unwrap();
    assert_eq!(outbox::pending_count(database.pool()).await.unwrap(), 1);
}

/// Delivers to the bus, except on `broken`, where every publish fails (as a topic the
/// broker refuses would).
struct BrokenTopicPublisher {
    bus: InMemoryEventBus,
    broken: &'static str,
}

#[messenger_common::async_trait]
impl EventPublisher for BrokenTopicPublisher {
    async fn publish(
        &self,
        topic: &str,
        key: &str,
        event: &Event,
    ) -> Result<(), messenger_common::PublishError> {
        if topic == self.broken {
            return Err(messenger_common::PublishError::Closed);
        }
        self.bus.publish(topic, key, event).await
    }
}

#[tokio::test]
async fn a_service_whose_topic_fails_does_not_stall_another_service_sharing_the_database() {
    // auth and friends on one database (the operator's `postgres.shared`): auth's topic
    // is broken; friends' events must still flow, once each.
    let database = TestDatabase::create_with_common_migrations().await;
    let bus = InMemoryEventBus::new();
    let mut friends_events = bus.subscribe("friends");
    let publisher = Arc::new(BrokenTopicPublisher {
        bus: bus.clone(),
        broken: "auth",
    });
    enqueue_committed(database.pool(), "auth", "u1", &[friend_request("u1", "x")]).await;
    let friends_event = friend_request("u2", "u3");
    enqueue_committed(
        database.pool(),
        "friends",
        "u2",
        std::slice::from_ref(&friends_event),
    )
    .await;

    let shutdown = Shutdown::new();
    let relays = [&["auth"], &["friends"]].map(|topics| {
        tokio::spawn(
            OutboxRelay::new(database.pool().clone(), publisher.clone(), topics)
                .with_poll_interval(Duration::from_millis(50))
                .with_max_backoff(Duration::from_millis(100))
                .run(shutdown.clone()),
        )
    });
    let delivered = tokio::time::timeout(Duration::from_secs(10), friends_events.recv())
        .await
        .expect("friends' event is published although auth's topic fails")
        .unwrap();
    assert_eq!(delivered.event, friends_event);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(friends_events.try_recv().is_err(), "published once");
    assert_eq!(
        outbox::pending_count_of(database.pool(), &["auth".to_owned()])
            .await
            .unwrap(),
        1,
        "auth's event waits for its topic, nothing is lost"
    );

    shutdown.trigger();
    for relay in relays {
        tokio::time::timeout(Duration::from_secs(5), relay)
            .await
            .expect("relay stops on shutdown")
            .unwrap();
    }
}
