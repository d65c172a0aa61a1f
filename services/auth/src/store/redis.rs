//! Sessions and login-failure counters in Redis.
//!
//! Keys (all under the configured prefix, default `auth:`):
//! - `session:<sha256 hex of token>` → `"<user id> <expiry, unix ms>"`, expiring with the
//!   token, so ValidateToken is one GET and Logout one DEL;
//! - `login-failures:pair:<sha256 hex of email>:<client group>`,
//!   `login-failures:client:<client group>` and `login-failures:account:<sha256 hex of email>`
//!   → `"<failures> <window start, unix ms> <last failure, unix ms>"` (see `FailureCount`);
//! - `oauth-flow:<sha256 hex of flow id>` → the begun flow as JSON, expiring with it,
//!   taken with GETDEL so only one callback ever gets it;
//! - `login-known:<sha256 hex of email>:<client group>` → until when (unix ms) that client
//!   group is known to the account;
//! - `register:client:<client group>` → registrations in the client's current window, in
//!   the same form as a failure count.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use redis::AsyncCommands as _;
use redis::aio::ConnectionManager;
use sha2::{Digest as _, Sha256};
use uuid::Uuid;

use super::{
    AttemptCounts, FailureCount, KNOWN_CLIENT_TTL, LimiterClock, LoginAttemptLimiter, LoginLimits,
    OAuthFlow, OAuthFlowStore, RegisterLimits, RegistrationLimiter, Session, SessionStore,
    attempt_abandoned, attempt_succeeded, begin_attempt, begin_registration, client_group,
};
use crate::domain::Email;
use crate::error::AuthError;
use crate::token::TokenDigest;

#[derive(Clone)]
pub struct RedisSessionStore {
    redis: ConnectionManager,
    prefix: String,
}

impl RedisSessionStore {
    pub fn new(redis: ConnectionManager, prefix: impl Into<String>) -> Self {
        Self {
            redis,
            prefix: prefix.into(),
        }
    }

    fn key(&self, digest: &TokenDigest) -> String {
        format!("{}session:{}", self.prefix, digest.as_str())
    }
}

fn encode_session(session: &Session) -> String {
    format!(
        "{} {}",
        session.user_id,
        session.expires_at.timestamp_millis()
    )
}

fn decode_session(value: &str) -> Option<Session> {
    let (user_id, expires_ms) = value.split_once(' ')?;
    Some(Session {
        user_id: Uuid::parse_str(user_id).ok()?,
        expires_at: DateTime::from_timestamp_millis(expires_ms.parse().ok()?)?,
    })
}

#[async_trait]
impl SessionStore for RedisSessionStore {
    async fn insert(&self, digest: &TokenDigest, session: &Session) -> Result<(), AuthError> {
        let ttl_ms = (session.expires_at - Utc::now()).num_milliseconds();
        // A session that is already over is simply never stored.
        let Ok(ttl_ms) = u64::try_from(ttl_ms) else {
            return Ok(());
        };
        if ttl_ms == 0 {
            return Ok(());
        }
        let mut redis = self.redis.clone();
        let _: () = redis::cmd("SET")
            .arg(self.key(digest))
            .arg(encode_session(session))
            .arg("PX")
            .arg(ttl_ms)
            .query_async(&mut redis)
            .await?;
        Ok(())
    }

    async fn get(&self, digest: &TokenDigest) -> Result<Option<Session>, AuthError> {
        let mut redis = self.redis.clone();
        let value: Option<String> = redis.get(self.key(digest)).await?;
        match value {
            None => Ok(None),
            Some(value) => {
                let session = decode_session(&value)
                    .ok_or_else(|| AuthError::CorruptData("unreadable session value".into()))?;
                // Redis expires keys lazily by the millisecond; never hand out a late one.
                Ok((session.expires_at > Utc::now()).then_some(session))
            }
        }
    }

    async fn remove(&self, digest: &TokenDigest) -> Result<(), AuthError> {
        let mut redis = self.redis.clone();
        let _: u64 = redis.del(self.key(digest)).await?;
        Ok(())
    }
}

#[derive(Clone)]
pub struct RedisOAuthFlowStore {
    redis: ConnectionManager,
    prefix: String,
}

impl RedisOAuthFlowStore {
    pub fn new(redis: ConnectionManager, prefix: impl Into<String>) -> Self {
        Self {
            redis,
            prefix: prefix.into(),
        }
    }

    fn key(&self, id: &TokenDigest) -> String {
        format!("{}oauth-flow:{}", self.prefix, id.as_str())
    }
}

