//! Controller and leader election against a real kube-apiserver (see
//! `scripts/kube-test-env.sh`; `make test` starts it). There is no controller-manager: pods
//! never run, so Deployment readiness is simulated by patching the status subresource, and
//! garbage collection does not happen.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Secret, Service, ServiceAccount};
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::runtime::controller::Action;
use kube::{Api, Client, Config, CustomResourceExt, ResourceExt};
use messenger_operator::builders::{FIELD_MANAGER, app_children_selector};
use messenger_operator::controller::{Context, discover_capabilities, reconcile, run_controller};
use messenger_operator::crd::{MessengerApp, MessengerAppSpec, Phase};
use messenger_operator::httproute::HTTPRoute;
use messenger_operator::leader::{LeaderElector, LeaseConfig};
use messenger_operator::metrics::Metrics;
use messenger_operator::status::{
    CONDITION_APIS_AVAILABLE, CONDITION_DEGRADED, CONDITION_READY, find_condition,
};
use prometheus_client::registry::Registry;
use serde_json::json;
use tokio::sync::watch;

const DEFAULT_KUBECONFIG: &str = "/root/.cache/messenger-kube/kubeconfig";

/// A client for the test API server, with the CRD installed. Panics when it is unreachable.
async fn cluster() -> Client {
    let path = std::env::var("TEST_KUBECONFIG").unwrap_or_else(|_| DEFAULT_KUBECONFIG.to_owned());
    let kubeconfig = Kubeconfig::read_from(&path).unwrap_or_else(|e| {
        panic!("TEST_KUBECONFIG={path} cannot be read ({e}); start the API server with `scripts/kube-test-env.sh start`")
    });
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap_or_else(|e| panic!("TEST_KUBECONFIG={path} is not a usable kubeconfig: {e}"));
    let client = Client::try_from(config).expect("client from kubeconfig");
    let version = client.apiserver_version().await.unwrap_or_else(|e| {
        panic!("the API server of TEST_KUBECONFIG={path} is unreachable ({e}); start it with `scripts/kube-test-env.sh start`")
    });
    install_crd(
        &client,
        version.minor.trim_end_matches('+').parse().unwrap_or(0),
    )
    .await;
    client
}

/// Server-side applies the generated CRD (idempotent; parallel tests may race on it) and
/// waits until it is served.
async fn install_crd(client: &Client, server_minor: u32) {
    let mut crd = serde_json::to_value(MessengerApp::crd()).unwrap();
    if server_minor < 25 {
        // Servers before 1.25 do not know CEL rules; the operator checks them itself.
        strip_key(&mut crd, "x-kubernetes-validations");
    }
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let name = "messengerapps.messenger.dev";
    let mut attempts = 0;
    loop {
        match api
            .patch(
                name,
                &PatchParams::apply("messenger-operator-tests").force(),
                &Patch::Apply(&crd),
            )
            .await
        {
            Ok(_) => break,
            Err(e) if attempts < 5 => {
                attempts += 1;
                eprintln!("applying the CRD failed ({e}), retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("cannot install the MessengerApp CRD: {e}"),
        }
    }
    eventually(
        "the CRD is established",
        Duration::from_secs(20),
        || async {
            let crd = api.get(name).await.ok()?;
            let established = crd
                .status?
                .conditions?
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True");
            established.then_some(())
        },
    )
    .await;
    // Established can precede the resource being served by a moment.
    let apps: Api<MessengerApp> = Api::all(client.clone());
    eventually(
        "MessengerApps are served",
        Duration::from_secs(20),
        || async {
            apps.list(&ListParams::default().limit(1))
                .await
                .ok()
                .map(|_| ())
        },
    )
    .await;
}

fn drop_null_enum_values(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            if let Some(serde_json::Value::Array(values)) = map.get_mut("enum") {
                values.retain(|v| !v.is_null());
            }
            map.values_mut().for_each(drop_null_enum_values);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(drop_null_enum_values),
        _ => {}
    }
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

/// Polls `check` until it returns `Some`, panicking with `what` after `timeout`.
async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A fresh namespace per test so tests run in parallel.
async fn namespace(client: &Client, test: &str) -> String {
    let name = format!(
        "{test}-{:x}",
        Timestamp::now().as_nanosecond() as u64 & 0xff_ffff
    );
    let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("create namespace");
    name
}

fn context(client: &Client) -> Arc<Context> {
    Arc::new(Context::new(
        client.clone(),
        Metrics::register(&mut Registry::default()),
        Some("tests".into()),
    ))
}

async fn create_app(
    client: &Client,
    ns: &str,
    name: &str,
    spec: serde_json::Value,
) -> MessengerApp {
    let spec: MessengerAppSpec = serde_json::from_value(with_chat_store(spec)).expect("spec");
    let api: Api<MessengerApp> = Api::namespaced(client.clone(), ns);
    api.create(&PostParams::default(), &MessengerApp::new(name, spec))
        .await
        .expect("create MessengerApp")
}

/// `spec`, with chat on pod memory when it names no chat store: an app must name one, and
/// no pod runs here (the apps of these tests are about what the operator writes).
fn with_chat_store(mut spec: serde_json::Value) -> serde_json::Value {
    let dependencies = spec
        .as_object_mut()
        .expect("spec is an object")
        .entry("dependencies")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .expect("dependencies is an object");
    if !dependencies.contains_key("mongodb") {
        dependencies.entry("chatInMemory").or_insert(json!(true));
    }
    spec
}

async fn get_app(client: &Client, ns: &str, name: &str) -> MessengerApp {
    Api::<MessengerApp>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .expect("get MessengerApp")
}

async fn reconcile_now(client: &Client, ctx: &Arc<Context>, ns: &str, name: &str) -> Action {
    let app = get_app(client, ns, name).await;
    reconcile(Arc::new(app), ctx.clone())
        .await
        .expect("reconcile")
}

fn full_spec() -> serde_json::Value {
    json!({
        "version": "1.2.3",
        "components": {"gateway": {"replicas": 2}},
        "dependencies": {
            "postgres": {"shared": {"name": "pg", "key": "url"}},
            "redis": {"name": "redis", "key": "url"},
            "mongodb": {"name": "mongo", "key": "uri"},
            "kafka": {"name": "kafka", "key": "brokers"}
        },
        "ingress": {"host": "messenger.local", "className": "nginx"}
    })
}

/// resourceVersion of every child and of the app, by kind/name.
async fn resource_versions(
    client: &Client,
    ns: &str,
    app: &MessengerApp,
) -> BTreeMap<String, String> {
    let lp = ListParams::default().labels(&app_children_selector(app));
    let mut out = BTreeMap::new();
    macro_rules! collect {
        ($kind:ty) => {
            for o in Api::<$kind>::namespaced(client.clone(), ns)
                .list(&lp)
                .await
                .unwrap()
            {
                out.insert(
                    format!("{}/{}", stringify!($kind), o.name_any()),
                    o.resource_version().unwrap(),
                );
            }
        };
    }
    collect!(Deployment);
    collect!(Service);
    collect!(ConfigMap);
    collect!(ServiceAccount);
    collect!(Ingress);
    collect!(NetworkPolicy);
    collect!(Secret);
    let fresh = get_app(client, ns, &app.name_any()).await;
    out.insert("MessengerApp".into(), fresh.resource_version().unwrap());
    out
}

async fn event_reasons(client: &Client, ns: &str) -> Vec<String> {
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|e| e.reason)
        .collect()
}

/// Marks `ready` of the app's Deployments Available, the way the Deployment controller would.
async fn simulate_readiness(client: &Client, ns: &str, names: &[String]) {
    let api: Api<Deployment> = Api::namespaced(client.clone(), ns);
    for name in names {
        let d = api.get(name).await.unwrap();
        let replicas = d.spec.replicas.unwrap_or(1);
        let status = json!({"status": {
            "observedGeneration": d.metadata.generation,
            "replicas": replicas, "updatedReplicas": replicas, "readyReplicas": replicas, "availableReplicas": replicas,
            "conditions": [{"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable", "message": "simulated"}]
        }});
        api.patch_status(name, &PatchParams::default(), &Patch::Merge(&status))
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn first_reconcile_creates_every_child_with_server_side_apply() {
    let client = cluster().await;
    let ns = namespace(&client, "first").await;
    let app = create_app(&client, &ns, "demo", full_spec()).await;
    let ctx = context(&client);
    reconcile_now(&client, &ctx, &ns, "demo").await;

    let deployments = Api::<Deployment>::namespaced(client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .unwrap();
    let mut names: Vec<String> = deployments.iter().map(|d| d.name_any()).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "demo-auth-blue",
            "demo-chat-blue",
            "demo-friends-blue",
            "demo-gateway-blue",
            "demo-users-blue"
        ]
    );
    for d in &deployments {
        let owner = &d.owner_references()[0];
        assert_eq!(
            (owner.uid.as_str(), owner.controller),
            (app.uid().unwrap().as_str(), Some(true))
        );
        let managers: Vec<(String, String)> = d
            .managed_fields()
            .iter()
            .map(|m| {
                (
                    m.manager.clone().unwrap_or_default(),
                    m.operation.clone().unwrap_or_default(),
                )
            })
            .collect();
        assert!(
            managers.contains(&(FIELD_MANAGER.to_owned(), "Apply".to_owned())),
            "{}: {managers:?}",
            d.name_any()
        );
    }
    let services = Api::<Service>::namespaced(client.clone(), &ns)
        .list(&ListParams::default())
        .await
        .unwrap();
    assert_eq!(
        services.items.len(),
        6,
        "five slot Services and the entry Service"
    );
    let users = Api::<Service>::namespaced(client.clone(), &ns)
        .get("demo-users-blue")
        .await
        .unwrap();
    assert_eq!(
        users.spec.unwrap().selector.unwrap()["messenger.dev/slot"],
        "blue"
    );
    let cm = Api::<ConfigMap>::namespaced(client.clone(), &ns)
        .get("demo-config-blue")
        .await
        .unwrap();
    assert_eq!(cm.data.unwrap()["USERS_URL"], "http://demo-users-blue:8004");
    Api::<ServiceAccount>::namespaced(client.clone(), &ns)
        .get("demo")
        .await
        .expect("ServiceAccount");
    let ingress = Api::<Ingress>::namespaced(client.clone(), &ns)
        .get("demo")
        .await
        .expect("Ingress");
    assert_eq!(
        ingress.spec.unwrap().rules.unwrap()[0].host.as_deref(),
        Some("messenger.local")
    );

    let secret = Api::<Secret>::namespaced(client.clone(), &ns)
        .get("demo-internal-key")
        .await
        .expect("internal-trust key Secret");
    let key = &secret.data.as_ref().unwrap()["internal-auth-key"].0;
    assert_eq!(key.len(), 96, "48 random bytes as hex");
    assert!(key.iter().all(u8::is_ascii_hexdigit));
    assert_eq!(secret.owner_references()[0].uid, app.uid().unwrap());
    let policy = Api::<NetworkPolicy>::namespaced(client.clone(), &ns)
        .get("demo-blue")
        .await
        .expect("NetworkPolicy of slot blue");
    let selected = policy
        .spec
        .unwrap()
        .pod_selector
        .unwrap()
        .match_labels
        .unwrap();
    assert_eq!(
        (
            selected["app.kubernetes.io/instance"].as_str(),
            selected["messenger.dev/slot"].as_str()
        ),
        ("demo", "blue")
    );

    let app = get_app(&client, &ns, "demo").await;
    let status = app.status.as_ref().expect("status written");
    assert_eq!(status.phase, Some(Phase::Progressing), "nothing runs yet");
    assert_eq!(status.ready_components.as_deref(), Some("0/5"));
    // The spec asks for a gateway PDB (2 replicas); whether it exists depends on the server.
    let caps = discover_capabilities(&client).await.unwrap();
    let apis = find_condition(Some(status), CONDITION_APIS_AVAILABLE).unwrap();
    if caps.pdb_v1 {
        assert_eq!(apis.status, "True");
    } else {
        assert_eq!(apis.status, "False", "a missing policy/v1 must be reported");
        assert!(
            apis.message
                .contains("PodDisruptionBudget/demo-gateway-blue"),
            "{}",
            apis.message
        );
        assert!(
            event_reasons(&client, &ns)
                .await
                .contains(&"ApisMissing".to_owned())
        );
    }
}

#[tokio::test]
async fn identical_second_reconcile_changes_nothing() {
    let client = cluster().await;
    let ns = namespace(&client, "idempotent").await;
    let app = create_app(&client, &ns, "demo", full_spec()).await;
    let ctx = context(&client);
    reconcile_now(&client, &ctx, &ns, "demo").await;
    let before = resource_versions(&client, &ns, &app).await;
    // Deployments, Services, ConfigMap, ServiceAccount, Ingress, NetworkPolicy, key Secret, app.
    assert_eq!(before.len(), 5 + 6 + 1 + 1 + 1 + 1 + 1 + 1, "{before:?}");
    reconcile_now(&client, &ctx, &ns, "demo").await;
    let after = resource_versions(&client, &ns, &app).await;
    assert_eq!(
        before, after,
        "a second reconcile of an unchanged app must not write anything"
    );
}

#[tokio::test]
async fn the_internal_key_is_created_once_and_never_replaced() {
    let client = cluster().await;
    let ns = namespace(&client, "key").await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    // A user who brings their own key creates the Secret first; it is used as it is.
    let own: Secret = serde_json::from_value(json!({
        "metadata": {"name": "byok-internal-key"},
        "stringData": {"internal-auth-key": "a key the user chose, at least 32 bytes long"}
    }))
    .unwrap();
    secrets.create(&PostParams::default(), &own).await.unwrap();
    create_app(&client, &ns, "demo", json!({"version": "1.0.0"})).await;
    create_app(&client, &ns, "byok", json!({"version": "1.0.0"})).await;
    let ctx = context(&client);
    for name in ["demo", "byok"] {
        reconcile_now(&client, &ctx, &ns, name).await;
    }
    let first = secrets.get("demo-internal-key").await.unwrap();
    // A spec change makes new pods; they must get the key the running pods hold.
    Api::<MessengerApp>::namespaced(client.clone(), &ns)
        .patch(
            "demo",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"version": "1.0.1"}})),
        )
        .await
        .unwrap();
    for name in ["demo", "byok", "demo"] {
        reconcile_now(&client, &ctx, &ns, name).await;
    }
    let later = secrets.get("demo-internal-key").await.unwrap();
    assert_eq!(later.resource_version(), first.resource_version());
    assert_eq!(later.data, first.data);
    let byok = secrets.get("byok-internal-key").await.unwrap();
    assert_eq!(
        byok.data.unwrap()["internal-auth-key"].0,
        b"a key the user chose, at least 32 bytes long"
    );
    let env = Api::<Deployment>::namespaced(client.clone(), &ns)
        .get("byok-chat-blue")
        .await
        .unwrap()
        .spec
        .template
        .spec
        .unwrap()
        .containers[0]
        .env
        .clone()
        .unwrap();
    let key_ref = env
        .iter()
        .find(|e| e.name == "INTERNAL_AUTH_KEY")
        .and_then(|e| e.value_from.as_ref()?.secret_key_ref.clone())
        .expect("INTERNAL_AUTH_KEY from a Secret");
    assert_eq!(
        (key_ref.name.as_str(), key_ref.key.as_str()),
        ("byok-internal-key", "internal-auth-key")
    );
}

