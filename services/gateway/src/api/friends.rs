//! `/v1/friends`: your friends and friend requests, the other person named by nickname.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use messenger_proto::v1 as proto;

use crate::api::AppState;
use crate::api::extract::{ApiJson, ApiQuery, Authenticated, page_limit};
use crate::api::types::{
    Direction, DirectionQuery, FriendList, FriendRequestBody, FriendRequestList, FriendRequestSent,
    FriendRequestView, FriendView, PageQuery, timestamp,
};
use crate::error::{ApiError, Problem};

/// Your friends, oldest friendship first, a page at a time.
#[utoipa::path(
    get, path = "/v1/friends", tag = "friends",
    security(("bearer" = [])),
    params(PageQuery),
    responses(
        (status = 200, body = FriendList),
        (status = 400, body = Problem),
        (status = 401, body = Problem),
    )
)]
pub async fn list_friends(
    State(state): State<AppState>,
    user: Authenticated,
    ApiQuery(query): ApiQuery<PageQuery>,
) -> Result<Json<FriendList>, ApiError> {
    let request = state.peers.as_user(
        user.user_id,
        proto::GetFriendsListRequest {
            user_id: user.user_id.to_string(),
            limit: page_limit(query.limit)?,
            cursor: query.cursor.unwrap_or_default(),
        },
    );
    let page = state
        .peers
        .friends
        .clone()
        .get_friends_list(request)
        .await?
        .into_inner();
    Ok(Json(FriendList {
        next_cursor: Some(page.next_cursor).filter(|c| !c.is_empty()),
        friends: page
            .friends
            .into_iter()
            .map(|f| FriendView {
                since: timestamp(f.since.as_ref()),
                user_id: f.user_id,
                nickname: f.nickname,
            })
            .collect(),
    }))
}

/// Ends a friendship, for both sides.
#[utoipa::path(
    delete, path = "/v1/friends/{nickname}", tag = "friends",
    security(("bearer" = [])),
    params(("nickname" = String, Path)),
    responses(
        (status = 204, description = "No longer friends"),
        (status = 400, body = Problem),
        (status = 401, body = Problem),
        (status = 404, body = Problem),
    )
)]
pub async fn remove_friend(
    State(state): State<AppState>,
    user: Authenticated,
    Path(nickname): Path<String>,
) -> Result<StatusCode, ApiError> {
    let request = state.peers.as_user(
        user.user_id,
        proto::RemoveFriendRequest {
            user_id: user.user_id.to_string(),
            nickname,
        },
    );
    state.peers.friends.clone().remove_friend(request).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Pending requests addressed to you (`incoming`) or sent by you (`outgoing`), newest
/// first, a page at a time.
#[utoipa::path(
    get, path = "/v1/friends/requests", tag = "friends",
    security(("bearer" = [])),
    params(DirectionQuery),
    responses(
        (status = 200, body = FriendRequestList),
        (status = 400, body = Problem),
        (status = 401, body = Problem),
    )
)]
pub async fn list_requests(
    State(state): State<AppState>,
    user: Authenticated,
    ApiQuery(query): ApiQuery<DirectionQuery>,
) -> Result<Json<FriendRequestList>, ApiError> {
    let direction = match query.direction.unwrap_or_default() {
        Direction::Incoming => proto::RequestDirection::Incoming,
        Direction::Outgoing => proto::RequestDirection::Outgoing,
    };
    let request = state.peers.as_user(
        user.user_id,
        proto::ListFriendRequestsRequest {
            user_id: user.user_id.to_string(),
            direction: direction.into(),
            limit: page_limit(query.limit)?,
            cursor: query.cursor.unwrap_or_default(),
        },
    );
    let page = state
        .peers
        .friends
        .clone()
        .list_friend_requests(request)
        .await?
        .into_inner();
    Ok(Json(FriendRequestList {
        next_cursor: Some(page.next_cursor).filter(|c| !c.is_empty()),
        requests: page
            .requests
            .into_iter()
            .map(|r| FriendRequestView {
                created_at: timestamp(r.created_at.as_ref()),
                from_user_id: r.from_user_id,
                from_nickname: r.from_nickname,
                to_user_id: r.to_user_id,
                to_nickname: r.to_nickname,
            })
            .collect(),
    }))
}

