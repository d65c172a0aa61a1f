//! Configuration of the auth service: the shared settings plus `AUTH_*` variables.

use std::time::Duration;

use messenger_common::config::{SecretUrl, env_nonzero_duration_from, env_or_from, process_env};
use messenger_common::events::{EventsConfig, InMemoryEventBus};
use messenger_common::identity::InternalKey;
use messenger_common::kafka::KafkaConfig;
use messenger_common::{ConfigError, ServiceConfig, ServiceDefaults};

use crate::oauth::OAuthConfig;
use crate::store::{LoginLimits, RegisterLimits};

pub const DEFAULTS: ServiceDefaults = ServiceDefaults {
    name: "auth",
    grpc_port: 8001,
    admin_port: 9001,
};

pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres:postgres@127.0.0.1:5432/messenger_auth";
pub const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379";
pub const DEFAULT_KAFKA_BROKERS: &str = "127.0.0.1:9092";
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(24 * 60 * 60);
pub const DEFAULT_REDIS_PREFIX: &str = "auth:";

/// Where accounts, sessions and login counters live. `Debug` masks URL passwords.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreConfig {
    /// PostgreSQL (accounts + outbox) and Redis (sessions, counters).
    Real {
        database_url: SecretUrl,
        redis_url: SecretUrl,
        /// Prepended to every Redis key (`AUTH_REDIS_PREFIX`), so several deployments or
        /// tests can share one Redis.
        redis_prefix: String,
    },
    /// Everything in process memory. For `messenger dev` and tests.
    InMemory,
}

