//! Kafka plumbing (rdkafka with bundled librdkafka): [`KafkaConfig`], where the brokers
//! are and how to reach them (`KAFKA_BROKERS`, TLS and SASL from `KAFKA_*` variables), a
//! [`producer`], [`ensure_topics`] (brokers such as tansu do not auto-create topics), a
//! manually-committing [`consumer`], and [`KafkaReadiness`] for `/readyz`.
//!
//! Every function takes anything that converts into a [`KafkaConfig`]: the service's
//! configuration, or a plain `host:port,...` list (no TLS, no SASL) in tests.

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, Producer};
use rdkafka::types::RDKafkaErrorCode;

use crate::admin::{Gate, ReadinessCheck};
use crate::config::{ConfigError, env_ca_file_from, env_optional_from, env_or_from};
use crate::error::Error;

/// `KAFKA_SECURITY_PROTOCOL`: librdkafka's `security.protocol`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SecurityProtocol {
    /// No TLS, no authentication (the default).
    #[default]
    Plaintext,
    /// TLS, no authentication.
    Ssl,
    /// SASL authentication without TLS (SCRAM only: it never sends the password).
    SaslPlaintext,
    /// SASL authentication over TLS.
    SaslSsl,
}

impl SecurityProtocol {
    /// The value librdkafka expects.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Plaintext => "plaintext",
            Self::Ssl => "ssl",
            Self::SaslPlaintext => "sasl_plaintext",
            Self::SaslSsl => "sasl_ssl",
        }
    }

    /// Whether connections are encrypted.
    pub fn uses_tls(self) -> bool {
        matches!(self, Self::Ssl | Self::SaslSsl)
    }

    /// Whether the client authenticates with SASL.
    pub fn uses_sasl(self) -> bool {
        matches!(self, Self::SaslPlaintext | Self::SaslSsl)
    }
}

impl FromStr for SecurityProtocol {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim().to_ascii_lowercase().as_str() {
            "plaintext" => Ok(Self::Plaintext),
            "ssl" => Ok(Self::Ssl),
            "sasl_plaintext" => Ok(Self::SaslPlaintext),
            "sasl_ssl" => Ok(Self::SaslSsl),
            _ => Err("use plaintext, ssl, sasl_plaintext or sasl_ssl".into()),
        }
    }
}

/// `KAFKA_SASL_MECHANISM`: librdkafka's `sasl.mechanism`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaslMechanism {
    /// `SCRAM-SHA-256`.
    ScramSha256,
    /// `SCRAM-SHA-512`.
    ScramSha512,
    /// `PLAIN`: the password itself goes to the broker, so only over TLS.
    Plain,
}

impl SaslMechanism {
    /// The value librdkafka expects.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ScramSha256 => "SCRAM-SHA-256",
            Self::ScramSha512 => "SCRAM-SHA-512",
            Self::Plain => "PLAIN",
        }
    }
}

impl FromStr for SaslMechanism {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text.trim().to_ascii_uppercase().as_str() {
            "SCRAM-SHA-256" => Ok(Self::ScramSha256),
            "SCRAM-SHA-512" => Ok(Self::ScramSha512),
            "PLAIN" => Ok(Self::Plain),
            _ => Err("use SCRAM-SHA-256, SCRAM-SHA-512 or PLAIN".into()),
        }
    }
}

/// SASL user and password. `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct SaslCredentials {
    /// How the client proves it knows the password.
    pub mechanism: SaslMechanism,
    /// `KAFKA_SASL_USERNAME`.
    pub username: String,
    /// `KAFKA_SASL_PASSWORD`.
    password: String,
}

impl SaslCredentials {
    /// Credentials for `username`.
    pub fn new(mechanism: SaslMechanism, username: &str, password: &str) -> Self {
        Self {
            mechanism,
            username: username.to_owned(),
            password: password.to_owned(),
        }
    }
}

