//! `cargo bench -p messenger-operator --bench memory`: resident memory of the release
//! `messenger-operator run` against a real kube-apiserver, idle with no MessengerApps and
//! again with `OPERATOR_MEMORY_APPS` (default 1000) apps that each went through a blue-green
//! rollout, so both slots exist. Deployment readiness is simulated by patching the status
//! subresource, as in the cluster tests (there is no controller-manager).
//!
//! The API server must be fresh (no MessengerApps) and must not be the one the tests use:
//! `scripts/bench-operator-memory.sh` starts one on its own ports and runs this.
//!
//! Environment: `OPERATOR_MEMORY_KUBECONFIG` (required), `OPERATOR_MEMORY_APPS`,
//! `OPERATOR_BIN` (another operator binary to measure, e.g. an older build).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config, CustomResourceExt, Resource, ResourceExt};
use messenger_operator::builders::{LABEL_MANAGED_BY, MANAGED_BY};
use messenger_operator::crd::{MessengerApp, Phase, Slot};
use serde_json::json;

/// Apps per namespace (a namespace of a thousand apps would also be fine; this is closer
/// to how teams lay them out).
const APPS_PER_NAMESPACE: usize = 100;
/// Concurrent requests of this driver.
const DRIVER_CONCURRENCY: usize = 16;
/// The operator counts as idle after this long with almost no CPU use.
const QUIET: Duration = Duration::from_secs(10);
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(1800);

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

#[tokio::main]
async fn main() -> Result<()> {
    if !std::env::args().any(|a| a == "--bench") {
        println!("memory: runs only under `cargo bench` (it needs its own API server)");
        return Ok(());
    }
    let Ok(kubeconfig) = std::env::var("OPERATOR_MEMORY_KUBECONFIG") else {
        eprintln!(
            "memory: SKIPPED, OPERATOR_MEMORY_KUBECONFIG is not set; run scripts/bench-operator-memory.sh"
        );
        return Ok(());
    };
    let apps: usize = std::env::var("OPERATOR_MEMORY_APPS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1000);
    let binary = std::env::var("OPERATOR_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(env!("CARGO_BIN_EXE_messenger-operator")));

    let config = Config::from_custom_kubeconfig(
        Kubeconfig::read_from(&kubeconfig)?,
        &KubeConfigOptions::default(),
    )
    .await?;
    let client = Client::try_from(config)?;
    install_crd(&client).await?;
    let existing = Api::<MessengerApp>::all(client.clone())
        .list_metadata(&ListParams::default().limit(1))
        .await?;
    if !existing.items.is_empty() {
        return Err("the API server already holds MessengerApps; start a fresh one".into());
    }

    let operator = Operator::start(&binary, &kubeconfig)?;
    println!(
        "machine: {} logical CPUs; operator {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        binary.display()
    );
    operator.wait_idle().await?;
    let idle = operator.memory()?;
    println!("idle, no MessengerApps: {idle}");

    let started = Instant::now();
    let namespaces: Vec<String> = (0..apps.div_ceil(APPS_PER_NAMESPACE))
        .map(|i| format!("mem-{i}"))
        .collect();
    for ns in &namespaces {
        let namespace: Namespace = serde_json::from_value(json!({"metadata": {"name": ns}}))?;
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &namespace)
            .await?;
    }
    let names: Vec<(String, String)> = (0..apps)
        .map(|i| {
            (
                namespaces[i / APPS_PER_NAMESPACE].clone(),
                format!("app-{i}"),
            )
        })
        .collect();
    futures::stream::iter(names.iter().map(|(ns, name)| create_app(&client, ns, name)))
        .buffer_unordered(DRIVER_CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await?;
    converge(&client, &operator, apps, Slot::Blue).await?;
    println!(
        "{apps} apps created, blue Available, Healthy: {:.0} s",
        started.elapsed().as_secs_f64()
    );

    let rollout = Instant::now();
    futures::stream::iter(names.iter().map(|(ns, name)| {
        let api: Api<MessengerApp> = Api::namespaced(client.clone(), ns);
        async move {
            api.patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"version": "2.0.0"}})),
            )
            .await
            .map(|_| ())
        }
    }))
    .buffer_unordered(DRIVER_CONCURRENCY)
    .try_collect::<Vec<()>>()
    .await?;
    converge(&client, &operator, apps, Slot::Green).await?;
    println!(
        "rolled out to green (both slots exist): {:.0} s",
        rollout.elapsed().as_secs_f64()
    );

    let children = count_children(&client).await?;
    let total: usize = children.values().sum();
    println!("children: {total} ({children:?})");
    operator.wait_idle().await?;
    let loaded = operator.memory()?;
    println!("idle, {apps} MessengerApps after their rollouts: {loaded}");
    tokio::time::sleep(Duration::from_secs(30)).await;
    let later = operator.memory()?;
    println!("30 s later: {later}");
    let per_app = (later.rss_kib as f64 - idle.rss_kib as f64) / apps as f64;
    println!(
        "per MessengerApp: {per_app:.1} KiB ((RSS at {apps} - RSS idle) / {apps}); operator CPU {:.1} s in total",
        operator.cpu_seconds()?
    );
    operator.stop();
    Ok(())
}

