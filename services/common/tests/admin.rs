//! The admin router: liveness, readiness naming failed checks, Prometheus metrics.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::body::Body;
use http::{Request, StatusCode};
use http_body_util::BodyExt as _;
use messenger_common::admin::{self, AdminState, Gate, ReadinessCheck};
use messenger_common::testing::{TestDatabase, free_port, redis_url};
use messenger_common::{Metrics, Shutdown};
use prometheus_client::metrics::counter::Counter;
use tower::ServiceExt as _;

async fn get(state: AdminState, path: &str) -> (StatusCode, String, Option<String>) {
    let response = admin::router(state)
        .oneshot(Request::get(path).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let content_type = response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap().to_owned());
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        String::from_utf8(body.to_vec()).unwrap(),
        content_type,
    )
}

/// A pool pointed at a port nothing listens on: a database that is down.
fn unreachable_pool() -> sqlx::PgPool {
    sqlx::postgres::PgPoolOptions::new()
        .acquire_timeout(std::time::Duration::from_millis(500))
        .connect_lazy(&format!(
            "postgres://postgres:postgres@127.0.0.1:{}/x",
            free_port()
        ))
        .unwrap()
}

#[tokio::test]
async fn healthz_answers_while_the_process_runs_even_if_dependencies_are_down() {
    let state = AdminState {
        metrics: Metrics::new(),
        readiness: vec![Arc::new(unreachable_pool())],
    };
    let (status, body, _) = get(state, "/healthz").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, "ok\n");
}

#[tokio::test]
async fn readyz_is_ok_when_postgres_and_redis_answer() {
    let database = TestDatabase::create().await;
    let redis = messenger_common::redis::connect(redis_url())
        .await
        .expect("TEST_REDIS_URL reachable");
    let state = AdminState {
        metrics: Metrics::new(),
        readiness: vec![Arc::new(database.pool().clone()), Arc::new(redis)],
    };
    let (status, body, _) = get(state, "/readyz").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.contains("postgres: ok"), "{body}");
    assert!(body.contains("redis: ok"), "{body}");
}

#[tokio::test]
async fn readyz_is_503_naming_the_failed_check() {
    let redis = messenger_common::redis::connect(redis_url())
        .await
        .expect("TEST_REDIS_URL reachable");
    let state = AdminState {
        metrics: Metrics::new(),
        readiness: vec![Arc::new(unreachable_pool()), Arc::new(redis)],
    };
    let (status, body, _) = get(state, "/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("postgres: failed"), "{body}");
    assert!(body.contains("redis: ok"), "{body}");
}

struct Hanging;

#[messenger_common::async_trait]
impl ReadinessCheck for Hanging {
    fn name(&self) -> &str {
        "mongodb"
    }
    async fn check(&self) -> Result<(), String> {
        std::future::pending().await
    }
}

#[tokio::test]
async fn readyz_fails_a_check_that_does_not_answer_in_time() {
    let state = AdminState {
        metrics: Metrics::new(),
        readiness: vec![Arc::new(Hanging)],
    };
    let started = std::time::Instant::now();
    let (status, body, _) = get(state, "/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.contains("mongodb: failed"), "{body}");
    assert!(started.elapsed() < admin::CHECK_TIMEOUT * 2);
}

/// A dependency a test takes down and brings back.
struct Switchable {
    name: &'static str,
    up: Arc<AtomicBool>,
    gate: Gate,
}

#[messenger_common::async_trait]
impl ReadinessCheck for Switchable {
    fn name(&self) -> &str {
        self.name
    }
    async fn check(&self) -> Result<(), String> {
        if self.up.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err("connection refused".to_owned())
        }
    }
    fn gate(&self) -> Gate {
        self.gate
    }
}

#[tokio::test]
async fn a_start_up_gate_holds_readiness_until_it_first_passes_and_never_again() {
    let store = Arc::new(AtomicBool::new(true));
    let broker = Arc::new(AtomicBool::new(false));
    let router = admin::router(AdminState {
        metrics: Metrics::new(),
        readiness: vec![
            Arc::new(Switchable {
                name: "postgres",
                up: store.clone(),
                gate: Gate::Always,
            }),
            Arc::new(Switchable {
                name: "kafka",
                up: broker.clone(),
                gate: Gate::StartUp,
            }),
        ],
    });
    let readyz = || async {
        let response = router
            .clone()
            .oneshot(Request::get("/readyz").body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    };
    let (status, body) = readyz().await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "never reached: {body}"
    );
    assert!(body.contains("kafka: failed: connection refused"), "{body}");

    broker.store(true, Ordering::SeqCst);
    assert_eq!(readyz().await.0, StatusCode::OK);
    // The broker goes away: every replica would fail alike, so the pod stays in its
    // Service and says what is down.
    broker.store(false, Ordering::SeqCst);
    let (status, body) = readyz().await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body.contains("kafka: failed (passed at start-up, not gating): connection refused"),
        "{body}"
    );
    // The store it cannot answer without takes it out whenever it is down.
    store.store(false, Ordering::SeqCst);
    let (status, body) = readyz().await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        body.contains("postgres: failed: connection refused"),
        "{body}"
    );
    store.store(true, Ordering::SeqCst);
    assert_eq!(readyz().await.0, StatusCode::OK);
}

