//! Event consumers: every event reaches the handler, offsets are committed only after
//! success, poison events are skipped, `mark_processed` deduplicates redeliveries, and
//! consumers stop on shutdown.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use messenger_common::consumer::{
    expire_processed_events, mark_processed, run_in_memory_consumer, run_kafka_consumer,
};
use messenger_common::events::{
    Event, EventHandler, EventPublisher, HandlerError, InMemoryEventBus, KafkaPublisher, Payload,
    new_event,
};
use messenger_common::kafka;
use messenger_common::testing::{TestDatabase, kafka_brokers, unique_name, wait_until};
use messenger_common::{Error, Shutdown};
use messenger_proto::v1::UserRegistered;
use tokio::task::JoinHandle;

fn registered(user: &str) -> Event {
    new_event(Payload::UserRegistered(UserRegistered {
        user_id: user.into(),
        nickname: format!("nick_{user}"),
    }))
}

/// Records every attempt; rejects or keeps failing the events it is told to.
#[derive(Default)]
struct RecordingHandler {
    attempts: Mutex<Vec<String>>,
    succeeded: Mutex<Vec<String>>,
    reject: HashSet<String>,
    always_retry: HashSet<String>,
    /// Fail this many first attempts of every event with Retry.
    transient_failures: usize,
}

impl RecordingHandler {
    fn succeeded(&self) -> Vec<String> {
        self.succeeded.lock().unwrap().clone()
    }
    fn attempts_of(&self, id: &str) -> usize {
        self.attempts
            .lock()
            .unwrap()
            .iter()
            .filter(|a| *a == id)
            .count()
    }
}

#[messenger_common::async_trait]
impl EventHandler for RecordingHandler {
    async fn handle(&self, event: &Event) -> Result<(), HandlerError> {
        let id = event.event_id.clone();
        let attempt = {
            let mut attempts = self.attempts.lock().unwrap();
            attempts.push(id.clone());
            attempts.iter().filter(|a| **a == id).count()
        };
        if self.reject.contains(&id) {
            return Err(HandlerError::Reject("poison".into()));
        }
        if self.always_retry.contains(&id) || attempt <= self.transient_failures {
            return Err(HandlerError::Retry("database down".into()));
        }
        self.succeeded.lock().unwrap().push(id);
        Ok(())
    }
}

struct Consumer {
    shutdown: Shutdown,
    task: JoinHandle<Result<(), Error>>,
}

impl Consumer {
    fn start(group: &str, topic: &str, handler: Arc<RecordingHandler>) -> Self {
        let shutdown = Shutdown::new();
        let (brokers, group, topic) = (kafka_brokers(), group.to_owned(), topic.to_owned());
        let stop = shutdown.clone();
        let task = tokio::spawn(async move {
            run_kafka_consumer(&brokers, &group, &[&topic], handler, stop).await
        });
        Self { shutdown, task }
    }

    async fn stop(self) {
        self.shutdown.trigger();
        tokio::time::timeout(Duration::from_secs(15), self.task)
            .await
            .expect("consumer stops on shutdown")
            .unwrap()
            .expect("consumer ends without error");
    }
}

async fn kafka_topic() -> (String, KafkaPublisher) {
    let brokers = kafka_brokers();
    let topic = unique_name("test.consumer");
    kafka::ensure_topics(&brokers, &[&topic])
        .await
        .unwrap_or_else(|e| panic!("TEST_KAFKA_BROKERS={brokers} unreachable: {e}"));
    (topic, KafkaPublisher::connect(&brokers).unwrap())
}

async fn publish_all(publisher: &KafkaPublisher, topic: &str, events: &[Event]) {
    for event in events {
        publisher.publish(topic, "user", event).await.unwrap();
    }
}

fn ids(events: &[Event]) -> Vec<String> {
    events.iter().map(|e| e.event_id.clone()).collect()
}