/// Resident and peak memory of a process, from `/proc/<pid>/status`.
struct Memory {
    rss_kib: u64,
    peak_kib: u64,
}

impl std::fmt::Display for Memory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "VmRSS {:.1} MiB (peak VmHWM {:.1} MiB)",
            self.rss_kib as f64 / 1024.0,
            self.peak_kib as f64 / 1024.0
        )
    }
}

struct Operator {
    child: Child,
}

impl Operator {
    fn start(binary: &PathBuf, kubeconfig: &str) -> Result<Operator> {
        let log = std::env::temp_dir().join(format!("operator-memory-{}.log", std::process::id()));
        let child = Command::new(binary)
            .arg("run")
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "warn")
            .env("ADMIN_ADDR", "127.0.0.1:0")
            .env("POD_NAMESPACE", "default")
            .env("LEASE_NAME", "messenger-operator-memory-bench")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()?;
        println!("operator pid {}, log {}", child.id(), log.display());
        Ok(Operator { child })
    }

    fn proc_file(&self, file: &str) -> Result<String> {
        Ok(std::fs::read_to_string(format!(
            "/proc/{}/{file}",
            self.child.id()
        ))?)
    }

    fn memory(&self) -> Result<Memory> {
        let status = self.proc_file("status")?;
        let field = |name: &str| -> Result<u64> {
            let line = status
                .lines()
                .find(|l| l.starts_with(name))
                .ok_or_else(|| format!("{name} missing: has the operator exited?"))?;
            Ok(line.split_whitespace().nth(1).unwrap_or("0").parse()?)
        };
        Ok(Memory {
            rss_kib: field("VmRSS:")?,
            peak_kib: field("VmHWM:")?,
        })
    }

    /// utime + stime in clock ticks.
    fn cpu_ticks(&self) -> Result<u64> {
        let stat = self.proc_file("stat")?;
        // The command name may hold spaces; fields after it are plain.
        let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let fields: Vec<&str> = rest.split_whitespace().collect();
        Ok(fields.get(11).unwrap_or(&"0").parse::<u64>()?
            + fields.get(12).unwrap_or(&"0").parse::<u64>()?)
    }

    fn cpu_seconds(&self) -> Result<f64> {
        // USER_HZ is 100 on every Linux this runs on.
        Ok(self.cpu_ticks()? as f64 / 100.0)
    }

    /// Waits until the operator has used under 5% of one core for `QUIET` (its lists,
    /// watches and reconciles are done; a thousand apps still resync one every 0.3 s, so
    /// "no CPU at all" never comes), at least 20 s after start.
    async fn wait_idle(&self) -> Result<()> {
        let deadline = Instant::now() + CONVERGE_TIMEOUT;
        tokio::time::sleep(Duration::from_secs(20)).await;
        loop {
            let before = self.cpu_ticks()?;
            tokio::time::sleep(QUIET).await;
            let used = (self.cpu_ticks()? - before) as f64 / 100.0;
            if used < QUIET.as_secs_f64() * 0.05 {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err("the operator never became idle".into());
            }
        }
    }

    fn stop(mut self) {
        // SIGTERM: the operator drains and releases its lease.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn install_crd(client: &Client) -> Result<()> {
    let mut crd = serde_json::to_value(MessengerApp::crd())?;
    let minor: u32 = client
        .apiserver_version()
        .await?
        .minor
        .trim_end_matches('+')
        .parse()
        .unwrap_or(0);
    if minor < 25 {
        // Servers before 1.25 do not know CEL rules; the operator checks them itself.
        strip_key(&mut crd, "x-kubernetes-validations");
    }
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    api.patch(
        "messengerapps.messenger.dev",
        &PatchParams::apply("messenger-operator-bench").force(),
        &Patch::Apply(&crd),
    )
    .await?;
    let apps: Api<MessengerApp> = Api::all(client.clone());
    for _ in 0..100 {
        if apps
            .list_metadata(&ListParams::default().limit(1))
            .await
            .is_ok()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err("MessengerApps are not served".into())
}

fn strip_key(value: &mut serde_json::Value, key: &str) {
    match value {
        serde_json::Value::Object(map) => {
            map.remove(key);
            map.values_mut().for_each(|v| strip_key(v, key));
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(|v| strip_key(v, key)),
        _ => {}
    }
}

async fn create_app(client: &Client, ns: &str, name: &str) -> Result<()> {
    // The old slot is kept at full size after the switch (a day's scale-down delay), so
    // every app holds two whole slots while it is measured.
    let app: MessengerApp = serde_json::from_value(json!({
        "apiVersion": MessengerApp::api_version(&()),
        "kind": MessengerApp::kind(&()),
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "version": "1.0.0",
            "dependencies": {"chatInMemory": true},
            "strategy": {"type": "BlueGreen", "blueGreen": {"scaleDownDelaySeconds": 86400}}
        }
    }))?;
    Api::<MessengerApp>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &app)
        .await?;
    Ok(())
}

