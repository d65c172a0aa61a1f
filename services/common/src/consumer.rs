//! Event consumers: [`run_kafka_consumer`] feeds each event of some topics to an
//! [`EventHandler`] and commits its offset only after the handler succeeded or rejected
//! it (at-least-once); [`mark_processed`] makes the handler's effects exactly-once by
//! recording the event id in the handler's own transaction. [`run_in_memory_consumer`]
//! does the same on an [`InMemoryEventBus`] for `messenger dev`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use prost::Message as _;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Message, Offset, TopicPartitionList};
use sqlx::{PgConnection, PgPool};

use crate::error::Error;
use crate::events::{Event, EventHandler, HandlerError, InMemoryEventBus};
use crate::kafka::KafkaConfig;
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;

/// How long processed event ids are kept by default: past Kafka's default retention
/// (7 days), so every event the broker can still redeliver is still recognised.
pub const DEFAULT_PROCESSED_EVENTS_RETENTION: Duration = Duration::from_secs(8 * 24 * 3600);

/// How often [`run_processed_events_expiry`] deletes expired ids.
const EXPIRY_INTERVAL: Duration = Duration::from_secs(3600);

/// Deletes the ids `consumer_name` recorded more than `retention` ago; returns how many.
/// Keep `retention` above the broker's: an id deleted while its event can still be
/// redelivered would let that event apply twice.
pub async fn expire_processed_events(
    pool: &PgPool,
    consumer_name: &str,
    retention: Duration,
) -> Result<u64, sqlx::Error> {
    let result = sqlx::query!(
        "DELETE FROM messenger_processed_events \
         WHERE consumer = $1 AND processed_at < now() - make_interval(secs => $2)",
        consumer_name,
        retention.as_secs_f64()
    )
    .execute(pool)
    .await?;
    Ok(result.rows_affected())
}

/// Expires `consumer_name`'s processed ids at start and then hourly until `shutdown`;
/// without it the table grows by one row per event forever.
pub async fn run_processed_events_expiry(
    pool: PgPool,
    consumer_name: String,
    retention: Duration,
    shutdown: Shutdown,
) {
    loop {
        match expire_processed_events(&pool, &consumer_name, retention).await {
            Ok(0) => {}
            Ok(expired) => {
                tracing::debug!(expired, consumer = %consumer_name, "expired processed event ids")
            }
            Err(error) => {
                tracing::warn!(%error, consumer = %consumer_name, "expiring processed event ids failed")
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(EXPIRY_INTERVAL) => {}
        }
    }
}

/// Records that `consumer_name` applied `event_id`. `true` the first time, `false` for a
/// redelivery — call it in the transaction of the handler's effects and skip them on
/// `false`.
pub async fn mark_processed(
    connection: &mut PgConnection,
    consumer_name: &str,
    event_id: &str,
) -> Result<bool, sqlx::Error> {
    let result = sqlx::query!(
        "INSERT INTO messenger_processed_events (consumer, event_id) VALUES ($1, $2) \
         ON CONFLICT DO NOTHING",
        consumer_name,
        event_id
    )
    .execute(connection)
    .await?;
    Ok(result.rows_affected() == 1)
}

/// What became of one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Handled,
    Rejected,
    /// Shutdown came while retrying: leave the offset uncommitted.
    Interrupted,
}

const FIRST_RETRY: Duration = Duration::from_millis(200);
const MAX_RETRY: Duration = Duration::from_secs(30);

