//! `/v1/auth/oauth`: sign in with an OAuth 2.0 / OpenID Connect provider, and link or
//! unlink one from a signed-in account. The auth service runs the flow; this module
//! binds it to the browser and hands the result over without putting a secret in a URL:
//!
//! 1. `GET …/{provider}/start` (or `POST …/{provider}/link` with a bearer token) asks
//!    auth to begin a flow, keeps the flow id in an HttpOnly `SameSite=Lax` cookie
//!    scoped to `/v1/auth/oauth/` and sends the browser to the provider;
//! 2. the provider redirects to `GET …/{provider}/callback`; the cookie comes back with
//!    it (Lax lets it through on that top-level navigation), auth completes the flow
//!    once, and the browser is redirected to the web client with the new access token in
//!    a one-minute HttpOnly `SameSite=Strict` cookie scoped to the exchange route;
//! 3. the web client `POST`s `…/session` and gets the token as JSON; the cookie is
//!    cleared.
//!
//! A failure at any step is a problem+json 4xx; the flow cookie is cleared at the
//! callback whatever happens, since auth has used the flow up.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use messenger_proto::v1 as proto;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::api::AppState;
use crate::api::extract::{ApiQuery, Authenticated};
use crate::api::types::LoggedIn;
use crate::error::{ApiError, Problem};

/// Holds the flow id between start and callback.
pub const FLOW_COOKIE: &str = "messenger_oauth_flow";
const FLOW_COOKIE_PATH: &str = "/v1/auth/oauth/";
/// Holds the access token between callback and the web client's exchange.
pub const SESSION_COOKIE: &str = "messenger_oauth_session";
pub const SESSION_PATH: &str = "/v1/auth/oauth/session";
const SESSION_COOKIE_MAX_AGE: u64 = 60;
/// Where the browser goes after the callback: the web client, told by the fragment
/// (never sent to a server) what to do next.
pub const SIGNED_IN_REDIRECT: &str = "/#oauth-signed-in";
pub const LINKED_REDIRECT: &str = "/#oauth-linked";

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct OAuthProviderInfo {
    /// The name in the routes below.
    pub name: String,
    /// What a button says: "Sign in with …".
    pub display_name: String,
    /// `oidc` or `oauth2`.
    pub kind: String,
    /// Where a browser starts a sign-in.
    pub start_url: String,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct OAuthProviders {
    pub providers: Vec<OAuthProviderInfo>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct OAuthLinkStarted {
    /// Send the browser here (the provider); it comes back to the callback, which
    /// redirects to the web client at `/#oauth-linked`.
    pub authorization_url: String,
}

/// The provider's redirect: `state` and `code`, or `error` (RFC 6749 §4.1.2). Other
/// parameters some providers add (`iss`, `scope`, `session_state`) are ignored.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CallbackQuery {
    pub state: Option<String>,
    pub code: Option<String>,
    pub error: Option<String>,
    pub error_description: Option<String>,
}

/// The providers this deployment offers.
#[utoipa::path(
    get, path = "/v1/auth/oauth/providers", tag = "auth",
    responses((status = 200, body = OAuthProviders))
)]
pub async fn providers(State(state): State<AppState>) -> Result<Json<OAuthProviders>, ApiError> {
    let request = state.peers.as_gateway(proto::ListOAuthProvidersRequest {});
    let answer = state
        .peers
        .auth
        .clone()
        .list_o_auth_providers(request)
        .await?
        .into_inner();
    Ok(Json(OAuthProviders {
        providers: answer
            .providers
            .into_iter()
            .map(|p| OAuthProviderInfo {
                start_url: format!("/v1/auth/oauth/{}/start", p.name),
                name: p.name,
                display_name: p.display_name,
                kind: p.kind,
            })
            .collect(),
    }))
}

/// Starts a sign-in: redirects the browser to the provider and sets the flow cookie.
#[utoipa::path(
    get, path = "/v1/auth/oauth/{provider}/start", tag = "auth",
    params(("provider" = String, Path, description = "A name from /v1/auth/oauth/providers")),
    responses(
        (status = 302, description = "To the provider; sets the HttpOnly flow cookie"),
        (status = 404, description = "No such provider", body = Problem),
        (status = 424, description = "The provider cannot be reached", body = Problem),
    )
)]
pub async fn start(
    State(state): State<AppState>,
    Path(provider): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let request = state
        .peers
        .as_gateway(proto::StartOAuthRequest { provider });
    let started = begin(&state, request).await?;
    let mut response = redirect(StatusCode::FOUND, &started.authorization_url)?;
    set_cookie(&mut response, &flow_cookie(&started, &headers))?;
    Ok(response)
}

