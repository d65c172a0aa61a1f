//! The gateway's cache of validated tokens: a hit answers "who is this?" without the
//! round trip to auth. Logout must still kill a token at once on every replica, so the
//! cache is only *usable* while this replica provably receives revocations (a lease that
//! [`crate::revocations`] renews each time its own heartbeat comes back over the
//! revocation channel), and every fill is checked against an epoch that each revocation,
//! clear and lease change moves on: a validation that was in flight while anything was
//! revoked never lands in the cache. Pure: the caller passes the time.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use uuid::Uuid;

use crate::stream::TokenFingerprint;

/// How long a confirmed heartbeat keeps the cache usable. [`crate::revocations`] keeps its
/// replica registration alive for twice as long, so by the time a logout stops waiting
/// for a silent replica, that replica has stopped trusting its cache.
pub const LEASE: Duration = Duration::from_secs(5);

/// A validated-token cache; see the module docs.
#[derive(Debug)]
pub struct TokenCache {
    ttl: Duration,
    max_entries: usize,
    state: Mutex<State>,
    hits: Counter,
    misses: Counter,
}

#[derive(Debug, Default)]
struct State {
    entries: HashMap<TokenFingerprint, Entry>,
    /// Moves on with every revocation, clear and lease change.
    epoch: u64,
    /// The cache answers only before this instant; `None` until a lease is confirmed.
    usable_until: Option<Instant>,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    user_id: Uuid,
    until: Instant,
}

/// What [`TokenCache::lookup`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    Hit(Uuid),
    /// Ask auth, then hand this ticket to [`TokenCache::fill`].
    Miss(FillTicket),
}

/// Proof of the epoch a validation started in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FillTicket {
    epoch: u64,
}

impl TokenCache {
    /// Entries live at most `ttl` (and never past their token's expiry); at most
    /// `max_entries` are kept.
    pub fn new(ttl: Duration, max_entries: usize) -> Self {
        Self {
            ttl,
            max_entries,
            state: Mutex::default(),
            hits: Counter::default(),
            misses: Counter::default(),
        }
    }

    /// Counts lookups in `gateway_token_cache_hits` / `gateway_token_cache_misses`.
    pub fn register_metrics(&self, metrics: &messenger_common::Metrics) {
        metrics.register(
            "gateway_token_cache_hits",
            "Bearer tokens answered from the gateway's cache",
            self.hits.clone(),
        );
        metrics.register(
            "gateway_token_cache_misses",
            "Bearer tokens the gateway had to ask auth about",
            self.misses.clone(),
        );
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // The state is consistent after every statement: a panic elsewhere cannot leave
        // it half-updated, so a poisoned lock is still safe to use.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn lookup(&self, token: &TokenFingerprint, now: Instant) -> Lookup {
        let state = self.state();
        let usable = state.usable_until.is_some_and(|until| now < until);
        match state.entries.get(token) {
            Some(entry) if usable && now < entry.until => {
                self.hits.inc();
                Lookup::Hit(entry.user_id)
            }
            _ => {
                self.misses.inc();
                Lookup::Miss(FillTicket { epoch: state.epoch })
            }
        }
    }

    /// Remembers that auth said `token` is `user_id`'s until `token_valid_for` from now —
    /// unless anything was revoked or cleared since `ticket` was taken, or the cache is
    /// not usable. Returns whether it was stored.
    pub fn fill(
        &self,
        ticket: FillTicket,
        token: TokenFingerprint,
        user_id: Uuid,
        token_valid_for: Duration,
        now: Instant,
    ) -> bool {
        let mut state = self.state();
        let usable = state.usable_until.is_some_and(|until| now < until);
        if !usable || ticket.epoch != state.epoch || token_valid_for.is_zero() {
            return false;
        }
        if state.entries.len() >= self.max_entries {
            state.entries.retain(|_, entry| now < entry.until);
            if state.entries.len() >= self.max_entries {
                // Still full of live entries: start over rather than track recency.
                state.entries.clear();
            }
        }
        let until = now + self.ttl.min(token_valid_for);
        state.entries.insert(token, Entry { user_id, until });
        true
    }

    /// Forgets `token` (a logout anywhere) and refuses fills that started before.
    pub fn revoke(&self, token: &TokenFingerprint) {
        let mut state = self.state();
        state.entries.remove(token);
        state.epoch += 1;
    }

    /// A heartbeat sent at `sent_at` came back: the cache may answer until
    /// `sent_at + LEASE`. Coming back from unusable starts from an empty cache, since
    /// revocations may have been missed meanwhile.
    pub fn confirm_lease(&self, sent_at: Instant, now: Instant) {
        let mut state = self.state();
        let was_usable = state.usable_until.is_some_and(|until| now < until);
        if !was_usable {
            state.entries.clear();
            state.epoch += 1;
        }
        let until = sent_at + LEASE;
        state.usable_until = Some(state.usable_until.map_or(until, |old| old.max(until)));
    }