/// Asks someone to be your friend. If they had already asked you, you are now friends.
#[utoipa::path(
    post, path = "/v1/friends/requests", tag = "friends",
    security(("bearer" = [])),
    request_body = FriendRequestBody,
    responses(
        (status = 201, description = "Request sent", body = FriendRequestSent),
        (status = 200, description = "Their pending request to you was accepted", body = FriendRequestSent),
        (status = 400, description = "Bad nickname, or yourself", body = Problem),
        (status = 401, body = Problem),
        (status = 404, description = "Nobody has that nickname", body = Problem),
        (status = 409, description = "Already pending or already friends (`already_exists`), or they have too many requests waiting for an answer (`too_many_pending_requests`)", body = Problem),
        (status = 429, description = "They declined your last request too recently; `Retry-After` says for how long (`rate_limited`)", body = Problem),
    )
)]
pub async fn send_request(
    State(state): State<AppState>,
    user: Authenticated,
    ApiJson(body): ApiJson<FriendRequestBody>,
) -> Result<(StatusCode, Json<FriendRequestSent>), ApiError> {
    let request = state.peers.as_user(
        user.user_id,
        proto::SendFriendRequestRequest {
            user_id: user.user_id.to_string(),
            nickname: body.nickname,
        },
    );
    let answer = state
        .peers
        .friends
        .clone()
        .send_friend_request(request)
        .await
        .map_err(send_request_error)?
        .into_inner();
    Ok(match answer.status() {
        proto::FriendshipStatus::Accepted => (
            StatusCode::OK,
            Json(FriendRequestSent {
                status: "accepted".into(),
            }),
        ),
        _ => (
            StatusCode::CREATED,
            Json(FriendRequestSent {
                status: "requested".into(),
            }),
        ),
    })
}

/// Accepts the pending request `nickname` sent you.
#[utoipa::path(
    post, path = "/v1/friends/requests/{nickname}/accept", tag = "friends",
    security(("bearer" = [])),
    params(("nickname" = String, Path, description = "Who sent the request")),
    responses(
        (status = 204, description = "You are now friends"),
        (status = 400, body = Problem),
        (status = 401, body = Problem),
        (status = 404, description = "No pending request from them", body = Problem),
    )
)]
pub async fn accept_request(
    State(state): State<AppState>,
    user: Authenticated,
    Path(nickname): Path<String>,
) -> Result<StatusCode, ApiError> {
    let request = state.peers.as_user(
        user.user_id,
        proto::AcceptFriendRequestRequest {
            user_id: user.user_id.to_string(),
            nickname,
        },
    );
    state
        .peers
        .friends
        .clone()
        .accept_friend_request(request)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Rejects the pending request `nickname` sent you.
#[utoipa::path(
    post, path = "/v1/friends/requests/{nickname}/reject", tag = "friends",
    security(("bearer" = [])),
    params(("nickname" = String, Path, description = "Who sent the request")),
    responses(
        (status = 204, description = "Rejected"),
        (status = 400, body = Problem),
        (status = 401, body = Problem),
        (status = 404, description = "No pending request from them", body = Problem),
    )
)]
pub async fn reject_request(
    State(state): State<AppState>,
    user: Authenticated,
    Path(nickname): Path<String>,
) -> Result<StatusCode, ApiError> {
    let request = state.peers.as_user(
        user.user_id,
        proto::RejectFriendRequestRequest {
            user_id: user.user_id.to_string(),
            nickname,
        },
    );
    state
        .peers
        .friends
        .clone()
        .reject_friend_request(request)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `FAILED_PRECONDITION` is the one refusal of `SendFriendRequest` a client can only wait
/// out (the addressee's pending requests are at their cap): it gets its own code.
fn send_request_error(status: tonic::Status) -> ApiError {
    if status.code() == tonic::Code::FailedPrecondition {
        return ApiError::new(
            StatusCode::CONFLICT,
            "too_many_pending_requests",
            status.message(),
        );
    }
    status.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_limits_are_4xx_with_stable_codes() {
        let full = send_request_error(tonic::Status::failed_precondition(
            "this user already has 100 friend requests waiting for an answer",
        ));
        assert_eq!(
            (full.status.as_u16(), full.code),
            (409, "too_many_pending_requests")
        );
        assert!(
            full.detail.contains("100 friend requests"),
            "{}",
            full.detail
        );
        let mut cooldown = tonic::Status::resource_exhausted("you can ask again after ...");
        cooldown
            .metadata_mut()
            .insert("retry-after", "3600".parse().unwrap());
        let cooldown = send_request_error(cooldown);
        assert_eq!(
            (cooldown.status.as_u16(), cooldown.code),
            (429, "rate_limited")
        );
        assert_eq!(cooldown.retry_after, Some(3600));
        let taken = send_request_error(tonic::Status::already_exists("already friends"));
        assert_eq!((taken.status.as_u16(), taken.code), (409, "already_exists"));
    }
}
