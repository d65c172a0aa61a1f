//! Test helpers (feature `testing`): a fresh PostgreSQL database per test, unique Redis
//! key prefixes and Kafka names, the shared test broker address, a private tansu broker
//! that tests can stop and start (outage tests), [`wait_for_event`], and signed calls to
//! services that verify callers ([`as_user`], [`as_service`], [`SignedAs`], all with
//! [`test_key`]). [`tls`] has a test CA and private TLS-only servers.
//!
//! Components come from `TEST_DATABASE_URL`, `TEST_REDIS_URL` and `TEST_KAFKA_BROKERS`
//! (local defaults). Helpers panic with a message naming the variable when a component is
//! unreachable: a test must never pass because its component was missing.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use prost::Message as _;
use rdkafka::Message;
use rdkafka::consumer::{Consumer, StreamConsumer};
use sqlx::PgPool;
use sqlx::migrate::Migrator;

use crate::events::Event;
use crate::identity::{self, Caller, InternalKey};
use crate::kafka::KafkaConfig;

pub mod tls;

/// The secret of [`test_key`] as text (random, one per test process), for service
/// processes started with `INTERNAL_AUTH_KEY` in their environment.
pub fn test_key_secret() -> &'static str {
    static SECRET: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SECRET.get_or_init(|| {
        format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        )
    })
}

/// The internal key of this test process: configure services under test with it, and
/// [`as_user`], [`as_service`] and [`SignedAs`] sign with it.
pub fn test_key() -> InternalKey {
    static KEY: std::sync::OnceLock<InternalKey> = std::sync::OnceLock::new();
    KEY.get_or_init(|| InternalKey::new(test_key_secret()).expect("64 characters"))
        .clone()
}

/// A request acting for user `user_id` (a UUID), as the gateway sends it.
pub fn as_user<T>(user_id: impl AsRef<str>, message: T) -> tonic::Request<T> {
    let user_id = user_id.as_ref();
    let id = uuid::Uuid::parse_str(user_id)
        .unwrap_or_else(|_| panic!("as_user needs a user UUID, got {user_id:?}"));
    signed(message, &Caller::User(id))
}

/// A request from service `name` acting for itself (e.g. the gateway validating a token).
pub fn as_service<T>(name: &str, message: T) -> tonic::Request<T> {
    signed(message, &Caller::Service(name.to_owned()))
}

/// `message` with an assertion for `caller` signed with [`test_key`].
pub fn signed<T>(message: T, caller: &Caller) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    identity::attach(&mut request, &test_key(), caller);
    request
}

/// An assertion for `caller` signed with `key` that expired two minutes ago.
pub fn expired_assertion(key: &InternalKey, caller: &Caller) -> String {
    key.sign_until(caller, identity::unix_now() - 120)
        .expect("a carriable caller")
}

/// A client interceptor signing every call for one caller with [`test_key`]:
/// `UsersServiceClient::with_interceptor(channel, SignedAs::service("gateway"))`.
#[derive(Clone, Debug)]
pub struct SignedAs {
    caller: Caller,
    key: InternalKey,
}

impl SignedAs {
    /// Signs for `caller` with [`test_key`].
    pub fn caller(caller: Caller) -> Self {
        Self {
            caller,
            key: test_key(),
        }
    }

    /// Signs for service `name`.
    pub fn service(name: &str) -> Self {
        Self::caller(Caller::Service(name.to_owned()))
    }

    /// Signs for user `id`.
    pub fn user(id: uuid::Uuid) -> Self {
        Self::caller(Caller::User(id))
    }

    /// Signs with `key` instead (e.g. to show another key's assertions are refused).
    pub fn with_key(mut self, key: InternalKey) -> Self {
        self.key = key;
        self
    }
}

impl tonic::service::Interceptor for SignedAs {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        // A request the test signed itself (e.g. with `as_user`) keeps its assertion.
        if request
            .metadata()
            .get(identity::IDENTITY_METADATA)
            .is_none()
        {
            identity::attach(&mut request, &self.key, &self.caller);
        }
        Ok(request)
    }
}

/// Admin connection URL of the test PostgreSQL (`TEST_DATABASE_URL`).
pub fn database_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres:postgres@127.0.0.1:5432/postgres".into())
}

