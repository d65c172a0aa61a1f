//! `make bench` (or `cargo bench -p messenger-auth --bench rpc` with the test components
//! up): the auth service on real PostgreSQL, Redis and Kafka, called over gRPC on
//! loopback. `ValidateToken` runs on every API request, so it must stay a Redis lookup;
//! `Login` is dominated by one argon2id verification (m=19 MiB, t=2, p=1) by design.
//! Prints one line per figure; the numbers are in docs/benchmarks.md.

use std::time::{Duration, Instant};

use messenger_auth::config::StoreConfig;
use messenger_auth::{Config, Listeners, run};
use messenger_common::Shutdown;
use messenger_common::testing::{
    LatencySummary, SignedAs, TestDatabase, kafka_brokers, redis_url, unique_prefix,
};
use messenger_proto::v1::auth_service_client::AuthServiceClient;
use messenger_proto::v1::{LoginRequest, RegisterRequest, ValidateTokenRequest};
use tokio::net::TcpListener;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

const PASSWORD: &str = "correct horse battery";

/// Signed as the gateway signs its calls (the assertion costs one HMAC per call).
type AuthClient = AuthServiceClient<InterceptedService<Channel, SignedAs>>;

async fn validate(client: &mut AuthClient, token: &str) {
    client
        .validate_token(ValidateTokenRequest {
            access_token: token.to_owned(),
        })
        .await
        .expect("ValidateToken");
}

fn main() {
    // `cargo test --benches` runs this without `--bench`: keep that run short.
    let quick = !std::env::args().any(|a| a == "--bench");
    let (validations, logins, concurrency) = if quick { (20, 2, 2) } else { (5000, 40, 16) };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let database = TestDatabase::create().await;
        let config = Config::new(
            StoreConfig::Real {
                database_url: database.url().into(),
                redis_url: redis_url().into(),
                redis_prefix: unique_prefix(),
            },
            messenger_common::events::EventsConfig::kafka(kafka_brokers()),
            messenger_common::testing::test_key(),
        );
        let grpc = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let admin = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = grpc.local_addr().expect("address");
        let shutdown = Shutdown::new();
        let server = tokio::spawn(run(config, Listeners { grpc, admin }, shutdown.clone()));
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
            .expect("endpoint")
            .connect_lazy();
        let mut client = AuthServiceClient::with_interceptor(channel, SignedAs::service("gateway"));
        let deadline = Instant::now() + Duration::from_secs(30);
        while client
            .register(RegisterRequest {
                email: "bench@example.com".into(),
                password: PASSWORD.into(),
                nickname: "bench".into(),
            })
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "auth did not serve within 30 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let login_client = client.clone();
        let login = || {
            let mut client = login_client.clone();
            async move {
                client
                    .login(LoginRequest {
                        email: "bench@example.com".into(),
                        password: PASSWORD.into(),
                    })
                    .await
                    .expect("Login")
                    .into_inner()
                    .access_token
            }
        };
        let token = login().await;

        for _ in 0..(validations / 10).max(1) {
            validate(&mut client, &token).await;
        }
        let mut samples = Vec::with_capacity(validations);
        for _ in 0..validations {
            let started = Instant::now();
            validate(&mut client, &token).await;
            samples.push(started.elapsed());
        }
        let sequential = LatencySummary::of(samples).expect("samples");

        let per_task = validations / concurrency;
        let started = Instant::now();
        let tasks: Vec<_> = (0..concurrency)
            .map(|_| {
                let (mut client, token) = (client.clone(), token.clone());
                tokio::spawn(async move {
                    for _ in 0..per_task {
                        validate(&mut client, &token).await;
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("validation task");
        }
        let concurrent_rate = (per_task * concurrency) as f64 / started.elapsed().as_secs_f64();

        let mut samples = Vec::with_capacity(logins);
        for _ in 0..logins {
            let started = Instant::now();
            login().await;
            samples.push(started.elapsed());
        }
        let login_summary = LatencySummary::of(samples).expect("samples");

        println!(
            "machine: {} logical CPUs",
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
        println!("ValidateToken, one caller: {sequential}");
        println!("ValidateToken, {concurrency} callers: {concurrent_rate:.0} calls/s");
        println!("Login (argon2id verify + token write): {login_summary}");

        shutdown.trigger();
        let _ = server.await;
    });
}
