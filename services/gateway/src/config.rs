//! Configuration of the gateway: listen addresses, peers, the internal key, and the
//! `GATEWAY_*` variables. Every value is validated at start-up; an error names the variable.

use std::net::{Ipv4Addr, SocketAddr};
use std::num::NonZeroU32;
use std::time::Duration;

use ipnet::IpNet;
use messenger_common::config::{
    SecretUrl, env_duration_from, env_nonzero_duration_from, env_optional_from, env_or_from,
    env_required_from, process_env,
};
use messenger_common::events::InMemoryEventBus;
use messenger_common::grpc::GrpcTls;
use messenger_common::identity::InternalKey;
use messenger_common::kafka::KafkaConfig;
use messenger_common::{ConfigError, LogFormat};

pub const DEFAULT_HTTP_PORT: u16 = 8080;
pub const DEFAULT_ADMIN_PORT: u16 = 9080;
pub const DEFAULT_KAFKA_BROKERS: &str = "127.0.0.1:9092";

/// Where the gateway learns about events to push to connected clients: every replica
/// consumes every event from Kafka, or the all-in-one mode's in-process bus.
pub use messenger_common::events::EventsConfig;

/// The gRPC services the gateway calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeersConfig {
    pub auth_url: String,
    pub users_url: String,
    pub friends_url: String,
    pub chat_url: String,
}

/// Limits of the real-time stream (`GET /v1/events`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamConfig {
    /// How long a user's events are kept for `Last-Event-ID` replay (`GATEWAY_EVENTS_REPLAY_WINDOW`).
    pub replay_window: Duration,
    /// At most this many events kept per user for replay.
    pub replay_max_events: usize,
    /// Open streams per user (`GATEWAY_MAX_STREAMS_PER_USER`).
    pub max_streams_per_user: usize,
    /// Events buffered for one connection before a client too slow to read is dropped.
    pub connection_buffer: usize,
    /// Interval of the heartbeat comments (`GATEWAY_EVENTS_HEARTBEAT`).
    pub heartbeat: Duration,
    /// Lifetime of a `POST /v1/events/ticket` ticket.
    pub ticket_ttl: Duration,
    /// How often auth is asked whether open streams' tokens still exist
    /// (`GATEWAY_EVENTS_SESSION_RECHECK`): a logout served by another replica ends this
    /// replica's streams of that token within it.
    pub session_recheck: Duration,
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self {
            replay_window: Duration::from_secs(300),
            replay_max_events: 500,
            max_streams_per_user: 5,
            connection_buffer: 64,
            heartbeat: Duration::from_secs(15),
            ticket_ttl: Duration::from_secs(30),
            session_recheck: Duration::from_secs(30),
        }
    }
}

/// Per-client-address request budgets of register and login.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimits {
    /// `GATEWAY_REGISTER_PER_MINUTE` (default 10).
    pub register_per_minute: NonZeroU32,
    /// `GATEWAY_LOGIN_PER_MINUTE` (default 30).
    pub login_per_minute: NonZeroU32,
}

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            register_per_minute: NonZeroU32::new(10).expect("non-zero"),
            login_per_minute: NonZeroU32::new(30).expect("non-zero"),
        }
    }
}

/// The gateway-side cache of validated tokens ([`crate::token_cache`]), kept coherent
/// across replicas through Redis ([`crate::revocations`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenCacheConfig {
    /// `REDIS_URL`: the Redis every replica of the app shares.
    pub redis_url: SecretUrl,
    /// `GATEWAY_REDIS_PREFIX` (default `messenger:gateway`): one per app sharing a Redis.
    pub prefix: String,
    /// `GATEWAY_TOKEN_CACHE_TTL` (default 60s; `0s` turns the cache off).
    pub ttl: Duration,
    /// `GATEWAY_TOKEN_CACHE_MAX_ENTRIES` (default 100 000).
    pub max_entries: usize,
}