impl std::fmt::Debug for SaslCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SaslCredentials")
            .field("mechanism", &self.mechanism)
            .field("username", &self.username)
            .field("password", &"***")
            .finish()
    }
}

/// Where the brokers are and how to reach them. Built from the environment by
/// [`KafkaConfig::from_lookup`]; a plain `host:port,...` string converts into one without
/// TLS or SASL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaConfig {
    /// Bootstrap servers, `host:port,...` (`KAFKA_BROKERS`).
    pub brokers: String,
    /// `KAFKA_SECURITY_PROTOCOL`.
    pub protocol: SecurityProtocol,
    /// The CA the brokers' certificates must chain to (`KAFKA_SSL_CA_LOCATION`; the
    /// system's roots when unset).
    pub ca_location: Option<PathBuf>,
    /// SASL credentials, exactly when the protocol uses SASL.
    pub sasl: Option<SaslCredentials>,
}

impl KafkaConfig {
    /// Brokers reached without TLS or SASL.
    pub fn plaintext(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            protocol: SecurityProtocol::Plaintext,
            ca_location: None,
            sasl: None,
        }
    }

    /// Reads `KAFKA_BROKERS` (else `default_brokers`), `KAFKA_SECURITY_PROTOCOL`,
    /// `KAFKA_SSL_CA_LOCATION`, `KAFKA_SASL_MECHANISM`, `KAFKA_SASL_USERNAME` and
    /// `KAFKA_SASL_PASSWORD` through `lookup`. Combinations that cannot work, or would
    /// silently not do what was asked, are refused naming the variable: SASL settings
    /// without a SASL protocol, a CA without TLS, a SASL protocol without credentials,
    /// `PLAIN` (the bare password) without TLS.
    pub fn from_lookup(
        lookup: &impl Fn(&str) -> Option<String>,
        default_brokers: &str,
    ) -> Result<Self, ConfigError> {
        let brokers: String = env_or_from(lookup, "KAFKA_BROKERS", default_brokers.to_owned())?;
        let protocol: SecurityProtocol = env_or_from(
            lookup,
            "KAFKA_SECURITY_PROTOCOL",
            SecurityProtocol::Plaintext,
        )?;
        let ca_location = env_ca_file_from(lookup, "KAFKA_SSL_CA_LOCATION")?;
        if let Some(ca) = &ca_location
            && !protocol.uses_tls()
        {
            return Err(ConfigError::invalid(
                "KAFKA_SSL_CA_LOCATION",
                &ca.display().to_string(),
                format!(
                    "is only used with TLS, but KAFKA_SECURITY_PROTOCOL is {} (use ssl or sasl_ssl)",
                    protocol.as_str()
                ),
            ));
        }
        let mechanism: Option<SaslMechanism> = env_optional_from(lookup, "KAFKA_SASL_MECHANISM")?;
        let username: Option<String> = env_optional_from(lookup, "KAFKA_SASL_USERNAME")?;
        let password: Option<String> = env_optional_from(lookup, "KAFKA_SASL_PASSWORD")?;
        let sasl = if protocol.uses_sasl() {
            let required = |name: &str| ConfigError::Missing { name: name.into() };
            let mechanism = mechanism.ok_or_else(|| required("KAFKA_SASL_MECHANISM"))?;
            let username = username.ok_or_else(|| required("KAFKA_SASL_USERNAME"))?;
            let password = password.ok_or_else(|| required("KAFKA_SASL_PASSWORD"))?;
            if mechanism == SaslMechanism::Plain && !protocol.uses_tls() {
                return Err(ConfigError::invalid(
                    "KAFKA_SASL_MECHANISM",
                    mechanism.as_str(),
                    "PLAIN sends the password itself: use it only with KAFKA_SECURITY_PROTOCOL=sasl_ssl, or use SCRAM-SHA-256/512",
                ));
            }
            Some(SaslCredentials::new(mechanism, &username, &password))
        } else {
            let stray = [
                ("KAFKA_SASL_MECHANISM", mechanism.is_some()),
                ("KAFKA_SASL_USERNAME", username.is_some()),
                ("KAFKA_SASL_PASSWORD", password.is_some()),
            ];
            if let Some((name, _)) = stray.into_iter().find(|(_, set)| *set) {
                let shown = lookup(name).unwrap_or_default();
                return Err(ConfigError::invalid(
                    name,
                    &shown,
                    format!(
                        "is only used with SASL, but KAFKA_SECURITY_PROTOCOL is {} (use sasl_ssl or sasl_plaintext)",
                        protocol.as_str()
                    ),
                ));
            }
            None
        };
        Ok(Self {
            brokers,
            protocol,
            ca_location,
            sasl,
        })
    }

    /// The librdkafka properties these settings make, for every client (producer,
    /// consumer, admin). With TLS the broker's host name is checked too.
    pub fn properties(&self) -> Vec<(&'static str, String)> {
        let mut properties = vec![
            ("bootstrap.servers", self.brokers.clone()),
            ("security.protocol", self.protocol.as_str().to_owned()),
        ];
        if self.protocol.uses_tls() {
            properties.push(("ssl.endpoint.identification.algorithm", "https".into()));
            if let Some(ca) = &self.ca_location {
                properties.push(("ssl.ca.location", ca.display().to_string()));
            }
        }
        if let Some(sasl) = &self.sasl {
            properties.push(("sasl.mechanism", sasl.mechanism.as_str().to_owned()));
            properties.push(("sasl.username", sasl.username.clone()));
            properties.push(("sasl.password", sasl.password.clone()));
        }
        properties
    }
}

