//! Configuration of the friends service: the shared settings of every service plus its
//! stores, the users service and the cache. See `README.md` for every variable.

use std::time::Duration;

use messenger_common::config::{
    ConfigError, SecretUrl, ServiceConfig, ServiceDefaults, env_duration_from, env_or_from,
    process_env,
};
use messenger_common::events::InMemoryEventBus;
use messenger_common::identity::InternalKey;
use messenger_common::kafka::KafkaConfig;

use crate::domain::RequestRules;

/// Ports of the friends service (gRPC 8003, admin 9003).
pub const DEFAULTS: ServiceDefaults = ServiceDefaults {
    name: "friends",
    grpc_port: 8003,
    admin_port: 9003,
};

/// Everything the friends service needs to start. `Debug` masks passwords in URLs.
#[derive(Clone, Debug)]
pub struct Config {
    /// `GRPC_ADDR`, `ADMIN_ADDR`, `LOG_FORMAT`, `REQUEST_TIMEOUT`.
    pub service: ServiceConfig,
    /// `DATABASE_URL`.
    pub database_url: SecretUrl,
    /// `REDIS_URL`.
    pub redis_url: SecretUrl,
    /// `KAFKA_BROKERS` (comma-separated `host:port`) and how to reach them
    /// (`KAFKA_SECURITY_PROTOCOL`, `KAFKA_SSL_CA_LOCATION`, `KAFKA_SASL_*`).
    pub kafka: KafkaConfig,
    /// `USERS_URL`: the users service, which resolves nicknames.
    pub users_url: String,
    /// `FRIENDS_USERS_TIMEOUT`: deadline of each call to the users service.
    pub users_timeout: Duration,
    /// `FRIENDS_CACHE_TTL`: how long a cached friend list / request inbox lives.
    pub cache_ttl: Duration,
    /// `FRIENDS_CACHE_TIMEOUT`: a cache call slower than this is skipped (database answers).
    pub cache_timeout: Duration,
    /// `FRIENDS_REDIS_PREFIX`: prefix of every Redis key the service writes.
    pub redis_prefix: String,
    /// `FRIENDS_MAX_PENDING_REQUESTS` and `FRIENDS_REQUEST_COOLDOWN`: limits on new requests.
    pub request_rules: RequestRules,
    /// Longest wait of the outbox relay between attempts while Kafka is down (no variable;
    /// tests shorten it).
    pub outbox_max_backoff: Duration,
    /// `INTERNAL_AUTH_KEY` (required): verifies every call's identity assertion and signs
    /// the calls to the users service.
    pub internal_key: InternalKey,
    /// `Some(bus)`: friendships and cache in memory, events published on `bus` (`messenger
    /// dev`); the database, Redis and Kafka settings are then not used.
    pub in_memory: Option<InMemoryEventBus>,
}

impl Config {
    /// Reads the configuration from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(process_env)
    }

    /// Reads the configuration through `lookup` (tests pass a map).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let service = ServiceConfig::from_lookup(DEFAULTS, &lookup)?;
        let defaults = Self::new(
            service,
            DEFAULT_DATABASE_URL,
            DEFAULT_REDIS_URL,
            DEFAULT_KAFKA_BROKERS,
            InternalKey::from_lookup(&lookup)?,
        );
        let config = Config {
            database_url: env_or_from(&lookup, "DATABASE_URL", defaults.database_url)?,
            redis_url: env_or_from(&lookup, "REDIS_URL", defaults.redis_url)?,
            kafka: KafkaConfig::from_lookup(&lookup, DEFAULT_KAFKA_BROKERS)?,
            users_url: env_or_from(&lookup, "USERS_URL", defaults.users_url)?,
            users_timeout: env_duration_from(
                &lookup,
                "FRIENDS_USERS_TIMEOUT",
                defaults.users_timeout,
            )?,
            cache_ttl: env_duration_from(&lookup, "FRIENDS_CACHE_TTL", defaults.cache_ttl)?,
            cache_timeout: env_duration_from(
                &lookup,
                "FRIENDS_CACHE_TIMEOUT",
                defaults.cache_timeout,
            )?,
            redis_prefix: env_or_from(&lookup, "FRIENDS_REDIS_PREFIX", defaults.redis_prefix)?,
            request_rules: RequestRules {
                max_pending_incoming: env_or_from(
                    &lookup,
                    "FRIENDS_MAX_PENDING_REQUESTS",
                    defaults.request_rules.max_pending_incoming,
                )?,
                rejection_cooldown: env_duration_from(
                    &lookup,
                    "FRIENDS_REQUEST_COOLDOWN",
                    defaults.request_rules.rejection_cooldown,
                )?,
            },
            outbox_max_backoff: defaults.outbox_max_backoff,
            internal_key: defaults.internal_key,
            service: defaults.service,
            in_memory: None,
        };
        for (name, value) in [
            ("FRIENDS_USERS_TIMEOUT", config.users_timeout),
            ("FRIENDS_CACHE_TTL", config.cache_ttl),
            ("FRIENDS_CACHE_TIMEOUT", config.cache_timeout),
        ] {
            if value.is_zero() {
                return Err(ConfigError::invalid(name, "0", "must be greater than zero"));
            }
        }
        if config.request_rules.max_pending_incoming == 0 {
            return Err(ConfigError::invalid(
                "FRIENDS_MAX_PENDING_REQUESTS",
                "0",
                "must be at least 1",
            ));
        }
        if config.cache_ttl < Duration::from_secs(1) {
            return Err(ConfigError::invalid(
                "FRIENDS_CACHE_TTL",
                &format!("{:?}", config.cache_ttl),
                "must be at least 1s (Redis expiry has second precision)",
            ));
        }
        Ok(config)
    }

    /// A configuration with the given stores and internal key and defaults for everything
    /// else (tests, dev mode); no environment is read.
    pub fn new(
        service: ServiceConfig,
        database_url: impl Into<SecretUrl>,
        redis_url: impl Into<SecretUrl>,
        kafka: impl Into<KafkaConfig>,
        internal_key: InternalKey,
    ) -> Self {
        Config {
            service,
            database_url: database_url.into(),
            redis_url: redis_url.into(),
            kafka: kafka.into(),
            users_url: DEFAULT_USERS_URL.to_owned(),
            users_timeout: DEFAULT_USERS_TIMEOUT,
            cache_ttl: DEFAULT_CACHE_TTL,
            cache_timeout: DEFAULT_CACHE_TIMEOUT,
            redis_prefix: DEFAULT_REDIS_PREFIX.to_owned(),
            request_rules: RequestRules::default(),
            outbox_max_backoff: DEFAULT_OUTBOX_MAX_BACKOFF,
            internal_key,
            in_memory: None,
        }
    }

    /// The shared service settings with their defaults (no environment read).
    pub fn default_service() -> ServiceConfig {
        ServiceConfig::from_lookup(DEFAULTS, |_| None)
            .expect("the built-in service defaults are valid")
    }
}

