//! The real binaries as separate processes, configured only through the environment the
//! way the operator configures them (`GRPC_ADDR`, `ADMIN_ADDR`, `DATABASE_URL`,
//! `USERS_URL`, ...), on PostgreSQL, Redis, the Kafka-protocol broker and, for chat, the
//! MongoDB-wire server at `TEST_MONGODB_URI` (its in-memory store only where the test run
//! has none): each becomes ready, they carry the walkthrough together, and each exits
//! cleanly on SIGTERM.
//! It runs the binaries cargo built last (`make test` builds them all first).

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use messenger_common::testing::{self, TestDatabase};
use support::{Clients, Urls};

/// Where cargo put the workspace binaries: next to this test's `deps/` directory.
fn binary(name: &str) -> PathBuf {
    let test_binary = std::env::current_exe().expect("the test binary's path");
    let directory = test_binary
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>/deps");
    let path = directory.join(name);
    assert!(
        path.is_file(),
        "{} is missing: build the workspace binaries first (make test and \
         `cargo nextest run --workspace` do)",
        path.display()
    );
    path
}

/// One service process; its output goes to a log file shown when something fails.
struct Service {
    name: &'static str,
    child: Option<Child>,
    log: PathBuf,
    grpc_port: u16,
    admin_port: u16,
}

impl Service {
    fn start(name: &'static str, env: &[(&str, String)]) -> Self {
        let (grpc_port, admin_port) = (testing::free_port(), testing::free_port());
        let log = std::env::temp_dir().join(format!("{}.log", testing::unique_name(name)));
        let output = std::fs::File::create(&log).expect("create the log file");
        let mut command = Command::new(binary(&format!("messenger-{name}")));
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("GRPC_ADDR", format!("127.0.0.1:{grpc_port}"))
            .env("ADMIN_ADDR", format!("127.0.0.1:{admin_port}"))
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .envs(env.iter().map(|(key, value)| (key, value)))
            .stdin(Stdio::null())
            .stdout(output.try_clone().expect("log file handle"))
            .stderr(output);
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start messenger-{name}: {e}"));
        Self {
            name,
            child: Some(child),
            log,
            grpc_port,
            admin_port,
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn admin_get(&self, path: &str) -> Option<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.admin_port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.name
        )
        .ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        Some(response)
    }

    /// Waits until `/readyz` answers 200 (its dependencies are reachable).
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if self
                .admin_get("/readyz")
                .is_some_and(|response| response.starts_with("HTTP/1.1 200"))
            {
                return;
            }
            let exited = self
                .child
                .as_mut()
                .and_then(|child| child.try_wait().ok().flatten());
            assert!(
                exited.is_none() && Instant::now() < deadline,
                "messenger-{} did not become ready (exit: {exited:?}); its log:\n{}",
                self.name,
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Sends SIGTERM and waits for the process to exit.
    fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("still running");
        let sent = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(sent.success(), "SIGTERM to messenger-{}", self.name);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = child.try_wait().expect("wait for the process") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "messenger-{} did not exit within 30 s of SIGTERM; its log:\n{}",
                    self.name,
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(&self.log);
    }
}

/// Where the chat process keeps chats and messages.
enum ChatStore {
    /// A fresh database on the server at `TEST_MONGODB_URI`.
    MongoDb { uri: String, database: String },
    /// Only where the run has no MongoDB-wire server (`make test` says so and skips the
    /// MongoDB tests).
    Memory,
}

