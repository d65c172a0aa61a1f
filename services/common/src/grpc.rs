//! gRPC bootstrap: [`GrpcServer`] serves a service's tonic services together with the
//! standard health service (SERVING while up, NOT_SERVING once shutdown starts), server
//! reflection when asked for (`GRPC_REFLECTION=true`), the RPC metrics layer, a
//! per-request deadline and the call context (the verified caller of
//! `crate::identity`, request id and trace parent), draining in-flight RPCs on shutdown.
//! [`GrpcTls`] configures TLS for both ends (`GRPC_TLS_*`), [`connect_channel`] builds the
//! channel for calls to peer services, and
//! [`peer_request`] a request that carries the deadline, caller and request id of the
//! call being served down the call chain.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::service::RoutesBuilder;
use tonic::transport::{
    Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Server, ServerTlsConfig,
};
use tonic_health::ServingStatus;
use tonic_health::server::{HealthReporter, HealthService};

use crate::config::{ConfigError, DEFAULT_REQUEST_TIMEOUT, env_ca_file_from, env_file_from};
use crate::error::Error;
use crate::identity::{self, Caller, IDENTITY_METADATA, InternalKey};
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
    pub async fn bind(
        service: &crate::config::ServiceConfig,
    ) -> Result<Self, crate::service::BindError> {
        Ok(Self {
            grpc: crate::service::bind("GRPC_ADDR", service.grpc_addr).await?,
            admin: crate::service::bind("ADMIN_ADDR", service.admin_addr).await?,
        })
    }
}

/// Builder and runner of a service's gRPC server.
///
/// ```no_run
/// # async fn example(listener: tokio::net::TcpListener) -> anyhow::Result<()> {
/// use messenger_common::{Metrics, Shutdown, grpc::GrpcServer};
/// # let my_service = tonic_health::server::health_reporter().1;
/// let metrics = Metrics::new();
/// let key = messenger_common::identity::InternalKey::from_env()?;
/// GrpcServer::new(&metrics)
///     .internal_key(key)
///     .add_service(my_service)
///     .serve_with_listener(listener, Shutdown::on_signal())
///     .await?;
/// # Ok(())
/// # }
/// ```
pub struct GrpcServer {
    metrics: Metrics,
    routes: RoutesBuilder,
    service_names: Vec<&'static str>,
    request_timeout: Duration,
    max_concurrent_calls: usize,
    drain_timeout: Option<Duration>,
    health: HealthReporter,
    internal_key: Option<InternalKey>,
    reflection: bool,
    tls: GrpcTls,
}

