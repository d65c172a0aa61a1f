//! The whole platform on a real single-node Kubernetes (`scripts/kube-node.sh`, started by
//! `make test`): the operator runs as a process against the cluster and reconciles a
//! MessengerApp with router `none`; kubelet runs the five components from this clone's
//! images (`scripts/images.sh`) in containerd; the app turns Ready from the pods' real
//! readiness probes; two people then use the messenger over REST through the entry
//! Service's ClusterIP (kube-proxy's rules, from the host), and a blue-green rollout to a
//! second tag of the same images happens under load without one failed request.
//!
//! The pods reach the host's PostgreSQL and DocumentDB and the node's own Redis and
//! Kafka-protocol broker through the Services in namespace `messenger-deps`; their
//! Secrets are created here the way `config/dependencies` names them.
//!
//! Without the node (no root, no images, a machine where it cannot start),
//! `scripts/test.sh` leaves these tests out and reports them as skipped with the reason;
//! run directly without it, they fail saying what is missing.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Endpoints, Namespace, Secret, Service};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ListParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config, CustomResourceExt};
use messenger_common::testing::{self, TestDatabase};
use messenger_operator::builders::entry_service_name;
use messenger_operator::crd::{MessengerApp, MessengerAppSpec, Phase, Slot};
use messenger_operator::status::{CONDITION_READY, find_condition};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

#[path = "support/http.rs"]
mod http;

const PASSWORD: &str = "correct horse battery staple";
/// Bounds the wait for a slot's five pods to start and pass their probes (images are
/// local; two busy cores).
const READY_WAIT: Duration = Duration::from_secs(300);
/// Bounds every other wait for something asynchronous.
const WAIT: Duration = Duration::from_secs(60);
/// The namespace `scripts/kube-node.sh` puts the dependencies' Services in.
const DEPS: &str = "messenger-deps";

fn env(name: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| {
            panic!(
                "{name} is not set: the node is not running ({}); run `scripts/kube-node.sh start` \
                 and `eval \"$(scripts/kube-node.sh env)\"` (make test does)",
                std::env::var("KUBE_NODE_SKIP_REASON").unwrap_or_else(|_| "no reason given".into())
            )
        })
}

/// A client of the node's API server, with the CRD installed.
async fn cluster() -> Client {
    let path = env("TEST_KUBE_NODE_KUBECONFIG");
    let kubeconfig = Kubeconfig::read_from(&path)
        .unwrap_or_else(|e| panic!("TEST_KUBE_NODE_KUBECONFIG={path} cannot be read: {e}"));
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .expect("a usable kubeconfig");
    let client = Client::try_from(config).expect("client");
    let mut crd = serde_json::to_value(MessengerApp::crd()).unwrap();
    // Kubernetes 1.20 knows no CEL rules; the operator checks them itself.
    strip_key(&mut crd, "x-kubernetes-validations");
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.patch(
        "messengerapps.messenger.dev",
        &PatchParams::apply("messenger-kube-node-tests").force(),
        &Patch::Apply(&crd),
    )
    .await
    .expect("install the MessengerApp CRD");
    let apps: Api<MessengerApp> = Api::all(client.clone());
    eventually("MessengerApps are served", WAIT, || async {
        apps.list(&ListParams::default().limit(1)).await.ok()
    })
    .await;
    client
}

fn strip_key(value: &mut Value, key: &str) {
    match value {
        Value::Object(map) => {
            map.remove(key);
            map.values_mut().for_each(|v| strip_key(v, key));
        }
        Value::Array(items) => items.iter_mut().for_each(|v| strip_key(v, key)),
        _ => {}
    }
}

/// Polls `check` until it returns `Some`, panicking with `what` after `timeout`.
async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
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
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// `url` with its host and port replaced by a dependency Service's cluster name.
fn in_cluster(url: &str, service: &str, port: u16) -> String {
    let mut url = url::Url::parse(url).expect("a URL");
    url.set_host(Some(&format!("{service}.{DEPS}.svc")))
        .unwrap();
    url.set_port(Some(port)).unwrap();
    url.to_string()
}

fn secret(name: &str, data: Value) -> Secret {
    serde_json::from_value(json!({"metadata": {"name": name}, "stringData": data})).unwrap()
}

/// The operator binary, running against the node until dropped.
struct Operator {
    child: Child,
    log: PathBuf,
}

impl Operator {
    fn start(ns: &str) -> Self {
        let test_binary = std::env::current_exe().unwrap();
        let binary = test_binary
            .parent()
            .and_then(|deps| deps.parent())
            .unwrap()
            .join("messenger-operator");
        assert!(
            binary.is_file(),
            "{} is missing: cargo build --bins",
            binary.display()
        );
        let log = std::env::temp_dir().join(format!("kube-node-operator-{ns}.log"));
        let child = Command::new(binary)
            .arg("run")
            .env("KUBECONFIG", env("TEST_KUBE_NODE_KUBECONFIG"))
            .env("ADMIN_ADDR", format!("127.0.0.1:{}", testing::free_port()))
            .env("WATCH_NAMESPACE", ns)
            .env("POD_NAMESPACE", ns)
            .env("LEASE_DURATION_SECONDS", "5")
            .env("LOG_FORMAT", "json")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start messenger-operator");
        Self { child, log }
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("operator log: {}", self.log.display());
        }
    }
}