#[tokio::test]
async fn deployment_readiness_flows_into_the_app_status() {
    let client = cluster().await;
    let ns = namespace(&client, "ready").await;
    create_app(&client, &ns, "demo", json!({"version": "1.0.0"})).await;
    let ctx = context(&client);
    reconcile_now(&client, &ctx, &ns, "demo").await;

    let all: Vec<String> = ["gateway", "auth", "users", "friends", "chat"]
        .iter()
        .map(|c| format!("demo-{c}-blue"))
        .collect();
    simulate_readiness(&client, &ns, &all[..3]).await;
    reconcile_now(&client, &ctx, &ns, "demo").await;
    let status = get_app(&client, &ns, "demo").await.status.unwrap();
    assert_eq!(
        (status.phase, status.ready_components.as_deref()),
        (Some(Phase::Progressing), Some("3/5"))
    );
    let ready = find_condition(Some(&status), CONDITION_READY).unwrap();
    assert_eq!(ready.status, "False");
    assert!(
        ready.message.contains("friends") && ready.message.contains("chat"),
        "{}",
        ready.message
    );

    simulate_readiness(&client, &ns, &all[3..]).await;
    let action = reconcile_now(&client, &ctx, &ns, "demo").await;
    let app = get_app(&client, &ns, "demo").await;
    let status = app.status.unwrap();
    assert_eq!(
        (status.phase, status.ready_components.as_deref()),
        (Some(Phase::Healthy), Some("5/5"))
    );
    assert_eq!(
        find_condition(Some(&status), CONDITION_READY)
            .unwrap()
            .status,
        "True"
    );
    assert_eq!(status.observed_generation, app.metadata.generation);
    assert!(
        status
            .components
            .iter()
            .all(|c| c.available && c.ready_replicas == 1)
    );
    assert_eq!(action, Action::requeue(Duration::from_secs(300)));
    assert!(
        event_reasons(&client, &ns)
            .await
            .contains(&"Ready".to_owned()),
        "a Ready event is published"
    );
}