#[tokio::test]
async fn the_handler_sees_each_event_and_a_restart_resumes_after_the_handled_ones() {
    let (topic, publisher) = kafka_topic().await;
    let group = unique_name("test-group");
    let first_batch: Vec<Event> = (0..3).map(|i| registered(&format!("a{i}"))).collect();
    publish_all(&publisher, &topic, &first_batch).await;

    let handler = Arc::new(RecordingHandler::default());
    let consumer = Consumer::start(&group, &topic, handler.clone());
    assert!(
        wait_until(Duration::from_secs(60), || async {
            handler.succeeded().len() >= 3
        })
        .await,
        "all three events handled, saw {:?}",
        handler.succeeded()
    );
    assert_eq!(
        handler.succeeded(),
        ids(&first_batch),
        "in order, each once"
    );
    consumer.stop().await;

    let later = registered("late");
    publish_all(&publisher, &topic, std::slice::from_ref(&later)).await;
    let restarted = Arc::new(RecordingHandler::default());
    let consumer = Consumer::start(&group, &topic, restarted.clone());
    assert!(
        wait_until(Duration::from_secs(60), || async {
            !restarted.succeeded().is_empty()
        })
        .await,
        "the restarted consumer gets the new event"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        restarted.succeeded(),
        vec![later.event_id.clone()],
        "handled events are not redelivered"
    );
    consumer.stop().await;
}

#[tokio::test]
async fn a_transient_failure_is_retried_and_the_offset_waits_for_success() {
    let (topic, publisher) = kafka_topic().await;
    let group = unique_name("test-group");
    let stuck = registered("stuck");
    publish_all(&publisher, &topic, std::slice::from_ref(&stuck)).await;

    let failing = Arc::new(RecordingHandler {
        always_retry: HashSet::from([stuck.event_id.clone()]),
        ..Default::default()
    });
    let consumer = Consumer::start(&group, &topic, failing.clone());
    assert!(
        wait_until(Duration::from_secs(60), || async {
            failing.attempts_of(&stuck.event_id) >= 2
        })
        .await,
        "the failing event is retried"
    );
    consumer.stop().await;
    assert!(failing.succeeded().is_empty());

    // Not committed: a consumer of the same group gets it again, and can now succeed
    // (after a transient failure of its own, retried in place).
    let recovered = Arc::new(RecordingHandler {
        transient_failures: 1,
        ..Default::default()
    });
    let consumer = Consumer::start(&group, &topic, recovered.clone());
    assert!(
        wait_until(Duration::from_secs(60), || async {
            !recovered.succeeded().is_empty()
        })
        .await,
        "the event is redelivered after restart"
    );
    assert_eq!(recovered.succeeded(), vec![stuck.event_id.clone()]);
    assert_eq!(recovered.attempts_of(&stuck.event_id), 2);
    consumer.stop().await;
}

#[tokio::test]
async fn a_rejected_or_undecodable_event_is_skipped_and_consumption_continues() {
    let (topic, publisher) = kafka_topic().await;
    let group = unique_name("test-group");
    let poison = registered("poison");
    let good = registered("good");
    publish_all(&publisher, &topic, std::slice::from_ref(&poison)).await;
    // A record that is not an Event at all.
    let raw = kafka::producer(kafka_brokers()).unwrap();
    raw.send(
        rdkafka::producer::FutureRecord::to(&topic)
            .key("user")
            .payload(&[0xff_u8, 0xff, 0xff][..]),
        Duration::from_secs(5),
    )
    .await
    .unwrap();
    publish_all(&publisher, &topic, std::slice::from_ref(&good)).await;

    let handler = Arc::new(RecordingHandler {
        reject: HashSet::from([poison.event_id.clone()]),
        ..Default::default()
    });
    let consumer = Consumer::start(&group, &topic, handler.clone());
    assert!(
        wait_until(Duration::from_secs(60), || async {
            !handler.succeeded().is_empty()
        })
        .await,
        "the good event behind the poison is handled"
    );
    assert_eq!(handler.succeeded(), vec![good.event_id.clone()]);
    assert_eq!(
        handler.attempts_of(&poison.event_id),
        1,
        "a rejected event is not retried"
    );
    consumer.stop().await;

    // Skipped events are committed: nothing comes back after a restart.
    let restarted = Arc::new(RecordingHandler::default());
    let consumer = Consumer::start(&group, &topic, restarted.clone());
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(restarted.attempts.lock().unwrap().is_empty());
    consumer.stop().await;
}

