//! Extractors that turn every malformed input into a problem+json 4xx naming what is
//! wrong, and [`Authenticated`]: the acting user, taken only from a token auth accepts.

use std::time::{Duration, Instant, SystemTime};

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Query, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use messenger_proto::v1 as proto;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::api::AppState;
use crate::error::ApiError;
use crate::stream::{TokenFingerprint, token_fingerprint};
use crate::token_cache::Lookup;

/// A JSON body; errors are 400 (malformed, missing/unknown field, wrong type), 413 (too
/// large) or 415 (not JSON).
pub struct ApiJson<T>(pub T);

impl<T, S> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(request, state).await {
            Ok(Json(value)) => Ok(Self(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    let status = rejection.status();
    let text = rejection.body_text();
    match rejection {
        JsonRejection::JsonDataError(_) | JsonRejection::JsonSyntaxError(_) => {
            // serde's message names the field ("missing field `nickname`", "unknown
            // field `admin`", "invalid type: integer, expected a string").
            ApiError::bad_request(strip_prefix(&text))
        }
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as JSON with Content-Type: application/json",
        ),
        _ if status == StatusCode::PAYLOAD_TOO_LARGE => ApiError::payload_too_large(),
        _ => ApiError::bad_request(text),
    }
}

/// axum prefixes serde's precise message with a generic sentence; keep the precise part.
fn strip_prefix(text: &str) -> String {
    text.split_once(": ")
        .map_or(text, |(_, rest)| rest)
        .to_owned()
}

/// Query parameters; an unknown or malformed parameter is a 400 naming it.
pub struct ApiQuery<T>(pub T);

impl<T, S> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match Query::<T>::from_request_parts(parts, state).await {
            Ok(Query(value)) => Ok(Self(value)),
            Err(rejection) => Err(query_rejection(rejection)),
        }
    }
}

fn query_rejection(rejection: QueryRejection) -> ApiError {
    ApiError::bad_request(format!("query: {}", strip_prefix(&rejection.body_text())))
}

/// A UUID from a path segment or body field, or a 400 naming `field`.
pub fn parse_uuid(field: &str, value: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(value).map_err(|_| {
        ApiError::invalid_field(
            field,
            format!("{} is not a UUID", messenger_common::ids::excerpt(value)),
        )
    })
}

/// The user the request acts for, from `Authorization: Bearer <token>` as validated by
/// the auth service. Nothing the client puts in a path or body ever names the actor.
#[derive(Debug, Clone)]
pub struct Authenticated {
    pub user_id: Uuid,
    pub token: String,
    pub fingerprint: TokenFingerprint,
}

/// The bearer token of a request, if it has one.
pub fn bearer_token(parts: &Parts) -> Result<Option<String>, ApiError> {
    let Some(value) = parts.headers.get(http::header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| ApiError::unauthenticated("malformed Authorization header"))?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|token| !token.is_empty() && token.len() <= 512)
        .ok_or_else(|| ApiError::unauthenticated("expected Authorization: Bearer <token>"))?;
    Ok(Some(token.to_owned()))
}

impl Authenticated {
    /// Asks auth who `token` belongs to.
    pub async fn from_token(state: &AppState, token: String) -> Result<Self, ApiError> {
        let fingerprint = token_fingerprint(&token);
        let cache = state.revocations.as_ref().map(|r| r.cache());
        let ticket = match cache.map(|cache| cache.lookup(&fingerprint, Instant::now())) {
            Some(Lookup::Hit(user_id)) => {
                return Ok(Self {
                    user_id,
                    fingerprint,
                    token,
                });
            }
            Some(Lookup::Miss(ticket)) => Some(ticket),
            None => None,
        };
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
                tonic::Code::Unauthenticated | tonic::Code::InvalidArgument => {
                    ApiError::unauthenticated("the access token is invalid, expired or revoked")
                }
                _ => ApiError::from(status),
            })?
            .into_inner();
        let user_id = Uuid::parse_str(&answer.user_id)
            .map_err(|_| ApiError::internal("auth answered a user id that is not a UUID"))?;
        if let (Some(cache), Some(ticket), Some(expires_at)) = (cache, ticket, answer.expires_at) {
            let expires_at = std::time::UNIX_EPOCH
                + Duration::new(
                    u64::try_from(expires_at.seconds).unwrap_or_default(),
                    u32::try_from(expires_at.nanos).unwrap_or_default(),
                );
            let valid_for = expires_at
                .duration_since(SystemTime::now())
                .unwrap_or_default();
            cache.fill(ticket, fingerprint, user_id, valid_for, Instant::now());
        }
        Ok(Self {
            user_id,
            fingerprint,
            token,
        })
    }
}

impl FromRequestParts<AppState> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let token = bearer_token(parts)?.ok_or_else(|| {
            ApiError::unauthenticated("this request needs Authorization: Bearer <token>")
        })?;
        Self::from_token(state, token).await
    }
}

/// A page size from the query: absent is the service's default, otherwise 1..=100.
pub fn page_limit(limit: Option<u32>) -> Result<u32, ApiError> {
    match limit {
        None => Ok(0),
        Some(n @ 1..=100) => Ok(n),
        Some(n) => Err(ApiError::invalid_field(
            "limit",
            format!("{n} is not within 1..100"),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_uuids_are_400_naming_the_field_without_echoing_huge_values() {
        let error = parse_uuid("chat_id", "nope").unwrap_err();
        assert_eq!(error.status, 400);
        assert!(error.detail.starts_with("chat_id:"), "{}", error.detail);
        let huge = "z".repeat(1 << 20);
        assert!(parse_uuid("chat_id", &huge).unwrap_err().detail.len() < 400);
    }

    #[test]
    fn page_limits_are_1_to_100_or_the_default() {
        assert_eq!(page_limit(None).unwrap(), 0);
        assert_eq!(page_limit(Some(1)).unwrap(), 1);
        assert_eq!(page_limit(Some(100)).unwrap(), 100);
        assert_eq!(page_limit(Some(0)).unwrap_err().status, 400);
        assert_eq!(page_limit(Some(101)).unwrap_err().status, 400);
    }

    #[test]
    fn bearer_tokens_are_read_from_the_authorization_header() {
        let parts = |value: Option<&str>| {
            let mut builder = http::Request::builder();
            if let Some(value) = value {
                builder = builder.header("authorization", value);
            }
            builder.body(()).unwrap().into_parts().0
        };
        assert_eq!(bearer_token(&parts(None)).unwrap(), None);
        assert_eq!(
            bearer_token(&parts(Some("Bearer abc"))).unwrap().as_deref(),
            Some("abc")
        );
        for bad in ["Basic abc", "Bearer ", "abc"] {
            assert_eq!(bearer_token(&parts(Some(bad))).unwrap_err().status, 401);
        }
    }
}
