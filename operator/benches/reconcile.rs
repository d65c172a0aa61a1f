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

/// Reconciles `apps` in turn: `warm_up` times untimed, then `iterations` timed.
async fn time_reconciles(
    ctx: &Arc<Context>,
    apps: &[Arc<MessengerApp>],
    warm_up: usize,
    iterations: usize,
) -> Vec<Duration> {
    let mut turn = apps.iter().cycle();
    for _ in 0..warm_up {
        let app = turn.next().expect("an app").clone();
        reconcile(app, ctx.clone())
            .await
            .expect("warm-up reconcile");
    }
    let mut samples = Vec::with_capacity(iterations);
    for _ in 0..iterations {
        let app = turn.next().expect("an app").clone();
        let started = Instant::now();
        reconcile(app, ctx.clone()).await.expect("reconcile");
        samples.push(started.elapsed());
    }
    samples
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
    // A reconcile that applies everything: the version alternates, so every child differs
    // from what the previous reconcile applied.
    let mut next = (*app).clone();
    next.spec.version = "1.4.3".into();
    let versions = [app.clone(), Arc::new(next)];
    let warm_up = (iterations / 10).max(1);
    let reconcile_samples = runtime.block_on(time_reconciles(&ctx, &versions, warm_up, iterations));
    let requests_per_reconcile = stats.total() as f64 / (iterations + warm_up) as f64;

    // A reconcile of an unchanged app: the one just reconciled, with the status it was given.
    let mut unchanged = (*versions[(warm_up + iterations - 1) % 2]).clone();
    let written = stats
        .last_status
        .lock()
        .unwrap()
        .clone()
        .expect("a status write");
    unchanged.status = Some(serde_json::from_value(written).expect("status"));
    let unchanged = [Arc::new(unchanged)];
    let total_before = stats.total();
    let patches_before = stats.patches.load(std::sync::atomic::Ordering::Relaxed);
    let unchanged_samples =
        runtime.block_on(time_reconciles(&ctx, &unchanged, warm_up, iterations));
    let unchanged_requests = (stats.total() - total_before) as f64 / (iterations + warm_up) as f64;
    // The fake lists no Deployments, so this status reports other replica counts than the
    // one it was given and is written again; against a real server it is not.
    let unchanged_writes = (stats.patches.load(std::sync::atomic::Ordering::Relaxed)
        - patches_before) as f64
        / (iterations + warm_up) as f64;

    println!(
        "machine: {} logical CPUs",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    println!(
        "children per app: {children}; API requests per reconcile: {requests_per_reconcile:.0} \
         (unchanged app: {unchanged_requests:.0}, of which writes {unchanged_writes:.0}: the status)"
    );
    report("build_children (pure)", build_samples);
    report("reconcile (fake API server)", reconcile_samples);
    report(
        "reconcile of an unchanged app (fake API server)",
        unchanged_samples,
    );
    // Idle: the context, caches and metrics stay; nothing runs.
    std::thread::sleep(Duration::from_millis(200));
    if let (Some(start), Some(idle)) = (rss_start, rss_kib()) {
        println!("rss: start={start} KiB idle-after-reconciles={idle} KiB");
    }
}
