//! Storage behind small traits: accounts (PostgreSQL), sessions, login-failure and
//! registration counters (Redis), each with an in-memory twin for the dev mode and fast
//! tests.
//! `tests/store_contract.rs` is the one test suite every implementation must pass.

use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
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

pub use memory::{
    InMemoryAccountStore, InMemoryLoginAttemptLimiter, InMemoryOAuthFlowStore,
    InMemoryRegistrationLimiter, InMemorySessionStore,
};
pub use postgres::PostgresAccountStore;
pub use redis::{
    RedisLoginAttemptLimiter, RedisOAuthFlowStore, RedisRegistrationLimiter, RedisSessionStore,
};

/// A stored account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub user_id: Uuid,
    /// `None` for an account a provider created without vouching for an email.
    pub email: Option<Email>,
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

    async fn find_by_id(&self, user_id: Uuid) -> Result<Option<Account>, AuthError>;

    /// The account a provider identity signs in to.
    async fn find_by_identity(
        &self,
        identity: &OAuthIdentity,
    ) -> Result<Option<Account>, AuthError>;

    /// Stores a new account, its first identity and its `UserRegistered` event
    /// atomically. `EmailTaken` / `IdentityTaken` when another account won the race.
    async fn create_with_identity(
        &self,
        account: &Account,
        identity: &OAuthIdentity,
        event: &Event,
    ) -> Result<(), AuthError>;

    /// Links the identity to an existing account: `IdentityTaken` when it belongs to
    /// any account already, `ProviderAlreadyLinked` when the account has another identity
    /// of that provider, `AccountNotFound` when there is no such account.
    async fn link(&self, user_id: Uuid, identity: &OAuthIdentity) -> Result<(), AuthError>;

    /// Removes the account's identity of `provider`, atomically with the check that the
    /// account keeps a way to sign in (a password or another identity):
    /// `NotLinked`, or `LastSignInMethod` and nothing changes.
    async fn unlink(&self, user_id: Uuid, provider: &str) -> Result<(), AuthError>;

    /// The providers linked to the account, sorted by name.
    async fn linked_providers(&self, user_id: Uuid) -> Result<Vec<String>, AuthError>;
}

/// The rule every store applies atomically before unlinking `provider`: it must be
/// linked, and the account must keep a way to sign in (its password or another provider).
pub fn may_unlink(has_password: bool, linked: &[String], provider: &str) -> Result<(), AuthError> {
    if !linked.iter().any(|p| p == provider) {
        return Err(AuthError::NotLinked(provider.to_owned()));
    }
    if !has_password && linked.len() == 1 {
        return Err(AuthError::LastSignInMethod(provider.to_owned()));
    }
    Ok(())
}

/// Who a user is at a provider: the provider's name (as configured) and its stable
/// subject identifier for the user.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct OAuthIdentity {
    pub provider: String,
    pub subject: String,
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

/// A begun authorization code flow: kept until the callback takes it (once) or it
/// expires. `Debug` hides the secrets.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct OAuthFlow {
    pub provider: String,
    /// The `state` sent to the provider; the callback must bring the same one.
    pub state: String,
    pub pkce_verifier: String,
    /// The `nonce` sent to an OpenID Connect provider; its ID token must carry it.
    pub nonce: Option<String>,
    /// The signed-in user who asked to link the provider; `None` for a sign-in.
    pub link_user: Option<Uuid>,
    pub expires_at: DateTime<Utc>,
}

impl std::fmt::Debug for OAuthFlow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthFlow")
            .field("provider", &self.provider)
            .field("link_user", &self.link_user)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// Begun OAuth flows by the digest of their flow id (the browser holds the id itself).
#[async_trait]
pub trait OAuthFlowStore: Send + Sync + 'static {
    /// Keeps the flow until `flow.expires_at`.
    async fn insert(&self, id: &TokenDigest, flow: &OAuthFlow) -> Result<(), AuthError>;

    /// Removes and returns the flow, in one step so only one caller ever gets it;
    /// `None` when unknown, already taken or expired.
    async fn take(&self, id: &TokenDigest) -> Result<Option<OAuthFlow>, AuthError>;
}

