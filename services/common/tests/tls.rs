//! Every backend over TLS, against the real servers configured for it with a CA made by
//! the test: PostgreSQL (`sslmode=require`/`verify-ca`/`verify-full`), Redis
//! (`rediss://` + `REDIS_TLS_CA_FILE`), gRPC between services (`GRPC_TLS_*`), and Kafka
//! with SASL SCRAM (tansu with `--authentication`) and TLS (see `kafka_over_tls_*` for
//! what tansu cannot do itself).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use messenger_common::config::ConfigError;
use messenger_common::events::{EventPublisher, KafkaPublisher, new_event};
use messenger_common::grpc::{GrpcServer, GrpcTls, connect_channel_with_tls};
use messenger_common::kafka::{self, KafkaConfig};
use messenger_common::redis::{LazyConnection, RedisConfig};
use messenger_common::testing::tls::{TestCa, TlsPostgres, TlsProxy, TlsRedis};
use messenger_common::testing::{TansuBroker, free_port, unique_name, wait_for_event};
use messenger_common::{Metrics, Shutdown, postgres};
use messenger_proto::v1::UserRegistered;
use messenger_proto::v1::event::Payload;
use rdkafka::producer::Producer as _;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

fn lookup(pairs: &[(&str, String)]) -> impl Fn(&str) -> Option<String> + use<> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect();
    move |name| map.get(name).cloned()
}

fn path(file: &std::path::Path) -> String {
    file.display().to_string()
}

/// Whether the session this pool's connection runs in is encrypted, as the server sees it.
async fn server_sees_tls(pool: &sqlx::PgPool) -> bool {
    sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(pool)
        .await
        .expect("pg_stat_ssl answers")
}

fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[tokio::test]
async fn postgres_connects_over_tls_with_require_verify_ca_and_verify_full() {
    let ca = TestCa::new("messenger test CA");
    let postgres = TlsPostgres::start(&ca.issue("postgres", &["localhost"]));
    let root = path(&ca.ca_file());

    // require: encrypted, certificate not checked (so the IP address is fine).
    let url = postgres.url("127.0.0.1", "postgres", "sslmode=require");
    let pool = postgres::connect(&url)
        .await
        .expect("sslmode=require connects");
    assert!(server_sees_tls(&pool).await, "require encrypts");

    // verify-ca: the CA is checked. (libpq would not check the host name here; sqlx with
    // this rustls does — stricter, see the README.)
    let url = postgres.url(
        "localhost",
        "postgres",
        &format!("sslmode=verify-ca&sslrootcert={root}"),
    );
    let pool = postgres::connect(&url).await.expect("verify-ca connects");
    assert!(server_sees_tls(&pool).await);

    // verify-full with the right CA and host name; the database is created on first use
    // through the maintenance database, over TLS too.
    let database = unique_name("tls").replace(['.', '-'], "_");
    let url = postgres.url(
        "localhost",
        &database,
        &format!("sslmode=verify-full&sslrootcert={root}"),
    );
    let pool = postgres::connect(&url).await.expect("verify-full connects");
    assert!(server_sees_tls(&pool).await);
    let name: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(name, database);
    postgres::migrate_common(&pool)
        .await
        .expect("migrations run over TLS");
}

#[tokio::test]
async fn postgres_verify_full_refuses_a_wrong_ca_or_host_name_and_plain_connections_fail() {
    let ca = TestCa::new("messenger test CA");
    let stranger = TestCa::new("someone else's CA");
    let postgres = TlsPostgres::start(&ca.issue("postgres", &["localhost"]));

    let wrong_ca = postgres.url(
        "localhost",
        "postgres",
        &format!(
            "sslmode=verify-full&sslrootcert={}",
            path(&stranger.ca_file())
        ),
    );
    let error = postgres::connect(&wrong_ca)
        .await
        .expect_err("a certificate from an unknown CA is refused");
    let message = chain(&error);
    println!("verify-full with the wrong CA: {message}");
    assert!(message.contains("UnknownIssuer"), "{message}");

    // The certificate names localhost, not 127.0.0.1.
    let wrong_host = postgres.url(
        "127.0.0.1",
        "postgres",
        &format!("sslmode=verify-full&sslrootcert={}", path(&ca.ca_file())),
    );
    let error = postgres::connect(&wrong_host)
        .await
        .expect_err("a certificate for another host name is refused");
    let message = chain(&error);
    println!("verify-full with the wrong host name: {message}");
    assert!(message.contains("not valid for name"), "{message}");

    // The server takes TLS only: a plain connection finds no pg_hba.conf entry.
    let plain = postgres.url("127.0.0.1", "postgres", "sslmode=disable");
    let error = postgres::connect(&plain)
        .await
        .expect_err("a plain connection to a TLS-only server fails");
    let message = chain(&error);
    println!("plain connection: {message}");
    assert!(message.contains("no encryption"), "{message}");

    // A root certificate that is not there is a configuration error before connecting.
    let missing = postgres.url(
        "localhost",
        "postgres",
        "sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
    );
    match postgres::connect(&missing).await {
        Err(messenger_common::Error::Config(error)) => {
            assert_eq!(error.variable(), "DATABASE_URL");
            assert!(!error.to_string().contains(TLS_PASSWORD), "{error}");
        }
        other => panic!("expected a configuration error, got {other:?}"),
    }
}

