//! Pure builders: from a `MessengerApp` and a slot to the exact objects the operator applies.
//! Names are deterministic so server-side apply finds the same objects every time.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMap, ConfigMapEnvSource, Container, ContainerPort, EmptyDirVolumeSource,
    EnvFromSource, EnvVar, EnvVarSource, HTTPGetAction, LocalObjectReference, PodSecurityContext,
    PodSpec, PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile, Secret,
    SecretKeySelector, SecurityContext, Service, ServiceAccount, ServicePort, ServiceSpec, Volume,
    VolumeMount,
};
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule,
    IngressServiceBackend, IngressSpec, IngressTLS, NetworkPolicy, NetworkPolicyIngressRule,
    NetworkPolicyPeer, NetworkPolicyPort, NetworkPolicySpec, ServiceBackendPort,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};
use sha2::{Digest, Sha256};

use crate::component::{Component, INTERNAL_AUTH_KEY_ENV};
use crate::crd::{
    MessengerApp, MessengerAppStatus, MigrationPhase, SecretKeyRef, SetCanaryScale, Slot,
    SlotTemplate, StrategyType, TrafficRouter,
};
use crate::httproute::{HTTPRoute, HttpBackendRef, HttpRouteRule, HttpRouteSpec, ParentReference};
use crate::rollout::revision;

/// The one field manager every server-side apply of the operator uses.
pub const FIELD_MANAGER: &str = "messenger-operator";
pub const LABEL_NAME: &str = "app.kubernetes.io/name";
pub const LABEL_INSTANCE: &str = "app.kubernetes.io/instance";
pub const LABEL_COMPONENT: &str = "app.kubernetes.io/component";
pub const LABEL_VERSION: &str = "app.kubernetes.io/version";
pub const LABEL_PART_OF: &str = "app.kubernetes.io/part-of";
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const LABEL_SLOT: &str = "messenger.dev/slot";
pub const CONFIG_HASH_ANNOTATION: &str = "messenger.dev/config-hash";
/// Hash over all of a slot's inputs, on its Deployments' pod templates.
pub const REVISION_ANNOTATION: &str = "messenger.dev/revision";
pub const NGINX_CANARY: &str = "nginx.ingress.kubernetes.io/canary";
pub const NGINX_CANARY_WEIGHT: &str = "nginx.ingress.kubernetes.io/canary-weight";
/// On a migration Job's pods instead of the component label, so no Service, PodDisruptionBudget
/// or analysis scrape ever selects them; its value is the component.
pub const LABEL_MIGRATION: &str = "messenger.dev/migration";
/// Set to `false` on the pods of a slot whose migrations run as Jobs.
pub const MIGRATE_ON_START_ENV: &str = "MIGRATE_ON_START";
pub const DEFAULT_MIGRATION_BACKOFF_LIMIT: i32 = 1;
pub const DEFAULT_MIGRATION_DEADLINE_SECONDS: i64 = 600;
/// Value of `app.kubernetes.io/managed-by` on every child; the owned-object watches filter on it.
pub const MANAGED_BY: &str = "messenger-operator";
const APP_NAME: &str = "messenger";
/// `app.kubernetes.io/name` of the operator's own pods (config/manager).
pub const OPERATOR_POD_NAME: &str = "messenger-operator";
/// Non-root user of the distroless images.
const RUN_AS_USER: i64 = 65532;

/// Which optional APIs the cluster serves; what is missing is skipped and reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApiCapabilities {
    /// `policy/v1` PodDisruptionBudget (Kubernetes >= 1.21).
    pub pdb_v1: bool,
    /// `gateway.networking.k8s.io/v1` HTTPRoute (Gateway API CRDs installed).
    pub http_route: bool,
}

impl ApiCapabilities {
    pub const ALL: ApiCapabilities = ApiCapabilities {
        pdb_v1: true,
        http_route: true,
    };
}

/// Everything one app should have in the cluster, by kind.
#[derive(Clone, Debug, Default)]
pub struct Children {
    pub service_accounts: Vec<ServiceAccount>,
    pub config_maps: Vec<ConfigMap>,
    pub deployments: Vec<Deployment>,
    pub services: Vec<Service>,
    pub ingresses: Vec<Ingress>,
    pub http_routes: Vec<HTTPRoute>,
    pub pdbs: Vec<PodDisruptionBudget>,
    pub network_policies: Vec<NetworkPolicy>,
    /// Migration Jobs of every slot that migrates through Jobs: created when absent, never
    /// updated (a new revision is a new name), kept for their logs until the slot's
    /// revision is replaced.
    pub jobs: Vec<Job>,
    /// The entry and preview Services: traffic, applied only after the status is written.
    pub traffic_services: Vec<Service>,
    /// Slots whose objects must never be pruned (the serving one, even when unrecorded).
    pub protected_slots: Vec<Slot>,
    /// Objects the spec asks for that the cluster cannot hold (missing APIs).
    pub skipped: Vec<String>,
}

