//! Getting the chat events from the store's outbox to Kafka: the pure decision of what
//! is ready ([`plan_outbox`]) and the relay loop ([`ChatOutboxRelay`]) that publishes
//! in order, marks each event published, and backs off while the broker is down so
//! nothing is lost. Delivery is at-least-once (a crash between publish and mark, or two
//! replicas relaying at once, repeats an event); consumers deduplicate by `event_id`.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use messenger_common::events::EventPublisher;
use messenger_common::{Metrics, Shutdown};
use tokio::sync::Notify;

use crate::error::ChatError;
use crate::store::ChatStore;

/// What the store knows about one pending outbox event.
#[derive(Clone, Debug)]
pub struct PendingCheck {
    /// The event's key (its chat).
    pub key: String,
    pub written_at: DateTime<Utc>,
    /// Whether the chat or message the event announces has been stored.
    pub subject_stored: bool,
}

/// What to do with a pending event now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutboxDecision {
    Publish,
    /// Its change may still be on its way (or an earlier event of its chat is): later.
    Wait,
    /// Its change was never stored and the grace has passed: it announces nothing.
    Abandon,
}

/// Decides, in order, which pending events to publish. The outbox document is written
/// before the change it announces (see `store::mongo`), so an event whose subject is
/// missing is either in flight (wait) or orphaned by a failed write (abandon after
/// `grace`). Once one event of a chat waits, the chat's later events wait too, so
/// consumers see a chat's events in order.
pub fn plan_outbox(
    pending: &[PendingCheck],
    now: DateTime<Utc>,
    grace: Duration,
) -> Vec<OutboxDecision> {
    let grace = chrono::Duration::from_std(grace).unwrap_or(chrono::Duration::MAX);
    let mut blocked_keys: HashSet<&str> = HashSet::new();
    pending
        .iter()
        .map(|check| {
            if blocked_keys.contains(check.key.as_str()) {
                OutboxDecision::Wait
            } else if check.subject_stored {
                OutboxDecision::Publish
            } else if now - check.written_at >= grace {
                OutboxDecision::Abandon
            } else {
                blocked_keys.insert(&check.key);
                OutboxDecision::Wait
            }
        })
        .collect()
}

/// How many events one relay pass reads.
const BATCH: usize = 100;
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Publishes the store's pending events to the event bus, oldest first.
pub struct ChatOutboxRelay {
    store: Arc<dyn ChatStore>,
    publisher: Arc<dyn EventPublisher>,
    /// Poked after every write so events leave at once rather than at the next poll.
    wake: Arc<Notify>,
    poll_interval: Duration,
    metrics: Option<Metrics>,
}

impl ChatOutboxRelay {
    pub fn new(
        store: Arc<dyn ChatStore>,
        publisher: Arc<dyn EventPublisher>,
        poll_interval: Duration,
    ) -> Self {
        Self {
            store,
            publisher,
            wake: Arc::new(Notify::new()),
            poll_interval,
            metrics: None,
        }
    }

    /// Counts publish attempts in `metrics` (`ok` / `error` per topic).
    pub fn with_metrics(mut self, metrics: &Metrics) -> Self {
        self.metrics = Some(metrics.clone());
        self
    }

    /// A handle the writers use to wake the relay.
    pub fn waker(&self) -> Arc<Notify> {
        Arc::clone(&self.wake)
    }

