//! The reconcile pipeline `validate -> discover -> build -> apply -> prune -> status`; only
//! `apply`, `prune` and the status write talk to the API server.

use std::collections::{BTreeSet, HashMap};
use std::fmt::Debug;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::future::{BoxFuture, try_join_all};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, reflector};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::RwLock;
use tracing::{info, instrument, warn};

use crate::builders::{
    ApiCapabilities, Children, FIELD_MANAGER, INTERNAL_KEY_BYTES, LABEL_MANAGED_BY, LABEL_SLOT,
    MANAGED_BY, app_children_selector, build_children_for, build_internal_key_secret,
    entry_service_name,
};
use crate::crd::{MessengerApp, MessengerAppStatus, MigrationPhase, Phase, Slot};
use crate::error::{Error, Result};
use crate::httproute::HTTPRoute;
use crate::metrics::Metrics;
use crate::prometheus::PrometheusClient;
use crate::rollout::{COMMANDS, JobState, RolloutAction, next_state, wants_gateway_metrics};
use crate::scrape::{GatewayScraper, PodScraper};
use crate::status::{
    Transition, compute_status, degraded_status, invalid_status, observe, transitions,
};
use crate::validate::validate;

/// How long discovered API capabilities are trusted before asking again (Gateway API CRDs
/// may be installed while the operator runs).
const CAPABILITIES_TTL: Duration = Duration::from_secs(60);
/// Periodic re-check of a healthy app, to notice drift the watches cannot see.
const RESYNC_READY: Duration = Duration::from_secs(300);
const RESYNC_PROGRESSING: Duration = Duration::from_secs(30);
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// How often phase series of deleted apps are dropped.
const METRICS_SWEEP: Duration = Duration::from_secs(5);
/// Reconciles in flight at once. Unbounded, a start-up with a thousand apps runs a thousand
/// reconciles together, each holding its lists and apply responses; the API server is the
/// bottleneck anyway, and the heap that burst leaves behind is never given back.
const RECONCILE_CONCURRENCY: u16 = 4;
/// Objects per page of the watches' initial lists. A page is read and decoded whole, and
/// even metadata-only objects carry managedFields (a Deployment's run to kilobytes, decoded
/// as JSON trees): pages of the default 500 made the largest allocation of a start-up, and
/// the heap it grew stays.
const APP_PAGE_SIZE: u32 = 50;
const CHILD_PAGE_SIZE: u32 = 50;

/// What every reconcile needs: the client, who reports events, metrics and caches.
pub struct Context {
    pub client: Client,
    /// Events are published with a recorder made for one reconcile, as kube intends: a
    /// recorder keeps every event it sent (to count repeats) until its next publish after
    /// six minutes, which for one shared recorder meant each app's last events, forever.
    pub reporter: Reporter,
    pub metrics: Metrics,
    capabilities: RwLock<Option<(Instant, ApiCapabilities)>>,
    /// Reads the candidate gateways' metrics for canary analysis.
    pub scraper: Arc<dyn GatewayScraper>,
    /// Queries Prometheus instead when `strategy.canary.prometheus` is set.
    pub prometheus: PrometheusClient,
    /// Consecutive failures per app, for exponential backoff.
    failures: Mutex<HashMap<String, u32>>,
    /// Per app, the last pass that applied: what it wanted and what it found.
    applied: Mutex<HashMap<String, AppliedPass>>,
}

/// What a reconcile that applied and pruned saw. When the next one wants the same children
/// and finds every child at the same resourceVersion, those applies changed nothing (or a
/// child would have a new resourceVersion) and repeating them would change nothing either.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct AppliedPass {
    desired: u64,
    observed: u64,
}

impl Context {
    pub fn new(client: Client, metrics: Metrics, instance: Option<String>) -> Self {
        let reporter = Reporter {
            controller: FIELD_MANAGER.to_owned(),
            instance,
        };
        Context {
            reporter,
            client,
            metrics,
            capabilities: RwLock::new(None),
            scraper: Arc::new(PodScraper::default()),
            prometheus: PrometheusClient::default(),
            failures: Mutex::new(HashMap::new()),
            applied: Mutex::new(HashMap::new()),
        }
    }

    /// A context that scrapes gateway metrics with `scraper` (tests).
    pub fn with_scraper(self, scraper: Arc<dyn GatewayScraper>) -> Self {
        Context { scraper, ..self }
    }

    /// A context that does not ask the API server which APIs it serves (benchmarks, mocks).
    pub fn with_capabilities(self, caps: ApiCapabilities) -> Self {
        Context {
            capabilities: RwLock::new(Some((far_future(), caps))),
            ..self
        }
    }

    /// Which optional APIs the cluster serves, cached for a minute.
    pub async fn capabilities(&self) -> Result<ApiCapabilities> {
        if let Some((at, caps)) = *self.capabilities.read().await
            && at.elapsed() < CAPABILITIES_TTL
        {
            return Ok(caps);
        }
        let caps = discover_capabilities(&self.client).await?;
        *self.capabilities.write().await = Some((Instant::now(), caps));
        Ok(caps)
    }

    fn record_failure(&self, key: &str) -> u32 {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let count = failures.entry(key.to_owned()).or_insert(0);
        *count += 1;
        *count
    }

    fn reset_failures(&self, key: &str) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }

    fn last_applied(&self, key: &str) -> Option<AppliedPass> {
        self.applied
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(key)
            .copied()
    }

    fn remember_applied(&self, key: &str, pass: AppliedPass) {
        self.applied
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.to_owned(), pass);
    }

    /// Drops what is kept for an app that no longer exists.
    fn forget_app(&self, key: &str) {
        self.reset_failures(key);
        self.applied
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(key);
    }
}