/// Until every app is Healthy on `slot` with no rollout: marks every Deployment the operator
/// made Available, the way the Deployment controller would, whenever it is not.
async fn converge(client: &Client, operator: &Operator, apps: usize, slot: Slot) -> Result<()> {
    let deadline = Instant::now() + CONVERGE_TIMEOUT;
    let all_apps: Api<MessengerApp> = Api::all(client.clone());
    let managed = ListParams::default().labels(&format!("{LABEL_MANAGED_BY}={MANAGED_BY}"));
    loop {
        let list = all_apps.list(&ListParams::default()).await?;
        let done = list
            .items
            .iter()
            .filter(|app| {
                app.status.as_ref().is_some_and(|s| {
                    s.phase == Some(Phase::Healthy)
                        && s.active_slot == Some(slot)
                        && s.rollout.is_none()
                        && s.observed_generation == app.metadata.generation
                })
            })
            .count();
        if done == apps {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("{done} of {apps} apps converged on {slot:?}").into());
        }
        operator.memory()?; // fails when the operator has exited
        let deployments = Api::<Deployment>::all(client.clone())
            .list(&managed)
            .await?;
        let unready: Vec<Deployment> = deployments
            .items
            .into_iter()
            .filter(|d| !available(d))
            .collect();
        eprintln!(
            "  {done}/{apps} apps on {slot:?}; marking {} Deployments Available",
            unready.len()
        );
        futures::stream::iter(unready.iter().map(|d| mark_available(client, d)))
            .buffer_unordered(DRIVER_CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
}

fn available(deployment: &Deployment) -> bool {
    let replicas = deployment.spec.replicas.unwrap_or(1);
    deployment.status.as_ref().is_some_and(|s| {
        s.observed_generation == deployment.metadata.generation
            && s.available_replicas.unwrap_or(0) == replicas
    })
}

async fn mark_available(client: &Client, deployment: &Deployment) -> Result<()> {
    let ns = deployment.namespace().unwrap_or_default();
    let api: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let replicas = deployment.spec.replicas.unwrap_or(1);
    let status = json!({"status": {
        "observedGeneration": deployment.metadata.generation,
        "replicas": replicas, "updatedReplicas": replicas, "readyReplicas": replicas,
        "availableReplicas": replicas,
        "conditions": [{"type": "Available", "status": "True",
                        "reason": "MinimumReplicasAvailable", "message": "simulated"}]
    }});
    match api
        .patch_status(
            &deployment.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&status),
        )
        .await
    {
        Ok(_) => Ok(()),
        // Pruned meanwhile.
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Objects the operator made, by kind, across all namespaces.
async fn count_children(client: &Client) -> Result<BTreeMap<&'static str, usize>> {
    let managed = ListParams::default().labels(&format!("{LABEL_MANAGED_BY}={MANAGED_BY}"));
    async fn count<K>(client: &Client, lp: &ListParams) -> Result<usize>
    where
        K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    {
        Ok(Api::<K>::all(client.clone())
            .list_metadata(lp)
            .await?
            .items
            .len())
    }
    Ok(BTreeMap::from([
        ("Deployment", count::<Deployment>(client, &managed).await?),
        ("Service", count::<Service>(client, &managed).await?),
        ("ConfigMap", count::<ConfigMap>(client, &managed).await?),
        (
            "ServiceAccount",
            count::<ServiceAccount>(client, &managed).await?,
        ),
        (
            "NetworkPolicy",
            count::<NetworkPolicy>(client, &managed).await?,
        ),
        ("Ingress", count::<Ingress>(client, &managed).await?),
        ("Job", count::<Job>(client, &managed).await?),
        (
            "Secret",
            count::<k8s_openapi::api::core::v1::Secret>(client, &managed).await?,
        ),
    ]))
}
