//! Per-request context and the gateway's own middleware: the request id and trace
//! context that travel to the services, the end user's address, the request deadline,
//! and per-address rate limits.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use ipnet::IpNet;
use messenger_common::grpc::{TRACEPARENT_METADATA, valid_request_id, valid_traceparent};
use tokio::time::Instant;

use crate::error::ApiError;

/// The request id header, the same name as the gRPC metadata the services log.
pub use messenger_common::grpc::REQUEST_ID_METADATA as REQUEST_ID;

/// What the services need to know about the request being served.
#[derive(Debug, Clone)]
pub struct RequestContext {
    /// `x-request-id`: the client's when valid, otherwise a new UUID.
    pub request_id: String,
    /// W3C `traceparent`, forwarded as is when well-formed.
    pub traceparent: Option<String>,
    /// The end user's address (see [`client_ip`]).
    pub client_ip: Option<IpAddr>,
    /// When the request must be answered.
    pub deadline: Instant,
}

tokio::task_local! {
    static CONTEXT: RequestContext;
}

/// The request id of the request this task serves, if any.
pub fn current_request_id() -> Option<String> {
    CONTEXT.try_with(|c| c.request_id.clone()).ok()
}

/// The context of the request this task serves.
pub fn current_context() -> Option<RequestContext> {
    CONTEXT.try_with(Clone::clone).ok()
}

/// The end user's address: the TCP peer, unless the peer is a trusted proxy, in which
/// case `X-Forwarded-For` is walked from the right past trusted proxies and the first
/// untrusted hop is the client. A client can add anything to the left of the header; it
/// cannot change what a trusted proxy appended, so only those hops are believed.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let hops: Vec<IpAddr> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .map(|hop| hop.parse::<IpAddr>().ok())
        .collect::<Option<Vec<_>>>()
        .unwrap_or_default();
    let mut client = peer;
    for hop in hops.into_iter().rev() {
        client = hop;
        if !is_trusted(&hop) {
            break;
        }
    }
    client
}

/// The key rate limits count by: the address, with IPv6 grouped by /64 (one subscriber
/// gets a whole /64 and could otherwise rotate through it).
pub fn rate_limit_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let segments = v6.segments();
                IpAddr::V6(Ipv6Addr::new(
                    segments[0],
                    segments[1],
                    segments[2],
                    segments[3],
                    0,
                    0,
                    0,
                    0,
                ))
            }
        },
    }
}

/// Shared settings of [`request_context`].
#[derive(Debug, Clone)]
pub struct ContextSettings {
    pub trusted_proxies: Arc<[IpNet]>,
    pub request_timeout: Duration,
}

/// Sets the request id (kept or made), the trace context, the client address and the
/// deadline for everything below, and returns the request id on the response.
pub async fn request_context(
    State(settings): State<ContextSettings>,
    mut request: Request,
    next: Next,
) -> Response {
    let headers = request.headers();
    let request_id = headers
        .get(REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| valid_request_id(v))
        .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned);
    let traceparent = headers
        .get(TRACEPARENT_METADATA)
        .and_then(|v| v.to_str().ok())
        .filter(|v| valid_traceparent(v))
        .map(str::to_owned);
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0.ip());
    let client_ip = peer.map(|peer| client_ip(peer, headers, &settings.trusted_proxies));
    if let Ok(value) = request_id.parse() {
        request.headers_mut().insert(REQUEST_ID, value);
    }
    let context = RequestContext {
        request_id: request_id.clone(),
        traceparent,
        client_ip,
        deadline: Instant::now() + settings.request_timeout,
    };
    let span = tracing::info_span!(
        "request",
        request_id = %request_id,
        method = %request.method(),
        path = %request.uri().path(),
    );
    let mut response = CONTEXT
        .scope(
            context,
            tracing::Instrument::instrument(next.run(request), span),
        )
        .await;
    if let Ok(value) = request_id.parse() {
        response.headers_mut().insert(REQUEST_ID, value);
    }
    response
}

/// Ends an API request still running at its deadline with 504 (the services get the
/// same deadline as `grpc-timeout`, so they stop working on it too).
pub async fn deadline(request: Request, next: Next) -> Response {
    let Some(deadline) = current_context().map(|c| c.deadline) else {
        return next.run(request).await;
    };
    match tokio::time::timeout_at(deadline, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::timeout().into_response(),
    }
}

/// Bodies up to this size are read and dropped before a 413 is answered.
const DRAIN_LIMIT: u64 = 1024 * 1024;

/// Answers 413 at once for a body whose declared length is over `limit`. The body is read
/// and dropped first (up to [`DRAIN_LIMIT`]): closing a connection with unread data makes
/// the kernel reset it, and the client may then lose the 413 along with it.
pub async fn reject_oversized(
    State(limit): State<usize>,
    request: Request,
    next: Next,
) -> Response {
    let declared = request
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(length) if length > limit as u64 => {
            if length <= DRAIN_LIMIT {
                let _ = axum::body::to_bytes(request.into_body(), DRAIN_LIMIT as usize).await;
            }
            ApiError::payload_too_large().into_response()
        }
        _ => next.run(request).await,
    }
}

