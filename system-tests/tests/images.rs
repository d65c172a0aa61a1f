//! The container images as a user runs them, with podman: `scripts/images.sh test FILE`
//! (run by `make test`) builds the six component images from the Dockerfile's `prebuilt`
//! stage and the dependency stand-ins, and names them in the environment read here.
//!
//! Each component image starts as the non-root user with a read-only root filesystem and
//! no capabilities, serves `/healthz` and `/readyz` on its admin port, passes its own
//! HEALTHCHECK, logs JSON lines, stops with status 0 soon after SIGTERM (no init shim), and
//! stays within its size budget (README.md, "Images"). The compose stack
//! (`docker-compose.yml`, driven by docker-compose 1.29 through podman's Docker API) serves
//! two people's walkthrough through the composed gateway.
//!
//! Without podman, `scripts/test.sh` leaves these tests out and reports them as skipped with
//! the reason; run directly without the images, they fail saying what is missing.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use messenger_common::testing::{self, TestDatabase};
use reqwest::Method;
use serde_json::{Value, json};

#[path = "support/http.rs"]
mod http;

/// The uid:gid the Dockerfile's runtime stage runs as.
const NON_ROOT: &str = "65532";
/// Kubernetes' default termination grace period: a component still running after it is
/// killed (SIGKILL) mid-request.
const GRACE_PERIOD: Duration = Duration::from_secs(30);
/// Bounds every wait for a container to become ready.
const READY_WAIT: Duration = Duration::from_secs(90);

/// Largest size (MB, as `podman image inspect` reports it) of each image built by
/// `make test`: the trimmed Debian base (84 MB) plus the component's debug-built binary
/// with its debug info stripped (28-53 MB). README.md, "Images", lists the sizes; raise a
/// budget only with a reason there.
fn size_budget_mb(component: &str) -> u64 {
    match component {
        "chat" => 150,
        "operator" => 160,
        _ => 130,
    }
}

/// The images `scripts/images.sh` built for this clone.
struct Images {
    registry: String,
    tag: String,
}

impl Images {
    fn from_env() -> Self {
        match (
            std::env::var("TEST_IMAGE_REGISTRY"),
            std::env::var("TEST_IMAGE_TAG"),
        ) {
            (Ok(registry), Ok(tag)) if !registry.is_empty() => Self { registry, tag },
            _ => panic!(
                "no test images: {}",
                std::env::var("IMAGES_SKIP_REASON")
                    .ok()
                    .filter(|reason| !reason.is_empty())
                    .unwrap_or_else(|| "run `scripts/images.sh test FILE` and source FILE \
                                        (make test does) before these tests"
                        .to_owned())
            ),
        }
    }

    fn component(&self, name: &str) -> String {
        format!("{}/messenger-{name}:{}", self.registry, self.tag)
    }
}

fn podman(args: &[&str]) -> Output {
    Command::new("podman")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run podman {args:?}: {e}"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).trim().to_owned()
}

/// A container started with `podman run -d`; removed when dropped.
struct Container {
    name: String,
    admin_port: u16,
}

