//! Configuration of the users service: the shared settings ([`ServiceConfig`]) plus where
//! profiles live and how the cache behaves. [`Config::from_env`] reads the environment;
//! [`Config::new`] builds one from values (tests, dev mode).

use std::time::Duration;

use messenger_common::config::{
    ConfigError, SecretUrl, ServiceConfig, ServiceDefaults, env_duration_from,
    env_nonzero_duration_from, env_or_from, process_env,
};
use messenger_common::consumer::DEFAULT_PROCESSED_EVENTS_RETENTION;
use messenger_common::events::InMemoryEventBus;
use messenger_common::identity::InternalKey;
use messenger_common::kafka::KafkaConfig;

pub const DEFAULTS: ServiceDefaults = ServiceDefaults {
    name: "users",
    grpc_port: 8004,
    admin_port: 9004,
};
pub const DEFAULT_DATABASE_URL: &str =
    "postgres://postgres:postgres@127.0.0.1:5432/messenger_users";
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";
pub const DEFAULT_KAFKA_BROKERS: &str = "127.0.0.1:9092";
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(5 * 60);
pub const DEFAULT_CACHE_TIMEOUT: Duration = Duration::from_millis(250);
pub const DEFAULT_CACHE_PREFIX: &str = "users:";
pub const DEFAULT_CONSUMER_GROUP: &str = "users";

/// PostgreSQL, Redis and Kafka: where profiles, the cache and events live in production.
/// `Debug` masks the URLs' passwords.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageConfig {
    /// PostgreSQL holding the profiles (`DATABASE_URL`); created on first start if missing.
    pub database_url: SecretUrl,
    /// Redis caching profiles and search pages (`REDIS_URL`).
    pub redis_url: SecretUrl,
    /// Prefix of every Redis key this service writes (`USERS_REDIS_PREFIX`).
    pub redis_key_prefix: String,
    /// Kafka brokers and how to reach them (`KAFKA_BROKERS`, `KAFKA_SECURITY_PROTOCOL`, ...).
    pub kafka: KafkaConfig,
    /// Consumer group reading `UserRegistered` events (`USERS_CONSUMER_GROUP`).
    pub kafka_consumer_group: String,
}

/// Real stores, or everything in memory with `UserRegistered` read from an in-process bus
/// (`messenger dev`).
#[derive(Debug, Clone)]
pub enum Storage {
    Real(StorageConfig),
    InMemory(InMemoryEventBus),
}