const TLS_PASSWORD: &str = messenger_common::testing::tls::TLS_POSTGRES_PASSWORD;

#[tokio::test]
async fn redis_over_tls_works_with_the_configured_ca_and_refuses_others() {
    let ca = TestCa::new("messenger test CA");
    let stranger = TestCa::new("someone else's CA");
    let redis = TlsRedis::start(&ca.issue("redis", &["localhost"]), &ca.ca_file());

    let trusted = RedisConfig::new(redis.url("rediss", "localhost"), Some(ca.ca_file()));
    let mut connection = messenger_common::redis::connect(&trusted)
        .await
        .expect("rediss:// with the right CA connects");
    let key = unique_name("tls-key");
    let _: () = ::redis::cmd("SET")
        .arg(&key)
        .arg("over tls")
        .query_async(&mut connection)
        .await
        .unwrap();
    let value: String = ::redis::cmd("GET")
        .arg(&key)
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(value, "over tls");

    // The cache connection the services use, over TLS too.
    let lazy = LazyConnection::new(&trusted).unwrap();
    let mut cached = lazy
        .get()
        .await
        .expect("the lazy connection connects over TLS");
    let value: String = ::redis::cmd("GET")
        .arg(&key)
        .query_async(&mut cached)
        .await
        .unwrap();
    assert_eq!(value, "over tls");

    let wrong_ca = RedisConfig::new(redis.url("rediss", "localhost"), Some(stranger.ca_file()));
    let error = messenger_common::redis::connect(&wrong_ca)
        .await
        .expect_err("a certificate from an unknown CA is refused");
    println!("rediss:// with the wrong CA: {}", chain(&error));
    assert!(chain(&error).contains("UnknownIssuer"), "{}", chain(&error));

    let wrong_host = RedisConfig::new(redis.url("rediss", "127.0.0.1"), Some(ca.ca_file()));
    let error = messenger_common::redis::connect(&wrong_host)
        .await
        .expect_err("a certificate for another host name is refused");
    println!("rediss:// with the wrong host name: {}", chain(&error));
    assert!(
        chain(&error).contains("not valid for name"),
        "{}",
        chain(&error)
    );

    let error = messenger_common::redis::connect(redis.url("redis", "localhost"))
        .await
        .expect_err("a plain connection to a TLS-only Redis fails");
    println!("plain redis:// to the TLS port: {}", chain(&error));

    // A CA with a plain URL is a configuration mistake, refused before connecting.
    let mismatched = RedisConfig::new(redis.url("redis", "localhost"), Some(ca.ca_file()));
    match LazyConnection::new(&mismatched) {
        Err(messenger_common::Error::Config(error)) => {
            assert_eq!(error.variable(), "REDIS_TLS_CA_FILE");
            assert!(error.to_string().contains("rediss://"), "{error}");
        }
        Err(other) => panic!("expected a configuration error, got {other}"),
        Ok(_) => panic!("a CA with a redis:// URL must be refused"),
    }
}

/// A gRPC server with `tls`, serving only the health service; its address and shutdown.
async fn grpc_server(tls: &GrpcTls) -> (SocketAddr, Shutdown) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = Shutdown::new();
    let server = GrpcServer::new(&Metrics::new()).tls(tls);
    tokio::spawn(server.serve_with_listener(listener, shutdown.clone()));
    (addr, shutdown)
}