/// URL of the test Redis (`TEST_REDIS_URL`).
pub fn redis_url() -> String {
    std::env::var("TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// Bootstrap servers of the shared test broker (`TEST_KAFKA_BROKERS`).
pub fn kafka_brokers() -> String {
    std::env::var("TEST_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// A prefix no other test uses, e.g. for Redis keys: `test:<uuid>:`.
pub fn unique_prefix() -> String {
    format!("test:{}:", uuid::Uuid::new_v4().simple())
}

/// A name no other test uses, e.g. a topic or consumer group: `<base>.<uuid>`.
pub fn unique_name(base: &str) -> String {
    format!("{base}.{}", uuid::Uuid::new_v4().simple())
}

/// A TCP port on 127.0.0.1 that was free a moment ago, for a server a test starts later
/// (or never, to have a dead address).
///
/// Chosen below the kernel's ephemeral range, never from it: a port from that range can
/// be taken in the meantime by any outgoing connection — or by a client reconnecting to
/// the not-yet-started server, which the kernel may connect to itself — and the server
/// then fails with "address in use". Each port handed out is also claimed for a minute
/// in a directory every test process shares, so two tests running at once (nextest runs
/// each in its own process) never pick the same port while neither has bound it yet.
pub fn free_port() -> u16 {
    use rand::Rng as _;
    // Above the well-known servers the tests use (5432, 6379, 9092, 10260, 23790, 27017).
    const LOWEST: u16 = 28000;
    let ephemeral_start = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    if ephemeral_start <= LOWEST + 100 {
        return ephemeral_free_port();
    }
    let mut rng = rand::rng();
    for _ in 0..200 {
        let port = rng.random_range(LOWEST..ephemeral_start);
        if TcpListener::bind(("127.0.0.1", port)).is_ok() && claim_port(port) {
            return port;
        }
    }
    ephemeral_free_port()
}

/// How long a port handed out by [`free_port`] stays claimed: time enough for the server
/// it was meant for to start and bind it.
const PORT_CLAIM: Duration = Duration::from_secs(60);

/// Claims `port` for [`PORT_CLAIM`] among all test processes of this machine; `false`
/// when another process claimed it more recently.
fn claim_port(port: u16) -> bool {
    let dir = std::env::temp_dir().join("messenger-test-ports");
    if std::fs::create_dir_all(&dir).is_err() {
        return true;
    }
    let claim = dir.join(port.to_string());
    let fresh = std::fs::metadata(&claim)
        .and_then(|m| m.modified())
        .is_ok_and(|at| at.elapsed().unwrap_or_default() < PORT_CLAIM);
    if fresh {
        return false;
    }
    let _ = std::fs::remove_file(&claim);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&claim)
        .is_ok()
}

fn ephemeral_free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("binding 127.0.0.1:0 to find a free port")
}

/// A database created for one test; dropped (best effort) when this value is dropped.
pub struct TestDatabase {
    name: String,
    url: String,
    pool: PgPool,
}

impl TestDatabase {
    /// Creates an empty database with a unique name on `TEST_DATABASE_URL`'s server.
    pub async fn create() -> Self {
        let mut url = url::Url::parse(&database_url()).expect("TEST_DATABASE_URL is not a URL");
        let name = format!("test_{}", uuid::Uuid::new_v4().simple());
        url.set_path(&name);
        let url = url.to_string();
        // Small pools: many tests (of several crates) share one server's connection limit.
        let settings = crate::postgres::PoolSettings {
            max_connections: 5,
            ..Default::default()
        };
        let pool = crate::postgres::connect_with(&url, settings)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "cannot create a test database on TEST_DATABASE_URL ({}): {e}",
                    database_url()
                )
            });
        Self { name, url, pool }
    }

    /// Creates a database and applies the common migrations plus `migrator`'s.
    pub async fn create_migrated(migrator: &Migrator) -> Self {
        let database = Self::create().await;
        crate::postgres::migrate(&database.pool, migrator)
            .await
            .expect("migrations apply to a fresh database");
        database
    }

    /// Creates a database with only the common migrations (outbox, processed events).
    pub async fn create_with_common_migrations() -> Self {
        let database = Self::create().await;
        crate::postgres::migrate_common(&database.pool)
            .await
            .expect("common migrations apply to a fresh database");
        database
    }

    /// A pool connected to the database.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The database's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs inside the test's runtime: use a thread with its own runtime.
        let dropper = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async move {
                use sqlx::Connection;
                if let Ok(mut admin) = sqlx::PgConnection::connect(&database_url()).await {
                    let statement = format!(
                        "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                        crate::postgres::quote_identifier(&name)
                    );
                    let _ = sqlx::query(&statement).execute(&mut admin).await;
                }
            });
        });
        let _ = dropper.join();
    }
}