impl Container {
    /// Runs `image` unprivileged (non-root, read-only root filesystem, every capability
    /// dropped, no new privileges) on the host's network, so it reaches the test
    /// PostgreSQL, Redis and broker on loopback.
    fn run(
        component: &str,
        image: &str,
        admin_port: u16,
        mounts: &[String],
        env: &[(&str, String)],
    ) -> Self {
        let name = testing::unique_name(&format!("messenger-image-{component}")).replace('.', "-");
        let mut args: Vec<String> = [
            "run",
            "--detach",
            "--pull=never",
            "--name",
            &name,
            "--network=host",
            "--read-only",
            "--read-only-tmpfs=false",
            "--cap-drop=ALL",
            "--security-opt=no-new-privileges",
        ]
        .map(str::to_owned)
        .to_vec();
        args.extend(mounts.iter().map(|mount| format!("--mount={mount}")));
        args.push(format!("--env=ADMIN_ADDR=127.0.0.1:{admin_port}"));
        for (key, value) in env {
            args.push(format!("--env={key}={value}"));
        }
        args.push(image.to_owned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let output = podman(&args);
        assert!(
            output.status.success(),
            "podman run {image}: {}",
            text(&output.stderr)
        );
        Self { name, admin_port }
    }

    fn logs(&self) -> String {
        let output = podman(&["logs", &self.name]);
        format!("{}\n{}", text(&output.stdout), text(&output.stderr))
    }

    fn inspect(&self, format: &str) -> String {
        text(&podman(&["inspect", "--format", format, &self.name]).stdout)
    }

    fn admin_get(&self, path: &str) -> Option<u16> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.admin_port)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        response.split_whitespace().nth(1)?.parse().ok()
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + READY_WAIT;
        while self.admin_get("/readyz") != Some(200) {
            let status = self.inspect("{{.State.Status}}");
            assert!(
                status == "running" && Instant::now() < deadline,
                "{} is not ready within {READY_WAIT:?} (state {status}); its log:\n{}",
                self.name,
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = podman(&["rm", "--force", "--time=0", &self.name]);
    }
}

/// What every component image must do; `env` (and `mounts`) configure the component
/// against the test dependencies.
fn check_image(component: &str, mounts: &[String], env: &[(&str, String)]) {
    let images = Images::from_env();
    let image = images.component(component);
    let admin_port = testing::free_port();
    let container = Container::run(component, &image, admin_port, mounts, env);
    container.wait_ready();
    assert_eq!(container.admin_get("/healthz"), Some(200), "/healthz");

    // The process itself (not only the image's metadata): the unprivileged user, no
    // capabilities at all.
    let pid = container.inspect("{{.State.Pid}}");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status of {component}: {e}"));
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .map(|value| value.split_whitespace().collect::<Vec<_>>())
            .unwrap_or_default()
    };
    assert_eq!(
        field("Uid:"),
        [NON_ROOT; 4],
        "{component} runs as {NON_ROOT}"
    );
    assert_eq!(field("Gid:"), [NON_ROOT; 4], "{component} group {NON_ROOT}");
    assert_eq!(
        field("CapEff:"),
        ["0000000000000000"],
        "{component} has no capabilities"
    );
    let user = text(&podman(&["image", "inspect", "--format", "{{.Config.User}}", &image]).stdout);
    assert_eq!(
        user,
        format!("{NON_ROOT}:{NON_ROOT}"),
        "the image itself names the unprivileged user, so any runtime uses it"
    );

    // Read-only root filesystem: not even root inside the container can write to it.
    let write = podman(&[
        "exec",
        "--user=0",
        &container.name,
        "bash",
        "-c",
        ": >/tmp/probe",
    ]);
    assert!(
        !write.status.success() && text(&write.stderr).contains("Read-only file system"),
        "{component}: writing to the root filesystem must fail as read-only: {}",
        text(&write.stderr)
    );

    // The image's own HEALTHCHECK (what docker and compose wait on) passes.
    let health = podman(&["healthcheck", "run", &container.name]);
    assert!(
        health.status.success(),
        "{component}: HEALTHCHECK failed: {} {}",
        text(&health.stdout),
        text(&health.stderr)
    );

    // SIGTERM to PID 1 (the component itself, no init shim): exits 0 within the grace
    // period.
    let stop = podman(&["kill", "--signal=TERM", &container.name]);
    assert!(stop.status.success(), "{}", text(&stop.stderr));
    let deadline = Instant::now() + GRACE_PERIOD;
    while container.inspect("{{.State.Status}}") != "exited" {
        assert!(
            Instant::now() < deadline,
            "{component} still runs {GRACE_PERIOD:?} after SIGTERM; its log:\n{}",
            container.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        container.inspect("{{.State.ExitCode}}"),
        "0",
        "{component} exits 0 on SIGTERM; its log:\n{}",
        container.logs()
    );

    // Logs are JSON lines by default (the image sets LOG_FORMAT=json).
    let logs = container.logs();
    let lines: Vec<&str> = logs
        .lines()
        .filter(|line| !line.trim().is_empty())
        .collect();
    assert!(!lines.is_empty(), "{component} logged nothing");
    for line in &lines {
        let parsed: Result<Value, _> = serde_json::from_str(line);
        assert!(
            parsed.as_ref().is_ok_and(Value::is_object),
            "{component} logged a line that is not a JSON object: {line}"
        );
    }

    let bytes: u64 = text(&podman(&["image", "inspect", "--format", "{{.Size}}", &image]).stdout)
        .parse()
        .expect("an image size");
    let (size_mb, budget) = (bytes / 1_000_000, size_budget_mb(component));
    println!("{image}: {size_mb} MB (budget {budget} MB)");
    assert!(
        size_mb <= budget,
        "{image} is {size_mb} MB, over its {budget} MB budget (README.md, Images)"
    );
}

fn service_env(database: Option<&TestDatabase>) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("GRPC_ADDR", format!("127.0.0.1:{}", testing::free_port())),
        ("INTERNAL_AUTH_KEY", testing::test_key_secret().to_owned()),
        ("REDIS_URL", testing::redis_url()),
        ("KAFKA_BROKERS", testing::kafka_brokers()),
    ];
    if let Some(database) = database {
        env.push(("DATABASE_URL", database.url().to_owned()));
    }
    env
}