/// How failed logins are throttled. Every subject below gets `max_*` failures free within
/// its window; after that each further attempt must wait a delay after the subject's last
/// failure that doubles per failure, from `first_delay` up to `max_delay`. Nothing is ever
/// locked outright: the window ending, or the delay passing, lets the next attempt in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginLimits {
    /// Failures one client group may have against one account (`AUTH_LOGIN_MAX_FAILURES`).
    /// A stranger only slows themselves down this way, never the account's owner.
    pub max_failures_per_account_client: u32,
    /// Failures one client group may have across all accounts
    /// (`AUTH_LOGIN_MAX_FAILURES_PER_CLIENT`): stops one address spraying many accounts.
    pub max_failures_per_client: u32,
    /// Fixed window of the two counts above, from the first failure
    /// (`AUTH_LOGIN_FAILURE_WINDOW`).
    pub window: Duration,
    /// Failures an account may have from all clients together
    /// (`AUTH_LOGIN_MAX_FAILURES_PER_ACCOUNT`): the slower budget against guessing from
    /// many addresses. Clients that logged in to the account within
    /// [`KNOWN_CLIENT_TTL`] are exempt, so its owner keeps getting in from home.
    pub max_failures_per_account: u32,
    /// Fixed window of the per-account budget (`AUTH_LOGIN_ACCOUNT_WINDOW`).
    pub account_window: Duration,
    /// Delay after the first failure beyond a free allowance (1 s; not configurable from
    /// the environment, tests lengthen it to stay independent of how fast hashing is).
    pub first_delay: Duration,
    /// Longest delay any subject can impose on the next attempt (`AUTH_LOGIN_MAX_DELAY`).
    pub max_delay: Duration,
}

impl Default for LoginLimits {
    fn default() -> Self {
        Self {
            max_failures_per_account_client: 5,
            max_failures_per_client: 20,
            window: Duration::from_secs(15 * 60),
            max_failures_per_account: 100,
            account_window: Duration::from_secs(60 * 60),
            first_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
        }
    }
}

/// How long a client group that logged in to an account stays exempt from that account's
/// shared budget.
pub const KNOWN_CLIENT_TTL: Duration = Duration::from_secs(30 * 24 * 60 * 60);

/// Counts failed logins per (account, client group), per client group and per account,
/// and throttles with progressive delays (see [`LoginLimits`]). Client addresses are
/// grouped by [`client_group`] (IPv6 by /64) by every implementation.
///
/// An attempt is counted *before* the password is checked and un-counted if it succeeds,
/// so parallel guesses cannot all slip past a check-then-record gap.
#[async_trait]
pub trait LoginAttemptLimiter: Send + Sync + 'static {
    /// Atomically: `AuthError::TooManyAttempts` (with the wait until an attempt would be
    /// let in) when a subject asks for a delay that has not passed yet; otherwise counts
    /// this attempt as a failure of all three subjects until
    /// [`attempt_succeeded`](Self::attempt_succeeded).
    async fn begin_attempt(&self, account: &Email, client: &str) -> Result<(), AuthError>;

    /// The attempt begun for `account` from `client` succeeded: the pair's failures are
    /// forgotten, the attempt no longer counts against the client or the account (whose
    /// other failures stay, so one valid login cannot launder guesses), and the client
    /// group becomes known to the account for [`KNOWN_CLIENT_TTL`].
    async fn attempt_succeeded(&self, account: &Email, client: &str) -> Result<(), AuthError>;

    /// The attempt begun for `account` from `client` ended before its password was
    /// checked (it waited for a hashing slot until its deadline, or storage failed): it
    /// no longer counts against any of the three, and nothing else changes.
    async fn attempt_abandoned(&self, account: &Email, client: &str) -> Result<(), AuthError>;
}

/// The unit a client address is counted in: an IPv4 address as is (IPv4-mapped IPv6
/// included), an IPv6 address by its /64 (one subscriber usually holds a whole /64 and
/// could otherwise use a fresh address per guess), anything else verbatim.
pub fn client_group(client: &str) -> String {
    match client.parse::<IpAddr>() {
        Ok(IpAddr::V4(v4)) => v4.to_string(),
        Ok(IpAddr::V6(v6)) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let network = u128::from(v6) & !((1u128 << 64) - 1);
                format!("{}/64", Ipv6Addr::from(network))
            }
        },
        Err(_) => client.to_owned(),
    }
}

