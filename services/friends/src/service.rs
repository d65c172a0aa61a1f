//! The gRPC `FriendsService`: validates requests, resolves nicknames through the
//! [`UserDirectory`], reads through the [`RelationshipCache`] and changes the
//! [`FriendshipStore`], invalidating both users' cache entries after every change.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use messenger_common::{Metrics, identity};
use messenger_proto::v1::friends_service_server::FriendsService as FriendsRpc;
use messenger_proto::v1::{
    AcceptFriendRequestRequest, AcceptFriendRequestResponse, CheckFriendshipRequest,
    CheckFriendshipResponse, Friend, FriendRequest, GetFriendsListRequest, GetFriendsListResponse,
    ListFriendRequestsRequest, ListFriendRequestsResponse, RejectFriendRequestRequest,
    RejectFriendRequestResponse, RemoveFriendRequest, RemoveFriendResponse, RequestDirection,
    SendFriendRequestRequest, SendFriendRequestResponse,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tonic::{Request, Response, Status};

use crate::cache::RelationshipCache;
use crate::directory::UserDirectory;
use crate::domain::{
    self, Direction, FriendEntry, Friendship, FriendshipStatus, Outcome, PairAction, PairCommand,
    UserId,
};
use crate::error::FriendsError;
use crate::store::FriendshipStore;

/// How many nicknames a list resolves at once.
const NICKNAME_LOOKUPS_IN_FLIGHT: usize = 16;

/// The friends service over its store, cache and user directory.
#[derive(Clone)]
pub struct FriendsService {
    store: Arc<dyn FriendshipStore>,
    cache: Arc<dyn RelationshipCache>,
    directory: Arc<dyn UserDirectory>,
    cache_timeout: Duration,
    /// Users whose cache invalidation failed and must be retried (see `invalidate`).
    owed_invalidations: Arc<Mutex<HashSet<UserId>>>,
    cache_metrics: CacheMetrics,
}

/// Counts relationship-cache lookups by outcome: `hit`, `miss`, `error` (failed or timed
/// out; the database answered) and `bypassed` (skipped while an invalidation is owed).
#[derive(Clone, Default)]
pub struct CacheMetrics {
    lookups: Family<[(&'static str, &'static str); 1], Counter>,
}

impl CacheMetrics {
    /// Counters registered in `metrics` as `friends_cache_lookups_total`.
    pub fn registered_in(metrics: &Metrics) -> Self {
        let cache_metrics = CacheMetrics::default();
        metrics.register(
            "friends_cache_lookups",
            "Relationship cache lookups, by outcome (hit, miss, error, bypassed)",
            cache_metrics.lookups.clone(),
        );
        cache_metrics
    }

    fn record(&self, outcome: &'static str) {
        self.lookups.get_or_create(&[("outcome", outcome)]).inc();
    }
}

/// A friend with their nickname.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamedFriend {
    pub entry: FriendEntry,
    /// Empty if the users service has no profile for them.
    pub nickname: String,
}

/// A pending request with both nicknames.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamedRequest {
    pub request: Friendship,
    /// The sender's nickname (empty without a profile).
    pub from_nickname: String,
    /// The addressee's nickname (empty without a profile).
    pub to_nickname: String,
}

impl FriendsService {
    /// A service on these parts; cache calls taking longer than `cache_timeout` count as
    /// cache failures (the database answers instead).
    pub fn new(
        store: Arc<dyn FriendshipStore>,
        cache: Arc<dyn RelationshipCache>,
        directory: Arc<dyn UserDirectory>,
        cache_timeout: Duration,
    ) -> Self {
        FriendsService {
            store,
            cache,
            directory,
            cache_timeout,
            owed_invalidations: Arc::default(),
            cache_metrics: CacheMetrics::default(),
        }
    }

    /// Records cache lookups in `metrics` (see [`CacheMetrics`]).
    pub fn with_metrics(mut self, metrics: &Metrics) -> Self {
        self.cache_metrics = CacheMetrics::registered_in(metrics);
        self
    }