impl From<&str> for KafkaConfig {
    fn from(brokers: &str) -> Self {
        Self::plaintext(brokers)
    }
}

impl From<&String> for KafkaConfig {
    fn from(brokers: &String) -> Self {
        Self::plaintext(brokers.as_str())
    }
}

impl From<String> for KafkaConfig {
    fn from(brokers: String) -> Self {
        Self::plaintext(brokers)
    }
}

impl From<&KafkaConfig> for KafkaConfig {
    fn from(config: &KafkaConfig) -> Self {
        config.clone()
    }
}

/// How long librdkafka keeps trying to deliver one message before reporting failure.
/// The outbox relay retries after that, so nothing is lost; this only bounds one attempt.
pub const MESSAGE_TIMEOUT: Duration = Duration::from_secs(15);

/// Partitions of topics created by [`ensure_topics`]. Events are keyed by aggregate id, so
/// order holds per user/chat whatever the count.
pub const DEFAULT_PARTITIONS: i32 = 3;

/// Base client settings shared by producers, consumers and admin clients: where the
/// brokers are, TLS and SASL ([`KafkaConfig::properties`]), timeouts.
pub fn client_config(kafka: impl Into<KafkaConfig>) -> ClientConfig {
    let mut config = ClientConfig::new();
    for (key, value) in kafka.into().properties() {
        config.set(key, value);
    }
    config
        .set("socket.timeout.ms", "10000")
        // Reconnect quickly after a broker restart.
        .set("reconnect.backoff.ms", "100")
        .set("reconnect.backoff.max.ms", "2000");
    config
}

/// A producer for `kafka` (or plain `host:9092,host2:9092`).
pub fn producer(kafka: impl Into<KafkaConfig>) -> Result<FutureProducer, Error> {
    Ok(client_config(kafka)
        .set(
            "message.timeout.ms",
            MESSAGE_TIMEOUT.as_millis().to_string(),
        )
        // One request in flight per connection: retries cannot reorder a key's events.
        .set("max.in.flight.requests.per.connection", "1")
        .set("acks", "all")
        // The outbox relay publishes one event and waits for its ack before the next (that
        // keeps each key's order); waiting up to librdkafka's default 5 ms for more records
        // to batch would only add 5 ms to every event (docs/benchmarks.md).
        .set("linger.ms", "0")
        .create()?)
}