/// Failures of one subject in its current fixed window; times in Unix milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FailureCount {
    pub failures: u32,
    pub window_started_ms: i64,
    pub last_failure_ms: i64,
}

impl FailureCount {
    /// This count if its window is still open at `now_ms`, else an empty one.
    pub(crate) fn live(self, window: Duration, now_ms: i64) -> Self {
        if self.failures > 0 && now_ms < self.window_started_ms.saturating_add(millis(window)) {
            self
        } else {
            Self::default()
        }
    }

    fn with_failure(self, now_ms: i64) -> Self {
        if self.failures == 0 {
            Self {
                failures: 1,
                window_started_ms: now_ms,
                last_failure_ms: now_ms,
            }
        } else {
            Self {
                failures: self.failures.saturating_add(1),
                last_failure_ms: now_ms,
                ..self
            }
        }
    }

    fn without_one(self) -> Self {
        match self.failures {
            0 | 1 => Self::default(),
            n => Self {
                failures: n - 1,
                ..self
            },
        }
    }

    /// How long the next attempt must still wait at `now_ms`, if at all.
    fn wait(
        self,
        free: u32,
        window: Duration,
        limits: &LoginLimits,
        now_ms: i64,
    ) -> Option<Duration> {
        let excess = self.failures.checked_sub(free)?;
        let delay = limits
            .first_delay
            .saturating_mul(1u32 << excess.min(30))
            .min(limits.max_delay);
        let ready_ms = self
            .last_failure_ms
            .saturating_add(millis(delay))
            // The window ending forgets the count, whatever the delay.
            .min(self.window_started_ms.saturating_add(millis(window)));
        (now_ms < ready_ms)
            .then(|| Duration::from_millis(u64::try_from(ready_ms - now_ms).unwrap_or(0)))
    }

    /// `"<failures> <window start ms> <last failure ms>"`, as stored in Redis.
    pub fn encode(self) -> String {
        format!(
            "{} {} {}",
            self.failures, self.window_started_ms, self.last_failure_ms
        )
    }

    pub fn decode(text: &str) -> Option<Self> {
        let mut parts = text.split(' ');
        let count = Self {
            failures: parts.next()?.parse().ok()?,
            window_started_ms: parts.next()?.parse().ok()?,
            last_failure_ms: parts.next()?.parse().ok()?,
        };
        parts.next().is_none().then_some(count)
    }
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// What one login attempt is judged by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AttemptCounts {
    /// This (account, client group).
    pub pair: FailureCount,
    /// This client group, across accounts.
    pub client: FailureCount,
    /// This account, across clients.
    pub account: FailureCount,
    /// The client group logged in to this account recently.
    pub known_client: bool,
}

/// The one decision both limiters make: the counts with this attempt added when it may
/// go ahead, else how long to wait (the longest wait any subject asks for).
pub fn begin_attempt(
    limits: &LoginLimits,
    counts: AttemptCounts,
    now_ms: i64,
) -> Result<AttemptCounts, AuthError> {
    let pair = counts.pair.live(limits.window, now_ms);
    let client = counts.client.live(limits.window, now_ms);
    let account = counts.account.live(limits.account_window, now_ms);
    let waits = [
        pair.wait(
            limits.max_failures_per_account_client,
            limits.window,
            limits,
            now_ms,
        ),
        client.wait(
            limits.max_failures_per_client,
            limits.window,
            limits,
            now_ms,
        ),
        // A client the account's owner used recently is not held to the shared budget.
        if counts.known_client {
            None
        } else {
            account.wait(
                limits.max_failures_per_account,
                limits.account_window,
                limits,
                now_ms,
            )
        },
    ];
    if let Some(retry_after) = waits.into_iter().flatten().max() {
        return Err(AuthError::TooManyAttempts { retry_after });
    }
    Ok(AttemptCounts {
        pair: pair.with_failure(now_ms),
        client: client.with_failure(now_ms),
        account: account.with_failure(now_ms),
        known_client: counts.known_client,
    })
}