fn far_future() -> Instant {
    // `elapsed()` of an instant in the future is zero, so this never expires.
    Instant::now() + Duration::from_secs(10 * 365 * 24 * 3600)
}

/// Asks the API server whether `policy/v1` PodDisruptionBudget and Gateway API HTTPRoute exist.
pub async fn discover_capabilities(client: &Client) -> Result<ApiCapabilities> {
    Ok(ApiCapabilities {
        pdb_v1: serves(client, "policy/v1", "poddisruptionbudgets").await?,
        http_route: serves(client, "gateway.networking.k8s.io/v1", "httproutes").await?,
    })
}

async fn serves(client: &Client, group_version: &str, plural: &str) -> Result<bool> {
    match client.list_api_group_resources(group_version).await {
        Ok(list) => Ok(list.resources.iter().any(|r| r.name == plural)),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(false),
        Err(e) => Err(e.into()),
    }
}

fn app_key(app: &MessengerApp) -> String {
    format!("{}/{}", app.namespace().unwrap_or_default(), app.name_any())
}

/// Reconciles one app; wraps the pipeline with metrics.
#[instrument(skip_all, fields(namespace = app.namespace().unwrap_or_default(), app = %app.name_any()))]
pub async fn reconcile(app: Arc<MessengerApp>, ctx: Arc<Context>) -> Result<Action> {
    let started = Instant::now();
    let result = reconcile_app(&app, &ctx).await;
    ctx.metrics.observe(
        started.elapsed(),
        result.as_ref().err().map(Error::metric_label),
    );
    if result.is_ok() {
        ctx.reset_failures(&app_key(&app));
    }
    result
}

/// Transient failures (network, conflicts, 5xx) retry with exponential backoff.
pub fn error_policy(app: Arc<MessengerApp>, error: &Error, ctx: Arc<Context>) -> Action {
    let failures = ctx.record_failure(&app_key(&app));
    let delay = backoff(failures);
    warn!(app = %app_key(&app), %error, failures, ?delay, "reconcile failed, retrying");
    Action::requeue(delay)
}

/// 1s, 2s, 4s, ... capped at five minutes.
pub fn backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(16);
    Duration::from_secs(1u64 << exp).min(MAX_BACKOFF)
}

async fn reconcile_app(app: &MessengerApp, ctx: &Context) -> Result<Action> {
    let namespace = app.namespace().ok_or(Error::MissingNamespace {
        kind: "MessengerApp",
    })?;
    let now = Time(Timestamp::now());

    if app.metadata.deletion_timestamp.is_some() {
        // Garbage collection is removing the children; re-applying them would fight it.
        return Ok(Action::await_change());
    }

    if let Err(invalid) = validate(app) {
        info!(%invalid, "spec is invalid; nothing applied");
        let status = invalid_status(app, &invalid, &now);
        finish(app, ctx, &namespace, status, &[]).await?;
        // Only a spec change can fix this; the watch brings it.
        return Ok(Action::await_change());
    }

    let caps = ctx.capabilities().await?;
    ensure_current(&ctx.client, &namespace, app).await?;
    // Observe, decide, build: the state machine sees the children as they are, not as the
    // last apply left them.
    let found = observe_children(&ctx.client, &namespace, app, caps).await?;
    let mut observed = observe(app, &found.deployments, &found.jobs, found.entry.as_ref());
    if let Some((candidate, interval)) = wants_gateway_metrics(app) {
        let prometheus = app
            .spec
            .strategy
            .canary
            .as_ref()
            .and_then(|c| c.prometheus.as_ref());
        observed.gateway_metrics = match prometheus {
            Some(spec) => {
                observed.metrics_window = true;
                ctx.prometheus
                    .window(spec, &namespace, &app.name_any(), candidate, interval)
                    .await
                    .inspect_err(
                        |error| warn!(%error, "canary analysis: Prometheus did not answer"),
                    )
                    .ok()
            }
            None => {
                ctx.scraper
                    .scrape(&ctx.client, &namespace, app, candidate)
                    .await
            }
        };
    }
    let decision = next_state(app, &observed, &now);
    let children = build_children_for(app, &decision.status, caps);
    let key = app_key(app);
    let pass = AppliedPass {
        desired: children.fingerprint(),
        observed: found.fingerprint(),
    };
    // Nothing to apply when the last pass wanted the same and nothing changed since.
    let unchanged = ctx.last_applied(&key) == Some(pass);
    let applied = async {
        if unchanged {
            run_migration_jobs(
                &ctx.client,
                &namespace,
                &children.jobs,
                &decision.status,
                &observed.jobs,
            )
            .await?;
            return Ok(None);
        }
        // Pods reference the key Secret; it must exist before they are created.
        ensure_internal_key(&ctx.client, &namespace, app).await?;
        let applied = apply_workloads(&ctx.client, &namespace, &children).await?;
        run_migration_jobs(
            &ctx.client,
            &namespace,
            &children.jobs,
            &decision.status,
            &observed.jobs,
        )
        .await?;
        Ok::<_, Error>(Some(applied))
    };
    let applied = match applied.await {
        Ok(applied) => applied,
        Err(error) if error.is_rejection() => {
            warn!(%error, "the API server rejected a child; waiting for a spec change");
            let status = degraded_status(app, "ApplyRejected", error.to_string(), &now);
            finish(app, ctx, &namespace, status, &[]).await?;
            return Ok(Action::await_change());
        }
        Err(error) => return Err(error),
    };
    let deployments = applied.as_deref().unwrap_or(&found.deployments);

    let status = compute_status(app, &decision, deployments, &children.skipped, &now);
    let healthy = status.phase == Some(Phase::Healthy);
    record_rollout_metrics(ctx, app, &status, &decision.actions, &now);
    finish(app, ctx, &namespace, status, &decision.actions).await?;
    if !unchanged {
        // Traffic follows only what is persisted: a status write that failed (or lost a
        // race with a newer status) moves no traffic.
        apply_traffic(&ctx.client, &namespace, &children).await?;
        prune_children(&ctx.client, &namespace, app, &children, &found).await?;
        ctx.remember_applied(&key, pass);
    }
    let resync = if healthy {
        RESYNC_READY
    } else {
        RESYNC_PROGRESSING
    };
    Ok(Action::requeue(
        decision.requeue_after.map_or(resync, |at| at.min(resync)),
    ))
}