#[async_trait]
impl OAuthFlowStore for RedisOAuthFlowStore {
    async fn insert(&self, id: &TokenDigest, flow: &OAuthFlow) -> Result<(), AuthError> {
        let ttl_ms = (flow.expires_at - Utc::now()).num_milliseconds();
        let Ok(ttl_ms @ 1..) = u64::try_from(ttl_ms) else {
            return Ok(());
        };
        let value = serde_json::to_string(flow)
            .map_err(|e| AuthError::CorruptData(format!("OAuth flow: {e}")))?;
        let mut redis = self.redis.clone();
        let _: () = redis::cmd("SET")
            .arg(self.key(id))
            .arg(value)
            .arg("PX")
            .arg(ttl_ms)
            .query_async(&mut redis)
            .await?;
        Ok(())
    }

    async fn take(&self, id: &TokenDigest) -> Result<Option<OAuthFlow>, AuthError> {
        let mut redis = self.redis.clone();
        let value: Option<String> = redis::cmd("GETDEL")
            .arg(self.key(id))
            .query_async(&mut redis)
            .await?;
        let Some(value) = value else {
            return Ok(None);
        };
        let flow: OAuthFlow = serde_json::from_str(&value)
            .map_err(|_| AuthError::CorruptData("unreadable OAuth flow".into()))?;
        Ok((flow.expires_at > Utc::now()).then_some(flow))
    }
}

#[derive(Clone)]
pub struct RedisLoginAttemptLimiter {
    redis: ConnectionManager,
    prefix: String,
    limits: LoginLimits,
    clock: LimiterClock,
}

/// The four keys one attempt reads: the three failure counts and the known-client mark.
struct AttemptKeys {
    pair: String,
    client: String,
    account: String,
    known: String,
}

impl RedisLoginAttemptLimiter {
    pub fn new(redis: ConnectionManager, prefix: impl Into<String>, limits: LoginLimits) -> Self {
        Self {
            redis,
            prefix: prefix.into(),
            limits,
            clock: LimiterClock::system(),
        }
    }

    /// The same limiter reading the time from `clock` (tests). Redis expiry then only
    /// collects garbage; whether a window is open is decided by the stored start time.
    #[must_use]
    pub fn with_clock(mut self, clock: LimiterClock) -> Self {
        self.clock = clock;
        self
    }

    /// The email is hashed so Redis holds no email addresses.
    fn keys(&self, account: &Email, client: &str) -> AttemptKeys {
        let account = hex::encode(Sha256::digest(account.as_str().as_bytes()));
        let client = client_group(client);
        let prefix = &self.prefix;
        AttemptKeys {
            pair: format!("{prefix}login-failures:pair:{account}:{client}"),
            client: format!("{prefix}login-failures:client:{client}"),
            account: format!("{prefix}login-failures:account:{account}"),
            known: format!("{prefix}login-known:{account}:{client}"),
        }
    }

    /// Reads the counts, lets `decide` compute the next ones, and writes them only if no
    /// other attempt changed them meanwhile (else reads again). The decision itself is the
    /// shared pure one, so both limiters behave alike by construction.
    async fn update(
        &self,
        account: &Email,
        client: &str,
        decide: impl Fn(AttemptCounts, i64) -> Result<(AttemptCounts, bool), AuthError>,
    ) -> Result<(), AuthError> {
        let keys = self.keys(account, client);
        let mut redis = self.redis.clone();
        for _ in 0..MAX_CONFLICTS {
            let now_ms = self.clock.now_ms();
            let stored: Vec<Option<String>> = redis::cmd("MGET")
                .arg(&keys.pair)
                .arg(&keys.client)
                .arg(&keys.account)
                .arg(&keys.known)
                .query_async(&mut redis)
                .await?;
            let raw = |i: usize| stored.get(i).cloned().flatten().unwrap_or_default();
            let parse = |i: usize| FailureCount::decode(&raw(i)).unwrap_or_default();
            let current = AttemptCounts {
                pair: parse(0),
                client: parse(1),
                account: parse(2),
                known_client: raw(3).parse::<i64>().is_ok_and(|until| until > now_ms),
            };
            let (next, mark_known) = decide(current, now_ms)?;
            let encode = |count: FailureCount| {
                if count.failures == 0 {
                    String::new()
                } else {
                    count.encode()
                }
            };
            let known_until = if mark_known {
                now_ms.saturating_add(as_ms(KNOWN_CLIENT_TTL)).to_string()
            } else {
                String::new()
            };
            let written: i64 = redis::Script::new(WRITE_IF_UNCHANGED)
                .key(&keys.pair)
                .key(&keys.client)
                .key(&keys.account)
                .key(&keys.known)
                .arg(raw(0))
                .arg(raw(1))
                .arg(raw(2))
                .arg(encode(next.pair))
                .arg(encode(next.client))
                .arg(encode(next.account))
                .arg(as_ms(self.limits.window))
                .arg(as_ms(self.limits.window))
                .arg(as_ms(self.limits.account_window))
                .arg(known_until)
                .arg(as_ms(KNOWN_CLIENT_TTL))
                .invoke_async(&mut redis)
                .await?;
            if written == 1 {
                return Ok(());
            }
        }
        // Only a storm of simultaneous attempts on one account or client gets here.
        Err(AuthError::TooManyAttempts {
            retry_after: Duration::from_secs(1),
        })
    }
}