impl Children {
    /// A hash of every object the operator would apply or create: equal hashes, equal
    /// objects. Only compared within one process (the hasher's keys are fixed, not stable
    /// across Rust versions).
    pub fn fingerprint(&self) -> u64 {
        use std::hash::Hasher;
        /// Feeds serialised JSON straight into the hasher.
        struct HashWriter(std::hash::DefaultHasher);
        impl std::io::Write for HashWriter {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.write(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        fn feed<T: serde::Serialize>(writer: &mut HashWriter, objects: &T) {
            // Built objects always serialise (no maps with non-string keys).
            let _ = serde_json::to_writer(&mut *writer, objects);
            writer.0.write_u8(0);
        }
        let mut writer = HashWriter(std::hash::DefaultHasher::new());
        feed(&mut writer, &self.service_accounts);
        feed(&mut writer, &self.config_maps);
        feed(&mut writer, &self.deployments);
        feed(&mut writer, &self.services);
        feed(&mut writer, &self.ingresses);
        feed(&mut writer, &self.http_routes);
        feed(&mut writer, &self.pdbs);
        feed(&mut writer, &self.network_policies);
        feed(&mut writer, &self.jobs);
        feed(&mut writer, &self.traffic_services);
        // What prune spares is part of what a pass does.
        feed(&mut writer, &self.protected_slots);
        writer.0.finish()
    }

    pub fn count(&self) -> usize {
        self.service_accounts.len()
            + self.config_maps.len()
            + self.deployments.len()
            + self.services.len()
            + self.ingresses.len()
            + self.http_routes.len()
            + self.pdbs.len()
            + self.network_policies.len()
            + self.jobs.len()
            + self.traffic_services.len()
    }
}

pub fn workload_name(app: &MessengerApp, component: Component, slot: Slot) -> String {
    format!("{}-{component}-{slot}", app.name_any())
}

/// The migration Job of one component for one slot at one revision. Job names become pod
/// labels (63 characters at most): a 40-character app name leaves room for the first 8
/// characters of the revision.
pub fn migration_job_name(
    app: &MessengerApp,
    component: Component,
    slot: Slot,
    revision: &str,
) -> String {
    let short: String = revision.chars().take(8).collect();
    format!("{}-{component}-{slot}-{short}", app.name_any())
}

/// The components whose schema a slot's migration Jobs apply.
pub fn migrating_components() -> impl Iterator<Item = Component> {
    Component::ALL.into_iter().filter(|c| c.uses_postgres())
}

pub fn config_map_name(app: &MessengerApp, slot: Slot) -> String {
    format!("{}-config-{slot}", app.name_any())
}

/// The Service clients (and the Ingress) use; it selects the stable slot's gateway.
pub fn entry_service_name(app: &MessengerApp) -> String {
    format!("{}-gateway", app.name_any())
}

/// The Service that reaches the candidate slot's gateway before any user traffic does.
pub fn preview_service_name(app: &MessengerApp) -> String {
    format!("{}-gateway-preview", app.name_any())
}

/// The nginx canary Ingress. App names are DNS labels (no dots), so `<app>.canary` can
/// never be another app's Ingress.
pub fn canary_ingress_name(app: &MessengerApp) -> String {
    format!("{}.canary", app.name_any())
}

/// The Secret holding the app's internal-trust key (created once, never rewritten).
pub fn internal_key_secret_name(app: &MessengerApp) -> String {
    format!("{}-internal-key", app.name_any())
}

/// Key of the internal-trust key in its Secret.
pub const INTERNAL_KEY_SECRET_KEY: &str = "internal-auth-key";
/// Random bytes behind the internal-trust key (hex-encoded into the Secret: 96 characters).
pub const INTERNAL_KEY_BYTES: usize = 48;

pub fn network_policy_name(app: &MessengerApp, slot: Slot) -> String {
    format!("{}-{slot}", app.name_any())
}

pub fn service_account_name(app: &MessengerApp) -> String {
    app.name_any()
}

pub fn route_name(app: &MessengerApp) -> String {
    app.name_any()
}

/// Labels that pick one component's pods in one slot; immutable in a Deployment, so no version.
pub fn selector_labels(
    app: &MessengerApp,
    component: Component,
    slot: Slot,
) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_NAME.to_owned(), APP_NAME.to_owned()),
        (LABEL_INSTANCE.to_owned(), app.name_any()),
        (LABEL_COMPONENT.to_owned(), component.name().to_owned()),
        (LABEL_SLOT.to_owned(), slot.as_str().to_owned()),
    ])
}

/// Selector for every child of one app (all kinds, all slots).
pub fn app_children_selector(app: &MessengerApp) -> String {
    format!(
        "{LABEL_INSTANCE}={},{LABEL_MANAGED_BY}={MANAGED_BY}",
        app.name_any()
    )
}

fn common_labels(app: &MessengerApp) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_NAME.to_owned(), APP_NAME.to_owned()),
        (LABEL_INSTANCE.to_owned(), app.name_any()),
        (LABEL_VERSION.to_owned(), app.spec.version.clone()),
        (LABEL_PART_OF.to_owned(), APP_NAME.to_owned()),
        (LABEL_MANAGED_BY.to_owned(), MANAGED_BY.to_owned()),
    ])
}

/// Labels of every pod of one app in one slot, whatever the component.
pub fn slot_pod_labels(app: &MessengerApp, slot: Slot) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_NAME.to_owned(), APP_NAME.to_owned()),
        (LABEL_INSTANCE.to_owned(), app.name_any()),
        (LABEL_SLOT.to_owned(), slot.as_str().to_owned()),
    ])
}

fn slot_labels(
    app: &MessengerApp,
    component: Option<Component>,
    slot: Slot,
) -> BTreeMap<String, String> {
    let mut labels = common_labels(app);
    labels.insert(LABEL_SLOT.to_owned(), slot.as_str().to_owned());
    if let Some(component) = component {
        labels.insert(LABEL_COMPONENT.to_owned(), component.name().to_owned());
    }
    labels
}

