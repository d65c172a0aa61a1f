//! Domain events: the [`EventPublisher`] seam (Kafka in production, [`InMemoryEventBus`]
//! for `messenger dev` and fast tests), [`new_event`] to build an envelope, and the
//! [`EventHandler`] seam consumers implement, with [`HandlerError`] saying whether a
//! failed event is retried or skipped.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use prost::Message as _;
use rdkafka::producer::{FutureProducer, FutureRecord};
use tokio::sync::mpsc;

pub use messenger_proto::v1::Event;
pub use messenger_proto::v1::event::Payload;

use crate::error::Error;
use crate::kafka::KafkaConfig;

/// Publishing an event failed; the caller (usually the outbox relay) retries later.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The broker did not acknowledge the event (down, unknown topic, timeout...).
    #[error("kafka did not accept the event: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// The topic could not be created.
    #[error("cannot create the topic: {0}")]
    Topic(String),
    /// The in-process bus was shut down.
    #[error("event bus closed")]
    Closed,
}

/// Sends an event to a topic, keyed by its aggregate id (per-key order is kept).
#[async_trait::async_trait]
pub trait EventPublisher: Send + Sync {
    /// Returns once the event is durably accepted (Kafka: acknowledged by the broker).
    async fn publish(&self, topic: &str, key: &str, event: &Event) -> Result<(), PublishError>;
}

/// A fresh event envelope: UUID v7 event id (time-ordered), occurred now.
pub fn new_event(payload: Payload) -> Event {
    Event {
        event_id: uuid::Uuid::now_v7().to_string(),
        occurred_at: Some(prost_types::Timestamp::from(SystemTime::now())),
        payload: Some(payload),
    }
}

/// How long a publish may wait for room in librdkafka's local queue.
const QUEUE_TIMEOUT: Duration = Duration::from_secs(5);

/// [`EventPublisher`] writing protobuf-encoded events to Kafka.
///
/// Built with [`KafkaPublisher::connect`], it also creates each topic the first time it
/// publishes to it (brokers such as tansu do not auto-create topics), so a service that
/// started while Kafka was down needs no extra step once Kafka is back.
#[derive(Clone)]
pub struct KafkaPublisher {
    producer: FutureProducer,
    kafka: Option<KafkaConfig>,
    created_topics: Arc<Mutex<HashSet<String>>>,
}

impl KafkaPublisher {
    /// Publishes through an existing producer (see [`crate::kafka::producer`]); topics
    /// must exist already.
    pub fn new(producer: FutureProducer) -> Self {
        Self {
            producer,
            kafka: None,
            created_topics: Arc::default(),
        }
    }

    /// Creates a producer for `kafka` and publishes through it, creating missing topics.
    pub fn connect(kafka: impl Into<KafkaConfig>) -> Result<Self, Error> {
        let kafka = kafka.into();
        Ok(Self {
            producer: crate::kafka::producer(&kafka)?,
            kafka: Some(kafka),
            created_topics: Arc::default(),
        })
    }

    /// The underlying producer (e.g. for [`crate::kafka::KafkaReadiness`]).
    pub fn producer(&self) -> &FutureProducer {
        &self.producer
    }

    fn topic_known(&self, topic: &str) -> bool {
        self.created_topics
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .contains(topic)
    }

    fn set_topic_known(&self, topic: &str, known: bool) {
        let mut topics = self
            .created_topics
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if known {
            topics.insert(topic.to_owned());
        } else {
            topics.remove(topic);
        }
    }
}

#[async_trait::async_trait]
impl EventPublisher for KafkaPublisher {
    async fn publish(&self, topic: &str, key: &str, event: &Event) -> Result<(), PublishError> {
        if let Some(kafka) = &self.kafka
            && !self.topic_known(topic)
        {
            crate::kafka::ensure_topics(kafka, &[topic])
                .await
                .map_err(|error| PublishError::Topic(error.to_string()))?;
            self.set_topic_known(topic, true);
        }
        let payload = event.encode_to_vec();
        let record = FutureRecord::to(topic).key(key).payload(&payload);
        match self.producer.send(record, QUEUE_TIMEOUT).await {
            Ok(_) => Ok(()),
            Err((error, _)) => {
                // The broker may have lost the topic (restart with memory storage): check
                // it again on the next attempt.
                self.set_topic_known(topic, false);
                Err(PublishError::Kafka(error))
            }
        }
    }
}

