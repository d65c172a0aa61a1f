//! The deployment manifests under `config/`: they build with kustomize (kubectl's built-in
//! one), hold what an installation needs (CRD, least-privilege RBAC, a two-replica operator,
//! backing services with the Secrets the samples name), and every sample MessengerApp is
//! accepted by the generated CRD's schema on a real API server while broken ones are not.
//!
//! Needs `kubectl` >= 1.20 (`KUBECTL`, else the one on PATH; `scripts/kube-test-env.sh build`
//! installs Debian's when there is none) and, for the schema tests, the test API
//! server (`TEST_KUBECONFIG`, default `/root/.cache/messenger-kube/kubeconfig`, started by
//! `scripts/kube-test-env.sh start`). Missing either fails the test with a message saying so.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use messenger_operator::crd::MessengerApp;
use messenger_operator::validate::validate;
use serde::Deserialize;
use serde_json::{Value, json};

const DEFAULT_KUBECONFIG: &str = "/root/.cache/messenger-kube/kubeconfig";
const CRD_NAME: &str = "messengerapps.messenger.dev";
const OPERATOR_NAMESPACE: &str = "messenger-system";
const APP_NAMESPACE: &str = "messenger";

// ---------------------------------------------------------------------------------------------
// kubectl and kustomize
// ---------------------------------------------------------------------------------------------

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("operator/ has a parent")
        .to_path_buf()
}

/// The kubectl binary: `KUBECTL`, else `kubectl` on PATH. Panics with what to do when there
/// is none.
fn kubectl_binary() -> PathBuf {
    let candidates: Vec<PathBuf> = std::env::var_os("KUBECTL")
        .map(PathBuf::from)
        .into_iter()
        .chain([PathBuf::from("kubectl")])
        .collect();
    for candidate in &candidates {
        let works = Command::new(candidate)
            .args(["version", "--client"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if works {
            return candidate.clone();
        }
    }
    panic!(
        "kubectl not found (tried KUBECTL and PATH): set KUBECTL to a kubectl binary, or run \
         `scripts/kube-test-env.sh build` (it installs Debian's kubernetes-client when there is none)"
    );
}

fn run(command: &mut Command, stdin: Option<&str>) -> Output {
    command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
    let mut child = command
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    // Written from a thread so a child that answers before reading all its input cannot
    // deadlock against us on full pipes.
    let writer = stdin.map(|input| {
        let mut pipe = child.stdin.take().expect("stdin is piped");
        let input = input.to_owned();
        std::thread::spawn(move || pipe.write_all(input.as_bytes()))
    });
    let output = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("waiting for {command:?}: {e}"));
    if let Some(writer) = writer {
        // A child that exits without reading everything closes the pipe; its exit status and
        // stderr (asserted by the callers) say why, so a write error adds nothing.
        let _ = writer.join().expect("stdin writer thread");
    }
    output
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Parses a multi-document YAML stream into JSON values (empty documents dropped).
fn parse_documents(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|doc| {
            Value::deserialize(doc).unwrap_or_else(|e| panic!("invalid YAML document: {e}\n{yaml}"))
        })
        .filter(|v| !v.is_null())
        .collect()
}

/// `kubectl kustomize config/<dir>`, parsed.
fn kustomize(dir: &str) -> Vec<Value> {
    let path = repo_root().join("config").join(dir);
    let output = run(
        Command::new(kubectl_binary()).arg("kustomize").arg(&path),
        None,
    );
    assert!(
        output.status.success(),
        "`kubectl kustomize {}` failed:\n{}",
        path.display(),
        text(&output.stderr)
    );
    let objects = parse_documents(&text(&output.stdout));
    assert!(
        !objects.is_empty(),
        "`kubectl kustomize {}` produced no objects",
        path.display()
    );
    objects
}

fn kind(object: &Value) -> &str {
    object["kind"].as_str().unwrap_or_default()
}

fn name(object: &Value) -> &str {
    object["metadata"]["name"].as_str().unwrap_or_default()
}

fn namespace(object: &Value) -> Option<&str> {
    object["metadata"]["namespace"].as_str()
}

fn find<'a>(objects: &'a [Value], wanted_kind: &str, wanted_name: &str) -> &'a Value {
    objects
        .iter()
        .find(|o| kind(o) == wanted_kind && name(o) == wanted_name)
        .unwrap_or_else(|| {
            let present: Vec<String> = objects
                .iter()
                .map(|o| format!("{}/{}", kind(o), name(o)))
                .collect();
            panic!("no {wanted_kind}/{wanted_name} in the rendered output; present: {present:?}")
        })
}

fn strings(value: &Value) -> Vec<&str> {
    value
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// Every sample file under config/samples (including those kept out of the kustomization).
fn sample_files() -> Vec<PathBuf> {
    let dir = repo_root().join("config/samples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .map(|entry| entry.expect("dir entry").path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "yaml")
                && p.file_name().is_some_and(|n| n != "kustomization.yaml")
        })
        .collect();
    files.sort();
    assert!(
        files.len() >= 2,
        "expected at least a minimal and a full sample in {}",
        dir.display()
    );
    files
}

