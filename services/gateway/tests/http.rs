//! The HTTP application without a socket or services behind it (`app().oneshot`): the
//! OpenAPI document matches the routes, and malformed requests are 4xx problem+json
//! before any service is asked anything. The whole system behind the gateway is driven
//! by `system-tests/tests/processes.rs`.

use std::collections::BTreeSet;

use axum::Router;
use axum::body::Body;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use messenger_common::Metrics;
use messenger_common::events::InMemoryEventBus;
use messenger_common::identity::InternalKey;
use messenger_gateway::Config;
use messenger_gateway::api::{self, AppState};
use messenger_gateway::config::PeersConfig;
use messenger_gateway::peers::Peers;
use messenger_gateway::stream::StreamHub;
use tower::ServiceExt;

/// Every route of the API as the issue defines it: (method, path).
const ROUTES: &[(&str, &str)] = &[
    ("POST", "/v1/auth/register"),
    ("POST", "/v1/auth/login"),
    ("POST", "/v1/auth/logout"),
    ("GET", "/v1/users/me"),
    ("PATCH", "/v1/users/me"),
    ("GET", "/v1/users/{user_id}"),
    ("GET", "/v1/users/by-nickname/{nickname}"),
    ("GET", "/v1/users"),
    ("GET", "/v1/friends"),
    ("DELETE", "/v1/friends/{nickname}"),
    ("GET", "/v1/friends/requests"),
    ("POST", "/v1/friends/requests"),
    ("POST", "/v1/friends/requests/{nickname}/accept"),
    ("POST", "/v1/friends/requests/{nickname}/reject"),
    ("POST", "/v1/chats"),
    ("GET", "/v1/chats"),
    ("GET", "/v1/chats/{chat_id}"),
    ("POST", "/v1/chats/{chat_id}/messages"),
    ("GET", "/v1/chats/{chat_id}/messages"),
    ("POST", "/v1/events/ticket"),
    ("GET", "/v1/events"),
    ("GET", "/v1/openapi.json"),
];

/// Services that are not there: nothing in these tests may need them.
fn config() -> Config {
    let nowhere = "http://127.0.0.1:9".to_owned();
    Config::in_memory(
        PeersConfig {
            auth_url: nowhere.clone(),
            users_url: nowhere.clone(),
            friends_url: nowhere.clone(),
            chat_url: nowhere,
        },
        InternalKey::generate(),
        InMemoryEventBus::new(),
    )
}

fn app_with(config: &Config) -> Router {
    let peers = Peers::connect(
        &config.peers,
        config.internal_key.clone(),
        config.request_timeout,
    )
    .expect("peers");
    let state = AppState::new(config, peers, StreamHub::new(config.stream.clone()));
    api::app(config, state, &Metrics::new())
}

fn app() -> Router {
    app_with(&config())
}

async fn send(
    app: Router,
    request: Request<Body>,
) -> (StatusCode, http::HeaderMap, serde_json::Value) {
    let response = app.oneshot(request).await.expect("infallible");
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.expect("body").to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    (parts.status, parts.headers, json)
}

fn json_request(method: &str, path: &str, body: impl Into<Body>) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(path)
        .header("content-type", "application/json")
        .body(body.into())
        .unwrap()
}