/// Rounds of read-decide-write an attempt tries before it gives up under contention.
const MAX_CONFLICTS: usize = 64;

/// Writes the new counts only if the old ones are still what was read; an empty value
/// means "absent" (read) and "delete" (write). Each count expires with its window (the
/// stored start time decides; the expiry only collects garbage).
/// KEYS: pair, client, account, known. ARGV: 3 expected values, 3 new values, 3 expiries
/// in ms, known-until (empty: leave as is), known expiry in ms. Returns 1 if written.
const WRITE_IF_UNCHANGED: &str = r"
for i = 1, 3 do
  if (redis.call('GET', KEYS[i]) or '') ~= ARGV[i] then
    return 0
  end
end
for i = 1, 3 do
  if ARGV[i + 3] == '' then
    redis.call('DEL', KEYS[i])
  else
    redis.call('SET', KEYS[i], ARGV[i + 3], 'PX', ARGV[i + 6])
  end
end
if ARGV[10] ~= '' then
  redis.call('SET', KEYS[4], ARGV[10], 'PX', ARGV[11])
end
return 1
";

fn as_ms(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis())
        .unwrap_or(i64::MAX)
        .max(1)
}

#[async_trait]
impl LoginAttemptLimiter for RedisLoginAttemptLimiter {
    async fn begin_attempt(&self, account: &Email, client: &str) -> Result<(), AuthError> {
        self.update(account, client, |counts, now_ms| {
            Ok((begin_attempt(&self.limits, counts, now_ms)?, false))
        })
        .await
    }

    async fn attempt_succeeded(&self, account: &Email, client: &str) -> Result<(), AuthError> {
        self.update(account, client, |counts, now_ms| {
            Ok((attempt_succeeded(&self.limits, counts, now_ms), true))
        })
        .await
    }

    async fn attempt_abandoned(&self, account: &Email, client: &str) -> Result<(), AuthError> {
        self.update(account, client, |counts, now_ms| {
            Ok((attempt_abandoned(&self.limits, counts, now_ms), false))
        })
        .await
    }
}
/// Registrations per client group in Redis: read, decide with [`begin_registration`],
/// write only if unchanged (else read again), as the login limiter does.
#[derive(Clone)]
pub struct RedisRegistrationLimiter {
    redis: ConnectionManager,
    prefix: String,
    limits: RegisterLimits,
    clock: LimiterClock,
}

impl RedisRegistrationLimiter {
    pub fn new(
        redis: ConnectionManager,
        prefix: impl Into<String>,
        limits: RegisterLimits,
    ) -> Self {
        Self {
            redis,
            prefix: prefix.into(),
            limits,
            clock: LimiterClock::system(),
        }
    }

    /// The same limiter reading the time from `clock` (tests).
    #[must_use]
    pub fn with_clock(mut self, clock: LimiterClock) -> Self {
        self.clock = clock;
        self
    }
}

/// Sets KEYS[1] to ARGV[2] with expiry ARGV[3] ms only if it still holds ARGV[1] (empty:
/// absent). Returns 1 if written.
const SET_IF_UNCHANGED: &str = r"
if (redis.call('GET', KEYS[1]) or '') ~= ARGV[1] then
  return 0
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
";

#[async_trait]
impl RegistrationLimiter for RedisRegistrationLimiter {
    async fn begin_registration(&self, client: &str) -> Result<(), AuthError> {
        let key = format!("{}register:client:{}", self.prefix, client_group(client));
        let mut redis = self.redis.clone();
        for _ in 0..MAX_CONFLICTS {
            let now_ms = self.clock.now_ms();
            let stored: Option<String> = redis.get(&key).await?;
            let stored = stored.unwrap_or_default();
            let current = FailureCount::decode(&stored).unwrap_or_default();
            let next = begin_registration(&self.limits, current, now_ms)?;
            let written: i64 = redis::Script::new(SET_IF_UNCHANGED)
                .key(&key)
                .arg(&stored)
                .arg(next.encode())
                .arg(as_ms(self.limits.window))
                .invoke_async(&mut redis)
                .await?;
            if written == 1 {
                return Ok(());
            }
        }
        Err(AuthError::TooManyRegistrations {
            retry_after: Duration::from_secs(1),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_values_round_trip() {
        let session = Session {
            user_id: Uuid::now_v7(),
            expires_at: DateTime::from_timestamp_millis(1_800_000_000_123).unwrap(),
        };
        assert_eq!(decode_session(&encode_session(&session)), Some(session));
        assert_eq!(decode_session("garbage"), None);
        assert_eq!(decode_session("not-a-uuid 123"), None);
    }
}
