//! `messenger-common`: the shared runtime every messenger service is built on.
//!
//! One place for what would otherwise be copied into each service: environment
//! configuration ([`config`]), logging ([`telemetry`]), shutdown signalling
//! ([`shutdown`]), the gRPC error mapping ([`error`]), metrics ([`metrics`]), the
//! admin HTTP server with health and readiness ([`admin`]), the gRPC server bootstrap
//! ([`grpc`]), signed caller identity between services ([`identity`]), connectors for PostgreSQL ([`postgres`]), Redis ([`redis`]) and Kafka
//! ([`kafka`]), event publishing ([`events`]), the transactional outbox ([`outbox`]) and
//! idempotent event consumers ([`consumer`]). Test helpers live in `testing` behind the
//! `testing` feature.
//!
//! A service's start-up, end to end:
//!
//! ```no_run
//! use std::sync::Arc;
//! use messenger_common::admin::{self, AdminState};
//! use messenger_common::events::KafkaPublisher;
//! use messenger_common::grpc::GrpcServer;
//! use messenger_common::kafka::KafkaReadiness;
//! use messenger_common::outbox::OutboxRelay;
//! use messenger_common::{Metrics, ServiceConfig, ServiceDefaults, Shutdown, config, postgres, telemetry};
//!
//! # static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate::Migrator::DEFAULT;
//! # async fn main_() -> anyhow::Result<()> {
//! let config = ServiceConfig::from_env(ServiceDefaults { name: "friends", grpc_port: 8003, admin_port: 9003 })?;
//! telemetry::init(&config.name, config.log_format);
//! let database_url: String = config::env_required("DATABASE_URL")?;
//! let brokers: String = config::env_or("KAFKA_BROKERS", "127.0.0.1:9092".to_owned())?;
//!
//! let shutdown = Shutdown::on_signal();
//! let metrics = Metrics::new();
//! let pool = postgres::connect(&database_url).await?;
//! postgres::migrate(&pool, &MIGRATOR).await?; // your crate: &sqlx::migrate!()
//! let publisher = KafkaPublisher::connect(&brokers)?;
//! let readiness = KafkaReadiness::new(publisher.producer().clone());
//! let relay = OutboxRelay::new(pool.clone(), Arc::new(publisher), &["my.events"])
//!     .with_metrics(&metrics);
//! let relay = tokio::spawn(relay.run(shutdown.clone()));
//!
//! let admin = tokio::spawn(admin::serve(
//!     config.admin_addr,
//!     AdminState { metrics: metrics.clone(), readiness: vec![Arc::new(pool.clone()), Arc::new(readiness)] },
//!     shutdown.clone(),
//! ));
//! # let my_service = tonic_health::server::health_reporter().1;
//! GrpcServer::new(&metrics)
//!     .request_timeout(config.request_timeout)
//!     .reflection(config.grpc_reflection)
//!     .internal_key(messenger_common::identity::InternalKey::from_env()?)
//!     .add_service(my_service) // e.g. FriendsServiceServer::new(service)
//!     .serve(config.grpc_addr, shutdown.clone())
//!     .await?;
//! shutdown.trigger();
//! relay.await?;
//! admin.await??;
//! # Ok(())
//! # }
//! ```

#![warn(missing_docs)]

pub mod admin;
pub mod backoff;
pub mod config;
pub mod consumer;
pub mod error;
pub mod events;
pub mod grpc;
pub mod identity;
pub mod ids;
pub mod kafka;
pub mod metrics;
pub mod outbox;
pub mod postgres;
pub mod redis;
pub mod service;
pub mod shutdown;
pub mod telemetry;
#[cfg(feature = "testing")]
pub mod testing;
pub mod tls;

/// Re-exported so services implement [`admin::ReadinessCheck`], [`events::EventPublisher`]
/// and [`events::EventHandler`] without adding the dependency themselves.
pub use async_trait::async_trait;
pub use backoff::Backoff;
pub use config::{ConfigError, LogFormat, ServiceConfig, ServiceDefaults};
pub use error::{Error, ServiceError};
pub use events::{EventHandler, EventPublisher, HandlerError, PublishError};
pub use metrics::Metrics;
pub use service::Service;
pub use shutdown::Shutdown;
