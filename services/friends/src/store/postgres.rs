//! PostgreSQL friendship store (`migrations/`): one row per unordered pair, guarded by the
//! unique index `friendships_pair_key` on (LEAST, GREATEST) of the two ids. A change runs
//! in one transaction: `SELECT ... FOR UPDATE` the pair, decide, write (a first row with
//! `INSERT ... ON CONFLICT DO NOTHING`), enqueue the event in the outbox, commit.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use messenger_common::events::new_event;
use messenger_common::outbox;
use messenger_proto::topics;
use sqlx::{PgConnection, PgPool};

use super::FriendshipStore;
use crate::domain::{
    self, Friendship, FriendshipStatus, Outcome, PairCommand, PairWrite, UserId, pair_key,
};
use crate::error::FriendsError;

/// How often a change is retried when the pair's row appeared or vanished between our
/// read and our write (a concurrent change committed in between). Each retry re-reads
/// under the lock, so two attempts are enough in practice; more means something is wrong.
const MAX_ATTEMPTS: usize = 5;

// Queries name the pair as `LEAST(user_id, friend_id) = $1 AND GREATEST(user_id,
// friend_id) = $2` (what the unique index `friendships_pair_key` covers), with
// `($1, $2) = pair_key(a, b)`.

/// Friendships in PostgreSQL; events through the common outbox.
#[derive(Clone)]
pub struct PostgresFriendshipStore {
    pool: PgPool,
}

impl PostgresFriendshipStore {
    /// A store on `pool`, whose database has this crate's migrations applied.
    pub fn new(pool: PgPool) -> Self {
        PostgresFriendshipStore { pool }
    }
}

struct FriendshipRow {
    user_id: uuid::Uuid,
    friend_id: uuid::Uuid,
    status: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl TryFrom<FriendshipRow> for Friendship {
    type Error = FriendsError;

    fn try_from(row: FriendshipRow) -> Result<Self, Self::Error> {
        let status = FriendshipStatus::parse(&row.status).ok_or_else(|| {
            FriendsError::Internal(format!("unknown friendship status {:?}", row.status))
        })?;
        Ok(Friendship {
            requester: row.user_id.into(),
            addressee: row.friend_id.into(),
            status,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}

async fn lock_pair(
    connection: &mut PgConnection,
    low: UserId,
    high: UserId,
) -> Result<Option<Friendship>, FriendsError> {
    let row = sqlx::query_as!(
        FriendshipRow,
        "SELECT user_id, friend_id, status, created_at, updated_at FROM friendships \
         WHERE LEAST(user_id, friend_id) = $1 AND GREATEST(user_id, friend_id) = $2 FOR UPDATE",
        low.as_uuid(),
        high.as_uuid()
    )
    .fetch_optional(&mut *connection)
    .await?;
    row.map(Friendship::try_from).transpose()
}

/// Writes the decision's row; `false` when the row changed under us (a concurrent first
/// request inserted it, or a concurrent remove deleted it) and the change must be retried.
async fn write_pair(
    connection: &mut PgConnection,
    low: UserId,
    high: UserId,
    write: &PairWrite,
) -> Result<bool, FriendsError> {
    let affected = match write {
        PairWrite::Insert(row) => {
            sqlx::query!(
                "INSERT INTO friendships (user_id, friend_id, status, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5) \
                 ON CONFLICT ((LEAST(user_id, friend_id)), (GREATEST(user_id, friend_id))) DO NOTHING",
                row.requester.as_uuid(),
                row.addressee.as_uuid(),
                row.status.as_str(),
                row.created_at,
                row.updated_at
            )
            .execute(&mut *connection)
            .await?
        }
        PairWrite::Update(row) => {
            sqlx::query!(
                "UPDATE friendships SET user_id = $3, friend_id = $4, status = $5, \
                 created_at = $6, updated_at = $7 \
                 WHERE LEAST(user_id, friend_id) = $1 AND GREATEST(user_id, friend_id) = $2",
                low.as_uuid(),
                high.as_uuid(),
                row.requester.as_uuid(),
                row.addressee.as_uuid(),
                row.status.as_str(),
                row.created_at,
                row.updated_at
            )
            .execute(&mut *connection)
            .await?
        }
        PairWrite::Delete => {
            sqlx::query!(
                "DELETE FROM friendships \
                 WHERE LEAST(user_id, friend_id) = $1 AND GREATEST(user_id, friend_id) = $2",
                low.as_uuid(),
                high.as_uuid()
            )
            .execute(&mut *connection)
            .await?
        }
    };
    Ok(affected.rows_affected() == 1)
}

#[async_trait]
impl FriendshipStore for PostgresFriendshipStore {
    async fn apply(&self, command: PairCommand) -> Result<Outcome, FriendsError> {
        let (low, high) = pair_key(command.actor(), command.other());
        let mut transaction = self.pool.begin().await?;
        for _ in 0..MAX_ATTEMPTS {
            // READ COMMITTED: each statement sees what committed before it started, so a
            // retry sees the row a concurrent transaction just wrote (ON CONFLICT waited
            // for that transaction to finish).
            let current = lock_pair(&mut transaction, low, high).await?;
            // A refusal returns here; dropping the transaction rolls it back.
            let decision = domain::decide(&command, current.as_ref(), domain::now())?;
            if !write_pair(&mut transaction, low, high, &decision.write).await? {
                continue;
            }
            let event = new_event(decision.event);
            outbox::enqueue(
                &mut transaction,
                topics::FRIENDS_EVENTS,
                &domain::event_key(command.actor(), command.other()),
                &event,
            )
            .await?;
            transaction.commit().await?;
            return Ok(decision.outcome);
        }
        Err(FriendsError::Internal(format!(
            "friendship row kept changing during {MAX_ATTEMPTS} attempts"
        )))
    }

    async fn relationships_of(&self, user: UserId) -> Result<Vec<Friendship>, FriendsError> {
        let rows = sqlx::query_as!(
            FriendshipRow,
            "SELECT user_id, friend_id, status, created_at, updated_at FROM friendships \
             WHERE (user_id = $1 OR friend_id = $1) AND status <> 'rejected'",
            user.as_uuid()
        )
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(Friendship::try_from).collect()
    }

    async fn pair(&self, a: UserId, b: UserId) -> Result<Option<Friendship>, FriendsError> {
        let (low, high) = pair_key(a, b);
        let row = sqlx::query_as!(
            FriendshipRow,
            "SELECT user_id, friend_id, status, created_at, updated_at FROM friendships \
             WHERE LEAST(user_id, friend_id) = $1 AND GREATEST(user_id, friend_id) = $2",
            low.as_uuid(),
            high.as_uuid()
        )
        .fetch_optional(&self.pool)
        .await?;
        row.map(Friendship::try_from).transpose()
    }
}
