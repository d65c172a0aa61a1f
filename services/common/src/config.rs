//! Configuration from environment variables: typed getters that fail with a
//! [`ConfigError`] naming the variable (and the bad value, with credentials masked), and
//! [`ServiceConfig`], the settings every service shares (`GRPC_ADDR`, `ADMIN_ADDR`,
//! `LOG_FORMAT`, `REQUEST_TIMEOUT`, and TLS: `GRPC_TLS_*`, `REDIS_TLS_CA_FILE`).
//!
//! Every getter has a pure twin taking a lookup function (`*_from`) so parsing is tested
//! without touching the process environment.

use std::fmt::Display;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

/// A configuration variable is missing or cannot be parsed. The message names the
/// variable, so a failed start-up says exactly what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// A required variable is not set (or is empty).
    #[error("environment variable {name} is required but not set")]
    Missing {
        /// The variable's name.
        name: String,
    },
    /// A variable is set to something that cannot be used.
    #[error("environment variable {name} has an invalid value {value:?}: {reason}")]
    Invalid {
        /// The variable's name.
        name: String,
        /// The value, with credentials masked.
        value: String,
        /// Why it was rejected.
        reason: String,
    },
}

impl ConfigError {
    /// An invalid-value error; the value is masked if it may hold a secret.
    pub fn invalid(name: &str, value: &str, reason: impl Display) -> Self {
        Self::Invalid {
            name: name.to_owned(),
            value: mask_secret(name, value),
            reason: reason.to_string(),
        }
    }

    /// The name of the offending variable.
    pub fn variable(&self) -> &str {
        match self {
            Self::Missing { name } | Self::Invalid { name, .. } => name,
        }
    }
}

/// Hides credentials in a value before it is shown in an error: the password of a URL
/// (`postgres://app:***@db/app`), or the whole value of a variable whose name says it is a
/// secret (`*_PASSWORD`, `*_SECRET`, `*_TOKEN`, `*_KEY`, `*_CREDENTIALS`). Only the last
/// word counts, so `AUTH_TOKEN_TTL` (a duration) is shown and its error stays useful.
pub fn mask_secret(name: &str, value: &str) -> String {
    let last_word = name.rsplit('_').next().unwrap_or(name).to_ascii_uppercase();
    let secret_words = [
        "PASSWORD",
        "PASSWD",
        "SECRET",
        "TOKEN",
        "KEY",
        "CREDENTIAL",
        "CREDENTIALS",
    ];
    if secret_words.contains(&last_word.as_str()) {
        return "***".to_owned();
    }
    mask_url_password(value)
}

/// Replaces the password in `scheme://user:password@host...` with `***`. Done on the text
/// rather than a parsed URL so a URL too broken to parse still has its password hidden.
fn mask_url_password(value: &str) -> String {
    let Some(scheme_end) = value.find("://").map(|i| i + 3) else {
        return value.to_owned();
    };
    let rest = &value[scheme_end..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return value.to_owned();
    };
    match rest[..at].find(':') {
        Some(colon) => format!(
            "{}{}:***{}",
            &value[..scheme_end],
            &rest[..colon],
            &rest[at..]
        ),
        None => value.to_owned(),
    }
}

/// A connection URL that may carry a password (`DATABASE_URL`, `REDIS_URL`,
/// `MONGODB_URI`): `Debug` and `Display` show it with the password masked, so a config
/// printed in a log or an error never leaks it. [`SecretUrl::expose`] gives the real text
/// to the one place that connects.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SecretUrl(String);

impl SecretUrl {
    /// Wraps a URL.
    pub fn new(url: impl Into<String>) -> Self {
        Self(url.into())
    }

    /// The URL with its password, for the connector only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", mask_url_password(&self.0))
    }
}

impl Display for SecretUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&mask_url_password(&self.0))
    }
}

impl FromStr for SecretUrl {
    type Err = std::convert::Infallible;

    fn from_str(url: &str) -> Result<Self, Self::Err> {
        Ok(Self::new(url))
    }
}

impl From<&str> for SecretUrl {
    fn from(url: &str) -> Self {
        Self::new(url)
    }
}

impl From<&String> for SecretUrl {
    fn from(url: &String) -> Self {
        Self::new(url.as_str())
    }
}

impl From<String> for SecretUrl {
    fn from(url: String) -> Self {
        Self::new(url)
    }
}

/// Reads a variable through `lookup`; unset and empty count as absent.
fn raw(lookup: &impl Fn(&str) -> Option<String>, name: &str) -> Option<String> {
    lookup(name).filter(|v| !v.trim().is_empty())
}

