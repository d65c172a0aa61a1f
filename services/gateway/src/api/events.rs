//! `/v1/events`: the real-time stream (Server-Sent Events) and its tickets.
//!
//! SSE rather than WebSocket: delivery is one-way (clients act through the REST API),
//! it is plain HTTP through every proxy and Ingress, and browsers reconnect by
//! themselves with `Last-Event-ID`, which the replay history answers.

use std::convert::Infallible;

use axum::Json;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use futures::stream;
use http::StatusCode;

use crate::api::AppState;
use crate::api::extract::{ApiQuery, Authenticated, bearer_token};
use crate::api::types::{EventsQuery, TicketView};
use crate::error::{ApiError, Problem};
use crate::stream::{Backlog, StreamEvent, TicketError, unix_now};

/// A single-use ticket that opens one event stream within 30 seconds, for `EventSource`,
/// which cannot send an `Authorization` header. The ticket, not your token, goes in the
/// URL, so the token never lands in access logs or history.
#[utoipa::path(
    post, path = "/v1/events/ticket", tag = "events",
    security(("bearer" = [])),
    responses((status = 201, body = TicketView), (status = 401, body = Problem))
)]
pub async fn issue_ticket(
    State(state): State<AppState>,
    user: Authenticated,
) -> (StatusCode, Json<TicketView>) {
    let (ticket, expires) =
        state
            .tickets
            .issue(user.user_id, &user.fingerprint, state.stream.ticket_ttl);
    let expires_at = chrono::DateTime::from_timestamp(i64::try_from(expires).unwrap_or(0), 0)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    (StatusCode::CREATED, Json(TicketView { ticket, expires_at }))
}

/// Who a stream is for: a bearer token (checked with auth) or a ticket.
pub struct StreamOwner {
    user_id: uuid::Uuid,
    fingerprint: crate::stream::TokenFingerprint,
}

impl FromRequestParts<AppState> for StreamOwner {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let ApiQuery(query) = ApiQuery::<EventsQuery>::from_request_parts(parts, state).await?;
        if let Some(token) = bearer_token(parts)? {
            let user = Authenticated::from_token(state, token).await?;
            return Ok(Self {
                user_id: user.user_id,
                fingerprint: user.fingerprint,
            });
        }
        let Some(ticket) = query.ticket else {
            return Err(ApiError::unauthenticated(
                "this stream needs Authorization: Bearer <token> or ?ticket= from POST /v1/events/ticket",
            ));
        };
        let now = unix_now();
        let ticket = state
            .tickets
            .verify(&ticket, now)
            .and_then(|ticket| state.used_tickets.redeem(&ticket, now).map(|()| ticket))
            .map_err(|error: TicketError| ApiError::unauthenticated(error.to_string()))?;
        let mut fingerprint = [0u8; 32];
        hex::decode_to_slice(&ticket.token, &mut fingerprint)
            .map_err(|_| ApiError::unauthenticated("the ticket is malformed"))?;
        Ok(Self {
            user_id: ticket.user,
            fingerprint,
        })
    }
}

/// Your real-time events: `message` (a new message in one of your chats),
/// `chat_created` (you were added to a chat), `friend_request` (someone asked you),
/// `friend_request_accepted` (someone accepted your request). Each has an `id`; reconnect
/// with `Last-Event-ID` (or `?last_event_id=`) to get what you missed in the last minutes,
/// or a `reset` event when that is too long ago (refetch your chats). Heartbeat comments
/// keep the connection open; logging out ends it.
#[utoipa::path(
    get, path = "/v1/events", tag = "events",
    security(("bearer" = [])),
    params(EventsQuery, ("Last-Event-ID" = Option<String>, Header, description = "The last event id received")),
    responses(
        (status = 200, description = "text/event-stream", content_type = "text/event-stream", body = String),
        (status = 401, body = Problem),
        (status = 429, description = "Too many open streams for this user", body = Problem),
    )
)]
pub async fn events(
    State(state): State<AppState>,
    owner: StreamOwner,
    ApiQuery(query): ApiQuery<EventsQuery>,
    headers: http::HeaderMap,
) -> Response {
    let last_event_id = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
        .or(query.last_event_id)
        .filter(|v| !v.is_empty() && v.len() <= 64);
    let subscription =
        match state
            .hub
            .subscribe(owner.user_id, owner.fingerprint, last_event_id.as_deref())
        {
            Ok(subscription) => subscription,
            Err(too_many) => {
                return ApiError::too_many_requests(too_many.to_string(), 5).into_response();
            }
        };
    let backlog: Vec<SseEvent> = match subscription.backlog {
        Backlog::None => Vec::new(),
        Backlog::Replay(events) => events.iter().map(to_sse).collect(),
        Backlog::Reset => vec![SseEvent::default().event("reset").data("{}")],
    };
    let guard = subscription.guard;
    let live = tokio_stream::wrappers::ReceiverStream::new(subscription.events).map(move |event| {
        let _keep_registered = &guard;
        to_sse(&event)
    });
    let stream = stream::iter(backlog).chain(live).map(Ok::<_, Infallible>);
    Sse::new(stream)
        .keep_alive(
            KeepAlive::new()
                .interval(state.stream.heartbeat)
                .text("heartbeat"),
        )
        .into_response()
}

fn to_sse(event: &StreamEvent) -> SseEvent {
    SseEvent::default()
        .id(event.id.clone())
        .event(event.kind)
        .data(event.data.as_ref())
}
