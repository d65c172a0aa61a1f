//! Transactional outbox: [`enqueue`] writes an event in the caller's transaction, so it
//! exists exactly when the state change does; [`OutboxRelay`] publishes pending events in
//! order, marks them sent, and keeps retrying with backoff while Kafka is down — nothing
//! is lost, at worst an event is sent twice (consumers deduplicate by event id).
//!
//! Order, precisely: events with the same topic and key are published in the order their
//! transactions committed. [`enqueue`] takes a transaction-scoped advisory lock on
//! (topic, key) before inserting, so a second writer of the same key waits until the first
//! commits or rolls back, and its row gets the higher id; the relay publishes in id order.
//! Events with different keys have no order between them (as on Kafka's partitions).
//! Within one transaction, events keep the order they were enqueued in.
//!
//! Isolation: each service's relay publishes only its own topics and elects its leader
//! among replicas with a lock of its own, so services sharing one database (and one
//! outbox table) never wait for each other, and one service's failing topic stalls only
//! that service's events.

use std::sync::Arc;
use std::time::Duration;

use prost::Message as _;
use sqlx::postgres::PgListener;
use sqlx::{PgConnection, PgPool};

use crate::error::Error;
use crate::events::{Event, EventPublisher};
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;

/// The LISTEN/NOTIFY channel [`enqueue`] signals on commit.
pub const NOTIFY_CHANNEL: &str = "messenger_outbox";

/// How often sent rows older than the retention are deleted.
const PURGE_INTERVAL: Duration = Duration::from_secs(600);

/// Advisory lock key ("outbox" in ASCII) that relays before per-service isolation held
/// exclusively. Relays now hold it shared (they never exclude each other with it) so that,
/// during an upgrade, an old relay publishing every topic never runs beside a new one.
const LEGACY_RELAY_LOCK_KEY: i64 = 0x6f7574626f78;

/// Writes `event` to the outbox inside the caller's transaction (`&mut *tx`). The relay
/// is woken when the transaction commits; a rollback discards both.
pub async fn enqueue(
    connection: &mut PgConnection,
    topic: &str,
    key: &str,
    event: &Event,
) -> Result<(), sqlx::Error> {
    // Held until commit/rollback: a concurrent writer of the same key queues here, so ids
    // of one key follow commit order (see the module docs). `query` rather than `query!`:
    // the function returns `void`, a type the checked macros cannot decode. `/` separates
    // the parts because no topic name can hold it (and PostgreSQL text cannot hold NUL).
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(format!("messenger_outbox/{topic}/{key}"))
        .execute(&mut *connection)
        .await?;
    sqlx::query!(
        "INSERT INTO messenger_outbox (topic, event_key, event_id, payload) VALUES ($1, $2, $3, $4)",
        topic,
        key,
        &event.event_id,
        event.encode_to_vec(),
    )
    .execute(&mut *connection)
    .await?;
    // Delivered at commit, dropped on rollback; repeated notifies in one transaction fold.
    // The channel is NOTIFY_CHANNEL (a literal here for the compile-time check; the test
    // `a_commit_wakes_the_relay_without_waiting_for_the_poll` fails if the two differ).
    sqlx::query!("NOTIFY messenger_outbox")
        .execute(&mut *connection)
        .await?;
    Ok(())
}

/// Number of events not yet relayed.
pub async fn pending_count(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT count(*) AS "pending!" FROM messenger_outbox WHERE sent_at IS NULL"#
    )
    .fetch_one(pool)
    .await
}

/// Number of events on `topics` not yet relayed.
pub async fn pending_count_of(pool: &PgPool, topics: &[String]) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT count(*) AS "pending!" FROM messenger_outbox
           WHERE sent_at IS NULL AND topic = ANY($1)"#,
        topics
    )
    .fetch_one(pool)
    .await
}

