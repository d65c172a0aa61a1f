//! Configuration of the chat service: the shared settings (`GRPC_ADDR`, `ADMIN_ADDR`,
//! `LOG_FORMAT`, `REQUEST_TIMEOUT`) plus the chat's own, read from the environment by
//! [`Config::from_env`], or built directly for tests and the all-in-one dev mode
//! ([`Config::in_memory`]).

use std::sync::Arc;
use std::time::Duration;

use messenger_common::ConfigError;
use messenger_common::config::SecretUrl;
use messenger_common::config::{
    ServiceConfig, ServiceDefaults, env_duration_from, env_nonzero_duration_from,
    env_optional_from, env_or_from, process_env,
};
pub use messenger_common::events::EventsConfig;
use messenger_common::events::InMemoryEventBus;
use messenger_common::identity::InternalKey;
use messenger_common::kafka::KafkaConfig;

use crate::friendship::InMemoryFriendships;
use crate::store::MongoStoreConfig;
use crate::users::InMemoryUsers;

pub const DEFAULTS: ServiceDefaults = ServiceDefaults {
    name: "chat",
    grpc_port: 8002,
    admin_port: 9002,
};
pub const DEFAULT_MONGODB_URI: &str = "mongodb://127.0.0.1:27017";
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";
pub const DEFAULT_KAFKA_BROKERS: &str = "127.0.0.1:9092";
pub const DEFAULT_FRIENDS_URL: &str = "http://127.0.0.1:8003";
pub const DEFAULT_USERS_URL: &str = "http://127.0.0.1:8004";
pub const DEFAULT_CACHE_PREFIX: &str = "chat:";
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(600);
pub const DEFAULT_FRIENDS_TIMEOUT: Duration = Duration::from_secs(2);
pub const DEFAULT_USERS_TIMEOUT: Duration = Duration::from_secs(2);
pub const DEFAULT_OUTBOX_POLL_INTERVAL: Duration = Duration::from_secs(1);
pub const DEFAULT_OUTBOX_ORPHAN_GRACE: Duration = Duration::from_secs(120);

/// Everything `crate::run` needs.
#[derive(Clone, Debug)]
pub struct Config {
    pub service: ServiceConfig,
    pub store: StoreConfig,
    /// `None`: no Redis, every history read goes to the store.
    pub cache: Option<CacheConfig>,
    pub events: EventsConfig,
    pub friends: FriendsConfig,
    pub users: UsersConfig,
    /// How often the outbox relay looks for events besides being woken by writes
    /// (`CHAT_OUTBOX_POLL_INTERVAL`).
    pub outbox_poll_interval: Duration,
    /// `INTERNAL_AUTH_KEY` (required): verifies every call's identity assertion and signs
    /// the calls to the friends and users services.
    pub internal_key: InternalKey,
}

/// Where chats and messages live (`CHAT_STORE`).
#[derive(Clone, Debug)]
pub enum StoreConfig {
    /// Process memory: keeps nothing across restarts (dev mode, tests).
    Memory,
    MongoDb(MongoStoreConfig),
}

/// The Redis cache of recent messages.
#[derive(Clone, Debug)]
pub struct CacheConfig {
    /// `REDIS_URL`.
    pub redis_url: SecretUrl,
    /// `CHAT_REDIS_PREFIX`: namespaces every key.
    pub key_prefix: String,
    /// `CHAT_CACHE_TTL`.
    pub ttl: Duration,
}

/// A peer service chat calls, or its in-process stand-in.
pub enum Peer<T> {
    /// The service at `url`, each call bounded by `timeout`.
    Grpc { url: String, timeout: Duration },
    /// In process (tests, single-process runs).
    InMemory(Arc<T>),
}

// By hand: a derive would ask `T: Clone`, but only the `Arc` is cloned.
impl<T> Clone for Peer<T> {
    fn clone(&self) -> Self {
        match self {
            Self::Grpc { url, timeout } => Self::Grpc {
                url: url.clone(),
                timeout: *timeout,
            },
            Self::InMemory(stand_in) => Self::InMemory(Arc::clone(stand_in)),
        }
    }
}

impl<T> std::fmt::Debug for Peer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Grpc { url, timeout } => f
                .debug_struct("Grpc")
                .field("url", url)
                .field("timeout", timeout)
                .finish(),
            Self::InMemory(_) => f.write_str("InMemory"),
        }
    }
}

/// Who answers "are these people friends?": the friends service at `FRIENDS_URL`
/// (`CHAT_FRIENDS_TIMEOUT`), or a set of friendships in process.
pub type FriendsConfig = Peer<InMemoryFriendships>;