    /// `actor` does `action` about the user called `nickname`.
    pub async fn change(
        &self,
        actor: UserId,
        nickname: &str,
        action: PairAction,
    ) -> Result<Outcome, FriendsError> {
        let nickname = domain::parse_nickname(nickname)?;
        let nickname = nickname.as_str();
        let other = self.directory.user_id_by_nickname(nickname).await?;
        let mut command = PairCommand::new(actor, other, action)?;
        if matches!(action, PairAction::SendRequest | PairAction::AcceptRequest) {
            // The events of these two are shown to people; the gateway fans them out
            // without asking the users service per event.
            let (actor_nickname, other_nickname) =
                self.event_nicknames(actor, other, nickname).await;
            command = command.with_nicknames(actor_nickname, other_nickname);
        }
        let outcome = self.store.apply(command).await?;
        tracing::debug!(%actor, %other, ?action, ?outcome, "friendship changed");
        self.invalidate(&[actor, other]).await;
        Ok(outcome)
    }

    /// Both nicknames for an event: the other's as stored (the request may differ in case),
    /// falling back to what the actor typed; empty for an unknown actor. A users service
    /// that cannot answer costs the event its nicknames, not the change.
    async fn event_nicknames(&self, actor: UserId, other: UserId, typed: &str) -> (String, String) {
        let (actor_nickname, other_nickname) = futures::join!(
            self.directory.nickname_of(actor),
            self.directory.nickname_of(other)
        );
        let found = |result: Result<Option<String>, FriendsError>| match result {
            Ok(nickname) => nickname,
            Err(error) => {
                tracing::warn!(%error, "no nickname for a friend event");
                None
            }
        };
        (
            found(actor_nickname).unwrap_or_default(),
            found(other_nickname).unwrap_or_else(|| typed.to_owned()),
        )
    }

    /// The pending and accepted rows of `user`, from the cache if it has them.
    pub async fn relationships(&self, user: UserId) -> Result<Vec<Friendship>, FriendsError> {
        // A change whose invalidation failed may have left stale entries: until they are
        // invalidated, the cache cannot be trusted.
        if !self.settle_invalidations().await {
            self.cache_metrics.record("bypassed");
            return self.store.relationships_of(user).await;
        }
        let generation = match self.with_cache_timeout(self.cache.lookup(user)).await {
            Ok(lookup) => match lookup.rows {
                Some(rows) => {
                    self.cache_metrics.record("hit");
                    return Ok(rows);
                }
                None => {
                    self.cache_metrics.record("miss");
                    Some(lookup.generation)
                }
            },
            Err(error) => {
                self.cache_metrics.record("error");
                tracing::warn!(%user, %error, "friends cache lookup failed; reading the database");
                None
            }
        };
        let rows = self.store.relationships_of(user).await?;
        if let Some(generation) = generation
            && let Err(error) = self
                .with_cache_timeout(self.cache.store(user, generation, &rows))
                .await
        {
            tracing::warn!(%user, %error, "caching friends failed");
        }
        Ok(rows)
    }

    /// The friends of `user` with their nicknames, oldest friendship first.
    pub async fn friends(&self, user: UserId) -> Result<Vec<NamedFriend>, FriendsError> {
        let rows = self.relationships(user).await?;
        let entries = domain::friends_of(user, &rows);
        let nicknames = self
            .nicknames(entries.iter().map(|entry| entry.user_id).collect())
            .await?;
        Ok(entries
            .into_iter()
            .zip(nicknames)
            .map(|(entry, nickname)| NamedFriend { entry, nickname })
            .collect())
    }

    /// Pending requests to or from `user`, newest first, with both nicknames.
    pub async fn pending(
        &self,
        user: UserId,
        direction: Direction,
    ) -> Result<Vec<NamedRequest>, FriendsError> {
        let rows = self.relationships(user).await?;
        let pending = domain::pending_requests(user, direction, &rows);
        if pending.is_empty() {
            return Ok(Vec::new());
        }
        let others: Vec<UserId> = pending.iter().map(|row| row.other_than(user)).collect();
        let own_nickname = self.nicknames(vec![user]).await?.pop().unwrap_or_default();
        let other_nicknames = self.nicknames(others).await?;
        Ok(pending
            .into_iter()
            .zip(other_nicknames)
            .map(|(request, other_nickname)| {
                let (from_nickname, to_nickname) = if request.requester == user {
                    (own_nickname.clone(), other_nickname)
                } else {
                    (other_nickname, own_nickname.clone())
                };
                NamedRequest {
                    request,
                    from_nickname,
                    to_nickname,
                }
            })
            .collect())
    }

