//! Revocations between gateway replicas over Redis, so each replica may cache validated
//! tokens ([`crate::token_cache`]) and a logout still kills the token everywhere before it
//! returns.
//!
//! Every replica subscribes to `<prefix>:revocations`. A logout, after auth has revoked
//! the token, publishes it there and waits until every registered replica acknowledged
//! (pushed its id to a list of that logout) or is gone. A replica is registered by a key
//! `<prefix>:replica:<id>` that lives [`REGISTRATION_TTL`] and is renewed only when the
//! replica's own heartbeat, published on the channel, came back to it — proof that the
//! channel delivers. Its cache answers for [`LEASE`] after each such proof, half the
//! registration's life, so a replica that can no longer receive revocations stops
//! trusting its cache before a logout stops waiting for it.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use messenger_common::redis::LazyConnection;
use messenger_common::{Backoff, Shutdown};
use redis::AsyncCommands as _;
use uuid::Uuid;

use crate::stream::{StreamHub, TokenFingerprint};
use crate::token_cache::{LEASE, TokenCache};

/// How long a replica's registration lives without renewal: twice the cache lease.
pub const REGISTRATION_TTL: Duration = Duration::from_secs(2 * LEASE.as_secs());

/// How often a replica proves the channel works (well inside the lease).
const HEARTBEAT: Duration = Duration::from_secs(1);

/// A logout waits at most this long for the acknowledgements: past it, every replica
/// that did not answer has lost its registration, hence its cache.
const MAX_ACK_WAIT: Duration = Duration::from_secs(REGISTRATION_TTL.as_secs() + 2);

/// Why a logout could not be confirmed on every replica.
#[derive(Debug, thiserror::Error)]
pub enum RevocationError {
    #[error("Redis: {0}")]
    Redis(String),
    #[error("{0} gateway replica(s) did not acknowledge the revocation")]
    Unacknowledged(usize),
}

impl From<redis::RedisError> for RevocationError {
    fn from(error: redis::RedisError) -> Self {
        Self::Redis(error.to_string())
    }
}

impl From<messenger_common::Error> for RevocationError {
    fn from(error: messenger_common::Error) -> Self {
        Self::Redis(error.to_string())
    }
}

/// This replica's end of the revocation channel.
#[derive(Clone)]
pub struct Revocations {
    client: redis::Client,
    redis: LazyConnection,
    prefix: String,
    replica: String,
    cache: Arc<TokenCache>,
}

impl Revocations {
    /// A replica with a fresh id on the Redis at `url`; keys start with `prefix`.
    pub fn new(url: &str, prefix: &str, cache: Arc<TokenCache>) -> Result<Self, RevocationError> {
        Ok(Self {
            client: redis::Client::open(url)?,
            redis: LazyConnection::new(url)?,
            prefix: prefix.trim_end_matches(':').to_owned(),
            replica: Uuid::new_v4().to_string(),
            cache,
        })
    }

    pub fn cache(&self) -> &Arc<TokenCache> {
        &self.cache
    }

    fn channel(&self) -> String {
        format!("{}:revocations", self.prefix)
    }

    fn members_key(&self) -> String {
        format!("{}:replicas", self.prefix)
    }

    fn replica_key(&self, replica: &str) -> String {
        format!("{}:replica:{replica}", self.prefix)
    }

    fn acks_key(&self, revocation: &str) -> String {
        format!("{}:acks:{revocation}", self.prefix)
    }

    /// After auth revoked the token: tells every replica, and returns once each has
    /// forgotten it (or is provably not using its cache any more).
    pub async fn broadcast(&self, token: &TokenFingerprint) -> Result<(), RevocationError> {
        self.cache.revoke(token);
        let mut redis = self.redis.get().await?;
        let revocation = Uuid::new_v4().to_string();
        let message = format!("revoke {revocation} {}", hex::encode(token));
        let _: i64 = redis.publish(self.channel(), message).await?;
        // Read after publishing: a replica registered later subscribed before registering
        // and starts from an empty cache, so it cannot hold this token.
        let members: Vec<String> = redis.smembers(self.members_key()).await?;
        let mut waiting: HashSet<String> = members.into_iter().collect();
        let acks = self.acks_key(&revocation);
        let deadline = tokio::time::Instant::now() + MAX_ACK_WAIT;
        let mut poll = Duration::from_millis(2);
        loop {
            let acked: Vec<String> = redis.lrange(&acks, 0, -1).await?;
            for replica in &acked {
                waiting.remove(replica);
            }
            if !waiting.is_empty() {
                let mut gone = Vec::new();
                for replica in &waiting {
                    let alive: bool = redis.exists(self.replica_key(replica)).await?;
                    if !alive {
                        gone.push(replica.clone());
                    }
                }
                for replica in gone {
                    waiting.remove(&replica);
                    let _: i64 = redis.srem(self.members_key(), &replica).await?;
                }
            }
            if waiting.is_empty() {
                let _: i64 = redis.del(&acks).await?;
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(RevocationError::Unacknowledged(waiting.len()));
            }
            tokio::time::sleep(poll).await;
            poll = (poll * 2).min(Duration::from_millis(50));
        }
    }