fn owner_reference(app: &MessengerApp) -> OwnerReference {
    // Without a uid (an app never stored) there is nothing to own children; reconcile only
    // sees stored apps, and tests set one.
    let mut owner = app
        .controller_owner_ref(&())
        .unwrap_or_else(|| OwnerReference {
            api_version: MessengerApp::api_version(&()).into_owned(),
            kind: MessengerApp::kind(&()).into_owned(),
            name: app.name_any(),
            uid: String::new(),
            controller: Some(true),
            block_owner_deletion: None,
        });
    // Foreground deletion of the app waits for its children.
    owner.block_owner_deletion = Some(true);
    owner
}

fn meta(app: &MessengerApp, name: String, labels: BTreeMap<String, String>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: app.namespace(),
        labels: Some(labels),
        owner_references: Some(vec![owner_reference(app)]),
        ..ObjectMeta::default()
    }
}

fn service_url(app: &MessengerApp, component: Component, slot: Slot) -> String {
    format!(
        "http://{}:{}",
        workload_name(app, component, slot),
        component.api_port()
    )
}

/// Settings shared by every component of a slot: logging, peer addresses within the slot,
/// and the user's `config`.
pub fn config_data(app: &MessengerApp, slot: Slot) -> BTreeMap<String, String> {
    let mut data = app.spec.config.clone();
    data.insert("LOG_FORMAT".to_owned(), "json".to_owned());
    data.insert("RUST_LOG".to_owned(), app.spec.log_level.clone());
    for component in Component::ALL {
        if let Some(var) = component.peer_url_env() {
            data.insert(var.to_owned(), service_url(app, component, slot));
        }
    }
    data
}

/// Short, stable hash of a slot's configuration; stamped on pod templates so a config change
/// rolls the pods.
pub fn config_hash(data: &BTreeMap<String, String>) -> String {
    let mut hasher = Sha256::new();
    for (key, value) in data {
        // Length prefixes keep ("a","bc") and ("ab","c") apart.
        hasher.update((key.len() as u64).to_be_bytes());
        hasher.update(key.as_bytes());
        hasher.update((value.len() as u64).to_be_bytes());
        hasher.update(value.as_bytes());
    }
    hex::encode(&hasher.finalize()[..8])
}

pub fn build_config_map(app: &MessengerApp, slot: Slot) -> ConfigMap {
    ConfigMap {
        metadata: meta(
            app,
            config_map_name(app, slot),
            slot_labels(app, None, slot),
        ),
        data: Some(config_data(app, slot)),
        ..ConfigMap::default()
    }
}

/// The Secret with the internal-trust key every component verifies calls with. `key` is
/// random bytes from the caller, so this stays pure; the controller only ever *creates* it,
/// so a later reconcile never replaces a key that running pods hold. No version label: the
/// object is never rewritten, so it would go stale.
pub fn build_internal_key_secret(app: &MessengerApp, key: &[u8]) -> Secret {
    let mut labels = common_labels(app);
    labels.remove(LABEL_VERSION);
    Secret {
        metadata: meta(app, internal_key_secret_name(app), labels),
        type_: Some("Opaque".to_owned()),
        data: Some(BTreeMap::from([(
            INTERNAL_KEY_SECRET_KEY.to_owned(),
            ByteString(hex::encode(key).into_bytes()),
        )])),
        ..Secret::default()
    }
}

fn tcp_ports(ports: impl IntoIterator<Item = i32>) -> Vec<NetworkPolicyPort> {
    ports
        .into_iter()
        .map(|port| NetworkPolicyPort {
            port: Some(IntOrString::Int(port)),
            protocol: Some("TCP".to_owned()),
            ..NetworkPolicyPort::default()
        })
        .collect()
}

/// Who may reach one slot's pods: the internal gRPC ports only from the same slot's pods of
/// this app (a track never calls across slots), the gateway's HTTP port from anywhere (the
/// Ingress controller or Gateway lives elsewhere), and the admin ports from any pod in the
/// namespace (probes, scraping). Everything else to these pods is dropped by CNIs that
/// enforce NetworkPolicy.
pub fn build_network_policy(app: &MessengerApp, slot: Slot) -> NetworkPolicy {
    let own_pods = LabelSelector {
        match_labels: Some(slot_pod_labels(app, slot)),
        ..LabelSelector::default()
    };
    let internal = Component::ALL
        .into_iter()
        .filter(|c| *c != Component::Gateway)
        .map(Component::api_port);
    NetworkPolicy {
        metadata: meta(
            app,
            network_policy_name(app, slot),
            slot_labels(app, None, slot),
        ),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(own_pods.clone()),
            policy_types: Some(vec!["Ingress".to_owned()]),
            ingress: Some(vec![
                NetworkPolicyIngressRule {
                    from: Some(vec![NetworkPolicyPeer {
                        pod_selector: Some(own_pods),
                        ..NetworkPolicyPeer::default()
                    }]),
                    ports: Some(tcp_ports(internal)),
                },
                // No `from`: every source.
                NetworkPolicyIngressRule {
                    from: None,
                    ports: Some(tcp_ports([Component::Gateway.api_port()])),
                },
                NetworkPolicyIngressRule {
                    from: Some(vec![
                        // An empty pod selector without a namespace selector: this namespace.
                        NetworkPolicyPeer {
                            pod_selector: Some(LabelSelector::default()),
                            ..NetworkPolicyPeer::default()
                        },
                        // The operator's pods, wherever they run, scrape for canary analysis.
                        NetworkPolicyPeer {
                            namespace_selector: Some(LabelSelector::default()),
                            pod_selector: Some(LabelSelector {
                                match_labels: Some(BTreeMap::from([(
                                    LABEL_NAME.to_owned(),
                                    OPERATOR_POD_NAME.to_owned(),
                                )])),
                                ..LabelSelector::default()
                            }),
                            ..NetworkPolicyPeer::default()
                        },
                    ]),
                    ports: Some(tcp_ports(Component::ALL.map(Component::admin_port))),
                },
            ]),
            ..NetworkPolicySpec::default()
        }),
    }
}