/// Starts linking a provider to your account: sets the flow cookie and answers where
/// to send the browser.
#[utoipa::path(
    post, path = "/v1/auth/oauth/{provider}/link", tag = "auth",
    security(("bearer" = [])),
    params(("provider" = String, Path)),
    responses(
        (status = 200, description = "Sets the HttpOnly flow cookie", body = OAuthLinkStarted),
        (status = 401, body = Problem),
        (status = 404, description = "No such provider", body = Problem),
        (status = 424, description = "The provider cannot be reached", body = Problem),
    )
)]
pub async fn link(
    State(state): State<AppState>,
    Path(provider): Path<String>,
    user: Authenticated,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let request = state
        .peers
        .as_user(user.user_id, proto::StartOAuthRequest { provider });
    let started = begin(&state, request).await?;
    let mut response = Json(OAuthLinkStarted {
        authorization_url: started.authorization_url.clone(),
    })
    .into_response();
    set_cookie(&mut response, &flow_cookie(&started, &headers))?;
    Ok(response)
}

/// Unlinks a provider from your account, unless it is the account's only way in.
#[utoipa::path(
    delete, path = "/v1/auth/oauth/{provider}/link", tag = "auth",
    security(("bearer" = [])),
    params(("provider" = String, Path)),
    responses(
        (status = 204, description = "Unlinked"),
        (status = 401, body = Problem),
        (status = 404, description = "Not linked", body = Problem),
        (status = 409, description = "The account's only way to sign in", body = Problem),
    )
)]
pub async fn unlink(
    State(state): State<AppState>,
    Path(provider): Path<String>,
    user: Authenticated,
) -> Result<StatusCode, ApiError> {
    let request = state
        .peers
        .as_user(user.user_id, proto::UnlinkOAuthRequest { provider });
    state.peers.auth.clone().unlink_o_auth(request).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Where the provider sends the browser back. Completes the flow named by the flow
/// cookie, once; a sign-in redirects to the web client with the token in a short-lived
/// HttpOnly cookie for `POST /v1/auth/oauth/session`.
#[utoipa::path(
    get, path = "/v1/auth/oauth/{provider}/callback", tag = "auth",
    params(("provider" = String, Path), CallbackQuery),
    responses(
        (status = 303, description = "To the web client (`/#oauth-signed-in` or `/#oauth-linked`)"),
        (status = 400, description = "No, an unknown, used or expired flow; a state that does not match", body = Problem),
        (status = 401, description = "The provider refused, or its ID token is not valid", body = Problem),
        (status = 404, description = "No such provider", body = Problem),
        (status = 409, description = "The verified email belongs to an account: sign in to it and link", body = Problem),
        (status = 424, description = "The provider cannot be reached or answers nonsense", body = Problem),
    )
)]
pub async fn callback(
    State(state): State<AppState>,
    Path(provider): Path<String>,
    headers: HeaderMap,
    ApiQuery(query): ApiQuery<CallbackQuery>,
) -> Response {
    let outcome = finish(&state, provider, &headers, query).await;
    let mut response = match outcome {
        Ok(response) => response,
        Err(error) => error.into_response(),
    };
    // The flow is used up whatever happened.
    let clear =
        format!("{FLOW_COOKIE}=; Path={FLOW_COOKIE_PATH}; Max-Age=0; HttpOnly; SameSite=Lax");
    if let Ok(value) = HeaderValue::from_str(&clear) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

async fn finish(
    state: &AppState,
    provider: String,
    headers: &HeaderMap,
    query: CallbackQuery,
) -> Result<Response, ApiError> {
    let flow_id = cookie(headers, FLOW_COOKIE).ok_or_else(|| {
        ApiError::bad_request(
            "no sign-in was started in this browser (the flow cookie is missing); start it again",
        )
    })?;
    let request = state.peers.as_gateway(proto::OAuthSignInRequest {
        provider,
        flow_id,
        state: query.state.unwrap_or_default(),
        code: query.code.unwrap_or_default(),
        error: query.error.unwrap_or_default(),
        error_description: query.error_description.unwrap_or_default(),
    });
    let answer = state
        .peers
        .auth
        .clone()
        .o_auth_sign_in(request)
        .await
        .map_err(provider_error)?
        .into_inner();
    match answer.outcome {
        Some(proto::o_auth_sign_in_response::Outcome::SignedIn(login)) => {
            let mut response = redirect(StatusCode::SEE_OTHER, SIGNED_IN_REDIRECT)?;
            let cookie = format!(
                "{SESSION_COOKIE}={}; Path={SESSION_PATH}; Max-Age={SESSION_COOKIE_MAX_AGE}; \
                 HttpOnly; SameSite=Strict{}",
                login.access_token,
                secure_attribute(headers)
            );
            set_cookie(&mut response, &cookie)?;
            Ok(response)
        }
        Some(proto::o_auth_sign_in_response::Outcome::LinkedUserId(_)) => {
            redirect(StatusCode::SEE_OTHER, LINKED_REDIRECT)
        }
        None => Err(ApiError::internal("auth completed a flow with no outcome")),
    }
}

/// Hands the token of a just completed sign-in to the web client, once.
#[utoipa::path(
    post, path = "/v1/auth/oauth/session", tag = "auth",
    responses(
        (status = 200, description = "Signed in; the cookie is cleared", body = LoggedIn),
        (status = 401, description = "No sign-in to hand over (none, expired or already taken)", body = Problem),
    )
)]
pub async fn session(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let clear =
        format!("{SESSION_COOKIE}=; Path={SESSION_PATH}; Max-Age=0; HttpOnly; SameSite=Strict");
    let mut response = match handover(&state, &headers).await {
        Ok(logged_in) => Json(logged_in).into_response(),
        Err(error) => error.into_response(),
    };
    if let Ok(value) = HeaderValue::from_str(&clear) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

async fn handover(state: &AppState, headers: &HeaderMap) -> Result<LoggedIn, ApiError> {
    let none = || ApiError::unauthenticated("no OAuth sign-in to hand over; sign in again");
    let token = cookie(headers, SESSION_COOKIE).ok_or_else(none)?;
    let request = state.peers.as_gateway(proto::ValidateTokenRequest {
        access_token: token.clone(),
    });
    let answer = state
        .peers
        .auth
        .clone()
        .validate_token(request)
        .await
        .map_err(|status| match status.code() {
            tonic::Code::Unauthenticated | tonic::Code::InvalidArgument => none(),
            _ => ApiError::from(status),
        })?
        .into_inner();
    Ok(LoggedIn::from(proto::LoginResponse {
        access_token: token,
        token_type: "Bearer".to_owned(),
        expires_at: answer.expires_at,
        user_id: answer.user_id,
    }))
}

async fn begin(
    state: &AppState,
    request: tonic::Request<proto::StartOAuthRequest>,
) -> Result<proto::StartOAuthResponse, ApiError> {
    Ok(state
        .peers
        .auth
        .clone()
        .start_o_auth(request)
        .await
        .map_err(provider_error)?
        .into_inner())
}

/// Auth's FAILED_PRECONDITION from a flow means the provider failed (down, or answering
/// nonsense): 424, so it is not mistaken for a conflict with the client's own data.
fn provider_error(status: tonic::Status) -> ApiError {
    if status.code() == tonic::Code::FailedPrecondition {
        return ApiError::new(
            StatusCode::FAILED_DEPENDENCY,
            "provider_failed",
            status.message().to_owned(),
        );
    }
    ApiError::from(status)
}

fn flow_cookie(started: &proto::StartOAuthResponse, headers: &HeaderMap) -> String {
    let now = chrono::Utc::now().timestamp();
    let max_age = started
        .expires_at
        .as_ref()
        .map_or(300, |at| (at.seconds - now).max(1));
    format!(
        "{FLOW_COOKIE}={}; Path={FLOW_COOKIE_PATH}; Max-Age={max_age}; HttpOnly; SameSite=Lax{}",
        started.flow_id,
        secure_attribute(headers)
    )
}

/// `; Secure` unless the browser talks plain HTTP to a loopback address (`messenger
/// dev`, tests): anywhere else the cookies must only travel over TLS.
fn secure_attribute(headers: &HeaderMap) -> &'static str {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    let loopback = name == "localhost"
        || name
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if loopback { "" } else { "; Secure" }
}

