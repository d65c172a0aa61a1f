//! `messenger-operator`: `crd` prints the CRD, `run` (the default) runs the controller
//! with leader election and the admin server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use kube::Client;
use messenger_operator::admin::{self, AdminState};
use messenger_operator::controller::{Context, discover_capabilities, run_controller};
use messenger_operator::leader::{LeaderElector, LeaseConfig};
use messenger_operator::metrics::Metrics;
use messenger_operator::{Error, crd_yaml};
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tracing::{error, info, warn};

#[derive(Parser)]
#[command(
    version,
    about = "Reconciles MessengerApp resources into the messenger's components"
)]
struct Cli {
    /// Log format.
    #[arg(long, env = "LOG_FORMAT", default_value = "text", global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Print the MessengerApp CustomResourceDefinition as YAML.
    Crd,
    /// Run the controller (the default).
    Run(RunArgs),
}

#[derive(Parser, Clone)]
struct RunArgs {
    /// Listen address of /healthz, /readyz and /metrics.
    #[arg(long, env = "ADMIN_ADDR", default_value = "0.0.0.0:9090")]
    admin_addr: SocketAddr,
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "WATCH_NAMESPACE")]
    watch_namespace: Option<String>,
    /// Namespace of the leader-election Lease (normally the operator's own).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    lease_namespace: String,
    #[arg(long, env = "LEASE_NAME", default_value = "messenger-operator-leader")]
    lease_name: String,
    /// This instance's identity in the Lease (normally the pod name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    #[arg(long, env = "LEASE_DURATION_SECONDS", default_value_t = 15)]
    lease_duration_seconds: u64,
}

impl Default for RunArgs {
    fn default() -> Self {
        RunArgs::parse_from(["run"])
    }
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,kube=warn"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Crd) => crd_yaml().map(|yaml| print!("{yaml}")),
        Some(Command::Run(args)) => {
            init_tracing(cli.log_format);
            run(args).await
        }
        None => {
            init_tracing(cli.log_format);
            run(RunArgs::default()).await
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("messenger-operator: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Requests the controller has in flight to the API server at once. Each one in flight holds
/// its own HTTP/1.1 connection, and the client keeps every connection it ever opened (with
/// TLS about 80 KiB each): unbounded, one start-up burst of reconciles left hundreds open.
const API_CONCURRENCY: usize = 8;

/// How long shutdown waits for the controller's in-flight reconciles (well inside a pod's
/// default 30 s termination grace period).
const CONTROLLER_DRAIN: Duration = Duration::from_secs(10);

async fn run(args: RunArgs) -> Result<(), Error> {
    let config = kube::Config::infer()
        .await
        .map_err(kube::Error::InferConfig)?;
    // Lease renewals get a client of their own, so they never queue behind reconciles.
    let lease_client = Client::try_from(config.clone())?;
    let client = kube::client::ClientBuilder::try_from(config)?
        .with_layer(&tower::limit::ConcurrencyLimitLayer::new(API_CONCURRENCY))
        .build();
    let mut registry = Registry::default();
    let metrics = Metrics::register(&mut registry);
    let ready = Arc::new(AtomicBool::new(false));

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let shutdown = move || {
        let mut rx = shutdown_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };

    let listener = tokio::net::TcpListener::bind(args.admin_addr).await?;
    info!(addr = %args.admin_addr, "admin server listening");
    let admin_app = admin::app(AdminState {
        registry: Arc::new(registry),
        ready: ready.clone(),
    });
    let admin_server = tokio::spawn(
        axum::serve(listener, admin_app)
            .with_graceful_shutdown(shutdown())
            .into_future(),
    );

    let caps = discover_capabilities(&client).await?;
    if !caps.pdb_v1 {
        warn!("policy/v1 PodDisruptionBudget is not served; PDBs are skipped");
    }
    if !caps.http_route {
        info!("Gateway API HTTPRoute is not served; apps with router gatewayAPI get no route");
    }
    ready.store(true, Ordering::Release);

    let identity = args.identity.clone().unwrap_or_else(default_identity);
    let lease = LeaseConfig::new(&args.lease_name, &args.lease_namespace, &identity)
        .with_lease_duration(Duration::from_secs(args.lease_duration_seconds.max(3)));
    let (leading_tx, mut leading) = watch::channel(false);
    // The elector stops (and releases the lease) only after the controller has drained, so
    // no other replica starts while this one still writes.
    let (elector_stop_tx, mut elector_stop_rx) = watch::channel(false);
    let elector_shutdown = async move {
        let _ = elector_stop_rx.wait_for(|stop| *stop).await;
    };
    let elector =
        tokio::spawn(LeaderElector::new(lease_client, lease).run(leading_tx, elector_shutdown));
    let ctx = Arc::new(Context::new(client, metrics.clone(), Some(identity)));

    let signal = tokio::spawn({
        let tx = shutdown_tx.clone();
        async move {
            shutdown_signal().await;
            info!("shutting down");
            let _ = tx.send(true);
        }
    });

    loop {
        tokio::select! {
            _ = shutdown() => break,
            changed = leading.wait_for(|l| *l) => if changed.is_err() { break },
        }
        metrics.leader.set(1);
        info!("leading: starting the controller");
        let controller =
            run_controller(ctx.clone(), args.watch_namespace.clone(), caps, shutdown());
        tokio::pin!(controller);
        tokio::select! {
            _ = &mut controller => { metrics.leader.set(0); break }
            // Dropping the controller future stops every in-flight reconcile at once.
            _ = leading.wait_for(|l| !*l) => {
                metrics.leader.set(0);
                warn!("lost the lease: controller stopped");
            }
            _ = shutdown() => {
                // The controller lets in-flight reconciles finish; but a watch that cannot
                // even list (the CRD is not installed) never ends, and must not keep the
                // pod past its termination grace period.
                if tokio::time::timeout(CONTROLLER_DRAIN, &mut controller).await.is_err() {
                    warn!(?CONTROLLER_DRAIN, "the controller did not drain in time: stopping it");
                }
                metrics.leader.set(0);
                break;
            }
        }
    }
    let _ = shutdown_tx.send(true);
    signal.abort();
    let _ = elector_stop_tx.send(true);
    if let Err(e) = elector.await {
        error!(error = %e, "leader election task failed");
    }
    match admin_server.await {
        Ok(result) => result?,
        Err(e) => error!(error = %e, "admin server task failed"),
    }
    Ok(())
}

fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default();
    format!("{host}-{}", std::process::id())
}