impl std::fmt::Debug for GrpcServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcServer")
            .field("services", &self.service_names)
            .field("request_timeout", &self.request_timeout)
            .field("internal_key", &self.internal_key)
            .field("reflection", &self.reflection)
            .field("tls", &self.tls.serves_tls())
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
            max_concurrent_calls: crate::config::DEFAULT_MAX_CONCURRENT_CALLS,
            drain_timeout: None,
            health: HealthReporter::new(),
            internal_key: None,
            reflection: false,
            tls: GrpcTls::default(),
        }
    }

    /// Serves over TLS only when `tls` has a certificate and key
    /// (`ServiceConfig::grpc_tls`); plain HTTP/2 otherwise.
    pub fn tls(mut self, tls: &GrpcTls) -> Self {
        self.tls = tls.clone();
        self
    }

    /// The key every call's identity assertion must be signed with
    /// (`crate::identity`). Every call except the gRPC health service (and reflection,
    /// when on) must carry a valid one, or it is answered UNAUTHENTICATED before any
    /// handler runs; the verified [`Caller`] is in the request's extensions
    /// (`identity::caller`) and forwarded by [`peer_request`]. A server without a key
    /// refuses every such call: trust is never the default.
    pub fn internal_key(mut self, key: InternalKey) -> Self {
        self.internal_key = Some(key);
        self
    }

    /// Serves gRPC server reflection (v1 and v1alpha) for every messenger proto. Off by
    /// default (`ServiceConfig::grpc_reflection`, `GRPC_REFLECTION=true`): it is a
    /// debugging aid, and a map of every RPC helps an intruder more than an operator.
    pub fn reflection(mut self, on: bool) -> Self {
        self.reflection = on;
        self
    }

    /// Deadline for every request (use `ServiceConfig::request_timeout`). A client's
    /// shorter `grpc-timeout` wins. Timed-out calls end with `DEADLINE_EXCEEDED`
    /// (see [`DeadlineLayer`]).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Calls served at once before new ones are answered `RESOURCE_EXHAUSTED` (use
    /// `ServiceConfig::max_concurrent_calls`; see [`ShedLayer`]).
    pub fn max_concurrent_calls(mut self, limit: usize) -> Self {
        self.max_concurrent_calls = limit.max(1);
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
            max_concurrent_calls,
            drain_timeout,
            health,
            internal_key,
            reflection,
            tls,
        } = self;
        let drain_timeout = drain_timeout.unwrap_or(request_timeout + Duration::from_secs(1));

        routes.add_service(tonic_health::pb::health_server::HealthServer::new(
            HealthService::from_health_reporter(health.clone()),
        ));
        if reflection {
            let builder = || {
                tonic_reflection::server::Builder::configure()
                    .register_encoded_file_descriptor_set(messenger_proto::FILE_DESCRIPTOR_SET)
                    .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            };
            let reflection_v1 = builder()
                .build_v1()
                .map_err(|e| Error::Other(format!("gRPC reflection: {e}")))?;
            let reflection_v1alpha = builder()
                .build_v1alpha()
                .map_err(|e| Error::Other(format!("gRPC reflection: {e}")))?;
            routes
                .add_service(reflection_v1)
                .add_service(reflection_v1alpha);
        }
        if internal_key.is_none() {
            tracing::warn!("no internal key: every call except health is refused");
        }

        set_status(&health, &service_names, ServingStatus::Serving).await;
        tracing::info!(addr = ?listener.local_addr().ok(), services = ?service_names, tls = tls.serves_tls(), "gRPC server listening");

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

        let mut builder = Server::builder();
        if let Some(tls_config) = tls.server_config()? {
            builder = builder
                .tls_config(tls_config)
                .map_err(|e| Error::Other(format!("gRPC TLS: {e}")))?;
        }
        let server = builder
            .layer(metrics.grpc_layer())
            .layer(ShedLayer::new(max_concurrent_calls))
            .layer(DeadlineLayer::new(request_timeout))
            .layer(CallContextLayer::new(internal_key))
            .add_routes(routes.routes())
            .serve_with_incoming_shutdown(incoming_without_nagle(listener), stop_accepting);
        tokio::pin!(server);
        // The server also ends by itself once shutdown has stopped it accepting and the
        // last call has finished; either way the stop is logged.
        let drained = tokio::select! {
            result = &mut server => {
                result?;
                true
            }
            _ = shutdown.cancelled() => false,
        };
        if !drained {
            // Streams that never end (health Watch) would hold shutdown forever: bound it.
            match tokio::time::timeout(drain_timeout, &mut server).await {
                Ok(result) => result?,
                Err(_) => {
                    tracing::warn!(?drain_timeout, "drain timeout passed; dropping open calls")
                }
            }
        }
        tracing::info!("gRPC server stopped");
        Ok(())
    }
}

/// Accepted connections with `TCP_NODELAY`: `serve_with_incoming_shutdown` does not apply
/// tonic's own setting, and without it a response larger than one segment waits ~40 ms for
/// the client's delayed ACK (docs/benchmarks.md).
fn incoming_without_nagle(
    listener: TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt;
    TcpListenerStream::new(listener).map(|accepted| {
        let stream = accepted?;
        stream.set_nodelay(true)?;
        Ok(stream)
    })
}

async fn set_status(health: &HealthReporter, service_names: &[&str], status: ServingStatus) {
    // "" is the whole server, what a plain health probe asks about.
    health.set_service_status("", status).await;
    for name in service_names {
        health.set_service_status(*name, status).await;
    }
}

/// A channel to a peer service (`http://users:8004`, or `https://users:8004` checked
/// against the system's roots). Connects lazily, so start-up does not depend on the peer
/// being up; every connect and every call is bounded by `timeout`.
pub fn connect_channel(url: &str, timeout: Duration) -> Result<Channel, Error> {
    connect_channel_with_tls(url, timeout, &GrpcTls::default())
}

