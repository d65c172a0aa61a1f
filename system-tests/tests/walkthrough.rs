//! Two people register, become friends, open a chat and read each other's messages —
//! every hop through the real services (in this process, on port 0) and the real broker.

mod support;

use std::collections::HashMap;

use messenger_common::grpc::Listeners;
use messenger_common::shutdown::Shutdown;
use messenger_common::testing::{self, TestDatabase};
use support::{Clients, Urls};
use tokio::net::TcpListener;

async fn bind() -> Listeners {
    Listeners {
        grpc: TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind gRPC port"),
        admin: TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind admin port"),
    }
}

/// Runs one service in the background; a service that stops with an error fails the test.
fn spawn_service<E: std::fmt::Display>(
    name: &'static str,
    service: impl Future<Output = Result<(), E>> + Send + 'static,
) {
    tokio::spawn(async move {
        if let Err(error) = service.await {
            panic!("{name} service failed: {error}");
        }
    });
}

fn url(listener: &TcpListener) -> String {
    format!("http://{}", listener.local_addr().expect("local addr"))
}

/// `vars`, plus the test process's `INTERNAL_AUTH_KEY` every service shares.
fn lookup(mut vars: HashMap<&'static str, String>) -> impl Fn(&str) -> Option<String> {
    vars.insert("INTERNAL_AUTH_KEY", testing::test_key_secret().to_owned());
    move |name| vars.get(name).cloned()
}

/// The four services, each on its own fresh database and Redis key prefix, wired to each
/// other by URL exactly as in a deployment.
struct Platform {
    clients: Clients,
    shutdown: Shutdown,
    _databases: Vec<TestDatabase>,
}

impl Platform {
    async fn start() -> Self {
        let shutdown = Shutdown::new();
        let redis = testing::redis_url();
        let kafka = testing::kafka_brokers();
        let prefix = testing::unique_prefix();
        let (auth_db, users_db, friends_db) = (
            TestDatabase::create().await,
            TestDatabase::create().await,
            TestDatabase::create().await,
        );
        let (auth_ports, users_ports, friends_ports, chat_ports) =
            (bind().await, bind().await, bind().await, bind().await);
        let users_url = url(&users_ports.grpc);
        let friends_url = url(&friends_ports.grpc);
        let urls = Urls {
            auth: url(&auth_ports.grpc),
            users: users_url.clone(),
            friends: friends_url.clone(),
            chat: url(&chat_ports.grpc),
        };

        let auth_config = messenger_auth::Config::from_lookup(lookup(HashMap::from([
            ("DATABASE_URL", auth_db.url().to_owned()),
            ("REDIS_URL", redis.clone()),
            ("KAFKA_BROKERS", kafka.clone()),
            ("AUTH_REDIS_PREFIX", format!("{prefix}:auth")),
        ])))
        .expect("auth config");
        let users_config = messenger_users::Config::from_lookup(lookup(HashMap::from([
            ("DATABASE_URL", users_db.url().to_owned()),
            ("REDIS_URL", redis.clone()),
            ("KAFKA_BROKERS", kafka.clone()),
            ("USERS_REDIS_PREFIX", format!("{prefix}:users")),
            ("USERS_CONSUMER_GROUP", format!("{prefix}-users")),
        ])))
        .expect("users config");
        let friends_config = messenger_friends::Config::from_lookup(lookup(HashMap::from([
            ("DATABASE_URL", friends_db.url().to_owned()),
            ("REDIS_URL", redis.clone()),
            ("KAFKA_BROKERS", kafka.clone()),
            ("USERS_URL", users_url.clone()),
            ("FRIENDS_REDIS_PREFIX", format!("{prefix}:friends")),
        ])))
        .expect("friends config");
        let mut chat_vars = HashMap::from([
            ("REDIS_URL", redis.clone()),
            ("KAFKA_BROKERS", kafka.clone()),
            ("FRIENDS_URL", friends_url),
            ("USERS_URL", users_url),
            ("CHAT_REDIS_PREFIX", format!("{prefix}:chat")),
            ("CHAT_STORE", "memory".to_owned()),
        ]);
        if let Ok(mongo) = std::env::var("TEST_MONGODB_URI") {
            chat_vars.insert("CHAT_STORE", "mongodb".to_owned());
            chat_vars.insert("MONGODB_URI", mongo);
            chat_vars.insert("CHAT_MONGODB_DATABASE", prefix.replace([':', '-'], "_"));
        }
        let chat_config =
            messenger_chat::Config::from_lookup(lookup(chat_vars)).expect("chat config");

        spawn_service(
            "auth",
            messenger_auth::run(auth_config, auth_ports, shutdown.clone()),
        );
        spawn_service(
            "users",
            messenger_users::run(users_config, users_ports, shutdown.clone()),
        );
        spawn_service(
            "friends",
            messenger_friends::run(friends_config, friends_ports, shutdown.clone()),
        );
        spawn_service(
            "chat",
            messenger_chat::run(chat_config, chat_ports, shutdown.clone()),
        );

        Self {
            clients: Clients::connect(&urls).await,
            shutdown,
            _databases: vec![auth_db, users_db, friends_db],
        }
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        self.shutdown.trigger();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_people_register_befriend_and_chat() {
    let mut platform = Platform::start().await;
    support::two_people_register_befriend_and_chat(&mut platform.clients).await;
}
