//! The `MessengerApp` custom resource (`messenger.dev/v1alpha1`): spec, status and the
//! schema the API server validates against. Cross-field rules are CEL
//! (`x-kubernetes-validations`); `validate.rs` checks the same rules in the operator because
//! older API servers (< 1.25) ignore CEL.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, EnvVar, ResourceRequirements, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A whole messenger deployment: five components at one version, wired to each other.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "messenger.dev",
    version = "v1alpha1",
    kind = "MessengerApp",
    namespaced,
    shortname = "ma",
    status = "MessengerAppStatus",
    doc = "A messenger backend (gateway, auth, users, friends, chat) reconciled into Deployments, Services, ConfigMaps and an entry route",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Stable", type_ = "string", json_path = ".status.stableVersion"),
    printcolumn(name = "Candidate", type_ = "string", json_path = ".status.rollout.version"),
    printcolumn(name = "Step", type_ = "string", json_path = ".status.rollout.step", priority = 1),
    printcolumn(name = "Weight", type_ = "integer", json_path = ".status.rollout.weight"),
    printcolumn(name = "Active", type_ = "string", json_path = ".status.activeSlot"),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.readyComponents"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    // Child names append up to 14 characters ("-friends-green") and Services are DNS labels.
    validation = Rule::new("self.metadata.name.size() <= 40").message("metadata.name must be at most 40 characters"),
    // On the root because `dependencies` itself may be absent.
    validation = Rule::new("has(self.spec.dependencies) && (has(self.spec.dependencies.mongodb) || (has(self.spec.dependencies.chatInMemory) && self.spec.dependencies.chatInMemory))").message("spec.dependencies.mongodb is required: chat keeps its chats there (or set spec.dependencies.chatInMemory: true, chats lost on restart)")
)]
#[serde(rename_all = "camelCase")]
pub struct MessengerAppSpec {
    /// Image tag every component runs, e.g. `1.4.2`. Also the `app.kubernetes.io/version`
    /// label of every child, so at most 63 characters, starting and ending alphanumeric.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[A-Za-z0-9]([A-Za-z0-9_.-]*[A-Za-z0-9])?$")
    )]
    pub version: String,
    #[serde(default)]
    pub image: ImageSpec,
    #[serde(default)]
    pub components: ComponentsSpec,
    #[serde(default)]
    pub dependencies: DependenciesSpec,
    /// Extra settings written into each slot's ConfigMap (and so into every component's
    /// environment). Keys must be environment variable names.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub config: BTreeMap<String, String>,
    /// `RUST_LOG` filter for all components.
    #[serde(default = "default_log_level")]
    pub log_level: String,
    /// How clients reach the gateway from outside the cluster; absent means in-cluster only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<IngressSpec>,
    #[serde(default)]
    pub strategy: StrategySpec,
    /// Database migrations of auth, users and friends.
    #[serde(default, skip_serializing_if = "MigrationsSpec::is_default")]
    pub migrations: MigrationsSpec,
    /// Holds a rollout where it is: no step advances, nothing is promoted automatically.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub paused: bool,
}

fn default_log_level() -> String {
    "info".to_owned()
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ImageSpec {
    /// Registry and path prefix; the image is `<registry>/messenger-<component>:<version>`.
    #[serde(default = "default_registry")]
    pub registry: String,
    #[serde(default)]
    pub pull_policy: PullPolicy,
    /// Names of Secrets of type `kubernetes.io/dockerconfigjson` in the app's namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pull_secrets: Vec<String>,
}

impl Default for ImageSpec {
    fn default() -> Self {
        Self {
            registry: default_registry(),
            pull_policy: PullPolicy::default(),
            pull_secrets: Vec::new(),
        }
    }
}

fn default_registry() -> String {
    "ghcr.io/messenger".to_owned()
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum PullPolicy {
    Always,
    #[default]
    IfNotPresent,
    Never,
}

impl PullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ComponentsSpec {
    #[serde(default)]
    pub gateway: ComponentSpec,
    #[serde(default)]
    pub auth: ComponentSpec,
    #[serde(default)]
    pub users: ComponentSpec,
    #[serde(default)]
    pub friends: ComponentSpec,
    #[serde(default)]
    pub chat: ComponentSpec,
}

/// Settings of one component; every field is optional.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ComponentSpec {
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 100))]
    pub replicas: i32,
    /// Requests and limits; absent means the operator's defaults (50m CPU, 64Mi request; 256Mi limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Full image reference replacing `<registry>/messenger-<component>:<version>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Extra environment variables (e.g. `AUTH_TOKEN_TTL`); they must not redefine the
    /// variables the operator wires (addresses, connection URLs, peers).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
}