#[tokio::test]
async fn invalid_spec_sets_the_condition_and_creates_nothing() {
    let client = cluster().await;
    let ns = namespace(&client, "invalid").await;
    // Redefining a wired variable is a rule only the operator checks.
    let spec = json!({"version": "1.0.0", "components": {"chat": {"env": [{"name": "USERS_URL", "value": "http://elsewhere"}]}}});
    create_app(&client, &ns, "demo", spec).await;
    let ctx = context(&client);
    let action = reconcile_now(&client, &ctx, &ns, "demo").await;
    assert_eq!(
        action,
        Action::await_change(),
        "an invalid spec waits for a change, no retry loop"
    );

    let status = get_app(&client, &ns, "demo")
        .await
        .status
        .expect("status written");
    assert_eq!(status.phase, Some(Phase::Degraded));
    let degraded = find_condition(Some(&status), CONDITION_DEGRADED).unwrap();
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", "InvalidSpec")
    );
    assert!(
        degraded.message.contains("USERS_URL"),
        "{}",
        degraded.message
    );
    assert_eq!(
        find_condition(Some(&status), CONDITION_READY)
            .unwrap()
            .status,
        "False"
    );
    let lp = ListParams::default();
    assert!(
        Api::<Deployment>::namespaced(client.clone(), &ns)
            .list(&lp)
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert!(
        Api::<ConfigMap>::namespaced(client.clone(), &ns)
            .list(&lp)
            .await
            .unwrap()
            .items
            .iter()
            .all(|c| c.name_any() == "kube-root-ca.crt")
    );
    assert!(
        Api::<Service>::namespaced(client.clone(), &ns)
            .list(&lp)
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert!(
        event_reasons(&client, &ns)
            .await
            .contains(&"InvalidSpec".to_owned())
    );

    // Fixing the spec recovers.
    let api: Api<MessengerApp> = Api::namespaced(client.clone(), &ns);
    api.patch("demo", &PatchParams::default(), &Patch::Merge(json!({"spec": {"components": {"chat": {"env": [{"name": "CHAT_CACHE_TTL", "value": "30s"}]}}}})))
        .await
        .unwrap();
    reconcile_now(&client, &ctx, &ns, "demo").await;
    let status = get_app(&client, &ns, "demo").await.status.unwrap();
    assert_eq!(
        find_condition(Some(&status), CONDITION_DEGRADED)
            .unwrap()
            .status,
        "False"
    );
    assert_eq!(
        Api::<Deployment>::namespaced(client.clone(), &ns)
            .list(&lp)
            .await
            .unwrap()
            .items
            .len(),
        5
    );
}

#[tokio::test]
async fn child_the_api_server_rejects_degrades_and_waits() {
    let client = cluster().await;
    let ns = namespace(&client, "rejected").await;
    // The CRD accepts any map as a node selector; the Deployment API wants label syntax.
    let spec = json!({"version": "1.0.0", "components": {"auth": {"nodeSelector": {"not a label key!": "x"}}}});
    create_app(&client, &ns, "demo", spec).await;
    let action = reconcile_now(&client, &context(&client), &ns, "demo").await;
    assert_eq!(action, Action::await_change());
    let status = get_app(&client, &ns, "demo").await.status.unwrap();
    let degraded = find_condition(Some(&status), CONDITION_DEGRADED).unwrap();
    assert_eq!(
        (degraded.status.as_str(), degraded.reason.as_str()),
        ("True", "ApplyRejected")
    );
    assert!(
        degraded.message.contains("nodeSelector"),
        "{}",
        degraded.message
    );
    assert_eq!(status.phase, Some(Phase::Degraded));
}

#[tokio::test]
async fn children_no_longer_desired_are_deleted() {
    let client = cluster().await;
    let ns = namespace(&client, "prune").await;
    create_app(&client, &ns, "demo", full_spec()).await;
    let ctx = context(&client);
    reconcile_now(&client, &ctx, &ns, "demo").await;
    let ingresses: Api<Ingress> = Api::namespaced(client.clone(), &ns);
    ingresses.get("demo").await.expect("Ingress created");
    // An unrelated Ingress in the same namespace must survive.
    let foreign: Ingress = serde_json::from_value(
        json!({"metadata": {"name": "foreign", "labels": {"app.kubernetes.io/instance": "demo"}},
        "spec": {"defaultBackend": {"service": {"name": "x", "port": {"number": 80}}}}}),
    )
    .unwrap();
    ingresses
        .create(&PostParams::default(), &foreign)
        .await
        .unwrap();

    Api::<MessengerApp>::namespaced(client.clone(), &ns)
        .patch(
            "demo",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"ingress": null}})),
        )
        .await
        .unwrap();
    reconcile_now(&client, &ctx, &ns, "demo").await;
    let remaining: Vec<String> = ingresses
        .list(&ListParams::default())
        .await
        .unwrap()
        .iter()
        .map(|i| i.name_any())
        .collect();
    assert_eq!(
        remaining,
        ["foreign"],
        "only the app's own Ingress is removed"
    );
}

/// Starts the real controller for one namespace; dropping the guard stops it.
struct RunningController {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    ctx: Arc<Context>,
}

impl Drop for RunningController {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.abort();
    }
}

async fn start_controller(client: &Client, ns: &str) -> RunningController {
    let caps = discover_capabilities(client).await.unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let ctx = context(client);
    let task = tokio::spawn(run_controller(
        ctx.clone(),
        Some(ns.to_owned()),
        caps,
        async move {
            let _ = stopped.await;
        },
    ));
    RunningController {
        stop: Some(stop),
        task,
        ctx,
    }
}

#[tokio::test]
async fn running_controller_recreates_a_deleted_child() {
    let client = cluster().await;
    let ns = namespace(&client, "recreate").await;
    let _controller = start_controller(&client, &ns).await;
    create_app(&client, &ns, "demo", json!({"version": "1.0.0"})).await;
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let original = eventually(
        "the controller creates the users Service",
        Duration::from_secs(20),
        || async { services.get_opt("demo-users-blue").await.ok().flatten() },
    )
    .await;
    services
        .delete("demo-users-blue", &DeleteParams::default())
        .await
        .unwrap();
    let recreated = eventually(
        "the deleted Service is re-created",
        Duration::from_secs(20),
        || async {
            services
                .get_opt("demo-users-blue")
                .await
                .ok()
                .flatten()
                .filter(|s| s.uid() != original.uid())
        },
    )
    .await;
    assert_eq!(recreated.spec.unwrap().ports.unwrap()[0].port, 8004);

    // Converged: the running controller must not keep rewriting what it owns.
    let app = get_app(&client, &ns, "demo").await;
    eventually("the status is written", Duration::from_secs(10), || async {
        get_app(&client, &ns, "demo").await.status.map(|_| ())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = resource_versions(&client, &ns, &app).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        before,
        resource_versions(&client, &ns, &app).await,
        "no writes in steady state"
    );
}

#[tokio::test]
async fn running_controller_puts_back_a_hand_edited_child() {
    let client = cluster().await;
    let ns = namespace(&client, "drift").await;
    let _controller = start_controller(&client, &ns).await;
    create_app(&client, &ns, "demo", json!({"version": "1.0.0"})).await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let configs: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    eventually(
        "the controller creates the chat Deployment",
        Duration::from_secs(20),
        || async { deployments.get_opt("demo-chat-blue").await.ok().flatten() },
    )
    .await;
    eventually(
        "the controller creates the ConfigMap",
        Duration::from_secs(20),
        || async { configs.get_opt("demo-config-blue").await.ok().flatten() },
    )
    .await;

    // What `kubectl edit` / `kubectl scale` would do: another manager changes owned fields.
    let edit = PatchParams {
        field_manager: Some("kubectl-edit".into()),
        ..PatchParams::default()
    };
    deployments
        .patch(
            "demo-chat-blue",
            &edit,
            &Patch::Merge(json!({"spec": {"replicas": 7}})),
        )
        .await
        .unwrap();
    configs
        .patch(
            "demo-config-blue",
            &edit,
            &Patch::Merge(json!({"data": {"USERS_URL": "http://demo-users-green:8004"}})),
        )
        .await
        .unwrap();

    eventually(
        "the replicas are put back",
        Duration::from_secs(20),
        || async {
            let d = deployments.get("demo-chat-blue").await.ok()?;
            (d.spec.replicas == Some(1)).then_some(())
        },
    )
    .await;
    eventually(
        "the peer address is put back",
        Duration::from_secs(20),
        || async {
            let cm = configs.get("demo-config-blue").await.ok()?;
            (cm.data?.get("USERS_URL")?.as_str() == "http://demo-users-blue:8004").then_some(())
        },
    )
    .await;
}

fn lease_config(ns: &str, identity: &str) -> LeaseConfig {
    LeaseConfig::new("messenger-operator-test", ns, identity)
        .with_lease_duration(Duration::from_secs(3))
}

#[tokio::test]
async fn two_instances_elect_one_leader_and_the_follower_takes_over_when_it_dies() {
    let client = cluster().await;
    let ns = namespace(&client, "election").await;
    let (tx_a, rx_a) = watch::channel(false);
    let (tx_b, rx_b) = watch::channel(false);
    let never = std::future::pending::<()>;
    let a =
        tokio::spawn(LeaderElector::new(client.clone(), lease_config(&ns, "a")).run(tx_a, never()));
    let b =
        tokio::spawn(LeaderElector::new(client.clone(), lease_config(&ns, "b")).run(tx_b, never()));

    let leader = eventually("one instance leads", Duration::from_secs(10), || async {
        match (*rx_a.borrow(), *rx_b.borrow()) {
            (true, false) => Some("a"),
            (false, true) => Some("b"),
            (true, true) => panic!("two leaders at once"),
            (false, false) => None,
        }
    })
    .await;
    // Several renewal rounds: still exactly one leader, and it keeps the lease.
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_ne!(*rx_a.borrow(), *rx_b.borrow(), "exactly one leader");
    }
    let lease = Api::<Lease>::namespaced(client.clone(), &ns)
        .get("messenger-operator-test")
        .await
        .unwrap();
    assert_eq!(lease.spec.unwrap().holder_identity.as_deref(), Some(leader));

    // Kill the leader without releasing the lease (a crashed pod).
    let (dead, follower_rx) = if leader == "a" { (a, rx_b) } else { (b, rx_a) };
    let killed_at = Instant::now();
    dead.abort();
    eventually(
        "the follower takes over",
        Duration::from_secs(10),
        || async { (*follower_rx.borrow()).then_some(()) },
    )
    .await;
    let handover = killed_at.elapsed();
    // Lease 3s, plus one retry period (0.4s), request time and slack for a loaded machine.
    assert!(
        handover <= Duration::from_millis(5500),
        "handover took {handover:?}"
    );
    assert!(
        handover >= Duration::from_secs(2),
        "the follower must wait for the lease to expire, took {handover:?}"
    );
}