    /// Revocations may no longer arrive (the channel broke): stop answering, forget all.
    pub fn suspend(&self) {
        let mut state = self.state();
        state.entries.clear();
        state.epoch += 1;
        state.usable_until = None;
    }

    /// Entries held (for metrics and tests).
    pub fn len(&self) -> usize {
        self.state().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TTL: Duration = Duration::from_secs(60);
    const ALICE: Uuid = Uuid::from_u128(1);

    fn token(n: u8) -> TokenFingerprint {
        [n; 32]
    }

    /// A cache with a lease confirmed at `now`, and `token(1)` filled for alice.
    fn warm(now: Instant) -> TokenCache {
        let cache = TokenCache::new(TTL, 100);
        cache.confirm_lease(now, now);
        let Lookup::Miss(ticket) = cache.lookup(&token(1), now) else {
            panic!("empty cache hit");
        };
        assert!(cache.fill(ticket, token(1), ALICE, Duration::from_secs(3600), now));
        cache
    }

    #[test]
    fn what_a_lookup_answers() {
        let t0 = Instant::now();
        let s = Duration::from_secs;
        // (what happens after the warm fill, when it is looked up, expected hit)
        type Step = fn(&TokenCache, Instant);
        let cases: [(&str, Step, Duration, bool); 7] = [
            ("fresh entry", |_, _| {}, s(1), true),
            ("past the cache ttl", |_, _| {}, TTL + s(1), false),
            (
                "after its revocation",
                |c, _| c.revoke(&token(1)),
                s(1),
                false,
            ),
            (
                "another token revoked",
                |c, _| c.revoke(&token(2)),
                s(1),
                true,
            ),
            ("lease not renewed", |_, _| {}, LEASE + s(1), false),
            (
                "lease renewed",
                |c, t0| {
                    let renewed = t0 + Duration::from_secs(4);
                    c.confirm_lease(renewed, renewed)
                },
                LEASE + s(1),
                true,
            ),
            ("channel broke", |c, _| c.suspend(), s(1), false),
        ];
        for (what, step, after, hit) in cases {
            let cache = warm(t0);
            step(&cache, t0);
            let found = cache.lookup(&token(1), t0 + after);
            assert_eq!(
                found == Lookup::Hit(ALICE),
                hit,
                "{what}: {found:?} at +{after:?}"
            );
        }
    }

    #[test]
    fn a_validation_in_flight_during_a_revocation_is_not_cached() {
        // The answer of an auth call that started before a logout may say "valid"; caching
        // it after the revocation was applied would resurrect the token.
        let t0 = Instant::now();
        let cache = warm(t0);
        let Lookup::Miss(ticket) = cache.lookup(&token(3), t0) else {
            panic!()
        };
        cache.revoke(&token(3));
        assert!(!cache.fill(ticket, token(3), ALICE, TTL, t0));
        assert!(matches!(cache.lookup(&token(3), t0), Lookup::Miss(_)));
    }

    #[test]
    fn nothing_is_cached_without_a_lease_and_a_new_lease_starts_empty() {
        let t0 = Instant::now();
        let cache = TokenCache::new(TTL, 100);
        let Lookup::Miss(ticket) = cache.lookup(&token(1), t0) else {
            panic!()
        };
        assert!(
            !cache.fill(ticket, token(1), ALICE, TTL, t0),
            "no lease yet"
        );

        let cache = warm(t0);
        let late = t0 + LEASE + Duration::from_secs(1);
        cache.confirm_lease(late, late);
        assert!(
            cache.is_empty(),
            "revocations may have been missed while unusable"
        );
    }

    #[test]
    fn entries_never_outlive_their_token() {
        let t0 = Instant::now();
        let cache = TokenCache::new(TTL, 100);
        cache.confirm_lease(t0, t0);
        let Lookup::Miss(ticket) = cache.lookup(&token(1), t0) else {
            panic!()
        };
        assert!(cache.fill(ticket, token(1), ALICE, Duration::from_secs(2), t0));
        assert_eq!(
            cache.lookup(&token(1), t0 + Duration::from_secs(1)),
            Lookup::Hit(ALICE)
        );
        assert!(matches!(
            cache.lookup(&token(1), t0 + Duration::from_secs(3)),
            Lookup::Miss(_)
        ));
        let Lookup::Miss(ticket) = cache.lookup(&token(2), t0) else {
            panic!()
        };
        assert!(
            !cache.fill(ticket, token(2), ALICE, Duration::ZERO, t0),
            "expired"
        );
    }

    #[test]
    fn a_full_cache_stays_bounded() {
        let t0 = Instant::now();
        let cache = TokenCache::new(TTL, 3);
        cache.confirm_lease(t0, t0);
        for n in 0..10 {
            let Lookup::Miss(ticket) = cache.lookup(&token(n), t0) else {
                panic!()
            };
            assert!(cache.fill(ticket, token(n), ALICE, TTL, t0));
            assert!(cache.len() <= 3);
        }
        assert_eq!(cache.lookup(&token(9), t0), Lookup::Hit(ALICE));
    }
}
