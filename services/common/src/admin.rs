//! The admin HTTP server every service runs next to its main port: `GET /healthz`
//! (liveness), `GET /readyz` (every [`ReadinessCheck`] passes) and `GET /metrics`
//! (Prometheus text). Build the router with [`router`] (tests call it with `oneshot`),
//! serve it with [`serve`] or [`serve_with_listener`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::net::TcpListener;

use crate::error::Error;
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;

/// One dependency the service needs to serve traffic (database, cache, broker...).
#[async_trait::async_trait]
pub trait ReadinessCheck: Send + Sync {
    /// Short name shown in `/readyz`, e.g. `"postgres"`.
    fn name(&self) -> &str;
    /// `Ok` when the dependency answers; `Err` says what is wrong.
    async fn check(&self) -> Result<(), String>;
}

/// How long one readiness check may take before it counts as failed.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

#[async_trait::async_trait]
impl ReadinessCheck for sqlx::PgPool {
    fn name(&self) -> &str {
        "postgres"
    }

    async fn check(&self) -> Result<(), String> {
        sqlx::query("SELECT 1")
            .execute(self)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

#[async_trait::async_trait]
impl ReadinessCheck for ::redis::aio::ConnectionManager {
    fn name(&self) -> &str {
        "redis"
    }

    async fn check(&self) -> Result<(), String> {
        let mut connection = self.clone();
        ::redis::cmd("PING")
            .query_async::<String>(&mut connection)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    }
}

/// Fails once shutdown has started draining, so `/readyz` turns 503 while the service
/// still serves the requests that reach it.
struct NotDraining(Shutdown);

#[async_trait::async_trait]
impl ReadinessCheck for NotDraining {
    fn name(&self) -> &str {
        "shutdown"
    }

    async fn check(&self) -> Result<(), String> {
        if self.0.is_draining() {
            Err("draining: shutting down".to_owned())
        } else {
            Ok(())
        }
    }
}

/// What the admin server needs: the metrics to expose and the readiness checks.
#[derive(Clone, Default)]
pub struct AdminState {
    /// Rendered by `/metrics`.
    pub metrics: Metrics,
    /// All must pass for `/readyz` to answer 200.
    pub readiness: Vec<Arc<dyn ReadinessCheck>>,
}

/// The admin routes, without a socket.
pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(Arc::new(state))
}

/// Binds `addr` and serves the admin routes until `shutdown`.
pub async fn serve(addr: SocketAddr, state: AdminState, shutdown: Shutdown) -> Result<(), Error> {
    let listener = TcpListener::bind(addr).await?;
    serve_with_listener(listener, state, shutdown).await
}

/// Serves the admin routes on an already-bound listener until `shutdown`.
pub async fn serve_with_listener(
    listener: TcpListener,
    state: AdminState,
    shutdown: Shutdown,
) -> Result<(), Error> {
    tracing::info!(addr = ?listener.local_addr().ok(), "admin server listening");
    let mut state = state;
    // First: once draining starts, not ready, whatever the dependencies say.
    state
        .readiness
        .insert(0, Arc::new(NotDraining(shutdown.clone())));
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown.cancelled())
        .await?;
    Ok(())
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<Arc<AdminState>>) -> Response {
    let results = futures::future::join_all(state.readiness.iter().map(|check| async move {
        let outcome = match tokio::time::timeout(CHECK_TIMEOUT, check.check()).await {
            Ok(outcome) => outcome,
            Err(_) => Err(format!("no answer within {CHECK_TIMEOUT:?}")),
        };
        (check.name().to_owned(), outcome)
    }))
    .await;
    let mut body = String::new();
    let mut ready = true;
    for (name, outcome) in results {
        match outcome {
            Ok(()) => body.push_str(&format!("{name}: ok\n")),
            Err(reason) => {
                ready = false;
                tracing::warn!(check = %name, %reason, "readiness check failed");
                body.push_str(&format!("{name}: failed: {reason}\n"));
            }
        }
    }
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, body).into_response()
}

async fn metrics(State(state): State<Arc<AdminState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}
