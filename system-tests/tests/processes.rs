//! The real binaries as separate processes, configured only through the environment the
//! way the operator configures them (`GRPC_ADDR`, `ADMIN_ADDR`, `DATABASE_URL`,
//! `USERS_URL`, ...), on PostgreSQL, Redis, the Kafka-protocol broker and, for chat, the
//! MongoDB-wire server at `TEST_MONGODB_URI` (its in-memory store only where the test run
//! has none): each becomes ready, they carry the walkthrough together, and each exits
//! cleanly on SIGTERM.
//! It runs the binaries cargo built last (`make test` builds them all first).

mod support;

#[path = "support/process.rs"]
mod process;

use messenger_common::testing;
use process::Backend;
use support::{Clients, Urls};

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
    let chat_store = ChatStore::for_this_run(&testing::unique_prefix());
    let mut backend = Backend::start(chat_store.env()).await;
    let urls = Urls {
        auth: backend.auth.url(),
        users: backend.users.url(),
        friends: backend.friends.url(),
        chat: backend.chat.url(),
    };
    let tokens =
        support::two_people_register_befriend_and_chat(&mut Clients::connect(&urls).await).await;

    // Every call above was counted by the service that served it.
    let metrics = backend.chat.admin_get("/metrics").unwrap_or_default();
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
    for service in backend.callers_first() {
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
