//! The REST API: the routes, their OpenAPI document (derived from the handlers, so the
//! two cannot drift), and the middleware stack, assembled in one place ([`app`]).

pub mod auth;
pub mod chats;
pub mod events;
pub mod extract;
pub mod friends;
pub mod oauth;
pub mod types;
pub mod users;

use std::sync::Arc;

use axum::Router;
use axum::error_handling::HandleErrorLayer;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use messenger_common::Metrics;
use tower::ServiceBuilder;
use tower::limit::GlobalConcurrencyLimitLayer;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::trace::TraceLayer;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::config::{Config, StreamConfig};
use crate::error::ApiError;
use crate::middleware::{self, AddressRateLimiter, ContextSettings};
use crate::peers::Peers;
use crate::revocations::Revocations;
use crate::stream::{StreamHub, TicketKey, UsedTickets};

/// What every handler can reach.
/// Cloned for every extractor of every request (axum's `State`): what is not a plain value
/// is behind an `Arc`, so a clone allocates nothing.
#[derive(Clone)]
pub struct AppState {
    pub peers: Arc<Peers>,
    pub hub: StreamHub,
    pub tickets: TicketKey,
    pub used_tickets: UsedTickets,
    pub register_limiter: Arc<AddressRateLimiter>,
    pub login_limiter: Arc<AddressRateLimiter>,
    pub stream: StreamConfig,
    /// The token cache and its channel to the other replicas, when configured.
    pub revocations: Option<Arc<Revocations>>,
}

impl AppState {
    pub fn new(config: &Config, peers: Peers, hub: StreamHub) -> Self {
        Self {
            peers: Arc::new(peers),
            hub,
            tickets: config.ticket_key.clone(),
            used_tickets: UsedTickets::default(),
            register_limiter: Arc::new(AddressRateLimiter::per_minute(
                config.rate_limits.register_per_minute,
                "register",
            )),
            login_limiter: Arc::new(AddressRateLimiter::per_minute(
                config.rate_limits.login_per_minute,
                "login",
            )),
            stream: config.stream.clone(),
            revocations: None,
        }
    }

    /// Validated tokens are cached and logouts broadcast through `revocations`.
    pub fn with_revocations(mut self, revocations: Revocations) -> Self {
        self.revocations = Some(Arc::new(revocations));
        self
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Messenger API",
        description = "The messenger's REST API. Errors are application/problem+json (RFC 9457) with a stable `code`.",
        version = "1"
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "auth", description = "Accounts and access tokens"),
        (name = "users", description = "Profiles"),
        (name = "friends", description = "Friends and friend requests"),
        (name = "chats", description = "Chats and messages"),
        (name = "events", description = "Real-time events (Server-Sent Events)"),
    )
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The API routes with their OpenAPI document. `/v1/events` is kept apart from the
/// request-shaped routes: a stream lives long, so it takes no concurrency slot and has
/// no deadline.
fn api_routes() -> (OpenApiRouter<AppState>, OpenApiRouter<AppState>) {
    let requests = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(auth::register))
        .routes(routes!(auth::login))
        .routes(routes!(auth::logout))
        .routes(routes!(oauth::providers))
        .routes(routes!(oauth::start))
        .routes(routes!(oauth::callback))
        .routes(routes!(oauth::link, oauth::unlink))
        .routes(routes!(oauth::session))
        .routes(routes!(users::get_me, users::patch_me))
        .routes(routes!(users::get_user))
        .routes(routes!(users::get_by_nickname))
        .routes(routes!(users::search))
        .routes(routes!(friends::list_friends))
        .routes(routes!(friends::remove_friend))
        .routes(routes!(friends::list_requests, friends::send_request))
        .routes(routes!(friends::accept_request))
        .routes(routes!(friends::reject_request))
        .routes(routes!(chats::create_chat, chats::list_chats))
        .routes(routes!(chats::get_chat))
        .routes(routes!(chats::send_message, chats::history))
        .routes(routes!(events::issue_ticket));
    let streams = OpenApiRouter::new().routes(routes!(events::events));
    (requests, streams)
}

/// The OpenAPI 3.1 document of the API.
pub fn openapi() -> utoipa::openapi::OpenApi {
    let (requests, streams) = api_routes();
    let mut doc = requests.into_openapi();
    doc.merge(streams.into_openapi());
    doc.paths.paths.insert(
        OPENAPI_PATH.to_owned(),
        utoipa::openapi::path::PathItem::new(
            utoipa::openapi::HttpMethod::Get,
            utoipa::openapi::path::OperationBuilder::new()
                .summary(Some("This document"))
                .tag("meta")
                .response(
                    "200",
                    utoipa::openapi::ResponseBuilder::new().description("OpenAPI 3.1 JSON"),
                ),
        ),
    );
    doc
}

pub const OPENAPI_PATH: &str = "/v1/openapi.json";

/// The whole HTTP application: routes, OpenAPI, the web client at `/` ([`web`]),
/// problem+json for unknown routes and methods, and the middleware stack (outermost
/// first): request id + trace context + client address, panic → 500 problem, tracing
/// without credentials, metrics, CORS, body limit; and for request routes also load
/// shedding and the deadline.
pub fn app(config: &Config, state: AppState, metrics: &Metrics) -> Router {
    let (requests, streams) = api_routes();
    let document = Arc::new(openapi());
    let shed = ServiceBuilder::new()
        .layer(HandleErrorLayer::new(|_: tower::BoxError| async {
            ApiError::overloaded()
        }))
        .load_shed()
        // One budget for all routes (a per-route limit would multiply it by the routes).
        .layer(GlobalConcurrencyLimitLayer::new(
            config.max_concurrent_requests,
        ));
    let requests = Router::from(requests)
        .route(
            OPENAPI_PATH,
            get(move || {
                let document = Arc::clone(&document);
                async move { axum::Json(document.as_ref().clone()) }
            }),
        )
        .layer(axum::middleware::from_fn(middleware::deadline))
        .layer(shed);
    let cors = CorsLayer::new()
        .allow_origin(AllowOrigin::list(config.cors_origins.clone()))
        .allow_methods([
            http::Method::GET,
            http::Method::POST,
            http::Method::PATCH,
            http::Method::DELETE,
        ])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            HeaderName::from_static("last-event-id"),
            HeaderName::from_static(middleware::REQUEST_ID),
        ])
        .expose_headers(
            [
                HeaderName::from_static(middleware::REQUEST_ID),
                header::RETRY_AFTER,
            ]
            .into_iter()
            .chain(config.served_by.iter().map(|(name, _)| name.clone()))
            .collect::<Vec<_>>(),
        );
    let settings = ContextSettings {
        trusted_proxies: config.trusted_proxies.clone().into(),
        request_timeout: config.request_timeout,
    };
    requests
        .merge(Router::from(streams))
        .merge(crate::web::routes())
        .fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not take that method",
            )
        })
        .layer(metrics.http_layer())
        .with_state(state)
        .layer(DefaultBodyLimit::max(config.max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(
            config.max_body_bytes,
            middleware::reject_oversized,
        ))
        .layer(cors)
        .layer(TraceLayer::new_for_http())
        .layer(SetSensitiveRequestHeadersLayer::new([
            header::AUTHORIZATION,
        ]))
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::internal("a handler panicked").into_response()
        }))
        .layer(axum::middleware::from_fn_with_state(
            settings,
            middleware::request_context,
        ))
        .layer(axum::middleware::map_response_with_state(
            Arc::new(config.served_by.clone()),
            middleware::served_by,
        ))
}