#[tokio::test]
async fn the_openapi_document_lists_exactly_the_routed_api() {
    let (status, headers, document) = send(
        app(),
        Request::get("/v1/openapi.json")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "application/json");
    assert!(document["openapi"].as_str().unwrap().starts_with("3.1"));

    let mut documented = BTreeSet::new();
    for (path, item) in document["paths"].as_object().expect("paths") {
        for method in item.as_object().unwrap().keys() {
            if ["get", "post", "patch", "delete", "put"].contains(&method.as_str()) {
                documented.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    let expected: BTreeSet<(String, String)> = ROUTES
        .iter()
        .map(|(m, p)| ((*m).to_owned(), (*p).to_owned()))
        .collect();
    assert_eq!(
        documented, expected,
        "documented routes differ from the API's routes"
    );

    // Every documented route is routed: it answers something other than "no such route"
    // or "method not allowed" (401 without a token, 503 with no services behind).
    for (method, path) in &documented {
        let concrete = path
            .replace("{user_id}", "8a5b1c8e-0000-4000-8000-000000000001")
            .replace("{chat_id}", "8a5b1c8e-0000-4000-8000-000000000002")
            .replace("{nickname}", "someone");
        let (status, _, body) = send(app(), json_request(method, &concrete, "{}")).await;
        assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        assert!(
            !(status == StatusCode::NOT_FOUND && body["detail"] == "no such route"),
            "{method} {path} is documented but not routed"
        );
    }
}

#[tokio::test]
async fn malformed_requests_are_4xx_problems_naming_the_field() {
    let big = format!(
        r#"{{"email":"a@example.org","password":"{}","nickname":"abc"}}"#,
        "x".repeat(100 * 1024)
    );
    // (body, content type, expected status, text the detail must contain)
    let cases: &[(&str, &str, u16, &str)] = &[
        ("{not json", "application/json", 400, ""),
        (
            r#"{"email":"a@example.org","password":"p"}"#,
            "application/json",
            400,
            "nickname",
        ),
        (
            r#"{"email":"a@example.org","password":"p","nickname":"n","admin":true}"#,
            "application/json",
            400,
            "admin",
        ),
        (
            r#"{"email":7,"password":"p","nickname":"n"}"#,
            "application/json",
            400,
            "invalid type",
        ),
        (
            r#"{"email":"a","password":"p","nickname":"n"}"#,
            "text/plain",
            415,
            "",
        ),
        (&big, "application/json", 413, ""),
    ];
    for (body, content_type, status, mentions) in cases {
        let request = Request::post("/v1/auth/register")
            .header("content-type", *content_type)
            .body(Body::from(body.to_string()))
            .unwrap();
        let (got, headers, problem) = send(app(), request).await;
        let shown = &body[..body.len().min(60)];
        assert_eq!(got.as_u16(), *status, "{shown}: {problem}");
        assert_eq!(
            headers["content-type"], "application/problem+json",
            "{shown}"
        );
        assert_eq!(problem["status"], *status, "{shown}");
        assert!(problem["code"].is_string(), "{shown}");
        assert!(problem["request_id"].is_string(), "{shown}");
        assert!(
            problem["detail"].as_str().unwrap().contains(mentions),
            "{shown}: {problem}"
        );
    }
}

#[tokio::test]
async fn requests_without_a_valid_token_are_401_before_anything_is_asked() {
    for authorization in [None, Some("Basic dXNlcjpwYXNz"), Some("Bearer ")] {
        let mut request = Request::get("/v1/chats");
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        let (status, headers, problem) = send(app(), request.body(Body::empty()).unwrap()).await;
        assert_eq!(status, 401, "{authorization:?}");
        assert_eq!(headers["www-authenticate"], "Bearer");
        assert_eq!(problem["code"], "unauthenticated");
    }
    // The event stream too, and a forged ticket does not open it.
    let (status, _, _) = send(
        app(),
        Request::get("/v1/events?ticket=forged.ticket")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn unknown_routes_and_methods_are_problems_too() {
    let (status, headers, problem) = send(
        app(),
        Request::get("/v2/nothing").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(status, 404);
    assert_eq!(headers["content-type"], "application/problem+json");
    assert_eq!(problem["code"], "not_found");
    let (status, _, problem) = send(
        app(),
        Request::put("/v1/chats").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(status, 405);
    assert_eq!(problem["code"], "method_not_allowed");
}

#[tokio::test]
async fn request_ids_are_kept_when_valid_and_made_otherwise() {
    let request = |id: &str| {
        Request::get("/v2/nothing")
            .header("x-request-id", id)
            .body(Body::empty())
            .unwrap()
    };
    let (_, headers, problem) = send(app(), request("client-chosen-42")).await;
    assert_eq!(headers["x-request-id"], "client-chosen-42");
    assert_eq!(problem["request_id"], "client-chosen-42");
    let (_, headers, _) = send(app(), request("has spaces; and semicolons")).await;
    let made = headers["x-request-id"].to_str().unwrap();
    assert!(uuid::Uuid::parse_str(made).is_ok(), "{made}");
}

#[tokio::test]
async fn cors_allows_only_the_configured_origins() {
    let mut config = config();
    config.cors_origins = vec!["https://app.example".parse().unwrap()];
    let preflight = |origin: &str| {
        Request::builder()
            .method("OPTIONS")
            .uri("/v1/chats")
            .header("origin", origin)
            .header("access-control-request-method", "GET")
            .body(Body::empty())
            .unwrap()
    };
    let (_, headers, _) = send(app_with(&config), preflight("https://app.example")).await;
    assert_eq!(
        headers["access-control-allow-origin"],
        "https://app.example"
    );
    let (_, headers, _) = send(app_with(&config), preflight("https://evil.example")).await;
    assert!(headers.get("access-control-allow-origin").is_none());
    // None configured (the default): no origin is allowed.
    let (_, headers, _) = send(app(), preflight("https://app.example")).await;
    assert!(headers.get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn services_that_are_down_give_503_not_500() {
    let (status, headers, problem) = send(
        app(),
        json_request(
            "POST",
            "/v1/auth/login",
            r#"{"email":"a@example.org","password":"whatever"}"#,
        ),
    )
    .await;
    assert_eq!(status, 503, "{problem}");
    assert_eq!(problem["code"], "unavailable");
    assert!(headers.contains_key("retry-after"));
}
