//! gRPC bootstrap: [`GrpcServer`] serves a service's tonic services together with the
//! standard health service (SERVING while up, NOT_SERVING once shutdown starts), server
//! reflection for every messenger proto, the RPC metrics layer and a per-request
//! deadline, draining in-flight RPCs on shutdown. [`connect_channel`] builds the channel
//! for calls to peer services.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::service::RoutesBuilder;
use tonic::transport::{Channel, Endpoint, Server};
use tonic_health::ServingStatus;
use tonic_health::server::{HealthReporter, HealthService};

use crate::config::DEFAULT_REQUEST_TIMEOUT;
use crate::error::Error;
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;

/// The two sockets every service serves on (gRPC and admin), bound before the service
/// starts so tests and the all-in-one mode can bind port 0 and learn the addresses.
pub struct Listeners {
    /// Where the gRPC server accepts connections.
    pub grpc: TcpListener,
    /// Where `/healthz`, `/readyz` and `/metrics` are served.
    pub admin: TcpListener,
}

impl Listeners {
    /// Binds `GRPC_ADDR` and `ADMIN_ADDR` of the service's configuration.
    pub async fn bind(service: &crate::config::ServiceConfig) -> std::io::Result<Self> {
        Ok(Self {
            grpc: TcpListener::bind(service.grpc_addr).await?,
            admin: TcpListener::bind(service.admin_addr).await?,
        })
    }
}

/// Builder and runner of a service's gRPC server.
///
/// ```no_run
/// # async fn example(listener: tokio::net::TcpListener) -> Result<(), messenger_common::Error> {
/// use messenger_common::{Metrics, Shutdown, grpc::GrpcServer};
/// # let my_service = tonic_health::server::health_reporter().1;
/// let metrics = Metrics::new();
/// GrpcServer::new(&metrics)
///     .add_service(my_service)
///     .serve_with_listener(listener, Shutdown::on_signal())
///     .await
/// # }
/// ```
pub struct GrpcServer {
    metrics: Metrics,
    routes: RoutesBuilder,
    service_names: Vec<&'static str>,
    request_timeout: Duration,
    drain_timeout: Option<Duration>,
    health: HealthReporter,
}

impl std::fmt::Debug for GrpcServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcServer")
            .field("services", &self.service_names)
            .field("request_timeout", &self.request_timeout)
            .finish_non_exhaustive()
    }
}

impl GrpcServer {
    /// A server recording RPC metrics into `metrics`, with the default request timeout.
    pub fn new(metrics: &Metrics) -> Self {
        Self {
            metrics: metrics.clone(),
            routes: RoutesBuilder::default(),
            service_names: Vec::new(),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            drain_timeout: None,
            health: HealthReporter::new(),
        }
    }

    /// Deadline for every request (use `ServiceConfig::request_timeout`). A client's
    /// shorter `grpc-timeout` wins. Timed-out calls end with `CANCELLED`.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// How long shutdown waits for in-flight RPCs and open streams (e.g. health `Watch`)
    /// before dropping them (default: the request timeout plus one second).
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = Some(timeout);
        self
    }

    /// Adds a generated service, e.g. `AuthServiceServer::new(svc)`. Its health status is
    /// reported under its full name (`messenger.v1.AuthService`).
    pub fn add_service<S>(mut self, service: S) -> Self
    where
        S: tower::Service<http::Request<Body>, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Response: axum::response::IntoResponse,
        S::Future: Send + 'static,
    {
        self.routes.add_service(service);
        self.service_names.push(S::NAME);
        self
    }

    /// The health reporter, to flip a service to NOT_SERVING while a dependency is down.
    pub fn health_reporter(&self) -> HealthReporter {
        self.health.clone()
    }

    /// Binds `addr` and serves until `shutdown`.
    pub async fn serve(self, addr: SocketAddr, shutdown: Shutdown) -> Result<(), Error> {
        let listener = TcpListener::bind(addr).await?;
        self.serve_with_listener(listener, shutdown).await
    }

    /// Serves on an already-bound listener (tests bind port 0) until `shutdown`, then
    /// reports NOT_SERVING and waits for in-flight RPCs to finish.
    pub async fn serve_with_listener(
        self,
        listener: TcpListener,
        shutdown: Shutdown,
    ) -> Result<(), Error> {
        let Self {
            metrics,
            mut routes,
            service_names,
            request_timeout,
            drain_timeout,
            health,
        } = self;
        let drain_timeout = drain_timeout.unwrap_or(request_timeout + Duration::from_secs(1));

        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(messenger_proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let reflection_v1 = reflection()
            .build_v1()
            .map_err(|e| Error::Other(format!("gRPC reflection: {e}")))?;
        let reflection_v1alpha = reflection()
            .build_v1alpha()
            .map_err(|e| Error::Other(format!("gRPC reflection: {e}")))?;
        routes
            .add_service(tonic_health::pb::health_server::HealthServer::new(
                HealthService::from_health_reporter(health.clone()),
            ))
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha);

        set_status(&health, &service_names, ServingStatus::Serving).await;
        tracing::info!(addr = ?listener.local_addr().ok(), services = ?service_names, "gRPC server listening");

        let stop_accepting = {
            let health = health.clone();
            let service_names = service_names.clone();
            let shutdown = shutdown.clone();
            async move {
                shutdown.cancelled().await;
                // Tell load balancers first, then stop accepting and drain.
                set_status(&health, &service_names, ServingStatus::NotServing).await;
                tracing::info!("gRPC server draining in-flight requests");
            }
        };

        let server = Server::builder()
            .timeout(request_timeout)
            .layer(metrics.grpc_layer())
            .add_routes(routes.routes())
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), stop_accepting);
        tokio::pin!(server);
        tokio::select! {
            result = &mut server => return result.map_err(Error::from),
            _ = shutdown.cancelled() => {}
        }
        // Streams that never end (health Watch) would hold shutdown forever: bound it.
        match tokio::time::timeout(drain_timeout, &mut server).await {
            Ok(result) => result?,
            Err(_) => tracing::warn!(?drain_timeout, "drain timeout passed; dropping open calls"),
        }
        tracing::info!("gRPC server stopped");
        Ok(())
    }
}

async fn set_status(health: &HealthReporter, service_names: &[&str], status: ServingStatus) {
    // "" is the whole server, what a plain health probe asks about.
    health.set_service_status("", status).await;
    for name in service_names {
        health.set_service_status(*name, status).await;
    }
}

/// A channel to a peer service (`http://users:8004`). Connects lazily, so start-up does
/// not depend on the peer being up; every connect and every call is bounded by `timeout`.
pub fn connect_channel(url: &str, timeout: Duration) -> Result<Channel, Error> {
    let endpoint = Endpoint::from_shared(url.to_owned())?
        .connect_timeout(timeout)
        .timeout(timeout);
    Ok(endpoint.connect_lazy())
}
