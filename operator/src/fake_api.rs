//! An in-process stand-in for the API server, for the benchmark and for cases a real server
//! cannot produce (server errors). It answers server-side apply and create by echoing the
//! object back with a resourceVersion, lists with an empty list, and counts requests.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use http::{Method, Request, Response, StatusCode};
use kube::Client;
use kube::client::Body;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FakeBehaviour {
    /// Accept everything.
    Healthy,
    /// Answer every write with 500, as an overloaded or failing API server would.
    FailWrites,
}

/// Requests the fake received, by kind of request.
#[derive(Debug, Default)]
pub struct FakeApiStats {
    pub patches: AtomicUsize,
    pub creates: AtomicUsize,
    pub lists: AtomicUsize,
    pub other: AtomicUsize,
    /// The `status` of the last status write, as sent.
    pub last_status: Mutex<Option<serde_json::Value>>,
}

impl FakeApiStats {
    pub fn total(&self) -> usize {
        self.patches.load(Ordering::Relaxed)
            + self.creates.load(Ordering::Relaxed)
            + self.lists.load(Ordering::Relaxed)
            + self.other.load(Ordering::Relaxed)
    }
}

/// A client whose requests go to the fake instead of the network.
pub fn fake_client(behaviour: FakeBehaviour) -> (Client, Arc<FakeApiStats>) {
    let stats = Arc::new(FakeApiStats::default());
    let counter = stats.clone();
    let service = tower::service_fn(move |request: Request<Body>| {
        let stats = counter.clone();
        async move { Ok::<_, std::convert::Infallible>(answer(request, behaviour, &stats).await) }
    });
    (Client::new(service, "default"), stats)
}

fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(Body::from(serde_json::to_vec(body).unwrap_or_default()))
        .unwrap_or_else(|_| Response::new(Body::empty()))
}

async fn answer(
    request: Request<Body>,
    behaviour: FakeBehaviour,
    stats: &FakeApiStats,
) -> Response<Body> {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let body = request
        .into_body()
        .collect_bytes()
        .await
        .unwrap_or_default();
    let is_write = method == Method::PATCH || method == Method::POST || method == Method::PUT;
    if is_write && behaviour == FakeBehaviour::FailWrites {
        stats.other.fetch_add(1, Ordering::Relaxed);
        let status = serde_json::json!({
            "kind": "Status", "apiVersion": "v1", "status": "Failure",
            "message": "etcdserver: request timed out", "reason": "InternalError", "code": 500
        });
        return json_response(StatusCode::INTERNAL_SERVER_ERROR, &status);
    }
    match method {
        Method::PATCH | Method::POST | Method::PUT => {
            let counter = if method == Method::POST {
                &stats.creates
            } else {
                &stats.patches
            };
            counter.fetch_add(1, Ordering::Relaxed);
            let mut object: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            if let Some(name) = path
                .strip_suffix("/status")
                .and_then(|p| p.rsplit('/').next())
            {
                *stats.last_status.lock().unwrap_or_else(|e| e.into_inner()) =
                    object.get("status").cloned();
                // A status apply carries no metadata or spec; answer with a whole object.
                object["metadata"] = serde_json::json!({"name": name});
                object["spec"] = serde_json::json!({"version": "0.0.0"});
            }
            if let Some(meta) = object.get_mut("metadata").and_then(|m| m.as_object_mut()) {
                meta.insert("resourceVersion".into(), "1".into());
                meta.entry("uid").or_insert_with(|| "fake-uid".into());
                meta.entry("generation").or_insert_with(|| 1.into());
            }
            json_response(StatusCode::OK, &object)
        }
        // `.../namespaces/<ns>/<plural>/<name>`: a read of one object the fake never holds.
        Method::GET
            if path
                .split("/namespaces/")
                .nth(1)
                .is_some_and(|rest| rest.split('/').count() >= 3) =>
        {
            stats.other.fetch_add(1, Ordering::Relaxed);
            let status = serde_json::json!({
                "kind": "Status", "apiVersion": "v1", "status": "Failure",
                "message": "not found", "reason": "NotFound", "code": 404
            });
            json_response(StatusCode::NOT_FOUND, &status)
        }
        Method::GET => {
            stats.lists.fetch_add(1, Ordering::Relaxed);
            let list = serde_json::json!({"kind": "List", "apiVersion": "v1", "metadata": {"resourceVersion": "1"}, "items": []});
            json_response(StatusCode::OK, &list)
        }
        _ => {
            stats.other.fetch_add(1, Ordering::Relaxed);
            json_response(
                StatusCode::OK,
                &serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
            )
        }
    }
}