fn record_rollout_metrics(
    ctx: &Context,
    app: &MessengerApp,
    status: &MessengerAppStatus,
    actions: &[RolloutAction],
    now: &Time,
) {
    let namespace = app.namespace().unwrap_or_default();
    let rollout = status.rollout.as_ref();
    ctx.metrics.set_rollout(
        &namespace,
        &app.name_any(),
        rollout.map_or(0, |r| r.weight),
        rollout.map_or(0, |r| r.step_index),
    );
    for action in actions {
        match action {
            RolloutAction::Aborted(reason) => {
                ctx.metrics
                    .rollout_aborts
                    .get_or_create(&crate::metrics::AbortLabels {
                        reason: reason.clone(),
                    })
                    .inc();
            }
            RolloutAction::Promoted { .. } => {
                // The rollout that just ended is the one in the previous status.
                if let Some(started) = app
                    .status
                    .as_ref()
                    .and_then(|s| s.rollout.as_ref())
                    .map(|r| r.started_at.0)
                {
                    let seconds = now.0.duration_since(started).as_secs_f64();
                    ctx.metrics.rollout_duration.observe(seconds.max(0.0));
                }
            }
            _ => {}
        }
    }
}

/// Refuses to act on an app older than the one stored: a decision from a stale cache could
/// prune the candidate slot or move traffic back even when its status equals the old one
/// (and so is never written, which would have caught it). One metadata read per reconcile.
async fn ensure_current(client: &Client, namespace: &str, app: &MessengerApp) -> Result<()> {
    // An app that never came from the server (benchmarks, unit tests) has nothing to compare.
    let Some(seen) = app.resource_version() else {
        return Ok(());
    };
    let api: Api<MessengerApp> = Api::namespaced(client.clone(), namespace);
    let current = api
        .get_metadata(&app.name_any())
        .await?
        .resource_version()
        .unwrap_or_default();
    if current != seen {
        return Err(Error::Stale {
            what: format!("MessengerApp {namespace}/{}", app.name_any()),
            seen,
            current,
        });
    }
    Ok(())
}

/// An app's children as the API server has them: Deployments and Jobs whole (their status
/// drives the rollout), the entry Service (its selector names the serving slot), and only
/// the metadata of the other kinds (enough to prune them and to see that one changed).
struct FoundChildren {
    deployments: Vec<Deployment>,
    jobs: Vec<Job>,
    entry: Option<Service>,
    service_accounts: Vec<ObjectMeta>,
    config_maps: Vec<ObjectMeta>,
    services: Vec<ObjectMeta>,
    ingresses: Vec<ObjectMeta>,
    network_policies: Vec<ObjectMeta>,
    /// Empty when the cluster does not serve the kind.
    pdbs: Vec<ObjectMeta>,
    http_routes: Vec<ObjectMeta>,
}

impl FoundChildren {
    /// A hash of every child's kind, name and resourceVersion: any write to any child, by
    /// anyone, changes it.
    fn fingerprint(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let kinds: [(&str, Vec<&ObjectMeta>); 9] = [
            (
                "Deployment",
                self.deployments.iter().map(|d| &d.metadata).collect(),
            ),
            ("Job", self.jobs.iter().map(|j| &j.metadata).collect()),
            ("ServiceAccount", self.service_accounts.iter().collect()),
            ("ConfigMap", self.config_maps.iter().collect()),
            ("Service", self.services.iter().collect()),
            ("Ingress", self.ingresses.iter().collect()),
            ("NetworkPolicy", self.network_policies.iter().collect()),
            ("PodDisruptionBudget", self.pdbs.iter().collect()),
            ("HTTPRoute", self.http_routes.iter().collect()),
        ];
        let mut hasher = std::hash::DefaultHasher::new();
        for (kind, objects) in kinds {
            let mut versions: Vec<(&Option<String>, &Option<String>)> = objects
                .iter()
                .map(|m| (&m.name, &m.resource_version))
                .collect();
            versions.sort();
            (kind, versions).hash(&mut hasher);
        }
        hasher.finish()
    }
}

async fn list_metadata<K>(
    client: &Client,
    namespace: &str,
    selector: &ListParams,
    served: bool,
) -> Result<Vec<ObjectMeta>>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope> + Clone + DeserializeOwned + Debug,
    K::DynamicType: Default,
{
    if !served {
        return Ok(Vec::new());
    }
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let list = api.list_metadata(selector).await?;
    Ok(list.items.into_iter().map(|o| o.metadata).collect())
}

