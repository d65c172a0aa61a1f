//! Canary analysis from Prometheus (`strategy.canary.prometheus`): three PromQL queries over
//! its HTTP API give the candidate slot's gateway requests, 5xx responses and latency
//! histogram of the last analysis interval (`increase` over the interval, so counter resets
//! are Prometheus's business), judged with the same thresholds as a scrape of the pods.

use std::time::Duration;

use crate::analysis::{Bucket, LATENCY_BUCKET_METRIC, MetricsSample, REQUESTS_METRIC};
use crate::crd::{PrometheusSpec, Slot};
use crate::error::{Error, Result};

/// The candidate gateway's series under the labels Prometheus's `kubernetes-pods` example
/// job copies from pod metadata.
pub const DEFAULT_SELECTOR: &str = r#"namespace="$namespace",app_kubernetes_io_instance="$app",app_kubernetes_io_component="gateway",messenger_dev_slot="$slot""#;

/// Label matchers for `slot` of `app` in `namespace`.
pub fn selector(spec: &PrometheusSpec, namespace: &str, app: &str, slot: Slot) -> String {
    spec.selector
        .as_deref()
        .unwrap_or(DEFAULT_SELECTOR)
        .replace("$namespace", namespace)
        .replace("$app", app)
        .replace("$slot", slot.as_str())
}

/// The queries: (requests, 5xx responses, latency buckets by `le`) over `window_seconds`.
pub fn queries(selector: &str, window_seconds: i64) -> [String; 3] {
    let window = format!("{}s", window_seconds.max(1));
    [
        format!("sum(increase({REQUESTS_METRIC}{{{selector}}}[{window}]))"),
        format!("sum(increase({REQUESTS_METRIC}{{{selector},status=~\"5..\"}}[{window}]))"),
        format!("sum by (le) (increase({LATENCY_BUCKET_METRIC}{{{selector}}}[{window}]))"),
    ]
}

/// The `(labels, value)` pairs of an instant-vector answer of `/api/v1/query`.
fn vector(answer: &serde_json::Value) -> Result<Vec<(&serde_json::Value, f64)>> {
    if answer["status"] != "success" {
        return Err(Error::Prometheus(format!(
            "query failed: {} {}",
            answer["errorType"].as_str().unwrap_or("unknown"),
            answer["error"].as_str().unwrap_or("")
        )));
    }
    if answer["data"]["resultType"] != "vector" {
        return Err(Error::Prometheus(format!(
            "expected an instant vector, got {}",
            answer["data"]["resultType"]
        )));
    }
    let result = answer["data"]["result"]
        .as_array()
        .map_or(&[][..], Vec::as_slice);
    result
        .iter()
        .map(|series| {
            let value = series["value"][1]
                .as_str()
                .and_then(|v| v.parse::<f64>().ok())
                .filter(|v| v.is_finite())
                .ok_or_else(|| Error::Prometheus(format!("not a sample value: {series}")))?;
            Ok((&series["metric"], value))
        })
        .collect()
}

/// One interval's sample from the three answers; no series (no traffic at all) counts zero.
pub fn window_sample(
    requests: &serde_json::Value,
    errors: &serde_json::Value,
    buckets: &serde_json::Value,
) -> Result<MetricsSample> {
    let sum = |answer| -> Result<f64> { Ok(vector(answer)?.iter().map(|(_, v)| v).sum()) };
    let mut by_le: Vec<Bucket> = vector(buckets)?
        .into_iter()
        .filter_map(|(labels, count)| {
            let le = match labels["le"].as_str()? {
                "+Inf" => f64::MAX,
                le => le.parse().ok()?,
            };
            Some(Bucket { le, count })
        })
        .collect();
    by_le.sort_by(|a, b| a.le.total_cmp(&b.le));
    Ok(MetricsSample {
        requests: sum(requests)?,
        errors: sum(errors)?,
        buckets: by_le,
    })
}

/// Asks Prometheus; one client for the operator's lifetime.
#[derive(Clone)]
pub struct PrometheusClient {
    http: reqwest::Client,
}

impl Default for PrometheusClient {
    fn default() -> Self {
        PrometheusClient::new(Duration::from_secs(10))
    }
}

impl PrometheusClient {
    pub fn new(timeout: Duration) -> Self {
        // reqwest reads the process's crypto provider and, in a workspace build (where
        // auth turns on its rustls without a provider), panics when none is installed.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .unwrap_or_default();
        PrometheusClient { http }
    }

    async fn query(&self, base: &str, query: &str) -> Result<serde_json::Value> {
        let mut url = url::Url::parse(&format!("{}/api/v1/query", base.trim_end_matches('/')))
            .map_err(|e| Error::Prometheus(format!("{base}: {e}")))?;
        url.query_pairs_mut().append_pair("query", query);
        let response = self
            .http
            .get(url.clone())
            .send()
            .await
            .map_err(|e| Error::Prometheus(format!("{url}: {e}")))?;
        // Prometheus answers bad queries with 400 and a JSON body that says why.
        response
            .json()
            .await
            .map_err(|e| Error::Prometheus(format!("{url}: not a Prometheus answer: {e}")))
    }

