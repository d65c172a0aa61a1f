//! Accounts in PostgreSQL; the `UserRegistered` event goes into the common outbox in
//! the same transaction, and the outbox relay publishes it to Kafka.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use messenger_common::outbox;
use messenger_proto::topics::AUTH_EVENTS;
use messenger_proto::v1::Event;
use sqlx::PgPool;
use uuid::Uuid;

use super::{Account, AccountStore, OAuthIdentity};
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
    email: Option<String>,
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
            email: row
                .email
                .as_deref()
                .map(Email::parse)
                .transpose()
                .map_err(|e| corrupt(e.to_string()))?,
            nickname: Nickname::parse(&row.nickname).map_err(|e| corrupt(e.to_string()))?,
            password_hash: row.password_hash,
            created_at: row.created_at,
        })
    }
}

fn is_unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.code().as_deref() == Some(UNIQUE_VIOLATION))
}

/// The name of the constraint a unique violation broke.
fn violated_constraint(error: &sqlx::Error) -> Option<String> {
    match error {
        sqlx::Error::Database(db) if db.code().as_deref() == Some(UNIQUE_VIOLATION) => {
            db.constraint().map(str::to_owned)
        }
        _ => None,
    }
}

/// Which taken thing a unique violation on an account or identity insert means.
fn taken(error: sqlx::Error, identity: &OAuthIdentity) -> AuthError {
    match violated_constraint(&error).as_deref() {
        Some("accounts_email_key") => AuthError::EmailTaken,
        Some("oauth_identities_pkey") => AuthError::IdentityTaken(identity.provider.clone()),
        Some("oauth_identities_one_per_provider") => {
            AuthError::ProviderAlreadyLinked(identity.provider.clone())
        }
        _ => error.into(),
    }
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
            account.email.as_ref().map(Email::as_str),
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
            r#"SELECT user_id, email AS "email?", nickname, password_hash, created_at
             FROM accounts WHERE lower(email) = $1"#,
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

    async fn find_by_id(&self, user_id: Uuid) -> Result<Option<Account>, AuthError> {
        let row = sqlx::query_as!(
            AccountRow,
            r#"SELECT user_id, email AS "email?", nickname, password_hash, created_at
             FROM accounts WHERE user_id = $1"#,
            user_id
        )
        .fetch_optional(&self.pool)
        .await?;
        row.map(Account::try_from).transpose()
    }

    async fn find_by_identity(
        &self,
        identity: &OAuthIdentity,
    ) -> Result<Option<Account>, AuthError> {
        let row = sqlx::query_as!(
            AccountRow,
            r#"SELECT a.user_id, a.email AS "email?", a.nickname, a.password_hash, a.created_at
             FROM oauth_identities i JOIN accounts a ON a.user_id = i.user_id
             WHERE i.provider = $1 AND i.subject = $2"#,
            identity.provider,
            identity.subject
        )
        .fetch_optional(&self.pool)
        .await?;
        row.map(Account::try_from).transpose()
    }

    async fn create_with_identity(
        &self,
        account: &Account,
        identity: &OAuthIdentity,
        event: &Event,
    ) -> Result<(), AuthError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query!(
            "INSERT INTO accounts (user_id, email, nickname, password_hash, created_at)
             VALUES ($1, $2, $3, $4, $5)",
            account.user_id,
            account.email.as_ref().map(Email::as_str),
            account.nickname.as_str(),
            account.password_hash.as_deref(),
            account.created_at
        )
        .execute(&mut *tx)
        .await
        .map_err(|e| taken(e, identity))?;
        sqlx::query!(
            "INSERT INTO oauth_identities (provider, subject, user_id) VALUES ($1, $2, $3)",
            identity.provider,
            identity.subject,
            account.user_id
        )
        .execute(&mut *tx)
        .await
        .map_err(|e| taken(e, identity))?;
        outbox::enqueue(&mut tx, AUTH_EVENTS, &account.user_id.to_string(), event).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn link(&self, user_id: Uuid, identity: &OAuthIdentity) -> Result<(), AuthError> {
        let inserted = sqlx::query!(
            "INSERT INTO oauth_identities (provider, subject, user_id)
             SELECT $1, $2, user_id FROM accounts WHERE user_id = $3",
            identity.provider,
            identity.subject,
            user_id
        )
        .execute(&self.pool)
        .await
        .map_err(|e| taken(e, identity))?;
        if inserted.rows_affected() == 0 {
            return Err(AuthError::AccountNotFound);
        }
        Ok(())
    }

    async fn unlink(&self, user_id: Uuid, provider: &str) -> Result<(), AuthError> {
        let mut tx = self.pool.begin().await?;
        // The account row's lock orders concurrent unlinks of one account, so two of
        // them cannot each see the other's identity as the way in that remains.
        let account = sqlx::query!(
            "SELECT password_hash IS NOT NULL AS has_password FROM accounts
             WHERE user_id = $1 FOR UPDATE",
            user_id
        )
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(AuthError::AccountNotFound)?;
        let providers = sqlx::query_scalar!(
            "SELECT provider FROM oauth_identities WHERE user_id = $1",
            user_id
        )
        .fetch_all(&mut *tx)
        .await?;
        super::may_unlink(account.has_password.unwrap_or(false), &providers, provider)?;
        sqlx::query!(
            "DELETE FROM oauth_identities WHERE user_id = $1 AND provider = $2",
            user_id,
            provider
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn linked_providers(&self, user_id: Uuid) -> Result<Vec<String>, AuthError> {
        Ok(sqlx::query_scalar!(
            "SELECT provider FROM oauth_identities WHERE user_id = $1 ORDER BY provider",
            user_id
        )
        .fetch_all(&self.pool)
        .await?)
    }
}