/// The namespace goes with the test (its pods would otherwise keep the node's two cores
/// busy during the next test); the operator process is killed by its own drop.
impl Drop for Deployed {
    fn drop(&mut self) {
        kubectl(&["delete", "namespace", &self.ns, "--wait=false"]);
    }
}

/// One app in a namespace of its own, with its databases and Secrets, and its operator.
struct Deployed {
    client: Client,
    ns: String,
    name: String,
    tag: String,
    operator: Option<Operator>,
    _databases: Vec<TestDatabase>,
}

impl Deployed {
    async fn new(test: &str, spec: Value) -> Self {
        let client = cluster().await;
        let ns = format!("{test}-{}", &uuid::Uuid::new_v4().simple().to_string()[..6]);
        let namespace: Namespace =
            serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap();
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &namespace)
            .await
            .expect("create the namespace");
        let mut databases = Vec::new();
        let mut postgres = serde_json::Map::new();
        for service in ["auth", "users", "friends"] {
            let database = TestDatabase::create().await;
            postgres.insert(
                format!("{service}-url"),
                in_cluster(database.url(), "postgres", 5432).into(),
            );
            databases.push(database);
        }
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
        let mut dependencies = json!({
            "postgres": {
                "auth": {"name": "messenger-postgres", "key": "auth-url"},
                "users": {"name": "messenger-postgres", "key": "users-url"},
                "friends": {"name": "messenger-postgres", "key": "friends-url"}
            },
            "redis": {"name": "messenger-redis", "key": "url"},
            "kafka": {"name": "messenger-kafka", "key": "brokers"}
        });
        let mut created = vec![
            secret("messenger-postgres", Value::Object(postgres)),
            secret(
                "messenger-redis",
                json!({"url": format!("redis://redis.{DEPS}.svc:6379")}),
            ),
            secret(
                "messenger-kafka",
                json!({"brokers": format!("kafka.{DEPS}.svc:9092")}),
            ),
        ];
        // Chat must keep its data in MongoDB: a new slot's chat pods would start with an
        // empty in-memory store and answer 404 for every chat after the switch.
        let chat_env =
            vec![json!({"name": "CHAT_MONGODB_DATABASE", "value": ns.replace('-', "_")})];
        let uri = env("TEST_MONGODB_URI");
        created.push(secret(
            "messenger-mongodb",
            json!({"uri": in_cluster(&uri, "mongodb", 27017)}),
        ));
        dependencies["mongodb"] = json!({"name": "messenger-mongodb", "key": "uri"});
        for secret in created {
            secrets
                .create(&PostParams::default(), &secret)
                .await
                .expect("create a dependency Secret");
        }
        let registry = env("TEST_IMAGE_REGISTRY");
        let tag = env("TEST_IMAGE_TAG");
        let mut full = json!({
            "version": tag,
            "image": {"registry": registry, "pullPolicy": "Never"},
            "dependencies": dependencies,
            "ingress": {"host": "messenger.test", "router": "none"},
            "components": {"chat": {"env": chat_env}},
            // The apps of these tests share the node's broker: a group of its own, or the
            // users pods of another test's app take this one's registrations.
            "config": {"USERS_CONSUMER_GROUP": format!("users-{ns}")},
        });
        merge(&mut full, spec);
        let operator = Operator::start(&ns);
        let name = "messenger".to_owned();
        let spec: MessengerAppSpec = serde_json::from_value(full).expect("a valid spec");
        Api::<MessengerApp>::namespaced(client.clone(), &ns)
            .create(&PostParams::default(), &MessengerApp::new(&name, spec))
            .await
            .expect("create the MessengerApp");
        Self {
            client,
            ns,
            name,
            tag,
            operator: Some(operator),
            _databases: databases,
        }
    }

    /// Kills the operator process outright (SIGKILL: no lease release, no clean-up), as a
    /// crash or an evicted pod would.
    fn kill_operator(&mut self) {
        drop(self.operator.take());
    }

    /// Starts a new operator process and waits until it leads (its lease taken over once
    /// the dead one's expired).
    async fn start_operator(&mut self) {
        let operator = Operator::start(&self.ns);
        let log = operator.log.clone();
        self.operator = Some(operator);
        eventually("the new operator leads", WAIT, || async {
            let text = std::fs::read_to_string(&log).ok()?;
            text.contains("became leader").then_some(())
        })
        .await;
    }

    fn apps(&self) -> Api<MessengerApp> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    async fn app(&self) -> MessengerApp {
        self.apps()
            .get(&self.name)
            .await
            .expect("get the MessengerApp")
    }

    /// Waits until the operator reports the app Ready and Healthy on `version`: every
    /// component's Deployment Available, i.e. its pods passed their readiness probes.
    async fn wait_ready(&self, version: &str) -> MessengerApp {
        let deadline = Instant::now() + READY_WAIT;
        loop {
            let app = self.app().await;
            let status = app.status.clone().unwrap_or_default();
            let ready =
                find_condition(Some(&status), CONDITION_READY).is_some_and(|c| c.status == "True");
            if ready
                && status.phase == Some(Phase::Healthy)
                && status.stable_version.as_deref() == Some(version)
            {
                return app;
            }
            if Instant::now() > deadline {
                let pods = kubectl(&["get", "pods", "-n", &self.ns, "-o", "wide"]);
                panic!(
                    "the app is not Ready on {version} after {READY_WAIT:?}: {:?}\n{pods}",
                    status
                );
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// `http://<ClusterIP>` of the entry Service, reached from the host through kube-proxy.
    async fn entry(&self) -> String {
        let app = self.app().await;
        let service = Api::<Service>::namespaced(self.client.clone(), &self.ns)
            .get(&entry_service_name(&app))
            .await
            .expect("the entry Service");
        let ip = service
            .spec
            .and_then(|s| s.cluster_ip)
            .expect("a ClusterIP");
        let base = format!("http://{ip}");
        // Ready pods are not yet a routable Service: kube-proxy writes the new ClusterIP's
        // rules on its next sync (as for any client of a new Service).
        let rest = Rest::new(base.clone());
        eventually("kube-proxy routes the entry Service", WAIT, || async {
            let answer = rest
                .send(Method::GET, "/v1/openapi.json", None)
                .await
                .ok()?;
            (answer.status == 200).then_some(())
        })
        .await;
        base
    }

    /// Waits until the app is Ready on its first version, then two people use it through
    /// the entry Service: (the entry's client, the sender, the chat's messages path).
    async fn in_use(&self) -> (Rest, Person, String) {
        self.wait_ready(&self.tag).await;
        let rest = Rest::new(self.entry().await);
        let (alice, messages) = walkthrough(&rest, &self.tag).await;
        (rest, alice, messages)
    }

    async fn gateway_replicas(&self, slot: Slot) -> i32 {
        Api::<Deployment>::namespaced(self.client.clone(), &self.ns)
            .get(&format!("{}-gateway-{slot}", self.name))
            .await
            .ok()
            .and_then(|d| d.spec.replicas)
            .unwrap_or(0)
    }
}

fn merge(base: &mut Value, patch: Value) {
    match (base, patch) {
        (Value::Object(base), Value::Object(patch)) => {
            for (key, value) in patch {
                merge(base.entry(key).or_insert(Value::Null), value);
            }
        }
        (base, patch) => *base = patch,
    }
}

fn kubectl(args: &[&str]) -> String {
    let output = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(env("TEST_KUBE_NODE_KUBECONFIG"))
        .args(args)
        .output();
    match output {
        Ok(o) => format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => format!("kubectl: {e}"),
    }
}

/// A REST client of the entry Service. Every request opens a new connection, as a client
/// behind a fresh kube-proxy decision would: a kept-alive connection stays with the pod it
/// first reached, whatever the Service's selector says later.
#[derive(Clone)]
struct Rest {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

/// One answer: status, body and which slot and version served it.
struct Answer {
    status: StatusCode,
    body: Value,
    slot: Option<String>,
    version: Option<String>,
}

impl Rest {
    fn new(base: String) -> Self {
        let http = http::client()
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(15))
            .build()
            .unwrap();
        Self {
            http,
            base,
            token: None,
        }
    }

    fn signed_in(&self, token: &str) -> Self {
        Self {
            token: Some(token.to_owned()),
            ..self.clone()
        }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Answer, reqwest::Error> {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await?;
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let (slot, version) = (header("x-messenger-slot"), header("x-messenger-version"));
        let status = response.status();
        let bytes = response.bytes().await?;
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok(Answer {
            status,
            body,
            slot,
            version,
        })
    }

    async fn expect(&self, method: Method, path: &str, body: Option<Value>, status: u16) -> Answer {
        let answer = self
            .send(method.clone(), path, body)
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        assert_eq!(answer.status, status, "{method} {path}: {}", answer.body);
        answer
    }
}

struct Person {
    id: String,
    nickname: String,
    rest: Rest,
}

async fn sign_up(rest: &Rest, nickname: &str) -> Person {
    let email = format!("{nickname}@example.org");
    let body = json!({"email": email, "password": PASSWORD, "nickname": nickname});
    let registered = rest
        .expect(Method::POST, "/v1/auth/register", Some(body), 201)
        .await
        .body;
    let login = rest
        .expect(
            Method::POST,
            "/v1/auth/login",
            Some(json!({"email": email, "password": PASSWORD})),
            200,
        )
        .await
        .body;
    let signed_in = rest.signed_in(login["access_token"].as_str().expect("a token"));
    // The users service creates the profile from the UserRegistered event (Kafka).
    eventually("the profile exists", WAIT, || async {
        let answer = signed_in
            .send(Method::GET, "/v1/users/me", None)
            .await
            .ok()?;
        (answer.status == 200).then_some(())
    })
    .await;
    Person {
        id: registered["user_id"].as_str().unwrap().to_owned(),
        nickname: nickname.to_owned(),
        rest: signed_in,
    }
}

/// Two people register, become friends, open a chat and read each other's message; returns
/// the sender and the chat's messages path.
async fn walkthrough(rest: &Rest, version: &str) -> (Person, String) {
    let tag = &uuid::Uuid::new_v4().simple().to_string()[..6];
    let alice = sign_up(rest, &format!("alice{tag}")).await;
    let bob = sign_up(rest, &format!("bob{tag}")).await;
    alice
        .rest
        .expect(
            Method::POST,
            "/v1/friends/requests",
            Some(json!({"nickname": bob.nickname})),
            201,
        )
        .await;
    bob.rest
        .expect(
            Method::POST,
            &format!("/v1/friends/requests/{}/accept", alice.nickname),
            None,
            204,
        )
        .await;
    let friends = alice
        .rest
        .expect(Method::GET, "/v1/friends", None, 200)
        .await;
    assert_eq!(
        friends.body["friends"][0]["nickname"],
        bob.nickname.as_str()
    );
    let chat = alice
        .rest
        .expect(
            Method::POST,
            "/v1/chats",
            Some(json!({"participant_ids": [bob.id]})),
            201,
        )
        .await;
    let messages = format!(
        "/v1/chats/{}/messages",
        chat.body["chat_id"].as_str().unwrap()
    );
    let sent = alice
        .rest
        .expect(
            Method::POST,
            &messages,
            Some(json!({"content": "hello through kube-proxy"})),
            201,
        )
        .await;
    let history = bob.rest.expect(Method::GET, &messages, None, 200).await;
    assert_eq!(
        history.body["messages"][0]["message_id"],
        sent.body["message_id"]
    );
    assert_eq!(
        history.body["messages"][0]["content"],
        "hello through kube-proxy"
    );
    assert_eq!(
        history.slot.as_deref(),
        Some("blue"),
        "the gateway names its slot"
    );
    assert_eq!(history.version.as_deref(), Some(version), "and its version");
    (alice, messages)
}

/// What one load request got: when it was sent (since the load began), and either its
/// status and serving slot or what went wrong, with the status if an answer came.
struct Sample {
    sent: Duration,
    took: Duration,
    outcome: Result<(StatusCode, Option<String>), String>,
    status: Option<StatusCode>,
}

/// Sends, one after the other, a message then a history read, until `stop`; returns every
/// request's outcome and the ids of the messages the server accepted.
async fn load(
    person: Rest,
    messages: String,
    stop: Arc<AtomicBool>,
    started: Instant,
    tally: Arc<Tally>,
) -> (Vec<Sample>, Vec<String>) {
    let (mut samples, mut accepted) = (Vec::new(), Vec::new());
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let sent = started.elapsed();
        let (method, body) = if n % 2 == 1 {
            (Method::POST, Some(json!({"content": format!("load {n}")})))
        } else {
            (Method::GET, None)
        };
        let (outcome, status) = match person.send(method.clone(), &messages, body).await {
            Ok(answer) => {
                if method == Method::POST && answer.status == 201 {
                    accepted.push(answer.body["message_id"].as_str().unwrap_or("").to_owned());
                }
                let expected = if method == Method::POST { 201 } else { 200 };
                let outcome = if answer.status == expected {
                    Ok((answer.status, answer.slot))
                } else {
                    Err(format!(
                        "{method}: {} from {:?} {}",
                        answer.status, answer.slot, answer.body
                    ))
                };
                (outcome, Some(answer.status))
            }
            Err(e) => (Err(format!("{method}: {e}")), None),
        };
        let counter = if outcome.is_ok() {
            &tally.succeeded
        } else {
            &tally.failed
        };
        counter.fetch_add(1, Ordering::Relaxed);
        samples.push(Sample {
            sent,
            took: started.elapsed() - sent,
            outcome,
            status,
        });
    }
    (samples, accepted)
}

/// Every message id in the chat's history, newest first, page by page.
async fn history_ids(person: &Rest, messages: &str) -> Vec<String> {
    let mut ids = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let path = match &before {
            Some(b) => format!("{messages}?limit=100&before={b}"),
            None => format!("{messages}?limit=100"),
        };
        let page = person.expect(Method::GET, &path, None, 200).await.body;
        for message in page["messages"].as_array().unwrap() {
            ids.push(message["message_id"].as_str().unwrap().to_owned());
        }
        match page["next_before"].as_str() {
            Some(next) => before = Some(next.to_owned()),
            None => return ids,
        }
    }
}

/// Requests answered as expected and not, so far.
#[derive(Default)]
struct Tally {
    succeeded: AtomicUsize,
    failed: AtomicUsize,
}

impl Tally {
    fn now(&self) -> (usize, usize) {
        (
            self.succeeded.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

/// Load running in the background: two workers, each sending and reading in turn.
struct Load {
    stop: Arc<AtomicBool>,
    started: Instant,
    tally: Arc<Tally>,
    workers: Vec<tokio::task::JoinHandle<(Vec<Sample>, Vec<String>)>>,
}

/// What a load run saw.
struct LoadReport {
    samples: Vec<Sample>,
    /// Per worker, the slot that answered each successful request, in order.
    slots_per_worker: Vec<Vec<String>>,
    accepted: Vec<String>,
}

impl Load {
    fn start(person: &Rest, messages: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let tally = Arc::new(Tally::default());
        let workers = (0..2)
            .map(|_| {
                tokio::spawn(load(
                    person.clone(),
                    messages.to_owned(),
                    stop.clone(),
                    started,
                    tally.clone(),
                ))
            })
            .collect();
        Self {
            stop,
            started,
            tally,
            workers,
        }
    }

    async fn finish(self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        let mut report = LoadReport {
            samples: Vec::new(),
            slots_per_worker: Vec::new(),
            accepted: Vec::new(),
        };
        for worker in self.workers {
            let (samples, accepted) = worker.await.unwrap();
            report.slots_per_worker.push(
                samples
                    .iter()
                    .filter_map(|s| s.outcome.as_ref().ok().and_then(|(_, slot)| slot.clone()))
                    .collect(),
            );
            report.samples.extend(samples);
            report.accepted.extend(accepted);
        }
        report
    }
}

impl LoadReport {
    /// Asserts that no request failed, naming the first failures.
    fn assert_no_failures(&self, during: &str) {
        let failures: Vec<String> = self
            .samples
            .iter()
            .filter_map(|s| {
                s.outcome
                    .as_ref()
                    .err()
                    .map(|e| format!("at {:?}: {e}", s.sent))
            })
            .collect();
        assert!(
            failures.is_empty(),
            "{} of {} requests failed during {during}: {:#?}",
            failures.len(),
            self.samples.len(),
            &failures[..failures.len().min(10)]
        );
    }

    /// When the first request answered by `slot` was sent, and the last.
    fn answered_by(&self, slot: &str) -> (Option<Duration>, Option<Duration>) {
        let times = self
            .samples
            .iter()
            .filter(|s| matches!(&s.outcome, Ok((_, Some(by)))if by == slot))
            .map(|s| s.sent);
        (times.clone().min(), times.max())
    }

    /// Asserts every accepted message is in the chat's history.
    async fn assert_no_message_lost(&self, person: &Rest, messages: &str) {
        let stored = history_ids(person, messages).await;
        let lost: Vec<&String> = self
            .accepted
            .iter()
            .filter(|id| !stored.contains(id))
            .collect();
        assert!(
            lost.is_empty(),
            "accepted messages missing from the history: {lost:?}"
        );
    }
}

/// `promote`, as `kubectl messenger rollout promote` gives it: a fresh annotation value.
async fn promote(deployed: &Deployed) {
    deployed
        .apps()
        .patch(
            &deployed.name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {
                messenger_operator::rollout::ANNOTATION_PROMOTE: uuid::Uuid::new_v4().to_string()
            }}})),
        )
        .await
        .expect("promote");
}