/// A peer address nobody listens on: the readiness of friends and chat does not depend on
/// their peers.
fn absent_peer() -> String {
    format!("http://127.0.0.1:{}", testing::free_port())
}

#[tokio::test]
async fn the_auth_image_runs_unprivileged_and_stops_on_sigterm() {
    let database = TestDatabase::create().await;
    let mut env = service_env(Some(&database));
    env.push(("AUTH_REDIS_PREFIX", testing::unique_prefix()));
    check_image("auth", &[], &env);
}

#[tokio::test]
async fn the_users_image_runs_unprivileged_and_stops_on_sigterm() {
    let database = TestDatabase::create().await;
    let mut env = service_env(Some(&database));
    env.push(("USERS_REDIS_PREFIX", testing::unique_prefix()));
    env.push(("USERS_CONSUMER_GROUP", testing::unique_name("users-image")));
    check_image("users", &[], &env);
}

#[tokio::test]
async fn the_friends_image_runs_unprivileged_and_stops_on_sigterm() {
    let database = TestDatabase::create().await;
    let mut env = service_env(Some(&database));
    env.push(("FRIENDS_REDIS_PREFIX", testing::unique_prefix()));
    env.push(("USERS_URL", absent_peer()));
    check_image("friends", &[], &env);
}

#[test]
fn the_chat_image_runs_unprivileged_and_stops_on_sigterm() {
    let mut env = service_env(None);
    env.extend([
        ("CHAT_STORE", "memory".to_owned()),
        ("CHAT_REDIS_PREFIX", testing::unique_prefix()),
        ("USERS_URL", absent_peer()),
        ("FRIENDS_URL", absent_peer()),
    ]);
    check_image("chat", &[], &env);
}

/// The gateway is ready only when its four peers answer, so they run too, from their own
/// images: auth and chat on their in-memory stores, users and friends on fresh databases.
#[tokio::test]
async fn the_gateway_image_runs_unprivileged_and_stops_on_sigterm() {
    let images = Images::from_env();
    let databases = [TestDatabase::create().await, TestDatabase::create().await];
    let prefix = testing::unique_prefix();
    let peer = |component: &str, mut env: Vec<(&'static str, String)>| {
        env.push(("GRPC_ADDR", format!("127.0.0.1:{}", testing::free_port())));
        let url = format!("http://{}", env.last().unwrap().1);
        let container = Container::run(
            component,
            &images.component(component),
            testing::free_port(),
            &[],
            &env,
        );
        (container, url)
    };
    let key = || ("INTERNAL_AUTH_KEY", testing::test_key_secret().to_owned());
    let stores = |database: &TestDatabase, prefix_variable: &'static str| {
        vec![
            key(),
            ("DATABASE_URL", database.url().to_owned()),
            ("REDIS_URL", testing::redis_url()),
            ("KAFKA_BROKERS", testing::kafka_brokers()),
            (prefix_variable, prefix.clone()),
        ]
    };
    let (users, users_url) = peer("users", {
        let mut env = stores(&databases[0], "USERS_REDIS_PREFIX");
        env.push(("USERS_CONSUMER_GROUP", testing::unique_name("users-image")));
        env
    });
    let (friends, friends_url) = peer("friends", {
        let mut env = stores(&databases[1], "FRIENDS_REDIS_PREFIX");
        env.push(("USERS_URL", users_url.clone()));
        env
    });
    let (auth, auth_url) = peer("auth", vec![key(), ("AUTH_STORE", "memory".to_owned())]);
    let (chat, chat_url) = peer(
        "chat",
        vec![
            key(),
            ("CHAT_STORE", "memory".to_owned()),
            ("CHAT_CACHE_TTL", "0s".to_owned()),
            ("KAFKA_BROKERS", testing::kafka_brokers()),
            ("USERS_URL", users_url.clone()),
            ("FRIENDS_URL", friends_url.clone()),
        ],
    );
    for container in [&users, &friends, &auth, &chat] {
        container.wait_ready();
    }
    check_image(
        "gateway",
        &[],
        &[
            ("HTTP_ADDR", format!("127.0.0.1:{}", testing::free_port())),
            key(),
            ("KAFKA_BROKERS", testing::kafka_brokers()),
            ("AUTH_URL", auth_url),
            ("USERS_URL", users_url),
            ("FRIENDS_URL", friends_url),
            ("CHAT_URL", chat_url),
        ],
    );
}

