//! `messenger-gateway`: the REST front door of the messenger (default port 8080) and the
//! system's trust boundary. It authenticates every request with the auth service, signs
//! who acts into each call to the internal gRPC services, maps their errors to
//! problem+json, and pushes real-time events to clients over Server-Sent Events.
//!
//! Modules: [`api`] (routes, OpenAPI, middleware stack), [`stream`] (event fan-out,
//! per-user streams, tickets), [`feed`] (events from Kafka or the in-process bus),
//! [`peers`] (the gRPC clients), [`middleware`] (request context, deadline, rate limits),
//! [`token_cache`] + [`revocations`] (validated tokens cached, logouts sent to every replica),
//! [`error`] (problem+json), [`web`] (the web client's files), [`config`]. [`run`] wires them.

pub mod api;
pub mod config;
pub mod error;
pub mod feed;
pub mod middleware;
pub mod peers;
pub mod revocations;
pub mod stream;
pub mod token_cache;
pub mod web;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use messenger_common::admin::{self, AdminState};
use messenger_common::service::{self, BindError};
use messenger_common::{Metrics, Shutdown};
use tokio::net::TcpListener;

pub use config::Config;
pub use error::ApiError;

use crate::config::EventsConfig;
use crate::feed::KafkaFeed;
use crate::peers::Peers;
use crate::revocations::Revocations;
use crate::stream::StreamHub;
use crate::token_cache::TokenCache;

/// The gateway's two sockets, bound before it starts (tests bind port 0).
pub struct Listeners {
    /// REST API (`HTTP_ADDR`).
    pub http: TcpListener,
    /// `/healthz`, `/readyz`, `/metrics` (`ADMIN_ADDR`).
    pub admin: TcpListener,
}

impl Listeners {
    /// Binds `HTTP_ADDR` and `ADMIN_ADDR`.
    pub async fn bind(config: &Config) -> Result<Self, BindError> {
        Ok(Self {
            http: service::bind("HTTP_ADDR", config.http_addr).await?,
            admin: service::bind("ADMIN_ADDR", config.admin_addr).await?,
        })
    }
}

/// The gateway, started by its binary and by `messenger dev` through
/// [`messenger_common::Service`].
pub struct Service;

impl messenger_common::Service for Service {
    const NAME: &'static str = "gateway";
    type Config = Config;
    type Listeners = Listeners;
    type Error = messenger_common::Error;

    fn config_from_env() -> Result<Config, messenger_common::ConfigError> {
        Config::from_env()
    }

    fn log_format(config: &Config) -> messenger_common::LogFormat {
        config.log_format
    }

    async fn bind(config: &Config) -> Result<Listeners, BindError> {
        Listeners::bind(config).await
    }

    async fn run(
        config: Config,
        listeners: Listeners,
        shutdown: Shutdown,
    ) -> Result<(), messenger_common::Error> {
        run(config, listeners, shutdown).await
    }
}

/// How long shutdown waits for in-flight requests before closing what is left (event
/// streams never end by themselves).
const DRAIN_GRACE: Duration = Duration::from_secs(1);