/// Creates the missing ones of `topics` with [`DEFAULT_PARTITIONS`] partitions; existing
/// topics are left as they are.
pub async fn ensure_topics(kafka: impl Into<KafkaConfig>, topics: &[&str]) -> Result<(), Error> {
    ensure_topics_with(kafka, topics, DEFAULT_PARTITIONS).await
}

/// [`ensure_topics`] with an explicit partition count.
pub async fn ensure_topics_with(
    kafka: impl Into<KafkaConfig>,
    topics: &[&str],
    partitions: i32,
) -> Result<(), Error> {
    if topics.is_empty() {
        return Ok(());
    }
    let admin: AdminClient<DefaultClientContext> = client_config(kafka).create()?;
    let new_topics: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|name| NewTopic::new(name, partitions, TopicReplication::Fixed(1)))
        .collect();
    let options = AdminOptions::new()
        .request_timeout(Some(Duration::from_secs(10)))
        .operation_timeout(Some(Duration::from_secs(10)));
    let results = admin.create_topics(&new_topics, &options).await?;
    for result in results {
        match result {
            Ok(topic) => tracing::info!(%topic, "created Kafka topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(Error::Other(format!(
                    "creating Kafka topic {topic} failed: {code}"
                )));
            }
        }
    }
    Ok(())
}

/// A consumer in `group_id` subscribed to `topics`. Offsets are committed only by the
/// caller (after handling), and a new group starts from the earliest offset so events
/// published before the first start are not skipped.
pub fn consumer(
    kafka: impl Into<KafkaConfig>,
    group_id: &str,
    topics: &[&str],
) -> Result<StreamConsumer, Error> {
    let consumer: StreamConsumer = client_config(kafka)
        .set("group.id", group_id)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "10000")
        .create()?;
    consumer.subscribe(topics)?;
    Ok(consumer)
}

/// `/readyz` check: the broker answers a metadata request. A start-up gate only: events go
/// through the outbox (or wait in the topic for consumers), so a broker outage delays them
/// without stopping the service from answering.
pub struct KafkaReadiness {
    producer: FutureProducer,
}

impl KafkaReadiness {
    /// Checks through `producer`'s connections (clone the service's producer).
    pub fn new(producer: FutureProducer) -> Self {
        Self { producer }
    }
}

#[async_trait::async_trait]
impl ReadinessCheck for KafkaReadiness {
    fn name(&self) -> &str {
        "kafka"
    }

    fn gate(&self) -> Gate {
        Gate::StartUp
    }

