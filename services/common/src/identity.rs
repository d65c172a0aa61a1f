//! Who a call acts for, as an internal service may believe it: a short-lived identity
//! assertion signed with the app's shared internal key (`INTERNAL_AUTH_KEY`), carried in
//! the `x-messenger-identity` gRPC metadata.
//!
//! The gateway authenticates end users and [`attach`]es an assertion for the user it
//! acts for (or for itself, [`Caller::Service`]); every internal service verifies it in
//! its `GrpcServer` layer (`GrpcServer::internal_key`) before a handler runs, and a peer
//! call made while serving forwards an assertion for the same caller
//! (`grpc::peer_request`). Without the key nobody can produce an assertion, so reaching an
//! internal port is not enough to act as anyone.
//!
//! Wire format (ASCII, so it fits a metadata value):
//! `v1.<u|s>.<user uuid|service name>.<expiry, unix seconds>.<HMAC-SHA256, hex>`, the MAC
//! taken over everything before the last dot. Assertions live [`ASSERTION_TTL`]: long
//! enough for any call chain under the request deadline, short enough that one seen on
//! the wire is soon useless.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::config::{ConfigError, process_env};

/// The gRPC metadata key that carries the assertion.
pub const IDENTITY_METADATA: &str = "x-messenger-identity";

/// The environment variable holding the shared internal key.
pub const INTERNAL_AUTH_KEY: &str = "INTERNAL_AUTH_KEY";

/// The shortest key accepted: 32 bytes, the HMAC-SHA256 output size.
pub const MIN_KEY_LEN: usize = 32;

/// How long an assertion made by [`attach`] is valid.
pub const ASSERTION_TTL: Duration = Duration::from_secs(60);

/// Clock difference between pods that is tolerated on both ends of the validity window.
const CLOCK_SKEW: Duration = Duration::from_secs(5);

const VERSION: &str = "v1";

type HmacSha256 = Hmac<Sha256>;

/// Why a key or an assertion was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// The key is shorter than [`MIN_KEY_LEN`].
    #[error("the internal key must be at least {MIN_KEY_LEN} bytes long (got {0})")]
    KeyTooShort(usize),
    /// The call carries no assertion.
    #[error("the call carries no {IDENTITY_METADATA} assertion")]
    Missing,
    /// The assertion is not in the `v1.<kind>.<subject>.<expiry>.<mac>` form.
    #[error("the {IDENTITY_METADATA} assertion is malformed: {0}")]
    Malformed(&'static str),
    /// The MAC does not match: made with another key, or altered.
    #[error("the {IDENTITY_METADATA} assertion has a bad signature")]
    BadSignature,
    /// Its expiry has passed.
    #[error("the {IDENTITY_METADATA} assertion has expired")]
    Expired,
    /// Its expiry lies further ahead than any assertion we make would.
    #[error("the {IDENTITY_METADATA} assertion is valid for longer than allowed")]
    TooLong,
    /// A service name that cannot be carried (use `[A-Za-z0-9_-]`, at most 64).
    #[error("cannot assert the service name {0:?} (use 1..64 of A-Z a-z 0-9 _ -)")]
    BadServiceName(String),
}

/// The shared secret that signs and verifies assertions. Its `Debug` and `Display` show
/// a mask, never the key.
#[derive(Clone)]
pub struct InternalKey {
    /// HMAC state keyed once; cloned per assertion.
    mac: HmacSha256,
}

impl InternalKey {
    /// A key from `secret` (the raw bytes); refuses fewer than [`MIN_KEY_LEN`] bytes.
    pub fn new(secret: impl AsRef<[u8]>) -> Result<Self, IdentityError> {
        let secret = secret.as_ref();
        if secret.len() < MIN_KEY_LEN {
            return Err(IdentityError::KeyTooShort(secret.len()));
        }
        let mac = HmacSha256::new_from_slice(secret)
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        Ok(Self { mac })
    }