/// Patches the app's spec (a merge patch).
async fn patch_spec(deployed: &Deployed, spec: Value) {
    deployed
        .apps()
        .patch(
            &deployed.name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": spec})),
        )
        .await
        .expect("patch the MessengerApp");
}

/// Reconciled by the operator into pods that pass their real probes, the app serves two
/// people through the entry Service; then a blue-green rollout to a second version, under
/// a load of message sends and history reads, switches every request to the new slot and
/// scales the old one down, and a serving gateway pod is deleted — without a single failed
/// request or lost message.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn blue_green_under_load_on_a_real_node_fails_no_request() {
    let deployed = Deployed::new(
        "bluegreen",
        json!({
            "components": {"gateway": {"replicas": 2}},
            "strategy": {"type": "BlueGreen", "blueGreen": {"autoPromote": true, "scaleDownDelaySeconds": 10}}
        }),
    )
    .await;
    let started = Instant::now();
    deployed.wait_ready(&deployed.tag).await;
    println!("blue slot Ready in {:?}", started.elapsed());
    let rest = Rest::new(deployed.entry().await);
    let (alice, messages) = walkthrough(&rest, &deployed.tag).await;

    let load = Load::start(&alice.rest, &messages);
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The second version: the same images under the second tag the harness imported.
    let next = format!("{}-next", deployed.tag);
    patch_spec(&deployed, json!({"version": next})).await;
    let switched = eventually("the entry Service points at green", READY_WAIT, || async {
        let status = deployed.app().await.status?;
        (status.active_slot == Some(Slot::Green)).then(|| load.started.elapsed())
    })
    .await;
    deployed.wait_ready(&next).await;
    eventually("the blue slot is scaled down", WAIT, || async {
        (deployed.gateway_replicas(Slot::Blue).await == 0).then_some(())
    })
    .await;
    // The old pods drain while the load goes on; Kubernetes 1.20 takes a while to delete
    // them (over a minute once on a loaded CI machine), so this waits until the last blue
    // gateway pod is gone, as long as pods may take to start.
    eventually("the blue gateway pods are gone", READY_WAIT, || async {
        let pods = kubectl(&[
            "get",
            "pods",
            "-n",
            &deployed.ns,
            "-l",
            "app.kubernetes.io/component=gateway",
            "-o",
            "name",
        ]);
        (!pods.contains("gateway-blue")).then_some(())
    })
    .await;
    // Graceful drain: one of the two serving gateways is deleted under load. It fails its
    // readiness at SIGTERM and keeps serving until kube-proxy has taken it out of the
    // Service, then finishes what it has in flight.
    let gateways = kubectl(&[
        "get",
        "pods",
        "-n",
        &deployed.ns,
        "-l",
        "app.kubernetes.io/component=gateway,messenger.dev/slot=green",
        "-o",
        "name",
    ]);
    let victim = gateways
        .lines()
        .next()
        .expect("a green gateway pod")
        .to_owned();
    println!(
        "deleting {victim} under load: {}",
        kubectl(&["delete", "-n", &deployed.ns, &victim, "--wait=false"])
    );
    eventually("the deleted gateway pod is gone", READY_WAIT, || async {
        let pods = kubectl(&["get", "pods", "-n", &deployed.ns, "-o", "name"]);
        (!pods.contains(&victim)).then_some(())
    })
    .await;
    eventually("two green gateways are ready again", READY_WAIT, || async {
        let deployment = Api::<Deployment>::namespaced(deployed.client.clone(), &deployed.ns)
            .get(&format!("{}-gateway-green", deployed.name))
            .await
            .ok()?;
        (deployment.status?.ready_replicas? == 2).then_some(())
    })
    .await;
    let report = load.finish().await;

    let (first_green, _) = report.answered_by("green");
    let (_, last_blue) = report.answered_by("blue");
    println!(
        "blue-green under load: {} requests; switch recorded at {switched:?}, first green \
         answer sent at {first_green:?}, last blue at {last_blue:?}",
        report.samples.len(),
    );
    report.assert_no_failures("the rollout and the gateway pod's deletion");
    for slots in &report.slots_per_worker {
        let first_green = slots.iter().position(|s| s == "green");
        let first_green = first_green.expect("the new slot answered after the switch");
        assert!(
            slots[first_green..].iter().all(|s| s == "green"),
            "once the new slot answered, every later request was answered by it: {slots:?}"
        );
        assert!(slots[..first_green].iter().all(|s| s == "blue"));
    }
    assert_eq!(deployed.gateway_replicas(Slot::Blue).await, 0);
    let last = alice.rest.expect(Method::GET, &messages, None, 200).await;
    assert_eq!(last.version.as_deref(), Some(next.as_str()));
    report.assert_no_message_lost(&alice.rest, &messages).await;
}

