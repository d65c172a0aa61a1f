//! What the operator and `docker-compose.yml` give the services configures them: for each
//! component of the fully specified sample (`config/samples/messengerapp_full.yaml`), the
//! environment a pod would get (its slot ConfigMap through `envFrom`, then the container's
//! own `env`, Secrets filled with plausible values), and for each service of the compose
//! file its `environment` (variables at their defaults) over the image's `ENV`, is parsed
//! by that service's own configuration code. Every variable the operator, the sample or
//! the compose file sets must be one the service reads, so a renamed or invented variable
//! fails here instead of in a cluster or on a laptop.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use messenger_operator::builders::{build_config_map, build_deployment};
use messenger_operator::component::Component;
use messenger_operator::crd::{MessengerApp, Slot};

fn sample() -> MessengerApp {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../config/samples/messengerapp_full.yaml"
    );
    let text = std::fs::read_to_string(path).expect("read the full sample");
    serde_yaml::from_str(&text).expect("the full sample is a MessengerApp")
}

/// Read outside the configuration code: by the log filter (`messenger_common::telemetry`)
/// and by every service binary's `main` (`messenger_common::service`, the drain delay).
const READ_OUTSIDE_CONFIG: &[&str] = &["RUST_LOG", messenger_common::service::SHUTDOWN_DELAY_ENV];

/// A value for a variable that comes from a Secret in a real cluster.
fn secret_value(name: &str) -> String {
    match name {
        "DATABASE_URL" => "postgres://app:secret@postgres.messenger.svc:5432/app".into(),
        "REDIS_URL" => "redis://redis.messenger.svc:6379".into(),
        "KAFKA_BROKERS" => "kafka.messenger.svc:9092".into(),
        "MONGODB_URI" => "mongodb://mongodb.messenger.svc:27017/chat".into(),
        "INTERNAL_AUTH_KEY" => "a-per-app-internal-key-of-at-least-32-bytes".into(),
        _ => "from-a-secret".into(),
    }
}

/// The environment of the component's container: ConfigMap first, its own `env` on top
/// (as Kubernetes does); also returns the names set by the container's `env`.
fn pod_environment(
    app: &MessengerApp,
    deployment: &Deployment,
) -> (BTreeMap<String, String>, BTreeSet<String>) {
    let mut env = build_config_map(app, Slot::Blue).data.unwrap_or_default();
    let container = &deployment
        .spec
        .template
        .spec
        .as_ref()
        .expect("pod spec")
        .containers[0];
    let mut own = BTreeSet::new();
    for var in container.env.iter().flatten() {
        let value = match (&var.value, &var.value_from) {
            (Some(value), _) => value.clone(),
            (None, Some(source)) if source.secret_key_ref.is_some() => secret_value(&var.name),
            other => panic!("{}: unexpected env source {other:?}", var.name),
        };
        env.insert(var.name.clone(), value);
        own.insert(var.name.clone());
    }
    // Every service requires INTERNAL_AUTH_KEY; the operator's per-app Secret provides
    // it. Until the operator sets it, stand in for that Secret here.
    env.entry("INTERNAL_AUTH_KEY".to_owned())
        .or_insert_with(|| secret_value("INTERNAL_AUTH_KEY"));
    (env, own)
}

/// Runs `parse` with a lookup over `env`, recording every name it asks for.
fn parse_recording<T, E: std::fmt::Debug>(
    env: &BTreeMap<String, String>,
    parse: impl FnOnce(&dyn Fn(&str) -> Option<String>) -> Result<T, E>,
) -> (T, BTreeSet<String>) {
    let read = RefCell::new(BTreeSet::new());
    let lookup = |name: &str| {
        read.borrow_mut().insert(name.to_owned());
        env.get(name).cloned()
    };
    let config = parse(&lookup).unwrap_or_else(|e| panic!("rejected {env:?}: {e:?}"));
    (config, read.into_inner())
}

#[test]
fn every_service_accepts_and_reads_the_environment_the_operator_gives_it() {
    let app = sample();
    let mut read_by_any = BTreeSet::new();
    for component in [
        Component::Auth,
        Component::Users,
        Component::Friends,
        Component::Chat,
        Component::Gateway,
    ] {
        let deployment = build_deployment(&app, component, Slot::Blue);
        let (env, own) = pod_environment(&app, &deployment);
        let read = match component {
            Component::Auth => {
                let (config, read) =
                    parse_recording(&env, |l| messenger_auth::Config::from_lookup(l));
                assert_eq!(
                    config.token_ttl,
                    Duration::from_secs(12 * 3600),
                    "the sample's AUTH_TOKEN_TTL"
                );
                read
            }
            Component::Users => {
                parse_recording(&env, |l| messenger_users::Config::from_lookup(l)).1
            }
            Component::Friends => {
                let (config, read) =
                    parse_recording(&env, |l| messenger_friends::Config::from_lookup(l));
                assert_eq!(
                    config.users_url, "http://messenger-users-blue:8004",
                    "peer in the same slot"
                );
                read
            }
            Component::Chat => {
                let (config, read) =
                    parse_recording(&env, |l| messenger_chat::Config::from_lookup(l));
                match &config.friends {
                    messenger_chat::config::FriendsConfig::Grpc { url, .. } => {
                        assert_eq!(
                            url, "http://messenger-friends-blue:8003",
                            "peer in the same slot"
                        )
                    }
                    other => panic!("chat should call friends over gRPC: {other:?}"),
                }
                assert!(
                    matches!(
                        config.store,
                        messenger_chat::config::StoreConfig::MongoDb(_)
                    ),
                    "chat keeps its data in MongoDB when the app references one"
                );
                read
            }
            Component::Gateway => {
                let (config, read) =
                    parse_recording(&env, |l| messenger_gateway::Config::from_lookup(l));
                assert_eq!(
                    config.peers.chat_url, "http://messenger-chat-blue:8002",
                    "peer in the same slot"
                );
                read
            }
        };
        let unread: Vec<_> = own
            .difference(&read)
            .filter(|name| !READ_OUTSIDE_CONFIG.contains(&name.as_str()))
            .collect();
        assert!(
            unread.is_empty(),
            "{component:?}: the operator or the sample sets {unread:?}, which the service never reads"
        );
        read_by_any.extend(read);
    }
    // The slot ConfigMap is shared by all components; each of its keys must be read by one
    // of them.
    let shared = build_config_map(&app, Slot::Blue).data.unwrap_or_default();
    let unread: Vec<_> = shared
        .keys()
        .filter(|key| !read_by_any.contains(*key) && !READ_OUTSIDE_CONFIG.contains(&key.as_str()))
        .collect();
    assert!(
        unread.is_empty(),
        "the slot ConfigMap sets {unread:?}, which no service reads"
    );
}