    /// Relays until `shutdown` fires.
    pub async fn run(self, shutdown: Shutdown) {
        let mut backoff = messenger_common::Backoff::new(MIN_BACKOFF, MAX_BACKOFF);
        loop {
            // A pass can wait long on a broker that is down; shutdown must not. Stopping
            // mid-pass loses nothing: an event is marked published only after the broker
            // acknowledged it.
            let pass = tokio::select! {
                () = shutdown.cancelled() => return,
                pass = self.relay_pending() => pass,
            };
            let pause = match pass {
                Ok(published) if published == BATCH => Duration::ZERO,
                Ok(_) => {
                    backoff.reset();
                    self.poll_interval
                }
                Err(error) => {
                    let pause = backoff.next_delay();
                    tracing::warn!(%error, retry_in = ?pause, "chat outbox relay failed; will retry");
                    pause
                }
            };
            if pause.is_zero() {
                if shutdown.is_triggered() {
                    return;
                }
                continue;
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = self.wake.notified(), if !backoff.is_backing_off() => {}
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// One pass: publishes up to a batch of ready events in order and marks each
    /// published. Stops at the first failure so a chat's events never overtake each
    /// other. Returns how many were published.
    pub async fn relay_pending(&self) -> Result<usize, ChatError> {
        let events = self.store.pending_events(BATCH).await?;
        let mut published = 0;
        for pending in events {
            let outcome = self
                .publisher
                .publish(&pending.topic, &pending.key, &pending.event)
                .await;
            if let Some(metrics) = &self.metrics {
                metrics
                    .record_published(&pending.topic, if outcome.is_ok() { "ok" } else { "error" });
            }
            outcome.map_err(|error| {
                ChatError::Unavailable(format!("publishing event {}: {error}", pending.event_id))
            })?;
            self.store.mark_event_published(&pending.event_id).await?;
            published += 1;
        }
        Ok(published)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(key: &str, age_secs: i64, subject_stored: bool, now: DateTime<Utc>) -> PendingCheck {
        PendingCheck {
            key: key.into(),
            written_at: now - chrono::Duration::seconds(age_secs),
            subject_stored,
        }
    }

    #[test]
    fn plan_publishes_stored_waits_for_in_flight_and_abandons_orphans() {
        use OutboxDecision::*;
        let now = Utc::now();
        let grace = Duration::from_secs(60);
        let cases: Vec<(&str, Vec<PendingCheck>, Vec<OutboxDecision>)> = vec![
            (
                "stored subjects publish",
                vec![check("a", 1, true, now), check("b", 1, true, now)],
                vec![Publish, Publish],
            ),
            (
                "a young missing subject waits",
                vec![check("a", 1, false, now)],
                vec![Wait],
            ),
            (
                "an old missing subject is abandoned",
                vec![check("a", 61, false, now)],
                vec![Abandon],
            ),
            (
                "a waiting event holds back its chat's later events only",
                vec![
                    check("a", 2, false, now),
                    check("a", 1, true, now),
                    check("b", 1, true, now),
                ],
                vec![Wait, Wait, Publish],
            ),
            (
                "an abandoned event does not hold back its chat",
                vec![check("a", 90, false, now), check("a", 1, true, now)],
                vec![Abandon, Publish],
            ),
        ];
        for (name, pending, expected) in cases {
            assert_eq!(plan_outbox(&pending, now, grace), expected, "{name}");
        }
    }

    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use messenger_common::events::{Event, Payload, PublishError, new_event};
    use messenger_proto::v1 as proto;

    use crate::domain::{ChatDraft, Message, MessageId, UserId};
    use crate::store::InMemoryChatStore;

    /// Fails the first `failures` publishes (a broker outage), then records event ids.
    struct FlakyPublisher {
        failures: AtomicUsize,
        published: Mutex<Vec<String>>,
    }

    #[async_trait::async_trait]
    impl EventPublisher for FlakyPublisher {
        async fn publish(
            &self,
            _topic: &str,
            _key: &str,
            event: &Event,
        ) -> Result<(), PublishError> {
            if self.failures.load(Ordering::SeqCst) > 0 {
                self.failures.fetch_sub(1, Ordering::SeqCst);
                return Err(PublishError::Closed);
            }
            self.published.lock().unwrap().push(event.event_id.clone());
            Ok(())
        }
    }

    /// Never answers, like a publish to an unreachable broker.
    struct HangingPublisher;

    #[async_trait::async_trait]
    impl EventPublisher for HangingPublisher {
        async fn publish(
            &self,
            _topic: &str,
            _key: &str,
            _event: &Event,
        ) -> Result<(), PublishError> {
            std::future::pending().await
        }
    }

    /// A store holding a chat and two messages: three pending events, in order.
    async fn store_with_three_events() -> (Arc<InMemoryChatStore>, Vec<String>) {
        let store = Arc::new(InMemoryChatStore::new());
        let (a, b) = (UserId::new_random(), UserId::new_random());
        let chat = ChatDraft {
            creator_id: a,
            other_ids: vec![b],
        }
        .into_chat();
        let created = new_event(Payload::ChatCreated(proto::ChatCreated {
            chat_id: chat.id.to_string(),
            ..Default::default()
        }));
        let mut ids = vec![created.event_id.clone()];
        store.create_chat(chat.clone(), created).await.unwrap();
        for content in ["one", "two"] {
            let id = MessageId::generate();
            let message = Message {
                id,
                chat_id: chat.id,
                author_id: a,
                content: content.into(),
                sent_at: id.timestamp(),
                client_message_id: None,
            };
            let sent = new_event(Payload::MessageSent(proto::MessageSent {
                message_id: id.to_string(),
                ..Default::default()
            }));
            ids.push(sent.event_id.clone());
            store.append_message(message, sent).await.unwrap();
        }
        (store, ids)
    }

    #[tokio::test]
    async fn the_relay_retries_through_an_outage_and_publishes_everything_in_order() {
        let (store, event_ids) = store_with_three_events().await;
        let publisher = Arc::new(FlakyPublisher {
            failures: AtomicUsize::new(3),
            published: Mutex::new(Vec::new()),
        });
        let relay =
            ChatOutboxRelay::new(store.clone(), publisher.clone(), Duration::from_millis(50));
        let shutdown = Shutdown::new();
        let running = tokio::spawn(relay.run(shutdown.clone()));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while publisher.published.lock().unwrap().len() < 3 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the relay did not recover from the outage"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(*publisher.published.lock().unwrap(), event_ids);
        assert!(
            store.pending_events(10).await.unwrap().is_empty(),
            "published events leave the outbox"
        );
        shutdown.trigger();
        tokio::time::timeout(Duration::from_secs(2), running)
            .await
            .expect("the relay stops on shutdown")
            .unwrap();
    }

    #[tokio::test]
    async fn shutdown_interrupts_a_hanging_publish_and_keeps_the_event() {
        let (store, event_ids) = store_with_three_events().await;
        let relay = ChatOutboxRelay::new(
            store.clone(),
            Arc::new(HangingPublisher),
            Duration::from_millis(50),
        );
        let shutdown = Shutdown::new();
        let running = tokio::spawn(relay.run(shutdown.clone()));
        tokio::time::sleep(Duration::from_millis(100)).await;
        shutdown.trigger();
        tokio::time::timeout(Duration::from_secs(2), running)
            .await
            .expect("the relay stops on shutdown")
            .unwrap();
        let pending: Vec<String> = store
            .pending_events(10)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.event_id)
            .collect();
        assert_eq!(
            pending, event_ids,
            "nothing unacknowledged may leave the outbox"
        );
    }
}