/// A canary on router `none` (no traffic router: the candidate's share of the gateways
/// behind the one entry Service is its weight), walked through two weight steps with three
/// stable gateways: at `setWeight: 25` one canary gateway answers about a quarter of the
/// requests, at `setWeight: 50` three answer about half; the operator is then killed and
/// restarted, which moves nothing; `promote` finishes the rollout and then every request is
/// answered by the new version — no failed request under load throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn canary_weight_on_router_none_splits_traffic_by_gateway_replicas() {
    let mut deployed = Deployed::new(
        "canary",
        json!({
            "components": {"gateway": {"replicas": 3}},
            "strategy": {"type": "Canary", "canary": {
                "scaleDownDelaySeconds": 5,
                "steps": [{"setWeight": 25}, {"pause": {}}, {"setWeight": 50}, {"pause": {}}]
            }}
        }),
    )
    .await;
    let (_, alice, messages) = deployed.in_use().await;
    let load = Load::start(&alice.rest, &messages);

    let next = format!("{}-next", deployed.tag);
    patch_spec(&deployed, json!({"version": next})).await;
    // kube-proxy picks an endpoint at random per connection. Binomial(200, p) lies within
    // p ± 0.1 (25%) and p ± 0.15 (50%) with probability > 0.999.
    for (weight, canary_gateways, tolerance) in [(25, 1, 0.1), (50, 3, 0.15)] {
        eventually(
            &format!("the canary waits at {weight}% with {canary_gateways} ready gateways"),
            READY_WAIT,
            || async {
                let status = deployed.app().await.status?;
                let rollout = status.rollout?;
                let gateways = Api::<Deployment>::namespaced(deployed.client.clone(), &deployed.ns)
                    .get(&format!("{}-gateway-{}", deployed.name, rollout.candidate))
                    .await
                    .ok()?;
                let ready = gateways.status?.ready_replicas.unwrap_or(0);
                (status.phase == Some(Phase::Paused)
                    && rollout.weight == weight
                    && ready == canary_gateways)
                    .then_some(())
            },
        )
        .await;
        // Ready pods are routed once kube-proxy has the entry Service's new endpoints.
        eventually(
            &format!("the entry Service has {} gateways", 3 + canary_gateways),
            WAIT,
            || async {
                let app = deployed.app().await;
                let endpoints = Api::<Endpoints>::namespaced(deployed.client.clone(), &deployed.ns)
                    .get(&entry_service_name(&app))
                    .await
                    .ok()?;
                let ready: usize = endpoints
                    .subsets
                    .unwrap_or_default()
                    .iter()
                    .map(|s| s.addresses.as_ref().map_or(0, Vec::len))
                    .sum();
                (ready == 3 + canary_gateways as usize).then_some(())
            },
        )
        .await;
        eventually("kube-proxy routes to the canary", WAIT, || async {
            let answer = alice.rest.send(Method::GET, &messages, None).await.ok()?;
            (answer.version.as_deref() == Some(next.as_str())).then_some(())
        })
        .await;
        let mut canary = 0;
        let samples = 200;
        for _ in 0..samples {
            let answer = alice.rest.expect(Method::GET, &messages, None, 200).await;
            if answer.version.as_deref() == Some(next.as_str()) {
                canary += 1;
            }
        }
        let share = f64::from(canary) / f64::from(samples);
        println!(
            "canary at setWeight {weight}: {canary} of {samples} answered by the canary ({share:.2})"
        );
        let expected = f64::from(weight) / 100.0;
        assert!(
            (share - expected).abs() <= tolerance,
            "the canary answered {canary} of {samples} requests at weight {weight}"
        );
        if weight == 25 {
            promote(&deployed).await;
        }
    }

    // The operator dies mid-rollout and a new one takes over: everything it needs to go on
    // is in the app's status, so nothing moves (no traffic jump) and promote still works.
    let before = deployed.app().await.status.unwrap().rollout.unwrap();
    let replicas_before = (
        deployed.gateway_replicas(Slot::Blue).await,
        deployed.gateway_replicas(Slot::Green).await,
    );
    deployed.kill_operator();
    tokio::time::sleep(Duration::from_secs(3)).await;
    deployed.start_operator().await;
    // Long enough for the new leader to reconcile the app more than once.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let after = deployed.app().await.status.unwrap();
    assert_eq!(
        after.phase,
        Some(Phase::Paused),
        "still waiting for promote"
    );
    let rollout = after.rollout.expect("the rollout goes on");
    assert_eq!(
        (rollout.candidate, rollout.step_index, rollout.weight),
        (before.candidate, before.step_index, before.weight),
        "a restarted operator continues where the dead one was"
    );
    assert_eq!(
        (
            deployed.gateway_replicas(Slot::Blue).await,
            deployed.gateway_replicas(Slot::Green).await,
        ),
        replicas_before,
        "no slot was resized by the restart"
    );

    promote(&deployed).await;
    deployed.wait_ready(&next).await;
    // Connections opened after the rollout completed reach only the new version.
    eventually(
        "every gateway serves the new version",
        READY_WAIT,
        || async {
            let pods = kubectl(&[
                "get",
                "pods",
                "-n",
                &deployed.ns,
                "-l",
                "app.kubernetes.io/component=gateway",
                "-o",
                "jsonpath={.items[*].metadata.labels.app\\.kubernetes\\.io/version}",
            ]);
            (!pods.is_empty() && pods.split_whitespace().all(|v| v == next)).then_some(())
        },
    )
    .await;
    let report = load.finish().await;
    report.assert_no_failures("the canary rollout");
    for _ in 0..20 {
        let answer = alice.rest.expect(Method::GET, &messages, None, 200).await;
        assert_eq!(answer.version.as_deref(), Some(next.as_str()));
    }
    report.assert_no_message_lost(&alice.rest, &messages).await;
}