/// [`connect_channel`] with the service's TLS settings: an `https://` peer's certificate
/// must be issued for the URL's host by `GRPC_TLS_CA_FILE` (the system's roots when
/// unset). With a CA configured, an `http://` peer URL is refused: it would send the call
/// unencrypted although the deployment asked for TLS.
pub fn connect_channel_with_tls(
    url: &str,
    timeout: Duration,
    tls: &GrpcTls,
) -> Result<Channel, Error> {
    let mut endpoint = Endpoint::from_shared(url.to_owned())?
        .connect_timeout(timeout)
        .timeout(timeout);
    match endpoint.uri().scheme_str() {
        Some("https") => {
            endpoint = endpoint
                .tls_config(tls.client_config()?)
                .map_err(|e| Error::Other(format!("TLS for {url}: {e}")))?;
        }
        _ if tls.ca_file.is_some() => {
            return Err(ConfigError::invalid(
                "GRPC_TLS_CA_FILE",
                &tls.ca_file.as_deref().unwrap_or(Path::new("")).display().to_string(),
                format!("is set, but the peer URL {url} is not https://: calls to it would not be encrypted"),
            )
            .into());
        }
        _ => {}
    }
    Ok(endpoint.connect_lazy())
}

/// TLS between services. A server with a certificate and key (`GRPC_TLS_CERT_FILE`,
/// `GRPC_TLS_KEY_FILE`, PEM) serves TLS only; a client checks an `https://` peer's
/// certificate against `GRPC_TLS_CA_FILE` (PEM; the system's roots when unset) and the
/// peer URL's host name. Files are checked when the configuration is read and loaded when
/// serving or connecting. No client certificates: callers prove who they are with the
/// signed identity assertion of `crate::identity`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GrpcTls {
    /// The server's certificate chain and private key.
    pub server_identity: Option<(PathBuf, PathBuf)>,
    /// The CA that peers' certificates must chain to.
    pub ca_file: Option<PathBuf>,
}

impl GrpcTls {
    /// Reads `GRPC_TLS_CERT_FILE`, `GRPC_TLS_KEY_FILE` (both or neither) and
    /// `GRPC_TLS_CA_FILE` through `lookup`; a certificate and key that do not make a TLS
    /// server (unreadable, not PEM, key not matching) are refused now.
    pub fn from_lookup(lookup: &impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let cert = env_file_from(lookup, "GRPC_TLS_CERT_FILE")?;
        let key = env_file_from(lookup, "GRPC_TLS_KEY_FILE")?;
        let server_identity = match (cert, key) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            (Some(_), None) => {
                return Err(ConfigError::Missing {
                    name: "GRPC_TLS_KEY_FILE".into(),
                });
            }
            (None, Some(_)) => {
                return Err(ConfigError::Missing {
                    name: "GRPC_TLS_CERT_FILE".into(),
                });
            }
        };
        let tls = Self {
            server_identity,
            ..Self::client_from_lookup(lookup)?
        };
        if let Some((cert, _)) = &tls.server_identity {
            let config = tls.server_config().map_err(|e| {
                ConfigError::invalid("GRPC_TLS_CERT_FILE", &cert.display().to_string(), e)
            })?;
            if let Some(config) = config {
                Server::builder().tls_config(config).map_err(|e| {
                    ConfigError::invalid(
                        "GRPC_TLS_CERT_FILE",
                        &cert.display().to_string(),
                        format!("with GRPC_TLS_KEY_FILE it is no usable TLS identity: {e:?}"),
                    )
                })?;
            }
        }
        Ok(tls)
    }

    /// Only the client side, `GRPC_TLS_CA_FILE` (the gateway serves no gRPC); a file
    /// that holds no usable CA certificate is refused now.
    pub fn client_from_lookup(
        lookup: &impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        Ok(Self {
            server_identity: None,
            ca_file: env_ca_file_from(lookup, "GRPC_TLS_CA_FILE")?,
        })
    }

    /// Whether the server serves TLS.
    pub fn serves_tls(&self) -> bool {
        self.server_identity.is_some()
    }

    /// The server's TLS settings, `None` when it serves plain HTTP/2.
    pub fn server_config(&self) -> Result<Option<ServerTlsConfig>, Error> {
        let Some((cert, key)) = &self.server_identity else {
            return Ok(None);
        };
        let identity = Identity::from_pem(read_pem(cert)?, read_pem(key)?);
        Ok(Some(ServerTlsConfig::new().identity(identity)))
    }

    /// The client's TLS settings for an `https://` peer.
    pub fn client_config(&self) -> Result<ClientTlsConfig, Error> {
        Ok(match &self.ca_file {
            Some(ca) => ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read_pem(ca)?)),
            None => ClientTlsConfig::new().with_native_roots(),
        })
    }
}