#[tokio::test]
async fn leader_whose_lease_is_taken_stops_at_once() {
    let client = cluster().await;
    let ns = namespace(&client, "stolen").await;
    let (tx, rx) = watch::channel(false);
    let _elector = tokio::spawn(
        LeaderElector::new(client.clone(), lease_config(&ns, "a")).run(tx, std::future::pending()),
    );
    eventually("the instance leads", Duration::from_secs(10), || async {
        (*rx.borrow()).then_some(())
    })
    .await;

    let leases: Api<Lease> = Api::namespaced(client.clone(), &ns);
    // Another writer takes the lease (retrying if a renewal slips in between read and write).
    loop {
        let mut lease = leases.get("messenger-operator-test").await.unwrap();
        let spec = lease.spec.as_mut().unwrap();
        spec.holder_identity = Some("intruder".into());
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        spec.lease_duration_seconds = Some(30);
        match leases
            .replace("messenger-operator-test", &PostParams::default(), &lease)
            .await
        {
            Ok(_) => break,
            Err(kube::Error::Api(status)) if status.code == 409 => continue,
            Err(e) => panic!("taking the lease: {e}"),
        }
    }
    let taken_at = Instant::now();
    eventually(
        "the old leader steps down",
        Duration::from_secs(5),
        || async { (!*rx.borrow()).then_some(()) },
    )
    .await;
    assert!(
        taken_at.elapsed() < Duration::from_secs(2),
        "stepped down after {:?}, the next renewal (every 0.4 s) must notice",
        taken_at.elapsed()
    );
}

/// One `messenger-operator run` process, killed (SIGKILL) when dropped.
struct OperatorProcess {
    child: std::process::Child,
    admin: std::net::SocketAddr,
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn kubeconfig_path() -> String {
    std::env::var("TEST_KUBECONFIG").unwrap_or_else(|_| DEFAULT_KUBECONFIG.to_owned())
}

fn spawn_operator(ns: &str, identity: &str) -> OperatorProcess {
    let admin = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_messenger-operator"))
        .arg("run")
        .env("KUBECONFIG", kubeconfig_path())
        .env("ADMIN_ADDR", admin.to_string())
        .env("WATCH_NAMESPACE", ns)
        .env("POD_NAMESPACE", ns)
        .env("POD_NAME", identity)
        .env("LEASE_DURATION_SECONDS", "3")
        .env("LOG_FORMAT", "json")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start messenger-operator");
    OperatorProcess { child, admin }
}

/// Body of `GET path` on the admin server, or `None` while it is not answering.
async fn admin_get(addr: std::net::SocketAddr, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    let code = response.split_whitespace().nth(1)?.parse().ok()?;
    Some((
        code,
        response
            .split("\r\n\r\n")
            .nth(1)
            .unwrap_or_default()
            .to_owned(),
    ))
}

async fn leads(process: &OperatorProcess) -> Option<bool> {
    let (_, body) = admin_get(process.admin, "/metrics").await?;
    body.lines()
        .find(|l| l.starts_with("messenger_operator_leader "))
        .map(|l| l.ends_with(" 1"))
}

#[tokio::test]
async fn two_operator_processes_one_reconciles_and_the_other_takes_over_after_a_kill() {
    let client = cluster().await;
    let ns = namespace(&client, "processes").await;
    let a = spawn_operator(&ns, "operator-a");
    let b = spawn_operator(&ns, "operator-b");
    for process in [&a, &b] {
        eventually(
            "the admin server is ready",
            Duration::from_secs(20),
            || async {
                admin_get(process.admin, "/readyz")
                    .await
                    .filter(|(code, _)| *code == 200)
                    .map(|_| ())
            },
        )
        .await;
        assert_eq!(
            admin_get(process.admin, "/healthz").await.map(|r| r.0),
            Some(200)
        );
    }
    let leader_is_a = eventually("one process leads", Duration::from_secs(15), || async {
        match (leads(&a).await?, leads(&b).await?) {
            (true, false) => Some(true),
            (false, true) => Some(false),
            (true, true) => panic!("two leaders"),
            (false, false) => None,
        }
    })
    .await;

    // The leader reconciles: an app gets its children.
    create_app(&client, &ns, "demo", json!({"version": "1.0.0"})).await;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    eventually(
        "the leader creates the Deployments",
        Duration::from_secs(20),
        || async {
            (deployments
                .list(&ListParams::default())
                .await
                .ok()?
                .items
                .len()
                == 5)
                .then_some(())
        },
    )
    .await;

    let (leader, follower) = if leader_is_a { (a, b) } else { (b, a) };
    drop(leader); // SIGKILL: no lease release
    let killed_at = Instant::now();
    eventually(
        "the follower takes over",
        Duration::from_secs(10),
        || async { leads(&follower).await?.then_some(()) },
    )
    .await;
    assert!(
        killed_at.elapsed() < Duration::from_secs(7),
        "handover took {:?}",
        killed_at.elapsed()
    );

    // The new leader reconciles too: a deleted child comes back.
    deployments
        .delete("demo-chat-blue", &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        "the new leader re-creates the Deployment",
        Duration::from_secs(20),
        || async {
            deployments
                .get_opt("demo-chat-blue")
                .await
                .ok()
                .flatten()
                .map(|_| ())
        },
    )
    .await;
}

/// Installs the Gateway API's HTTPRoute CRD, generated from the `gateway-api` crate's
/// types, so the server validates the operator's routes against the real schema.
async fn install_http_route_crd(client: &Client) {
    use gateway_api_kube_core::CustomResourceExt as _;
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let params = PatchParams::apply("messenger-operator-tests").force();
    let mut generated = serde_json::to_value(gateway_api::httproutes::HttpRoute::crd())
        .expect("the gateway-api CRD serializes");
    // Kubernetes 1.20 knows no CEL rules (server-side apply refuses the field), and its
    // CRD validation fails on an enum listing `null` (schemars' optional enums), which the
    // same property's `nullable: true` admits anyway.
    strip_key(&mut generated, "x-kubernetes-validations");
    drop_null_enum_values(&mut generated);
    let mut crd: CustomResourceDefinition =
        serde_json::from_value(generated).expect("the gateway-api CRD is a CRD");
    // *.k8s.io groups are protected; the real Gateway API CRDs carry this approval too.
    crd.metadata.annotations = Some(BTreeMap::from([(
        "api-approved.kubernetes.io".to_owned(),
        "https://github.com/kubernetes-sigs/gateway-api/pull/1538".to_owned(),
    )]));
    api.patch(
        "httproutes.gateway.networking.k8s.io",
        &params,
        &Patch::Apply(&crd),
    )
    .await
    .expect("install the HTTPRoute CRD");
    eventually("HTTPRoutes are served", Duration::from_secs(20), || async {
        discover_capabilities(client)
            .await
            .ok()?
            .http_route
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn gateway_api_router_gets_an_http_route_and_switching_routers_prunes_it() {
    let client = cluster().await;
    install_http_route_crd(&client).await;
    let ns = namespace(&client, "gatewayapi").await;
    let ingress = json!({"host": "messenger.local", "router": "gatewayAPI", "gatewayRef": {"name": "gw", "namespace": "infra"}});
    create_app(
        &client,
        &ns,
        "demo",
        json!({"version": "1.0.0", "ingress": ingress}),
    )
    .await;
    let ctx = context(&client);
    reconcile_now(&client, &ctx, &ns, "demo").await;

    let routes: Api<HTTPRoute> = Api::namespaced(client.clone(), &ns);
    let route = routes.get("demo").await.expect("HTTPRoute created");
    assert_eq!(route.spec.parent_refs[0].name, "gw");
    assert_eq!(
        route.spec.parent_refs[0].namespace.as_deref(),
        Some("infra")
    );
    assert_eq!(route.spec.hostnames, vec!["messenger.local".to_owned()]);
    let backend = &route.spec.rules[0].backend_refs[0];
    assert_eq!(
        (backend.name.as_str(), backend.port, backend.weight),
        ("demo-gateway-blue", 8080, 100)
    );
    let ingresses: Api<Ingress> = Api::namespaced(client.clone(), &ns);
    assert!(
        ingresses
            .list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty(),
        "no Ingress with gatewayAPI"
    );

    Api::<MessengerApp>::namespaced(client.clone(), &ns)
        .patch(
            "demo",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"ingress": {"router": "ingressNginx", "gatewayRef": null, "className": "nginx"}}})),
        )
        .await
        .unwrap();
    reconcile_now(&client, &ctx, &ns, "demo").await;
    ingresses
        .get("demo")
        .await
        .expect("Ingress after switching to ingressNginx");
    assert!(
        routes.get_opt("demo").await.unwrap().is_none(),
        "the HTTPRoute is pruned"
    );
}

#[tokio::test]
async fn deleting_an_app_drops_its_phase_metric() {
    let client = cluster().await;
    let ns = namespace(&client, "forget").await;
    let controller = start_controller(&client, &ns).await;
    create_app(&client, &ns, "demo", json!({"version": "1.0.0"})).await;
    let phase = |phase: &str| messenger_operator::metrics::PhaseLabels {
        namespace: ns.clone(),
        name: "demo".into(),
        phase: phase.into(),
    };
    let exported = |ctx: &Context| {
        let mut registry = Registry::default();
        registry.register("phase", "", ctx.metrics.app_phase.clone());
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        text
    };
    eventually(
        "the phase gauge is set",
        Duration::from_secs(20),
        || async {
            (controller
                .ctx
                .metrics
                .app_phase
                .get_or_create(&phase("Progressing"))
                .get()
                == 1)
                .then_some(())
        },
    )
    .await;
    Api::<MessengerApp>::namespaced(client.clone(), &ns)
        .delete("demo", &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        "the series of the deleted app are gone",
        Duration::from_secs(20),
        || async { (!exported(&controller.ctx).contains(&ns)).then_some(()) },
    )
    .await;
}