/// The counts after the attempt begun at these counts succeeded (see
/// [`LoginAttemptLimiter::attempt_succeeded`]).
pub fn attempt_succeeded(
    limits: &LoginLimits,
    counts: AttemptCounts,
    now_ms: i64,
) -> AttemptCounts {
    AttemptCounts {
        pair: FailureCount::default(),
        client: counts.client.live(limits.window, now_ms).without_one(),
        account: counts
            .account
            .live(limits.account_window, now_ms)
            .without_one(),
        known_client: true,
    }
}

/// The counts after the attempt begun at these counts was abandoned (see
/// [`LoginAttemptLimiter::attempt_abandoned`]).
pub fn attempt_abandoned(
    limits: &LoginLimits,
    counts: AttemptCounts,
    now_ms: i64,
) -> AttemptCounts {
    AttemptCounts {
        pair: counts.pair.live(limits.window, now_ms).without_one(),
        client: counts.client.live(limits.window, now_ms).without_one(),
        account: counts
            .account
            .live(limits.account_window, now_ms)
            .without_one(),
        known_client: counts.known_client,
    }
}

/// How many registrations one client group may make: `max_per_client` in a fixed
/// `window` from its first registration (`AUTH_REGISTER_MAX_PER_CLIENT`,
/// `AUTH_REGISTER_WINDOW`). Each registration costs an argon2id hash, so this bounds the
/// hashing one address can ask for (and how fast it can probe which emails exist).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegisterLimits {
    pub max_per_client: u32,
    pub window: Duration,
}

impl Default for RegisterLimits {
    fn default() -> Self {
        Self {
            max_per_client: 20,
            window: Duration::from_secs(60 * 60),
        }
    }
}

/// Counts registrations per client group ([`client_group`]: IPv6 by /64) and refuses those
/// beyond [`RegisterLimits`].
#[async_trait]
pub trait RegistrationLimiter: Send + Sync + 'static {
    /// Atomically: `AuthError::TooManyRegistrations` (with the wait until the client's
    /// window ends) when the client has used up its registrations, else counts this one.
    async fn begin_registration(&self, client: &str) -> Result<(), AuthError>;
}

/// The one decision both registration limiters make: the client's count with this
/// registration added, or how long until its window ends. A [`FailureCount`] serves as the
/// count: registrations in a fixed window, whatever their outcome.
pub fn begin_registration(
    limits: &RegisterLimits,
    count: FailureCount,
    now_ms: i64,
) -> Result<FailureCount, AuthError> {
    let count = count.live(limits.window, now_ms);
    if count.failures >= limits.max_per_client {
        let ends_ms = count
            .window_started_ms
            .saturating_add(millis(limits.window));
        let retry_after = Duration::from_millis(u64::try_from(ends_ms - now_ms).unwrap_or(0));
        return Err(AuthError::TooManyRegistrations { retry_after });
    }
    Ok(count.with_failure(now_ms))
}

/// Where a limiter reads the time: the system clock, or one a test moves by hand.
#[derive(Debug, Clone, Default)]
pub struct LimiterClock {
    manual: Option<Arc<AtomicI64>>,
}

impl LimiterClock {
    pub fn system() -> Self {
        Self::default()
    }

    /// A clock that stands still at `start_ms` (Unix milliseconds) until [`advance`](Self::advance)d.
    pub fn manual(start_ms: i64) -> Self {
        Self {
            manual: Some(Arc::new(AtomicI64::new(start_ms))),
        }
    }

    /// Moves a manual clock on (no effect on the system clock).
    pub fn advance(&self, by: Duration) {
        if let Some(now) = &self.manual {
            now.fetch_add(millis(by), Ordering::SeqCst);
        }
    }