/// One list per kind (metadata only where the controller needs no more), and the entry
/// Service.
async fn observe_children(
    client: &Client,
    namespace: &str,
    app: &MessengerApp,
    caps: ApiCapabilities,
) -> Result<FoundChildren> {
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    let jobs: Api<Job> = Api::namespaced(client.clone(), namespace);
    let services: Api<Service> = Api::namespaced(client.clone(), namespace);
    let selector = ListParams::default().labels(&app_children_selector(app));
    let entry_name = entry_service_name(app);
    let (list, job_list, entry) = futures::try_join!(
        deployments.list(&selector),
        jobs.list(&selector),
        services.get_opt(&entry_name)
    )?;
    let (service_accounts, config_maps, services, ingresses, network_policies, pdbs, http_routes) =
        futures::try_join!(
            list_metadata::<ServiceAccount>(client, namespace, &selector, true),
            list_metadata::<ConfigMap>(client, namespace, &selector, true),
            list_metadata::<Service>(client, namespace, &selector, true),
            list_metadata::<Ingress>(client, namespace, &selector, true),
            list_metadata::<NetworkPolicy>(client, namespace, &selector, true),
            list_metadata::<PodDisruptionBudget>(client, namespace, &selector, caps.pdb_v1),
            list_metadata::<HTTPRoute>(client, namespace, &selector, caps.http_route),
        )?;
    Ok(FoundChildren {
        deployments: list.items,
        jobs: job_list.items,
        entry,
        service_accounts,
        config_maps,
        services,
        ingresses,
        network_policies,
        pdbs,
        http_routes,
    })
}

/// Which migration Jobs to delete and which to create: a desired Job that does not exist
/// is created; one that failed while its slot waits for migrations again (`retry`) is
/// deleted and created anew. Existing Jobs are never updated: their name carries the
/// revision, so a changed template is always a new Job.
pub fn plan_migration_jobs<'a>(
    desired: &'a [Job],
    status: &MessengerAppStatus,
    observed: &std::collections::BTreeMap<String, JobState>,
) -> (Vec<&'a Job>, Vec<&'a Job>) {
    let pending = |job: &Job| {
        let slot = job.labels().get(LABEL_SLOT);
        status.slots.iter().any(|s| {
            slot.is_some_and(|label| label == s.name.as_str())
                && s.migrations == Some(MigrationPhase::Pending)
        })
    };
    let rerun: Vec<&Job> = desired
        .iter()
        .filter(|job| observed.get(&job.name_any()) == Some(&JobState::Failed) && pending(job))
        .collect();
    let create = desired
        .iter()
        .filter(|job| {
            !observed.contains_key(&job.name_any())
                || rerun.iter().any(|r| r.name_any() == job.name_any())
        })
        .collect();
    (rerun, create)
}

