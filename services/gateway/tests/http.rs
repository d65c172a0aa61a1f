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
    ("GET", "/v1/auth/oauth/providers"),
    ("GET", "/v1/auth/oauth/{provider}/start"),
    ("GET", "/v1/auth/oauth/{provider}/callback"),
    ("POST", "/v1/auth/oauth/{provider}/link"),
    ("DELETE", "/v1/auth/oauth/{provider}/link"),
    ("POST", "/v1/auth/oauth/session"),
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
            .replace("{nickname}", "someone")
            .replace("{provider}", "corp");
        let (status, _, body) = send(app(), json_request(method, &concrete, "{}")).await;
        assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        assert!(
            !(status == StatusCode::NOT_FOUND && body["detail"] == "no such route"),
            "{method} {path} is documented but not routed"
        );
    }
}

#[tokio::test]
async fn an_oauth_callback_or_hand_over_without_its_cookie_is_refused_before_auth_is_asked() {
    // No services behind: these answers come from the gateway alone.
    let (status, headers, problem) = send(
        app(),
        Request::get("/v1/auth/oauth/corp/callback?state=s&code=c")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400, "{problem}");
    assert_eq!(headers["content-type"], "application/problem+json");
    assert!(
        problem["detail"].as_str().unwrap().contains("cookie"),
        "{problem}"
    );
    // The (absent) flow cookie is cleared anyway.
    let cleared = headers["set-cookie"].to_str().unwrap();
    assert!(cleared.starts_with("messenger_oauth_flow=;"), "{cleared}");
    assert!(cleared.contains("Max-Age=0"), "{cleared}");

    let (status, headers, problem) = send(
        app(),
        Request::post("/v1/auth/oauth/session")
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(status, 401, "{problem}");
    assert_eq!(headers["content-type"], "application/problem+json");
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

async fn get_raw(path: &str, headers: &[(&str, &str)]) -> (StatusCode, http::HeaderMap, String) {
    let mut request = Request::get(path);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = app()
        .oneshot(request.body(Body::empty()).unwrap())
        .await
        .expect("infallible");
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.expect("body").to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8_lossy(&bytes).into_owned(),
    )
}

#[tokio::test]
async fn the_web_client_is_served_at_the_root_under_a_strict_content_security_policy() {
    let (status, headers, page) = get_raw("/", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    assert!(page.contains("<title>Messenger</title>"), "{page}");
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(csp.starts_with("default-src 'self'"), "{csp}");
    assert!(
        csp.contains("script-src 'self';"),
        "scripts from elsewhere: {csp}"
    );
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["x-frame-options"], "DENY");
    // The page is always revalidated, so a new release shows at the next load...
    assert_eq!(headers["cache-control"], "no-cache");
    let etag = headers["etag"].to_str().unwrap().to_owned();
    let (status, _, body) = get_raw("/", &[("if-none-match", &etag)]).await;
    assert_eq!(status, 304);
    assert!(body.is_empty());

    // ...and everything it loads is named by version, so it may be kept for good.
    let version = messenger_gateway::web::version();
    for (file, content_type) in [
        ("app.js", "text/javascript; charset=utf-8"),
        ("api.js", "text/javascript; charset=utf-8"),
        ("events.js", "text/javascript; charset=utf-8"),
        ("style.css", "text/css; charset=utf-8"),
        ("icon.svg", "image/svg+xml"),
    ] {
        let path = format!("/assets/{version}/{file}");
        assert!(page.contains(&path) || file.ends_with(".js"), "{path}");
        let (status, headers, body) = get_raw(&path, &[]).await;
        assert_eq!(status, 200, "{path}");
        assert_eq!(headers["content-type"], content_type, "{path}");
        assert_eq!(
            headers["cache-control"], "public, max-age=31536000, immutable",
            "{path}"
        );
        assert!(!body.is_empty(), "{path}");
    }
    // A page of another release still gets the file, but not for keeps.
    let (status, headers, _) = get_raw("/assets/0123456789ab/app.js", &[]).await;
    assert_eq!(status, 200);
    assert_eq!(headers["cache-control"], "no-cache");
}

#[tokio::test]
async fn unknown_web_files_are_404_problems_and_not_part_of_the_api_document() {
    let version = messenger_gateway::web::version();
    for path in [
        format!("/assets/{version}/secret.txt"),
        format!("/assets/{version}/../Cargo.toml"),
        "/index.php".to_owned(),
    ] {
        let (status, headers, _) = get_raw(&path, &[]).await;
        assert_eq!(status, 404, "{path}");
        assert_eq!(
            headers["content-type"], "application/problem+json",
            "{path}"
        );
    }
    let paths = api::openapi().paths.paths;
    assert!(
        paths.keys().all(|path| path.starts_with("/v1/")),
        "the web client's routes are not API routes: {:?}",
        paths.keys()
    );
}

#[tokio::test]
async fn a_browser_resumes_its_event_stream_with_a_fresh_ticket_and_the_last_event_id() {
    use messenger_gateway::stream::{StreamEvent, token_fingerprint};
    let config = config();
    let hub = StreamHub::new(config.stream.clone());
    let peers = Peers::connect(
        &config.peers,
        config.internal_key.clone(),
        config.request_timeout,
    )
    .expect("peers");
    let app = api::app(
        &config,
        AppState::new(&config, peers, hub.clone()),
        &Metrics::new(),
    );
    let user = uuid::Uuid::new_v4();
    let event = |id: &str, content: &str| StreamEvent {
        id: id.to_owned(),
        kind: "message",
        data: serde_json::json!({ "content": content }).to_string().into(),
    };
    // Two events reached the user; the browser had seen the first when it lost the stream.
    hub.deliver(user, event("e1", "seen"));
    hub.deliver(user, event("e2", "missed"));
    let (ticket, _) = config.ticket_key.issue(
        user,
        &token_fingerprint("token"),
        std::time::Duration::from_secs(30),
    );
    let response = app
        .oneshot(
            Request::get(format!("/v1/events?ticket={ticket}&last_event_id=e1"))
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .expect("infallible");
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    let mut text = String::new();
    while !text.contains("\n\n") {
        let frame = tokio::time::timeout(std::time::Duration::from_secs(5), body.frame())
            .await
            .expect("the replay arrives at once")
            .expect("the stream is open")
            .expect("a frame");
        if let Ok(data) = frame.into_data() {
            text.push_str(&String::from_utf8_lossy(&data));
        }
    }
    assert!(text.contains("id: e2"), "{text}");
    assert!(text.contains("missed"), "{text}");
    assert!(
        !text.contains("seen"),
        "already seen events are not sent again: {text}"
    );
}