#[derive(Debug, Clone)]
pub struct Config {
    pub service: ServiceConfig,
    pub storage: Storage,
    /// How long cached profiles and search pages live (`USERS_CACHE_TTL`).
    pub cache_ttl: Duration,
    /// How long one cache call may take before the database answers instead
    /// (`USERS_CACHE_TIMEOUT`).
    pub cache_timeout: Duration,
    /// Verifies the identity assertion of every call (`INTERNAL_AUTH_KEY`, required).
    pub internal_key: InternalKey,
    /// How long the ids of consumed events are remembered to drop redeliveries
    /// (`USERS_PROCESSED_EVENTS_RETENTION`, default 8 days): keep it above Kafka's retention.
    pub processed_events_retention: Duration,
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(process_env)
    }

    /// Reads the configuration through `lookup` (tests pass a map).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let service = ServiceConfig::from_lookup(DEFAULTS, &lookup)?;
        let internal_key = InternalKey::from_lookup(&lookup)?;
        let storage = StorageConfig {
            database_url: env_or_from(&lookup, "DATABASE_URL", DEFAULT_DATABASE_URL.into())?,
            redis_url: env_or_from(&lookup, "REDIS_URL", DEFAULT_REDIS_URL.into())?,
            redis_key_prefix: env_or_from(
                &lookup,
                "USERS_REDIS_PREFIX",
                DEFAULT_CACHE_PREFIX.to_owned(),
            )?,
            kafka: KafkaConfig::from_lookup(&lookup, DEFAULT_KAFKA_BROKERS)?,
            kafka_consumer_group: env_or_from(
                &lookup,
                "USERS_CONSUMER_GROUP",
                DEFAULT_CONSUMER_GROUP.to_owned(),
            )?,
        };
        let cache_ttl = env_duration_from(&lookup, "USERS_CACHE_TTL", DEFAULT_CACHE_TTL)?;
        if cache_ttl < Duration::from_millis(1) {
            return Err(ConfigError::invalid(
                "USERS_CACHE_TTL",
                &format!("{cache_ttl:?}"),
                "must be at least 1ms",
            ));
        }
        let cache_timeout =
            env_nonzero_duration_from(&lookup, "USERS_CACHE_TIMEOUT", DEFAULT_CACHE_TIMEOUT)?;
        let processed_events_retention = env_nonzero_duration_from(
            &lookup,
            "USERS_PROCESSED_EVENTS_RETENTION",
            DEFAULT_PROCESSED_EVENTS_RETENTION,
        )?;
        Ok(Self {
            service,
            storage: Storage::Real(storage),
            cache_ttl,
            cache_timeout,
            internal_key,
            processed_events_retention,
        })
    }

    /// PostgreSQL/Redis/Kafka at the given places, callers verified with `internal_key`,
    /// every other setting at its default.
    pub fn new(storage: StorageConfig, internal_key: InternalKey) -> Self {
        Self::with_storage(Storage::Real(storage), internal_key)
    }

    /// Everything in memory, profiles created from `UserRegistered` on `bus`.
    pub fn in_memory(bus: InMemoryEventBus, internal_key: InternalKey) -> Self {
        Self::with_storage(Storage::InMemory(bus), internal_key)
    }

    fn with_storage(storage: Storage, internal_key: InternalKey) -> Self {
        let service = ServiceConfig::from_lookup(DEFAULTS, |_| None)
            .unwrap_or_else(|e| unreachable!("defaults are valid: {e}"));
        Self {
            service,
            storage,
            cache_ttl: DEFAULT_CACHE_TTL,
            cache_timeout: DEFAULT_CACHE_TIMEOUT,
            internal_key,
            processed_events_retention: DEFAULT_PROCESSED_EVENTS_RETENTION,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const KEY: &str = "an-internal-key-of-at-least-32-bytes";

    /// `pairs` over a valid `INTERNAL_AUTH_KEY` (which `pairs` may replace).
    fn lookup(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let map: HashMap<String, String> = [("INTERNAL_AUTH_KEY", KEY)]
            .iter()
            .chain(pairs)
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn the_internal_key_is_required_and_must_be_long_enough() {
        let config = Config::from_lookup(lookup(&[])).unwrap();
        assert_eq!(config.internal_key, InternalKey::new(KEY).unwrap());
        for value in ["", "short"] {
            let error = Config::from_lookup(lookup(&[("INTERNAL_AUTH_KEY", value)])).unwrap_err();
            assert_eq!(error.variable(), "INTERNAL_AUTH_KEY", "{error}");
        }
    }

    #[test]
    fn defaults_work_against_local_services() {
        let config = Config::from_lookup(lookup(&[])).unwrap();
        assert_eq!(config.service.grpc_addr.port(), 8004);
        assert_eq!(config.service.admin_addr.port(), 9004);
        assert_eq!(config.cache_ttl, Duration::from_secs(300));
        assert_eq!(config.cache_timeout, Duration::from_millis(250));
        let Storage::Real(storage) = config.storage else {
            panic!("real storage by default")
        };
        assert_eq!(
            storage,
            StorageConfig {
                database_url: DEFAULT_DATABASE_URL.into(),
                redis_url: DEFAULT_REDIS_URL.into(),
                redis_key_prefix: "users:".into(),
                kafka: DEFAULT_KAFKA_BROKERS.into(),
                kafka_consumer_group: "users".into(),
            }
        );
    }

    #[test]
    fn variables_override_defaults() {
        let config = Config::from_lookup(lookup(&[
            ("USERS_CACHE_TTL", "30s"),
            ("USERS_CACHE_TIMEOUT", "100ms"),
            ("DATABASE_URL", "postgres://db/users"),
            ("USERS_CONSUMER_GROUP", "users-blue"),
        ]))
        .unwrap();
        assert_eq!(config.cache_ttl, Duration::from_secs(30));
        assert_eq!(config.cache_timeout, Duration::from_millis(100));
        let Storage::Real(storage) = config.storage else {
            panic!("real storage by default")
        };
        assert_eq!(storage.database_url.expose(), "postgres://db/users");
        assert_eq!(storage.kafka_consumer_group, "users-blue");
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (name, value) in [
            ("USERS_CACHE_TTL", "5"),
            ("USERS_CACHE_TTL", "0s"),
            ("USERS_CACHE_TIMEOUT", "soon"),
            ("GRPC_ADDR", "nowhere"),
        ] {
            let error = Config::from_lookup(lookup(&[(name, value)])).unwrap_err();
            assert_eq!(error.variable(), name, "{error}");
        }
    }

    #[test]
    fn debug_output_hides_database_passwords() {
        let config = Config::new(
            StorageConfig {
                database_url: "postgres://app:hunter2@db/users".into(),
                redis_url: "redis://:s3cret@cache:6379".into(),
                redis_key_prefix: "users:".into(),
                kafka: "kafka:9092".into(),
                kafka_consumer_group: "users".into(),
            },
            InternalKey::new(KEY).unwrap(),
        );
        let shown = format!("{config:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("s3cret"),
            "{shown}"
        );
    }
}