    /// The key in `INTERNAL_AUTH_KEY` (its bytes as written); missing or too short is an
    /// error naming the variable.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(&process_env)
    }

    /// [`InternalKey::from_env`] reading through `lookup` (service configs pass theirs).
    pub fn from_lookup(lookup: &impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let Some(value) = lookup(INTERNAL_AUTH_KEY).filter(|v| !v.is_empty()) else {
            return Err(ConfigError::Missing {
                name: INTERNAL_AUTH_KEY.to_owned(),
            });
        };
        // Surrounding whitespace is almost always a newline from `echo >` into a Secret.
        Self::new(value.trim())
            .map_err(|error| ConfigError::invalid(INTERNAL_AUTH_KEY, &value, error))
    }

    /// A random 32-byte key: for tests and the all-in-one dev mode, where every service
    /// shares one process and so one key.
    pub fn generate() -> Self {
        let secret: [u8; MIN_KEY_LEN] = rand::random();
        Self::new(secret).unwrap_or_else(|_| unreachable!("32 bytes is long enough"))
    }

    /// An assertion for `caller` valid until `expires_at` (unix seconds).
    pub(crate) fn sign_until(
        &self,
        caller: &Caller,
        expires_at: u64,
    ) -> Result<String, IdentityError> {
        let (kind, subject) = match caller {
            Caller::User(id) => ("u", id.hyphenated().to_string()),
            Caller::Service(name) => {
                if !valid_service_name(name) {
                    return Err(IdentityError::BadServiceName(name.clone()));
                }
                ("s", name.clone())
            }
        };
        let claims = format!("{VERSION}.{kind}.{subject}.{expires_at}");
        let mut mac = self.mac.clone();
        mac.update(claims.as_bytes());
        let tag = hex::encode(mac.finalize().into_bytes());
        Ok(format!("{claims}.{tag}"))
    }

    /// The caller an assertion names, if this key signed it and it is valid at `now`.
    pub(crate) fn verify_at(&self, assertion: &str, now: u64) -> Result<Caller, IdentityError> {
        let (claims, tag) = assertion
            .rsplit_once('.')
            .ok_or(IdentityError::Malformed("no signature"))?;
        let tag = hex::decode(tag).map_err(|_| IdentityError::Malformed("signature is not hex"))?;
        let mut mac = self.mac.clone();
        mac.update(claims.as_bytes());
        // Constant time: the comparison must not tell an attacker how much of a guess matched.
        mac.verify_slice(&tag)
            .map_err(|_| IdentityError::BadSignature)?;

        let mut parts = claims.split('.');
        let (Some(VERSION), Some(kind), Some(subject), Some(expiry), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(IdentityError::Malformed(
                "expected v1.<kind>.<subject>.<expiry>",
            ));
        };
        let expires_at: u64 = expiry
            .parse()
            .map_err(|_| IdentityError::Malformed("expiry is not a number"))?;
        if now > expires_at.saturating_add(CLOCK_SKEW.as_secs()) {
            return Err(IdentityError::Expired);
        }
        if expires_at > now + ASSERTION_TTL.as_secs() + CLOCK_SKEW.as_secs() {
            return Err(IdentityError::TooLong);
        }
        match kind {
            "u" => uuid::Uuid::parse_str(subject)
                .map(Caller::User)
                .map_err(|_| IdentityError::Malformed("user is not a UUID")),
            "s" if valid_service_name(subject) => Ok(Caller::Service(subject.to_owned())),
            _ => Err(IdentityError::Malformed("unknown caller kind")),
        }
    }

    /// The caller `assertion` names, if this key signed it and it has not expired.
    pub fn verify(&self, assertion: &str) -> Result<Caller, IdentityError> {
        self.verify_at(assertion, unix_now())
    }
}

impl InternalKey {
    /// A value that differs between keys without revealing them (a MAC of a fixed label).
    fn fingerprint(&self) -> [u8; 32] {
        let mut mac = self.mac.clone();
        mac.update(b"messenger internal key fingerprint");
        mac.finalize().into_bytes().into()
    }
}

