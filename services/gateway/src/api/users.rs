//! `/v1/users`: your own profile, other people's, nickname search.

use axum::Json;
use axum::extract::{Path, State};
use messenger_proto::v1 as proto;

use crate::api::AppState;
use crate::api::extract::{ApiJson, ApiQuery, Authenticated, page_limit, parse_uuid};
use crate::api::types::{Profile, ProfileChange, ProfilePage, SearchQuery};
use crate::error::{ApiError, Problem};

/// Your profile.
#[utoipa::path(
    get, path = "/v1/users/me", tag = "users",
    security(("bearer" = [])),
    responses(
        (status = 200, body = Profile),
        (status = 401, body = Problem),
        (status = 404, description = "The profile is not created yet (just registered)", body = Problem),
    )
)]
pub async fn get_me(
    State(state): State<AppState>,
    user: Authenticated,
) -> Result<Json<Profile>, ApiError> {
    let request = state.peers.as_user(
        user.user_id,
        proto::GetUserProfileRequest {
            user_id: user.user_id.to_string(),
        },
    );
    let profile = state.peers.users.clone().get_user_profile(request).await?;
    Ok(Json(profile.into_inner().into()))
}

/// Changes your nickname, bio or avatar.
#[utoipa::path(
    patch, path = "/v1/users/me", tag = "users",
    security(("bearer" = [])),
    request_body = ProfileChange,
    responses(
        (status = 200, body = Profile),
        (status = 400, body = Problem),
        (status = 401, body = Problem),
        (status = 409, description = "Nickname taken", body = Problem),
    )
)]
pub async fn patch_me(
    State(state): State<AppState>,
    user: Authenticated,
    ApiJson(change): ApiJson<ProfileChange>,
) -> Result<Json<Profile>, ApiError> {
    if change.nickname.is_none() && change.bio.is_none() && change.avatar_url.is_none() {
        return Err(ApiError::bad_request(
            "nothing to change: set nickname, bio or avatar_url",
        ));
    }
    let request = state.peers.as_user(
        user.user_id,
        proto::UpdateUserProfileRequest {
            user_id: user.user_id.to_string(),
            nickname: change.nickname,
            bio: change.bio,
            avatar_url: change.avatar_url,
        },
    );
    let profile = state
        .peers
        .users
        .clone()
        .update_user_profile(request)
        .await?;
    Ok(Json(profile.into_inner().into()))
}

/// Someone's profile by id.
#[utoipa::path(
    get, path = "/v1/users/{user_id}", tag = "users",
    security(("bearer" = [])),
    params(("user_id" = String, Path, description = "User id (UUID)")),
    responses(
        (status = 200, body = Profile),
        (status = 400, body = Problem),
        (status = 401, body = Problem),
        (status = 404, body = Problem),
    )
)]
pub async fn get_user(
    State(state): State<AppState>,
    user: Authenticated,
    Path(user_id): Path<String>,
) -> Result<Json<Profile>, ApiError> {
    let wanted = parse_uuid("user_id", &user_id)?;
    let request = state.peers.as_user(
        user.user_id,
        proto::GetUserProfileRequest {
            user_id: wanted.to_string(),
        },
    );
    let profile = state.peers.users.clone().get_user_profile(request).await?;
    Ok(Json(profile.into_inner().into()))
}

/// Someone's profile by nickname (case-insensitive).
#[utoipa::path(
    get, path = "/v1/users/by-nickname/{nickname}", tag = "users",
    security(("bearer" = [])),
    params(("nickname" = String, Path)),
    responses(
        (status = 200, body = Profile),
        (status = 400, body = Problem),
        (status = 401, body = Problem),
        (status = 404, body = Problem),
    )
)]
pub async fn get_by_nickname(
    State(state): State<AppState>,
    user: Authenticated,
    Path(nickname): Path<String>,
) -> Result<Json<Profile>, ApiError> {
    let request = state.peers.as_user(
        user.user_id,
        proto::GetUserProfileByNicknameRequest { nickname },
    );
    let profile = state
        .peers
        .users
        .clone()
        .get_user_profile_by_nickname(request)
        .await?;
    Ok(Json(profile.into_inner().into()))
}

/// Nickname prefix search, ordered by nickname, one page at a time.
#[utoipa::path(
    get, path = "/v1/users", tag = "users",
    security(("bearer" = [])),
    params(SearchQuery),
    responses(
        (status = 200, body = ProfilePage),
        (status = 400, body = Problem),
        (status = 401, body = Problem),
    )
)]
pub async fn search(
    State(state): State<AppState>,
    user: Authenticated,
    ApiQuery(query): ApiQuery<SearchQuery>,
) -> Result<Json<ProfilePage>, ApiError> {
    let request = state.peers.as_user(
        user.user_id,
        proto::SearchUsersRequest {
            prefix: query.search,
            page_size: page_limit(query.limit)?,
            page_token: query.cursor.unwrap_or_default(),
        },
    );
    let page = state
        .peers
        .users
        .clone()
        .search_users(request)
        .await?
        .into_inner();
    Ok(Json(ProfilePage {
        users: page.users.into_iter().map(Profile::from).collect(),
        next_cursor: Some(page.next_page_token).filter(|t| !t.is_empty()),
    }))
}