    /// Which of `others` are not friends of `user`.
    pub async fn not_friends(
        &self,
        user: UserId,
        others: &[UserId],
    ) -> Result<Vec<UserId>, FriendsError> {
        let rows = self.relationships(user).await?;
        Ok(domain::not_friends(user, others, &rows))
    }

    /// Nicknames of `users` in the same order; empty for a user without a profile.
    async fn nicknames(&self, users: Vec<UserId>) -> Result<Vec<String>, FriendsError> {
        futures::stream::iter(users)
            .map(|user| async move {
                let nickname = self.directory.nickname_of(user).await?;
                if nickname.is_none() {
                    tracing::warn!(%user, "no profile for a user in a friends list");
                }
                Ok(nickname.unwrap_or_default())
            })
            .buffered(NICKNAME_LOOKUPS_IN_FLIGHT)
            .collect::<Vec<Result<String, FriendsError>>>()
            .await
            .into_iter()
            .collect()
    }

    /// Invalidates `users` after a change. On failure they are remembered and retried
    /// before the next cache read, which skips the cache until the retry succeeds.
    async fn invalidate(&self, users: &[UserId]) {
        self.owed_invalidations().extend(users.iter().copied());
        if !self.settle_invalidations().await {
            tracing::error!(?users, "invalidating the friends cache failed; will retry");
        }
    }

    /// Sends every owed invalidation; `true` when none is left owing.
    async fn settle_invalidations(&self) -> bool {
        let owed: Vec<UserId> = self.owed_invalidations().iter().copied().collect();
        if owed.is_empty() {
            return true;
        }
        match self.with_cache_timeout(self.cache.invalidate(&owed)).await {
            Ok(()) => {
                let mut still_owed = self.owed_invalidations();
                for user in &owed {
                    still_owed.remove(user);
                }
                true
            }
            Err(error) => {
                tracing::warn!(%error, owed = owed.len(), "friends cache invalidation pending");
                false
            }
        }
    }

    fn owed_invalidations(&self) -> std::sync::MutexGuard<'_, HashSet<UserId>> {
        // A plain set of ids: still consistent if a holder panicked.
        self.owed_invalidations
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    async fn with_cache_timeout<T>(
        &self,
        call: impl Future<Output = Result<T, FriendsError>>,
    ) -> Result<T, FriendsError> {
        tokio::time::timeout(self.cache_timeout, call)
            .await
            .unwrap_or_else(|_| Err(FriendsError::Unavailable("cache timed out".into())))
    }
}

fn timestamp(time: chrono::DateTime<chrono::Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: time.timestamp(),
        nanos: time.timestamp_subsec_nanos() as i32,
    }
}

fn proto_status(status: FriendshipStatus) -> messenger_proto::v1::FriendshipStatus {
    match status {
        FriendshipStatus::Requested => messenger_proto::v1::FriendshipStatus::Requested,
        FriendshipStatus::Accepted => messenger_proto::v1::FriendshipStatus::Accepted,
        FriendshipStatus::Rejected => messenger_proto::v1::FriendshipStatus::Rejected,
    }
}

fn user_id(raw: &str) -> Result<UserId, Status> {
    Ok(domain::parse_user_id("user_id", raw)?)
}

#[tonic::async_trait]
impl FriendsRpc for FriendsService {
    async fn get_friends_list(
        &self,
        request: Request<GetFriendsListRequest>,
    ) -> Result<Response<GetFriendsListResponse>, Status> {
        identity::require_user(&request, &request.get_ref().user_id)?;
        let user = user_id(&request.get_ref().user_id)?;
        let friends = self
            .friends(user)
            .await?
            .into_iter()
            .map(|friend| Friend {
                user_id: friend.entry.user_id.to_string(),
                nickname: friend.nickname,
                since: Some(timestamp(friend.entry.since)),
            })
            .collect();
        Ok(Response::new(GetFriendsListResponse { friends }))
    }