fn sample_apps() -> Vec<(PathBuf, Value)> {
    sample_files()
        .into_iter()
        .flat_map(|path| {
            let yaml = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
            parse_documents(&yaml)
                .into_iter()
                .map(move |doc| (path.clone(), doc))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Rendered manifests
// ---------------------------------------------------------------------------------------------

#[test]
fn default_renders_crd_rbac_and_operator_into_its_namespace() {
    let objects = kustomize("default");
    let kinds: BTreeSet<&str> = objects.iter().map(kind).collect();
    for expected in [
        "CustomResourceDefinition",
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
    ] {
        assert!(
            kinds.contains(expected),
            "config/default renders no {expected}; kinds: {kinds:?}"
        );
    }

    let crd = find(&objects, "CustomResourceDefinition", CRD_NAME);
    assert_eq!(crd["spec"]["group"], "messenger.dev");
    assert_eq!(crd["spec"]["scope"], "Namespaced");

    find(&objects, "Namespace", OPERATOR_NAMESPACE);
    let cluster_scoped = [
        "CustomResourceDefinition",
        "Namespace",
        "ClusterRole",
        "ClusterRoleBinding",
    ];
    for object in &objects {
        if cluster_scoped.contains(&kind(object)) {
            assert_eq!(
                namespace(object),
                None,
                "{}/{} is cluster-scoped",
                kind(object),
                name(object)
            );
        } else {
            assert_eq!(
                namespace(object),
                Some(OPERATOR_NAMESPACE),
                "{}/{} is not in {OPERATOR_NAMESPACE}",
                kind(object),
                name(object)
            );
        }
    }

    // Both bindings grant their role to the ServiceAccount the operator runs as.
    let account = find(&objects, "ServiceAccount", "messenger-operator");
    for (binding_kind, role_kind) in [
        ("ClusterRoleBinding", "ClusterRole"),
        ("RoleBinding", "Role"),
    ] {
        for binding in objects.iter().filter(|o| kind(o) == binding_kind) {
            let role_name = binding["roleRef"]["name"].as_str().expect("roleRef.name");
            assert_eq!(binding["roleRef"]["kind"], role_kind);
            find(&objects, role_kind, role_name);
            let subjects = binding["subjects"].as_array().expect("subjects");
            assert!(
                subjects.iter().any(|s| s["kind"] == "ServiceAccount"
                    && s["name"] == account["metadata"]["name"]
                    && s["namespace"] == OPERATOR_NAMESPACE),
                "{binding_kind}/{} does not bind the operator's ServiceAccount: {subjects:?}",
                name(binding)
            );
        }
    }
}

#[test]
fn operator_deployment_runs_two_hardened_replicas_with_probes_on_the_admin_port() {
    let objects = kustomize("default");
    let deployment = find(&objects, "Deployment", "messenger-operator");
    assert_eq!(
        deployment["spec"]["replicas"], 2,
        "the operator runs two replicas for leader election"
    );

    let selector = deployment["spec"]["selector"]["matchLabels"]
        .as_object()
        .expect("matchLabels");
    let pod_labels = &deployment["spec"]["template"]["metadata"]["labels"];
    for (key, value) in selector {
        assert_eq!(
            &pod_labels[key], value,
            "pod template label {key} does not match the selector"
        );
    }

    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "messenger-operator");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let containers = pod["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1);
    let container = &containers[0];
    let security = &container["securityContext"];
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(strings(&security["capabilities"]["drop"]), ["ALL"]);

    let admin_port = container["ports"]
        .as_array()
        .and_then(|ports| ports.iter().find(|p| p["name"] == "admin"))
        .expect("container port named admin");
    assert_eq!(admin_port["containerPort"], 8080);
    let admin_addr = container["env"]
        .as_array()
        .and_then(|env| env.iter().find(|e| e["name"] == "ADMIN_ADDR"))
        .and_then(|e| e["value"].as_str())
        .expect("ADMIN_ADDR env");
    assert!(
        admin_addr.ends_with(":8080"),
        "ADMIN_ADDR {admin_addr} must listen on the probed port 8080"
    );
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["livenessProbe"]["httpGet"]["port"], "admin");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(container["readinessProbe"]["httpGet"]["port"], "admin");
    assert_eq!(
        deployment["spec"]["template"]["metadata"]["annotations"]["prometheus.io/path"],
        "/metrics"
    );

    // Leader election identity and Lease namespace come from the downward API.
    let env = container["env"].as_array().expect("env");
    for (variable, field) in [
        ("POD_NAME", "metadata.name"),
        ("POD_NAMESPACE", "metadata.namespace"),
    ] {
        let entry = env
            .iter()
            .find(|e| e["name"] == variable)
            .unwrap_or_else(|| panic!("no {variable} env"));
        assert_eq!(
            entry["valueFrom"]["fieldRef"]["fieldPath"], field,
            "{variable}"
        );
    }
    for bound in ["requests", "limits"] {
        for resource in ["cpu", "memory"] {
            assert!(
                container["resources"][bound][resource].is_string(),
                "operator has no {bound}.{resource}"
            );
        }
    }

    // The metrics Service and the PDB select the operator's pods.
    for (object_kind, selector_path) in [
        ("Service", "/spec/selector"),
        ("PodDisruptionBudget", "/spec/selector/matchLabels"),
    ] {
        for object in objects.iter().filter(|o| kind(o) == object_kind) {
            let selector = object
                .pointer(selector_path)
                .and_then(Value::as_object)
                .expect("selector");
            assert!(!selector.is_empty());
            for (key, value) in selector {
                assert_eq!(
                    &pod_labels[key],
                    value,
                    "{object_kind}/{} selects {key}={value}",
                    name(object)
                );
            }
        }
    }
}

#[test]
fn cluster_role_grants_only_what_the_operator_uses() {
    let objects = kustomize("default");
    let role = find(&objects, "ClusterRole", "messenger-operator");
    let rules = role["rules"].as_array().expect("rules");

    let mut granted: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for rule in rules {
        for field in ["apiGroups", "resources", "verbs"] {
            assert!(
                !strings(&rule[field]).contains(&"*"),
                "wildcard in {field} of {rule}"
            );
        }
        assert!(
            rule.get("nonResourceURLs").is_none(),
            "non-resource URLs are not needed: {rule}"
        );
        for group in strings(&rule["apiGroups"]) {
            for resource in strings(&rule["resources"]) {
                let key = if group.is_empty() {
                    resource.to_owned()
                } else {
                    format!("{resource}.{group}")
                };
                granted
                    .entry(key)
                    .or_default()
                    .extend(strings(&rule["verbs"]).into_iter().map(str::to_owned));
            }
        }
    }

    // What operator/src/controller.rs does: watch (list/watch), server-side apply (patch, and
    // create when the apply creates), prune (list/delete), status via server-side apply.
    let manage = ["create", "delete", "list", "patch", "watch"];
    let mut expected: BTreeMap<&str, Vec<&str>> = BTreeMap::from([
        ("messengerapps.messenger.dev", vec!["get", "list", "watch"]),
        ("messengerapps/status.messenger.dev", vec!["patch"]),
        ("messengerapps/finalizers.messenger.dev", vec!["update"]),
        ("events.events.k8s.io", vec!["create", "patch"]),
        // The internal-trust key: created once, never read.
        ("secrets", vec!["create"]),
        // Canary analysis finds the candidate gateway pods to scrape.
        ("pods", vec!["list"]),
        // Migration Jobs are created once and never patched.
        ("jobs.batch", vec!["create", "delete", "list", "watch"]),
    ]);
    for child in [
        "deployments.apps",
        "services",
        "configmaps",
        "serviceaccounts",
        "ingresses.networking.k8s.io",
        "networkpolicies.networking.k8s.io",
        "httproutes.gateway.networking.k8s.io",
        "poddisruptionbudgets.policy",
    ] {
        expected.insert(child, manage.to_vec());
    }
    let granted_view: BTreeMap<&str, Vec<&str>> = granted
        .iter()
        .map(|(k, v)| (k.as_str(), v.iter().map(String::as_str).collect()))
        .collect();
    assert_eq!(
        granted_view, expected,
        "the ClusterRole must grant exactly these verbs per resource"
    );
    assert_eq!(
        granted["secrets"],
        BTreeSet::from(["create".to_owned()]),
        "the operator creates the internal-trust key and must never read Secrets"
    );

    // Leases only in the operator's namespace, through a Role.
    let lease_role = objects
        .iter()
        .find(|o| kind(o) == "Role")
        .expect("leader-election Role");
    assert_eq!(namespace(lease_role), Some(OPERATOR_NAMESPACE));
    let lease_rules = lease_role["rules"].as_array().expect("rules");
    assert_eq!(lease_rules.len(), 1);
    assert_eq!(
        strings(&lease_rules[0]["apiGroups"]),
        ["coordination.k8s.io"]
    );
    assert_eq!(strings(&lease_rules[0]["resources"]), ["leases"]);
    let mut lease_verbs = strings(&lease_rules[0]["verbs"]);
    lease_verbs.sort_unstable();
    assert_eq!(lease_verbs, ["create", "get", "update"]);
}

/// Secret references (name, key) a MessengerApp makes: dependencies and env valueFrom.
fn secret_refs(app: &Value) -> BTreeSet<(String, String)> {
    fn walk(value: &Value, in_dependencies: bool, out: &mut BTreeSet<(String, String)>) {
        match value {
            Value::Object(map) => {
                if let Some(secret) = map.get("secretKeyRef") {
                    out.insert((
                        secret["name"].as_str().unwrap_or_default().into(),
                        secret["key"].as_str().unwrap_or_default().into(),
                    ));
                }
                if in_dependencies
                    && let (Some(Value::String(name)), Some(Value::String(key))) =
                        (map.get("name"), map.get("key"))
                {
                    out.insert((name.clone(), key.clone()));
                }
                for (field, child) in map {
                    walk(child, in_dependencies || field == "dependencies", out);
                }
            }
            Value::Array(items) => items
                .iter()
                .for_each(|item| walk(item, in_dependencies, out)),
            _ => {}
        }
    }
    let mut refs = BTreeSet::new();
    walk(&app["spec"], false, &mut refs);
    refs
}

#[test]
fn dependencies_provide_every_backing_service_and_the_secrets_the_samples_reference() {
    let objects = kustomize("dependencies");
    find(&objects, "Namespace", APP_NAMESPACE);
    for object in objects.iter().filter(|o| kind(o) != "Namespace") {
        assert_eq!(
            namespace(object),
            Some(APP_NAMESPACE),
            "{}/{}",
            kind(object),
            name(object)
        );
    }

    for service_name in ["postgres", "redis", "mongodb", "kafka"] {
        let service = find(&objects, "Service", service_name);
        let workload = objects
            .iter()
            .find(|o| matches!(kind(o), "StatefulSet" | "Deployment") && name(o) == service_name)
            .unwrap_or_else(|| panic!("no StatefulSet/Deployment {service_name}"));
        assert_eq!(
            workload["spec"]["replicas"], 1,
            "{service_name} is single-replica (dev grade)"
        );
        let pod_labels = &workload["spec"]["template"]["metadata"]["labels"];
        for (key, value) in service["spec"]["selector"].as_object().expect("selector") {
            assert_eq!(
                &pod_labels[key], value,
                "Service {service_name} selector {key}"
            );
        }
        let container_ports: Vec<&str> = workload["spec"]["template"]["spec"]["containers"]
            .as_array()
            .expect("containers")
            .iter()
            .flat_map(|c| c["ports"].as_array().into_iter().flatten())
            .filter_map(|p| p["name"].as_str())
            .collect();
        for port in service["spec"]["ports"].as_array().expect("ports") {
            let target = port["targetPort"].as_str().expect("named targetPort");
            assert!(
                container_ports.contains(&target),
                "Service {service_name} targets port {target}, not in {container_ports:?}"
            );
        }
    }

    let kafka = find(&objects, "StatefulSet", "kafka");
    let kafka_env = kafka["spec"]["template"]["spec"]["containers"][0]["env"]
        .as_array()
        .expect("kafka env");
    let roles = kafka_env
        .iter()
        .find(|e| e["name"] == "KAFKA_PROCESS_ROLES")
        .expect("KAFKA_PROCESS_ROLES");
    assert_eq!(
        roles["value"], "broker,controller",
        "Kafka runs in KRaft combined mode"
    );

    // Every Secret key the samples reference exists (stringData or data).
    let secrets: BTreeMap<&str, &Value> = objects
        .iter()
        .filter(|o| kind(o) == "Secret")
        .map(|s| (name(s), s))
        .collect();
    for (path, app) in sample_apps() {
        assert_eq!(
            namespace(&app),
            Some(APP_NAMESPACE),
            "{} is not in namespace {APP_NAMESPACE}",
            path.display()
        );
        for (secret, key) in secret_refs(&app) {
            let object = secrets.get(secret.as_str()).unwrap_or_else(|| {
                panic!(
                    "{} references Secret {secret}, which config/dependencies lacks",
                    path.display()
                )
            });
            assert!(
                object["stringData"].get(&key).is_some() || object["data"].get(&key).is_some(),
                "{} references key {key} of Secret {secret}, which has no such key",
                path.display()
            );
        }
    }
}

#[test]
fn samples_render_a_minimal_and_a_full_messenger_app() {
    let objects = kustomize("samples");
    assert!(
        objects
            .iter()
            .all(|o| kind(o) == "MessengerApp" && o["apiVersion"] == "messenger.dev/v1alpha1")
    );
    let minimal = objects
        .iter()
        .find(|o| {
            o["spec"]
                .as_object()
                .is_some_and(|s| s.len() == 2 && s.contains_key("version"))
                && o["spec"]["dependencies"] == json!({"chatInMemory": true})
        })
        .expect("a minimal sample with only spec.version and chat on pod memory");
    assert!(minimal["spec"]["version"].is_string());
    let full = find(&objects, "MessengerApp", "messenger");
    for field in [
        "version",
        "image",
        "components",
        "dependencies",
        "ingress",
        "strategy",
        "config",
        "logLevel",
    ] {
        assert!(
            full["spec"].get(field).is_some(),
            "the full sample sets no spec.{field}"
        );
    }
    for component in ["gateway", "auth", "users", "friends", "chat"] {
        assert!(
            full["spec"]["components"].get(component).is_some(),
            "the full sample has no {component}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Samples against the generated CRD schema, on the real test API server
// ---------------------------------------------------------------------------------------------

/// kubectl against the test API server, with a discovery cache of its own (the CRD is
/// created during the run, so a shared cache could be stale).
struct TestCluster {
    kubectl: PathBuf,
    kubeconfig: PathBuf,
    cache_dir: PathBuf,
}

impl TestCluster {
    fn connect() -> Self {
        let kubeconfig = PathBuf::from(
            std::env::var("TEST_KUBECONFIG").unwrap_or_else(|_| DEFAULT_KUBECONFIG.to_owned()),
        );
        assert!(
            kubeconfig.is_file(),
            "TEST_KUBECONFIG={} does not exist: start the test API server with `scripts/kube-test-env.sh start`",
            kubeconfig.display()
        );
        let cache_dir =
            std::env::temp_dir().join(format!("kustomize-test-kubectl-cache-{}", unique_suffix()));
        let cluster = TestCluster {
            kubectl: kubectl_binary(),
            kubeconfig,
            cache_dir,
        };
        let output = cluster.kubectl(&["get", "--raw", "/readyz"], None);
        assert!(
            output.status.success() && text(&output.stdout).trim() == "ok",
            "the test API server in TEST_KUBECONFIG={} is not ready (run `scripts/kube-test-env.sh start`): {}",
            cluster.kubeconfig.display(),
            text(&output.stderr)
        );
        cluster
    }

    fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut command = Command::new(&self.kubectl);
        command
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .arg("--cache-dir")
            .arg(&self.cache_dir)
            .arg("--request-timeout=30s")
            .args(args);
        run(&mut command, stdin)
    }

    /// Installs the checked-in CRD and waits until it is Established. Parallel tests may do
    /// this at once, so conflicts are retried.
    fn install_crd(&self) {
        let crd_path = repo_root().join("crds").join(format!("{CRD_NAME}.yaml"));
        assert!(
            crd_path.is_file(),
            "{} is missing: generate it with `messenger-operator crd`",
            crd_path.display()
        );
        let crd_path = crd_path.to_str().expect("UTF-8 path");
        // --validate=false: a v1.20 server does not know newer schema fields (CEL rules); it
        // ignores them, as it should, instead of failing client-side validation.
        let mut last = String::new();
        for attempt in 0..5 {
            let output = self.kubectl(&["apply", "--validate=false", "-f", crd_path], None);
            if output.status.success() {
                let waited = self.kubectl(
                    &[
                        "wait",
                        "--for=condition=Established",
                        "--timeout=60s",
                        &format!("crd/{CRD_NAME}"),
                    ],
                    None,
                );
                assert!(
                    waited.status.success(),
                    "CRD {CRD_NAME} not Established: {}",
                    text(&waited.stderr)
                );
                return;
            }
            last = text(&output.stderr);
            std::thread::sleep(Duration::from_millis(200 * (attempt + 1)));
        }
        panic!("cannot apply {crd_path}: {last}");
    }

    fn create_namespace(&self) -> String {
        let name = format!("kustomize-test-{}", unique_suffix());
        let output = self.kubectl(&["create", "namespace", &name], None);
        assert!(
            output.status.success(),
            "create namespace {name}: {}",
            text(&output.stderr)
        );
        name
    }

    fn delete_namespace(&self, name: &str) {
        // Best effort: namespaces are unique per test, a leftover harms nothing.
        let _ = self.kubectl(&["delete", "namespace", name, "--wait=false"], None);
    }

    /// `kubectl create --dry-run=server` of one object: the server runs defaulting, pruning
    /// and schema validation without storing anything. Returns the object the server would
    /// store, or the server's error text.
    fn dry_run_create(&self, object: &Value) -> Result<Value, String> {
        let body = serde_json::to_string(object).expect("serialize object");
        let output = self.kubectl(
            &["create", "--dry-run=server", "-o", "json", "-f", "-"],
            Some(&body),
        );
        if output.status.success() {
            Ok(serde_json::from_slice(&output.stdout).expect("kubectl -o json output"))
        } else {
            Err(text(&output.stderr))
        }
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.cache_dir);
    }
}

fn unique_suffix() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .subsec_nanos();
    format!(
        "{}-{}-{}",
        std::process::id(),
        nanos,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Every field set in `sent` is present with the same value in `stored`. A v1.20 server does
/// not reject unknown fields, it prunes them; so a misspelled field in a sample shows up as a
/// value missing from what the server would store.
fn missing_fields(sent: &Value, stored: &Value, path: &str, missing: &mut Vec<String>) {
    match (sent, stored) {
        (Value::Object(sent_map), Value::Object(stored_map)) => {
            for (key, sent_value) in sent_map {
                let child = format!("{path}.{key}");
                match stored_map.get(key) {
                    Some(stored_value) => missing_fields(sent_value, stored_value, &child, missing),
                    None => missing.push(child),
                }
            }
        }
        (Value::Array(sent_items), Value::Array(stored_items))
            if sent_items.len() == stored_items.len() =>
        {
            for (index, (a, b)) in sent_items.iter().zip(stored_items).enumerate() {
                missing_fields(a, b, &format!("{path}[{index}]"), missing);
            }
        }
        (a, b) if a == b => {}
        // Numbers may come back as another JSON number type (1 vs 1.0).
        (Value::Number(a), Value::Number(b)) if a.as_f64() == b.as_f64() => {}
        (a, b) => missing.push(format!("{path} (sent {a}, stored {b})")),
    }
}

fn in_namespace(app: &Value, namespace: &str) -> Value {
    let mut app = app.clone();
    app["metadata"]["namespace"] = json!(namespace);
    app
}

#[test]
fn every_sample_is_accepted_by_the_crd_schema_without_losing_a_field() {
    let cluster = TestCluster::connect();
    cluster.install_crd();
    let namespace = cluster.create_namespace();
    let samples = sample_apps();
    assert!(samples.len() >= 2);
    for (path, app) in &samples {
        let sent = in_namespace(app, &namespace);
        let stored = cluster.dry_run_create(&sent).unwrap_or_else(|error| {
            panic!("{} rejected by the CRD schema: {error}", path.display())
        });
        let mut missing = Vec::new();
        missing_fields(&sent["spec"], &stored["spec"], "spec", &mut missing);
        assert!(
            missing.is_empty(),
            "{}: the server pruned or changed fields the CRD schema does not know: {missing:?}",
            path.display()
        );
    }
    cluster.delete_namespace(&namespace);
}

#[test]
fn broken_messenger_apps_are_rejected_or_pruned_by_the_crd_schema() {
    let cluster = TestCluster::connect();
    cluster.install_crd();
    let namespace = cluster.create_namespace();
    let (_, full) = sample_apps()
        .into_iter()
        .find(|(_, app)| name(app) == "messenger")
        .expect("the full sample (metadata.name: messenger)");
    let full = in_namespace(&full, &namespace);

    // Sanity: the unmodified sample passes, so each rejection below is the edit's doing.
    cluster
        .dry_run_create(&full)
        .unwrap_or_else(|e| panic!("the full sample itself is rejected: {e}"));

    type Edit = fn(&mut Value);
    let invalid: [(&str, Edit, &str); 7] = [
        (
            "version longer than a label value",
            |app| app["spec"]["version"] = json!("v".repeat(64)),
            "version",
        ),
        (
            "version ending in a dash (not a label value)",
            |app| app["spec"]["version"] = json!("1.0-"),
            "version",
        ),
        (
            "negative replicas",
            |app| app["spec"]["components"]["gateway"]["replicas"] = json!(-1),
            "replicas",
        ),
        (
            "unknown pull policy",
            |app| app["spec"]["image"]["pullPolicy"] = json!("Sometimes"),
            "pullPolicy",
        ),
        (
            "missing version",
            |app| {
                app["spec"].as_object_mut().expect("spec").remove("version");
            },
            "version",
        ),
        (
            "unknown traffic router",
            |app| app["spec"]["ingress"]["router"] = json!("haproxy"),
            "router",
        ),
        (
            "canary weight above 100",
            |app| {
                app["spec"]["strategy"] =
                    json!({"type": "Canary", "canary": {"steps": [{"setWeight": 150}]}})
            },
            "setWeight",
        ),
    ];
    for (what, edit, field) in invalid {
        let mut app = full.clone();
        edit(&mut app);
        match cluster.dry_run_create(&app) {
            Ok(_) => panic!("a MessengerApp with {what} was accepted"),
            Err(error) => assert!(
                error.contains(field),
                "rejection of {what} does not name {field}: {error}"
            ),
        }
    }

    // A misspelled field must not slip through: kubectl rejects it against the schema the
    // server publishes, and where it does not (`--validate=false`, older clients) a v1.20
    // server prunes it, which the field check used for the samples reports.
    let mut misspelled = full.clone();
    misspelled["spec"]["image"]["pullPolicyy"] = json!("Always");
    match cluster.dry_run_create(&misspelled) {
        Err(error) => assert!(
            error.contains("pullPolicyy"),
            "rejection does not name the misspelled field: {error}"
        ),
        Ok(stored) => {
            let mut missing = Vec::new();
            missing_fields(&misspelled["spec"], &stored["spec"], "spec", &mut missing);
            assert_eq!(missing, ["spec.image.pullPolicyy"]);
        }
    }
    let body = serde_json::to_string(&misspelled).expect("serialize");
    let unvalidated = cluster.kubectl(
        &[
            "create",
            "--dry-run=server",
            "--validate=false",
            "-o",
            "json",
            "-f",
            "-",
        ],
        Some(&body),
    );
    assert!(
        unvalidated.status.success(),
        "pruning accepts the object: {}",
        text(&unvalidated.stderr)
    );
    let stored: Value =
        serde_json::from_slice(&unvalidated.stdout).expect("kubectl -o json output");
    let mut missing = Vec::new();
    missing_fields(&misspelled["spec"], &stored["spec"], "spec", &mut missing);
    assert_eq!(
        missing,
        ["spec.image.pullPolicyy"],
        "the server must prune the unknown field and the check must see it"
    );

    cluster.delete_namespace(&namespace);
}

/// The rendered objects as one `v1/List` that cannot collide with anything on the shared test
/// server: namespaced ones moved into `namespace` (Namespaces dropped), cluster-scoped RBAC
/// renamed with the namespace as suffix (and the binding's roleRef with it), ServiceAccount
/// subjects of bindings pointed at `namespace`.
fn as_isolated_list(objects: Vec<Value>, namespace: &str) -> Value {
    let items: Vec<Value> = objects
        .into_iter()
        .filter(|o| kind(o) != "Namespace")
        .map(|mut o| {
            if let Some(subjects) = o.get_mut("subjects").and_then(Value::as_array_mut) {
                for subject in subjects
                    .iter_mut()
                    .filter(|s| s["kind"] == "ServiceAccount")
                {
                    subject["namespace"] = json!(namespace);
                }
            }
            match kind(&o) {
                "ClusterRole" | "ClusterRoleBinding" => {
                    let renamed = format!("{}-{namespace}", name(&o));
                    o["metadata"]["name"] = json!(renamed);
                    if kind(&o) == "ClusterRoleBinding" {
                        let role = format!(
                            "{}-{namespace}",
                            o["roleRef"]["name"].as_str().unwrap_or_default()
                        );
                        o["roleRef"]["name"] = json!(role);
                    }
                }
                _ => o["metadata"]["namespace"] = json!(namespace),
            }
            o
        })
        .collect();
    json!({"apiVersion": "v1", "kind": "List", "items": items})
}

/// The operator's objects as the test server can check them: without the CRD (the sample
/// tests check it; a v1.20 server does not know its CEL rules), and with a v1beta1
/// PodDisruptionBudget where the server has no policy/v1 (same fields; it arrived in 1.21).
fn operator_objects_for(cluster: &TestCluster, objects: Vec<Value>) -> Vec<Value> {
    let served = cluster.kubectl(&["api-versions"], None);
    assert!(
        served.status.success(),
        "kubectl api-versions: {}",
        text(&served.stderr)
    );
    let policy_v1 = text(&served.stdout)
        .lines()
        .any(|l| l.trim() == "policy/v1");
    let mut operator: Vec<Value> = objects
        .into_iter()
        .filter(|o| kind(o) != "CustomResourceDefinition")
        .collect();
    if !policy_v1 {
        for object in operator
            .iter_mut()
            .filter(|o| kind(o) == "PodDisruptionBudget")
        {
            object["apiVersion"] = json!("policy/v1beta1");
        }
    }
    operator
}

/// Every object passes the server's validation (server-side dry run, isolated in
/// `namespace`).
fn assert_accepted(cluster: &TestCluster, what: &str, objects: Vec<Value>, namespace: &str) {
    let list = as_isolated_list(objects, namespace);
    let count = list["items"].as_array().map_or(0, Vec::len);
    let body = serde_json::to_string(&list).expect("serialize list");
    let output = cluster.kubectl(
        &["create", "--dry-run=server", "-o", "name", "-f", "-"],
        Some(&body),
    );
    assert!(
        output.status.success(),
        "{what} rejected by the API server: {}",
        text(&output.stderr)
    );
    let created = text(&output.stdout).lines().count();
    assert_eq!(
        created, count,
        "{what}: the server accepted {created} of {count} objects"
    );
}

#[test]
fn operator_and_dependency_manifests_pass_server_side_validation() {
    let cluster = TestCluster::connect();
    let namespace = cluster.create_namespace();
    let operator = operator_objects_for(&cluster, kustomize("default"));
    assert_accepted(&cluster, "config/default", operator, &namespace);
    let dependencies = kustomize("dependencies");
    assert_accepted(&cluster, "config/dependencies", dependencies, &namespace);
    cluster.delete_namespace(&namespace);
}

/// `make k8s-render-<what>` with the images of a made-up registry and version, as
/// `make k8s-deploy-all` renders what it applies.
fn make_render(what: &str) -> Vec<Value> {
    let output = run(
        Command::new("make")
            .arg("-C")
            .arg(repo_root())
            .args(["-s", "--no-print-directory", &format!("k8s-render-{what}")])
            .arg(format!("KUBECTL={}", kubectl_binary().display()))
            .args([
                "IMAGE_REGISTRY=registry.test/messenger",
                "K8S_VERSION=9.9.9",
            ]),
        None,
    );
    assert!(
        output.status.success(),
        "make k8s-render-{what}: {}",
        text(&output.stderr)
    );
    parse_documents(&text(&output.stdout))
}

/// What `make k8s-deploy-all` applies after building the images, short of a cluster that
/// runs them: the operator with its image pinned to the built tag (`k8s-operator`), and the
/// sample app pointed at the built images (`k8s-sample`), both accepted by the API server.
#[test]
fn make_k8s_deploy_all_applies_what_the_api_server_accepts_with_the_built_images() {
    let cluster = TestCluster::connect();
    let namespace = cluster.create_namespace();

    let operator = make_render("operator");
    let deployment = find(&operator, "Deployment", "messenger-operator");
    assert_eq!(
        deployment["spec"]["template"]["spec"]["containers"][0]["image"],
        "registry.test/messenger/messenger-operator:9.9.9",
        "k8s-operator runs the operator image k8s-images built"
    );
    let operator = operator_objects_for(&cluster, operator);
    assert_accepted(&cluster, "make k8s-render-operator", operator, &namespace);

    let sample = make_render("sample");
    assert_eq!(sample.len(), 1, "one MessengerApp");
    let app = in_namespace(&sample[0], &namespace);
    assert_eq!(app["spec"]["version"], "9.9.9");
    assert_eq!(app["spec"]["image"]["registry"], "registry.test/messenger");
    cluster.install_crd();
    let stored = cluster
        .dry_run_create(&app)
        .unwrap_or_else(|e| panic!("make k8s-render-sample rejected by the API server: {e}"));
    assert_eq!(stored["spec"]["version"], "9.9.9");
    assert_eq!(
        stored["spec"]["image"]["registry"],
        "registry.test/messenger"
    );
    cluster.delete_namespace(&namespace);
}

/// The CRD's CEL rules are ignored by the v1.20 test server; the operator repeats them in
/// `validate`, so the samples must pass that too (and deserialize into the typed resource).
#[test]
fn every_sample_passes_the_operators_own_validation() {
    for (path, app) in sample_apps() {
        let typed: MessengerApp = serde_json::from_value(app.clone()).unwrap_or_else(|e| {
            panic!(
                "{} does not deserialize into MessengerApp: {e}",
                path.display()
            )
        });
        if let Err(invalid) = validate(&typed) {
            panic!(
                "{} fails the operator's validation: {invalid}",
                path.display()
            );
        }
    }
    // And the rules bite: a Canary strategy without steps is refused.
    let (_, full) = sample_apps()
        .into_iter()
        .find(|(_, app)| name(app) == "messenger")
        .expect("the full sample");
    let mut canary_without_steps = full;
    canary_without_steps["spec"]["strategy"] = json!({"type": "Canary"});
    let typed: MessengerApp =
        serde_json::from_value(canary_without_steps).expect("still well-typed");
    assert!(
        validate(&typed).is_err(),
        "a Canary strategy without steps passed validation"
    );
}

/// Whether the ServiceAccount `account` (in `account_namespace`) may `verb` the `resource`
/// (`plural[.group][/subresource]`) in `namespace`, asked with a SubjectAccessReview so no
/// discovery is involved (the test server has no Gateway API CRDs, RBAC does not care).
fn service_account_may(
    cluster: &TestCluster,
    (account_namespace, account): (&str, &str),
    namespace: &str,
    verb: &str,
    resource: &str,
) -> bool {
    let (resource, subresource) = resource.split_once('/').unwrap_or((resource, ""));
    let (plural, group) = resource.split_once('.').unwrap_or((resource, ""));
    let review = json!({
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {
            "user": format!("system:serviceaccount:{account_namespace}:{account}"),
            "groups": [
                "system:serviceaccounts",
                format!("system:serviceaccounts:{account_namespace}"),
                "system:authenticated",
            ],
            "resourceAttributes": {
                "namespace": namespace,
                "verb": verb,
                "group": group,
                "resource": plural,
                "subresource": subresource,
            },
        },
    });
    let body = serde_json::to_string(&review).expect("serialize review");
    let output = cluster.kubectl(&["create", "-o", "json", "-f", "-"], Some(&body));
    assert!(
        output.status.success(),
        "SubjectAccessReview {verb} {resource}: {}",
        text(&output.stderr)
    );
    let answer: Value = serde_json::from_slice(&output.stdout).expect("review JSON");
    answer["status"]["allowed"] == true
}

/// The RBAC of config/rbac, applied for real and checked as the operator's ServiceAccount:
/// it may do what the controller does (watch, server-side apply that creates, prune, status,
/// events, its Lease) and nothing next to it (Secrets, updates, Pods, Leases elsewhere).
#[test]
fn operator_service_account_may_do_what_the_controller_does_and_no_more() {
    let cluster = TestCluster::connect();
    cluster.install_crd();
    let operator_namespace = cluster.create_namespace();
    let app_namespace = cluster.create_namespace();
    let rbac = as_isolated_list(kustomize("rbac"), &operator_namespace);
    let body = serde_json::to_string(&rbac).expect("serialize list");
    let applied = cluster.kubectl(&["apply", "-f", "-"], Some(&body));
    assert!(
        applied.status.success(),
        "applying config/rbac: {}",
        text(&applied.stderr)
    );
    let user = format!("system:serviceaccount:{operator_namespace}:messenger-operator");
    let account = (operator_namespace.as_str(), "messenger-operator");
    let may = |namespace: &str, verb: &str, resource: &str| {
        service_account_may(&cluster, account, namespace, verb, resource)
    };

    // The authorizer learns new bindings through a watch: give it a moment.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !may(&app_namespace, "watch", "deployments.apps") {
        assert!(
            std::time::Instant::now() < deadline,
            "the ServiceAccount never got its ClusterRole"
        );
        std::thread::sleep(Duration::from_millis(250));
    }

    let mut allowed = vec![
        ("get", "messengerapps.messenger.dev"),
        ("list", "messengerapps.messenger.dev"),
        ("watch", "messengerapps.messenger.dev"),
        ("patch", "messengerapps.messenger.dev/status"),
        ("create", "events.events.k8s.io"),
        ("patch", "events.events.k8s.io"),
        ("create", "secrets"),
        ("list", "pods"),
        ("list", "jobs.batch"),
        ("watch", "jobs.batch"),
        ("create", "jobs.batch"),
        ("delete", "jobs.batch"),
    ];
    for child in [
        "deployments.apps",
        "services",
        "configmaps",
        "serviceaccounts",
        "ingresses.networking.k8s.io",
        "networkpolicies.networking.k8s.io",
        "httproutes.gateway.networking.k8s.io",
        "poddisruptionbudgets.policy",
    ] {
        for verb in ["list", "watch", "create", "patch", "delete"] {
            allowed.push((verb, child));
        }
    }
    for (verb, resource) in allowed {
        assert!(
            may(&app_namespace, verb, resource),
            "the operator may not {verb} {resource}"
        );
    }
    for verb in ["get", "create", "update"] {
        assert!(
            may(&operator_namespace, verb, "leases.coordination.k8s.io"),
            "the operator may not {verb} its Lease"
        );
    }
    let denied = [
        (app_namespace.as_str(), "get", "secrets"),
        (app_namespace.as_str(), "list", "secrets"),
        (app_namespace.as_str(), "watch", "secrets"),
        (app_namespace.as_str(), "patch", "secrets"),
        (app_namespace.as_str(), "delete", "secrets"),
        (app_namespace.as_str(), "create", "pods"),
        (app_namespace.as_str(), "update", "deployments.apps"),
        (app_namespace.as_str(), "patch", "jobs.batch"),
        (
            app_namespace.as_str(),
            "delete",
            "messengerapps.messenger.dev",
        ),
        (
            app_namespace.as_str(),
            "create",
            "leases.coordination.k8s.io",
        ),
        (
            operator_namespace.as_str(),
            "delete",
            "leases.coordination.k8s.io",
        ),
        (
            app_namespace.as_str(),
            "create",
            "roles.rbac.authorization.k8s.io",
        ),
    ];
    for (namespace, verb, resource) in denied {
        assert!(
            !may(namespace, verb, resource),
            "the operator may {verb} {resource} in {namespace}, which it does not need"
        );
    }

    // For real: a server-side apply that creates, and a prune, as the ServiceAccount.
    let config_map = json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "rbac-probe", "namespace": app_namespace},
        "data": {"k": "v"},
    });
    let body = serde_json::to_string(&config_map).expect("serialize");
    let apply = cluster.kubectl(
        &[
            "apply",
            "--server-side",
            "--field-manager=messenger-operator",
            "--as",
            &user,
            "-f",
            "-",
        ],
        Some(&body),
    );
    assert!(
        apply.status.success(),
        "server-side apply as the operator: {}",
        text(&apply.stderr)
    );
    let delete = cluster.kubectl(
        &[
            "delete",
            "configmap",
            "rbac-probe",
            "-n",
            &app_namespace,
            "--as",
            &user,
        ],
        None,
    );
    assert!(
        delete.status.success(),
        "delete as the operator: {}",
        text(&delete.stderr)
    );
    let secrets = cluster.kubectl(
        &["get", "secrets", "-n", &app_namespace, "--as", &user],
        None,
    );
    assert!(
        !secrets.status.success() && text(&secrets.stderr).contains("forbidden"),
        "reading Secrets as the operator was not forbidden: {}",
        text(&secrets.stderr)
    );

    for object in rbac["items"].as_array().expect("items") {
        if matches!(kind(object), "ClusterRole" | "ClusterRoleBinding") {
            let resource = format!("{}/{}", kind(object).to_lowercase(), name(object));
            let _ = cluster.kubectl(&["delete", &resource, "--wait=false"], None);
        }
    }
    cluster.delete_namespace(&app_namespace);
    cluster.delete_namespace(&operator_namespace);
}