pub const DEFAULT_TOKEN_CACHE_TTL: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct Config {
    /// Service name in logs and metrics.
    pub name: String,
    /// REST listen address (`HTTP_ADDR`, default `0.0.0.0:8080`).
    pub http_addr: SocketAddr,
    /// Health/readiness/metrics listen address (`ADMIN_ADDR`, default `0.0.0.0:9080`).
    pub admin_addr: SocketAddr,
    pub log_format: LogFormat,
    /// Deadline of every API request (`REQUEST_TIMEOUT`, default 10s), passed down as
    /// `grpc-timeout`.
    pub request_timeout: Duration,
    /// Headers on every response naming what answered: `x-messenger-slot` and
    /// `x-messenger-version` from `MESSENGER_SLOT` / `MESSENGER_VERSION`, which the operator
    /// sets (none when unset). Clients and tests see which side of a rollout served them.
    pub served_by: Vec<(http::HeaderName, http::HeaderValue)>,
    pub peers: PeersConfig,
    /// The CA of `https://` peers (`GRPC_TLS_CA_FILE`).
    pub grpc_tls: GrpcTls,
    /// Signs the identity assertions internal services believe (`INTERNAL_AUTH_KEY`).
    pub internal_key: InternalKey,
    /// Key of the event-stream tickets, derived from the internal key.
    pub ticket_key: crate::stream::TicketKey,
    pub events: EventsConfig,
    /// Proxies whose `X-Forwarded-For` is believed (`GATEWAY_TRUSTED_PROXIES`, CIDRs).
    pub trusted_proxies: Vec<IpNet>,
    /// Origins allowed by CORS (`GATEWAY_CORS_ORIGINS`, comma-separated; none by default).
    pub cors_origins: Vec<http::HeaderValue>,
    /// API requests served at once before new ones are shed with 503
    /// (`GATEWAY_MAX_CONCURRENT_REQUESTS`).
    pub max_concurrent_requests: usize,
    /// Largest accepted request body (`GATEWAY_MAX_BODY_BYTES`, default 64 KiB).
    pub max_body_bytes: usize,
    pub rate_limits: RateLimits,
    pub stream: StreamConfig,
    /// Off without `REDIS_URL`: every request then asks auth.
    pub token_cache: Option<TokenCacheConfig>,
}

