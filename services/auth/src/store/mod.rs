//! Storage behind small traits: accounts (PostgreSQL), sessions and login-failure
//! counters (Redis), each with an in-memory twin for the dev mode and fast tests.
//! `tests/store_contract.rs` is the one test suite every implementation must pass.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use messenger_proto::v1::Event;
use uuid::Uuid;

use crate::domain::{Email, Nickname};
use crate::error::AuthError;
use crate::token::TokenDigest;

pub mod memory;
pub mod postgres;
pub mod redis;

pub use memory::{InMemoryAccountStore, InMemoryLoginAttemptLimiter, InMemorySessionStore};
pub use postgres::PostgresAccountStore;
pub use redis::{RedisLoginAttemptLimiter, RedisSessionStore};

/// A stored account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub user_id: Uuid,
    pub email: Email,
    pub nickname: Nickname,
    /// argon2id PHC string; `None` for an account that signs in only through OAuth.
    pub password_hash: Option<String>,
    pub created_at: DateTime<Utc>,
}

#[async_trait]
pub trait AccountStore: Send + Sync + 'static {
    /// Stores the account and its `UserRegistered` event atomically: both or neither.
    /// `AuthError::EmailTaken` when the (normalised) email is already registered,
    /// including when a concurrent registration wins the race.
    async fn create(&self, account: &Account, event: &Event) -> Result<(), AuthError>;

    async fn find_by_email(&self, email: &Email) -> Result<Option<Account>, AuthError>;

    async fn count(&self) -> Result<u64, AuthError>;
}

/// What a valid access token resolves to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Session {
    pub user_id: Uuid,
    pub expires_at: DateTime<Utc>,
}

#[async_trait]
pub trait SessionStore: Send + Sync + 'static {
    /// Stores the session until `session.expires_at`.
    async fn insert(&self, digest: &TokenDigest, session: &Session) -> Result<(), AuthError>;

    /// The live session for the digest; `None` once expired or removed. One lookup.
    async fn get(&self, digest: &TokenDigest) -> Result<Option<Session>, AuthError>;

    /// Removes the session; removing an unknown one is not an error.
    async fn remove(&self, digest: &TokenDigest) -> Result<(), AuthError>;
}

/// How many failed logins are tolerated, and for how long they are remembered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginLimits {
    pub max_failures_per_account: u32,
    pub max_failures_per_client: u32,
    /// Fixed window that starts at the first failure of a subject.
    pub window: Duration,
}

impl Default for LoginLimits {
    fn default() -> Self {
        Self {
            max_failures_per_account: 5,
            max_failures_per_client: 20,
            window: Duration::from_secs(15 * 60),
        }
    }
}

/// Counts failed logins per account (normalised email) and per client address.
///
/// An attempt is counted *before* the password is checked and un-counted if it succeeds,
/// so parallel guesses cannot all slip past a check-then-record gap.
#[async_trait]
pub trait LoginAttemptLimiter: Send + Sync + 'static {
    /// Atomically: `AuthError::TooManyAttempts` (with the time until the window ends) when
    /// the account or the client has already used up its failures; otherwise counts this
    /// attempt as a failure against both until [`attempt_succeeded`](Self::attempt_succeeded).
    async fn begin_attempt(&self, account: &Email, client: &str) -> Result<(), AuthError>;

    /// The attempt begun for `account` from `client` succeeded: the account's failures
    /// are forgotten and the attempt no longer counts against the client (whose earlier
    /// failures stay, so one valid account cannot launder guesses against others).
    async fn attempt_succeeded(&self, account: &Email, client: &str) -> Result<(), AuthError>;
}

/// Shared decision of both limiters: an attempt is refused when either count has
/// reached its limit; the retry hint is the longest remaining window among those.
pub(crate) fn refuse_if_exhausted(
    limits: &LoginLimits,
    account: (u32, Duration),
    client: (u32, Duration),
) -> Result<(), AuthError> {
    let account_blocked = account.0 >= limits.max_failures_per_account;
    let client_blocked = client.0 >= limits.max_failures_per_client;
    let retry_after = match (account_blocked, client_blocked) {
        (false, false) => return Ok(()),
        (true, false) => account.1,
        (false, true) => client.1,
        (true, true) => account.1.max(client.1),
    };
    Err(AuthError::TooManyAttempts { retry_after })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: LoginLimits = LoginLimits {
        max_failures_per_account: 5,
        max_failures_per_client: 20,
        window: Duration::from_secs(900),
    };

    fn retry_after(result: Result<(), AuthError>) -> Option<Duration> {
        match result {
            Ok(()) => None,
            Err(AuthError::TooManyAttempts { retry_after }) => Some(retry_after),
            Err(other) => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn attempts_are_refused_once_either_count_reaches_its_limit() {
        let s = Duration::from_secs;
        let cases = [
            ((0, s(0)), (0, s(0)), None),
            ((4, s(100)), (19, s(200)), None),
            ((5, s(100)), (0, s(0)), Some(s(100))),
            ((0, s(0)), (20, s(200)), Some(s(200))),
            ((6, s(300)), (25, s(200)), Some(s(300))),
            ((5, s(100)), (20, s(200)), Some(s(200))),
        ];
        for (account, client, expected) in cases {
            assert_eq!(
                retry_after(refuse_if_exhausted(&LIMITS, account, client)),
                expected,
                "account {account:?}, client {client:?}"
            );
        }
    }
}