/// Serves the API and the admin routes until `shutdown`, then stops accepting, lets
/// in-flight requests finish (up to the request timeout) and ends open event streams.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: Shutdown,
) -> Result<(), messenger_common::Error> {
    let metrics = Metrics::new();
    let hub = StreamHub::new(config.stream.clone());
    let peers = Peers::connect_with_tls(
        &config.peers,
        &config.grpc_tls,
        config.internal_key.clone(),
        config.request_timeout,
    )
    .map_err(|e| messenger_common::Error::Other(e.detail))?;
    let mut readiness = peers.readiness();

    // Our own token: stopping after an error must not stop whatever shares the caller's.
    let stop = shutdown.child();

    let feed_task = match &config.events {
        EventsConfig::Kafka(kafka) => {
            let feed = KafkaFeed::connect(kafka).await?;
            readiness.push(feed.readiness());
            tokio::spawn(feed.run(hub.clone(), metrics.clone(), stop.clone()))
        }
        EventsConfig::InMemory(bus) => {
            tokio::spawn(feed::run_in_memory(bus, hub.clone(), stop.clone()))
        }
    };
    let sweeper = tokio::spawn({
        let (hub, stop) = (hub.clone(), stop.clone());
        async move {
            let mut every = tokio::time::interval(Duration::from_secs(30));
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = every.tick() => hub.sweep(),
                }
            }
        }
    });
    let rechecker = tokio::spawn({
        let (hub, peers, stop) = (hub.clone(), peers.clone(), stop.clone());
        let period = config.stream.session_recheck;
        async move {
            let mut every = tokio::time::interval(period);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = every.tick() => end_revoked_streams(&hub, &peers).await,
                }
            }
        }
    });

    let admin_task = tokio::spawn(admin::serve_with_listener(
        listeners.admin,
        AdminState {
            metrics: metrics.clone(),
            readiness,
        },
        stop.clone(),
    ));

    let mut state = api::AppState::new(&config, peers, hub.clone());
    let revocations_task = match &config.token_cache {
        Some(cache) => {
            let token_cache = Arc::new(TokenCache::new(cache.ttl, cache.max_entries));
            token_cache.register_metrics(&metrics);
            let revocations =
                Revocations::new(cache.redis_url.expose(), &cache.prefix, token_cache).map_err(
                    |error| messenger_common::Error::Other(format!("REDIS_URL: {error}")),
                )?;
            state = state.with_revocations(revocations.clone());
            Some(tokio::spawn(revocations.run(hub.clone(), stop.clone())))
        }
        None => None,
    };
    let state_hub = hub.clone();
    let app = api::app(&config, state, &metrics);
    tracing::info!(addr = ?listeners.http.local_addr().ok(), "REST API listening");
    let server = axum::serve(
        listeners.http,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown({
        let (stop, hub) = (stop.clone(), state_hub);
        async move {
            stop.cancelled().await;
            // Streams never end by themselves; clients reconnect with Last-Event-ID.
            hub.close_all();
        }
    })
    .into_future();
    tokio::pin!(server);
    let served = tokio::select! {
        result = &mut server => result,
        _ = stop.cancelled() => {
            // Streams keep graceful shutdown waiting forever: close them once in-flight
            // requests had their time.
            match tokio::time::timeout(config.request_timeout + DRAIN_GRACE, &mut server).await {
                Ok(result) => result,
                Err(_) => {
                    tracing::info!("closing the remaining connections (event streams)");
                    Ok(())
                }
            }
        }
    };
    stop.trigger();
    sweeper.abort();
    rechecker.abort();
    if let Some(task) = revocations_task {
        // Deregisters this replica, so logouts stop waiting for it.
        let _ = task.await;
    }
    let _ = feed_task.await;
    let admin_result = admin_task
        .await
        .map_err(|error| messenger_common::Error::Other(format!("admin server: {error}")))?;
    served?;
    admin_result?;
    tracing::info!("gateway stopped");
    Ok(())
}

/// Asks auth which open streams' tokens are gone and ends those streams: a logout served
/// by another replica (or an expired token) stops this replica's streams too.
async fn end_revoked_streams(hub: &StreamHub, peers: &Peers) {
    let tokens = hub.open_tokens();
    for chunk in tokens.chunks(1000) {
        let digests = chunk.iter().map(hex::encode).collect();
        let request = peers.as_gateway(messenger_proto::v1::CheckSessionsRequest {
            token_digests: digests,
        });
        match peers.auth.clone().check_sessions(request).await {
            Ok(answer) => {
                for ended in answer.into_inner().ended {
                    let mut token = [0u8; 32];
                    if hex::decode_to_slice(&ended, &mut token).is_ok() {
                        hub.close_token(&token);
                    }
                }
            }
            // Streams stay open while auth cannot answer; the next round asks again.
            Err(status) => tracing::warn!(%status, "could not check the sessions of open streams"),
        }
    }
}
