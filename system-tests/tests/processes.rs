//! The real binaries as separate processes, configured only through the environment the
//! way the operator configures them (`GRPC_ADDR`, `ADMIN_ADDR`, `DATABASE_URL`,
//! `USERS_URL`, ...), on PostgreSQL, Redis and the Kafka-protocol broker: each becomes
//! ready, they carry the walkthrough together, and each exits cleanly on SIGTERM.
//! It runs the binaries cargo built last (`make test` builds them all first).

mod support;

#[path = "support/process.rs"]
mod process;

use process::Backend;
use support::{Clients, Urls};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binaries_serve_the_walkthrough_and_stop_cleanly_on_sigterm() {
    let mut backend = Backend::start(vec![("CHAT_STORE", "memory".to_owned())]).await;
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
