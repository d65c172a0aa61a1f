//! `messenger-auth`: accounts and access tokens.
//!
//! Register creates an account (argon2id password hash in PostgreSQL) and, in the same
//! transaction, a `UserRegistered` event in the outbox; Login issues an opaque token
//! stored in Redis by its SHA-256 digest; ValidateToken is one Redis lookup; Logout
//! deletes it. [`run`] wires it all up, on real or in-memory stores as configured.
//!
//! Modules: [`domain`] (input rules), [`password`] (argon2id), [`token`] (opaque
//! tokens), [`store`] (storage traits and implementations), [`service`] (use cases),
//! [`grpc`] (the tonic endpoint), [`config`].

pub mod config;
pub mod domain;
pub mod error;
pub mod grpc;
pub mod oauth;
pub mod password;
pub mod service;
pub mod store;
pub mod token;

use std::sync::Arc;

use messenger_common::admin::{self, AdminState, ReadinessCheck};
use messenger_common::events::EventPublisher;
use messenger_common::grpc::GrpcServer;
use messenger_common::outbox::OutboxRelay;
use messenger_common::{Metrics, Shutdown, postgres, redis};
use sqlx::migrate::Migrator;

pub use config::{Config, StoreConfig};
pub use error::AuthError;
pub use messenger_common::Error;
pub use service::{AuthService, AuthStores};

use crate::grpc::AuthGrpc;
use crate::oauth::OAuthProviders;
use crate::password::PasswordHasher;
use crate::store::{
    InMemoryAccountStore, InMemoryLoginAttemptLimiter, InMemoryOAuthFlowStore,
    InMemoryRegistrationLimiter, InMemorySessionStore, PostgresAccountStore,
    RedisLoginAttemptLimiter, RedisOAuthFlowStore, RedisRegistrationLimiter, RedisSessionStore,
};

/// The auth service's own migrations (the `accounts` table); `run` applies them after
/// messenger-common's (outbox).
pub static MIGRATOR: Migrator = sqlx::migrate!();

pub use messenger_common::grpc::Listeners;

impl AuthStores {
    /// In-memory stores; `UserRegistered` goes straight to `events`.
    pub fn in_memory(config: &Config, events: Arc<dyn EventPublisher>) -> Self {
        Self {
            accounts: Arc::new(InMemoryAccountStore::new(events)),
            sessions: Arc::new(InMemorySessionStore::new()),
            login_attempts: Arc::new(InMemoryLoginAttemptLimiter::new(config.login_limits)),
            oauth_flows: Arc::new(InMemoryOAuthFlowStore::new()),
            registrations: Arc::new(InMemoryRegistrationLimiter::new(config.register_limits)),
        }
    }
}

/// Runs the service as configured until `shutdown` fires, then drains: accounts and
/// sessions on PostgreSQL and Redis (migrated at start) or in memory, `UserRegistered`
/// relayed from the outbox to Kafka or the in-process bus, the admin server and the gRPC
/// server. A failure stops this service only, never the caller's other work.
pub async fn run(config: Config, listeners: Listeners, shutdown: Shutdown) -> Result<(), Error> {
    let shutdown = shutdown.child();
    let metrics = Metrics::new();
    let (publisher, kafka) = config.events.publisher()?;
    let kafka = kafka.map(|kafka| Arc::new(kafka) as Arc<dyn ReadinessCheck>);
    match config.store.clone() {
        StoreConfig::InMemory => {
            tracing::warn!("auth running on in-memory storage: accounts and sessions are not kept");
            let stores = AuthStores::in_memory(&config, publisher);
            let readiness = kafka.into_iter().collect();
            let admin = AdminState { metrics, readiness };
            serve(config, stores, admin, listeners, shutdown).await
        }
        StoreConfig::Real {
            database_url,
            redis_url,
            redis_prefix,
        } => {
            let pool = postgres::connect(database_url.expose()).await?;
            postgres::prepare_schema(&pool, &MIGRATOR, config.service.migrate_on_start).await?;
            let redis = redis::connect(redis::RedisConfig::new(
                redis_url.clone(),
                config.service.redis_ca_file.clone(),
            ))
            .await?;
            let relay = OutboxRelay::new(
                pool.clone(),
                publisher,
                &[messenger_proto::topics::AUTH_EVENTS],
            )
            .with_metrics(&metrics);
            let relay_task = tokio::spawn(relay.run(shutdown.clone()));

            let stores = AuthStores {
                accounts: Arc::new(PostgresAccountStore::new(pool.clone())),
                sessions: Arc::new(RedisSessionStore::new(redis.clone(), redis_prefix.clone())),
                login_attempts: Arc::new(RedisLoginAttemptLimiter::new(
                    redis.clone(),
                    redis_prefix.clone(),
                    config.login_limits,
                )),
                oauth_flows: Arc::new(RedisOAuthFlowStore::new(
                    redis.clone(),
                    redis_prefix.clone(),
                )),
                registrations: Arc::new(RedisRegistrationLimiter::new(
                    redis.clone(),
                    redis_prefix,
                    config.register_limits,
                )),
            };
            let readiness = [
                Arc::new(pool.clone()) as Arc<dyn ReadinessCheck>,
                Arc::new(redis),
            ]
            .into_iter()
            .chain(kafka)
            .collect();
            let admin = AdminState { metrics, readiness };
            let served = serve(config, stores, admin, listeners, shutdown).await;
            if let Err(error) = relay_task.await {
                tracing::error!(%error, "outbox relay task failed");
            }
            pool.close().await;
            served
        }
    }
}

async fn serve(
    config: Config,
    stores: AuthStores,
    admin: AdminState,
    listeners: Listeners,
    shutdown: Shutdown,
) -> Result<(), Error> {
    let hasher = PasswordHasher::new().map_err(|e| Error::Other(e.to_string()))?;
    let providers = OAuthProviders::new(&config.oauth).map_err(Error::Other)?;
    let service = AuthService::new(stores, hasher, config.token_ttl).with_oauth(providers);
    let metrics = admin.metrics.clone();

    let admin_task = tokio::spawn(admin::serve_with_listener(
        listeners.admin,
        admin,
        shutdown.clone(),
    ));
    let served = GrpcServer::new(&metrics)
        .request_timeout(config.service.request_timeout)
        .reflection(config.service.grpc_reflection)
        .max_concurrent_calls(config.service.max_concurrent_calls)
        .tls(&config.service.grpc_tls)
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

/// `messenger-auth migrate`: applies the migrations to `DATABASE_URL` (creating the
/// database if needed); with `AUTH_STORE=memory` there is nothing to migrate.
pub async fn migrate(config: Config) -> Result<messenger_common::service::Migrated, Error> {
    use messenger_common::service::Migrated;
    match config.store {
        StoreConfig::InMemory => Ok(Migrated::NothingToMigrate),
        StoreConfig::Real { database_url, .. } => {
            let pool = postgres::connect(database_url.expose()).await?;
            postgres::migrate(&pool, &MIGRATOR).await?;
            pool.close().await;
            Ok(Migrated::Applied)
        }
    }
}

messenger_common::grpc_service!("auth", Config, Error, run, migrate = migrate);