/// Installs the checked-in CRD on the test API server, as `config/default` does before the
/// operator starts (other tests may apply it at the same moment: conflicts are retried).
fn install_crd(kubeconfig: &str) {
    let kubectl = std::env::var("KUBECTL").unwrap_or_else(|_| "kubectl".to_owned());
    let crd = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../crds/messengerapps.messenger.dev.yaml"
    );
    let mut last = String::new();
    for attempt in 1..=5 {
        // --validate=false: the v1.20 test server does not know the CRD's CEL fields.
        let applied = Command::new(&kubectl)
            .args([
                "--kubeconfig",
                kubeconfig,
                "apply",
                "--validate=false",
                "-f",
                crd,
            ])
            .output()
            .expect("run kubectl");
        let established = applied.status.success()
            && Command::new(&kubectl)
                .args(["--kubeconfig", kubeconfig, "wait", "--timeout=60s"])
                .args([
                    "--for=condition=Established",
                    "crd/messengerapps.messenger.dev",
                ])
                .status()
                .expect("run kubectl")
                .success();
        if established {
            return;
        }
        last = text(&applied.stderr);
        std::thread::sleep(Duration::from_millis(300 * attempt));
    }
    panic!("cannot install the MessengerApp CRD: {last}");
}

/// The operator is ready once it reached the API server: the test kube-apiserver
/// (`scripts/kube-test-env.sh`), with the CRD installed, its kubeconfig mounted read-only.
/// It watches a namespace of its own and holds its own Lease, so it never touches other
/// tests' objects.
#[test]
fn the_operator_image_runs_unprivileged_and_stops_on_sigterm() {
    let kubeconfig = std::env::var("TEST_KUBECONFIG")
        .ok()
        .filter(|path| std::path::Path::new(path).is_file())
        .expect(
            "TEST_KUBECONFIG names no kubeconfig: start the test API server with \
             scripts/kube-test-env.sh start (make test does)",
        );
    install_crd(&kubeconfig);
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    // A kubeconfig the container's user can read, whatever the original's mode.
    let copy = std::env::temp_dir().join(format!("kubeconfig-{suffix}"));
    std::fs::copy(&kubeconfig, &copy).expect("copy the kubeconfig");
    let mut permissions = std::fs::metadata(&copy).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut permissions, 0o644);
    std::fs::set_permissions(&copy, permissions).unwrap();
    struct Remove(PathBuf);
    impl Drop for Remove {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
    let _remove = Remove(copy.clone());
    check_image(
        "operator",
        &[format!(
            "type=bind,source={},target=/etc/messenger/kubeconfig,readonly",
            copy.display()
        )],
        &[
            ("KUBECONFIG", "/etc/messenger/kubeconfig".to_owned()),
            ("WATCH_NAMESPACE", format!("image-test-{suffix}")),
            ("POD_NAMESPACE", "default".to_owned()),
            ("LEASE_NAME", format!("messenger-operator-image-{suffix}")),
            ("POD_NAME", format!("operator-image-{suffix}")),
        ],
    );
}

