//! `/v1/auth`: register, login, logout.

use axum::extract::State;
use axum::http::StatusCode;
use messenger_proto::v1 as proto;

use crate::api::AppState;
use crate::api::extract::{ApiJson, Authenticated};
use crate::api::types::{LoggedIn, LoginBody, RegisterBody, Registered};
use crate::error::{ApiError, Problem};
use crate::middleware::current_context;

/// Creates an account. Limited per client address.
#[utoipa::path(
    post, path = "/v1/auth/register", tag = "auth",
    request_body = RegisterBody,
    responses(
        (status = 201, description = "Account created", body = Registered),
        (status = 400, description = "Bad email, password or nickname", body = Problem),
        (status = 409, description = "Email or nickname taken", body = Problem),
        (status = 429, description = "Too many registrations from this address", body = Problem),
    )
)]
pub async fn register(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<RegisterBody>,
) -> Result<(StatusCode, axum::Json<Registered>), ApiError> {
    state
        .register_limiter
        .check(current_context().and_then(|c| c.client_ip))?;
    let request = state.peers.as_gateway(proto::RegisterRequest {
        email: body.email,
        password: body.password,
        nickname: body.nickname,
    });
    let answer = state
        .peers
        .auth
        .clone()
        .register(request)
        .await?
        .into_inner();
    Ok((
        StatusCode::CREATED,
        axum::Json(Registered {
            user_id: answer.user_id,
        }),
    ))
}

/// Exchanges email and password for an access token. Wrong email and wrong password
/// give the same 401.
#[utoipa::path(
    post, path = "/v1/auth/login", tag = "auth",
    request_body = LoginBody,
    responses(
        (status = 200, description = "Signed in", body = LoggedIn),
        (status = 400, description = "Malformed request", body = Problem),
        (status = 401, description = "Wrong email or password", body = Problem),
        (status = 429, description = "Too many attempts", body = Problem),
    )
)]
pub async fn login(
    State(state): State<AppState>,
    ApiJson(body): ApiJson<LoginBody>,
) -> Result<axum::Json<LoggedIn>, ApiError> {
    state
        .login_limiter
        .check(current_context().and_then(|c| c.client_ip))?;
    let request = state.peers.as_gateway(proto::LoginRequest {
        email: body.email,
        password: body.password,
    });
    let answer = state.peers.auth.clone().login(request).await?.into_inner();
    Ok(axum::Json(answer.into()))
}

/// Revokes the token at once for every service, and ends its event streams.
#[utoipa::path(
    post, path = "/v1/auth/logout", tag = "auth",
    security(("bearer" = [])),
    responses(
        (status = 204, description = "The token is revoked, on every gateway replica"),
        (status = 401, description = "No valid token", body = Problem),
        (status = 503, description = "Revoked, but not yet confirmed by every gateway replica: retry", body = Problem),
    )
)]
pub async fn logout(
    State(state): State<AppState>,
    user: Authenticated,
) -> Result<StatusCode, ApiError> {
    let request = state.peers.as_gateway(proto::LogoutRequest {
        access_token: user.token.clone(),
    });
    state.peers.auth.clone().logout(request).await?;
    state.hub.close_token(&user.fingerprint);
    if let Some(revocations) = &state.revocations {
        revocations
            .broadcast(&user.fingerprint)
            .await
            .map_err(|error| {
                tracing::warn!(%error, "logout not confirmed by every gateway replica");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "logout_unconfirmed",
                    "the token is revoked, but not every gateway replica confirmed it yet; \
                     retry the logout",
                )
            })?;
    }
    Ok(StatusCode::NO_CONTENT)
}
