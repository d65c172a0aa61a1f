//! The friends service: friend requests, friend lists and the friendship check chat uses,
//! all naming the other person by nickname (resolved through the users service).
//!
//! - [`domain`]: the rules, pure and table-tested.
//! - [`store`]: the source of truth ([`store::FriendshipStore`]: PostgreSQL with the common
//!   outbox, or in memory).
//! - [`cache`]: each user's relationships cached in Redis (or in memory), invalidated for
//!   both users on every change; never the source of truth.
//! - [`directory`]: nickname ↔ user id ([`directory::UserDirectory`]: gRPC to the users
//!   service, or in memory).
//! - [`service`]: the gRPC `FriendsService`.
//!
//! Start it with [`run`] (users over gRPC; real or in-memory stores as configured) or
//! [`run_with_directory`] (a given directory — tests).

pub mod cache;
pub mod config;
pub mod directory;
pub mod domain;
pub mod error;
pub mod service;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use messenger_common::admin::{self, AdminState, ReadinessCheck};
use messenger_common::events::KafkaPublisher;
use messenger_common::grpc::{self, GrpcServer};
use messenger_common::outbox::OutboxRelay;
use messenger_common::{Backoff, Metrics, Shutdown, kafka, postgres};
use messenger_proto::topics;
use messenger_proto::v1::friends_service_server::FriendsServiceServer;

pub use config::Config;
pub use error::FriendsError;
/// What start-up and serving fail with.
pub use messenger_common::Error;

use crate::cache::{InMemoryRelationshipCache, RedisRelationshipCache};
use crate::directory::{GrpcUserDirectory, UserDirectory};
use crate::service::FriendsService;
use crate::store::{InMemoryFriendshipStore, PostgresFriendshipStore};

/// This crate's migrations (the `friendships` table); the common ones run first.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Longest wait between attempts to create the events topic while Kafka is down.
const TOPIC_RETRY_MAX: Duration = Duration::from_secs(10);

pub use messenger_common::grpc::Listeners;

/// Runs the service until `shutdown` fires, resolving nicknames through the users service
/// at `USERS_URL`: on PostgreSQL, Redis and Kafka, or in memory when
/// [`Config::in_memory`] is set. A failure stops this service only.
pub async fn run(config: Config, listeners: Listeners, shutdown: Shutdown) -> Result<(), Error> {
    let channel = grpc::connect_channel_with_tls(
        &config.users_url,
        config.users_timeout,
        &config.service.grpc_tls,
    )?;
    let directory = Arc::new(GrpcUserDirectory::new(channel, config.users_timeout));
    run_with_directory(config, directory, listeners, shutdown).await
}