impl Default for ComponentSpec {
    fn default() -> Self {
        Self {
            replicas: default_replicas(),
            resources: None,
            image: None,
            env: Vec::new(),
            node_selector: BTreeMap::new(),
            tolerations: Vec::new(),
            affinity: None,
        }
    }
}

fn default_replicas() -> i32 {
    1
}

/// A key in a Secret in the app's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// Connection settings of the backing services, as Secret references. An absent reference
/// leaves the variable unset, so the component falls back to its built-in default.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.mongodb) && has(self.chatInMemory) && self.chatInMemory)").message("spec.dependencies: chatInMemory and mongodb contradict each other; keep one"))]
pub struct DependenciesSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postgres: Option<PostgresSpec>,
    /// `REDIS_URL` for auth, users, friends and chat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redis: Option<SecretKeyRef>,
    /// `MONGODB_URI` for chat. Required unless `chatInMemory` asks for the opposite.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mongodb: Option<SecretKeyRef>,
    /// Run chat without MongoDB, on each pod's memory: every replica has its own chats and
    /// loses them when it restarts or a rollout replaces it. For trying the operator only;
    /// an app with neither this nor `mongodb` is refused, so nobody loses chats by omission.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub chat_in_memory: bool,
    /// `KAFKA_BROKERS` for auth, users, friends and chat.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka: Option<SecretKeyRef>,
}

/// `DATABASE_URL` for auth, users and friends: one shared URL, per-service URLs, or both
/// (per-service wins).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.shared) || (has(self.auth) && has(self.users) && has(self.friends))").message("postgres needs `shared` or all of `auth`, `users` and `friends`"))]
pub struct PostgresSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared: Option<SecretKeyRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<SecretKeyRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub users: Option<SecretKeyRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub friends: Option<SecretKeyRef>,
}

/// How auth, users and friends migrate their PostgreSQL schemas. By default each pod
/// migrates at start-up; with `enabled`, a Job per service runs the slot's migrations
/// (`messenger-<service> migrate`) before any of the slot's Deployments exist, its pods
/// start with `MIGRATE_ON_START=false`, and a failed Job aborts the rollout before any
/// traffic moves. Part of what a slot is rendered from: turning it on or off is a rollout.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MigrationsSpec {
    /// Run migrations as Jobs before the slot starts (default false: pods migrate at start-up).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub enabled: bool,
    /// Retries of a failed migration pod before its Job fails (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 10))]
    pub backoff_limit: Option<i32>,
    /// A migration Job still running after this long fails (default 600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub active_deadline_seconds: Option<i64>,
}

impl MigrationsSpec {
    pub fn is_default(&self) -> bool {
        *self == MigrationsSpec::default()
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.router != 'gatewayAPI' || has(self.gatewayRef)").message("router gatewayAPI needs gatewayRef"),
    validation = Rule::new("!has(self.tlsSecretName) || self.router != 'gatewayAPI'").message("with gatewayAPI, TLS is configured on the Gateway, not with tlsSecretName")
)]
pub struct IngressSpec {
    /// Public host name, e.g. `messenger.local`.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub host: String,
    /// IngressClass name (`ingressNginx`, `none`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_name: Option<String>,
    /// Secret with the TLS certificate for `host` (`ingressNginx`, `none`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls_secret_name: Option<String>,
    #[serde(default)]
    pub router: TrafficRouter,
    /// The Gateway the HTTPRoute attaches to (`gatewayAPI`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_ref: Option<GatewayRef>,
}

/// What moves traffic between slots: an HTTPRoute with weighted backends, an nginx canary
/// Ingress, or nothing but replica counts behind one Service.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum TrafficRouter {
    #[serde(rename = "gatewayAPI")]
    GatewayApi,
    #[default]
    #[serde(rename = "ingressNginx")]
    IngressNginx,
    #[serde(rename = "none")]
    None,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GatewayRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Defaults to the app's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub section_name: Option<String>,
}

