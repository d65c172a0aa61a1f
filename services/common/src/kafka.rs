//! Kafka plumbing (rdkafka with bundled librdkafka): a [`producer`], [`ensure_topics`]
//! (brokers such as tansu do not auto-create topics), a manually-committing
//! [`consumer`], and [`KafkaReadiness`] for `/readyz`.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::types::RDKafkaErrorCode;

use crate::admin::ReadinessCheck;
use crate::error::Error;

/// How long librdkafka keeps trying to deliver one message before reporting failure.
/// The outbox relay retries after that, so nothing is lost; this only bounds one attempt.
pub const MESSAGE_TIMEOUT: Duration = Duration::from_secs(15);

/// Partitions of topics created by [`ensure_topics`]. Events are keyed by aggregate id, so
/// order holds per user/chat whatever the count.
pub const DEFAULT_PARTITIONS: i32 = 3;

/// Base client settings shared by producers, consumers and admin clients.
pub fn client_config(brokers: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("socket.timeout.ms", "10000")
        // Reconnect quickly after a broker restart.
        .set("reconnect.backoff.ms", "100")
        .set("reconnect.backoff.max.ms", "2000");
    config
}

/// A producer for `brokers` (`host:9092,host2:9092`).
pub fn producer(brokers: &str) -> Result<FutureProducer, Error> {
    Ok(client_config(brokers)
        .set(
            "message.timeout.ms",
            MESSAGE_TIMEOUT.as_millis().to_string(),
        )
        // One request in flight per connection: retries cannot reorder a key's events.
        .set("max.in.flight.requests.per.connection", "1")
        .set("acks", "all")
        // The outbox relay publishes one event and waits for its ack before the next (that
        // keeps each key's order); waiting up to librdkafka's default 5 ms for more records
        // to batch would only add 5 ms to every event (docs/benchmarks.md).
        .set("linger.ms", "0")
        .create()?)
}

/// Creates the missing ones of `topics` with [`DEFAULT_PARTITIONS`] partitions; existing
/// topics are left as they are.
pub async fn ensure_topics(brokers: &str, topics: &[&str]) -> Result<(), Error> {
    ensure_topics_with(brokers, topics, DEFAULT_PARTITIONS).await
}

/// [`ensure_topics`] with an explicit partition count.
pub async fn ensure_topics_with(
    brokers: &str,
    topics: &[&str],
    partitions: i32,
) -> Result<(), Error> {
    if topics.is_empty() {
        return Ok(());
    }
    let admin: AdminClient<DefaultClientContext> = client_config(brokers).create()?;
    let new_topics: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|name| NewTopic::new(name, partitions, TopicReplication::Fixed(1)))
        .collect();
    let options = AdminOptions::new()
        .request_timeout(Some(Duration::from_secs(10)))
        .operation_timeout(Some(Duration::from_secs(10)));
    let results = admin.create_topics(&new_topics, &options).await?;
    for result in results {
        match result {
            Ok(topic) => tracing::info!(%topic, "created Kafka topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(Error::Other(format!(
                    "creating Kafka topic {topic} failed: {code}"
                )));
            }
        }
    }
    Ok(())
}

/// A consumer in `group_id` subscribed to `topics`. Offsets are committed only by the
/// caller (after handling), and a new group starts from the earliest offset so events
/// published before the first start are not skipped.
pub fn consumer(brokers: &str, group_id: &str, topics: &[&str]) -> Result<StreamConsumer, Error> {
    let consumer: StreamConsumer = client_config(brokers)
        .set("group.id", group_id)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "10000")
        .create()?;
    consumer.subscribe(topics)?;
    Ok(consumer)
}

/// `/readyz` check: the broker answers a metadata request.
pub struct KafkaReadiness {
    producer: FutureProducer,
}

impl KafkaReadiness {
    /// Checks through `producer`'s connections (clone the service's producer).
    pub fn new(producer: FutureProducer) -> Self {
        Self { producer }
    }
}

#[async_trait::async_trait]
impl ReadinessCheck for KafkaReadiness {
    fn name(&self) -> &str {
        "kafka"
    }

    async fn check(&self) -> Result<(), String> {
        let producer = self.producer.clone();
        // fetch_metadata blocks: keep it off the async workers.
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(None, Duration::from_millis(1500))
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())?
    }
}