impl ChatStore {
    fn for_this_run(prefix: &str) -> Self {
        match std::env::var("TEST_MONGODB_URI") {
            Ok(uri) if !uri.is_empty() => Self::MongoDb {
                uri,
                database: format!("chat_{}", prefix.replace([':', '-'], "_")),
            },
            _ => Self::Memory,
        }
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        match self {
            Self::MongoDb { uri, database } => vec![
                ("CHAT_STORE", "mongodb".to_owned()),
                ("MONGODB_URI", uri.clone()),
                ("CHAT_MONGODB_DATABASE", database.clone()),
            ],
            Self::Memory => vec![("CHAT_STORE", "memory".to_owned())],
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binaries_serve_the_walkthrough_and_stop_cleanly_on_sigterm() {
    let (redis, kafka) = (testing::redis_url(), testing::kafka_brokers());
    let prefix = testing::unique_prefix();
    let (auth_db, users_db, friends_db) = (
        TestDatabase::create().await,
        TestDatabase::create().await,
        TestDatabase::create().await,
    );
    let common = |database: Option<&TestDatabase>| {
        let mut env = vec![
            ("REDIS_URL", redis.clone()),
            ("KAFKA_BROKERS", kafka.clone()),
        ];
        if let Some(database) = database {
            env.push(("DATABASE_URL", database.url().to_owned()));
        }
        env
    };

    let mut auth = Service::start(
        "auth",
        &[
            common(Some(&auth_db)),
            vec![("AUTH_REDIS_PREFIX", format!("{prefix}auth:"))],
        ]
        .concat(),
    );
    let mut users = Service::start(
        "users",
        &[
            common(Some(&users_db)),
            vec![
                ("USERS_REDIS_PREFIX", format!("{prefix}users:")),
                ("USERS_CONSUMER_GROUP", testing::unique_name("users")),
            ],
        ]
        .concat(),
    );
    let mut friends = Service::start(
        "friends",
        &[
            common(Some(&friends_db)),
            vec![
                ("FRIENDS_REDIS_PREFIX", format!("{prefix}friends:")),
                ("USERS_URL", users.url()),
            ],
        ]
        .concat(),
    );
    let chat_store = ChatStore::for_this_run(&prefix);
    let mut chat = Service::start(
        "chat",
        &[
            common(None),
            vec![
                ("CHAT_REDIS_PREFIX", format!("{prefix}chat:")),
                ("FRIENDS_URL", friends.url()),
                ("USERS_URL", users.url()),
            ],
            chat_store.env(),
        ]
        .concat(),
    );
    for service in [&mut auth, &mut users, &mut friends, &mut chat] {
        service.wait_ready();
    }

    let urls = Urls {
        auth: auth.url(),
        users: users.url(),
        friends: friends.url(),
        chat: chat.url(),
    };
    let tokens =
        support::two_people_register_befriend_and_chat(&mut Clients::connect(&urls).await).await;

    // Every call above was counted by the service that served it.
    let metrics = chat.admin_get("/metrics").unwrap_or_default();
    assert!(
        metrics.contains(r#"grpc_server_handled_total{method="/messenger.v1.ChatService/SendMessage",code="OK"} 3"#),
        "chat's /metrics: {metrics}"
    );

    // Chat kept them where it was told to.
    if let ChatStore::MongoDb { uri, database } = &chat_store {
        let client = mongodb::Client::with_uri_str(uri)
            .await
            .expect("MongoDB client");
        let messages = client
            .database(database)
            .collection::<mongodb::bson::Document>("messages")
            .count_documents(mongodb::bson::doc! {})
            .await
            .expect("count chat's messages in MongoDB");
        assert_eq!(messages, 3, "the walkthrough's messages are in MongoDB");
        client.database(database).drop().await.ok();
    }

    // Callers first, so no service loses a peer while it still serves.
    for service in [&mut chat, &mut friends, &mut users, &mut auth] {
        let status = service.terminate();
        assert!(
            status.success(),
            "messenger-{} exited with {status} on SIGTERM; its log:\n{}",
            service.name,
            service.logs()
        );
        let logs = service.logs();
        assert!(
            logs.contains("gRPC server stopped"),
            "messenger-{} logs its drain and stop:\n{logs}",
            service.name
        );
        for secret in tokens.iter().map(String::as_str).chain([support::PASSWORD]) {
            assert!(
                !logs.contains(secret),
                "messenger-{} logged a password or an access token:\n{logs}",
                service.name
            );
        }
        assert!(
            logs.lines().all(|line| line.starts_with('{')),
            "LOG_FORMAT=json: every line of messenger-{} is a JSON object:\n{logs}",
            service.name
        );
    }
}
