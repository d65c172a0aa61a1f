//! The service binaries as separate processes: started with an environment only (every
//! one gets the test process's `INTERNAL_AUTH_KEY`), their output kept in a log file shown
//! when something fails, stopped with SIGTERM.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use messenger_common::testing::{self, TestDatabase};

/// Where cargo put the workspace binaries: next to this test's `deps/` directory.
pub fn binary(name: &str) -> PathBuf {
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
pub struct Service {
    pub name: &'static str,
    child: Option<Child>,
    log: PathBuf,
    grpc_port: u16,
    http_port: u16,
    admin_port: u16,
}

impl Service {
    /// Starts `messenger-<name>` on free ports (an `HTTP_ADDR` in `env` wins, for a
    /// gateway whose address must be known before it starts).
    pub fn start(name: &'static str, env: &[(&str, String)]) -> Self {
        let http_port = env
            .iter()
            .find(|(key, _)| *key == "HTTP_ADDR")
            .and_then(|(_, addr)| addr.rsplit(':').next()?.parse().ok())
            .unwrap_or_else(testing::free_port);
        let (grpc_port, admin_port) = (testing::free_port(), testing::free_port());
        let log = std::env::temp_dir().join(format!("{}.log", testing::unique_name(name)));
        let output = std::fs::File::create(&log).expect("create the log file");
        let mut command = Command::new(binary(&format!("messenger-{name}")));
        command
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("GRPC_ADDR", format!("127.0.0.1:{grpc_port}"))
            .env("HTTP_ADDR", format!("127.0.0.1:{http_port}"))
            .env("ADMIN_ADDR", format!("127.0.0.1:{admin_port}"))
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            // The key the operator's per-app Secret provides; the test signs with it too.
            .env("INTERNAL_AUTH_KEY", testing::test_key_secret())
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
            http_port,
            admin_port,
        }
    }

    /// The gRPC address, as peers are configured (`USERS_URL=http://...`).
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }

    /// The REST base URL (the gateway's `HTTP_ADDR`).
    #[allow(dead_code)] // only the gateway test talks REST
    pub fn http_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.http_port)
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn admin_get(&self, path: &str) -> Option<String> {
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
    pub fn wait_ready(&mut self) {
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
    pub fn terminate(&mut self) -> ExitStatus {
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

/// auth, users, friends and chat as processes on fresh databases, one Redis key prefix
/// each, the shared broker, and each other, ready to serve.
pub struct Backend {
    pub auth: Service,
    pub users: Service,
    pub friends: Service,
    pub chat: Service,
    databases: [TestDatabase; 3],
}

impl Backend {
    /// Starts the four services; `chat_env` chooses chat's store (`CHAT_STORE`, ...).
    pub async fn start(chat_env: Vec<(&'static str, String)>) -> Self {
        Self::start_with(Vec::new(), chat_env).await
    }

    /// [`Backend::start`] with extra variables for auth (`AUTH_OAUTH_*`, ...).
    pub async fn start_with(
        auth_env: Vec<(&'static str, String)>,
        chat_env: Vec<(&'static str, String)>,
    ) -> Self {
        let (redis, kafka) = (testing::redis_url(), testing::kafka_brokers());
        let prefix = testing::unique_prefix();
        let databases = [
            TestDatabase::create().await,
            TestDatabase::create().await,
            TestDatabase::create().await,
        ];
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
        let auth = Service::start(
            "auth",
            &[
                common(Some(&databases[0])),
                vec![("AUTH_REDIS_PREFIX", format!("{prefix}auth:"))],
                auth_env,
            ]
            .concat(),
        );
        let users = Service::start(
            "users",
            &[
                common(Some(&databases[1])),
                vec![
                    ("USERS_REDIS_PREFIX", format!("{prefix}users:")),
                    ("USERS_CONSUMER_GROUP", testing::unique_name("users")),
                ],
            ]
            .concat(),
        );
        let friends = Service::start(
            "friends",
            &[
                common(Some(&databases[2])),
                vec![
                    ("FRIENDS_REDIS_PREFIX", format!("{prefix}friends:")),
                    ("USERS_URL", users.url()),
                ],
            ]
            .concat(),
        );
        let chat = Service::start(
            "chat",
            &[
                common(None),
                vec![
                    ("CHAT_REDIS_PREFIX", format!("{prefix}chat:")),
                    ("FRIENDS_URL", friends.url()),
                    ("USERS_URL", users.url()),
                ],
                chat_env,
            ]
            .concat(),
        );
        let mut backend = Self {
            auth,
            users,
            friends,
            chat,
            databases,
        };
        for service in backend.callers_first() {
            service.wait_ready();
        }
        backend
    }

    /// Auth's database (the tests count accounts in it).
    #[allow(dead_code)] // only the OAuth test looks inside
    pub fn auth_database_url(&self) -> &str {
        self.databases[0].url()
    }

    /// The services in the order they stop: callers first, so none loses a peer while
    /// it still serves.
    pub fn callers_first(&mut self) -> [&mut Service; 4] {
        [
            &mut self.chat,
            &mut self.friends,
            &mut self.users,
            &mut self.auth,
        ]
    }

    /// Peer addresses as the gateway is configured with them.
    #[allow(dead_code)] // only the gateway test starts a gateway
    pub fn peer_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AUTH_URL", self.auth.url()),
            ("USERS_URL", self.users.url()),
            ("FRIENDS_URL", self.friends.url()),
            ("CHAT_URL", self.chat.url()),
        ]
    }
}