/// Where a service's events go and come from: Kafka (`KAFKA_BROKERS`) or an in-process
/// [`InMemoryEventBus`] shared by every service of one process (`messenger dev`, tests).
#[derive(Clone)]
pub enum EventsConfig {
    /// Kafka: `KAFKA_BROKERS` and how to reach them (`crate::kafka::KafkaConfig`).
    Kafka(KafkaConfig),
    /// The in-process bus.
    InMemory(InMemoryEventBus),
}

impl std::fmt::Debug for EventsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Kafka(kafka) => f.debug_tuple("Kafka").field(kafka).finish(),
            Self::InMemory(_) => f.write_str("InMemory"),
        }
    }
}

impl EventsConfig {
    /// Kafka at `kafka` (or plain `host:port,...` brokers).
    pub fn kafka(kafka: impl Into<KafkaConfig>) -> Self {
        Self::Kafka(kafka.into())
    }

    /// A publisher, plus the readiness check it needs (Kafka: the broker answers). On
    /// Kafka a topic is created by its first publish, not at start-up, so a service
    /// starts — and keeps its events in its outbox — while the broker is down.
    pub fn publisher(
        &self,
    ) -> Result<
        (
            Arc<dyn EventPublisher>,
            Option<crate::kafka::KafkaReadiness>,
        ),
        Error,
    > {
        match self {
            Self::Kafka(config) => {
                let kafka = KafkaPublisher::connect(config)?;
                let readiness = crate::kafka::KafkaReadiness::new(kafka.producer().clone());
                Ok((Arc::new(kafka), Some(readiness)))
            }
            Self::InMemory(bus) => Ok((Arc::new(bus.clone()), None)),
        }
    }
}

/// One event as delivered by the [`InMemoryEventBus`].
#[derive(Debug, Clone, PartialEq)]
pub struct BusMessage {
    /// The topic it was published to.
    pub topic: String,
    /// Its key (aggregate id).
    pub key: String,
    /// The event.
    pub event: Event,
}

/// In-process [`EventPublisher`]: every publish is fanned out to all current subscribers
/// of the topic, in publish order. Events published while a topic has no subscriber are
/// dropped (subscribe before publishing). Cheap to clone; clones share subscribers.
#[derive(Clone, Default)]
pub struct InMemoryEventBus {
    subscribers: Arc<Mutex<HashMap<String, Vec<mpsc::UnboundedSender<BusMessage>>>>>,
}

impl std::fmt::Debug for InMemoryEventBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InMemoryEventBus").finish_non_exhaustive()
    }
}

impl InMemoryEventBus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// A receiver of every event published to `topic` from now on.
    pub fn subscribe(&self, topic: &str) -> mpsc::UnboundedReceiver<BusMessage> {
        let (sender, receiver) = mpsc::unbounded_channel();
        self.lock()
            .entry(topic.to_owned())
            .or_default()
            .push(sender);
        receiver
    }

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, Vec<mpsc::UnboundedSender<BusMessage>>>> {
        self.subscribers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[async_trait::async_trait]
impl EventPublisher for InMemoryEventBus {
    async fn publish(&self, topic: &str, key: &str, event: &Event) -> Result<(), PublishError> {
        let message = BusMessage {
            topic: topic.to_owned(),
            key: key.to_owned(),
            event: event.clone(),
        };
        let mut subscribers = self.lock();
        if let Some(senders) = subscribers.get_mut(topic) {
            // Dropped receivers are forgotten.
            senders.retain(|sender| sender.send(message.clone()).is_ok());
        }
        Ok(())
    }
}

/// Why a handler did not apply an event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandlerError {
    /// Transient failure (database down...): the same event is tried again, its offset is
    /// not committed meanwhile.
    #[error("transient failure, will retry: {0}")]
    Retry(String),
    /// The event can never be applied (invalid, unknown reference...): logged loudly and
    /// skipped so it does not block the ones behind it.
    #[error("event rejected: {0}")]
    Reject(String),
}