    /// Keeps this replica subscribed, registered and acknowledging until `shutdown`;
    /// revoked tokens also end their event streams on this replica at once.
    pub async fn run(self, hub: StreamHub, shutdown: Shutdown) {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        while !shutdown.is_triggered() {
            self.cache.suspend();
            match self.serve(&hub, &shutdown).await {
                Ok(()) => break,
                Err(error) => {
                    self.cache.suspend();
                    let wait = backoff.next_delay();
                    tracing::warn!(%error, retry_in = ?wait, "token cache off: the revocation channel failed");
                    tokio::select! {
                        _ = shutdown.cancelled() => break,
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
        self.cache.suspend();
        // Leave at once rather than make logouts wait for the registration to expire.
        if let Ok(mut redis) = self.redis.get().await {
            let _: Result<i64, _> = redis.del(self.replica_key(&self.replica)).await;
            let _: Result<i64, _> = redis.srem(self.members_key(), &self.replica).await;
        }
    }

    /// One subscription's life: `Ok` on shutdown, `Err` when the channel broke.
    async fn serve(&self, hub: &StreamHub, shutdown: &Shutdown) -> Result<(), RevocationError> {
        let mut pubsub = self.client.get_async_pubsub().await?;
        pubsub.subscribe(self.channel()).await?;
        let mut messages = pubsub.on_message();
        let mut redis = self.redis.get().await?;
        let mut ticker = tokio::time::interval(HEARTBEAT);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut beat: u64 = 0;
        let mut sent: Option<(u64, Instant)> = None;
        tracing::info!(replica = %self.replica, "token cache: revocation channel subscribed");
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = ticker.tick() => {
                    beat += 1;
                    sent = Some((beat, Instant::now()));
                    let message = format!("beat {} {beat}", self.replica);
                    let _: i64 = redis.publish(self.channel(), message).await?;
                }
                message = messages.next() => {
                    let Some(message) = message else {
                        return Err(RevocationError::Redis("subscription closed".into()));
                    };
                    let payload: String = message.get_payload()?;
                    match parse(&payload) {
                        Some(Message::Beat { replica, beat }) if replica == self.replica => {
                            if let Some((expected, at)) = sent
                                && expected == beat
                            {
                                // Registered before the cache becomes usable: from then on
                                // every logout waits for this replica.
                                let _: () = redis
                                    .pset_ex(
                                        self.replica_key(&self.replica),
                                        1,
                                        REGISTRATION_TTL.as_millis() as u64,
                                    )
                                    .await?;
                                let _: i64 = redis.sadd(self.members_key(), &self.replica).await?;
                                self.cache.confirm_lease(at, Instant::now());
                            }
                        }
                        Some(Message::Beat { .. }) => {}
                        Some(Message::Revoke { revocation, token }) => {
                            self.cache.revoke(&token);
                            hub.close_token(&token);
                            let acks = self.acks_key(revocation);
                            let _: i64 = redis.rpush(&acks, &self.replica).await?;
                            let _: bool = redis.pexpire(&acks, MAX_ACK_WAIT.as_millis() as i64 * 2).await?;
                        }
                        None => tracing::warn!(payload = %messenger_common::ids::excerpt(&payload), "unreadable message on the revocation channel"),
                    }
                }
            }
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Message<'a> {
    Beat {
        replica: &'a str,
        beat: u64,
    },
    Revoke {
        revocation: &'a str,
        token: TokenFingerprint,
    },
}

fn parse(payload: &str) -> Option<Message<'_>> {
    let mut words = payload.split(' ');
    let message = match (words.next()?, words.next()?, words.next()?) {
        ("beat", replica, beat) => Message::Beat {
            replica,
            beat: beat.parse().ok()?,
        },
        ("revoke", revocation, token) => {
            let mut fingerprint = [0u8; 32];
            hex::decode_to_slice(token, &mut fingerprint).ok()?;
            Message::Revoke {
                revocation,
                token: fingerprint,
            }
        }
        _ => return None,
    };
    words.next().is_none().then_some(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_messages_are_read_strictly() {
        let token = hex::encode([7u8; 32]);
        assert_eq!(
            parse(&format!("revoke r1 {token}")),
            Some(Message::Revoke {
                revocation: "r1",
                token: [7; 32]
            })
        );
        assert_eq!(
            parse("beat a 12"),
            Some(Message::Beat {
                replica: "a",
                beat: 12
            })
        );
        for bad in [
            "",
            "beat a",
            "beat a x",
            "revoke r1 abc",
            &format!("revoke r1 {token} extra"),
            "hello a b",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }
}