    async fn send_friend_request(
        &self,
        request: Request<SendFriendRequestRequest>,
    ) -> Result<Response<SendFriendRequestResponse>, Status> {
        identity::require_user(&request, &request.get_ref().user_id)?;
        let request = request.into_inner();
        let user = user_id(&request.user_id)?;
        let outcome = self
            .change(user, &request.nickname, PairAction::SendRequest)
            .await?;
        let status = match outcome {
            Outcome::Accepted => FriendshipStatus::Accepted,
            _ => FriendshipStatus::Requested,
        };
        Ok(Response::new(SendFriendRequestResponse {
            status: proto_status(status).into(),
        }))
    }

    async fn accept_friend_request(
        &self,
        request: Request<AcceptFriendRequestRequest>,
    ) -> Result<Response<AcceptFriendRequestResponse>, Status> {
        identity::require_user(&request, &request.get_ref().user_id)?;
        let request = request.into_inner();
        let user = user_id(&request.user_id)?;
        self.change(user, &request.nickname, PairAction::AcceptRequest)
            .await?;
        Ok(Response::new(AcceptFriendRequestResponse {}))
    }

    async fn reject_friend_request(
        &self,
        request: Request<RejectFriendRequestRequest>,
    ) -> Result<Response<RejectFriendRequestResponse>, Status> {
        identity::require_user(&request, &request.get_ref().user_id)?;
        let request = request.into_inner();
        let user = user_id(&request.user_id)?;
        self.change(user, &request.nickname, PairAction::RejectRequest)
            .await?;
        Ok(Response::new(RejectFriendRequestResponse {}))
    }

    async fn remove_friend(
        &self,
        request: Request<RemoveFriendRequest>,
    ) -> Result<Response<RemoveFriendResponse>, Status> {
        identity::require_user(&request, &request.get_ref().user_id)?;
        let request = request.into_inner();
        let user = user_id(&request.user_id)?;
        self.change(user, &request.nickname, PairAction::Remove)
            .await?;
        Ok(Response::new(RemoveFriendResponse {}))
    }

    async fn list_friend_requests(
        &self,
        request: Request<ListFriendRequestsRequest>,
    ) -> Result<Response<ListFriendRequestsResponse>, Status> {
        identity::require_user(&request, &request.get_ref().user_id)?;
        let request = request.into_inner();
        let user = user_id(&request.user_id)?;
        let direction = match RequestDirection::try_from(request.direction) {
            Ok(RequestDirection::Incoming) => Direction::Incoming,
            Ok(RequestDirection::Outgoing) => Direction::Outgoing,
            _ => {
                return Err(FriendsError::InvalidArgument(
                    "direction must be INCOMING or OUTGOING".into(),
                )
                .into());
            }
        };
        let requests = self
            .pending(user, direction)
            .await?
            .into_iter()
            .map(|named| FriendRequest {
                from_user_id: named.request.requester.to_string(),
                from_nickname: named.from_nickname,
                to_user_id: named.request.addressee.to_string(),
                to_nickname: named.to_nickname,
                status: proto_status(named.request.status).into(),
                created_at: Some(timestamp(named.request.created_at)),
                updated_at: Some(timestamp(named.request.updated_at)),
            })
            .collect();
        Ok(Response::new(ListFriendRequestsResponse { requests }))
    }

    async fn check_friendship(
        &self,
        request: Request<CheckFriendshipRequest>,
    ) -> Result<Response<CheckFriendshipResponse>, Status> {
        identity::require_user(&request, &request.get_ref().user_id)?;
        let request = request.into_inner();
        let user = user_id(&request.user_id)?;
        if request.other_user_ids.len() > domain::MAX_CHECKED_IDS {
            return Err(FriendsError::InvalidArgument(format!(
                "at most {} other_user_ids per call",
                domain::MAX_CHECKED_IDS
            ))
            .into());
        }
        let others = request
            .other_user_ids
            .iter()
            .map(|raw| domain::parse_user_id("other_user_ids", raw))
            .collect::<Result<Vec<_>, _>>()?;
        let not_friends = self
            .not_friends(user, &others)
            .await?
            .into_iter()
            .map(|id| id.to_string())
            .collect();
        Ok(Response::new(CheckFriendshipResponse { not_friends }))
    }
}