impl From<sqlx::Error> for HandlerError {
    /// Database failures are assumed transient.
    fn from(error: sqlx::Error) -> Self {
        Self::Retry(error.to_string())
    }
}

impl From<crate::error::ServiceError> for HandlerError {
    /// Failures of a dependency (and bugs, which a fix and redeploy can cure) are retried;
    /// errors that say the event itself cannot apply (invalid, not found, conflict...) are
    /// rejected. Map "already applied" to `Ok` in the handler before this conversion.
    fn from(error: crate::error::ServiceError) -> Self {
        use crate::error::ServiceError as E;
        match error {
            E::Unavailable(_)
            | E::DeadlineExceeded(_)
            | E::ResourceExhausted(_)
            | E::Internal(_) => Self::Retry(error.to_string()),
            E::InvalidArgument(_)
            | E::NotFound(_)
            | E::AlreadyExists(_)
            | E::PermissionDenied(_)
            | E::Unauthenticated(_)
            | E::FailedPrecondition(_) => Self::Reject(error.to_string()),
        }
    }
}

/// Applies consumed events. Implementations should be idempotent (see
/// [`crate::consumer::mark_processed`]): delivery is at-least-once.
#[async_trait::async_trait]
pub trait EventHandler: Send + Sync {
    /// Applies one event.
    async fn handle(&self, event: &Event) -> Result<(), HandlerError>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use messenger_proto::v1::UserRegistered;

    fn registered(user: &str) -> Event {
        new_event(Payload::UserRegistered(UserRegistered {
            user_id: user.into(),
            nickname: format!("nick-{user}"),
        }))
    }

    #[test]
    fn new_events_get_distinct_time_ordered_ids() {
        let first = registered("a");
        let second = registered("b");
        assert_ne!(first.event_id, second.event_id);
        let a = uuid::Uuid::parse_str(&first.event_id).unwrap();
        let b = uuid::Uuid::parse_str(&second.event_id).unwrap();
        assert_eq!(a.get_version_num(), 7);
        assert!(a < b, "v7 ids sort by creation time");
        assert!(first.occurred_at.is_some());
    }

    #[test]
    fn service_errors_become_retry_when_transient_and_reject_otherwise() {
        use crate::error::ServiceError;
        let retry = [
            ServiceError::Unavailable("db".into()),
            ServiceError::DeadlineExceeded("slow".into()),
            ServiceError::internal(anyhow::anyhow!("bug")),
        ];
        for error in retry {
            assert!(matches!(HandlerError::from(error), HandlerError::Retry(_)));
        }
        let reject = [
            ServiceError::InvalidArgument("bad nickname".into()),
            ServiceError::NotFound("no user".into()),
            ServiceError::FailedPrecondition("not friends".into()),
        ];
        for error in reject {
            assert!(matches!(HandlerError::from(error), HandlerError::Reject(_)));
        }
    }

    #[tokio::test]
    async fn in_memory_bus_fans_out_to_every_subscriber_of_the_topic_in_order() {
        let bus = InMemoryEventBus::new();
        let mut first = bus.subscribe("users");
        let mut second = bus.subscribe("users");
        let mut other_topic = bus.subscribe("chats");
        let events: Vec<Event> = (0..3).map(|i| registered(&i.to_string())).collect();
        for event in &events {
            bus.publish("users", "user-1", event).await.unwrap();
        }
        for receiver in [&mut first, &mut second] {
            for expected in &events {
                let message = receiver.try_recv().expect("event delivered");
                assert_eq!(&message.event, expected);
                assert_eq!(message.key, "user-1");
                assert_eq!(message.topic, "users");
            }
        }
        assert!(other_topic.try_recv().is_err(), "other topics see nothing");
    }

    #[tokio::test]
    async fn in_memory_bus_forgets_dropped_subscribers() {
        let bus = InMemoryEventBus::new();
        drop(bus.subscribe("users"));
        let mut live = bus.subscribe("users");
        bus.publish("users", "k", &registered("x")).await.unwrap();
        assert!(live.try_recv().is_ok());
        assert_eq!(bus.lock().get("users").map(Vec::len), Some(1));
    }
}