fn read_pem(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|e| Error::Other(format!("cannot read {}: {e}", path.display())))
}

tokio::task_local! {
    /// When the RPC being served must be answered; set by [`DeadlineLayer`].
    static CALL_DEADLINE: tokio::time::Instant;
}

/// Time left before the deadline of the RPC this task is serving (`None` outside one, or
/// in a task spawned from it).
pub fn time_left() -> Option<Duration> {
    CALL_DEADLINE
        .try_with(|deadline| deadline.saturating_duration_since(tokio::time::Instant::now()))
        .ok()
}

/// The timeout for a call to a peer made while serving an RPC: the peer call's own limit
/// (`own`), or less when the caller's deadline comes sooner, so the caller's deadline
/// travels down the call chain (as `grpc-timeout` when set with
/// `tonic::Request::set_timeout`) and no peer works on a call nobody waits for.
pub fn outbound_timeout(own: Duration) -> Duration {
    time_left().map_or(own, |left| left.min(own))
}

/// A request to a peer carrying the deadline [`outbound_timeout`] gives for `own` (sent as
/// `grpc-timeout`), and that deadline, for the caller's own timer around the call. Made
/// while serving an RPC, it also carries a fresh identity assertion for the same caller,
/// the request id and the trace parent ([`forward_call_context`]).
pub fn peer_request<T>(message: T, own: Duration) -> (tonic::Request<T>, Duration) {
    let timeout = outbound_timeout(own);
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    forward_call_context(&mut request);
    (request, timeout)
}

/// How a failed call to a peer service looks to the service that made it — one mapping
/// for every service, so the same peer failure is never "unavailable" in one place and
/// "internal" in another.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerError {
    /// The peer says what was asked for does not exist.
    #[error("{peer}: {message}")]
    NotFound {
        /// The peer's name.
        peer: &'static str,
        /// The peer's message.
        message: String,
    },
    /// The peer is down, overloaded or too slow: the caller's own client may retry later
    /// (report `UNAVAILABLE`).
    #[error("the {peer} service is unavailable: {message}")]
    Unavailable {
        /// The peer's name.
        peer: &'static str,
        /// Why.
        message: String,
    },
    /// Any other answer is a bug or a misconfiguration on this side (a request the peer
    /// finds invalid, a refused identity assertion), never the end user's fault (report
    /// `INTERNAL` and log it).
    #[error("the {peer} service answered {code:?}: {message}")]
    Failed {
        /// The peer's name.
        peer: &'static str,
        /// The peer's status code.
        code: tonic::Code,
        /// The peer's message.
        message: String,
    },
}

impl PeerError {
    /// Classifies a peer's error status.
    pub fn from_status(peer: &'static str, status: &tonic::Status) -> Self {
        let message = status.message().to_owned();
        match status.code() {
            tonic::Code::NotFound => Self::NotFound { peer, message },
            tonic::Code::Unavailable
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Cancelled
            | tonic::Code::ResourceExhausted => Self::Unavailable { peer, message },
            code => Self::Failed {
                peer,
                code,
                message,
            },
        }
    }
}