async fn patch_app(client: &Client, ns: &str, name: &str, patch: serde_json::Value) {
    Api::<MessengerApp>::namespaced(client.clone(), ns)
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("patch MessengerApp");
}

fn slot_deployments(app: &str, slot: &str) -> Vec<String> {
    ["gateway", "auth", "users", "friends", "chat"]
        .iter()
        .map(|c| format!("{app}-{c}-{slot}"))
        .collect()
}

/// The slot the Service `name` selects.
async fn selected_slot(client: &Client, ns: &str, name: &str) -> Option<String> {
    let service = Api::<Service>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await
        .unwrap()?;
    service.spec?.selector?.get("messenger.dev/slot").cloned()
}

async fn image_and_replicas(client: &Client, ns: &str, name: &str) -> (String, i32, String) {
    let d = Api::<Deployment>::namespaced(client.clone(), ns)
        .get(name)
        .await
        .unwrap();
    let image = d.spec.template.spec.as_ref().unwrap().containers[0]
        .image
        .clone()
        .unwrap();
    (
        image,
        d.spec.replicas.unwrap_or(1),
        d.resource_version().unwrap(),
    )
}

#[tokio::test]
async fn blue_green_rollout_switches_the_entry_service_and_keeps_the_old_slot_untouched() {
    let client = cluster().await;
    let ns = namespace(&client, "bluegreen").await;
    let spec = json!({"version": "1.0.0", "strategy": {"type": "BlueGreen", "blueGreen": {"scaleDownDelaySeconds": 1}}});
    create_app(&client, &ns, "demo", spec).await;
    let ctx = context(&client);
    reconcile_now(&client, &ctx, &ns, "demo").await;
    simulate_readiness(&client, &ns, &slot_deployments("demo", "blue")).await;
    reconcile_now(&client, &ctx, &ns, "demo").await;
    let status = get_app(&client, &ns, "demo").await.status.unwrap();
    assert_eq!(status.phase, Some(Phase::Healthy));
    let blue_before = image_and_replicas(&client, &ns, "demo-chat-blue").await;

    patch_app(&client, &ns, "demo", json!({"spec": {"version": "2.0.0"}})).await;
    reconcile_now(&client, &ctx, &ns, "demo").await;
    let status = get_app(&client, &ns, "demo").await.status.unwrap();
    let rollout = status.rollout.clone().expect("a rollout started");
    assert_eq!(rollout.candidate.as_str(), "green");
    assert_eq!(status.phase, Some(Phase::Progressing));
    assert_eq!(
        image_and_replicas(&client, &ns, "demo-chat-blue").await,
        blue_before,
        "the serving slot is not touched by the spec change"
    );
    let green = image_and_replicas(&client, &ns, "demo-chat-green").await;
    assert_eq!(green.0, "ghcr.io/messenger/messenger-chat:2.0.0");
    assert_eq!(
        selected_slot(&client, &ns, "demo-gateway").await.as_deref(),
        Some("blue")
    );
    assert_eq!(
        selected_slot(&client, &ns, "demo-gateway-preview")
            .await
            .as_deref(),
        Some("green"),
        "the new slot is reachable for checks before the switch"
    );

    // Still unavailable: nothing switches.
    reconcile_now(&client, &ctx, &ns, "demo").await;
    assert_eq!(
        selected_slot(&client, &ns, "demo-gateway").await.as_deref(),
        Some("blue")
    );

    simulate_readiness(&client, &ns, &slot_deployments("demo", "green")).await;
    reconcile_now(&client, &ctx, &ns, "demo").await;
    let status = get_app(&client, &ns, "demo").await.status.unwrap();
    assert_eq!(status.active_slot.map(|s| s.as_str()), Some("green"));
    assert_eq!(status.stable_version.as_deref(), Some("2.0.0"));
    assert!(status.rollout.is_none());
    assert_eq!(
        selected_slot(&client, &ns, "demo-gateway").await.as_deref(),
        Some("green")
    );
    assert!(
        selected_slot(&client, &ns, "demo-gateway-preview")
            .await
            .is_none(),
        "no preview without a rollout"
    );
    assert!(
        event_reasons(&client, &ns)
            .await
            .contains(&"Promoted".to_owned())
    );
    // The old slot keeps running for the scale-down delay, then goes to zero replicas.
    assert_eq!(
        image_and_replicas(&client, &ns, "demo-chat-blue").await.1,
        1
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    reconcile_now(&client, &ctx, &ns, "demo").await;
    let blue_after = image_and_replicas(&client, &ns, "demo-chat-blue").await;
    assert_eq!(
        (blue_after.0.as_str(), blue_after.1),
        ("ghcr.io/messenger/messenger-chat:1.0.0", 0),
        "scaled down, kept for an instant switch-back"
    );
}

/// (candidate weight, stable weight) as the router carries them: HTTPRoute backendRefs or
/// the nginx canary Ingress.
async fn router_weights(client: &Client, ns: &str, router: &str) -> (i32, i32) {
    match router {
        "gatewayAPI" => {
            let route = Api::<HTTPRoute>::namespaced(client.clone(), ns)
                .get("demo")
                .await
                .unwrap();
            let weight = |slot: &str| {
                route.spec.rules[0]
                    .backend_refs
                    .iter()
                    .find(|b| b.name.ends_with(slot))
                    .map_or(0, |b| b.weight)
            };
            (weight("-green"), weight("-blue"))
        }
        _ => {
            let canary = Api::<Ingress>::namespaced(client.clone(), ns)
                .get_opt("demo.canary")
                .await
                .unwrap();
            let weight = canary
                .and_then(|i| {
                    i.metadata
                        .annotations?
                        .get("nginx.ingress.kubernetes.io/canary-weight")?
                        .parse()
                        .ok()
                })
                .unwrap_or(0);
            (weight, 100 - weight)
        }
    }
}

#[tokio::test]
async fn canary_rollout_writes_exactly_the_step_weights_on_each_router_and_aborts_to_stable() {
    let client = cluster().await;
    install_http_route_crd(&client).await;
    for router in ["gatewayAPI", "ingressNginx"] {
        let ns = namespace(&client, &format!("canary-{}", router.to_lowercase())).await;
        let ingress = if router == "gatewayAPI" {
            json!({"host": "messenger.local", "router": "gatewayAPI", "gatewayRef": {"name": "gw"}})
        } else {
            json!({"host": "messenger.local", "router": "ingressNginx", "className": "nginx"})
        };
        let spec = json!({"version": "1.0.0", "ingress": ingress, "strategy": {"type": "Canary", "canary": {"steps": [
            {"setWeight": 20}, {"pause": {}}, {"setWeight": 60}, {"pause": {}}
        ]}}});
        create_app(&client, &ns, "demo", spec).await;
        let ctx = context(&client);
        reconcile_now(&client, &ctx, &ns, "demo").await;
        simulate_readiness(&client, &ns, &slot_deployments("demo", "blue")).await;
        reconcile_now(&client, &ctx, &ns, "demo").await;
        assert_eq!(router_weights(&client, &ns, router).await, (0, 100));

        patch_app(&client, &ns, "demo", json!({"spec": {"version": "2.0.0"}})).await;
        reconcile_now(&client, &ctx, &ns, "demo").await;
        assert_eq!(
            router_weights(&client, &ns, router).await,
            (0, 100),
            "{router}: no weight before the candidate is Available"
        );
        simulate_readiness(&client, &ns, &slot_deployments("demo", "green")).await;
        reconcile_now(&client, &ctx, &ns, "demo").await;
        assert_eq!(
            router_weights(&client, &ns, router).await,
            (20, 80),
            "{router}"
        );
        reconcile_now(&client, &ctx, &ns, "demo").await;
        let status = get_app(&client, &ns, "demo").await.status.unwrap();
        assert_eq!(status.phase, Some(Phase::Paused), "{router}");
        assert_eq!(
            router_weights(&client, &ns, router).await,
            (20, 80),
            "{router}"
        );

        // A restarted operator (a fresh context: nothing kept in memory) continues from
        // the status with no traffic jump.
        let restarted = context(&client);
        reconcile_now(&client, &restarted, &ns, "demo").await;
        assert_eq!(
            router_weights(&client, &ns, router).await,
            (20, 80),
            "{router}"
        );

        patch_app(
            &client,
            &ns,
            "demo",
            json!({"metadata": {"annotations": {"messenger.dev/promote": "1"}}}),
        )
        .await;
        reconcile_now(&client, &restarted, &ns, "demo").await;
        reconcile_now(&client, &restarted, &ns, "demo").await;
        assert_eq!(
            router_weights(&client, &ns, router).await,
            (60, 40),
            "{router}"
        );

        patch_app(
            &client,
            &ns,
            "demo",
            json!({"metadata": {"annotations": {"messenger.dev/abort": "1"}}}),
        )
        .await;
        reconcile_now(&client, &restarted, &ns, "demo").await;
        assert_eq!(
            router_weights(&client, &ns, router).await,
            (0, 100),
            "{router}: abort returns all traffic to stable at once"
        );
        let status = get_app(&client, &ns, "demo").await.status.unwrap();
        assert_eq!(status.phase, Some(Phase::Degraded), "{router}");
        assert_eq!(
            find_condition(Some(&status), CONDITION_DEGRADED)
                .unwrap()
                .reason,
            "AbortedByUser"
        );
        assert_eq!(status.active_slot.map(|s| s.as_str()), Some("blue"));
        assert!(
            event_reasons(&client, &ns)
                .await
                .contains(&"RolloutAborted".to_owned())
        );
    }
}

#[tokio::test]
async fn a_wiped_status_is_recovered_from_the_entry_service_and_the_serving_slot_survives() {
    let client = cluster().await;
    let ns = namespace(&client, "wiped").await;
    let spec =
        json!({"version": "1.0.0", "strategy": {"blueGreen": {"scaleDownDelaySeconds": 3600}}});
    create_app(&client, &ns, "demo", spec).await;
    let ctx = context(&client);
    roll_out_to_green(&client, &ctx, &ns).await;
    assert_eq!(
        selected_slot(&client, &ns, "demo-gateway").await.as_deref(),
        Some("green")
    );

    // A restored backup without status.
    Api::<MessengerApp>::namespaced(client.clone(), &ns)
        .patch_status(
            "demo",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": null})),
        )
        .await
        .unwrap();
    assert!(get_app(&client, &ns, "demo").await.status.is_none());
    reconcile_now(&client, &ctx, &ns, "demo").await;
    let status = get_app(&client, &ns, "demo").await.status.unwrap();
    assert_eq!(status.active_slot.map(|s| s.as_str()), Some("green"));
    assert!(status.rollout.is_none(), "green runs the spec");
    assert_eq!(
        selected_slot(&client, &ns, "demo-gateway").await.as_deref(),
        Some("green"),
        "traffic never left the serving slot"
    );
    assert_eq!(
        image_and_replicas(&client, &ns, "demo-chat-green").await.0,
        "ghcr.io/messenger/messenger-chat:2.0.0"
    );
    assert!(
        event_reasons(&client, &ns)
            .await
            .contains(&"ActiveSlotRecovered".to_owned())
    );
}

/// App `demo` from its first reconcile: blue up and Available, then version 2.0.0 rolled
/// into green, which is Available.
async fn roll_out_to_green(client: &Client, ctx: &Arc<Context>, ns: &str) {
    reconcile_now(client, ctx, ns, "demo").await;
    simulate_readiness(client, ns, &slot_deployments("demo", "blue")).await;
    reconcile_now(client, ctx, ns, "demo").await;
    patch_app(client, ns, "demo", json!({"spec": {"version": "2.0.0"}})).await;
    reconcile_now(client, ctx, ns, "demo").await;
    simulate_readiness(client, ns, &slot_deployments("demo", "green")).await;
    reconcile_now(client, ctx, ns, "demo").await;
}

/// A `/metrics` endpoint whose body the test sets.
async fn metrics_endpoint() -> (u16, Arc<std::sync::Mutex<String>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let body = Arc::new(std::sync::Mutex::new(String::new()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let served = body.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let text = served.lock().unwrap().clone();
            tokio::spawn(async move {
                let mut request = [0u8; 1024];
                let _ = stream.read(&mut request).await;
                let response = format!(
                    "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{text}",
                    text.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    (port, body)
}

fn gateway_metrics(ok: u64, errors: u64) -> String {
    format!(
        "http_server_requests_total{{method=\"GET\",route=\"/v1/chats\",status=\"200\"}} {ok}\n\
         http_server_requests_total{{method=\"GET\",route=\"/v1/chats\",status=\"500\"}} {errors}\n"
    )
}

#[tokio::test]
async fn canary_analysis_reads_the_candidate_gateway_pods_and_aborts_on_errors() {
    use k8s_openapi::api::core::v1::Pod;
    let client = cluster().await;
    let ns = namespace(&client, "analysis").await;
    let spec = json!({"version": "1.0.0", "strategy": {"type": "Canary", "canary": {"steps": [
        {"setWeight": 10},
        {"analysis": {"maxErrorRate": 0.05, "intervalSeconds": 1, "minRequests": 10}},
        {"setWeight": 50}
    ]}}});
    create_app(&client, &ns, "demo", spec).await;
    let (port, body) = metrics_endpoint().await;
    let ctx = Arc::new(
        Context::new(
            client.clone(),
            Metrics::register(&mut Registry::default()),
            Some("tests".into()),
        )
        .with_scraper(Arc::new(messenger_operator::scrape::PodScraper {
            port,
            timeout: Duration::from_secs(2),
        })),
    );
    roll_out_to_green(&client, &ctx, &ns).await;
    let status = get_app(&client, &ns, "demo").await.status.unwrap();
    assert_eq!(status.rollout.as_ref().unwrap().weight, 10);

    // The candidate slot's gateway pod, "running" on this machine (no kubelet here).
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &ns);
    let default: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": "default"}})).unwrap();
    let _ = accounts.create(&PostParams::default(), &default).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "demo-gateway-green-1", "labels": {
            "app.kubernetes.io/name": "messenger", "app.kubernetes.io/instance": "demo",
            "app.kubernetes.io/component": "gateway", "messenger.dev/slot": "green"}},
        "spec": {"automountServiceAccountToken": false, "containers": [{"name": "gateway", "image": "gateway:2.0.0"}]}
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    pods.patch_status(
        "demo-gateway-green-1",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"podIP": "127.0.0.1", "conditions": [{"type": "Ready", "status": "True"}]}})),
    )
    .await
    .unwrap();

    *body.lock().unwrap() = gateway_metrics(100, 0);
    reconcile_now(&client, &ctx, &ns, "demo").await;
    let status = get_app(&client, &ns, "demo").await.status.unwrap();
    let baseline = status
        .rollout
        .as_ref()
        .unwrap()
        .analysis_baseline
        .clone()
        .expect("the first scrape is the baseline");
    assert_eq!(baseline.sample.requests, 100.0);

    // Over the interval: 100 more requests, half of them 5xx.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    *body.lock().unwrap() = gateway_metrics(150, 50);
    reconcile_now(&client, &ctx, &ns, "demo").await;
    let status = get_app(&client, &ns, "demo").await.status.unwrap();
    let rollout = status.rollout.as_ref().unwrap();
    assert_eq!(rollout.abort_reason.as_deref(), Some("AnalysisFailed"));
    assert_eq!((rollout.analysis.failed, rollout.weight), (1, 0));
    assert_eq!(status.phase, Some(Phase::Degraded));
    assert_eq!(
        selected_slot(&client, &ns, "demo-gateway").await.as_deref(),
        Some("blue")
    );
}