/// Equal when both are the same secret (so configurations holding a key can be compared).
impl PartialEq for InternalKey {
    fn eq(&self, other: &Self) -> bool {
        self.fingerprint() == other.fingerprint()
    }
}

impl Eq for InternalKey {}

impl std::fmt::Debug for InternalKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InternalKey(***)")
    }
}

impl std::fmt::Display for InternalKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// Who a call acts for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// An end user the gateway authenticated.
    User(uuid::Uuid),
    /// A service acting for itself (e.g. the gateway validating a token), by name.
    Service(String),
}

impl std::fmt::Display for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::User(id) => write!(f, "user {id}"),
            Self::Service(name) => write!(f, "service {name}"),
        }
    }
}

fn valid_service_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

/// Adds a fresh assertion for `caller` to an outgoing request (replacing any it had).
/// A service name that cannot be carried is logged and nothing is attached, so the call
/// fails UNAUTHENTICATED at the callee instead of acting for someone else.
pub fn attach<T>(request: &mut tonic::Request<T>, key: &InternalKey, caller: &Caller) {
    let metadata = request.metadata_mut();
    metadata.remove(IDENTITY_METADATA);
    match key.sign_until(caller, unix_now() + ASSERTION_TTL.as_secs()) {
        Ok(assertion) => match assertion.parse() {
            Ok(value) => {
                metadata.insert(IDENTITY_METADATA, value);
            }
            Err(_) => tracing::error!("an identity assertion is not valid metadata"),
        },
        Err(error) => tracing::error!(%error, "no identity assertion attached"),
    }
}

/// The verified caller of the request being served (set by the server layer), if any.
pub fn caller<T>(request: &tonic::Request<T>) -> Option<&Caller> {
    request.extensions().get::<Caller>()
}