#[tokio::test]
async fn metrics_exposes_the_registry_including_service_metrics() {
    let metrics = Metrics::new();
    let logins = Counter::<u64>::default();
    metrics.register("auth_logins", "Successful logins", logins.clone());
    logins.inc_by(3);
    metrics.record_rpc("/messenger.v1.AuthService/Login", tonic::Code::Ok, 0.01);
    let state = AdminState {
        metrics,
        readiness: vec![],
    };
    let (status, body, content_type) = get(state, "/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        content_type
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    assert!(body.contains("auth_logins_total 3"), "{body}");
    assert!(
        body.contains(
            r#"grpc_server_handled_total{method="/messenger.v1.AuthService/Login",code="OK"} 1"#
        ),
        "{body}"
    );
    assert!(body.trim_end().ends_with("# EOF"), "{body}");
}

#[tokio::test]
async fn unknown_paths_are_404() {
    let (status, _, _) = get(AdminState::default(), "/admin").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn serve_answers_over_tcp_and_stops_on_shutdown() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = Shutdown::new();
    let server = tokio::spawn(admin::serve_with_listener(
        listener,
        AdminState::default(),
        shutdown.clone(),
    ));
    // A raw HTTP/1.1 request: the real socket path, no client library needed.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");

    shutdown.trigger();
    tokio::time::timeout(std::time::Duration::from_secs(5), server)
        .await
        .expect("admin server stops on shutdown")
        .unwrap()
        .unwrap();
}

/// `GET path` over a real socket: the status line and the body.
async fn raw_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

#[tokio::test]
async fn readyz_turns_503_once_draining_starts_while_the_server_still_answers() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = Shutdown::new();
    let server = tokio::spawn(admin::serve_with_listener(
        listener,
        AdminState::default(),
        shutdown.clone(),
    ));
    let ready = raw_get(addr, "/readyz").await;
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");

    shutdown.start_draining();
    let draining = raw_get(addr, "/readyz").await;
    assert!(draining.starts_with("HTTP/1.1 503"), "{draining}");
    assert!(
        draining.contains("shutdown: failed: draining"),
        "{draining}"
    );
    let alive = raw_get(addr, "/healthz").await;
    assert!(
        alive.starts_with("HTTP/1.1 200"),
        "still live while draining: {alive}"
    );

    shutdown.trigger();
    tokio::time::timeout(std::time::Duration::from_secs(5), server)
        .await
        .expect("admin server stops on shutdown")
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn http_metrics_layer_counts_requests_by_route_template_and_status() {
    use axum::routing::get;
    let metrics = Metrics::new();
    let api = axum::Router::new()
        .route("/v1/users/{id}", get(|| async { "profile" }))
        .layer(metrics.http_layer());
    for path in ["/v1/users/1", "/v1/users/2", "/nope"] {
        let response = api
            .clone()
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let _ = response.into_body().collect().await.unwrap();
    }
    let text = metrics.render();
    assert!(
        text.contains(
            r#"http_server_requests_total{method="GET",route="/v1/users/{id}",status="200"} 2"#
        ),
        "{text}"
    );
    assert!(
        text.contains(
            r#"http_server_requests_total{method="GET",route="unmatched",status="404"} 1"#
        ),
        "{text}"
    );
    assert!(
        !text.contains("/v1/users/1"),
        "raw paths never become labels"
    );
}