/// A `docker-compose` project on podman's Docker API; brought down (with its volumes) when
/// dropped, and its logs shown when the test fails.
struct ComposeProject {
    name: String,
    env: Vec<(String, String)>,
    env_file: PathBuf,
    healthchecks: Option<(Arc<AtomicBool>, std::thread::JoinHandle<()>)>,
}

impl ComposeProject {
    fn new(env: Vec<(String, String)>) -> Self {
        let name = format!(
            "messenger-test-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        // An empty env file: a developer's .env in the clone must not change the test.
        let env_file = std::env::temp_dir().join(format!("{name}.env"));
        std::fs::write(&env_file, "").expect("write the empty env file");
        let mut project = Self {
            name,
            env,
            env_file,
            healthchecks: None,
        };
        project.run_healthchecks();
        project
    }

    fn command(&self, args: &[&str]) -> Command {
        let root = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
        let mut command = Command::new("docker-compose");
        command
            .current_dir(root)
            .args(["--project-name", &self.name, "--file", "docker-compose.yml"])
            .arg("--env-file")
            .arg(&self.env_file)
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        command
    }

    fn compose(&self, args: &[&str]) -> Output {
        self.command(args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run docker-compose {args:?}: {e}"))
    }

    /// podman runs HEALTHCHECKs from systemd timers, which these machines lack: run every
    /// container's check once a second, as the timers would.
    fn run_healthchecks(&mut self) {
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, label) = (
            Arc::clone(&stop),
            format!("label=com.docker.compose.project={}", self.name),
        );
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                let ids = text(&podman(&["ps", "--quiet", "--filter", &label]).stdout);
                for id in ids.lines() {
                    let _ = podman(&["healthcheck", "run", id]);
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        });
        self.healthchecks = Some((stop, thread));
    }

    /// `up -d` for `services` (and what they depend on), bounded by `limit`.
    fn up(&self, services: &[&str], limit: Duration) {
        let mut args = vec!["up", "--detach", "--no-build"];
        args.extend(services);
        let mut child = self
            .command(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run docker-compose up");
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait for docker-compose") {
                break status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "docker-compose up did not finish within {limit:?}:\n{}\n{}",
                    text(&self.compose(&["ps"]).stdout),
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(250));
        };
        let mut stderr = String::new();
        child
            .stderr
            .take()
            .map(|mut pipe| pipe.read_to_string(&mut stderr));
        assert!(
            status.success(),
            "docker-compose up failed: {stderr}\n{}",
            self.logs()
        );
    }

    fn logs(&self) -> String {
        let output = self.compose(&["logs", "--no-color", "--tail=40"]);
        format!("{}\n{}", text(&output.stdout), text(&output.stderr))
    }
}

impl Drop for ComposeProject {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("compose logs:\n{}", self.logs());
        }
        if let Some((stop, thread)) = self.healthchecks.take() {
            stop.store(true, Ordering::Relaxed);
            let _ = thread.join();
        }
        let down = self.compose(&["down", "--volumes", "--remove-orphans", "--timeout=10"]);
        if !down.status.success() {
            eprintln!("docker-compose down: {}", text(&down.stderr));
        }
        let _ = std::fs::remove_file(&self.env_file);
    }
}

/// A signed-in (or anonymous) client of the composed gateway.
struct Api {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Api {
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("the composed gateway answers");
        let status = response.status().as_u16();
        let body = response.bytes().await.expect("a body");
        (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
    }

    async fn expect(&self, method: Method, path: &str, body: Option<Value>, status: u16) -> Value {
        let (got, answer) = self.call(method.clone(), path, body).await;
        assert_eq!(got, status, "{method} {path}: {answer}");
        answer
    }

