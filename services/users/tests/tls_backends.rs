//! The users service end to end over encrypted, authenticated backends, configured only
//! through its environment variables: PostgreSQL with `sslmode=verify-full`, Redis over
//! `rediss://` with `REDIS_TLS_CA_FILE`, Kafka with SASL SCRAM (`KAFKA_SECURITY_PROTOCOL`,
//! `KAFKA_SASL_*`), and its gRPC server on TLS (`GRPC_TLS_CERT_FILE`/`GRPC_TLS_KEY_FILE`),
//! called by a client that trusts `GRPC_TLS_CA_FILE`. All servers are private ones with a
//! CA made by the test, and every one of them refuses plain connections.
//!
//! tansu (the local Kafka-protocol broker) authenticates with SCRAM but cannot serve TLS,
//! so Kafka here is `sasl_plaintext`; `services/common/tests/tls.rs` covers `sasl_ssl`.

use std::collections::HashMap;
use std::time::Duration;

use messenger_common::Shutdown;
use messenger_common::events::{EventPublisher, KafkaPublisher, Payload, new_event};
use messenger_common::grpc::{GrpcTls, connect_channel_with_tls};
use messenger_common::kafka::{self, KafkaConfig};
use messenger_common::redis::RedisConfig;
use messenger_common::testing::tls::{TestCa, TlsPostgres, TlsRedis};
use messenger_common::testing::{self, TansuBroker, free_port, unique_name, wait_until};
use messenger_proto::topics::AUTH_EVENTS;
use messenger_proto::v1::users_service_client::UsersServiceClient;
use messenger_proto::v1::{GetUserProfileRequest, UserRegistered};
use messenger_users::{Config, Listeners};
use tokio::net::TcpListener;
use uuid::Uuid;