pub fn build_service_account(app: &MessengerApp) -> ServiceAccount {
    ServiceAccount {
        metadata: meta(app, service_account_name(app), common_labels(app)),
        // The components never call the Kubernetes API.
        automount_service_account_token: Some(false),
        ..ServiceAccount::default()
    }
}

fn secret_env(name: &str, secret: &SecretKeyRef) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.name.clone(),
                key: secret.key.clone(),
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

fn plain_env(name: &str, value: String) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value),
        ..EnvVar::default()
    }
}

/// How long a pod keeps serving after SIGTERM with `/readyz` failing, before it drains: the
/// time kube-proxy (or an Ingress controller) needs to stop sending new connections to a
/// pod being deleted. Well inside the default 30 s termination grace period.
pub const SHUTDOWN_DELAY: &str = "5s";

/// Environment set directly on the container (the slot's ConfigMap comes in via `envFrom`):
/// listen addresses, the drain delay, for the gateway the slot and version it belongs to
/// (reported in `x-messenger-slot` / `x-messenger-version`), the dependencies' Secrets,
/// then the user's own variables (which win).
pub fn component_env(app: &MessengerApp, component: Component, slot: Slot) -> Vec<EnvVar> {
    let deps = &app.spec.dependencies;
    let mut env = vec![
        plain_env(
            component.api_addr_env(),
            format!("0.0.0.0:{}", component.api_port()),
        ),
        plain_env("ADMIN_ADDR", format!("0.0.0.0:{}", component.admin_port())),
        plain_env("SHUTDOWN_DELAY", SHUTDOWN_DELAY.to_owned()),
    ];
    if component.uses_postgres() && app.spec.migrations.enabled {
        // The slot's migration Jobs applied them before these pods were created.
        env.push(plain_env(MIGRATE_ON_START_ENV, "false".to_owned()));
    }
    if component == Component::Gateway {
        env.push(plain_env("MESSENGER_SLOT", slot.as_str().to_owned()));
        env.push(plain_env("MESSENGER_VERSION", app.spec.version.clone()));
    }
    if component.uses_postgres()
        && let Some(pg) = &deps.postgres
    {
        let per_service = match component {
            Component::Auth => pg.auth.as_ref(),
            Component::Users => pg.users.as_ref(),
            Component::Friends => pg.friends.as_ref(),
            _ => None,
        };
        if let Some(secret) = per_service.or(pg.shared.as_ref()) {
            env.push(secret_env("DATABASE_URL", secret));
        }
    }
    if component.uses_redis()
        && let Some(secret) = &deps.redis
    {
        env.push(secret_env("REDIS_URL", secret));
    }
    if component.uses_kafka()
        && let Some(secret) = &deps.kafka
    {
        env.push(secret_env("KAFKA_BROKERS", secret));
    }
    if component.uses_mongodb() {
        // Named explicitly: chat refuses to guess its store (validation makes one of the
        // two present).
        if let Some(secret) = &deps.mongodb {
            env.push(plain_env("CHAT_STORE", "mongodb".to_owned()));
            env.push(secret_env("MONGODB_URI", secret));
        } else if deps.chat_in_memory {
            env.push(plain_env("CHAT_STORE", "memory".to_owned()));
        }
    }
    env.push(secret_env(
        INTERNAL_AUTH_KEY_ENV,
        &SecretKeyRef {
            name: internal_key_secret_name(app),
            key: INTERNAL_KEY_SECRET_KEY.to_owned(),
        },
    ));
    env.extend(component.spec(&app.spec).env.iter().cloned());
    env
}

pub fn image(app: &MessengerApp, component: Component) -> String {
    component.spec(&app.spec).image.clone().unwrap_or_else(|| {
        format!(
            "{}/messenger-{component}:{}",
            app.spec.image.registry, app.spec.version
        )
    })
}

fn default_resources() -> ResourceRequirements {
    ResourceRequirements {
        requests: Some(BTreeMap::from([
            ("cpu".to_owned(), Quantity("50m".to_owned())),
            ("memory".to_owned(), Quantity("64Mi".to_owned())),
        ])),
        limits: Some(BTreeMap::from([(
            "memory".to_owned(),
            Quantity("256Mi".to_owned()),
        )])),
        ..ResourceRequirements::default()
    }
}

fn http_probe(path: &str, initial_delay: i32, period: i32, failure_threshold: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String("admin".to_owned()),
            ..HTTPGetAction::default()
        }),
        initial_delay_seconds: Some(initial_delay),
        period_seconds: Some(period),
        failure_threshold: Some(failure_threshold),
        ..Probe::default()
    }
}