    /// Registers and signs in `nickname`, then waits for the profile the users service
    /// creates from the `UserRegistered` event (auth → Kafka → users, all composed).
    async fn sign_up(&self, nickname: &str) -> (String, Api) {
        let email = format!("{nickname}@example.org");
        let password = "correct horse battery staple";
        let body = json!({"email": email, "password": password, "nickname": nickname});
        let registered = self
            .expect(Method::POST, "/v1/auth/register", Some(body), 201)
            .await;
        let login = self
            .expect(
                Method::POST,
                "/v1/auth/login",
                Some(json!({"email": email, "password": password})),
                200,
            )
            .await;
        let user = Api {
            http: self.http.clone(),
            base: self.base.clone(),
            token: Some(login["access_token"].as_str().expect("a token").to_owned()),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (status, profile) = user.call(Method::GET, "/v1/users/me", None).await;
            if status == 200 {
                assert_eq!(profile["nickname"], nickname);
                break;
            }
            assert!(
                status == 404 && Instant::now() < deadline,
                "no profile for {nickname}: {status} {profile}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let id = registered["user_id"]
            .as_str()
            .expect("a user id")
            .to_owned();
        (id, user)
    }
}

/// `docker-compose.yml` as shipped, with this clone's images, the local stand-ins for
/// PostgreSQL, Redis and Kafka, and chat on its in-memory store (MongoDB has no stand-in
/// here; README.md, "The compose stack"): two people register, log in, become friends, open
/// a chat and read each other's message through the composed gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_compose_stack_serves_two_people_chatting_through_the_gateway() {
    let images = Images::from_env();
    let var = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| panic!("{name} is not set by scripts/images.sh"))
    };
    let gateway_port = testing::free_port();
    let mut env: Vec<(String, String)> = [
        ("DOCKER_HOST", var("TEST_DOCKER_HOST")),
        ("MESSENGER_REGISTRY", images.registry.clone()),
        ("MESSENGER_TAG", images.tag.clone()),
        ("POSTGRES_IMAGE", var("TEST_POSTGRES_IMAGE")),
        ("REDIS_IMAGE", var("TEST_REDIS_IMAGE")),
        ("KAFKA_IMAGE", var("TEST_KAFKA_IMAGE")),
        ("CHAT_STORE", "memory".to_owned()),
        ("INTERNAL_AUTH_KEY", testing::test_key_secret().to_owned()),
        ("GATEWAY_PORT", format!("127.0.0.1:{gateway_port}")),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    for name in ["AUTH_PORT", "CHAT_PORT", "FRIENDS_PORT", "USERS_PORT"] {
        env.push((
            name.to_owned(),
            format!("127.0.0.1:{}", testing::free_port()),
        ));
    }
    let project = ComposeProject::new(env);
    let started = Instant::now();
    project.up(
        &[
            "postgres", "redis", "kafka", "auth", "users", "friends", "chat", "gateway",
        ],
        Duration::from_secs(240),
    );
    println!("compose stack up in {:?}", started.elapsed());

    let api = Api {
        http: http::client().build().unwrap(),
        base: format!("http://127.0.0.1:{gateway_port}"),
        token: None,
    };
    let tag = &uuid::Uuid::new_v4().simple().to_string()[..6];
    let (alice_nick, bob_nick) = (format!("alice{tag}"), format!("bob{tag}"));
    let (_alice_id, alice) = api.sign_up(&alice_nick).await;
    let (bob_id, bob) = api.sign_up(&bob_nick).await;

    alice
        .expect(
            Method::POST,
            "/v1/friends/requests",
            Some(json!({"nickname": bob_nick})),
            201,
        )
        .await;
    bob.expect(
        Method::POST,
        &format!("/v1/friends/requests/{alice_nick}/accept"),
        None,
        204,
    )
    .await;
    let friends = alice.expect(Method::GET, "/v1/friends", None, 200).await;
    assert_eq!(
        friends["friends"][0]["nickname"],
        bob_nick.as_str(),
        "{friends}"
    );

    let chat = alice
        .expect(
            Method::POST,
            "/v1/chats",
            Some(json!({"participant_ids": [bob_id]})),
            201,
        )
        .await;
    let messages = format!("/v1/chats/{}/messages", chat["chat_id"].as_str().unwrap());
    let sent = alice
        .expect(
            Method::POST,
            &messages,
            Some(json!({"content": "hello from the compose stack"})),
            201,
        )
        .await;
    let history = bob.expect(Method::GET, &messages, None, 200).await;
    assert_eq!(history["messages"][0]["message_id"], sent["message_id"]);
    assert_eq!(
        history["messages"][0]["content"],
        "hello from the compose stack"
    );
}