#[tokio::test]
async fn users_serves_profiles_over_tls_grpc_from_tls_postgres_redis_and_sasl_kafka() {
    let ca = TestCa::new("messenger test CA");
    let postgres = TlsPostgres::start(&ca.issue("postgres", &["localhost"]));
    let redis = TlsRedis::start(&ca.issue("redis", &["localhost"]), &ca.ca_file());
    let mut broker = TansuBroker::start(free_port());
    broker.create_scram_user("users", "users-s3cret", "scram512");
    broker.stop();
    broker.require_authentication(true);
    broker.restart();
    let grpc_cert = ca.issue("users", &["localhost"]);
    let ca_file = ca.ca_file().display().to_string();
    let redis_prefix = unique_name("users-tls") + ":";

    let env: HashMap<&str, String> = HashMap::from([
        ("INTERNAL_AUTH_KEY", testing::test_key_secret().to_owned()),
        (
            "DATABASE_URL",
            postgres.url(
                "localhost",
                "users_over_tls",
                &format!("sslmode=verify-full&sslrootcert={ca_file}"),
            ),
        ),
        ("REDIS_URL", redis.url("rediss", "localhost")),
        ("REDIS_TLS_CA_FILE", ca_file.clone()),
        ("USERS_REDIS_PREFIX", redis_prefix.clone()),
        // The first cache call also makes the TLS connection: on a busy machine that can
        // take longer than the 250 ms default, and a timed-out cache call pauses the cache.
        ("USERS_CACHE_TIMEOUT", "5s".into()),
        ("KAFKA_BROKERS", broker.brokers()),
        ("KAFKA_SECURITY_PROTOCOL", "sasl_plaintext".into()),
        ("KAFKA_SASL_MECHANISM", "SCRAM-SHA-512".into()),
        ("KAFKA_SASL_USERNAME", "users".into()),
        ("KAFKA_SASL_PASSWORD", "users-s3cret".into()),
        ("USERS_CONSUMER_GROUP", unique_name("users-tls")),
        (
            "GRPC_TLS_CERT_FILE",
            grpc_cert.cert_file.display().to_string(),
        ),
        (
            "GRPC_TLS_KEY_FILE",
            grpc_cert.key_file.display().to_string(),
        ),
    ]);
    let config = Config::from_lookup(|name| env.get(name).cloned())
        .expect("the TLS settings are a valid configuration");
    let shown = format!("{config:?}");
    assert!(
        !shown.contains("users-s3cret") && !shown.contains(testing::tls::TLS_POSTGRES_PASSWORD),
        "no password in the configuration's debug output: {shown}"
    );

    let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = grpc.local_addr().unwrap().port();
    let shutdown = Shutdown::new();
    let task = tokio::spawn(messenger_users::run(
        config,
        Listeners { grpc, admin },
        shutdown.clone(),
    ));

    // A registration arrives through SASL-authenticated Kafka, as auth would publish it.
    let kafka = KafkaConfig::from_lookup(&|name: &str| env.get(name).cloned(), "unused")
        .expect("the same Kafka settings");
    kafka::ensure_topics(&kafka, &[AUTH_EVENTS])
        .await
        .expect("creating the topic through SASL");
    let user_id = Uuid::now_v7();
    let nickname = format!("tls{}", &Uuid::new_v4().simple().to_string()[..8]);
    KafkaPublisher::connect(&kafka)
        .unwrap()
        .publish(
            AUTH_EVENTS,
            &user_id.to_string(),
            &new_event(Payload::UserRegistered(UserRegistered {
                user_id: user_id.to_string(),
                nickname: nickname.clone(),
            })),
        )
        .await
        .expect("publishing through SASL");

    // The profile is served over TLS gRPC (from TLS PostgreSQL, through the TLS cache).
    let client_tls = GrpcTls::client_from_lookup(&|name: &str| {
        (name == "GRPC_TLS_CA_FILE").then(|| ca_file.clone())
    })
    .unwrap();
    let channel = connect_channel_with_tls(
        &format!("https://localhost:{port}"),
        Duration::from_secs(10),
        &client_tls,
    )
    .unwrap();
    let client = UsersServiceClient::new(channel);
    let get = || {
        let mut client = client.clone();
        async move {
            client
                .get_user_profile(testing::as_service(
                    "gateway",
                    GetUserProfileRequest {
                        user_id: user_id.to_string(),
                    },
                ))
                .await
                .map(tonic::Response::into_inner)
        }
    };
    let arrived = wait_until(Duration::from_secs(60), || async {
        get().await.is_ok_and(|p| p.nickname == nickname)
    })
    .await;
    assert!(
        arrived,
        "the profile of {nickname} is served: last answer {:?}",
        get().await
    );

    // It was cached in the TLS Redis under the service's prefix.
    let mut cache = messenger_common::redis::connect(RedisConfig::new(
        redis.url("rediss", "localhost"),
        Some(ca.ca_file()),
    ))
    .await
    .unwrap();
    let cached = wait_until(Duration::from_secs(10), || {
        let mut cache = cache.clone();
        let key = format!("{redis_prefix}profile:{user_id}");
        async move {
            let exists: bool = ::redis::cmd("EXISTS")
                .arg(&key)
                .query_async(&mut cache)
                .await
                .unwrap_or(false);
            exists
        }
    })
    .await;
    let keys: Vec<String> = ::redis::cmd("KEYS")
        .arg(format!("{redis_prefix}*"))
        .query_async(&mut cache)
        .await
        .unwrap();
    assert!(cached, "the profile is cached in Redis: keys {keys:?}");

    // A plain client is not served.
    let plain = connect_channel_with_tls(
        &format!("http://localhost:{port}"),
        Duration::from_secs(5),
        &GrpcTls::default(),
    )
    .unwrap();
    let refused = UsersServiceClient::new(plain)
        .get_user_profile(testing::as_service(
            "gateway",
            GetUserProfileRequest {
                user_id: user_id.to_string(),
            },
        ))
        .await;
    assert!(refused.is_err(), "plain gRPC is refused: {refused:?}");

    shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("the service stops")
        .expect("no panic")
        .expect("the service ran without error");
}