pub const DEFAULT_DATABASE_URL: &str =
    "postgres://postgres:postgres@127.0.0.1:5432/messenger_friends";
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";
pub const DEFAULT_KAFKA_BROKERS: &str = "127.0.0.1:9092";
pub const DEFAULT_USERS_URL: &str = "http://127.0.0.1:8004";
pub const DEFAULT_USERS_TIMEOUT: Duration = Duration::from_secs(2);
pub const DEFAULT_CACHE_TTL: Duration = Duration::from_secs(5 * 60);
pub const DEFAULT_CACHE_TIMEOUT: Duration = Duration::from_millis(500);
pub const DEFAULT_REDIS_PREFIX: &str = "friends:";
pub const DEFAULT_OUTBOX_MAX_BACKOFF: Duration = Duration::from_secs(30);

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
        Config::from_lookup(|name| vars.get(name).cloned())
    }

    #[test]
    fn the_internal_key_is_required_and_never_shown() {
        assert_eq!(
            config(&[]).unwrap().internal_key,
            InternalKey::new(KEY).unwrap()
        );
        for value in ["", "short"] {
            let error = config(&[("INTERNAL_AUTH_KEY", value)]).unwrap_err();
            assert_eq!(error.variable(), "INTERNAL_AUTH_KEY", "{error}");
        }
        assert!(!format!("{:?}", config(&[]).unwrap()).contains(KEY));
    }

    #[test]
    fn defaults_point_at_local_services() {
        let config = config(&[]).unwrap();
        assert_eq!(config.service.grpc_addr.port(), 8003);
        assert_eq!(config.service.admin_addr.port(), 9003);
        assert_eq!(config.database_url.expose(), DEFAULT_DATABASE_URL);
        assert_eq!(config.users_url, "http://127.0.0.1:8004");
        assert_eq!(config.cache_ttl, Duration::from_secs(300));
        assert_eq!(config.request_rules.max_pending_incoming, 100);
        assert_eq!(
            config.request_rules.rejection_cooldown,
            Duration::from_secs(86_400)
        );
    }

    #[test]
    fn variables_override_defaults() {
        let config = config(&[
            ("FRIENDS_CACHE_TTL", "30s"),
            ("FRIENDS_USERS_TIMEOUT", "750ms"),
            ("USERS_URL", "http://users:8004"),
            ("GRPC_ADDR", "127.0.0.1:18003"),
            ("FRIENDS_MAX_PENDING_REQUESTS", "7"),
            ("FRIENDS_REQUEST_COOLDOWN", "1h"),
        ])
        .unwrap();
        assert_eq!(
            config.request_rules,
            RequestRules {
                max_pending_incoming: 7,
                rejection_cooldown: Duration::from_secs(3600),
            }
        );
        assert_eq!(config.cache_ttl, Duration::from_secs(30));
        assert_eq!(config.users_timeout, Duration::from_millis(750));
        assert_eq!(config.users_url, "http://users:8004");
        assert_eq!(config.service.grpc_addr.port(), 18003);
    }

    #[test]
    fn debug_output_hides_passwords() {
        let config = config(&[("DATABASE_URL", "postgres://app:hunter2@db:5432/friends")]).unwrap();
        assert_eq!(
            config.database_url.expose(),
            "postgres://app:hunter2@db:5432/friends"
        );
        assert!(!format!("{config:?}").contains("hunter2"));
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (name, value) in [
            ("FRIENDS_CACHE_TTL", "soon"),
            ("FRIENDS_CACHE_TTL", "0s"),
            ("FRIENDS_CACHE_TTL", "500ms"),
            ("FRIENDS_USERS_TIMEOUT", "0ms"),
            ("FRIENDS_CACHE_TIMEOUT", "-1s"),
            ("FRIENDS_MAX_PENDING_REQUESTS", "0"),
            ("FRIENDS_MAX_PENDING_REQUESTS", "lots"),
            ("FRIENDS_REQUEST_COOLDOWN", "a day"),
        ] {
            let error = config(&[(name, value)]).unwrap_err();
            assert_eq!(error.variable(), name, "{value}");
        }
    }
}