async fn handle_with_retry(
    handler: &dyn EventHandler,
    topic: &str,
    event: &Event,
    shutdown: &Shutdown,
    metrics: Option<&Metrics>,
) -> Outcome {
    let record = |outcome: &str| {
        if let Some(metrics) = metrics {
            metrics.record_consumed(topic, outcome);
        }
    };
    let mut backoff = crate::Backoff::new(FIRST_RETRY, MAX_RETRY);
    loop {
        match handler.handle(event).await {
            Ok(()) => {
                record("ok");
                return Outcome::Handled;
            }
            Err(HandlerError::Reject(reason)) => {
                record("rejected");
                tracing::error!(%topic, event_id = %event.event_id, %reason, "event rejected and skipped");
                return Outcome::Rejected;
            }
            Err(HandlerError::Retry(reason)) => {
                record("retry");
                let delay = backoff.next_delay();
                tracing::warn!(%topic, event_id = %event.event_id, %reason, retry_in = ?delay, "event handling failed; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return Outcome::Interrupted,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
}

/// Options of [`run_kafka_consumer_with`].
#[derive(Debug, Clone, Default)]
pub struct ConsumerOptions {
    /// Where consumed-event counts go.
    pub metrics: Option<Metrics>,
}

/// Consumes `topics` as `group_id` until `shutdown`, handing each event to `handler`.
/// Creates missing topics first. An event's offset is committed only once the handler
/// returned `Ok` or `Reject`; on `Retry` the same event is retried with backoff.
pub async fn run_kafka_consumer(
    kafka: impl Into<KafkaConfig>,
    group_id: &str,
    topics: &[&str],
    handler: Arc<dyn EventHandler>,
    shutdown: Shutdown,
) -> Result<(), Error> {
    run_kafka_consumer_with(
        kafka,
        group_id,
        topics,
        handler,
        shutdown,
        ConsumerOptions::default(),
    )
    .await
}

/// [`run_kafka_consumer`] with [`ConsumerOptions`].
pub async fn run_kafka_consumer_with(
    kafka: impl Into<KafkaConfig>,
    group_id: &str,
    topics: &[&str],
    handler: Arc<dyn EventHandler>,
    shutdown: Shutdown,
    options: ConsumerOptions,
) -> Result<(), Error> {
    let kafka = kafka.into();
    tokio::select! {
        _ = shutdown.cancelled() => return Ok(()),
        ensured = crate::kafka::ensure_topics(&kafka, topics) => {
            if let Err(error) = ensured {
                // The broker may be down right now; consuming retries by itself.
                tracing::warn!(%error, ?topics, "could not ensure topics exist");
            }
        }
    }
    let consumer = crate::kafka::consumer(&kafka, group_id, topics)?;
    tracing::info!(group_id, ?topics, "consumer started");
    // Next offset to commit per (topic, partition), flushed synchronously on shutdown.
    let mut handled: HashMap<(String, i32), i64> = HashMap::new();
    loop {
        let received = tokio::select! {
            _ = shutdown.cancelled() => break,
            received = consumer.recv() => received,
        };
        let message = match received {
            Ok(message) => message,
            Err(error) => {
                tracing::warn!(%error, group_id, "receiving from Kafka failed");
                if error.rdkafka_error_code() == Some(RDKafkaErrorCode::UnknownTopicOrPartition) {
                    // The broker came up without our topics: create them and carry on.
                    let _ = crate::kafka::ensure_topics(&kafka, topics).await;
                }
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                continue;
            }
        };
        let topic = message.topic().to_owned();
        let outcome = match Event::decode(message.payload().unwrap_or_default()) {
            Ok(event) => {
                handle_with_retry(
                    handler.as_ref(),
                    &topic,
                    &event,
                    &shutdown,
                    options.metrics.as_ref(),
                )
                .await
            }
            Err(error) => {
                tracing::error!(%topic, partition = message.partition(), offset = message.offset(), %error, "undecodable event skipped");
                Outcome::Rejected
            }
        };
        if outcome == Outcome::Interrupted {
            break;
        }
        handled.insert((topic, message.partition()), message.offset() + 1);
        if let Err(error) = consumer.commit_message(&message, CommitMode::Async) {
            tracing::warn!(%error, "committing offset failed; the event may be redelivered");
        }
    }
    // Async commits may still be queued: commit the final positions before leaving, but
    // only for partitions still assigned to us (a rebalance may have moved the others on).
    let assigned = consumer.assignment().unwrap_or_default();
    handled.retain(|(topic, partition), _| assigned.find_partition(topic, *partition).is_some());
    if !handled.is_empty() {
        let mut offsets = TopicPartitionList::new();
        for ((topic, partition), offset) in &handled {
            offsets.add_partition_offset(topic, *partition, Offset::Offset(*offset))?;
        }
        if let Err(error) = consumer.commit(&offsets, CommitMode::Sync) {
            tracing::warn!(%error, "final offset commit failed; some events may be redelivered");
        }
    }
    tracing::info!(group_id, "consumer stopped");
    Ok(())
}

/// Feeds events published on `bus` to `topics` to `handler` until `shutdown`, with the
/// same retry/reject rules as [`run_kafka_consumer`]. Subscribes when called (before the
/// returned future is spawned), so events published right after are not missed.
pub fn run_in_memory_consumer(
    bus: &InMemoryEventBus,
    topics: &[&str],
    handler: Arc<dyn EventHandler>,
    shutdown: Shutdown,
) -> impl Future<Output = ()> + Send + 'static {
    let receivers: Vec<_> = topics.iter().map(|topic| bus.subscribe(topic)).collect();
    async move {
        let (sender, mut merged) = tokio::sync::mpsc::unbounded_channel();
        let forwarders: Vec<_> = receivers
            .into_iter()
            .map(|mut receiver| {
                let sender = sender.clone();
                tokio::spawn(async move {
                    while let Some(message) = receiver.recv().await {
                        if sender.send(message).is_err() {
                            break;
                        }
                    }
                })
            })
            .collect();
        drop(sender);
        loop {
            let message = tokio::select! {
                _ = shutdown.cancelled() => break,
                message = merged.recv() => match message {
                    Some(message) => message,
                    None => break,
                },
            };
            let outcome = handle_with_retry(
                handler.as_ref(),
                &message.topic,
                &message.event,
                &shutdown,
                None,
            )
            .await;
            if outcome == Outcome::Interrupted {
                break;
            }
        }
        for forwarder in forwarders {
            forwarder.abort();
        }
    }
}