/// Awaits `call` to the peer `peer` for at most `timeout` (the one [`peer_request`] gave)
/// and classifies a failure with [`PeerError::from_status`]; no answer in time is
/// [`PeerError::Unavailable`].
pub async fn call_peer<T>(
    peer: &'static str,
    timeout: Duration,
    call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, PeerError> {
    match tokio::time::timeout(timeout, call).await {
        Err(_) => Err(PeerError::Unavailable {
            peer,
            message: format!("no answer within {timeout:?}"),
        }),
        Ok(Ok(response)) => Ok(response.into_inner()),
        Ok(Err(status)) => Err(PeerError::from_status(peer, &status)),
    }
}

/// Metadata key of the request id (set by the gateway, forwarded by every service).
pub const REQUEST_ID_METADATA: &str = "x-request-id";
/// Metadata key of the W3C trace context, forwarded unchanged.
pub const TRACEPARENT_METADATA: &str = "traceparent";

/// What a served call knows about itself, for its log lines and its peer calls.
#[derive(Clone)]
struct CallContext {
    caller: Option<Caller>,
    request_id: String,
    traceparent: Option<String>,
    key: Option<Arc<InternalKey>>,
}

tokio::task_local! {
    /// The context of the RPC being served; set by [`CallContextLayer`].
    static CALL_CONTEXT: CallContext;
}

/// The verified caller of the RPC this task is serving (`None` outside one, in a task
/// spawned from it, or for the health service).
pub fn current_caller() -> Option<Caller> {
    CALL_CONTEXT
        .try_with(|context| context.caller.clone())
        .ok()
        .flatten()
}

/// The request id of the RPC this task is serving (the caller's `x-request-id`, or one
/// made up when it sent none).
pub fn current_request_id() -> Option<String> {
    CALL_CONTEXT
        .try_with(|context| context.request_id.clone())
        .ok()
}

/// Adds to an outgoing request what the RPC being served passes down: an identity
/// assertion for its caller (signed with this server's key), its request id and trace
/// parent. Outside an RPC it adds nothing, so such a call is refused by the peer.
pub fn forward_call_context<T>(request: &mut tonic::Request<T>) {
    let _ = CALL_CONTEXT.try_with(|context| {
        if let (Some(caller), Some(key)) = (&context.caller, &context.key) {
            identity::attach(request, key, caller);
        }
        let metadata = request.metadata_mut();
        if let Ok(value) = context.request_id.parse() {
            metadata.insert(REQUEST_ID_METADATA, value);
        }
        if let Some(value) = context.traceparent.as_deref().and_then(|v| v.parse().ok()) {
            metadata.insert(TRACEPARENT_METADATA, value);
        }
    });
}

/// Establishes each call's context before a handler runs: verifies the identity
/// assertion (`crate::identity`) of every call except the gRPC health service and
/// reflection, answering UNAUTHENTICATED when it is missing, forged or expired; puts the
/// verified [`Caller`] in the request extensions; and runs the call inside a tracing span
/// with its request id (the caller's `x-request-id`, else a new one), with the context
/// available to [`peer_request`] so it travels down the call chain.
#[derive(Clone)]
pub struct CallContextLayer {
    key: Option<Arc<InternalKey>>,
}

impl CallContextLayer {
    /// Verifies with `key`; without one, every call that needs a caller is refused.
    pub fn new(key: Option<InternalKey>) -> Self {
        Self {
            key: key.map(Arc::new),
        }
    }
}

impl<S> tower::Layer<S> for CallContextLayer {
    type Service = CallContextService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CallContextService {
            inner,
            key: self.key.clone(),
        }
    }
}

/// The service produced by [`CallContextLayer`].
#[derive(Clone)]
pub struct CallContextService<S> {
    inner: S,
    key: Option<Arc<InternalKey>>,
}

/// Calls that need no caller: probes must work without the key, and reflection is an
/// opt-in debugging aid that reveals only the (public) protos.
fn needs_no_caller(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.Health/") || path.starts_with("/grpc.reflection.")
}

/// A request id worth keeping: 1..=128 visible ASCII characters (it is logged verbatim).
/// The gateway applies the same rule to a client's `x-request-id`.
pub fn valid_request_id(value: &str) -> bool {
    (1..=128).contains(&value.len()) && value.bytes().all(|b| b.is_ascii_graphic())
}

/// `version-traceid-parentid-flags` of the W3C trace context, lower-case hex.
pub fn valid_traceparent(value: &str) -> bool {
    let parts: Vec<&str> = value.split('-').collect();
    let hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    parts.len() == 4
        && hex(parts[0], 2)
        && parts[0] != "ff"
        && hex(parts[1], 32)
        && hex(parts[2], 16)
        && hex(parts[3], 2)
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for CallContextService<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Default,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        use tracing::Instrument;

        let header = |name: &str| {
            request
                .headers()
                .get(name)
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned)
        };
        let request_id = header(REQUEST_ID_METADATA)
            .filter(|id| valid_request_id(id))
            .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
        let traceparent = header(TRACEPARENT_METADATA).filter(|t| valid_traceparent(t));
        let method = request.uri().path().to_owned();
        let span = tracing::info_span!("rpc", %request_id, %method, caller = tracing::field::Empty);

        let caller = if needs_no_caller(&method) {
            None
        } else {
            let verified = match (&self.key, header(IDENTITY_METADATA)) {
                (None, _) => Err("this server has no internal key to verify callers".to_owned()),
                (Some(_), None) => Err(identity::IdentityError::Missing.to_string()),
                (Some(key), Some(assertion)) => key.verify(&assertion).map_err(|e| e.to_string()),
            };
            match verified {
                Ok(caller) => Some(caller),
                Err(reason) => {
                    span.in_scope(|| tracing::info!(%reason, "call refused: unauthenticated"));
                    // Built inside the future, which then holds only the reason.
                    return Box::pin(async move {
                        Ok(tonic::Status::unauthenticated(reason).into_http())
                    });
                }
            }
        };
        if let Some(caller) = &caller {
            span.record("caller", tracing::field::display(caller));
            request.extensions_mut().insert(caller.clone());
        }
        let context = CallContext {
            caller,
            request_id,
            traceparent,
            key: self.key.clone(),
        };
        let response = self.inner.call(request);
        Box::pin(CALL_CONTEXT.scope(context, response.instrument(span)))
    }
}