#[tokio::test]
async fn mark_processed_is_true_once_per_consumer_and_event() {
    let database = TestDatabase::create_with_common_migrations().await;
    let mut connection = database.pool().acquire().await.unwrap();
    assert!(
        mark_processed(&mut connection, "users", "e1")
            .await
            .unwrap()
    );
    assert!(
        !mark_processed(&mut connection, "users", "e1")
            .await
            .unwrap()
    );
    assert!(
        mark_processed(&mut connection, "friends", "e1")
            .await
            .unwrap()
    );
    assert!(
        mark_processed(&mut connection, "users", "e2")
            .await
            .unwrap()
    );

    // Rolled back with the handler's effects: the event counts as not processed.
    let mut tx = database.pool().begin().await.unwrap();
    assert!(mark_processed(&mut tx, "users", "e3").await.unwrap());
    tx.rollback().await.unwrap();
    assert!(
        mark_processed(&mut connection, "users", "e3")
            .await
            .unwrap()
    );
}

/// Applies each event once: counts registrations in a table, guarded by mark_processed.
struct CountingHandler {
    pool: sqlx::PgPool,
}

#[messenger_common::async_trait]
impl EventHandler for CountingHandler {
    async fn handle(&self, event: &Event) -> Result<(), HandlerError> {
        let mut tx = self.pool.begin().await?;
        if mark_processed(&mut tx, "counter", &event.event_id).await? {
            sqlx::query("UPDATE registrations SET total = total + 1")
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

#[tokio::test]
async fn a_redelivered_event_has_its_effect_only_once() {
    let database = TestDatabase::create_with_common_migrations().await;
    sqlx::raw_sql(
        "CREATE TABLE registrations (total INT NOT NULL); INSERT INTO registrations VALUES (0)",
    )
    .execute(database.pool())
    .await
    .unwrap();
    let (topic, publisher) = kafka_topic().await;
    let event = registered("twice");
    let marker = registered("marker");
    // At-least-once delivery: the same event arrives twice.
    publish_all(
        &publisher,
        &topic,
        &[event.clone(), event.clone(), marker.clone()],
    )
    .await;

    let shutdown = Shutdown::new();
    let handler = Arc::new(CountingHandler {
        pool: database.pool().clone(),
    });
    let (brokers, group, stop) = (kafka_brokers(), unique_name("test-group"), shutdown.clone());
    let task = tokio::spawn(async move {
        run_kafka_consumer(&brokers, &group, &[&topic], handler, stop).await
    });
    let total = || async {
        sqlx::query_scalar::<_, i32>("SELECT total FROM registrations")
            .fetch_one(database.pool())
            .await
            .unwrap()
    };
    assert!(
        wait_until(Duration::from_secs(60), || async { total().await == 2 }).await,
        "both distinct events applied"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(total().await, 2, "the duplicate had no effect");
    shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(15), task)
        .await
        .expect("consumer stops")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn the_in_memory_consumer_retries_skips_and_stops() {
    let bus = InMemoryEventBus::new();
    let poison = registered("poison");
    let handler = Arc::new(RecordingHandler {
        reject: HashSet::from([poison.event_id.clone()]),
        transient_failures: 1,
        ..Default::default()
    });
    let shutdown = Shutdown::new();
    let task = tokio::spawn(run_in_memory_consumer(
        &bus,
        &["users", "chats"],
        handler.clone(),
        shutdown.clone(),
    ));
    let events = [registered("a"), poison.clone(), registered("b")];
    bus.publish("users", "k", &events[0]).await.unwrap();
    bus.publish("users", "k", &events[1]).await.unwrap();
    bus.publish("chats", "k", &events[2]).await.unwrap();
    bus.publish("other", "k", &registered("ignored"))
        .await
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || async {
            handler.succeeded().len() == 2
        })
        .await,
        "both good events handled after one retry each"
    );
    let mut succeeded = handler.succeeded();
    succeeded.sort();
    let mut expected = vec![events[0].event_id.clone(), events[2].event_id.clone()];
    expected.sort();
    assert_eq!(succeeded, expected);
    assert_eq!(handler.attempts_of(&poison.event_id), 1);
    let per_event: HashMap<String, usize> = expected
        .iter()
        .map(|id| (id.clone(), handler.attempts_of(id)))
        .collect();
    assert!(per_event.values().all(|n| *n == 2), "{per_event:?}");

    shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("in-memory consumer stops")
        .unwrap();
}

#[tokio::test]
async fn a_consumer_of_a_dead_broker_stops_promptly_on_shutdown() {
    let dead = format!("127.0.0.1:{}", messenger_common::testing::free_port());
    let shutdown = Shutdown::new();
    let stop = shutdown.clone();
    let task = tokio::spawn(async move {
        run_kafka_consumer(
            &dead,
            "g",
            &["t"],
            Arc::new(RecordingHandler::default()),
            stop,
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    shutdown.trigger();
    // Generous for a loaded machine; a consumer that ignores shutdown never stops.
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("stops within 10s")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn a_consumer_started_while_the_broker_is_down_consumes_once_it_is_up() {
    let mut broker =
        messenger_common::testing::TansuBroker::stopped(messenger_common::testing::free_port());
    let brokers = broker.brokers();
    let topic = unique_name("test.late-consumer");
    let handler = Arc::new(RecordingHandler::default());
    let shutdown = Shutdown::new();
    let task = {
        let (brokers, topic, handler, stop) = (
            brokers.clone(),
            topic.clone(),
            handler.clone(),
            shutdown.clone(),
        );
        tokio::spawn(async move {
            run_kafka_consumer(&brokers, &unique_name("g"), &[&topic], handler, stop).await
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    broker.restart();
    let event = registered("late");
    KafkaPublisher::connect(&brokers)
        .unwrap()
        .publish(&topic, "late", &event)
        .await
        .expect("publish once the broker is up");
    assert!(
        wait_until(Duration::from_secs(60), || async {
            !handler.succeeded().is_empty()
        })
        .await,
        "the consumer picked up the event"
    );
    assert_eq!(handler.succeeded(), vec![event.event_id.clone()]);
    shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(15), task)
        .await
        .expect("consumer stops")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn processed_event_ids_expire_after_the_retention_and_only_the_consumers_own() {
    // The table used to grow by one row per consumed event forever.
    let database = TestDatabase::create_with_common_migrations().await;
    let mut tx = database.pool().begin().await.unwrap();
    for (consumer, event_id) in [("users", "old"), ("users", "recent"), ("other", "old")] {
        assert!(mark_processed(&mut tx, consumer, event_id).await.unwrap());
    }
    tx.commit().await.unwrap();
    sqlx::query(
        "UPDATE messenger_processed_events SET processed_at = now() - interval '9 days' \
         WHERE event_id = 'old'",
    )
    .execute(database.pool())
    .await
    .unwrap();

    let week = Duration::from_secs(7 * 24 * 3600);
    let expired = expire_processed_events(database.pool(), "users", week)
        .await
        .unwrap();
    assert_eq!(expired, 1);
    let left: Vec<(String, String)> = sqlx::query_as(
        "SELECT consumer, event_id FROM messenger_processed_events ORDER BY consumer, event_id",
    )
    .fetch_all(database.pool())
    .await
    .unwrap();
    let left: Vec<(&str, &str)> = left.iter().map(|(c, e)| (c.as_str(), e.as_str())).collect();
    assert_eq!(left, [("other", "old"), ("users", "recent")]);
    // A redelivery of a remembered event is still recognised.
    let mut tx = database.pool().begin().await.unwrap();
    assert!(!mark_processed(&mut tx, "users", "recent").await.unwrap());
}
