//! In-memory stores for the all-in-one dev mode and fast tests. Same contract as the
//! real ones (see `tests/store_contract.rs`); state lives as long as the process.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use chrono::Utc;
use messenger_common::EventPublisher;
use messenger_proto::topics::AUTH_EVENTS;
use messenger_proto::v1::Event;

use uuid::Uuid;

use super::{
    Account, AccountStore, AttemptCounts, FailureCount, KNOWN_CLIENT_TTL, LimiterClock,
    LoginAttemptLimiter, LoginLimits, OAuthFlow, OAuthFlowStore, OAuthIdentity, RegisterLimits,
    RegistrationLimiter, Session, SessionStore, attempt_abandoned, attempt_succeeded,
    begin_attempt, begin_registration, client_group, may_unlink,
};
use crate::domain::Email;
use crate::error::AuthError;
use crate::token::TokenDigest;

/// A poisoned lock only means another request panicked mid-update of a plain map;
/// the map itself is still usable.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Accounts by user id, with indexes by normalised email and by provider identity, behind
/// one lock. Publishes `UserRegistered` straight to the in-process event bus (there is no
/// outbox without a database).
pub struct InMemoryAccountStore {
    accounts: tokio::sync::Mutex<Accounts>,
    events: Arc<dyn EventPublisher>,
}

#[derive(Default)]
struct Accounts {
    by_id: HashMap<Uuid, Account>,
    by_email: HashMap<Email, Uuid>,
    by_identity: HashMap<OAuthIdentity, Uuid>,
}

impl Accounts {
    fn providers_of(&self, user_id: Uuid) -> Vec<String> {
        let mut providers: Vec<String> = self
            .by_identity
            .iter()
            .filter(|(_, owner)| **owner == user_id)
            .map(|(identity, _)| identity.provider.clone())
            .collect();
        providers.sort();
        providers
    }

    fn email_taken(&self, account: &Account) -> bool {
        account
            .email
            .as_ref()
            .is_some_and(|email| self.by_email.contains_key(email))
    }

    fn insert(&mut self, account: &Account) {
        if let Some(email) = &account.email {
            self.by_email.insert(email.clone(), account.user_id);
        }
        self.by_id.insert(account.user_id, account.clone());
    }
}

impl InMemoryAccountStore {
    pub fn new(events: Arc<dyn EventPublisher>) -> Self {
        Self {
            accounts: tokio::sync::Mutex::new(Accounts::default()),
            events,
        }
    }

    async fn publish(&self, account: &Account, event: &Event) -> Result<(), AuthError> {
        self.events
            .publish(AUTH_EVENTS, &account.user_id.to_string(), event)
            .await
            .map_err(|e| AuthError::Publish(e.to_string()))
    }
}

#[async_trait]
impl AccountStore for InMemoryAccountStore {
    async fn create(&self, account: &Account, event: &Event) -> Result<(), AuthError> {
        // Held across the publish so "stored" and "published" happen together or not at all.
        let mut accounts = self.accounts.lock().await;
        if accounts.email_taken(account) {
            return Err(AuthError::EmailTaken);
        }
        self.publish(account, event).await?;
        accounts.insert(account);
        Ok(())
    }

    async fn find_by_email(&self, email: &Email) -> Result<Option<Account>, AuthError> {
        let accounts = self.accounts.lock().await;
        Ok(accounts
            .by_email
            .get(email)
            .and_then(|id| accounts.by_id.get(id))
            .cloned())
    }

    async fn count(&self) -> Result<u64, AuthError> {
        Ok(self.accounts.lock().await.by_id.len() as u64)
    }

    async fn find_by_id(&self, user_id: Uuid) -> Result<Option<Account>, AuthError> {
        Ok(self.accounts.lock().await.by_id.get(&user_id).cloned())
    }

    async fn find_by_identity(
        &self,
        identity: &OAuthIdentity,
    ) -> Result<Option<Account>, AuthError> {
        let accounts = self.accounts.lock().await;
        Ok(accounts
            .by_identity
            .get(identity)
            .and_then(|id| accounts.by_id.get(id))
            .cloned())
    }

    async fn create_with_identity(
        &self,
        account: &Account,
        identity: &OAuthIdentity,
        event: &Event,
    ) -> Result<(), AuthError> {
        let mut accounts = self.accounts.lock().await;
        if accounts.email_taken(account) {
            return Err(AuthError::EmailTaken);
        }
        if accounts.by_identity.contains_key(identity) {
            return Err(AuthError::IdentityTaken(identity.provider.clone()));
        }
        self.publish(account, event).await?;
        accounts.insert(account);
        accounts
            .by_identity
            .insert(identity.clone(), account.user_id);
        Ok(())
    }