fn parse<T>(name: &str, value: &str) -> Result<T, ConfigError>
where
    T: FromStr,
    T::Err: Display,
{
    value
        .trim()
        .parse()
        .map_err(|e| ConfigError::invalid(name, value, e))
}

/// The process environment as a lookup function. A value that is not UTF-8 is passed on
/// as its lossy form so parsing fails naming the variable instead of it looking unset.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var_os(name).map(|v| v.to_string_lossy().into_owned())
}

/// `name` parsed as `T`, or `default` when unset or empty.
pub fn env_or<T>(name: &str, default: T) -> Result<T, ConfigError>
where
    T: FromStr,
    T::Err: Display,
{
    env_or_from(&process_env, name, default)
}

/// [`env_or`] reading through `lookup`.
pub fn env_or_from<T>(
    lookup: &impl Fn(&str) -> Option<String>,
    name: &str,
    default: T,
) -> Result<T, ConfigError>
where
    T: FromStr,
    T::Err: Display,
{
    Ok(env_optional_from(lookup, name)?.unwrap_or(default))
}

/// `name` parsed as `T`, or `None` when unset or empty.
pub fn env_optional<T>(name: &str) -> Result<Option<T>, ConfigError>
where
    T: FromStr,
    T::Err: Display,
{
    env_optional_from(&process_env, name)
}

/// [`env_optional`] reading through `lookup`.
pub fn env_optional_from<T>(
    lookup: &impl Fn(&str) -> Option<String>,
    name: &str,
) -> Result<Option<T>, ConfigError>
where
    T: FromStr,
    T::Err: Display,
{
    raw(lookup, name).map(|v| parse(name, &v)).transpose()
}

/// `name` parsed as `T`; missing or empty is an error naming the variable.
pub fn env_required<T>(name: &str) -> Result<T, ConfigError>
where
    T: FromStr,
    T::Err: Display,
{
    env_required_from(&process_env, name)
}

/// [`env_required`] reading through `lookup`.
pub fn env_required_from<T>(
    lookup: &impl Fn(&str) -> Option<String>,
    name: &str,
) -> Result<T, ConfigError>
where
    T: FromStr,
    T::Err: Display,
{
    env_optional_from(lookup, name)?.ok_or_else(|| ConfigError::Missing {
        name: name.to_owned(),
    })
}

/// A duration such as `500ms`, `30s`, `15m`, `1h` (or `2d`), or `default` when unset.
pub fn env_duration(name: &str, default: Duration) -> Result<Duration, ConfigError> {
    env_duration_from(&process_env, name, default)
}

/// [`env_duration`] reading through `lookup`.
pub fn env_duration_from(
    lookup: &impl Fn(&str) -> Option<String>,
    name: &str,
    default: Duration,
) -> Result<Duration, ConfigError> {
    match raw(lookup, name) {
        None => Ok(default),
        Some(v) => parse_duration(&v).map_err(|reason| ConfigError::invalid(name, &v, reason)),
    }
}

/// [`env_duration_from`] for a setting where zero makes no sense (timeouts, intervals):
/// `0s` is refused naming the variable.
pub fn env_nonzero_duration_from(
    lookup: &impl Fn(&str) -> Option<String>,
    name: &str,
    default: Duration,
) -> Result<Duration, ConfigError> {
    let value = env_duration_from(lookup, name, default)?;
    if value.is_zero() {
        return Err(ConfigError::invalid(name, "0", "must be greater than zero"));
    }
    Ok(value)
}

/// Parses `<number><unit>` with unit `ms`, `s`, `m`, `h` or `d`. A unit is required so
/// `30` is never silently read as 30 milliseconds or 30 hours.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("missing unit in {text:?} (use ms, s, m, h or d, e.g. 30s)"))?;
    let (number, unit) = text.split_at(split);
    let amount: u64 = number
        .parse()
        .map_err(|_| format!("expected a whole number before the unit in {text:?}"))?;
    let millis_per_unit: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(format!("unknown unit {unit:?} (use ms, s, m, h or d)")),
    };
    amount
        .checked_mul(millis_per_unit)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("{text:?} is too long"))
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines (local runs).
    #[default]
    Text,
    /// One JSON object per line (clusters, log shippers).
    Json,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            other => Err(format!("unknown log format {other:?} (use text or json)")),
        }
    }
}

/// Per-service defaults for [`ServiceConfig::from_env`].
#[derive(Debug, Clone, Copy)]
pub struct ServiceDefaults {
    /// Service name used in logs and metrics, e.g. `"auth"`.
    pub name: &'static str,
    /// Default gRPC port (auth 8001, chat 8002, friends 8003, users 8004).
    pub grpc_port: u16,
    /// Default admin port (auth 9001, chat 9002, friends 9003, users 9004, gateway 9080).
    pub admin_port: u16,
}