async fn health(url: &str, tls: &GrpcTls) -> Result<i32, tonic::Status> {
    let channel = connect_channel_with_tls(url, Duration::from_secs(5), tls)
        .map_err(|e| tonic::Status::internal(e.to_string()))?;
    HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
        .map(|response| response.into_inner().status)
}

fn status_text(status: &tonic::Status) -> String {
    use std::error::Error as _;
    let mut text = status.message().to_owned();
    let mut source = status.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[tokio::test]
async fn grpc_between_services_runs_over_tls_when_certificates_are_configured() {
    let ca = TestCa::new("messenger test CA");
    let stranger = TestCa::new("someone else's CA");
    let cert = ca.issue("users", &["localhost"]);
    let server_tls = GrpcTls::from_lookup(&lookup(&[
        ("GRPC_TLS_CERT_FILE", path(&cert.cert_file)),
        ("GRPC_TLS_KEY_FILE", path(&cert.key_file)),
    ]))
    .expect("a certificate and key make a TLS server");
    let (addr, shutdown) = grpc_server(&server_tls).await;
    let port = addr.port();
    let client_tls =
        GrpcTls::client_from_lookup(&lookup(&[("GRPC_TLS_CA_FILE", path(&ca.ca_file()))])).unwrap();

    let serving = health(&format!("https://localhost:{port}"), &client_tls)
        .await
        .expect("a client trusting the CA is served over TLS");
    assert_eq!(serving, 1, "SERVING");

    let wrong_ca = GrpcTls {
        ca_file: Some(stranger.ca_file()),
        ..GrpcTls::default()
    };
    let status = health(&format!("https://localhost:{port}"), &wrong_ca)
        .await
        .expect_err("a server certificate from an unknown CA is refused");
    println!("gRPC with the wrong CA: {}", status_text(&status));
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert!(
        status_text(&status).contains("UnknownIssuer"),
        "{}",
        status_text(&status)
    );

    let status = health(&format!("https://127.0.0.1:{port}"), &client_tls)
        .await
        .expect_err("a certificate for another host name is refused");
    println!("gRPC with the wrong host name: {}", status_text(&status));
    assert!(
        status_text(&status).contains("not valid for name"),
        "{}",
        status_text(&status)
    );

    let status = health(&format!("http://localhost:{port}"), &GrpcTls::default())
        .await
        .expect_err("a plain client cannot talk to a TLS-only server");
    println!("plain gRPC to the TLS server: {}", status_text(&status));

    // A CA configured but a plain peer URL: refused before any call, naming the variable.
    let error = connect_channel_with_tls(
        &format!("http://localhost:{port}"),
        Duration::from_secs(1),
        &client_tls,
    )
    .expect_err("an http:// peer with GRPC_TLS_CA_FILE set is refused");
    let message = error.to_string();
    assert!(message.contains("GRPC_TLS_CA_FILE"), "{message}");
    assert!(message.contains("http://localhost"), "{message}");
    shutdown.trigger();
}

#[test]
fn grpc_tls_settings_that_cannot_work_are_refused_naming_the_variable() {
    let ca = TestCa::new("messenger test CA");
    let cert = ca.issue("users", &["localhost"]);
    let other = ca.issue("other", &["localhost"]);
    let garbage = ca.dir().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate").unwrap();
    let cases: Vec<(Vec<(&str, String)>, &str)> = vec![
        (
            vec![("GRPC_TLS_CERT_FILE", path(&cert.cert_file))],
            "GRPC_TLS_KEY_FILE",
        ),
        (
            vec![("GRPC_TLS_KEY_FILE", path(&cert.key_file))],
            "GRPC_TLS_CERT_FILE",
        ),
        (
            vec![
                ("GRPC_TLS_CERT_FILE", "/nonexistent/cert.pem".into()),
                ("GRPC_TLS_KEY_FILE", path(&cert.key_file)),
            ],
            "GRPC_TLS_CERT_FILE",
        ),
        (
            vec![
                ("GRPC_TLS_CERT_FILE", path(&garbage)),
                ("GRPC_TLS_KEY_FILE", path(&cert.key_file)),
            ],
            "GRPC_TLS_CERT_FILE",
        ),
        (
            vec![
                ("GRPC_TLS_CERT_FILE", path(&cert.cert_file)),
                ("GRPC_TLS_KEY_FILE", path(&other.key_file)),
            ],
            "GRPC_TLS_CERT_FILE",
        ),
        (
            vec![("GRPC_TLS_CA_FILE", "/nonexistent/ca.pem".into())],
            "GRPC_TLS_CA_FILE",
        ),
        (
            vec![("GRPC_TLS_CA_FILE", path(&garbage))],
            "GRPC_TLS_CA_FILE",
        ),
    ];
    for (vars, variable) in cases {
        let error: ConfigError =
            GrpcTls::from_lookup(&lookup(&vars)).expect_err(&format!("{vars:?} is refused"));
        assert_eq!(error.variable(), variable, "{vars:?}: {error}");
        println!("{vars:?}: {error}");
    }
}

/// A tansu broker on sqlite storage with SCRAM users `messenger` (SHA-512) and `legacy`
/// (SHA-256), restarted to require authentication, advertising `advertised` if given.
fn sasl_broker(port: u16, advertised: Option<&str>) -> TansuBroker {
    let mut broker = TansuBroker::start(port);
    broker.create_scram_user("messenger", "s3cret-512", "scram512");
    broker.create_scram_user("legacy", "s3cret-256", "scram256");
    broker.stop();
    broker.require_authentication(true);
    if let Some(url) = advertised {
        broker.advertise(url);
    }
    broker.restart();
    broker
}

fn sasl(brokers: &str, protocol: &str, mechanism: &str, user: &str, password: &str) -> KafkaConfig {
    let mut vars = vec![
        ("KAFKA_BROKERS", brokers.to_owned()),
        ("KAFKA_SECURITY_PROTOCOL", protocol.to_owned()),
        ("KAFKA_SASL_MECHANISM", mechanism.to_owned()),
        ("KAFKA_SASL_USERNAME", user.to_owned()),
        ("KAFKA_SASL_PASSWORD", password.to_owned()),
    ];
    vars.retain(|(_, value)| !value.is_empty());
    KafkaConfig::from_lookup(&lookup(&vars), "unused:9092").expect("valid SASL settings")
}

fn registration(nickname: &str) -> messenger_common::events::Event {
    new_event(Payload::UserRegistered(UserRegistered {
        user_id: uuid::Uuid::now_v7().to_string(),
        nickname: nickname.to_owned(),
    }))
}

/// Publishes one event through `kafka` and reads it back through `kafka`.
async fn round_trip(kafka: &KafkaConfig) {
    let topic = unique_name("tls-events");
    kafka::ensure_topics(kafka, &[&topic])
        .await
        .unwrap_or_else(|e| panic!("creating {topic} through {kafka:?}: {e}"));
    let nickname = unique_name("over-sasl");
    let publisher = KafkaPublisher::connect(kafka).unwrap();
    publisher
        .publish(&topic, "key", &registration(&nickname))
        .await
        .unwrap_or_else(|e| panic!("publishing through {kafka:?}: {e}"));
    let received = wait_for_event(
        kafka,
        &topic,
        |event| {
            matches!(&event.payload, Some(Payload::UserRegistered(u)) if u.nickname == nickname)
        },
        Duration::from_secs(20),
    )
    .await;
    assert!(received.is_some(), "the event came back through {kafka:?}");
}

/// Records what librdkafka reports (the services log the same through `log`).
#[derive(Default)]
struct RecordedErrors(std::sync::Mutex<Vec<String>>);

impl rdkafka::ClientContext for RecordedErrors {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        self.0.lock().unwrap().push(format!("{error}: {reason}"));
    }

    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
        if (level as i32) <= (rdkafka::config::RDKafkaLogLevel::Warning as i32) {
            self.0
                .lock()
                .unwrap()
                .push(format!("{facility}: {message}"));
        }
    }
}