#[tokio::test]
async fn a_status_computed_from_a_stale_app_is_refused() {
    let client = cluster().await;
    let ns = namespace(&client, "stale").await;
    create_app(&client, &ns, "demo", json!({"version": "1.0.0"})).await;
    let ctx = context(&client);
    reconcile_now(&client, &ctx, &ns, "demo").await;
    simulate_readiness(&client, &ns, &slot_deployments("demo", "blue")).await;
    reconcile_now(&client, &ctx, &ns, "demo").await;
    // A cache that has not seen the latest write yet.
    let stale = get_app(&client, &ns, "demo").await;
    patch_app(&client, &ns, "demo", json!({"spec": {"version": "2.0.0"}})).await;
    reconcile_now(&client, &ctx, &ns, "demo").await;
    let fresh = get_app(&client, &ns, "demo").await;
    assert!(fresh.status.as_ref().unwrap().rollout.is_some());
    let error = reconcile(Arc::new(stale), ctx.clone())
        .await
        .expect_err("the stale decision must not be written");
    assert!(
        error.to_string().contains("changed since it was read"),
        "{error}"
    );
    let after = get_app(&client, &ns, "demo").await;
    assert_eq!(
        after.status, fresh.status,
        "the rollout did not move backwards"
    );
    assert!(
        selected_slot(&client, &ns, "demo-gateway-preview")
            .await
            .is_some(),
        "the candidate's preview is not pruned by the stale decision"
    );
    assert_eq!(
        image_and_replicas(&client, &ns, "demo-chat-green").await.0,
        "ghcr.io/messenger/messenger-chat:2.0.0"
    );
}

