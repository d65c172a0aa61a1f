//! A real Redis outage at run time: the service keeps answering from PostgreSQL, lists stay
//! correct on both sides, and the cache is used again once Redis is back. Uses a private
//! `redis-server` process (installed with the test dependencies) that the test can kill.

mod support;

use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use messenger_common::Shutdown;
use messenger_common::testing::{self, TestDatabase};
use messenger_friends::directory::InMemoryUserDirectory;
use messenger_proto::v1::RequestDirection;
use support::{Person, TestService, friend, request};

/// A throw-away redis-server on 127.0.0.1:`port`, killed on drop.
struct PrivateRedis {
    port: u16,
    child: Option<Child>,
}

impl PrivateRedis {
    /// A handle for `port` with no server running yet.
    fn stopped(port: u16) -> Self {
        PrivateRedis { port, child: None }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn restart(&mut self) {
        let binary = std::env::var("REDIS_SERVER_BIN").unwrap_or_else(|_| "redis-server".into());
        let child = Command::new(&binary)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {binary} (set REDIS_SERVER_BIN): {e}"));
        self.child = Some(child);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not listen on {addr}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Reads `alice`'s friends until her entry shows up in Redis (the service reconnected),
/// checking the answer every time.
async fn wait_until_cached(
    service: &TestService,
    redis: &PrivateRedis,
    alice: &Person,
    expected: &[(String, String)],
) {
    let key = format!(
        "{}rel:{}:friends:50:",
        service.config.redis_prefix, alice.id
    );
    let client = redis::Client::open(redis.url()).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        assert_eq!(service.friends(alice).await, expected);
        let cached: Option<String> = redis::cmd("GET")
            .arg(&key)
            .query_async(&mut connection)
            .await
            .unwrap();
        if cached.is_some() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the cache is used once Redis is up"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn lists_stay_correct_while_redis_is_down_and_the_cache_returns_with_it() {
    // Redis is down when the service starts: it must start and serve anyway.
    let mut redis = PrivateRedis::stopped(testing::free_port());
    let database = TestDatabase::create().await;
    let mut config = support::test_config(&database, testing::kafka_brokers());
    config.redis_url = redis.url().into();
    let directory = Arc::new(InMemoryUserDirectory::new());
    let (listeners, grpc_addr, admin_addr) = support::bind().await;
    let shutdown = Shutdown::new();
    let server = tokio::spawn(messenger_friends::run_with_directory(
        config.clone(),
        directory.clone(),
        listeners,
        shutdown.clone(),
    ));
    let service = TestService {
        client: support::connect(grpc_addr).await,
        directory,
        database,
        config,
        shutdown,
        server,
        admin_addr,
    };
    let (alice, bob) = (service.person("alice"), service.person("bob"));
    service
        .send(&alice, &bob.nickname)
        .await
        .expect("changes work before Redis is up");
    assert_eq!(
        service.requests(&bob, RequestDirection::Incoming).await,
        vec![request(&alice, &bob)]
    );

    redis.restart();
    wait_until_cached(&service, &redis, &alice, &[]).await;

    // Redis goes away with entries cached: changes and reads keep working from the database.
    redis.stop();
    service
        .accept(&bob, &alice.nickname)
        .await
        .expect("changes work without Redis");
    assert_eq!(service.friends(&alice).await, vec![friend(&bob)]);
    assert_eq!(service.friends(&bob).await, vec![friend(&alice)]);

    // Back again (empty): the cache fills up and every change still shows on both sides.
    redis.restart();
    wait_until_cached(&service, &redis, &alice, &[friend(&bob)]).await;
    service.remove(&bob, &alice.nickname).await.unwrap();
    assert!(service.friends(&alice).await.is_empty());
    assert!(service.friends(&bob).await.is_empty());
    service.stop().await;
}