    /// The candidate gateways' requests, errors and latency over the last `window_seconds`.
    pub async fn window(
        &self,
        spec: &PrometheusSpec,
        namespace: &str,
        app: &str,
        slot: Slot,
        window_seconds: i64,
    ) -> Result<MetricsSample> {
        let [requests, errors, buckets] =
            queries(&selector(spec, namespace, app, slot), window_seconds);
        let (requests, errors, buckets) = futures::try_join!(
            self.query(&spec.url, &requests),
            self.query(&spec.url, &errors),
            self.query(&spec.url, &buckets)
        )?;
        window_sample(&requests, &errors, &buckets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::judge;
    use crate::crd::CanaryAnalysis;
    use crate::rollout::Verdict;

    fn answer(result: serde_json::Value) -> serde_json::Value {
        serde_json::json!({"status": "success", "data": {"resultType": "vector", "result": result}})
    }

    #[test]
    fn queries_select_the_candidate_slot_over_the_interval() {
        let spec = PrometheusSpec {
            url: "http://prometheus:9090".into(),
            selector: None,
        };
        let [requests, errors, buckets] =
            queries(&selector(&spec, "team", "chat", Slot::Green), 60);
        let matchers = r#"namespace="team",app_kubernetes_io_instance="chat",app_kubernetes_io_component="gateway",messenger_dev_slot="green""#;
        assert_eq!(
            requests,
            format!("sum(increase(http_server_requests_total{{{matchers}}}[60s]))")
        );
        assert_eq!(
            errors,
            format!("sum(increase(http_server_requests_total{{{matchers},status=~\"5..\"}}[60s]))")
        );
        assert_eq!(
            buckets,
            format!(
                "sum by (le) (increase(http_server_request_duration_seconds_bucket{{{matchers}}}[60s]))"
            )
        );
        let custom = PrometheusSpec {
            selector: Some(r#"job="gw",track="$slot",ns="$namespace""#.into()),
            ..spec
        };
        assert_eq!(
            selector(&custom, "team", "chat", Slot::Blue),
            r#"job="gw",track="blue",ns="team""#
        );
    }

    /// Answers in the shape Prometheus 2.x gives (`/api/v1/query`, instant vectors).
    #[test]
    fn answers_become_a_sample_judged_like_a_scrape() {
        let thresholds = CanaryAnalysis {
            max_error_rate: Some(0.05),
            max_p99_latency_ms: Some(500),
            min_requests: Some(20),
            ..CanaryAnalysis::default()
        };
        let buckets = answer(serde_json::json!([
            {"metric": {"le": "+Inf"}, "value": [1700000000.0, "200"]},
            {"metric": {"le": "0.1"}, "value": [1700000000.0, "199.5"]},
            {"metric": {"le": "1"}, "value": [1700000000.0, "200"]}
        ]));
        let cases = [
            ("healthy", "200", "2", Verdict::Successful),
            ("errors", "200", "30.5", Verdict::Failed),
            ("too little traffic", "10", "0", Verdict::Inconclusive),
        ];
        for (case, requests, errors, expected) in cases {
            let sample = window_sample(
                &answer(serde_json::json!([{"metric": {}, "value": [1700000000.0, requests]}])),
                &answer(serde_json::json!([{"metric": {}, "value": [1700000000.0, errors]}])),
                &buckets,
            )
            .unwrap();
            assert_eq!(
                judge(&MetricsSample::default(), &sample, &thresholds),
                expected,
                "{case}"
            );
        }
        let sample = window_sample(
            &answer(serde_json::json!([])),
            &answer(serde_json::json!([])),
            &answer(serde_json::json!([])),
        )
        .unwrap();
        assert_eq!(sample, MetricsSample::default(), "no series: no traffic");
        assert_eq!(
            judge(&MetricsSample::default(), &sample, &thresholds),
            Verdict::Inconclusive
        );
    }

    #[test]
    fn errors_from_prometheus_are_reported_not_read_as_numbers() {
        let bad = serde_json::json!({"status": "error", "errorType": "bad_data", "error": "parse error at char 5"});
        let ok = answer(serde_json::json!([]));
        let error = window_sample(&bad, &ok, &ok).unwrap_err().to_string();
        assert!(
            error.contains("bad_data") && error.contains("parse error"),
            "{error}"
        );
        let matrix = serde_json::json!({"status": "success", "data": {"resultType": "matrix", "result": []}});
        assert!(window_sample(&ok, &matrix, &ok).is_err());
        let nan = answer(serde_json::json!([{"metric": {}, "value": [1.0, "NaN"]}]));
        assert!(window_sample(&nan, &ok, &ok).is_err());
    }
}