async fn run_migration_jobs(
    client: &Client,
    namespace: &str,
    desired: &[Job],
    status: &MessengerAppStatus,
    observed: &std::collections::BTreeMap<String, JobState>,
) -> Result<()> {
    let api: Api<Job> = Api::namespaced(client.clone(), namespace);
    let (rerun, create) = plan_migration_jobs(desired, status, observed);
    for job in rerun {
        info!(job = %job.name_any(), "deleting a failed migration Job to run it again");
        match api
            .delete(&job.name_any(), &DeleteParams::background())
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    for job in create {
        match api.create(&PostParams::default(), job).await {
            Ok(_) => info!(job = %job.name_any(), "created a migration Job"),
            // Still being deleted, or created by a concurrent reconcile: the next one sees it.
            Err(kube::Error::Api(status)) if status.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Writes the status when it changed, publishes Events for transitions, updates the phase gauge.
async fn finish(
    app: &MessengerApp,
    ctx: &Context,
    namespace: &str,
    status: MessengerAppStatus,
    actions: &[RolloutAction],
) -> Result<()> {
    if let Some(phase) = status.phase {
        ctx.metrics.set_phase(namespace, &app.name_any(), phase);
    }
    if app.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let mut events = transitions(app.status.as_ref(), &status);
    events.extend(actions.iter().filter_map(rollout_event));
    write_status(&ctx.client, namespace, app, &status).await?;
    publish(ctx, app, &events).await;
    Ok(())
}

async fn write_status(
    client: &Client,
    namespace: &str,
    app: &MessengerApp,
    status: &MessengerAppStatus,
) -> Result<()> {
    let api: Api<MessengerApp> = Api::namespaced(client.clone(), namespace);
    // The resourceVersion the status was computed from: if the app changed since (another
    // writer, or this decision came from a stale cache), the write fails with a conflict
    // and the next reconcile decides again, so a rollout never moves backwards.
    let patch = serde_json::json!({
        "apiVersion": MessengerApp::api_version(&()),
        "kind": MessengerApp::kind(&()),
        "metadata": {"resourceVersion": app.resource_version()},
        "status": status,
    });
    api.patch_status(
        &app.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await?;
    Ok(())
}

async fn publish(ctx: &Context, app: &MessengerApp, events: &[Transition]) {
    let reference = app.object_ref(&());
    let recorder = Recorder::new(ctx.client.clone(), ctx.reporter.clone());
    for transition in events {
        let event = Event {
            type_: if transition.warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: transition.reason.clone(),
            note: Some(transition.note.chars().take(1000).collect()),
            action: "Reconcile".to_owned(),
            secondary: None,
        };
        // An Event is a courtesy; failing to write one must not fail the reconcile.
        if let Err(error) = recorder.publish(&event, &reference).await {
            warn!(%error, reason = %transition.reason, "could not publish event");
        }
    }
}

async fn apply<K>(client: &Client, namespace: &str, object: &K) -> Result<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + Debug
        + Serialize
        + DeserializeOwned,
    K::DynamicType: Default,
{
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    Ok(api
        .patch(&object.name_any(), &params, &Patch::Apply(object))
        .await?)
}

/// Creates the app's internal-trust key Secret unless it exists. Only ever a create: an
/// existing Secret (ours from an earlier reconcile, or one the user made with that name to
/// bring their own key) is left exactly as it is, so running pods and new pods always agree
/// on the key, and the operator never needs to read Secrets.
pub async fn ensure_internal_key(
    client: &Client,
    namespace: &str,
    app: &MessengerApp,
) -> Result<()> {
    use rand::RngCore;
    let mut key = [0u8; INTERNAL_KEY_BYTES];
    rand::rng().fill_bytes(&mut key);
    let secret = build_internal_key_secret(app, &key);
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    match api.create(&PostParams::default(), &secret).await {
        Ok(_) => {
            info!(secret = %secret.name_any(), "created the internal-trust key");
            Ok(())
        }
        Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// An Event for a rollout step a person would want to see.
fn rollout_event(action: &RolloutAction) -> Option<Transition> {
    let (warning, reason, note) = match action {
        RolloutAction::RecoveredActiveSlot(slot) => (
            true,
            "ActiveSlotRecovered",
            format!("status had no activeSlot; the entry Service selects {slot}"),
        ),
        RolloutAction::AdoptedStableRevision(revision) => (
            false,
            "RevisionAdopted",
            format!("the running slot was recorded as revision {revision}"),
        ),
        RolloutAction::Started {
            candidate,
            revision,
        } => (
            false,
            "RolloutStarted",
            format!("rolling out revision {revision} into slot {candidate}"),
        ),
        RolloutAction::Restarted { revision } => (
            false,
            "RolloutRestarted",
            format!("the spec changed mid-rollout; starting over with revision {revision}"),
        ),
        RolloutAction::SetWeight(weight) => (
            false,
            "WeightSet",
            format!("candidate slot weight {weight}"),
        ),
        RolloutAction::SetCanaryScale(scale) => (
            false,
            "CanaryScaleSet",
            format!(
                "candidate slot scale {}",
                crate::simulate::describe_scale(scale)
            ),
        ),
        RolloutAction::CanaryScaleReset => (
            false,
            "CanaryScaleReset",
            "candidate slot back to its full replicas before it takes all traffic".to_owned(),
        ),
        RolloutAction::Paused(why) => (false, "RolloutPaused", why.clone()),
        RolloutAction::Promoted { stable } => (
            false,
            "Promoted",
            format!("slot {stable} serves all traffic"),
        ),
        RolloutAction::Aborted(reason) => (
            true,
            "RolloutAborted",
            format!("{reason}: all traffic back on the stable slot"),
        ),
        RolloutAction::Retried => (false, "RolloutRetried", "retrying the rollout".to_owned()),
        RolloutAction::RolledBack => (
            false,
            "RolledBack",
            "the spec is back at the stable revision; traffic stays there".to_owned(),
        ),
        RolloutAction::ScaledDown(slot) => (
            false,
            "SlotScaledDown",
            format!("slot {slot} scaled to zero"),
        ),
        RolloutAction::Acknowledged(command) => (false, "CommandAcknowledged", command.clone()),
        RolloutAction::Ignored(why) => (false, "CommandIgnored", why.clone()),
        RolloutAction::Analysis(verdict) => (
            *verdict != crate::rollout::Verdict::Successful,
            "AnalysisRun",
            format!("analysis verdict: {verdict:?}"),
        ),
        RolloutAction::MigrationsSucceeded(slot) => (
            false,
            "MigrationsSucceeded",
            format!("the migration Jobs of slot {slot} completed; its pods start"),
        ),
        RolloutAction::MigrationFailed { slot, job } => (
            true,
            "MigrationFailed",
            format!(
                "migration Job {job} of slot {slot} failed (kubectl logs job/{job}); the slot does not start"
            ),
        ),
    };
    Some(Transition {
        warning,
        reason: reason.to_owned(),
        note,
    })
}

/// Applies every child: workloads, then traffic (tests and the benchmark use this).
pub async fn apply_children(
    client: &Client,
    namespace: &str,
    children: &Children,
) -> Result<Vec<Deployment>> {
    let deployments = apply_workloads(client, namespace, children).await?;
    apply_traffic(client, namespace, children).await?;
    Ok(deployments)
}

/// Applies the entry/preview Services, Ingresses and HTTPRoutes: what moves users.
pub async fn apply_traffic(client: &Client, namespace: &str, children: &Children) -> Result<()> {
    let mut traffic: Vec<BoxFuture<'_, Result<()>>> = Vec::new();
    traffic.extend(
        children
            .traffic_services
            .iter()
            .map(|o| apply_discard(client, namespace, o)),
    );
    traffic.extend(
        children
            .ingresses
            .iter()
            .map(|o| apply_discard(client, namespace, o)),
    );
    traffic.extend(
        children
            .http_routes
            .iter()
            .map(|o| apply_discard(client, namespace, o)),
    );
    try_join_all(traffic).await?;
    Ok(())
}

/// Applies every slot's workloads with server-side apply; returns the Deployments as stored
/// (with status).
pub async fn apply_workloads(
    client: &Client,
    namespace: &str,
    children: &Children,
) -> Result<Vec<Deployment>> {
    // Applies within a stage run concurrently (one round trip of latency instead of ~20).
    // Stage 1 is what pods reference (ServiceAccount, ConfigMap), so pods never start
    // without it.
    let mut stage_one: Vec<BoxFuture<'_, Result<()>>> = Vec::new();
    stage_one.extend(
        children
            .service_accounts
            .iter()
            .map(|o| apply_discard(client, namespace, o)),
    );
    stage_one.extend(
        children
            .config_maps
            .iter()
            .map(|o| apply_discard(client, namespace, o)),
    );
    try_join_all(stage_one).await?;

    let deployments = try_join_all(
        children
            .deployments
            .iter()
            .map(|d| apply(client, namespace, d)),
    );
    let mut rest: Vec<BoxFuture<'_, Result<()>>> = Vec::new();
    rest.extend(
        children
            .services
            .iter()
            .map(|o| apply_discard(client, namespace, o)),
    );
    rest.extend(
        children
            .pdbs
            .iter()
            .map(|o| apply_discard(client, namespace, o)),
    );
    rest.extend(
        children
            .network_policies
            .iter()
            .map(|o| apply_discard(client, namespace, o)),
    );
    let (observed, _) = futures::try_join!(deployments, try_join_all(rest))?;
    Ok(observed)
}

fn apply_discard<'a, K>(
    client: &'a Client,
    namespace: &'a str,
    object: &'a K,
) -> BoxFuture<'a, Result<()>>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + Debug
        + Serialize
        + DeserializeOwned
        + Send
        + Sync,
    K::DynamicType: Default,
{
    Box::pin(async move { apply(client, namespace, object).await.map(|_| ()) })
}

async fn prune<K>(
    client: &Client,
    namespace: &str,
    app: &MessengerApp,
    existing: &[&ObjectMeta],
    desired: &[K],
    protected: &[Slot],
) -> Result<()>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + Debug
        + Serialize
        + DeserializeOwned,
    K::DynamicType: Default,
{
    let keep: BTreeSet<String> = desired.iter().map(|o| o.name_any()).collect();
    let api: Api<K> = Api::namespaced(client.clone(), namespace);
    let uid = app.uid().unwrap_or_default();
    for object in existing {
        let owned = object
            .owner_references
            .iter()
            .flatten()
            .any(|o| o.uid == uid && o.controller == Some(true));
        let name = object.name.clone().unwrap_or_default();
        // Whatever the status says, the objects of the serving slot are never deleted.
        let serving = object
            .labels
            .as_ref()
            .and_then(|labels| labels.get(LABEL_SLOT))
            .is_some_and(|slot| protected.iter().any(|p| p.as_str() == slot));
        if owned && !serving && !keep.contains(&name) {
            info!(kind = %K::kind(&Default::default()), %name, "deleting child that is no longer desired");
            match api.delete(&name, &DeleteParams::background()).await {
                Ok(_) => {}
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(())
}

/// Deletes children of this app (by label and controller ownerReference) that the current
/// spec no longer asks for: PDBs after scaling to one replica, a removed Ingress, the
/// Ingress/HTTPRoute after switching routers, another slot's objects. `found` is what this
/// reconcile listed before applying; what it applied is desired, so never deleted.
async fn prune_children(
    client: &Client,
    namespace: &str,
    app: &MessengerApp,
    children: &Children,
    found: &FoundChildren,
) -> Result<()> {
    let keep = &children.protected_slots;
    let services: Vec<Service> = children
        .services
        .iter()
        .chain(&children.traffic_services)
        .cloned()
        .collect();
    fn metas(list: &[ObjectMeta]) -> Vec<&ObjectMeta> {
        list.iter().collect()
    }
    let found_deployments: Vec<&ObjectMeta> =
        found.deployments.iter().map(|d| &d.metadata).collect();
    let found_jobs: Vec<&ObjectMeta> = found.jobs.iter().map(|j| &j.metadata).collect();
    let (accounts, maps, found_services, ingresses, policies, pdbs, routes) = (
        metas(&found.service_accounts),
        metas(&found.config_maps),
        metas(&found.services),
        metas(&found.ingresses),
        metas(&found.network_policies),
        metas(&found.pdbs),
        metas(&found.http_routes),
    );
    futures::try_join!(
        prune(
            client,
            namespace,
            app,
            &accounts,
            &children.service_accounts,
            keep
        ),
        prune(client, namespace, app, &maps, &children.config_maps, keep),
        prune(
            client,
            namespace,
            app,
            &found_deployments,
            &children.deployments,
            keep
        ),
        prune(client, namespace, app, &found_services, &services, keep),
        prune(
            client,
            namespace,
            app,
            &ingresses,
            &children.ingresses,
            keep
        ),
        prune(
            client,
            namespace,
            app,
            &policies,
            &children.network_policies,
            keep
        ),
        prune(client, namespace, app, &found_jobs, &children.jobs, keep),
        prune(client, namespace, app, &pdbs, &children.pdbs, keep),
        prune(client, namespace, app, &routes, &children.http_routes, keep),
    )?;
    Ok(())
}

/// Drops from a MessengerApp what the controller never reads, before the cache keeps it:
/// `managedFields`, labels, owner references, finalizers and every annotation but the
/// rollout commands (`kubectl apply` alone leaves a copy of the whole spec in one).
pub fn strip_unread(app: &mut MessengerApp) {
    let meta = &mut app.metadata;
    meta.managed_fields = None;
    meta.labels = None;
    meta.owner_references = None;
    meta.finalizers = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.retain(|name, _| COMMANDS.contains(&name.as_str()));
        if annotations.is_empty() {
            meta.annotations = None;
        }
    }
}

/// Runs the controller until `shutdown` resolves: watches MessengerApps (in `namespace`, or
/// all) and the children it owns (filtered by the managed-by label).
pub async fn run_controller(
    ctx: Arc<Context>,
    namespace: Option<String>,
    caps: ApiCapabilities,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        K::DynamicType: Default,
    {
        match namespace {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        }
    }
    let client = ctx.client.clone();
    let metrics = ctx.metrics.clone();
    let ns = namespace.as_deref();
    // The owned kinds are watched metadata-only (kube's `owns`), cached nowhere: their events
    // only name the app to reconcile. The apps are the one cache; it holds them stripped.
    let owned = watcher::Config::default()
        .labels(&format!("{LABEL_MANAGED_BY}={MANAGED_BY}"))
        .page_size(CHILD_PAGE_SIZE);
    let (reader, writer) = reflector::store();
    let apps = reflector(
        writer,
        watcher(
            api::<MessengerApp>(&client, ns),
            watcher::Config::default().page_size(APP_PAGE_SIZE),
        )
        .modify(strip_unread),
    )
    .applied_objects();
    let mut controller = Controller::for_stream(apps, reader)
        .with_config(controller::Config::default().concurrency(RECONCILE_CONCURRENCY))
        .owns(api::<Deployment>(&client, ns), owned.clone())
        .owns(api::<Service>(&client, ns), owned.clone())
        .owns(api::<ConfigMap>(&client, ns), owned.clone())
        .owns(api::<ServiceAccount>(&client, ns), owned.clone())
        .owns(api::<Ingress>(&client, ns), owned.clone())
        .owns(api::<NetworkPolicy>(&client, ns), owned.clone())
        .owns(api::<Job>(&client, ns), owned.clone());
    // Watching a kind the server does not serve would fail forever.
    if caps.pdb_v1 {
        controller = controller.owns(api::<PodDisruptionBudget>(&client, ns), owned.clone());
    }
    if caps.http_route {
        controller = controller.owns(api::<HTTPRoute>(&client, ns), owned.clone());
    }
    // Deleted apps trigger no reconcile; sweep their phase series against the cache.
    let store = controller.store();
    let sweep_metrics = metrics.clone();
    let sweep = async move {
        if store.wait_until_ready().await.is_err() {
            // The controller is gone; let it end the select below.
            return std::future::pending().await;
        }
        let mut tick = tokio::time::interval(METRICS_SWEEP);
        loop {
            tick.tick().await;
            sweep_metrics.forget_missing(|namespace, name| {
                store.get(&ObjectRef::new(name).within(namespace)).is_some()
            });
        }
    };
    let results_ctx = ctx.clone();
    let run = controller
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| {
            let metrics = metrics.clone();
            let ctx = results_ctx.clone();
            async move {
                match result {
                    Ok((object, _)) => tracing::debug!(app = %object.name, "reconciled"),
                    // Reconcile failures were logged by `error_policy`.
                    Err(kube::runtime::controller::Error::ReconcilerFailed(..)) => {}
                    // A deleted app: its phase series must not linger.
                    Err(kube::runtime::controller::Error::ObjectNotFound(object)) => {
                        let namespace = object.namespace.as_deref().unwrap_or_default();
                        metrics.forget_app(namespace, &object.name);
                        ctx.forget_app(&format!("{namespace}/{}", object.name));
                    }
                    // Watch failures (RBAC, connectivity) surface only here.
                    Err(error) => warn!(%error, "controller error"),
                }
            }
        });
    tokio::select! {
        _ = run => {}
        _ = sweep => {}
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::registry::Registry;

    use super::*;
    use crate::crd::MessengerAppSpec;
    use crate::fake_api::{FakeBehaviour, fake_client};

    fn app() -> Arc<MessengerApp> {
        let spec: MessengerAppSpec = serde_json::from_value(
            serde_json::json!({"version": "1.0.0", "dependencies": {"chatInMemory": true}}),
        )
        .unwrap();
        let mut app = MessengerApp::new("demo", spec);
        app.metadata.namespace = Some("ns".into());
        app.metadata.uid = Some("uid-1".into());
        app.metadata.generation = Some(1);
        Arc::new(app)
    }

    fn context(behaviour: FakeBehaviour) -> (Arc<Context>, Arc<crate::fake_api::FakeApiStats>) {
        let (client, stats) = fake_client(behaviour);
        let metrics = Metrics::register(&mut Registry::default());
        (
            Arc::new(Context::new(client, metrics, None).with_capabilities(ApiCapabilities::ALL)),
            stats,
        )
    }

    #[tokio::test]
    async fn an_app_being_deleted_is_left_to_garbage_collection() {
        let (ctx, stats) = context(FakeBehaviour::Healthy);
        let mut app = (*app()).clone();
        app.metadata.deletion_timestamp = Some(Time(Timestamp::now()));
        let action = reconcile(Arc::new(app), ctx).await.expect("reconcile");
        assert_eq!(action, Action::await_change());
        assert_eq!(stats.total(), 0, "nothing is applied, pruned or written");
    }

    #[test]
    fn the_cached_app_keeps_the_rollout_commands_and_drops_the_rest_of_its_metadata() {
        let mut app = (*app()).clone();
        app.metadata.annotations = Some(
            [
                (crate::rollout::ANNOTATION_PROMOTE, "3"),
                (
                    "kubectl.kubernetes.io/last-applied-configuration",
                    "{\"spec\":{}}",
                ),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
        );
        app.metadata.labels = Some([("team".to_owned(), "chat".to_owned())].into());
        app.metadata.managed_fields = Some(vec![Default::default()]);
        let before = app.clone();
        strip_unread(&mut app);
        assert_eq!(
            app.annotations().keys().collect::<Vec<_>>(),
            [crate::rollout::ANNOTATION_PROMOTE],
            "a promote given with an annotation still reaches the state machine"
        );
        assert!(app.metadata.managed_fields.is_none() && app.metadata.labels.is_none());
        assert_eq!(
            (app.spec.clone(), app.uid(), app.meta().generation),
            (before.spec.clone(), before.uid(), before.meta().generation)
        );
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let secs: Vec<u64> = [1, 2, 3, 4, 9, 10, 100]
            .into_iter()
            .map(|n| backoff(n).as_secs())
            .collect();
        assert_eq!(secs, [1, 2, 4, 8, 256, 300, 300]);
    }

    /// A failing API server (500s) is the one case the real test server cannot produce.
    #[tokio::test]
    async fn server_errors_are_retried_with_growing_backoff_and_counted() {
        let (ctx, _) = context(FakeBehaviour::FailWrites);
        let app = app();
        let mut delays = Vec::new();
        for _ in 0..3 {
            let error = reconcile(app.clone(), ctx.clone())
                .await
                .expect_err("writes fail");
            assert!(!error.is_rejection(), "a 500 is transient: {error}");
            delays.push(error_policy(app.clone(), &error, ctx.clone()));
        }
        let expected: Vec<Action> = [1, 2, 4]
            .into_iter()
            .map(|s| Action::requeue(Duration::from_secs(s)))
            .collect();
        assert_eq!(delays, expected);
        assert_eq!(ctx.metrics.reconciles.get(), 3);
        assert_eq!(
            ctx.metrics
                .failures
                .get_or_create(&crate::metrics::ErrorLabels {
                    error: "api".into()
                })
                .get(),
            3
        );

        // Once the server recovers, a success resets the backoff.
        let (healthy, stats) = context(FakeBehaviour::Healthy);
        let recovered = Arc::new(Context {
            failures: Mutex::new(ctx.failures.lock().unwrap().clone()),
            ..Arc::into_inner(healthy).unwrap()
        });
        reconcile(app.clone(), recovered.clone())
            .await
            .expect("healthy server");
        assert!(stats.total() > 0);
        let error = Error::LeaderElection("synthetic".into());
        assert_eq!(
            error_policy(app, &error, recovered),
            Action::requeue(Duration::from_secs(1))
        );
    }

    #[tokio::test]
    async fn one_reconcile_applies_every_child_prunes_every_kind_and_writes_status_once() {
        let (ctx, stats) = context(FakeBehaviour::Healthy);
        let app = app();
        let action = reconcile(app.clone(), ctx.clone())
            .await
            .expect("reconcile");
        let children = crate::builders::build_children(&app, ApiCapabilities::ALL).count();
        use std::sync::atomic::Ordering::Relaxed;
        assert_eq!(
            stats.patches.load(Relaxed),
            children + 1,
            "every child plus the status"
        );
        assert_eq!(
            stats.lists.load(Relaxed),
            9,
            "one list per kind, read before anything is applied"
        );
        assert_eq!(
            stats.creates.load(Relaxed),
            1,
            "the internal-trust key Secret is created, never applied"
        );
        assert_eq!(
            action,
            Action::requeue(RESYNC_PROGRESSING),
            "nothing is ready behind a fake"
        );
        let phase = crate::metrics::PhaseLabels {
            namespace: "ns".into(),
            name: "demo".into(),
            phase: "Progressing".into(),
        };
        assert_eq!(ctx.metrics.app_phase.get_or_create(&phase).get(), 1);
    }

    /// Applies, status writes and creates (the fake lists nothing, so nothing is deleted).
    fn writes(stats: &crate::fake_api::FakeApiStats) -> usize {
        use std::sync::atomic::Ordering::Relaxed;
        stats.patches.load(Relaxed) + stats.creates.load(Relaxed)
    }

    #[tokio::test]
    async fn a_reconcile_of_an_unchanged_app_only_reads() {
        use std::sync::atomic::Ordering::Relaxed;
        let (ctx, stats) = context(FakeBehaviour::Healthy);
        reconcile(app(), ctx.clone()).await.expect("first");
        assert!(
            writes(&stats) > 0,
            "the first reconcile applies the children"
        );
        // The app as the watch brings it back: with the status just written. The fake
        // stores nothing, so the children it lists are the same (none) as the first time.
        let written = stats.last_status.lock().unwrap().clone().expect("a status");
        let mut app = (*app()).clone();
        app.status = Some(serde_json::from_value(written).expect("status"));
        let (writes_before, lists_before) = (writes(&stats), stats.lists.load(Relaxed));
        reconcile(Arc::new(app), ctx.clone()).await.expect("second");
        assert_eq!(
            writes(&stats) - writes_before,
            0,
            "nothing is applied, created or written again"
        );
        assert_eq!(
            stats.lists.load(Relaxed) - lists_before,
            9,
            "it still lists every kind, to see whether anything changed"
        );
    }

    #[tokio::test]
    async fn a_changed_spec_is_applied_again() {
        let (ctx, stats) = context(FakeBehaviour::Healthy);
        let app = app();
        reconcile(app.clone(), ctx.clone()).await.expect("first");
        let first = writes(&stats);
        let mut changed = (*app).clone();
        changed.spec.version = "1.0.1".into();
        reconcile(Arc::new(changed), ctx.clone())
            .await
            .expect("second");
        let children = crate::builders::build_children(&app, ApiCapabilities::ALL).count();
        assert!(
            writes(&stats) - first > children,
            "every child is applied again with the new version"
        );
    }
}