/// [`run`] with a given user directory (tests use an in-memory one).
///
/// On real stores: connects PostgreSQL (creating the database if needed) and runs the
/// migrations, sets up the Redis cache (connected on first use; until Redis answers, reads
/// go to the database), starts the outbox relay to Kafka (creating the events topic in the
/// background, so the service starts and keeps accepting changes while Kafka is down),
/// then serves gRPC and the admin endpoints. `/readyz` checks PostgreSQL only: Redis and
/// Kafka outages degrade the service (no cache, delayed events) without stopping it.
pub async fn run_with_directory(
    config: Config,
    directory: Arc<dyn UserDirectory>,
    listeners: Listeners,
    shutdown: Shutdown,
) -> Result<(), Error> {
    let shutdown = shutdown.child();
    if let Some(bus) = &config.in_memory {
        tracing::warn!("friends running on in-memory storage: friendships are not kept");
        let service = FriendsService::new(
            Arc::new(
                InMemoryFriendshipStore::new(Arc::new(bus.clone()))
                    .with_rules(config.request_rules),
            ),
            Arc::new(InMemoryRelationshipCache::new(config.cache_ttl)),
            directory,
            config.cache_timeout,
        );
        return serve(
            service,
            &config,
            Metrics::new(),
            Vec::new(),
            listeners,
            shutdown,
        )
        .await;
    }
    let pool = postgres::connect(config.database_url.expose()).await?;
    postgres::prepare_schema(&pool, &MIGRATOR, config.service.migrate_on_start).await?;
    // Connected on first use: the cache is optional, so Redis need not be up at start-up.
    let cache = RedisRelationshipCache::connect_lazily(
        messenger_common::redis::RedisConfig::new(
            config.redis_url.clone(),
            config.service.redis_ca_file.clone(),
        ),
        config.redis_prefix.clone(),
        config.cache_ttl,
    )?;
    let metrics = Metrics::new();

    let publisher = KafkaPublisher::connect(&config.kafka)?;
    let topic_task = tokio::spawn(create_events_topic(config.kafka.clone(), shutdown.clone()));
    let relay = OutboxRelay::new(pool.clone(), Arc::new(publisher), &[topics::FRIENDS_EVENTS])
        .with_max_backoff(config.outbox_max_backoff)
        .with_metrics(&metrics);
    let relay_task = tokio::spawn(relay.run(shutdown.clone()));

    let service = FriendsService::new(
        Arc::new(PostgresFriendshipStore::new(pool.clone()).with_rules(config.request_rules)),
        Arc::new(cache),
        directory,
        config.cache_timeout,
    )
    .with_metrics(&metrics);
    let readiness: Vec<Arc<dyn ReadinessCheck>> = vec![Arc::new(pool)];
    let served = serve(
        service,
        &config,
        metrics,
        readiness,
        listeners,
        shutdown.clone(),
    )
    .await;
    // The relay and topic task stop on this service's own shutdown (a child of the
    // caller's, which stays untouched); wait so no relay write is cut off.
    shutdown.trigger();
    let _ = tokio::join!(relay_task, topic_task);
    served
}

/// Serves gRPC and the admin endpoints until `shutdown`; if either fails, the other is
/// stopped too.
async fn serve(
    service: FriendsService,
    config: &Config,
    metrics: Metrics,
    readiness: Vec<Arc<dyn ReadinessCheck>>,
    listeners: Listeners,
    shutdown: Shutdown,
) -> Result<(), Error> {
    let grpc = GrpcServer::new(&metrics)
        .request_timeout(config.service.request_timeout)
        .reflection(config.service.grpc_reflection)
        .max_concurrent_calls(config.service.max_concurrent_calls)
        .tls(&config.service.grpc_tls)
        .internal_key(config.internal_key.clone())
        .add_service(FriendsServiceServer::new(service))
        .serve_with_listener(listeners.grpc, shutdown.clone());
    let admin = admin::serve_with_listener(
        listeners.admin,
        AdminState { metrics, readiness },
        shutdown.clone(),
    );
    let stop_on_error = |result: Result<(), Error>| {
        if result.is_err() {
            shutdown.trigger();
        }
        result
    };
    let (grpc, admin) = tokio::join!(async { stop_on_error(grpc.await) }, async {
        stop_on_error(admin.await)
    });
    grpc.and(admin)
}

/// Creates the events topic, retrying with backoff until it exists or shutdown (the relay
/// keeps its events until then).
async fn create_events_topic(kafka: kafka::KafkaConfig, shutdown: Shutdown) {
    let mut backoff = Backoff::new(Duration::from_millis(200), TOPIC_RETRY_MAX);
    loop {
        let attempt = tokio::select! {
            _ = shutdown.cancelled() => return,
            attempt = kafka::ensure_topics(&kafka, &[topics::FRIENDS_EVENTS]) => attempt,
        };
        let delay = backoff.next_delay();
        match attempt {
            Ok(()) => return,
            Err(error) => {
                tracing::warn!(%error, retry_in = ?delay, "cannot create the friends events topic yet");
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// `messenger-friends migrate`: applies the migrations to `DATABASE_URL` (creating the
/// database if needed); on in-memory storage there is nothing to migrate.
pub async fn migrate(config: Config) -> Result<messenger_common::service::Migrated, Error> {
    use messenger_common::service::Migrated;
    if config.in_memory.is_some() {
        return Ok(Migrated::NothingToMigrate);
    }
    let pool = postgres::connect(config.database_url.expose()).await?;
    postgres::migrate(&pool, &MIGRATOR).await?;
    pool.close().await;
    Ok(Migrated::Applied)
}

messenger_common::grpc_service!("friends", Config, Error, run, migrate = migrate);