    pub fn now_ms(&self) -> i64 {
        match &self.manual {
            Some(now) => now.load(Ordering::SeqCst),
            None => Utc::now().timestamp_millis(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1000;
    const LIMITS: LoginLimits = LoginLimits {
        max_failures_per_account_client: 3,
        max_failures_per_client: 5,
        window: Duration::from_secs(900),
        max_failures_per_account: 10,
        account_window: Duration::from_secs(3600),
        first_delay: Duration::from_secs(1),
        max_delay: Duration::from_secs(60),
    };

    fn count(failures: u32, window_started_s: i64, last_failure_s: i64) -> FailureCount {
        FailureCount {
            failures,
            window_started_ms: window_started_s * S,
            last_failure_ms: last_failure_s * S,
        }
    }

    fn retry_after(counts: AttemptCounts, now_s: i64) -> Option<u64> {
        match begin_attempt(&LIMITS, counts, now_s * S) {
            Ok(_) => None,
            Err(AuthError::TooManyAttempts { retry_after }) => Some(retry_after.as_secs()),
            Err(other) => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn delays_double_after_the_free_failures_up_to_the_cap_and_end_with_the_window() {
        let pair = |failures, last| AttemptCounts {
            pair: count(failures, 0, last),
            ..AttemptCounts::default()
        };
        let cases = [
            // (failures, last failure at, now, expected wait in s)
            (2, 10, 10, None),
            (3, 10, 10, Some(1)),
            (3, 10, 11, None),
            (4, 10, 10, Some(2)),
            (5, 10, 11, Some(3)),
            (8, 10, 10, Some(32)),
            (9, 10, 10, Some(60)),
            (40, 100, 100, Some(60)),
            // The window (900 s from 0) ends before the delay would.
            (40, 880, 890, Some(10)),
            (40, 880, 900, None),
        ];
        for (failures, last, now, expected) in cases {
            assert_eq!(
                retry_after(pair(failures, last), now),
                expected,
                "{failures} failures, last at {last}, now {now}"
            );
        }
    }

    #[test]
    fn the_account_budget_spares_known_clients_and_the_longest_wait_wins() {
        let over_budget = AttemptCounts {
            account: count(12, 0, 100),
            ..AttemptCounts::default()
        };
        assert_eq!(retry_after(over_budget, 100), Some(4));
        let known = AttemptCounts {
            known_client: true,
            ..over_budget
        };
        assert_eq!(retry_after(known, 100), None);
        let both = AttemptCounts {
            client: count(6, 50, 100),
            ..over_budget
        };
        assert_eq!(retry_after(both, 100), Some(4));
        // The account window is an hour: still counting at 3599 s, forgotten at 3600 s.
        assert_eq!(retry_after(over_budget, 3599), None, "delay over");
        let late = AttemptCounts {
            account: count(12, 0, 3599),
            ..AttemptCounts::default()
        };
        assert_eq!(retry_after(late, 3600), None);
    }

    #[test]
    fn an_attempt_counts_against_all_three_and_a_success_takes_it_back() {
        let now = 50 * S;
        let counts = AttemptCounts {
            pair: count(1, 10, 10),
            client: count(2, 10, 20),
            account: FailureCount::default(),
            known_client: false,
        };
        let begun = begin_attempt(&LIMITS, counts, now).unwrap();
        assert_eq!(begun.pair, count(2, 10, 50));
        assert_eq!(begun.client, count(3, 10, 50));
        assert_eq!(begun.account, count(1, 50, 50));
        let done = attempt_succeeded(&LIMITS, begun, now);
        assert_eq!(done.pair, FailureCount::default());
        assert_eq!(done.client.failures, 2);
        assert_eq!(done.account, FailureCount::default());
        assert!(done.known_client);
    }

    #[test]
    fn ipv6_clients_are_grouped_by_their_64() {
        let cases = [
            ("203.0.113.7", "203.0.113.7"),
            ("::ffff:203.0.113.7", "203.0.113.7"),
            ("2001:db8:1:2::1", "2001:db8:1:2::/64"),
            ("2001:db8:1:2:ffff:eeee:dddd:cccc", "2001:db8:1:2::/64"),
            ("2001:db8:1:3::1", "2001:db8:1:3::/64"),
            ("::1", "::/64"),
            ("unknown", "unknown"),
        ];
        for (client, group) in cases {
            assert_eq!(client_group(client), group, "{client}");
        }
    }

    #[test]
    fn failure_counts_round_trip_through_their_stored_form() {
        let stored = count(7, 1_800_000_000, 1_800_000_123);
        assert_eq!(FailureCount::decode(&stored.encode()), Some(stored));
        for junk in ["", "1 2", "1 2 3 4", "a b c"] {
            assert_eq!(FailureCount::decode(junk), None, "{junk:?}");
        }
    }
}
