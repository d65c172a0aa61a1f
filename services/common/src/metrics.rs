//! Prometheus metrics: [`Metrics`], the process-wide registry (services register their
//! own metrics in it) rendered as text by `/metrics`; [`GrpcMetricsLayer`], the tower
//! layer that counts every RPC by method and gRPC code and times it; and
//! [`HttpMetricsLayer`], the same for an axum REST API (by route template and status).

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Instant;

use futures::future::BoxFuture;
use http_body::{Body, Frame, SizeHint};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Metric, Registry};

/// Labels of the RPC request counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RpcLabels {
    method: String,
    code: String,
}

/// Labels of the RPC latency histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: String,
}

/// Labels of the HTTP request counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    method: String,
    route: String,
    status: u16,
}

/// Labels of the HTTP latency histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: String,
    route: String,
}

/// Labels of the event counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EventLabels {
    topic: String,
    outcome: String,
}

fn latency_histogram() -> Histogram {
    // 1 ms .. ~33 s
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

struct MetricsInner {
    registry: Mutex<Registry>,
    rpc_requests: Family<RpcLabels, Counter>,
    rpc_latency: Family<MethodLabels, Histogram, fn() -> Histogram>,
    http_requests: Family<HttpLabels, Counter>,
    http_latency: Family<RouteLabels, Histogram, fn() -> Histogram>,
    events_published: Family<EventLabels, Counter>,
    events_consumed: Family<EventLabels, Counter>,
    outbox_pending: Gauge,
}

/// The metrics registry of one process. Cheap to clone; all clones share the registry.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<MetricsInner>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Name of the RPC request counter (exposed with the `_total` suffix).
pub const RPC_REQUESTS: &str = "grpc_server_handled";
/// Name of the RPC latency histogram (seconds).
pub const RPC_LATENCY: &str = "grpc_server_handling_seconds";
/// Name of the HTTP request counter (exposed with the `_total` suffix).
pub const HTTP_REQUESTS: &str = "http_server_requests";
/// Name of the HTTP latency histogram (seconds).
pub const HTTP_LATENCY: &str = "http_server_request_duration_seconds";

impl Metrics {
    /// A registry holding the RPC and event metrics.
    pub fn new() -> Self {
        let rpc_requests = Family::<RpcLabels, Counter>::default();
        let rpc_latency =
            Family::<MethodLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram,
            );
        let http_requests = Family::<HttpLabels, Counter>::default();
        let http_latency =
            Family::<RouteLabels, Histogram, fn() -> Histogram>::new_with_constructor(
                latency_histogram,
            );
        let events_published = Family::<EventLabels, Counter>::default();
        let events_consumed = Family::<EventLabels, Counter>::default();
        let outbox_pending = Gauge::default();
        let mut registry = Registry::default();
        registry.register(
            RPC_REQUESTS,
            "gRPC requests completed, by method and gRPC status code",
            rpc_requests.clone(),
        );
        registry.register(
            RPC_LATENCY,
            "Time from receiving a gRPC request to its final status, in seconds",
            rpc_latency.clone(),
        );
        registry.register(
            HTTP_REQUESTS,
            "HTTP requests answered, by method, route template and status code",
            http_requests.clone(),
        );
        registry.register(
            HTTP_LATENCY,
            "Time from receiving an HTTP request to its response head, in seconds",
            http_latency.clone(),
        );
        registry.register(
            "events_published",
            "Events handed to the event bus, by topic and outcome (ok|error)",
            events_published.clone(),
        );
        registry.register(
            "events_consumed",
            "Events taken from the event bus, by topic and outcome (ok|retry|rejected)",
            events_consumed.clone(),
        );
        registry.register(
            "outbox_pending_events",
            "Events in the transactional outbox not yet published (grows while Kafka is down)",
            outbox_pending.clone(),
        );
        Self {
            inner: Arc::new(MetricsInner {
                registry: Mutex::new(registry),
                rpc_requests,
                rpc_latency,
                http_requests,
                http_latency,
                events_published,
                events_consumed,
                outbox_pending,
            }),
        }
    }

    /// Registers a service's own metric (e.g. a `Counter` or `Family`); keep a clone of
    /// it to update.
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        self.lock_registry().register(name, help, metric);
    }

    /// The Prometheus text exposition of every registered metric.
    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.lock_registry());
        text
    }

    /// The tower layer recording RPC counts and latencies into this registry.
    pub fn grpc_layer(&self) -> GrpcMetricsLayer {
        GrpcMetricsLayer {
            metrics: self.clone(),
        }
    }

    /// Records one completed RPC.
    pub fn record_rpc(&self, method: &str, code: tonic::Code, seconds: f64) {
        // Unknown paths are attacker-chosen: collapse them so they cannot blow up the label set.
        let method = if code == tonic::Code::Unimplemented {
            "unimplemented"
        } else {
            method
        };
        self.inner
            .rpc_requests
            .get_or_create(&RpcLabels {
                method: method.to_owned(),
                code: code_label(code).to_owned(),
            })
            .inc();
        self.inner
            .rpc_latency
            .get_or_create(&MethodLabels {
                method: method.to_owned(),
            })
            .observe(seconds);
    }

    /// The tower layer recording HTTP request counts and latencies; add it to an axum
    /// `Router` with `.layer(...)` so the route template (`/v1/users/{id}`) is known.
    pub fn http_layer(&self) -> HttpMetricsLayer {
        HttpMetricsLayer {
            metrics: self.clone(),
        }
    }

    /// Records one answered HTTP request. `route` is the route template, never the raw
    /// path (ids in paths would explode the label set).
    pub fn record_http(&self, method: &str, route: &str, status: u16, seconds: f64) {
        self.inner
            .http_requests
            .get_or_create(&HttpLabels {
                method: method.to_owned(),
                route: route.to_owned(),
                status,
            })
            .inc();
        self.inner
            .http_latency
            .get_or_create(&RouteLabels {
                method: method.to_owned(),
                route: route.to_owned(),
            })
            .observe(seconds);
    }

    /// Records an event publish attempt (`outcome`: `ok` or `error`).
    pub fn record_published(&self, topic: &str, outcome: &str) {
        self.inner
            .events_published
            .get_or_create(&EventLabels {
                topic: topic.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// Records a consumed event (`outcome`: `ok`, `retry` or `rejected`).
    pub fn record_consumed(&self, topic: &str, outcome: &str) {
        self.inner
            .events_consumed
            .get_or_create(&EventLabels {
                topic: topic.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// Sets the number of outbox events waiting to be published.
    pub fn set_outbox_pending(&self, pending: i64) {
        self.inner.outbox_pending.set(pending);
    }

    fn lock_registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        // A panic while holding the lock leaves the registry usable: recover it.
        self.inner
            .registry
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The label value of a gRPC code, as grpc-go and most dashboards spell it.
fn code_label(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

fn grpc_status(headers: &http::HeaderMap) -> Option<tonic::Code> {
    headers
        .get("grpc-status")
        .map(|value| tonic::Code::from_bytes(value.as_bytes()))
}

/// Tower layer counting and timing gRPC calls; see [`Metrics::grpc_layer`].
#[derive(Clone, Debug)]
pub struct GrpcMetricsLayer {
    metrics: Metrics,
}

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetricsService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// The service produced by [`GrpcMetricsLayer`].
#[derive(Clone, Debug)]
pub struct GrpcMetricsService<S> {
    inner: S,
    metrics: Metrics,
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for GrpcMetricsService<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: 'static,
    ResBody: 'static,
{
    type Response = http::Response<MetricsBody<ResBody>>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let mut recorder = CallRecorder {
            metrics: self.metrics.clone(),
            method: request.uri().path().to_owned(),
            started: Instant::now(),
            finished: false,
        };
        let response = self.inner.call(request);
        Box::pin(async move {
            match response.await {
                Ok(response) => {
                    // Errors usually come "trailers-only": the status is in the headers.
                    if let Some(code) = grpc_status(response.headers()) {
                        recorder.finish(code);
                    }
                    let (parts, body) = response.into_parts();
                    Ok(http::Response::from_parts(
                        parts,
                        MetricsBody {
                            inner: body,
                            recorder,
                        },
                    ))
                }
                Err(error) => {
                    recorder.finish(tonic::Code::Unknown);
                    Err(error)
                }
            }
        })
    }
}

/// Records one RPC exactly once: when its status is seen, or as cancelled when the
/// response is dropped before that (the client went away).
struct CallRecorder {
    metrics: Metrics,
    method: String,
    started: Instant,
    finished: bool,
}

impl CallRecorder {
    fn finish(&mut self, code: tonic::Code) {
        if !self.finished {
            self.finished = true;
            tracing::debug!(method = %self.method, ?code, elapsed = ?self.started.elapsed(), "rpc finished");
            self.metrics
                .record_rpc(&self.method, code, self.started.elapsed().as_secs_f64());
        }
    }
}

impl Drop for CallRecorder {
    fn drop(&mut self) {
        self.finish(tonic::Code::Cancelled);
    }
}

pin_project_lite::pin_project! {
    /// Response body that records the RPC when its trailers (holding `grpc-status`) pass.
    pub struct MetricsBody<B> {
        #[pin]
        inner: B,
        recorder: CallRecorder,
    }
}

impl<B: Body> Body for MetricsBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                if let Some(trailers) = frame.trailers_ref() {
                    this.recorder
                        .finish(grpc_status(trailers).unwrap_or(tonic::Code::Ok));
                }
            }
            Some(Err(_)) => this.recorder.finish(tonic::Code::Unknown),
            // The stream ended without trailers: nothing said otherwise, so it succeeded.
            None => this.recorder.finish(tonic::Code::Ok),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Tower layer counting and timing HTTP requests; see [`Metrics::http_layer`].
#[derive(Clone, Debug)]
pub struct HttpMetricsLayer {
    metrics: Metrics,
}

impl<S> tower::Layer<S> for HttpMetricsLayer {
    type Service = HttpMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        HttpMetricsService {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// The service produced by [`HttpMetricsLayer`].
#[derive(Clone, Debug)]
pub struct HttpMetricsService<S> {
    inner: S,
    metrics: Metrics,
}

/// Route label of requests that matched no route.
pub const UNMATCHED_ROUTE: &str = "unmatched";

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for HttpMetricsService<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: 'static,
    ResBody: 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let method = request.method().as_str().to_owned();
        let route = request
            .extensions()
            .get::<axum::extract::MatchedPath>()
            .map_or(UNMATCHED_ROUTE, |path| path.as_str())
            .to_owned();
        let metrics = self.metrics.clone();
        let started = Instant::now();
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await;
            let status = match &response {
                Ok(response) => response.status().as_u16(),
                Err(_) => 500,
            };
            metrics.record_http(&method, &route, status, started.elapsed().as_secs_f64());
            response
        })
    }
}
