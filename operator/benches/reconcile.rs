//! `cargo bench -p messenger-operator --bench reconcile`: time to reconcile one MessengerApp
//! with every child (Deployments, Services, ConfigMap, ServiceAccount, Ingress, PDBs) against
//! the in-process fake API server, the pure build step alone, and the process's resident
//! memory once the controller context is idle. Prints one line per figure.

use std::sync::Arc;
use std::time::{Duration, Instant};

use messenger_operator::builders::{ApiCapabilities, build_children};
use messenger_operator::controller::{Context, reconcile};
use messenger_operator::crd::{MessengerApp, MessengerAppSpec};
use messenger_operator::fake_api::{FakeBehaviour, fake_client};
use messenger_operator::metrics::Metrics;
use prometheus_client::registry::Registry;

fn app() -> MessengerApp {
    let spec: MessengerAppSpec = serde_json::from_value(serde_json::json!({
        "version": "1.4.2",
        "components": {
            "gateway": {"replicas": 3}, "auth": {"replicas": 2}, "users": {"replicas": 2},
            "friends": {"replicas": 2}, "chat": {"replicas": 2}
        },
        "dependencies": {
            "postgres": {"shared": {"name": "pg", "key": "url"}},
            "redis": {"name": "redis", "key": "url"},
            "mongodb": {"name": "mongo", "key": "uri"},
            "kafka": {"name": "kafka", "key": "brokers"}
        },
        "ingress": {"host": "messenger.local", "className": "nginx", "tlsSecretName": "tls"}
    }))
    .expect("benchmark spec");
    let mut app = MessengerApp::new("bench", spec);
    app.metadata.namespace = Some("bench".into());
    app.metadata.uid = Some("bench-uid".into());
    app.metadata.generation = Some(1);
    app
}

fn rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn report(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let mean = samples.iter().sum::<Duration>() / samples.len() as u32;
    println!(
        "{name}: n={} mean={:?} p50={:?} p95={:?} p99={:?} max={:?}",
        samples.len(),
        mean,
        percentile(&samples, 0.5),
        percentile(&samples, 0.95),
        percentile(&samples, 0.99),
        samples[samples.len() - 1]
    );
}

fn main() {
    // `cargo test --benches` passes `--bench`-less flags; keep that run short.
    let quick = !std::env::args().any(|a| a == "--bench");
    let iterations = if quick { 20 } else { 2000 };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let rss_start = rss_kib();

    let app = Arc::new(app());
    let children = build_children(&app, ApiCapabilities::ALL).count();

    let mut build_samples = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let started = Instant::now();
        std::hint::black_box(build_children(
            std::hint::black_box(&app),
            ApiCapabilities::ALL,
        ));
        build_samples.push(started.elapsed());
    }

    let (client, stats) = runtime.block_on(async { fake_client(FakeBehaviour::Healthy) });
    let ctx = Arc::new(
        Context::new(client, Metrics::register(&mut Registry::default()), None)
            .with_capabilities(ApiCapabilities::ALL),
    );
    let reconcile_samples: Vec<Duration> = runtime.block_on(async {
        for _ in 0..(iterations / 10).max(1) {
            reconcile(app.clone(), ctx.clone())
                .await
                .expect("warm-up reconcile");
        }
        let mut samples = Vec::with_capacity(iterations);
        for _ in 0..iterations {
            let started = Instant::now();
            reconcile(app.clone(), ctx.clone())
                .await
                .expect("reconcile");
            samples.push(started.elapsed());
        }
        samples
    });
    let requests_per_reconcile =
        stats.total() as f64 / (iterations + (iterations / 10).max(1)) as f64;

    println!(
        "machine: {} logical CPUs",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    println!(
        "children per app: {children}; API requests per reconcile: {requests_per_reconcile:.0}"
    );
    report("build_children (pure)", build_samples);
    report("reconcile (fake API server)", reconcile_samples);
    // Idle: the context, caches and metrics stay; nothing runs.
    std::thread::sleep(Duration::from_millis(200));
    if let (Some(start), Some(idle)) = (rss_start, rss_kib()) {
        println!("rss: start={start} KiB idle-after-reconciles={idle} KiB");
    }
}