    async fn link(&self, user_id: Uuid, identity: &OAuthIdentity) -> Result<(), AuthError> {
        let mut accounts = self.accounts.lock().await;
        if !accounts.by_id.contains_key(&user_id) {
            return Err(AuthError::AccountNotFound);
        }
        if accounts.by_identity.contains_key(identity) {
            return Err(AuthError::IdentityTaken(identity.provider.clone()));
        }
        if accounts.providers_of(user_id).contains(&identity.provider) {
            return Err(AuthError::ProviderAlreadyLinked(identity.provider.clone()));
        }
        accounts.by_identity.insert(identity.clone(), user_id);
        Ok(())
    }

    async fn unlink(&self, user_id: Uuid, provider: &str) -> Result<(), AuthError> {
        let mut accounts = self.accounts.lock().await;
        let has_password = accounts
            .by_id
            .get(&user_id)
            .ok_or(AuthError::AccountNotFound)?
            .password_hash
            .is_some();
        may_unlink(has_password, &accounts.providers_of(user_id), provider)?;
        accounts
            .by_identity
            .retain(|identity, owner| !(*owner == user_id && identity.provider == provider));
        Ok(())
    }

    async fn linked_providers(&self, user_id: Uuid) -> Result<Vec<String>, AuthError> {
        Ok(self.accounts.lock().await.providers_of(user_id))
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

/// Flows by id digest; expired ones are dropped when another is stored.
#[derive(Default)]
pub struct InMemoryOAuthFlowStore {
    flows: Mutex<HashMap<TokenDigest, OAuthFlow>>,
}

impl InMemoryOAuthFlowStore {
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl OAuthFlowStore for InMemoryOAuthFlowStore {
    async fn insert(&self, id: &TokenDigest, flow: &OAuthFlow) -> Result<(), AuthError> {
        let mut flows = lock(&self.flows);
        let now = Utc::now();
        flows.retain(|_, f| f.expires_at > now);
        flows.insert(id.clone(), flow.clone());
        Ok(())
    }

    async fn take(&self, id: &TokenDigest) -> Result<Option<OAuthFlow>, AuthError> {
        let flow = lock(&self.flows).remove(id);
        Ok(flow.filter(|f| f.expires_at > Utc::now()))
    }
}

/// The limiter's state: counts by subject, and when each known (account, client group)
/// stops being known (Unix ms).
#[derive(Default)]
struct LoginCounts {
    pairs: HashMap<(Email, String), FailureCount>,
    clients: HashMap<String, FailureCount>,
    accounts: HashMap<Email, FailureCount>,
    known: HashMap<(Email, String), i64>,
    writes: u32,
}

/// Every this many writes the maps drop what has expired, so guesses at ever new emails
/// cannot grow them without bound.
const PRUNE_EVERY: u32 = 1024;

impl LoginCounts {
    fn read(&self, account: &Email, client: &str, now_ms: i64) -> AttemptCounts {
        let pair = (account.clone(), client.to_owned());
        AttemptCounts {
            pair: self.pairs.get(&pair).copied().unwrap_or_default(),
            client: self.clients.get(client).copied().unwrap_or_default(),
            account: self.accounts.get(account).copied().unwrap_or_default(),
            known_client: self.known.get(&pair).is_some_and(|until| *until > now_ms),
        }
    }

    fn write(
        &mut self,
        account: &Email,
        client: &str,
        counts: AttemptCounts,
        known_until: Option<i64>,
    ) {
        let pair = (account.clone(), client.to_owned());
        if let Some(until) = known_until {
            self.known.insert(pair.clone(), until);
        }
        store(&mut self.pairs, pair, counts.pair);
        store(&mut self.clients, client.to_owned(), counts.client);
        store(&mut self.accounts, account.clone(), counts.account);
    }

    fn prune_now_and_then(&mut self, limits: &LoginLimits, now_ms: i64) {
        self.writes = self.writes.wrapping_add(1);
        if !self.writes.is_multiple_of(PRUNE_EVERY) {
            return;
        }
        let open = |window| move |count: &FailureCount| count.live(window, now_ms).failures > 0;
        let pair_open = open(limits.window);
        self.pairs.retain(|_, count| pair_open(count));
        self.clients.retain(|_, count| pair_open(count));
        let account_open = open(limits.account_window);
        self.accounts.retain(|_, count| account_open(count));
        self.known.retain(|_, until| *until > now_ms);
    }
}

/// Empty counts are removed, so the maps only hold subjects with live failures.
fn store<K: Hash + Eq>(map: &mut HashMap<K, FailureCount>, key: K, count: FailureCount) {
    if count.failures == 0 {
        map.remove(&key);
    } else {
        map.insert(key, count);
    }
}

/// Failure counts per (account, client group), client group and account behind one
/// lock, so a check and its count are one step. Decisions are [`begin_attempt`]'s.
pub struct InMemoryLoginAttemptLimiter {
    limits: LoginLimits,
    clock: LimiterClock,
    counts: Mutex<LoginCounts>,
}

impl InMemoryLoginAttemptLimiter {
    pub fn new(limits: LoginLimits) -> Self {
        Self {
            limits,
            clock: LimiterClock::system(),
            counts: Mutex::new(LoginCounts::default()),
        }
    }

    /// The same limiter reading the time from `clock` (tests).
    #[must_use]
    pub fn with_clock(mut self, clock: LimiterClock) -> Self {
        self.clock = clock;
        self
    }
}

#[async_trait]
impl LoginAttemptLimiter for InMemoryLoginAttemptLimiter {
    async fn begin_attempt(&self, account: &Email, client: &str) -> Result<(), AuthError> {
        let now_ms = self.clock.now_ms();
        let client = client_group(client);
        let mut counts = lock(&self.counts);
        let current = counts.read(account, &client, now_ms);
        let next = begin_attempt(&self.limits, current, now_ms)?;
        counts.write(account, &client, next, None);
        counts.prune_now_and_then(&self.limits, now_ms);
        Ok(())
    }

    async fn attempt_succeeded(&self, account: &Email, client: &str) -> Result<(), AuthError> {
        let now_ms = self.clock.now_ms();
        let client = client_group(client);
        let mut counts = lock(&self.counts);
        let current = counts.read(account, &client, now_ms);
        let next = attempt_succeeded(&self.limits, current, now_ms);
        let known_until =
            now_ms.saturating_add(i64::try_from(KNOWN_CLIENT_TTL.as_millis()).unwrap_or(i64::MAX));
        counts.write(account, &client, next, Some(known_until));
        Ok(())
    }

    async fn attempt_abandoned(&self, account: &Email, client: &str) -> Result<(), AuthError> {
        let now_ms = self.clock.now_ms();
        let client = client_group(client);
        let mut counts = lock(&self.counts);
        let current = counts.read(account, &client, now_ms);
        counts.write(
            account,
            &client,
            attempt_abandoned(&self.limits, current, now_ms),
            None,
        );
        Ok(())
    }
}

/// Registrations per client group in their current window, behind one lock. Decisions are
/// [`begin_registration`]'s.
pub struct InMemoryRegistrationLimiter {
    limits: RegisterLimits,
    clock: LimiterClock,
    counts: Mutex<(HashMap<String, FailureCount>, u32)>,
}

impl InMemoryRegistrationLimiter {
    pub fn new(limits: RegisterLimits) -> Self {
        Self {
            limits,
            clock: LimiterClock::system(),
            counts: Mutex::default(),
        }
    }

    /// The same limiter reading the time from `clock` (tests).
    #[must_use]
    pub fn with_clock(mut self, clock: LimiterClock) -> Self {
        self.clock = clock;
        self
    }
}

#[async_trait]
impl RegistrationLimiter for InMemoryRegistrationLimiter {
    async fn begin_registration(&self, client: &str) -> Result<(), AuthError> {
        let now_ms = self.clock.now_ms();
        let client = client_group(client);
        let mut guard = lock(&self.counts);
        let (counts, writes) = &mut *guard;
        let current = counts.get(&client).copied().unwrap_or_default();
        counts.insert(client, begin_registration(&self.limits, current, now_ms)?);
        // Now and then drop the clients whose window is over, so the map stays bounded.
        *writes = writes.wrapping_add(1);
        if writes.is_multiple_of(PRUNE_EVERY) {
            let window = self.limits.window;
            counts.retain(|_, count| count.live(window, now_ms).failures > 0);
        }
        Ok(())
    }
}
