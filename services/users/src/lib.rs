//! messenger-users: public user profiles. Profiles are created from `UserRegistered` events
//! (Kafka topic `messenger.auth.events`), read by id or nickname, edited, and searched by
//! nickname prefix over gRPC (`messenger.v1.UsersService`). PostgreSQL is the source of
//! truth; Redis caches profiles and search pages.
//!
//! [`run`] serves on PostgreSQL, Redis and Kafka; [`run_in_memory`] serves on in-memory
//! stores and an in-process event bus (the all-in-one dev mode).

pub mod cache;
pub mod cached_store;
pub mod config;
pub mod domain;
pub mod error;
pub mod registration_consumer;
pub mod service;
pub mod store;

use std::sync::Arc;

use messenger_common::admin::{AdminState, ReadinessCheck};
use messenger_common::consumer::{
    ConsumerOptions, run_in_memory_consumer, run_kafka_consumer_with,
};
use messenger_common::events::InMemoryEventBus;
use messenger_common::grpc::GrpcServer;
use messenger_common::kafka::KafkaReadiness;
use messenger_common::{Metrics, Shutdown};
use messenger_proto::topics::AUTH_EVENTS;
use messenger_proto::v1::users_service_server::UsersServiceServer;

use crate::cache::{InMemoryProfileCache, RedisProfileCache};
use crate::cached_store::{CacheMetrics, CachedProfileStore};
use crate::registration_consumer::UserRegisteredHandler;
use crate::service::UsersGrpcService;
use crate::store::{InMemoryProfileStore, PgProfileStore};

pub use config::{Config, StorageConfig};
pub use error::UsersError;

/// This crate's migrations (the `profiles` table); run with `messenger_common::postgres::migrate`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

pub use messenger_common::grpc::Listeners;

/// Serves the users service on PostgreSQL (migrated at start), Redis (connected lazily: the
/// service works without it) and Kafka (consumes `UserRegistered`) until `shutdown` fires,
/// then drains in-flight RPCs and stops the consumer.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: Shutdown,
) -> Result<(), UsersError> {
    let (shutdown, _linked) = local_shutdown(&shutdown);
    let storage = &config.storage;
    let pool = messenger_common::postgres::connect(&storage.database_url).await?;
    messenger_common::postgres::migrate(&pool, &MIGRATOR).await?;
    let cache = RedisProfileCache::connect_lazily(
        &storage.redis_url,
        storage.redis_key_prefix.clone(),
        config.cache_ttl,
    )?;
    let metrics = Metrics::new();
    let profiles = Arc::new(
        CachedProfileStore::new(
            Arc::new(PgProfileStore::new(pool.clone())),
            Arc::new(cache),
            config.cache_timeout,
        )
        .with_metrics(CacheMetrics::register(&metrics)),
    );
    // Redis is left out of readiness on purpose: without it the service still answers.
    let readiness: Vec<Arc<dyn ReadinessCheck>> = vec![
        Arc::new(pool),
        Arc::new(KafkaReadiness::new(messenger_common::kafka::producer(
            &storage.kafka_brokers,
        )?)),
    ];

    let consumer = run_kafka_consumer_with(
        &storage.kafka_brokers,
        &storage.kafka_consumer_group,
        &[AUTH_EVENTS],
        Arc::new(UserRegisteredHandler::new(profiles.clone())),
        shutdown.clone(),
        ConsumerOptions {
            metrics: Some(metrics.clone()),
        },
    );
    let servers = serve(
        &config,
        listeners,
        profiles,
        metrics,
        readiness,
        shutdown.clone(),
    );
    let stop_all_on_error = |result: Result<(), UsersError>| {
        if result.is_err() {
            shutdown.trigger();
        }
        result
    };
    let (consumed, served) = tokio::join!(
        async { stop_all_on_error(consumer.await.map_err(UsersError::from)) },
        async { stop_all_on_error(servers.await) }
    );
    consumed.and(served)
}

/// Serves the users service on in-memory stores, creating profiles from `UserRegistered`
/// events published on `bus` (the all-in-one dev mode). `config.storage` is not used.
pub async fn run_in_memory(
    config: Config,
    listeners: Listeners,
    bus: &InMemoryEventBus,
    shutdown: Shutdown,
) -> Result<(), UsersError> {
    let (shutdown, _linked) = local_shutdown(&shutdown);
    let metrics = Metrics::new();
    let profiles = Arc::new(
        CachedProfileStore::new(
            Arc::new(InMemoryProfileStore::new()),
            Arc::new(InMemoryProfileCache::new(config.cache_ttl)),
            config.cache_timeout,
        )
        .with_metrics(CacheMetrics::register(&metrics)),
    );
    let consumer = run_in_memory_consumer(
        bus,
        &[AUTH_EVENTS],
        Arc::new(UserRegisteredHandler::new(profiles.clone())),
        shutdown.clone(),
    );
    let consumer = tokio::spawn(consumer);
    let served = serve(
        &config,
        listeners,
        profiles,
        metrics,
        Vec::new(),
        shutdown.clone(),
    )
    .await;
    shutdown.trigger();
    if let Err(error) = consumer.await {
        tracing::error!(%error, "in-memory consumer task failed");
    }
    served
}

/// A shutdown token for this service alone: it fires with `outer`, and this service may
/// fire it when one of its parts fails without stopping the caller's other services (the
/// dev mode runs all services in one process). Dropping the guard ends the link.
fn local_shutdown(outer: &Shutdown) -> (Shutdown, AbortOnDrop) {
    let local = Shutdown::new();
    let link = tokio::spawn({
        let outer = outer.cancelled();
        let local = local.clone();
        async move {
            outer.await;
            local.trigger();
        }
    });
    (local, AbortOnDrop(link))
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs the gRPC and admin servers until `shutdown`.
async fn serve(
    config: &Config,
    listeners: Listeners,
    profiles: Arc<CachedProfileStore>,
    metrics: Metrics,
    readiness: Vec<Arc<dyn ReadinessCheck>>,
    shutdown: Shutdown,
) -> Result<(), UsersError> {
    let grpc = GrpcServer::new(&metrics)
        .request_timeout(config.service.request_timeout)
        .reflection(config.service.grpc_reflection)
        .internal_key(config.internal_key.clone())
        .add_service(UsersServiceServer::new(UsersGrpcService::new(profiles)))
        .serve_with_listener(listeners.grpc, shutdown.clone());
    let admin = messenger_common::admin::serve_with_listener(
        listeners.admin,
        AdminState { metrics, readiness },
        shutdown,
    );
    tokio::try_join!(grpc, admin)?;
    Ok(())
}
