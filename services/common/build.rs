//! `sqlx::migrate!` embeds the migration files at compile time but does not watch them:
//! rebuild when they change.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
    println!("cargo:rerun-if-changed=tests/service_migrations");
}