/// Polls `condition` every 50 ms until it holds or `timeout` passes; returns whether it held.
pub async fn wait_until<F, Fut>(timeout: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if condition().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Path of the tansu binary: `TANSU_BIN`, else `tansu` on `PATH`, else
/// `/root/.cargo/bin/tansu`.
pub fn tansu_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("TANSU_BIN") {
        return PathBuf::from(path);
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            let candidate = dir.join("tansu");
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    PathBuf::from("/root/.cargo/bin/tansu")
}

/// A private tansu broker on 127.0.0.1:`port`, for tests that stop and restart the broker.
///
/// It keeps its topics and records in an SQLite file of its own (tansu's `libsql`
/// feature), so a [`TansuBroker::stop`] + [`TansuBroker::restart`] is an outage of a real
/// Kafka: the broker comes back with its data. (tansu's in-memory storage forgets its
/// topics on restart and then accepts produce requests to the missing topic, dropping the
/// records: a test on it could lose events the platform would not lose.) Killed on drop;
/// its data directory is removed then.
pub struct TansuBroker {
    port: u16,
    child: Option<Child>,
    data_dir: PathBuf,
    advertised: Option<String>,
    authentication: bool,
}

impl TansuBroker {
    /// Starts a broker on `port` and waits until it accepts connections.
    pub fn start(port: u16) -> Self {
        let mut broker = Self::stopped(port);
        broker.restart();
        broker
    }

    /// A handle for `port` with no broker running yet; [`TansuBroker::restart`] starts it.
    pub fn stopped(port: u16) -> Self {
        let data_dir = std::env::temp_dir().join(unique_name("messenger-tansu"));
        std::fs::create_dir_all(&data_dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", data_dir.display()));
        Self {
            port,
            child: None,
            data_dir,
            advertised: None,
            authentication: false,
        }
    }

    /// Advertises `url` (e.g. `tcp://localhost:<port>` of a [`tls::TlsProxy`] in front of
    /// it) instead of its own address; takes effect at the next start.
    pub fn advertise(&mut self, url: &str) {
        self.advertised = Some(url.to_owned());
    }

    /// Whether clients must authenticate with SASL (`--authentication`); takes effect at
    /// the next start. Users are made with [`TansuBroker::create_scram_user`] while it
    /// runs without.
    pub fn require_authentication(&mut self, on: bool) {
        self.authentication = on;
    }

    /// Creates a SCRAM user (`mechanism` `scram256` or `scram512`) through the running
    /// broker (`tansu user create`); kept in its storage across restarts.
    pub fn create_scram_user(&self, name: &str, password: &str, mechanism: &str) {
        let output = Command::new(tansu_binary())
            .args(["user", "create", "--broker"])
            .arg(format!("tcp://127.0.0.1:{}", self.port))
            .args(["--mechanism", mechanism, name, password])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run tansu user create: {e}"));
        assert!(
            output.status.success(),
            "tansu user create {name} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// `127.0.0.1:<port>`, for `bootstrap.servers`.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether the process is running.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// (Re)starts the broker process if it is not running and waits for its port.
    pub fn restart(&mut self) {
        if self.child.is_some() {
            return;
        }
        let binary = tansu_binary();
        let listener = format!("tcp://127.0.0.1:{}", self.port);
        let advertised = self.advertised.clone().unwrap_or_else(|| listener.clone());
        let mut command = Command::new(&binary);
        command
            .arg("broker")
            // Relative to the working directory: `<data_dir>/tansu.db`.
            .args(["--storage-engine", "sqlite://tansu.db"])
            .current_dir(&self.data_dir)
            .args(["--listener-url", &listener])
            .args(["--advertised-listener-url", &advertised]);
        if self.authentication {
            command.arg("--authentication");
        }
        let child = command
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start tansu ({}; set TANSU_BIN): {e}",
                    binary.display()
                )
            });
        self.child = Some(child);
        let addr: SocketAddr = ([127, 0, 0, 1], self.port).into();
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!(
                    "tansu on port {} exited at start-up: {status} (it needs the libsql \
                     feature; `make test-deps` installs it)",
                    self.port
                );
            }
            assert!(
                Instant::now() < deadline,
                "tansu did not listen on port {} within 20s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the broker process (an outage).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for TansuBroker {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// One event read back from Kafka.
#[derive(Debug, Clone, PartialEq)]
pub struct ReceivedEvent {
    /// The record key.
    pub key: String,
    /// The partition it was in.
    pub partition: i32,
    /// The decoded event.
    pub event: Event,
}

fn reader(kafka: impl Into<KafkaConfig>, topic: &str) -> StreamConsumer {
    let kafka = kafka.into();
    crate::kafka::consumer(&kafka, &unique_name("test-reader"), &[topic])
        .unwrap_or_else(|e| panic!("cannot create a Kafka consumer for {}: {e}", kafka.brokers))
}

/// Reads `topic` from the beginning until an event matches `predicate` or `timeout`
/// passes. Undecodable records are skipped.
pub async fn wait_for_event(
    brokers: impl Into<KafkaConfig>,
    topic: &str,
    predicate: impl Fn(&Event) -> bool,
    timeout: Duration,
) -> Option<ReceivedEvent> {
    let consumer = reader(brokers, topic);
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let received = tokio::time::timeout_at(deadline, consumer.recv())
            .await
            .ok()?;
        let Ok(message) = received else { continue };
        let Ok(event) = Event::decode(message.payload().unwrap_or_default()) else {
            continue;
        };
        if predicate(&event) {
            return Some(ReceivedEvent {
                key: String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned(),
                partition: message.partition(),
                event,
            });
        }
    }
}

/// Reads `count` events of `topic` from the beginning (all partitions, in arrival order),
/// or as many as arrived within `timeout`.
pub async fn read_events(
    brokers: impl Into<KafkaConfig>,
    topic: &str,
    count: usize,
    timeout: Duration,
) -> Vec<ReceivedEvent> {
    let consumer = reader(brokers, topic);
    let deadline = tokio::time::Instant::now() + timeout;
    let mut events = Vec::new();
    while events.len() < count {
        let Ok(received) = tokio::time::timeout_at(deadline, consumer.recv()).await else {
            break;
        };
        let Ok(message) = received else { continue };
        if let Ok(event) = Event::decode(message.payload().unwrap_or_default()) {
            events.push(ReceivedEvent {
                key: String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned(),
                partition: message.partition(),
                event,
            });
        }
    }
    consumer.unsubscribe();
    events
}

/// Latency figures of a benchmark: `n`, mean and percentiles of the samples.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LatencySummary {
    /// Number of samples.
    pub n: usize,
    /// Arithmetic mean.
    pub mean: Duration,
    /// Median.
    pub p50: Duration,
    /// 95th percentile.
    pub p95: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Slowest sample.
    pub max: Duration,
}

impl LatencySummary {
    /// Summarises `samples` (nearest-rank percentiles); `None` when there are none.
    pub fn of(mut samples: Vec<Duration>) -> Option<Self> {
        if samples.is_empty() {
            return None;
        }
        samples.sort();
        let at = |p: f64| samples[((samples.len() as f64 - 1.0) * p).round() as usize];
        Some(Self {
            n: samples.len(),
            mean: samples.iter().sum::<Duration>() / u32::try_from(samples.len()).ok()?,
            p50: at(0.5),
            p95: at(0.95),
            p99: at(0.99),
            max: samples[samples.len() - 1],
        })
    }
}

impl std::fmt::Display for LatencySummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "n={} mean={:?} p50={:?} p95={:?} p99={:?} max={:?}",
            self.n, self.mean, self.p50, self.p95, self.p99, self.max
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_summary_uses_nearest_rank_percentiles() {
        let samples: Vec<Duration> = (1..=100).rev().map(Duration::from_millis).collect();
        let summary = LatencySummary::of(samples).unwrap();
        assert_eq!(summary.n, 100);
        assert_eq!(summary.mean, Duration::from_micros(50_500));
        assert_eq!(summary.p50, Duration::from_millis(51));
        assert_eq!(summary.p95, Duration::from_millis(95));
        assert_eq!(summary.p99, Duration::from_millis(99));
        assert_eq!(summary.max, Duration::from_millis(100));
        assert_eq!(LatencySummary::of(Vec::new()), None);
    }

    #[test]
    fn a_port_handed_out_is_not_handed_out_again_while_its_claim_lasts() {
        let port = free_port();
        assert!(
            !claim_port(port),
            "another test process must not get port {port} now"
        );
        let ports: std::collections::HashSet<u16> = (0..50).map(|_| free_port()).collect();
        assert_eq!(ports.len(), 50, "fifty picks, fifty ports");
        assert!(!ports.contains(&port));
    }
}