/// Ends a call that has not produced its response by its deadline with
/// `DEADLINE_EXCEEDED`, as the gRPC spec asks of a server: the deadline is the client's
/// `grpc-timeout` or the server's request timeout, whichever is shorter. (tonic's own
/// `Server::timeout` answers `CANCELLED`, which callers and the gateway would read as the
/// client giving up.) Like tonic's, it bounds the response head, not a stream's body.
/// While the call runs, [`time_left`] and [`outbound_timeout`] see its deadline.
#[derive(Debug, Clone, Copy)]
pub struct DeadlineLayer {
    max: Duration,
}

impl DeadlineLayer {
    /// Deadlines of at most `max`.
    pub fn new(max: Duration) -> Self {
        Self { max }
    }
}

impl<S> tower::Layer<S> for DeadlineLayer {
    type Service = DeadlineService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        DeadlineService {
            inner,
            max: self.max,
        }
    }
}

/// The service produced by [`DeadlineLayer`].
#[derive(Debug, Clone)]
pub struct DeadlineService<S> {
    inner: S,
    max: Duration,
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for DeadlineService<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Default,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let deadline = grpc_timeout(request.headers()).map_or(self.max, |t| t.min(self.max));
        let deadline_at = tokio::time::Instant::now() + deadline;
        let response = self.inner.call(request);
        Box::pin(CALL_DEADLINE.scope(deadline_at, async move {
            match tokio::time::timeout_at(deadline_at, response).await {
                Ok(result) => result,
                Err(_) => Ok(tonic::Status::deadline_exceeded(format!(
                    "deadline of {deadline:?} exceeded"
                ))
                .into_http()),
            }
        }))
    }
}

/// Bounds the calls a server runs at once: a call beyond the bound is answered
/// `RESOURCE_EXHAUSTED` at once, so an overloaded service tells its callers to back off
/// instead of queueing without limit until every call times out. Health checks are never
/// shed: a busy server is still alive, and its probes must say so.
#[derive(Debug, Clone)]
pub struct ShedLayer {
    permits: Arc<tokio::sync::Semaphore>,
    limit: usize,
}

impl ShedLayer {
    /// At most `limit` calls at once.
    pub fn new(limit: usize) -> Self {
        Self {
            permits: Arc::new(tokio::sync::Semaphore::new(limit)),
            limit,
        }
    }
}

impl<S> tower::Layer<S> for ShedLayer {
    type Service = ShedService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ShedService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service produced by [`ShedLayer`].
#[derive(Debug, Clone)]
pub struct ShedService<S> {
    inner: S,
    layer: ShedLayer,
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for ShedService<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Default,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let permit = if request.uri().path().starts_with("/grpc.health.v1.Health/") {
            None
        } else {
            match Arc::clone(&self.layer.permits).try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    let status = tonic::Status::resource_exhausted(format!(
                        "the server is running its limit of {} calls; retry later",
                        self.layer.limit
                    ));
                    return Box::pin(async move { Ok(status.into_http()) });
                }
            }
        };
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await;
            drop(permit);
            response
        })
    }
}

