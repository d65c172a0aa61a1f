//! Canary analysis from the candidate gateway's own Prometheus metrics — no Prometheus
//! needed. The gateway exports `http_server_requests_total{method,route,status}` and the
//! histogram `http_server_request_duration_seconds` (services/common metrics); a sample sums
//! them over the candidate slot's gateway pods, and a verdict compares two samples taken an
//! interval apart: error rate (5xx share) and p99 latency against the thresholds, with a
//! minimum request count so that no traffic gives no verdict.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::crd::CanaryAnalysis;
use crate::rollout::Verdict;

pub const REQUESTS_METRIC: &str = "http_server_requests_total";
pub const LATENCY_BUCKET_METRIC: &str = "http_server_request_duration_seconds_bucket";
/// Requests an interval must see before a verdict is reached.
pub const DEFAULT_MIN_REQUESTS: i64 = 20;
pub const DEFAULT_INTERVAL_SECONDS: i64 = 60;

/// Counters of the candidate gateways at one moment, summed over pods and labels.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricsSample {
    pub requests: f64,
    /// Responses with a 5xx status.
    pub errors: f64,
    /// Cumulative latency histogram, by upper bound.
    #[serde(default)]
    pub buckets: Vec<Bucket>,
}

/// One cumulative histogram bucket.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, JsonSchema)]
pub struct Bucket {
    /// Upper bound in seconds; `+Inf` as the largest finite number.
    pub le: f64,
    pub count: f64,
}

impl MetricsSample {
    /// Adds another pod's sample.
    pub fn merge(&mut self, other: &MetricsSample) {
        self.requests += other.requests;
        self.errors += other.errors;
        let mut buckets: BTreeMap<u64, (f64, f64)> = self
            .buckets
            .iter()
            .map(|b| (b.le.to_bits(), (b.le, b.count)))
            .collect();
        for b in &other.buckets {
            buckets.entry(b.le.to_bits()).or_insert((b.le, 0.0)).1 += b.count;
        }
        self.buckets = sorted(buckets.into_values().collect());
    }
}

fn sorted(mut buckets: Vec<(f64, f64)>) -> Vec<Bucket> {
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    buckets
        .into_iter()
        .map(|(le, count)| Bucket { le, count })
        .collect()
}

fn label<'a>(labels: &'a str, name: &str) -> Option<&'a str> {
    labels.split(',').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        (key.trim() == name).then(|| value.trim().trim_matches('"'))
    })
}

/// Reads one pod's `/metrics` text (Prometheus or OpenMetrics exposition).
pub fn parse(text: &str) -> MetricsSample {
    let mut sample = MetricsSample::default();
    let mut buckets: BTreeMap<u64, (f64, f64)> = BTreeMap::new();
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let (series, value) = match line.rsplit_once(' ') {
            Some((series, value)) => (series.trim(), value.trim()),
            None => continue,
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (name, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if name == REQUESTS_METRIC {
            sample.requests += value;
            if label(labels, "status").is_some_and(|s| s.starts_with('5')) {
                sample.errors += value;
            }
        } else if name == LATENCY_BUCKET_METRIC {
            let le = match label(labels, "le") {
                Some("+Inf") => f64::MAX,
                Some(le) => match le.parse::<f64>() {
                    Ok(le) => le,
                    Err(_) => continue,
                },
                None => continue,
            };
            buckets.entry(le.to_bits()).or_insert((le, 0.0)).1 += value;
        }
    }
    sample.buckets = sorted(buckets.into_values().collect());
    sample
}

/// The upper bound of the bucket holding the 99th percentile of `buckets` (cumulative).
fn p99_seconds(buckets: &[(f64, f64)]) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    buckets
        .iter()
        .find(|(_, count)| *count >= 0.99 * total)
        .map(|(le, _)| *le)
}