#[tokio::test]
async fn a_config_only_change_rolls_out_and_rolls_back_with_its_config() {
    let client = cluster().await;
    let ns = namespace(&client, "config").await;
    let spec = json!({"version": "1.0.0", "config": {"REQUEST_TIMEOUT": "10s"}, "strategy": {"blueGreen": {"autoPromote": false}}});
    create_app(&client, &ns, "demo", spec).await;
    let ctx = context(&client);
    reconcile_now(&client, &ctx, &ns, "demo").await;
    simulate_readiness(&client, &ns, &slot_deployments("demo", "blue")).await;
    reconcile_now(&client, &ctx, &ns, "demo").await;
    let configs: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let blue = configs.get("demo-config-blue").await.unwrap();

    patch_app(
        &client,
        &ns,
        "demo",
        json!({"spec": {"config": {"REQUEST_TIMEOUT": "1s"}}}),
    )
    .await;
    reconcile_now(&client, &ctx, &ns, "demo").await;
    let status = get_app(&client, &ns, "demo").await.status.unwrap();
    assert!(status.rollout.is_some(), "a config change is a rollout");
    let green = configs.get("demo-config-green").await.unwrap();
    assert_eq!(green.data.unwrap()["REQUEST_TIMEOUT"], "1s");
    let blue_now = configs.get("demo-config-blue").await.unwrap();
    assert_eq!(
        (blue_now.resource_version(), blue_now.data.clone()),
        (blue.resource_version(), blue.data.clone()),
        "the serving slot keeps its config"
    );

    // GitOps revert: the config goes back; traffic never left blue, which still has it.
    patch_app(
        &client,
        &ns,
        "demo",
        json!({"spec": {"config": {"REQUEST_TIMEOUT": "10s"}}}),
    )
    .await;
    reconcile_now(&client, &ctx, &ns, "demo").await;
    let status = get_app(&client, &ns, "demo").await.status.unwrap();
    assert!(status.rollout.is_none());
    assert_eq!(status.phase, Some(Phase::Healthy));
    assert_eq!(
        selected_slot(&client, &ns, "demo-gateway").await.as_deref(),
        Some("blue")
    );
    assert_eq!(
        configs.get("demo-config-blue").await.unwrap().data.unwrap()["REQUEST_TIMEOUT"],
        "10s"
    );
    assert!(
        event_reasons(&client, &ns)
            .await
            .contains(&"RolledBack".to_owned())
    );
}

#[tokio::test]
async fn operator_process_killed_mid_canary_resumes_with_the_same_weights() {
    let client = cluster().await;
    install_http_route_crd(&client).await;
    let ns = namespace(&client, "killed").await;
    let spec = json!({"version": "1.0.0",
    "ingress": {"host": "messenger.local", "router": "gatewayAPI", "gatewayRef": {"name": "gw"}},
    "strategy": {"type": "Canary", "canary": {"steps": [
        {"setWeight": 30}, {"pause": {}}, {"setWeight": 70}, {"pause": {}}
    ]}}});
    create_app(&client, &ns, "demo", spec).await;
    let apps: Api<MessengerApp> = Api::namespaced(client.clone(), &ns);
    let phase_is = |phase: Phase| {
        let apps = apps.clone();
        move || {
            let apps = apps.clone();
            async move {
                let app = apps.get("demo").await.ok()?;
                (app.status?.phase == Some(phase)).then_some(())
            }
        }
    };
    let operator = spawn_operator(&ns, "operator-a");
    eventually("the blue slot exists", Duration::from_secs(30), || async {
        Api::<Deployment>::namespaced(client.clone(), &ns)
            .get_opt("demo-gateway-blue")
            .await
            .ok()
            .flatten()
    })
    .await;
    simulate_readiness(&client, &ns, &slot_deployments("demo", "blue")).await;
    eventually("Healthy", Duration::from_secs(30), phase_is(Phase::Healthy)).await;
    patch_app(&client, &ns, "demo", json!({"spec": {"version": "2.0.0"}})).await;
    eventually("the green slot exists", Duration::from_secs(30), || async {
        Api::<Deployment>::namespaced(client.clone(), &ns)
            .get_opt("demo-users-green")
            .await
            .ok()
            .flatten()
    })
    .await;
    simulate_readiness(&client, &ns, &slot_deployments("demo", "green")).await;
    eventually(
        "paused at 30",
        Duration::from_secs(30),
        phase_is(Phase::Paused),
    )
    .await;
    assert_eq!(router_weights(&client, &ns, "gatewayAPI").await, (30, 70));
    let before = get_app(&client, &ns, "demo").await.status.unwrap();

    drop(operator); // SIGKILL mid-rollout
    let operator = spawn_operator(&ns, "operator-b");
    // The new process leads (lease expiry) and reconciles; nothing moves while paused.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(router_weights(&client, &ns, "gatewayAPI").await, (30, 70));
    let after = get_app(&client, &ns, "demo").await.status.unwrap();
    assert_eq!(
        after.rollout, before.rollout,
        "the rollout continues from status"
    );
    assert_eq!(after.slots, before.slots);

    patch_app(
        &client,
        &ns,
        "demo",
        json!({"metadata": {"annotations": {"messenger.dev/promote": "1"}}}),
    )
    .await;
    eventually(
        "the restarted operator takes the next step",
        Duration::from_secs(30),
        || async { (router_weights(&client, &ns, "gatewayAPI").await == (70, 30)).then_some(()) },
    )
    .await;
    drop(operator);
}

/// The app's migration Jobs of `slot`, by name.
async fn migration_jobs(client: &Client, ns: &str, slot: &str) -> Vec<Job> {
    let mut jobs = Api::<Job>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&format!("messenger.dev/slot={slot}")))
        .await
        .unwrap()
        .items;
    jobs.sort_by_key(|j| j.name_any());
    jobs
}

/// Ends every migration Job of `slot` with condition `outcome` (`Complete` or `Failed`),
/// the way the Job controller would.
async fn finish_migration_jobs(client: &Client, ns: &str, slot: &str, outcome: &str) {
    let api: Api<Job> = Api::namespaced(client.clone(), ns);
    for job in migration_jobs(client, ns, slot).await {
        let count = if outcome == "Complete" {
            "succeeded"
        } else {
            "failed"
        };
        let status = json!({"status": {
            count: 1,
            "conditions": [{"type": outcome, "status": "True", "reason": "Simulated", "message": "simulated"}]
        }});
        api.patch_status(
            &job.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&status),
        )
        .await
        .unwrap();
    }
}

async fn deployment_names(client: &Client, ns: &str) -> Vec<String> {
    let mut names: Vec<String> = Api::<Deployment>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .iter()
        .map(|d| d.name_any())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn migration_jobs_run_before_a_slot_starts_and_a_failed_one_aborts_before_traffic_moves() {
    let client = cluster().await;
    let ns = namespace(&client, "migrations").await;
    let mut spec = full_spec();
    spec["version"] = json!("1.0.0");
    spec["migrations"] = json!({"enabled": true});
    spec["ingress"] =
        json!({"host": "messenger.local", "router": "ingressNginx", "className": "nginx"});
    spec["strategy"] =
        json!({"type": "Canary", "canary": {"steps": [{"setWeight": 20}, {"pause": {}}]}});
    create_app(&client, &ns, "demo", spec).await;
    let ctx = context(&client);

    // A new app: the first slot's Jobs, no pods yet.
    reconcile_now(&client, &ctx, &ns, "demo").await;
    let jobs = migration_jobs(&client, &ns, "blue").await;
    let names: Vec<String> = jobs.iter().map(|j| j.name_any()).collect();
    let revision = get_app(&client, &ns, "demo").await.status.unwrap().slots[0]
        .template_hash
        .clone();
    assert_eq!(
        names,
        ["auth", "friends", "users"]
            .map(|c| format!("demo-{c}-blue-{}", &revision[..8]))
            .to_vec()
    );
    let container = &jobs[0]
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0];
    assert_eq!(container.args, Some(vec!["migrate".to_owned()]));
    assert_eq!(
        container.image.as_deref(),
        Some("ghcr.io/messenger/messenger-auth:1.0.0")
    );
    assert!(
        deployment_names(&client, &ns).await.is_empty(),
        "no pods before the migrations"
    );

    finish_migration_jobs(&client, &ns, "blue", "Complete").await;
    reconcile_now(&client, &ctx, &ns, "demo").await;
    assert_eq!(deployment_names(&client, &ns).await.len(), 5);
    let auth = Api::<Deployment>::namespaced(client.clone(), &ns)
        .get("demo-auth-blue")
        .await
        .unwrap();
    let env = auth.spec.template.spec.unwrap().containers[0]
        .env
        .clone()
        .unwrap();
    assert!(
        env.iter()
            .any(|e| e.name == "MIGRATE_ON_START" && e.value.as_deref() == Some("false")),
        "the pods do not migrate again at start-up"
    );
    simulate_readiness(&client, &ns, &slot_deployments("demo", "blue")).await;
    reconcile_now(&client, &ctx, &ns, "demo").await;
    assert_eq!(
        get_app(&client, &ns, "demo").await.status.unwrap().phase,
        Some(Phase::Healthy)
    );

    // A rollout whose migrations fail: aborted before the candidate ever had pods or traffic.
    patch_app(&client, &ns, "demo", json!({"spec": {"version": "2.0.0"}})).await;
    reconcile_now(&client, &ctx, &ns, "demo").await;
    assert_eq!(migration_jobs(&client, &ns, "green").await.len(), 3);
    let mut blue = slot_deployments("demo", "blue");
    blue.sort();
    assert_eq!(
        deployment_names(&client, &ns).await,
        blue,
        "the candidate has no pods while it migrates"
    );
    finish_migration_jobs(&client, &ns, "green", "Failed").await;
    reconcile_now(&client, &ctx, &ns, "demo").await;
    let status = get_app(&client, &ns, "demo").await.status.unwrap();
    assert_eq!(status.phase, Some(Phase::Degraded));
    assert_eq!(
        find_condition(Some(&status), CONDITION_DEGRADED)
            .unwrap()
            .reason,
        "MigrationFailed"
    );
    assert_eq!(router_weights(&client, &ns, "ingressNginx").await, (0, 100));
    assert_eq!(
        selected_slot(&client, &ns, "demo-gateway").await.as_deref(),
        Some("blue")
    );
    assert!(
        !deployment_names(&client, &ns)
            .await
            .iter()
            .any(|d| d.ends_with("-green")),
        "the failed slot never started"
    );
    let reasons = event_reasons(&client, &ns).await;
    assert!(
        reasons.contains(&"MigrationFailed".to_owned()),
        "{reasons:?}"
    );
    assert!(
        reasons.contains(&"RolloutAborted".to_owned()),
        "{reasons:?}"
    );

    // Retry: the failed Jobs are replaced by new ones, which succeed; the canary goes on.
    let failed_uids: Vec<String> = migration_jobs(&client, &ns, "green")
        .await
        .iter()
        .map(|j| j.uid().unwrap())
        .collect();
    patch_app(
        &client,
        &ns,
        "demo",
        json!({"metadata": {"annotations": {"messenger.dev/retry": "1"}}}),
    )
    .await;
    reconcile_now(&client, &ctx, &ns, "demo").await;
    let rerun = eventually(
        "the retried Jobs exist",
        Duration::from_secs(10),
        || async {
            reconcile_now(&client, &ctx, &ns, "demo").await;
            let jobs = migration_jobs(&client, &ns, "green").await;
            (jobs.len() == 3
                && jobs
                    .iter()
                    .all(|j| !failed_uids.contains(&j.uid().unwrap())))
            .then_some(jobs)
        },
    )
    .await;
    assert!(rerun.iter().all(|j| {
        j.status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_none()
    }));
    assert_eq!(router_weights(&client, &ns, "ingressNginx").await, (0, 100));
    finish_migration_jobs(&client, &ns, "green", "Complete").await;
    reconcile_now(&client, &ctx, &ns, "demo").await;
    simulate_readiness(&client, &ns, &slot_deployments("demo", "green")).await;
    reconcile_now(&client, &ctx, &ns, "demo").await;
    assert_eq!(router_weights(&client, &ns, "ingressNginx").await, (20, 80));
    reconcile_now(&client, &ctx, &ns, "demo").await;
    assert_eq!(
        get_app(&client, &ns, "demo").await.status.unwrap().phase,
        Some(Phase::Paused)
    );
}