/// Default per-request deadline when `REQUEST_TIMEOUT` is unset.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Default bound on the calls a gRPC server runs at once (`GRPC_MAX_CONCURRENT_CALLS`).
pub const DEFAULT_MAX_CONCURRENT_CALLS: usize = 1024;

/// Settings every service reads the same way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceConfig {
    /// Service name, e.g. `"auth"`.
    pub name: String,
    /// gRPC listen address (`GRPC_ADDR`, default `0.0.0.0:<grpc_port>`).
    pub grpc_addr: SocketAddr,
    /// Health/readiness/metrics listen address (`ADMIN_ADDR`, default `0.0.0.0:<admin_port>`).
    pub admin_addr: SocketAddr,
    /// Log format (`LOG_FORMAT`, `text` or `json`, default `text`).
    pub log_format: LogFormat,
    /// Deadline applied to every incoming request (`REQUEST_TIMEOUT`, default `10s`).
    pub request_timeout: Duration,
    /// Whether gRPC server reflection is served (`GRPC_REFLECTION`, `true` or `false`,
    /// default `false`).
    pub grpc_reflection: bool,
    /// Calls served at once before new ones are answered `RESOURCE_EXHAUSTED`
    /// (`GRPC_MAX_CONCURRENT_CALLS`, default 1024).
    pub max_concurrent_calls: usize,
    /// Whether a service with a database applies its migrations at start-up
    /// (`MIGRATE_ON_START`, default `true`). The operator sets `false` when a migrations
    /// Job (`<binary> migrate`) runs them before the new version's pods start; the
    /// service then only checks that they were applied.
    pub migrate_on_start: bool,
    /// TLS of the gRPC server and of calls to peers (`GRPC_TLS_CERT_FILE`,
    /// `GRPC_TLS_KEY_FILE`, `GRPC_TLS_CA_FILE`; none by default).
    pub grpc_tls: crate::grpc::GrpcTls,
    /// The CA a `rediss://` server's certificate is checked against
    /// (`REDIS_TLS_CA_FILE`; the system's roots when unset).
    pub redis_ca_file: Option<PathBuf>,
}

impl ServiceConfig {
    /// Reads the shared settings from the process environment.
    pub fn from_env(defaults: ServiceDefaults) -> Result<Self, ConfigError> {
        Self::from_lookup(defaults, process_env)
    }

    /// Reads the shared settings through `lookup` (tests pass a map).
    pub fn from_lookup(
        defaults: ServiceDefaults,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let any = |port| SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
        let request_timeout =
            env_nonzero_duration_from(&lookup, "REQUEST_TIMEOUT", DEFAULT_REQUEST_TIMEOUT)?;
        Ok(Self {
            name: defaults.name.to_owned(),
            grpc_addr: env_or_from(&lookup, "GRPC_ADDR", any(defaults.grpc_port))?,
            admin_addr: env_or_from(&lookup, "ADMIN_ADDR", any(defaults.admin_port))?,
            log_format: env_or_from(&lookup, "LOG_FORMAT", LogFormat::Text)?,
            request_timeout,
            grpc_reflection: env_flag_from(&lookup, "GRPC_REFLECTION", false)?,
            max_concurrent_calls: match env_or_from(
                &lookup,
                "GRPC_MAX_CONCURRENT_CALLS",
                DEFAULT_MAX_CONCURRENT_CALLS,
            )? {
                0 => {
                    return Err(ConfigError::invalid(
                        "GRPC_MAX_CONCURRENT_CALLS",
                        "0",
                        "must be at least 1",
                    ));
                }
                limit => limit,
            },
            migrate_on_start: env_flag_from(&lookup, "MIGRATE_ON_START", true)?,
            grpc_tls: crate::grpc::GrpcTls::from_lookup(&lookup)?,
            redis_ca_file: env_ca_file_from(&lookup, "REDIS_TLS_CA_FILE")?,
        })
    }
}

/// A variable naming a file the service reads (a certificate, a key, a CA bundle), or
/// `None` when unset. A file that cannot be read is refused now, naming the variable,
/// rather than at the first connection.
pub fn env_file_from(
    lookup: &impl Fn(&str) -> Option<String>,
    name: &str,
) -> Result<Option<PathBuf>, ConfigError> {
    let Some(value) = raw(lookup, name) else {
        return Ok(None);
    };
    let path = PathBuf::from(value.trim());
    match std::fs::File::open(&path).and_then(|file| file.metadata()) {
        Ok(meta) if meta.is_file() => Ok(Some(path)),
        Ok(_) => Err(ConfigError::invalid(name, &value, "is not a file")),
        Err(error) => Err(ConfigError::invalid(
            name,
            &value,
            format!("cannot read the file: {error}"),
        )),
    }
}

