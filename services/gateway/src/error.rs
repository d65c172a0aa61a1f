//! The gateway's one error type, [`ApiError`], answered as RFC 9457
//! `application/problem+json` with a stable machine-readable `code` and the request id.
//! gRPC statuses of the internal services map onto it in one place ([`From<Status>`]).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

/// The body of every error response.
#[derive(Debug, Clone, Serialize, ToSchema, PartialEq, Eq)]
pub struct Problem {
    /// A URI naming the kind of problem (`https://messenger.dev/problems/<code>`).
    #[serde(rename = "type")]
    pub kind: String,
    /// Short human summary of the kind of problem.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What went wrong with this request.
    pub detail: String,
    /// Stable machine-readable code, e.g. `invalid_argument`, `unauthenticated`.
    pub code: String,
    /// The `x-request-id` of the request, for support and log search.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// An error answered to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{status} {code}: {detail}")]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub detail: String,
    /// Seconds, for `Retry-After` (429 and 503).
    pub retry_after: Option<u64>,
}

/// Longest piece of client input echoed back in an error (a 4 MiB value must not come back).
const ECHO_LIMIT: usize = 200;

/// `text`, cut to a length fit for an error message.
pub fn truncate_for_echo(text: &str) -> String {
    if text.chars().count() <= ECHO_LIMIT {
        return text.to_owned();
    }
    let cut: String = text.chars().take(ECHO_LIMIT).collect();
    format!("{cut}…")
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            code,
            detail: truncate_for_echo(&detail.into()),
            retry_after: None,
        }
    }

    pub fn bad_request(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_argument", detail)
    }

    /// A request field that is missing or malformed, named in the message.
    pub fn invalid_field(field: &str, reason: impl std::fmt::Display) -> Self {
        Self::bad_request(format!("{field}: {reason}"))
    }

    pub fn unauthenticated(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthenticated", detail)
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", detail)
    }

    pub fn too_many_requests(detail: impl Into<String>, retry_after: u64) -> Self {
        Self {
            retry_after: Some(retry_after.max(1)),
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", detail)
        }
    }

    pub fn payload_too_large() -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            "the request body is larger than the gateway accepts",
        )
    }

    pub fn overloaded() -> Self {
        Self {
            retry_after: Some(1),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                "the gateway is serving as many requests as it can; retry shortly",
            )
        }
    }

    pub fn timeout() -> Self {
        Self::new(
            StatusCode::GATEWAY_TIMEOUT,
            "timeout",
            "the request did not complete within its deadline",
        )
    }

    /// A fault of ours; the detail stays in the log, the client gets a generic message.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        tracing::error!(%detail, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "an internal error occurred; the request id identifies it in the logs",
        )
    }

    /// The problem body of this error (the request id comes from the current request).
    pub fn problem(&self) -> Problem {
        Problem {
            kind: format!("https://messenger.dev/problems/{}", self.code),
            title: self.status.canonical_reason().unwrap_or("Error").to_owned(),
            status: self.status.as_u16(),
            detail: self.detail.clone(),
            code: self.code.to_owned(),
            request_id: crate::middleware::current_request_id(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self.problem()).unwrap_or_default();
        let mut response = (self.status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<tonic::Status> for ApiError {
    fn from(status: tonic::Status) -> Self {
        use tonic::Code;
        let message = status.message().to_owned();
        match status.code() {
            Code::InvalidArgument | Code::OutOfRange => Self::bad_request(message),
            Code::Unauthenticated => Self::unauthenticated(message),
            Code::PermissionDenied => Self::new(StatusCode::FORBIDDEN, "forbidden", message),
            Code::NotFound => Self::not_found(message),
            Code::AlreadyExists => Self::new(StatusCode::CONFLICT, "already_exists", message),
            Code::FailedPrecondition | Code::Aborted => {
                Self::new(StatusCode::CONFLICT, "conflict", message)
            }
            // With `retry-after`, a limit on this client (auth's login throttle): 429.
            // Without, a service shedding load beyond its call limit: nothing the client
            // did, so 503 like any other overloaded dependency.
            Code::ResourceExhausted => match status
                .metadata()
                .get("retry-after")
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.parse().ok())
            {
                Some(retry_after) => Self::too_many_requests(message, retry_after),
                None => Self {
                    retry_after: Some(1),
                    ..Self::new(
                        StatusCode::SERVICE_UNAVAILABLE,
                        "unavailable",
                        "a service behind the gateway is overloaded; retry shortly",
                    )
                },
            },
            Code::Unavailable => Self {
                retry_after: Some(1),
                ..Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    "a service behind the gateway is unavailable; retry shortly",
                )
            },
            // The client-side CANCELLED is tonic's timeout firing: also a deadline.
            Code::DeadlineExceeded | Code::Cancelled => Self::timeout(),
            _ => Self::internal(format!("{:?}: {}", status.code(), status.message())),
        }
    }
}

/// Responses every route may give, for the OpenAPI document.
pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::{Code, Status};

    #[test]
    fn grpc_codes_map_to_documented_http_statuses() {
        let cases = [
            (Code::InvalidArgument, 400, "invalid_argument"),
            (Code::OutOfRange, 400, "invalid_argument"),
            (Code::Unauthenticated, 401, "unauthenticated"),
            (Code::PermissionDenied, 403, "forbidden"),
            (Code::NotFound, 404, "not_found"),
            (Code::AlreadyExists, 409, "already_exists"),
            (Code::FailedPrecondition, 409, "conflict"),
            // No retry-after: a service shedding load, not a limit on this client.
            (Code::ResourceExhausted, 503, "unavailable"),
            (Code::Unavailable, 503, "unavailable"),
            (Code::DeadlineExceeded, 504, "timeout"),
            (Code::Cancelled, 504, "timeout"),
            (Code::Internal, 500, "internal"),
            (Code::Unknown, 500, "internal"),
        ];
        for (code, status, name) in cases {
            let error = ApiError::from(Status::new(code, "why"));
            assert_eq!(error.status.as_u16(), status, "{code:?}");
            assert_eq!(error.code, name, "{code:?}");
        }
    }

    #[test]
    fn internal_details_are_not_shown_to_the_client() {
        let error = ApiError::from(Status::internal("connection to 10.1.2.3 refused"));
        assert!(!error.detail.contains("10.1.2.3"));
    }

    #[test]
    fn rate_limits_carry_retry_after_from_the_service() {
        let mut status = Status::resource_exhausted("too many failed login attempts");
        status
            .metadata_mut()
            .insert("retry-after", "42".parse().unwrap());
        let response = ApiError::from(status).into_response();
        assert_eq!(response.status(), 429);
        assert_eq!(response.headers()[header::RETRY_AFTER], "42");
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
    }

    #[test]
    fn echoed_input_is_truncated() {
        let huge = "x".repeat(1 << 20);
        let error = ApiError::invalid_field("chat_id", format!("{huge:?} is not a UUID"));
        assert!(error.detail.len() < 300, "{}", error.detail.len());
    }
}
