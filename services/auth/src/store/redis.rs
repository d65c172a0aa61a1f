//! Sessions and login-failure counters in Redis.
//!
//! Keys (all under the configured prefix, default `auth:`):
//! - `session:<sha256 hex of token>` → `"<user id> <expiry, unix ms>"`, expiring with the
//!   token, so ValidateToken is one GET and Logout one DEL;
//! - `login-failures:account:<sha256 hex of email>` and `login-failures:client:<address>`
//!   → failure count, a fixed window that starts at the first failure.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use redis::AsyncCommands as _;
use redis::aio::ConnectionManager;
use sha2::{Digest as _, Sha256};
use uuid::Uuid;

use super::{LoginAttemptLimiter, LoginLimits, Session, SessionStore, refuse_if_exhausted};
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
pub struct RedisLoginAttemptLimiter {
    redis: ConnectionManager,
    prefix: String,
    limits: LoginLimits,
}

impl RedisLoginAttemptLimiter {
    pub fn new(redis: ConnectionManager, prefix: impl Into<String>, limits: LoginLimits) -> Self {
        Self {
            redis,
            prefix: prefix.into(),
            limits,
        }
    }

    /// Hashed so Redis holds no email addresses.
    fn account_key(&self, account: &Email) -> String {
        let digest = hex::encode(Sha256::digest(account.as_str().as_bytes()));
        format!("{}login-failures:account:{digest}", self.prefix)
    }

    fn client_key(&self, client: &str) -> String {
        format!("{}login-failures:client:{client}", self.prefix)
    }
}

/// Atomically checks both counters and, unless either has reached its limit, counts the
/// attempt. A counter is created with the window as expiry at its first failure; INCR
/// keeps the expiry, so the window is fixed.
/// KEYS: account, client. ARGV: window ms, account limit, client limit.
/// Returns {allowed (0/1), account failures, account PTTL, client failures, client PTTL}.
const BEGIN_ATTEMPT: &str = r"
local account = tonumber(redis.call('GET', KEYS[1]) or '0')
local client = tonumber(redis.call('GET', KEYS[2]) or '0')
local account_ttl = redis.call('PTTL', KEYS[1])
local client_ttl = redis.call('PTTL', KEYS[2])
if account >= tonumber(ARGV[2]) or client >= tonumber(ARGV[3]) then
  return {0, account, account_ttl, client, client_ttl}
end
for i = 1, 2 do
  redis.call('SET', KEYS[i], 0, 'PX', ARGV[1], 'NX')
  redis.call('INCR', KEYS[i])
end
return {1, account, account_ttl, client, client_ttl}
";

/// Forgets the account's failures and un-counts the attempt for the client (never below
/// zero, never re-creating an expired counter). KEYS: account, client.
const ATTEMPT_SUCCEEDED: &str = r"
redis.call('DEL', KEYS[1])
local client = tonumber(redis.call('GET', KEYS[2]) or '0')
if client > 0 then
  redis.call('DECR', KEYS[2])
end
return 1
";

/// Remaining lifetime of a counter from PTTL (negative: no key or no expiry).
fn remaining(pttl_ms: i64) -> Duration {
    Duration::from_millis(u64::try_from(pttl_ms).unwrap_or(0))
}

fn as_count(value: i64) -> u32 {
    u32::try_from(value.max(0)).unwrap_or(u32::MAX)
}

#[async_trait]
impl LoginAttemptLimiter for RedisLoginAttemptLimiter {
    async fn begin_attempt(&self, account: &Email, client: &str) -> Result<(), AuthError> {
        let window_ms = u64::try_from(self.limits.window.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let mut redis = self.redis.clone();
        let (allowed, account_failures, account_pttl, client_failures, client_pttl): (
            i64,
            i64,
            i64,
            i64,
            i64,
        ) = redis::Script::new(BEGIN_ATTEMPT)
            .key(self.account_key(account))
            .key(self.client_key(client))
            .arg(window_ms)
            .arg(self.limits.max_failures_per_account)
            .arg(self.limits.max_failures_per_client)
            .invoke_async(&mut redis)
            .await?;
        if allowed == 1 {
            return Ok(());
        }
        refuse_if_exhausted(
            &self.limits,
            (as_count(account_failures), remaining(account_pttl)),
            (as_count(client_failures), remaining(client_pttl)),
        )?;
        // The script refused although the numbers say otherwise: only possible if the
        // limits changed between the two; refuse without a meaningful hint.
        Err(AuthError::TooManyAttempts {
            retry_after: self.limits.window,
        })
    }

    async fn attempt_succeeded(&self, account: &Email, client: &str) -> Result<(), AuthError> {
        let mut redis = self.redis.clone();
        let _: i64 = redis::Script::new(ATTEMPT_SUCCEEDED)
            .key(self.account_key(account))
            .key(self.client_key(client))
            .invoke_async(&mut redis)
            .await?;
        Ok(())
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
