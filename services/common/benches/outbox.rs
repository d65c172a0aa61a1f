//! `make bench` (or `cargo bench -p messenger-common --features testing --bench outbox`
//! with the test components up): how fast the outbox relay drains a backlog, once into
//! the in-process bus (the relay's own cost: PostgreSQL reads, row updates, commits) and
//! once into Kafka (tansu on loopback, acks=all, one request in flight per connection so
//! a key's events cannot be reordered). Also the cost of `enqueue` inside a transaction.
//! Prints one line per figure; the numbers are in docs/benchmarks.md.

use std::sync::Arc;
use std::time::{Duration, Instant};

use messenger_common::events::{
    Event, EventPublisher, InMemoryEventBus, KafkaPublisher, Payload, new_event,
};
use messenger_common::outbox::{self, OutboxRelay};
use messenger_common::testing::{LatencySummary, TestDatabase, kafka_brokers, unique_name};
use messenger_proto::v1::UserRegistered;

fn registered(i: usize) -> Event {
    new_event(Payload::UserRegistered(UserRegistered {
        user_id: format!("user-{i}"),
        nickname: format!("nick{i}"),
    }))
}

/// Enqueues `count` events, one transaction each (as services do), timing each commit.
async fn enqueue_backlog(database: &TestDatabase, topic: &str, count: usize) -> LatencySummary {
    let mut samples = Vec::with_capacity(count);
    for i in 0..count {
        let event = registered(i);
        let started = Instant::now();
        let mut tx = database.pool().begin().await.expect("begin");
        outbox::enqueue(&mut tx, topic, &format!("user-{}", i % 50), &event)
            .await
            .expect("enqueue");
        tx.commit().await.expect("commit");
        samples.push(started.elapsed());
    }
    LatencySummary::of(samples).expect("samples")
}

/// Time for one relay to publish the whole backlog.
async fn drain(
    database: &TestDatabase,
    topic: &str,
    publisher: Arc<dyn EventPublisher>,
) -> Duration {
    let relay = OutboxRelay::new(database.pool().clone(), publisher, &[topic]);
    let started = Instant::now();
    while outbox::pending_count(database.pool()).await.expect("count") > 0 {
        relay.relay_pending().await.expect("relay");
    }
    started.elapsed()
}

fn main() {
    // `cargo test --benches` runs this without `--bench`: keep that run short.
    let quick = !std::env::args().any(|a| a == "--bench");
    let backlog = if quick { 20 } else { 2000 };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        println!(
            "machine: {} logical CPUs; backlog: {backlog} events",
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );

        let database = TestDatabase::create_with_common_migrations().await;
        let enqueue = enqueue_backlog(&database, "bench", backlog).await;
        println!("enqueue + commit (one event per transaction): {enqueue}");
        let bus = InMemoryEventBus::new();
        let mut received = bus.subscribe("bench");
        let elapsed = drain(&database, "bench", Arc::new(bus.clone())).await;
        let mut delivered = 0;
        while received.try_recv().is_ok() {
            delivered += 1;
        }
        assert_eq!(delivered, backlog, "every event reached the bus once");
        println!(
            "relay to the in-process bus: {:.0} events/s ({elapsed:?})",
            backlog as f64 / elapsed.as_secs_f64()
        );

        let brokers = kafka_brokers();
        let topic = unique_name("bench.outbox");
        let database = TestDatabase::create_with_common_migrations().await;
        enqueue_backlog(&database, &topic, backlog).await;
        let publisher = KafkaPublisher::connect(&brokers).expect("Kafka producer");
        let elapsed = drain(&database, &topic, Arc::new(publisher)).await;
        println!(
            "relay to Kafka (tansu, loopback): {:.0} events/s ({elapsed:?})",
            backlog as f64 / elapsed.as_secs_f64()
        );
    });
}
