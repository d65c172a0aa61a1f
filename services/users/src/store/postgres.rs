//! PostgreSQL [`ProfileStore`]. Nicknames are stored lower-case in a `COLLATE "C"` column
//! with a unique index: byte order for keyset pagination (the same as the in-memory store)
//! and an index that serves `LIKE 'prefix%'`.

use async_trait::async_trait;
use sqlx::PgPool;
use uuid::Uuid;

use super::{CONSUMER_NAME, ProfileStore, UpdatedProfile};
use crate::domain::{
    Profile, ProfileUpdate, Registration, RegistrationOutcome, SearchQuery,
    registration_nickname_candidates,
};
use crate::error::UsersError;

const NICKNAME_INDEX: &str = "profiles_nickname_key";

/// Profiles in PostgreSQL (table `profiles`, see `migrations/`).
#[derive(Clone)]
pub struct PgProfileStore {
    pool: PgPool,
}

impl PgProfileStore {
    /// Expects a migrated database (`crate::migrate`).
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

async fn profile_exists(conn: &mut sqlx::PgConnection, user_id: Uuid) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar!(
        r#"SELECT EXISTS (SELECT 1 FROM profiles WHERE user_id = $1) AS "exists!""#,
        user_id
    )
    .fetch_one(conn)
    .await
}

fn is_nickname_conflict(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db)
        if db.is_unique_violation() && db.constraint() == Some(NICKNAME_INDEX))
}

#[async_trait]
impl ProfileStore for PgProfileStore {
    async fn create_from_registration(
        &self,
        registration: &Registration,
    ) -> Result<RegistrationOutcome, UsersError> {
        let mut tx = self.pool.begin().await?;
        // Recording the event id in this transaction makes the profile creation exactly-once:
        // a replay either sees the mark or waits for the first delivery's transaction.
        let first_time = messenger_common::consumer::mark_processed(
            &mut tx,
            CONSUMER_NAME,
            &registration.event_id,
        )
        .await?;
        if !first_time {
            return Ok(RegistrationOutcome::AlreadyProcessed);
        }
        if profile_exists(&mut tx, registration.user_id).await? {
            tx.commit().await?;
            return Ok(RegistrationOutcome::ProfileExists);
        }
        for candidate in
            registration_nickname_candidates(&registration.nickname, registration.user_id)
        {
            let created = sqlx::query_as!(
                Profile,
                "INSERT INTO profiles (user_id, nickname) VALUES ($1, $2) ON CONFLICT DO NOTHING \
                 RETURNING user_id, nickname, bio, avatar_url, version, created_at, updated_at",
                registration.user_id,
                candidate.as_str()
            )
            .fetch_optional(&mut *tx)
            .await?;
            if let Some(profile) = created {
                tx.commit().await?;
                return Ok(RegistrationOutcome::Created(profile));
            }
            // The conflict is the nickname, or a concurrent event created this user meanwhile.
            if profile_exists(&mut tx, registration.user_id).await? {
                tx.commit().await?;
                return Ok(RegistrationOutcome::ProfileExists);
            }
        }
        // Dropping the transaction rolls back the processed mark: the event can be retried.
        Err(UsersError::NoFreeNickname {
            user_id: registration.user_id.to_string(),
            requested: registration.nickname.to_string(),
        })
    }

    async fn get(&self, user_id: Uuid) -> Result<Option<Profile>, UsersError> {
        Ok(sqlx::query_as!(
            Profile,
            "SELECT user_id, nickname, bio, avatar_url, version, created_at, updated_at \
             FROM profiles WHERE user_id = $1",
            user_id
        )
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn get_many(&self, user_ids: &[Uuid]) -> Result<Vec<Profile>, UsersError> {
        Ok(sqlx::query_as!(
            Profile,
            "SELECT user_id, nickname, bio, avatar_url, version, created_at, updated_at \
             FROM profiles WHERE user_id = ANY($1)",
            user_ids
        )
        .fetch_all(&self.pool)
        .await?)
    }

    async fn get_by_nickname(&self, nickname: &str) -> Result<Option<Profile>, UsersError> {
        Ok(sqlx::query_as!(
            Profile,
            "SELECT user_id, nickname, bio, avatar_url, version, created_at, updated_at \
             FROM profiles WHERE nickname = $1",
            nickname
        )
        .fetch_optional(&self.pool)
        .await?)
    }

    async fn update(
        &self,
        user_id: Uuid,
        update: &ProfileUpdate,
    ) -> Result<UpdatedProfile, UsersError> {
        let mut tx = self.pool.begin().await?;
        let previous_nickname = sqlx::query_scalar!(
            "SELECT nickname FROM profiles WHERE user_id = $1 FOR UPDATE",
            user_id
        )
        .fetch_optional(&mut *tx)
        .await?;
        let Some(previous_nickname) = previous_nickname else {
            return Err(UsersError::ProfileNotFound(user_id.to_string()));
        };
        // The unique index decides nickname races: the loser gets a unique violation.
        let profile = sqlx::query_as!(
            Profile,
            "UPDATE profiles SET nickname = COALESCE($2, nickname), bio = COALESCE($3, bio), \
             avatar_url = COALESCE($4, avatar_url), version = version + 1, \
             updated_at = GREATEST(now(), updated_at) WHERE user_id = $1 \
             RETURNING user_id, nickname, bio, avatar_url, version, created_at, updated_at",
            user_id,
            update.nickname.as_ref().map(|n| n.as_str()),
            update.bio.as_deref(),
            update.avatar_url.as_deref()
        )
        .fetch_one(&mut *tx)
        .await
        .map_err(
            |error| match (&update.nickname, is_nickname_conflict(&error)) {
                (Some(nickname), true) => UsersError::NicknameTaken(nickname.to_string()),
                _ => UsersError::Database(error),
            },
        )?;
        tx.commit().await.map_err(|error| match &update.nickname {
            Some(nickname) if is_nickname_conflict(&error) => {
                UsersError::NicknameTaken(nickname.to_string())
            }
            _ => UsersError::Database(error),
        })?;
        Ok(UpdatedProfile {
            profile,
            previous_nickname,
        })
    }

    async fn search(&self, query: &SearchQuery, limit: usize) -> Result<Vec<Profile>, UsersError> {
        Ok(sqlx::query_as!(
            Profile,
            "SELECT user_id, nickname, bio, avatar_url, version, created_at, updated_at \
             FROM profiles \
             WHERE nickname LIKE $1 ESCAPE '\\' AND ($2::text IS NULL OR nickname > $2) \
             ORDER BY nickname LIMIT $3",
            query.like_pattern(),
            query.after.as_deref(),
            i64::try_from(limit).unwrap_or(i64::MAX)
        )
        .fetch_all(&self.pool)
        .await?)
    }
}