/// A rollout to a version whose pods can never start (its images are not on the node) is
/// aborted at its progress deadline: traffic never leaves the stable slot, not one request
/// fails, the candidate is scaled to zero, and the app says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_candidate_that_never_becomes_ready_is_aborted_without_touching_traffic() {
    let deployed = Deployed::new(
        "abort",
        json!({
            "strategy": {
                "type": "BlueGreen",
                "progressDeadlineSeconds": 30,
                "abortScaleDownDelaySeconds": 5
            }
        }),
    )
    .await;
    let (_, alice, messages) = deployed.in_use().await;
    let load = Load::start(&alice.rest, &messages);

    // pullPolicy Never and a tag the node does not have: ErrImageNeverPull, never Ready.
    let broken = format!("{}-missing", deployed.tag);
    patch_spec(&deployed, json!({"version": broken})).await;
    let reason = eventually("the rollout is aborted", READY_WAIT, || async {
        let rollout = deployed.app().await.status?.rollout?;
        rollout.abort_reason
    })
    .await;
    println!("aborted: {reason}");
    eventually("the candidate slot is scaled to zero", WAIT, || async {
        (deployed.gateway_replicas(Slot::Green).await == 0).then_some(())
    })
    .await;
    let report = load.finish().await;

    let status = deployed.app().await.status.unwrap();
    assert_eq!(status.active_slot, Some(Slot::Blue), "blue still serves");
    assert_eq!(
        status.stable_version.as_deref(),
        Some(deployed.tag.as_str())
    );
    assert_eq!(
        status.phase,
        Some(Phase::Degraded),
        "the abort shows: {status:?}"
    );
    report.assert_no_failures("the aborted rollout");
    for slots in &report.slots_per_worker {
        assert!(!slots.is_empty());
        assert!(
            slots.iter().all(|s| s == "blue"),
            "every request was answered by the stable slot: {slots:?}"
        );
    }
    assert_eq!(deployed.gateway_replicas(Slot::Blue).await, 1);
    report.assert_no_message_lost(&alice.rest, &messages).await;
}