/// The client's `grpc-timeout` header: at most 8 digits and a unit (`H`, `M`, `S`, `m`,
/// `u`, `n`). `None` when absent or malformed (the server's own deadline then applies).
pub fn grpc_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn peer_failures_are_classified_one_way() {
        use tonic::Code;
        for (code, expected) in [
            (Code::NotFound, "not found"),
            (Code::Unavailable, "unavailable"),
            (Code::DeadlineExceeded, "unavailable"),
            (Code::Cancelled, "unavailable"),
            (Code::ResourceExhausted, "unavailable"),
            (Code::InvalidArgument, "failed"),
            (Code::PermissionDenied, "failed"),
            (Code::Unauthenticated, "failed"),
            (Code::Internal, "failed"),
            (Code::Unknown, "failed"),
        ] {
            let kind = match super::PeerError::from_status("users", &tonic::Status::new(code, "x"))
            {
                super::PeerError::NotFound { .. } => "not found",
                super::PeerError::Unavailable { .. } => "unavailable",
                super::PeerError::Failed { .. } => "failed",
            };
            assert_eq!(kind, expected, "{code:?}");
        }
    }

    use super::*;

    #[test]
    fn grpc_timeout_headers_are_parsed_and_malformed_ones_ignored() {
        let parse = |value: &str| {
            let mut headers = http::HeaderMap::new();
            headers.insert("grpc-timeout", value.parse().unwrap());
            grpc_timeout(&headers)
        };
        assert_eq!(parse("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse("10S"), Some(Duration::from_secs(10)));
        assert_eq!(parse("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse("99999999u"), Some(Duration::from_micros(99_999_999)));
        assert_eq!(parse("5n"), Some(Duration::from_nanos(5)));
        for bad in ["", "m", "123456789m", "10", "10x", "-1S", "1.5S"] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
        assert_eq!(grpc_timeout(&http::HeaderMap::new()), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_handler_sees_the_time_left_and_bounds_its_peer_calls_by_it() {
        use tower::{Layer, ServiceExt};
        assert_eq!(time_left(), None, "outside an RPC");
        assert_eq!(
            outbound_timeout(Duration::from_secs(2)),
            Duration::from_secs(2)
        );
        let handler = tower::service_fn(|_request: http::Request<()>| async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let seen = (time_left(), outbound_timeout(Duration::from_secs(2)));
            Ok::<_, Infallible>(http::Response::new(format!("{seen:?}")))
        });
        let request = http::Request::builder()
            .header("grpc-timeout", "1S")
            .body(())
            .unwrap();
        let response = DeadlineLayer::new(Duration::from_secs(30))
            .layer(handler)
            .oneshot(request)
            .await
            .unwrap();
        let left = Duration::from_millis(700);
        assert_eq!(response.body(), &format!("{:?}", (Some(left), left)));
    }

    /// A handler that answers after `delay` with an OK (grpc-status 0) response.
    fn slow_handler(
        delay: Duration,
    ) -> impl tower::Service<
        http::Request<()>,
        Response = http::Response<String>,
        Error = Infallible,
        Future = impl Future<Output = Result<http::Response<String>, Infallible>> + Send,
    > + Clone {
        tower::service_fn(move |_request: http::Request<()>| async move {
            tokio::time::sleep(delay).await;
            let mut response = http::Response::new(String::new());
            response
                .headers_mut()
                .insert("grpc-status", "0".parse().unwrap());
            Ok::<_, Infallible>(response)
        })
    }

    fn grpc_status(response: &http::Response<String>) -> &str {
        response.headers()["grpc-status"].to_str().unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn the_shorter_of_the_client_and_server_deadlines_ends_a_call_with_deadline_exceeded() {
        use tower::{Layer, ServiceExt};
        let layer = DeadlineLayer::new(Duration::from_secs(30));
        let handler = slow_handler(Duration::from_secs(10));
        let with_client_deadline = |value: &str| {
            http::Request::builder()
                .header("grpc-timeout", value)
                .body(())
                .unwrap()
        };

        // The client allows 1 s of the server's 30: DEADLINE_EXCEEDED (code 4) at 1 s.
        let started = tokio::time::Instant::now();
        let response = layer
            .layer(handler.clone())
            .oneshot(with_client_deadline("1S"))
            .await
            .unwrap();
        assert_eq!(grpc_status(&response), "4");
        assert_eq!(started.elapsed(), Duration::from_secs(1));

        // A client allowing more than the handler needs gets its answer.
        let response = layer
            .layer(handler.clone())
            .oneshot(with_client_deadline("20S"))
            .await
            .unwrap();
        assert_eq!(grpc_status(&response), "0");

        // The server's own limit applies when the client's is longer.
        let started = tokio::time::Instant::now();
        let response = DeadlineLayer::new(Duration::from_secs(2))
            .layer(handler)
            .oneshot(with_client_deadline("1H"))
            .await
            .unwrap();
        assert_eq!(grpc_status(&response), "4");
        assert_eq!(started.elapsed(), Duration::from_secs(2));
    }
}