pub fn build_deployment(app: &MessengerApp, component: Component, slot: Slot) -> Deployment {
    let spec = component.spec(&app.spec);
    let selector = selector_labels(app, component, slot);
    let mut pod_labels = slot_labels(app, Some(component), slot);
    pod_labels.extend(selector.clone());
    let annotations = BTreeMap::from([
        ("prometheus.io/scrape".to_owned(), "true".to_owned()),
        (
            "prometheus.io/port".to_owned(),
            component.admin_port().to_string(),
        ),
        ("prometheus.io/path".to_owned(), "/metrics".to_owned()),
        (
            CONFIG_HASH_ANNOTATION.to_owned(),
            config_hash(&config_data(app, slot)),
        ),
        (
            REVISION_ANNOTATION.to_owned(),
            revision(&SlotTemplate::of(&app.spec)),
        ),
    ]);
    let container = Container {
        name: component.name().to_owned(),
        image: Some(image(app, component)),
        image_pull_policy: Some(app.spec.image.pull_policy.as_str().to_owned()),
        ports: Some(vec![
            ContainerPort {
                name: Some(component.api_port_name().to_owned()),
                container_port: component.api_port(),
                protocol: Some("TCP".to_owned()),
                ..ContainerPort::default()
            },
            ContainerPort {
                name: Some("admin".to_owned()),
                container_port: component.admin_port(),
                protocol: Some("TCP".to_owned()),
                ..ContainerPort::default()
            },
        ]),
        env: Some(component_env(app, component, slot)),
        env_from: Some(vec![EnvFromSource {
            config_map_ref: Some(ConfigMapEnvSource {
                name: config_map_name(app, slot),
                optional: Some(false),
            }),
            ..EnvFromSource::default()
        }]),
        liveness_probe: Some(http_probe("/healthz", 5, 10, 3)),
        readiness_probe: Some(http_probe("/readyz", 2, 5, 3)),
        resources: Some(spec.resources.clone().unwrap_or_else(default_resources)),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_owned()]),
                ..Capabilities::default()
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(vec![VolumeMount {
            name: "tmp".to_owned(),
            mount_path: "/tmp".to_owned(),
            ..VolumeMount::default()
        }]),
        ..Container::default()
    };
    let pull_secrets = &app.spec.image.pull_secrets;
    Deployment {
        metadata: meta(
            app,
            workload_name(app, component, slot),
            slot_labels(app, Some(component), slot),
        ),
        spec: DeploymentSpec {
            replicas: Some(spec.replicas),
            revision_history_limit: Some(3),
            selector: LabelSelector {
                match_labels: Some(selector),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(pod_labels),
                    annotations: Some(annotations),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    service_account_name: Some(service_account_name(app)),
                    automount_service_account_token: Some(false),
                    containers: vec![container],
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(RUN_AS_USER),
                        run_as_group: Some(RUN_AS_USER),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".to_owned(),
                            ..SeccompProfile::default()
                        }),
                        ..PodSecurityContext::default()
                    }),
                    image_pull_secrets: (!pull_secrets.is_empty()).then(|| {
                        pull_secrets
                            .iter()
                            .map(|name| LocalObjectReference { name: name.clone() })
                            .collect()
                    }),
                    node_selector: (!spec.node_selector.is_empty())
                        .then(|| spec.node_selector.clone()),
                    tolerations: (!spec.tolerations.is_empty()).then(|| spec.tolerations.clone()),
                    affinity: spec.affinity.clone(),
                    volumes: Some(vec![Volume {
                        name: "tmp".to_owned(),
                        empty_dir: Some(EmptyDirVolumeSource::default()),
                        ..Volume::default()
                    }]),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        },
        ..Deployment::default()
    }
}

/// The Job that runs `component`'s migrations (`messenger-<component> migrate`) of `app`'s
/// inputs for `slot`: the same image, environment and security settings as the
/// component's pods, without ports or probes, and with labels no Service selects.
pub fn build_migration_job(app: &MessengerApp, component: Component, slot: Slot) -> Job {
    let revision = revision(&SlotTemplate::of(&app.spec));
    let mut template = build_deployment(app, component, slot).spec.template;
    let mut pod_labels = common_labels(app);
    pod_labels.insert(LABEL_SLOT.to_owned(), slot.as_str().to_owned());
    pod_labels.insert(LABEL_MIGRATION.to_owned(), component.name().to_owned());
    pod_labels.remove(LABEL_NAME);
    template.metadata = Some(ObjectMeta {
        labels: Some(pod_labels),
        annotations: Some(BTreeMap::from([(
            REVISION_ANNOTATION.to_owned(),
            revision.clone(),
        )])),
        ..ObjectMeta::default()
    });
    if let Some(pod) = template.spec.as_mut() {
        pod.restart_policy = Some("Never".to_owned());
        for container in &mut pod.containers {
            container.args = Some(vec!["migrate".to_owned()]);
            container.ports = None;
            container.liveness_probe = None;
            container.readiness_probe = None;
        }
    }
    let migrations = &app.spec.migrations;
    let mut labels = slot_labels(app, Some(component), slot);
    labels.insert(LABEL_MIGRATION.to_owned(), component.name().to_owned());
    Job {
        metadata: meta(
            app,
            migration_job_name(app, component, slot, &revision),
            labels,
        ),
        spec: Some(JobSpec {
            backoff_limit: Some(
                migrations
                    .backoff_limit
                    .unwrap_or(DEFAULT_MIGRATION_BACKOFF_LIMIT),
            ),
            active_deadline_seconds: Some(
                migrations
                    .active_deadline_seconds
                    .unwrap_or(DEFAULT_MIGRATION_DEADLINE_SECONDS),
            ),
            template,
            ..JobSpec::default()
        }),
        ..Job::default()
    }
}

