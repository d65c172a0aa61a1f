//! `messenger-users migrate` as the operator's migrations Job runs it, and start-up with
//! `MIGRATE_ON_START=false` as the pods of a slot whose migrations ran in that Job start.
//! Against the real PostgreSQL of `TEST_DATABASE_URL`.

use std::process::{Command, Output};

use messenger_common::postgres::COMMON_MIGRATOR;
use messenger_common::testing::{TestDatabase, free_port, test_key_secret};
use messenger_users::MIGRATOR;

fn users(database_url: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_messenger-users"))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("INTERNAL_AUTH_KEY", test_key_secret())
        .env("DATABASE_URL", database_url)
        .env("GRPC_ADDR", "127.0.0.1:0")
        .env("ADMIN_ADDR", "127.0.0.1:0")
        .envs(env.iter().copied())
        .args(args)
        .output()
        .expect("run messenger-users")
}

fn text(output: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        output.status.code(),
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

async fn applied_versions(database: &TestDatabase) -> Vec<i64> {
    sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
        .fetch_all(database.pool())
        .await
        .unwrap_or_default()
}

#[tokio::test]
async fn migrate_applies_every_migration_to_a_real_database_and_exits() {
    let database = TestDatabase::create().await;
    assert!(
        applied_versions(&database).await.is_empty(),
        "a fresh database"
    );

    let output = users(database.url(), &["migrate"], &[]);
    assert!(output.status.success(), "{}", text(&output));
    let mut expected: Vec<i64> = COMMON_MIGRATOR
        .iter()
        .chain(MIGRATOR.iter())
        .map(|m| m.version)
        .collect();
    expected.sort_unstable();
    assert_eq!(applied_versions(&database).await, expected);
    let profiles: i64 = sqlx::query_scalar("SELECT count(*) FROM profiles")
        .fetch_one(database.pool())
        .await
        .expect("the profiles table exists");
    assert_eq!(profiles, 0);

    // A Job retried after success (or run again by hand) changes nothing and succeeds.
    let again = users(database.url(), &["migrate"], &[]);
    assert!(again.status.success(), "{}", text(&again));
    assert_eq!(applied_versions(&database).await, expected);
}

#[tokio::test]
async fn a_failed_migration_exits_non_zero_saying_so() {
    let unreachable = format!(
        "postgres://postgres:postgres@127.0.0.1:{}/nowhere",
        free_port()
    );
    let output = users(&unreachable, &["migrate"], &[]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("migrations failed"), "{}", text(&output));
    assert!(
        !stderr.contains("postgres:postgres@"),
        "the password is never shown: {stderr}"
    );
}

#[tokio::test]
async fn an_unknown_argument_is_refused_with_the_usage() {
    let output = users("postgres://unused/db", &["migrat"], &[]);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("usage: messenger-users [migrate]"),
        "{}",
        text(&output)
    );
}

#[tokio::test]
async fn without_migrate_on_start_an_unmigrated_database_stops_start_up() {
    let database = TestDatabase::create().await;
    let output = users(database.url(), &[], &[("MIGRATE_ON_START", "false")]);
    assert_eq!(output.status.code(), Some(1), "{}", text(&output));
    let all = text(&output);
    assert!(
        all.contains("is not applied and MIGRATE_ON_START=false"),
        "{all}"
    );
    assert!(
        applied_versions(&database).await.is_empty(),
        "start-up applied nothing"
    );
}