/// How a new version is rolled out. The fields are accepted now; the rollout itself is the
/// next step of the operator (until then a version change updates the stable slot in place).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.type != 'Canary' || (has(self.canary) && size(self.canary.steps) > 0)").message("strategy Canary needs canary.steps"))]
pub struct StrategySpec {
    #[serde(default, rename = "type")]
    pub type_: StrategyType,
    /// A rollout whose new slot is not Available this long after it started aborts
    /// (default 600, as Argo Rollouts' `progressDeadlineSeconds`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub progress_deadline_seconds: Option<i64>,
    /// How long an aborted slot keeps running before it is scaled to zero (default 30).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub abort_scale_down_delay_seconds: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blue_green: Option<BlueGreenStrategy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryStrategy>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum StrategyType {
    #[default]
    BlueGreen,
    Canary,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BlueGreenStrategy {
    /// Switch traffic once the new slot is Available (default true, as Argo Rollouts'
    /// `autoPromotionEnabled`); false waits for `messenger rollout promote`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_promote: Option<bool>,
    /// With auto-promotion: how long the new slot must have been Available first (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub auto_promote_after_seconds: Option<i64>,
    /// How long the old slot keeps running after the switch, for an instant switch-back
    /// (default 30, as Argo Rollouts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub scale_down_delay_seconds: Option<i64>,
    /// Extra host that reaches the new slot before the switch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview_host: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CanaryStrategy {
    #[serde(default)]
    pub steps: Vec<CanaryStep>,
    /// How long the old slot keeps running after the last step (default 30).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub scale_down_delay_seconds: Option<i64>,
    /// Background analysis: measured during the whole canary once the new slot carries
    /// traffic; a failure (at `failureLimit`) aborts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<CanaryAnalysis>,
    /// Where analyses read the candidate gateways' request metrics: absent, from the pods'
    /// own `/metrics`; set, with PromQL from this Prometheus.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<PrometheusSpec>,
}

/// A Prometheus that scrapes the gateways, queried over its HTTP API.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PrometheusSpec {
    /// Base URL of the HTTP API (plain HTTP), e.g. `http://prometheus.monitoring:9090`.
    #[schemars(length(min = 8, max = 2048), regex(pattern = r"^http://[^\s]+$"))]
    pub url: String,
    /// PromQL label matchers picking the candidate slot's gateway series; `$namespace`,
    /// `$app` and `$slot` are replaced. Default: the pod labels as Prometheus's
    /// `kubernetes-pods` example job copies them (`namespace`, `app_kubernetes_io_instance`,
    /// `app_kubernetes_io_component="gateway"`, `messenger_dev_slot`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub selector: Option<String>,
}

/// One canary step; exactly one field is set.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("[has(self.setWeight), has(self.pause), has(self.analysis), has(self.setCanaryScale)].filter(x, x).size() == 1").message("a canary step sets exactly one of setWeight, pause, analysis, setCanaryScale"))]
pub struct CanaryStep {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 100))]
    pub set_weight: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause: Option<PauseStep>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<CanaryAnalysis>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set_canary_scale: Option<SetCanaryScale>,
}

/// How many pods each component of the candidate slot runs from this step on (until the
/// next `setCanaryScale`; before the new slot takes all traffic it is scaled back to its
/// full replicas). Exactly one field is set. Without any, the candidate runs its full
/// replicas, as Argo Rollouts' canary does without `setCanaryScale`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("[has(self.replicas), has(self.weight), has(self.matchTrafficWeight)].filter(x, x).size() == 1").message("setCanaryScale sets exactly one of replicas, weight, matchTrafficWeight"),
    validation = Rule::new("!has(self.matchTrafficWeight) || self.matchTrafficWeight").message("setCanaryScale.matchTrafficWeight can only be true")
)]
pub struct SetCanaryScale {
    /// Pods per component.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub replicas: Option<i32>,
    /// Percent of each component's replicas (rounded up, at least one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub weight: Option<i32>,
    /// Percent of each component's replicas equal to the candidate's traffic weight, as it
    /// moves (rounded up, at least one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_traffic_weight: Option<bool>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PauseStep {
    /// Absent pauses until promoted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub duration_seconds: Option<i64>,
}