/// Publishes outbox rows of its topics to an [`EventPublisher`]; see the module docs.
pub struct OutboxRelay {
    pool: PgPool,
    publisher: Arc<dyn EventPublisher>,
    /// The topics this relay owns, sorted; rows of other topics belong to other services.
    topics: Vec<String>,
    /// Name of this relay's leader lock: the same for every replica of one service.
    lock_name: String,
    poll_interval: Duration,
    batch_size: i64,
    max_backoff: Duration,
    retention: Duration,
    metrics: Option<Metrics>,
}

impl OutboxRelay {
    /// A relay for the rows of `topics` (the topics its service produces) in the outbox of
    /// `pool`'s database, publishing through `publisher`.
    pub fn new(pool: PgPool, publisher: Arc<dyn EventPublisher>, topics: &[&str]) -> Self {
        let mut topics: Vec<String> = topics.iter().map(|topic| (*topic).to_owned()).collect();
        topics.sort();
        topics.dedup();
        Self {
            pool,
            publisher,
            lock_name: format!("messenger_outbox_relay/{}", topics.join("/")),
            topics,
            poll_interval: Duration::from_secs(1),
            batch_size: 100,
            max_backoff: Duration::from_secs(30),
            retention: Duration::from_secs(24 * 3600),
            metrics: None,
        }
    }

    /// How often to look for rows when no notification arrives (default 1 s). Polling
    /// covers notifications lost while the listener was reconnecting.
    pub fn with_poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// Longest wait between retries while publishing fails (default 30 s).
    pub fn with_max_backoff(mut self, max_backoff: Duration) -> Self {
        self.max_backoff = max_backoff;
        self
    }

    /// How long sent rows are kept before they are purged (default 24 h).
    pub fn with_retention(mut self, retention: Duration) -> Self {
        self.retention = retention;
        self
    }

    /// Counts published events in `events_published_total` and reports the backlog in
    /// `outbox_pending_events`.
    pub fn with_metrics(mut self, metrics: &Metrics) -> Self {
        self.metrics = Some(metrics.clone());
        self
    }

    /// Publishes pending rows in order until none is left or one fails. Returns how many
    /// were published; 0 when another replica holds the relay lock.
    pub async fn relay_pending(&self) -> Result<usize, Error> {
        let mut published = 0;
        loop {
            let batch = self.relay_batch().await?;
            published += batch.published;
            if let Some(error) = batch.failure {
                return Err(error);
            }
            if batch.published < self.batch_size as usize {
                return Ok(published);
            }
        }
    }

    async fn relay_batch(&self) -> Result<Batch, Error> {
        let mut tx = self.pool.begin().await?;
        let leader = sqlx::query_scalar!(
            r#"SELECT pg_try_advisory_xact_lock_shared($1)
                  AND pg_try_advisory_xact_lock(hashtextextended($2, 0)) AS "locked!""#,
            LEGACY_RELAY_LOCK_KEY,
            self.lock_name
        )
        .fetch_one(&mut *tx)
        .await?;
        if !leader {
            return Ok(Batch::default());
        }
        let rows = sqlx::query!(
            "SELECT id, topic, event_key, payload FROM messenger_outbox \
             WHERE sent_at IS NULL AND topic = ANY($2) ORDER BY id LIMIT $1",
            self.batch_size,
            &self.topics
        )
        .fetch_all(&mut *tx)
        .await?;
        let mut batch = Batch::default();
        for row in rows {
            let (id, topic, key) = (row.id, row.topic, row.event_key);
            let event = match Event::decode(row.payload.as_slice()) {
                Ok(event) => event,
                Err(error) => {
                    // Only a bug writes such a row; skip it rather than block the queue.
                    tracing::error!(id, %topic, %error, "undecodable outbox row skipped");
                    mark(&mut tx, id, Some(&format!("undecodable: {error}")), true).await?;
                    continue;
                }
            };
            match self.publisher.publish(&topic, &key, &event).await {
                Ok(()) => {
                    mark(&mut tx, id, None, true).await?;
                    self.record(&topic, "ok");
                    batch.published += 1;
                }
                Err(error) => {
                    mark(&mut tx, id, Some(&error.to_string()), false).await?;
                    self.record(&topic, "error");
                    batch.failure = Some(error.into());
                    break;
                }
            }
        }
        tx.commit().await?;
        Ok(batch)
    }