pub fn build_service(app: &MessengerApp, component: Component, slot: Slot) -> Service {
    Service {
        metadata: meta(
            app,
            workload_name(app, component, slot),
            slot_labels(app, Some(component), slot),
        ),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".to_owned()),
            selector: Some(selector_labels(app, component, slot)),
            ports: Some(vec![
                ServicePort {
                    name: Some(component.api_port_name().to_owned()),
                    port: component.api_port(),
                    target_port: Some(IntOrString::String(component.api_port_name().to_owned())),
                    protocol: Some("TCP".to_owned()),
                    ..ServicePort::default()
                },
                ServicePort {
                    name: Some("admin".to_owned()),
                    port: component.admin_port(),
                    target_port: Some(IntOrString::String("admin".to_owned())),
                    protocol: Some("TCP".to_owned()),
                    ..ServicePort::default()
                },
            ]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// The gateway Service clients use, pointing at the stable slot.
pub fn build_entry_service(app: &MessengerApp, stable: Slot) -> Service {
    gateway_service(app, entry_service_name(app), stable)
}

/// The preview Service, pointing at the candidate slot's gateway.
pub fn build_preview_service(app: &MessengerApp, candidate: Slot) -> Service {
    gateway_service(app, preview_service_name(app), candidate)
}

fn gateway_service(app: &MessengerApp, name: String, slot: Slot) -> Service {
    let mut labels = common_labels(app);
    labels.insert(
        LABEL_COMPONENT.to_owned(),
        Component::Gateway.name().to_owned(),
    );
    Service {
        metadata: meta(app, name, labels),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".to_owned()),
            selector: Some(selector_labels(app, Component::Gateway, slot)),
            ports: Some(vec![ServicePort {
                name: Some("http".to_owned()),
                port: 80,
                target_port: Some(IntOrString::String(
                    Component::Gateway.api_port_name().to_owned(),
                )),
                protocol: Some("TCP".to_owned()),
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// The Ingress for `ingressNginx` and `none`, or `None` without an ingress block or with
/// `gatewayAPI`.
pub fn build_ingress(app: &MessengerApp) -> Option<Ingress> {
    let ingress = app.spec.ingress.as_ref()?;
    if ingress.router == TrafficRouter::GatewayApi {
        return None;
    }
    Some(Ingress {
        metadata: meta(app, route_name(app), common_labels(app)),
        spec: Some(IngressSpec {
            ingress_class_name: ingress.class_name.clone(),
            tls: ingress.tls_secret_name.as_ref().map(|secret| {
                vec![IngressTLS {
                    hosts: Some(vec![ingress.host.clone()]),
                    secret_name: Some(secret.clone()),
                }]
            }),
            rules: Some(vec![IngressRule {
                host: Some(ingress.host.clone()),
                http: Some(HTTPIngressRuleValue {
                    paths: vec![HTTPIngressPath {
                        path: Some("/".to_owned()),
                        path_type: "Prefix".to_owned(),
                        backend: IngressBackend {
                            service: Some(IngressServiceBackend {
                                name: entry_service_name(app),
                                port: Some(ServiceBackendPort {
                                    name: Some("http".to_owned()),
                                    number: None,
                                }),
                            }),
                            resource: None,
                        },
                    }],
                }),
            }]),
            ..IngressSpec::default()
        }),
        ..Ingress::default()
    })
}

/// The preview route: `strategy.blueGreen.previewHost` to the candidate slot's gateway
/// while a rollout runs — an Ingress to the preview Service, or for `gatewayAPI` an
/// HTTPRoute to the candidate gateway. Named `<app>.preview` (app names have no dots).
pub fn build_preview_routes(
    app: &MessengerApp,
    candidate: Slot,
) -> (Option<Ingress>, Option<HTTPRoute>) {
    let Some(host) = app
        .spec
        .strategy
        .blue_green
        .as_ref()
        .and_then(|b| b.preview_host.clone())
    else {
        return (None, None);
    };
    let Some(spec) = app.spec.ingress.as_ref() else {
        return (None, None);
    };
    let name = format!("{}.preview", app.name_any());
    if spec.router == TrafficRouter::GatewayApi {
        let route = build_weighted_http_route(app, &[(candidate, 100)]).map(|mut route| {
            route.metadata.name = Some(name);
            route.spec.hostnames = vec![host];
            route
        });
        return (None, route);
    }
    let ingress = build_ingress(app).map(|mut ingress| {
        ingress.metadata.name = Some(name);
        if let Some(rule) = ingress
            .spec
            .as_mut()
            .and_then(|s| s.rules.as_mut())
            .and_then(|r| r.first_mut())
        {
            rule.host = Some(host.clone());
            if let Some(service) = rule
                .http
                .as_mut()
                .and_then(|h| h.paths.first_mut())
                .and_then(|p| p.backend.service.as_mut())
            {
                service.name = preview_service_name(app);
            }
        }
        if let Some(tls) = ingress.spec.as_mut().and_then(|s| s.tls.as_mut()) {
            for entry in tls {
                entry.hosts = Some(vec![host.clone()]);
            }
        }
        ingress
    });
    (ingress, None)
}

/// The nginx canary Ingress sending `weight`% of the host's requests to the candidate
/// slot's gateway, or `None` unless the router is `ingressNginx`.
pub fn build_canary_ingress(app: &MessengerApp, candidate: Slot, weight: i32) -> Option<Ingress> {
    let spec = app.spec.ingress.as_ref()?;
    if spec.router != TrafficRouter::IngressNginx {
        return None;
    }
    let mut ingress = build_ingress(app)?;
    ingress.metadata.name = Some(canary_ingress_name(app));
    ingress.metadata.annotations = Some(BTreeMap::from([
        (NGINX_CANARY.to_owned(), "true".to_owned()),
        (NGINX_CANARY_WEIGHT.to_owned(), weight.to_string()),
    ]));
    let rule_backend = ingress
        .spec
        .as_mut()
        .and_then(|s| s.rules.as_mut())
        .and_then(|r| r.first_mut())
        .and_then(|r| r.http.as_mut())
        .and_then(|h| h.paths.first_mut())
        .and_then(|p| p.backend.service.as_mut());
    if let Some(service) = rule_backend {
        service.name = workload_name(app, Component::Gateway, candidate);
    }
    Some(ingress)
}

/// The HTTPRoute for `gatewayAPI` with all weight on the stable slot's gateway Service.
pub fn build_http_route(app: &MessengerApp, stable: Slot) -> Option<HTTPRoute> {
    build_weighted_http_route(app, &[(stable, 100)])
}

/// The HTTPRoute for `gatewayAPI`, one weighted backendRef per serving slot.
pub fn build_weighted_http_route(app: &MessengerApp, weights: &[(Slot, i32)]) -> Option<HTTPRoute> {
    let ingress = app.spec.ingress.as_ref()?;
    if ingress.router != TrafficRouter::GatewayApi {
        return None;
    }
    let gateway = ingress.gateway_ref.as_ref()?;
    let mut route = HTTPRoute::new(
        &route_name(app),
        HttpRouteSpec {
            parent_refs: vec![ParentReference {
                name: gateway.name.clone(),
                namespace: gateway.namespace.clone(),
                section_name: gateway.section_name.clone(),
            }],
            hostnames: vec![ingress.host.clone()],
            rules: vec![HttpRouteRule {
                backend_refs: weights
                    .iter()
                    .map(|(slot, weight)| HttpBackendRef {
                        name: workload_name(app, Component::Gateway, *slot),
                        port: Component::Gateway.api_port(),
                        weight: *weight,
                    })
                    .collect(),
            }],
        },
    );
    route.metadata = meta(app, route_name(app), common_labels(app));
    Some(route)
}

pub fn build_pdb(
    app: &MessengerApp,
    component: Component,
    slot: Slot,
) -> Option<PodDisruptionBudget> {
    if component.spec(&app.spec).replicas <= 1 {
        return None;
    }
    Some(PodDisruptionBudget {
        metadata: meta(
            app,
            workload_name(app, component, slot),
            slot_labels(app, Some(component), slot),
        ),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(LabelSelector {
                match_labels: Some(selector_labels(app, component, slot)),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    })
}

/// For a canary without a traffic router (`router: none`, or no `ingress`) at a weight
/// strictly between 0 and 100: the candidate slot and how many gateway replicas it runs so
/// that its share of the gateways behind the one entry Service approximates the weight
/// (`ceil(stable * w / (100 - w))`, at least one). The stable slot is never resized.
pub fn replica_weighted_canary(
    app: &MessengerApp,
    status: &MessengerAppStatus,
) -> Option<(Slot, i32)> {
    let routed = app
        .spec
        .ingress
        .as_ref()
        .is_some_and(|i| i.router != TrafficRouter::None);
    if routed || app.spec.strategy.type_ != StrategyType::Canary {
        return None;
    }
    let stable = status.active_slot.unwrap_or_default();
    let rollout = status
        .rollout
        .as_ref()
        .filter(|r| r.candidate != stable && r.abort_reason.is_none())?;
    let weight = rollout.weight;
    if !(1..100).contains(&weight) {
        return None;
    }
    let stable_gateways = status
        .slots
        .iter()
        .find(|s| s.name == stable)
        .and_then(|s| s.template.as_ref())
        .map_or(1, |t| t.components.gateway.replicas)
        .max(1);
    let replicas = (stable_gateways * weight + (100 - weight) - 1) / (100 - weight);
    Some((rollout.candidate, replicas.clamp(1, 100)))
}

/// Pods of one component of a canary candidate after a `setCanaryScale` step: `replicas`,
/// or `weight` percent (the traffic weight with `matchTrafficWeight`) of its `full`
/// replicas, rounded up and at least one so the track can serve its share.
pub fn canary_scaled_replicas(scale: &SetCanaryScale, full: i32, traffic_weight: i32) -> i32 {
    if let Some(replicas) = scale.replicas {
        return replicas;
    }
    if full <= 0 {
        return 0;
    }
    let percent = scale.weight.unwrap_or(traffic_weight).clamp(0, 100);
    ((full * percent + 99) / 100).max(1)
}

/// The scale `status` sets for `slot`'s components: `Some((scale, traffic weight))` while it
/// is the candidate of a rollout past a `setCanaryScale` step.
pub fn canary_scale_of(status: &MessengerAppStatus, slot: Slot) -> Option<(&SetCanaryScale, i32)> {
    let stable = status.active_slot.unwrap_or_default();
    let rollout = status
        .rollout
        .as_ref()
        .filter(|r| r.candidate == slot && r.candidate != stable)?;
    rollout.canary_scale.as_ref().map(|s| (s, rollout.weight))
}

/// `app` as one slot sees it: the slot's recorded inputs in place of the spec's, so a spec
/// change never reaches a slot that was rendered before it.
pub fn app_for_slot(app: &MessengerApp, template: &SlotTemplate) -> MessengerApp {
    let mut view = MessengerApp {
        metadata: app.metadata.clone(),
        spec: app.spec.clone(),
        status: None,
    };
    view.spec.version = template.version.clone();
    view.spec.image = template.image.clone();
    view.spec.components = template.components.clone();
    view.spec.dependencies = template.dependencies.clone();
    view.spec.config = template.config.clone();
    view.spec.log_level = template.log_level.clone();
    view.spec.migrations = template.migrations.clone();
    view
}

/// The status a brand-new app's first reconcile would record: blue at the spec.
pub fn initial_status(app: &MessengerApp) -> MessengerAppStatus {
    crate::rollout::next_state(
        app,
        &crate::rollout::Observed::default(),
        &k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
        ),
    )
    .status
}

/// Every child of the app for the slots `status` records (each from its own revision) and
/// the traffic objects for its weights, leaving out kinds the cluster does not serve.
pub fn build_children(app: &MessengerApp, caps: ApiCapabilities) -> Children {
    let status = app.status.clone().unwrap_or_else(|| initial_status(app));
    build_children_for(app, &status, caps)
}

pub fn build_children_for(
    app: &MessengerApp,
    status: &MessengerAppStatus,
    caps: ApiCapabilities,
) -> Children {
    let stable = status.active_slot.unwrap_or_default();
    let mut children = Children {
        service_accounts: vec![build_service_account(app)],
        protected_slots: vec![stable],
        ..Children::default()
    };
    for record in &status.slots {
        let slot = record.name;
        // An unrecorded serving slot is left exactly as it runs.
        let Some(template) = &record.template else {
            continue;
        };
        let view = app_for_slot(app, template);
        children.config_maps.push(build_config_map(&view, slot));
        if template.migrations.enabled {
            children
                .jobs
                .extend(migrating_components().map(|c| build_migration_job(&view, c, slot)));
        }
        // A slot that migrates through Jobs gets no pods until they all succeeded.
        let migrated = matches!(record.migrations, None | Some(MigrationPhase::Succeeded));
        let scale = canary_scale_of(status, slot);
        for component in Component::ALL {
            children
                .services
                .push(build_service(&view, component, slot));
            if !migrated {
                continue;
            }
            let mut deployment = build_deployment(&view, component, slot);
            if let Some((scale, weight)) = scale {
                let full = component.spec(&view.spec).replicas;
                deployment.spec.replicas = Some(canary_scaled_replicas(scale, full, weight));
            }
            if record.scaled_down {
                deployment.spec.replicas = Some(0);
            }
            let replicas = deployment.spec.replicas.unwrap_or(1);
            children.deployments.push(deployment);
            if record.scaled_down || replicas <= 1 {
                continue;
            }
            if let Some(pdb) = build_pdb(&view, component, slot) {
                if caps.pdb_v1 {
                    children.pdbs.push(pdb);
                } else {
                    children
                        .skipped
                        .push(format!("PodDisruptionBudget/{}", pdb.name_any()));
                }
            }
        }
        children
            .network_policies
            .push(build_network_policy(&view, slot));
    }
    let rollout = status.rollout.as_ref().filter(|r| r.candidate != stable);
    let mut entry = build_entry_service(app, stable);
    if let Some((candidate, replicas)) = replica_weighted_canary(app, status) {
        // No router to carry a weight: both slots' gateways behind the entry Service, the
        // candidate's gateway scaled to approximate the weight.
        if let Some(selector) = entry.spec.as_mut().and_then(|s| s.selector.as_mut()) {
            selector.remove(LABEL_SLOT);
        }
        let name = workload_name(app, Component::Gateway, candidate);
        for deployment in &mut children.deployments {
            if deployment.metadata.name.as_deref() == Some(name.as_str()) {
                deployment.spec.replicas = Some(replicas);
            }
        }
    }
    children.traffic_services.push(entry);
    if let Some(rollout) = rollout {
        children
            .traffic_services
            .push(build_preview_service(app, rollout.candidate));
        let (preview_ingress, preview_route) = build_preview_routes(app, rollout.candidate);
        children.ingresses.extend(preview_ingress);
        if let Some(route) = preview_route {
            if caps.http_route {
                children.http_routes.push(route);
            } else {
                children
                    .skipped
                    .push(format!("HTTPRoute/{}", route.name_any()));
            }
        }
        if app.spec.strategy.type_ == StrategyType::Canary && rollout.weight > 0 {
            children
                .ingresses
                .extend(build_canary_ingress(app, rollout.candidate, rollout.weight));
        }
    }
    children.ingresses.extend(build_ingress(app));
    let mut weights = vec![(stable, 100 - rollout.map_or(0, |r| r.weight))];
    if let Some(rollout) = rollout {
        weights.push((rollout.candidate, rollout.weight));
    }
    if let Some(route) = build_weighted_http_route(app, &weights) {
        if caps.http_route {
            children.http_routes.push(route);
        } else {
            children
                .skipped
                .push(format!("HTTPRoute/{}", route.name_any()));
        }
    }
    children
}

#[cfg(test)]
#[path = "builders_tests.rs"]
mod tests;
