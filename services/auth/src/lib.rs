//! `messenger-auth`: accounts and access tokens.
//!
//! Register creates an account (argon2id password hash in PostgreSQL) and, in the same
//! transaction, a `UserRegistered` event in the outbox; Login issues an opaque token
//! stored in Redis by its SHA-256 digest; ValidateToken is one Redis lookup; Logout
//! deletes it. [`run`] wires it all up; [`run_with_stores`] serves on stores the caller
//! built (the dev mode passes in-memory ones sharing its event bus).
//!
//! Modules: [`domain`] (input rules), [`password`] (argon2id), [`token`] (opaque
//! tokens), [`store`] (storage traits and implementations), [`service`] (use cases),
//! [`grpc`] (the tonic endpoint), [`config`].

pub mod config;
pub mod domain;
pub mod error;
pub mod grpc;
pub mod password;
pub mod service;
pub mod store;
pub mod token;

use std::sync::Arc;

use messenger_common::admin::{self, AdminState};
use messenger_common::events::{InMemoryEventBus, KafkaPublisher};
use messenger_common::grpc::GrpcServer;
use messenger_common::outbox::OutboxRelay;
use messenger_common::{Metrics, Shutdown, kafka, postgres, redis};
use messenger_proto::topics::AUTH_EVENTS;
use sqlx::migrate::Migrator;

pub use config::{Config, StoreConfig};
pub use error::AuthError;
pub use messenger_common::Error;
pub use service::{AuthService, AuthStores};

use crate::grpc::AuthGrpc;
use crate::password::PasswordHasher;
use crate::store::{
    InMemoryAccountStore, InMemoryLoginAttemptLimiter, InMemorySessionStore, PostgresAccountStore,
    RedisLoginAttemptLimiter, RedisSessionStore,
};

/// The auth service's own migrations (the `accounts` table); `run` applies them after
/// messenger-common's (outbox).
pub static MIGRATOR: Migrator = sqlx::migrate!();

pub use messenger_common::grpc::Listeners;

impl AuthStores {
    /// In-memory stores; `UserRegistered` goes straight to `events`.
    pub fn in_memory(config: &Config, events: Arc<InMemoryEventBus>) -> Self {
        Self {
            accounts: Arc::new(InMemoryAccountStore::new(events)),
            sessions: Arc::new(InMemorySessionStore::new()),
            login_attempts: Arc::new(InMemoryLoginAttemptLimiter::new(config.login_limits)),
        }
    }
}

/// Runs the service as configured until `shutdown` fires: connects PostgreSQL (running
/// migrations), Redis and Kafka (creating the auth topic), starts the outbox relay, the
/// admin server and the gRPC server. With `StoreConfig::InMemory` nothing external is
/// touched and events go to a private in-process bus.
pub async fn run(config: Config, listeners: Listeners, shutdown: Shutdown) -> Result<(), Error> {
    let shutdown = linked(&shutdown);
    match config.store.clone() {
        StoreConfig::InMemory => {
            let stores = AuthStores::in_memory(&config, Arc::new(InMemoryEventBus::new()));
            run_with_stores(config, stores, listeners, shutdown).await
        }
        StoreConfig::Real {
            database_url,
            redis_url,
            kafka_brokers,
            redis_prefix,
        } => {
            let pool = postgres::connect(&database_url).await?;
            postgres::migrate(&pool, &MIGRATOR).await?;
            let redis = redis::connect(&redis_url).await?;
            kafka::ensure_topics(&kafka_brokers, &[AUTH_EVENTS]).await?;
            let producer = kafka::producer(&kafka_brokers)?;
            let metrics = Metrics::new();

            let relay = OutboxRelay::new(
                pool.clone(),
                Arc::new(KafkaPublisher::new(producer.clone())),
            )
            .with_metrics(&metrics);
            let relay_task = tokio::spawn(relay.run(shutdown.clone()));

            let stores = AuthStores {
                accounts: Arc::new(PostgresAccountStore::new(pool.clone())),
                sessions: Arc::new(RedisSessionStore::new(redis.clone(), redis_prefix.clone())),
                login_attempts: Arc::new(RedisLoginAttemptLimiter::new(
                    redis.clone(),
                    redis_prefix,
                    config.login_limits,
                )),
            };
            let admin = AdminState {
                metrics,
                readiness: vec![
                    Arc::new(pool.clone()),
                    Arc::new(redis),
                    Arc::new(kafka::KafkaReadiness::new(producer)),
                ],
            };
            let served = serve(config, stores, admin, listeners, shutdown).await;
            if let Err(error) = relay_task.await {
                tracing::error!(%error, "outbox relay task failed");
            }
            pool.close().await;
            served
        }
    }
}

/// Serves the gRPC and admin endpoints on stores the caller built (e.g.
/// [`AuthStores::in_memory`] sharing the dev mode's event bus) until `shutdown` fires.
/// `config.store` is not looked at; readiness has no dependencies to check.
pub async fn run_with_stores(
    config: Config,
    stores: AuthStores,
    listeners: Listeners,
    shutdown: Shutdown,
) -> Result<(), Error> {
    let admin = AdminState {
        metrics: Metrics::new(),
        readiness: Vec::new(),
    };
    serve(config, stores, admin, listeners, linked(&shutdown)).await
}

/// A token of this service's own that follows `outer`, so the service can stop its own
/// tasks when one of them fails without shutting down whatever else shares `outer`
/// (the dev mode runs every service on one token).
fn linked(outer: &Shutdown) -> Shutdown {
    let own = Shutdown::new();
    let (outer, follower) = (outer.clone(), own.clone());
    tokio::spawn(async move {
        tokio::select! {
            () = outer.cancelled() => follower.trigger(),
            () = follower.cancelled() => {}
        }
    });
    own
}

async fn serve(
    config: Config,
    stores: AuthStores,
    admin: AdminState,
    listeners: Listeners,
    shutdown: Shutdown,
) -> Result<(), Error> {
    let hasher = PasswordHasher::new().map_err(|e| Error::Other(e.to_string()))?;
    let service = AuthService::new(stores, hasher, config.token_ttl);
    let metrics = admin.metrics.clone();

    let admin_task = tokio::spawn(admin::serve_with_listener(
        listeners.admin,
        admin,
        shutdown.clone(),
    ));
    let served = GrpcServer::new(&metrics)
        .request_timeout(config.service.request_timeout)
        .reflection(config.service.grpc_reflection)
        .internal_key(config.internal_key.clone())
        .add_service(AuthGrpc::new(service).into_server())
        .serve_with_listener(listeners.grpc, shutdown.clone())
        .await;
    // If the gRPC server failed on its own, take the admin server and relay down with it.
    shutdown.trigger();
    match admin_task.await {
        Ok(Err(error)) => tracing::error!(%error, "admin server failed"),
        Err(error) => tracing::error!(%error, "admin server task failed"),
        Ok(Ok(())) => {}
    }
    served
}