impl rdkafka::producer::ProducerContext for RecordedErrors {
    type DeliveryOpaque = ();

    fn delivery(&self, _: &rdkafka::producer::DeliveryResult<'_>, _: ()) {}
}

/// Whether a client with `kafka`'s settings gets the broker's metadata; the error holds
/// what librdkafka reported on the way.
async fn reaches_broker(kafka: &KafkaConfig) -> Result<(), String> {
    let client: rdkafka::producer::BaseProducer<RecordedErrors> = kafka::client_config(kafka)
        .create_with_context(RecordedErrors::default())
        .map_err(|e| e.to_string())?;
    tokio::task::spawn_blocking(move || {
        let result = client.client().fetch_metadata(None, Duration::from_secs(5));
        client.poll(Duration::from_millis(200));
        let mut reported = client.context().0.lock().unwrap().clone();
        reported.dedup();
        let reported = reported.join("; ");
        result
            .map(|_| ())
            .map_err(|e| format!("{e}; reported: {reported}"))
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn kafka_with_sasl_scram_publishes_and_consumes_and_refuses_bad_credentials() {
    let broker = sasl_broker(free_port(), None);
    let brokers = broker.brokers();

    round_trip(&sasl(
        &brokers,
        "sasl_plaintext",
        "SCRAM-SHA-512",
        "messenger",
        "s3cret-512",
    ))
    .await;
    round_trip(&sasl(
        &brokers,
        "sasl_plaintext",
        "SCRAM-SHA-256",
        "legacy",
        "s3cret-256",
    ))
    .await;

    let wrong_password = sasl(
        &brokers,
        "sasl_plaintext",
        "SCRAM-SHA-512",
        "messenger",
        "guessed",
    );
    let error = reaches_broker(&wrong_password)
        .await
        .expect_err("a wrong password is refused");
    println!("SASL with a wrong password: {error}");
    assert!(error.contains("SASL authentication error"), "{error}");
    assert!(
        !error.contains("guessed"),
        "the password is not reported: {error}"
    );

    let unknown_user = sasl(
        &brokers,
        "sasl_plaintext",
        "SCRAM-SHA-512",
        "mallory",
        "s3cret-512",
    );
    let error = reaches_broker(&unknown_user)
        .await
        .expect_err("an unknown user is refused");
    println!("SASL with an unknown user: {error}");
    assert!(error.contains("SASL authentication error"), "{error}");

    let error = reaches_broker(&KafkaConfig::plaintext(brokers.clone()))
        .await
        .expect_err("a client without SASL is refused");
    println!("no SASL: {error}");
}

#[tokio::test]
async fn kafka_over_tls_with_sasl_works_through_a_tls_endpoint_and_checks_the_certificate() {
    println!(
        "NOTE: tansu 0.6 (the local Kafka-protocol broker) cannot serve TLS: it accepts \
         --cert/--key but never uses them and serves plain TCP. TLS is terminated here by \
         the test's own proxy in front of it, so the client side (librdkafka with OpenSSL: \
         CA, host name check, SASL_SSL) is tested against a real TLS endpoint; the broker's \
         own TLS is not."
    );
    let ca = TestCa::new("messenger test CA");
    let stranger = TestCa::new("someone else's CA");
    let tansu_port = free_port();
    let proxy = TlsProxy::start(
        &ca.issue("kafka", &["localhost"]),
        SocketAddr::from(([127, 0, 0, 1], tansu_port)),
    );
    let _broker = sasl_broker(
        tansu_port,
        Some(&format!("tcp://localhost:{}", proxy.port())),
    );
    let brokers = format!("localhost:{}", proxy.port());
    let with = |ca_file: &std::path::Path, host_brokers: &str| {
        KafkaConfig::from_lookup(
            &lookup(&[
                ("KAFKA_BROKERS", host_brokers.to_owned()),
                ("KAFKA_SECURITY_PROTOCOL", "SASL_SSL".into()),
                ("KAFKA_SSL_CA_LOCATION", path(ca_file)),
                ("KAFKA_SASL_MECHANISM", "SCRAM-SHA-512".into()),
                ("KAFKA_SASL_USERNAME", "messenger".into()),
                ("KAFKA_SASL_PASSWORD", "s3cret-512".into()),
            ]),
            "unused:9092",
        )
        .unwrap()
    };

    round_trip(&with(&ca.ca_file(), &brokers)).await;

    let error = reaches_broker(&with(&stranger.ca_file(), &brokers))
        .await
        .expect_err("a certificate from an unknown CA is refused");
    println!("SASL_SSL with the wrong CA: {error}");
    assert!(error.contains("certificate verify failed"), "{error}");

    let error = reaches_broker(&KafkaConfig::plaintext(brokers.clone()))
        .await
        .expect_err("a plain client cannot talk to the TLS endpoint");
    println!("plaintext to the TLS endpoint: {error}");
}
