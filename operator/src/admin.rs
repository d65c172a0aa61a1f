//! The admin HTTP server: `/healthz` (the process runs), `/readyz` (it reached the API
//! server) and `/metrics` (Prometheus text format).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;

#[derive(Clone)]
pub struct AdminState {
    pub registry: Arc<Registry>,
    /// Set once the operator has talked to the API server.
    pub ready: Arc<AtomicBool>,
}

pub fn app(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(state)
}

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    if state.ready.load(Ordering::Acquire) {
        (StatusCode::OK, "ready")
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not connected to the API server yet",
        )
    }
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &state.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use axum::body::{Body, to_bytes};
    use axum::http::Request;
    use tower::ServiceExt;

    use super::*;
    use crate::crd::Phase;
    use crate::metrics::Metrics;

    async fn get(router: Router, path: &str) -> (StatusCode, String) {
        let response = router
            .oneshot(Request::get(path).body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let body = to_bytes(response.into_body(), 1 << 20).await.unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn health_readiness_and_metrics() {
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry);
        metrics.observe(std::time::Duration::from_millis(30), None);
        metrics.observe(std::time::Duration::from_millis(10), Some("api"));
        metrics.set_phase("team", "chat", Phase::Healthy);
        let ready = Arc::new(AtomicBool::new(false));
        let router = app(AdminState {
            registry: Arc::new(registry),
            ready: ready.clone(),
        });

        assert_eq!(get(router.clone(), "/healthz").await.0, StatusCode::OK);
        assert_eq!(
            get(router.clone(), "/readyz").await.0,
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready before the API answered"
        );
        ready.store(true, Ordering::Release);
        assert_eq!(get(router.clone(), "/readyz").await.0, StatusCode::OK);

        let (status, body) = get(router, "/metrics").await;
        assert_eq!(status, StatusCode::OK);
        for expected in [
            "messenger_operator_reconciles_total 2",
            "messenger_operator_reconcile_errors_total{error=\"api\"} 1",
            "messenger_operator_reconcile_duration_seconds_count 2",
            "messenger_operator_app_phase{namespace=\"team\",name=\"chat\",phase=\"Healthy\"} 1",
            "messenger_operator_app_phase{namespace=\"team\",name=\"chat\",phase=\"Degraded\"} 0",
        ] {
            assert!(body.contains(expected), "missing {expected:?} in:\n{body}");
        }
    }
}