/// A Prometheus of the test's own (Debian's `prometheus`, or `PROMETHEUS_BIN`; installed by
/// scripts/test-deps.sh) scraping `target` every second, with the labels Prometheus's
/// `kubernetes-pods` job would give the candidate slot's gateway pod of app `demo` in `ns`.
struct PrometheusProcess {
    child: std::process::Child,
    dir: std::path::PathBuf,
    url: String,
}

impl PrometheusProcess {
    async fn start(ns: &str, target_port: u16) -> PrometheusProcess {
        let binary = std::env::var("PROMETHEUS_BIN").unwrap_or_else(|_| "prometheus".to_owned());
        let dir = std::env::temp_dir().join(format!("messenger-prometheus-{ns}"));
        std::fs::create_dir_all(&dir).unwrap();
        let config = format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
             scrape_configs:\n\
             - job_name: gateway\n\
             \x20 static_configs:\n\
             \x20 - targets: ['127.0.0.1:{target_port}']\n\
             \x20   labels: {{namespace: '{ns}', app_kubernetes_io_instance: demo, app_kubernetes_io_component: gateway, messenger_dev_slot: green}}\n"
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = std::process::Command::new(&binary)
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run {binary} ({e}): install Debian's prometheus (scripts/test-deps.sh does) or set PROMETHEUS_BIN")
            });
        let url = format!("http://127.0.0.1:{port}");
        let process = PrometheusProcess { child, dir, url };
        let ready = format!("{}/-/ready", process.url);
        eventually("Prometheus is ready", Duration::from_secs(30), || async {
            let response = reqwest::get(&ready).await.ok()?;
            response.status().is_success().then_some(())
        })
        .await;
        process
    }
}

impl Drop for PrometheusProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn canary_analysis_with_prometheus_queries_promql_and_aborts_on_errors() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let client = cluster().await;
    let ns = namespace(&client, "promql").await;

    // The candidate gateway: 5 requests every 100 ms, all 5xx once `failing` is set.
    let (port, body) = metrics_endpoint().await;
    let failing = Arc::new(AtomicBool::new(false));
    let traffic = {
        let failing = failing.clone();
        tokio::spawn(async move {
            let (mut ok, mut errors) = (0, 0);
            loop {
                if failing.load(Ordering::Relaxed) {
                    errors += 5;
                } else {
                    ok += 5;
                }
                *body.lock().unwrap() = gateway_metrics(ok, errors);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let prometheus = PrometheusProcess::start(&ns, port).await;

    let analysis = json!({"maxErrorRate": 0.05, "intervalSeconds": 3, "minRequests": 20, "inconclusiveLimit": 30});
    let spec = json!({"version": "1.0.0", "strategy": {"type": "Canary", "canary": {
        "prometheus": {"url": prometheus.url},
        "steps": [{"setWeight": 10}, {"analysis": analysis}, {"setWeight": 50}, {"analysis": analysis}, {"setWeight": 90}]
    }}});
    create_app(&client, &ns, "demo", spec).await;
    let ctx = context(&client);
    roll_out_to_green(&client, &ctx, &ns).await;
    assert_eq!(
        get_app(&client, &ns, "demo")
            .await
            .status
            .unwrap()
            .rollout
            .unwrap()
            .weight,
        10
    );

    // Healthy traffic as Prometheus counts it: the analysis passes, the canary moves on.
    let rollout = eventually(
        "the analysis over Prometheus passes",
        Duration::from_secs(60),
        || async {
            reconcile_now(&client, &ctx, &ns, "demo").await;
            tokio::time::sleep(Duration::from_millis(400)).await;
            let rollout = get_app(&client, &ns, "demo").await.status?.rollout?;
            (rollout.weight == 50).then_some(rollout)
        },
    )
    .await;
    assert_eq!(rollout.analysis.successful, 1, "{rollout:?}");
    assert_eq!(rollout.analysis.failed, 0, "{rollout:?}");

    // Now every request fails: the next analysis aborts the rollout.
    failing.store(true, Ordering::Relaxed);
    let status = eventually(
        "the analysis over Prometheus fails",
        Duration::from_secs(60),
        || async {
            reconcile_now(&client, &ctx, &ns, "demo").await;
            tokio::time::sleep(Duration::from_millis(400)).await;
            let status = get_app(&client, &ns, "demo").await.status?;
            status
                .rollout
                .as_ref()?
                .abort_reason
                .is_some()
                .then_some(status)
        },
    )
    .await;
    traffic.abort();
    let rollout = status.rollout.as_ref().unwrap();
    assert_eq!(rollout.abort_reason.as_deref(), Some("AnalysisFailed"));
    assert_eq!((rollout.analysis.failed, rollout.weight), (1, 0));
    assert_eq!(status.phase, Some(Phase::Degraded));
    assert_eq!(
        selected_slot(&client, &ns, "demo-gateway").await.as_deref(),
        Some("blue")
    );
}

/// (candidate gateway replicas, whether the entry Service selects both slots).
async fn replica_weights(client: &Client, ns: &str) -> (i32, bool) {
    let green = image_and_replicas(client, ns, "demo-gateway-green").await.1;
    let both = selected_slot(client, ns, "demo-gateway").await.is_none();
    (green, both)
}

#[tokio::test]
async fn canary_without_a_router_sizes_the_candidate_gateways_for_each_step_weight() {
    let client = cluster().await;
    let ns = namespace(&client, "canary-none").await;
    let spec = json!({"version": "1.0.0", "components": {"gateway": {"replicas": 4}},
    "strategy": {"type": "Canary", "canary": {"steps": [
        {"setWeight": 20}, {"pause": {}}, {"setWeight": 50}, {"pause": {}}
    ]}}});
    create_app(&client, &ns, "demo", spec).await;
    let ctx = context(&client);
    roll_out_to_green(&client, &ctx, &ns).await;
    // 20%: ceil(4 × 20 / 80) = 1 candidate gateway beside the 4 stable ones, one Service.
    assert_eq!(replica_weights(&client, &ns).await, (1, true));
    assert_eq!(
        image_and_replicas(&client, &ns, "demo-gateway-blue")
            .await
            .1,
        4
    );
    let promote = |token: &'static str| json!({"metadata": {"annotations": {"messenger.dev/promote": token}}});
    // The resized candidate gateway becomes Available again, then the pause is promoted.
    simulate_readiness(&client, &ns, &slot_deployments("demo", "green")).await;
    patch_app(&client, &ns, "demo", promote("1")).await;
    reconcile_now(&client, &ctx, &ns, "demo").await;
    reconcile_now(&client, &ctx, &ns, "demo").await;
    // 50%: as many candidate gateways as stable ones.
    assert_eq!(replica_weights(&client, &ns).await, (4, true));
    assert_eq!(
        image_and_replicas(&client, &ns, "demo-gateway-blue")
            .await
            .1,
        4
    );

    simulate_readiness(&client, &ns, &slot_deployments("demo", "green")).await;
    patch_app(&client, &ns, "demo", promote("2")).await;
    reconcile_now(&client, &ctx, &ns, "demo").await;
    reconcile_now(&client, &ctx, &ns, "demo").await;
    let status = get_app(&client, &ns, "demo").await.status.unwrap();
    assert_eq!(status.active_slot.map(|s| s.as_str()), Some("green"));
    assert_eq!(
        selected_slot(&client, &ns, "demo-gateway").await.as_deref(),
        Some("green"),
        "after the last step the entry selects the new slot alone"
    );
    assert_eq!(
        image_and_replicas(&client, &ns, "demo-gateway-green")
            .await
            .1,
        4,
        "the new slot runs its own replicas"
    );
}