/// A canary whose gateways miss the analysis's latency objective, measured from the
/// candidate gateway pods' own `/metrics` (scraped by the operator: no Prometheus): the
/// objective, 1 ms at p99, is below what any request through two hops and a database
/// takes, so the first measurement fails. The rollout aborts with `AnalysisFailed`, the
/// canary's share of traffic goes back to stable and its pods go away — and no request
/// fails on the way, since the candidate itself answers correctly, only too slowly.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_canary_failing_its_analysis_on_scraped_gateway_metrics_is_aborted() {
    let deployed = Deployed::new(
        "analysis",
        json!({
            "strategy": {
                "type": "Canary",
                "abortScaleDownDelaySeconds": 5,
                "canary": {"steps": [
                    {"setWeight": 50},
                    {"analysis": {"maxP99LatencyMs": 1, "intervalSeconds": 10, "minRequests": 10}},
                    {"pause": {}}
                ]}
            }
        }),
    )
    .await;
    let (_, alice, messages) = deployed.in_use().await;
    let load = Load::start(&alice.rest, &messages);

    let next = format!("{}-next", deployed.tag);
    patch_spec(&deployed, json!({"version": next})).await;
    let reason = eventually("the analysis aborts the rollout", READY_WAIT, || async {
        let rollout = deployed.app().await.status?.rollout?;
        rollout.abort_reason.map(|r| (r, rollout.analysis))
    })
    .await;
    println!("aborted: {reason:?}");
    let (reason, counts) = reason;
    assert_eq!(reason, "AnalysisFailed");
    assert_eq!(counts.failed, 1, "one failed measurement is the limit");
    eventually("the canary is scaled to zero", WAIT, || async {
        (deployed.gateway_replicas(Slot::Green).await == 0).then_some(())
    })
    .await;
    eventually("the canary's gateway pods are gone", READY_WAIT, || async {
        let pods = kubectl(&["get", "pods", "-n", &deployed.ns, "-o", "name"]);
        (!pods.contains("gateway-green")).then_some(())
    })
    .await;
    let report = load.finish().await;
    report.assert_no_failures("the canary and its abort");
    let canary_answers = report
        .slots_per_worker
        .iter()
        .flatten()
        .filter(|s| *s == "green")
        .count();
    assert!(
        canary_answers > 0,
        "the canary carried traffic before the abort (its metrics were measured)"
    );
    let status = deployed.app().await.status.unwrap();
    assert_eq!(status.active_slot, Some(Slot::Blue));
    assert_eq!(status.phase, Some(Phase::Degraded), "{status:?}");
    for _ in 0..20 {
        let answer = alice.rest.expect(Method::GET, &messages, None, 200).await;
        assert_eq!(answer.slot.as_deref(), Some("blue"), "all traffic is back");
    }
    report.assert_no_message_lost(&alice.rest, &messages).await;
}

