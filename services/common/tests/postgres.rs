//! `postgres::connect` creates missing databases; common and service migrations share one
//! `_sqlx_migrations` table and can be applied on every start-up.

use messenger_common::postgres;
use messenger_common::testing::{TestDatabase, database_url};
use sqlx::migrate::Migrator;

static SERVICE_MIGRATIONS: Migrator = sqlx::migrate!("tests/service_migrations");

#[tokio::test]
async fn connect_creates_the_database_when_it_is_missing() {
    let name = format!("test_created_{}", uuid::Uuid::new_v4().simple());
    let mut url = url::Url::parse(&database_url()).expect("TEST_DATABASE_URL is a URL");
    url.set_path(&name);

    let pool = postgres::connect(url.as_str())
        .await
        .expect("connect creates the database");
    let current: String = sqlx::query_scalar("SELECT current_database()")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(current, name);
    pool.close().await;

    // Connecting again finds it and does not fail.
    let again = postgres::connect(url.as_str())
        .await
        .expect("second connect");
    again.close().await;

    let admin = postgres::connect(&database_url()).await.unwrap();
    sqlx::query(&format!(
        "DROP DATABASE {} WITH (FORCE)",
        postgres::quote_identifier(&name)
    ))
    .execute(&admin)
    .await
    .unwrap();
}

#[tokio::test]
async fn common_and_service_migrations_apply_together_and_rerun_cleanly() {
    let database = TestDatabase::create().await;
    let pool = database.pool();
    for run in 0..2 {
        postgres::migrate(pool, &SERVICE_MIGRATIONS)
            .await
            .unwrap_or_else(|e| panic!("migration run {run} failed: {e}"));
    }
    // The service's migrator alone (as `sqlx migrate run` would) also accepts the state.
    let mut plain = Migrator::new(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/service_migrations"
    )))
    .await
    .unwrap();
    plain.set_ignore_missing(true);
    plain.run(pool).await.expect("service migrator on its own");

    let versions: Vec<i64> =
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations ORDER BY version")
            .fetch_all(pool)
            .await
            .unwrap();
    assert_eq!(
        versions,
        vec![
            1,
            19700101000001,
            19700101000002,
            19700101000003,
            20260101000000
        ]
    );
    for table in ["messenger_outbox", "messenger_processed_events", "widgets"] {
        let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(table)
            .fetch_one(pool)
            .await
            .unwrap();
        assert!(exists, "table {table} exists");
    }
    sqlx::query("INSERT INTO widgets (name, colour) VALUES ('w', 'red')")
        .execute(pool)
        .await
        .expect("both service migrations applied");
}

#[tokio::test]
async fn a_service_migration_using_a_reserved_version_is_refused() {
    let database = TestDatabase::create().await;
    let clashing = Migrator::new(std::path::Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/clashing_migrations"
    )))
    .await
    .unwrap();
    let error = postgres::migrate(database.pool(), &clashing)
        .await
        .expect_err("a reserved version must be refused");
    assert!(error.to_string().contains("19700101000001"), "{error}");
    let applied: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_tables WHERE tablename IN ('clash', 'messenger_outbox')",
    )
    .fetch_one(database.pool())
    .await
    .unwrap();
    assert_eq!(applied, 0, "nothing was applied");
}

#[tokio::test]
async fn a_bad_database_url_fails_with_an_error() {
    let error = postgres::connect("postgres://postgres:postgres@127.0.0.1:1/nothing")
        .await
        .expect_err("nothing listens on port 1");
    assert!(
        matches!(error, messenger_common::Error::Database(_)),
        "{error}"
    );
}
