//! The operator lets one PostgreSQL URL serve every service (`postgres.shared`). Each
//! service applies messenger-common's migrations and its own into the same
//! `_sqlx_migrations` table, so no two services may use the same migration version.

use messenger_common::postgres::migrate;
use messenger_common::testing::TestDatabase;
use sqlx::migrate::Migrator;

fn service_migrators() -> [(&'static str, &'static Migrator); 3] {
    [
        ("auth", &messenger_auth::MIGRATOR),
        ("users", &messenger_users::MIGRATOR),
        ("friends", &messenger_friends::MIGRATOR),
    ]
}

#[tokio::test]
async fn every_service_migrates_one_shared_database_in_any_order_and_again_on_restart() {
    let database = TestDatabase::create().await;
    let mut order = service_migrators();
    for round in 0..2 {
        for (service, migrator) in order {
            migrate(database.pool(), migrator)
                .await
                .unwrap_or_else(|e| panic!("round {round}: {service} cannot migrate: {e}"));
        }
        order.reverse();
    }
    for table in [
        "accounts",
        "profiles",
        "friendships",
        "messenger_outbox",
        "messenger_processed_events",
    ] {
        let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(table)
            .fetch_one(database.pool())
            .await
            .unwrap();
        assert!(exists, "table {table} exists");
    }
}

#[test]
fn no_two_services_share_a_migration_version() {
    let mut seen = std::collections::HashMap::new();
    for (service, migrator) in service_migrators() {
        for migration in migrator.iter() {
            if let Some(other) = seen.insert(migration.version, service) {
                panic!(
                    "migration version {} is used by both {other} and {service}",
                    migration.version
                );
            }
        }
    }
}