/// `${NAME:-default}` and `${NAME-default}` become the default, `${NAME:?message}` (a
/// variable the user must set) a plausible value, `${NAME}` empty: the compose file as it
/// runs with nothing set but what it demands.
fn interpolate(value: &str) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').expect("a closed ${...}") + start;
        let expression = &rest[start + 2..end];
        let (name, operator_and_word) = expression
            .find([':', '-', '?'])
            .map_or((expression, ""), |at| expression.split_at(at));
        let word = operator_and_word.trim_start_matches(':');
        match word.chars().next() {
            Some('-') => out.push_str(&word[1..]),
            Some('?') => out.push_str(&secret_value(name)),
            _ => {}
        }
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

/// `ENV` of the Dockerfile's runtime stage: what every component image starts with.
fn image_environment() -> BTreeMap<String, String> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../Dockerfile");
    let dockerfile = std::fs::read_to_string(path).expect("read the Dockerfile");
    let runtime = dockerfile
        .split("\nFROM ")
        .find(|stage| stage.contains(" AS runtime"))
        .expect("a runtime stage");
    runtime
        .lines()
        .filter_map(|line| line.strip_prefix("ENV "))
        .flat_map(str::split_whitespace)
        .map(|pair| {
            let (key, value) = pair.split_once('=').expect("ENV KEY=value");
            (key.to_owned(), value.to_owned())
        })
        .collect()
}

#[test]
fn every_service_reads_every_variable_docker_compose_gives_it() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docker-compose.yml");
    let text = std::fs::read_to_string(path).expect("read docker-compose.yml");
    let mut compose: serde_yaml::Value = serde_yaml::from_str(&text).expect("YAML");
    compose.apply_merge().expect("merge keys");
    let services = compose["services"].as_mapping().expect("services");
    let image_env = image_environment();
    assert_eq!(
        image_env.get("LOG_FORMAT").map(String::as_str),
        Some("json")
    );
    let mut checked = BTreeSet::new();
    for (name, service) in services {
        let name = name.as_str().expect("a service name");
        let given: BTreeMap<String, String> = service["environment"]
            .as_mapping()
            .into_iter()
            .flatten()
            .map(|(key, value)| {
                let value = match value {
                    serde_yaml::Value::String(text) => interpolate(text),
                    other => serde_yaml::to_string(other).unwrap().trim().to_owned(),
                };
                (key.as_str().expect("a variable name").to_owned(), value)
            })
            .collect();
        let mut env = image_env.clone();
        env.extend(given.clone());
        let read = match name {
            "auth" => parse_recording(&env, |l| messenger_auth::Config::from_lookup(l)).1,
            "users" => parse_recording(&env, |l| messenger_users::Config::from_lookup(l)).1,
            "friends" => {
                let (config, read) =
                    parse_recording(&env, |l| messenger_friends::Config::from_lookup(l));
                assert_eq!(config.users_url, "http://users:8004");
                read
            }
            "chat" => {
                let (config, read) =
                    parse_recording(&env, |l| messenger_chat::Config::from_lookup(l));
                assert!(
                    matches!(
                        config.store,
                        messenger_chat::config::StoreConfig::MongoDb(ref mongo)
                            if mongo.uri.expose() == "mongodb://mongodb:27017"
                    ),
                    "chat keeps its data in the composed MongoDB by default"
                );
                read
            }
            "gateway" => {
                let (config, read) =
                    parse_recording(&env, |l| messenger_gateway::Config::from_lookup(l));
                assert_eq!(config.peers.auth_url, "http://auth:8001");
                assert_eq!(config.http_addr.port(), 8080);
                read
            }
            // The dependencies (postgres, redis, mongodb, kafka) are configured by their
            // images' own variables.
            _ => continue,
        };
        let unread: Vec<_> = env
            .keys()
            .filter(|key| !read.contains(*key) && !READ_OUTSIDE_CONFIG.contains(&key.as_str()))
            .collect();
        assert!(
            unread.is_empty(),
            "docker-compose.yml (or the image) gives {name} {unread:?}, which it never reads"
        );
        checked.insert(name.to_owned());
    }
    assert_eq!(
        checked,
        ["auth", "chat", "friends", "gateway", "users"]
            .map(str::to_owned)
            .into(),
        "every service is in docker-compose.yml"
    );
}