/// Who answers "does this user exist?" (asked only to explain a refused chat): the users
/// service at `USERS_URL` (`CHAT_USERS_TIMEOUT`), or users in process.
pub type UsersConfig = Peer<InMemoryUsers>;

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(process_env)
    }

    /// Reads through `lookup` (tests pass a map).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let service = ServiceConfig::from_lookup(DEFAULTS, &lookup)?;
        let internal_key = InternalKey::from_lookup(&lookup)?;
        let mongodb_uri: Option<SecretUrl> = env_optional_from(&lookup, "MONGODB_URI")?;
        let store_kind: Option<String> = env_optional_from(&lookup, "CHAT_STORE")?;
        let store = match store_kind
            .as_deref()
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("memory") => StoreConfig::Memory,
            Some("mongodb") => StoreConfig::MongoDb(MongoStoreConfig {
                uri: mongodb_uri.unwrap_or_else(|| DEFAULT_MONGODB_URI.into()),
                database: env_optional_from(&lookup, "CHAT_MONGODB_DATABASE")?,
                orphan_grace: env_duration_from(
                    &lookup,
                    "CHAT_OUTBOX_ORPHAN_GRACE",
                    DEFAULT_OUTBOX_ORPHAN_GRACE,
                )?,
            }),
            None => match mongodb_uri {
                Some(uri) => StoreConfig::MongoDb(MongoStoreConfig {
                    uri,
                    database: env_optional_from(&lookup, "CHAT_MONGODB_DATABASE")?,
                    orphan_grace: env_duration_from(
                        &lookup,
                        "CHAT_OUTBOX_ORPHAN_GRACE",
                        DEFAULT_OUTBOX_ORPHAN_GRACE,
                    )?,
                }),
                // A replica on process memory keeps its own chats and loses them on
                // restart while reporting ready: never the silent default.
                None => {
                    return Err(ConfigError::invalid(
                        "MONGODB_URI",
                        "(unset)",
                        "set it to the chat database, or set CHAT_STORE=memory to keep \
                         chats in process memory (lost on restart, one copy per replica)",
                    ));
                }
            },
            Some(other) => {
                return Err(ConfigError::invalid(
                    "CHAT_STORE",
                    other,
                    "use mongodb or memory",
                ));
            }
        };
        let cache_ttl = env_duration_from(&lookup, "CHAT_CACHE_TTL", DEFAULT_CACHE_TTL)?;
        let cache = (!cache_ttl.is_zero())
            .then(|| -> Result<CacheConfig, ConfigError> {
                Ok(CacheConfig {
                    redis_url: env_or_from(&lookup, "REDIS_URL", DEFAULT_REDIS_URL.into())?,
                    key_prefix: env_or_from(
                        &lookup,
                        "CHAT_REDIS_PREFIX",
                        DEFAULT_CACHE_PREFIX.to_owned(),
                    )?,
                    ttl: cache_ttl,
                })
            })
            .transpose()?;
        let friends_timeout =
            env_nonzero_duration_from(&lookup, "CHAT_FRIENDS_TIMEOUT", DEFAULT_FRIENDS_TIMEOUT)?;
        let users_timeout =
            env_nonzero_duration_from(&lookup, "CHAT_USERS_TIMEOUT", DEFAULT_USERS_TIMEOUT)?;
        let outbox_poll_interval = env_nonzero_duration_from(
            &lookup,
            "CHAT_OUTBOX_POLL_INTERVAL",
            DEFAULT_OUTBOX_POLL_INTERVAL,
        )?;
        Ok(Self {
            service,
            store,
            cache,
            events: EventsConfig::Kafka(KafkaConfig::from_lookup(&lookup, DEFAULT_KAFKA_BROKERS)?),
            friends: FriendsConfig::Grpc {
                url: env_or_from(&lookup, "FRIENDS_URL", DEFAULT_FRIENDS_URL.to_owned())?,
                timeout: friends_timeout,
            },
            users: UsersConfig::Grpc {
                url: env_or_from(&lookup, "USERS_URL", DEFAULT_USERS_URL.to_owned())?,
                timeout: users_timeout,
            },
            outbox_poll_interval,
            internal_key,
        })
    }

    /// Everything in process: in-memory store, no cache, events on `bus`, friendships
    /// from `friendships`, every id counted as a user, callers verified with
    /// `internal_key`. For the all-in-one dev mode and tests; listeners come from
    /// `crate::Listeners`.
    pub fn in_memory(
        bus: InMemoryEventBus,
        friendships: Arc<InMemoryFriendships>,
        internal_key: InternalKey,
    ) -> Self {
        Self {
            service: ServiceConfig::from_lookup(DEFAULTS, |_| None)
                .unwrap_or_else(|_| unreachable!("the defaults are valid")),
            store: StoreConfig::Memory,
            cache: None,
            events: EventsConfig::InMemory(bus),
            friends: FriendsConfig::InMemory(friendships),
            users: UsersConfig::InMemory(Arc::new(InMemoryUsers::everyone())),
            outbox_poll_interval: DEFAULT_OUTBOX_POLL_INTERVAL,
            internal_key,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    const KEY: &str = "an-internal-key-of-at-least-32-bytes";

    /// `vars` over a valid `INTERNAL_AUTH_KEY` (which `vars` may replace).
    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let vars: HashMap<String, String> = [("INTERNAL_AUTH_KEY", KEY)]
            .iter()
            .chain(vars)
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(move |name| vars.get(name).cloned())
    }

    #[test]
    fn printing_the_configuration_shows_no_password() {
        // Chat's configuration used to derive `Debug` over plain strings, so a logged
        // config showed both passwords.
        let config = config(&[
            ("MONGODB_URI", "mongodb://chat:hunter2@db:27017/chat"),
            ("REDIS_URL", "redis://:s3cret@cache:6379"),
        ])
        .unwrap();
        let printed = format!("{config:?}");
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(!printed.contains("s3cret"), "{printed}");
        assert!(printed.contains("db:27017"), "{printed}");
        assert!(!printed.contains(KEY), "{printed}");
    }

    #[test]
    fn defaults_work_against_local_services() {
        let config = config(&[("CHAT_STORE", "memory")]).unwrap();
        assert!(matches!(config.store, StoreConfig::Memory));
        assert_eq!(config.service.grpc_addr.port(), 8002);
        assert_eq!(config.service.admin_addr.port(), 9002);
        let cache = config.cache.unwrap();
        assert_eq!(
            (cache.redis_url.expose(), cache.ttl),
            (DEFAULT_REDIS_URL, DEFAULT_CACHE_TTL)
        );
        assert!(
            matches!(config.events, EventsConfig::Kafka(ref kafka) if kafka.brokers == DEFAULT_KAFKA_BROKERS)
        );
        assert!(
            matches!(config.friends, FriendsConfig::Grpc { ref url, .. } if url == DEFAULT_FRIENDS_URL)
        );
        assert!(
            matches!(config.users, UsersConfig::Grpc { ref url, timeout } if url == DEFAULT_USERS_URL && timeout == DEFAULT_USERS_TIMEOUT)
        );
    }

    #[test]
    fn the_default_store_follows_whether_a_database_uri_is_set() {
        let config = config(&[("MONGODB_URI", "mongodb://db:27017/chat")]).unwrap();
        assert!(
            matches!(config.store, StoreConfig::MongoDb(ref m) if m.uri.expose() == "mongodb://db:27017/chat")
        );
        let forced = self::config(&[
            ("MONGODB_URI", "mongodb://db:27017"),
            ("CHAT_STORE", "memory"),
        ])
        .unwrap();
        assert!(matches!(forced.store, StoreConfig::Memory));
        let local = self::config(&[("CHAT_STORE", "mongodb")]).unwrap();
        assert!(
            matches!(local.store, StoreConfig::MongoDb(ref m) if m.uri.expose() == DEFAULT_MONGODB_URI)
        );
    }

    #[test]
    fn without_a_database_the_memory_store_must_be_asked_for() {
        // It used to fall back to memory silently: every replica its own chats, lost on
        // restart, while /readyz said ready.
        let error = config(&[]).unwrap_err();
        assert_eq!(error.variable(), "MONGODB_URI", "{error}");
        assert!(error.to_string().contains("CHAT_STORE=memory"), "{error}");
    }

    #[test]
    fn bad_values_name_the_variable() {
        let cases = [
            ("CHAT_STORE", "postgres"),
            ("CHAT_CACHE_TTL", "10"),
            ("CHAT_FRIENDS_TIMEOUT", "0s"),
            ("CHAT_USERS_TIMEOUT", "0s"),
            ("CHAT_OUTBOX_POLL_INTERVAL", "soon"),
            ("GRPC_ADDR", "nowhere"),
            ("INTERNAL_AUTH_KEY", ""),
            ("INTERNAL_AUTH_KEY", "shorter-than-32-bytes"),
        ];
        for (name, value) in cases {
            // A valid store, so the error is about `name` alone.
            let store = if name == "CHAT_STORE" {
                value
            } else {
                "memory"
            };
            let error = config(&[("CHAT_STORE", store), (name, value)]).unwrap_err();
            assert_eq!(error.variable(), name, "{error}");
        }
    }

    #[test]
    fn a_zero_cache_ttl_turns_the_cache_off() {
        let config = config(&[("CHAT_STORE", "memory"), ("CHAT_CACHE_TTL", "0s")]).unwrap();
        assert!(config.cache.is_none());
    }
}
