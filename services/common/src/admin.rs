//! The admin HTTP server every service runs next to its main port: `GET /healthz`
//! (liveness), `GET /readyz` (every [`ReadinessCheck`] passes; see [`Gate`]) and
//! `GET /metrics` (Prometheus text). Build the router with [`router`] (tests call it with
//! `oneshot`), serve it with [`serve`] or [`serve_with_listener`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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
    /// How long a failure of this check takes the pod out of its Service.
    fn gate(&self) -> Gate {
        Gate::Always
    }
}

/// When a failing check makes `/readyz` answer 503.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gate {
    /// Whenever it fails: the store without which the service can answer nothing, so
    /// callers get a fast refusal from the Service rather than a pod that cannot help.
    Always,
    /// Only until it first passes. For what the service can do without for a while (the
    /// broker behind an outbox) and for peers: an outage there hits every replica alike,
    /// and failing readiness on it would empty the Service: the gateway would go dark
    /// instead of answering 503s for the calls that need the missing peer. Later failures
    /// are still shown in the body.
    StartUp,
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

/// The admin state with, per readiness check, whether it has passed since start.
struct Served {
    state: AdminState,
    passed: Vec<AtomicBool>,
}

/// The admin routes, without a socket.
pub fn router(state: AdminState) -> Router {
    let passed = state
        .readiness
        .iter()
        .map(|_| AtomicBool::new(false))
        .collect();
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(Arc::new(Served { state, passed }))
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

async fn readyz(State(served): State<Arc<Served>>) -> Response {
    let checks = &served.state.readiness;
    let results = futures::future::join_all(checks.iter().map(|check| async move {
        match tokio::time::timeout(CHECK_TIMEOUT, check.check()).await {
            Ok(outcome) => outcome,
            Err(_) => Err(format!("no answer within {CHECK_TIMEOUT:?}")),
        }
    }))
    .await;
    let mut body = String::new();
    let mut ready = true;
    for ((check, outcome), passed) in checks.iter().zip(results).zip(&served.passed) {
        let name = check.name();
        match outcome {
            Ok(()) => {
                passed.store(true, Ordering::Relaxed);
                body.push_str(&format!("{name}: ok\n"));
            }
            Err(reason) => {
                let gating = check.gate() == Gate::Always || !passed.load(Ordering::Relaxed);
                tracing::warn!(check = %name, %reason, gating, "readiness check failed");
                if gating {
                    ready = false;
                    body.push_str(&format!("{name}: failed: {reason}\n"));
                } else {
                    body.push_str(&format!(
                        "{name}: failed (passed at start-up, not gating): {reason}\n"
                    ));
                }
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

async fn metrics(State(served): State<Arc<Served>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        served.state.metrics.render(),
    )
        .into_response()
}