/// Thresholds on the canary gateway's request metrics; a breach aborts the rollout.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CanaryAnalysis {
    /// Highest tolerated share of 5xx responses, 0.0–1.0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub max_error_rate: Option<f64>,
    /// Highest tolerated p99 latency in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_p99_latency_ms: Option<i64>,
    /// Seconds between two measurements (default 60).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub interval_seconds: Option<i64>,
    /// Requests an interval must see for a verdict (default 20); fewer is inconclusive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub min_requests: Option<i64>,
    /// Failed measurements that abort the rollout (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub failure_limit: Option<i32>,
    /// Inconclusive measurements that abort the rollout (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub inconclusive_limit: Option<i32>,
}

/// What the operator observed and decided, written only by the operator.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MessengerAppStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "optional_string_schema")]
    pub phase: Option<Phase>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The slot that serves users.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "optional_slot_schema")]
    pub active_slot: Option<Slot>,
    /// Ready components of the active slot out of five, e.g. `5/5`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_components: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub components: Vec<ComponentStatus>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub slots: Vec<SlotStatus>,
    /// Version of the slot that serves users.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable_version: Option<String>,
    /// The rollout in progress (or aborted), absent when the stable slot runs the spec.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutStatus>,
    /// Rollout commands (annotation values) already carried out, so each acts once.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub acknowledged: BTreeMap<String, String>,
}

/// A rollout of a new revision into the candidate slot.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    pub candidate: Slot,
    /// Revision (hash over all slot inputs) being rolled out.
    pub revision: String,
    pub version: String,
    pub started_at: Time,
    /// Index of the current canary step (BlueGreen: 0).
    #[serde(default)]
    pub step_index: i32,
    /// `2/5`-style progress for the printer column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_started_at: Option<Time>,
    /// Share of traffic on the candidate slot, 0–100.
    #[serde(default)]
    pub weight: i32,
    /// When every component of the candidate slot was first seen Available.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub available_at: Option<Time>,
    /// Why the rollout was aborted; traffic is on the stable slot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aborted_at: Option<Time>,
    #[serde(default)]
    pub analysis: AnalysisCounts,
    /// The candidate gateways' counters at the start of the running measurement.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis_baseline: Option<AnalysisBaseline>,
    /// The same for the background analysis (`strategy.canary.analysis`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub background_baseline: Option<AnalysisBaseline>,
    /// The last `setCanaryScale` step's scale of the candidate slot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary_scale: Option<SetCanaryScale>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisBaseline {
    pub taken_at: Time,
    pub sample: crate::analysis::MetricsSample,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisCounts {
    #[serde(default)]
    pub successful: i32,
    #[serde(default)]
    pub failed: i32,
    #[serde(default)]
    pub inconclusive: i32,
}

/// `Option<Slot>` would render `null` into the enum, which kubectl's client-side validation rejects.
fn optional_slot_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "description": "The slot that serves users.",
        "type": "string",
        "enum": ["blue", "green"],
    })
}

/// Decoded leniently: a value written by a newer operator becomes `Unknown` instead of
/// failing the whole status (the schema is a plain string for the same reason).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, JsonSchema)]
pub enum Phase {
    /// Every component of the stable slot is Available and no rollout is under way.
    #[serde(alias = "Ready")]
    Healthy,
    /// Children are applied and not every component is Available yet, or a rollout moves on.
    Progressing,
    /// A rollout waits for `promote` or `resume`.
    Paused,
    /// The spec is invalid, a child was rejected, or the rollout was aborted; see conditions.
    Degraded,
    #[serde(other)]
    Unknown,
}

impl Phase {
    pub const ALL: [Phase; 4] = [
        Phase::Healthy,
        Phase::Progressing,
        Phase::Paused,
        Phase::Degraded,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Healthy => "Healthy",
            Phase::Progressing => "Progressing",
            Phase::Paused => "Paused",
            Phase::Degraded => "Degraded",
            Phase::Unknown => "Unknown",
        }
    }
}

fn optional_string_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"type": "string"})
}

fn string_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"type": "string"})
}

