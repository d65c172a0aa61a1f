//! Reads the candidate gateways' `/metrics` for canary analysis: lists the slot's gateway
//! pods and asks each Ready one directly (plain HTTP/1.0 on the admin port, with a timeout),
//! summing what answers. The per-slot NetworkPolicy admits the operator's pods to the
//! admin ports for this.

use std::net::SocketAddr;
use std::time::Duration;

use futures::future::{BoxFuture, join_all};
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::{Api, Client};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::analysis::{MetricsSample, parse};
use crate::builders::selector_labels;
use crate::component::Component;
use crate::crd::{MessengerApp, Slot};

/// Where analysis gets the candidate gateways' counters from.
pub trait GatewayScraper: Send + Sync {
    /// The summed counters of `slot`'s gateway pods, or `None` when none answered.
    fn scrape<'a>(
        &'a self,
        client: &'a Client,
        namespace: &'a str,
        app: &'a MessengerApp,
        slot: Slot,
    ) -> BoxFuture<'a, Option<MetricsSample>>;
}

/// Scrapes the pods themselves.
pub struct PodScraper {
    /// The admin port (9080 in a cluster; tests point it at their own endpoint).
    pub port: u16,
    pub timeout: Duration,
}

impl Default for PodScraper {
    fn default() -> Self {
        PodScraper {
            port: u16::try_from(Component::Gateway.admin_port()).unwrap_or(9080),
            timeout: Duration::from_secs(5),
        }
    }
}

fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Body of `GET /metrics`, or `None` on any failure.
async fn get_metrics(addr: SocketAddr) -> Option<String> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: gateway\r\nAccept: text/plain\r\n\r\n")
        .await
        .ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.ok()?;
    let text = String::from_utf8(response).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    head.split_whitespace()
        .nth(1)
        .filter(|code| *code == "200")
        .map(|_| body.to_owned())
}

impl GatewayScraper for PodScraper {
    fn scrape<'a>(
        &'a self,
        client: &'a Client,
        namespace: &'a str,
        app: &'a MessengerApp,
        slot: Slot,
    ) -> BoxFuture<'a, Option<MetricsSample>> {
        Box::pin(async move {
            let selector: Vec<String> = selector_labels(app, Component::Gateway, slot)
                .into_iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
            let list = pods
                .list(&ListParams::default().labels(&selector.join(",")))
                .await
                .ok()?;
            let addresses: Vec<SocketAddr> = list
                .items
                .iter()
                .filter(|p| pod_ready(p))
                .filter_map(|p| p.status.as_ref()?.pod_ip.as_ref()?.parse().ok())
                .map(|ip| SocketAddr::new(ip, self.port))
                .collect();
            let bodies = join_all(
                addresses
                    .into_iter()
                    .map(|addr| tokio::time::timeout(self.timeout, get_metrics(addr))),
            )
            .await;
            let mut total: Option<MetricsSample> = None;
            for body in bodies.into_iter().flatten().flatten() {
                total
                    .get_or_insert_with(MetricsSample::default)
                    .merge(&parse(&body));
            }
            total
        })
    }
}
