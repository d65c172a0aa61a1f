//! Feeds domain events to the [`StreamHub`]. Every replica consumes every event: from
//! Kafka under a consumer group of its own (so replicas do not split the partitions
//! between them), starting at the latest offset (a stream shows what happens while it
//! is open; history and the REST API cover the past), or from the in-process bus of the
//! all-in-one mode.

use std::sync::Arc;
use std::time::Duration;

use messenger_common::admin::{Gate, ReadinessCheck};
use messenger_common::events::{Event, EventHandler, HandlerError, InMemoryEventBus};
use messenger_common::kafka::KafkaConfig;
use messenger_common::{Metrics, Shutdown};
use prost::Message as _;
use rdkafka::Message as _;
use rdkafka::consumer::{Consumer, StreamConsumer};

use crate::stream::{StreamHub, fan_out};

/// Topics whose events reach clients.
pub const TOPICS: &[&str] = &["messenger.chat.events", "messenger.friends.events"];

/// Hands one event to the hub.
pub fn dispatch(hub: &StreamHub, event: &Event) {
    for (user, stream_event) in fan_out(event) {
        hub.deliver(user, stream_event);
    }
}

/// A Kafka consumer reading every partition of [`TOPICS`] from the latest offset.
pub struct KafkaFeed {
    consumer: Arc<StreamConsumer>,
}

impl KafkaFeed {
    pub async fn connect(kafka: &KafkaConfig) -> Result<Self, messenger_common::Error> {
        if let Err(error) = messenger_common::kafka::ensure_topics(kafka, TOPICS).await {
            // The broker may be down right now; the consumer reconnects by itself.
            tracing::warn!(%error, "could not ensure the event topics exist");
        }
        // A group per process: group ids are never reused, so no offsets are committed.
        let group = format!("gateway-{}", uuid::Uuid::new_v4());
        let consumer: StreamConsumer = messenger_common::kafka::client_config(kafka)
            .set("group.id", &group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "latest")
            .set("session.timeout.ms", "10000")
            // Events are for people watching: a fetch waits at most 100 ms for new records
            // (librdkafka's 500 ms default is a broker that holds the fetch that long
            // before answering; docs/benchmarks.md).
            .set("fetch.wait.max.ms", "100")
            .create()?;
        consumer.subscribe(TOPICS)?;
        tracing::info!(%group, topics = ?TOPICS, "consuming events for the real-time streams");
        Ok(Self {
            consumer: Arc::new(consumer),
        })
    }

    /// `/readyz`: ready once partitions are assigned, so no event published after that
    /// point is missed by a stream opened after it.
    pub fn readiness(&self) -> Arc<dyn ReadinessCheck> {
        Arc::new(FeedReadiness {
            consumer: Arc::clone(&self.consumer),
        })
    }

    pub async fn run(self, hub: StreamHub, metrics: Metrics, shutdown: Shutdown) {
        loop {
            let received = tokio::select! {
                _ = shutdown.cancelled() => break,
                received = self.consumer.recv() => received,
            };
            match received {
                Ok(message) => {
                    let topic = message.topic().to_owned();
                    match Event::decode(message.payload().unwrap_or_default()) {
                        Ok(event) => {
                            dispatch(&hub, &event);
                            metrics.record_consumed(&topic, "ok");
                        }
                        Err(error) => {
                            metrics.record_consumed(&topic, "rejected");
                            tracing::error!(%topic, %error, "undecodable event skipped");
                        }
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "receiving events from Kafka failed");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        }
    }
}

struct FeedReadiness {
    consumer: Arc<StreamConsumer>,
}

#[messenger_common::async_trait]
impl ReadinessCheck for FeedReadiness {
    fn name(&self) -> &str {
        "events"
    }

    /// An outage of the broker later delays the streams; it does not close the front door.
    fn gate(&self) -> Gate {
        Gate::StartUp
    }

    async fn check(&self) -> Result<(), String> {
        let assigned = self.consumer.assignment().map_err(|e| e.to_string())?;
        if assigned.count() == 0 {
            return Err("no event partitions assigned yet".to_owned());
        }
        Ok(())
    }
}

/// The in-process twin for the all-in-one mode.
struct HubHandler(StreamHub);

#[messenger_common::async_trait]
impl EventHandler for HubHandler {
    async fn handle(&self, event: &Event) -> Result<(), HandlerError> {
        dispatch(&self.0, event);
        Ok(())
    }
}

/// Feeds `hub` from `bus` until `shutdown` (subscribes before returning).
pub fn run_in_memory(
    bus: &InMemoryEventBus,
    hub: StreamHub,
    shutdown: Shutdown,
) -> impl Future<Output = ()> + Send + 'static {
    messenger_common::consumer::run_in_memory_consumer(
        bus,
        TOPICS,
        Arc::new(HubHandler(hub)),
        shutdown,
    )
}