fn preserved_object_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ComponentStatus {
    pub name: String,
    pub slot: Slot,
    pub desired_replicas: i32,
    pub ready_replicas: i32,
    pub available: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SlotStatus {
    pub name: Slot,
    pub version: String,
    /// Revision of the slot: a hash over all of its recorded inputs, stamped on its pod
    /// templates as `messenger.dev/revision`.
    pub template_hash: String,
    #[schemars(schema_with = "string_schema")]
    pub role: SlotRole,
    /// The inputs the slot is rendered from (version, images, components, dependencies,
    /// config), recorded when the slot was created and never changed afterwards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserved_object_schema")]
    pub template: Option<SlotTemplate>,
    /// Share of user traffic on this slot, 0–100.
    #[serde(default)]
    pub weight: i32,
    /// When this (no longer serving) slot is scaled to zero.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_down_at: Option<Time>,
    /// Scaled to zero; the objects stay for an instant switch-back.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub scaled_down: bool,
    /// The slot's migration Jobs (`spec.migrations.enabled`): its Deployments exist only
    /// once they `Succeeded`; absent when the slot's pods migrate at start-up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "optional_string_schema")]
    pub migrations: Option<MigrationPhase>,
}

/// Where a slot's migration Jobs are. Decoded leniently, as `Phase`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum MigrationPhase {
    /// Jobs created or running.
    Pending,
    /// Every Job completed: the slot's Deployments may start.
    Succeeded,
    /// A Job failed; the slot never starts.
    Failed,
    #[serde(other)]
    Unknown,
}

/// Everything a slot is rendered from. Ingress, strategy and routing are app-wide and
/// stay in the spec.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SlotTemplate {
    pub version: String,
    pub image: ImageSpec,
    pub components: ComponentsSpec,
    pub dependencies: DependenciesSpec,
    #[serde(default)]
    pub config: BTreeMap<String, String>,
    pub log_level: String,
    /// Left out when default, so revisions recorded before the field existed keep their hash.
    #[serde(default, skip_serializing_if = "MigrationsSpec::is_default")]
    pub migrations: MigrationsSpec,
}

impl SlotTemplate {
    pub fn of(spec: &MessengerAppSpec) -> SlotTemplate {
        SlotTemplate {
            version: spec.version.clone(),
            image: spec.image.clone(),
            components: spec.components.clone(),
            dependencies: spec.dependencies.clone(),
            config: spec.config.clone(),
            log_level: spec.log_level.clone(),
            migrations: spec.migrations.clone(),
        }
    }
}

/// One of the two places a whole track (all five components at one version) can run.
#[derive(
    Serialize,
    Deserialize,
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Slot {
    #[default]
    Blue,
    Green,
}

impl Slot {
    pub fn as_str(self) -> &'static str {
        match self {
            Slot::Blue => "blue",
            Slot::Green => "green",
        }
    }

    pub fn other(self) -> Slot {
        match self {
            Slot::Blue => Slot::Green,
            Slot::Green => Slot::Blue,
        }
    }
}

impl std::fmt::Display for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum SlotRole {
    /// Serves users.
    Stable,
    /// Being brought up or tested by a rollout.
    Candidate,
    /// Served before the last switch; kept for the scale-down delay, then scaled to zero.
    Previous,
    /// Written by a newer operator.
    #[serde(other)]
    Unknown,
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    #[test]
    fn minimal_spec_gets_defaults() {
        let spec: MessengerAppSpec =
            serde_json::from_value(serde_json::json!({"version": "1.0.0"})).unwrap();
        assert_eq!(spec.components.chat.replicas, 1);
        assert_eq!(spec.image.registry, "ghcr.io/messenger");
        assert_eq!(spec.strategy.type_, StrategyType::BlueGreen);
        assert_eq!(spec.log_level, "info");
        assert!(spec.ingress.is_none());
    }

    #[test]
    fn crd_carries_names_columns_subresource_and_cel_rules() {
        let crd = serde_json::to_value(MessengerApp::crd()).unwrap();
        assert_eq!(crd["spec"]["names"]["shortNames"][0], "ma");
        assert_eq!(crd["spec"]["scope"], "Namespaced");
        let version = &crd["spec"]["versions"][0];
        assert!(version["subresources"]["status"].is_object());
        let columns: Vec<&str> = version["additionalPrinterColumns"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            columns,
            [
                "Phase",
                "Stable",
                "Candidate",
                "Step",
                "Weight",
                "Active",
                "Ready",
                "Age"
            ]
        );
        let text = serde_json::to_string(&crd).unwrap();
        assert!(text.contains("router gatewayAPI needs gatewayRef"));
        assert!(text.contains("self.metadata.name.size() <= 40"));
    }
}