/// Per-client-address budgets for one kind of request.
#[derive(Debug)]
pub struct AddressRateLimiter {
    limiter: DefaultKeyedRateLimiter<IpAddr>,
    what: &'static str,
}

impl AddressRateLimiter {
    /// `per_minute` requests a minute per address, all of which may come at once.
    pub fn per_minute(per_minute: NonZeroU32, what: &'static str) -> Self {
        Self {
            limiter: RateLimiter::keyed(Quota::per_minute(per_minute)),
            what,
        }
    }

    /// `Ok` when `ip` may make one more request; otherwise 429 with `Retry-After`.
    /// Requests without a known address (in-process tests) are not limited.
    pub fn check(&self, ip: Option<IpAddr>) -> Result<(), ApiError> {
        let Some(ip) = ip else { return Ok(()) };
        self.limiter
            .check_key(&rate_limit_key(ip))
            .map_err(|not_until| {
                let wait = not_until.wait_time_from(DefaultClock::default().now());
                ApiError::too_many_requests(
                    format!(
                        "too many {} requests from this address; retry later",
                        self.what
                    ),
                    wait.as_secs() + 1,
                )
            })?;
        // Forget idle addresses now and then so the map cannot grow without bound.
        if self.limiter.len() > 100_000 {
            self.limiter.retain_recent();
        }
        Ok(())
    }
}

/// Names this replica's slot and version on every response (`Config::served_by`).
pub async fn served_by(
    State(headers): State<Arc<Vec<(http::HeaderName, http::HeaderValue)>>>,
    mut response: Response,
) -> Response {
    for (name, value) in headers.iter() {
        response.headers_mut().insert(name.clone(), value.clone());
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xff(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", value.parse().unwrap());
        headers
    }

    #[test]
    fn the_client_address_is_the_peer_unless_a_trusted_proxy_says_otherwise() {
        let proxies: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        // (peer, X-Forwarded-For, trusted, expected)
        let cases: &[(&str, Option<&str>, &[IpNet], &str)] = &[
            // No trusted proxies (the default): the header is ignored.
            ("203.0.113.9", Some("198.51.100.1"), &[], "203.0.113.9"),
            // An untrusted peer cannot choose its address.
            ("203.0.113.9", Some("198.51.100.1"), &proxies, "203.0.113.9"),
            // A trusted proxy's last hop is the client.
            ("10.1.1.1", Some("198.51.100.1"), &proxies, "198.51.100.1"),
            // A client-chosen left part is ignored: the rightmost untrusted hop wins.
            (
                "10.1.1.1",
                Some("1.2.3.4, 198.51.100.1"),
                &proxies,
                "198.51.100.1",
            ),
            // Chains of trusted proxies are walked.
            (
                "10.1.1.1",
                Some("198.51.100.1, 10.2.2.2"),
                &proxies,
                "198.51.100.1",
            ),
            // A trusted proxy without the header: the proxy itself.
            ("10.1.1.1", None, &proxies, "10.1.1.1"),
            // Garbage in the header: fall back to the peer.
            ("10.1.1.1", Some("not-an-ip"), &proxies, "10.1.1.1"),
        ];
        for (peer, header, trusted, expected) in cases {
            let headers = header.map(xff).unwrap_or_default();
            assert_eq!(
                client_ip(ip(peer), &headers, trusted),
                ip(expected),
                "{peer} {header:?}"
            );
        }
    }

    #[test]
    fn ipv6_clients_are_limited_per_64_prefix() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(rate_limit_key(a), rate_limit_key(b));
        assert_ne!(rate_limit_key(a), rate_limit_key(other));
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(
            rate_limit_key(mapped),
            "192.0.2.1".parse::<IpAddr>().unwrap()
        );
    }

    #[test]
    fn an_address_over_its_budget_gets_429_with_retry_after() {
        let limiter = AddressRateLimiter::per_minute(NonZeroU32::new(2).unwrap(), "login");
        let ip = Some("192.0.2.1".parse().unwrap());
        assert!(limiter.check(ip).is_ok());
        assert!(limiter.check(ip).is_ok());
        let refused = limiter.check(ip).unwrap_err();
        assert_eq!(refused.status, 429);
        assert!(refused.retry_after.unwrap() >= 1);
        // Another address has its own budget.
        assert!(limiter.check(Some("192.0.2.2".parse().unwrap())).is_ok());
    }

    #[test]
    fn request_ids_and_traceparents_are_validated() {
        assert!(valid_request_id("3f1c2a9e-abc"));
        assert!(!valid_request_id(""));
        assert!(!valid_request_id("has space"));
        assert!(!valid_request_id(&"a".repeat(129)));
        assert!(valid_traceparent(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        ));
        assert!(!valid_traceparent("00-xyz-00f067aa0ba902b7-01"));
    }
}