/// A variable naming a PEM file of CA certificates ([`env_file_from`]); a file holding
/// no certificate is refused now, naming the variable.
pub fn env_ca_file_from(
    lookup: &impl Fn(&str) -> Option<String>,
    name: &str,
) -> Result<Option<PathBuf>, ConfigError> {
    let path = env_file_from(lookup, name)?;
    if let Some(path) = &path {
        pem_certificates(path)
            .map_err(|reason| ConfigError::invalid(name, &path.display().to_string(), reason))?;
    }
    Ok(path)
}

/// The number of certificates in a PEM file; an error when it holds none or cannot be
/// read.
pub fn pem_certificates(path: &std::path::Path) -> Result<usize, String> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject as _;
    let certificates = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("not a PEM certificate file: {e}"))?;
    match certificates.len() {
        0 => Err("holds no PEM certificate".into()),
        count => Ok(count),
    }
}

/// A switch: `true` or `false` (any case), or `default` when unset. Anything else is
/// refused naming the variable, so a typo never silently leaves a switch as it was.
pub fn env_flag_from(
    lookup: &impl Fn(&str) -> Option<String>,
    name: &str,
    default: bool,
) -> Result<bool, ConfigError> {
    match raw(lookup, name) {
        None => Ok(default),
        Some(value) => match value.trim().to_ascii_lowercase().as_str() {
            "true" => Ok(true),
            "false" => Ok(false),
            _ => Err(ConfigError::invalid(name, &value, "use true or false")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const AUTH: ServiceDefaults = ServiceDefaults {
        name: "auth",
        grpc_port: 8001,
        admin_port: 9001,
    };

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn a_secret_url_prints_without_its_password_but_connects_with_it() {
        let url: SecretUrl = env_required_from(
            &vars(&[("MONGODB_URI", "mongodb://chat:hunter2@db:27017/chat")]),
            "MONGODB_URI",
        )
        .unwrap();
        assert_eq!(url.expose(), "mongodb://chat:hunter2@db:27017/chat");
        for shown in [
            format!("{url}"),
            format!("{url:?}"),
            format!("{:?}", Some(&url)),
        ] {
            assert!(!shown.contains("hunter2"), "{shown}");
            assert!(shown.contains("chat:***@db:27017"), "{shown}");
        }
    }

    #[test]
    fn defaults_apply_when_nothing_is_set() {
        let config = ServiceConfig::from_lookup(AUTH, vars(&[])).unwrap();
        assert_eq!(config.name, "auth");
        assert_eq!(config.grpc_addr, "0.0.0.0:8001".parse().unwrap());
        assert_eq!(config.admin_addr, "0.0.0.0:9001".parse().unwrap());
        assert_eq!(config.log_format, LogFormat::Text);
        assert_eq!(config.request_timeout, Duration::from_secs(10));
        assert!(
            !config.grpc_reflection,
            "reflection is off unless asked for"
        );
        assert!(
            config.migrate_on_start,
            "services migrate at start-up by default"
        );
    }

    #[test]
    fn set_variables_override_defaults() {
        let config = ServiceConfig::from_lookup(
            AUTH,
            vars(&[
                ("GRPC_ADDR", "127.0.0.1:7001"),
                ("ADMIN_ADDR", "[::1]:7002"),
                ("LOG_FORMAT", "JSON"),
                ("REQUEST_TIMEOUT", "750ms"),
                ("GRPC_REFLECTION", "TRUE"),
                ("GRPC_MAX_CONCURRENT_CALLS", "64"),
                ("MIGRATE_ON_START", "false"),
            ]),
        )
        .unwrap();
        assert_eq!(config.max_concurrent_calls, 64);
        assert!(!config.migrate_on_start);
        assert_eq!(config.grpc_addr, "127.0.0.1:7001".parse().unwrap());
        assert_eq!(config.admin_addr, "[::1]:7002".parse().unwrap());
        assert_eq!(config.log_format, LogFormat::Json);
        assert_eq!(config.request_timeout, Duration::from_millis(750));
        assert!(config.grpc_reflection);
    }

    #[test]
    fn each_bad_value_is_rejected_naming_its_variable() {
        let cases = [
            ("GRPC_ADDR", "localhost"),
            ("GRPC_ADDR", "0.0.0.0:99999"),
            ("ADMIN_ADDR", "9001"),
            ("LOG_FORMAT", "xml"),
            ("REQUEST_TIMEOUT", "10"),
            ("REQUEST_TIMEOUT", "10 parsecs"),
            ("REQUEST_TIMEOUT", "-5s"),
            ("REQUEST_TIMEOUT", "0s"),
            ("GRPC_REFLECTION", "yes"),
            ("GRPC_REFLECTION", "1"),
            ("GRPC_MAX_CONCURRENT_CALLS", "0"),
            ("GRPC_MAX_CONCURRENT_CALLS", "many"),
            ("MIGRATE_ON_START", "no"),
        ];
        for (name, value) in cases {
            let error = ServiceConfig::from_lookup(AUTH, vars(&[(name, value)]))
                .expect_err(&format!("{name}={value} must be rejected"));
            assert_eq!(error.variable(), name, "{name}={value}");
            let message = error.to_string();
            assert!(message.contains(name), "{message} names {name}");
        }
    }

    #[test]
    fn durations_accept_each_unit() {
        let cases = [
            ("500ms", Duration::from_millis(500)),
            ("30s", Duration::from_secs(30)),
            ("15m", Duration::from_secs(900)),
            ("1h", Duration::from_secs(3600)),
            ("2d", Duration::from_secs(172_800)),
            (" 5s ", Duration::from_secs(5)),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_duration(text), Ok(expected), "{text}");
        }
        for bad in ["", "s", "5", "1.5s", "5 s", "5sec", "99999999999999999999h"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} must be rejected");
        }
    }

    #[test]
    fn required_variable_missing_or_empty_is_an_error_naming_it() {
        for lookup in [vars(&[]), vars(&[("DATABASE_URL", "  ")])] {
            let error = env_required_from::<String>(&lookup, "DATABASE_URL").unwrap_err();
            assert_eq!(
                error,
                ConfigError::Missing {
                    name: "DATABASE_URL".into()
                }
            );
        }
        let present = vars(&[("DATABASE_URL", "postgres://db/app")]);
        assert_eq!(
            env_required_from::<String>(&present, "DATABASE_URL").unwrap(),
            "postgres://db/app"
        );
    }

    #[test]
    fn optional_and_defaulted_numbers_parse_or_fail_naming_the_variable() {
        let lookup = vars(&[("AUTH_MAX", "12"), ("AUTH_BAD", "twelve")]);
        assert_eq!(env_optional_from::<u32>(&lookup, "AUTH_MAX"), Ok(Some(12)));
        assert_eq!(env_optional_from::<u32>(&lookup, "AUTH_UNSET"), Ok(None));
        assert_eq!(env_or_from(&lookup, "AUTH_UNSET", 7u32), Ok(7));
        let error = env_or_from(&lookup, "AUTH_BAD", 7u32).unwrap_err();
        assert_eq!(error.variable(), "AUTH_BAD");
        assert!(error.to_string().contains("twelve"));
    }

    #[test]
    fn errors_never_show_credentials() {
        let lookup = vars(&[
            ("DATABASE_URL", "postgres://app:hunter2@db:notaport/app"),
            ("REDIS_URL", "redis://:s3cret@cache:6379"),
            ("AUTH_JWT_SECRET", "topsecretvalue"),
        ]);
        let error = env_required_from::<url::Url>(&lookup, "DATABASE_URL").unwrap_err();
        assert!(!error.to_string().contains("hunter2"), "{error}");
        assert_eq!(
            mask_secret("REDIS_URL", "redis://:s3cret@cache:6379"),
            "redis://:***@cache:6379"
        );
        let error = env_required_from::<u32>(&lookup, "AUTH_JWT_SECRET").unwrap_err();
        assert!(!error.to_string().contains("topsecretvalue"), "{error}");
        assert!(error.to_string().contains("AUTH_JWT_SECRET"));
    }

    #[test]
    fn only_the_last_word_of_a_name_marks_a_secret() {
        for (name, shown) in [
            ("AUTH_TOKEN_TTL", "abc"),
            ("KEY_PREFIX", "abc"),
            ("AUTH_REDIS_PREFIX", "abc"),
            ("ADMIN_TOKEN", "***"),
            ("AWS_SECRET_ACCESS_KEY", "***"),
            ("SMTP_PASSWORD", "***"),
            ("gcp_credentials", "***"),
        ] {
            assert_eq!(mask_secret(name, "abc"), shown, "{name}");
        }
        let error = env_duration_from(
            &vars(&[("AUTH_TOKEN_TTL", "soon")]),
            "AUTH_TOKEN_TTL",
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(
            error.to_string().contains("soon"),
            "the bad value is shown: {error}"
        );
    }
}
