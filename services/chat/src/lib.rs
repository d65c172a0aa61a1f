//! `messenger-chat`: conversations between friends and their messages.
//!
//! gRPC `ChatService` (default port 8002) on MongoDB (or in memory), with recent messages
//! cached in Redis, friendship checked through the friends service, and `ChatCreated` /
//! `MessageSent` events relayed from the store's outbox to Kafka.
//!
//! Modules: [`domain`] (pure rules), [`store`] (the `ChatStore` trait, MongoDB and
//! in-memory), [`outbox`] (relay to the event bus), [`cache`] (Redis), [`friendship`]
//! (the friends service seam), [`service`] (gRPC), [`config`]. [`run`] wires them.

pub mod cache;
pub mod config;
pub mod domain;
pub mod error;
pub mod friendship;
pub mod outbox;
pub mod service;
pub mod store;
pub mod users;

use std::sync::Arc;

use messenger_common::admin::{self, AdminState, ReadinessCheck};
use messenger_common::grpc::{GrpcServer, connect_channel_with_tls};
use messenger_common::{Metrics, Shutdown};
use messenger_proto::v1::chat_service_server::ChatServiceServer;

pub use config::Config;
pub use error::ChatError;

use crate::cache::HistoryCache;
use crate::config::{FriendsConfig, StoreConfig, UsersConfig};
use crate::friendship::{FriendshipChecker, GrpcFriendshipChecker};
use crate::outbox::ChatOutboxRelay;
use crate::service::ChatHandler;
use crate::store::{ChatStore, InMemoryChatStore, MongoChatStore};
use crate::users::{GrpcUserDirectory, UserDirectory};

pub use messenger_common::grpc::Listeners;

/// Connects the store, cache and event bus, starts the outbox relay, the admin server
/// (`/healthz`, `/readyz`, `/metrics`) and the gRPC server, and returns after a graceful
/// shutdown once `shutdown` fires. The store, events and friendship sources come from
/// `config` (`Config::in_memory` runs everything in process).
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: Shutdown,
) -> Result<(), ChatError> {
    let metrics = Metrics::new();
    let mut readiness: Vec<Arc<dyn ReadinessCheck>> = Vec::new();

    let store: Arc<dyn ChatStore> = match &config.store {
        StoreConfig::Memory => {
            tracing::warn!(
                "CHAT_STORE=memory: chats and messages live in this process only and are LOST on restart; \
                 set MONGODB_URI to keep them"
            );
            Arc::new(InMemoryChatStore::new())
        }
        StoreConfig::MongoDb(mongo) => {
            let store = MongoChatStore::connect(mongo).await?;
            readiness.push(Arc::new(MongoReadiness(store.database().clone())));
            Arc::new(store)
        }
    };

    let cache = match &config.cache {
        // Connected on first use and left out of readiness: the cache is optional, so
        // chat starts, and stays in its Service, while Redis is down.
        Some(cache) => Some(HistoryCache::connect_lazily(
            messenger_common::redis::RedisConfig::new(
                cache.redis_url.clone(),
                config.service.redis_ca_file.clone(),
            ),
            cache.key_prefix.clone(),
            cache.ttl,
        )?),
        None => None,
    };

    let (publisher, kafka_readiness) = config.events.publisher()?;
    if let Some(kafka) = kafka_readiness {
        readiness.push(Arc::new(kafka));
    }

    let friendships: Arc<dyn FriendshipChecker> = match &config.friends {
        FriendsConfig::Grpc { url, timeout } => {
            let channel = connect_channel_with_tls(url, *timeout, &config.service.grpc_tls)?;
            Arc::new(GrpcFriendshipChecker::new(channel, *timeout))
        }
        FriendsConfig::InMemory(friendships) => friendships.clone(),
    };
    let users: Arc<dyn UserDirectory> = match &config.users {
        UsersConfig::Grpc { url, timeout } => Arc::new(GrpcUserDirectory::new(
            connect_channel_with_tls(url, *timeout, &config.service.grpc_tls)?,
            *timeout,
        )),
        UsersConfig::InMemory(users) => users.clone(),
    };

    // Our own token, cancelled by the caller's: stopping this service after an error
    // must not stop whatever else shares the caller's token (the all-in-one dev mode).
    let stop = shutdown.child();

    let relay = ChatOutboxRelay::new(Arc::clone(&store), publisher, config.outbox_poll_interval)
        .with_metrics(&metrics);
    let handler = ChatHandler::new(store, friendships, users, cache, relay.waker());
    let relay_task = tokio::spawn(relay.run(stop.clone()));
    let admin_task = tokio::spawn(admin::serve_with_listener(
        listeners.admin,
        AdminState {
            metrics: metrics.clone(),
            readiness,
        },
        stop.clone(),
    ));

    let served = GrpcServer::new(&metrics)
        .request_timeout(config.service.request_timeout)
        .reflection(config.service.grpc_reflection)
        .max_concurrent_calls(config.service.max_concurrent_calls)
        .tls(&config.service.grpc_tls)
        .internal_key(config.internal_key.clone())
        .add_service(ChatServiceServer::new(handler))
        .serve_with_listener(listeners.grpc, stop.clone())
        .await;
    // If the gRPC server stopped on its own (an error), stop the relay and admin too.
    stop.trigger();
    if relay_task.await.is_err() {
        tracing::error!("the chat outbox relay panicked");
    }
    let admin_result = admin_task
        .await
        .map_err(|error| ChatError::internal(anyhow::anyhow!("admin server: {error}")))?;
    served?;
    admin_result?;
    Ok(())
}

/// `/readyz`: MongoDB answers a ping.
// moves to messenger-common (next to the PgPool and Redis checks) once it has a MongoDB connector.
struct MongoReadiness(mongodb::Database);

#[messenger_common::async_trait]
impl ReadinessCheck for MongoReadiness {
    fn name(&self) -> &str {
        "mongodb"
    }

    async fn check(&self) -> Result<(), String> {
        self.0
            .run_command(mongodb::bson::doc! { "ping": 1 })
            .await
            .map(|_| ())
            .map_err(|error| error.to_string())
    }
}

messenger_common::grpc_service!("chat", Config, ChatError, run);