/// Ok when the verified caller is `Caller::User(id)` with `id` == `named_user` (the user
/// id string from the request body); otherwise `Status::unauthenticated` with a clear
/// message. A `named_user` that is not a UUID names nobody the caller can be.
pub fn require_user<T>(request: &tonic::Request<T>, named_user: &str) -> Result<(), tonic::Status> {
    let named = uuid::Uuid::parse_str(named_user.trim()).ok();
    match caller(request) {
        Some(Caller::User(id)) if Some(*id) == named => Ok(()),
        Some(Caller::User(id)) => Err(tonic::Status::unauthenticated(format!(
            "the call acts for user {id} but names {}: a caller may act only for itself",
            crate::ids::excerpt(named_user)
        ))),
        Some(Caller::Service(name)) => Err(tonic::Status::unauthenticated(format!(
            "service {name} called without a user: this call must act for user {}",
            crate::ids::excerpt(named_user)
        ))),
        None => Err(tonic::Status::unauthenticated(
            "the call carries no verified identity assertion",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8; 32] = b"0123456789abcdef0123456789abcdef";

    fn key() -> InternalKey {
        InternalKey::new(SECRET).unwrap()
    }

    #[test]
    fn keys_shorter_than_32_bytes_are_refused() {
        assert_eq!(
            InternalKey::new([7u8; 31]).unwrap_err(),
            IdentityError::KeyTooShort(31)
        );
        assert!(InternalKey::new([7u8; 32]).is_ok());
    }

    #[test]
    fn the_key_is_never_printed() {
        let key = key();
        for shown in [format!("{key:?}"), format!("{key}")] {
            assert!(!shown.contains("0123"), "{shown}");
            assert!(shown.contains("***"), "{shown}");
        }
    }

    #[test]
    fn the_key_comes_from_internal_auth_key_and_errors_name_it() {
        let secret = String::from_utf8(SECRET.to_vec()).unwrap();
        let set = |value: &'static str| {
            move |name: &str| (name == INTERNAL_AUTH_KEY).then(|| value.to_owned())
        };
        let ok = InternalKey::from_lookup(&|name: &str| {
            (name == INTERNAL_AUTH_KEY).then(|| format!("{secret}\n"))
        })
        .unwrap();
        let user = Caller::User(uuid::Uuid::new_v4());
        let assertion = key().sign_until(&user, unix_now() + 10).unwrap();
        assert_eq!(ok.verify(&assertion), Ok(user), "trailing newline ignored");

        let missing = InternalKey::from_lookup(&|_: &str| None).unwrap_err();
        assert_eq!(missing.variable(), INTERNAL_AUTH_KEY);
        let short = InternalKey::from_lookup(&set("too-short-a-secret")).unwrap_err();
        assert_eq!(short.variable(), INTERNAL_AUTH_KEY);
        let message = short.to_string();
        assert!(message.contains("at least 32"), "{message}");
        assert!(
            !message.contains("too-short"),
            "the value is masked: {message}"
        );
    }

    #[test]
    fn an_assertion_names_its_caller_until_it_expires() {
        let key = key();
        let now = unix_now();
        for caller in [
            Caller::User(uuid::Uuid::new_v4()),
            Caller::Service("gateway".into()),
        ] {
            let assertion = key.sign_until(&caller, now + 60).unwrap();
            assert_eq!(key.verify_at(&assertion, now), Ok(caller.clone()));
            assert_eq!(
                key.verify_at(&assertion, now + 65),
                Ok(caller.clone()),
                "skew"
            );
            assert_eq!(
                key.verify_at(&assertion, now + 66),
                Err(IdentityError::Expired)
            );
        }
    }

    #[test]
    fn forged_altered_and_overlong_assertions_are_refused() {
        let key = key();
        let now = unix_now();
        let user = Caller::User(uuid::Uuid::new_v4());
        let other = InternalKey::generate().sign_until(&user, now + 60).unwrap();
        assert_eq!(key.verify_at(&other, now), Err(IdentityError::BadSignature));

        let genuine = key.sign_until(&user, now + 60).unwrap();
        let someone_else = genuine.replace(
            &user.to_string().replace("user ", ""),
            &uuid::Uuid::new_v4().to_string(),
        );
        assert_ne!(someone_else, genuine);
        assert_eq!(
            key.verify_at(&someone_else, now),
            Err(IdentityError::BadSignature)
        );
        let longer = key.sign_until(&user, now + 3600).unwrap();
        assert_eq!(key.verify_at(&longer, now), Err(IdentityError::TooLong));
        for junk in ["", "v1", "v1.u.x.1.zz", "v1.u.x.1.00"] {
            assert!(key.verify_at(junk, now).is_err(), "{junk:?}");
        }
    }

    #[test]
    fn only_carriable_service_names_are_signed() {
        for bad in ["", "chat.v2", "spaced out", &"x".repeat(65)] {
            assert!(
                key()
                    .sign_until(&Caller::Service(bad.to_owned()), unix_now())
                    .is_err(),
                "{bad:?}"
            );
        }
        let mut request = tonic::Request::new(());
        attach(&mut request, &key(), &Caller::Service("a.b".into()));
        assert!(request.metadata().get(IDENTITY_METADATA).is_none());
    }

    #[test]
    fn require_user_accepts_only_the_user_the_call_acts_for() {
        let me = uuid::Uuid::new_v4();
        let mut request = tonic::Request::new(());
        assert_eq!(
            require_user(&request, &me.to_string()).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        request.extensions_mut().insert(Caller::User(me));
        assert!(require_user(&request, &me.to_string()).is_ok());
        for other in [
            uuid::Uuid::new_v4().to_string(),
            String::new(),
            "junk".into(),
        ] {
            let status = require_user(&request, &other).unwrap_err();
            assert_eq!(status.code(), tonic::Code::Unauthenticated, "{other:?}");
        }
        request
            .extensions_mut()
            .insert(Caller::Service("gateway".into()));
        assert_eq!(
            require_user(&request, &me.to_string()).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
    }
}