    async fn check(&self) -> Result<(), String> {
        let producer = self.producer.clone();
        // fetch_metadata blocks: keep it off the async workers.
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(None, Duration::from_millis(1500))
                .map(|_| ())
                .map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())?
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| map.get(name).cloned()
    }

    /// A CA certificate file for `KAFKA_SSL_CA_LOCATION` (its CA is dropped, the file stays).
    fn ca_file() -> String {
        let ca = crate::testing::tls::TestCa::new("kafka test CA");
        let path = std::env::temp_dir().join(format!("kafka-ca-{}.pem", uuid::Uuid::new_v4()));
        std::fs::copy(ca.ca_file(), &path).unwrap();
        path.display().to_string()
    }

    fn properties(pairs: &[(&str, &str)]) -> Properties {
        KafkaConfig::from_lookup(&vars(pairs), "127.0.0.1:9092")
            .unwrap_or_else(|e| panic!("{pairs:?}: {e}"))
            .properties()
    }

    /// librdkafka properties, as [`KafkaConfig::properties`] gives them.
    type Properties = Vec<(&'static str, String)>;

    fn owned(pairs: &[(&'static str, &str)]) -> Properties {
        pairs.iter().map(|(k, v)| (*k, (*v).to_owned())).collect()
    }

    #[test]
    fn each_protocol_makes_the_librdkafka_properties_it_needs() {
        let ca = ca_file();
        let cases: Vec<(Vec<(&str, &str)>, Properties)> = vec![
            (
                vec![],
                owned(&[
                    ("bootstrap.servers", "127.0.0.1:9092"),
                    ("security.protocol", "plaintext"),
                ]),
            ),
            (
                vec![
                    ("KAFKA_BROKERS", "k1:9093,k2:9093"),
                    ("KAFKA_SECURITY_PROTOCOL", "SSL"),
                ],
                owned(&[
                    ("bootstrap.servers", "k1:9093,k2:9093"),
                    ("security.protocol", "ssl"),
                    ("ssl.endpoint.identification.algorithm", "https"),
                ]),
            ),
            (
                vec![
                    ("KAFKA_SECURITY_PROTOCOL", "ssl"),
                    ("KAFKA_SSL_CA_LOCATION", &ca),
                ],
                owned(&[
                    ("bootstrap.servers", "127.0.0.1:9092"),
                    ("security.protocol", "ssl"),
                    ("ssl.endpoint.identification.algorithm", "https"),
                    ("ssl.ca.location", &ca),
                ]),
            ),
            (
                vec![
                    ("KAFKA_SECURITY_PROTOCOL", "sasl_ssl"),
                    ("KAFKA_SSL_CA_LOCATION", &ca),
                    ("KAFKA_SASL_MECHANISM", "scram-sha-512"),
                    ("KAFKA_SASL_USERNAME", "messenger"),
                    ("KAFKA_SASL_PASSWORD", "hunter2"),
                ],
                owned(&[
                    ("bootstrap.servers", "127.0.0.1:9092"),
                    ("security.protocol", "sasl_ssl"),
                    ("ssl.endpoint.identification.algorithm", "https"),
                    ("ssl.ca.location", &ca),
                    ("sasl.mechanism", "SCRAM-SHA-512"),
                    ("sasl.username", "messenger"),
                    ("sasl.password", "hunter2"),
                ]),
            ),
            (
                vec![
                    ("KAFKA_SECURITY_PROTOCOL", "sasl_plaintext"),
                    ("KAFKA_SASL_MECHANISM", "SCRAM-SHA-256"),
                    ("KAFKA_SASL_USERNAME", "messenger"),
                    ("KAFKA_SASL_PASSWORD", "hunter2"),
                ],
                owned(&[
                    ("bootstrap.servers", "127.0.0.1:9092"),
                    ("security.protocol", "sasl_plaintext"),
                    ("sasl.mechanism", "SCRAM-SHA-256"),
                    ("sasl.username", "messenger"),
                    ("sasl.password", "hunter2"),
                ]),
            ),
            (
                vec![
                    ("KAFKA_SECURITY_PROTOCOL", "sasl_ssl"),
                    ("KAFKA_SASL_MECHANISM", "PLAIN"),
                    ("KAFKA_SASL_USERNAME", "messenger"),
                    ("KAFKA_SASL_PASSWORD", "hunter2"),
                ],
                owned(&[
                    ("bootstrap.servers", "127.0.0.1:9092"),
                    ("security.protocol", "sasl_ssl"),
                    ("ssl.endpoint.identification.algorithm", "https"),
                    ("sasl.mechanism", "PLAIN"),
                    ("sasl.username", "messenger"),
                    ("sasl.password", "hunter2"),
                ]),
            ),
        ];
        for (pairs, expected) in cases {
            assert_eq!(properties(&pairs), expected, "{pairs:?}");
        }
    }

    #[test]
    fn combinations_that_cannot_work_are_refused_naming_the_variable() {
        let ca = ca_file();
        let sasl = [
            ("KAFKA_SASL_MECHANISM", "SCRAM-SHA-512"),
            ("KAFKA_SASL_USERNAME", "messenger"),
            ("KAFKA_SASL_PASSWORD", "hunter2"),
        ];
        let with = |extra: &[(&'static str, &'static str)], base: &[(&'static str, &str)]| {
            let mut all: Vec<(&str, String)> =
                base.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
            all.extend(extra.iter().map(|(k, v)| (*k, (*v).to_owned())));
            all
        };
        let cases: Vec<(Vec<(&str, String)>, &str)> = vec![
            (
                with(&[("KAFKA_SECURITY_PROTOCOL", "tls")], &[]),
                "KAFKA_SECURITY_PROTOCOL",
            ),
            (
                with(&[], &[("KAFKA_SSL_CA_LOCATION", &ca)]),
                "KAFKA_SSL_CA_LOCATION",
            ),
            (
                with(
                    &[("KAFKA_SECURITY_PROTOCOL", "sasl_plaintext")],
                    &[("KAFKA_SSL_CA_LOCATION", &ca)],
                ),
                "KAFKA_SSL_CA_LOCATION",
            ),
            (
                with(
                    &[("KAFKA_SECURITY_PROTOCOL", "ssl")],
                    &[("KAFKA_SSL_CA_LOCATION", "/nonexistent/ca.pem")],
                ),
                "KAFKA_SSL_CA_LOCATION",
            ),
            (with(&sasl[..1], &[]), "KAFKA_SASL_MECHANISM"),
            (
                with(&[("KAFKA_SECURITY_PROTOCOL", "ssl")], &[sasl[2]]),
                "KAFKA_SASL_PASSWORD",
            ),
            (
                with(&[("KAFKA_SECURITY_PROTOCOL", "sasl_ssl")], &[]),
                "KAFKA_SASL_MECHANISM",
            ),
            (
                with(&[("KAFKA_SECURITY_PROTOCOL", "sasl_ssl")], &sasl[..1]),
                "KAFKA_SASL_USERNAME",
            ),
            (
                with(&[("KAFKA_SECURITY_PROTOCOL", "sasl_ssl")], &sasl[..2]),
                "KAFKA_SASL_PASSWORD",
            ),
            (
                with(
                    &[
                        ("KAFKA_SECURITY_PROTOCOL", "sasl_ssl"),
                        ("KAFKA_SASL_MECHANISM", "GSSAPI"),
                    ],
                    &sasl[1..],
                ),
                "KAFKA_SASL_MECHANISM",
            ),
            (
                with(
                    &[
                        ("KAFKA_SECURITY_PROTOCOL", "sasl_plaintext"),
                        ("KAFKA_SASL_MECHANISM", "PLAIN"),
                    ],
                    &sasl[1..],
                ),
                "KAFKA_SASL_MECHANISM",
            ),
        ];
        for (pairs, variable) in cases {
            let pairs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let error = KafkaConfig::from_lookup(&vars(&pairs), "127.0.0.1:9092")
                .expect_err(&format!("{pairs:?} must be refused"));
            assert_eq!(error.variable(), variable, "{pairs:?}: {error}");
            assert!(
                !error.to_string().contains("hunter2"),
                "the password is never shown: {error}"
            );
        }
    }

    #[test]
    fn the_password_never_shows_in_debug_output() {
        let config = KafkaConfig::from_lookup(
            &vars(&[
                ("KAFKA_SECURITY_PROTOCOL", "sasl_plaintext"),
                ("KAFKA_SASL_MECHANISM", "SCRAM-SHA-256"),
                ("KAFKA_SASL_USERNAME", "messenger"),
                ("KAFKA_SASL_PASSWORD", "hunter2"),
            ]),
            "127.0.0.1:9092",
        )
        .unwrap();
        let shown = format!("{config:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("messenger"), "{shown}");
    }

    #[test]
    fn a_plain_broker_list_converts_into_a_config_without_tls_or_sasl() {
        let config = KafkaConfig::from("k1:9092");
        assert_eq!(config, KafkaConfig::plaintext("k1:9092"));
        assert_eq!(config.protocol, SecurityProtocol::Plaintext);
        assert!(config.sasl.is_none() && config.ca_location.is_none());
    }
}
