//! messenger-users: public user profiles. Profiles are created from `UserRegistered` events
//! (Kafka topic `messenger.auth.events`), read by id or nickname, edited, and searched by
//! nickname prefix over gRPC (`messenger.v1.UsersService`). PostgreSQL is the source of
//! truth; Redis caches profiles and search pages.
//!
//! [`run`] serves on PostgreSQL, Redis and Kafka, or on in-memory stores and an
//! in-process event bus (the all-in-one dev mode), as [`Config::storage`] says.

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

pub use config::{Config, Storage, StorageConfig};
pub use error::UsersError;

/// This crate's migrations (the `profiles` table); run with `messenger_common::postgres::migrate`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

pub use messenger_common::grpc::Listeners;

/// Serves the users service until `shutdown` fires, then drains in-flight RPCs and stops
/// the consumer. On real storage: PostgreSQL (migrated at start), Redis (connected lazily:
/// the service works without it) and Kafka (consumes `UserRegistered`); in memory: profiles
/// created from `UserRegistered` on the in-process bus. A failure stops this service only.
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: Shutdown,
) -> Result<(), UsersError> {
    let shutdown = shutdown.child();
    let storage = match &config.storage {
        Storage::Real(storage) => storage.clone(),
        Storage::InMemory(bus) => {
            let bus = bus.clone();
            return run_in_memory(config, listeners, bus, shutdown).await;
        }
    };
    let pool = messenger_common::postgres::connect(storage.database_url.expose()).await?;
    messenger_common::postgres::prepare_schema(&pool, &MIGRATOR, config.service.migrate_on_start)
        .await?;
    let cache = RedisProfileCache::connect_lazily(
        messenger_common::redis::RedisConfig::new(
            storage.redis_url.clone(),
            config.service.redis_ca_file.clone(),
        ),
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
        Arc::new(pool.clone()),
        Arc::new(KafkaReadiness::new(messenger_common::kafka::producer(
            &storage.kafka,
        )?)),
    ];

    let consumer = run_kafka_consumer_with(
        &storage.kafka,
        &storage.kafka_consumer_group,
        &[AUTH_EVENTS],
        Arc::new(UserRegisteredHandler::new(profiles.clone())),
        shutdown.clone(),
        ConsumerOptions {
            metrics: Some(metrics.clone()),
        },
    );
    let expiry = tokio::spawn(messenger_common::consumer::run_processed_events_expiry(
        pool.clone(),
        store::CONSUMER_NAME.to_owned(),
        config.processed_events_retention,
        shutdown.clone(),
    ));
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
    let _ = expiry.await;
    consumed.and(served)
}

/// In-memory stores, profiles created from `UserRegistered` events published on `bus`.
async fn run_in_memory(
    config: Config,
    listeners: Listeners,
    bus: InMemoryEventBus,
    shutdown: Shutdown,
) -> Result<(), UsersError> {
    tracing::warn!("users running on in-memory storage: profiles are not kept");
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
        &bus,
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
        .max_concurrent_calls(config.service.max_concurrent_calls)
        .tls(&config.service.grpc_tls)
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

/// `messenger-users migrate`: applies the migrations to `DATABASE_URL` (creating the
/// database if needed); on in-memory storage there is nothing to migrate.
pub async fn migrate(config: Config) -> Result<messenger_common::service::Migrated, UsersError> {
    use messenger_common::service::Migrated;
    let Storage::Real(storage) = &config.storage else {
        return Ok(Migrated::NothingToMigrate);
    };
    let pool = messenger_common::postgres::connect(storage.database_url.expose()).await?;
    messenger_common::postgres::migrate(&pool, &MIGRATOR).await?;
    pool.close().await;
    Ok(Migrated::Applied)
}

messenger_common::grpc_service!("users", Config, UsersError, run, migrate = migrate);