/// Stops (`up == false`) or starts one of the node's dependencies.
fn dependency(name: &str, up: bool) {
    let script = env("TEST_KUBE_NODE_SCRIPT");
    let action = if up { "start" } else { "stop" };
    let output = Command::new(&script)
        .args(["dep", action, name])
        .output()
        .expect("run kube-node.sh dep");
    assert!(
        output.status.success(),
        "{script} dep {action} {name}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Container restarts in the namespace so far.
fn restarts(ns: &str) -> u64 {
    kubectl(&[
        "get",
        "pods",
        "-n",
        ns,
        "-o",
        "jsonpath={.items[*].status.containerStatuses[*].restartCount}",
    ])
    .split_whitespace()
    .filter_map(|n| n.parse::<u64>().ok())
    .sum()
}

/// Waits until the load has seen `more` further requests answered as expected.
async fn wait_for_successes(load: &Load, more: usize, what: &str) {
    let (from, _) = load.tally.now();
    eventually(what, WAIT, || async {
        (load.tally.now().0 >= from + more).then_some(())
    })
    .await;
}

/// Scenario 5: the node's Redis, then its Kafka-protocol broker, stopped under load and
/// brought back. Redis holds the sessions: while it is down, the calls that need it
/// (token checks) are refused with 503 — answered by the gateway, which stays in its
/// Service rather than leaving the front door with no endpoints — and none fails any
/// other way; once it is back (it persists, as a production Redis would), the same
/// sessions work again by themselves. The broker sits behind the outboxes: while it is
/// down every send and read still succeeds, a person registering gets a profile once it
/// returns, and no accepted message is lost. No pod restarts throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dependencies_stopped_under_load_fail_fast_then_recover_losing_nothing() {
    let deployed = Deployed::new("outage", json!({})).await;
    let (rest, alice, messages) = deployed.in_use().await;
    let restarts_before = restarts(&deployed.ns);

    // Redis.
    let load = Load::start(&alice.rest, &messages);
    wait_for_successes(&load, 10, "the load runs").await;
    dependency("redis", false);
    let (_, failed_before) = load.tally.now();
    eventually("requests are refused while Redis is down", WAIT, || async {
        (load.tally.now().1 >= failed_before + 10).then_some(())
    })
    .await;
    dependency("redis", true);
    wait_for_successes(&load, 20, "the same session works again").await;
    let redis = load.finish().await;
    let failures: Vec<&Sample> = redis
        .samples
        .iter()
        .filter(|s| s.outcome.is_err())
        .collect();
    println!(
        "Redis stopped under load: {} requests, {} refused, the slowest refusal in {:?}",
        redis.samples.len(),
        failures.len(),
        failures.iter().map(|s| s.took).max().unwrap_or_default()
    );
    let not_503: Vec<&String> = failures
        .iter()
        .filter(|s| s.status != Some(StatusCode::SERVICE_UNAVAILABLE))
        .filter_map(|s| s.outcome.as_ref().err())
        .collect();
    assert!(
        not_503.is_empty(),
        "while Redis was down every refusal was a 503 from the gateway: {:#?}",
        &not_503[..not_503.len().min(10)]
    );
    redis.assert_no_message_lost(&alice.rest, &messages).await;

    // The broker.
    let load = Load::start(&alice.rest, &messages);
    wait_for_successes(&load, 10, "the load runs").await;
    dependency("kafka", false);
    let registering = {
        let rest = rest.clone();
        let nickname = format!("carol{}", &uuid::Uuid::new_v4().simple().to_string()[..6]);
        tokio::spawn(async move { sign_up(&rest, &nickname).await.id })
    };
    wait_for_successes(&load, 40, "sends and reads go on without the broker").await;
    dependency("kafka", true);
    let carol = registering
        .await
        .expect("a profile once the broker is back");
    wait_for_successes(&load, 10, "the load goes on").await;
    let kafka = load.finish().await;
    println!(
        "broker stopped under load: {} requests, carol {carol} registered meanwhile",
        kafka.samples.len()
    );
    kafka.assert_no_failures("the broker's outage");
    kafka.assert_no_message_lost(&alice.rest, &messages).await;
    assert_eq!(
        restarts(&deployed.ns),
        restarts_before,
        "no container restarted: {}",
        kubectl(&["get", "pods", "-n", &deployed.ns])
    );
}
