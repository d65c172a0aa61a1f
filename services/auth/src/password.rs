//! Password hashing with argon2id at the OWASP-recommended parameters.
//!
//! Hashing deliberately costs ~19 MiB of memory and tens of milliseconds of CPU, so the
//! async wrappers run it on the blocking thread pool instead of stalling the runtime.

use std::sync::Arc;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::AuthError;

/// OWASP Password Storage Cheat Sheet: argon2id, m = 19 MiB, t = 2, p = 1.
pub const ARGON2_MEMORY_KIB: u32 = 19_456;
pub const ARGON2_ITERATIONS: u32 = 2;
pub const ARGON2_PARALLELISM: u32 = 1;

/// Hashes and verifies passwords; cheap to clone (clones share the hashing slots).
#[derive(Clone)]
pub struct PasswordHasher {
    argon2: Argon2<'static>,
    /// Each hash holds 19 MiB while it runs; bounding how many run at once keeps a burst
    /// from exhausting memory (the rest wait, within their request deadline). Logins and
    /// registrations have separate slots, so a flood of registrations (each one hash)
    /// cannot make logins queue behind it.
    login_slots: Arc<Semaphore>,
    registration_slots: Arc<Semaphore>,
    /// Verified against when the email is unknown, so a wrong email costs the same
    /// time as a wrong password and does not reveal which accounts exist.
    dummy_hash: String,
}

/// The right to run one hash now; held by the blocking task itself, so a cancelled
/// request does not free the slot while its hash is still running.
#[derive(Debug)]
pub struct HashingSlot(#[allow(dead_code, reason = "held, never read")] OwnedSemaphorePermit);

impl PasswordHasher {
    /// Two hashes per core in all: a quarter of them (at least one) for registrations,
    /// the rest (at least one) for logins.
    pub fn new() -> Result<Self, AuthError> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let total = cores * 2;
        let registrations = (total / 4).max(1);
        Self::with_slots((total - registrations).max(1), registrations)
    }

    /// A hasher with `logins` slots for verifying and `registrations` for hashing new
    /// passwords (each at least one).
    pub fn with_slots(logins: usize, registrations: usize) -> Result<Self, AuthError> {
        let params = Params::new(
            ARGON2_MEMORY_KIB,
            ARGON2_ITERATIONS,
            ARGON2_PARALLELISM,
            None,
        )
        .map_err(|e| AuthError::PasswordHash(e.to_string()))?;
        let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let dummy_hash = hash_with(&argon2, "dummy password for unknown accounts")?;
        Ok(Self {
            argon2,
            login_slots: Arc::new(Semaphore::new(logins.max(1))),
            registration_slots: Arc::new(Semaphore::new(registrations.max(1))),
            dummy_hash,
        })
    }

    /// PHC string (`$argon2id$v=19$m=19456,t=2,p=1$salt$hash`) with a fresh random salt.
    pub fn hash(&self, password: &str) -> Result<String, AuthError> {
        hash_with(&self.argon2, password)
    }

    /// Whether `password` matches the PHC string `hash`. The parameters are read from
    /// the hash itself, so hashes made with older parameters keep verifying.
    pub fn verify(&self, password: &str, hash: &str) -> Result<bool, AuthError> {
        let parsed = PasswordHash::new(hash).map_err(|e| AuthError::PasswordHash(e.to_string()))?;
        match self.argon2.verify_password(password.as_bytes(), &parsed) {
            Ok(()) => Ok(true),
            Err(argon2::password_hash::Error::Password) => Ok(false),
            Err(e) => Err(AuthError::PasswordHash(e.to_string())),
        }
    }

    /// Spends the same work as [`verify`](Self::verify) and always fails.
    pub fn verify_dummy(&self, password: &str) -> Result<bool, AuthError> {
        self.verify(password, &self.dummy_hash)?;
        Ok(false)
    }

    /// Waits for a login slot (the wait is where a busy service queues a login).
    pub async fn login_slot(&self) -> Result<HashingSlot, AuthError> {
        acquire(&self.login_slots).await
    }

    /// Waits for a registration slot.
    pub async fn registration_slot(&self) -> Result<HashingSlot, AuthError> {
        acquire(&self.registration_slots).await
    }

    /// Hashes a new password on the blocking pool, in a registration slot.
    pub async fn hash_blocking(&self, password: String) -> Result<String, AuthError> {
        let slot = self.registration_slot().await?;
        let hasher = self.clone();
        tokio::task::spawn_blocking(move || {
            let _running = slot;
            hasher.hash(&password)
        })
        .await?
    }

    /// Verifies against `hash`, or against the dummy hash when there is no account, on
    /// the blocking pool in the given (login) slot.
    pub async fn verify_in(
        &self,
        slot: HashingSlot,
        password: String,
        hash: Option<String>,
    ) -> Result<bool, AuthError> {
        let hasher = self.clone();
        tokio::task::spawn_blocking(move || {
            let _running = slot;
            match hash {
                Some(hash) => hasher.verify(&password, &hash),
                None => hasher.verify_dummy(&password),
            }
        })
        .await?
    }
}

async fn acquire(slots: &Arc<Semaphore>) -> Result<HashingSlot, AuthError> {
    slots
        .clone()
        .acquire_owned()
        .await
        .map(HashingSlot)
        .map_err(|e| AuthError::PasswordHash(e.to_string()))
}

fn hash_with(argon2: &Argon2<'_>, password: &str) -> Result<String, AuthError> {
    let salt = SaltString::generate(&mut OsRng);
    argon2
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| AuthError::PasswordHash(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn round_trip_with_owasp_parameters() {
        let hasher = PasswordHasher::new().unwrap();
        let hash = hasher.hash("correct horse battery staple").unwrap();
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "unexpected PHC string {hash}"
        );
        assert!(!hash.contains("correct horse"));
        assert!(
            hasher
                .verify("correct horse battery staple", &hash)
                .unwrap()
        );
        assert!(
            !hasher
                .verify("correct horse battery stapler", &hash)
                .unwrap()
        );
        assert!(!hasher.verify_dummy("correct horse battery staple").unwrap());
    }

    #[test]
    fn same_password_gets_a_different_salt_each_time() {
        let hasher = PasswordHasher::new().unwrap();
        let first = hasher.hash("same password twice").unwrap();
        let second = hasher.hash("same password twice").unwrap();
        assert_ne!(first, second);
        assert!(hasher.verify("same password twice", &second).unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn logins_get_a_slot_while_registrations_hold_all_of_theirs() {
        let hasher = PasswordHasher::with_slots(1, 1).unwrap();
        let hash = hasher.hash("correct horse battery").unwrap();
        let _busy = hasher.registration_slot().await.unwrap();
        let queued: Vec<_> = (0..3)
            .map(|_| {
                let hasher = hasher.clone();
                tokio::spawn(async move { hasher.hash_blocking("new account pw".into()).await })
            })
            .collect();
        let slot = tokio::time::timeout(Duration::from_secs(5), hasher.login_slot())
            .await
            .expect("a login does not wait behind registrations")
            .unwrap();
        assert!(
            hasher
                .verify_in(slot, "correct horse battery".into(), Some(hash))
                .await
                .unwrap()
        );
        assert!(queued.iter().all(|r| !r.is_finished()));
    }

    #[test]
    fn a_corrupt_hash_is_an_error_not_a_mismatch() {
        let hasher = PasswordHasher::new().unwrap();
        assert!(hasher.verify("whatever123", "not a phc string").is_err());
    }
}