/// The value of cookie `name` in the request's `Cookie` headers.
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(key, _)| *key == name)
        .map(|(_, value)| value.trim().to_owned())
        .filter(|value| !value.is_empty())
}

fn redirect(status: StatusCode, location: &str) -> Result<Response, ApiError> {
    let location = HeaderValue::from_str(location)
        .map_err(|_| ApiError::internal("auth answered an unusable redirect URL"))?;
    let mut response = status.into_response();
    response.headers_mut().insert(header::LOCATION, location);
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

fn set_cookie(response: &mut Response, cookie: &str) -> Result<(), ApiError> {
    let value = HeaderValue::from_str(cookie)
        .map_err(|_| ApiError::internal("auth answered an unusable flow id or token"))?;
    response.headers_mut().append(header::SET_COOKIE, value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, value.parse().unwrap());
        }
        map
    }

    #[test]
    fn cookies_are_found_by_exact_name_in_any_cookie_header() {
        let map = headers(&[
            ("cookie", "a=1; messenger_oauth_flow_x=nope"),
            ("cookie", "theme=dark;  messenger_oauth_flow=abc123 ; z=9"),
        ]);
        assert_eq!(cookie(&map, FLOW_COOKIE).as_deref(), Some("abc123"));
        assert_eq!(cookie(&map, "missing"), None);
        assert_eq!(
            cookie(
                &headers(&[("cookie", "messenger_oauth_flow=")]),
                FLOW_COOKIE
            ),
            None
        );
    }

    #[test]
    fn cookies_are_secure_except_on_plain_loopback() {
        for (host, secure) in [
            ("127.0.0.1:8080", false),
            ("localhost:8080", false),
            ("[::1]:8080", false),
            ("localhost", false),
            ("chat.example.com", true),
            ("chat.example.com:443", true),
            ("", true),
        ] {
            let attribute = secure_attribute(&headers(&[("host", host)]));
            assert_eq!(attribute == "; Secure", secure, "{host:?}");
        }
    }
}
