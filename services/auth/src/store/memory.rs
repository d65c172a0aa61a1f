//! In-memory stores for the all-in-one dev mode and fast tests. Same contract as the
//! real ones (see `tests/store_contract.rs`); state lives as long as the process.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::Utc;
use messenger_common::EventPublisher;
use messenger_proto::topics::AUTH_EVENTS;
use messenger_proto::v1::Event;

use super::{
    Account, AccountStore, LoginAttemptLimiter, LoginLimits, Session, SessionStore,
    refuse_if_exhausted,
};
use crate::domain::Email;
use crate::error::AuthError;
use crate::token::TokenDigest;

/// A poisoned lock only means another request panicked mid-update of a plain map;
/// the map itself is still usable.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Accounts keyed by normalised email. Publishes `UserRegistered` straight to the
/// in-process event bus (there is no outbox without a database).
pub struct InMemoryAccountStore {
    accounts: tokio::sync::Mutex<HashMap<Email, Account>>,
    events: Arc<dyn EventPublisher>,
}

impl InMemoryAccountStore {
    pub fn new(events: Arc<dyn EventPublisher>) -> Self {
        Self {
            accounts: tokio::sync::Mutex::new(HashMap::new()),
            events,
        }
    }
}

#[async_trait]
impl AccountStore for InMemoryAccountStore {
    async fn create(&self, account: &Account, event: &Event) -> Result<(), AuthError> {
        // Held across the publish so "stored" and "published" happen together or not at all.
        let mut accounts = self.accounts.lock().await;
        if accounts.contains_key(&account.email) {
            return Err(AuthError::EmailTaken);
        }
        self.events
            .publish(AUTH_EVENTS, &account.user_id.to_string(), event)
            .await
            .map_err(|e| AuthError::Publish(e.to_string()))?;
        accounts.insert(account.email.clone(), account.clone());
        Ok(())
    }

    async fn find_by_email(&self, email: &Email) -> Result<Option<Account>, AuthError> {
        Ok(self.accounts.lock().await.get(email).cloned())
    }

    async fn count(&self) -> Result<u64, AuthError> {
        Ok(self.accounts.lock().await.len() as u64)
    }
}

/// Sessions keyed by token digest; expired ones are dropped when looked up.
#[derive(Default)]
pub struct InMemorySessionStore {
    sessions: Mutex<HashMap<TokenDigest, Session>>,
}

impl InMemorySessionStore {
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl SessionStore for InMemorySessionStore {
    async fn insert(&self, digest: &TokenDigest, session: &Session) -> Result<(), AuthError> {
        let mut sessions = lock(&self.sessions);
        let now = Utc::now();
        sessions.retain(|_, s| s.expires_at > now);
        sessions.insert(digest.clone(), *session);
        Ok(())
    }

    async fn get(&self, digest: &TokenDigest) -> Result<Option<Session>, AuthError> {
        let mut sessions = lock(&self.sessions);
        match sessions.get(digest) {
            Some(session) if session.expires_at > Utc::now() => Ok(Some(*session)),
            Some(_) => {
                sessions.remove(digest);
                Ok(None)
            }
            None => Ok(None),
        }
    }

    async fn remove(&self, digest: &TokenDigest) -> Result<(), AuthError> {
        lock(&self.sessions).remove(digest);
        Ok(())
    }
}

#[derive(Debug, Clone, Copy)]
struct FailureWindow {
    failures: u32,
    ends_at: Instant,
}

#[derive(Default)]
struct FailureCounts {
    accounts: HashMap<Email, FailureWindow>,
    clients: HashMap<String, FailureWindow>,
}

/// Fixed-window failure counters per account and per client, behind one lock so a
/// check and its count are one step.
pub struct InMemoryLoginAttemptLimiter {
    limits: LoginLimits,
    counts: Mutex<FailureCounts>,
}

impl InMemoryLoginAttemptLimiter {
    pub fn new(limits: LoginLimits) -> Self {
        Self {
            limits,
            counts: Mutex::new(FailureCounts::default()),
        }
    }
}

/// The live window of `key` (dropping an expired one) as (failures, time left).
fn live<K: Hash + Eq>(
    map: &mut HashMap<K, FailureWindow>,
    key: &K,
    now: Instant,
) -> (u32, Duration) {
    match map.get(key) {
        Some(window) if window.ends_at > now => (
            window.failures,
            window.ends_at.saturating_duration_since(now),
        ),
        Some(_) => {
            map.remove(key);
            (0, Duration::ZERO)
        }
        None => (0, Duration::ZERO),
    }
}

fn count_failure<K: Hash + Eq>(
    map: &mut HashMap<K, FailureWindow>,
    key: K,
    window: Duration,
    now: Instant,
) {
    map.entry(key)
        .and_modify(|w| w.failures = w.failures.saturating_add(1))
        .or_insert(FailureWindow {
            failures: 1,
            ends_at: now + window,
        });
}

#[async_trait]
impl LoginAttemptLimiter for InMemoryLoginAttemptLimiter {
    async fn begin_attempt(&self, account: &Email, client: &str) -> Result<(), AuthError> {
        let now = Instant::now();
        let mut counts = lock(&self.counts);
        let client = client.to_owned();
        let account_state = live(&mut counts.accounts, account, now);
        let client_state = live(&mut counts.clients, &client, now);
        refuse_if_exhausted(&self.limits, account_state, client_state)?;
        count_failure(
            &mut counts.accounts,
            account.clone(),
            self.limits.window,
            now,
        );
        count_failure(&mut counts.clients, client, self.limits.window, now);
        Ok(())
    }

    async fn attempt_succeeded(&self, account: &Email, client: &str) -> Result<(), AuthError> {
        let now = Instant::now();
        let mut counts = lock(&self.counts);
        counts.accounts.remove(account);
        let client = client.to_owned();
        if live(&mut counts.clients, &client, now).0 > 0
            && let Some(window) = counts.clients.get_mut(&client)
        {
            window.failures -= 1;
        }
        Ok(())
    }
}