    fn record(&self, topic: &str, outcome: &str) {
        if let Some(metrics) = &self.metrics {
            metrics.record_published(topic, outcome);
        }
    }

    async fn purge_sent(&self) -> Result<u64, sqlx::Error> {
        let result = sqlx::query!(
            "DELETE FROM messenger_outbox \
             WHERE sent_at < now() - make_interval(secs => $1) AND topic = ANY($2)",
            self.retention.as_secs_f64(),
            &self.topics
        )
        .execute(&self.pool)
        .await?;
        Ok(result.rows_affected())
    }

    /// Relays until `shutdown`: wakes on NOTIFY from [`enqueue`] or every poll interval,
    /// and backs off exponentially while publishing or the database fails.
    pub async fn run(self, shutdown: Shutdown) {
        let mut listener = None;
        let mut backoff = crate::Backoff::new(Duration::from_millis(100), self.max_backoff);
        // Purge at the first healthy round, then every PURGE_INTERVAL.
        let mut next_purge = tokio::time::Instant::now();
        tracing::info!("outbox relay started");
        while !shutdown.is_triggered() {
            if listener.is_none() {
                listener = listen(&self.pool).await;
            }
            let outcome = tokio::select! {
                _ = shutdown.cancelled() => break,
                outcome = self.relay_pending() => outcome,
            };
            let healthy = outcome.is_ok();
            if let Some(metrics) = &self.metrics
                && let Ok(pending) = pending_count_of(&self.pool, &self.topics).await
            {
                metrics.set_outbox_pending(pending);
            }
            let wait = match outcome {
                Ok(_) => {
                    backoff.reset();
                    if tokio::time::Instant::now() >= next_purge {
                        next_purge = tokio::time::Instant::now() + PURGE_INTERVAL;
                        match self.purge_sent().await {
                            Ok(purged) if purged > 0 => {
                                tracing::debug!(purged, "purged sent outbox rows")
                            }
                            Ok(_) => {}
                            Err(error) => tracing::warn!(%error, "purging the outbox failed"),
                        }
                    }
                    self.poll_interval
                }
                Err(error) => {
                    let wait = backoff.next_delay();
                    tracing::warn!(%error, retry_in = ?wait, "outbox relay failed; will retry");
                    wait
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(wait) => {}
                // While backing off, a new row must not cut the wait short.
                notified = next_notification(&mut listener), if healthy => {
                    if !notified {
                        listener = None;
                    }
                }
            }
        }
        tracing::info!("outbox relay stopped");
    }
}

#[derive(Default)]
struct Batch {
    published: usize,
    failure: Option<Error>,
}

async fn mark(
    connection: &mut PgConnection,
    id: i64,
    error: Option<&str>,
    sent: bool,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE messenger_outbox SET attempts = attempts + 1, last_error = $2, \
         sent_at = CASE WHEN $3 THEN now() ELSE NULL END WHERE id = $1",
        id,
        error,
        sent
    )
    .execute(connection)
    .await?;
    Ok(())
}

async fn listen(pool: &PgPool) -> Option<PgListener> {
    let result = async {
        let mut listener = PgListener::connect_with(pool).await?;
        listener.listen(NOTIFY_CHANNEL).await?;
        Ok::<_, sqlx::Error>(listener)
    }
    .await;
    match result {
        Ok(listener) => Some(listener),
        Err(error) => {
            tracing::debug!(%error, "outbox LISTEN unavailable; polling");
            None
        }
    }
}

/// Waits for a notification; `false` when the listener broke. Never completes without a
/// listener (the poll timer covers that case).
async fn next_notification(listener: &mut Option<PgListener>) -> bool {
    match listener {
        Some(listener) => listener.recv().await.is_ok(),
        None => std::future::pending().await,
    }
}