impl StoreConfig {
    /// PostgreSQL and Redis at the given URLs, the default key prefix.
    pub fn real(database_url: impl Into<SecretUrl>, redis_url: impl Into<SecretUrl>) -> Self {
        Self::Real {
            database_url: database_url.into(),
            redis_url: redis_url.into(),
            redis_prefix: DEFAULT_REDIS_PREFIX.to_owned(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Config {
    pub service: ServiceConfig,
    pub store: StoreConfig,
    /// Where `UserRegistered` goes: Kafka (`KAFKA_BROKERS`) or an in-process bus
    /// (`AUTH_STORE=memory`: a private one; `messenger dev`: the shared one).
    pub events: EventsConfig,
    /// Lifetime of an access token (`AUTH_TOKEN_TTL`).
    pub token_ttl: Duration,
    pub login_limits: LoginLimits,
    /// Registrations per client (`AUTH_REGISTER_MAX_PER_CLIENT` per `AUTH_REGISTER_WINDOW`).
    pub register_limits: RegisterLimits,
    /// Verifies every call's identity assertion (`INTERNAL_AUTH_KEY`, required).
    pub internal_key: InternalKey,
    /// Sign-in providers (`AUTH_OAUTH_*`); none by default.
    pub oauth: OAuthConfig,
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(process_env)
    }

    /// Reads the configuration through `lookup` (tests pass a map).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let service = ServiceConfig::from_lookup(DEFAULTS, &lookup)?;
        let internal_key = InternalKey::from_lookup(&lookup)?;
        let store_kind: String = env_or_from(&lookup, "AUTH_STORE", "postgres".to_owned())?;
        let (store, events) = match store_kind.as_str() {
            "postgres" => (
                StoreConfig::Real {
                    database_url: env_or_from(
                        &lookup,
                        "DATABASE_URL",
                        DEFAULT_DATABASE_URL.into(),
                    )?,
                    redis_url: env_or_from(&lookup, "REDIS_URL", DEFAULT_REDIS_URL.into())?,
                    redis_prefix: env_or_from(
                        &lookup,
                        "AUTH_REDIS_PREFIX",
                        DEFAULT_REDIS_PREFIX.into(),
                    )?,
                },
                EventsConfig::Kafka(KafkaConfig::from_lookup(&lookup, DEFAULT_KAFKA_BROKERS)?),
            ),
            "memory" => (
                StoreConfig::InMemory,
                EventsConfig::InMemory(InMemoryEventBus::new()),
            ),
            other => {
                return Err(ConfigError::invalid(
                    "AUTH_STORE",
                    other,
                    "use postgres or memory",
                ));
            }
        };
        let token_ttl = env_nonzero_duration_from(&lookup, "AUTH_TOKEN_TTL", DEFAULT_TOKEN_TTL)?;
        let defaults = LoginLimits::default();
        let login_limits = LoginLimits {
            max_failures_per_account_client: at_least_one(
                &lookup,
                "AUTH_LOGIN_MAX_FAILURES",
                defaults.max_failures_per_account_client,
            )?,
            max_failures_per_client: at_least_one(
                &lookup,
                "AUTH_LOGIN_MAX_FAILURES_PER_CLIENT",
                defaults.max_failures_per_client,
            )?,
            window: env_nonzero_duration_from(
                &lookup,
                "AUTH_LOGIN_FAILURE_WINDOW",
                defaults.window,
            )?,
            max_failures_per_account: at_least_one(
                &lookup,
                "AUTH_LOGIN_MAX_FAILURES_PER_ACCOUNT",
                defaults.max_failures_per_account,
            )?,
            account_window: env_nonzero_duration_from(
                &lookup,
                "AUTH_LOGIN_ACCOUNT_WINDOW",
                defaults.account_window,
            )?,
            first_delay: defaults.first_delay,
            max_delay: env_nonzero_duration_from(
                &lookup,
                "AUTH_LOGIN_MAX_DELAY",
                defaults.max_delay,
            )?,
        };
        let oauth = OAuthConfig::from_lookup(&lookup)?;
        let register_defaults = RegisterLimits::default();
        let register_limits = RegisterLimits {
            max_per_client: at_least_one(
                &lookup,
                "AUTH_REGISTER_MAX_PER_CLIENT",
                register_defaults.max_per_client,
            )?,
            window: env_nonzero_duration_from(
                &lookup,
                "AUTH_REGISTER_WINDOW",
                register_defaults.window,
            )?,
        };
        Ok(Self {
            service,
            store,
            events,
            token_ttl,
            login_limits,
            register_limits,
            internal_key,
            oauth,
        })
    }

    /// A configuration built from values, not the environment (tests, dev mode): the
    /// given stores and events, listen addresses from the defaults (callers pass bound
    /// listeners to `run`), default TTL and limits, callers verified with `internal_key`.
    pub fn new(store: StoreConfig, events: EventsConfig, internal_key: InternalKey) -> Self {
        Self {
            service: ServiceConfig::from_lookup(DEFAULTS, |_| None)
                .expect("the built-in defaults are valid"),
            store,
            events,
            token_ttl: DEFAULT_TOKEN_TTL,
            login_limits: LoginLimits::default(),
            register_limits: RegisterLimits::default(),
            internal_key,
            oauth: OAuthConfig::default(),
        }
    }
}

fn at_least_one(
    lookup: &impl Fn(&str) -> Option<String>,
    name: &str,
    default: u32,
) -> Result<u32, ConfigError> {
    let value = env_or_from(lookup, name, default)?;
    if value == 0 {
        return Err(ConfigError::invalid(name, "0", "must be at least 1"));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const KEY: &str = "an-internal-key-of-at-least-32-bytes";

    /// `pairs` over a valid `INTERNAL_AUTH_KEY` (which `pairs` may replace).
    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let map: HashMap<String, String> = [("INTERNAL_AUTH_KEY", KEY)]
            .iter()
            .chain(pairs)
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn defaults_work_against_local_services() {
        let config = Config::from_lookup(vars(&[])).unwrap();
        assert_eq!(config.service.grpc_addr.port(), 8001);
        assert_eq!(config.service.admin_addr.port(), 9001);
        assert_eq!(
            config.store,
            StoreConfig::Real {
                database_url: DEFAULT_DATABASE_URL.into(),
                redis_url: DEFAULT_REDIS_URL.into(),
                redis_prefix: "auth:".into(),
            }
        );
        assert!(
            matches!(&config.events, EventsConfig::Kafka(kafka) if kafka.brokers == DEFAULT_KAFKA_BROKERS)
        );
        assert_eq!(config.token_ttl, Duration::from_secs(86_400));
        assert_eq!(config.login_limits, LoginLimits::default());
        assert_eq!(config.login_limits.max_failures_per_account_client, 5);
        assert_eq!(config.login_limits.max_failures_per_client, 20);
        assert_eq!(config.login_limits.window, Duration::from_secs(900));
        assert_eq!(config.login_limits.max_failures_per_account, 100);
        assert_eq!(
            config.login_limits.account_window,
            Duration::from_secs(3600)
        );
        assert_eq!(config.login_limits.max_delay, Duration::from_secs(60));
        assert_eq!(
            config.register_limits,
            RegisterLimits {
                max_per_client: 20,
                window: Duration::from_secs(3600),
            }
        );
    }

    #[test]
    fn auth_variables_override_defaults() {
        let config = Config::from_lookup(vars(&[
            ("AUTH_TOKEN_TTL", "1h"),
            ("AUTH_LOGIN_MAX_FAILURES", "3"),
            ("AUTH_LOGIN_MAX_FAILURES_PER_CLIENT", "50"),
            ("AUTH_LOGIN_FAILURE_WINDOW", "5m"),
            ("AUTH_LOGIN_MAX_FAILURES_PER_ACCOUNT", "40"),
            ("AUTH_LOGIN_ACCOUNT_WINDOW", "2h"),
            ("AUTH_LOGIN_MAX_DELAY", "30s"),
            ("AUTH_REGISTER_MAX_PER_CLIENT", "3"),
            ("AUTH_REGISTER_WINDOW", "10m"),
            ("AUTH_STORE", "memory"),
        ]))
        .unwrap();
        assert_eq!(config.token_ttl, Duration::from_secs(3600));
        assert_eq!(
            config.login_limits,
            LoginLimits {
                max_failures_per_account_client: 3,
                max_failures_per_client: 50,
                window: Duration::from_secs(300),
                max_failures_per_account: 40,
                account_window: Duration::from_secs(7200),
                first_delay: Duration::from_secs(1),
                max_delay: Duration::from_secs(30),
            }
        );
        assert_eq!(
            config.register_limits,
            RegisterLimits {
                max_per_client: 3,
                window: Duration::from_secs(600),
            }
        );
        assert_eq!(config.store, StoreConfig::InMemory);
    }

    #[test]
    fn debug_output_hides_passwords_in_urls() {
        let config = Config::from_lookup(vars(&[
            ("DATABASE_URL", "postgres://app:hunter2@db:5432/auth"),
            ("REDIS_URL", "redis://:s3cret@cache:6379"),
        ]))
        .unwrap();
        let printed = format!("{config:?}");
        assert!(!printed.contains("hunter2"), "{printed}");
        assert!(!printed.contains("s3cret"), "{printed}");
        assert!(printed.contains("db:5432/auth"), "{printed}");
        assert!(!printed.contains(KEY), "{printed}");
    }

    #[test]
    fn bad_values_fail_naming_the_variable() {
        for (name, value) in [
            ("AUTH_TOKEN_TTL", "24"),
            ("AUTH_TOKEN_TTL", "0s"),
            ("AUTH_LOGIN_MAX_FAILURES", "0"),
            ("AUTH_LOGIN_MAX_FAILURES", "five"),
            ("AUTH_LOGIN_MAX_FAILURES_PER_CLIENT", "-1"),
            ("AUTH_LOGIN_FAILURE_WINDOW", "forever"),
            ("AUTH_LOGIN_MAX_FAILURES_PER_ACCOUNT", "0"),
            ("AUTH_LOGIN_ACCOUNT_WINDOW", "0s"),
            ("AUTH_LOGIN_MAX_DELAY", "soon"),
            ("AUTH_REGISTER_MAX_PER_CLIENT", "0"),
            ("AUTH_REGISTER_MAX_PER_CLIENT", "many"),
            ("AUTH_REGISTER_WINDOW", "0s"),
            ("AUTH_STORE", "mongo"),
            ("INTERNAL_AUTH_KEY", ""),
            ("INTERNAL_AUTH_KEY", "shorter-than-32-bytes"),
        ] {
            let error = Config::from_lookup(vars(&[(name, value)]))
                .expect_err(&format!("{name}={value} must be refused"));
            assert_eq!(error.variable(), name);
        }
    }
}