impl Config {
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(process_env)
    }

    /// Reads the configuration through `lookup` (tests pass a map).
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let any = |port| SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
        let raw_key: String = env_required_from(&lookup, "INTERNAL_AUTH_KEY")?;
        let internal_key = InternalKey::new(raw_key.as_bytes()).map_err(|error| {
            ConfigError::invalid("INTERNAL_AUTH_KEY", &raw_key, error.to_string())
        })?;
        let peer = |name: &str, port: u16| -> Result<String, ConfigError> {
            let url: String = env_or_from(&lookup, name, format!("http://127.0.0.1:{port}"))?;
            validate_peer_url(name, &url)?;
            Ok(url)
        };
        let peers = PeersConfig {
            auth_url: peer("AUTH_URL", 8001)?,
            users_url: peer("USERS_URL", 8004)?,
            friends_url: peer("FRIENDS_URL", 8003)?,
            chat_url: peer("CHAT_URL", 8002)?,
        };
        let trusted_proxies = parse_list(&lookup, "GATEWAY_TRUSTED_PROXIES", |item| {
            item.parse::<IpNet>()
                .or_else(|_| item.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| "expected CIDRs such as 10.0.0.0/8, comma-separated".to_owned())
        })?;
        let cors_origins = parse_list(&lookup, "GATEWAY_CORS_ORIGINS", |item| {
            let url = url_origin(item)?;
            http::HeaderValue::from_str(&url).map_err(|e| e.to_string())
        })?;
        let positive = |name: &str, default: usize| -> Result<usize, ConfigError> {
            let value: usize = env_or_from(&lookup, name, default)?;
            if value == 0 {
                return Err(ConfigError::invalid(name, "0", "must be greater than zero"));
            }
            Ok(value)
        };
        let per_minute = |name: &str, default: NonZeroU32| -> Result<NonZeroU32, ConfigError> {
            env_or_from(&lookup, name, default)
        };
        let defaults = StreamConfig::default();
        let stream = StreamConfig {
            replay_window: env_nonzero_duration_from(
                &lookup,
                "GATEWAY_EVENTS_REPLAY_WINDOW",
                defaults.replay_window,
            )?,
            max_streams_per_user: positive(
                "GATEWAY_MAX_STREAMS_PER_USER",
                defaults.max_streams_per_user,
            )?,
            heartbeat: env_nonzero_duration_from(
                &lookup,
                "GATEWAY_EVENTS_HEARTBEAT",
                defaults.heartbeat,
            )?,
            session_recheck: env_nonzero_duration_from(
                &lookup,
                "GATEWAY_EVENTS_SESSION_RECHECK",
                defaults.session_recheck,
            )?,
            ..defaults
        };
        let limits = RateLimits::default();
        let redis_url: Option<SecretUrl> = env_optional_from(&lookup, "REDIS_URL")?;
        let cache_ttl =
            env_duration_from(&lookup, "GATEWAY_TOKEN_CACHE_TTL", DEFAULT_TOKEN_CACHE_TTL)?;
        let token_cache = match redis_url {
            Some(redis_url) if !cache_ttl.is_zero() => {
                if url::Url::parse(redis_url.expose())
                    .map_or(true, |url| !matches!(url.scheme(), "redis" | "rediss"))
                {
                    return Err(ConfigError::invalid(
                        "REDIS_URL",
                        redis_url.expose(),
                        "expected redis://host:port or rediss://host:port",
                    ));
                }
                Some(TokenCacheConfig {
                    redis_url,
                    prefix: env_or_from(
                        &lookup,
                        "GATEWAY_REDIS_PREFIX",
                        "messenger:gateway".to_owned(),
                    )?,
                    ttl: cache_ttl,
                    max_entries: positive("GATEWAY_TOKEN_CACHE_MAX_ENTRIES", 100_000)?,
                })
            }
            _ => None,
        };
        let served_by = served_by_headers(&lookup)?;
        Ok(Self {
            name: "gateway".to_owned(),
            http_addr: env_or_from(&lookup, "HTTP_ADDR", any(DEFAULT_HTTP_PORT))?,
            admin_addr: env_or_from(&lookup, "ADMIN_ADDR", any(DEFAULT_ADMIN_PORT))?,
            log_format: env_or_from(&lookup, "LOG_FORMAT", LogFormat::Text)?,
            request_timeout: env_nonzero_duration_from(
                &lookup,
                "REQUEST_TIMEOUT",
                messenger_common::config::DEFAULT_REQUEST_TIMEOUT,
            )?,
            served_by,
            peers,
            grpc_tls: GrpcTls::client_from_lookup(&lookup)?,
            ticket_key: crate::stream::TicketKey::derive(raw_key.as_bytes()),
            internal_key,
            events: EventsConfig::Kafka(KafkaConfig::from_lookup(&lookup, DEFAULT_KAFKA_BROKERS)?),
            trusted_proxies,
            cors_origins,
            max_concurrent_requests: positive("GATEWAY_MAX_CONCURRENT_REQUESTS", 1024)?,
            max_body_bytes: positive("GATEWAY_MAX_BODY_BYTES", 64 * 1024)?,
            rate_limits: RateLimits {
                register_per_minute: per_minute(
                    "GATEWAY_REGISTER_PER_MINUTE",
                    limits.register_per_minute,
                )?,
                login_per_minute: per_minute("GATEWAY_LOGIN_PER_MINUTE", limits.login_per_minute)?,
            },
            stream,
            token_cache,
        })
    }

    /// A configuration for tests and the all-in-one mode: loopback peers at `peers`, the
    /// given key, events from `bus`.
    pub fn in_memory(peers: PeersConfig, internal_key: InternalKey, bus: InMemoryEventBus) -> Self {
        let raw = rand::random::<[u8; 32]>();
        Self {
            name: "gateway".to_owned(),
            http_addr: SocketAddr::from((Ipv4Addr::LOCALHOST, DEFAULT_HTTP_PORT)),
            admin_addr: SocketAddr::from((Ipv4Addr::LOCALHOST, DEFAULT_ADMIN_PORT)),
            log_format: LogFormat::Text,
            request_timeout: messenger_common::config::DEFAULT_REQUEST_TIMEOUT,
            served_by: Vec::new(),
            peers,
            grpc_tls: GrpcTls::default(),
            internal_key,
            ticket_key: crate::stream::TicketKey::derive(&raw),
            events: EventsConfig::InMemory(bus),
            trusted_proxies: Vec::new(),
            cors_origins: Vec::new(),
            max_concurrent_requests: 1024,
            max_body_bytes: 64 * 1024,
            rate_limits: RateLimits::default(),
            stream: StreamConfig::default(),
            token_cache: None,
        }
    }
}

