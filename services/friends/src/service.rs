//! The gRPC `FriendsService`: validates requests, resolves nicknames through the
//! [`UserDirectory`] (a page at a time), reads list pages through the
//! [`RelationshipCache`] and changes the [`FriendshipStore`], invalidating both users'
//! cache entries after every change.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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

use crate::cache::{RelationshipCache, page_view};
use crate::directory::UserDirectory;
use crate::domain::{
    self, Direction, FriendEntry, Friendship, FriendshipStatus, ListCursor, Outcome, PairAction,
    PairCommand, UserId,
};
use crate::error::FriendsError;
use crate::store::FriendshipStore;

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

/// A page of the friend list and the cursor of the next page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FriendsPage {
    pub friends: Vec<NamedFriend>,
    pub next_cursor: Option<String>,
}

/// A page of a request list and the cursor of the next page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestsPage {
    pub requests: Vec<NamedRequest>,
    pub next_cursor: Option<String>,
}

/// Cuts `rows` (read with one row more than the page) to `limit`; the cursor after the
/// page's last row when a row was cut, else `None`.
fn next_cursor(
    rows: &mut Vec<Friendship>,
    limit: usize,
    cursor_after: impl Fn(&Friendship) -> ListCursor,
) -> Option<String> {
    if rows.len() <= limit {
        return None;
    }
    rows.truncate(limit);
    rows.last().map(|row| cursor_after(row).encode())
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

    /// A page of `user`'s rows as `view` names it, from the cache if it has it, else from
    /// `read` (the store), then cached.
    async fn cached_page<F>(
        &self,
        user: UserId,
        view: &str,
        read: F,
    ) -> Result<Vec<Friendship>, FriendsError>
    where
        F: Future<Output = Result<Vec<Friendship>, FriendsError>>,
    {
        // A change whose invalidation failed may have left stale entries: until they are
        // invalidated, the cache cannot be trusted.
        if !self.settle_invalidations().await {
            self.cache_metrics.record("bypassed");
            return read.await;
        }
        let generation = match self.with_cache_timeout(self.cache.lookup(user, view)).await {
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
        let rows = read.await?;
        if let Some(generation) = generation
            && let Err(error) = self
                .with_cache_timeout(self.cache.store(user, view, generation, &rows))
                .await
        {
            tracing::warn!(%user, %error, "caching friends failed");
        }
        Ok(rows)
    }

    /// A page of the friends of `user` with their nicknames, oldest friendship first:
    /// `limit` (0: the default) from `cursor` (empty: the start).
    pub async fn friends(
        &self,
        user: UserId,
        limit: u32,
        cursor: &str,
    ) -> Result<FriendsPage, FriendsError> {
        let limit = domain::page_limit(limit)?;
        let after = ListCursor::parse(cursor)?;
        let view = page_view("friends", limit, cursor);
        // One row more than the page says whether another page follows.
        let mut rows = self
            .cached_page(user, &view, self.store.friends_page(user, after, limit + 1))
            .await?;
        let next_cursor = next_cursor(&mut rows, limit, |row| ListCursor::after_friend(user, row));
        let entries = domain::friend_entries(user, &rows);
        let nicknames = self
            .nicknames(
                &entries
                    .iter()
                    .map(|entry| entry.user_id)
                    .collect::<Vec<_>>(),
            )
            .await?;
        let friends = entries
            .into_iter()
            .map(|entry| NamedFriend {
                nickname: nicknames.get(&entry.user_id).cloned().unwrap_or_default(),
                entry,
            })
            .collect();
        Ok(FriendsPage {
            friends,
            next_cursor,
        })
    }

    /// A page of the pending requests to or from `user`, newest first, with both
    /// nicknames: `limit` (0: the default) from `cursor` (empty: the start).
    pub async fn pending(
        &self,
        user: UserId,
        direction: Direction,
        limit: u32,
        cursor: &str,
    ) -> Result<RequestsPage, FriendsError> {
        let limit = domain::page_limit(limit)?;
        let after = ListCursor::parse(cursor)?;
        let list = match direction {
            Direction::Incoming => "incoming",
            Direction::Outgoing => "outgoing",
        };
        let view = page_view(list, limit, cursor);
        let mut rows = self
            .cached_page(
                user,
                &view,
                self.store.pending_page(user, direction, after, limit + 1),
            )
            .await?;
        let next_cursor = next_cursor(&mut rows, limit, |row| ListCursor::after_request(user, row));
        if rows.is_empty() {
            return Ok(RequestsPage {
                requests: Vec::new(),
                next_cursor,
            });
        }
        let mut people: Vec<UserId> = rows.iter().map(|row| row.other_than(user)).collect();
        people.push(user);
        let nicknames = self.nicknames(&people).await?;
        let nickname = |id: UserId| nicknames.get(&id).cloned().unwrap_or_default();
        let requests = rows
            .into_iter()
            .map(|request| NamedRequest {
                from_nickname: nickname(request.requester),
                to_nickname: nickname(request.addressee),
                request,
            })
            .collect();
        Ok(RequestsPage {
            requests,
            next_cursor,
        })
    }

    /// Which of `others` are not friends of `user`.
    pub async fn not_friends(
        &self,
        user: UserId,
        others: &[UserId],
    ) -> Result<Vec<UserId>, FriendsError> {
        let friends = self.store.friends_among(user, others).await?;
        Ok(domain::not_friends(user, others, &friends))
    }

    /// Nicknames of `users` (one users-service call per hundred); a user without a profile
    /// is missing from the map (and logged).
    async fn nicknames(&self, users: &[UserId]) -> Result<HashMap<UserId, String>, FriendsError> {
        let nicknames = self.directory.nicknames_of(users).await?;
        for user in users.iter().filter(|user| !nicknames.contains_key(user)) {
            tracing::warn!(%user, "no profile for a user in a friends list");
        }
        Ok(nicknames)
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
        let request = request.into_inner();
        let user = user_id(&request.user_id)?;
        let page = self.friends(user, request.limit, &request.cursor).await?;
        let friends = page
            .friends
            .into_iter()
            .map(|friend| Friend {
                user_id: friend.entry.user_id.to_string(),
                nickname: friend.nickname,
                since: Some(timestamp(friend.entry.since)),
            })
            .collect();
        Ok(Response::new(GetFriendsListResponse {
            friends,
            next_cursor: page.next_cursor.unwrap_or_default(),
        }))
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
        let page = self
            .pending(user, direction, request.limit, &request.cursor)
            .await?;
        let requests = page
            .requests
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
        Ok(Response::new(ListFriendRequestsResponse {
            requests,
            next_cursor: page.next_cursor.unwrap_or_default(),
        }))
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