/// The verdict over the interval between `before` and `after`.
pub fn judge(
    before: &MetricsSample,
    after: &MetricsSample,
    thresholds: &CanaryAnalysis,
) -> Verdict {
    let requests = after.requests - before.requests;
    // Counters went down: a gateway restarted in between; nothing can be said.
    if requests < 0.0 || after.errors < before.errors {
        return Verdict::Inconclusive;
    }
    let min = thresholds.min_requests.unwrap_or(DEFAULT_MIN_REQUESTS) as f64;
    if requests < min.max(1.0) {
        return Verdict::Inconclusive;
    }
    if let Some(max) = thresholds.max_error_rate {
        let rate = (after.errors - before.errors) / requests;
        if rate > max {
            return Verdict::Failed;
        }
    }
    if let Some(max_ms) = thresholds.max_p99_latency_ms {
        let delta: Vec<(f64, f64)> = after
            .buckets
            .iter()
            .map(|b| {
                let earlier = before
                    .buckets
                    .iter()
                    .find(|e| e.le.to_bits() == b.le.to_bits())
                    .map_or(0.0, |e| e.count);
                (b.le, b.count - earlier)
            })
            .collect();
        match p99_seconds(&delta) {
            Some(p99) if p99 * 1000.0 > max_ms as f64 => return Verdict::Failed,
            Some(_) => {}
            None => return Verdict::Inconclusive,
        }
    }
    Verdict::Successful
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exposition(ok: u64, errors: u64, fast: u64, slow: u64) -> String {
        let total = fast + slow;
        format!(
            "# HELP http_server_requests HTTP requests answered\n\
             # TYPE http_server_requests counter\n\
             http_server_requests_total{{method=\"GET\",route=\"/v1/chats\",status=\"200\"}} {ok}\n\
             http_server_requests_total{{method=\"POST\",route=\"/v1/chats\",status=\"503\"}} {errors}\n\
             http_server_requests_total{{method=\"POST\",route=\"/v1/chats\",status=\"404\"}} 7\n\
             http_server_request_duration_seconds_bucket{{method=\"GET\",route=\"/v1/chats\",le=\"0.1\"}} {fast}\n\
             http_server_request_duration_seconds_bucket{{method=\"GET\",route=\"/v1/chats\",le=\"1.0\"}} {total}\n\
             http_server_request_duration_seconds_bucket{{method=\"GET\",route=\"/v1/chats\",le=\"+Inf\"}} {total}\n\
             http_server_request_duration_seconds_count{{method=\"GET\",route=\"/v1/chats\"}} {total}\n\
             # EOF\n"
        )
    }

    #[test]
    fn parses_requests_errors_and_buckets() {
        let sample = parse(&exposition(90, 3, 95, 5));
        assert_eq!(sample.requests, 100.0, "200s, 5xx and 4xx all count");
        assert_eq!(sample.errors, 3.0, "only 5xx are errors");
        let buckets: Vec<(f64, f64)> = sample.buckets.iter().map(|b| (b.le, b.count)).collect();
        assert_eq!(buckets, vec![(0.1, 95.0), (1.0, 100.0), (f64::MAX, 100.0)]);
        let mut two = sample.clone();
        two.merge(&sample);
        assert_eq!((two.requests, two.buckets[0].count), (200.0, 190.0));
    }

    #[test]
    fn verdicts() {
        let thresholds = CanaryAnalysis {
            max_error_rate: Some(0.05),
            max_p99_latency_ms: Some(500),
            min_requests: Some(20),
            ..CanaryAnalysis::default()
        };
        let start = parse(&exposition(100, 0, 100, 0));
        // (case, ok, errors, fast, slow) at the end of the interval
        let cases = [
            ("healthy", 197, 3, 200, 0, Verdict::Successful),
            ("too many errors", 180, 20, 200, 0, Verdict::Failed),
            ("too slow", 200, 0, 150, 50, Verdict::Failed),
            ("too little traffic", 105, 0, 105, 0, Verdict::Inconclusive),
            ("restarted gateway", 5, 0, 5, 0, Verdict::Inconclusive),
        ];
        for (case, ok, errors, fast, slow, expected) in cases {
            let end = parse(&exposition(ok, errors, fast, slow));
            assert_eq!(judge(&start, &end, &thresholds), expected, "{case}");
        }
    }
}