/// Response headers from the variables that name this replica's slot and version.
pub const SERVED_BY_HEADERS: [(&str, &str); 2] = [
    ("MESSENGER_SLOT", "x-messenger-slot"),
    ("MESSENGER_VERSION", "x-messenger-version"),
];

fn served_by_headers(
    lookup: &impl Fn(&str) -> Option<String>,
) -> Result<Vec<(http::HeaderName, http::HeaderValue)>, ConfigError> {
    let mut headers = Vec::new();
    for (variable, header) in SERVED_BY_HEADERS {
        if let Some(value) = env_optional_from::<String>(lookup, variable)? {
            let value = http::HeaderValue::from_str(&value).map_err(|_| {
                ConfigError::invalid(variable, &value, "not usable in an HTTP header")
            })?;
            headers.push((http::HeaderName::from_static(header), value));
        }
    }
    Ok(headers)
}

fn validate_peer_url(name: &str, url: &str) -> Result<(), ConfigError> {
    let parsed = url::Url::parse(url).map_err(|e| ConfigError::invalid(name, url, e))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(ConfigError::invalid(
            name,
            url,
            "expected an http(s) URL such as http://users:8004",
        ));
    }
    Ok(())
}

/// `scheme://host[:port]` of an origin, refusing paths and wildcards.
fn url_origin(item: &str) -> Result<String, String> {
    let parsed = url::Url::parse(item).map_err(|e| format!("{item:?}: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(format!("{item:?} is not an http(s) origin"));
    }
    if parsed.path() != "/" || parsed.query().is_some() {
        return Err(format!("{item:?}: an origin has no path"));
    }
    Ok(parsed.origin().ascii_serialization())
}

fn parse_list<T>(
    lookup: &impl Fn(&str) -> Option<String>,
    name: &str,
    parse_item: impl Fn(&str) -> Result<T, String>,
) -> Result<Vec<T>, ConfigError> {
    let Some(value) = lookup(name).filter(|v| !v.trim().is_empty()) else {
        return Ok(Vec::new());
    };
    value
        .split(',')
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .map(|item| parse_item(item).map_err(|reason| ConfigError::invalid(name, &value, reason)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const KEY: &str = "0123456789abcdef0123456789abcdef-test-key";

    fn config(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let mut map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        map.entry("INTERNAL_AUTH_KEY".into())
            .or_insert_with(|| KEY.into());
        Config::from_lookup(move |name| map.get(name).cloned())
    }

    #[test]
    fn defaults_are_the_ports_the_operator_wires() {
        let config = config(&[]).unwrap();
        assert_eq!(config.http_addr.port(), 8080);
        assert_eq!(config.admin_addr.port(), 9080);
        assert_eq!(config.peers.users_url, "http://127.0.0.1:8004");
        assert!(config.trusted_proxies.is_empty());
        assert!(config.cors_origins.is_empty());
        assert!(
            config.served_by.is_empty(),
            "no slot headers outside a rollout"
        );
    }

    #[test]
    fn slot_and_version_become_response_headers() {
        let config =
            config(&[("MESSENGER_SLOT", "green"), ("MESSENGER_VERSION", "1.2.3")]).unwrap();
        let headers: Vec<(&str, &str)> = config
            .served_by
            .iter()
            .map(|(name, value)| (name.as_str(), value.to_str().unwrap()))
            .collect();
        assert_eq!(
            headers,
            [
                ("x-messenger-slot", "green"),
                ("x-messenger-version", "1.2.3")
            ]
        );
    }

    #[test]
    fn bad_values_stop_start_up_naming_the_variable() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (&[("INTERNAL_AUTH_KEY", "")], "INTERNAL_AUTH_KEY"),
            (&[("INTERNAL_AUTH_KEY", "short")], "INTERNAL_AUTH_KEY"),
            (&[("USERS_URL", "users:8004")], "USERS_URL"),
            (
                &[("GATEWAY_TRUSTED_PROXIES", "10.0.0.0/8,nonsense")],
                "GATEWAY_TRUSTED_PROXIES",
            ),
            (
                &[("GATEWAY_CORS_ORIGINS", "https://a.example/path")],
                "GATEWAY_CORS_ORIGINS",
            ),
            (
                &[("GATEWAY_LOGIN_PER_MINUTE", "0")],
                "GATEWAY_LOGIN_PER_MINUTE",
            ),
            (
                &[("GATEWAY_MAX_STREAMS_PER_USER", "0")],
                "GATEWAY_MAX_STREAMS_PER_USER",
            ),
            (&[("REQUEST_TIMEOUT", "0s")], "REQUEST_TIMEOUT"),
            (&[("HTTP_ADDR", "8080")], "HTTP_ADDR"),
            (&[("REDIS_URL", "http://cache:6379")], "REDIS_URL"),
            (
                &[
                    ("REDIS_URL", "redis://cache:6379"),
                    ("GATEWAY_TOKEN_CACHE_TTL", "1"),
                ],
                "GATEWAY_TOKEN_CACHE_TTL",
            ),
            (&[("MESSENGER_SLOT", "blue\nx: y")], "MESSENGER_SLOT"),
        ];
        for (vars, variable) in cases {
            let error = config(vars).expect_err(variable);
            assert_eq!(error.variable(), *variable, "{error}");
        }
    }

    #[test]
    fn the_internal_key_never_appears_in_errors_or_debug_output() {
        let error = config(&[("INTERNAL_AUTH_KEY", "secret-but-short")]).unwrap_err();
        assert!(!error.to_string().contains("secret-but-short"), "{error}");
        let config = config(&[]).unwrap();
        assert!(!format!("{config:?}").contains(KEY));
    }

    #[test]
    fn the_token_cache_is_on_only_with_a_shared_redis() {
        // Without a channel between replicas a cache could not honour logout.
        assert_eq!(config(&[]).unwrap().token_cache, None);
        let on = config(&[("REDIS_URL", "redis://:pw@cache:6379/1")]).unwrap();
        let cache = on.token_cache.as_ref().unwrap();
        assert_eq!(
            (cache.prefix.as_str(), cache.ttl, cache.max_entries),
            ("messenger:gateway", DEFAULT_TOKEN_CACHE_TTL, 100_000)
        );
        assert!(!format!("{on:?}").contains(":pw@"), "password masked");
        let off = config(&[
            ("REDIS_URL", "redis://cache:6379"),
            ("GATEWAY_TOKEN_CACHE_TTL", "0s"),
        ])
        .unwrap();
        assert_eq!(off.token_cache, None);
    }

    #[test]
    fn lists_are_parsed() {
        let config = config(&[
            (
                "GATEWAY_TRUSTED_PROXIES",
                "10.0.0.0/8, 192.168.1.7 ,fd00::/8",
            ),
            (
                "GATEWAY_CORS_ORIGINS",
                "https://app.example,http://localhost:3000",
            ),
        ])
        .unwrap();
        assert_eq!(config.trusted_proxies.len(), 3);
        assert_eq!(config.cors_origins[0], "https://app.example");
        assert_eq!(config.cors_origins[1], "http://localhost:3000");
    }
}
