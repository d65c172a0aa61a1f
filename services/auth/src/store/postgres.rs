//! Accounts in PostgreSQL; the `UserRegistered` event goes into the common outbox in
//! the same transaction, and the outbox relay publishes it to Kafka.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use messenger_common::outbox;
use messenger_proto::topics::AUTH_EVENTS;
use messenger_proto::v1::Event;
use sqlx::PgPool;
use uuid::Uuid;

use super::{Account, AccountStore};
use crate::domain::{Email, Nickname};
use crate::error::AuthError;

/// PostgreSQL's SQLSTATE for a unique-constraint violation.
const UNIQUE_VIOLATION: &str = "23505";

#[derive(Clone)]
pub struct PostgresAccountStore {
    pool: PgPool,
}

impl PostgresAccountStore {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

struct AccountRow {
    user_id: Uuid,
    email: String,
    nickname: String,
    password_hash: Option<String>,
    created_at: DateTime<Utc>,
}

impl TryFrom<AccountRow> for Account {
    type Error = AuthError;

    fn try_from(row: AccountRow) -> Result<Self, AuthError> {
        let corrupt =
            |what: String| AuthError::CorruptData(format!("account {}: {what}", row.user_id));
        Ok(Account {
            user_id: row.user_id,
            email: Email::parse(&row.email).map_err(|e| corrupt(e.to_string()))?,
            nickname: Nickname::parse(&row.nickname).map_err(|e| corrupt(e.to_string()))?,
            password_hash: row.password_hash,
            created_at: row.created_at,
        })
    }
}

fn is_unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.code().as_deref() == Some(UNIQUE_VIOLATION))
}

#[async_trait]
impl AccountStore for PostgresAccountStore {
    async fn create(&self, account: &Account, event: &Event) -> Result<(), AuthError> {
        let mut tx = self.pool.begin().await?;
        // ON CONFLICT DO NOTHING turns a concurrent duplicate (which would otherwise
        // wait for the winner and then raise 23505) into "no row inserted".
        let inserted = sqlx::query!(
            "INSERT INTO accounts (user_id, email, nickname, password_hash, created_at)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT DO NOTHING",
            account.user_id,
            account.email.as_str(),
            account.nickname.as_str(),
            account.password_hash.as_deref(),
            account.created_at
        )
        .execute(&mut *tx)
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                AuthError::EmailTaken
            } else {
                e.into()
            }
        })?;
        if inserted.rows_affected() == 0 {
            // Dropping `tx` rolls back; nothing was written.
            return Err(AuthError::EmailTaken);
        }
        outbox::enqueue(&mut tx, AUTH_EVENTS, &account.user_id.to_string(), event).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn find_by_email(&self, email: &Email) -> Result<Option<Account>, AuthError> {
        let row = sqlx::query_as!(
            AccountRow,
            "SELECT user_id, email, nickname, password_hash, created_at
             FROM accounts WHERE lower(email) = $1",
            email.as_str()
        )
        .fetch_optional(&self.pool)
        .await?;
        row.map(Account::try_from).transpose()
    }

    async fn count(&self) -> Result<u64, AuthError> {
        let count = sqlx::query_scalar!(r#"SELECT count(*) AS "count!" FROM accounts"#)
            .fetch_one(&self.pool)
            .await?;
        Ok(u64::try_from(count).unwrap_or(0))
    }
}
